# %% [markdown]
# # Causal + ALiBi attention with longctx, next to numpy
#
# Run it as a script (`python python/examples/causal_alibi.py`) or cell by cell in Jupyter or
# VS Code (the `# %%` markers). It computes causal attention with ALiBi biases on the engine,
# checks it against numpy and the float64 oracle, draws one head's attention map (when
# matplotlib is installed) and times longctx against numpy's materialised attention.

# %%
import time

import numpy as np

import longctx

dev = longctx.Device()
print(dev)

rng = np.random.default_rng(0)
H, N, D = 4, 1024, 64
q, k, v = (rng.standard_normal((H, N, D), dtype=np.float32) for _ in range(3))

# %% [markdown]
# ## The engine's answer, checked

# %%
o, lse = dev.attention(q, k, v, causal=True, alibi=True)


def numpy_attention(q, k, v, slopes):
    """Materialised causal attention with ALiBi in float32 numpy: what the engine avoids."""
    n = q.shape[1]
    s = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
    distance = np.abs(np.arange(n)[:, None] - np.arange(n)[None, :]).astype(np.float32)
    s -= slopes[:, None, None] * distance
    s = np.where(np.tril(np.ones((n, n), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p @ v, p


slopes = np.array([2 ** (-8 * (i + 1) / H) for i in range(H)], dtype=np.float32)  # ALiBi's for H heads
o_np, p_np = numpy_attention(q, k, v, slopes)
o64, _ = longctx.reference.attention(q, k, v, causal=True, alibi=True)
rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)  # noqa: E731
print(f"longctx vs the float64 oracle: {rel(o, o64):.2e}")
print(f"numpy float32 vs the float64 oracle: {rel(o_np, o64):.2e}")

# %% [markdown]
# ## One head's attention map
# ALiBi's steepest slope (head 0) keeps attention near the diagonal; the shallowest looks far back.

# %%
try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, h in zip(axes, (0, H - 1)):
        ax.imshow(np.log10(p_np[h, :256, :256] + 1e-9), cmap="magma", vmin=-6, vmax=0)
        ax.set_title(f"head {h}, slope {slopes[h]:.3g}: log10 P")
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.tight_layout()
    fig.savefig("attention_map.png", dpi=100)
    print("wrote attention_map.png")
except ImportError:
    print("matplotlib is not installed: no attention map")

# %% [markdown]
# ## Timing (medians of 5; the engine's first call compiles its pipelines)

# %%


def median_ms(f, reps=5):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return 1e3 * float(np.median(times))


ms_engine = median_ms(lambda: dev.attention(q, k, v, causal=True, alibi=True))
ms_numpy = median_ms(lambda: numpy_attention(q, k, v, slopes))
print(f"H={H} N={N} D={D} causal+ALiBi: longctx {ms_engine:.1f} ms, numpy {ms_numpy:.1f} ms "
      f"on {dev.info['name']}")
