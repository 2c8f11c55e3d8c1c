// Host side of one INT8 Q/K instantiation: TMA descriptors over the int8 Q/K copies and the 16-bit V, launch.
#pragma once

#include <cuda_runtime.h>
#include "api.h"
#include "kernel_sm90_int8.cuh"

namespace liteattn {

template <class Element, int kHeadDim>
int run_fwd_int8_hdim(FwdArgs const& args, Int8Scales const& scales, cudaStream_t stream) {
  using Geometry = Int8Geometry<kHeadDim>;
  using Traits = KernelTraitsInt8<kHeadDim, Geometry::kBlockM, Geometry::kBlockN, Geometry::kStages, Element,
                                  Geometry::kSkipRows>;
  if (args.block_m != Traits::kSkipBlockM || args.block_n != Traits::kBlockN) return -1;

  using ShapeQKV = typename Traits::ShapeQKV;
  using StrideQKV = typename Traits::StrideQKV;
  ShapeQKV shape_q{args.seqlen_q, kHeadDim, args.num_heads, args.batch};
  ShapeQKV shape_k{args.seqlen_k, kHeadDim, args.num_heads_kv, args.batch};
  auto stride_of = [](int64_t const* s) { return StrideQKV{s[1], _1{}, s[2], s[0]}; };
  Tensor mQ = make_tensor(make_gmem_ptr(static_cast<int8_t const*>(args.q)), shape_q, stride_of(args.q_stride));
  Tensor mK = make_tensor(make_gmem_ptr(static_cast<int8_t const*>(args.k)), shape_k, stride_of(args.k_stride));
  Tensor mV = make_tensor(make_gmem_ptr(static_cast<Element const*>(args.v)), shape_k, stride_of(args.v_stride));
  auto tile_q = select<0, 2>(typename Traits::TileShapeMNK{});
  auto tile_kv = select<1, 2>(typename Traits::TileShapeMNK{});

  KernelParamsInt8<Traits> params{
      shape_q,
      shape_k,
      make_tma_copy(SM90_TMA_LOAD{}, mQ, typename Traits::SmemLayoutQ{}, tile_q, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mK, take<0, 2>(typename Traits::SmemLayoutK{}), tile_kv, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, mV, take<0, 2>(typename Traits::SmemLayoutV{}), tile_kv, _1{}),
      args.out,
      args.out_stride[0], args.out_stride[1], args.out_stride[2],
      args.lse,
      args.compute_bits,
      args.write_bits,
      args.thresholds,
      args.tile_gaps,
      args.skipped_tiles,
      scales.q_scale,
      scales.k_scale,
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
  };

  // The consumers list the kept tiles of a row (all of them without compute_bits) and stage the skip-test row in
  // shared memory: kMaxSkipWords words, 8192 key tiles.
  if (params.num_words > kMaxSkipWords) return -2;
  auto kernel = &fwd_kernel_sm90_int8<Traits>;
  constexpr int smem = Traits::kSmemBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  if (err != cudaSuccess) return int(err);
  if (params.num_work_tiles == 0) return 0;
  params.split = TailSplit{params.num_work_tiles, 1};  // INT8 calls run the skip-state geometry: never split
  params.num_work_items = params.num_work_tiles;
  int const grid = work_grid_size(params.num_work_items);
  if (grid < 0) return -grid;
  kernel<<<grid, Traits::kNumThreads, smem, stream>>>(params);
  return int(cudaGetLastError());
}

}  // namespace liteattn
