// Compile-time geometry of one kernel instantiation: tile shapes, the two tiled wgmma's,
// shared-memory layouts, TMA descriptor types and the shared-storage struct.
#pragma once

#include <type_traits>

#include <cute/tensor.hpp>
#include <cute/atom/mma_atom.hpp>
#include <cute/atom/copy_traits_sm90_tma.hpp>
#include <cutlass/arch/barrier.h>
#include <cutlass/arch/reg_reconfig.h>
#include <cutlass/numeric_types.h>
#include <cutlass/numeric_conversion.h>
#include <cutlass/pipeline/pipeline.hpp>

#include "skip_test.cuh"

// K/V ring depth at head dim 128 (development knob: 3 stages fit in 227 KB and measured no faster).
#ifndef LITEATTN_STAGES_D128
#define LITEATTN_STAGES_D128 2
#endif
#ifndef LITEATTN_STAGES_D64
#define LITEATTN_STAGES_D64 4
#endif
// Consumer loop schedule at head dims up to 128: 1 (default) issues S(n) with PV(previous tile) and hides the
// softmax under that PV (consumer_mainloop_overlap), the producer loading K one tile ahead of V; 0 runs each tile's
// S, softmax and PV in turn (consumer_mainloop_serial).
#ifndef LITEATTN_OVERLAP
#define LITEATTN_OVERLAP 1
#endif

// Q in registers for QK^T in the skip-state kernels (KernelTraits::kQInRegisters; 0 builds the SS variant).
#ifndef LITEATTN_Q_IN_REGISTERS
#define LITEATTN_Q_IN_REGISTERS 1
#endif

namespace liteattn {

using namespace cute;

// setmaxnreg moves registers within what the CTA was launched with (65536 / threads per thread, in steps of 8):
// consumers asking for more than the producer gave back would wait forever.
constexpr bool register_split_fits(int num_threads, int num_mma_threads, int producer_regs, int consumer_regs) {
  return 128 * producer_regs + num_mma_threads * consumer_regs <= num_threads * (65536 / num_threads / 8 * 8);
}

// How a CTA's query rows map onto rows of the skip state (shared by the 16-bit and INT8 traits): kSkipRows = 1,
// the CTA's kBlockM rows are one query tile; kSkipRows = the consumer warpgroups, each warpgroup's 64 rows are a
// query tile of their own (skip tiles 64 rows tall). Then the producer loads the union of the warpgroups' kept
// tiles and each warpgroup computes its own and lets the others pass (pass_to_own).
template <int kBlockM, int kNumMmaWarpgroups, int kSkipRows_>
struct SkipRows {
  static constexpr int kSkipRows = kSkipRows_;
  static constexpr int kSkipBlockM = kBlockM / kSkipRows;  // the skip state's block_m
  static_assert(kSkipRows == 1 || kSkipRows == kNumMmaWarpgroups, "one skip row per CTA or per warpgroup");
  // The consumers' list of a work tile's kept tiles: tile indices, or (one row per warpgroup) the union's tiles,
  // each with the mask of the warpgroups that keep it in bits 16 and up.
  using KeptEntry = std::conditional_t<(kSkipRows > 1), int32_t, int16_t>;
};

// kSkipState_ = false builds a kernel for dense calls only: every key tile computed, no skip test, no gaps.
// kSkipTest_ = false builds a skip-state kernel for calls that only read a keep bitmask: the skip test, its
// written row and the tile gaps compile away (launch.cuh picks it for calls without write_bits and tile_gaps, at
// the head dims has_read_only_kernel names).
template <int kHeadDim_, int kBlockM_, int kBlockN_, int kStages_, class Element_, bool kSkipState_ = true,
          int kSkipRows_ = 1, bool kSkipTest_ = true>
struct KernelTraits : SkipRows<kBlockM_, kBlockM_ / 64, kSkipRows_> {
  using Element = Element_;
  using ElementAccum = float;
  static constexpr bool kSkipState = kSkipState_;
  static constexpr bool kSkipTest = kSkipState_ && kSkipTest_;
  using typename SkipRows<kBlockM_, kBlockM_ / 64, kSkipRows_>::KeptEntry;
  using SkipRows<kBlockM_, kBlockM_ / 64, kSkipRows_>::kSkipRows;

  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = kBlockM_;
  static constexpr int kBlockN = kBlockN_;
  static constexpr int kStages = kStages_;
  // One consumer warpgroup per 64 query rows (a wgmma is 64 rows tall), plus one producer warpgroup.
  static constexpr int kNumMmaWarpgroups = kBlockM / 64;
  static constexpr int kNumMmaThreads = kNumMmaWarpgroups * 128;
  static constexpr int kNumThreads = kNumMmaThreads + 128;
  // Register split: the producer needs almost none, the consumers hold S (BN/2 fp32) and O (D/2 fp32) each. Four
  // consumer warpgroups (256-row tiles, development builds only) get what 640 threads leave: 112.
  static constexpr int kProducerRegs = 24;
  static constexpr int kConsumerRegs = kNumMmaWarpgroups == 2 ? 240 : kNumMmaWarpgroups == 3 ? 160 : 112;
  static_assert(register_split_fits(kNumThreads, kNumMmaThreads, kProducerRegs, kConsumerRegs),
                "the register split exceeds the CTA's registers");

