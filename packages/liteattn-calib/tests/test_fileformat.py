"""The TOML threshold file: round trip, hand edits, malformed and mismatched files."""

import pytest
import torch

from conftest import PlainModel, run_steps, workload
from liteattn_calib import CalibrationFileError, LiteAttentionRegistry, read_file

GOOD = """\
format_version = 1
liteattn_version = "0.1.0"
num_steps = 3
disabled_steps = 1

[model]
class_name = "PlainModel"

[modules."blocks.0.attn"]
heads = 4
head_dim = 16
threshold = ["disabled", -3.0, [-1.0, -2.0, -3.0, -inf]]

[modules."blocks.1.attn"]
heads = 4
head_dim = 16
threshold = ["disabled", -2.5, -2.5]
"""


def write(tmp_path, text, name="t.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_hand_written_file_applies(tmp_path):
    model = PlainModel()
    registry = LiteAttentionRegistry.from_model(model, mode="load", filename=write(tmp_path, GOOD))
    run_steps(model, registry, steps=3)
    expected = ["disabled", -3.0, [-1.0, -2.0, -3.0, -float("inf")]]
    assert registry.to_file().modules["blocks.0.attn"].threshold == expected


def test_save_then_read_round_trips(tmp_path):
    model = PlainModel()
    registry = LiteAttentionRegistry.from_model(model, mode="load", filename=write(tmp_path, GOOD))
    run_steps(model, registry, steps=3)
    saved = registry.save(tmp_path / "again.toml", summary=False)
    again = read_file(saved)
    assert again.modules["blocks.1.attn"].threshold == ["disabled", -2.5, -2.5]
    assert again.modules["blocks.1.attn"].sparsity is not None


def test_more_steps_than_the_file_errors_or_clamps(tmp_path):
    path = write(tmp_path, GOOD)
    model = PlainModel()
    registry = LiteAttentionRegistry.from_model(model, mode="load", filename=path)
    run_steps(model, registry, steps=3)
    registry.step()
    with pytest.raises(CalibrationFileError, match="step 3 is past"):
        model(*workload(3))
    registry.remove()
    clamped = LiteAttentionRegistry.from_model(model, mode="load", filename=path, on_extra_steps="clamp")
    with pytest.warns(UserWarning, match="last step"):
        run_steps(model, clamped, steps=5)
    assert clamped.to_file().modules["blocks.1.attn"].threshold[-1] == -2.5


@pytest.mark.parametrize("edit, message", [
    (("num_steps = 3", "num_steps = 3\nnum_stepz = 3"), r"header field 'num_stepz'"),
    (("format_version = 1", "format_version = 7"), r"header field 'format_version'"),
    (('threshold = ["disabled", -2.5, -2.5]', 'threshold = ["disabled", -2.5, "fast"]'),
     r"module 'blocks.1.attn', field 'threshold\[2\]'"),
    (('threshold = ["disabled", -2.5, -2.5]', 'threshold = ["disabled", -2.5, 1.5]'),
     r"module 'blocks.1.attn', field 'threshold\[2\]'.*<= 0"),
    (('threshold = ["disabled", -2.5, -2.5]', 'threshold = ["disabled", -2.5]'),
     r"module 'blocks.1.attn', field 'threshold': 2 steps"),
    (("[-1.0, -2.0, -3.0, -inf]", "[-1.0, -2.0]"), r"module 'blocks.0.attn', field 'threshold\[2\]': 2 per-head"),
    (("heads = 4\nhead_dim = 16\nthreshold = [\"disabled\", -2.5", "head_dim = 16\nthreshold = [\"disabled\", -2.5"),
     r"module 'blocks.1.attn', field 'heads'"),
    (("heads = 4\nhead_dim = 16\nthreshold = [\"disabled\", -3.0", "heads = 4\nhead_dim = \"x\"\nthreshold = "
      "[\"disabled\", -3.0"), r"module 'blocks.0.attn', field 'head_dim'"),
    (('class_name = "PlainModel"', 'class_name = "PlainModel'), r"not valid TOML"),
])
def test_malformed_files_name_module_and_field(tmp_path, edit, message):
    old, new = edit
    assert old in GOOD
    with pytest.raises(CalibrationFileError, match=message):
        read_file(write(tmp_path, GOOD.replace(old, new, 1)))


def test_file_missing_a_module_of_the_model(tmp_path):
    text = GOOD[: GOOD.index('[modules."blocks.1.attn"]')]
    with pytest.raises(CalibrationFileError, match="module 'blocks.1.attn' of the model has no table"):
        LiteAttentionRegistry.from_model(PlainModel(), mode="load", filename=write(tmp_path, text))


def test_file_with_a_module_the_model_lacks(tmp_path):
    text = GOOD.replace('"blocks.1.attn"', '"blocks.7.attn"')
    with pytest.raises(CalibrationFileError, match="module 'blocks.1.attn' of the model"):
        LiteAttentionRegistry.from_model(PlainModel(), mode="load", filename=write(tmp_path, text))
    text = GOOD + GOOD[GOOD.index('[modules."blocks.1.attn"]'):].replace("blocks.1", "blocks.9")
    with pytest.raises(CalibrationFileError, match="module 'blocks.9.attn' in the file is not"):
        LiteAttentionRegistry.from_model(PlainModel(), mode="load", filename=write(tmp_path, text))


@pytest.mark.parametrize("field, heads", [("heads", 2), ("head_dim", 4)])
def test_file_for_another_geometry(tmp_path, field, heads):
    text = GOOD.replace("heads = 4", "heads = 2").replace("[-1.0, -2.0, -3.0, -inf]", "[-1.0, -2.0]")
    if field == "head_dim":
        text = GOOD.replace("head_dim = 16", "head_dim = 32")
    model = PlainModel()
    registry = LiteAttentionRegistry.from_model(model, mode="load", filename=write(tmp_path, text))
    with pytest.raises(CalibrationFileError, match=f"module 'blocks.0.attn', field '{field}'"):
        with registry.timestep(0):
            model(*workload(0))


def test_loaded_thresholds_are_the_ones_run(tmp_path):
    model = PlainModel()
    registry = LiteAttentionRegistry.from_model(model, mode="load", filename=write(tmp_path, GOOD))
    outs = run_steps(model, registry, steps=3)
    from liteattn import LiteAttention, lite_attention
    assert torch.equal(outs[0][0], lite_attention(*workload(0)))
    mirror = LiteAttention(threshold=-3.0, block_m=16, block_n=16)
    assert torch.equal(outs[1][0], mirror(*workload(1)))
    mirror.set_threshold([-1.0, -2.0, -3.0, -float("inf")])
    assert torch.equal(outs[2][0], mirror(*workload(2)))
