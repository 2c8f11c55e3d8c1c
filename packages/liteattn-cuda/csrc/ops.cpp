// The only file that talks to torch: the stable-ABI schema of liteattn_cuda::fwd and its CUDA impl.
// Everything is checked here, with the tensor's name in the message, before the kernel sees a pointer.
#include <cstdint>
#include <optional>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include "liteattn/api.h"

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

namespace {

void check_bshd(Tensor const& t, char const* name, int64_t batch, int64_t heads_div, int64_t head_dim,
                int64_t align_elems = 8) {
  STD_TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  STD_TORCH_CHECK(t.dim() == 4, name, " must be 4-D (B, S, H, D), got ", t.dim(), " dims");
  STD_TORCH_CHECK(t.stride(3) == 1, name, " must have a contiguous last dim");
  STD_TORCH_CHECK(t.size(0) == batch, name, " batch ", t.size(0), " != q batch ", batch);
  STD_TORCH_CHECK(t.size(3) == head_dim, name, " head dim ", t.size(3), " != q head dim ", head_dim);
  // TMA needs 16-byte aligned base and strides.
  STD_TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, " must be 16-byte aligned");
  for (int i = 0; i < 3; ++i)
    STD_TORCH_CHECK(t.stride(i) % align_elems == 0 || t.size(i) == 1, name, " stride(", i, ") must be a multiple of ",
                    align_elems, " elements");
  (void)heads_div;
}

// Shape checks shared by fwd and fwd_int8 (dtypes and q/k/v layouts are checked by the caller); returns the
// kernel arguments with args.dtype taken from v.
liteattn::FwdArgs make_fwd_args(Tensor const& q, Tensor const& k, Tensor const& v, Tensor& out, Tensor& lse,
                                std::optional<Tensor> const& compute_bits, std::optional<Tensor> const& write_bits,
                                std::optional<Tensor> const& thresholds, std::optional<Tensor> const& tile_gaps,
                                std::optional<Tensor> const& skipped_tiles, double scale, int64_t block_m,
                                int64_t block_n, bool reverse) {
  int64_t const B = q.size(0), Sq = q.size(1), H = q.size(2), D = q.size(3);
  int64_t const Sk = k.size(1), Hkv = k.size(2);
  STD_TORCH_CHECK(v.size(1) == Sk && v.size(2) == Hkv, "v must have k's (B, Sk, Hkv)");
  STD_TORCH_CHECK(out.size(1) == Sq && out.size(2) == H, "out must be (B, Sq, H, D)");
  STD_TORCH_CHECK(Hkv > 0 && H % Hkv == 0, "q heads (", H, ") must be a multiple of k heads (", Hkv, ")");
  STD_TORCH_CHECK(lse.is_cuda() && lse.scalar_type() == ScalarType::Float && lse.is_contiguous() && lse.dim() == 3 &&
                      lse.size(0) == B && lse.size(1) == H && lse.size(2) == Sq,
                  "lse must be a contiguous float32 CUDA tensor (B, H, Sq)");
  int64_t const QT = (Sq + block_m - 1) / block_m, KT = (Sk + block_n - 1) / block_n, W = (KT + 31) / 32;
  int32_t const* bits = nullptr;
  if (compute_bits.has_value()) {
    Tensor const& cb = *compute_bits;
    STD_TORCH_CHECK(cb.is_cuda() && cb.scalar_type() == ScalarType::Int && cb.is_contiguous() && cb.dim() == 4 &&
                        cb.size(0) == B && cb.size(1) == H && cb.size(2) == QT && cb.size(3) == W,
                    "compute_bits must be a contiguous int32 CUDA tensor (B, H, QT, W) = (", B, ", ", H, ", ", QT,
                    ", ", W, ")");
    bits = static_cast<int32_t const*>(cb.data_ptr());
  }
  int32_t* wbits = nullptr;
  float const* thr = nullptr;
  if (write_bits.has_value()) {
    Tensor const& wb = *write_bits;
    STD_TORCH_CHECK(wb.is_cuda() && wb.scalar_type() == ScalarType::Int && wb.is_contiguous() && wb.dim() == 4 &&
                        wb.size(0) == B && wb.size(1) == H && wb.size(2) == QT && wb.size(3) == W,
                    "write_bits must be a contiguous int32 CUDA tensor (B, H, QT, W) = (", B, ", ", H, ", ", QT,
                    ", ", W, ")");
    STD_TORCH_CHECK(thresholds.has_value(), "thresholds are needed with write_bits");
    Tensor const& th = *thresholds;
    STD_TORCH_CHECK(th.is_cuda() && th.scalar_type() == ScalarType::Float && th.is_contiguous() && th.dim() == 1 &&
                        th.size(0) == H,
                    "thresholds must be a contiguous float32 CUDA tensor (H,) = (", H, ",)");
    wbits = static_cast<int32_t*>(wb.data_ptr());
    thr = static_cast<float const*>(th.data_ptr());
  }
  float* gaps = nullptr;
  if (tile_gaps.has_value()) {
    Tensor const& tg = *tile_gaps;
    STD_TORCH_CHECK(tg.is_cuda() && tg.scalar_type() == ScalarType::Float && tg.is_contiguous() && tg.dim() == 4 &&
                        tg.size(0) == B && tg.size(1) == H && tg.size(2) == QT && tg.size(3) == KT,
                    "tile_gaps must be a contiguous float32 CUDA tensor (B, H, QT, KT) = (", B, ", ", H, ", ", QT,
                    ", ", KT, ")");
    gaps = static_cast<float*>(tg.data_ptr());
  }
  unsigned long long* skipped = nullptr;
  if (skipped_tiles.has_value()) {
    Tensor const& st = *skipped_tiles;
    STD_TORCH_CHECK(st.is_cuda() && st.scalar_type() == ScalarType::Long && st.dim() == 0,
                    "skipped_tiles must be a 0-d int64 CUDA tensor");
    skipped = static_cast<unsigned long long*>(st.data_ptr());
  }
  liteattn::FwdArgs args{};
  args.q = q.data_ptr();
  args.k = k.data_ptr();
  args.v = v.data_ptr();
  args.out = out.data_ptr();
  args.lse = static_cast<float*>(lse.data_ptr());
  args.compute_bits = bits;
  args.write_bits = wbits;
  args.thresholds = thr;
  args.tile_gaps = gaps;
  args.skipped_tiles = skipped;
  for (int i = 0; i < 3; ++i) {
    args.q_stride[i] = q.stride(i);
    args.k_stride[i] = k.stride(i);
    args.v_stride[i] = v.stride(i);
    args.out_stride[i] = out.stride(i);
  }
  args.batch = int(B);
  args.seqlen_q = int(Sq);
  args.seqlen_k = int(Sk);
  args.num_heads = int(H);
  args.num_heads_kv = int(Hkv);
  args.head_dim = int(D);
  args.block_m = int(block_m);
  args.block_n = int(block_n);
  args.scale = float(scale);
  args.reverse = reverse;
  args.dtype = v.scalar_type() == ScalarType::BFloat16 ? liteattn::DType::kBFloat16 : liteattn::DType::kFloat16;
  return args;
}

