// The only file that talks to torch: the stable-ABI schema of liteattn_cuda::fwd and its CUDA impl.
// Everything is checked here, with the tensor's name in the message, before the kernel sees a pointer.
#include <cstdint>
#include <optional>

#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include "liteattn/api.h"

using torch::stable::Tensor;
using torch::headeronly::ScalarType;

namespace {

void check_bshd(Tensor const& t, char const* name, int64_t batch, int64_t heads_div, int64_t head_dim) {
  STD_TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  STD_TORCH_CHECK(t.dim() == 4, name, " must be 4-D (B, S, H, D), got ", t.dim(), " dims");
  STD_TORCH_CHECK(t.stride(3) == 1, name, " must have a contiguous last dim");
  STD_TORCH_CHECK(t.size(0) == batch, name, " batch ", t.size(0), " != q batch ", batch);
  STD_TORCH_CHECK(t.size(3) == head_dim, name, " head dim ", t.size(3), " != q head dim ", head_dim);
  // TMA needs 16-byte aligned base and strides.
  STD_TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, name, " must be 16-byte aligned");
  for (int i = 0; i < 3; ++i)
    STD_TORCH_CHECK(t.stride(i) % 8 == 0 || t.size(i) == 1, name, " stride(", i, ") must be a multiple of 8 elements");
  (void)heads_div;
}

void fwd(Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, std::optional<Tensor> compute_bits,
         std::optional<Tensor> write_bits, std::optional<Tensor> thresholds, std::optional<Tensor> tile_gaps,
         double scale,
         int64_t block_m, int64_t block_n, bool reverse, int64_t stream) {
  STD_TORCH_CHECK(q.dim() == 4, "q must be 4-D (B, Sq, H, D), got ", q.dim(), " dims");
  int64_t const B = q.size(0), Sq = q.size(1), H = q.size(2), D = q.size(3);
  STD_TORCH_CHECK(k.dim() == 4, "k must be 4-D (B, Sk, Hkv, D)");
  int64_t const Sk = k.size(1), Hkv = k.size(2);
  STD_TORCH_CHECK(q.scalar_type() == ScalarType::BFloat16 || q.scalar_type() == ScalarType::Half,
                  "q must be float16 or bfloat16");
  STD_TORCH_CHECK(k.scalar_type() == q.scalar_type(), "k dtype must match q");
  STD_TORCH_CHECK(v.scalar_type() == q.scalar_type(), "v dtype must match q");
  STD_TORCH_CHECK(out.scalar_type() == q.scalar_type(), "out dtype must match q");
  check_bshd(q, "q", B, 1, D);
  check_bshd(k, "k", B, 1, D);
  check_bshd(v, "v", B, 1, D);
  check_bshd(out, "out", B, 1, D);
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
  args.dtype = q.scalar_type() == ScalarType::BFloat16 ? liteattn::DType::kBFloat16 : liteattn::DType::kFloat16;
  int const err = liteattn::fwd_sm90(args, reinterpret_cast<void*>(stream));
  STD_TORCH_CHECK(err != -1, "liteattn_cuda: no kernel for head dim ", D, " with tiles (", block_m, ", ", block_n, ")");
  STD_TORCH_CHECK(err != -2, "liteattn_cuda: write_bits rows of ", W, " words exceed the kernel's 256");
  STD_TORCH_CHECK(err == 0, "liteattn_cuda: kernel launch failed with CUDA error ", err);
}

}  // namespace

STABLE_TORCH_LIBRARY(liteattn_cuda, m) {
  m.def("fwd(Tensor q, Tensor k, Tensor v, Tensor(a!) out, Tensor(b!) lse, Tensor? compute_bits, Tensor(c!)? write_bits, "
        "Tensor? thresholds, Tensor(d!)? tile_gaps, float scale, "
        "int block_m, int block_n, bool reverse, int stream) -> ()");
}

STABLE_TORCH_LIBRARY_IMPL(liteattn_cuda, CUDA, m) { m.impl("fwd", TORCH_BOX(&fwd)); }

