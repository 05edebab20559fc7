// backward.wgsl — FlashAttention backward: dQ, dK, dV from Q, K, V, O, dO and the forward's
// log-sum-exp, never materialising the N×M probabilities (FlashAttention-2's recomputation).
//
// With s_ij = scale·q_i·k_j + bias_ij, P_ij = exp(s_ij − LSE_i) and Δ_i = Σ_x dO_ix·O_ix:
//   dP_ij = dO_i·v_j,   dS_ij = P_ij·(dP_ij − Δ_i),
//   dQ_i = scale·Σ_j dS_ij·k_j,   dK_j = scale·Σ_i dS_ij·q_i,   dV_j = Σ_i P_ij·dO_i,
// where dK and dV of a kv head sum over the query heads of its group (GQA/MQA).
//
// The tiled backward: three entry points, run in this order (the materialised baseline is at
// the end of this file):
//   `delta`: one invocation per query row: stats_i = (LSE_i, Δ_i).
//   `dq`:    a workgroup per (query tile, head, batch), one invocation per row, walks the
//            row's key tiles in the forward's block map (CSR) — dQ_i stays in registers.
//   `dkv`:   a workgroup per (key tile, kv head, batch), one invocation per key, walks the
//            query tiles that list this key tile (the transposed map, CSC) for every query
//            head of the group — dK_j and dV_j stay in registers.
// Each output element is owned by exactly one invocation, so no atomics and no second
// reduction pass: the price is computing P and dP twice (once per kernel), FlashAttention-2's
// own trade (its dQ uses atomics instead; WGSL has no float atomics).
//
// Fully masked rows (LSE = −inf) give P = 0, so zero gradients everywhere.
// Passes: on adapters that cap loop iterations (see flash.wgsl) the host splits each list
// into passes; a later pass resumes the sums from dQ (or dK, dV) in device memory, which is
// exact since they are plain sums. The host also runs `dkv` one query head per dispatch then.
//
// Chunks: tensors larger than one storage binding run in chunks of kv heads (with their query
// heads), bound from aligned offsets as in flash.wgsl; indices are global and the shifts in
// `tiles` turn them into indices of the bound ranges.
//
// Subgroups (SG > 0): as in flash.wgsl, lane l loads vec4 j·SG + l of the staged row and the
// others arrive by subgroupShuffle, so the same-address loads a software adapter turns into
// gathers become one load per lane.

@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> d_o: array<vec4<f32>>;
// (LSE, Δ) per query row, written by `delta`.
@group(0) @binding(5) var<storage, read_write> stats: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> dq: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> dk: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read_write> dv: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read> o: array<vec4<f32>>;
@group(0) @binding(10) var<storage, read> lse: array<f32>;
// The forward's block map (row pointers, entries, mask indices, bits), then the transposed
// map (column pointers, entries `query tile | FULL`, mask indices), the ALiBi slopes as f32
// bits, and the lists of query tiles of later dq passes.
@group(0) @binding(11) var<storage, read> block_map: array<u32>;

struct Backward {
    n_ktiles: u32,
    col_ptr: u32,     // offset of the column pointers in block_map
    col_entries: u32, // offset of the transposed entries
    col_masks: u32,   // offset of their mask indices
    slopes: u32,      // offset of the slopes
    head_lo: u32,     // dkv: query heads [head_lo, head_hi) of the group in this dispatch
    head_hi: u32,
    resume: u32,      // dkv: nonzero = add to dK, dV already in memory
    batch: u32,       // naive: the batch of this chunk (first query head: head_lo)
    dk_pass: u32,     // naive_kv: nonzero = the dK pass (else dV)
    pad1: u32,
    pad2: u32,
}
@group(0) @binding(12) var<uniform> bwd: Backward;
@group(0) @binding(14) var<uniform> tiles: Tiles;


fn slope_of(h: u32) -> f32 {
    if contract.alibi == 0u {
        return 0.0;
    }
    return bitcast<f32>(block_map[bwd.slopes + h]);
}

// This pass's share of key tile kt's list of query tiles for query head h (transposed map).
fn col_share(h: u32, kt: u32) -> vec2<u32> {
    let col = map_head_of(h, tiles.map_heads) * bwd.n_ktiles + kt;
    return pass_share(block_map[bwd.col_ptr + col], block_map[bwd.col_ptr + col + 1u], tiles.pass_index, tiles.pass_tiles);
}

