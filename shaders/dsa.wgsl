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
