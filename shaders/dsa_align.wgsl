// dsa_align.wgsl — DSA's indexer alignment on the GPU (src/contract/dsa.rs holds the rule and
// its f64 oracles `dsa_alignment_f64`, `dsa_sparse_alignment_f64`): per query row i at
// position p, over a key set S — every visible key s ≤ p (the warm-up stage) or the row's
// listed keys (the sparse stage) —
//   loss_i = KL(p_t ‖ softmax_S I(p, s)),  p_t(s) = Σ_h exp(scale·q_h·k_s − LSE_h) / H
// (the attention's probabilities over S averaged over the query heads: LSE_h is the dense
// causal attention's for the warm-up, the sparse attention's for the sparse stage, so each
// head's sum over S is 1) and its gradient dI(i, s) = softmax(I)(s) − p_t(s), taken through
// I = Σ_j w_j·ReLU(qI_j·kI_s) to w, qI and kI (through the ReLU only where the dot is
// positive).
//
// - `align_rows` / `align_rows_sparse`: one invocation per (sequence, row), in passes over
//   keys (list entries) [arg0, arg1), the gradients times `grad_scale`: mode 0 (`last` = 0)
//   keeps the running max and sum of the row's index softmax; mode 1 turns them into its LSE
//   on the first pass, then adds the row's KL terms and its gradients to w and qI (the row's
//   own slots: no two lanes share one).
// - `align_keys` / `align_keys_sparse`: one invocation per (sequence, key), in passes over
//   rows (the key's inverse entries) [arg0, arg1): each row's dI(i, s) again (from the rows'
//   LSE), added into the key's dkI.
// Every loop is bounded by a pass's range and the indexer's and heads' sizes; the host sizes
// passes below an adapter's loop cap.

@group(0) @binding(1) var<storage, read> qi: array<vec4<f32>>;          // [B, N, HI, DI]
@group(0) @binding(2) var<storage, read> ki: array<vec4<f32>>;          // [B, M, DI]
@group(0) @binding(3) var<storage, read> wi: array<f32>;                // [B, N, HI]
@group(0) @binding(4) var<storage, read> q: array<vec4<f32>>;           // [B, H, N, D]
@group(0) @binding(5) var<storage, read> k: array<vec4<f32>>;           // [B, Hkv, M, D]
@group(0) @binding(6) var<storage, read> lse: array<f32>;               // [B, H, N]
// dw [B·N, HI], then [B·N, 4]: LSE_I (running max in mode 0), running sum, the KL term, unused
@group(0) @binding(7) var<storage, read_write> rows: array<f32>;
@group(0) @binding(8) var<storage, read_write> dqi: array<vec4<f32>>;   // [B, N, HI, DI]
@group(0) @binding(9) var<storage, read_write> dki: array<vec4<f32>>;   // [B, M, DI]
// the sparse stage: the lists [B, N, k] and their inverse (offsets [B·M + 1], flat entries)
@group(0) @binding(10) var<storage, read> lists: array<u32>;
@group(0) @binding(11) var<storage, read> inv_offsets: array<u32>;
@group(0) @binding(12) var<storage, read> inv_entries: array<u32>;

// qI_j(row) · kI(key) for indexer head j (`row` = b·N + i, `key` = b·M + s).
fn index_dot(row: u32, j: u32, key: u32) -> f32 {
    let di4 = params.di4;
    let qb = (row * params.index_heads + j) * di4;
    var d = 0.0;
    for (var x = 0u; x < di4; x++) {
        d += dot(qi[qb + x], ki[key * di4 + x]);
    }
    return d;
}

// I(row, key) = Σ_j w_j·ReLU(qI_j · kI).
fn index_score(row: u32, key: u32) -> f32 {
    var acc = 0.0;
    for (var j = 0u; j < params.index_heads; j++) {
        acc += wi[row * params.index_heads + j] * max(index_dot(row, j, key), 0.0);
    }
    return acc;
}

