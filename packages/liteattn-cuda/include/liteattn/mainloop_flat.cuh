// The flat key loop: the overlapped loop with a skip row per warpgroup in one tile body, and its padded partial last
// key tile (64-row skip tiles at head dim 128, FineSkipGeometry in launch.cuh).
#pragma once

#include "key_loop_parts.cuh"
#include "key_tile_gemms.cuh"
#include "softmax.cuh"
#include "tile_scheduler.cuh"

namespace liteattn {

// This thread's consumer warpgroup, as a value the compiler knows to be the same in every thread of a warp (votes).
// Tests of list entries against it then stay uniform, and with them the K/V ring position the flat loop advances
// by their answers; computed as thread_idx / 128 it moved to vector registers (bench/NOTES-cuda.md, nineteenth
// round).
template <class Traits>
CUTE_DEVICE int warpgroup_index(int thread_idx) {
  int wg = 0;
  CUTE_UNROLL
  for (int w = 1; w < Traits::kNumMmaWarpgroups; ++w) wg += __all_sync(0xffffffffu, thread_idx >= 128 * w) ? 1 : 0;
  return wg;
}

// The V stage index through which the PV wgmma's descriptors reach Q's shared-memory tile (negative: Q lies before K
// and V, a whole number of stages before V). With Q in registers nothing writes that tile until release_q (the
// producer loads the next work tile's Q only after it), unlike a K or V stage, which TMA may be refilling.
template <class Traits>
CUTE_DEVICE int q_tile_as_v_stage(typename Traits::SharedStorage& shared) {
  constexpr int kStageBytes = Traits::kBlockN * Traits::kHeadDim * sizeof(typename Traits::Element);
  static_assert(sizeof(shared.smem_q) == kStageBytes, "Q's tile is one V stage");
  constexpr size_t kQBeforeV =
      offsetof(typename Traits::SharedStorage, smem_v) - offsetof(typename Traits::SharedStorage, smem_q);
  static_assert(kQBeforeV % kStageBytes == 0, "Q's tile starts a whole number of V stages before V");
  return -int(kQBeforeV / kStageBytes);
}

// The flat loop's partial last key tile arrives with its missing keys replaced by copies of key Sk - 1 and their
// values zero (the producer loads it from the copy that fill_key_pad_tile writes, launch.cuh): the tile's max, the
// skip test and O are those of its real keys, and only the row sums hold key_pad extra copies of key Sk - 1's
// probability. A warpgroup whose row computes that tile removes them once its running max is final (discount). The
// score is computed from Q's registers before the key loop (fp32, within rounding of the wgmma's): computed after
// it, this code made ptxas move the loop's ring position to vector registers.
struct KeyPadDiscount {
  float score[2];  // q . k(Sk - 1) of this thread's two rows (raw, unscaled)
  float copies;    // key_pad, or 0 when this warpgroup's row does not compute the last key tile

  CUTE_DEVICE void discount(OnlineSoftmax& softmax, int thread_idx) const {
    if (copies == 0.f) return;
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      float const p = fast_exp2(fmaf(score[r], softmax.scale_log2, -softmax.row_max[r] * softmax.scale_log2));
      // Row sums are partial per thread until finalize: one thread of each quad discounts.
      if (thread_idx % 4 == 0) softmax.row_sum[r] -= copies * p;
    }
  }
};

template <class Traits, class Params, class Gemms, class TileList>
CUTE_DEVICE KeyPadDiscount key_pad_discount(Params const& params, Gemms const& gemms, TileList const& tiles,
                                            WorkTile const& work, int wg, int thread_idx) {
  KeyPadDiscount d{{0.f, 0.f}, 0.f};
  if (params.key_pad == 0) return d;
  // The list ascends: the last key tile, when listed, is its last entry.
  int const last = tiles.list[tiles.num_kept];
  if (entry_tile<Traits>(last) != params.num_k_tiles - 1 || !entry_owned_by<Traits>(last, wg)) return d;
  using Element = typename Traits::Element;
  constexpr int kHeadDim = Traits::kHeadDim;
  int const head_kv = work.head / params.head_ratio;
  Element const* key = static_cast<Element const*>(params.key_pad_tile) +
                       ((int64_t(work.batch) * (params.num_heads / params.head_ratio) + head_kv) * Traits::kBlockN +
                        Traits::kBlockN - 1) * kHeadDim;
  auto thr_qk = gemms.mma_qk.get_thread_slice(thread_idx);
  Tensor tScQ = thr_qk.partition_A(make_identity_tensor(Shape<Int<Traits::kBlockM>, Int<kHeadDim>>{}));
  CUTE_STATIC_ASSERT_V(size(tScQ) == size(gemms.tSrQ));
  int const row0 = get<0>(tScQ(0));
  float dot[2] = {0.f, 0.f};
  CUTE_UNROLL
  for (int i = 0; i < size(tScQ); ++i) {
    int const r = get<0>(tScQ(i)) == row0 ? 0 : 1;
    dot[r] = fmaf(float(gemms.tSrQ(i)), float(key[get<1>(tScQ(i))]), dot[r]);
  }
  d.score[0] = quad_sum(dot[0]);
  d.score[1] = quad_sum(dot[1]);
  d.copies = float(params.key_pad);
  return d;
}