void check_launch(int err, liteattn::FwdArgs const& args) {
  STD_TORCH_CHECK(err != -1, "liteattn_cuda: no kernel for head dim ", args.head_dim, " with tiles (", args.block_m,
                  ", ", args.block_n, ")");
  STD_TORCH_CHECK(err != -3, "liteattn_cuda: internal error: the call's workspace is smaller than "
                              "fwd_sm90_workspace_floats says");
  STD_TORCH_CHECK(err != -2, "liteattn_cuda: more than 8192 key tiles (256 words per keep row) in a call that runs "
                              "the skip-state kernel (compute_bits, write_bits, tile_gaps, int8 Q/K or head dim 256)");
  STD_TORCH_CHECK(err == 0, "liteattn_cuda: kernel launch failed with CUDA error ", err);
}

void check_qkv_shapes(Tensor const& q, Tensor const& k) {
  STD_TORCH_CHECK(q.dim() == 4, "q must be 4-D (B, Sq, H, D), got ", q.dim(), " dims");
  STD_TORCH_CHECK(k.dim() == 4, "k must be 4-D (B, Sk, Hkv, D)");
}

bool is_16bit(ScalarType t) { return t == ScalarType::BFloat16 || t == ScalarType::Half; }

void fwd(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, std::optional<Tensor> compute_bits,
         std::optional<Tensor> write_bits, std::optional<Tensor> thresholds, std::optional<Tensor> tile_gaps,
         std::optional<Tensor> skipped_tiles, double scale, int64_t block_m, int64_t block_n, bool reverse,
         int64_t stream) {
  check_qkv_shapes(q, k);
  int64_t const B = q.size(0), D = q.size(3);
  STD_TORCH_CHECK(is_16bit(q.scalar_type()), "q must be float16 or bfloat16");
  STD_TORCH_CHECK(k.scalar_type() == q.scalar_type(), "k dtype must match q");
  STD_TORCH_CHECK(v.scalar_type() == q.scalar_type(), "v dtype must match q");
  STD_TORCH_CHECK(out.scalar_type() == q.scalar_type(), "out dtype must match q");
  check_bshd(q, "q", B, 1, D);
  check_bshd(k, "k", B, 1, D);
  check_bshd(v, "v", B, 1, D);
  check_bshd(out, "out", B, 1, D);
  liteattn::FwdArgs args = make_fwd_args(q, k, v, out, lse, compute_bits, write_bits, thresholds, tile_gaps,
                                         skipped_tiles, scale, block_m, block_n, reverse);
  // Scratch for the pieces of a dense call's last wave or the padded last key tile, from torch's allocator on the
  // current stream (the one the kernel runs on), so it is reused only once the kernel is done with it.
  int64_t const workspace_floats = liteattn::fwd_sm90_workspace_floats(args);
  std::optional<Tensor> workspace;
  if (workspace_floats > 0) {
    workspace = torch::stable::new_empty(lse, {workspace_floats}, ScalarType::Float);
    args.workspace = static_cast<float*>(workspace->data_ptr());
    args.workspace_floats = workspace_floats;
  }
  check_launch(liteattn::fwd_sm90(args, reinterpret_cast<void*>(stream)), args);
}

