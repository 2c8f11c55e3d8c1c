// Consumers: each warpgroup owns 64 query rows; per kept key tile it runs S = Q K^T (wgmma, smem x smem),
// the online softmax in registers, and O += P V (wgmma, P from registers).
#pragma once

#include <type_traits>

#include <cute/atom/copy_atom.hpp>
#include <cute/atom/copy_traits_sm75.hpp>

#include "kernel_traits.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"

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

// Ping-pong between the consumer warpgroups: each issues its wgmma's only in its turn, so one warpgroup's
// softmax runs while the other's GEMMs own the tensor cores. Named barrier 1 + w is "warpgroup w may issue";
// id 0 is __syncthreads. Each turn barrier counts two warpgroups (w syncs, w - 1 arrives), also with three.
#ifndef LITEATTN_PINGPONG
#define LITEATTN_PINGPONG 0  // -DLITEATTN_PINGPONG=0 builds the variant without turn-taking (for measurements)
#endif

template <int kNumMmaWarpgroups_>
struct PingPong {
  static constexpr int kNumMmaWarpgroups = LITEATTN_PINGPONG ? kNumMmaWarpgroups_ : 1;
  int wg;  // consumer warpgroup index
  CUTE_DEVICE static void bar_sync(int id) { asm volatile("bar.sync %0, %1;\n" ::"r"(id), "n"(256)); }
  CUTE_DEVICE static void bar_arrive(int id) { asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "n"(256)); }
  CUTE_DEVICE void wait_turn() const { if constexpr (kNumMmaWarpgroups > 1) bar_sync(1 + wg); }
  CUTE_DEVICE void pass_turn() const { if constexpr (kNumMmaWarpgroups > 1) bar_arrive(1 + (wg + 1) % kNumMmaWarpgroups); }
  // Warpgroup 0 goes first: the last warpgroup hands it the first turn.
  CUTE_DEVICE void start() const { if constexpr (kNumMmaWarpgroups > 1) if (wg == kNumMmaWarpgroups - 1) bar_arrive(1); }
  // Consume warpgroup 0's extra turn so every barrier ends with as many arrivals as syncs.
  CUTE_DEVICE void finish() const { if constexpr (kNumMmaWarpgroups > 1) if (wg == 0) bar_sync(1); }
};

#ifndef LITEATTN_LAZY_RESCALE
#define LITEATTN_LAZY_RESCALE 1
#endif

// O *= correction per row. Once a row's running max settles, most tiles leave every row of a warp unchanged
// (correction exactly 1): a warp-uniform test then skips the D/2 multiplies.
template <class TensorO>
CUTE_DEVICE void rescale_o(TensorO& tOrO, float const (&correction)[2]) {
  if (LITEATTN_LAZY_RESCALE && __all_sync(0xffffffffu, correction[0] == 1.f && correction[1] == 1.f)) return;
  CUTE_UNROLL
  for (int i = 0; i < size(tOrO); ++i) tOrO(i) *= correction[acc_row(i)];
}

// Keys >= Sk of the last key tile were zero-filled by TMA: give them -inf. Branch-free on purpose: a branch
// between wgmma.wait_group 1 and 0 makes the compiler wait for every wgmma at the merge point, which
// serialises the softmax behind the PV wgmma it is meant to overlap.
template <int kBlockN, class TensorS>
CUTE_DEVICE void mask_partial_tile(TensorS& tSrS, int n, int partial_tile, int seqlen_k, int lane) {
  int const valid = n == partial_tile ? seqlen_k - n * kBlockN : kBlockN;
  CUTE_UNROLL
  for (int i = 0; i < size(tSrS); ++i) tSrS(i) = acc_col(i, lane) >= valid ? -INFINITY : tSrS(i);
}

// Signal the producer that this thread's warpgroup no longer reads Q (its last QK^T has completed), so the next
// work tile's Q may overwrite it while this tile's epilogue runs.
template <class SharedStorage>
CUTE_DEVICE void release_q(SharedStorage& shared) {
  shared.barrier_q_empty.arrive();
}

// 16-bit Q/K: the QK^T accumulator holds the scores themselves.
struct ExactScores {
  CUTE_DEVICE float factor(int) const { return 1.f; }
};

