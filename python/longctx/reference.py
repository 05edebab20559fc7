"""The float64 oracle every kernel is checked against (the library's own, not a re-derivation):
attention and its backward under the same options as `Device.attention`, on the CPU."""

from typing import Any, Tuple

import numpy as np

from ._convert import ARRAY_RULE, f32, options
from ._native import reference_attention, reference_backward, reference_moba, reference_moba_backward


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
