// The CTA body shared by the 16-bit and INT8 kernels: barrier set-up, the walk over this CTA's work
// tiles (WorkTileScheduler) by the producer thread and by the consumer warpgroups, and per work tile the
// skip-test writer, the key loop (a kernel-specific callable) and the epilogue.
#pragma once

#include "tile_scheduler.cuh"
#include "mainloop_load.cuh"
#include "softmax.cuh"
#include "epilogue.cuh"
#include "skip_test.cuh"

namespace liteattn {

// The threads that share one row of the skip state: all consumers, or (a skip row per warpgroup) a warpgroup.
template <class Traits>
constexpr int skip_row_threads() {
  return Traits::kNumMmaThreads / Traits::kSkipRows;
}

// Which of the work tile's skip rows consumer thread `thread_idx` computes: 0, or its warpgroup.
template <class Traits>
CUTE_DEVICE int skip_row_group(int thread_idx) {
  return thread_idx / skip_row_threads<Traits>();
}

// The keep-bitmask row (b, h, query tile) of the work tile's skip row `group`: the work tile's own, or (a skip row
// per warpgroup) its warpgroup's, -1 for a warpgroup past the last query tile.
template <class Traits, class Params>
CUTE_DEVICE int skip_row_of(Params const& params, WorkTile const& work, int group) {
  if constexpr (Traits::kSkipRows == 1) {
    return work.tile;
  } else {
    int const m = work.m_block * Traits::kSkipRows + group;
    return m < params.num_skip_q_tiles
               ? (work.batch * params.num_heads + work.head) * params.num_skip_q_tiles + m
               : -1;
  }
}

// The producer thread's copy of work tile `work`'s keep row in shared memory (independent loads; with a skip row
// per warpgroup the union of their rows); returns the copy, or nullptr for "every tile kept".
template <class Traits, class Params>
CUTE_DEVICE uint32_t const* stage_keep_row(Params const& params, WorkTile const& work, uint32_t* smem_words) {
  if (params.compute_bits == nullptr) return nullptr;
  int32_t const* rows[Traits::kSkipRows];
  CUTE_UNROLL
  for (int r = 0; r < Traits::kSkipRows; ++r) {
    int const row = skip_row_of<Traits>(params, work, r);
    rows[r] = row < 0 ? nullptr : params.compute_bits + int64_t(row) * params.num_words;
  }
#pragma unroll 4
  for (int w = 0; w < params.num_words; ++w) {
    uint32_t word = 0u;
    CUTE_UNROLL
    for (int r = 0; r < Traits::kSkipRows; ++r) word |= rows[r] == nullptr ? 0u : uint32_t(__ldg(rows[r] + w));
    smem_words[w] = word;
  }
  return smem_words;
}

// The producer's walk over a work tile's key tiles: those of its staged keep row (kernels with a skip state;
// nullptr = all), or all.
template <class Traits, class Params>
CUTE_DEVICE auto producer_tile_iterator(Params const& params, WorkTile const& work, uint32_t const* staged_row) {
  if constexpr (Traits::kSkipState) {
    return KeptTileIterator(staged_row, work.k_begin, work.k_end, params.reverse);
  } else {
    return DenseTileIterator(work.k_begin, work.k_end, params.reverse);
  }
}

// Every consumer thread: lists the kept key tiles of work item `work` (those of its keep row, or all, in its key
// range) in shared memory for KeptTileList, one keep word per thread: a popcount, a warp scan and the warps'
// totals give each word's place in the list. With a skip row per warpgroup the list holds the union of the
// warpgroups' rows, each entry with the mask of the warpgroups that keep it. Returns the number of entries.
template <class Traits, class Params>
CUTE_DEVICE int list_kept_tiles(Params const& params, WorkTile const& work, typename Traits::KeptEntry* list,
                                int* warp_counts, int thread_idx) {
  constexpr int kNumMmaThreads = Traits::kNumMmaThreads;
  constexpr int kSkipRows = Traits::kSkipRows;
  static_assert(kNumMmaThreads >= kMaxSkipWords, "one keep word per consumer thread");
  int const lane = thread_idx % 32, warp = thread_idx / 32;
  uint32_t own[kSkipRows];
  uint32_t bits = 0u;
  CUTE_UNROLL
  for (int r = 0; r < kSkipRows; ++r) {
    own[r] = 0u;
    int const row = skip_row_of<Traits>(params, work, r);
    if (thread_idx < params.num_words && row >= 0) {
      uint32_t const word = params.compute_bits == nullptr
                                ? 0xffffffffu
                                : uint32_t(__ldg(params.compute_bits + int64_t(row) * params.num_words + thread_idx));
      own[r] = keep_word_bits(word, thread_idx, work.k_begin, work.k_end);
    }
    bits |= own[r];
  }
  int const count = __popc(bits);
  int inclusive = count;
  CUTE_UNROLL
  for (int offset = 1; offset < 32; offset <<= 1) {
    int const below = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += below;
  }
  consumer_sync<kNumMmaThreads>();  // the previous work tile's list and counts are no longer read
  if (lane == 31) warp_counts[warp] = inclusive;
  consumer_sync<kNumMmaThreads>();
  int start = inclusive - count, total = 0;
  CUTE_UNROLL
  for (int w = 0; w < kNumMmaThreads / 32; ++w) {
    int const c = warp_counts[w];
    total += c;
    start += w < warp ? c : 0;
  }
  auto* out = list + 1 + start;
  for (; bits != 0u; bits &= bits - 1u) {
    int const bit = __ffs(bits) - 1;
    int entry = thread_idx * 32 + bit;
    if constexpr (kSkipRows > 1) {
      CUTE_UNROLL
      for (int r = 0; r < kSkipRows; ++r) entry |= int((own[r] >> bit) & 1u) << (16 + r);
    }
    *out++ = typename Traits::KeptEntry(entry);
  }
  if (thread_idx == 0) {
    list[0] = -1;
    list[total + 1] = -1;
  }
  consumer_sync<kNumMmaThreads>();  // list complete
  return total;
}

// The consumers' walk over a work item's key tiles: the listed kept tiles (kernels with a skip state), or all of
// the item's range.
template <class Traits, class Params>
CUTE_DEVICE auto consumer_tile_iterator(Params const& params, typename Traits::SharedStorage& shared,
                                        WorkTile const& work, int thread_idx) {
  if constexpr (Traits::kSkipState) {
    int const kept = list_kept_tiles<Traits>(params, work, shared.kept_list, shared.kept_warp_counts, thread_idx);
    return KeptTileList<typename Traits::KeptEntry>(shared.kept_list, kept, params.reverse);
  } else {
    return DenseTileIterator(work.k_begin, work.k_end, params.reverse);
  }
}

// The skip test of one work tile's rows (a no-op in kernels without a skip test); its begin and end take the
// thread's index within skip_row_threads.
template <class Traits, class Params>
CUTE_DEVICE auto skip_test_writer(Params const& params, typename Traits::SharedStorage& shared, WorkTile const& work,
                                  int thread_idx) {
  if constexpr (Traits::kSkipTest) {
    // A row votes only if it is a real query row (rows of this thread as in the epilogue).
    using Writer = SkipTestWriter<skip_row_threads<Traits>(), flat_loop<Traits>()>;
    int const group = skip_row_group<Traits>(thread_idx);
    int const skip_row = skip_row_of<Traits>(params, work, group);
    int const row0 = work.m_block * Traits::kBlockM + acc_tile_row(thread_idx);
    bool const valid[2] = {row0 < params.seqlen_q, row0 + 8 < params.seqlen_q};
    float const threshold = params.write_bits == nullptr ? 0.f : __ldg(params.thresholds + work.head);
    bool const has_row = skip_row >= 0;  // a warpgroup past the last query tile writes nothing
    // Only the flat loop's writer reads these votes (SkipTestWriter::kVotedFlags; bench/NOTES-cuda.md, nineteenth
    // round): the other kernels keep their pointer tests, whose code was measured.
    bool writes = false, gaps = false;
    if constexpr (flat_loop<Traits>()) {
      writes = __all_sync(0xffffffffu, params.write_bits != nullptr && has_row);
      gaps = __all_sync(0xffffffffu, params.tile_gaps != nullptr && has_row);
    }
    return Writer{
        shared.skip_words + group * kMaxSkipWords,
        params.write_bits != nullptr && has_row ? params.write_bits + int64_t(skip_row) * params.num_words : nullptr,
        params.num_words,
        {Writer::row_threshold_of(threshold, valid[0]), Writer::row_threshold_of(threshold, valid[1])},
        {valid[0], valid[1]},
        params.tile_gaps != nullptr && has_row ? params.tile_gaps + int64_t(skip_row) * params.num_k_tiles : nullptr,
        Traits::kSkipRows == 1 ? kSkipBarrierId : kSkipBarrierId + 1 + group,
        writes,
        gaps};
  } else {
    return NoSkipTest{};
  }
}

#ifndef LITEATTN_TRACE
#define LITEATTN_TRACE 0
#endif

// Low 32 bits of the global nanosecond timer in trace builds (LITEATTN_TRACE=1), else 0.
CUTE_DEVICE uint32_t trace_clock() {
#if LITEATTN_TRACE
  uint32_t t;
  asm volatile("mov.u32 %0, %%globaltimer_lo;" : "=r"(t));
  return t;
#else
  return 0;
#endif
}

// `key_loop(work, tiles, thread_idx, tOrO, softmax, skip, state, q_round)` runs the consumers' key loop of one
// work item with at least one kept key tile and returns how many of them the thread's skip row computed.
template <class Traits, class Params, class KeyLoop>
CUTE_DEVICE void run_work_tiles(Params const& params, typename Traits::SharedStorage& shared,
                                typename Traits::Pipeline& pipeline_k, typename Traits::Pipeline& pipeline_v,
                                KeyLoop&& key_loop) {
  WorkTileScheduler const scheduler{params.num_work_items, params.split.num_whole, params.split.num_splits,
                                    params.num_q_tiles,    params.num_heads,          params.num_k_tiles};
  if (cutlass::canonical_warp_group_idx() == 0) {
    cutlass::arch::warpgroup_reg_dealloc<Traits::kProducerRegs>();
    if (threadIdx.x != 0) return;
    auto state = cutlass::make_producer_start_state<typename Traits::Pipeline>();
    int q_round = 0;
    for (int item = scheduler.first(); scheduler.valid(item); item = scheduler.next(item)) {
      WorkTile const work = scheduler.decode(item);
      uint32_t const* row =
          Traits::kSkipState ? stage_keep_row<Traits>(params, work, shared.keep_words_producer) : nullptr;
      auto tiles = producer_tile_iterator<Traits>(params, work, row);
      q_round += producer_load<Traits>(params, shared, work, pipeline_k, pipeline_v, tiles, tiles.count(), state,
                                       q_round);
    }
    return;
  }

  cutlass::arch::warpgroup_reg_alloc<Traits::kConsumerRegs>();
  uint32_t const t_start = trace_clock();
  int const thread_idx = threadIdx.x - 128;
  typename Traits::PipelineState state;  // consumer side starts at phase 0
  int q_round = 0;
  for (int item = scheduler.first(); scheduler.valid(item); item = scheduler.next(item)) {
    WorkTile const work = scheduler.decode(item);
    auto tiles = consumer_tile_iterator<Traits>(params, shared, work, thread_idx);
    int const num_kept = tiles.count();

    typename Traits::TiledMmaPV mma_pv;
    Tensor tOrO = partition_fragment_C(mma_pv, select<0, 1>(typename Traits::TileShapePV{}));  // (MMA, MMA_M, MMA_N)
    clear(tOrO);
    OnlineSoftmax softmax(params.scale_log2);
    auto skip = skip_test_writer<Traits>(params, shared, work, thread_idx);
    int const row_thread = thread_idx % skip_row_threads<Traits>();
    skip.begin(row_thread);
    uint32_t const t_loop = trace_clock();
    int own_kept = 0;  // the tiles this thread's skip row computed
    if (num_kept > 0) {
      own_kept = key_loop(work, tiles, thread_idx, tOrO, softmax, skip, state, q_round);
      ++q_round;
    }
    uint32_t const t_loop_end = trace_clock();
    // The call's sparsity, counted here (one atomic per work tile and skip row) rather than by popcounting the keep
    // bits afterwards: ~20 us of small kernels per call on an H100.
    if (params.skipped_tiles != nullptr && row_thread == 0 &&
        skip_row_of<Traits>(params, work, skip_row_group<Traits>(thread_idx)) >= 0) {
      atomicAdd(params.skipped_tiles, static_cast<unsigned long long>(work.k_end - work.k_begin - own_kept));
    }
    skip.end(row_thread);
    if (work.piece < 0) {
      epilogue_store<Traits>(params, work, thread_idx, tOrO, softmax);
    } else {
      epilogue_store_piece<Traits>(params, work, thread_idx, tOrO, softmax);
    }
#if LITEATTN_TRACE
    // Development builds only: the work tile's timeline replaces the LSE of its first rows (bench/trace_tiles.py).
    consumer_sync<Traits::kNumMmaThreads>();
    if (thread_idx == 0) {
      uint32_t smid;
      asm volatile("mov.u32 %0, %%smid;" : "=r"(smid));
      uint32_t const stamps[6] = {t_start, t_loop, t_loop_end, trace_clock(), smid, uint32_t(num_kept)};
      float* lse_row = params.lse + (int64_t(work.batch) * params.num_heads + work.head) * params.seqlen_q +
                       work.m_block * Traits::kBlockM;
      for (int i = 0; i < 6; ++i) lse_row[i] = __uint_as_float(stamps[i]);
    }
#else
    (void)t_start, (void)t_loop, (void)t_loop_end;
#endif
  }
}

// Barrier set-up of both kernels: Q-landed (one producer arrival + Q's bytes), Q-released (every consumer thread).
template <class Traits, class Params>
CUTE_DEVICE void init_q_barriers(Params const& params, typename Traits::SharedStorage& shared) {
  if (cutlass::canonical_warp_idx_sync() == 0 && cute::elect_one_sync()) {
    cute::prefetch_tma_descriptor(params.tma_q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(params.tma_v.get_tma_descriptor());
    shared.barrier_q.init(1);
    shared.barrier_q_empty.init(Traits::kNumMmaThreads);
  }
}

}  // namespace liteattn