// INT8 Q/K: the s32 accumulator times q_scale(query tile) * k_scale(key tile) gives the scores. The softmax takes
// the factor per tile (OnlineSoftmax::step), so it must be positive: the scales are (quantize.cu), and a product
// that underflows is raised to the smallest normal float (its scores are below 1e-30 either way), which keeps
// -inf * factor of masked keys at -inf.
struct Int8ScoreScale {
  float q_scale;
  float const* k_scale_row;  // this (b, kv head)'s k_scale, one per key tile
  CUTE_DEVICE float factor(int n) const { return fmaxf(q_scale * __ldg(k_scale_row + n), 1.17549435e-38f); }
};

// s32 accumulator -> fp32 integer scores. |acc| <= 127^2 * D < 2^24 for D <= 1024, so the conversion is exact
// (I2FP, a plain ALU op); the dequantisation factor is applied by the softmax.
template <class TensorI, class TensorF>
CUTE_DEVICE void convert_scores(TensorI const& acc, TensorF& scores) {
  CUTE_UNROLL
  for (int i = 0; i < size(acc); ++i) scores(i) = __int2float_rn(acc(i));
}

// The registers the softmax reads: the fp32 accumulator itself, or (s32 accumulator) an fp32 copy with its
// register layout, which a 64xN wgmma shares between the two.
template <class TensorAcc>
CUTE_DEVICE decltype(auto) score_registers(TensorAcc& acc) {
  if constexpr (std::is_same_v<typename TensorAcc::value_type, float>) {
    return (acc);
  } else {
    return make_tensor<float>(acc.layout());
  }
}

// S = Q K[stage]^T with nothing else in flight, K[stage] released once S landed, then the scores in `tSrS` (fp32;
// INT8: converted from the s32 accumulator) with the keys past Sk of the partial last tile at -inf. A branch is free
// here (no wgmma in flight); the mask costs ~2 ALU ops per score. Both key loops start a run of tiles this way.
template <int kBlockN, class Gemms, class Pipeline, class PipelineState, class Turn, class TensorAcc, class TensorS>
CUTE_DEVICE void scores_alone(Gemms& gemms, Pipeline& pipeline_k, PipelineState const& state, Turn const& turn,
                              TensorAcc& tSrAcc, TensorS& tSrS, int n, int partial_tile, int seqlen_k, int lane) {
  turn.wait_turn();
  pipeline_k.consumer_wait(state);
  gemms.issue_qk(state.index(), tSrAcc);
  turn.pass_turn();
  warpgroup_wait<0>();
  pipeline_k.consumer_release(state);
  if constexpr (!std::is_same_v<typename TensorAcc::value_type, float>) convert_scores(tSrAcc, tSrS);
  if (n == partial_tile) mask_partial_tile<kBlockN>(tSrS, n, partial_tile, seqlen_k, lane);
}

// A work tile's list entry: the key tile, with (a skip row per warpgroup) the mask of the warpgroups that keep it in
// bits 16 and up; -1 ends the list.
template <class Traits>
CUTE_DEVICE int entry_tile(int entry) {
  return Traits::kSkipRows > 1 ? entry & 0xffff : entry;
}

// Whether list entry `entry` (a tile, not the list's end) is one that warpgroup `wg` (warpgroup_index) computes, as a
// plain test: a vote here (entry_in_row) moved the flat loop's ring position to vector registers.
template <class Traits>
CUTE_DEVICE bool entry_owned_by(int entry, int wg) {
  return ((entry >> (16 + wg)) & 1) != 0;
}

// Whether `entry` is a tile (not the list's end) that warpgroup `wg` computes (kOwn) or lets pass (!kOwn). Every
// thread of a warp reads the same entry; with a skip row per warpgroup a vote tells the compiler so, which keeps the
// K/V ring position that the key loops advance by the answer in uniform registers (without it the position moved to
// vector registers: 24 more instructions per key tile at head dim 64, bench/NOTES-cuda.md, eighteenth round).
template <class Traits, bool kOwn>
CUTE_DEVICE bool entry_in_row(int entry, int wg) {
  if constexpr (Traits::kSkipRows == 1) {
    return kOwn && entry >= 0;
  } else {
    return __all_sync(0xffffffffu, entry >= 0 && entry_owned_by<Traits>(entry, wg) == kOwn);
  }
}

// A tile of another warpgroup's row: the warpgroup waits for its K and V like any tile before releasing them, so
// that every stage's full and empty barriers keep counting one phase per fill.
template <class Traits>
CUTE_DEVICE void pass_tile(typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                           typename Traits::PipelineState& state) {
  pipeline_k.consumer_wait(state);
  pipeline_k.consumer_release(state);
  pipeline_v.consumer_wait(state);
  pipeline_v.consumer_release(state);
  ++state;
}

