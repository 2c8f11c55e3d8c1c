"""liteattn for diffusers transformers in one call: :func:`enable_liteattn`.

Each video self-attention of the transformer gets its own :class:`~liteattn.LiteAttention` (a child module named
``liteattn`` of the attention module, so ``model.named_modules()`` and ``liteattn_calib.LiteAttentionRegistry``
find it). Cross-attention stays dense. Joint text+video attention (HunyuanVideo, CogVideoX, Mochi) is split:
video->video skips, video->text and text->all are dense, and the parts are merged through their log-sum-exps.

How: the processor of each chosen attention module is wrapped. While the wrapped processor runs, its attention
call (``dispatch_attention_fn``, or ``F.scaled_dot_product_attention`` in processors that call it directly) is
routed to liteattn; projections, norms, RoPE and output layers stay diffusers' own. ``handle.remove()`` puts
the original processors back and removes the LiteAttention modules.

    >>> handle = enable_liteattn(pipe.transformer, threshold=-6.0)   # doctest: +SKIP
    >>> video = pipe(prompt, num_inference_steps=50).frames          # doctest: +SKIP
    >>> handle.mean_sparsity(), handle.remove()                      # doctest: +SKIP
"""

from __future__ import annotations

import contextvars
import fnmatch
import inspect
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..module import LiteAttention
from ._joint import joint_attention, key_padding_mask

__all__ = ["LiteAttnHandle", "MODEL_TARGETS", "Target", "enable_liteattn"]

LAYOUTS = ("video", "text_first", "text_last")


@dataclass(frozen=True)
class Target:
    """Attention modules (an ``fnmatch`` pattern over ``named_modules()`` names) and their token layout:
    ``video`` (video self-attention), ``text_first`` / ``text_last`` (joint attention over text and video tokens,
    text length = the ``encoder_hidden_states`` the processor receives).

    ``per_sample``: the processor attends one sample at a time over its video tokens and only that sample's
    valid text tokens (Mochi), so the text length of each call is its length minus the ``hidden_states`` the
    processor receives, and sample i of the batch gets the skip state of branch i (modulo ``branches``)."""

    pattern: str
    layout: str = "video"
    per_sample: bool = False


MODEL_TARGETS: dict[str, tuple[Target, ...]] = {
    "WanTransformer3DModel": (Target("blocks.*.attn1"),),
    "WanVACETransformer3DModel": (Target("blocks.*.attn1"), Target("vace_blocks.*.attn1")),
    "LTXVideoTransformer3DModel": (Target("transformer_blocks.*.attn1"),),
    "HunyuanVideoTransformer3DModel": (Target("transformer_blocks.*.attn", "text_last"),
                                       Target("single_transformer_blocks.*.attn", "text_last")),
    "CogVideoXTransformer3DModel": (Target("transformer_blocks.*.attn1", "text_first"),),
    "MochiTransformer3DModel": (Target("transformer_blocks.*.attn1", "text_last", per_sample=True),),
}

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("liteattn_active_layer", default=None)


# -- routing the attention call of a wrapped processor ------------------------------------------------------------
class _Layer:
    """What a wrapped processor hands to the patched attention function while it runs."""

    def __init__(self, handle: LiteAttnHandle, name: str, layout: str, text_len: int, video_len: int | None = None):
        self.handle, self.name, self.layout, self.text_len = handle, name, layout, text_len
        self.video_len = video_len  # per-sample processors: the video tokens of every call
        self.samples = 0  # self-attention calls so far in this processor call (per-sample: the sample index)

    def attend(self, q, k, v, attn_mask, scale):
        """BSHD attention through liteattn, or None to let the original function run (with a warning once)."""
        if q.shape[1] != k.shape[1]:
            return None  # not the self-attention call of this processor
        sample, self.samples = self.samples, self.samples + 1
        try:
            text_len = self.text_len
            if self.video_len is None:
                lite = self.handle._lite_for(self.name)
            else:
                if q.shape[0] != 1:
                    raise ValueError(f"a per-sample call has batch {q.shape[0]}, not 1")
                text_len = q.shape[1] - self.video_len
                if text_len < 0:
                    raise ValueError(f"the call has {q.shape[1]} tokens, fewer than the {self.video_len} video tokens")
                lite = self.handle._lite_for_sample(self.name, sample)
            key_mask = key_padding_mask(attn_mask, q.shape[0], k.shape[1])
            if self.layout == "video":
                if key_mask is not None and not bool(key_mask.all()):
                    raise ValueError("video keys are masked")
                return lite(q, k, v, scale)
            return joint_attention(lite, q, k, v, text_len=text_len, text_first=self.layout == "text_first",
                                   key_mask=key_mask, scale=scale)
        except ValueError as error:
            self.handle._warn_once(f"liteattn: {self.name} runs dense: {error}")
            return None


