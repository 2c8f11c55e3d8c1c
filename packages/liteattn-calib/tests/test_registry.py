"""Discovery, modes, step tracking and CFG call patterns on a plain nn.Module."""

import pytest
import torch

from conftest import FAST, NUM_STEPS, PlainModel, run_steps, workload
from liteattn import LiteAttention, lite_attention
from liteattn_calib import LiteAttentionRegistry


def dense(q, k, v):
    return lite_attention(q, k, v)


def test_discovers_every_lite_attention_by_path(model):
    registry = LiteAttentionRegistry.from_model(model, mode="disable")
    assert list(registry.modules) == ["blocks.0.attn", "blocks.1.attn"]
    assert registry.modules["blocks.1.attn"] is model.blocks[1].attn


def test_name_filter_selects_a_subset(model):
    only = LiteAttentionRegistry.from_model(model, mode="disable", modules="blocks.1.*")
    assert list(only.modules) == ["blocks.1.attn"]
    by_callable = LiteAttentionRegistry.from_model(PlainModel(), mode="disable",
                                                   modules=lambda n: n.startswith("blocks.0"))
    assert list(by_callable.modules) == ["blocks.0.attn"]
    with pytest.raises(ValueError, match="no LiteAttention"):
        LiteAttentionRegistry.from_model(model, mode="disable", modules="nothing.*")


def test_a_module_has_one_registry_at_a_time(model):
    first = LiteAttentionRegistry.from_model(model, mode="disable")
    with pytest.raises(RuntimeError, match="already controlled"):
        LiteAttentionRegistry.from_model(model, mode="const", threshold=-5.0)
    first.remove()
    LiteAttentionRegistry.from_model(model, mode="const", threshold=-5.0)


def test_const_matches_a_plain_lite_attention(model):
    registry = LiteAttentionRegistry.from_model(model, mode="const", threshold=-3.0)
    outs = run_steps(model, registry)
    mirror = LiteAttention(threshold=-3.0, block_m=16, block_n=16)
    for i, out in enumerate(outs):
        expected = mirror(*workload(i))
        assert torch.equal(out[0], expected) and torch.equal(out[1], expected)
    assert model.blocks[0].attn.last_sparsity > 0


def test_disable_is_dense_and_leaves_the_state_alone(model):
    registry = LiteAttentionRegistry.from_model(model, mode="disable")
    for i, out in enumerate(run_steps(model, registry)):
        assert torch.equal(out[0], dense(*workload(i)))
    assert model.blocks[0].attn.skip_state.shape_key is None  # never touched
    assert model.blocks[0].attn.last_sparsity == 0.0


def test_disabled_steps_run_dense_then_skip_from_a_fresh_state(model):
    registry = LiteAttentionRegistry.from_model(model, mode="const", threshold=-2.0, disabled_steps=2)
    outs = run_steps(model, registry)
    for i in range(2):
        assert torch.equal(outs[i][0], dense(*workload(i)))
    mirror = LiteAttention(threshold=-2.0, block_m=16, block_n=16)  # its first call is step 2
    for i in range(2, NUM_STEPS):
        assert torch.equal(outs[i][0], mirror(*workload(i)))
    assert registry.to_file().modules["blocks.0.attn"].threshold[:3] == ["disabled", "disabled", -2.0]


def test_override_mixes_configs_per_module_and_step(model):
    registry = LiteAttentionRegistry.from_model(model, mode="const", threshold=-2.0)
    registry.override("disabled", modules="blocks.1.*", steps=[0, 1])
    registry.override([-1.0, -2.0, -3.0, -4.0], modules="blocks.0.*", steps=3)
    run_steps(model, registry)
    table = registry.to_file().modules
    assert table["blocks.1.attn"].threshold == ["disabled", "disabled", -2.0, -2.0]
    assert table["blocks.0.attn"].threshold == [-2.0, -2.0, -2.0, [-1.0, -2.0, -3.0, -4.0]]


def test_step_call_and_callback_advance_per_step(model):
    registry = LiteAttentionRegistry.from_model(model, mode="const", threshold=-2.0)
    model(*workload(0))
    assert registry.step() == 1
    model(*workload(1))
    kwargs = {"latents": torch.zeros(1)}
    assert registry.callback_on_step_end(None, 1, 999, kwargs) is kwargs
    assert registry.current_step == 2
    registry.reset()
    assert registry.current_step == 0 and model.blocks[0].attn.skip_state.call_count == 0


def test_batched_cfg_is_one_step(model):
    """A doubled batch (cond + uncond) per step: one call per step, each batch row with its own state rows."""
    registry = LiteAttentionRegistry.from_model(model, mode="const", threshold=-2.0)
    mirror = LiteAttention(threshold=-2.0, block_m=16, block_n=16)
    for i in range(NUM_STEPS):
        qkv = [torch.cat([x, y]) for x, y in zip(workload(i), workload(i, seed=1))]
        with registry.timestep(i):
            out = model(*qkv)
        assert torch.equal(out[0], mirror(*qkv))
    assert model.blocks[0].attn.skip_state.call_count == NUM_STEPS


def test_sequential_cfg_passes_keep_separate_states(model):
    """Two passes per step (cond, then uncond) map to one step, and each pass reads its own last step."""
    registry = LiteAttentionRegistry.from_model(model, mode="const", threshold=-2.0)
    cond_ref = LiteAttention(threshold=-2.0, block_m=16, block_n=16)
    uncond_ref = LiteAttention(threshold=-2.0, block_m=16, block_n=16)
    for i in range(NUM_STEPS):
        cond, uncond = workload(i), workload(i, seed=1)
        with registry.timestep(i):
            out_c = model(*cond)
        with registry.timestep(i):  # entering the same step again: the second pass of the step
            out_u = model(*uncond)
        assert torch.equal(out_c[0], cond_ref(*cond))
        assert torch.equal(out_u[0], uncond_ref(*uncond))
    assert registry.to_file().num_steps == NUM_STEPS


def test_sequential_cfg_with_step_calls(model):
    registry = LiteAttentionRegistry.from_model(model, mode="calib", calib_config=FAST)
    for i in range(2):
        model(*workload(i))
        model(*workload(i, seed=1))
        registry.step()
    layer_sparsity = registry._layers["blocks.0.attn"].sparsity
    assert sorted(layer_sparsity) == [0, 1] and all(len(v) == 2 for v in layer_sparsity.values())


def test_registry_as_context_manager_restores_forward(model):
    with LiteAttentionRegistry.from_model(model, mode="disable"):
        assert "forward" in vars(model.blocks[0].attn)
    assert "forward" not in vars(model.blocks[0].attn)


def test_const_needs_a_threshold(model):
    with pytest.raises(ValueError, match="threshold"):
        LiteAttentionRegistry.from_model(model, mode="const")
    with pytest.raises(ValueError, match="mode"):
        LiteAttentionRegistry.from_model(model, mode="fast")


def test_override_calibrates_one_module_of_a_const_run(model):
    registry = LiteAttentionRegistry.from_model(model, mode="const", threshold=-20.0, calib_config=FAST)
    registry.override("calibrate", modules="blocks.1.*", steps=[1, 2])
    run_steps(model, registry)
    table = registry.to_file()
    assert table.modules["blocks.0.attn"].threshold == [-20.0] * NUM_STEPS
    calibrated = table.modules["blocks.1.attn"].threshold
    assert calibrated[0] == calibrated[3] == -20.0 and calibrated[1] != -20.0
    assert table.calibration is not None and table.calibration.target_error == 0.01