// With a skip row per warpgroup: from list entry `entry` on, let the tiles of the other warpgroups' rows pass
// (pass_tile) up to this warpgroup's next one, which it returns (-1: none left).
template <class Traits, class TileIterator>
CUTE_DEVICE int pass_to_own(int entry, int wg, TileIterator& tiles, typename Traits::Pipeline& pipeline_k,
                            typename Traits::Pipeline& pipeline_v, typename Traits::PipelineState& state) {
  if constexpr (Traits::kSkipRows > 1) {
    while (entry_in_row<Traits, /*kOwn=*/false>(entry, wg)) {
      pass_tile<Traits>(pipeline_k, pipeline_v, state);
      entry = tiles.next();
    }
  }
  return entry;
}

// The serial key loop: each consumer warpgroup waits for every wgmma before using its result, and the
// warpgroups overlap each other's softmax with their GEMMs. The kernels at head dim 256 and the three-warpgroup
// ones with a skip row per warpgroup run it (overlapped_loop says why); see consumer_mainloop for the arguments.
// With a skip row per warpgroup the list holds the union of the warpgroups' kept tiles: a warpgroup computes those
// its row keeps and lets the others pass (pass_to_own).
template <class Traits, class Params, class TensorO, class SkipWriter, class ScoreScale, class TileIterator>
CUTE_DEVICE int consumer_mainloop_serial(Params const& params, typename Traits::SharedStorage& shared,
                                         typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                                         TileIterator tiles, int thread_idx, TensorO& tOrO,
                                         OnlineSoftmax& softmax, SkipWriter& skip,
                                         typename Traits::PipelineState& state, int q_round, ScoreScale const& scale) {
  using Element = typename Traits::Element;
  constexpr int kBlockN = Traits::kBlockN;
  auto gemms = key_tile_gemms<Traits>(shared, thread_idx);
  Tensor tSrAcc = partition_fragment_C(gemms.mma_qk, select<0, 1>(typename Traits::TileShapeMNK{}));  // (MMA, M, N)
  CUTE_STATIC_ASSERT_V(size<1>(tSrAcc) == _1{} && size<2>(tSrAcc) == _1{});
  auto&& tSrS = score_registers(tSrAcc);

  int const lane = thread_idx % 32;
  int const partial_tile = params.seqlen_k % kBlockN == 0 ? -1 : params.num_k_tiles - 1;
  PingPong<Traits::kNumMmaWarpgroups> turn{thread_idx / 128};
  turn.start();

  // Consumers wait on barrier_q (armed by the producer) once per work tile, before the first QK^T.
  shared.barrier_q.wait(q_round & 1);
  load_q<Traits>(shared, thread_idx, gemms);

  int const wg = thread_idx / 128;
  auto next_own = [&](int entry) {
    return pass_to_own<Traits>(entry, wg, tiles, pipeline_k, pipeline_v, state);
  };
  int own_kept = 0;
  for (int entry = next_own(tiles.next()), entry_next = 0; entry >= 0; entry = next_own(entry_next)) {
    int const n = entry_tile<Traits>(entry);
    ++own_kept;
    float const factor = scale.factor(n);  // INT8: issued before the waits, used after
    scores_alone<kBlockN>(gemms, pipeline_k, state, turn, tSrAcc, tSrS, n, partial_tile, params.seqlen_k, lane);
    float correction[2];
    softmax.step(tSrS, correction, factor);
    bool const needs = skip.needs(softmax);
    skip.record_gap(n, softmax, lane);
    rescale_o(tOrO, correction);
    Tensor rP = convert_fragment<Element>(tSrS);                                        // (MMA, MMA_M, MMA_N)
    Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));          // (MMA, MMA_M, MMA_K)

    // Wait for V[stage], O += P V, release V[stage]; the warp vote runs while the PV wgmma does.
    pipeline_v.consumer_wait(state);
    gemms.issue_pv(tOrP, state.index(), tOrO);
    entry_next = tiles.next();  // under the PV wgmma
    skip.commit(n, needs, lane);
    warpgroup_wait<0>();
    pipeline_v.consumer_release(state);
    ++state;
  }
  release_q(shared);
  turn.finish();
  return own_kept;
}


