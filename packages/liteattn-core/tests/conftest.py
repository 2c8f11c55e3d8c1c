import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny ops on many threads thrash a shared 2-core machine; one thread is several times faster here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed_and_env(monkeypatch):
    torch.manual_seed(0)
    for name in ("LITEATTN_BACKEND", "LITEATTN_DEBUG", "LITEATTN_VERBOSE"):
        monkeypatch.delenv(name, raising=False)


def sdpa(q, k, v, scale=None):
    """torch's attention on BSHD tensors (GQA through repeated heads), in float64."""
    groups = q.shape[2] // k.shape[2]
    k, v = k.repeat_interleave(groups, 2), v.repeat_interleave(groups, 2)
    qh, kh, vh = (x.double().transpose(1, 2) for x in (q, k, v))
    return torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, scale=scale).transpose(1, 2)
