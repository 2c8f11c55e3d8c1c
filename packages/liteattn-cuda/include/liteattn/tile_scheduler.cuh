// Which (query tile, head, batch) a CTA owns, and the walk over the key tiles its keep bitmask selects.
#pragma once

#include <cstdint>
#include <cuda_runtime.h>
#include <cute/config.hpp>
#include "tail_split.h"

namespace liteattn {

// Query tile, head and batch of work tile `tile` = (b * H + h) * QT + m.
struct TileCoords {
  int m_block, head, batch;
};
CUTE_HOST_DEVICE TileCoords tile_coords(int tile, int num_q_tiles, int num_heads) {
  int const rest = tile / num_q_tiles;
  return {tile - rest * num_q_tiles, rest % num_heads, rest / num_heads};
}

struct WorkTile {
  int tile;  // (b * H + h) * QT + m: the row of the keep bitmask
  int m_block;
  int head;
  int batch;
  int k_begin, k_end;  // key tiles [k_begin, k_end) of the tile: all of them, or one piece's range
  int piece;           // -1: the whole tile; else the piece's index in the tail split's workspace
};

// A CTA walks the work items blockIdx.x, blockIdx.x + gridDim.x, ... Work item i < num_whole is work tile i, numbered
// like the rows of the keep bitmask ((b * H + h) * QT + m), query tile fastest, so that the CTAs running at any
// moment share a few K/V heads and hit L2; the items after it are the key-range pieces of the last work tiles
// (TailSplit, dense calls only), num_splits per tile. The default grid has one CTA per work item, which the
// hardware hands to SMs as they free up: rows with few kept tiles never hold an SM while others wait. With
// LITEATTN_PERSISTENT=1 the grid is one CTA per SM, each carrying its K/V ring and Q barriers across its tiles
// (the producer loads the next Q and K/V during the epilogue); the static assignment then costs 5-10% to
// imbalance between SMs on skewed keep masks (bench/NOTES-cuda.md, v8).
struct WorkTileScheduler {
  int num_items;   // num_whole + (num_tiles - num_whole) * num_splits
  int num_whole;
  int num_splits;
  int num_q_tiles;
  int num_heads;
  int num_k_tiles;

  CUTE_DEVICE int first() const { return int(blockIdx.x); }
  CUTE_DEVICE int next(int item) const { return item + int(gridDim.x); }
  CUTE_DEVICE bool valid(int item) const { return item < num_items; }
  CUTE_DEVICE WorkTile decode(int item) const {
    int tile = item, piece = -1, k_begin = 0, k_end = num_k_tiles;
    if (item >= num_whole) {
      piece = item - num_whole;
      int const split = piece % num_splits;
      tile = num_whole + piece / num_splits;
      k_begin = split * num_k_tiles / num_splits;
      k_end = (split + 1) * num_k_tiles / num_splits;
    }
    TileCoords const at = tile_coords(tile, num_q_tiles, num_heads);
    return {tile, at.m_block, at.head, at.batch, k_begin, k_end, piece};
  }
};

#ifndef LITEATTN_PERSISTENT
#define LITEATTN_PERSISTENT 0
#endif

// The SMs of the current device, or minus a cudaError_t value.
inline int current_device_sms() {
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return err == cudaSuccess ? sms : -int(err);
}

// One CTA per work item, or (persistent) one resident CTA per SM (a CTA takes most of an SM's shared memory),
// never more CTAs than work items. Returns the grid size, or minus a cudaError_t value.
inline int work_grid_size(int num_work_items) {
  if (!LITEATTN_PERSISTENT) return num_work_items;
  int const sms = current_device_sms();
  if (sms < 0) return sms;
  return sms < num_work_items ? sms : num_work_items;
}

// Word w of a keep row with only the bits of key tiles [begin, end) left: a work item's range (the whole row, or one
// piece of a split tile), and never the bits past the row's last key tile.
CUTE_DEVICE uint32_t keep_word_bits(uint32_t bits, int w, int begin, int end) {
  int const lo = begin - w * 32, hi = end - w * 32;  // the range in this word's bit positions
  uint32_t const below_hi = hi >= 32 ? 0xffffffffu : hi <= 0 ? 0u : (1u << hi) - 1u;
  uint32_t const from_lo = lo <= 0 ? 0xffffffffu : lo >= 32 ? 0u : ~((1u << lo) - 1u);
  return bits & below_hi & from_lo;
}

// The producer's walk: the set bits of one (b, h, query-tile) row of the keep bitmask, ascending or descending, in
// its own shared-memory copy of the row (stage_keep_row). One thread running ahead of the consumers can afford
// the branches; the consumers walk KeptTileList instead.
struct KeptTileIterator {
  uint32_t const* words;  // the row's words in shared memory, or nullptr = every tile kept
  int begin, end;         // the work item's key tiles: other bits are ignored
  int num_words;          // words up to the one holding tile end - 1
  bool reverse;
  int word_idx;
  uint32_t cur;