void check_scales(Tensor const& t, char const* name, int64_t b, int64_t h, int64_t tiles) {
  STD_TORCH_CHECK(t.is_cuda() && t.scalar_type() == ScalarType::Float && t.is_contiguous() && t.dim() == 3 &&
                      t.size(0) == b && t.size(1) == h && t.size(2) == tiles,
                  name, " must be a contiguous float32 CUDA tensor (", b, ", ", h, ", ", tiles, ")");
}

void check_int8_copy(Tensor const& t, Tensor const& src, char const* name) {
  STD_TORCH_CHECK(t.is_cuda() && t.scalar_type() == ScalarType::Char && t.is_contiguous() && t.dim() == 4,
                  name, " must be a contiguous int8 CUDA tensor");
  for (int i = 0; i < 4; ++i) STD_TORCH_CHECK(t.size(i) == src.size(i), name, " must have the shape of its source");
  STD_TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, " must be 16-byte aligned");
}

// Quantises q and k (liteattn.quant semantics) into q8 / k8 and their per-tile scales; k_partial is scratch.
void quantize_qk(Tensor q, Tensor k, Tensor q8, Tensor k8, Tensor q_scale, Tensor k_scale, Tensor k_partial,
                 int64_t block_m, int64_t block_n, int64_t stream) {
  check_qkv_shapes(q, k);
  int64_t const B = q.size(0), Sq = q.size(1), H = q.size(2), D = q.size(3);
  int64_t const Sk = k.size(1), Hkv = k.size(2);
  STD_TORCH_CHECK(is_16bit(q.scalar_type()) && k.scalar_type() == q.scalar_type(),
                  "q and k must both be float16 or both bfloat16");
  STD_TORCH_CHECK(D % 8 == 0 && D <= 256, "head dim ", D, " must be a multiple of 8 up to 256");
  STD_TORCH_CHECK(block_m > 0 && block_n > 0, "tile sizes must be positive");
  check_bshd(q, "q", B, 1, D);
  check_bshd(k, "k", B, 1, D);
  check_int8_copy(q8, q, "q8");
  check_int8_copy(k8, k, "k8");
  check_scales(q_scale, "q_scale", B, H, (Sq + block_m - 1) / block_m);
  check_scales(k_scale, "k_scale", B, Hkv, (Sk + block_n - 1) / block_n);
  int64_t const chunks = (Sk + liteattn::kQuantSumRows - 1) / liteattn::kQuantSumRows;
  STD_TORCH_CHECK(k_partial.is_cuda() && k_partial.scalar_type() == ScalarType::Float && k_partial.is_contiguous() &&
                      k_partial.dim() == 4 && k_partial.size(0) == B && k_partial.size(1) == Hkv &&
                      k_partial.size(2) == chunks && k_partial.size(3) == D,
                  "k_partial must be a contiguous float32 CUDA tensor (B, Hkv, ceil(Sk / ", liteattn::kQuantSumRows,
                  "), D) = (", B, ", ", Hkv, ", ", chunks, ", ", D, ")");
  liteattn::QuantArgs a{};
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.q8 = static_cast<int8_t*>(q8.data_ptr());
  a.k8 = static_cast<int8_t*>(k8.data_ptr());
  a.q_scale = static_cast<float*>(q_scale.data_ptr());
  a.k_scale = static_cast<float*>(k_scale.data_ptr());
  a.k_partial = static_cast<float*>(k_partial.data_ptr());
  for (int i = 0; i < 3; ++i) {
    a.q_stride[i] = q.stride(i);
    a.k_stride[i] = k.stride(i);
  }
  a.batch = int(B);
  a.seqlen_q = int(Sq);
  a.seqlen_k = int(Sk);
  a.num_heads = int(H);
  a.num_heads_kv = int(Hkv);
  a.head_dim = int(D);
  a.block_m = int(block_m);
  a.block_n = int(block_n);
  a.dtype = q.scalar_type() == ScalarType::BFloat16 ? liteattn::DType::kBFloat16 : liteattn::DType::kFloat16;
  int const err = liteattn::quantize_qk_sm90(a, reinterpret_cast<void*>(stream));
  STD_TORCH_CHECK(err != -1, "liteattn_cuda: quantize_qk does not support head dim ", D);
  STD_TORCH_CHECK(err == 0, "liteattn_cuda: quantize_qk launch failed with CUDA error ", err);
}

