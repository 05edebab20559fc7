// dsa_align.wgsl — DSA's indexer warm-up on the GPU (src/contract/dsa.rs holds the rule and
// its f64 oracle `dsa_alignment_f64`): per query row i at position p, over its visible keys
// s ≤ p,
//   loss_i = KL(p_t ‖ softmax_s I(p, s)),  p_t(s) = Σ_h exp(scale·q_h·k_s − LSE_h) / H
// (the dense causal attention's probabilities summed over the query heads; every head sees
// the same keys, so they sum to H) and its gradient dI(i, s) = softmax(I)(s) − p_t(s), taken
// through I = Σ_j w_j·ReLU(qI_j·kI_s) to w, qI and kI (through the ReLU only where the dot is
// positive). LSE comes from flash's forward over the same call.
//
// - `align_rows`: one invocation per (sequence, row), in passes over key ranges
//   [arg0, arg1) (the gradients times `grad_scale`): mode 0 (`last` = 0) keeps the running max and sum of the row's index
//   softmax; mode 1 turns them into its LSE on the first pass, then adds the row's KL terms
//   and its gradients to w and qI (the row's own slots: no two lanes share one).
// - `align_keys`: one invocation per (sequence, key), in passes over row ranges
//   [arg0, arg1): each visible row's dI(i, s) again (from the rows' LSE), added into the
//   key's dkI.
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

@compute @workgroup_size(64)
fn align_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = (wg.y * params.groups_x + wg.x) * 64u + lid;
    if r >= params.rows {
        return;
    }
    let row = params.row0 + r;
    let b = row / params.n;
    let i = row % params.n;
    let hi = params.index_heads;
    let st = state_at(row);
    let dw = row * hi;
    let end = visible_end(row);
    let k0 = params.arg0;
    let k1 = min(params.arg1, end);
    let keys = b * params.m;
    if params.last == 0u {
        // the index softmax's running max and sum
        var mx = rows[st];
        var sum = rows[st + 1u];
        if k0 == 0u {
            mx = params.neg_inf;
            sum = 0.0;
        }
        for (var s = k0; s < k1; s++) {
            let x = index_score(row, keys + s);
            if x > mx {
                sum = sum * exp(mx - x) + 1.0;
                mx = x;
            } else {
                sum += exp(x - mx);
            }
        }
        rows[st] = mx;
        rows[st + 1u] = sum;
        return;
    }
    if k0 == 0u {
        if end > 0u {
            rows[st] = rows[st] + log(rows[st + 1u]);
        }
        rows[st + 2u] = 0.0;
        for (var j = 0u; j < hi; j++) {
            rows[dw + j] = 0.0;
            for (var x = 0u; x < params.di4; x++) {
                dqi[(row * hi + j) * params.di4 + x] = vec4<f32>(0.0);
            }
        }
    }
    let lse_i = rows[st];
    var loss = rows[st + 2u];
    for (var s = k0; s < k1; s++) {
        let key = keys + s;
        let x = index_score(row, key);
        let lp = x - lse_i;
        let pt = dense_target(b, i, s);
        if pt > 0.0 {
            loss += pt * (log(pt) - lp);
        }
        let g = (exp(lp) - pt) * params.grad_scale;
        for (var j = 0u; j < hi; j++) {
            let d = index_dot(row, j, key);
            if d > 0.0 {
                rows[dw + j] += g * d;
                let gw = g * wi[row * hi + j];
                for (var y = 0u; y < params.di4; y++) {
                    dqi[(row * hi + j) * params.di4 + y] += gw * ki[key * params.di4 + y];
                }
            }
        }
    }
    rows[st + 2u] = loss;
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
    let hi = params.index_heads;
    if params.arg0 == 0u {
        for (var y = 0u; y < params.di4; y++) {
            dki[key * params.di4 + y] = vec4<f32>(0.0);
        }
    }
    // the rows that see key s: p = q_offset + i ≥ s
    let first = u32(clamp(i32(s) - params.q_offset, 0, i32(params.n)));
    let i0 = max(params.arg0, first);
    for (var i = i0; i < params.arg1; i++) {
        let row = b * params.n + i;
        let lp = index_score(row, key) - rows[state_at(row)];
        let g = (exp(lp) - dense_target(b, i, s)) * params.grad_scale;
        for (var j = 0u; j < hi; j++) {
            if index_dot(row, j, key) > 0.0 {
                let gw = g * wi[row * hi + j];
                for (var y = 0u; y < params.di4; y++) {
                    dki[key * params.di4 + y] += gw * qi[(row * hi + j) * params.di4 + y];
                }
            }
        }
    }
}