// Which exp2's of a tile the overlapped loop keeps ahead of its PV wait, per row of a thread's two accumulator
// rows: their count in register order, -1 for all. The compiler places the rest after the wait, where they fill
// the issue gaps of the P conversions (F2FP, which issue at half rate and otherwise run back to back there).
// Measured on an H100 (bench/NOTES-cuda.md, thirteenth and fourteenth rounds): the dense kernels are 3-4% faster
// with row 0's exp2's ahead of the wait and row 1's after it than with all ahead, at head dim 128 (176-key tiles)
// and 64 (192-row tiles), and at 128 2-4% slower than that with any of 12/12, 22/22, 33/0 or 44/22 ahead; the
// skip-state kernels at head dim 128 move by less than 1.5% either way and keep all ahead (those at 64 run the
// serial loop: three warpgroups' registers).
#ifndef LITEATTN_DENSE_PIN_ROW0
#define LITEATTN_DENSE_PIN_ROW0 -1
#endif
#ifndef LITEATTN_DENSE_PIN_ROW1
#define LITEATTN_DENSE_PIN_ROW1 0
#endif
template <class Traits>
constexpr int pinned_exp2s(int row) {
  if (Traits::kSkipState && Traits::kHeadDim == 128) return -1;
  return row == 0 ? LITEATTN_DENSE_PIN_ROW0 : LITEATTN_DENSE_PIN_ROW1;
}

