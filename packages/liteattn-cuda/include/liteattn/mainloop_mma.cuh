// Consumers: each warpgroup owns 64 query rows; per kept key tile it runs S = Q K^T (wgmma, smem x smem),
// the online softmax in registers, and O += P V (wgmma, P from registers).
// The serial and overlapped key loops live here, the flat one in mainloop_flat.cuh, the GEMMs in key_tile_gemms.cuh
// and the pieces they share in key_loop_parts.cuh.
#pragma once

#include <type_traits>

#include "kernel_traits.cuh"
#include "key_loop_parts.cuh"
#include "key_tile_gemms.cuh"
#include "mainloop_flat.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"

namespace liteattn {

// The serial key loop: each consumer warpgroup waits for every wgmma before using its result, and the
// warpgroups overlap each other's softmax with their GEMMs. The kernels at head dim 256 and the three-warpgroup
// ones with a skip row per warpgroup run it (overlapped_loop says why); see consumer_mainloop for the arguments.
// With a skip row per warpgroup the list holds the union of the warpgroups' kept tiles: a warpgroup computes those
// its row keeps and lets the others pass (pass_to_own).
template <class Traits, class Params, class TensorO, class SkipWriter, class ScoreScale, class TileIterator>
CUTE_DEVICE int consumer_mainloop_serial(Params const& params, typename Traits::SharedStorage& shared,
                                         typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                                         TileIterator tiles, int thread_idx, TensorO& tOrO,
                                         OnlineSoftmax& softmax, SkipWriter& skip,
                                         typename Traits::PipelineState& state, int q_round, ScoreScale const& scale) {
  using Element = typename Traits::Element;
  constexpr int kBlockN = Traits::kBlockN;
  auto gemms = key_tile_gemms<Traits>(shared, thread_idx);
  Tensor tSrAcc = partition_fragment_C(gemms.mma_qk, select<0, 1>(typename Traits::TileShapeMNK{}));  // (MMA, M, N)
  CUTE_STATIC_ASSERT_V(size<1>(tSrAcc) == _1{} && size<2>(tSrAcc) == _1{});
  auto&& tSrS = score_registers(tSrAcc);

  int const lane = thread_idx % 32;
  int const partial_tile = params.seqlen_k % kBlockN == 0 ? -1 : params.num_k_tiles - 1;
  PingPong<Traits::kNumMmaWarpgroups> turn{thread_idx / 128};
  turn.start();

  // Consumers wait on barrier_q (armed by the producer) once per work tile, before the first QK^T.
  shared.barrier_q.wait(q_round & 1);
  load_q<Traits>(shared, thread_idx, gemms);

  int const wg = thread_idx / 128;
  auto next_own = [&](int entry) {
    return pass_to_own<Traits>(entry, wg, tiles, pipeline_k, pipeline_v, state);
  };
  int own_kept = 0;
  for (int entry = next_own(tiles.next()), entry_next = 0; entry >= 0; entry = next_own(entry_next)) {
    int const n = entry_tile<Traits>(entry);
    ++own_kept;
    float const factor = scale.factor(n);  // INT8: issued before the waits, used after
    scores_alone<kBlockN>(gemms, pipeline_k, state, turn, tSrAcc, tSrS, n, partial_tile, params.seqlen_k, lane);
    float correction[2];
    softmax.step(tSrS, correction, factor);
    bool const needs = skip.needs(softmax);
    skip.record_gap(n, softmax, lane);
    rescale_o(tOrO, correction);
    Tensor rP = convert_fragment<Element>(tSrS);                                        // (MMA, MMA_M, MMA_N)
    Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));          // (MMA, MMA_M, MMA_K)

    // Wait for V[stage], O += P V, release V[stage]; the warp vote runs while the PV wgmma does.
    pipeline_v.consumer_wait(state);
    gemms.issue_pv(tOrP, state.index(), tOrO);
    entry_next = tiles.next();  // under the PV wgmma
    skip.commit(n, needs, lane);
    warpgroup_wait<0>();
    pipeline_v.consumer_release(state);
    ++state;
  }
  release_q(shared);
  turn.finish();
  return own_kept;
}

