// The sm90 kernel: composes the producer (mainloop_load), the consumers (mainloop_mma + softmax) and the
// epilogue. Declares the kernel parameters; all shared memory lives in Traits::SharedStorage.
#pragma once

#include "kernel_traits.cuh"
#include "mainloop_mma.cuh"
#include "work_loop.cuh"

namespace liteattn {

template <class Traits>
struct KernelParams {
  typename Traits::ShapeQKV shape_q;  // (Sq, D, H, B)
  typename Traits::ShapeQKV shape_k;  // (Sk, D, Hkv, B)
  typename Traits::TmaQ tma_q;
  typename Traits::TmaKV tma_k;
  typename Traits::TmaKV tma_v;
  void* out;
  int64_t out_stride_b, out_stride_s, out_stride_h;
  float* lse;                   // (B, H, Sq)
  int32_t const* compute_bits;  // (B, H, QT, W) or nullptr
  int32_t* write_bits;          // (B, H, QT, W) or nullptr
  float const* thresholds;      // (H,), log2 units
  float* tile_gaps;             // (B, H, QT, KT), pre-filled with -inf, or nullptr
  unsigned long long* skipped_tiles;  // += B * H * QT * KT minus the tiles computed, or nullptr
  int seqlen_q, seqlen_k, num_heads, head_ratio;
  int num_q_tiles, num_k_tiles, num_words;
  int num_work_tiles;  // B * H * QT
  int num_skip_q_tiles;  // query tiles of the skip state: QT, or (a skip row per warpgroup) kSkipRows x as many
  float scale, scale_log2;
  bool reverse;
  // Dense calls: the last work tiles may run as key-range pieces (tail_split.h) into split_o (pieces, BM, D) and
  // split_lse (pieces, BM); num_work_items counts tiles and pieces.
  TailSplit split;
  int num_work_items;
  float* split_o;
  float* split_lse;
  // Kernels with the flat loop (flat_loop) and Sk not a multiple of kBlockN: the last key tile of every
  // (b, kv head) with its key_pad missing keys replaced by copies of key Sk - 1 (fill_key_pad_tile, launch.cuh), as
  // (kBlockN, D, Hkv, B), and its TMA descriptor; key_pad = 0 otherwise.
  typename Traits::TmaKV tma_k_pad;
  void const* key_pad_tile;
  int key_pad;
};

template <class Traits>
__global__ void __launch_bounds__(Traits::kNumThreads, 1)
    fwd_kernel_sm90(CUTE_GRID_CONSTANT KernelParams<Traits> const params) {
  using SharedStorage = typename Traits::SharedStorage;
  using Pipeline = typename Traits::Pipeline;
  extern __shared__ char smem_buf[];
  SharedStorage& shared = *reinterpret_cast<SharedStorage*>(smem_buf);

  init_q_barriers<Traits>(params, shared);

  typename Pipeline::Params pipe_params;
  pipe_params.transaction_bytes = Traits::kTmaBytesKV;
  pipe_params.role = cutlass::canonical_warp_group_idx() == 0 ? Pipeline::ThreadCategory::Producer
                                                              : Pipeline::ThreadCategory::Consumer;
  pipe_params.is_leader = threadIdx.x == 0;
  pipe_params.num_consumers = Traits::kNumMmaThreads;
  Pipeline pipeline_k(shared.pipeline_k, pipe_params, Shape<_1, _1, _1>{});
  Pipeline pipeline_v(shared.pipeline_v, pipe_params, Shape<_1, _1, _1>{});
  __syncthreads();  // barrier inits visible to every role

  run_work_tiles<Traits>(params, shared, pipeline_k, pipeline_v,
                         [&](WorkTile const& work, auto tiles, int thread_idx, auto& tOrO, auto& softmax, auto& skip,
                             auto& state, int q_round) {
                           return consumer_mainloop<Traits>(params, work, shared, pipeline_k, pipeline_v, tiles,
                                                            thread_idx, tOrO, softmax, skip, state, q_round);
                         });
}

}  // namespace liteattn