// The key loop software-pipelined inside each warpgroup: S(n) = Q K(n)^T is issued together with
// O += P(p) V(p) for the previous kept tile p, and the softmax of S(n) runs while that PV wgmma does, so a
// warpgroup keeps the tensor cores busy through its own softmax. The producer loads K one tile ahead of V to
// match (producer_load). Between a wgmma issue and its wait the code is straight-line: at any branch merge point
// with a wgmma in flight the compiler waits for every outstanding batch, so the tail mask is chosen per
// iteration (two copies of the body), and the skip-test vote and O's rescale for S(n)'s max shift run after the
// PV wait. (Voting under the next iteration's GEMMs measured no better, bench/NOTES-cuda.md v9.)
template <class Traits, class Params, class TensorO, class SkipWriter, class ScoreScale, class TileIterator>
CUTE_DEVICE int consumer_mainloop_overlap(Params const& params, typename Traits::SharedStorage& shared,
                                          typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                                          TileIterator tiles, int thread_idx, TensorO& tOrO,
                                          OnlineSoftmax& softmax, SkipWriter& skip,
                                          typename Traits::PipelineState& state, int q_round, ScoreScale const& scale) {
  using Element = typename Traits::Element;
  constexpr int kBlockN = Traits::kBlockN;
  auto gemms = key_tile_gemms<Traits>(shared, thread_idx);
  Tensor tSrAcc = partition_fragment_C(gemms.mma_qk, select<0, 1>(typename Traits::TileShapeMNK{}));  // (MMA, M, N)
  CUTE_STATIC_ASSERT_V(size<1>(tSrAcc) == _1{} && size<2>(tSrAcc) == _1{});
  constexpr bool kDequantize = !std::is_same_v<typename decltype(tSrAcc)::value_type, float>;
  auto&& tSrS = score_registers(tSrAcc);
  Tensor rP = make_tensor<Element>(tSrS.layout());                              // (MMA, MMA_M, MMA_N)
  Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));  // (MMA, MMA_M, MMA_K)

  // The compiler sinks exp2's below wgmma.wait_group when nothing reads them earlier; a shared store of a row
  // sum (which depends on the exp2's before it) cannot cross the wait, so those stay under the PV wgmma.
  __shared__ float row_sum_sink[Traits::kNumMmaThreads * 2];
  uint32_t const sink_addr = cute::cast_smem_ptr_to_uint(&row_sum_sink[thread_idx * 2]);

  constexpr int kPin0 = pinned_exp2s<Traits>(0), kPin1 = pinned_exp2s<Traits>(1);

  int const lane = thread_idx % 32;
  int const partial_tile = params.seqlen_k % kBlockN == 0 ? -1 : params.num_k_tiles - 1;
  PingPong<Traits::kNumMmaWarpgroups> turn{thread_idx / 128};
  turn.start();
  shared.barrier_q.wait(q_round & 1);
  load_q<Traits>(shared, thread_idx, gemms);

  // With a skip row per warpgroup the loop runs in segments of consecutive list entries that this warpgroup computes:
  // each starts like a work tile's first kept tile and ends with its last PV, which releases V before the warpgroup
  // lets other rows' tiles pass (pass_to_own). Holding V(p) while passing could deadlock: K(n) may sit behind V
  // stages that only the passing would free.
  int const wg = thread_idx / 128;
  int own_kept = 0;
  int entry = pass_to_own<Traits>(tiles.next(), wg, tiles, pipeline_k, pipeline_v, state);
  float correction[2];
  auto state_v = state;  // V runs one kept tile behind K
  int n_next = -1;       // the list entry after the current tile, read under the GEMMs
  auto iteration = [&](int n, auto masked) {
    float const factor = scale.factor(n);
    turn.wait_turn();
    // Both waits before the first wgmma: a wait loop between the two batches is a branch with S in flight.
    pipeline_k.consumer_wait(state);
    pipeline_v.consumer_wait(state_v);
    gemms.issue_qk(state.index(), tSrAcc);
    gemms.issue_pv(tOrP, state_v.index(), tOrO);
    turn.pass_turn();
    n_next = tiles.next();
    warpgroup_wait<1>();  // S(n) landed; PV(p) may still run
    pipeline_k.consumer_release(state);
    if constexpr (kDequantize) convert_scores(tSrAcc, tSrS);
    if constexpr (decltype(masked)::value) mask_partial_tile<kBlockN>(tSrS, n, n, params.seqlen_k, lane);
    softmax.step<kPin0, kPin1>(tSrS, correction, factor);
    bool const needs = skip.row_needs(softmax);
    if constexpr (kPin0 != 0 && kPin1 != 0) {
      asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(sink_addr), "f"(softmax.pinned_sum[0]),
                   "f"(softmax.pinned_sum[1]) : "memory");
    } else if constexpr (kPin0 != 0 || kPin1 != 0) {
      asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(sink_addr), "f"(softmax.pinned_sum[kPin0 != 0 ? 0 : 1])
                   : "memory");
    }
    warpgroup_wait<0>();  // PV(p) done: O and the P registers are free again
    pipeline_v.consumer_release(state_v);
    skip.commit(n, needs, lane);
    skip.record_gap(n, softmax, lane);
    convert_fragment_into(tSrS, rP);
    // O for S(n)'s max shift, here rather than before the next PV issue: nothing is in flight, so the warp-uniform
    // skip of rescale_o is free (1-3% on the skip-state kernels, bench/NOTES-cuda.md, eighth round).
    rescale_o(tOrO, correction);
    ++state_v;
    ++state;
  };
  while (Traits::kSkipRows == 1 || __all_sync(0xffffffffu, entry >= 0)) {  // the vote: see entry_in_row
    // First tile of the segment: S alone (nothing to overlap it with).
    {
      int const n = entry_tile<Traits>(entry);
      ++own_kept;
      float const factor = scale.factor(n);
      scores_alone<kBlockN>(gemms, pipeline_k, state, turn, tSrAcc, tSrS, n, partial_tile, params.seqlen_k, lane);
      softmax.step(tSrS, correction, factor);
      // Only a work tile's first tile finds O still zero; a later segment's rescales O for this max shift.
      if (Traits::kSkipRows > 1) rescale_o(tOrO, correction);
      skip.vote(n, softmax, lane);
      skip.record_gap(n, softmax, lane);
      convert_fragment_into(tSrS, rP);
    }
    state_v = state;
    ++state;

    n_next = tiles.next();
    while (entry_in_row<Traits, /*kOwn=*/true>(n_next, wg)) {
      int const n = entry_tile<Traits>(n_next);
      ++own_kept;
      if (n == partial_tile) {
        iteration(n, cute::true_type{});
      } else {
        iteration(n, cute::false_type{});
      }
    }

    // The segment's last PV.
    turn.wait_turn();
    pipeline_v.consumer_wait(state_v);
    gemms.issue_pv(tOrP, state_v.index(), tOrO);
    turn.pass_turn();
    warpgroup_wait<0>();
    pipeline_v.consumer_release(state_v);
    if constexpr (Traits::kSkipRows == 1) break;
    entry = pass_to_own<Traits>(n_next, wg, tiles, pipeline_k, pipeline_v, state);
  }
  release_q(shared);
  turn.finish();
  return Traits::kSkipRows == 1 ? tiles.count() : own_kept;
}

