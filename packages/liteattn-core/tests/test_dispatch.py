"""Backend discovery, auto selection and the errors of an explicit request."""

import pytest
import torch

import liteattn
from liteattn import dispatch
from liteattn.backend import Capabilities
from liteattn.reference import reference_forward

Q = torch.randn(1, 64, 2, 32)


class HalfOnlyBackend:
    """A backend that claims priority over the reference but only runs fp16 at head dim 32."""

    name = "fake"
    priority = 50

    def capabilities(self):
        return Capabilities(frozenset({"cpu"}), frozenset({torch.float16}), frozenset({32}), writes_state=False)

    def unavailable_reason(self):
        return None

    def unsupported_reason(self, call):
        return "query longer than 100" if call.q_len > 100 else None

    def forward(self, call):
        self.calls = getattr(self, "calls", 0) + 1
        return reference_forward(call)


@pytest.fixture
def fake_backend(monkeypatch):
    backend = HalfOnlyBackend()
    registered = {"reference": dispatch.ReferenceBackend, "fake": lambda: backend}
    monkeypatch.setattr(dispatch, "_registered", lambda: registered)
    monkeypatch.setattr(dispatch, "_load", lambda name: registered[name]() if name in registered else "missing")
    return backend


def test_reference_is_always_available():
    assert "reference" in liteattn.available_backends()


def test_missing_backend_says_how_to_install(monkeypatch):
    monkeypatch.setattr(dispatch, "_registered", lambda: {"reference": dispatch.ReferenceBackend})
    monkeypatch.setattr(dispatch, "_load", dispatch._load.__wrapped__)  # bypass the cache of loaded backends
    with pytest.raises(liteattn.BackendUnavailableError, match=r"pip install 'liteattn\[triton\]'"):
        liteattn.lite_attention(Q, Q, Q, backend="triton")


def test_auto_prefers_priority_and_falls_back(fake_backend):
    liteattn.lite_attention(Q.half(), Q.half(), Q.half())
    assert fake_backend.calls == 1
    liteattn.lite_attention(Q, Q, Q)  # fp32: the fake cannot, the reference runs it
    liteattn.lite_attention(Q.half(), Q.half(), Q.half(), liteattn.SkipState())  # writes state: fake cannot
    assert fake_backend.calls == 1


@pytest.mark.parametrize("q, state, reason", [
    (Q, None, "dtype torch.float32"),
    (torch.randn(1, 64, 2, 64).half(), None, "head dim 64"),
    (torch.randn(1, 128, 2, 32).half(), None, "query longer than 100"),
    (Q.half(), liteattn.SkipState(), "cannot write the skip state"),
])
def test_explicit_backend_explains_refusal(fake_backend, q, state, reason):
    with pytest.raises(liteattn.BackendUnavailableError, match=reason):
        liteattn.lite_attention(q, q, q, state, backend="fake")


def test_environment_selects_backend(fake_backend, monkeypatch):
    monkeypatch.setenv("LITEATTN_BACKEND", "reference")
    liteattn.lite_attention(Q.half(), Q.half(), Q.half())
    assert not hasattr(fake_backend, "calls")
    monkeypatch.setenv("LITEATTN_BACKEND", "fake")
    with pytest.raises(liteattn.BackendUnavailableError, match="dtype"):
        liteattn.lite_attention(Q, Q, Q)


class SkipCountingBackend:
    """Runs the reference and claims to count skipped tiles: it adds every tile, so a sparsity of 1.0 can only
    come from its counter, never from core's own count of the bits."""

    name = "counting"
    priority = 60

    def __init__(self):
        self.counters = []

    def capabilities(self):
        return Capabilities(frozenset({"cpu"}), frozenset({torch.float32}), frozenset({32}), counts_skipped=True)

    def unavailable_reason(self):
        return None

    def unsupported_reason(self, call):
        return None

    def forward(self, call):
        self.counters.append(call.skipped_tiles)
        if call.skipped_tiles is not None:
            call.skipped_tiles.add_(call.batch * call.num_heads * call.q_tiles * call.k_tiles)
        return reference_forward(call)


def test_sparsity_comes_from_a_counting_backend(monkeypatch):
    backend = SkipCountingBackend()
    registered = {"reference": dispatch.ReferenceBackend, "counting": lambda: backend}
    monkeypatch.setattr(dispatch, "_registered", lambda: registered)
    monkeypatch.setattr(dispatch, "_load", lambda name: registered[name]() if name in registered else "missing")
    attn = liteattn.LiteAttention()
    attn(Q, Q, Q)  # reads the fresh state's bits: gets a zeroed int64 counter
    counter = backend.counters[-1]
    assert counter.dtype == torch.int64 and counter.dim() == 0
    assert attn.last_sparsity == 1.0  # from the counter (the fresh state keeps every tile)
    liteattn.lite_attention(Q, Q, Q)  # no keep bits: no counter, nothing skipped
    assert backend.counters[-1] is None


def test_backends_that_do_not_count_get_no_counter(fake_backend):
    seen = []
    forward = fake_backend.forward
    fake_backend.forward = lambda call: seen.append(call.skipped_tiles) or forward(call)
    half = Q.half()
    liteattn.lite_attention(half, half, half, must_skip_list=[0, 16])  # keep bits without a state
    assert seen == [None]
