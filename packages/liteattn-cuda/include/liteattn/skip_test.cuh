// The in-kernel skip test (docs/backend-contract.md): for every computed tile, a valid query row needs it iff
// m_tile - m_run > threshold (log2 units; the first computed tile is always needed). The consumer warps vote
// per tile into a CTA-local bitmask in shared memory (one shared atomicOr per warp and tile, no global
// atomics); after the key loop the consumers store the whole (b, h, query-tile) row of write_bits.
#pragma once

#include <cstdint>
#include <cmath>
#include <cute/config.hpp>
#include "softmax.cuh"

namespace liteattn {

constexpr int kMaxSkipWords = 256;  // write_bits rows of up to 8192 key tiles (1M keys at block_n 128)
constexpr int kSkipBarrierId = 3;   // named barrier over the consumer threads (0: __syncthreads, 1-2: ping-pong)

template <int kNumMmaThreads>
struct SkipTestWriter {
  uint32_t* smem_words;   // kMaxSkipWords words in shared memory
  int32_t* gmem_words;    // this CTA's row of write_bits, or nullptr: no skip test
  int num_words;
  float threshold_log2;   // threshold[h]
  float scale_log2;
  bool row_valid[2];      // this thread's two rows are < Sq (padded rows never vote)

  CUTE_DEVICE static void consumer_bar() {
    asm volatile("bar.sync %0, %1;\n" ::"n"(kSkipBarrierId), "n"(kNumMmaThreads));
  }

  CUTE_DEVICE bool enabled() const { return gmem_words != nullptr; }

  // Clear the shared bitmask; every consumer thread calls this before the key loop.
  CUTE_DEVICE void begin(int thread_idx) const {
    if (!enabled()) return;
    for (int w = thread_idx; w < num_words; w += kNumMmaThreads) smem_words[w] = 0u;
    consumer_bar();
  }

  // After softmax.step on tile n: vote "needed" for the rows this thread owns, OR the warp's vote in.
  CUTE_DEVICE void vote(int n, OnlineSoftmax const& softmax, int lane) const {
    if (!enabled()) return;
    bool needs = false;
    CUTE_UNROLL
    for (int r = 0; r < 2; ++r) {
      bool const first = softmax.prev_max[r] == -INFINITY;
      needs |= row_valid[r] && (first || (softmax.tile_max[r] - softmax.prev_max[r]) * scale_log2 > threshold_log2);
    }
    if (__any_sync(0xffffffffu, needs) && lane == 0) atomicOr(&smem_words[n / 32], 1u << (n % 32));
  }

  // Store the CTA's row: every word, also when no tile was computed (then all zero).
  CUTE_DEVICE void end(int thread_idx) const {
    if (!enabled()) return;
    consumer_bar();
    for (int w = thread_idx; w < num_words; w += kNumMmaThreads) gmem_words[w] = int32_t(smem_words[w]);
  }
};

}  // namespace liteattn
