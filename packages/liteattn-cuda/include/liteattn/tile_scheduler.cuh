// Which (query tile, head, batch) a CTA owns, and the walk over the key tiles its keep bitmask selects.
#pragma once

#include <cstdint>
#include <cute/config.hpp>

namespace liteattn {

struct WorkTile {
  int m_block;
  int head;
  int batch;
};

// One CTA per (query tile, head, batch), query tile fastest so that CTAs sharing a K/V head run together
// and hit L2. The hardware block scheduler hands out CTAs as SMs free up, so a CTA with few kept tiles
// frees its SM early instead of pinning a fixed share of the work.
struct BlockTileScheduler {
  CUTE_DEVICE static WorkTile get(int num_heads) {
    return {int(blockIdx.x), int(blockIdx.y), int(blockIdx.z)};
  }
};

// Walks the set bits of one (b, h, query-tile) row of the keep bitmask, ascending or descending.
// Producer and consumers each run their own copy: the words are tiny (W = ceil(KT/32)) and L1-resident,
// and re-scanning avoids a shared-memory handshake per tile.
struct KeptTileIterator {
  int32_t const* words;  // W words, or nullptr = every tile kept
  int num_words;
  int num_tiles;         // KT: bits >= KT are ignored
  bool reverse;
  int word_idx;
  uint32_t cur;

  CUTE_DEVICE uint32_t load_word(int w) const {
    uint32_t bits = words == nullptr ? 0xffffffffu : uint32_t(__ldg(words + w));
    int valid = num_tiles - w * 32;  // bits of this word that name real tiles
    if (valid < 32) bits &= (1u << valid) - 1u;
    return bits;
  }

  CUTE_DEVICE KeptTileIterator(int32_t const* words_, int num_tiles_, bool reverse_)
      : words(words_), num_words((num_tiles_ + 31) / 32), num_tiles(num_tiles_), reverse(reverse_) {
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

}  // namespace liteattn
