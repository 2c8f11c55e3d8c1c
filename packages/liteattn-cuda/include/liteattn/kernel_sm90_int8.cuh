// The sm90 INT8 Q/K kernel: the 16-bit kernel's roles (producer_load, epilogue_store reused as they are) with
// int8 Q/K tiles, a K pipeline armed with the int8 tile's byte count, and consumer_mainloop_int8.
#pragma once

#include "kernel_traits_int8.cuh"
#include "tile_scheduler.cuh"
#include "mainloop_load.cuh"
#include "mainloop_mma_int8.cuh"
#include "softmax.cuh"
#include "epilogue.cuh"

namespace liteattn {

template <class Traits>
struct KernelParamsInt8 {
  typename Traits::ShapeQKV shape_q;  // (Sq, D, H, B)
  typename Traits::ShapeQKV shape_k;  // (Sk, D, Hkv, B)
  typename Traits::TmaQ tma_q;        // int8 Q
  typename Traits::TmaK tma_k;        // int8 smoothed K
  typename Traits::TmaV tma_v;        // 16-bit V
  void* out;
  int64_t out_stride_b, out_stride_s, out_stride_h;
  float* lse;                   // (B, H, Sq): LSE of the smoothed scores
  int32_t const* compute_bits;  // (B, H, QT, W) or nullptr
  int32_t* write_bits;          // (B, H, QT, W) or nullptr
  float const* thresholds;      // (H,), log2 units
  float* tile_gaps;             // (B, H, QT, KT), pre-filled with -inf, or nullptr
  float const* q_scale;         // (B, H, QT)
  float const* k_scale;         // (B, Hkv, KT)
  int seqlen_q, seqlen_k, num_heads, head_ratio;
  int num_q_tiles, num_k_tiles, num_words;
  float scale, scale_log2;
  bool reverse;
};

template <class Traits>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    fwd_kernel_sm90_int8(CUTE_GRID_CONSTANT KernelParamsInt8<Traits> const params) {
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  extern __shared__ char smem_buf[];
  SharedStorage& shared = *reinterpret_cast<SharedStorage*>(smem_buf);

  int const warp_group = cutlass::canonical_warp_group_idx();
  int const warp_idx = cutlass::canonical_warp_idx_sync();
  int const lane_pred = cute::elect_one_sync();

  if (warp_idx == 0 && lane_pred) {
    cute::prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
    shared.barrier_q.init(1);
  }

  // K and V tiles differ in size (int8 vs 16-bit): each pipeline expects its own byte count.
  typename Pipeline::Params pipe_params;
  pipe_params.role = warp_group == 0 ? Pipeline::ThreadCategory::Producer : Pipeline::ThreadCategory::Consumer;
  pipe_params.is_leader = threadIdx.x == 0;
  pipe_params.num_consumers = Traits::kNumMmaThreads;
  pipe_params.transaction_bytes = Traits::kTmaBytesK;
  Pipeline pipeline_k(shared.pipeline_k, pipe_params, Shape<_1, _1, _1>{});
  pipe_params.transaction_bytes = Traits::kTmaBytesV;
  Pipeline pipeline_v(shared.pipeline_v, pipe_params, Shape<_1, _1, _1>{});
  __syncthreads();

  WorkTile const work = BlockTileScheduler::get(params.num_heads);
  int64_t const row_idx = (int64_t(work.batch) * params.num_heads + work.head) * params.num_q_tiles + work.m_block;
  int32_t const* bits = params.compute_bits == nullptr ? nullptr : params.compute_bits + row_idx * params.num_words;
  KeptTileIterator tiles(bits, params.num_k_tiles, params.reverse);
  int const num_kept = tiles.count();

  if (warp_group == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x == 0) {
      producer_load<Traits>(params, shared, work, pipeline_k, pipeline_v, tiles, num_kept);
    }
  } else {
    cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
    int const thread_idx = threadIdx.x - 128;
    typename Traits::TiledMmaPV mma_pv;
    Tensor tOrO = partition_fragment_C(mma_pv, select<0, 1>(typename Traits::TileShapePV{}));
    clear(tOrO);
    OnlineSoftmax softmax(params.scale_log2);
    int const row0 = work.m_block * Traits::kBlockM + (thread_idx / 128) * 64 + ((thread_idx % 128) / 32) * 16 +
                     (thread_idx % 32) / 4;
    SkipTestWriter<Traits::kNumMmaThreads> skip{
        shared.skip_words,
        params.write_bits == nullptr ? nullptr : params.write_bits + row_idx * params.num_words,
        params.num_words,
        params.write_bits == nullptr ? 0.f : __ldg(params.thresholds + work.head),
        {row0 < params.seqlen_q, row0 + 8 < params.seqlen_q},
        params.tile_gaps == nullptr ? nullptr : params.tile_gaps + row_idx * params.num_k_tiles};
    skip.begin(thread_idx);
    if (num_kept > 0) {
      float const q_scale = __ldg(params.q_scale + row_idx);
      int const head_kv = work.head / params.head_ratio;
      float const* k_scale_row =
          params.k_scale + (int64_t(work.batch) * (params.num_heads / params.head_ratio) + head_kv) * params.num_k_tiles;
      consumer_mainloop_int8<Traits>(params, shared, pipeline_k, pipeline_v, tiles, thread_idx, q_scale, k_scale_row,
                                     tOrO, softmax, skip);
    }
    skip.end(thread_idx);
    epilogue_store<Traits>(params, work, thread_idx, tOrO, softmax);
  }
}

}  // namespace liteattn
