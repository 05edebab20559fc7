// flash.wgsl — tiled online-softmax attention forward (FlashAttention).
//
// Algorithm: a workgroup owns BR consecutive query rows of one (batch, head); each
// invocation owns one row, keeping q (pre-scaled), the output accumulator and the running
// max / sum in private memory. The workgroup walks the key tiles listed for its query tile
// in the block map (CSR: row pointers, entries `tile | FULL<<31`, per-entry mask indices,
// visibility bits for tiles a sparse mask covers only partly); for each it stages
// BC keys of K and V in workgroup memory, computes BC scores per row, and folds them into
// the running softmax (rescaling the accumulator once per tile). Tiles absent from the map
// are never loaded; FULL tiles skip the per-element mask test. The N×M score matrix is
// never written anywhere.
//
// Wide heads: a row's private state (q and the accumulator, 2·D floats) is capped at 32 vec4
// lanes each, past which registers spill on GPUs. So P invocations share a row, each owning
// DP4 = ceil(D4 / P) lanes of q and of the accumulator; their partial dot products meet in
// workgroup memory (`s_part`, one extra barrier per tile; P = 1 skips it).
//
// Subgroups (SG > 0, P = 1): every row needs the same K/V values, and a software adapter
// turns such same-address workgroup loads into gathers, one per lane. With SG-wide subgroups
// each lane instead loads a different vec4 of the key and the row gets the rest by
// subgroupShuffle — SG× fewer loads (4.5× faster on lavapipe). All subgroup operations run in
// uniform control flow: rows past N compute on zeros and only skip their writes.
//
// Passes: some adapters cap the loop iterations one invocation may run (Mesa llvmpipe stops
// a loop nest after 65535 and carries on with wrong results). The host then splits every
// tile list into passes of at most `pass_tiles` tiles, one dispatch each (later passes
// launch only the query tiles whose lists are not done, so launches stay linear in the
// tiles); between passes the
// running softmax state lives in O (normalised so far) and LSE (running log-sum-exp), which
// is exactly resumable: m = LSE, l = 1, acc = O.
//
// Tile shape: BR rows × BC keys × D (D4 = D/4 vec4 lanes), BR·P invocations.
// Workgroup memory: 2·BC·D·4 bytes for K and V, plus BR·BC·P·4 for s_part when P > 1.
// Device-memory traffic per (b, h): Q and O once (N·D each), LSE once (N), and for every
// listed tile BC·D of K and of V: ≈ 2·D·BC·(listed tiles) = 2·N·M·D/BR for a dense map.

// Mods (MODS): the user's score_mod and mask_mod (contract/mods.rs) are called per score,
// mask_mod only on tiles the block map lists as partial.
//
// Bindings: flash_bindings.wgsl (shared with flash_coop.wgsl).

var<workgroup> k_tile: array<vec4<f32>, BC * D4>;
var<workgroup> v_tile: array<vec4<f32>, BC * D4>;
var<workgroup> s_part: array<f32, S_PART>;

