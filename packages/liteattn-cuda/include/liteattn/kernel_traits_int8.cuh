// Compile-time geometry of the INT8 Q/K instantiations: S = Q K^T runs as an s8 x s8 -> s32 wgmma on int8
// copies of Q and (smoothed) K (csrc/quantize.cu), then is dequantised with q_scale(tile) * k_scale(tile);
// O += P V stays a 16-bit RS wgmma on the original V. Same roles, pipelines and V layout as KernelTraits.
#pragma once

#include "kernel_traits.cuh"

namespace liteattn {

using namespace cute;

// Largest K-major swizzle atom whose row fits the head dim: 128-byte rows for int8 at D >= 128, 64-byte at 64.
template <class T, int kHeadDim>
using KMajorSmemAtom = std::conditional_t<(kHeadDim * sizeof_bits_v<T> / 8) % 128 == 0, GMMA::Layout_K_SW128_Atom<T>,
                                          GMMA::Layout_K_SW64_Atom<T>>;

template <int kHeadDim_, int kBlockM_, int kBlockN_, int kStages_, class Element_, int kSkipRows_ = 1>
struct KernelTraitsInt8 : SkipRows<kBlockM_, kBlockM_ / 64, kSkipRows_> {
  using typename SkipRows<kBlockM_, kBlockM_ / 64, kSkipRows_>::KeptEntry;
  using SkipRows<kBlockM_, kBlockM_ / 64, kSkipRows_>::kSkipRows;
  using Element = Element_;       // V, P and O: fp16 / bf16
  using ElementQK = int8_t;       // Q and K as stored in smem
  using ElementAccum = float;     // O and the dequantised scores
  using ElementAccumQK = int32_t; // the QK^T wgmma accumulator
  static constexpr bool kSkipState = true;  // INT8 calls always run the skip-state geometry
  static constexpr bool kSkipTest = true;   // with the skip test's code, used or not
  static constexpr bool kQInRegisters = false;  // Q (int8) is read from shared memory

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  static constexpr int kNumMmaWarpgroups = kBlockM / 64;
  static constexpr int kNumMmaThreads = kNumMmaWarpgroups * 128;
  static constexpr int kNumThreads = kNumMmaThreads + 128;
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = kNumMmaWarpgroups == 2 ? 240 : 160;
  static_assert(register_split_fits(kNumThreads, kNumMmaThreads, kProducerRegs, kConsumerRegs),
                "the register split exceeds the CTA's registers");

  static_assert(kHeadDim % 64 == 0, "head dim must be a multiple of 64");
  static_assert(kBlockM % 64 == 0 && kBlockN % 16 == 0);

  using TileShapeMNK = Shape<Int<kBlockM>, Int<kBlockN>, Int<kHeadDim>>;
  using TileShapePV = Shape<Int<kBlockM>, Int<kHeadDim>, Int<kBlockN>>;
  using AtomLayoutMNK = Layout<Shape<Int<kNumMmaWarpgroups>, _1, _1>>;

  // S = Q K^T: int8 x int8 -> int32, both operands in smem, K-major (the only majorness int8 wgmma has).
  using TiledMmaQK = decltype(make_tiled_mma(
      SM90::GMMA::ss_op_selector<ElementQK, ElementQK, ElementAccumQK, TileShapeMNK>(), AtomLayoutMNK{}));
  using TiledMmaPV = decltype(make_tiled_mma(
      SM90::GMMA::rs_op_selector<Element, Element, ElementAccum, TileShapePV, GMMA::Major::K,
                                 GMMA::Major::MN>(),
      AtomLayoutMNK{}));

