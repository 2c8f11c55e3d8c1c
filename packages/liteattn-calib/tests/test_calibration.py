"""Calibration on the synthetic workload: exact reload, monotone targets, per-head thresholds, dense steps."""

import math

import torch

from conftest import FAST, NUM_STEPS, PlainModel, run_steps, workload
from liteattn import LiteAttention, lite_attention
from liteattn_calib import CalibConfig, LiteAttentionRegistry, calibrate_call, read_file
from liteattn_calib.metrics import per_head_error


def calibrate(target=0.01, disabled_steps=0, metric="rel_l1"):
    model = PlainModel()
    config = dict(FAST, target_error=target, metric=metric)
    registry = LiteAttentionRegistry.from_model(model, mode="calib", calib_config=config,
                                                disabled_steps=disabled_steps)
    outs = run_steps(model, registry)
    return model, registry, outs


def thresholds_of(registry):
    return {name: [torch.as_tensor(v, dtype=torch.float64).expand(4) if v != "disabled" else None
                   for v in table.threshold] for name, table in registry.to_file().modules.items()}


def test_calib_save_load_reproduces_outputs_exactly(tmp_path):
    model, registry, outs = calibrate(disabled_steps=1)
    path = registry.save(tmp_path / "plain.toml", summary=False)
    registry.remove()
    loaded = LiteAttentionRegistry.from_model(model, mode="load", filename=path)
    loaded.reset()
    for i, out in enumerate(run_steps(model, loaded)):
        assert torch.equal(out, outs[i]), f"step {i} differs after reload"
    assert read_file(path).modules["blocks.0.attn"].threshold[0] == "disabled"


def test_calibration_leaves_state_as_a_plain_run_at_the_chosen_thresholds():
    """The output passed on and the state written are those of one call at the chosen thresholds."""
    model, registry, outs = calibrate()
    chosen = registry._layers["blocks.0.attn"].chosen
    mirror = LiteAttention(block_m=16, block_n=16)
    for i in range(NUM_STEPS):
        mirror.set_threshold(chosen[i])
        assert torch.equal(mirror(*workload(i)), outs[i][0])
    assert torch.equal(mirror.skip_state.read_bits, model.blocks[0].attn.skip_state.read_bits)


def test_looser_target_never_gives_lower_thresholds():
    _, tight, _ = calibrate(target=0.002)
    _, loose, _ = calibrate(target=0.05)
    tight_t, loose_t = thresholds_of(tight), thresholds_of(loose)
    for name in tight_t:
        for step, (a, b) in enumerate(zip(tight_t[name], loose_t[name])):
            assert (b >= a).all(), f"{name} step {step}: loose {b.tolist()} < tight {a.tolist()}"
    assert tight.layer_means()["blocks.0.attn"][1] <= loose.layer_means()["blocks.0.attn"][1]


def test_per_head_thresholds_differ_on_heads_of_different_sharpness():
    _, registry, _ = calibrate()
    table = registry.to_file().modules["blocks.0.attn"]
    per_head = [v for v in table.threshold if isinstance(v, list)]
    assert per_head, f"expected per-head lists, got {table.threshold}"
    assert any(len(set(v)) > 1 for v in per_head)


def test_disabled_steps_equal_dense_under_calibration():
    _, registry, outs = calibrate(disabled_steps=2)
    for i in range(2):
        assert torch.equal(outs[i][0], lite_attention(*workload(i)))
    assert registry.to_file().modules["blocks.1.attn"].threshold[:2] == ["disabled", "disabled"]


def test_calibrated_error_meets_target_on_the_next_step():
    """error(A, B) at the chosen thresholds is what the calibration measured, within the target."""
    q, k, v = workload(2)
    attn = LiteAttention(block_m=16, block_n=16, threshold=-1.0)
    attn(*workload(1))  # an inherited state
    config = CalibConfig(**FAST)
    result = calibrate_call(q, k, v, attn.skip_state, config, scale=None, must_do_list=None, must_skip_list=None,
                            use_int8=False, backend=None)
    assert attn.skip_state.call_count == 1  # untouched by the calibration
    attn.set_threshold(result.thresholds)
    a = attn(q, k, v)  # reads the inherited state, writes at the chosen thresholds
    b = attn(q, k, v)  # reads what the chosen thresholds wrote
    error = per_head_error("rel_l1", a, b)
    assert torch.allclose(error, result.errors)
    assert (error <= config.target_error).all()


def test_every_metric_calibrates():
    for metric, target in (("cosine", 1e-4), ("rmse", 0.01)):
        _, registry, _ = calibrate(target=target, metric=metric)
        means = registry.layer_means()
        assert all(math.isfinite(t) and -20 <= t <= 0 for t, _ in means.values())


def test_each_step_starts_from_the_previous_steps_thresholds(monkeypatch):
    import liteattn_calib.registry as registry_module

    starts, original = [], registry_module.calibrate_call

    def spy(*args, start=None, **kwargs):
        starts.append(start)
        return original(*args, start=start, **kwargs)

    monkeypatch.setattr(registry_module, "calibrate_call", spy)
    _, registry, _ = calibrate(disabled_steps=1)
    chosen = registry._layers["blocks.0.attn"].chosen
    layer0 = starts[::2]  # the blocks run in order: layer 0's calls are every other one
    assert layer0[0] is None  # step 1 follows a disabled step: the whole range
    assert all(torch.equal(start, chosen[step]) for step, start in enumerate(layer0[1:], start=1))