// Which exp2's of a tile the overlapped loop keeps ahead of its PV wait, per row of a thread's two accumulator
// rows: their count in register order, -1 for all. The compiler places the rest after the wait, where they fill
// the issue gaps of the P conversions (F2FP, which issue at half rate and otherwise run back to back there).
// Measured on an H100 (bench/NOTES-cuda.md, thirteenth and fourteenth rounds): the dense kernels are 3-4% faster
// with row 0's exp2's ahead of the wait and row 1's after it than with all ahead, at head dim 128 (176-key tiles)
// and 64 (192-row tiles), and at 128 2-4% slower than that with any of 12/12, 22/22, 33/0 or 44/22 ahead; the
// skip-state kernels at head dim 128 move by less than 1.5% either way and keep all ahead (those at 64 run the
// serial loop: three warpgroups' registers).
#ifndef LITEATTN_DENSE_PIN_ROW0
#define LITEATTN_DENSE_PIN_ROW0 -1
#endif
#ifndef LITEATTN_DENSE_PIN_ROW1
#define LITEATTN_DENSE_PIN_ROW1 0
#endif
template <class Traits>
constexpr int pinned_exp2s(int row) {
  if (Traits::kSkipState && Traits::kHeadDim == 128) return -1;
  return row == 0 ? LITEATTN_DENSE_PIN_ROW0 : LITEATTN_DENSE_PIN_ROW1;
}

