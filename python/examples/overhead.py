"""The Python boundary's overhead: `Device.attention` against the same call made from Rust
(`examples/call_overhead.rs`: spec, prepare, upload, run, read back), per call, medians,
interleaved in rounds so that a noisy host affects both alike.

    python python/examples/overhead.py [SIZES] [REPEATS] [ROUNDS]     (default 64,2048 20 3)

Run from the repository root with the package installed (scripts/python-test builds it into
target/python-venv; use that interpreter). The Rust side is built in the same (dev) profile
as the extension `maturin develop` builds.
"""

import subprocess
import sys
import time

import numpy as np

import longctx

sizes = [int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "64,2048").split(",")]
reps = int(sys.argv[2]) if len(sys.argv) > 2 else 20
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3

subprocess.run(["cargo", "build", "-q", "--example", "call_overhead"], check=True)
dev = longctx.Device()
best = {n: [float("inf"), float("inf")] for n in sizes}
for _ in range(rounds):
    out = subprocess.run(
        ["target/debug/examples/call_overhead", ",".join(map(str, sizes)), str(reps)],
        check=True, capture_output=True, text=True,
    ).stdout
    for line in out.splitlines():
        _, n, _, us = line.split()
        best[int(n)][0] = min(best[int(n)][0], float(us))
    for n in sizes:
        # the same values as the Rust side: a ramp over the flat index
        x = ((np.arange(4 * n * 64) % 97 - 48) / 97).astype(np.float32).reshape(1, 4, n, 64)
        dev.attention(x, x, x, causal=True)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            dev.attention(x, x, x, causal=True)
            times.append((time.perf_counter() - t) * 1e6)
        best[n][1] = min(best[n][1], float(np.median(times)))

print(f"adapter: {dev.info['name']}; H = 4, D = 64, causal; best of {rounds} rounds of medians of {reps}")
print("| N | Rust µs/call | Python µs/call | Python − Rust | ratio |")
print("|---|---|---|---|---|")
for n in sizes:
    r, p = best[n]
    print(f"| {n} | {r:.0f} | {p:.0f} | {p - r:+.0f} | {p / r:.3f} |")