  CUTE_DEVICE uint32_t load_word(int w) const {
    return keep_word_bits(words == nullptr ? 0xffffffffu : words[w], w, begin, end);
  }

  CUTE_DEVICE KeptTileIterator(uint32_t const* words_, int begin_, int end_, bool reverse_)
      : words(words_), begin(begin_), end(end_), num_words((end_ + 31) / 32), reverse(reverse_) {
    word_idx = reverse ? num_words - 1 : 0;
    cur = num_words > 0 ? load_word(word_idx) : 0u;
  }

  CUTE_DEVICE int count() const {
    int n = 0;
    for (int w = 0; w < num_words; ++w) n += __popc(load_word(w));
    return n;
  }

  // Next kept tile index, or -1 when done.
  CUTE_DEVICE int next() {
    while (cur == 0u) {
      word_idx += reverse ? -1 : 1;
      if (word_idx < 0 || word_idx >= num_words) return -1;
      cur = load_word(word_idx);
    }
    int bit;
    if (!reverse) {
      bit = __ffs(cur) - 1;
      cur &= cur - 1u;
    } else {
      bit = 31 - __clz(cur);
      cur &= ~(1u << bit);
    }
    return word_idx * 32 + bit;
  }
};

// The consumers' walk: the kept tiles of one work tile, listed once in shared memory (list_kept_tiles), so that
// next() is one branch-free shared load that the key loop issues between a wgmma's issue and its wait (a branch
// there would make the compiler wait for every wgmma in flight). Walking the bitmask instead put a loop of
// ~60 instructions with branches between each PV wait and the next issue: on an H100 the list made the
// skip-state kernels 7-10% faster (bench/NOTES-cuda.md, ninth round). next() must stay branch-free.
// Entry: the tile index, or (a skip row per warpgroup, SkipRows::KeptEntry) the tile index with the mask of the
// warpgroups that keep it in bits 16 and up.
template <class Entry>
struct KeptTileList {
  Entry const* list;  // list[0] = -1, the kept tiles ascending, then -1 again
  int num_kept;
  int pos;
  int step;

  CUTE_DEVICE KeptTileList(Entry const* list_, int num_kept_, bool reverse)
      : list(list_), num_kept(num_kept_), pos(reverse ? num_kept_ : 1), step(reverse ? -1 : 1) {}
  CUTE_DEVICE int count() const { return num_kept; }
  // Next entry, or -1 when done.
  CUTE_DEVICE int next() {
    int const entry = list[pos];
    pos += step;
    return entry;
  }
};

// Every key tile of [begin, end) in order, for kernels without a skip state: the same interface as KeptTileList
// (next() compiles to selects, no branch).
struct DenseTileIterator {
  int begin, end;
  bool reverse;
  int n;

  CUTE_DEVICE DenseTileIterator(int begin_, int end_, bool reverse_)
      : begin(begin_), end(end_), reverse(reverse_), n(reverse_ ? end_ - 1 : begin_) {}
  CUTE_DEVICE int count() const { return end - begin; }
  CUTE_DEVICE int next() {
    if (n < begin || n >= end) return -1;
    int const tile = n;
    n += reverse ? -1 : 1;
    return tile;
  }
};

}  // namespace liteattn