def _patched_dispatch(original):
    def dispatch_attention_fn(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                              *args, **kwargs):
        layer = _ACTIVE.get()
        if layer is not None and not is_causal and dropout_p == 0.0:
            out = layer.attend(query, key, value, attn_mask, scale)
            if out is not None:
                return out
        return original(query, key, value, attn_mask, dropout_p, is_causal, scale, *args, **kwargs)

    dispatch_attention_fn.__wrapped__ = original
    return dispatch_attention_fn


class _FunctionalProxy:
    """``torch.nn.functional`` with ``scaled_dot_product_attention`` routed to liteattn inside wrapped processors."""

    def __init__(self, original):
        self.__wrapped__ = original

    def __getattr__(self, name):
        return getattr(self.__wrapped__, name)

    def scaled_dot_product_attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                     scale=None, **kwargs):
        layer = _ACTIVE.get()
        if layer is not None and not is_causal and dropout_p == 0.0 and not kwargs.get("enable_gqa"):
            out = layer.attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask, scale)
            if out is not None:
                return out.transpose(1, 2)
        return self.__wrapped__.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask,
                                                             dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                                                             **kwargs)


_PATCHES: dict[tuple[str, str], list] = {}  # (module, attribute) -> [original, users]


def _patch_site(processor) -> tuple[str, str]:
    module = sys.modules.get(type(processor).__module__)
    if module is not None and callable(getattr(module, "dispatch_attention_fn", None)):
        return module.__name__, "dispatch_attention_fn"
    functional = getattr(module, "F", None)
    if functional is torch.nn.functional or isinstance(functional, _FunctionalProxy):
        return module.__name__, "F"
    raise TypeError(f"liteattn cannot route the attention of {type(processor).__name__}: its module "
                    f"{type(processor).__module__} calls neither dispatch_attention_fn nor "
                    "F.scaled_dot_product_attention")


def _acquire(site: tuple[str, str]) -> None:
    if site in _PATCHES:
        _PATCHES[site][1] += 1
        return
    module = sys.modules[site[0]]
    original = getattr(module, site[1])
    setattr(module, site[1], _patched_dispatch(original) if site[1] == "dispatch_attention_fn"
            else _FunctionalProxy(original))
    _PATCHES[site] = [original, 1]


def _release(site: tuple[str, str]) -> None:
    entry = _PATCHES[site]
    entry[1] -= 1
    if entry[1] == 0:
        setattr(sys.modules[site[0]], site[1], entry[0])
        del _PATCHES[site]


