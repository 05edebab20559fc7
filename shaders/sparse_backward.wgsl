// sparse_backward.wgsl — the backward of attention over per-query lists of key blocks
// (sparse.wgsl): dQ, dK, dV from Q, K, V, O, dO, the forward's LSE and the same lists,
// key-block-centric like the forward and recomputing the probabilities as backward.wgsl does:
//   s_ij = scale·q_i·k_j + bias_ij,  P_ij = exp(s_ij − LSE_i),  Δ_i = dO_i·O_i,
//   dS_ij = P_ij·(dO_i·v_j − Δ_i),  dQ_i = scale·Σ_j dS_ij·k_j,
//   dK_j = scale·Σ_i dS_ij·q_i,  dV_j = Σ_i P_ij·dO_i,
// where j runs over the keys of the row's chosen blocks only (no gradient through the choice)
// and dK, dV of a kv head sum over the rows of every query head of its group.
//
// Four entry points, run in this order:
// - `delta`: one invocation per row (h·N + i): stats = (LSE, Δ).
// - `dq_attend`: one workgroup per chunk — at most BR list entries that chose the same block
//   of the same kv head, grouped on the host exactly as for the forward's `attend` — one
//   invocation per entry, walking the block's keys in tiles of BC staged in workgroup memory;
//   each entry writes its share of the row's dQ (a partial, in its list slot).
// - `dq_merge`: one invocation per (row, vec4 lane): dQ = the sum of the row's partials (plain
//   sums: P uses the final LSE, so the shares add up exactly; NONE entries hold nothing).
// - `dkv`: one workgroup per (kv head, block, tile of BC keys), one invocation per key,
//   walking every entry that chose the block (the rows of all query heads of the group) in
//   tiles of BR rows staged in workgroup memory with their (LSE, Δ), position and ALiBi slope;
//   dK and dV stay in registers and each key is written by its one owner (no atomics).
//
// Device-memory traffic: `dq_attend` reads each chunk's block of K and V once and writes
// D floats per entry; `dkv` reads each block's K and V once and the Q and dO rows of every
// entry that chose it once per key tile; `dq_merge` reads every partial once.
//
// Passes: the partials of dQ, H·N·topk·D floats, run in passes of rows that fit one binding
// (`slot_base`, `row_base`), as the forward's; `dkv` walks a list of entries in passes of
// `pass_tiles` row tiles below an adapter's loop cap, a later pass adding to dK and dV in
// memory (exact: plain sums).
// Subgroups (SG > 0): as in backward.wgsl, lane l loads vec4 j·SG + l of a staged row and the
// others arrive by shuffle.

struct SparseBwd {
    block: u32,      // keys per block
    topk: u32,       // list entries per query row
    count: u32,      // rows (delta), chunks (dq_attend), invocations (dq_merge), workgroups (dkv)
    groups_x: u32,   // workgroups per grid row (2-D grids for long dispatches)
    slot_base: u32,  // first list slot of this pass of rows: the partials hold its slots only
    row_base: u32,   // first row (h·N + i) of this pass
    blocks: u32,     // dkv: key blocks per kv head
    key_tiles: u32,  // dkv: tiles of BC keys per block
    starts_at: u32,  // dkv: offset of the per-(kv head, block) entry ranges in `entries`
    pass_index: u32, // dkv: this pass over each list of entries (0 writes dK, dV; later ones add)
    pass_tiles: u32, // dkv: row tiles per list per pass (0: whole lists)
    pad0: u32,
}

const NONE: u32 = 0xffffffffu;

@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> d_o: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> o: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> lse: array<f32>;
// (LSE, Δ) per row, written by `delta`.
@group(0) @binding(7) var<storage, read_write> stats: array<vec2<f32>>;
@group(0) @binding(8) var<storage, read> lists: array<u32>;
// (kv head, block, first entry, entries) per chunk of `dq_attend`.
@group(0) @binding(9) var<storage, read> chunks: array<vec4<u32>>;
// List slots (h·N + i)·topk + s grouped by (kv head, block); for `dkv`, then the groups' ranges
// (starts_at + kv head·blocks + block: first entry; the next word: the end).
@group(0) @binding(10) var<storage, read> entries: array<u32>;
@group(0) @binding(11) var<storage, read_write> part_dq: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read> slopes: array<f32>;
@group(0) @binding(13) var<uniform> sp: SparseBwd;
@group(0) @binding(14) var<storage, read_write> dq: array<vec4<f32>>;
@group(0) @binding(15) var<storage, read_write> dk: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read_write> dv: array<vec4<f32>>;

fn slope_of(h: u32) -> f32 {
    if contract.alibi == 0u {
        return 0.0;
    }
    return slopes[h];
}

@compute @workgroup_size(64)
fn delta(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = (wg.y * sp.groups_x + wg.x) * 64u + lid;
    if row >= sp.count {
        return;
    }
    var acc = 0.0;
    for (var x = 0u; x < D4; x++) {
        acc += dot(d_o[row * D4 + x], o[row * D4 + x]);
    }
    stats[row] = vec2<f32>(lse[row], acc);
}

