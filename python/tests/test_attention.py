"""dev.attention and dev.attention_backward against the float64 oracle and numpy, at odd sizes
(N, M not multiples of any tile, N ≠ M), GQA, masks, positions and mods from strings."""

import numpy as np
import pytest

import longctx
from conftest import alibi_slopes, numpy_attention, rel_err

BOUND = 1e-5


def qkv(rng, b, h, hkv, n, m, d):
    return rng.normal(b, h, n, d), rng.normal(b, hkv, m, d), rng.normal(b, hkv, m, d)


@pytest.mark.parametrize("kernel", ["flash", "naive"])
def test_gqa_causal_alibi_odd_sizes_match_the_oracle_and_numpy(dev, rng, kernel):
    q, k, v = qkv(rng, 2, 6, 2, 37, 53, 20)
    o, lse = dev.attention(q, k, v, causal=True, alibi=True, kernel=kernel)
    assert o.shape == q.shape and o.dtype == np.float32 and lse.shape == q.shape[:3]
    o64, lse64 = longctx.reference.attention(q, k, v, causal=True, alibi=True)
    assert o64.dtype == np.float64
    assert rel_err(o, o64) < BOUND, rng
    assert rel_err(lse, lse64) < BOUND, rng
    on, lsen = numpy_attention(q, k, v, causal=True, slopes=alibi_slopes(6))
    assert rel_err(o, on) < BOUND, rng
    assert rel_err(lse, lsen) < BOUND, rng


def test_three_dimensional_inputs_and_fully_masked_rows(dev, rng):
    # N > M with causal alignment at the bottom right: the first N − M rows see no key
    q, k, v = rng.normal(3, 41, 16), rng.normal(3, 29, 16), rng.normal(3, 29, 16)
    o, lse = dev.attention(q, k, v, causal=True)
    assert o.shape == (3, 41, 16) and lse.shape == (3, 41)
    assert np.all(o[:, :12] == 0) and np.all(np.isneginf(lse[:, :12]))
    o64, _ = longctx.reference.attention(q, k, v, causal=True)
    assert rel_err(o, o64) < BOUND, rng


@pytest.mark.parametrize(
    "opts",
    [
        dict(window=(7, 3)),
        dict(window=12, causal=True),
        dict(global_tokens=3, window=(5, 5)),
        dict(bigbird="global=1,window=1,random=1,block=8,seed=3"),
        dict(rope=10000.0, causal=True),
        dict(rope="theta=500,interleaved", causal=True),
        dict(sinusoidal=True),
        dict(mods=["softcap=5", "sinks=2,window=9"]),
        dict(scale=0.3, alibi=[0.5, 0.25, 0.125, 0.0625]),
    ],
    ids=lambda o: ",".join(sorted(o)),
)
def test_masks_and_positions_match_the_oracle(dev, rng, opts):
    q, k, v = qkv(rng, 1, 4, 2, 45, 61, 16)
    o, lse = dev.attention(q, k, v, **opts)
    o64, lse64 = longctx.reference.attention(q, k, v, **opts)
    assert rel_err(o, o64) < BOUND, (rng, opts)
    finite = np.isfinite(lse64)
    assert np.array_equal(np.isfinite(lse), finite)
    assert rel_err(lse[finite], lse64[finite]) < BOUND, (rng, opts)


def test_segments_and_block_masks_match_numpy(dev, rng):
    n = m = 50
    q, k, v = qkv(rng, 1, 2, 2, n, m, 8)
    seg = np.repeat([0, 1, 2], [17, 20, 13])
    o, _ = dev.attention(q, k, v, segments=seg, causal=True)
    on, _ = numpy_attention(q, k, v, causal=True, mask=seg[:, None] == seg[None, :])
    assert rel_err(o, on) < BOUND, rng
    blocks = (rng.gen.random((1, 5, 5)) < 0.5).astype(np.int8)
    blocks[0, :, 0] = 1
    o, _ = dev.attention(q, k, v, block_mask=blocks, block_size=10)
    dense = np.kron(blocks[0], np.ones((10, 10))).astype(bool)
    on, _ = numpy_attention(q, k, v, mask=dense)
    assert rel_err(o, on) < BOUND, rng