# -- the processor wrapper ------------------------------------------------------------------------------------------
class _LiteProcessor:
    """Runs the original processor with its attention call routed to the layer's LiteAttention."""

    def __init__(self, original, handle: LiteAttnHandle, name: str, layout: str, per_sample: bool):
        self.original, self.handle, self.name, self.layout = original, handle, name, layout
        self.per_sample = per_sample
        self._signature = inspect.signature(original.__call__)
        if per_sample and "hidden_states" not in self._signature.parameters:
            raise ValueError(f"a per_sample target needs a processor that takes hidden_states (the video tokens); "
                             f"{type(original).__name__}.__call__ takes {list(self._signature.parameters)}")

    def __getattr__(self, name):  # _attention_backend, _parallel_config, ... of the original
        if name == "original":
            raise AttributeError(name)
        return getattr(self.original, name)

    def _call(self, attn, *args, **kwargs):
        text_len, video_len = 0, None
        if self.layout != "video" or self.per_sample:
            bound = self._signature.bind_partial(attn, *args, **kwargs).arguments
            context = bound.get("encoder_hidden_states")
            text_len = 0 if context is None else context.shape[1]
            if self.per_sample:
                video_len = bound["hidden_states"].shape[1]
        token = _ACTIVE.set(_Layer(self.handle, self.name, self.layout, text_len, video_len))
        try:
            return self.original(attn, *args, **kwargs)
        finally:
            _ACTIVE.reset(token)


_WRAPPER_CLASSES: dict[type, type] = {}


def _wrap(original, handle, name, layout, per_sample) -> _LiteProcessor:
    """A wrapper whose ``__call__`` has the original's signature (diffusers filters kwargs by it)."""
    cls = type(original)
    if cls not in _WRAPPER_CLASSES:
        def __call__(self, attn, *args, **kwargs):
            return self._call(attn, *args, **kwargs)

        __call__.__signature__ = inspect.signature(cls.__call__)
        _WRAPPER_CLASSES[cls] = type(f"LiteAttn{cls.__name__}", (_LiteProcessor,), {"__call__": __call__})
    return _WRAPPER_CLASSES[cls](original, handle, name, layout, per_sample)


# -- the handle -----------------------------------------------------------------------------------------------------
class LiteAttnHandle:
    """liteattn switched on in one transformer. ``modules``: attention-module name -> its LiteAttention
    (per CFG branch when ``branches > 1``: ``branch_modules[i]``)."""

    def __init__(self, root: torch.nn.Module, branches: int):
        self.root = root
        self.branches = branches
        self.branch_modules: list[dict[str, LiteAttention]] = [{} for _ in range(branches)]
        self.layouts: dict[str, str] = {}
        self._originals: dict[str, object] = {}
        self._sites: list[tuple[str, str]] = []
        self._hook = None
        self._calls = 0
        self._warned: set[str] = set()
        self.removed = False

    @property
    def modules(self) -> dict[str, LiteAttention]:
        return self.branch_modules[0]

    def _lite_for(self, name: str) -> LiteAttention:
        return self.branch_modules[(self._calls - 1) % self.branches if self.branches > 1 else 0][name]

    def _lite_for_sample(self, name: str, sample: int) -> LiteAttention:
        return self.branch_modules[sample % self.branches][name]

    def _count_call(self, module, args):
        self._calls += 1

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, stacklevel=4)

    def all_modules(self) -> list[LiteAttention]:
        return [m for branch in self.branch_modules for m in branch.values()]

    def reset(self) -> None:
        """Start of a new video: every LiteAttention computes all tiles at its next call."""
        self._calls = 0
        for module in self.all_modules():
            module.reset_skip_state()

    def set_threshold(self, threshold) -> None:
        for module in self.all_modules():
            module.set_threshold(threshold)

    def enable_skipping(self, enable: bool = True) -> None:
        for module in self.all_modules():
            module.enable_skip_optimization(enable)

    def sparsity(self) -> dict[str, float | None]:
        """Last call's skipped fraction per attention module (branch 0)."""
        return {name: module.last_sparsity for name, module in self.modules.items()}

    def mean_sparsity(self) -> float | None:
        values = [m.last_sparsity for m in self.all_modules() if m.last_sparsity is not None]
        return sum(values) / len(values) if values else None

    def remove(self) -> None:
        """Restore the original processors and drop the LiteAttention modules (idempotent)."""
        if self.removed:
            return
        modules = dict(self.root.named_modules())
        for name, original in self._originals.items():
            attn = modules[name]
            attn.set_processor(original) if hasattr(attn, "set_processor") else setattr(attn, "processor", original)
            for i in range(self.branches):
                child = "liteattn" if i == 0 else f"liteattn_b{i}"
                if child in attn._modules:
                    del attn._modules[child]
        for site in self._sites:
            _release(site)
        if self._hook is not None:
            self._hook.remove()
        self.removed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()

    def __repr__(self) -> str:
        return (f"LiteAttnHandle({len(self.modules)} attention modules, branches={self.branches}, "
                f"{'removed' if self.removed else 'active'})")


