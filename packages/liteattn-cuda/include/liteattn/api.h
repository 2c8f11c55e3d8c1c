// Framework-free entry point of the sm90 forward kernel. Nothing here includes torch or CUDA headers, so
// csrc/ops.cpp (the only file that talks to torch) can be compiled by the host compiler.
#pragma once
#include <cstdint>

namespace liteattn {

enum class DType : int { kFloat16 = 0, kBFloat16 = 1 };

// Tensors are BSHD with a contiguous last dim; strides are in elements, in (batch, seq, head) order.
struct FwdArgs {
  void const* q;                 // (B, Sq, H, D)
  void const* k;                 // (B, Sk, Hkv, D)
  void const* v;                 // (B, Sk, Hkv, D)
  void* out;                     // (B, Sq, H, D)
  float* lse;                    // (B, H, Sq), contiguous
  int32_t const* compute_bits;   // (B, H, QT, W), contiguous, or nullptr = every key tile
  int32_t* write_bits;           // (B, H, QT, W), contiguous, or nullptr = no skip test
  float const* thresholds;       // (H,) log2 units; read only with write_bits
  float* tile_gaps;              // (B, H, QT, KT), contiguous, pre-filled with -inf, or nullptr
  unsigned long long* skipped_tiles;  // one counter, pre-zeroed: += the key tiles the call skips, or nullptr
  float* workspace;              // fwd_sm90_workspace_floats(args) floats, or nullptr when that is 0
  int64_t workspace_floats;
  int64_t q_stride[3];
  int64_t k_stride[3];
  int64_t v_stride[3];
  int64_t out_stride[3];
  int batch, seqlen_q, seqlen_k, num_heads, num_heads_kv, head_dim;
  int block_m, block_n;
  float scale;                   // softmax scale (natural units)
  bool reverse;                  // visit kept key tiles in descending order
  DType dtype;
};

// Returns 0 on success, otherwise a cudaError_t value, -1 for an unsupported configuration, -2 when
// compute_bits / write_bits rows are longer than the kernel's shared-memory rows (kMaxSkipWords), or -3 when
// args.workspace is smaller than a call that needs one requires (fwd_sm90_workspace_floats).
int fwd_sm90(FwdArgs const& args, void* stream);

// fp32 scratch that fwd_sm90 needs, 0 if none: the split of a dense call's last wave by keys (tail_split.h; skipped
// when args.workspace is smaller, and dependent on the current device's SM count), or the padded last key tile of a
// skip-state call whose kernel masks no keys (key_pad_workspace_floats in launch.cuh; the call fails without it).
int64_t fwd_sm90_workspace_floats(FwdArgs const& args);

// Head dims compiled into this build, as a 0-terminated list.
int const* supported_head_dims();

// ---- INT8 Q/K (use_int8; liteattn.quant semantics) ----

// Per-tile dequantisation scales of the int8 copies of Q and smoothed K (fp32, contiguous).
struct Int8Scales {
  float const* q_scale;  // (B, H, QT)
  float const* k_scale;  // (B, Hkv, KT)
};

// Same as fwd_sm90 with args.q / args.k pointing at int8 (B, S, H, D) tensors (strides in elements = bytes) and
// args.v, args.out in args.dtype. lse is that of the smoothed scores. Same return codes as fwd_sm90.
int fwd_int8_sm90(FwdArgs const& args, Int8Scales const& scales, void* stream);

// Head dims with an INT8 instantiation, 0-terminated.
int const* supported_int8_head_dims();

// Rows of K summed by one CTA of the channel-mean pass: k_partial holds (B, Hkv, ceil(Sk / kQuantSumRows), D).
constexpr int kQuantSumRows = 1024;

struct QuantArgs {
  void const* q;       // (B, Sq, H, D) fp16/bf16, contiguous last dim, 16-byte aligned rows
  void const* k;       // (B, Sk, Hkv, D)
  int8_t* q8;          // (B, Sq, H, D) int8, contiguous
  int8_t* k8;          // (B, Sk, Hkv, D) int8, contiguous: K minus its per-channel mean
  float* q_scale;      // (B, H, QT)
  float* k_scale;      // (B, Hkv, KT)
  float* k_partial;    // (B, Hkv, ceil(Sk / kQuantSumRows), D) scratch: per-chunk channel sums
  int64_t q_stride[3];
  int64_t k_stride[3];
  int batch, seqlen_q, seqlen_k, num_heads, num_heads_kv, head_dim;
  int block_m, block_n;
  DType dtype;
};

// Three launches on `stream`: K channel partial sums, Q tiles, K tiles. Returns 0 or a cudaError_t value,
// -1 for an unsupported head dim (a multiple of 8 up to 256 is needed).
int quantize_qk_sm90(QuantArgs const& args, void* stream);

}  // namespace liteattn
