// Pieces the consumers' key loops share: turn-taking between warpgroups, O's rescale, the partial last key tile's
// mask, INT8 scores, an S computed alone, and (a skip row per warpgroup) the list entries a warpgroup lets pass.
#pragma once

#include <type_traits>

#include "kernel_traits.cuh"
#include "softmax.cuh"

namespace liteattn {

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

}  // namespace liteattn
