// dsa.wgsl — DSA's attention over each row's chosen keys (the lists of dsa_index.wgsl; the rule
// and its oracle: src/contract/dsa.rs). `attend`: LPR lanes per (query head, row) — a cluster
// of a subgroup, or one invocation without subgroups —, every head of a sequence reading the
// row's one list. The row's query sits in private vec4s spread over the cluster; each listed
// key's K and V rows are read by the cluster as consecutive vec4s (one vector load across
// the lanes, where one lane alone would gather a whole row: the rows of a workgroup chose
// different keys), the dot product summed by shuffles, under an online softmax.
// Long lists run in passes over list entries [arg0, arg1) below an adapter's loop cap: the
// running state (unnormalised O, the running max in LSE's slot, the running sum in `run_l`)
// stays in device memory between passes; the last pass normalises and writes LSE (−inf and
// O = 0 for a row with no key). Loops: (arg1 − arg0) · (2·C + log2 LPR + 6) iterations a pass
// (each loop counts its exit too).

@group(0) @binding(1) var<storage, read> lists: array<u32>;          // [B, N, k]
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;        // [B, H, N, D]
@group(0) @binding(3) var<storage, read> k: array<vec4<f32>>;        // [B, Hkv, M, D]
@group(0) @binding(4) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> o: array<vec4<f32>>;  // [B, H, N, D]
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;      // [B, H, N]
@group(0) @binding(7) var<storage, read_write> run_l: array<f32>;    // [B, H, N]

// a finite "minus infinity" for the running max (exp of it against any score is 0)
const LOW: f32 = -3.0e38;

@compute @workgroup_size(64)
fn attend(@builtin(workgroup_id) wg: vec3<u32>, ids: Ids) {
    // LPR lanes share a (head, row), each holding C of its D4 vec4s (x = c·LPR + lane); a
    // workgroup holds 64/LPR rows of one head. LPR > 1 only with subgroups: the lanes of a
    // row are one aligned cluster of a subgroup, their partial dot products summed by
    // butterfly shuffles. Every lane runs the same entries (a row past N repeats the last
    // row, an empty entry is read as key 0 with weight 0), so the shuffles stay in uniform
    // control flow.
    var slot = ids.lid;
    var lane = 0u;
    if LPR > 1u {
        slot = subgroup_of(ids) * (SG / LPR) + lane_of(ids) / LPR;
        lane = lane_of(ids) % LPR;
    }
    // the dispatch covers heads [hf0, hf1) × rows [i0, i1) of a sequence: the window of the
    // lists bound from element `list_base`
    let per_group = 64u / LPR;
    let runs = (params.i1 - params.i0 + per_group - 1u) / per_group;
    let w = wg.y * params.groups_x + wg.x;
    let hf = params.hf0 + w / runs;  // b·H + h
    if hf >= params.hf1 {
        return; // the grid's padding (uniform)
    }
    let i_raw = params.i0 + (w % runs) * per_group + slot;
    let live_row = i_raw < params.i1;
    let i = min(i_raw, params.i1 - 1u);
    let b = hf / params.heads;
    let kvh = b * params.kv_heads + (hf % params.heads) / (params.heads / params.kv_heads);
    let row = hf * params.n + i;
    let list0 = (b * params.n + i) * params.topk - params.list_base;
    var qr: array<vec4<f32>, C>;
    var acc: array<vec4<f32>, C>;
    for (var c = 0u; c < C; c++) {
        let x = c * LPR + lane;
        if x < D4 {
            qr[c] = q[row * D4 + x] * params.scale;
        }
    }
    var mx = LOW;
    var l = 0.0;
    if params.arg0 > 0u {
        mx = lse[row];
        l = run_l[row];
        for (var c = 0u; c < C; c++) {
            let x = c * LPR + lane;
            if x < D4 {
                acc[c] = o[row * D4 + x];
            }
        }
    }
    for (var t = params.arg0; t < params.arg1; t++) {
        let j = lists[list0 + t];
        let live = j != NONE;
        let kv0 = (kvh * params.m + select(0u, j, live)) * D4;
        var s4 = vec4<f32>(0.0);
        for (var c = 0u; c < C; c++) {
            let x = c * LPR + lane;
            if x < D4 {
                s4 += qr[c] * k[kv0 + x];
            }
        }
        var s = s4.x + s4.y + s4.z + s4.w;
        for (var off = LPR / 2u; off > 0u; off /= 2u) {
            s += shuffle_xor1(s, off);
        }
        s = select(LOW, s, live);
        let top = max(mx, s);
        let alpha = exp(mx - top);
        let pj = select(0.0, exp(s - top), live);
        l = l * alpha + pj;
        for (var c = 0u; c < C; c++) {
            let x = c * LPR + lane;
            if x < D4 {
                acc[c] = acc[c] * alpha + pj * v[kv0 + x];
            }
        }
        mx = top;
    }
    if !live_row {
        return;
    }
    let done = params.last != 0u;
    if done && l > 0.0 {
        for (var c = 0u; c < C; c++) {
            acc[c] /= l;
        }
    }
    for (var c = 0u; c < C; c++) {
        let x = c * LPR + lane;
        if x < D4 {
            o[row * D4 + x] = select(acc[c], vec4<f32>(0.0), done && l == 0.0);
        }
    }
    if lane == 0u {
        if !done {
            lse[row] = mx;
            run_l[row] = l;
        } else if l > 0.0 {
            lse[row] = mx + log(l);
        } else {
            lse[row] = params.neg_inf;
        }
    }
}

