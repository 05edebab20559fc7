"""longctx from Python: attention under one contract (causal, windows, ALiBi, sparse masks,
GQA/MQA, RoPE, WGSL score and mask mods), its backward, KV-cache decoding and matmul, run as
WGSL compute shaders through wgpu on any adapter, numpy in and out.

    import numpy as np, longctx
    dev = longctx.Device()
    q, k, v = (np.random.randn(8, 1000, 64).astype(np.float32) for _ in range(3))
    o, lse = dev.attention(q, k, v, causal=True, alibi=True)
    o64, _ = longctx.reference.attention(q, k, v, causal=True, alibi=True)

Shapes follow the contract (docs/DESIGN.md §1 of the repository): Q `[B, H, N, D]` or
`[H, N, D]`, K and V `[B, Hkv, M, D]` (H a multiple of Hkv); query row i sits at position
M − N + i; a fully masked row has O = 0 and LSE = −inf.

Every call releases the GIL while the GPU works; errors are the typed exceptions of
`longctx.errors` with the engine's own messages.
"""

import inspect
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import errors, reference
from ._convert import ARRAY_RULE, Window, f32, options, rope_text, sinusoidal_text
from ._native import Device as _NativeDevice
from ._native import KvCache as _NativeKvCache
from ._native import build_info, list_adapters as _list_adapters, plan_json
from .errors import (
    AccuracyError,
    DeviceError,
    DTypeError,
    InternalError,
    LimitError,
    LongctxError,
    NonFiniteError,
    OptionError,
    ShaderError,
    ShapeError,
)

__version__, __commit__ = build_info()

_ATTENTION_OPTIONS = """\
Options (the contract's; every active rule must allow a pair):
    causal: key j visible from row i iff j <= M − N + i.
    window: L (keys p−L ..= p) or (L, R) (keys p−L ..= p+R); None or -1 = unbounded side.
    alibi: True for the paper's slopes of H heads, or a sequence of H slopes.
    scale: score scale; default 1/sqrt(D).
    global_tokens: the first G positions see every key and are seen by every query.
    segments: M integer segment ids, non-decreasing; a query sees only its segment's keys.
    block_mask, block_size: [H or 1, ceil(N/B), ceil(M/B)] (nonzero = visible), B tokens.
    bigbird: "global=G,window=W,random=R,block=B,seed=S".
    rope: True (θ = 10000), θ, or "theta=θ[,interleaved][,offset=P]".
    sinusoidal: True or "[base=B][,offset=P]".
    mods: named mods, e.g. "softcap=30", "sinks=4,window=64", "prefix=16", "alibi".
    score_mod, mask_mod: WGSL source strings defining
        fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32
        fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool
      checked as untrusted code (errors: ShaderError with file and line); the backward needs
      score_mod_grad too. One string may define both.
    mod_buffers: {name: array} for the storage buffers a mod source declares.
"""


def _with_doc(extra: str):
    def wrap(f):
        f.__doc__ = inspect.cleandoc(f.__doc__ or "") + "\n\n" + extra + "\n" + ARRAY_RULE
        return f

    return wrap


class KvCache:
    """A decoder's KV cache on the device (per layer and kv head; linear, or a ring with a
    window). `append` adds a prompt's keys and values; `step` adds the new tokens' and
    attends their queries to everything cached, in a few dispatches with no copy of the cache.
    """

    def __init__(self, native: _NativeKvCache, heads: int, kv_heads: int, head_dim: int):
        self._native = native
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim

    def append(self, k: Any, v: Any, layer: int = 0) -> None:
        """Appends K and V `[Hkv, T, D]` to `layer` without attending (a prompt's prefill)."""
        self._native.append(f32(k, "k"), f32(v, "v"), layer)

    def step(self, q: Any, k: Any, v: Any, layer: int = 0) -> np.ndarray:
        """Appends the new tokens' K and V `[Hkv, T, D]` and attends their queries
        `[H, T, D]` to the whole cache (each at its position: the last T). Returns O
        `[H, T, D]`."""
        return self._native.step(f32(q, "q"), f32(k, "k"), f32(v, "v"), layer)

    def __len__(self) -> int:
        return self._native.len(0)

    def length(self, layer: int = 0) -> int:
        """Positions cached in `layer`."""
        return self._native.len(layer)

    @property
    def bytes(self) -> int:
        """Device bytes of the cache, all layers."""
        return self._native.bytes()

    @property
    def kernel(self) -> Tuple[str, int]:
        """The attend kernel the decoder runs (staged or lanes) and its cache slots per split."""
        return self._native.kernel()


