"""liteattn in diffusers transformers: tiny random-weight Wan, LTX-Video, HunyuanVideo, CogVideoX and Mochi on CPU."""

import math

import pytest
import torch
import torch.nn.functional as F

from liteattn import LiteAttention, available_backends, lite_attention
from liteattn.integrations._joint import dense_attention_lse, joint_attention

diffusers = pytest.importorskip("diffusers")

from liteattn.integrations.diffusers import Target, enable_liteattn  # noqa: E402

FP32_ATOL = 2e-5


def _wan(head_dim=16):
    from diffusers import WanTransformer3DModel

    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=head_dim,
                                  in_channels=4, out_channels=4, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    inputs = dict(hidden_states=torch.randn(1, 4, 3, 16, 16), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 12, 32))
    return model, inputs, ["blocks.0.attn1", "blocks.1.attn1"]


def _ltx(head_dim=16):
    from diffusers import LTXVideoTransformer3DModel

    model = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                       num_attention_heads=2, attention_head_dim=head_dim,
                                       cross_attention_dim=2 * head_dim,
                                       num_layers=2, caption_channels=16)
    frames, height, width = 3, 8, 8
    inputs = dict(hidden_states=torch.randn(1, frames * height * width, 8), encoder_hidden_states=torch.randn(1, 6, 16),
                  timestep=torch.tensor([500]), encoder_attention_mask=torch.ones(1, 6),
                  num_frames=frames, height=height, width=width)
    return model, inputs, ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]


