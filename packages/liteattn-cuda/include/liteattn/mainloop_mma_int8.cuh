// Consumers of the INT8 Q/K kernel: per kept key tile, S = Q K^T as an s8 x s8 -> s32 wgmma (smem x smem),
// dequantised to fp32 with q_scale(query tile) * k_scale(key tile), then exactly the 16-bit path: the online
// softmax and skip test on the dequantised scores, and O += P V (16-bit RS wgmma on the original V).
// Reuses the helpers of mainloop_mma.cuh (wgmma_gemm, PingPong, mask_partial_tile, P conversion) unchanged.
#pragma once

#include "kernel_traits_int8.cuh"
#include "mainloop_mma.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"

namespace liteattn {

// s32 accumulator -> fp32 scores times the tile's dequantisation factor. |acc| <= 127^2 * D < 2^24 for D <= 1024,
// so the conversion is exact (I2FP, a plain ALU op) and the only rounding is the one multiply.
template <class TensorI, class TensorF>
CUTE_DEVICE void dequantize_scores(TensorI const& acc, TensorF& scores, float factor) {
  CUTE_UNROLL
  for (int i = 0; i < size(acc); ++i) scores(i) = __int2float_rn(acc(i)) * factor;
}

// The key loop of one work tile (at least one kept tile); leaves the unnormalised O in tOrO. Serial per
// warpgroup (each wgmma waited for before its result is used), as the 16-bit consumer_mainloop, whose ring
// `state` and `q_round` conventions it shares.
template <class Traits, class Params, class TensorO, class SkipWriter>
CUTE_DEVICE void consumer_mainloop_int8(Params const& params, typename Traits::SharedStorage& shared,
                                        typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                                        KeptTileIterator tiles, int thread_idx, float q_scale,
                                        float const* k_scale_row, TensorO& tOrO, OnlineSoftmax& softmax,
                                        SkipWriter const& skip, typename Traits::PipelineState& state, int q_round) {
  using Element = typename Traits::Element;
  constexpr int kBlockN = Traits::kBlockN;
  Tensor sQ = make_tensor(make_smem_ptr(shared.smem_q.data()), typename Traits::SmemLayoutQ{});    // (BM, D) int8
  Tensor sK = make_tensor(make_smem_ptr(shared.smem_k.data()), typename Traits::SmemLayoutK{});    // (BN, D, stage)
  Tensor sVt = make_tensor(make_smem_ptr(shared.smem_v.data()), typename Traits::SmemLayoutVt{});  // (D, BN, stage)

  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(thread_idx);
  auto thr_pv = mma_pv.get_thread_slice(thread_idx);
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);   // (MMA, MMA_M, MMA_K) smem descriptors
  Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stage)
  Tensor tOrV = thr_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage)
  Tensor tSrSi = partition_fragment_C(mma_qk, select<0, 1>(typename Traits::TileShapeMNK{}));  // s32 (MMA, M, N)
  CUTE_STATIC_ASSERT_V(size<1>(tSrSi) == _1{} && size<2>(tSrSi) == _1{});
  // The s32 accumulator of a 64xN wgmma has the fp32 accumulator's register layout, so the softmax, the
  // skip test and the P conversion read the dequantised copy exactly as they read the 16-bit path's S.
  Tensor tSrS = make_tensor<float>(tSrSi.layout());

  int const lane = thread_idx % 32;
  int const partial_tile = params.seqlen_k % kBlockN == 0 ? -1 : params.num_k_tiles - 1;
  PingPong<Traits::kNumMmaWarpgroups> turn{thread_idx / 128};
  turn.start();

  shared.barrier_q.wait(q_round & 1);

  for (int n = tiles.next(); n >= 0; n = tiles.next()) {
    float const factor = q_scale * __ldg(k_scale_row + n);  // issued before the waits, used after
    turn.wait_turn();
    pipeline_k.consumer_wait(state);
    wgmma_gemm</*kZeroInit=*/true, /*kARegs=*/false>(mma_qk, tSrQ, tSrK(_, _, _, state.index()), tSrSi);
    turn.pass_turn();
    warpgroup_wait<0>();
    pipeline_k.consumer_release(state);

    dequantize_scores(tSrSi, tSrS, factor);
    if (n == partial_tile) {
      mask_partial_tile<kBlockN>(tSrS, n, partial_tile, params.seqlen_k, lane);
    }
    float correction[2];
    softmax.step(tSrS, correction);
    bool const needs = skip.needs(softmax);
    skip.record_gap(n, softmax, lane);
    rescale_o(tOrO, correction);
    Tensor rP = convert_fragment<Element>(tSrS);
    Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));

    // The warp vote runs while the PV wgmma does (as in the 16-bit loop).
    pipeline_v.consumer_wait(state);
    wgmma_gemm</*kZeroInit=*/false, /*kARegs=*/true>(mma_pv, tOrP, tOrV(_, _, _, state.index()), tOrO);
    skip.commit(n, needs, lane);
    warpgroup_wait<0>();
    pipeline_v.consumer_release(state);
    ++state;
  }
  release_q(shared);
  turn.finish();
}

}  // namespace liteattn
