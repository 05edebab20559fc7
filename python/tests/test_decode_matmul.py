"""KV-cache decoding and matmul against float64 references."""

import numpy as np
import pytest

import longctx
from conftest import numpy_attention, rel_err


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (6, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
def test_decode_steps_match_the_oracle_on_the_whole_sequence(dev, rng, heads, kv_heads):
    d, prompt, steps = 20, 37, 3
    cache = dev.kv_cache(heads, kv_heads, d, 64, alibi=True)
    ks, vs = rng.normal(kv_heads, prompt + steps, d), rng.normal(kv_heads, prompt + steps, d)
    cache.append(ks[:, :prompt], vs[:, :prompt])
    assert len(cache) == prompt
    for t in range(steps):
        q = rng.normal(heads, 1, d)
        at = prompt + t
        o = cache.step(q, ks[:, at:at + 1], vs[:, at:at + 1])
        assert o.shape == (heads, 1, d)
        want, _ = longctx.reference.attention(q, ks[:, :at + 1], vs[:, :at + 1], alibi=True)
        assert rel_err(o, want) < 1e-5, (t, rng)
    assert len(cache) == prompt + steps
    assert cache.bytes >= 2 * kv_heads * 64 * d * 4
    assert cache.kernel[0] in ("staged", "lanes")


def test_decode_with_a_ring_window_and_rope(dev, rng):
    heads, d, window = 2, 8, 10
    cache = dev.kv_cache(heads, heads, d, window + 1, window=window, ring=True, rope=True)
    ks, vs = rng.normal(heads, 30, d), rng.normal(heads, 30, d)
    for t in range(30):
        q = rng.normal(heads, 1, d)
        o = cache.step(q, ks[:, t:t + 1], vs[:, t:t + 1])
        want, _ = longctx.reference.attention(q, ks[:, :t + 1], vs[:, :t + 1], window=(window, 0), rope=True)
        assert rel_err(o, want) < 1e-5, (t, rng)


def test_decode_checks_its_inputs(dev, rng):
    cache = dev.kv_cache(2, 1, 8, 4)
    with pytest.raises(longctx.ShapeError, match=r"\[Hkv, T, D\] = \[1, T, 8\]"):
        cache.append(rng.normal(2, 3, 8), rng.normal(2, 3, 8))
    with pytest.raises(longctx.LongctxError):
        cache.append(rng.normal(1, 5, 8), rng.normal(1, 5, 8))  # past the capacity
    with pytest.raises(longctx.NonFiniteError):
        cache.step(np.full((2, 1, 8), np.nan, np.float32), rng.normal(1, 1, 8), rng.normal(1, 1, 8))


@pytest.mark.parametrize("m,k,n", [(37, 44, 52), (64, 128, 96), (5, 3, 7)])
@pytest.mark.parametrize("activation", [None, "gelu", "gelu_erf"])
def test_matmul_matches_numpy(dev, rng, m, k, n, activation):
    a, b, bias = rng.normal(m, k), rng.normal(k, n), rng.normal(n)
    c = dev.matmul(a, b, bias, activation=activation)
    x = a.astype(np.float64) @ b.astype(np.float64) + bias
    if activation == "gelu":
        x = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    elif activation == "gelu_erf":
        from math import erf

        x = 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))
    assert c.shape == (m, n) and c.dtype == np.float32
    assert rel_err(c, x) < 1e-5, rng
    assert rel_err(dev.matmul(a, b), a.astype(np.float64) @ b) < 1e-5, rng
