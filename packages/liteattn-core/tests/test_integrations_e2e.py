"""``liteattn e2e`` on a tiny random-weight Wan pipeline (CPU, a few steps)."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("diffusers")

from liteattn import cli  # noqa: E402
from liteattn.integrations.e2e import psnr, run_e2e, separate_guidance_passes, ssim, tiny_wan_pipeline  # noqa: E402


def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    video = rng.random((1, 3, 32, 32, 3))
    assert psnr(video, video) == math.inf
    assert ssim(video, video) == pytest.approx(1.0)
    noisy = np.clip(video + rng.normal(0, 0.1, video.shape), 0, 1)
    assert 15 < psnr(noisy, video) < 25
    assert 0 < ssim(noisy, video) < 0.99


def test_run_e2e_dense_vs_liteattn():
    pipe, call = tiny_wan_pipeline()
    call["num_inference_steps"] = 2
    result = run_e2e(pipe, call, threshold=0.0, backend="reference", block_m=16, block_n=16)
    for run in ("dense", "liteattn"):
        steps = result[run]["steps"]
        assert [s["step"] for s in steps] == [0, 1]
        assert all(s["step_ms"] > 0 and 0 < s["attention_share"] < 1 for s in steps)
    lite_steps = result["liteattn"]["steps"]
    assert lite_steps[0]["sparsity"] == 0.0  # the first step computes everything
    assert lite_steps[1]["sparsity"] > 0.0  # the second skips what the first found negligible
    assert result["dense"]["steps"][0]["sparsity"] is None
    assert result["settings"]["branches"] == 2  # Wan runs guidance as two transformer calls
    assert result["quality"]["psnr"] > 20 and 0.5 < result["quality"]["ssim"] <= 1.0
    assert not any(type(p).__name__.startswith("LiteAttn") for p in pipe.transformer.attn_processors.values())


def test_cli_e2e_tiny(tmp_path, capsys):
    assert cli.main(["e2e", "--tiny", "--steps", "1", "--warmup-steps", "0", "--threshold", "-4",
                     "--backend", "reference", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["pipeline"] == "WanPipeline" and len(result["liteattn"]["steps"]) == 1
    assert "Speed-up" in (tmp_path / "summary.md").read_text()
    assert "| liteattn |" in capsys.readouterr().out


def _pipeline(name: str, default_guidance: float):
    def __call__(self, prompt=None, guidance_scale=default_guidance, true_cfg_scale=1.0, negative_prompt=None):
        pass

    return type(name, (), {"__call__": __call__})()


@pytest.mark.parametrize("name, default, kwargs, separate", [
    ("WanPipeline", 5.0, {}, True),
    ("WanPipeline", 5.0, {"guidance_scale": 1.0}, False),
    ("MochiPipeline", 4.5, {}, True),
    ("HunyuanVideoPipeline", 6.0, {}, False),  # embedded guidance: one transformer call per step
    ("HunyuanVideoPipeline", 6.0, {"true_cfg_scale": 4.0}, False),  # no negative prompt: no true guidance
    ("HunyuanVideoPipeline", 6.0, {"true_cfg_scale": 4.0, "negative_prompt": "blurry"}, True),
    ("LTXPipeline", 3.0, {}, False),  # both passes in one batched call
])
def test_separate_guidance_passes(name, default, kwargs, separate):
    assert separate_guidance_passes(_pipeline(name, default), kwargs) is separate
