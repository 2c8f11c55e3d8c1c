// Host side of one instantiation: builds the TMA descriptors and launches the kernel.
#pragma once

#include <cstdlib>
#include <cstring>
#include <cuda_runtime.h>
#include "api.h"
#include "kernel_sm90.cuh"
#include "tail_combine.cuh"

namespace liteattn {

// The split of a dense call's last wave into key ranges (tail_split.h) on the current device: none with
// LITEATTN_CUDA_TAIL_SPLIT=0 (for comparisons) or in trace builds (a trace is written per work tile).
inline TailSplit tail_split_on_device(int num_work_tiles, int num_k_tiles) {
  TailSplit const whole{num_work_tiles, 1};
  char const* env = std::getenv("LITEATTN_CUDA_TAIL_SPLIT");
  if (LITEATTN_TRACE || (env != nullptr && std::strcmp(env, "0") == 0)) return whole;
  int const sms = current_device_sms();
  return sms > 0 ? plan_tail_split(num_work_tiles, num_k_tiles, sms) : whole;
}

// A call that neither reads nor writes a skip state (nor asks for tile gaps) is free to use key tiles of any
// width: it runs the dense geometry, whose wider tiles cut the per-tile fixed cost of the key loop.
inline bool is_dense_call(FwdArgs const& args) {
  return args.compute_bits == nullptr && args.write_bits == nullptr && args.tile_gaps == nullptr;
}

// The padded last key tile of kernels that mask no keys (flat_loop): per (b, kv head), the last key tile's keys
// followed by copies of key Sk - 1 where keys past Sk would be, (B, Hkv, kBlockN, D) contiguous. Equal scores keep
// the tile's max and the skip test exact; TMA zero-fills V past Sk, so O gains nothing from the copies, and
// KeyPadDiscount (mainloop_flat.cuh) takes them out of the row sums.
template <class Traits>
int64_t key_pad_workspace_floats(FwdArgs const& args) {
  if (!flat_loop<Traits>() || args.seqlen_k % Traits::kBlockN == 0) return 0;
  int64_t const bytes = int64_t(args.batch) * args.num_heads_kv * Traits::kBlockN * Traits::kHeadDim *
                        sizeof(typename Traits::Element);
  return bytes / sizeof(float);
}

template <class Element, int kBlockN, int kHeadDim>
__global__ void fill_key_pad_tile(Element const* k, int64_t stride_b, int64_t stride_s, int64_t stride_h,
                                  int seqlen_k, int num_heads_kv, Element* tile) {
  constexpr int kChunksPerRow = kHeadDim * int(sizeof(Element)) / 16;  // TMA needs 16-byte aligned rows anyway
  int const b = blockIdx.x / num_heads_kv, h = blockIdx.x % num_heads_kv;
  int const first = (seqlen_k - 1) / kBlockN * kBlockN;
  for (int i = threadIdx.x; i < kBlockN * kChunksPerRow; i += blockDim.x) {
    int const row = i / kChunksPerRow, chunk = i % kChunksPerRow;
    int const key = min(first + row, seqlen_k - 1);
    uint4 const* src = reinterpret_cast<uint4 const*>(k + b * stride_b + key * stride_s + h * stride_h);
    reinterpret_cast<uint4*>(tile + (int64_t(blockIdx.x) * kBlockN + row) * kHeadDim)[chunk] = src[chunk];
  }
}

// Launches one kernel instantiation; the caller has checked that Traits fits the call.
template <class Traits>
int launch_fwd(FwdArgs const& args, cudaStream_t stream) {
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  using ShapeQKV = typename Traits::ShapeQKV;
  using StrideQKV = typename Traits::StrideQKV;
  ShapeQKV shape_q{args.seqlen_q, kHeadDim, args.num_heads, args.batch};
  ShapeQKV shape_k{args.seqlen_k, kHeadDim, args.num_heads_kv, args.batch};
  auto stride_of = [](int64_t const* s) { return StrideQKV{s[1], _1{}, s[2], s[0]}; };
  Tensor mQ = make_tensor(make_gmem_ptr(static_cast<Element const*>(args.q)), shape_q, stride_of(args.q_stride));
  Tensor mK = make_tensor(make_gmem_ptr(static_cast<Element const*>(args.k)), shape_k, stride_of(args.k_stride));
  Tensor mV = make_tensor(make_gmem_ptr(static_cast<Element const*>(args.v)), shape_k, stride_of(args.v_stride));

  KernelParams<Traits> params{
      shape_q,
      shape_k,
      make_tma_copy(SM90_TMA_LOAD{}, mQ, typename Traits::SmemLayoutQ{}, select<0, 2>(typename Traits::TileShapeMNK{}), _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mK, take<0, 2>(typename Traits::SmemLayoutK{}), select<1, 2>(typename Traits::TileShapeMNK{}), _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mV, take<0, 2>(typename Traits::SmemLayoutV{}), select<1, 2>(typename Traits::TileShapeMNK{}), _1{}),
      args.out,
      args.out_stride[0], args.out_stride[1], args.out_stride[2],
      args.lse,
      args.compute_bits,
      args.write_bits,
      args.thresholds,
      args.tile_gaps,
      args.skipped_tiles,
      args.seqlen_q, args.seqlen_k, args.num_heads, args.num_heads / args.num_heads_kv,
      (args.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM,
      (args.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN,
      ((args.seqlen_k + Traits::kBlockN - 1) / Traits::kBlockN + 31) / 32,
      args.batch * args.num_heads * ((args.seqlen_q + Traits::kBlockM - 1) / Traits::kBlockM),
      (args.seqlen_q + Traits::kSkipBlockM - 1) / Traits::kSkipBlockM,
      args.scale,
      args.scale * 1.44269504088896340736f,  // log2(e)
      args.reverse,
      TailSplit{0, 1},  // set below
      0,
      nullptr,
      nullptr,
      {},  // tma_k_pad, key_pad_tile, key_pad: set below for the flat loop's calls
      nullptr,
      0,
  };

  // Kernels with a skip state list the kept tiles of a row (all of them without compute_bits) and stage the
  // skip-test row in shared memory: kMaxSkipWords words, 8192 key tiles.
  if (Traits::kSkipState && params.num_words > kMaxSkipWords) return -2;
  auto kernel = &fwd_kernel_sm90<Traits>;
  constexpr int smem = Traits::kSmemBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return int(err);
  if (params.num_work_tiles == 0) return 0;
  params.split = TailSplit{params.num_work_tiles, 1};
  // Only dense calls split: a skip test (or tile gaps) needs each row's keys in one visit order, and calls that
  // read a keep bitmask measured no faster split (bench/NOTES-cuda.md, fifteenth round).
  if (is_dense_call(args)) {
    TailSplit const split = tail_split_on_device(params.num_work_tiles, params.num_k_tiles);
    if (args.workspace != nullptr &&
        tail_split_workspace_floats(split, params.num_work_tiles, Traits::kBlockM, kHeadDim) <=
            args.workspace_floats) {
      params.split = split;
    }
  }
  if constexpr (flat_loop<Traits>()) {
    int64_t const pad_floats = key_pad_workspace_floats<Traits>(args);
    if (pad_floats > 0) {
      if (args.workspace == nullptr || args.workspace_floats < pad_floats) return -3;
      auto* tile = reinterpret_cast<Element*>(args.workspace);
      fill_key_pad_tile<Element, Traits::kBlockN, kHeadDim><<<args.batch * args.num_heads_kv, 256, 0, stream>>>(
          static_cast<Element const*>(args.k), args.k_stride[0], args.k_stride[1], args.k_stride[2], args.seqlen_k,
          args.num_heads_kv, tile);
      Tensor mKpad = make_tensor(make_gmem_ptr(static_cast<Element const*>(tile)),
                                 ShapeQKV{Traits::kBlockN, kHeadDim, args.num_heads_kv, args.batch},
                                 StrideQKV{kHeadDim, _1{}, int64_t(Traits::kBlockN) * kHeadDim,
                                           int64_t(args.num_heads_kv) * Traits::kBlockN * kHeadDim});
      params.tma_k_pad = make_tma_copy(SM90_TMA_LOAD{}, mKpad, take<0, 2>(typename Traits::SmemLayoutK{}),
                                       select<1, 2>(typename Traits::TileShapeMNK{}), _1{});
      params.key_pad_tile = tile;
      params.key_pad = params.num_k_tiles * Traits::kBlockN - args.seqlen_k;
    }
  }
  params.num_work_items = params.split.num_work_items(params.num_work_tiles);
  int const pieces = params.split.num_pieces(params.num_work_tiles);
  params.split_o = args.workspace;
  params.split_lse = args.workspace + int64_t(pieces) * Traits::kBlockM * Traits::kHeadDim;
  int const grid = work_grid_size(params.num_work_items);
  if (grid < 0) return -grid;
  kernel<<<grid, Traits::kNumThreads, smem, stream>>>(params);
  if (pieces > 0) {
    TailCombineParams const combine{params.split_o,      params.split_lse,       params.out,
                                    params.out_stride_b, params.out_stride_s,    params.out_stride_h,
                                    params.lse,          params.seqlen_q,        params.num_heads,
                                    params.num_q_tiles,  params.split.num_whole, params.split.num_splits};
    tail_combine_kernel<Element, Traits::kBlockM, kHeadDim>
        <<<params.num_work_tiles - params.split.num_whole, 256, 0, stream>>>(combine);
  }
  return int(cudaGetLastError());
}

// The kernel of calls with a skip state in the default tiles (and, where DenseGeometry is the same, of dense calls);
// kSkipTest = false: the variant for calls that write no state and no tile gaps.
template <class Element, int kHeadDim, bool kSkipTest = true>
using SkipStateTraits = KernelTraits<kHeadDim, DefaultGeometry<kHeadDim>::kBlockM, DefaultGeometry<kHeadDim>::kBlockN,
                                     DefaultGeometry<kHeadDim>::kStages, Element, /*kSkipState=*/true,
                                     DefaultGeometry<kHeadDim>::kSkipRows, kSkipTest>;
// The kernel of calls with a skip state in FineSkipGeometry's tiles (head dim 128 only).
template <class Element, int kHeadDim, bool kSkipTest = true>
using FineSkipStateTraits =
    KernelTraits<kHeadDim, FineSkipGeometry<kHeadDim>::kBlockM, FineSkipGeometry<kHeadDim>::kBlockN,
                 FineSkipGeometry<kHeadDim>::kStages, Element, /*kSkipState=*/true,
                 FineSkipGeometry<kHeadDim>::kSkipRows, kSkipTest>;

// Whether a call runs the skip test or records tile gaps; the others read at most a keep bitmask, and their kernel
// has none of that code (SkipStateTraits' kSkipTest).
inline bool runs_skip_test(FwdArgs const& args) { return args.write_bits != nullptr || args.tile_gaps != nullptr; }

// Whether a head dim has the kernel without the skip test's code. On an H100 it runs read-only calls up to 2.7%
// faster at head dim 128; at 64 it spilled in its key loop and ran 7% slower, and with Q in shared memory instead
// (no spill) no faster (bench/NOTES-cuda.md, twenty-third and twenty-fourth rounds), so calls there run the kernel
// with the skip test, which then tests nothing.
template <int kHeadDim>
constexpr bool has_read_only_kernel() {
  return kHeadDim != 64;
}

// The skip-state kernel with or without the skip test's code, as the call needs.
template <class Element, int kHeadDim, template <class, int, bool> class Traits>
int launch_skip_state(FwdArgs const& args, cudaStream_t stream) {
  if constexpr (has_read_only_kernel<kHeadDim>()) {
    if (!runs_skip_test(args)) return launch_fwd<Traits<Element, kHeadDim, false>>(args, stream);
  }
  return launch_fwd<Traits<Element, kHeadDim, true>>(args, stream);
}

// Whether the call's tiles are FineSkipGeometry's (at a head dim that has one) rather than the default's.
template <class Element, int kHeadDim>
bool wants_fine_skip_tiles(FwdArgs const& args) {
  if constexpr (kHeadDim == 128) {
    using Fine = FineSkipStateTraits<Element, kHeadDim>;
    return args.block_m == Fine::kSkipBlockM && args.block_n == Fine::kBlockN;
  } else {
    return false;
  }
}

// fp32 floats of the workspace a call needs (0: none): its tail split (dense calls, which run the dense geometry;
// at head dim 256 that is the skip-state kernel's) or its padded last key tile (key_pad_workspace_floats).
template <class Element, int kHeadDim>
int64_t workspace_floats_hdim(FwdArgs const& args) {
  if (!is_dense_call(args)) {
    if constexpr (kHeadDim == 128) {
      if (wants_fine_skip_tiles<Element, kHeadDim>(args))
        return key_pad_workspace_floats<FineSkipStateTraits<Element, kHeadDim>>(args);
    }
    return key_pad_workspace_floats<SkipStateTraits<Element, kHeadDim>>(args);
  }
  using Dense = DenseGeometry<kHeadDim>;
  int const tiles = args.batch * args.num_heads * ((args.seqlen_q + Dense::kBlockM - 1) / Dense::kBlockM);
  TailSplit const split = tail_split_on_device(tiles, (args.seqlen_k + Dense::kBlockN - 1) / Dense::kBlockN);
  return tail_split_workspace_floats(split, tiles, Dense::kBlockM, kHeadDim);
}

template <class Element, int kHeadDim>
int run_fwd_hdim(FwdArgs const& args, cudaStream_t stream) {
  using Geometry = DefaultGeometry<kHeadDim>;
  using Traits = SkipStateTraits<Element, kHeadDim>;
  bool const fine = wants_fine_skip_tiles<Element, kHeadDim>(args);
  if (!fine && (args.block_m != Traits::kSkipBlockM || args.block_n != Traits::kBlockN)) return -1;
  using Dense = DenseGeometry<kHeadDim>;
  if constexpr (Dense::kBlockN != Geometry::kBlockN || Dense::kBlockM != Geometry::kBlockM || Geometry::kSkipRows > 1) {
    if (is_dense_call(args)) {  // the tiles matter only to a skip state: any block_m runs the dense geometry
      using DenseTraits = KernelTraits<kHeadDim, Dense::kBlockM, Dense::kBlockN, Dense::kStages, Element,
                                       /*kSkipState=*/false>;
      return launch_fwd<DenseTraits>(args, stream);
    }
  }
  if constexpr (kHeadDim == 128) {
    if (fine) return launch_skip_state<Element, kHeadDim, FineSkipStateTraits>(args, stream);
  }
  return launch_skip_state<Element, kHeadDim, SkipStateTraits>(args, stream);
}

}  // namespace liteattn