// fwd on the int8 copies made by quantize_qk: q8 (B, Sq, H, D), k8 (B, Sk, Hkv, D), v/out fp16 or bf16.
void fwd_int8(Tensor q8, Tensor k8, Tensor v, Tensor out, Tensor lse, Tensor q_scale, Tensor k_scale,
              std::optional<Tensor> compute_bits, std::optional<Tensor> write_bits, std::optional<Tensor> thresholds,
              std::optional<Tensor> tile_gaps, std::optional<Tensor> skipped_tiles, double scale, int64_t block_m,
              int64_t block_n, bool reverse, int64_t stream) {
  check_qkv_shapes(q8, k8);
  int64_t const B = q8.size(0), Sq = q8.size(1), H = q8.size(2), D = q8.size(3);
  int64_t const Sk = k8.size(1), Hkv = k8.size(2);
  STD_TORCH_CHECK(q8.scalar_type() == ScalarType::Char, "q8 must be int8");
  STD_TORCH_CHECK(k8.scalar_type() == ScalarType::Char, "k8 must be int8");
  STD_TORCH_CHECK(is_16bit(v.scalar_type()), "v must be float16 or bfloat16");
  STD_TORCH_CHECK(out.scalar_type() == v.scalar_type(), "out dtype must match v");
  check_bshd(q8, "q8", B, 1, D, 16);  // TMA: 16-byte strides are 16 int8 elements
  check_bshd(k8, "k8", B, 1, D, 16);
  check_bshd(v, "v", B, 1, D);
  check_bshd(out, "out", B, 1, D);
  STD_TORCH_CHECK(block_m > 0 && block_n > 0, "tile sizes must be positive");
  check_scales(q_scale, "q_scale", B, H, (Sq + block_m - 1) / block_m);
  check_scales(k_scale, "k_scale", B, Hkv, (Sk + block_n - 1) / block_n);
  liteattn::FwdArgs const args = make_fwd_args(q8, k8, v, out, lse, compute_bits, write_bits, thresholds,
                                               tile_gaps, skipped_tiles, scale, block_m, block_n, reverse);
  liteattn::Int8Scales const scales{static_cast<float const*>(q_scale.data_ptr()),
                                    static_cast<float const*>(k_scale.data_ptr())};
  check_launch(liteattn::fwd_int8_sm90(args, scales, reinterpret_cast<void*>(stream)), args);
}

}  // namespace

STABLE_TORCH_LIBRARY(liteattn_cuda, m) {
  m.def("fwd(Tensor q, Tensor k, Tensor v, Tensor(a!) out, Tensor(b!) lse, Tensor? compute_bits, Tensor(c!)? write_bits, "
        "Tensor? thresholds, Tensor(d!)? tile_gaps, Tensor(e!)? skipped_tiles, float scale, "
        "int block_m, int block_n, bool reverse, int stream) -> ()");
  m.def("quantize_qk(Tensor q, Tensor k, Tensor(a!) q8, Tensor(b!) k8, Tensor(c!) q_scale, Tensor(d!) k_scale, "
        "Tensor(e!) k_partial, int block_m, int block_n, int stream) -> ()");
  m.def("fwd_int8(Tensor q8, Tensor k8, Tensor v, Tensor(a!) out, Tensor(b!) lse, Tensor q_scale, Tensor k_scale, "
        "Tensor? compute_bits, Tensor(c!)? write_bits, Tensor? thresholds, Tensor(d!)? tile_gaps, "
        "Tensor(e!)? skipped_tiles, float scale, int block_m, int block_n, bool reverse, int stream) -> ()");
}

STABLE_TORCH_LIBRARY_IMPL(liteattn_cuda, CUDA, m) {
  m.impl("fwd", TORCH_BOX(&fwd));
  m.impl("quantize_qk", TORCH_BOX(&quantize_qk));
  m.impl("fwd_int8", TORCH_BOX(&fwd_int8));
}

