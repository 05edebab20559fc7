// decode.wgsl — incremental decoding against a KV cache, split-K (flash-decoding).
//
// `attend`: one dispatch per kv head. Workgroup (split s, row block) owns the G·T query rows
// that share this kv head (G = H / Hkv query heads × T new tokens) and the cache slots
// [slot0 + s·chunk, slot0 + (s+1)·chunk). It stages BC keys of K and V in workgroup memory,
// once for all those rows — so every cached K/V element is read from device memory once per
// kv head, not once per query head (where MQA's speed comes from) — and keeps an online
// softmax per row. It writes a partial per (split, row): the normalised output and its LSE.
// `combine`: per row, merges the splits exactly by log-sum-exp into O and LSE.
//
// Subgroups (SG > 0): as in flash.wgsl, each lane loads a different vec4 of a key or value
// and the rows get the rest by shuffle — SG× fewer same-address loads, which software
// adapters turn into gathers. All subgroup operations run in uniform control flow.
//
// Mods (MODS): the user's score_mod and mask_mod are called per score as for the full
// problem the step is part of — its T queries are the last rows of a T × len call: q_idx = t,
// kv_idx = the key's position, N_Q = T and N_KV = len (private variables set here, as they
// change per step), so bottom-right-aligned rules hold at every step.
//
// Positions: the cache holds positions [lo, len); query token t sits at len − T + t. In ring
// mode (capacity W) slot p % W holds position p and only the last W positions are kept.
// Traffic per step: K and V of the visited slots once per kv head, Q once, partials written
// once and read once, O and LSE written once.

struct Step {
    len: u32,        // positions appended so far
    nq: u32,         // new query tokens T
    lo: u32,         // first position still cached
    slot0: u32,      // first slot the splits cover
    slots: u32,      // slots covered
    chunk: u32,      // slots per split
    splits: u32,
    ring: u32,       // ring capacity in slots, 0 = linear cache
}

