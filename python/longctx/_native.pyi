# Type stubs of the extension module (python/src/lib.rs); the public API is the Python layer
# of this package, which converts arrays and options before calling these.
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

class KvCache:
    def append(self, k: np.ndarray, v: np.ndarray, layer: int = 0) -> None: ...
    def step(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, layer: int = 0) -> np.ndarray: ...
    def len(self, layer: int = 0) -> int: ...
    def bytes(self) -> int: ...
    def kernel(self) -> Tuple[str, int]: ...

class Device:
    def __init__(
        self, adapter: Optional[str] = None, backend: Optional[str] = None, profile: Optional[str] = None, tuned: bool = True
    ) -> None: ...
    def info(self) -> Dict[str, Any]: ...
    def limits(self) -> Dict[str, int]: ...
    def profile(self) -> str: ...
    def attention(
        self, q: np.ndarray, k: np.ndarray, v: np.ndarray, kernel: str, opts: Dict[str, Any]
    ) -> Tuple[np.ndarray, np.ndarray]: ...
    def attention_backward(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        o: np.ndarray,
        lse: np.ndarray,
        d_o: np.ndarray,
        opts: Dict[str, Any],
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def moba(
        self, q: np.ndarray, k: np.ndarray, v: np.ndarray, block: int, topk: int, opts: Dict[str, Any]
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def moba_backward(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        d_o: np.ndarray,
        block: int,
        topk: int,
        opts: Dict[str, Any],
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
    def nsa(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        gates: np.ndarray,
        phi: Optional[np.ndarray],
        nsa: Tuple[int, int, int, int, int],
        opts: Dict[str, Any],
    ) -> Tuple[np.ndarray, np.ndarray]: ...
    def nsa_backward(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        d_o: np.ndarray,
        gates: np.ndarray,
        phi: Optional[np.ndarray],
        nsa: Tuple[int, int, int, int, int],
        opts: Dict[str, Any],
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
    def dsa(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        index: Tuple[np.ndarray, np.ndarray, np.ndarray],
        topk: int,
        opts: Dict[str, Any],
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
    def dsa_backward(
        self,
        q: np.ndarray,
        k: np.ndarray,
        v: np.ndarray,
        d_o: np.ndarray,
        index: Tuple[np.ndarray, np.ndarray, np.ndarray],
        topk: int,
        opts: Dict[str, Any],
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
    def dsa_alignment(
        self,
        q: np.ndarray,
        k: np.ndarray,
        index: Tuple[np.ndarray, np.ndarray, np.ndarray],
        opts: Dict[str, Any],
    ) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]: ...
    def dsa_sparse_alignment(
        self,
        q: np.ndarray,
        k: np.ndarray,
        index: Tuple[np.ndarray, np.ndarray, np.ndarray],
        topk: int,
        opts: Dict[str, Any],
    ) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
    def matmul(
        self, a: np.ndarray, b: np.ndarray, bias: Optional[np.ndarray] = None, activation: Optional[str] = None
    ) -> np.ndarray: ...
    def bench_record(
        self, shape: Tuple[int, int, int, int, int, int], kernel: str, reps: int, opts: Dict[str, Any]
    ) -> str: ...
    def kv_cache(
        self,
        heads: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        window: Optional[int] = None,
        ring: bool = False,
        alibi: bool = False,
        scale: Optional[float] = None,
        layers: int = 1,
        max_step_tokens: int = 1,
        rope: Optional[str] = None,
        sinusoidal: Optional[str] = None,
    ) -> KvCache: ...

def reference_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, opts: Dict[str, Any]
) -> Tuple[np.ndarray, np.ndarray]: ...
def reference_backward(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, d_o: np.ndarray, opts: Dict[str, Any]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def reference_moba(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, block: int, topk: int, opts: Dict[str, Any]
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def reference_moba_backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    d_o: np.ndarray,
    block: int,
    topk: int,
    opts: Dict[str, Any],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
def plan_json(model: str, n: int, batch: int = 1, bytes_per_element: int = 2) -> str: ...
def list_adapters(backend: Optional[str] = None) -> List[Dict[str, str]]: ...
def build_info() -> Tuple[str, str]: ...
def reference_nsa(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    gates: np.ndarray,
    phi: Optional[np.ndarray],
    nsa: Tuple[int, int, int, int, int],
    opts: Dict[str, Any],
) -> Tuple[np.ndarray, np.ndarray]: ...
def reference_dsa(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    index: Tuple[np.ndarray, np.ndarray, np.ndarray],
    topk: int,
    opts: Dict[str, Any],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def reference_dsa_backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    d_o: np.ndarray,
    index: Tuple[np.ndarray, np.ndarray, np.ndarray],
    topk: int,
    opts: Dict[str, Any],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
def reference_dsa_alignment(
    q: np.ndarray,
    k: np.ndarray,
    index: Tuple[np.ndarray, np.ndarray, np.ndarray],
    opts: Dict[str, Any],
) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]: ...
def reference_dsa_sparse_alignment(
    q: np.ndarray,
    k: np.ndarray,
    keys: np.ndarray,
    index: Tuple[np.ndarray, np.ndarray, np.ndarray],
    opts: Dict[str, Any],
) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]: ...
def reference_nsa_backward(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    d_o: np.ndarray,
    gates: np.ndarray,
    phi: Optional[np.ndarray],
    nsa: Tuple[int, int, int, int, int],
    opts: Dict[str, Any],
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
