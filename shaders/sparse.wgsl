// sparse.wgsl — attention over per-query lists of key blocks (learned sparse attention: the
// blocks MoBA's selection stage chose), key-block-centric as MoBA's own implementation is:
// the queries that chose one key block are gathered and attend to it together, and each
// query's partial results (one per list entry) are merged by log-sum-exp.
//
// Two entry points:
// - `attend`: one workgroup per chunk of at most BR gathered rows that chose the same key
//   block of the same kv head (the host groups the list entries: `chunks` = (kv head, block,
//   first entry in `rows`, entries), `rows` = list slots (h·N + i)·topk + s). Rows of
//   different query heads of one kv group share a chunk, so GQA and MQA stage each K/V tile
//   once for all of them. The workgroup walks the block's keys in tiles of BC staged in
//   workgroup memory, exactly like flash's tile loop (same scores, same subgroup shuffles,
//   the shared online-softmax step); every key is masked by the call's band (causal inside
//   the query's own block, windows) and ALiBi is added. Each row writes its partial O
//   (normalised) and LSE to its slot.
// - `merge`: one invocation per (row, vec4 lane): the row's partials folded by log-sum-exp
//   (entries NONE and partials with no visible key weigh 0); a row with nothing visible
//   gets O = 0 and LSE = -inf, as the contract says.
//
// With `direct` set, `attend` runs one workgroup per list slot instead, reading the slot's
// block from `lists` on the device (no chunks, no host grouping, no read-back; rows of one block
// are not shared, which decoding — a row or a few per block — does not need).
//
// Device-memory traffic: `attend` reads each chunk's block of K and V once (2·B·D floats per
// chunk), each gathered row of Q once and writes D + 1 floats per slot; `merge` reads every
// slot's partial once and writes O and LSE. The partials, H·N·topk·(D + 1) floats, are the
// price of visiting each key block once per chunk instead of once per query; where they pass
// a binding's limit the host runs the rows in passes (`slot_base`, `row_base`).
// Loops: the host checks the tiles per block against an adapter's loop cap.

struct Sparse {
    block: u32,     // keys per block
    topk: u32,      // list entries per query row
    count: u32,     // chunks (attend) or invocations (merge) of this dispatch
    groups_x: u32,  // workgroups per grid row (2-D grids for long dispatches)
    slot_base: u32, // first list slot of this pass: the partials hold the pass's slots only
    row_base: u32,  // first row (h·N + i) of this pass
    direct: u32,    // nonzero: one workgroup per list slot, its block read from `lists` (no chunks)
    pad1: u32,
}

const NONE: u32 = 0xffffffffu;

@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> lists: array<u32>;
@group(0) @binding(5) var<storage, read> chunks: array<vec4<u32>>;
@group(0) @binding(6) var<storage, read> rows: array<u32>;
@group(0) @binding(7) var<storage, read_write> part_o: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> part_lse: array<f32>;
@group(0) @binding(9) var<storage, read> slopes: array<f32>;
@group(0) @binding(10) var<uniform> sparse: Sparse;
@group(0) @binding(11) var<storage, read_write> o: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> lse: array<f32>;

var<workgroup> k_tile: array<vec4<f32>, BC * D4>;
var<workgroup> v_tile: array<vec4<f32>, BC * D4>;

@compute @workgroup_size(BR)
fn attend(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = ids.lid;
    let lane = lane_of(ids);
    let chunk_id = wg.y * sparse.groups_x + wg.x;
    if chunk_id >= sparse.count {
        return; // the grid's padding (uniform per workgroup)
    }
    var chunk: vec4<u32>;
    if sparse.direct != 0u {
        // one workgroup per list slot of this pass, its block read on the device: no grouping
        // on the host, no read-back (decoding-sized calls, a row or a few per block)
        let at = sparse.slot_base + chunk_id;
        let b = lists[at];
        if b == NONE {
            return; // uniform per workgroup; the merge gives this entry no weight
        }
        chunk = vec4<u32>(at / sparse.topk / contract.n / contract.group, b, at, 1u);
    } else {
        chunk = chunks[chunk_id];
    }
    let kvh = chunk.x;
    let key_begin = chunk.y * sparse.block;
    let key_end = min(key_begin + sparse.block, contract.m);
    // Rows past the chunk's entries run too (on zeros), so that subgroup operations see
    // every lane; they write nothing.
    let live = lid < chunk.w;
    var slot = 0u;
    if live {
        if sparse.direct != 0u {
            slot = chunk.z;
        } else {
            slot = rows[chunk.z + lid];
        }
    }
    let row_id = slot / sparse.topk; // h·N + i
    let h = row_id / contract.n;
    let pos = contract.q_offset + i32(row_id % contract.n);
    var slope = 0.0;
    if contract.alibi != 0u && live {
        slope = slopes[h];
    }
    var qr: array<vec4<f32>, D4P>;
    var acc: array<vec4<f32>, D4P>;
    for (var x = 0u; x < D4P; x++) {
        acc[x] = vec4<f32>(0.0);
        qr[x] = vec4<f32>(0.0);
        if live && x < D4 {
            qr[x] = q[row_id * D4 + x] * contract.scale;
        }
    }
    var m_run = MASKED;
    var l_run = 0.0;
    var s: array<f32, BC>;
    let kv_base = kvh * contract.m * D4;
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
        var tile_max = MASKED;
        for (var c = 0u; c < BC; c++) {
            var sc = tile_score(&qr, c, 0u, lane);
            let key = i32(key0 + c);
            sc += alibi_bias(slope, pos, key);
            if key0 + c >= key_end || !in_band(contract, pos, key) {
                sc = MASKED;
            }
            s[c] = sc;
            tile_max = max(tile_max, sc);
        }
        softmax_tile(&s, tile_max, &m_run, &l_run, &acc, 0u, lane);
        workgroupBarrier();
    }
    if live {
        let done = softmax_finish(m_run, l_run, contract.neg_inf);
        for (var x = 0u; x < D4; x++) {
            part_o[(slot - sparse.slot_base) * D4 + x] = acc[x] * done.x;
        }
        part_lse[slot - sparse.slot_base] = done.y;
    }
}

@compute @workgroup_size(64)
fn merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = (wg.y * sparse.groups_x + wg.x) * 64u + lid;
    if t >= sparse.count {
        return;
    }
    let x = t % D4;
    let row_id = sparse.row_base + t / D4;
    let slot0 = row_id * sparse.topk; // in `lists`
    let part0 = slot0 - sparse.slot_base; // in the partials
    var m = contract.neg_inf;
    for (var s = 0u; s < sparse.topk; s++) {
        if lists[slot0 + s] != NONE {
            m = max(m, part_lse[part0 + s]);
        }
    }
    var out = vec4<f32>(0.0);
    var row_lse = contract.neg_inf;
    if m != contract.neg_inf {
        var l = 0.0;
        for (var s = 0u; s < sparse.topk; s++) {
            let at = part0 + s;
            if lists[slot0 + s] != NONE && part_lse[at] != contract.neg_inf {
                let w = exp(part_lse[at] - m);
                l += w;
                out += w * part_o[at * D4 + x];
            }
        }
        out /= l;
        row_lse = m + log(l);
    }
    o[row_id * D4 + x] = out;
    if x == 0u {
        lse[row_id] = row_lse;
    }
}