@compute @workgroup_size(BR * P)
fn main(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = ids.lid;
    let lane = lane_of(ids);
    var qt = wg.x;
    if tiles.qtile_list != 0xffffffffu {
        qt = block_map[tiles.qtile_list + wg.x]; // later passes visit only unfinished tiles
    }
    let h = tiles.head_base + wg.y;
    let b = tiles.batch_base + wg.z;
    // With P = 1 these fold to constants, and the lane guards below vanish when P divides D4.
    var part = 0u;
    var r = lid;
    if P > 1u {
        part = lid / BR;
        r = lid % BR;
    }
    let lane0 = part * DP4;
    let row = qt * BR + r;
    let live = row < contract.n;
    let kvh = h / contract.group;
    let q_base = ((b * contract.heads + h) * contract.n + row) * D4 + lane0 - tiles.q_shift;
    let kv_base = (b * contract.kv_heads + kvh) * contract.m * D4 - tiles.kv_shift;
    let pos = contract.q_offset + i32(row);
    var slope = 0.0;
    if contract.alibi != 0u {
        slope = slopes[h];
    }

    var qr: array<vec4<f32>, D4P>;
    var acc: array<vec4<f32>, D4P>;
    for (var x = 0u; x < D4P; x++) {
        acc[x] = vec4<f32>(0.0);
        qr[x] = vec4<f32>(0.0);
        if live && lane0 + x < D4 {
            qr[x] = vec4<f32>(q[q_base + x]) * contract.scale;
        }
    }
    var m_run = MASKED;
    var l_run = 0.0;
    var s: array<f32, BC>;

    let map_row = map_head_of(h, tiles.map_heads) * tiles.n_qtiles + qt;
    let list_begin = block_map[map_row];
    let list_end = block_map[map_row + 1u];
    let share = pass_share(list_begin, list_end, tiles.pass_index, tiles.pass_tiles);
    let t_begin = share.x;
    let t_end = share.y;
    let resume = tiles.pass_index > 0u;
    if resume && t_begin == t_end {
        return; // nothing left for this query tile: O and LSE are final (uniform per workgroup)
    }
    let row_lse_at = (b * contract.heads + h) * contract.n + row - tiles.lse_shift;
    if resume && live {
        let prev = lse[row_lse_at];
        if prev != contract.neg_inf {
            m_run = prev;
            l_run = 1.0;
            for (var x = 0u; x < DP4; x++) {
                if lane0 + x < D4 {
                    acc[x] = o[q_base + x];
                }
            }
        }
    }
    if COUNT != 0u && lid == 0u {
        let rows = min(BR, contract.n - qt * BR);
        if resume {
            atomicAdd(&counters[4], rows);
        } else {
            atomicAdd(&counters[2], rows);
        }
        atomicAdd(&counters[3], rows);
    }
    for (var t = t_begin; t < t_end; t++) {
        let entry = block_map[tiles.map_rows + t];
        let key0 = (entry & ~FULL) * BC;
        let full = (entry & FULL) != 0u;
        let bits_at = block_map[tiles.mask_base + t];
        if COUNT != 0u && lid == 0u {
            atomicAdd(&counters[0], 1u);
            atomicAdd(&counters[1], min(BC, contract.m - key0));
        }

        // Stage the K and V tile (keys past M read as zero and are masked below).
        for (var x = lid; x < BC * D4; x += BR * P) {
            let key = key0 + x / D4;
            var kk = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if key < contract.m {
                kk = vec4<f32>(k[kv_base + key0 * D4 + x]);
                vv = vec4<f32>(v[kv_base + key0 * D4 + x]);
            }
            k_tile[x] = kk;
            v_tile[x] = vv;
        }
        workgroupBarrier();

        // Scores (partial over this invocation's lanes when P > 1).
        for (var c = 0u; c < BC; c++) {
            s[c] = tile_score(&qr, c, lane0, lane);
        }
        if P > 1u {
            for (var c = 0u; c < BC; c++) {
                s_part[(r * BC + c) * P + part] = s[c];
            }
            workgroupBarrier();
            for (var c = 0u; c < BC; c++) {
                var sc = 0.0;
                for (var p = 0u; p < P; p++) {
                    sc += s_part[(r * BC + c) * P + p];
                }
                s[c] = sc;
            }
        }

        // Rows past N run too (on zeros), so that subgroup operations see every lane.
        {
            var row_bits = 0xffffffffu;
            if bits_at != NO_BITS {
                row_bits = block_map[tiles.bits_base + bits_at + r];
            }
            var tile_max = MASKED;
            for (var c = 0u; c < BC; c++) {
                let key = i32(key0 + c);
                var sc = s[c] + alibi_bias(slope, pos, key);
                if MODS {
                    sc = score_mod(sc, b, h, row, key0 + c);
                }
                // the user's mask_mod on tiles the map lists as partial (full ones passed it)
                if !tile_visible(contract, full, pos, key, row_bits, c)
                    || (MODS && !full && !mask_mod(b, h, row, key0 + c)) {
                    sc = MASKED;
                }
                s[c] = sc;
                tile_max = max(tile_max, sc);
            }
            softmax_tile(&s, tile_max, &m_run, &l_run, &acc, lane0, lane);
        }
        workgroupBarrier();
    }

    if live {
        let done = softmax_finish(m_run, l_run, contract.neg_inf);
        // every lane of a row ran its mods: one whose loops ran out leaves NaN
        let poisoned = MODS && mod_overrun;
        let inv = select(done.x, mods_nan(), poisoned);
        let row_lse = select(done.y, mods_nan(), poisoned);
        for (var x = 0u; x < DP4; x++) {
            if (!LANE_GUARD || lane0 + x < D4) {
                o[q_base + x] = acc[x] * inv;
            }
        }
        if part == 0u {
            lse[row_lse_at] = row_lse;
        }
    }
}