  static_assert(kHeadDim % 64 == 0, "head dim must be a multiple of 64 (128-byte swizzle rows)");
  static_assert(kBlockM % 64 == 0 && kBlockN % 16 == 0);

  using TileShapeMNK = Shape<Int<kBlockM>, Int<kBlockN>, Int<kHeadDim>>;   // (BM, BN, D) for S = Q K^T
  using TileShapePV = Shape<Int<kBlockM>, Int<kHeadDim>, Int<kBlockN>>;    // (BM, D, BN) for O = P V
  using AtomLayoutMNK = Layout<Shape<Int<kNumMmaWarpgroups>, _1, _1>>;

  // S = Q K^T, K-major operands (head dim contiguous). Every key tile's wgmma reads Q: from shared memory (SS) a
  // 64 x 16 slab of Q per instruction adds half again to K's shared-memory reads. kQInRegisters loads Q into
  // registers once per work tile instead (RS wgmma, D/4 registers per thread): 1-2% on an H100 for the
  // skip-state kernels (bench/NOTES-cuda.md, seventh round). The 176-key dense tile and head dim 256 (O alone is
  // 128 registers) have no registers to spare: both spilled.
  static constexpr bool kQInRegisters = LITEATTN_Q_IN_REGISTERS && kSkipState && kHeadDim <= 128;
  using MmaQKOp = std::conditional_t<kQInRegisters,
                                     decltype(SM90::GMMA::rs_op_selector<Element, Element, ElementAccum, TileShapeMNK>()),
                                     decltype(SM90::GMMA::ss_op_selector<Element, Element, ElementAccum, TileShapeMNK>())>;
  using TiledMmaQK = decltype(make_tiled_mma(MmaQKOp{}, AtomLayoutMNK{}));
  // O += P V: P from registers (the softmax output never touches smem), V^T from smem, MN-major.
  using TiledMmaPV = decltype(make_tiled_mma(
      SM90::GMMA::rs_op_selector<Element, Element, ElementAccum, TileShapePV, GMMA::Major::K,
                                 GMMA::Major::MN>(),
      AtomLayoutMNK{}));

  // 128-byte swizzle: TMA writes 64-element rows, wgmma reads them conflict-free.
  using SmemLayoutAtom = GMMA::Layout_K_SW128_Atom<Element>;
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutK = decltype(tile_to_shape(SmemLayoutAtom{},
                                             Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  using SmemLayoutV = SmemLayoutK;
  // V^T view of the same bytes: (D, BN, stage) -> V's (BN, D, stage) offset.
  using SmemLayoutVt = decltype(composition(
      SmemLayoutV{},
      make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));

  // Global tensors as TMA sees them: (seq, d, head, batch), head dim contiguous.
  using ShapeQKV = cute::Shape<int32_t, int32_t, int32_t, int32_t>;
  using StrideQKV = cute::Stride<int64_t, _1, int64_t, int64_t>;

  using TmaQ = decltype(make_tma_copy(
      SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), ShapeQKV{}, StrideQKV{}),
      SmemLayoutQ{}, select<0, 2>(TileShapeMNK{}), _1{}));
  using TmaKV = decltype(make_tma_copy(
      SM90_TMA_LOAD{},
      make_tensor(make_gmem_ptr(static_cast<Element const*>(nullptr)), ShapeQKV{}, StrideQKV{}),
      take<0, 2>(SmemLayoutK{}), select<1, 2>(TileShapeMNK{}), _1{}));

