// The in-kernel skip test (docs/backend-contract.md): for every computed tile, a valid query row needs it iff
// m_tile - m_run > threshold (log2 units; the first computed tile is always needed). Each thread collects its
// rows' votes for the current 32 key tiles in one register; when the walk leaves those 32 tiles (tiles are
// visited in order, ascending or descending) a warp OR-reduction and one shared atomicOr per warp merge them
// into a CTA-local bitmask. After the key loop the consumers store the whole (b, h, query-tile) row of
// write_bits; no global atomics. With a skip row per warpgroup (SkipRows) each warpgroup votes and stores its own.
#pragma once

#include <cstdint>
#include <cmath>
#include <cute/config.hpp>
#include "softmax.cuh"

namespace liteattn {

// Rows of up to 8192 key tiles (1M keys at block_n 128): the skip-test words and the consumers' list of kept tiles
// live in shared memory.
constexpr int kMaxSkipWords = 256;
constexpr int kSkipBarrierId = 3;   // named barrier over the consumer threads (0: __syncthreads, 1-2: ping-pong)
// Named barriers kSkipBarrierId + 1 + w: consumer warpgroup w alone (a skip row per warpgroup).

// Named barrier over the consumer warpgroups only (the producer thread runs ahead and never joins). It orders
// shared-memory traffic (the list of kept tiles, the skip-test words), hence the "memory" clobber.
template <int kNumMmaThreads>
CUTE_DEVICE void consumer_sync() {
  asm volatile("bar.sync %0, %1;\n" ::"n"(kSkipBarrierId), "n"(kNumMmaThreads) : "memory");
}

// kThreads consumer threads share one row of the state: all of them, or (a skip row per warpgroup) 128. Their
// indices in begin / end count from 0 within the row's threads.
template <int kThreads, bool kVotedFlags = false>
struct SkipTestWriter {
  uint32_t* smem_words;   // kMaxSkipWords words in shared memory
  int32_t* gmem_words;    // this CTA's row of write_bits, or nullptr: no skip test
  int num_words;
  float row_threshold[2]; // threshold[h] for this thread's two rows, +inf for rows >= Sq (they never vote)
  bool row_valid[2];      // this thread's two rows are < Sq
  float* gmem_gaps;       // this CTA's row of tile_gaps (KT floats), or nullptr
  int barrier_id;         // named barrier over the kThreads threads of the row
  // kVotedFlags: the branches on "writes" and "records gaps" test these, gmem_words != nullptr and
  // gmem_gaps != nullptr as warp votes, which the compiler knows to be uniform (consumer_mainloop_flat needs that).
  bool writes;
  bool gaps;
  int word = -1;          // the 32-tile word whose votes `bits` holds
  uint32_t bits = 0u;     // this thread's votes for the tiles of `word`

  // A finite per-row threshold (+inf only for rows >= Sq): the first tile's gap is +inf and must win.
  CUTE_DEVICE static float row_threshold_of(float threshold_log2, bool valid) {
    return valid ? fminf(threshold_log2, 3.402823466e38f) : INFINITY;
  }

  CUTE_DEVICE void consumer_bar() const {
    if constexpr (kThreads > 128) {  // every consumer thread: the shared barrier's id is known at compile time
      consumer_sync<kThreads>();
    } else {
      asm volatile("bar.sync %0, %1;\n" ::"r"(barrier_id), "n"(kThreads) : "memory");
    }
  }

  CUTE_DEVICE bool enabled() const {
    if constexpr (kVotedFlags) return writes;
    return gmem_words != nullptr;
  }

  // Clear the shared bitmask; every consumer thread calls this before the key loop.
  CUTE_DEVICE void begin(int thread_idx) const {
    if (!enabled()) return;
    for (int w = thread_idx; w < num_words; w += kThreads) smem_words[w] = 0u;
    consumer_bar();
  }

  // After softmax.step on tile n: does one of this thread's rows need the tile? Two compares, taken right after
  // the softmax; the warp vote (commit) can wait until the next wgmma's are issued, off the serial path.
  CUTE_DEVICE bool needs(OnlineSoftmax const& softmax) const {
    if (!enabled()) return false;
    return row_needs(softmax);
  }