// p_t of (sequence b, row i) at key s: the dense attention's probabilities averaged over heads.
fn dense_target(b: u32, i: u32, s: u32) -> f32 {
    let h_all = params.heads;
    let group = h_all / params.kv_heads;
    let d4 = params.d4;
    var t = 0.0;
    for (var h = 0u; h < h_all; h++) {
        let qr = (b * h_all + h) * params.n + i;
        let kb = ((b * params.kv_heads + h / group) * params.m + s) * d4;
        var d = 0.0;
        for (var x = 0u; x < d4; x++) {
            d += dot(q[qr * d4 + x], k[kb + x]);
        }
        t += exp(params.scale * d - lse[qr]);
    }
    return t / f32(h_all);
}

// Where (sequence, row) `row`'s four words start: after dw.
fn state_at(row: u32) -> u32 {
    return params.batch * params.n * params.index_heads + row * 4u;
}

// The visible keys of (sequence, row) `row`: 0 .. the returned end.
fn visible_end(row: u32) -> u32 {
    let p = params.q_offset + i32(row % params.n);
    return u32(clamp(p + 1, 0, i32(params.m)));
}

// The rows' side of (sequence, row) `row` = b·N + i at key s, its index softmax's LSE known:
// adds the gradients to dw and dqI and returns the KL term.
fn row_pair(row: u32, b: u32, i: u32, s: u32, lse_i: f32) -> f32 {
    let hi = params.index_heads;
    let key = b * params.m + s;
    let lp = index_score(row, key) - lse_i;
    let pt = dense_target(b, i, s);
    let g = (exp(lp) - pt) * params.grad_scale;
    for (var j = 0u; j < hi; j++) {
        let d = index_dot(row, j, key);
        if d > 0.0 {
            rows[row * hi + j] += g * d;
            let gw = g * wi[row * hi + j];
            for (var y = 0u; y < params.di4; y++) {
                dqi[(row * hi + j) * params.di4 + y] += gw * ki[key * params.di4 + y];
            }
        }
    }
    return select(0.0, pt * (log(pt) - lp), pt > 0.0);
}

// The keys' side of key `key` = b·M + s from (sequence, row) `row` = b·N + i: adds to dkI.
fn key_pair(row: u32, i: u32, key: u32) {
    let hi = params.index_heads;
    let b = key / params.m;
    let lp = index_score(row, key) - rows[state_at(row)];
    let g = (exp(lp) - dense_target(b, i, key % params.m)) * params.grad_scale;
    for (var j = 0u; j < hi; j++) {
        if index_dot(row, j, key) > 0.0 {
            let gw = g * wi[row * hi + j];
            for (var y = 0u; y < params.di4; y++) {
                dki[key * params.di4 + y] += gw * qi[(row * hi + j) * params.di4 + y];
            }
        }
    }
}

// The rows' side's start of a pass at entry `first`: in mode 0 the running max and sum (fresh
// on the first pass); in mode 1 the first pass turns them into the LSE and clears the row's KL
// term, dw and dqI. Returns (max, sum) or (LSE, KL so far).
fn row_start(row: u32, first: u32) -> vec2<f32> {
    let st = state_at(row);
    let hi = params.index_heads;
    if params.last == 0u {
        return select(vec2<f32>(rows[st], rows[st + 1u]), vec2<f32>(params.neg_inf, 0.0), first == 0u);
    }
    if first == 0u {
        if rows[st + 1u] > 0.0 {
            rows[st] = rows[st] + log(rows[st + 1u]);
        }
        rows[st + 2u] = 0.0;
        for (var j = 0u; j < hi; j++) {
            rows[row * hi + j] = 0.0;
            for (var x = 0u; x < params.di4; x++) {
                dqi[(row * hi + j) * params.di4 + x] = vec4<f32>(0.0);
            }
        }
    }
    return vec2<f32>(rows[st], rows[st + 2u]);
}