  using Pipeline = cutlass::PipelineTmaAsync<kStages>;
  using PipelineState = typename cutlass::PipelineState<kStages>;

  static constexpr uint32_t kTmaBytesQ = cosize_v<SmemLayoutQ> * sizeof(Element);
  static constexpr uint32_t kTmaBytesKV = size(take<0, 2>(SmemLayoutK{})) * sizeof(Element);

  struct SharedStorage {
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutQ>> smem_q;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutK>> smem_k;
    alignas(1024) cute::array_aligned<Element, cosize_v<SmemLayoutV>> smem_v;
    alignas(16) uint32_t skip_words[kSkipRows * kMaxSkipWords];  // this CTA's write_bits rows while the loop runs
    alignas(16) uint32_t keep_words_producer[kMaxSkipWords];  // the producer's copy of this work tile's keep row
    // The consumers' list of kept tiles (KeptTileList, kernels with a skip state) and its per-warp counts.
    alignas(16) KeptEntry kept_list[kSkipState ? kMaxSkipWords * 32 + 2 : 1];
    int kept_warp_counts[kNumMmaThreads / 32];
    alignas(16) cutlass::arch::ClusterTransactionBarrier barrier_q;  // Q landed (one phase per loaded tile)
    cutlass::arch::ClusterBarrier barrier_q_empty;  // every consumer thread is done with Q (one phase per tile)
    typename Pipeline::SharedStorage pipeline_k;
    typename Pipeline::SharedStorage pipeline_v;
  };
  static constexpr int kSmemBytes = sizeof(SharedStorage);
  static_assert(kSmemBytes <= 227 * 1024, "shared storage exceeds the 227 KB an sm90 CTA may use");
};

// Whether an instantiation runs the overlapped consumer loop. On an H100 it gains 4-6% at head dim 128; at 64 it
// gains 3-4% (dense, 192-row tiles) and gained 3-7% (the former 128-row skip-state kernels) with the exp2's split
// around the PV wait
// (pinned_exp2s; with all of them ahead of the wait the skip-state kernels measured no faster, bench/NOTES-cuda.md,
// ninth, thirteenth and fourteenth rounds); at 256 its extra live registers (P beside S, with O at 128 per thread)
// spill (v9).
// With a skip row per warpgroup the overlapped loop lets other rows' tiles pass between segments of its own tiles.
// Two warpgroups run it (INT8 at head dim 64: 14.7 against 18.2 ms in the serial loop, eighteenth round); three
// (the 16-bit kernels at head dim 64, 192-row CTAs) do not fit P beside S in their 160 registers (it spilled 152
// bytes and measured 15% slower, seventeenth round) and run the serial loop.
template <class Traits>
constexpr bool overlapped_loop() {
  return LITEATTN_OVERLAP && Traits::kHeadDim <= 128 && (Traits::kSkipRows == 1 || Traits::kNumMmaWarpgroups == 2);
}

// Whether an instantiation runs the overlapped loop with a skip row per warpgroup in one tile body
// (consumer_mainloop_flat): 16-bit kernels with Q in registers (the padded last key tile's discount reads Q there,
// and Q's shared-memory tile serves as a V stage nothing writes) and square tiles, that is the 64-row skip tiles at
// head dim 128 (FineSkipGeometry). Its partial last key tile arrives padded with
// copies of key Sk - 1 (KeyPadDiscount). -DLITEATTN_FLAT_LOOP=0 builds the segment loop instead (for measurements).
#ifndef LITEATTN_FLAT_LOOP
#define LITEATTN_FLAT_LOOP 1
#endif
template <class Traits>
constexpr bool flat_loop() {
  return LITEATTN_FLAT_LOOP && overlapped_loop<Traits>() && Traits::kSkipRows > 1 && Traits::kQInRegisters &&
         Traits::kBlockM == Traits::kBlockN;
}

// The skip state's query tile at head dim 64: 64 rows, one per consumer warpgroup of a 192-row CTA, or (development
// knob) 128 rows, one per CTA of two warpgroups (or of LITEATTN_BLOCK_M_D64 / 64: 192 measured in the seventeenth
// round, bench/NOTES-cuda.md).
#ifndef LITEATTN_SKIP_BLOCK_M_D64
#define LITEATTN_SKIP_BLOCK_M_D64 64
#endif
#ifndef LITEATTN_BLOCK_M_D64
#define LITEATTN_BLOCK_M_D64 128
#endif

// Stages per head dim: as many K/V stages as fit next to the Q tile in 227 KB.
template <int kHeadDim> struct DefaultGeometry;
template <> struct DefaultGeometry<64> {
  static constexpr int kBlockM = LITEATTN_SKIP_BLOCK_M_D64 == 64 ? 192 : LITEATTN_BLOCK_M_D64, kBlockN = 128,
                       kStages = LITEATTN_STAGES_D64, kSkipRows = LITEATTN_SKIP_BLOCK_M_D64 == 64 ? 3 : 1;
};
template <> struct DefaultGeometry<128> {
  static constexpr int kBlockM = 128, kBlockN = 128, kStages = LITEATTN_STAGES_D128, kSkipRows = 1;
};
template <> struct DefaultGeometry<256> {
  static constexpr int kBlockM = 128, kBlockN = 64, kStages = 2, kSkipRows = 1;
};

// The skip state in 64-row query tiles where the default is 128 rows, chosen per call by block_m (launch.cuh): at
// head dim 128 one skip row per consumer warpgroup of a 128-row CTA, in the flat loop. Over the 20-step video run at
// (12, 32760, 128) they compute 8.3% less than 128-row tiles and took 2.4-3.1% less time on an H100; on random keep
// masks, whose two rows per CTA rarely agree, they are slower (bench/NOTES-cuda.md, twenty-first and twenty-second
// rounds). Not the default, and not for INT8 Q/K.
template <int kHeadDim> struct FineSkipGeometry;
template <> struct FineSkipGeometry<128> {
  static constexpr int kBlockM = 128, kBlockN = 128, kStages = LITEATTN_STAGES_D128, kSkipRows = 2;
};

// The geometry of calls without a skip state (dense calls, launch.cuh), free of the 128 x 128 tiles the skip state
// is counted in. Wider tiles amortise each key-loop iteration's fixed cost (barrier waits, row-max shuffles, the
// wgmma pipeline's fill), measured on an H100 (bench/NOTES-cuda.md, sixth round):
// - head dim 128: 176-key tiles (S: 88 fp32 registers per thread, still beside O and P in 240; 2 K/V stages in
//   227 KB), 11% faster than 128;
// - head dim 64: 192-row query tiles (3 consumer warpgroups at 160 registers), 27% faster than 128 (13-14% against
//   the 128-row loop of the sixteenth round); 256 x 64 tiles (four warpgroups at 112 registers, which a 128-key S
//   does not fit) measured 5-9% slower than 192 x 128 there. The knobs below build those variants for measurements.
#ifndef LITEATTN_DENSE_BLOCK_N_D128
#define LITEATTN_DENSE_BLOCK_N_D128 176
#endif
#ifndef LITEATTN_DENSE_BLOCK_N_D64
#define LITEATTN_DENSE_BLOCK_N_D64 128
#endif
#ifndef LITEATTN_DENSE_STAGES_D64
#define LITEATTN_DENSE_STAGES_D64 LITEATTN_STAGES_D64
#endif
#ifndef LITEATTN_DENSE_BLOCK_M_D64
#define LITEATTN_DENSE_BLOCK_M_D64 192
#endif

template <int kHeadDim> struct DenseGeometry : DefaultGeometry<kHeadDim> {};
template <> struct DenseGeometry<128> {
  static constexpr int kBlockM = 128, kBlockN = LITEATTN_DENSE_BLOCK_N_D128, kStages = 2;
};
template <> struct DenseGeometry<64> {
  static constexpr int kBlockM = LITEATTN_DENSE_BLOCK_M_D64, kBlockN = LITEATTN_DENSE_BLOCK_N_D64,
                       kStages = LITEATTN_DENSE_STAGES_D64;
};

}  // namespace liteattn