var<workgroup> k_tile: array<vec4<f32>, BC * D4>;
var<workgroup> v_tile: array<vec4<f32>, BC * D4>;

@compute @workgroup_size(BR)
fn dq_attend(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = ids.lid;
    let lane = lane_of(ids);
    let chunk_id = wg.y * sp.groups_x + wg.x;
    if chunk_id >= sp.count {
        return; // the grid's padding (uniform per workgroup)
    }
    let chunk = chunks[chunk_id];
    let kv_base = chunk.x * contract.m * D4;
    let key_begin = chunk.y * sp.block;
    let key_end = min(key_begin + sp.block, contract.m);
    // Entries past the chunk's run too (on zeros, P = 0), so that subgroup operations see
    // every lane; they write nothing.
    let live = lid < chunk.w;
    var slot = 0u;
    if live {
        slot = entries[chunk.z + lid];
    }
    let row_id = slot / sp.topk; // h·N + i
    let pos = contract.q_offset + i32(row_id % contract.n);
    let slope = slope_of(row_id / contract.n);
    let st = stats[row_id];
    let row_lse = select(contract.neg_inf, st.x, live);
    let row_on = row_lse != contract.neg_inf;

    var qr: array<vec4<f32>, D4P>;
    var dor: array<vec4<f32>, D4P>;
    var acc: array<vec4<f32>, D4P>;
    for (var x = 0u; x < D4P; x++) {
        qr[x] = vec4<f32>(0.0);
        dor[x] = vec4<f32>(0.0);
        acc[x] = vec4<f32>(0.0);
        if live && x < D4 {
            qr[x] = q[row_id * D4 + x] * contract.scale;
            dor[x] = d_o[row_id * D4 + x];
        }
    }
    for (var key0 = key_begin; key0 < key_end; key0 += BC) {
        // Stage the K and V tile (keys past the block read as zero and are masked below).
        for (var x = lid; x < BC * D4; x += BR) {
            var kk = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if key0 + x / D4 < key_end {
                kk = k[kv_base + key0 * D4 + x];
                vv = v[kv_base + key0 * D4 + x];
            }
            k_tile[x] = kk;
            v_tile[x] = vv;
        }
        workgroupBarrier();
        for (var c = 0u; c < BC; c++) {
            var sc = 0.0;
            var dp = 0.0;
            if SG > 0u {
                for (var j = 0u; j < D4P; j += SG) {
                    let kl = k_tile[c * D4 + lane_at(j, lane)];
                    let vl = v_tile[c * D4 + lane_at(j, lane)];
                    for (var l = 0u; l < SG; l++) {
                        sc += dot(qr[j + l], shuffle4(kl, l));
                        dp += dot(dor[j + l], shuffle4(vl, l));
                    }
                }
            } else {
                for (var x = 0u; x < D4; x++) {
                    sc += dot(qr[x], k_tile[c * D4 + x]);
                    dp += dot(dor[x], v_tile[c * D4 + x]);
                }
            }
            let key = i32(key0 + c);
            sc += alibi_bias(slope, pos, key);
            let visible = key0 + c < key_end && in_band(contract, pos, key) && row_on;
            let p = select(0.0, exp(sc - row_lse), visible);
            let ds = p * (dp - st.y) * contract.scale;
            if SG > 0u {
                for (var j = 0u; j < D4P; j += SG) {
                    let kl = k_tile[c * D4 + lane_at(j, lane)];
                    for (var l = 0u; l < SG; l++) {
                        acc[j + l] += ds * shuffle4(kl, l);
                    }
                }
            } else {
                for (var x = 0u; x < D4; x++) {
                    acc[x] += ds * k_tile[c * D4 + x];
                }
            }
        }
        workgroupBarrier();
    }
    if live {
        for (var x = 0u; x < D4; x++) {
            part_dq[(slot - sp.slot_base) * D4 + x] = acc[x];
        }
    }
}

@compute @workgroup_size(64)
fn dq_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wg.y * sp.groups_x + wg.x) * 64u + lid;
    if t >= sp.count {
        return;
    }
    let x = t % D4;
    let row_id = sp.row_base + t / D4;
    let slot0 = row_id * sp.topk; // in `lists`
    var g = vec4<f32>(0.0);
    for (var s = 0u; s < sp.topk; s++) {
        if lists[slot0 + s] != NONE {
            g += part_dq[(slot0 + s - sp.slot_base) * D4 + x];
        }
    }
    dq[row_id * D4 + x] = g;
}

var<workgroup> q_tile: array<vec4<f32>, BR * D4>;
var<workgroup> do_tile: array<vec4<f32>, BR * D4>;
var<workgroup> r_stats: array<vec2<f32>, BR>;
var<workgroup> r_pos: array<i32, BR>;
var<workgroup> r_slope: array<f32, BR>;

