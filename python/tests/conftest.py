"""Shared fixtures: one device for the session (a GPU test fails, not skips, without an
adapter), fresh random inputs whose seed every failure message prints."""

import os
import random

import numpy as np
import pytest

import longctx


@pytest.fixture(scope="session")
def dev():
    return longctx.Device()


class Seeded:
    """A generator with its seed, for messages: `LONGCTX_SEED=S` replays a failure."""

    def __init__(self, seed: int):
        self.seed = seed
        self.gen = np.random.default_rng(seed)

    def normal(self, *shape, scale=1.0):
        return (self.gen.standard_normal(shape) * scale).astype(np.float32)

    def __repr__(self):
        return f"seed {self.seed} (LONGCTX_SEED={self.seed} replays it)"


@pytest.fixture
def rng():
    seed = int(os.environ.get("LONGCTX_SEED", random.SystemRandom().randrange(2**63)))
    return Seeded(seed)


def rel_err(a, b):
    """‖a − b‖₂ / ‖b‖₂, as the Rust tests report it (absolute where b is zero)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    den = np.linalg.norm(b)
    num = np.linalg.norm(a - b)
    return num if den == 0 else num / den


def alibi_slopes(h):
    """The ALiBi paper's get_slopes(h), also for h not a power of two."""
    def pow2(n):
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    if h & (h - 1) == 0:
        return pow2(h)
    c = 1 << (h.bit_length() - 1)
    return pow2(c) + pow2(2 * c)[0::2][: h - c]


def numpy_attention(q, k, v, causal=False, slopes=None, scale=None, mask=None):
    """Materialised attention in float64 with numpy: [B,H,N,D] / [B,Hkv,M,D]; `mask` a
    boolean [N, M] ANDed in; rows with no visible key give 0 (the contract)."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    b, h, n, d = q.shape
    hkv, m = k.shape[1], k.shape[2]
    k = np.repeat(k, h // hkv, axis=1)
    v = np.repeat(v, h // hkv, axis=1)
    s = np.einsum("bhnd,bhmd->bhnm", q, k) * (scale if scale is not None else 1 / np.sqrt(d))
    pos = np.arange(n)[:, None] + (m - n)
    key = np.arange(m)[None, :]
    if slopes is not None:
        s = s - np.asarray(slopes, dtype=np.float64)[None, :, None, None] * np.abs(pos - key)[None, None]
    visible = np.ones((n, m), dtype=bool)
    if causal:
        visible &= key <= pos
    if mask is not None:
        visible &= mask
    s = np.where(visible[None, None], s, -np.inf)
    mx = np.max(s, axis=-1, keepdims=True)
    mx = np.where(np.isfinite(mx), mx, 0)
    p = np.exp(s - mx)
    l = p.sum(-1, keepdims=True)
    o = np.einsum("bhnm,bhmd->bhnd", np.where(l > 0, p / np.where(l > 0, l, 1), 0), v)
    with np.errstate(divide="ignore"):
        lse = np.where(l[..., 0] > 0, mx[..., 0] + np.log(l[..., 0]), -np.inf)
    return o, lse
