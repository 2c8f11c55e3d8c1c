"""Capture to safetensors/npz (never pickle) and ``liteattn inspect`` on threshold files and captures."""

import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from conftest import FAST, PlainModel, run_steps
from liteattn_calib import LiteAttentionRegistry, load_capture
from liteattn_calib.cli import inspect_main


def captured_run(path, **kwargs):
    model = PlainModel()
    registry = LiteAttentionRegistry.from_model(model, mode="const", threshold=-2.0, disabled_steps=1)
    registry.enable_capture(path, **kwargs)
    run_steps(model, registry)
    return registry, registry.disable_capture()


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_capture_round_trip(tmp_path, suffix):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    _, path = captured_run(tmp_path / f"cap{suffix}", modules="blocks.0.*", steps=[0, 2, 3], heads=[0, 3])
    arrays, meta = load_capture(path)
    assert meta["heads"] == [0, 3] and meta["modules"] == ["blocks.0.attn", "blocks.1.attn"]
    assert set(arrays) == {f"blocks.0.attn/step{s:04d}/call0/{w}" for s in (0, 2, 3)
                           for w in ("sparsity", "keep_mask", "attn_map", "stats")}
    keep = arrays["blocks.0.attn/step0003/call0/keep_mask"]
    assert keep.shape == (1, 2, 4, 4) and keep.dtype == np.uint8
    assert np.all(arrays["blocks.0.attn/step0000/call0/sparsity"] == 0)  # disabled: dense
    assert arrays["blocks.0.attn/step0003/call0/sparsity"][1] > 0  # the sharp head skips
    np.testing.assert_allclose(arrays["blocks.0.attn/step0002/call0/attn_map"].sum(-1), 1.0, rtol=1e-5)
    stats = arrays["blocks.0.attn/step0003/call0/stats"]
    assert stats.shape == (2, 3) and np.all(stats[:, 0] == -2.0)
    assert np.isnan(arrays["blocks.0.attn/step0000/call0/stats"][:, 0]).all()


def test_npz_capture_holds_no_pickle(tmp_path):
    _, path = captured_run(tmp_path / "cap.npz", what=("sparsity", "keep_mask"))
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            header = z.read(name)[:128]
            assert b"'descr': '|O'" not in header and b"'descr': 'O'" not in header
    np.load(path, allow_pickle=False)["blocks.1.attn/step0001/call0/keep_mask"]


def test_capture_rejects_other_formats(tmp_path):
    registry = LiteAttentionRegistry.from_model(PlainModel(), mode="disable")
    with pytest.raises(ValueError, match=".safetensors or .npz"):
        registry.enable_capture(tmp_path / "cap.pt")
    with pytest.raises(ValueError, match="unknown capture kinds"):
        registry.enable_capture(tmp_path / "cap.npz", what=("gradients",))


def test_inspect_threshold_file_writes_plots(tmp_path, capsys):
    model = PlainModel()
    registry = LiteAttentionRegistry.from_model(model, mode="calib", calib_config=FAST, disabled_steps=1)
    run_steps(model, registry, steps=3)
    path = registry.save(tmp_path / "wan.toml")
    assert "mean threshold" in capsys.readouterr().err  # the summary at the end of a calibration
    assert inspect_main([str(path), "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "blocks.1.attn" in out and "calibrated: metric rel_l1" in out
    assert (tmp_path / "plots" / "thresholds.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "sparsity.png").exists()


def test_inspect_capture_writes_keep_mask_images(tmp_path, capsys):
    _, path = captured_run(tmp_path / "cap.npz")
    assert inspect_main([str(path)]) == 0
    plots = tmp_path / "cap_plots"
    assert {p.name for p in plots.iterdir()} >= {"sparsity.png", "thresholds.png", "keep_mask_blocks.0.attn.png",
                                                 "attn_map_blocks.1.attn.png"}


def test_inspect_reports_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("format_version = 1\n")
    assert inspect_main([str(bad)]) == 1
    assert "header field 'liteattn_version'" in capsys.readouterr().err
    assert inspect_main([str(tmp_path / "x.pkl")]) == 2


def test_python_m_entry_point(tmp_path):
    model = PlainModel()
    registry = LiteAttentionRegistry.from_model(model, mode="const", threshold=-4.0)
    run_steps(model, registry, steps=2)
    path = registry.save(tmp_path / "c.toml", summary=False)
    result = subprocess.run([sys.executable, "-m", "liteattn_calib", "inspect", str(path), "--no-plots"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "2 steps, 2 modules" in result.stdout


def test_console_script_entry_point_is_registered():
    from importlib.metadata import entry_points

    (command,) = [ep for ep in entry_points(group="liteattn.commands") if ep.name == "inspect"]
    assert command.load() is inspect_main


def test_capture_records_second_cfg_pass(tmp_path):
    model = PlainModel()
    registry = LiteAttentionRegistry.from_model(model, mode="const", threshold=-2.0)
    registry.enable_capture(tmp_path / "c.npz", what=("sparsity",))
    from conftest import workload
    for i in range(2):
        model(*workload(i))
        model(*workload(i, seed=1))
        registry.step()
    arrays, _ = load_capture(registry.disable_capture())
    assert "blocks.0.attn/step0001/call1/sparsity" in arrays
    assert torch.is_tensor(torch.from_numpy(arrays["blocks.0.attn/step0001/call1/sparsity"]))
