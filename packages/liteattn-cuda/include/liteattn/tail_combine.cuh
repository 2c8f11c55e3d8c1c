// Merges the key-range pieces of split work tiles (tail_split.h): per query row, the pieces' LSEs weight their
// normalised partial outputs, O = sum_i exp(lse_i - lse) O_i with lse = log sum_i exp(lse_i), as merge_attention
// does in core. One CTA per split work tile; each thread owns four adjacent columns of a row at a time.
#pragma once

#include <cmath>
#include <cstdint>
#include <cuda_runtime.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>

#include "tile_scheduler.cuh"

namespace liteattn {

struct TailCombineParams {
  float const* split_o;    // (pieces, block_m, head_dim)
  float const* split_lse;  // (pieces, block_m)
  void* out;
  int64_t out_stride_b, out_stride_s, out_stride_h;
  float* lse;  // (B, H, Sq)
  int seqlen_q, num_heads, num_q_tiles;
  int num_whole, num_splits;
};

template <class Element, int kBlockM, int kHeadDim>
__global__ void __launch_bounds__(256) tail_combine_kernel(TailCombineParams const params) {
  auto const [m_block, head, batch] = tile_coords(params.num_whole + int(blockIdx.x), params.num_q_tiles,
                                                  params.num_heads);
  int64_t const first_piece = int64_t(blockIdx.x) * params.num_splits;
  constexpr int kQuads = kHeadDim / 4;
  cutlass::NumericArrayConverter<Element, float, 4> convert;
  for (int idx = threadIdx.x; idx < kBlockM * kQuads; idx += blockDim.x) {
    int const row = idx / kQuads, col = (idx % kQuads) * 4;
    int const q_row = m_block * kBlockM + row;
    if (q_row >= params.seqlen_q) continue;
    float max_lse = -INFINITY;
    for (int s = 0; s < params.num_splits; ++s)
      max_lse = fmaxf(max_lse, params.split_lse[(first_piece + s) * kBlockM + row]);
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    float weight_sum = 0.f;
    if (max_lse > -INFINITY) {  // else no piece saw a key: O = 0, LSE = -inf, as for an empty row
      for (int s = 0; s < params.num_splits; ++s) {
        float const w = expf(params.split_lse[(first_piece + s) * kBlockM + row] - max_lse);
        float4 const o = *reinterpret_cast<float4 const*>(params.split_o +
                                                          ((first_piece + s) * kBlockM + row) * kHeadDim + col);
        acc.x += w * o.x;
        acc.y += w * o.y;
        acc.z += w * o.z;
        acc.w += w * o.w;
        weight_sum += w;
      }
    }
    float const inv = weight_sum > 0.f ? 1.f / weight_sum : 0.f;
    auto const packed = convert(cutlass::Array<float, 4>{acc.x * inv, acc.y * inv, acc.z * inv, acc.w * inv});
    Element* out = static_cast<Element*>(params.out) + batch * params.out_stride_b + head * params.out_stride_h +
                   q_row * params.out_stride_s + col;
    *reinterpret_cast<uint2*>(out) = reinterpret_cast<uint2 const&>(packed);
    if (col == 0) {
      params.lse[(int64_t(batch) * params.num_heads + head) * params.seqlen_q + q_row] =
          weight_sum > 0.f ? max_lse + logf(weight_sum) : -INFINITY;
    }
  }
}

}  // namespace liteattn
