// Epilogue: normalise O by the row sums, write it (bounds-checked rows) and the natural-log LSE.
#pragma once

#include "kernel_traits.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"

namespace liteattn {

template <class Traits, class Params, class TensorO>
CUTE_DEVICE void epilogue_store(Params const& params, WorkTile const& work, int thread_idx, TensorO& tOrO,
                                OnlineSoftmax& softmax) {
  using Element = typename Traits::Element;
  float inv_sum[2], lse[2];
  softmax.finalize(params.scale, inv_sum, lse);

  int const lane = thread_idx % 32;
  // Rows of this thread inside the query tile: warpgroup (64 rows), warp (16 rows), quad (1 row), +8.
  int const row0 = (thread_idx / 128) * 64 + ((thread_idx % 128) / 32) * 16 + lane / 4;
  int const rows[2] = {work.m_block * Traits::kBlockM + row0, work.m_block * Traits::kBlockM + row0 + 8};

  Element* out = static_cast<Element*>(params.out) + work.batch * params.out_stride_b + work.head * params.out_stride_h;
  constexpr int N = decltype(size(tOrO))::value;
  CUTE_UNROLL
  for (int i = 0; i < N; i += 2) {
    int const r = acc_row(i);
    if (rows[r] < params.seqlen_q) {
      // Two adjacent columns per store; a quad covers 16 contiguous bytes of the row.
      cutlass::Array<float, 2> pair = {tOrO(i) * inv_sum[r], tOrO(i + 1) * inv_sum[r]};
      cutlass::NumericArrayConverter<Element, float, 2> convert;
      *reinterpret_cast<cutlass::Array<Element, 2>*>(out + rows[r] * params.out_stride_s + acc_col(i, lane)) =
          convert(pair);
    }
  }
  if ((lane & 3) == 0) {
    float* lse_row = params.lse + (int64_t(work.batch) * params.num_heads + work.head) * params.seqlen_q;
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r)
      if (rows[r] < params.seqlen_q) lse_row[rows[r]] = lse[r];
  }
}

}  // namespace liteattn
