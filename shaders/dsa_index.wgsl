// dsa_index.wgsl — DSA's selection stage: the lightning indexer's scores and each row's top-k
// keys (src/contract/dsa.rs holds the rule and its f64 oracle). Rows are taken in chunks (a
// chunk's scores, rows × M floats, are what the stage keeps in memory); per chunk:
//
// - `index_scores`: one invocation per key, a workgroup per (tile of `arg0` rows, 64 keys):
//   I(p, s) = Σ_j w[row, j] · ReLU(qI[row, j] · kI[s]) for s ≤ p, the key's kI held in DI4
//   private vec4s and reloaded when the tile crosses into the next sequence; the rows' qI and
//   w are the same address for every lane (a broadcast on a GPU). Keys after a row's position
//   are never written nor read; a tile wholly after its rows' positions returns at once.
// - `top_k`: one workgroup of 256 per row. Scores map to order-preserving u32 keys (−0 as +0);
//   four radix passes of 8 bits histogram the keys still in the running (workgroup atomics)
//   and narrow to the exact k-th largest key T and the number of ties at T still wanted;
//   then each lane counts a contiguous segment's keys above T and equal to T, lane 0 turns
//   the counts into output offsets (ties go to the lower keys: segments are in key order),
//   and each lane writes its segment's chosen keys — the list in ascending key order, as the
//   oracle writes it. A row with at most k visible keys lists them all, NONE after.
// Loops: `index_scores` runs arg0 · HI · (DI4 + 1) iterations, `top_k` about M/256 per pass;
// the host checks both against an adapter's loop cap.

@group(0) @binding(1) var<storage, read> qi: array<vec4<f32>>;   // [B, N, HI, DI]
@group(0) @binding(2) var<storage, read> ki: array<vec4<f32>>;   // [B, M, DI]
@group(0) @binding(3) var<storage, read> wi: array<f32>;         // [B, N, HI]
@group(0) @binding(4) var<storage, read_write> scores: array<vec4<f32>>;  // [rows, ⌈M/4⌉]
@group(0) @binding(5) var<storage, read_write> lists: array<u32>;         // [B, N, k]

@compute @workgroup_size(64)
fn index_scores(@builtin(workgroup_id) wg: vec3<u32>, ids: Ids) {
    let lid = ids.lid;
    let lane = lane_of(ids);
    let m4 = (params.m + 3u) / 4u;
    let key_tiles = (m4 + 63u) / 64u;
    let w = wg.y * params.groups_x + wg.x;
    let kt = w % key_tiles;
    let r0 = (w / key_tiles) * params.arg0;
    if r0 >= params.rows {
        return; // the grid's padding (uniform)
    }
    let r1 = min(r0 + params.arg0, params.rows);
    let s4 = kt * 64u + lid;  // this lane's keys: 4·s4 … 4·s4 + 3
    let hi = params.index_heads;
    let q_end = arrayLength(&qi) - 1u;
    let w_end = arrayLength(&wi) - 1u;
    var kr: array<vec4<f32>, KR>;  // [4 keys, DI4]
    var seq = 0xffffffffu;
    for (var r = r0; r < r1; r++) {
        let row = params.row0 + r;
        let b = row / params.n;
        let p = params.q_offset + i32(row % params.n);
        if i32(kt * 256u) > p {
            continue; // uniform: no key of the tile is visible to this row
        }
        if b != seq {
            seq = b;
            for (var e = 0u; e < 4u; e++) {
                let key = s4 * 4u + e;
                for (var x = 0u; x < DI4; x++) {
                    kr[e * DI4 + x] = select(vec4<f32>(0.0), ki[min(b * params.m + key, arrayLength(&ki) / DI4 - 1u) * DI4 + x], key < params.m);
                }
            }
        }
        // the row's qI and w are the same for every lane: on the subgroup path lane l loads
        // vec4 c + l of them (one vector load across the subgroup), the rest by shuffle
        let q0 = row * hi * DI4;
        var ql = vec4<f32>(0.0);
        var wl = 0.0;
        var acc = vec4<f32>(0.0);
        for (var j = 0u; j < hi; j++) {
            var wj: f32;
            if SG > 0u {
                if j % SG1 == 0u {
                    wl = wi[min(row * hi + j + lane, w_end)];
                }
                wj = shuffle1(wl, j % SG1);
            } else {
                wj = wi[row * hi + j];
            }
            var dots = vec4<f32>(0.0);
            for (var x = 0u; x < DI4; x++) {
                let at = j * DI4 + x;
                var qv: vec4<f32>;
                if SG > 0u {
                    if at % SG1 == 0u {
                        ql = qi[min(q0 + at + lane, q_end)];
                    }
                    qv = shuffle4(ql, at % SG1);
                } else {
                    qv = qi[q0 + at];
                }
                dots += vec4<f32>(dot(qv, kr[x]), dot(qv, kr[DI4 + x]), dot(qv, kr[2u * DI4 + x]), dot(qv, kr[3u * DI4 + x]));
            }
            acc += wj * max(dots, vec4<f32>(0.0));
        }
        if s4 < m4 {
            scores[r * m4 + s4] = acc;
        }
    }
}

