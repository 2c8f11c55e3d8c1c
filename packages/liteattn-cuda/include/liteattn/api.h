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

// Returns 0 on success, otherwise a cudaError_t value, -1 for an unsupported configuration, or -2 when
// write_bits rows are longer than the kernel's shared bitmask (kMaxSkipWords).
int fwd_sm90(FwdArgs const& args, void* stream);

// Head dims compiled into this build, as a 0-terminated list.
int const* supported_head_dims();

}  // namespace liteattn
