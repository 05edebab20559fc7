#!/usr/bin/env python3
"""One-shot check of longctx on a machine with a GPU and no Rust toolchain.

Runs a prebuilt `longctx` binary (carry a stripped release build: `strip -o longctx
target/release/longctx`): `info`, `selftest`, an attention suite at A100 scale (flash forward
on causal, window, ALiBi, GQA; decode at 32K–128K; matmul 4096³; backward), every preset
against the tuned winners, and the same attention shapes through the peer a user would pick —
PyTorch's `scaled_dot_product_attention` (flash and memory-efficient backends, f16 and f32) and
FlexAttention when `import torch` works. Every record is JSON under the output folder;
`summary.md` holds one table of ratios (same run, same shapes).

`--small` runs the same flow on a software adapter at small sizes with numpy (f32, the score
matrix materialised) as the peer, so it can be tested without a GPU.

In the same process, when the Python package imports (installed, or `--wheel PATH` installs a
carried wheel into the output folder), the same shapes run through `longctx.Device.attention`
beside the peers: host to host (upload, run, read back), where the peers' tensors stay on
the device.

Usage: scripts/device-check [--small] [--bin PATH] [--out DIR] [--wheel PATH]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

# (label, N, D, H, Hkv, causal, window, alibi): the attention shapes both sides run
GPU_SHAPES = [
    ("causal", 4096, 64, 16, 16, True, None, False),
    ("causal", 16384, 64, 16, 16, True, None, False),
    ("causal", 65536, 64, 16, 16, True, None, False),
    ("causal", 16384, 128, 16, 16, True, None, False),
    ("causal gqa", 16384, 128, 32, 8, True, None, False),
    ("causal alibi", 16384, 64, 16, 16, True, None, True),
    ("window 1024", 65536, 64, 16, 16, True, 1024, False),
]
SMALL_SHAPES = [
    ("causal", 512, 64, 4, 4, True, None, False),
    ("causal", 2048, 64, 4, 4, True, None, False),
    ("causal gqa", 1024, 64, 8, 2, True, None, False),
    ("causal alibi", 1024, 64, 4, 4, True, None, True),
    ("window 128", 2048, 64, 4, 4, True, 128, False),
]


def log(msg):
    print(msg, flush=True)


class Runner:
    def __init__(self, binary, out, env):
        self.binary, self.out, self.env = binary, out, env
        self.steps = []

    def run(self, name, args, timeout):
        """Runs `longctx ARGS`, keeps its output in OUT/NAME.txt; returns (ok, stdout)."""
        t0 = time.time()
        try:
            p = subprocess.run([self.binary, *args], capture_output=True, text=True, timeout=timeout, env=self.env)
            ok, text = p.returncode == 0, p.stdout + p.stderr
        except subprocess.TimeoutExpired as e:
            ok, text = False, f"timed out after {timeout} s\n{e.stdout or ''}"
        secs = time.time() - t0
        with open(os.path.join(self.out, f"{name}.txt"), "w") as f:
            f.write(f"$ longctx {' '.join(args)}\n{text}")
        self.steps.append((name, ok, secs))
        log(f"== {name} ({'ok' if ok else 'FAILED'}, {secs:.1f} s): longctx {' '.join(args)}")
        for line in text.strip().splitlines()[-12:]:
            log("   " + line)
        return ok, text


def mask_args(causal, window, alibi):
    args = []
    if causal:
        args.append("--causal")
    if window:
        args += ["--window", f"{window},0"]
    if alibi:
        args.append("--alibi")
    return args


def longctx_suite(r, small, shapes):
    """Flash forward per shape (and naive at small sizes), decode, matmul, backward, presets."""
    records = []
    for i, (label, n, d, h, hkv, causal, window, alibi) in enumerate(shapes):
        path = os.path.join(r.out, f"bench-{i}.json")
        kernels = "flash,naive" if small or n <= 4096 else "flash"
        args = ["bench", "--n", str(n), "--d", str(d), "--heads", str(h), "--kv-heads", str(hkv), "--kernels", kernels,
                "--reps", "3" if small else "5", "--no-traffic", "--json", path, *mask_args(causal, window, alibi),
                # on a GPU also f16 storage and f16 tensor cores (flash-f16, flash-f16-tc rows)
                *([] if small else ["--f16", "--tensor-cores", "all"])]
        ok, _ = r.run(f"bench-{i}", args, timeout=600)
        if ok and os.path.exists(path):
            for rec in json.load(open(path)):
                rec["shape_label"] = label
                records.append(rec)
    ctx = ["4k"] if small else ["32k", "128k"]
    for c in ctx:
        r.run(f"decode-{c}", ["decode", "--context", c, "--steps", "8" if small else "32", "--heads", "32",
                              "--kv-heads", "32,8,1", "--d", "128", "--json", os.path.join(r.out, f"decode-{c}.json")],
              timeout=600)
    # every matmul path the adapter can run: vec4 tiles, cooperative matrices f32 / f16 inputs
    r.run("matmul", ["bench", "--matmul", "512" if small else "4096", "--tensor-cores", "all"], timeout=600)
    n_bwd = "1k" if small else "16k"
    r.run("backward", ["bench", "--backward", "--n", n_bwd, "--causal", "--heads", "4" if small else "16",
                       "--reps", "2" if small else "3", "--json", os.path.join(r.out, "backward.json")], timeout=600)
    # every preset, then the tuned winners, on one shape
    label, n, d, h, hkv, causal, window, alibi = shapes[1]
    ok, text = r.run("profiles", ["info", "--profiles"], timeout=120)
    names = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.replace("│", "|").replace("┆", "|").split("|") if c.strip()]
        if cells and cells[0].isascii() and cells[0].replace("-", "").isalnum() and cells[0] not in ("name", "profile"):
            names.append(cells[0])
    presets = {}
    base = ["bench", "--n", str(n), "--d", str(d), "--heads", str(h), "--kernels", "flash", "--reps", "3",
            "--no-traffic", "--causal"]
    for p in names:
        path = os.path.join(r.out, f"preset-{p}.json")
        ok, _ = r.run(f"preset-{p}", ["--profile", p, "--untuned", *base, "--json", path], timeout=300)
        if ok and os.path.exists(path):
            presets[p] = json.load(open(path))[0]
    r.run("tune", ["tune", "--quick", "--n", str(min(n, 4096)), "--d", str(d), "--context", "4k" if small else "32k"],
          timeout=600)
    path = os.path.join(r.out, "preset-tuned.json")
    ok, _ = r.run("preset-tuned", [*base, "--json", path], timeout=300)
    if ok and os.path.exists(path):
        presets["tuned"] = json.load(open(path))[0]
    return records, presets


def time_it(fn, reps, sync=lambda: None):
    fn()
    sync()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def alibi_slopes(h):
    import math

    def pow2(n):
        return [2 ** (-8 * (i + 1) / n) for i in range(n)]

    if h & (h - 1) == 0:
        return pow2(h)
    c = 2 ** int(math.floor(math.log2(h)))
    return pow2(c) + pow2(2 * c)[0::2][: h - c]


def numpy_peer(shapes):
    """f32 attention with the score matrix materialised: what a CPU user would write."""
    import numpy as np

    out = []
    for label, n, d, h, hkv, causal, window, alibi in shapes:
        rng = np.random.default_rng(0)
        q = rng.uniform(-1, 1, (h, n, d)).astype(np.float32)
        k = rng.uniform(-1, 1, (hkv, n, d)).astype(np.float32)
        v = rng.uniform(-1, 1, (hkv, n, d)).astype(np.float32)
        i = np.arange(n)[:, None]
        j = np.arange(n)[None, :]
        visible = np.ones((n, n), bool)
        if causal:
            visible &= j <= i
        if window:
            visible &= j >= i - window
        bias = np.where(visible, 0.0, -np.inf).astype(np.float32)
        slopes = np.array(alibi_slopes(h), np.float32) if alibi else None
        dist = -np.abs(i - j).astype(np.float32)
        g = h // hkv

        def run():
            o = np.empty_like(q)
            for x in range(h):
                s = (q[x] @ k[x // g].T) * (1.0 / np.sqrt(d)) + bias
                if slopes is not None:
                    s = s + slopes[x] * dist
                s = np.exp(s - s.max(axis=1, keepdims=True))
                o[x] = (s / s.sum(axis=1, keepdims=True)) @ v[x // g]
            return o

        out.append({"peer": "numpy f32 (materialised)", "shape_label": label, "n": n, "d": d, "heads": h,
                    "kv_heads": hkv, "ms": time_it(run, 3)})
    return out


def torch_peer(shapes):
    """PyTorch SDPA (flash / memory-efficient backends, f16 and f32) and FlexAttention."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = "cuda"
    sync = torch.cuda.synchronize
    out = []
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention)
    except Exception:  # noqa: BLE001 — FlexAttention is optional
        flex = None
    for label, n, d, h, hkv, causal, window, alibi in shapes:
        for dtype in (torch.float16, torch.float32):
            q = torch.rand(1, h, n, d, device=dev, dtype=dtype) * 2 - 1
            k = torch.rand(1, hkv, n, d, device=dev, dtype=dtype) * 2 - 1
            v = torch.rand(1, hkv, n, d, device=dev, dtype=dtype) * 2 - 1
            name = "f16" if dtype == torch.float16 else "f32"
            for backend, bname in ((SDPBackend.FLASH_ATTENTION, "flash"), (SDPBackend.EFFICIENT_ATTENTION, "mem-efficient")):
                if window or alibi:
                    continue  # SDPA's fused backends take only causal; FlexAttention covers the rest
                try:
                    with sdpa_kernel(backend):
                        ms = time_it(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=hkv != h), 5, sync)
                    out.append({"peer": f"torch sdpa {bname} {name}", "shape_label": label, "n": n, "d": d, "heads": h,
                                "kv_heads": hkv, "ms": ms})
                except Exception as e:  # noqa: BLE001 — a backend may refuse a dtype or shape
                    out.append({"peer": f"torch sdpa {bname} {name}", "shape_label": label, "n": n, "d": d, "heads": h,
                                "kv_heads": hkv, "ms": None, "skipped": str(e).splitlines()[0][:120]})
            if flex is not None:
                slopes = torch.tensor(alibi_slopes(h), device=dev, dtype=torch.float32)

                def mask_mod(b, hh, qi, kv):
                    ok = kv <= qi if causal else qi >= 0
                    if window:
                        ok = ok & (kv >= qi - window)
                    return ok

                def score_mod(s, b, hh, qi, kv):
                    return s - slopes[hh] * (qi - kv).abs() if alibi else s

                try:
                    bm = create_block_mask(mask_mod, 1, 1, n, n, device=dev)
                    ms = time_it(lambda: flex(q, k, v, score_mod=score_mod, block_mask=bm, enable_gqa=hkv != h), 5, sync)
                    out.append({"peer": f"torch flex {name}", "shape_label": label, "n": n, "d": d, "heads": h,
                                "kv_heads": hkv, "ms": ms})
                except Exception as e:  # noqa: BLE001
                    out.append({"peer": f"torch flex {name}", "shape_label": label, "n": n, "d": d, "heads": h,
                                "kv_heads": hkv, "ms": None, "skipped": str(e).splitlines()[0][:120]})
    return out


