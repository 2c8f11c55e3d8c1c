"""``liteattn e2e``: a diffusers video pipeline dense vs liteattn, same seed, same inputs.

Reports per denoising step: wall time, transformer time, the share of the transformer time spent in the
video self-attention modules, and liteattn's skipped fraction; and for the decoded video: PSNR and SSIM
against the dense run (LPIPS when the ``lpips`` package is installed).

Real weights (the project never downloads them: point ``--model`` at a local diffusers folder)::

    liteattn e2e --model /models/Wan2.1-T2V-1.3B-Diffusers --prompt "A cat walks on the grass" \\
        --steps 50 --height 480 --width 832 --frames 81 --threshold -6 --backend triton --out e2e/wan13b

``--tiny`` runs a random-weight tiny Wan pipeline on CPU instead (what the tests use).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import fnmatch
import inspect
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["build_parser", "main", "psnr", "run_e2e", "ssim", "tiny_wan_pipeline"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# -- quality metrics ----------------------------------------------------------------------------------------------
def _as_frames(video) -> torch.Tensor:
    """(frames, 3, H, W) float64 in [0, 1] from a pipeline's numpy / tensor output (batch 1)."""
    x = torch.as_tensor(video).double()
    if x.dim() == 5:
        x = x[0]
    if x.shape[-1] in (1, 3):  # (F, H, W, C)
        x = x.permute(0, 3, 1, 2)
    return x.clamp(0, 1)