  // The same without the enabled() test: branch-free, for code that must not branch while a wgmma is in flight
  // (commit ignores the answer when the skip test is off). Before a row's first tile its running max is -inf, so
  // the difference is +inf and beats any row_threshold of a valid row: gap()'s special case is not needed here.
  CUTE_DEVICE bool row_needs(OnlineSoftmax const& softmax) const {
    bool needs = false;
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      needs |= (softmax.tile_max[r] - softmax.prev_max[r]) * softmax.scale_log2 > row_threshold[r];
    }
    return needs;
  }

  // Record this thread's vote for tile n; a tile outside the current word first merges the word into the CTA's
  // bitmask. n is warp-uniform, so is the branch. enabled() is tested only there: on every tile an early return
  // cost ~6 instructions after the PV wait, 1.7% of a call at head dim 128 (bench/NOTES-cuda.md, twenty-third round).
  // A call that records only tile gaps collects its votes unused.
  CUTE_DEVICE void commit(int n, bool needs, int lane) {
    if ((n >> 5) != word) {
      if (enabled()) flush(lane);
      word = n >> 5;
      bits = 0u;
    }
    bits |= needs ? 1u << (n & 31) : 0u;
  }

  CUTE_DEVICE void vote(int n, OnlineSoftmax const& softmax, int lane) { commit(n, needs(softmax), lane); }

  // OR the warp's votes for `word` into the CTA's bitmask (one shared atomic per warp, none for no vote).
  CUTE_DEVICE void flush(int lane) {
    uint32_t const warp_bits = __reduce_or_sync(0xffffffffu, bits);
    if (lane == 0 && warp_bits != 0u) atomicOr(&smem_words[word], warp_bits);
    bits = 0u;
  }

  // Tile gaps (docs/backend-contract.md): the largest m_tile - m_run over the valid rows, +inf for a row's first
  // tile; the same expression the vote compares, so gaps > t is the written bit at any t. Only calibration asks
  // for them: one global float max per warp and tile into a row the host filled with -inf.
  CUTE_DEVICE static float gap(OnlineSoftmax const& softmax, int r) {
    return softmax.prev_max[r] == -INFINITY ? INFINITY : (softmax.tile_max[r] - softmax.prev_max[r]) * softmax.scale_log2;
  }

  CUTE_DEVICE void record_gap(int n, OnlineSoftmax const& softmax, int lane) const {
    if (kVotedFlags ? !gaps : gmem_gaps == nullptr) return;
    float g = -INFINITY;
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) g = row_valid[r] ? fmaxf(g, gap(softmax, r)) : g;
    CUTE_UNROLL
    for (int offset = 4; offset < 32; offset <<= 1) g = fmaxf(g, __shfl_xor_sync(0xffffffffu, g, offset));
    if (lane == 0 && g > -INFINITY) atomic_max_float(gmem_gaps + n, g);
  }

  // Float max through the integer atomics: non-negative floats order like their int bits, negative ones
  // reversed like their unsigned bits.
  CUTE_DEVICE static void atomic_max_float(float* addr, float value) {
    if (value >= 0.f) {
      atomicMax(reinterpret_cast<int*>(addr), __float_as_int(value));
    } else {
      atomicMin(reinterpret_cast<unsigned int*>(addr), __float_as_uint(value));
    }
  }

  // Store the CTA's row: every word, also when no tile was computed (then all zero).
  CUTE_DEVICE void end(int thread_idx) {
    if (!enabled()) return;
    flush(thread_idx % 32);
    consumer_bar();
    for (int w = thread_idx; w < num_words; w += kThreads) gmem_words[w] = int32_t(smem_words[w]);
  }
};

// The skip test of kernels without a skip state: every call compiles away.
struct NoSkipTest {
  CUTE_DEVICE void begin(int) const {}
  CUTE_DEVICE bool needs(OnlineSoftmax const&) const { return false; }
  CUTE_DEVICE bool row_needs(OnlineSoftmax const&) const { return false; }
  CUTE_DEVICE void commit(int, bool, int) const {}
  CUTE_DEVICE void vote(int, OnlineSoftmax const&, int) const {}
  CUTE_DEVICE void record_gap(int, OnlineSoftmax const&, int) const {}
  CUTE_DEVICE void end(int) const {}
};

}  // namespace liteattn