struct Head {
    kvh: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

// Binding 0 is the call's `contract` (common.wgsl): heads, kv heads, group, scale, band,
// ALiBi, -inf.
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<uniform> head: Head;
@group(0) @binding(3) var<storage, read> q: array<vec4<f32>>;       // [H, T, D]
@group(0) @binding(4) var<storage, read> k: array<vec4<f32>>;       // this kv head: [slots, D]
@group(0) @binding(5) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> partials: array<vec4<f32>>; // [splits, H·T, D4 + 1]
@group(0) @binding(7) var<storage, read> slopes: array<f32>;
@group(0) @binding(8) var<storage, read_write> o: array<vec4<f32>>;  // [H, T, D]
@group(0) @binding(9) var<storage, read_write> lse: array<f32>;      // [H, T]
// Instrumentation (COUNT = 1 only): [0] cache slots staged (attend) or read (attend_lanes,
// per row), K and V rows each, summed over kv heads and splits; [1] query rows read; [2]
// partial rows written.
@group(0) @binding(10) var<storage, read_write> counters: array<atomic<u32>>;

var<workgroup> k_tile: array<vec4<f32>, BC * D4>;
var<workgroup> v_tile: array<vec4<f32>, BC * D4>;

fn slot_position(slot: u32) -> u32 {
    if step.ring == 0u {
        return slot;
    }
    return step.lo + (slot + step.ring - step.lo % step.ring) % step.ring;
}

// The cache slots split `split` covers: [begin, end).
fn split_slots(split: u32) -> vec2<u32> {
    let begin = step.slot0 + split * step.chunk;
    return vec2<u32>(begin, min(step.slot0 + step.slots, begin + step.chunk));
}

// Query row `r` of this kv head's step: its head, token, row of Q and O, position and ALiBi
// slope (read only for rows that exist).
struct QueryRow {
    h: u32,
    t: u32,
    row: u32,
    pos: i32,
    slope: f32,
}

fn query_row(r: u32, live: bool) -> QueryRow {
    let t = r % step.nq;
    let h = head.kvh * contract.group + r / step.nq;
    var slope = 0.0;
    if contract.alibi != 0u && live {
        slope = slopes[h];
    }
    return QueryRow(h, t, h * step.nq + t, i32(step.len - step.nq + t), slope);
}

// The score of the key in `slot` for `qr`, from its dot product: ALiBi, then the causal band
// and the cached range, then the mods — called only where `call_mods` and the key is visible
// (a user buffer may be indexed by either); MASKED where hidden or where the slot does not
// `exist`.
fn key_score(qk: f32, qr: QueryRow, slot: u32, exists: bool, call_mods: bool) -> f32 {
    let kp = i32(slot_position(slot));
    var sc = qk + alibi_bias(qr.slope, qr.pos, kp);
    var visible = exists && in_band(contract, qr.pos, kp) && u32(kp) >= step.lo;
    if MODS && call_mods && visible {
        sc = score_mod(sc, 0u, qr.h, qr.t, u32(kp));
        visible = mask_mod(0u, qr.h, qr.t, u32(kp));
    }
    return select(MASKED, sc, visible);
}

// A finished row's partial of `split`: its output normalised by the row's sum, and its LSE
// (both NaN where the mods ran out of steps).
fn write_partial(split: u32, row: u32, m_run: f32, l_run: f32, acc: ptr<function, array<vec4<f32>, D4P>>) {
    let base = (split * contract.heads * step.nq + row) * (D4 + 1u);
    let done = softmax_finish(m_run, l_run, contract.neg_inf);
    let poisoned = MODS && mod_overrun;
    let inv = select(done.x, mods_nan(), poisoned);
    for (var x = 0u; x < D4; x++) {
        partials[base + x] = (*acc)[x] * inv;
    }
    partials[base + D4] = vec4<f32>(select(done.y, mods_nan(), poisoned), 0.0, 0.0, 0.0);
}

@compute @workgroup_size(WG)
fn attend(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = ids.lid;
    let lane = lane_of(ids);
    let split = wg.x;
    let r = wg.y * WG + lid;
    let rows = contract.group * step.nq;
    let live = r < rows;
    let qrow = query_row(r, live);
    N_Q = step.nq;
    N_KV = step.len;
    var qr: array<vec4<f32>, D4P>;
    var acc: array<vec4<f32>, D4P>;
    for (var x = 0u; x < D4P; x++) {
        acc[x] = vec4<f32>(0.0);
        qr[x] = vec4<f32>(0.0);
        if live && x < D4 {
            qr[x] = q[qrow.row * D4 + x] * contract.scale;
        }
    }
    var m_run = MASKED;
    var l_run = 0.0;
    var s: array<f32, BC>;
    let slots = split_slots(split);
    let begin = slots.x;
    let end = slots.y;
    if COUNT != 0u && lid == 0u {
        let live_rows = min(WG, rows - min(rows, wg.y * WG));
        atomicAdd(&counters[1], live_rows);
        atomicAdd(&counters[2], live_rows);
    }
    for (var slot0 = begin; slot0 < end; slot0 += BC) {
        if COUNT != 0u && lid == 0u {
            atomicAdd(&counters[0], min(BC, end - slot0));
        }
        for (var x = lid; x < BC * D4; x += WG) {
            let slot = slot0 + x / D4;
            var kk = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if slot < end {
                kk = k[slot0 * D4 + x];
                vv = v[slot0 * D4 + x];
            }
            k_tile[x] = kk;
            v_tile[x] = vv;
        }
        workgroupBarrier();
        var tile_max = MASKED;
        for (var c = 0u; c < BC; c++) {
            let slot = slot0 + c;
            var sc = tile_score(&qr, c, 0u, lane);
            sc = key_score(sc, qrow, slot, slot < end, live);
            s[c] = sc;
            tile_max = max(tile_max, sc);
        }
        softmax_tile(&s, tile_max, &m_run, &l_run, &acc, 0u, lane);
        workgroupBarrier();
    }
    if live {
        write_partial(split, qrow.row, m_run, l_run, &acc);
    }
}

// `attend_lanes`: the same partials from invocations that each own one (split, row) pair —
// no workgroup memory, no barrier, every lane busy. `attend` keeps one query row per
// invocation and stages keys for the rows of its workgroup; where a kv head has fewer rows
// than lanes (MHA's one row per step) the other lanes only stage, and on adapters whose loads
// cost per lane (CPU adapters) staging is a second copy of every key. Here each lane streams
// its split's K and V straight from the cache — adjacent lanes take the same split's rows,
// then the next split's —, scores KB keys at a time and folds them into its online softmax
// with one rescale per KB keys.
@compute @workgroup_size(WG)
fn attend_lanes(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let rows = contract.group * step.nq;
    let i = gid.y * groups.x * WG + gid.x;
    let split = i / rows;
    if split >= step.splits {
        return;
    }
    let qrow = query_row(i % rows, true);
    N_Q = step.nq;
    N_KV = step.len;
    var qr: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4P>;
    for (var x = 0u; x < D4; x++) {
        qr[x] = q[qrow.row * D4 + x] * contract.scale;
        acc[x] = vec4<f32>(0.0);
    }
    var m_run = MASKED;
    var l_run = 0.0;
    let slots = split_slots(split);
    let begin = slots.x;
    let end = slots.y;
    if COUNT != 0u {
        atomicAdd(&counters[0], end - min(begin, end));
        atomicAdd(&counters[1], 1u);
        atomicAdd(&counters[2], 1u);
    }
    for (var c0 = begin; c0 < end; c0 += KB) {
        var s: array<f32, KB>;
        var tile_max = MASKED;
        for (var c = 0u; c < KB; c++) {
            let slot = c0 + c;
            var sc = MASKED;
            if slot < end {
                var qk = 0.0;
                for (var x = 0u; x < D4; x++) {
                    qk += dot(qr[x], k[slot * D4 + x]);
                }
                sc = key_score(qk, qrow, slot, true, true);
            }
            s[c] = sc;
            tile_max = max(tile_max, sc);
        }
        let rescale = softmax_rescale(m_run, tile_max);
        let m_new = rescale.x;
        // the batch's weights summed on their own, then added (as softmax_tile does)
        var tile_l = 0.0;
        for (var x = 0u; x < D4; x++) {
            acc[x] *= rescale.y;
        }
        for (var c = 0u; c < KB; c++) {
            let p = softmax_weight(s[c], m_new);
            if p > 0.0 {
                tile_l += p;
                let slot = c0 + c;
                for (var x = 0u; x < D4; x++) {
                    acc[x] += p * v[slot * D4 + x];
                }
            }
        }
        l_run = l_run * rescale.y + tile_l;
        m_run = m_new;
    }
    write_partial(split, qrow.row, m_run, l_run, &acc);
}

@compute @workgroup_size(64)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let row = gid.x;
    let rows = contract.heads * step.nq;
    if row >= rows {
        return;
    }
    var total = contract.neg_inf;
    for (var sp = 0u; sp < step.splits; sp++) {
        total = lse_merge(total, partials[(sp * rows + row) * (D4 + 1u) + D4].x, contract.neg_inf);
    }
    for (var x = 0u; x < D4; x++) {
        var out = vec4<f32>(0.0);
        if total != contract.neg_inf {
            for (var sp = 0u; sp < step.splits; sp++) {
                let base = (sp * rows + row) * (D4 + 1u);
                let l = partials[base + D4].x;
                if l != contract.neg_inf {
                    out += partials[base + x] * exp(l - total);
                }
            }
        }
        o[row * D4 + x] = out;
    }
    lse[row] = total;
}
