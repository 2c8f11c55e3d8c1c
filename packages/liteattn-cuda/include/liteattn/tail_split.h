// The last wave of a dense call, split by keys. A dense call's work tiles all take the same time and run one per SM,
// so a call of N tiles on P SMs takes ceil(N / P) tile times: at (1, 12, 32760, 128) on an H100, 3072 tiles are
// 23 full waves and 36 tiles that hold 36 SMs for a whole 24th while the other 96 idle (~3% of the call). Splitting
// each of those last tiles into k key ranges (k * 36 <= P) runs the 24th wave in a k-th of the time; the pieces
// write fp32 partial outputs and LSEs that a small kernel merges (tail_combine.cuh). Host-only: no CUDA headers.
#pragma once

#include <cstdint>

namespace liteattn {

struct TailSplit {
  int num_whole;   // work tiles [0, num_whole) are computed whole
  int num_splits;  // the later ones in this many key ranges each (1: no split)

  int num_pieces(int num_tiles) const { return (num_tiles - num_whole) * num_splits; }
  int num_work_items(int num_tiles) const { return num_whole + num_pieces(num_tiles); }
};

// A piece keeps at least this many key tiles: each costs a work tile's fixed prologue and epilogue (~2.4 us on an
// H100, bench/NOTES-cuda.md, sixth round) against ~1.7 us per key tile.
constexpr int kMinKeyTilesPerPiece = 4;
constexpr int kMaxTailSplits = 16;

inline TailSplit plan_tail_split(int num_tiles, int num_k_tiles, int num_sms) {
  TailSplit const whole{num_tiles, 1};
  if (num_sms <= 0 || num_tiles <= 0) return whole;
  int const tail = num_tiles % num_sms;  // work tiles of the last, partial wave
  if (tail == 0) return whole;
  int splits = num_sms / tail;
  if (splits > num_k_tiles / kMinKeyTilesPerPiece) splits = num_k_tiles / kMinKeyTilesPerPiece;
  if (splits > kMaxTailSplits) splits = kMaxTailSplits;
  if (splits < 2) return whole;
  return {num_tiles - tail, splits};
}

// fp32 workspace of a split: every piece's (block_m, head_dim) output, then its block_m LSEs.
inline int64_t tail_split_workspace_floats(TailSplit const& split, int num_tiles, int block_m, int head_dim) {
  return int64_t(split.num_pieces(num_tiles)) * block_m * (head_dim + 1);
}

}  // namespace liteattn