// The key loop software-pipelined inside each warpgroup: S(n) = Q K(n)^T is issued together with
// O += P(p) V(p) for the previous kept tile p, and the softmax of S(n) runs while that PV wgmma does, so a
// warpgroup keeps the tensor cores busy through its own softmax. The producer loads K one tile ahead of V to
// match (producer_load). Between a wgmma issue and its wait the code is straight-line: at any branch merge point
// with a wgmma in flight the compiler waits for every outstanding batch, so the tail mask is chosen per
// iteration (two copies of the body), and the skip-test vote and O's rescale for S(n)'s max shift run after the
// PV wait. (Voting under the next iteration's GEMMs measured no better, bench/NOTES-cuda.md v9.)
template <class Traits, class Params, class TensorO, class SkipWriter, class ScoreScale, class TileIterator>
CUTE_DEVICE int consumer_mainloop_overlap(Params const& params, typename Traits::SharedStorage& shared,
                                          typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                                          TileIterator tiles, int thread_idx, TensorO& tOrO,
                                          OnlineSoftmax& softmax, SkipWriter& skip,
                                          typename Traits::PipelineState& state, int q_round, ScoreScale const& scale) {
  using Element = typename Traits::Element;
  constexpr int kBlockN = Traits::kBlockN;
  auto gemms = key_tile_gemms<Traits>(shared, thread_idx);
  Tensor tSrAcc = partition_fragment_C(gemms.mma_qk, select<0, 1>(typename Traits::TileShapeMNK{}));  // (MMA, M, N)
  CUTE_STATIC_ASSERT_V(size<1>(tSrAcc) == _1{} && size<2>(tSrAcc) == _1{});
  constexpr bool kDequantize = !std::is_same_v<typename decltype(tSrAcc)::value_type, float>;
  auto&& tSrS = score_registers(tSrAcc);
  Tensor rP = make_tensor<Element>(tSrS.layout());                              // (MMA, MMA_M, MMA_N)
  Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));  // (MMA, MMA_M, MMA_K)

  // The compiler sinks exp2's below wgmma.wait_group when nothing reads them earlier; a shared store of a row
  // sum (which depends on the exp2's before it) cannot cross the wait, so those stay under the PV wgmma.
  __shared__ float row_sum_sink[Traits::kNumMmaThreads * 2];
  uint32_t const sink_addr = cute::cast_smem_ptr_to_uint(&row_sum_sink[thread_idx * 2]);

  constexpr int kPin0 = pinned_exp2s<Traits>(0), kPin1 = pinned_exp2s<Traits>(1);

  int const lane = thread_idx % 32;
  int const partial_tile = params.seqlen_k % kBlockN == 0 ? -1 : params.num_k_tiles - 1;
  PingPong<Traits::kNumMmaWarpgroups> turn{thread_idx / 128};
  turn.start();
  shared.barrier_q.wait(q_round & 1);
  load_q<Traits>(shared, thread_idx, gemms);

  // With a skip row per warpgroup the loop runs in segments of consecutive list entries that this warpgroup computes:
  // each starts like a work tile's first kept tile and ends with its last PV, which releases V before the warpgroup
  // lets other rows' tiles pass (pass_to_own). Holding V(p) while passing could deadlock: K(n) may sit behind V
  // stages that only the passing would free.
  int const wg = thread_idx / 128;
  int own_kept = 0;
  int entry = pass_to_own<Traits>(tiles.next(), wg, tiles, pipeline_k, pipeline_v, state);
  float correction[2];
  auto state_v = state;  // V runs one kept tile behind K
  int n_next = -1;       // the list entry after the current tile, read under the GEMMs
  auto iteration = [&](int n, auto masked) {
    float const factor = scale.factor(n);
    turn.wait_turn();
    // Both waits before the first wgmma: a wait loop between the two batches is a branch with S in flight.
    pipeline_k.consumer_wait(state);
    pipeline_v.consumer_wait(state_v);
    gemms.issue_qk(state.index(), tSrAcc);
    gemms.issue_pv(tOrP, state_v.index(), tOrO);
    turn.pass_turn();
    n_next = tiles.next();
    warpgroup_wait<1>();  // S(n) landed; PV(p) may still run
    pipeline_k.consumer_release(state);
    if constexpr (kDequantize) convert_scores(tSrAcc, tSrS);
    if constexpr (decltype(masked)::value) mask_partial_tile<kBlockN>(tSrS, n, n, params.seqlen_k, lane);
    softmax.step<kPin0, kPin1>(tSrS, correction, factor);
    bool const needs = skip.row_needs(softmax);
    if constexpr (kPin0 != 0 && kPin1 != 0) {
      asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(sink_addr), "f"(softmax.pinned_sum[0]),
                   "f"(softmax.pinned_sum[1]) : "memory");
    } else if constexpr (kPin0 != 0 || kPin1 != 0) {
      asm volatile("st.shared.f32 [%0], %1;\n" ::"r"(sink_addr), "f"(softmax.pinned_sum[kPin0 != 0 ? 0 : 1])
                   : "memory");
    }
    warpgroup_wait<0>();  // PV(p) done: O and the P registers are free again
    pipeline_v.consumer_release(state_v);
    skip.commit(n, needs, lane);
    skip.record_gap(n, softmax, lane);
    convert_fragment_into(tSrS, rP);
    // O for S(n)'s max shift, here rather than before the next PV issue: nothing is in flight, so the warp-uniform
    // skip of rescale_o is free (1-3% on the skip-state kernels, bench/NOTES-cuda.md, eighth round).
    rescale_o(tOrO, correction);
    ++state_v;
    ++state;
  };
  while (Traits::kSkipRows == 1 || __all_sync(0xffffffffu, entry >= 0)) {  // the vote: see entry_in_row
    // First tile of the segment: S alone (nothing to overlap it with).
    {
      int const n = entry_tile<Traits>(entry);
      ++own_kept;
      float const factor = scale.factor(n);
      scores_alone<kBlockN>(gemms, pipeline_k, state, turn, tSrAcc, tSrS, n, partial_tile, params.seqlen_k, lane);
      softmax.step(tSrS, correction, factor);
      // Only a work tile's first tile finds O still zero; a later segment's rescales O for this max shift.
      if (Traits::kSkipRows > 1) rescale_o(tOrO, correction);
      skip.vote(n, softmax, lane);
      skip.record_gap(n, softmax, lane);
      convert_fragment_into(tSrS, rP);
    }
    state_v = state;
    ++state;

    n_next = tiles.next();
    while (entry_in_row<Traits, /*kOwn=*/true>(n_next, wg)) {
      int const n = entry_tile<Traits>(n_next);
      ++own_kept;
      if (n == partial_tile) {
        iteration(n, cute::true_type{});
      } else {
        iteration(n, cute::false_type{});
      }
    }

    // The segment's last PV.
    turn.wait_turn();
    pipeline_v.consumer_wait(state_v);
    gemms.issue_pv(tOrP, state_v.index(), tOrO);
    turn.pass_turn();
    warpgroup_wait<0>();
    pipeline_v.consumer_release(state_v);
    if constexpr (Traits::kSkipRows == 1) break;
    entry = pass_to_own<Traits>(n_next, wg, tiles, pipeline_k, pipeline_v, state);
  }
  release_q(shared);
  turn.finish();
  return Traits::kSkipRows == 1 ? tiles.count() : own_kept;
}

