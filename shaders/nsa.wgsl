// nsa.wgsl — NSA's own stages (native sparse attention; the rule and its f64 oracle are in
// src/contract/nsa.rs). The three branches' attention runs on the other kernels: flash over
// the compressed keys (with a mask_mod for their visibility) and over the sliding window, the
// block-list kernel (sparse.wgsl) over the chosen blocks. Here:
// - `compress`: one invocation per (kv head, compressed key c, vec4 of columns): K̃_c and Ṽ_c
//   = Σ_t φ_t · K/V[c·stride + t] over the compression length, written for flash (`kc`, `vc`,
//   [Hkv, Mc, D]) and K̃ again in QCAP4 vec4 lanes for `score` (`kc4`, zeros past D).
// - `score`: one invocation per (kv head, row), a workgroup per (kv head, run of 64 rows) so
//   that every compressed key a step reads is the same address across the workgroup (a
//   broadcast on a GPU). For each candidate block b (1 ..= own − 2) in this pass's range
//   [arg0, arg1), the block's score is the compressed branch's probabilities exp(s − LSE) of the
//   group's query heads summed over the compressed keys overlapping the block (a key
//   overlapping two blocks counts in both), and a running top (n − forced) is kept by
//   insertion (topk.wgsl: descending, ties to the lower block). Between passes the running
//   choice waits in `best_s`/`best_b`; the last pass writes each query head's list: own,
//   own − 1, 0 (those that exist), then the chosen blocks, NONE after. The host sizes the passes below an adapter's loop cap.
// - `combine`: one invocation per output element: o = g₀·o_cmp + g₁·o_slc + g₂·o_win.
// The backward's own stages are in nsa_backward.wgsl.
// With subgroups (SG > 0, a constant of the variant) and QCAP4 ≥ SG, the rows of a subgroup
// read each key as SG vector loads, one lane each, and shuffle: the key's vec4s are not
// gathered per lane. Every lane of a workgroup runs the key loops (their bounds are uniform).
// Device-memory traffic: `score` reads the group's query rows once and, per block, the
// compressed keys overlapping it (≈ (l′ + l)/d of them, QCAP4 vec4s each).

// `Params`, `params` (binding 0) and `flat`: nsa_params.wgsl.
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> phi: array<f32>;
@group(0) @binding(5) var<storage, read_write> kc: array<f32>;
@group(0) @binding(6) var<storage, read_write> vc: array<f32>;
@group(0) @binding(7) var<storage, read_write> kc4: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> lse: array<f32>;
@group(0) @binding(9) var<storage, read_write> best_s: array<f32>;
@group(0) @binding(10) var<storage, read_write> best_b: array<u32>;
@group(0) @binding(11) var<storage, read_write> lists: array<u32>;
@group(0) @binding(12) var<storage, read> gates: array<f32>;
@group(0) @binding(13) var<storage, read> o_cmp: array<f32>;
@group(0) @binding(14) var<storage, read> o_slc: array<f32>;
@group(0) @binding(15) var<storage, read> o_win: array<f32>;
@group(0) @binding(16) var<storage, read_write> o: array<f32>;
// `NONE` and `list_slot` (the lists' layout): nsa_choice.wgsl.

@compute @workgroup_size(64)
fn compress(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = flat(wg, lid);
    if t >= params.kv_heads * params.mc * QCAP4 {
        return;
    }
    let c0 = (t % QCAP4) * 4u;
    let c = (t / QCAP4) % params.mc;
    let g = t / (QCAP4 * params.mc);
    var sk = vec4<f32>(0.0);
    var sv = vec4<f32>(0.0);
    for (var j = 0u; j < params.cmp_len; j++) {
        let w = phi[g * params.cmp_len + j];
        let row = (g * params.m + c * params.cmp_stride + j) * params.d + c0;
        for (var e = 0u; e < 4u; e++) {
            if c0 + e < params.d {
                sk[e] += w * k[row + e];
                sv[e] += w * v[row + e];
            }
        }
    }
    let out = (g * params.mc + c) * params.d + c0;
    for (var e = 0u; e < 4u; e++) {
        if c0 + e < params.d {
            kc[out + e] = sk[e];
            vc[out + e] = sv[e];
        }
    }
    kc4[t] = sk;
}

