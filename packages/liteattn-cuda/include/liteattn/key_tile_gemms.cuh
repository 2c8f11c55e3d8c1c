// The consumers' GEMMs of a key tile: wgmma batches on this thread's fragments of Q, K and V^T, Q copied into
// registers where the traits ask for it, and the register fragments a 16-bit RS wgmma takes as its A operand.
#pragma once

#include <type_traits>

#include <cute/atom/copy_atom.hpp>
#include <cute/atom/copy_traits_sm75.hpp>

#include "kernel_traits.cuh"

namespace liteattn {

// The smallest wgmma (64 x 8 x 16) from the first K slices of A and B into `d`: the batch of a PV that computes
// nothing. A batch left empty on one path of a branch made ptxas close it with a placeholder of its own after the
// branch, on both paths, and the next wait for S then also waited for the PV. The caller keeps `d` live (ptxas
// replaced a placeholder with a dead result by its own) and points B at shared memory that nothing writes meanwhile.
template <class Element, class TA, class TB>
CUTE_DEVICE void placeholder_wgmma(TA const& tCrA, TB const& tCrB, float (&d)[4]) {
  static_assert(sizeof(Element) == 2, "a 16-bit RS batch");
  auto const a = recast<uint32_t const>(tCrA(_, _, 0));
  uint64_t const desc = tCrB(0, 0, 0);
  if constexpr (std::is_same_v<Element, cutlass::half_t>) {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, 0, 1, 1, 1;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a(0)), "r"(a(1)), "r"(a(2)), "r"(a(3)), "l"(desc));
  } else {
    asm volatile(
        "wgmma.mma_async.sync.aligned.m64n8k16.f32.bf16.bf16 {%0, %1, %2, %3}, {%4, %5, %6, %7}, %8, 0, 1, 1, 1;\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a(0)), "r"(a(1)), "r"(a(2)), "r"(a(3)), "l"(desc));
  }
}

// One wgmma batch over the K extent of the fragments; kZeroInit overwrites the accumulator, kARegs says
// A is a register fragment (RS wgmma) whose registers must be fenced too. With `issue` false (warp-uniform; RS
// batches, which pass `scratch`) it commits placeholder_wgmma's batch instead, so that the caller's waits count the
// same batches on both paths.
template <bool kZeroInit, bool kARegs, class TiledMma, class TA, class TB, class TC>
CUTE_DEVICE void wgmma_gemm(TiledMma& mma, TA const& tCrA, TB const& tCrB, TC& tCrC, bool issue = true,
                            float (*scratch)[4] = nullptr) {
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TA&>(tCrA));
  warpgroup_fence_operand(tCrC);
  warpgroup_arrive();
  if constexpr (kZeroInit) mma.accumulate_ = GMMA::ScaleOut::Zero;
  if (issue) {
    CUTE_UNROLL
    for (int k = 0; k < size<2>(tCrA); ++k) {
      cute::gemm(mma, tCrA(_, _, k), tCrB(_, _, k), tCrC);
      mma.accumulate_ = GMMA::ScaleOut::One;
    }
    warpgroup_commit_batch();
  } else {
    if constexpr (kARegs) placeholder_wgmma<typename TA::value_type>(tCrA, tCrB, *scratch);
    warpgroup_commit_batch();
  }
  warpgroup_fence_operand(tCrC);
  if constexpr (kARegs) warpgroup_fence_operand(const_cast<TA&>(tCrA));
}

// The two GEMMs of a key tile on this thread's partitions of Q (shared memory or registers), K[stage] and
// V^T[stage]; each call issues one wgmma batch and leaves the wait to the caller.
template <class MmaQK, class MmaPV, class FragQ, class FragK, class FragV, bool kQInRegisters>
struct KeyTileGemms {
  MmaQK mma_qk;
  MmaPV mma_pv;
  FragQ tSrQ;  // (MMA, MMA_M, MMA_K) smem descriptors, or (kQInRegisters) Q itself
  FragK tSrK;  // (MMA, MMA_N, MMA_K, stage)
  FragV tOrV;  // (MMA, MMA_N, MMA_K, stage)