  using SmemLayoutAtomQK = KMajorSmemAtom<ElementQK, kHeadDim>;
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtomQK{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(tile_to_shape(SmemLayoutAtomQK{},
                                             Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  // V exactly as in the 16-bit kernel.
  using SmemLayoutAtomV = GMMA::Layout_K_SW128_Atom<Element>;
  using SmemLayoutV = decltype(tile_to_shape(SmemLayoutAtomV{},
                                             Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutVt = decltype(composition(
      SmemLayoutV{},
      make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));

  using ShapeQKV = cute::Shape<int32_t, int32_t, int32_t, int32_t>;
  using StrideQKV = cute::Stride<int64_t, _1, int64_t, int64_t>;

  using TmaQ = decltype(make_tma_copy(
      SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<ElementQK const*>(nullptr)), ShapeQKV{}, StrideQKV{}),
      SmemLayoutQ{}, select<0, 2>(TileShapeMNK{}), _1{}));
  using TmaK = decltype(make_tma_copy(
      SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<ElementQK const*>(nullptr)), ShapeQKV{}, StrideQKV{}),
      take<0, 2>(SmemLayoutK{}), select<1, 2>(TileShapeMNK{}), _1{}));
  using TmaV = decltype(make_tma_copy(
      SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), ShapeQKV{}, StrideQKV{}),
      take<0, 2>(SmemLayoutV{}), select<1, 2>(TileShapeMNK{}), _1{}));

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename cutlass::PipelineState<kStages>;

  static constexpr uint32_t kTmaBytesQ = cosize_v<SmemLayoutQ> * sizeof(ElementQK);
  static constexpr uint32_t kTmaBytesK = size(take<0, 2>(SmemLayoutK{})) * sizeof(ElementQK);
  static constexpr uint32_t kTmaBytesV = size(take<0, 2>(SmemLayoutV{})) * sizeof(Element);

  struct SharedStorage {
    alignas(1024) cute::array_aligned<ElementQK, cosize_v<SmemLayoutQ>> smem_q;
    alignas(1024) cute::array_aligned<ElementQK, cosize_v<SmemLayoutK>> smem_k;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutV>> smem_v;
    alignas(16) uint32_t skip_words[kSkipRows * kMaxSkipWords];
    alignas(16) uint32_t keep_words_producer[kMaxSkipWords];  // the producer's copy of this work tile's keep row
    // The consumers' list of kept tiles (KeptTileList, kernels with a skip state) and its per-warp counts.
    alignas(16) KeptEntry kept_list[kMaxSkipWords * 32 + 2];
    int kept_warp_counts[kNumMmaThreads / 32];
    alignas(16) cutlass::arch::ClusterTransactionBarrier barrier_q;  // Q landed (one phase per loaded tile)
    cutlass::arch::ClusterBarrier barrier_q_empty;  // every consumer thread is done with Q (one phase per tile)
    typename Pipeline::SharedStorage pipeline_k;
    typename Pipeline::SharedStorage pipeline_v;
  };
  static constexpr int kSmemBytes = sizeof(SharedStorage);
  static_assert(kSmemBytes <= 227 * 1024, "INT8 geometry exceeds the 227 KB of shared memory");
};

// Int8 Q/K halve their smem, so more K/V stages fit than in the 16-bit kernel:
// D=128: Q 16 KB + 3 x (K 16 KB + V 32 KB) = 160 KB (a fourth stage no longer fits beside the 16 KB list of kept
// tiles and the key loop's 2 KB); D=64: Q 8 KB + 4 x (8 + 16) KB = 104 KB. At head dim 64 the skip state's 64-row
// query tiles are one per consumer warpgroup of a 128-row CTA: three warpgroups (160 registers) could not hold
// the s32 accumulator beside its fp32 copy.
template <int kHeadDim> struct Int8Geometry;
template <> struct Int8Geometry<64> {
  static constexpr int kBlockM = 128, kBlockN = 128, kStages = 4, kSkipRows = LITEATTN_SKIP_BLOCK_M_D64 == 64 ? 2 : 1;
};
template <> struct Int8Geometry<128> {
  static constexpr int kBlockM = 128, kBlockN = 128, kStages = 3, kSkipRows = 1;
};

}  // namespace liteattn