// This thread's consumer warpgroup, as a value the compiler knows to be the same in every thread of a warp (votes).
// Tests of list entries against it then stay uniform, and with them the K/V ring position the flat loop advances
// by their answers; computed as thread_idx / 128 it moved to vector registers (bench/NOTES-cuda.md, nineteenth
// round).
template <class Traits>
CUTE_DEVICE int warpgroup_index(int thread_idx) {
  int wg = 0;
  CUTE_UNROLL
  for (int w = 1; w < Traits::kNumMmaWarpgroups; ++w) wg += __all_sync(0xffffffffu, thread_idx >= 128 * w) ? 1 : 0;
  return wg;
}

// The V stage index through which the PV wgmma's descriptors reach Q's shared-memory tile (negative: Q lies before K
// and V, a whole number of stages before V). With Q in registers nothing writes that tile until release_q (the
// producer loads the next work tile's Q only after it), unlike a K or V stage, which TMA may be refilling.
template <class Traits>
CUTE_DEVICE int q_tile_as_v_stage(typename Traits::SharedStorage& shared) {
  constexpr int kStageBytes = Traits::kBlockN * Traits::kHeadDim * sizeof(typename Traits::Element);
  static_assert(sizeof(shared.smem_q) == kStageBytes, "Q's tile is one V stage");
  constexpr size_t kQBeforeV =
      offsetof(typename Traits::SharedStorage, smem_v) - offsetof(typename Traits::SharedStorage, smem_q);
  static_assert(kQBeforeV % kStageBytes == 0, "Q's tile starts a whole number of V stages before V");
  return -int(kQBeforeV / kStageBytes);
}

// The flat loop's partial last key tile arrives with its missing keys replaced by copies of key Sk - 1 and their
// values zero (the producer loads it from the copy that fill_key_pad_tile writes, launch.cuh): the tile's max, the
// skip test and O are those of its real keys, and only the row sums hold key_pad extra copies of key Sk - 1's
// probability. A warpgroup whose row computes that tile removes them once its running max is final (discount). The
// score is computed from Q's registers before the key loop (fp32, within rounding of the wgmma's): computed after
// it, this code made ptxas move the loop's ring position to vector registers.
struct KeyPadDiscount {
  float score[2];  // q . k(Sk - 1) of this thread's two rows (raw, unscaled)
  float copies;    // key_pad, or 0 when this warpgroup's row does not compute the last key tile

  CUTE_DEVICE void discount(OnlineSoftmax& softmax, int thread_idx) const {
    if (copies == 0.f) return;
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      float const p = fast_exp2(fmaf(score[r], softmax.scale_log2, -softmax.row_max[r] * softmax.scale_log2));
      // Row sums are partial per thread until finalize: one thread of each quad discounts.
      if (thread_idx % 4 == 0) softmax.row_sum[r] -= copies * p;
    }
  }
};

template <class Traits, class Params, class Gemms, class TileList>
CUTE_DEVICE KeyPadDiscount key_pad_discount(Params const& params, Gemms const& gemms, TileList const& tiles,
                                            WorkTile const& work, int wg, int thread_idx) {
  KeyPadDiscount d{{0.f, 0.f}, 0.f};
  if (params.key_pad == 0) return d;
  // The list ascends: the last key tile, when listed, is its last entry.
  int const last = tiles.list[tiles.num_kept];
  if (entry_tile<Traits>(last) != params.num_k_tiles - 1 || !entry_owned_by<Traits>(last, wg)) return d;
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  int const head_kv = work.head / params.head_ratio;
  Element const* key = static_cast<Element const*>(params.key_pad_tile) +
                       ((int64_t(work.batch) * (params.num_heads / params.head_ratio) + head_kv) * Traits::kBlockN +
                        Traits::kBlockN - 1) * kHeadDim;
  auto thr_qk = gemms.mma_qk.get_thread_slice(thread_idx);
  Tensor tScQ = thr_qk.partition_A(make_identity_tensor(Shape<Int<Traits::kBlockM>, Int<kHeadDim>>{}));
  CUTE_STATIC_ASSERT_V(size(tScQ) == size(gemms.tSrQ));
  int const row0 = get<0>(tScQ(0));
  float dot[2] = {0.f, 0.f};
  CUTE_UNROLL
  for (int i = 0; i < size(tScQ); ++i) {
    int const r = get<0>(tScQ(i)) == row0 ? 0 : 1;
    dot[r] = fmaf(float(gemms.tSrQ(i)), float(key[get<1>(tScQ(i))]), dot[r]);
  }
  d.score[0] = quad_sum(dot[0]);
  d.score[1] = quad_sum(dot[1]);
  d.copies = float(params.key_pad);
  return d;
}

