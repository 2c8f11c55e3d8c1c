"""Finding and choosing backends.

Backends register under the ``liteattn.backends`` entry-point group; the reference is built in. A call
names a backend (argument, module attribute, or ``LITEATTN_BACKEND``) or leaves it to ``auto``, which
takes the highest-priority backend that can run the call (cuda, then triton, then reference).
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points

from ._env import requested_backend
from .backend import AttentionCall, Backend
from .reference import ReferenceBackend

__all__ = ["BackendUnavailableError", "available_backends", "get_backend", "select_backend"]

ENTRY_POINT_GROUP = "liteattn.backends"
KNOWN_BACKENDS = ("reference", "triton", "cuda")
_INSTALL_HINT = {"triton": "pip install 'liteattn[triton]'", "cuda": "pip install 'liteattn[cuda]'"}


class BackendUnavailableError(RuntimeError):
    """A backend that was asked for by name cannot run the call; the message says why."""


@functools.cache
def _registered() -> dict[str, object]:
    found: dict[str, object] = {"reference": ReferenceBackend}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry)
    return found


@functools.cache
def _load(name: str) -> Backend | str:
    """The backend instance, or the reason it could not be loaded."""
    registered = _registered()
    if name not in registered:
        hint = _INSTALL_HINT.get(name)
        return f"it is not installed ({hint})" if hint else "no backend of that name is installed"
    factory = registered[name]
    try:
        if hasattr(factory, "load"):
            factory = factory.load()
        return factory()
    except Exception as error:  # a broken install must not take down the others
        return f"it failed to load: {type(error).__name__}: {error}"


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``; raises :class:`BackendUnavailableError` if it cannot load."""
    backend = _load(name)
    if isinstance(backend, str):
        raise BackendUnavailableError(f"liteattn backend {name!r} is unavailable: {backend}")
    return backend


def _cannot_run(backend: Backend, call: AttentionCall) -> str | None:
    reason = backend.unavailable_reason()
    if reason:
        return reason
    caps = backend.capabilities()
    if call.q.device.type not in caps.devices:
        return f"it runs on {sorted(caps.devices)}, not on {call.q.device.type}"
    if call.q.dtype not in caps.dtypes:
        return f"dtype {call.q.dtype} is not one of {sorted(str(d) for d in caps.dtypes)}"
    if call.head_dim not in caps.head_dims or call.v.shape[-1] not in caps.head_dims:
        return f"head dim {call.head_dim} (value dim {call.v.shape[-1]}) is not one of {sorted(caps.head_dims)}"
    if call.use_int8 and not caps.int8:
        return "it has no INT8 Q/K path (use_int8=True)"
    if call.write_bits is not None and not caps.writes_state:
        return "it cannot write the skip state yet (skipping is on)"
    if call.tile_gaps is not None and not caps.tile_gaps:
        return "it cannot report tile gaps"
    return backend.unsupported_reason(call)


def select_backend(call: AttentionCall, requested: str | None = None) -> Backend:
    """The backend to run ``call``: the one requested (argument, else ``LITEATTN_BACKEND``) or ``auto``."""
    name = (requested or requested_backend()).lower()
    if name != "auto":
        if name not in _registered() and name not in KNOWN_BACKENDS:
            raise ValueError(f"backend must be one of {['auto', *sorted(_registered())]}; got {name!r}")
        backend = get_backend(name)
        reason = _cannot_run(backend, call)
        if reason:
            raise BackendUnavailableError(f"liteattn backend {name!r} cannot run this call: {reason}")
        return backend
    candidates = [b for b in map(_load, _registered()) if not isinstance(b, str)]
    for backend in sorted(candidates, key=lambda b: -b.priority):
        if _cannot_run(backend, call) is None:
            return backend
    raise BackendUnavailableError("no liteattn backend can run this call")  # reference runs everything valid


def available_backends() -> list[str]:
    """Names of the backends that load and can run on this machine, best first."""
    loaded = [b for b in map(_load, _registered()) if not isinstance(b, str)]
    return [b.name for b in sorted(loaded, key=lambda b: -b.priority) if b.unavailable_reason() is None]