def _threshold_for(threshold, name: str):
    if callable(threshold):
        return threshold(name)
    if isinstance(threshold, dict):
        for pattern, value in threshold.items():
            if fnmatch.fnmatchcase(name, pattern):
                return value
        raise KeyError(f"no threshold for attention module {name!r} (patterns: {list(threshold)})")
    return threshold


def enable_liteattn(transformer: torch.nn.Module, threshold: float | Sequence[float] | dict | Callable = -10.0, *,
                    backend: str | None = None, use_int8: bool = False, enable_skipping: bool = True,
                    targets: Sequence[Target] | None = None, branches: int = 1, block_m: int | None = None,
                    block_n: int | None = None) -> LiteAttnHandle:
    """Give every video self-attention of a diffusers ``transformer`` its own :class:`~liteattn.LiteAttention`.

    ``threshold``: log2 units, a float or one per head, or a dict ``{fnmatch pattern: value}`` / a callable
    ``name -> value`` per attention module. ``targets`` chooses the attention modules of models not in
    :data:`MODEL_TARGETS` (e.g. ``[Target("blocks.*.self_attn")]``). ``branches``: separate skip states for
    pipelines that run classifier-free guidance as separate transformer calls (Wan: 2), chosen by the call
    count, and for models that attend one sample at a time (Mochi: 2 with guidance), chosen by the sample.
    ``block_m`` / ``block_n``: tile shape (default: :func:`liteattn.default_tile_shape`; kernels may
    support only the default). Returns a :class:`LiteAttnHandle`; ``handle.remove()`` restores the model exactly.
    """
    if targets is None:
        name = type(transformer).__name__
        if name not in MODEL_TARGETS:
            raise ValueError(f"liteattn does not know {name}; pass targets=[Target('pattern', layout)] "
                             f"(known: {sorted(MODEL_TARGETS)})")
        targets = MODEL_TARGETS[name]
    if not isinstance(branches, int) or branches < 1:
        raise ValueError(f"branches must be an int >= 1; got {branches!r}")
    for target in targets:
        if target.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}; got {target.layout!r}")
        if not isinstance(target.per_sample, bool):
            raise ValueError(f"per_sample must be True or False; got {target.per_sample!r}")
    chosen = []
    for name, module in transformer.named_modules():
        target = next((t for t in targets if fnmatch.fnmatchcase(name, t.pattern)), None)
        if target is not None and hasattr(module, "processor"):
            if isinstance(module.processor, _LiteProcessor):
                raise RuntimeError(f"liteattn is already enabled on {name}; remove() the first handle")
            chosen.append((name, module, target))
    if not chosen:
        raise ValueError(f"no attention module of {type(transformer).__name__} matches "
                         f"{[t.pattern for t in targets]}")

    handle = LiteAttnHandle(transformer, branches)
    try:
        for name, attn, target in chosen:
            original = attn.processor
            site = _patch_site(original)
            for i in range(branches):
                lite = LiteAttention(enable_skipping, _threshold_for(threshold, name), use_int8, backend,
                                     block_m=block_m, block_n=block_n)
                attn.add_module("liteattn" if i == 0 else f"liteattn_b{i}", lite)
                handle.branch_modules[i][name] = lite
            handle.layouts[name] = target.layout
            handle._originals[name] = original
            wrapper = _wrap(original, handle, name, target.layout, target.per_sample)
            attn.set_processor(wrapper) if hasattr(attn, "set_processor") else setattr(attn, "processor", wrapper)
            _acquire(site)
            handle._sites.append(site)
        if branches > 1:
            handle._hook = transformer.register_forward_pre_hook(handle._count_call)
    except Exception:
        handle.remove()
        raise
    return handle