class Device:
    """A GPU adapter (or the software one) with the engine's pipelines cached on it.

    adapter: a case-insensitive substring of the adapter's name (default: the best ranked,
        or LONGCTX_ADAPTER); backend: "vulkan", "metal", "dx12", "gl" (comma-separated;
        default: WGPU_BACKEND or the primary ones); profile: a preset name instead of the
        detected one; tuned: attach the autotuner's winners cached for this adapter, as the
        `longctx` command does.
    """

    def __init__(
        self,
        adapter: Optional[str] = None,
        backend: Optional[str] = None,
        profile: Optional[str] = None,
        tuned: bool = True,
    ):
        self._native = _NativeDevice(adapter, backend, profile, tuned)

    @property
    def info(self) -> Dict[str, Any]:
        """The adapter: name, backend, driver, type, the profile in use, tuned winners."""
        return self._native.info()

    @property
    def limits(self) -> Dict[str, int]:
        """The limits the engine checks before it allocates or dispatches."""
        return self._native.limits()

    @property
    def profile(self) -> str:
        """The per-adapter presets in use."""
        return self._native.profile()

    def __repr__(self) -> str:
        i = self.info
        return f"longctx.Device({i['name']!r}, {i['backend']}, profile {i['profile']!r})"

    @_with_doc(_ATTENTION_OPTIONS)
    def attention(
        self,
        q: Any,
        k: Any,
        v: Any,
        *,
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
        kernel: str = "flash",
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Attention: returns (O, LSE), O shaped like Q and LSE like Q without D (natural log;
        −inf for fully masked rows). kernel: "flash" (tiled, never N×M) or "naive"."""
        opts = options(causal, window, alibi, scale, global_tokens, segments, block_mask, block_size, bigbird,
                       rope, sinusoidal, mods, score_mod, mask_mod, mod_buffers, q_start)
        return self._native.attention(f32(q, "q"), f32(k, "k"), f32(v, "v"), kernel, opts)

    @_with_doc(_ATTENTION_OPTIONS)
    def attention_backward(
        self,
        q: Any,
        k: Any,
        v: Any,
        o: Any,
        lse: Any,
        do: Any,
        *,
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
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The backward of attention: (dQ, dK, dV) for the forward (O, LSE) that `attention`
        returned on Q, K, V with the same options, and the incoming gradient dO (shaped like
        O). dK and dV are summed over each kv head's query heads."""
        opts = options(causal, window, alibi, scale, global_tokens, segments, block_mask, block_size, bigbird,
                       rope, sinusoidal, mods, score_mod, mask_mod, mod_buffers, q_start)
        return self._native.attention_backward(
            f32(q, "q"), f32(k, "k"), f32(v, "v"), f32(o, "o"), f32(lse, "lse"), f32(do, "do"), opts
        )

    @_with_doc("")
    def moba(
        self,
        q: Any,
        k: Any,
        v: Any,
        *,
        block: int,
        topk: int,
        window: Window = None,
        alibi: Union[bool, Sequence[float]] = False,
        scale: Optional[float] = None,
        q_start: Optional[int] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MoBA (learned sparse attention, docs/DESIGN.md §1): keys cut into blocks of `block`;
        each query takes its own block and the `topk` − 1 earlier blocks of highest gate
        q · mean(K_block), chosen on the GPU, and attends causally to their keys (window and
        ALiBi apply inside). Returns (O, LSE, blocks): blocks like Q with D replaced by `topk`,
        int64, the own block first, −1 where a row had fewer to choose. Each sequence of a batch
        chooses for itself;
        no positional encoding yet."""
        opts = options(causal=True, window=window, alibi=alibi, scale=scale, q_start=q_start)
        return self._native.moba(f32(q, "q"), f32(k, "k"), f32(v, "v"), block, topk, opts)

    @_with_doc("")
    def moba_backward(
        self,
        q: Any,
        k: Any,
        v: Any,
        do: Any,
        *,
        block: int,
        topk: int,
        window: Window = None,
        alibi: Union[bool, Sequence[float]] = False,
        scale: Optional[float] = None,
        q_start: Optional[int] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """MoBA's forward and backward in one call (options as `moba`): the choice on the GPU,
        attention over the chosen blocks and its gradients for the incoming dO (shaped like
        O), with no gradient through the choice. Returns (O, LSE, dQ, dK, dV, blocks); dK and
        dV are summed over each kv head's query heads."""
        opts = options(causal=True, window=window, alibi=alibi, scale=scale, q_start=q_start)
        return self._native.moba_backward(f32(q, "q"), f32(k, "k"), f32(v, "v"), f32(do, "do"), block, topk, opts)

    @_with_doc("")
    def nsa(
        self,
        q: Any,
        k: Any,
        v: Any,
        *,
        cmp: Tuple[int, int] = (32, 16),
        slc: int = 64,
        top: int = 16,
        win: int = 512,
        gates: Any = None,
        phi: Any = None,
        scale: Optional[float] = None,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """NSA (native sparse attention, docs/DESIGN.md §1): o = g₀·o_cmp + g₁·o_slc + g₂·o_win —
        attention over compressed keys (one per `cmp` = (length, stride) window, φ-weighted),
        over the `top` blocks of `slc` keys the compressed branch ranks highest (the first and
        the two local blocks always among them; one choice per kv group) and over a causal
        window of `win` keys. `gates` like Q with D replaced by 3 (default 1/3 each), `phi`
        [Hkv, length] (default the mean). Returns (O, blocks): blocks like Q with D replaced by
        `top`, int64, −1 where a row had fewer. Causal; no mask, ALiBi or positional encoding."""
        g, p, params = _nsa_inputs(q, cmp, slc, top, win, gates, phi)
        return self._native.nsa(f32(q, "q"), f32(k, "k"), f32(v, "v"), g, p, params, options(scale=scale))

    @_with_doc("")
    def nsa_backward(
        self,
        q: Any,
        k: Any,
        v: Any,
        do: Any,
        *,
        cmp: Tuple[int, int] = (32, 16),
        slc: int = 64,
        top: int = 16,
        win: int = 512,
        gates: Any = None,
        phi: Any = None,
        scale: Optional[float] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """NSA's forward and backward (options as `nsa`) for the incoming dO, with no gradient
        through the choice. Returns (O, dQ, dK, dV, dgates, dphi, blocks); dK and dV are summed
        over each kv head's query heads, dphi over a batch's sequences."""
        g, p, params = _nsa_inputs(q, cmp, slc, top, win, gates, phi)
        return self._native.nsa_backward(
            f32(q, "q"), f32(k, "k"), f32(v, "v"), f32(do, "do"), g, p, params, options(scale=scale)
        )

    @_with_doc("")
    def dsa(
        self,
        q: Any,
        k: Any,
        v: Any,
        *,
        index_q: Any,
        index_k: Any,
        index_w: Any,
        topk: int,
        scale: Optional[float] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """DSA (DeepSeek-V3.2's sparse attention, docs/DESIGN.md §1): a lightning indexer
        scores every earlier key, I(p, s) = Σ_j w[p, j]·ReLU(index_q[p, j] · index_k[s]), and
        each query attends causally to its `topk` best keys (one choice per token, shared by the
        heads), chosen on the GPU. `index_q` [B, N, HI, DI], `index_k` [B, M, DI], `index_w`
        [B, N, HI] (without B when Q is [H, N, D]). Returns (O, LSE, keys): keys [B, N, topk]
        int64, ascending, −1 where a row sees fewer keys. No mask, ALiBi or positional encoding."""
        return self._native.dsa(
            f32(q, "q"), f32(k, "k"), f32(v, "v"), _index(index_q, index_k, index_w), topk, options(scale=scale)
        )

    @_with_doc("")
    def dsa_backward(
        self,
        q: Any,
        k: Any,
        v: Any,
        do: Any,
        *,
        index_q: Any,
        index_k: Any,
        index_w: Any,
        topk: int,
        scale: Optional[float] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """DSA's forward and backward (options as `dsa`) for the incoming dO, with no gradient
        into the indexer (the paper's sparse stage; `longctx.reference.dsa_alignment` gives the
        indexer's warm-up loss and gradient). Returns (O, LSE, dQ, dK, dV, keys); dK and dV are
        summed over each kv head's query heads."""
        return self._native.dsa_backward(
            f32(q, "q"),
            f32(k, "k"),
            f32(v, "v"),
            f32(do, "do"),
            _index(index_q, index_k, index_w),
            topk,
            options(scale=scale),
        )

    @_with_doc("")
    def dsa_alignment(
        self,
        q: Any,
        k: Any,
        *,
        index_q: Any,
        index_k: Any,
        index_w: Any,
        scale: Optional[float] = None,
    ) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]:
        """DSA's indexer warm-up on the GPU: Σ over rows of KL(p_t ‖ softmax(I)), p_t the dense
        causal attention's probabilities of (Q, K) summed over the heads and normalised, and its
        gradients (indexer inputs as `dsa`; a batch's losses summed). Returns (loss, d index_q,
        d index_k, d index_w) — `longctx.reference.dsa_alignment` in float64."""
        return self._native.dsa_alignment(
            f32(q, "q"), f32(k, "k"), _index(index_q, index_k, index_w), options(scale=scale)
        )

    @_with_doc("")
    def dsa_sparse_alignment(
        self,
        q: Any,
        k: Any,
        *,
        index_q: Any,
        index_k: Any,
        index_w: Any,
        topk: int,
        scale: Optional[float] = None,
    ) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """DSA's sparse-stage alignment on the GPU: each token's `topk` keys chosen as `dsa`
        chooses them, then Σ over rows of KL(p_S ‖ softmax_S(I)) over each row's chosen keys S,
        p_S the attention's probabilities over S averaged over the heads, and its gradients (a
        batch's losses summed). Returns (loss, d index_q, d index_k, d index_w, keys) —
        `longctx.reference.dsa_sparse_alignment` in float64 on those keys."""
        return self._native.dsa_sparse_alignment(
            f32(q, "q"), f32(k, "k"), _index(index_q, index_k, index_w), topk, options(scale=scale)
        )

    @_with_doc("")
    def matmul(self, a: Any, b: Any, bias: Any = None, activation: Optional[str] = None) -> np.ndarray:
        """C = act(A·B + bias): A `[M, K]`, B `[K, N]`, bias `[N]`; activation None, "gelu"
        (tanh) or "gelu_erf". The adapter's fastest matmul path (register-blocked on CPU
        adapters, tiled or cooperative matrices on GPUs)."""
        return self._native.matmul(f32(a, "a"), f32(b, "b"), None if bias is None else f32(bias, "bias"), activation)

    def kv_cache(
        self,
        heads: int,
        kv_heads: int,
        head_dim: int,
        capacity: int,
        *,
        window: Optional[int] = None,
        ring: bool = False,
        alibi: bool = False,
        scale: Optional[float] = None,
        layers: int = 1,
        max_step_tokens: int = 1,
        rope: Union[None, bool, float, str] = None,
        sinusoidal: Union[None, bool, str] = None,
    ) -> KvCache:
        """A KV cache of `capacity` positions per layer and kv head, with its decoder.
        window: a query at p sees keys p − window ..= p; ring: keep only the last `capacity`
        positions (needs a window, capacity ≥ window + max_step_tokens); alibi: the standard
        slopes over absolute positions; rope / sinusoidal: as in `attention` (keys encoded
        once as they enter the cache)."""
        native = self._native.kv_cache(heads, kv_heads, head_dim, capacity, window, ring, alibi, scale, layers,
                                       max_step_tokens, rope_text(rope), sinusoidal_text(sinusoidal))
        return KvCache(native, heads, kv_heads, head_dim)

    def bench(
        self,
        n: Union[int, Sequence[int]],
        *,
        m: Optional[int] = None,
        heads: int = 8,
        kv_heads: Optional[int] = None,
        d: int = 64,
        batch: int = 1,
        kernels: Sequence[str] = ("flash", "naive"),
        reps: int = 5,
        as_frame: bool = False,
        **mask: Any,
    ) -> Union[List[Dict[str, Any]], "Any"]:
        """Benchmark records, one per (N, kernel): each configuration is run once against the
        float64 oracle, then timed (`reps` runs after a warm-up; medians, GFLOP/s, % of the
        adapter's FMA probe), as `longctx bench --json` writes them. A configuration beyond
        the device's limits is a record with `skipped` set. `mask` takes `attention`'s
        options (causal=True, window=…). as_frame: a pandas DataFrame (pandas must be
        installed)."""
        ns = [int(n)] if isinstance(n, (int, np.integer)) else [int(x) for x in n]
        opts = options(**mask)
        records = []
        for size in ns:
            shape = (batch, heads, kv_heads or heads, size, m or size, d)
            for kernel in kernels:
                records.append(json.loads(self._native.bench_record(shape, kernel, reps, opts)))
        if as_frame:
            import pandas  # noqa: PLC0415 (optional dependency)

            return pandas.DataFrame.from_records(records)
        return records


def list_adapters(backend: Optional[str] = None) -> List[Dict[str, str]]:
    """The adapters wgpu sees (name, backend, type, driver), for `backend` or the default ones."""
    return _list_adapters(backend)


def plan(model: str, n: int, batch: int = 1, bytes_per_element: int = 2) -> Dict[str, Any]:
    """The memory plan of a model preset ("llama-7b", "llama2-70b", "mpt-7b-65k") at context
    `n`: weights, KV cache (as the model has it, MHA, GQA-8, MQA), training activations with
    and without the N×N matrix, optimiser state, and the GPUs it fits (`longctx plan`)."""
    return json.loads(plan_json(model, int(n), int(batch), int(bytes_per_element)))


__all__ = [
    "Device",
    "KvCache",
    "list_adapters",
    "plan",
    "reference",
    "errors",
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


def _index(index_q: Any, index_k: Any, index_w: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DSA's indexer inputs as float32 arrays."""
    return f32(index_q, "index_q"), f32(index_k, "index_k"), f32(index_w, "index_w")


def _nsa_inputs(
    q: Any, cmp: Tuple[int, int], slc: int, top: int, win: int, gates: Any, phi: Any
) -> Tuple[np.ndarray, Optional[np.ndarray], Tuple[int, int, int, int, int]]:
    """NSA's gates (default 1/3 each, shaped like Q with D replaced by 3), φ (or None: the
    mean) and parameters (length, stride, block, top, window) as the native layer takes them."""
    if gates is None:
        gates = np.full(np.shape(q)[:-1] + (3,), 1.0 / 3.0, dtype=np.float32)
    length, stride = cmp
    return f32(gates, "gates"), None if phi is None else f32(phi, "phi"), (length, stride, slc, top, win)