def _hunyuan(head_dim=16):
    from diffusers import HunyuanVideoTransformer3DModel

    model = HunyuanVideoTransformer3DModel(in_channels=4, out_channels=4, num_attention_heads=2,
                                           attention_head_dim=head_dim, num_layers=1, num_single_layers=1,
                                           num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16,
                                           pooled_projection_dim=8,
                                           rope_axes_dim=(head_dim // 4, 3 * head_dim // 8, 3 * head_dim // 8))
    mask = torch.ones(1, 7)
    mask[:, 5:] = 0  # two padded text tokens
    inputs = dict(hidden_states=torch.randn(1, 4, 3, 16, 16), timestep=torch.tensor([500]),
                  encoder_hidden_states=torch.randn(1, 7, 16), encoder_attention_mask=mask,
                  pooled_projections=torch.randn(1, 8), guidance=torch.tensor([3500.0]))
    return model, inputs, ["transformer_blocks.0.attn", "single_transformer_blocks.0.attn"]


def _cogvideox(head_dim=16):
    from diffusers import CogVideoXTransformer3DModel

    model = CogVideoXTransformer3DModel(num_attention_heads=2, attention_head_dim=head_dim, in_channels=4,
                                        out_channels=4, time_embed_dim=8, text_embed_dim=16, num_layers=2,
                                        sample_width=16, sample_height=16, sample_frames=9, patch_size=2,
                                        temporal_compression_ratio=4, max_text_seq_length=8,
                                        use_rotary_positional_embeddings=True)
    inputs = dict(hidden_states=torch.randn(1, 3, 4, 16, 16), encoder_hidden_states=torch.randn(1, 8, 16),
                  timestep=torch.tensor([500]), image_rotary_emb=None)
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    cos, sin = get_3d_rotary_pos_embed(head_dim, crops_coords=((0, 0), (8, 8)), grid_size=(8, 8), temporal_size=3,
                                       use_real=True)
    inputs["image_rotary_emb"] = (cos, sin)
    return model, inputs, ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]


def _mochi(batch=1, head_dim=16):
    from diffusers import MochiTransformer3DModel

    model = MochiTransformer3DModel(patch_size=2, num_attention_heads=2, attention_head_dim=head_dim, num_layers=2,
                                    pooled_projection_dim=16, in_channels=4, text_embed_dim=16, time_embed_dim=16,
                                    max_sequence_length=8)
    mask = torch.ones(batch, 8, dtype=torch.long)
    mask[-1, 5:] = 0  # the last sample: three padded text tokens, which its processor leaves out of the call
    inputs = dict(hidden_states=torch.randn(batch, 4, 3, 16, 16), encoder_hidden_states=torch.randn(batch, 8, 16),
                  timestep=torch.full((batch,), 500), encoder_attention_mask=mask)
    return model, inputs, ["transformer_blocks.0.attn1", "transformer_blocks.1.attn1"]


MODELS = {"wan": _wan, "ltx": _ltx, "hunyuan": _hunyuan, "cogvideox": _cogvideox, "mochi": _mochi}


def _run(model, inputs):
    with torch.no_grad():
        out = model(**inputs, return_dict=False)[0]
    return out.clone()


def _record_calls(handle) -> list:
    """The LiteAttention modules of ``handle`` (branch 0) in the order they are called from now on."""
    calls = []
    for module in handle.modules.values():
        module.register_forward_hook(lambda m, args, out: calls.append(m))
    return calls


@pytest.fixture(params=sorted(MODELS))
def tiny(request):
    torch.manual_seed(0)
    model, inputs, names = MODELS[request.param]()
    return model.eval(), inputs, names


def test_skipping_off_matches_the_original(tiny):
    model, inputs, names = tiny
    expected = _run(model, inputs)
    handle = enable_liteattn(model, enable_skipping=False, backend="reference")
    assert sorted(handle.modules) == sorted(names)
    calls = _record_calls(handle)
    got = _run(model, inputs)
    assert len(calls) == len(names)  # every self-attention went through its LiteAttention
    torch.testing.assert_close(got, expected, atol=FP32_ATOL, rtol=1e-4)
    handle.remove()


def test_skipping_on_runs_and_remove_restores_exactly(tiny):
    model, inputs, names = tiny
    expected = _run(model, inputs)
    processors = {name: m.processor for name, m in model.named_modules() if name in names}
    handle = enable_liteattn(model, threshold=-2.0, backend="reference")
    found = {name: m for name, m in model.named_modules() if isinstance(m, LiteAttention)}
    assert sorted(found) == sorted(f"{name}.liteattn" for name in names)  # one per self-attention
    for _ in range(3):  # denoising steps on the same input
        out = _run(model, inputs)
        assert torch.isfinite(out).all()
    assert all(m.skip_state.call_count == 3 for m in handle.modules.values())
    assert handle.mean_sparsity() is not None
    handle.remove()
    assert {name: m.processor for name, m in model.named_modules() if name in names} == processors
    assert not any(isinstance(m, LiteAttention) for m in model.modules())
    assert torch.equal(_run(model, inputs), expected)


def test_branches_keep_separate_states():
    model, inputs, names = _wan()
    with enable_liteattn(model, threshold=-2.0, backend="reference", branches=2) as handle:
        for _ in range(4):
            _run(model, inputs)
        counts = [[m.skip_state.call_count for m in branch.values()] for branch in handle.branch_modules]
        assert counts == [[2, 2], [2, 2]]
    assert handle.removed


def test_mochi_samples_keep_separate_states():
    """Mochi attends sample by sample, each over its own valid text tokens: sample i gets branch i's state."""
    torch.manual_seed(0)
    model, inputs, names = _mochi(batch=2)
    model.eval()
    expected = _run(model, inputs)
    with enable_liteattn(model, enable_skipping=False, backend="reference", branches=2) as handle:
        calls = []
        for i, branch in enumerate(handle.branch_modules):
            for module in branch.values():
                module.register_forward_hook(lambda m, args, out, i=i: calls.append((i, args[0].shape[0])))
        torch.testing.assert_close(_run(model, inputs), expected, atol=FP32_ATOL, rtol=1e-4)
        assert calls == [(0, 1), (1, 1)] * len(names)  # per layer: sample 0, then sample 1, one at a time
    with enable_liteattn(model, threshold=-2.0, backend="reference", branches=2) as handle:
        for _ in range(3):
            assert torch.isfinite(_run(model, inputs)).all()
        counts = [[m.skip_state.call_count for m in branch.values()] for branch in handle.branch_modules]
        assert counts == [[3, 3], [3, 3]]
    with enable_liteattn(model, threshold=-2.0, backend="reference") as handle:  # one state for both samples
        _run(model, inputs)
        assert [m.skip_state.call_count for m in handle.modules.values()] == [2, 2]


class _TokensProcessor:
    """A processor whose video tokens are not called hidden_states."""

    def __call__(self, attn, tokens):
        return F.scaled_dot_product_attention(tokens, tokens, tokens)


def test_per_sample_target_needs_hidden_states():
    model = torch.nn.Module()
    model.attn = torch.nn.Module()
    model.attn.processor = _TokensProcessor()
    with pytest.raises(ValueError, match="per_sample target needs a processor that takes hidden_states"):
        enable_liteattn(model, targets=[Target("attn", "text_last", per_sample=True)])
    with pytest.raises(ValueError, match="per_sample must be True or False; got 'yes'"):
        enable_liteattn(model, targets=[Target("attn", "text_last", per_sample="yes")])
    assert isinstance(model.attn.processor, _TokensProcessor)  # nothing left behind
    handle = enable_liteattn(model, targets=[Target("attn")])  # the same processor as a video target is fine
    handle.remove()


def test_targets_and_threshold_per_module():
    model, inputs, _ = _wan()
    handle = enable_liteattn(model, threshold={"blocks.0.*": -3.0, "*": -8.0}, targets=[Target("blocks.1.attn1")])
    assert list(handle.modules) == ["blocks.1.attn1"] and handle.modules["blocks.1.attn1"].threshold == -8.0
    with pytest.raises(RuntimeError, match="already enabled"):
        enable_liteattn(model, targets=[Target("blocks.1.attn1")])
    handle.remove()
    with pytest.raises(ValueError, match="does not know"):
        enable_liteattn(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("text_first", [True, False])
def test_joint_split_equals_full_attention(text_first):
    torch.manual_seed(0)
    batch, video, text, heads, dim = 2, 200, 9, 2, 16
    q, k, v = (torch.randn(batch, video + text, heads, dim) for _ in range(3))
    key_mask = torch.ones(batch, video + text, dtype=torch.bool)
    pad = slice(text - 3, text) if text_first else slice(video + text - 3, video + text)
    key_mask[1, pad] = False  # second sample: three padded text tokens
    lite = LiteAttention(enable_skipping=False, backend="reference")
    got = joint_attention(lite, q, k, v, text_len=text, text_first=text_first, key_mask=key_mask)
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(dim)
    scores = scores.masked_fill(~key_mask[:, None, None, :], -math.inf)
    expected = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(scores, -1), v.double())
    torch.testing.assert_close(got.double(), expected, atol=2e-6, rtol=1e-5)


def test_dense_attention_lse_matches_liteattn():
    q, k, v = (torch.randn(1, 70, 2, 16) for _ in range(3))
    out, lse = dense_attention_lse(q, k, v)
    ref_out, ref_lse = lite_attention(q, k, v, return_softmax_lse=True)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=1e-5)


