// Fused INT8 quantisation of Q and K for the INT8 Q/K kernel, following liteattn.quant:
//   Q: one symmetric scale per (b, h, query tile): scale = amax / 127 (1 when amax == 0),
//      q8 = clamp(round_half_even(q / scale), -127, 127), all in fp32 with IEEE division.
//   K: smoothed = k - mean_s(k) per (b, kv head, channel), then the same per (b, kv head, key tile).
// Q is bit-exact with liteattn.quant. K's channel mean is a fixed-order fp32 sum (per-thread runs, a tree over
// 1024-row chunks, then the chunks in order) times 1/Sk, so it can differ from torch's mean in the last bits;
// a value lying on a rounding boundary may then land one int8 step away, and the tile scale may differ by an ulp.
#include <cstdint>
#include <cuda_runtime.h>
#include <cutlass/array.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/numeric_types.h>

#include "liteattn/api.h"

namespace liteattn {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // elements per 16-byte load

template <class Element>
__device__ __forceinline__ void load8(Element const* p, float (&x)[kVec]) {
  auto raw = *reinterpret_cast<cutlass::Array<Element, kVec> const*>(p);
  cutlass::NumericArrayConverter<float, Element, kVec> convert;
  auto f = convert(raw);
  for (int i = 0; i < kVec; ++i) x[i] = f[i];
}

// Per-(b, kv head, 1024-row chunk) channel sums of K: k_partial[b, h, chunk, d].
template <class Element>
__global__ void __launch_bounds__(kThreads) k_channel_sums(Element const* __restrict__ k, float* __restrict__ partial,
                                                           int64_t sb, int64_t ss, int64_t sh, int seqlen, int heads,
                                                           int dim, int num_chunks) {
  __shared__ float red[kThreads][kVec + 1];  // +1: no bank conflicts on the column reads
  int const chunk = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  int const groups = dim / kVec;                 // 16-byte groups per row
  int const rows_per_pass = kThreads / groups;   // dim <= 256: at least 8
  int const g = threadIdx.x % groups, r = threadIdx.x / groups;
  float acc[kVec] = {};
  if (r < rows_per_pass) {
    int const row_end = min(seqlen, (chunk + 1) * kQuantSumRows);
    Element const* base = k + int64_t(b) * sb + int64_t(h) * sh + g * kVec;
    for (int row = chunk * kQuantSumRows + r; row < row_end; row += rows_per_pass) {
      float x[kVec];
      load8(base + int64_t(row) * ss, x);
      for (int i = 0; i < kVec; ++i) acc[i] += x[i];
    }
  }
  for (int i = 0; i < kVec; ++i) red[threadIdx.x][i] = acc[i];
  __syncthreads();
  for (int d = threadIdx.x; d < dim; d += kThreads) {
    int const gi = d / kVec, ei = d % kVec;
    float s = 0.f;
    for (int rr = 0; rr < rows_per_pass; ++rr) s += red[rr * groups + gi][ei];
    partial[((int64_t(b) * heads + h) * num_chunks + chunk) * dim + d] = s;
  }
}

__device__ __forceinline__ float block_max(float v, float* smem) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if (threadIdx.x % 32 == 0) smem[threadIdx.x / 32] = v;
  __syncthreads();
  v = smem[0];
  for (int w = 1; w < kThreads / 32; ++w) v = fmaxf(v, smem[w]);
  return v;
}

