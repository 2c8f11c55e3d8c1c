"""Tiny random-weight diffusers video transformers whose self-attention runs through LiteAttention."""

import functools
import sys
from unittest import mock

import pytest
import torch

from conftest import FAST
from liteattn import LiteAttention
from liteattn_calib import LiteAttentionRegistry

diffusers = pytest.importorskip("diffusers")

STEPS = 3


def lite_processor(inner):
    """``inner``'s processor, with its ``dispatch_attention_fn`` (BSHD in, BSHD out) sent to ``attn.lite``.

    The subclass keeps ``inner.__call__``'s signature: diffusers drops keyword arguments a processor's
    signature does not name.
    """
    cls = type(inner)
    home = sys.modules[cls.__module__]

    @functools.wraps(cls.__call__)
    def __call__(self, attn, *args, **kwargs):
        def dispatch(query, key, value, attn_mask=None, **_):
            assert attn_mask is None, "self-attention of these models has no mask"
            return attn.lite(query, key, value)

        with mock.patch.object(home, "dispatch_attention_fn", dispatch):
            return cls.__call__(self, attn, *args, **kwargs)

    lite_cls = type("Lite" + cls.__name__, (cls,), {"__call__": __call__})
    processor = lite_cls.__new__(lite_cls)
    processor.__dict__.update(inner.__dict__)
    return processor


def use_lite_attention(model):
    for block in model.transformer_blocks if hasattr(model, "transformer_blocks") else model.blocks:
        block.attn1.lite = LiteAttention(block_m=16, block_n=16)
        block.attn1.set_processor(lite_processor(block.attn1.processor))
    return model


def tiny_wan():
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2,
                                  cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32).eval()
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 2, 16, 16, generator=g)  # 2 x 8 x 8 = 128 tokens: 8 x 8 tiles of 16
    text = torch.randn(1, 8, 16, generator=g)

    def run(step):
        t = torch.tensor([1000.0 - 300.0 * step])
        return model(hidden_states=latents + 0.1 * step, timestep=t, encoder_hidden_states=text,
                     return_dict=False)[0]

    return use_lite_attention(model), run


def tiny_ltx():
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(0)
    model = LTXVideoTransformer3DModel(in_channels=4, out_channels=4, patch_size=1, patch_size_t=1,
                                       num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
                                       num_layers=2, caption_channels=16).eval()
    g = torch.Generator().manual_seed(1)
    frames, height, width = 2, 8, 8
    latents = torch.randn(1, frames * height * width, 4, generator=g)
    text = torch.randn(1, 8, 16, generator=g)
    mask = torch.ones(1, 8)

    def run(step):
        t = torch.tensor([1000 - 300 * step])
        return model(hidden_states=latents + 0.1 * step, encoder_hidden_states=text, timestep=t,
                     encoder_attention_mask=mask, num_frames=frames, height=height, width=width,
                     return_dict=False)[0]

    return use_lite_attention(model), run


MODELS = {"wan": tiny_wan, "ltx": tiny_ltx}


def denoise(registry, run, steps=STEPS):
    outs = []
    with torch.no_grad():
        for i in range(steps):
            outs.append(run(i))
            registry.callback_on_step_end(None, i, None, {})
    return outs


@pytest.mark.parametrize("name", MODELS)
def test_discovers_self_attention_modules(name):
    model, _ = MODELS[name]()
    registry = LiteAttentionRegistry.from_model(model, mode="disable")
    prefix = "blocks" if name == "wan" else "transformer_blocks"
    assert list(registry.modules) == [f"{prefix}.0.attn1.lite", f"{prefix}.1.attn1.lite"]


@pytest.mark.parametrize("name", MODELS)
def test_disable_equals_the_model_without_liteattn(name):
    model, run = MODELS[name]()
    with torch.no_grad():
        registry = LiteAttentionRegistry.from_model(model, mode="disable")
        ours = run(1)
        registry.remove()
        for block in model.transformer_blocks if name == "ltx" else model.blocks:
            block.attn1.set_processor(type(block.attn1.processor).__mro__[1]())
        theirs = run(1)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_calib_save_load_reproduces_exactly(name, tmp_path):
    model, run = MODELS[name]()
    registry = LiteAttentionRegistry.from_model(model, mode="calib", calib_config=dict(FAST, target_error=0.02),
                                                disabled_steps=1)
    outs = denoise(registry, run)
    path = registry.save(tmp_path / f"{name}.toml", summary=False)
    registry.remove()
    loaded = LiteAttentionRegistry.from_model(model, mode="load", filename=path)
    loaded.reset()
    for i, out in enumerate(denoise(loaded, run)):
        assert torch.equal(out, outs[i]), f"{name}: step {i} differs after reload"
    assert loaded.to_file().modules == registry.to_file().modules
    # random weights attend diffusely, yet some tiles are skipped: the reload reproduces real skipping
    assert any(sparsity > 0 for _, sparsity in registry.layer_means().values()), registry.summary()