@compute @workgroup_size(BC)
fn dkv(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = ids.lid;
    let lane = lane_of(ids);
    let w = wg.y * sp.groups_x + wg.x;
    if w >= sp.count {
        return; // the grid's padding (uniform per workgroup)
    }
    let group = w / sp.key_tiles; // kv head · blocks + block
    let block = group % sp.blocks;
    let key_end = min((block + 1u) * sp.block, contract.m);
    let key = block * sp.block + (w % sp.key_tiles) * BC + lid;
    let live = key < key_end;
    let at = ((group / sp.blocks) * contract.m + min(key, contract.m - 1u)) * D4;
    let first = entries[sp.starts_at + group];
    let end = entries[sp.starts_at + group + 1u];
    let share = pass_share(0u, (end - first + BR - 1u) / BR, sp.pass_index, sp.pass_tiles);
    let resume = sp.pass_index > 0u;
    if resume && share.x == share.y {
        return; // this block's dK, dV are final (uniform per workgroup)
    }

    var kr: array<vec4<f32>, D4P>;
    var vr: array<vec4<f32>, D4P>;
    var acc_k: array<vec4<f32>, D4P>;
    var acc_v: array<vec4<f32>, D4P>;
    for (var x = 0u; x < D4P; x++) {
        kr[x] = vec4<f32>(0.0);
        vr[x] = vec4<f32>(0.0);
        acc_k[x] = vec4<f32>(0.0);
        acc_v[x] = vec4<f32>(0.0);
        if live && x < D4 {
            kr[x] = k[at + x] * contract.scale;
            vr[x] = v[at + x];
            if resume {
                acc_k[x] = dk[at + x];
                acc_v[x] = dv[at + x];
            }
        }
    }

    for (var t = share.x; t < share.y; t++) {
        let e0 = first + t * BR;
        let here = min(BR, end - e0);
        // Stage BR entries' rows of Q and dO with their (LSE, Δ), positions and slopes; slots
        // past the list get LSE = −inf, so they contribute nothing.
        for (var x = lid; x < BR * D4; x += BC) {
            var qq = vec4<f32>(0.0);
            var gg = vec4<f32>(0.0);
            if x / D4 < here {
                let row_id = entries[e0 + x / D4] / sp.topk;
                qq = q[row_id * D4 + x % D4];
                gg = d_o[row_id * D4 + x % D4];
            }
            q_tile[x] = qq;
            do_tile[x] = gg;
        }
        for (var r = lid; r < BR; r += BC) {
            var st = vec2<f32>(contract.neg_inf, 0.0);
            var pos = 0;
            var slope = 0.0;
            if r < here {
                let row_id = entries[e0 + r] / sp.topk;
                st = stats[row_id];
                pos = contract.q_offset + i32(row_id % contract.n);
                slope = slope_of(row_id / contract.n);
            }
            r_stats[r] = st;
            r_pos[r] = pos;
            r_slope[r] = slope;
        }
        workgroupBarrier();

        for (var r = 0u; r < BR; r++) {
            var sc = 0.0;
            var dp = 0.0;
            if SG > 0u {
                for (var j = 0u; j < D4P; j += SG) {
                    let ql = q_tile[r * D4 + lane_at(j, lane)];
                    let gl = do_tile[r * D4 + lane_at(j, lane)];
                    for (var l = 0u; l < SG; l++) {
                        sc += dot(kr[j + l], shuffle4(ql, l));
                        dp += dot(vr[j + l], shuffle4(gl, l));
                    }
                }
            } else {
                for (var x = 0u; x < D4; x++) {
                    sc += dot(kr[x], q_tile[r * D4 + x]);
                    dp += dot(vr[x], do_tile[r * D4 + x]);
                }
            }
            let pos = r_pos[r];
            sc += alibi_bias(r_slope[r], pos, i32(key));
            let st = r_stats[r];
            let visible = live && in_band(contract, pos, i32(key)) && st.x != contract.neg_inf;
            let p = select(0.0, exp(sc - st.x), visible);
            let ds = p * (dp - st.y) * contract.scale;
            if SG > 0u {
                for (var j = 0u; j < D4P; j += SG) {
                    let ql = q_tile[r * D4 + lane_at(j, lane)];
                    let gl = do_tile[r * D4 + lane_at(j, lane)];
                    for (var l = 0u; l < SG; l++) {
                        acc_k[j + l] += ds * shuffle4(ql, l);
                        acc_v[j + l] += p * shuffle4(gl, l);
                    }
                }
            } else {
                for (var x = 0u; x < D4; x++) {
                    acc_k[x] += ds * q_tile[r * D4 + x];
                    acc_v[x] += p * do_tile[r * D4 + x];
                }
            }
        }
        workgroupBarrier();
    }

    if live {
        for (var x = 0u; x < D4; x++) {
            dk[at + x] = acc_k[x];
            dv[at + x] = acc_v[x];
        }
    }
}
