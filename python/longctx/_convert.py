"""How Python values become the engine's inputs: arrays by one stated rule, attention options
into the normalised dict the extension reads."""

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .errors import DTypeError, OptionError, ShapeError

ARRAY_RULE = """\
Arrays: anything numpy can read (numpy arrays, PyTorch CPU tensors via `__array__`, nested
lists). A float32 C-contiguous array is read in place, without a copy. Another floating dtype
(float16, float64, …) is cast to float32 and a non-contiguous array is copied first; values
beyond float32's range become infinities and are refused (NonFiniteError). Integer, boolean,
complex and object arrays are refused (DTypeError). Outputs are new float32 arrays."""

Window = Union[int, Tuple[Optional[int], Optional[int]], None]


def f32(x: Any, name: str) -> np.ndarray:
    """`x` as a float32 C-contiguous array, by ARRAY_RULE."""
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise DTypeError(f"{name}: dtype {a.dtype} is not floating point; pass float32 (or another float dtype, cast to float32)")
    with np.errstate(over="ignore"):  # values past float32's range become inf: refused by the engine
        return np.ascontiguousarray(a, dtype=np.float32)


def _ids(x: Any, name: str) -> list:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ShapeError(f"{name}: ids must be a 1-D array, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise DTypeError(f"{name}: ids must be integers, got dtype {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 0xFFFFFFFF):
        raise OptionError(f"{name}: ids must lie in 0..=4294967295")
    return a.astype(np.uint32).tolist()


def _window(w: Window) -> Optional[str]:
    if w is None:
        return None
    if isinstance(w, (int, np.integer)) and not isinstance(w, bool):
        left, right = int(w), 0
    else:
        try:
            left, right = w  # type: ignore[misc]
        except (TypeError, ValueError):
            raise OptionError(f"window {w!r}: give L (keys p-L ..= p) or a pair (L, R); None or -1 = unbounded side") from None
    side = lambda v: "-1" if v is None else str(int(v))  # noqa: E731
    return f"{side(left)},{side(right)}"


def rope_text(rope: Union[None, bool, float, str]) -> Optional[str]:
    if rope is None or rope is False:
        return None
    if rope is True:
        return "theta=10000"
    if isinstance(rope, str):
        return rope
    return f"theta={float(rope)!r}"


def sinusoidal_text(s: Union[None, bool, str]) -> Optional[str]:
    if s is None or s is False:
        return None
    if s is True:
        return ""
    return str(s)


def options(
    causal: bool = False,
    window: Window = None,
    alibi: Union[bool, Sequence[float]] = False,
    scale: Optional[float] = None,
    global_tokens: Optional[int] = None,
    segments: Any = None,
    block_mask: Any = None,
    block_size: Optional[int] = None,
    bigbird: Optional[str] = None,
    rope: Union[None, bool, float, str] = None,
    sinusoidal: Union[None, bool, str] = None,
    mods: Union[None, str, Sequence[str]] = None,
    score_mod: Optional[str] = None,
    mask_mod: Optional[str] = None,
    mod_buffers: Optional[Mapping[str, Any]] = None,
    q_start: Optional[int] = None,
) -> Dict[str, Any]:
    """The attention options as the extension reads them (every key present)."""
    if isinstance(alibi, bool) or alibi is None:
        alibi_mode, slopes = ("standard" if alibi else "off"), None
    else:
        alibi_mode, slopes = "custom", [float(s) for s in np.asarray(alibi, dtype=np.float64).ravel()]
    mask = None
    if block_mask is not None:
        a = np.asarray(block_mask)
        if a.ndim != 3:
            raise ShapeError(f"block_mask must be [H or 1, ceil(N/B), ceil(M/B)], got shape {a.shape}")
        mask = (list(a.shape), (a != 0).astype(np.float32).ravel().tolist())
    if isinstance(mods, str):
        mods = [mods]
    buffers = []
    for name, values in (mod_buffers or {}).items():
        a = np.asarray(values)
        if a.dtype.kind not in "iuf":
            raise DTypeError(f"mod_buffers[{name!r}]: dtype {a.dtype} is not numeric")
        buffers.append((str(name), a.astype(np.float64).ravel().tolist()))
    for what, text in (("score_mod", score_mod), ("mask_mod", mask_mod)):
        if text is not None and not isinstance(text, str):
            raise OptionError(f"{what}: give the WGSL source as a string")
    return {
        "causal": bool(causal),
        "window": _window(window),
        "alibi": alibi_mode,
        "slopes": slopes,
        "scale": None if scale is None else float(scale),
        "global_tokens": None if global_tokens is None else int(global_tokens),
        "segments": None if segments is None else _ids(segments, "segments"),
        "block_mask": mask,
        "block_size": None if block_size is None else int(block_size),
        "bigbird": bigbird,
        "rope": rope_text(rope),
        "sinusoidal": sinusoidal_text(sinusoidal),
        "mods": list(mods or []),
        "score_mod": score_mod,
        "mask_mod": mask_mod,
        "mod_buffers": buffers,
        "q_start": None if q_start is None else int(q_start),
    }
