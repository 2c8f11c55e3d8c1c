// Consumers: each warpgroup owns 64 query rows; per kept key tile it runs S = Q K^T (wgmma, smem x smem),
// the online softmax in registers, and O += P V (wgmma, P from registers).
#pragma once

#include "kernel_traits.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"

namespace liteattn {

// One wgmma batch over the K extent of the fragments; kZeroInit overwrites the accumulator, kARegs says
// A is a register fragment (RS wgmma) whose registers must be fenced too.
template <bool kZeroInit, bool kARegs, class TiledMma, class TA, class TB, class TC>
CUTE_DEVICE void wgmma_gemm(TiledMma& mma, TA const& tCrA, TB const& tCrB, TC& tCrC) {
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TA&>(tCrA));
  warpgroup_fence_operand(tCrC);
  warpgroup_arrive();
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  CUTE_UNROLL
  for (int k = 0; k < size<2>(tCrA); ++k) {
    cute::gemm(mma, tCrA(_, _, k), tCrB(_, _, k), tCrC);
    mma.accumulate_ = GMMA::ScaleOut::One;
  }
  warpgroup_commit_batch();
  warpgroup_fence_operand(tCrC);
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TA&>(tCrA));
}

// Accumulator layout ((2,2,N/8), M, N') reread as the A-operand layout of a 16-bit RS wgmma,
// ((2,2,2), M, N/16): each k-block of 16 columns is two adjacent 8-column blocks of the accumulator.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_layout_as_a_operand(Layout const& acc) {
  auto l = logical_divide(get<0>(acc), Shape<Underscore, Underscore, _2>{});  // ((2,2,(2,N/16)), M, N')
  return make_layout(make_layout(get<0>(l), get<1>(l), get<2, 0>(l)), get<1>(acc),
                     coalesce(make_layout(get<2, 1>(l), get<2>(acc))));
}

template <class To, class Engine, class Layout>
CUTE_DEVICE auto convert_fragment(Tensor<Engine, Layout> const& src) {
  using From = typename Engine::value_type;
  constexpr int N = decltype(size(src))::value;
  Tensor dst = make_tensor<To>(src.layout());
  cutlass::NumericArrayConverter<To, From, N> convert;  // packed cvt.rn.{bf16x2,f16x2}.f32
  *reinterpret_cast<cutlass::Array<To, N>*>(dst.data()) =
      convert(*reinterpret_cast<cutlass::Array<From, N> const*>(src.data()));
  return dst;
}

// Runs the whole key loop for this CTA's query tile; leaves the unnormalised O in tOrO.
template <class Traits, class Params, class TensorO>
CUTE_DEVICE void consumer_mainloop(Params const& params, typename Traits::SharedStorage& shared,
                                   typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                                   KeptTileIterator tiles, int thread_idx, TensorO& tOrO, OnlineSoftmax& softmax) {
  using Element = typename Traits::Element;
  constexpr int kBlockN = Traits::kBlockN;
  Tensor sQ = make_tensor(make_smem_ptr(shared.smem_q.data()), typename Traits::SmemLayoutQ{});    // (BM, D)
  Tensor sK = make_tensor(make_smem_ptr(shared.smem_k.data()), typename Traits::SmemLayoutK{});    // (BN, D, stage)
  Tensor sVt = make_tensor(make_smem_ptr(shared.smem_v.data()), typename Traits::SmemLayoutVt{});  // (D, BN, stage)

  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(thread_idx);
  auto thr_pv = mma_pv.get_thread_slice(thread_idx);
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);   // (MMA, MMA_M, MMA_K) smem descriptors
  Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stage)
  Tensor tOrV = thr_pv.partition_fragment_B(sVt);  // (MMA, MMA_N, MMA_K, stage)
  Tensor tSrS = partition_fragment_C(mma_qk, select<0, 1>(typename Traits::TileShapeMNK{}));  // (MMA, MMA_M, MMA_N)
  CUTE_STATIC_ASSERT_V(size<1>(tSrS) == _1{} && size<2>(tSrS) == _1{});

  int const lane = thread_idx % 32;
  int const partial_tile = params.seqlen_k % kBlockN == 0 ? -1 : params.num_k_tiles - 1;

  // Consumers wait on barrier_q (armed by the producer) once, before the first QK^T.
  shared.barrier_q.wait(0);

  typename Traits::PipelineState state;  // consumer side starts at phase 0
  for (int n = tiles.next(); n >= 0; n = tiles.next()) {
    // Wait for K[stage] (full barrier), S = Q K^T, then release K[stage] to the producer (empty barrier).
    pipeline_k.consumer_wait(state);
    wgmma_gemm</*kZeroInit=*/true, /*kARegs=*/false>(mma_qk, tSrQ, tSrK(_, _, _, state.index()), tSrS);
    warpgroup_wait<0>();
    pipeline_k.consumer_release(state);

    if (n == partial_tile) {  // keys >= Sk were zero-filled by TMA: mask them out of the softmax
      int const valid = params.seqlen_k - n * kBlockN;
      CUTE_UNROLL
      for (int i = 0; i < size(tSrS); ++i)
        if (acc_col(i, lane) >= valid) tSrS(i) = -INFINITY;
    }

    float correction[2];
    softmax.step(tSrS, correction);
    CUTE_UNROLL
    for (int i = 0; i < size(tOrO); ++i) tOrO(i) *= correction[acc_row(i)];

    Tensor rP = convert_fragment<Element>(tSrS);                                        // (MMA, MMA_M, MMA_N)
    Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));          // (MMA, MMA_M, MMA_K)

    // Wait for V[stage], O += P V, release V[stage].
    pipeline_v.consumer_wait(state);
    wgmma_gemm</*kZeroInit=*/false, /*kARegs=*/true>(mma_pv, tOrP, tOrV(_, _, _, state.index()), tOrO);
    warpgroup_wait<0>();
    pipeline_v.consumer_release(state);
    ++state;
  }
}

}  // namespace liteattn
