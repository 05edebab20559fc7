// route.wgsl — CoLT5-style routing: router scores, top-k on the GPU, gather, scatter-add.
//
// scores:  s_i = (x_i / ‖x_i‖) · (w / ‖w‖) — cosine similarity of each token with the router
//          weight (one invocation per token).
// sort:    one step (kk, jj) of a bitonic sort of (score, index) pairs over P = 2^⌈log2 N⌉
//          slots (padding: −inf, index ≥ N); the order is score descending, then index
//          ascending, so ties go to the lower token index and the result is deterministic.
//          The first k entries after all log2(P)·(log2(P)+1)/2 steps are the top k.
// gather:  y[r] = x[idx[r]] for the k selected rows.
// scatter: out[idx[r]] += s_idx[r] · y[r]; the k indices are distinct, so no atomics.

struct Route {
    n: u32,
    d: u32,
    k: u32,
    padded: u32,
    kk: u32,     // sort: size of the bitonic sequences being merged
    jj: u32,     // sort: compare distance
    neg_inf: f32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> rt: Route;
@group(0) @binding(1) var<storage, read> x: array<f32>;          // [N, d]
@group(0) @binding(2) var<storage, read> w: array<f32>;          // [d]
@group(0) @binding(3) var<storage, read_write> keys: array<f32>; // [P] scores, sorted in place
@group(0) @binding(4) var<storage, read_write> idx: array<u32>;  // [P] token indices
@group(0) @binding(5) var<storage, read_write> rows: array<f32>; // [k, d] gathered / processed
@group(0) @binding(6) var<storage, read_write> out: array<f32>;  // [N, d] scatter target

@compute @workgroup_size(64)
fn scores(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= rt.padded {
        return;
    }
    if i >= rt.n {
        keys[i] = rt.neg_inf;
        idx[i] = i;
        return;
    }
    var xx = 0.0;
    var ww = 0.0;
    var xw = 0.0;
    for (var e = 0u; e < rt.d; e++) {
        let xv = x[i * rt.d + e];
        let wv = w[e];
        xx += xv * xv;
        ww += wv * wv;
        xw += xv * wv;
    }
    keys[i] = xw / max(sqrt(xx) * sqrt(ww), 1e-12);
    idx[i] = i;
}

// a goes before b: higher score, then lower index
fn before(sa: f32, ia: u32, sb: f32, ib: u32) -> bool {
    return sa > sb || (sa == sb && ia < ib);
}

@compute @workgroup_size(64)
fn sort_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let l = i ^ rt.jj;
    if i >= rt.padded || l <= i {
        return;
    }
    let ascending_block = (i & rt.kk) == 0u; // this block ends in "before" order
    let a_first = before(keys[i], idx[i], keys[l], idx[l]);
    if a_first != ascending_block {
        let s = keys[i];
        keys[i] = keys[l];
        keys[l] = s;
        let t = idx[i];
        idx[i] = idx[l];
        idx[l] = t;
    }
}

@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if e >= rt.k * rt.d {
        return;
    }
    let r = e / rt.d;
    rows[e] = x[idx[r] * rt.d + e % rt.d];
}

@compute @workgroup_size(64)
fn scatter(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if e >= rt.k * rt.d {
        return;
    }
    let r = e / rt.d;
    let at = idx[r] * rt.d + e % rt.d;
    out[at] = out[at] + keys[r] * rows[e];
}
