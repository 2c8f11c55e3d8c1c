"""CPU smoke test of ``bench/calib_cost.py`` (the reference backend at a tiny size)."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "bench" / "calib_cost.py"


def test_calib_cost_bench_runs_and_counts_calls(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("calib_cost", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "cost.json"
    args = ["--grid", "1,8,16", "--heads", "2", "--layers", "2", "--steps", "2", "--sample-query-tiles", "3"]
    assert bench.main([*args, "--json", str(out)]) == 0
    assert "calib" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert payload["meta"]["tile_gaps"] and payload["meta"]["tokens"] == 128
    rows = {row["mode"]: row for row in payload["rows"]}
    assert rows["normal"]["calls"] == rows["load"]["calls"] == rows["normal"]["full_calls"] == 1
    # With tile gaps: one full call, then one sampled call per round. The first round evaluates both endpoints,
    # and at the second step the warm start's window too.
    calib = rows["calib"]
    assert calib["full_calls"] == 1 and calib["sampled_calls"] >= 1
    assert calib["mean_iterations"] == pytest.approx(calib["sampled_calls"] + 1 + 2 * 0.5)
    assert 0 <= calib["warm_hits"] <= 1
    assert rows["load"]["mean_sparsity"] == calib["mean_sparsity"]
