"""The float64 oracle every kernel is checked against (the library's own, not a re-derivation):
attention and its backward under the same options as `Device.attention`, on the CPU."""

from typing import Any, Tuple

import numpy as np

from ._convert import ARRAY_RULE, f32, options
from ._native import (
    reference_attention,
    reference_backward,
    reference_dsa,
    reference_dsa_alignment,
    reference_dsa_sparse_alignment,
    reference_dsa_backward,
    reference_moba,
    reference_moba_backward,
    reference_nsa,
    reference_nsa_backward,
)


def attention(q: Any, k: Any, v: Any, **opts: Any) -> Tuple[np.ndarray, np.ndarray]:
    """(O, LSE) in float64 for float32 inputs (Q, K, V rounded to float32 first, as the
    kernels read them). Options as `Device.attention`."""
    return reference_attention(f32(q, "q"), f32(k, "k"), f32(v, "v"), options(**opts))


def attention_backward(q: Any, k: Any, v: Any, do: Any, **opts: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dQ, dK, dV) in float64 for the incoming gradient dO. Options as `Device.attention`."""
    return reference_backward(f32(q, "q"), f32(k, "k"), f32(v, "v"), f32(do, "do"), options(**opts))


def moba(q: Any, k: Any, v: Any, *, block: int, topk: int, **opts: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MoBA in float64: the oracle's own choice of blocks, then attention over them; returns
    (O, LSE, blocks) as `Device.moba`. Options as `Device.moba` (causal is implied)."""
    return reference_moba(f32(q, "q"), f32(k, "k"), f32(v, "v"), block, topk, options(causal=True, **opts))


attention.__doc__ = (attention.__doc__ or "") + "\n\n" + ARRAY_RULE
attention_backward.__doc__ = (attention_backward.__doc__ or "") + "\n\n" + ARRAY_RULE


def moba_backward(
    q: Any, k: Any, v: Any, do: Any, *, block: int, topk: int, **opts: Any
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The float64 oracle's MoBA forward and backward: its own choice, then (O, LSE, dQ, dK,
    dV, blocks) as `Device.moba_backward`. Options as `Device.moba`."""
    return reference_moba_backward(
        f32(q, "q"), f32(k, "k"), f32(v, "v"), f32(do, "do"), block, topk, options(causal=True, **opts)
    )


def nsa(q: Any, k: Any, v: Any, **params: Any) -> Tuple[np.ndarray, np.ndarray]:
    """NSA in float64: the oracle's own choice, then the three branches and the gated mix;
    returns (O, blocks) as `Device.nsa`. Parameters as `Device.nsa`."""
    from . import _nsa_inputs

    scale = params.pop("scale", None)
    g, p, nsa_params = _nsa_inputs(q, **_nsa_defaults(params))
    return reference_nsa(f32(q, "q"), f32(k, "k"), f32(v, "v"), g, p, nsa_params, options(scale=scale))


def nsa_backward(q: Any, k: Any, v: Any, do: Any, **params: Any) -> Tuple[np.ndarray, ...]:
    """The float64 oracle's NSA forward and backward on its own choice: (O, dQ, dK, dV,
    dgates, dphi, blocks) as `Device.nsa_backward`. Parameters as `Device.nsa`."""
    from . import _nsa_inputs

    scale = params.pop("scale", None)
    g, p, nsa_params = _nsa_inputs(q, **_nsa_defaults(params))
    return reference_nsa_backward(
        f32(q, "q"), f32(k, "k"), f32(v, "v"), f32(do, "do"), g, p, nsa_params, options(scale=scale)
    )


def dsa(
    q: Any, k: Any, v: Any, *, index_q: Any, index_k: Any, index_w: Any, topk: int, scale: Any = None
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DSA in float64: the oracle's own choice of keys, then attention over them; returns
    (O, LSE, keys) as `Device.dsa`."""
    from . import _index

    ix = _index(index_q, index_k, index_w)
    return reference_dsa(f32(q, "q"), f32(k, "k"), f32(v, "v"), ix, topk, options(causal=True, scale=scale))


def dsa_backward(
    q: Any, k: Any, v: Any, do: Any, *, index_q: Any, index_k: Any, index_w: Any, topk: int, scale: Any = None
) -> Tuple[np.ndarray, ...]:
    """The float64 oracle's DSA forward and backward on its own choice: (O, LSE, dQ, dK, dV,
    keys) as `Device.dsa_backward`."""
    from . import _index

    ix = _index(index_q, index_k, index_w)
    return reference_dsa_backward(
        f32(q, "q"), f32(k, "k"), f32(v, "v"), f32(do, "do"), ix, topk, options(causal=True, scale=scale)
    )


def dsa_alignment(
    q: Any, k: Any, *, index_q: Any, index_k: Any, index_w: Any, scale: Any = None
) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """DSA's indexer warm-up in float64 (one sequence): Σ over rows of KL(p_t ‖ softmax(I)),
    p_t the dense causal attention's probabilities of (Q, K) summed over the heads and
    normalised, and its gradients: (loss, d index_q, d index_k, d index_w)."""
    from . import _index

    ix = _index(index_q, index_k, index_w)
    return reference_dsa_alignment(f32(q, "q"), f32(k, "k"), ix, options(causal=True, scale=scale))


def dsa_sparse_alignment(
    q: Any, k: Any, keys: Any, *, index_q: Any, index_k: Any, index_w: Any, scale: Any = None
) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """DSA's sparse-stage alignment in float64 (one sequence) on given `keys` [N, k] (−1 for
    none; e.g. `Device.dsa_sparse_alignment`'s): Σ over rows of KL(p_S ‖ softmax_S(I)) over
    each row's keys S and its gradients: (loss, d index_q, d index_k, d index_w)."""
    from . import _index

    ix = _index(index_q, index_k, index_w)
    keys = np.ascontiguousarray(np.asarray(keys), dtype=np.int64)
    return reference_dsa_sparse_alignment(f32(q, "q"), f32(k, "k"), keys, ix, options(causal=True, scale=scale))


def _nsa_defaults(params: dict) -> dict:
    """`Device.nsa`'s keyword defaults, for the oracle's functions."""
    out = dict(cmp=(32, 16), slc=64, top=16, win=512, gates=None, phi=None)
    unknown = set(params) - set(out)
    if unknown:
        raise TypeError(f"unknown NSA parameters: {sorted(unknown)}")
    out.update(params)
    return out