def python_package(shapes):
    """The shapes through the Python package in this process: host to host, checked first
    against the float64 oracle on the smallest shape."""
    import numpy as np

    import longctx

    dev = longctx.Device()
    log(f"== python package {longctx.__version__} ({longctx.__commit__}) on {dev.info['name']}")
    out = []
    for label, n, d, h, hkv, causal, window, alibi in shapes:
        rng = np.random.default_rng(0)
        q = rng.uniform(-1, 1, (h, n, d)).astype(np.float32)
        k = rng.uniform(-1, 1, (hkv, n, d)).astype(np.float32)
        v = rng.uniform(-1, 1, (hkv, n, d)).astype(np.float32)
        opts = dict(causal=causal, window=(window, 0) if window else None, alibi=alibi)
        rec = {"peer": "longctx python (host to host)", "shape_label": label, "n": n, "d": d, "heads": h, "kv_heads": hkv}
        try:
            rec["ms"] = time_it(lambda: dev.attention(q, k, v, **opts), 3)
        except longctx.LongctxError as e:
            rec["skipped"] = str(e)
        out.append(rec)
    return out


def summary(records, peers, presets, steps):
    lines = ["# longctx device check", "", "| step | result | s |", "|---|---|---|"]
    lines += [f"| {n} | {'ok' if ok else 'FAILED'} | {s:.1f} |" for n, ok, s in steps]
    lines += ["", "## Attention: longctx flash against the peers (same run, same shapes; ratio = peer ms / longctx ms, > 1 means longctx is faster)", ""]
    peer_names = sorted({p["peer"] for p in peers})
    lines.append("| shape | N | D | H/Hkv | kernel | longctx ms | GFLOP/s | % FMA probe | rel err | " + " | ".join(peer_names) + " |")
    lines.append("|" + "---|" * (9 + len(peer_names)))
    for rec in records:
        # flash (f32), and on a GPU flash-f16 (f16 storage) and flash-f16-tc (tensor cores)
        if not rec.get("kernel", "").startswith("flash") or rec.get("ms_median") is None:
            continue
        key = (rec["shape_label"], rec["n"], rec["d"], rec["heads"], rec["kv_heads"])
        cells = []
        for name in peer_names:
            p = next((p for p in peers if p["peer"] == name and (p["shape_label"], p["n"], p["d"], p["heads"], p["kv_heads"]) == key), None)
            cells.append("—" if p is None or p.get("ms") is None else f"{p['ms']:.2f} ms ({p['ms'] / rec['ms_median']:.2f}×)")
        lines.append(f"| {key[0]} | {rec['n']} | {rec['d']} | {rec['heads']}/{rec['kv_heads']} | {rec['kernel']} | {rec['ms_median']:.2f} | "
                     f"{rec.get('gflops', 0):.1f} | {rec.get('pct_peak_fma', 0):.1f} | {rec.get('rel_err', float('nan')):.1e} | "
                     + " | ".join(cells) + " |")
    if presets:
        lines += ["", "## Presets against the tuned winners (flash, one shape)", "", "| preset | ms | GFLOP/s | % FMA probe |", "|---|---|---|---|"]
        for name, rec in presets.items():
            if rec.get("ms_median") is not None:
                lines.append(f"| {name} | {rec['ms_median']:.2f} | {rec.get('gflops', 0):.1f} | {rec.get('pct_peak_fma', 0):.1f} |")
            else:
                lines.append(f"| {name} | skipped: {rec.get('skipped', '')} | | |")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="software-adapter sizes, numpy as the peer")
    ap.add_argument("--bin", help="the longctx binary (default: ./longctx, then target/release/longctx)")
    ap.add_argument("--out", default=os.environ.get("OUT") or "device-check-out", help="folder for the records")
    ap.add_argument("--wheel", help="a longctx wheel to install into the output folder and time in this process")
    a = ap.parse_args()
    binary = a.bin or next((b for b in ("./longctx", "target/release/longctx") if os.path.exists(b)), None)
    if binary is None or not (os.path.exists(binary) or shutil.which(binary)):
        sys.exit("error: no longctx binary: pass --bin, or build one (cargo build --release) and carry it")
    os.makedirs(a.out, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("XDG_CACHE_HOME", os.path.join(os.path.abspath(a.out), "cache"))
    r = Runner(os.path.abspath(binary), a.out, env)
    t0 = time.time()
    r.run("info", ["info"], timeout=120)
    r.run("selftest", ["selftest"], timeout=300)
    shapes = SMALL_SHAPES if a.small else GPU_SHAPES
    records, presets = longctx_suite(r, a.small, shapes)
    peers = []
    try:
        peers = numpy_peer(shapes) if a.small else torch_peer(shapes)
    except ImportError as e:
        log(f"== peer skipped: {e}")
    if a.wheel:
        target = os.path.join(os.path.abspath(a.out), "python")
        ok = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, a.wheel]).returncode == 0
        r.steps.append(("install the wheel", ok, 0.0))
        sys.path.insert(0, target)
    t_py = time.time()
    try:
        peers += python_package(shapes)
        r.steps.append(("python package", True, time.time() - t_py))
    except ImportError as e:
        log(f"== python package skipped: {e}")
    except Exception as e:  # noqa: BLE001 (reported as a failed step, with its message)
        log(f"== python package failed: {e!r}")
        r.steps.append(("python package", False, time.time() - t_py))
    json.dump(peers, open(os.path.join(a.out, "peers.json"), "w"), indent=1)
    json.dump(records, open(os.path.join(a.out, "longctx.json"), "w"), indent=1)
    text = summary(records, peers, presets, r.steps)
    open(os.path.join(a.out, "summary.md"), "w").write(text)
    print(text)
    failed = [n for n, ok, _ in r.steps if not ok]
    print(f"device check: {len(r.steps)} steps, {len(failed)} failed ({', '.join(failed) or 'none'}) in {time.time() - t0:.0f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