// One CTA per (tile, head, batch): amax over the tile's valid rows, then the int8 values. kSmooth subtracts the
// channel mean computed from k_partial. Rows >= seqlen are the zero padding of liteattn.quant: they never raise amax.
template <class Element, bool kSmooth>
__global__ void __launch_bounds__(kThreads) quantize_tiles(Element const* __restrict__ x, int8_t* __restrict__ x8,
                                                           float* __restrict__ scales, float const* __restrict__ partial,
                                                           int64_t sb, int64_t ss, int64_t sh, int seqlen, int heads,
                                                           int dim, int block, int num_tiles, int num_chunks) {
  __shared__ float mean[256];
  __shared__ float warp_max[kThreads / 32];
  int const tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  if constexpr (kSmooth) {
    float const inv_len = 1.f / float(seqlen);  // torch's mean: sum * (1 / N) in fp32
    for (int d = threadIdx.x; d < dim; d += kThreads) {
      float const* p = partial + (int64_t(b) * heads + h) * num_chunks * dim + d;
      float s = 0.f;
      for (int c = 0; c < num_chunks; ++c) s += p[int64_t(c) * dim];
      mean[d] = s * inv_len;
    }
    __syncthreads();
  }
  int const groups = dim / kVec;
  int const row0 = tile * block;
  int const rows = min(block, seqlen - row0);
  int const items = rows * groups;
  Element const* base = x + int64_t(b) * sb + int64_t(h) * sh;

  auto load = [&](int item, float (&v)[kVec]) {
    int const r = item / groups, g = item % groups;
    load8(base + int64_t(row0 + r) * ss + g * kVec, v);
    if constexpr (kSmooth) {
      for (int i = 0; i < kVec; ++i) v[i] = v[i] - mean[g * kVec + i];
    }
  };

  float amax = 0.f;
  for (int item = threadIdx.x; item < items; item += kThreads) {
    float v[kVec];
    load(item, v);
    for (int i = 0; i < kVec; ++i) amax = fmaxf(amax, fabsf(v[i]));
  }
  amax = block_max(amax, warp_max);
  float const scale = amax > 0.f ? __fdiv_rn(amax, 127.f) : 1.f;
  if (threadIdx.x == 0) scales[(int64_t(b) * heads + h) * num_tiles + tile] = scale;

  for (int item = threadIdx.x; item < items; item += kThreads) {
    int const r = item / groups, g = item % groups;
    float v[kVec];
    load(item, v);
    cutlass::Array<int8_t, kVec> out;
    for (int i = 0; i < kVec; ++i) {
      float const q = fminf(fmaxf(rintf(__fdiv_rn(v[i], scale)), -127.f), 127.f);  // rint: half to even
      out[i] = int8_t(q);
    }
    *reinterpret_cast<cutlass::Array<int8_t, kVec>*>(x8 + ((int64_t(b) * seqlen + row0 + r) * heads + h) * dim +
                                                     g * kVec) = out;
  }
}

template <class Element>
int quantize_qk(QuantArgs const& a, cudaStream_t stream) {
  auto const* q = static_cast<Element const*>(a.q);
  auto const* k = static_cast<Element const*>(a.k);
  int const qt = (a.seqlen_q + a.block_m - 1) / a.block_m;
  int const kt = (a.seqlen_k + a.block_n - 1) / a.block_n;
  int const chunks = (a.seqlen_k + kQuantSumRows - 1) / kQuantSumRows;
  if (a.batch == 0) return 0;
  if (kt > 0 && a.num_heads_kv > 0) {
    k_channel_sums<Element><<<dim3(chunks, a.num_heads_kv, a.batch), kThreads, 0, stream>>>(
        k, a.k_partial, a.k_stride[0], a.k_stride[1], a.k_stride[2], a.seqlen_k, a.num_heads_kv, a.head_dim, chunks);
    quantize_tiles<Element, true><<<dim3(kt, a.num_heads_kv, a.batch), kThreads, 0, stream>>>(
        k, a.k8, a.k_scale, a.k_partial, a.k_stride[0], a.k_stride[1], a.k_stride[2], a.seqlen_k, a.num_heads_kv,
        a.head_dim, a.block_n, kt, chunks);
  }
  if (qt > 0 && a.num_heads > 0) {
    quantize_tiles<Element, false><<<dim3(qt, a.num_heads, a.batch), kThreads, 0, stream>>>(
        q, a.q8, a.q_scale, nullptr, a.q_stride[0], a.q_stride[1], a.q_stride[2], a.seqlen_q, a.num_heads,
        a.head_dim, a.block_m, qt, 0);
  }
  return int(cudaGetLastError());
}

}  // namespace

int quantize_qk_sm90(QuantArgs const& args, void* stream) {
  if (args.head_dim <= 0 || args.head_dim % kVec != 0 || args.head_dim > 256) return -1;
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  return args.dtype == DType::kBFloat16 ? quantize_qk<cutlass::bfloat16_t>(args, s)
                                        : quantize_qk<cutlass::half_t>(args, s);
}

}  // namespace liteattn
