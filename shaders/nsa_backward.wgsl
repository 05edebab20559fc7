// nsa_backward.wgsl — NSA's own backward stages (the rule and its f64 oracle:
// src/contract/nsa.rs; the forward: nsa.wgsl). No gradient flows through the choice; each
// branch's backward runs on the other kernels (flash's backward over the compressed keys and
// the window, the block-list backward over the chosen blocks) for its gated share of dO:
// - `split_grad`: one invocation per element of dO: the branches' shares g_b·dO.
// - `gate_grads`: one invocation per (row, branch): dg_b = dO · o_b over the row.
// - `add3`: one invocation per element: dQ = dQ_cmp + dQ_slc + dQ_win.
// - `compress_back`: one invocation per (kv head, key, column): the compressed keys covering
//   the key carry their gradient back through φ, added to the selected branch's dK and dV
//   (in place) with the window branch's.
// - `phi_grads`: one invocation per (kv head, t, chunk of compressed keys): φ_t's gradient
//   Σ_c K[c·d + t]·dK̃_c + V[c·d + t]·dṼ_c over the chunk (chunks sized below a loop cap;
//   the host adds them).

// `Params`, `params` (binding 0) and `flat`: nsa_params.wgsl.
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> phi: array<f32>;
@group(0) @binding(4) var<storage, read> gates: array<f32>;
@group(0) @binding(5) var<storage, read> o_cmp: array<f32>;
@group(0) @binding(6) var<storage, read> o_slc: array<f32>;
@group(0) @binding(7) var<storage, read> o_win: array<f32>;
@group(0) @binding(8) var<storage, read> d_o: array<f32>;
@group(0) @binding(9) var<storage, read_write> d_cmp: array<f32>;
@group(0) @binding(10) var<storage, read_write> d_slc: array<f32>;
@group(0) @binding(11) var<storage, read_write> d_win: array<f32>;
@group(0) @binding(12) var<storage, read_write> d_gates: array<f32>;
@group(0) @binding(13) var<storage, read> dq_cmp: array<f32>;
@group(0) @binding(14) var<storage, read> dq_slc: array<f32>;
@group(0) @binding(15) var<storage, read> dq_win: array<f32>;
@group(0) @binding(16) var<storage, read_write> dq: array<f32>;
@group(0) @binding(17) var<storage, read> dkc: array<f32>;
@group(0) @binding(18) var<storage, read> dvc: array<f32>;
@group(0) @binding(19) var<storage, read_write> dk: array<f32>;
@group(0) @binding(20) var<storage, read_write> dv: array<f32>;
@group(0) @binding(21) var<storage, read> dk_win: array<f32>;
@group(0) @binding(22) var<storage, read> dv_win: array<f32>;
@group(0) @binding(23) var<storage, read_write> d_phi: array<f32>;

@compute @workgroup_size(64)
fn split_grad(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = flat(wg, lid);
    if t >= params.heads * params.n * params.d {
        return;
    }
    let g0 = (t / params.d) * 3u;
    let x = d_o[t];
    d_cmp[t] = gates[g0] * x;
    d_slc[t] = gates[g0 + 1u] * x;
    d_win[t] = gates[g0 + 2u] * x;
}

@compute @workgroup_size(64)
fn gate_grads(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = flat(wg, lid);
    if t >= params.heads * params.n * 3u {
        return;
    }
    let row = (t / 3u) * params.d;
    var sum = 0.0;
    for (var x = 0u; x < params.d; x++) {
        let branch = t % 3u;
        var ob = o_cmp[row + x];
        if branch == 1u {
            ob = o_slc[row + x];
        } else if branch == 2u {
            ob = o_win[row + x];
        }
        sum += d_o[row + x] * ob;
    }
    d_gates[t] = sum;
}

@compute @workgroup_size(64)
fn add3(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = flat(wg, lid);
    if t >= params.heads * params.n * params.d {
        return;
    }
    dq[t] = dq_cmp[t] + dq_slc[t] + dq_win[t];
}

@compute @workgroup_size(64)
fn compress_back(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = flat(wg, lid);
    if t >= params.kv_heads * params.m * params.d {
        return;
    }
    let col = t % params.d;
    let s = (t / params.d) % params.m;
    let g = t / (params.d * params.m);
    // compressed keys c with c·stride ≤ s < c·stride + l
    var lo = 0u;
    if s + 1u > params.cmp_len {
        lo = (s + 1u - params.cmp_len + params.cmp_stride - 1u) / params.cmp_stride;
    }
    let hi = min(s / params.cmp_stride + 1u, params.mc);
    var gk = 0.0;
    var gv = 0.0;
    for (var c = lo; c < hi; c++) {
        let w = phi[g * params.cmp_len + s - c * params.cmp_stride];
        let at = (g * params.mc + c) * params.d + col;
        gk += w * dkc[at];
        gv += w * dvc[at];
    }
    dk[t] += dk_win[t] + gk;
    dv[t] += dv_win[t] + gv;
}

@compute @workgroup_size(64)
fn phi_grads(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = flat(wg, lid);
    if u >= params.kv_heads * params.cmp_len * params.arg1 {
        return;
    }
    let chunk = u % params.arg1;
    let tt = (u / params.arg1) % params.cmp_len;
    let g = u / (params.arg1 * params.cmp_len);
    let c1 = min((chunk + 1u) * params.arg0, params.mc);
    var sum = 0.0;
    for (var c = chunk * params.arg0; c < c1; c++) {
        let key = (g * params.m + c * params.cmp_stride + tt) * params.d;
        let at = (g * params.mc + c) * params.d;
        for (var x = 0u; x < params.d; x++) {
            sum += k[key + x] * dkc[at + x] + v[key + x] * dvc[at + x];
        }
    }
    d_phi[u] = sum;
}