// An order-preserving u32 of a finite f32 (larger float, larger key); −0 maps as +0.
fn order_key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    if b == 0x80000000u {
        return 0x80000000u;
    }
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> counts: array<u32, 128>;  // per lane: keys above T, then keys equal to T
var<workgroup> found: vec2<u32>;         // the prefix of T so far, ties still wanted

@compute @workgroup_size(64)
fn top_k(@builtin(workgroup_id) wg: vec3<u32>, ids: Ids) {
    let lid = ids.lid;
    let r = wg.y * params.groups_x + wg.x;
    if r >= params.rows {
        return; // uniform
    }
    let row = params.row0 + r;
    let p = params.q_offset + i32(row % params.n);
    let len = u32(clamp(p + 1, 0, i32(params.m)));
    let k = params.topk;
    let out = row * k - params.list_base;
    let m4 = (params.m + 3u) / 4u;
    let base = r * m4;
    let len4 = (len + 3u) / 4u;
    if len <= k {
        for (var t = lid; t < k; t += 64u) {
            lists[out + t] = select(NONE, t, t < len);
        }
        return; // uniform
    }
    // radix select: the k-th largest key, 8 bits a pass from the top
    var prefix = 0u;
    var mask = 0u;
    var want = k;
    for (var round = 0u; round < 4u; round++) {
        let shift = 24u - 8u * round;
        for (var b = lid; b < 256u; b += 64u) {
            atomicStore(&hist[b], 0u);
        }
        workgroupBarrier();
        for (var s4 = lid; s4 < len4; s4 += 64u) {
            let v = scores[base + s4];
            for (var e = 0u; e < 4u; e++) {
                let u = order_key(v[e]);
                if (u & mask) == prefix && s4 * 4u + e < len {
                    atomicAdd(&hist[(u >> shift) & 255u], 1u);
                }
            }
        }
        workgroupBarrier();
        if lid == 0u {
            // from the top bin down to the one holding the `want`-th largest key
            var left = want;
            var bin = 255u;
            loop {
                let c = atomicLoad(&hist[bin]);
                if c >= left || bin == 0u {
                    break;
                }
                left -= c;
                bin -= 1u;
            }
            found = vec2<u32>(prefix | (bin << shift), left);
        }
        let f = workgroupUniformLoad(&found);
        prefix = f.x;
        want = f.y;
        mask |= 255u << shift;
    }
    // compaction in key order: a contiguous segment of the row's vec4s of keys a lane
    let seg = (len4 + 63u) / 64u;
    let lo = min(lid * seg, len4);
    let hi = min(lo + seg, len4);
    var above = 0u;
    var equal = 0u;
    for (var s4 = lo; s4 < hi; s4++) {
        let v = scores[base + s4];
        for (var e = 0u; e < 4u; e++) {
            let u = order_key(v[e]);
            let inside = s4 * 4u + e < len;
            above += u32(inside && u > prefix);
            equal += u32(inside && u == prefix);
        }
    }
    counts[lid] = above;
    counts[64u + lid] = equal;
    workgroupBarrier();
    if lid == 0u {
        var at = 0u;
        var ties = 0u;
        for (var l = 0u; l < 64u; l++) {
            let a = counts[l];
            let e = counts[64u + l];
            counts[l] = at;
            counts[64u + l] = ties;
            at += a + min(e, want - min(ties, want));
            ties += e;
        }
    }
    workgroupBarrier();
    var at = counts[lid];
    var ties = counts[64u + lid];
    for (var s4 = lo; s4 < hi; s4++) {
        let v = scores[base + s4];
        for (var e = 0u; e < 4u; e++) {
            let s = s4 * 4u + e;
            let u = order_key(v[e]);
            if s < len && (u > prefix || (u == prefix && ties < want)) {
                lists[out + at] = s;
                at++;
            }
            ties += u32(s < len && u == prefix);
        }
    }
}