@compute @workgroup_size(64)
fn score(@builtin(workgroup_id) wg: vec3<u32>, ids: Ids) {
    let lid = ids.lid;
    let lane = lane_of(ids);
    let runs = (params.n + 63u) / 64u;
    let w = wg.y * params.groups_x + wg.x;
    let g = w / runs;
    if g >= params.kv_heads {
        return; // the grid's padding (uniform per workgroup)
    }
    let run0 = (w % runs) * 64u;
    let i = run0 + lid;
    let live = i < params.n;
    let p = params.q_offset + i32(i);
    let group = params.heads / params.kv_heads;
    // a lane past N or at a negative position chooses nothing (own = 0: no candidates)
    var own = 0u;
    if live && p >= 0 {
        own = u32(p) / params.block;
    }
    let forced = min(own, 2u) + 1u;
    let want = params.topk - forced;
    let st = (g * params.n + min(i, params.n - 1u)) * params.topk;
    var top: TopK;
    if live && params.arg0 > 0u {
        for (var s = 0u; s < want; s++) {
            if best_b[st + s] != NONE {
                top.score[s] = best_s[st + s];
                top.index[s] = best_b[st + s];
                top.count = s + 1u;
            }
        }
    }
    // the run's last candidate block bounds the (uniform) block loop
    let p_last = params.q_offset + i32(min(run0 + 63u, params.n - 1u));
    var end = 0u;
    if p_last >= 0 {
        let own_last = u32(p_last) / params.block;
        end = min(params.arg1, max(own_last, 1u) - 1u);
    }
    let start = max(params.arg0, 1u);
    if start < end {
        // the group's query rows in private vec4 lanes (zeros past D) and their LSEs
        // (scaled once here; heads past the group, GCAP's padding, stay zero and are skipped)
        var qr: array<vec4<f32>, QG>;
        var lr: array<f32, GCAP>;
        if live {
            for (var hh = 0u; hh < group; hh++) {
                let row = (g * group + hh) * params.n + i;
                for (var c = 0u; c < params.d; c++) {
                    qr[hh * QCAP4 + c / 4u][c % 4u] = q[row * params.d + c] * params.scale;
                }
                lr[hh] = lse[row];
            }
        }
        for (var b = start; b < end; b++) {
            // compressed keys overlapping block b: c·stride + l > b·l′ and c·stride < (b+1)·l′
            let first = b * params.block;
            var lo = 0u;
            if first >= params.cmp_len {
                lo = (first - params.cmp_len) / params.cmp_stride + 1u;
            }
            let hi = min((first + params.block + params.cmp_stride - 1u) / params.cmp_stride, params.mc);
            var sc = 0.0;
            for (var c = lo; c < hi; c++) {
                let seen = i32(c * params.cmp_stride + params.cmp_len - 1u) <= p;
                let k0 = (g * params.mc + c) * QCAP4;
                // constant trip counts (GCAP, QCAP4): the query stays in registers
                for (var hh = 0u; hh < GCAP; hh++) {
                    var dt = 0.0;
                    if SG > 0u && QCAP4 >= SG {
                        // lane l loads vec4 j + l of the key (one vector load across the
                        // subgroup), the others arrive by shuffle
                        for (var j = 0u; j < QCAP4; j += SG) {
                            let kl = kc4[k0 + j + lane];
                            for (var l = 0u; l < SG; l++) {
                                dt += dot(qr[hh * QCAP4 + j + l], shuffle4(kl, l));
                            }
                        }
                    } else {
                        for (var x = 0u; x < QCAP4; x++) {
                            dt += dot(qr[hh * QCAP4 + x], kc4[k0 + x]);
                        }
                    }
                    if seen && hh < group {
                        sc += exp(dt - lr[hh]);
                    }
                }
            }
            if b + 2u <= own && want > 0u {
                offer(&top, want, sc, b);
            }
        }
    }
    if !live {
        return;
    }
    if params.last == 0u {
        for (var s = 0u; s < params.topk; s++) {
            if s < top.count {
                best_s[st + s] = top.score[s];
                best_b[st + s] = top.index[s];
            } else {
                best_b[st + s] = NONE;
            }
        }
        return;
    }
    for (var hh = 0u; hh < group; hh++) {
        let out0 = ((g * group + hh) * params.n + i) * params.topk;
        for (var s = 0u; s < params.topk; s++) {
            var e = NONE;
            if p >= 0 {
                e = list_slot(s, own, forced, &top);
            }
            lists[out0 + s] = e;
        }
    }
}

@compute @workgroup_size(64)
fn combine(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = flat(wg, lid);
    if t >= params.heads * params.n * params.d {
        return;
    }
    let g0 = (t / params.d) * 3u;
    o[t] = gates[g0] * o_cmp[t] + gates[g0 + 1u] * o_slc[t] + gates[g0 + 2u] * o_win[t];
}