// The backward over the same lists (no gradient into the choice), one lane a row or key:
// - `grad_rows`: per (query head, row) — dQ = scale · Σ_listed P (dP − Δ) K, with
//   P = exp(scale·q·k − LSE), dP = dO·v and Δ = dO·O (written to `delta` on the first pass
//   for `grad_keys`), in passes over list entries [arg0, arg1) (dQ kept between passes).
// - `grad_keys`: per (kv head, key) — dK = scale · Σ P (dP − Δ) q and dV = Σ P dO over the rows
//   that listed the key (the lists transposed on the host: a CSR of flat list
//   entries (b·N + i)·k + t per (sequence, key), rows ascending) and the query heads of the
//   kv head's group, in passes over inverse entries [arg0, arg1) (dK, dV kept between passes).
// On a GPU a lane a key gathers its rows' Q and dO; a cluster per row or key as in `attend`
// is the next step there.
@group(0) @binding(8) var<storage, read> d_o: array<vec4<f32>>;        // [B, H, N, D]
@group(0) @binding(9) var<storage, read_write> dq: array<vec4<f32>>;   // [B, H, N, D]
@group(0) @binding(10) var<storage, read_write> dk: array<vec4<f32>>;  // [B, Hkv, M, D]
@group(0) @binding(11) var<storage, read_write> dv: array<vec4<f32>>;  // [B, Hkv, M, D]
@group(0) @binding(12) var<storage, read_write> delta: array<f32>;     // [B, H, N]
@group(0) @binding(13) var<storage, read> inv_offsets: array<u32>;     // [B·M + 1]
@group(0) @binding(14) var<storage, read> inv_entries: array<u32>;     // flat list entries, by key

@compute @workgroup_size(64)
fn grad_rows(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wg.y * params.groups_x + wg.x) * 64u + lid;  // (b·H + h)·N + i
    if row >= params.rows {
        return;
    }
    let hf = row / params.n;
    let i = row % params.n;
    let b = hf / params.heads;
    let kvh = b * params.kv_heads + (hf % params.heads) / (params.heads / params.kv_heads);
    let list0 = (b * params.n + i) * params.topk;
    var qr: array<vec4<f32>, D4>;
    var dor: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    var dl = 0.0;
    for (var x = 0u; x < D4; x++) {
        qr[x] = q[row * D4 + x] * params.scale;
        dor[x] = d_o[row * D4 + x];
        dl += dot(dor[x], o[row * D4 + x]);
        acc[x] = select(dq[row * D4 + x], vec4<f32>(0.0), params.arg0 == 0u);
    }
    if params.arg0 == 0u {
        delta[row] = dl;
    }
    let l = lse[row];
    for (var t = params.arg0; t < params.arg1; t++) {
        let j = lists[list0 + t];
        if j == NONE {
            break; // a list's empty entries come last
        }
        let kv0 = (kvh * params.m + j) * D4;
        var s = 0.0;
        var dp = 0.0;
        for (var x = 0u; x < D4; x++) {
            s += dot(qr[x], k[kv0 + x]);
            dp += dot(dor[x], v[kv0 + x]);
        }
        let ds = exp(s - l) * (dp - dl) * params.scale;
        for (var x = 0u; x < D4; x++) {
            acc[x] += ds * k[kv0 + x];
        }
    }
    for (var x = 0u; x < D4; x++) {
        dq[row * D4 + x] = acc[x];
    }
}

@compute @workgroup_size(64)
fn grad_keys(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let key_row = (wg.y * params.groups_x + wg.x) * 64u + lid;  // (b·Hkv + kvh)·M + j
    if key_row >= params.rows {
        return;
    }
    let bk = key_row / params.m;
    let j = key_row % params.m;
    let b = bk / params.kv_heads;
    let group = params.heads / params.kv_heads;
    let h0 = b * params.heads + (bk % params.kv_heads) * group;  // the group's first b·H + h
    var kr: array<vec4<f32>, D4>;
    var vr: array<vec4<f32>, D4>;
    var gk: array<vec4<f32>, D4>;
    var gv: array<vec4<f32>, D4>;
    let first = params.arg0 == 0u;
    for (var x = 0u; x < D4; x++) {
        kr[x] = k[key_row * D4 + x] * params.scale;
        vr[x] = v[key_row * D4 + x];
        gk[x] = select(dk[key_row * D4 + x], vec4<f32>(0.0), first);
        gv[x] = select(dv[key_row * D4 + x], vec4<f32>(0.0), first);
    }
    let key = b * params.m + j;
    let start = inv_offsets[key];
    let e0 = start + params.arg0;
    let e1 = min(start + params.arg1, inv_offsets[key + 1u]);
    for (var e = e0; e < e1; e++) {
        let i = (inv_entries[e] / params.topk) % params.n;
        for (var g = 0u; g < group; g++) {
            let row = (h0 + g) * params.n + i;
            var s = 0.0;
            var dp = 0.0;
            for (var x = 0u; x < D4; x++) {
                s += dot(q[row * D4 + x], kr[x]);
                dp += dot(d_o[row * D4 + x], vr[x]);
            }
            let p = exp(s - lse[row]);
            let ds = p * (dp - delta[row]) * params.scale;
            for (var x = 0u; x < D4; x++) {
                gv[x] += p * d_o[row * D4 + x];
                gk[x] += ds * q[row * D4 + x];
            }
        }
    }
    for (var x = 0u; x < D4; x++) {
        dk[key_row * D4 + x] = gk[x];
        dv[key_row * D4 + x] = gv[x];
    }
}