def test_calibration_registry_finds_one_layer_per_self_attention():
    calib = pytest.importorskip("liteattn_calib")
    model, inputs, names = _wan()
    with enable_liteattn(model, backend="reference") as handle:
        registry = calib.LiteAttentionRegistry.from_model(model, mode="const", threshold=-4.0)
        assert sorted(registry.modules) == sorted(f"{name}.liteattn" for name in names)
        for _ in range(2):
            assert torch.isfinite(_run(model, inputs)).all()
            registry.step()
        registry.remove()
    assert handle.removed


def _on_gpu(inputs, dtype):
    """The inputs on the GPU, floating-point tensors in ``dtype`` (the time step and masks keep theirs)."""
    def move(name, x):
        if isinstance(x, tuple):
            return tuple(move(name, y) for y in x)
        if not torch.is_tensor(x):
            return x
        floating = x.is_floating_point() and name not in ("timestep", "encoder_attention_mask", "image_rotary_emb")
        return x.to("cuda", dtype if floating else x.dtype)
    return {name: move(name, x) for name, x in inputs.items()}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_gpu_backend_inside_the_model(name, backend):
    """Each model in bf16 on the GPU, head dim 64, its attention on a GPU backend: the output's error against the
    same model in fp32 is at most twice that of the model's own bf16 run (FA3's rule, applied to the whole
    transformer), and skipping runs."""
    if backend not in available_backends():
        pytest.skip(f"backend {backend!r} cannot run here")
    torch.manual_seed(0)
    model, inputs, names = MODELS[name](head_dim=64)
    model = model.eval().cuda()
    reference = _run(model, _on_gpu(inputs, torch.float32)).float()
    model = model.to(torch.bfloat16)
    inputs = _on_gpu(inputs, torch.bfloat16)
    low_precision = _run(model, inputs)
    with enable_liteattn(model, enable_skipping=False, backend=backend) as handle:
        calls = _record_calls(handle)
        got = _run(model, inputs)
        assert len(calls) == len(names)
    budget = 2 * (low_precision.float() - reference).abs().max().item() + 1e-3
    assert (got.float() - reference).abs().max().item() <= budget
    with enable_liteattn(model, threshold=-2.0, backend=backend) as handle:
        for _ in range(3):
            assert torch.isfinite(_run(model, inputs)).all()
        assert all(m.skip_state.call_count == 3 for m in handle.modules.values())
