// positions.wgsl — a positional encoding applied in place to rows of Q or K before attention
// (RoPE or sinusoidal; contract/positions.rs), or RoPE's gradient (the rotation back) applied
// to dQ and dK after the backward.
//
// Row r of a dispatch is row (first + r) mod wrap of the buffer (wrap = 0: no wrap; a decoder's
// ring cache wraps) and takes the table row table0 + (r0 + r) mod per_seq — per_seq rows per
// (batch, head) sequence: N for Q, M for K. The table holds, per position, RoPE's cos(p·ω_k)
// for k < D/2 then sin(p·ω_k), or sinusoidal's PE(p, e) for e < D: computed on the host in
// f64 and rounded once, so no shader evaluates a trigonometric function.
//
// One invocation per RoPE pair (D/2 per row) or per sinusoidal element (D per row); 2-D grid
// within the 65535-workgroup limit. Traffic: every encoded element read and written once,
// one table row read per encoded row.

struct EncodeJob {
    rows: u32,      // rows this dispatch encodes
    r0: u32,        // index of its first row among the tensor's rows
    per_seq: u32,   // rows per sequence
    table0: u32,    // table row of a sequence's first row
    first: u32,     // buffer row of this dispatch's first row
    wrap: u32,      // buffer rows before wrapping to 0; 0 = none
    stride: u32,    // floats per buffer row (the padded head dim)
    d: u32,         // the head dim the encoding is defined on
    mode: u32,      // 0 RoPE half-split pairs (k, k + D/2), 1 RoPE interleaved (2k, 2k + 1), 2 sinusoidal
    inverse: u32,   // RoPE: rotate by −p·ω_k (the gradient)
    groups_x: u32,  // workgroups per grid row
    pad: u32,
}

@group(0) @binding(0) var<uniform> job: EncodeJob;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> table: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let half = job.d / 2u;
    let units = select(half, job.d, job.mode == 2u);
    let i = (wg.y * job.groups_x + wg.x) * 64u + lid;
    let r = i / units;
    let u = i % units;
    if r >= job.rows {
        return;
    }
    let t = (job.table0 + (job.r0 + r) % job.per_seq) * job.d;
    var row = job.first + r;
    if job.wrap != 0u {
        row = row % job.wrap;
    }
    let base = row * job.stride;
    if job.mode == 2u {
        x[base + u] += table[t + u];
        return;
    }
    var ia = u;
    var ib = u + half;
    if job.mode == 1u {
        ia = 2u * u;
        ib = 2u * u + 1u;
    }
    let c = table[t + u];
    var s = table[t + half + u];
    if job.inverse != 0u {
        s = -s;
    }
    let a = x[base + ia];
    let b = x[base + ib];
    x[base + ia] = a * c - b * s;
    x[base + ib] = a * s + b * c;
}