// The overlapped loop with a skip row per warpgroup in one tile body (flat_loop): for each list entry a warpgroup
// either computes the tile, S(n) issued with P(p) V(p) of its previous tile, or lets it pass after issuing that
// pending PV (holding V(p) while passing could deadlock: K(n) may sit behind V stages only the passing frees). Its
// next own tile issues a placeholder batch instead of a PV (placeholder_wgmma), reading Q's shared-memory tile as its
// V stage: a branch around the PV wgmma's alone leaves the body one body to ptxas. Bodies that differ (an S-alone
// first tile, a masked partial tile) made ptxas keep the list and K/V ring positions in vector registers: 64 R2UR
// and ~8% more time per key tile (bench/NOTES-cuda.md, eighteenth and nineteenth rounds). Hence no mask: the partial
// last key tile is padded (KeyPadDiscount).
template <class Traits, class Params, class TensorO, class SkipWriter, class TileIterator>
CUTE_DEVICE int consumer_mainloop_flat(Params const& params, typename Traits::SharedStorage& shared,
                                       typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                                       TileIterator tiles, int thread_idx, TensorO& tOrO, OnlineSoftmax& softmax,
                                       SkipWriter& skip, typename Traits::PipelineState& state, int q_round,
                                       WorkTile const& work) {
  using Element = typename Traits::Element;
  auto gemms = key_tile_gemms<Traits>(shared, thread_idx);
  Tensor tSrS = partition_fragment_C(gemms.mma_qk, select<0, 1>(typename Traits::TileShapeMNK{}));  // (MMA, M, N)
  CUTE_STATIC_ASSERT_V(size<1>(tSrS) == _1{} && size<2>(tSrS) == _1{});
  Tensor rP = make_tensor<Element>(tSrS.layout());                              // (MMA, MMA_M, MMA_N)
  Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));  // (MMA, MMA_M, MMA_K)
  __shared__ float row_sum_sink[Traits::kNumMmaThreads * 2];  // see consumer_mainloop_overlap
  uint32_t const sink_addr = cute::cast_smem_ptr_to_uint(&row_sum_sink[thread_idx * 2]);

  int const lane = thread_idx % 32;
  int const wg = warpgroup_index<Traits>(thread_idx);
  shared.barrier_q.wait(q_round & 1);
  load_q<Traits>(shared, thread_idx, gemms);
  KeyPadDiscount const pad = key_pad_discount<Traits>(params, gemms, tiles, work, wg, thread_idx);
  int const q_stage = q_tile_as_v_stage<Traits>(shared);

  auto last_pv = [&](auto const& at) {
    pipeline_v.consumer_wait(at);
    gemms.issue_pv(tOrP, at.index(), tOrO);
    warpgroup_wait<0>();
    pipeline_v.consumer_release(at);
  };
  int own_kept = 0;
  bool pv_pending = false;  // P(p) V(p) of this warpgroup's previous tile is still to be issued
  auto state_v = state;     // the ring position of that tile's V
  float correction[2];
  float scratch[4] = {0.f, 0.f, 0.f, 0.f};
  for (int entry = tiles.next(), entry_next; entry >= 0; entry = entry_next) {
    if (entry_owned_by<Traits>(entry, wg)) {  // entry >= 0 here
      int const n = entry_tile<Traits>(entry);
      ++own_kept;
      pipeline_k.consumer_wait(state);
      // Branch-free (a branch here moved the ring position to vector registers): wait for V(p) when a PV is pending,
      // else once more for K(n), which has landed.
      auto* full = pv_pending ? &shared.pipeline_v.full_barrier_[state_v.index()]
                              : &shared.pipeline_k.full_barrier_[state.index()];
      cutlass::arch::ClusterBarrier::wait(reinterpret_cast<uint64_t const*>(full),
                                          pv_pending ? state_v.phase() : state.phase());
      gemms.issue_qk(state.index(), tSrS);
      gemms.issue_pv(tOrP, pv_pending ? state_v.index() : q_stage, tOrO, pv_pending, &scratch);
      entry_next = tiles.next();
      warpgroup_wait<1>();  // S(n) landed; PV(p) may still run
      pipeline_k.consumer_release(state);
      softmax.step(tSrS, correction);
      bool const needs = skip.row_needs(softmax);
      // Keeps every exp2 ahead of the PV wait, as pinned_exp2s does for the skip-state kernels at head dim 128.
      asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(sink_addr), "f"(softmax.pinned_sum[0]),
                   "f"(softmax.pinned_sum[1]) : "memory");
      warpgroup_wait<0>();  // PV(p) done: O and the P registers are free again
      // The pipeline's release of V(p) (every consumer thread arrives, as in consumer_release), when there was one.
      cutlass::arch::ClusterBarrier::arrive(
          reinterpret_cast<uint64_t const*>(&shared.pipeline_v.empty_barrier_[state_v.index()]), 0u,
          uint32_t(pv_pending));
      skip.commit(n, needs, lane);
      skip.record_gap(n, softmax, lane);
      convert_fragment_into(tSrS, rP);
      // O for S(n)'s max shift after the PV wait, as in consumer_mainloop_overlap.
      rescale_o(tOrO, correction);
      state_v = state;
      ++state;
      pv_pending = true;
    } else {
      if (pv_pending) last_pv(state_v);
      pv_pending = false;
      pass_tile<Traits>(pipeline_k, pipeline_v, state);
      entry_next = tiles.next();
    }
  }
  if (pv_pending) last_pv(state_v);
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\nst.shared.v2.f32 [%0], {%3, %4};\n" ::"r"(sink_addr),
               "f"(scratch[0]), "f"(scratch[1]), "f"(scratch[2]), "f"(scratch[3]) : "memory");
  pad.discount(softmax, thread_idx);
  release_q(shared);
  return own_kept;
}

