"""CPU smoke test of ``liteattn.bench``: tiny shapes, the reference backend and SDPA's math path."""

import importlib.util
import json
import math
import warnings

import pytest
import torch

from liteattn.bench import BenchConfig, main, parse_shape, run
from liteattn.bench.engines import LiteEngine
from liteattn.bench.masks import flex_block_mask, keep_mask, mask_sparsity, video_dims

TINY = dict(device="cpu", warmup_ms=1.0, rep_ms=2.0, progress=False, dtype="fp32")


def _masked_attention(q, k, v, keep, block_m, block_n):
    seq = q.shape[1]
    token = keep.repeat_interleave(block_m, 2)[:, :, :seq].repeat_interleave(block_n, 3)[..., : k.shape[1]]
    scores = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    probs = torch.softmax(scores.masked_fill(~token, -math.inf), -1)
    return torch.einsum("bhqk,bkhd->bqhd", probs, v.double())


def test_cli_writes_json_markdown_and_plot(tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["--engines", "reference,reference+test,math,fa3,flex,nonexistent", "--shapes", "1x2x300x32",
                 "--sparsities", "0,0.5", "--masks", "random,video", "--device", "cpu", "--dtype", "fp32",
                 "--warmup", "1", "--rep", "2", "--no-progress", "--out", str(out)])
    assert code == 0
    payload = json.loads((out / "results.json").read_text())
    env = payload["environment"]
    for key in ("date", "torch", "triton", "cuda", "gpu", "timer"):
        assert key in env
    assert set(payload["skipped_engines"]) == {"fa3", "flex", "nonexistent"}
    rows = payload["results"]
    ok = {(r["engine"], r["mask"]) for r in rows if r["status"] == "ok"}
    assert ok == {("reference", "dense"), ("reference+test", "dense"), ("math", "dense"),
                  ("reference", "random"), ("reference+test", "random"), ("reference", "video"),
                  ("reference+test", "video")}
    for r in rows:
        assert r["time_ms"] > 0 and r["tflops"] > 0
        assert r["rel_err"] < 1e-5, r  # every output checked against fp32 masked attention
        if r["mask"] != "dense":
            assert r["sparsity"] > 0 and r["vs_ideal"] is not None
    markdown = (out / "results.md").read_text()
    assert "| reference | random |" in markdown and "nonexistent" in markdown
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "time_vs_sparsity.png").stat().st_size > 0
    assert "| math | dense |" in capsys.readouterr().out


def test_engine_failure_is_reported_and_skipped(monkeypatch):
    def broken(self, problem):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(LiteEngine, "prepare", broken)
    payload = run(BenchConfig(engines=["reference", "math"], shapes=[parse_shape("2x64x16")], sparsities=[0.0],
                              **TINY))
    status = {r["engine"]: (r["status"], r["reason"]) for r in payload["results"]}
    assert status["reference"] == ("failed", "RuntimeError: kernel exploded")
    assert status["math"][0] == "ok"


@pytest.mark.parametrize("kind", ["random", "video", "video-uneven"])
@pytest.mark.parametrize("seq, sparsity", [(300, 0.5), (1000, 0.75), (1000, 0.9)])
def test_keep_masks_have_the_requested_sparsity(kind, seq, sparsity):
    mask = keep_mask(kind, 1, 3, seq, seq, 32, sparsity, block_m=64, block_n=64)
    q_tiles, k_tiles = mask.shape[-2:]
    assert mask.shape == (1, 3, -(-seq // 64), -(-seq // 64))
    keep = max(1, round((1 - sparsity) * k_tiles))
    counts = mask.sum(-1)
    if kind in ("video", "random"):
        assert (counts == keep).all()
    elif kind == "video-uneven":  # per-head sparsity spread around the mean, uneven rows
        assert mask_sparsity(mask) == pytest.approx(sparsity, abs=0.02)
        per_head = 1 - mask.float().mean((0, 2, 3))
        assert per_head[0] < per_head[-1]
    assert mask[..., torch.arange(q_tiles), torch.arange(q_tiles) * k_tiles // q_tiles].all()  # diagonal kept
    assert mask_sparsity(mask) == pytest.approx(1 - counts.float().mean().item() / k_tiles)


@pytest.mark.gpu
def test_gpu_sweep_runs_every_engine_it_can(tmp_path):
    """On a GPU machine: a small sweep over every engine; each either runs accurately or says why not."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    payload = run(BenchConfig(engines=["triton", "cuda", "fa3", "cudnn", "flash", "flex"],
                              shapes=[parse_shape("1x4x2000x128"), parse_shape("1x4x2048x64")],
                              sparsities=[0.0, 0.5], masks=["random", "video-uneven"], device="cuda",
                              warmup_ms=5, rep_ms=10, progress=False), out=tmp_path)
    ok = [r for r in payload["results"] if r["status"] == "ok"]
    assert ok, payload["skipped_engines"]
    for r in ok:
        assert r["rel_err"] < 2e-2, r
    assert (tmp_path / "results.md").exists()


def test_video_dims_factorise_the_sequence():
    for seq in (32760, 75600, 32768, 300, 1000, 97):
        frames, height, width = video_dims(seq)
        assert frames * height * width == seq


def test_flex_block_mask_matches_the_keep_mask():
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = (torch.randn(1, 300, 2, 32) for _ in range(3))
    keep = keep_mask("random", 1, 2, 300, 300, 32, 0.5, block_m=64, block_n=64)
    block_mask = flex_block_mask(keep, 300, 300, 64, 64, with_mask_mod=True)
    assert torch.equal(block_mask.to_dense().bool(), keep)
    assert torch.equal(flex_block_mask(keep, 300, 300, 64, 64).to_dense().bool(), keep)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager Flex warns that it is not compiled
        out = flex_attention(*(x.transpose(1, 2) for x in (q, k, v)), block_mask=block_mask).transpose(1, 2)
    torch.testing.assert_close(out.double(), _masked_attention(q, k, v, keep, 64, 64), atol=1e-5, rtol=1e-5)


def test_parse_shape():
    assert str(parse_shape("1x12x32760x128")) == "1x12x32760x128"
    assert parse_shape("24x32768x64").batch == 1
    with pytest.raises(ValueError):
        parse_shape("12x128")


def test_fa3_engine_takes_the_output_of_a_tuple(monkeypatch):
    import sys
    import types

    from liteattn.bench.engines import FA3Engine, Problem

    fake = types.ModuleType("fa3_fwd_interface")
    fake.flash_attn_func = lambda q, k, v: (q + 1, torch.zeros(1))
    monkeypatch.setitem(sys.modules, "fa3_fwd_interface", fake)
    q = torch.zeros(1, 4, 2, 8)
    run_fa3 = FA3Engine().prepare(Problem(q, q, q, None, 128, 128))
    assert torch.equal(run_fa3(), q + 1)
    assert "CUDA" in FA3Engine().unavailable_reason(torch.device("cpu"))


def test_list_engines(capsys):
    assert main(["--list", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "reference  ok" in out and "fa3" in out


def test_a_fault_that_breaks_the_device_stops_the_sweep_and_keeps_results(monkeypatch):
    def faulty(self, problem):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(LiteEngine, "prepare", faulty)
    payload = run(BenchConfig(engines=["math", "reference"], shapes=[parse_shape("2x64x16"), parse_shape("2x64x32")],
                              sparsities=[0.0], **TINY))
    assert [(r["engine"], r["status"]) for r in payload["results"]] == [("math", "ok"), ("reference", "failed")]
    assert "stopped early" in payload["skipped_engines"]["(sweep)"]