  // S = Q K[stage]^T
  template <class TensorS>
  CUTE_DEVICE void issue_qk(int stage, TensorS& tSrS) {
    wgmma_gemm</*kZeroInit=*/true, kQInRegisters>(mma_qk, tSrQ, tSrK(_, _, _, stage), tSrS);
  }
  // O += P V[stage], P from registers; unless `issue`, only a placeholder batch reading V[stage] (placeholder_wgmma)
  template <class TensorP, class TensorO>
  CUTE_DEVICE void issue_pv(TensorP const& tOrP, int stage, TensorO& tOrO, bool issue = true,
                            float (*scratch)[4] = nullptr) {
    wgmma_gemm</*kZeroInit=*/false, /*kARegs=*/true>(mma_pv, tOrP, tOrV(_, _, _, stage), tOrO, issue, scratch);
  }
};

template <class Traits>
CUTE_DEVICE auto key_tile_gemms(typename Traits::SharedStorage& shared, int thread_idx) {
  Tensor sQ = make_tensor(make_smem_ptr(shared.smem_q.data()), typename Traits::SmemLayoutQ{});    // (BM, D)
  Tensor sK = make_tensor(make_smem_ptr(shared.smem_k.data()), typename Traits::SmemLayoutK{});    // (BN, D, stage)
  Tensor sVt = make_tensor(make_smem_ptr(shared.smem_v.data()), typename Traits::SmemLayoutVt{});  // (D, BN, stage)
  typename Traits::TiledMmaQK mma_qk;
  typename Traits::TiledMmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(thread_idx);
  auto thr_pv = mma_pv.get_thread_slice(thread_idx);
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);
  Tensor tSrK = thr_qk.partition_fragment_B(sK);
  Tensor tOrV = thr_pv.partition_fragment_B(sVt);
  return KeyTileGemms<decltype(mma_qk), decltype(mma_pv), decltype(tSrQ), decltype(tSrK), decltype(tOrV),
                      Traits::kQInRegisters>{mma_qk, mma_pv, tSrQ, tSrK, tOrV};
}

// With Q in registers: after barrier_q, copy this thread's part of the Q tile out of shared memory (ldmatrix,
// the RS wgmma's A layout). Otherwise nothing: the wgmma's read Q from shared memory.
template <class Traits, class Gemms>
CUTE_DEVICE void load_q(typename Traits::SharedStorage& shared, int thread_idx, Gemms& gemms) {
  if constexpr (Traits::kQInRegisters) {
    Tensor sQ = make_tensor(make_smem_ptr(shared.smem_q.data()), typename Traits::SmemLayoutQ{});  // (BM, D)
    auto copy_q = make_tiled_copy_A(Copy_Atom<SM75_U32x4_LDSM_N, typename Traits::Element>{}, gemms.mma_qk);
    auto thr_copy = copy_q.get_thread_slice(thread_idx);
    copy(copy_q, thr_copy.partition_S(sQ), thr_copy.retile_D(gemms.tSrQ));
  }
}

// Accumulator layout ((2,2,N/8), M, N') reread as the A-operand layout of a 16-bit RS wgmma,
// ((2,2,2), M, N/16): each k-block of 16 columns is two adjacent 8-column blocks of the accumulator.
template <class Layout>
CUTE_HOST_DEVICE constexpr auto acc_layout_as_a_operand(Layout const& acc) {
  auto l = logical_divide(get<0>(acc), Shape<Underscore, Underscore, _2>{});  // ((2,2,(2,N/16)), M, N')
  return make_layout(make_layout(get<0>(l), get<1>(l), get<2, 0>(l)), get<1>(acc),
                     coalesce(make_layout(get<2, 1>(l), get<2>(acc))));
}

// Converts a register fragment into `dst` (same size) with packed cvt.rn.{bf16x2,f16x2}.f32, whole registers at a
// time: an element-wise copy of 16-bit values would add byte permutes.
template <class SrcEngine, class SrcLayout, class DstEngine, class DstLayout>
CUTE_DEVICE void convert_fragment_into(Tensor<SrcEngine, SrcLayout> const& src, Tensor<DstEngine, DstLayout>& dst) {
  using From = typename SrcEngine::value_type;
  using To = typename DstEngine::value_type;
  constexpr int N = decltype(size(src))::value;
  static_assert(N == decltype(size(dst))::value);
  cutlass::NumericArrayConverter<To, From, N> convert;
  *reinterpret_cast<cutlass::Array<To, N>*>(dst.data()) =
      convert(*reinterpret_cast<cutlass::Array<From, N> const*>(src.data()));
}

template <class To, class Engine, class Layout>
CUTE_DEVICE auto convert_fragment(Tensor<Engine, Layout> const& src) {
  Tensor dst = make_tensor<To>(src.layout());
  convert_fragment_into(src, dst);
  return dst;
}

}  // namespace liteattn