def psnr(video, reference) -> float:
    """Peak signal-to-noise ratio in dB of frames in [0, 1] (inf when identical)."""
    mse = F.mse_loss(_as_frames(video), _as_frames(reference)).item()
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def ssim(video, reference, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM over frames and channels (Gaussian window, Wang et al. 2004 constants)."""
    x, y = _as_frames(video), _as_frames(reference)
    channels = x.shape[1]
    window = min(window, x.shape[-1], x.shape[-2])
    coords = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2).expand(channels, 1, window, window)
    blur = lambda t: F.conv2d(t, kernel, groups=channels)  # noqa: E731
    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.mean().item()


def lpips_distance(video, reference) -> float | None:
    """LPIPS (AlexNet) averaged over frames, or None when ``lpips`` is not installed or its weights are missing."""
    try:
        import lpips
    except ImportError:
        return None
    try:
        metric = lpips.LPIPS(net="alex", verbose=False)
    except Exception:
        return None
    x, y = (_as_frames(v).float() * 2 - 1 for v in (video, reference))
    with torch.no_grad():
        return metric(x, y).mean().item()


# -- timing hooks ---------------------------------------------------------------------------------------------------
class _Timer:
    """Synchronised wall time of module forwards, summed between two ``take()`` calls."""

    def __init__(self, device: torch.device):
        self.device = device
        self.total = 0.0
        self._starts: dict[int, float] = {}
        self._hooks = []

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def attach(self, module: torch.nn.Module) -> None:
        def pre(mod, args):
            self._sync()
            self._starts[id(mod)] = time.perf_counter()

        def post(mod, args, out):
            self._sync()
            self.total += time.perf_counter() - self._starts.pop(id(mod), time.perf_counter())

        self._hooks += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def take(self) -> float:
        value, self.total = self.total, 0.0
        return value

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def _transformers(pipe) -> list[torch.nn.Module]:
    return [m for m in (getattr(pipe, "transformer", None), getattr(pipe, "transformer_2", None)) if m is not None]


def _self_attention_modules(transformer) -> list[torch.nn.Module]:
    from .diffusers import MODEL_TARGETS

    targets = MODEL_TARGETS.get(type(transformer).__name__, ())
    return [m for name, m in transformer.named_modules() if any(fnmatch.fnmatchcase(name, t.pattern) for t in targets)]


# -- one run --------------------------------------------------------------------------------------------------------
def _generate(pipe, call_kwargs: dict, seed: int, device: torch.device, extra_callback=None):
    """Run the pipeline once; returns (frames, per-step records, total seconds)."""
    transformer_timer, attention_timer = _Timer(device), _Timer(device)
    sparsities: list[float] = []
    sparsity_hooks = []
    for transformer in _transformers(pipe):
        transformer_timer.attach(transformer)
        for module in _self_attention_modules(transformer):
            attention_timer.attach(module)
        from ..module import LiteAttention

        for module in transformer.modules():
            if isinstance(module, LiteAttention):
                sparsity_hooks.append(module.register_forward_hook(
                    lambda m, args, out: sparsities.append(m.last_sparsity) if m.last_sparsity is not None else None))
    steps: list[dict] = []
    last = [time.perf_counter()]

    def on_step_end(pipeline, step, timestep, callback_kwargs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        now = time.perf_counter()
        transformer_s, attention_s = transformer_timer.take(), attention_timer.take()
        steps.append(dict(step=step, timestep=float(timestep), step_ms=(now - last[0]) * 1e3,
                          transformer_ms=transformer_s * 1e3, self_attention_ms=attention_s * 1e3,
                          attention_share=attention_s / transformer_s if transformer_s > 0 else None,
                          sparsity=sum(sparsities) / len(sparsities) if sparsities else None))
        sparsities.clear()
        last[0] = now
        if extra_callback is not None:
            callback_kwargs = extra_callback(pipeline, step, timestep, callback_kwargs) or callback_kwargs
        return callback_kwargs

    generator = torch.Generator(device="cpu").manual_seed(seed)
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        last[0] = start
        with torch.no_grad():
            output = pipe(**call_kwargs, generator=generator, output_type="np", callback_on_step_end=on_step_end)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        total = time.perf_counter() - start
    finally:
        transformer_timer.remove()
        attention_timer.remove()
        for hook in sparsity_hooks:
            hook.remove()
    frames = output.frames if hasattr(output, "frames") else output[0]
    return frames, steps, total


def _summary(steps: list[dict], total: float) -> dict:
    def mean(key):
        values = [s[key] for s in steps if s[key] is not None]
        return sum(values) / len(values) if values else None

    return dict(total_s=total, mean_step_ms=mean("step_ms"), mean_transformer_ms=mean("transformer_ms"),
                mean_self_attention_ms=mean("self_attention_ms"), attention_share=mean("attention_share"),
                mean_sparsity=mean("sparsity"))


def run_e2e(pipe, call_kwargs: dict, *, seed: int = 0, threshold: float = -6.0, backend: str | None = None,
            calib_file: str | None = None, branches: int | None = None, warmup_steps: int = 0,
            device: torch.device | str | None = None, **enable_kwargs) -> dict:
    """Run ``pipe(**call_kwargs)`` dense, then with liteattn on every transformer of the pipeline; same seed.

    ``calib_file``: a threshold file of ``liteattn_calib`` (applied through ``LiteAttentionRegistry`` in
    ``load`` mode) instead of the constant ``threshold``. ``branches``: separate skip states per classifier-free
    guidance pass (None: 2 where the two passes reach each attention layer as separate calls, see
    :func:`separate_guidance_passes`, and there is no ``calib_file``; else 1).
    ``enable_kwargs`` go to :func:`~liteattn.integrations.diffusers.enable_liteattn`. Returns a JSON-ready dict
    (``frames`` holds the two decoded videos).
    """
    from .diffusers import enable_liteattn

    device = torch.device(device) if device is not None else next(_transformers(pipe)[0].parameters()).device
    if branches is None:  # the calibration registry keeps one state per call of a step itself
        branches = 2 if separate_guidance_passes(pipe, call_kwargs) and not calib_file else 1
    if warmup_steps:
        warm = dict(call_kwargs, num_inference_steps=warmup_steps)
        _generate(pipe, warm, seed, device)
    dense_frames, dense_steps, dense_total = _generate(pipe, call_kwargs, seed, device)

    handles = [enable_liteattn(t, threshold=threshold, backend=backend, branches=branches, **enable_kwargs)
               for t in _transformers(pipe)]
    registries = []
    try:
        callback = None
        if calib_file is not None:
            from liteattn_calib import LiteAttentionRegistry

            registries = [LiteAttentionRegistry.from_model(t, mode="load", filename=calib_file)
                          for t in _transformers(pipe)]

            def callback(pipeline, step, timestep, kwargs):
                for registry in registries:
                    registry.callback_on_step_end(pipeline, step, timestep, kwargs)
                return kwargs
        if warmup_steps:
            _generate(pipe, dict(call_kwargs, num_inference_steps=warmup_steps), seed, device)
        for handle in handles:
            handle.reset()
        for registry in registries:
            registry.reset()
        lite_frames, lite_steps, lite_total = _generate(pipe, call_kwargs, seed, device, callback)
    finally:
        for registry in registries:
            registry.remove()
        for handle in handles:
            handle.remove()

    dense, lite = _summary(dense_steps, dense_total), _summary(lite_steps, lite_total)
    quality = dict(psnr=psnr(lite_frames, dense_frames), ssim=ssim(lite_frames, dense_frames),
                   lpips=lpips_distance(lite_frames, dense_frames))
    speedup = dense["total_s"] / lite["total_s"] if lite["total_s"] else None
    return dict(
        environment=dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                         device=str(device), gpu=torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                         torch=torch.__version__, diffusers=_version("diffusers"), liteattn=_version("liteattn-core")),
        pipeline=type(pipe).__name__, transformers=[type(t).__name__ for t in _transformers(pipe)],
        settings=dict(seed=seed, threshold=None if calib_file else threshold, calib_file=calib_file, backend=backend,
                      branches=branches, warmup_steps=warmup_steps,
                      call={k: v for k, v in call_kwargs.items() if isinstance(v, (int, float, str, bool))}),
        dense=dict(summary=dense, steps=dense_steps), liteattn=dict(summary=lite, steps=lite_steps),
        quality=quality, speedup=speedup,
        frames=dict(dense=dense_frames, liteattn=lite_frames),
    )


def separate_guidance_passes(pipe, call_kwargs: dict) -> bool:
    """Whether ``pipe(**call_kwargs)`` runs classifier-free guidance as two attention calls per layer and step, each
    of which should keep its own skip state: Wan (two transformer calls), HunyuanVideo's true guidance
    (``true_cfg_scale`` > 1 with a negative prompt: two transformer calls) and Mochi (its attention processor
    attends one sample of the batch at a time)."""
    name = type(pipe).__name__
    if name.startswith(("Wan", "Mochi")):
        return _guidance_scale(pipe, call_kwargs) > 1.0
    if name.startswith("HunyuanVideo"):
        negative = any(call_kwargs.get(k) is not None for k in ("negative_prompt", "negative_prompt_embeds"))
        return negative and float(call_kwargs.get("true_cfg_scale") or 1.0) > 1.0
    return False


def _guidance_scale(pipe, call_kwargs: dict) -> float:
    """The guidance scale a call uses: given, else the pipeline's default."""
    if call_kwargs.get("guidance_scale") is not None:
        return float(call_kwargs["guidance_scale"])
    try:
        default = inspect.signature(pipe.__call__).parameters["guidance_scale"].default
        return float(default) if default is not inspect.Parameter.empty and default is not None else 1.0
    except (KeyError, TypeError, ValueError):
        return 1.0


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# -- the tiny pipeline ----------------------------------------------------------------------------------------------
def tiny_wan_pipeline(seed: int = 0):
    """A random-weight Wan pipeline small enough for CPU tests (2 layers, 2 heads x 16 dims, a tiny VAE), and
    the call arguments (random prompt embeddings instead of a text encoder)."""
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
    transformer = WanTransformer3DModel(patch_size=(1, 1, 1), num_attention_heads=2, attention_head_dim=16,
                                        in_channels=4, out_channels=4, text_dim=32, freq_dim=32, ffn_dim=32,
                                        num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                        rope_max_seq_len=32)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    call = dict(prompt_embeds=torch.randn(1, 12, 32, generator=generator),
                negative_prompt_embeds=torch.randn(1, 12, 32, generator=generator),
                height=64, width=64, num_frames=9, num_inference_steps=3, guidance_scale=5.0)
    return pipe, call


# -- command line ---------------------------------------------------------------------------------------------------
def build_parser(prog: str = "liteattn e2e") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run a diffusers video pipeline dense and with liteattn "
                                     "(same seed) and compare time per step, attention share, sparsity and quality.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="local diffusers pipeline folder (never downloaded)")
    source.add_argument("--tiny", action="store_true", help="a random-weight tiny Wan pipeline (CPU smoke run)")
    parser.add_argument("--prompt", default="A cat walks on the grass, realistic")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the pipeline's)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--frames", type=int, default=None)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=-6.0, help="constant skip threshold (log2 units, <= 0)")
    parser.add_argument("--calib", default=None, help="liteattn_calib threshold file (overrides --threshold)")
    parser.add_argument("--backend", default=None, help="liteattn backend (default: auto)")
    parser.add_argument("--branches", type=int, default=None, help="skip states per guidance pass (default: auto)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps of an untimed warm-up run per mode")
    parser.add_argument("--out", default=None, help="folder for results.json, summary.md, videos")
    parser.add_argument("--save-video", action="store_true", help="write dense.mp4 / liteattn.mp4 (needs imageio)")
    return parser


def _load_pipeline(args, device):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=DTYPES[args.dtype], local_files_only=True)
    pipe.to(device)
    call = dict(prompt=args.prompt)
    if args.negative_prompt is not None:
        call["negative_prompt"] = args.negative_prompt
    for key, value in (("num_inference_steps", args.steps), ("height", args.height), ("width", args.width),
                       ("num_frames", args.frames), ("guidance_scale", args.guidance_scale)):
        if value is not None:
            call[key] = value
    return pipe, call