@compute @workgroup_size(64)
fn delta(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>) {
    let row = wg.x * 64u + ids.lid;
    if row >= contract.n {
        return;
    }
    let at = ((tiles.batch_base + wg.z) * contract.heads + tiles.head_base + wg.y) * contract.n + row;
    let qa = at * D4 - tiles.q_shift;
    var acc = 0.0;
    for (var x = 0u; x < D4; x++) {
        acc += dot(d_o[qa + x], o[qa + x]);
    }
    stats[at - tiles.stats_shift] = vec2<f32>(lse[at - tiles.lse_shift], acc);
}

var<workgroup> k_tile: array<vec4<f32>, BC * D4>;
var<workgroup> v_tile: array<vec4<f32>, BC * D4>;

@compute @workgroup_size(BR)
fn dq_main(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = ids.lid;
    let lane = lane_of(ids);
    var qt = wg.x;
    if tiles.qtile_list != 0xffffffffu {
        qt = block_map[tiles.qtile_list + wg.x]; // later passes visit only unfinished tiles
    }
    let h = tiles.head_base + wg.y;
    let b = tiles.batch_base + wg.z;
    let row = qt * BR + lid;
    let live = row < contract.n;
    // global row index; the shifts turn it into indices of the bound ranges (chunks)
    let at = (b * contract.heads + h) * contract.n + min(row, contract.n - 1u);
    let qa = at * D4 - tiles.q_shift;
    let kv_base = (b * contract.kv_heads + h / contract.group) * contract.m * D4 - tiles.kv_shift;
    let pos = contract.q_offset + i32(row);
    let slope = slope_of(h);

    var qr: array<vec4<f32>, D4P>;
    var dor: array<vec4<f32>, D4P>;
    var acc: array<vec4<f32>, D4P>;
    for (var x = 0u; x < D4P; x++) {
        qr[x] = vec4<f32>(0.0);
        dor[x] = vec4<f32>(0.0);
        acc[x] = vec4<f32>(0.0);
        if live && x < D4 {
            qr[x] = q[qa + x] * contract.scale;
            dor[x] = d_o[qa + x];
        }
    }
    let st = stats[at - tiles.stats_shift];
    // rows past N and fully masked rows: every P is 0
    let row_lse = select(contract.neg_inf, st.x, live);
    let row_on = row_lse != contract.neg_inf;
    let row_delta = st.y;

    let map_row = map_head_of(h, tiles.map_heads) * tiles.n_qtiles + qt;
    let list_begin = block_map[map_row];
    let list_end = block_map[map_row + 1u];
    let share = pass_share(list_begin, list_end, tiles.pass_index, tiles.pass_tiles);
    let t_begin = share.x;
    let t_end = share.y;
    let resume = tiles.pass_index > 0u;
    if resume && t_begin == t_end {
        return; // this query tile's dQ is final (uniform per workgroup)
    }
    if resume && live {
        for (var x = 0u; x < D4; x++) {
            acc[x] = dq[qa + x];
        }
    }

    for (var t = t_begin; t < t_end; t++) {
        let entry = block_map[tiles.map_rows + t];
        let key0 = (entry & ~FULL) * BC;
        let full = (entry & FULL) != 0u;
        let bits_at = block_map[tiles.mask_base + t];
        for (var x = lid; x < BC * D4; x += BR) {
            var kk = vec4<f32>(0.0);
            var vv = vec4<f32>(0.0);
            if key0 + x / D4 < contract.m {
                kk = k[kv_base + key0 * D4 + x];
                vv = v[kv_base + key0 * D4 + x];
            }
            k_tile[x] = kk;
            v_tile[x] = vv;
        }
        workgroupBarrier();

        var row_bits = 0xffffffffu;
        if bits_at != NO_BITS {
            row_bits = block_map[tiles.bits_base + bits_at + lid];
        }
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
            // mods: the score through score_mod, its slope into dS; mask_mod on partial tiles
            var grad = 1.0;
            if MODS {
                grad = score_mod_grad(sc, b, h, row, key0 + c);
                sc = score_mod(sc, b, h, row, key0 + c);
            }
            let visible = tile_visible(contract, full, pos, key, row_bits, c)
                && (!MODS || full || mask_mod(b, h, row, key0 + c));
            let p = select(0.0, exp(sc - row_lse), visible && row_on);
            let ds = p * (dp - row_delta) * grad * contract.scale;
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
        let poisoned = MODS && mod_overrun;
        for (var x = 0u; x < D4; x++) {
            dq[qa + x] = select(acc[x], vec4(mods_nan()), poisoned);
        }
    }
}

