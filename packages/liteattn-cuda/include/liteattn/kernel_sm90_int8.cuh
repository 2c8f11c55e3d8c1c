// The sm90 INT8 Q/K kernel: the 16-bit kernel's roles (producer_load, consumer_mainloop, epilogue_store) with
// int8 Q/K tiles, a K pipeline armed with the int8 tile's byte count, and the scores dequantised per tile pair.
#pragma once

#include "kernel_traits_int8.cuh"
#include "mainloop_mma.cuh"
#include "work_loop.cuh"

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
  unsigned long long* skipped_tiles;  // += B * H * QT * KT minus the tiles computed, or nullptr
  float const* q_scale;         // (B, H, QT)
  float const* k_scale;         // (B, Hkv, KT)
  int seqlen_q, seqlen_k, num_heads, head_ratio;
  int num_q_tiles, num_k_tiles, num_words;
  int num_work_tiles;  // B * H * QT
  int num_skip_q_tiles;  // query tiles of the skip state (and of q_scale): QT, or kSkipRows x as many
  float scale, scale_log2;
  bool reverse;
  TailSplit split;  // never split: INT8 calls keep a skip state's tiles
  int num_work_items;
  float* split_o;
  float* split_lse;
};

template <class Traits>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    fwd_kernel_sm90_int8(CUTE_GRID_CONSTANT KernelParamsInt8<Traits> const params) {
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  extern __shared__ char smem_buf[];
  SharedStorage& shared = *reinterpret_cast<SharedStorage*>(smem_buf);

  init_q_barriers<Traits>(params, shared);

  // K and V tiles differ in size (int8 vs 16-bit): each pipeline expects its own byte count.
  typename Pipeline::Params pipe_params;
  pipe_params.role = cutlass::canonical_warp_group_idx() == 0 ? Pipeline::ThreadCategory::Producer
                                                              : Pipeline::ThreadCategory::Consumer;
  pipe_params.is_leader = threadIdx.x == 0;
  pipe_params.num_consumers = Traits::kNumMmaThreads;
  pipe_params.transaction_bytes = Traits::kTmaBytesK;
  Pipeline pipeline_k(shared.pipeline_k, pipe_params, Shape<_1, _1, _1>{});
  pipe_params.transaction_bytes = Traits::kTmaBytesV;
  Pipeline pipeline_v(shared.pipeline_v, pipe_params, Shape<_1, _1, _1>{});
  __syncthreads();

  run_work_tiles<Traits>(params, shared, pipeline_k, pipeline_v,
                         [&](WorkTile const& work, auto tiles, int thread_idx, auto& tOrO, auto& softmax,
                             auto& skip, auto& state, int q_round) {
                           // q_scale of the warpgroup's skip row (any finite value past the last one: it
                           // computes nothing there)
                           int const skip_row = skip_row_of<Traits>(params, work, skip_row_group<Traits>(thread_idx));
                           float const q_scale = skip_row < 0 ? 1.f : __ldg(params.q_scale + skip_row);
                           int const head_kv = work.head / params.head_ratio;
                           float const* k_scale_row =
                               params.k_scale +
                               (int64_t(work.batch) * (params.num_heads / params.head_ratio) + head_kv) *
                                   params.num_k_tiles;
                           return consumer_mainloop<Traits>(params, work, shared, pipeline_k, pipeline_v, tiles,
                                                            thread_idx, tOrO, softmax, skip, state, q_round,
                                                            Int8ScoreScale{q_scale, k_scale_row});
                         });
}

}  // namespace liteattn