// The consumers' key loop of one work tile (at least one kept key tile); leaves the unnormalised O in tOrO and
// returns how many tiles the thread's skip row computed.
// `state` is the K/V ring position carried across work tiles; `q_round` the number of Q loads before this tile's.
// With INT8 Q/K (Traits::TiledMmaQK accumulates s32), `scale` gives each tile's dequantisation factor and the
// softmax, skip test and PV run on the dequantised scores unchanged.
template <class Traits, class Params, class TensorO, class SkipWriter, class TileIterator,
          class ScoreScale = ExactScores>
CUTE_DEVICE int consumer_mainloop(Params const& params, WorkTile const& work, typename Traits::SharedStorage& shared,
                                  typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                                  TileIterator tiles, int thread_idx, TensorO& tOrO, OnlineSoftmax& softmax,
                                  SkipWriter& skip, typename Traits::PipelineState& state, int q_round,
                                  ScoreScale const& scale = {}) {
  static_assert(!LITEATTN_PINGPONG || !Traits::kSkipState || Traits::kNumMmaWarpgroups < kSkipBarrierId,
                "the ping-pong barriers 1..W would collide with the skip test's named barrier");
  static_assert(!LITEATTN_PINGPONG || Traits::kSkipRows == 1, "turn-taking needs every warpgroup on every tile");
  // Built with -DLITEATTN_OVERLAP=0 for 64-row skip tiles at head dim 128, this combination failed the GPU parity tests
  // (fp16, GQA, reverse visit, a partial last key tile) and wrote a different skip state over the video run; the
  // cause is not known (bench/NOTES-cuda.md, eighteenth round), so it does not build.
  static_assert(overlapped_loop<Traits>() || Traits::kSkipRows == 1 || Traits::kHeadDim == 64,
                "the serial loop with a skip row per warpgroup is only validated at head dim 64");
  if constexpr (flat_loop<Traits>()) {
    return consumer_mainloop_flat<Traits>(params, shared, pipeline_k, pipeline_v, tiles, thread_idx, tOrO, softmax,
                                          skip, state, q_round, work);
  } else if constexpr (overlapped_loop<Traits>()) {
    return consumer_mainloop_overlap<Traits>(params, shared, pipeline_k, pipeline_v, tiles, thread_idx, tOrO,
                                             softmax, skip, state, q_round, scale);
  } else {
    return consumer_mainloop_serial<Traits>(params, shared, pipeline_k, pipeline_v, tiles, thread_idx, tOrO,
                                            softmax, skip, state, q_round, scale);
  }
}

}  // namespace liteattn
