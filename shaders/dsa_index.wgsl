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
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;  // [rows, M]
@group(0) @binding(5) var<storage, read_write> lists: array<u32>;   // [B, N, k]

@compute @workgroup_size(64)
fn index_scores(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let key_tiles = (params.m + 63u) / 64u;
    let w = wg.y * params.groups_x + wg.x;
    let kt = w % key_tiles;
    let r0 = (w / key_tiles) * params.arg0;
    if r0 >= params.rows {
        return; // the grid's padding (uniform)
    }
    let r1 = min(r0 + params.arg0, params.rows);
    let s = kt * 64u + lid;
    let hi = params.index_heads;
    var kr: array<vec4<f32>, DI4>;
    var seq = 0xffffffffu;
    for (var r = r0; r < r1; r++) {
        let row = params.row0 + r;
        let b = row / params.n;
        let p = params.q_offset + i32(row % params.n);
        if i32(kt * 64u) > p {
            continue; // uniform: no key of the tile is visible to this row
        }
        if b != seq {
            seq = b;
            if s < params.m {
                for (var x = 0u; x < DI4; x++) {
                    kr[x] = ki[(b * params.m + s) * DI4 + x];
                }
            }
        }
        if s < params.m && i32(s) <= p {
            var acc = 0.0;
            for (var j = 0u; j < hi; j++) {
                let q0 = (row * hi + j) * DI4;
                var dot4 = vec4<f32>(0.0);
                for (var x = 0u; x < DI4; x++) {
                    dot4 += qi[q0 + x] * kr[x];
                }
                acc += wi[row * hi + j] * max(dot4.x + dot4.y + dot4.z + dot4.w, 0.0);
            }
            scores[r * params.m + s] = acc;
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
var<workgroup> counts: array<u32, 512>;  // per lane: keys above T, then keys equal to T
var<workgroup> found: vec2<u32>;         // the prefix of T so far, ties still wanted

@compute @workgroup_size(256)
fn top_k(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = wg.y * params.groups_x + wg.x;
    if r >= params.rows {
        return; // uniform
    }
    let row = params.row0 + r;
    let p = params.q_offset + i32(row % params.n);
    let len = u32(clamp(p + 1, 0, i32(params.m)));
    let k = params.topk;
    let out = row * k;
    let base = r * params.m;
    if len <= k {
        for (var t = lid; t < k; t += 256u) {
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
        atomicStore(&hist[lid], 0u);
        workgroupBarrier();
        for (var s = lid; s < len; s += 256u) {
            let u = order_key(scores[base + s]);
            if (u & mask) == prefix {
                atomicAdd(&hist[(u >> shift) & 255u], 1u);
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
    // compaction in key order: segments of ⌈len/256⌉ keys, one a lane
    let seg = (len + 255u) / 256u;
    let lo = min(lid * seg, len);
    let hi = min(lo + seg, len);
    var above = 0u;
    var equal = 0u;
    for (var s = lo; s < hi; s++) {
        let u = order_key(scores[base + s]);
        above += u32(u > prefix);
        equal += u32(u == prefix);
    }
    counts[lid] = above;
    counts[256u + lid] = equal;
    workgroupBarrier();
    if lid == 0u {
        var at = 0u;
        var ties = 0u;
        for (var l = 0u; l < 256u; l++) {
            let a = counts[l];
            let e = counts[256u + l];
            counts[l] = at;
            counts[256u + l] = ties;
            at += a + min(e, want - min(ties, want));
            ties += e;
        }
    }
    workgroupBarrier();
    var at = counts[lid];
    var ties = counts[256u + lid];
    for (var s = lo; s < hi; s++) {
        let u = order_key(scores[base + s]);
        if u > prefix || (u == prefix && ties < want) {
            lists[out + at] = s;
            at++;
        }
        ties += u32(u == prefix);
    }
}
