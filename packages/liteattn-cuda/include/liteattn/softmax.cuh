// Online softmax over the wgmma accumulator fragment, in base 2.
//
// A 64xN wgmma accumulator gives each thread values ((2 cols, 2 rows, N/8 col-blocks)): flat index i holds
// row (i/2)%2 (0: lane/4, 1: lane/4 + 8 within the warp's 16 rows) and column 2*(lane%4) + i%2 + 8*(i/4).
// The 4 threads of a quad share a row, so row reductions are 2 xor-shuffles.
#pragma once

#include <cute/tensor.hpp>
#include <cmath>

namespace liteattn {

using namespace cute;

CUTE_DEVICE int acc_row(int i) { return (i >> 1) & 1; }
CUTE_DEVICE int acc_col(int i, int lane) { return 2 * (lane & 3) + (i & 1) + 8 * (i >> 2); }
// How many values of its row come before flat index i in this thread's fragment.
CUTE_HOST_DEVICE constexpr int acc_rank_in_row(int i) { return (i >> 2) * 2 + (i & 1); }
// The query-tile row of consumer thread `thread_idx`'s accumulator row 0 (row 1 is 8 below): warpgroup (64 rows),
// warp (16 rows), quad (1 row).
CUTE_DEVICE int acc_tile_row(int thread_idx) {
  return (thread_idx / 128) * 64 + ((thread_idx % 128) / 32) * 16 + (thread_idx % 32) / 4;
}

#ifndef LITEATTN_FAST_EXP2
#define LITEATTN_FAST_EXP2 1
#endif

// MUFU.EX2 alone: exp2f adds range fix-ups for denormal results, which a probability can flush to 0.
CUTE_DEVICE float fast_exp2(float x) {
#if LITEATTN_FAST_EXP2
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#else
  return exp2f(x);
#endif
}

CUTE_DEVICE float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}
CUTE_DEVICE float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}

struct OnlineSoftmax {
  float row_max[2];   // running max of the raw scores q.k (unscaled)
  float row_sum[2];   // this thread's partial sum of exp2; reduced over the quad once, at the end
  float scale_log2;   // softmax scale * log2(e)
  float tile_max[2];  // max raw score of the last tile (quad-reduced), for the skip test
  float prev_max[2];  // running max before the last tile (-inf before the first), for the skip test
  float pinned_sum[2];  // row sums after the exp2's that step<kPin0, kPin1> names (see step)

  CUTE_DEVICE explicit OnlineSoftmax(float scale_log2_) : scale_log2(scale_log2_) {
    row_max[0] = row_max[1] = -INFINITY;
    row_sum[0] = row_sum[1] = 0.f;
  }

  // Turns the tile's scores, score_factor * tSrS, into unnormalised probabilities in place; returns the factor
  // that rescales each row's accumulator (exp2 of the max shift). score_factor > 0 scales INT8 tiles (one
  // dequantisation factor per tile): a positive factor commutes with the max, so it costs one multiply per row
  // and folds into the exp2's FFMA instead of one multiply per score.
  //
  // pinned_sum[r] is row r's partial sum after its first kPin_r probabilities in register order (-1: all of
  // them): a caller that stores it keeps exactly those exp2's ahead of the store.
  template <int kPin0 = -1, int kPin1 = -1, class TensorS>
  CUTE_DEVICE void step(TensorS& tSrS, float (&correction)[2], float score_factor = 1.f) {
    constexpr int N = decltype(size(tSrS))::value;
    tile_max[0] = tile_max[1] = -INFINITY;
    CUTE_UNROLL
    for (int i = 0; i < N; ++i) tile_max[acc_row(i)] = fmaxf(tile_max[acc_row(i)], tSrS(i));
    float new_max[2];
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      tile_max[r] = quad_max(tile_max[r]) * score_factor;
      prev_max[r] = row_max[r];
      // Every kept key tile has at least one valid key, so new_max is finite after the first tile.
      new_max[r] = fmaxf(row_max[r], tile_max[r]);
      correction[r] = exp2f((row_max[r] - new_max[r]) * scale_log2);
      row_max[r] = new_max[r];
      row_sum[r] *= correction[r];
    }
    float const max_scaled[2] = {new_max[0] * scale_log2, new_max[1] * scale_log2};
    float const tile_scale_log2 = scale_log2 * score_factor;
    CUTE_UNROLL
    for (int i = 0; i < N; ++i) {
      // One FFMA + MUFU.EX2 per score; masked scores are -inf and give 0.
      float p = fast_exp2(fmaf(tSrS(i), tile_scale_log2, -max_scaled[acc_row(i)]));
      tSrS(i) = p;
      row_sum[acc_row(i)] += p;
      if (acc_rank_in_row(i) + 1 == (acc_row(i) == 0 ? kPin0 : kPin1)) pinned_sum[acc_row(i)] = row_sum[acc_row(i)];
    }
    if (kPin0 < 0) pinned_sum[0] = row_sum[0];
    if (kPin1 < 0) pinned_sum[1] = row_sum[1];
  }

  // Final per-row 1/sum and natural-log LSE; a row that saw no key gets scale 0 and lse -inf.
  CUTE_DEVICE void finalize(float scale, float (&inv_sum)[2], float (&lse)[2]) {
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      float s = quad_sum(row_sum[r]);
      bool empty = !(s > 0.f);
      inv_sum[r] = empty ? 0.f : 1.f / s;
      lse[r] = empty ? -INFINITY : row_max[r] * scale + logf(s);
    }
  }
};

}  // namespace liteattn