// The consumers' key loop of one work tile (at least one kept key tile); leaves the unnormalised O in tOrO and
// returns how many tiles the thread's skip row computed.
// `state` is the K/V ring position carried across work tiles; `q_round` the number of Q loads before this tile's.
// With INT8 Q/K (Traits::TiledMmaQK accumulates s32), `scale` gives each tile's dequantisation factor and the
// softmax, skip test and PV run on the dequantised scores unchanged.
template <class Traits, class Params, class TensorO, class SkipWriter, class TileIterator,
          class ScoreScale = ExactScores>
CUTE_DEVICE int consumer_mainloop(Params const& params, WorkTile const& work, typename Traits::SharedStorage& shared,
                                  typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                                  TileIterator tiles, int thread_idx, TensorO& tOrO, OnlineSoftmax& softmax,
                                  SkipWriter& skip, typename Traits::PipelineState& state, int q_round,
                                  ScoreScale const& scale = {}) {
  static_assert(!LITEATTN_PINGPONG || !Traits::kSkipState || Traits::kNumMmaWarpgroups < kSkipBarrierId,
                "the ping-pong barriers 1..W would collide with the skip test's named barrier");
  static_assert(!LITEATTN_PINGPONG || Traits::kSkipRows == 1, "turn-taking needs every warpgroup on every tile");
  // Built with -DLITEATTN_OVERLAP=0 for 64-row skip tiles at head dim 128, this combination failed the GPU parity tests
  // (fp16, GQA, reverse visit, a partial last key tile) and wrote a different skip state over the video run; the
  // cause is not known (bench/NOTES-cuda.md, eighteenth round), so it does not build.
  static_assert(overlapped_loop<Traits>() || Traits::kSkipRows == 1 || Traits::kHeadDim == 64,
                "the serial loop with a skip row per warpgroup is only validated at head dim 64");
  if constexpr (flat_loop<Traits>()) {
    return consumer_mainloop_flat<Traits>(params, shared, pipeline_k, pipeline_v, tiles, thread_idx, tOrO, softmax,
                                          skip, state, q_round, work);
  } else if constexpr (overlapped_loop<Traits>()) {
    return consumer_mainloop_overlap<Traits>(params, shared, pipeline_k, pipeline_v, tiles, thread_idx, tOrO,
                                             softmax, skip, state, q_round, scale);
  } else {
    return consumer_mainloop_serial<Traits>(params, shared, pipeline_k, pipeline_v, tiles, thread_idx, tOrO,
                                            softmax, skip, state, q_round, scale);
  }
}

}  // namespace liteattn