def markdown_summary(result: dict) -> str:
    d, l, q = result["dense"]["summary"], result["liteattn"]["summary"], result["quality"]
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    lines = [f"# liteattn end to end: {result['pipeline']}", "",
             f"{result['environment']['gpu'] or result['environment']['device']}, {result['environment']['date']}, "
             f"torch {result['environment']['torch']}, diffusers {result['environment']['diffusers']}; "
             f"settings {json.dumps(result['settings'])}", "",
             "| run | total (s) | step (ms) | transformer (ms) | self-attention share | sparsity |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, s in (("dense", d), ("liteattn", l)):
        lines.append(f"| {name} | {s['total_s']:.2f} | {fmt(s['mean_step_ms'], '.1f')} | "
                     f"{fmt(s['mean_transformer_ms'], '.1f')} | {fmt(s['attention_share'], '.1%')} | "
                     f"{fmt(s['mean_sparsity'], '.3f')} |")
    lines += ["", f"Speed-up {fmt(result['speedup'], '.2f')}x; PSNR {fmt(q['psnr'], '.2f')} dB, "
              f"SSIM {fmt(q['ssim'], '.4f')}, LPIPS {fmt(q['lpips'], '.4f')} (liteattn vs dense, same seed).", "",
              "| step | dense (ms) | liteattn (ms) | sparsity |", "|---:|---:|---:|---:|"]
    for ds, ls in zip(result["dense"]["steps"], result["liteattn"]["steps"]):
        lines.append(f"| {ds['step']} | {ds['step_ms']:.1f} | {ls['step_ms']:.1f} | {fmt(ls['sparsity'], '.3f')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("liteattn e2e needs diffusers: pip install 'liteattn[diffusers]'", file=sys.stderr)
        return 1
    if args.tiny:
        device = torch.device(args.device or "cpu")
        pipe, call = tiny_wan_pipeline(args.seed)
        pipe.to(device)
        if args.steps is not None:
            call["num_inference_steps"] = args.steps
    else:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        pipe, call = _load_pipeline(args, device)
    result = run_e2e(pipe, call, seed=args.seed, threshold=args.threshold, backend=args.backend,
                     calib_file=args.calib, branches=args.branches, warmup_steps=args.warmup_steps, device=device)
    frames = result.pop("frames")
    text = markdown_summary(result)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
        (out / "summary.md").write_text(text + "\n")
        if args.save_video:
            with contextlib.suppress(Exception):
                from diffusers.utils import export_to_video

                for name, video in frames.items():
                    export_to_video(list(video[0]), str(out / f"{name}.mp4"), fps=16)
        print(f"wrote {out}", file=sys.stderr)
    return 0