// One key s of (sequence, row) `row` = b·N + i on the rows' side: in mode 0 a step of the
// index softmax's running (max, sum) in `acc`; in mode 1 (`acc` = (LSE, KL so far)) the pair's
// KL term and gradients (`row_pair`).
fn row_key(row: u32, b: u32, i: u32, s: u32, acc: ptr<function, vec2<f32>>) {
    if params.last != 0u {
        (*acc).y += row_pair(row, b, i, s, (*acc).x);
        return;
    }
    let x = index_score(row, b * params.m + s);
    if x > (*acc).x {
        *acc = vec2<f32>(x, (*acc).y * exp((*acc).x - x) + 1.0);
    } else {
        (*acc).y += exp(x - (*acc).x);
    }
}

// A key's dkI cleared (the keys' side's first pass).
fn clear_dki(key: u32) {
    for (var y = 0u; y < params.di4; y++) {
        dki[key * params.di4 + y] = vec4<f32>(0.0);
    }
}

// The rows' side's end of a pass: the running max and sum (mode 0) or the KL so far.
fn row_end(row: u32, acc: vec2<f32>) {
    let st = state_at(row);
    if params.last == 0u {
        rows[st] = acc.x;
        rows[st + 1u] = acc.y;
    } else {
        rows[st + 2u] = acc.y;
    }
}

// The pass's (sequence, row) from the grid, or the grid's padding (≥ B·N).
fn grid_row(wg: vec3<u32>, lid: u32) -> u32 {
    let r = (wg.y * params.groups_x + wg.x) * 64u + lid;
    return select(params.batch * params.n, params.row0 + r, r < params.rows);
}

@compute @workgroup_size(64)
fn align_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = grid_row(wg, lid);
    if row >= params.batch * params.n {
        return;
    }
    let b = row / params.n;
    let i = row % params.n;
    var acc = row_start(row, params.arg0);
    for (var s = params.arg0; s < min(params.arg1, visible_end(row)); s++) {
        row_key(row, b, i, s, &acc);
    }
    row_end(row, acc);
}

// `align_rows` over the row's listed keys (the sparse stage): passes over list entries.
@compute @workgroup_size(64)
fn align_rows_sparse(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = grid_row(wg, lid);
    if row >= params.batch * params.n {
        return;
    }
    let b = row / params.n;
    let i = row % params.n;
    var acc = row_start(row, params.arg0);
    for (var t = params.arg0; t < min(params.arg1, params.topk); t++) {
        let s = lists[row * params.topk + t];
        if s == NONE {
            break; // a list's empty entries come last
        }
        row_key(row, b, i, s, &acc);
    }
    row_end(row, acc);
}

@compute @workgroup_size(64)
fn align_keys(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = (wg.y * params.groups_x + wg.x) * 64u + lid;
    if c >= params.rows {
        return;
    }
    let key = params.row0 + c;  // b·M + s
    let b = key / params.m;
    let s = key % params.m;
    if params.arg0 == 0u {
        clear_dki(key);
    }
    // the rows that see key s: p = q_offset + i ≥ s
    let first = u32(clamp(i32(s) - params.q_offset, 0, i32(params.n)));
    for (var i = max(params.arg0, first); i < params.arg1; i++) {
        key_pair(b * params.n + i, i, key);
    }
}

// `align_keys` over the rows that listed the key (the inverse lists, as the token-list backward
// reads it): passes over its inverse entries.
@compute @workgroup_size(64)
fn align_keys_sparse(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = (wg.y * params.groups_x + wg.x) * 64u + lid;
    if c >= params.rows {
        return;
    }
    let key = params.row0 + c;  // b·M + s
    if params.arg0 == 0u {
        clear_dki(key);
    }
    let start = inv_offsets[key];
    for (var e = start + params.arg0; e < min(start + params.arg1, inv_offsets[key + 1u]); e++) {
        let row = inv_entries[e] / params.topk;
        key_pair(row, row % params.n, key);
    }
}
