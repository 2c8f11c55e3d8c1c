// Epilogue: normalise O by the row sums, write it (bounds-checked rows) and the natural-log LSE; for a key-range
// piece of a split tile (tail_split.h), its fp32 partial output and LSE for tail_combine.cuh.
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
  int const row0 = work.m_block * Traits::kBlockM + acc_tile_row(thread_idx);
  int const rows[2] = {row0, row0 + 8};

  Element* out = static_cast<Element*>(params.out) + work.batch * params.out_stride_b + work.head * params.out_stride_h;
  constexpr int N = decltype(size(tOrO))::value;
  // Flat index i = 2 cols x 2 rows x column block j (8 columns): thread q = lane % 4 of a quad holds columns
  // 2q, 2q + 1 of every block. Within each pair of blocks (j, j + 1) the even and odd threads of the quad swap one
  // packed pair, so that each thread stores four adjacent columns (8 bytes) and a quad fills 32 contiguous bytes of
  // the row: half the stores, and whole 32-byte sectors instead of half ones.
  static_assert(N % 8 == 0, "column blocks come in pairs");
  bool const odd = lane & 1;
  cutlass::NumericArrayConverter<Element, float, 2> convert;
  CUTE_UNROLL
  for (int i = 0; i < N; i += 8) {  // i: column blocks j = i / 4 (even) and j + 1
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      int const e = i + 2 * r, o = i + 4 + 2 * r;  // this row's pair in block j and in block j + 1
      auto const even_pair = convert(cutlass::Array<float, 2>{tOrO(e) * inv_sum[r], tOrO(e + 1) * inv_sum[r]});
      auto const odd_pair = convert(cutlass::Array<float, 2>{tOrO(o) * inv_sum[r], tOrO(o + 1) * inv_sum[r]});
      uint32_t const mine_even = reinterpret_cast<uint32_t const&>(even_pair);
      uint32_t const mine_odd = reinterpret_cast<uint32_t const&>(odd_pair);
      // Even threads keep block j and receive their odd neighbour's pair of it; odd threads keep block j + 1.
      uint32_t const received = __shfl_xor_sync(0xffffffffu, odd ? mine_even : mine_odd, 1);
      uint2 const four_cols = odd ? make_uint2(received, mine_odd) : make_uint2(mine_even, received);
      int const col = 8 * (i / 4 + (odd ? 1 : 0)) + 4 * ((lane & 3) >> 1);  // first of the four columns
      if (rows[r] < params.seqlen_q) {
        *reinterpret_cast<uint2*>(out + rows[r] * params.out_stride_s + col) = four_cols;
      }
    }
  }
  if ((lane & 3) == 0) {
    float* lse_row = params.lse + (int64_t(work.batch) * params.num_heads + work.head) * params.seqlen_q;
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r)
      if (rows[r] < params.seqlen_q) lse_row[rows[r]] = lse[r];
  }
}

// A piece of a split work tile: O normalised by this key range's row sums, in fp32, and the range's LSE, every row of
// the tile (rows past Sq are never merged).
template <class Traits, class Params, class TensorO>
CUTE_DEVICE void epilogue_store_piece(Params const& params, WorkTile const& work, int thread_idx, TensorO& tOrO,
                                      OnlineSoftmax& softmax) {
  constexpr int kHeadDim = Traits::kHeadDim;
  float inv_sum[2], lse[2];
  softmax.finalize(params.scale, inv_sum, lse);
  int const lane = thread_idx % 32;
  int const row0 = acc_tile_row(thread_idx);
  float* out = params.split_o + int64_t(work.piece) * Traits::kBlockM * kHeadDim;
  constexpr int N = decltype(size(tOrO))::value;
  CUTE_UNROLL
  for (int i = 0; i < N; i += 2) {  // elements i, i + 1: adjacent columns of one row
    int const r = acc_row(i);
    *reinterpret_cast<float2*>(out + (row0 + 8 * r) * kHeadDim + acc_col(i, lane)) =
        make_float2(tOrO(i) * inv_sum[r], tOrO(i + 1) * inv_sum[r]);
  }
  if ((lane & 3) == 0) {
    float* lse_rows = params.split_lse + int64_t(work.piece) * Traits::kBlockM;
    lse_rows[row0] = lse[0];
    lse_rows[row0 + 8] = lse[1];
  }
}

}  // namespace liteattn
