"""Bad input raises an exception that names the argument and what is allowed."""

import pytest
import torch

import liteattn

Q = torch.randn(1, 64, 4, 32)


@pytest.mark.parametrize("q, k, v, error, message", [
    (Q[0], Q, Q, ValueError, "query must be 4-D"),
    (Q, Q, Q.int(), TypeError, "value dtype must be one of"),
    (Q, Q.half(), Q.half(), TypeError, "share a dtype"),
    (Q, torch.randn(2, 64, 4, 32), torch.randn(2, 64, 4, 32), ValueError, "batch size"),
    (Q, torch.randn(1, 64, 4, 16), torch.randn(1, 64, 4, 16), ValueError, "head_dim"),
    (Q, torch.randn(1, 64, 3, 32), torch.randn(1, 64, 3, 32), ValueError, "multiple of key/value heads"),
    (Q, Q, torch.randn(1, 63, 4, 32), ValueError, "key and value must agree"),
    (Q.transpose(2, 3).contiguous().transpose(2, 3), Q, Q, ValueError, "contiguous in its last dim"),
    ("q", Q, Q, TypeError, "query must be a torch.Tensor"),
])
def test_bad_tensors(q, k, v, error, message):
    with pytest.raises(error, match=message):
        liteattn.lite_attention(q, k, v)


@pytest.mark.parametrize("kwargs, message", [
    ({"scale": 0.0}, "scale must be a finite float > 0"),
    ({"scale": float("nan")}, "scale must be a finite float > 0"),
    ({"threshold": 1.0}, "LITEATTN_DEBUG=1"),
    ({"threshold": float("nan")}, "finite or -inf"),
    ({"threshold": [-1.0, -2.0]}, "one value per head \\(4\\)"),
    ({"backend": "fastest"}, "backend must be one of"),
])
def test_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        liteattn.lite_attention(Q, Q, Q, liteattn.SkipState(), **kwargs)


def test_positive_threshold_allowed_in_debug(monkeypatch):
    monkeypatch.setenv("LITEATTN_DEBUG", "1")
    state = liteattn.SkipState()
    liteattn.lite_attention(Q, Q, Q, state, threshold=2.0)
    assert state.call_count == 1


def test_module_checks_threshold_at_construction():
    with pytest.raises(ValueError, match="LITEATTN_DEBUG"):
        liteattn.LiteAttention(threshold=0.5)
    with pytest.raises(ValueError, match="power of two"):
        liteattn.LiteAttention(block_m=48)


def test_zero_length_sequences():
    out, lse = liteattn.lite_attention(Q[:, :0], Q, Q, return_softmax_lse=True)
    assert out.shape == (1, 0, 4, 32) and lse.shape == (1, 4, 0)
    out, lse = liteattn.lite_attention(Q, Q[:, :0], Q[:, :0], return_softmax_lse=True)
    assert torch.all(out == 0) and torch.all(lse == -torch.inf)
