// selection.wgsl — the selection stage of learned sparse attention: each query chooses the key
// blocks it reads (src/contract/selection.rs holds the rule and its f64 oracle).
//
// MoBA, two entry points:
// - `block_means`: one invocation per (kv head, key block, vec4 of columns): the block's mean
//   key, over the block's keys inside M, stored in QCAP4 vec4 lanes (⌈D/4⌉ rounded up to a
//   power of two, a constant of the variant; zeros past D).
// - `choose`: one invocation per (query head, row), a workgroup per (head, run of 64 rows):
//   the gate score q · mean(K[block]) of every block wholly before the row's own, a running
//   top (k − 1) kept in registers by insertion (topk.wgsl: descending score, ties to the
//   lower block), written as the row's index list: its own block first, then the chosen
//   blocks by descending score, NONE where fewer exist. A row at a negative position chooses
//   nothing.
// Any head dim: the stage reads Q once into private vec4 lanes (zeros past D) and each block's
// mean once per workgroup-wide step — the same address for every lane, a broadcast on a GPU
// and a gather on a CPU adapter, four columns per load either way; the dot product's trip
// count is the constant QCAP4 (twice as fast on lavapipe as scalar loads over a runtime D).
// Loops: `choose` runs blocks · (QCAP4 + k) iterations; the host checks that against an
// adapter's loop cap before dispatching.
// Device-memory traffic: `means` reads K once (Hkv·M·D) and writes Hkv·blocks·QCAP4 vec4s;
// `choose` reads its row of Q and, per row, every earlier block's mean.

struct Params {
    heads: u32,
    kv_heads: u32,
    n: u32,
    m: u32,
    d: u32,
    block: u32,
    topk: u32,
    blocks: u32,
    q_offset: i32,   // position of query row 0
    groups_x: u32,   // workgroups per grid row (2-D grids for long dispatches)
    pad0: u32,
    pad1: u32,
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read_write> means: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> chosen: array<u32>;

const NONE: u32 = 0xffffffffu;

fn flat(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * params.groups_x + wg.x) * 64u + lid;
}

@compute @workgroup_size(64)
fn block_means(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = flat(wg, lid);
    if t >= params.kv_heads * params.blocks * QCAP4 {
        return;
    }
    let c0 = (t % QCAP4) * 4u;
    let b = (t / QCAP4) % params.blocks;
    let kvh = t / (QCAP4 * params.blocks);
    let j0 = b * params.block;
    let j1 = min(j0 + params.block, params.m);
    var sum = vec4<f32>(0.0);
    for (var j = j0; j < j1; j++) {
        let row = (kvh * params.m + j) * params.d + c0;
        for (var e = 0u; e < 4u; e++) {
            if c0 + e < params.d {
                sum[e] += k[row + e];
            }
        }
    }
    means[t] = sum / f32(j1 - j0);
}

@compute @workgroup_size(64)
fn choose(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // One workgroup per (query head, run of 64 rows): the head, and so every block mean the
    // rows read, is uniform across the workgroup (a broadcast, not a gather), and the block
    // loop runs to the last row's own block for every lane.
    let runs = (params.n + 63u) / 64u;
    let w = wg.y * params.groups_x + wg.x;
    let h = w / runs;
    if h >= params.heads {
        return; // the grid's padding (uniform per workgroup)
    }
    let run0 = (w % runs) * 64u;
    let i = run0 + lid;
    let live = i < params.n;
    let t = h * params.n + i;
    let out0 = t * params.topk;
    let p = params.q_offset + i32(i);
    if live {
        for (var s = 0u; s < params.topk; s++) {
            chosen[out0 + s] = NONE;
        }
        if p >= 0 {
            chosen[out0] = u32(p) / params.block;
        }
    }
    let want = params.topk - 1u;
    let p_last = params.q_offset + i32(min(run0 + 63u, params.n - 1u));
    if want == 0u || p_last < 0 {
        return; // uniform
    }
    // a lane past N or at a negative position keeps nothing (own = 0)
    var own = 0u;
    if live && p >= 0 {
        own = u32(p) / params.block;
    }
    let own_last = u32(p_last) / params.block;
    let kvh = h / (params.heads / params.kv_heads);
    // the row's query in private vec4 lanes, read once (QCAP4 ≥ D4: the host's bucket)
    var qr: array<vec4<f32>, QCAP4>;
    if live {
        for (var c = 0u; c < params.d; c++) {
            qr[c / 4u][c % 4u] = q[t * params.d + c];
        }
    }
    var top: TopK;
    for (var b = 0u; b < own_last; b++) {
        let m0 = (kvh * params.blocks + b) * QCAP4;
        var g = 0.0;
        for (var x = 0u; x < QCAP4; x++) {
            g += dot(qr[x], means[m0 + x]);
        }
        if b < own {
            offer(&top, want, g, b);
        }
    }
    for (var s = 0u; s < top.count; s++) {
        chosen[out0 + 1u + s] = top.index[s];
    }
}