SOFTCAP = """
fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {
    return 8.0 * tanh(score / 8.0) + f32(h) * 0.25;
}
fn score_mod_grad(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {
    let t = tanh(score / 8.0);
    return 1.0 - t * t;
}
fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {
    return (q_idx + kv_idx) % 3u != 1u;
}
"""


def numpy_softcap(q, k, v):
    """SOFTCAP's rules in numpy, float64."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    b, h, n, d = q.shape
    s = np.einsum("bhnd,bhmd->bhnm", q, k) / np.sqrt(d)
    s = 8 * np.tanh(s / 8) + 0.25 * np.arange(h)[None, :, None, None]
    i, j = np.arange(n)[:, None], np.arange(k.shape[2])[None, :]
    s = np.where(((i + j) % 3 != 1)[None, None], s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return np.einsum("bhnm,bhmd->bhnd", p / p.sum(-1, keepdims=True), v)


def test_mods_from_a_string_match_numpy_forward_and_backward(dev, rng):
    q, k, v = qkv(rng, 1, 3, 3, 33, 47, 12)
    o, lse = dev.attention(q, k, v, score_mod=SOFTCAP, mask_mod=SOFTCAP)
    assert rel_err(o, numpy_softcap(q, k, v)) < BOUND, rng
    # the backward against a central finite difference of the numpy rule, one coordinate of Q
    do = rng.normal(*o.shape)
    dq, dk, dv = dev.attention_backward(q, k, v, o, lse, do, score_mod=SOFTCAP, mask_mod=SOFTCAP)
    assert dq.shape == q.shape and dk.shape == k.shape and np.all(np.isfinite(dq))
    eps = 1e-3
    for idx in [(0, 0, 5, 3), (0, 2, 30, 11)]:
        qp, qm = q.astype(np.float64), q.astype(np.float64)
        qp[idx] += eps
        qm[idx] -= eps
        fd = (np.sum(numpy_softcap(qp, k, v) * do) - np.sum(numpy_softcap(qm, k, v) * do)) / (2 * eps)
        assert abs(dq[idx] - fd) <= 2e-3 * max(1.0, abs(fd)), (idx, dq[idx], fd, rng)


@pytest.mark.parametrize("opts", [dict(causal=True), dict(window=(9, 0), alibi=True), dict(rope=True, causal=True)],
                         ids=lambda o: ",".join(sorted(o)))
def test_backward_matches_the_oracle(dev, rng, opts):
    q, k, v = qkv(rng, 1, 4, 2, 39, 58, 20)
    o, lse = dev.attention(q, k, v, **opts)
    do = rng.normal(*o.shape)
    dq, dk, dv = dev.attention_backward(q, k, v, o, lse, do, **opts)
    rq, rk, rv = longctx.reference.attention_backward(q, k, v, do, **opts)
    for name, got, want in (("dq", dq, rq), ("dk", dk, rk), ("dv", dv, rv)):
        assert got.shape == want.shape
        assert rel_err(got, want) < BOUND, (name, rng, opts)


def test_torch_style_inputs_and_dtypes_follow_the_rule(dev, rng):
    q, k, v = qkv(rng, 1, 2, 2, 19, 23, 8)
    # float32 C-contiguous arrays reach the engine as they are (no copy)
    from longctx._convert import f32

    assert f32(q, "q") is q
    assert f32(q[:, :, ::2], "q") is not q
    want, _ = dev.attention(q, k, v)
    # float64 and non-contiguous inputs are converted; lists too
    o64, _ = dev.attention(q.astype(np.float64), k.astype(np.float64), v.tolist())
    assert np.array_equal(o64, want)
    qt = np.ascontiguousarray(np.swapaxes(q, 2, 3))
    ot, _ = dev.attention(np.swapaxes(qt, 2, 3), k, v)
    assert np.array_equal(ot, want)