// The overlapped loop with a skip row per warpgroup in one tile body (flat_loop): for each list entry a warpgroup
// either computes the tile, S(n) issued with P(p) V(p) of its previous tile, or lets it pass after issuing that
// pending PV (holding V(p) while passing could deadlock: K(n) may sit behind V stages only the passing frees). Its
// next own tile issues a placeholder batch instead of a PV (placeholder_wgmma), reading Q's shared-memory tile as its
// V stage: a branch around the PV wgmma's alone leaves the body one body to ptxas. Bodies that differ (an S-alone
// first tile, a masked partial tile) made ptxas keep the list and K/V ring positions in vector registers: 64 R2UR
// and ~8% more time per key tile (bench/NOTES-cuda.md, eighteenth and nineteenth rounds). Hence no mask: the partial
// last key tile is padded (KeyPadDiscount).
template <class Traits, class Params, class TensorO, class SkipWriter, class TileIterator>
CUTE_DEVICE int consumer_mainloop_flat(Params const& params, typename Traits::SharedStorage& shared,
                                       typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                                       TileIterator tiles, int thread_idx, TensorO& tOrO, OnlineSoftmax& softmax,
                                       SkipWriter& skip, typename Traits::PipelineState& state, int q_round,
                                       WorkTile const& work) {
  using Element = typename Traits::Element;
  auto gemms = key_tile_gemms<Traits>(shared, thread_idx);
  Tensor tSrS = partition_fragment_C(gemms.mma_qk, select<0, 1>(typename Traits::TileShapeMNK{}));  // (MMA, M, N)
  CUTE_STATIC_ASSERT_V(size<1>(tSrS) == _1{} && size<2>(tSrS) == _1{});
  Tensor rP = make_tensor<Element>(tSrS.layout());                              // (MMA, MMA_M, MMA_N)
  Tensor tOrP = make_tensor(rP.data(), acc_layout_as_a_operand(rP.layout()));  // (MMA, MMA_M, MMA_K)
  __shared__ float row_sum_sink[Traits::kNumMmaThreads * 2];  // see consumer_mainloop_overlap
  uint32_t const sink_addr = cute::cast_smem_ptr_to_uint(&row_sum_sink[thread_idx * 2]);

  int const lane = thread_idx % 32;
  int const wg = warpgroup_index<Traits>(thread_idx);
  shared.barrier_q.wait(q_round & 1);
  load_q<Traits>(shared, thread_idx, gemms);
  KeyPadDiscount const pad = key_pad_discount<Traits>(params, gemms, tiles, work, wg, thread_idx);
  int const q_stage = q_tile_as_v_stage<Traits>(shared);

  auto last_pv = [&](auto const& at) {
    pipeline_v.consumer_wait(at);
    gemms.issue_pv(tOrP, at.index(), tOrO);
    warpgroup_wait<0>();
    pipeline_v.consumer_release(at);
  };
  int own_kept = 0;
  bool pv_pending = false;  // P(p) V(p) of this warpgroup's previous tile is still to be issued
  auto state_v = state;     // the ring position of that tile's V
  float correction[2];
  float scratch[4] = {0.f, 0.f, 0.f, 0.f};
  for (int entry = tiles.next(), entry_next; entry >= 0; entry = entry_next) {
    if (entry_owned_by<Traits>(entry, wg)) {  // entry >= 0 here
      int const n = entry_tile<Traits>(entry);
      ++own_kept;
      pipeline_k.consumer_wait(state);
      // Branch-free (a branch here moved the ring position to vector registers): wait for V(p) when a PV is pending,
      // else once more for K(n), which has landed.
      auto* full = pv_pending ? &shared.pipeline_v.full_barrier_[state_v.index()]
                              : &shared.pipeline_k.full_barrier_[state.index()];
      cutlass::arch::ClusterBarrier::wait(reinterpret_cast<uint64_t const*>(full),
                                          pv_pending ? state_v.phase() : state.phase());
      gemms.issue_qk(state.index(), tSrS);
      gemms.issue_pv(tOrP, pv_pending ? state_v.index() : q_stage, tOrO, pv_pending, &scratch);
      entry_next = tiles.next();
      warpgroup_wait<1>();  // S(n) landed; PV(p) may still run
      pipeline_k.consumer_release(state);
      softmax.step(tSrS, correction);
      bool const needs = skip.row_needs(softmax);
      // Keeps every exp2 ahead of the PV wait, as pinned_exp2s does for the skip-state kernels at head dim 128.
      asm volatile("st.shared.v2.f32 [%0], {%1, %2};\n" ::"r"(sink_addr), "f"(softmax.pinned_sum[0]),
                   "f"(softmax.pinned_sum[1]) : "memory");
      warpgroup_wait<0>();  // PV(p) done: O and the P registers are free again
      // The pipeline's release of V(p) (every consumer thread arrives, as in consumer_release), when there was one.
      cutlass::arch::ClusterBarrier::arrive(
          reinterpret_cast<uint64_t const*>(&shared.pipeline_v.empty_barrier_[state_v.index()]), 0u,
          uint32_t(pv_pending));
      skip.commit(n, needs, lane);
      skip.record_gap(n, softmax, lane);
      convert_fragment_into(tSrS, rP);
      // O for S(n)'s max shift after the PV wait, as in consumer_mainloop_overlap.
      rescale_o(tOrO, correction);
      state_v = state;
      ++state;
      pv_pending = true;
    } else {
      if (pv_pending) last_pv(state_v);
      pv_pending = false;
      pass_tile<Traits>(pipeline_k, pipeline_v, state);
      entry_next = tiles.next();
    }
  }
  if (pv_pending) last_pv(state_v);
  asm volatile("st.shared.v2.f32 [%0], {%1, %2};\nst.shared.v2.f32 [%0], {%3, %4};\n" ::"r"(sink_addr),
               "f"(scratch[0]), "f"(scratch[1]), "f"(scratch[2]), "f"(scratch[3]) : "memory");
  pad.discount(softmax, thread_idx);
  release_q(shared);
  return own_kept;
}

}  // namespace liteattn
