"""The exceptions longctx raises. Each carries the library's own message (the same text the
`longctx` command prints), which names the numbers involved."""

from typing import Optional


class LongctxError(Exception):
    """Every error of longctx derives from this one."""


class ShapeError(LongctxError, ValueError):
    """Tensors whose shapes or lengths do not agree with the call (rank, sizes, head groups,
    head dim, empty dimensions)."""


class NonFiniteError(LongctxError, ValueError):
    """An input holds NaN or an infinity (the message gives the tensor and the flat index)."""


class DTypeError(LongctxError, TypeError):
    """An array whose dtype cannot be read as floating point (integers, booleans, complex,
    objects)."""


class OptionError(LongctxError, ValueError):
    """An option outside its allowed values."""


class LimitError(LongctxError):
    """The call needs more than the device allows (a binding, a buffer, workgroup memory, a
    dispatch, host memory, an adapter's loop cap). Checked before anything is allocated."""


class DeviceError(LongctxError, RuntimeError):
    """No adapter, or an adapter that refused the device or lacks a feature."""


class AccuracyError(LongctxError):
    """A result further from the float64 oracle than its bound."""


class InternalError(LongctxError, RuntimeError):
    """A bug in longctx (a Rust panic, caught at the boundary). Please report it."""


class ShaderError(LongctxError):
    """WGSL that the engine or the device rejected: a mod with a syntax or type error, a mod
    whose loops ran past their step budget. `file` and `line` point into the user's source
    where the message names them."""

    def __init__(self, message: str, file: Optional[str] = None, line: Optional[int] = None):
        super().__init__(message)
        self.file = file
        self.line = line


__all__ = [
    "LongctxError",
    "ShapeError",
    "NonFiniteError",
    "DTypeError",
    "OptionError",
    "LimitError",
    "DeviceError",
    "AccuracyError",
    "InternalError",
    "ShaderError",
]