var<workgroup> q_tile: array<vec4<f32>, BR * D4>;
var<workgroup> do_tile: array<vec4<f32>, BR * D4>;
var<workgroup> r_lse: array<f32, BR>;
var<workgroup> r_delta: array<f32, BR>;
var<workgroup> r_bits: array<u32, BR>;

@compute @workgroup_size(BC)
fn dkv_main(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = ids.lid;
    let lane = lane_of(ids);
    let kt = wg.x;
    let kvh = tiles.head_base / contract.group + wg.y;
    let b = tiles.batch_base + wg.z;
    let key = kt * BC + lid;
    let live = key < contract.m;
    let at = ((b * contract.kv_heads + kvh) * contract.m + min(key, contract.m - 1u)) * D4 - tiles.kv_shift;

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
        }
    }

    // With passes (one query head per dispatch), a dispatch with nothing left returns before
    // touching dK, dV; the check is uniform per workgroup.
    var work = false;
    for (var hh = bwd.head_lo; hh < bwd.head_hi; hh++) {
        let share = col_share(kvh * contract.group + hh, kt);
        work = work || share.x < share.y;
    }
    if bwd.resume != 0u && !work {
        return;
    }
    if bwd.resume != 0u && live {
        for (var x = 0u; x < D4; x++) {
            acc_k[x] = dk[at + x];
            acc_v[x] = dv[at + x];
        }
    }

    for (var hh = bwd.head_lo; hh < bwd.head_hi; hh++) {
        let h = kvh * contract.group + hh;
        let slope = slope_of(h);
        let q_head = (b * contract.heads + h) * contract.n;
        let share = col_share(h, kt);
        for (var t = share.x; t < share.y; t++) {
            let entry = block_map[bwd.col_entries + t];
            let row0 = (entry & ~FULL) * BR;
            let full = (entry & FULL) != 0u;
            let bits_at = block_map[bwd.col_masks + t];
            // Stage BR rows of Q and dO with their (LSE, Δ) and visibility bits; rows past N
            // get LSE = −inf, so they contribute nothing (full tiles may end past N).
            for (var x = lid; x < BR * D4; x += BC) {
                var qq = vec4<f32>(0.0);
                var gg = vec4<f32>(0.0);
                if row0 + x / D4 < contract.n {
                    qq = q[(q_head + row0) * D4 + x - tiles.q_shift];
                    gg = d_o[(q_head + row0) * D4 + x - tiles.q_shift];
                }
                q_tile[x] = qq;
                do_tile[x] = gg;
            }
            for (var r = lid; r < BR; r += BC) {
                var st = vec2<f32>(contract.neg_inf, 0.0);
                if row0 + r < contract.n {
                    st = stats[q_head + row0 + r - tiles.stats_shift];
                }
                r_lse[r] = st.x;
                r_delta[r] = st.y;
                var bits = 0xffffffffu;
                if bits_at != NO_BITS {
                    bits = block_map[tiles.bits_base + bits_at + r];
                }
                r_bits[r] = bits;
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
                let pos = contract.q_offset + i32(row0 + r);
                sc += alibi_bias(slope, pos, i32(key));
                var grad = 1.0;
                if MODS {
                    grad = score_mod_grad(sc, b, h, row0 + r, key);
                    sc = score_mod(sc, b, h, row0 + r, key);
                }
                let row_lse = r_lse[r];
                let visible = tile_visible(contract, full, pos, i32(key), r_bits[r], lid)
                    && (!MODS || full || mask_mod(b, h, row0 + r, key));
                let p = select(0.0, exp(sc - row_lse), visible && row_lse != contract.neg_inf);
                let ds = p * (dp - r_delta[r]) * grad * contract.scale;
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
    }

    if live {
        let poisoned = MODS && mod_overrun;
        for (var x = 0u; x < D4; x++) {
            dk[at + x] = select(acc_k[x], vec4(mods_nan()), poisoned);
            dv[at + x] = select(acc_v[x], vec4(mods_nan()), poisoned);
        }
    }
}

// ---- The materialised (naive) backward, the baseline the tiled one is measured against ----
// P and then dS live in `s` [query heads of this chunk, N, M] in device memory: the chunk is
// kv heads [head_lo / G, +chunk) of batch `batch` with all their query heads, so dK and dV
// sum whole groups. After `delta`:
//   naive_p:  P = exp(scale·q·k + bias − LSE), 0 where masked          (one invocation per pair)
//   naive_kv: dV_j = Σ_group Σ_i P_ij·dO_i                              (one per 4 lanes of dV_j)
//   naive_ds: S ← scale·P ⊙ (dO·Vᵀ − Δ), in place                        (one per row)
//   naive_dq: dQ_i = Σ_j dS_ij·k_j                                       (one per 4 lanes of dQ_i)
//   naive_kv: dK_j = Σ_group Σ_i dS_ij·q_i  (again, dk_pass = 1)         (one per 4 lanes of dK_j)
// A sparse mask arrives as dense visibility bits at tiles.bits_base (as in naive.wgsl).
@group(0) @binding(13) var<storage, read_write> s: array<f32>;

fn naive_allows(h: u32, i: u32, j: u32) -> bool {
    if !in_band(contract, contract.q_offset + i32(i), i32(j)) {
        return false;
    }
    if tiles.bits_stride == 0u {
        return true;
    }
    let word = block_map[tiles.bits_base + (map_head_of(h, tiles.map_heads) * contract.n + i) * tiles.bits_stride + j / 32u];
    return ((word >> (j % 32u)) & 1u) != 0u;
}

@compute @workgroup_size(8, 8)
fn naive_p(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let i = gid.y;
    if i >= contract.n || j >= contract.m {
        return;
    }
    let h = bwd.head_lo + gid.z;
    let b = bwd.batch;
    let row = (b * contract.heads + h) * contract.n + i;
    let kv = ((b * contract.kv_heads + h / contract.group) * contract.m + j) * D4;
    let row_lse = stats[row].x;
    var p = 0.0;
    if row_lse != contract.neg_inf && naive_allows(h, i, j) {
        var sc = 0.0;
        for (var x = 0u; x < D4; x++) {
            sc += dot(q[row * D4 + x], k[kv + x]);
        }
        sc = sc * contract.scale + alibi_bias(slope_of(h), contract.q_offset + i32(i), i32(j));
        p = exp(sc - row_lse);
    }
    s[(gid.z * contract.n + i) * contract.m + j] = p;
}

// dV (bwd.dk_pass = 0, run on P) or dK (bwd.dk_pass = 1, run on dS): a key's sum over the
// query rows of every head of its group.
@compute @workgroup_size(64)
fn naive_kv(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x >= contract.m * D4 {
        return;
    }
    let j = gid.x / D4;
    let x = gid.x % D4;
    let kc = gid.y;
    let kvh = bwd.head_lo / contract.group + kc;
    let b = bwd.batch;
    var acc = vec4<f32>(0.0);
    for (var hh = 0u; hh < contract.group; hh++) {
        let hc = kc * contract.group + hh;
        let row0 = (b * contract.heads + bwd.head_lo + hc) * contract.n;
        for (var i = 0u; i < contract.n; i++) {
            var src: vec4<f32>;
            if bwd.dk_pass != 0u {
                src = q[(row0 + i) * D4 + x];
            } else {
                src = d_o[(row0 + i) * D4 + x];
            }
            acc += s[(hc * contract.n + i) * contract.m + j] * src;
        }
    }
    let at = ((b * contract.kv_heads + kvh) * contract.m + j) * D4 + x;
    if bwd.dk_pass != 0u {
        dk[at] = acc;
    } else {
        dv[at] = acc;
    }
}

@compute @workgroup_size(64)
fn naive_ds(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= contract.n {
        return;
    }
    let hc = gid.y;
    let h = bwd.head_lo + hc;
    let b = bwd.batch;
    let row = (b * contract.heads + h) * contract.n + i;
    let delta = stats[row].y;
    let kv = (b * contract.kv_heads + h / contract.group) * contract.m * D4;
    for (var j = 0u; j < contract.m; j++) {
        let at = (hc * contract.n + i) * contract.m + j;
        var dp = 0.0;
        for (var x = 0u; x < D4; x++) {
            dp += dot(d_o[row * D4 + x], v[kv + j * D4 + x]);
        }
        s[at] = s[at] * (dp - delta) * contract.scale;
    }
}

@compute @workgroup_size(64)
fn naive_dq(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x >= contract.n * D4 {
        return;
    }
    let i = gid.x / D4;
    let x = gid.x % D4;
    let hc = gid.y;
    let h = bwd.head_lo + hc;
    let b = bwd.batch;
    let kv = (b * contract.kv_heads + h / contract.group) * contract.m * D4;
    var acc = vec4<f32>(0.0);
    for (var j = 0u; j < contract.m; j++) {
        acc += s[(hc * contract.n + i) * contract.m + j] * k[kv + j * D4 + x];
    }
    dq[((b * contract.heads + h) * contract.n + i) * D4 + x] = acc;
}
