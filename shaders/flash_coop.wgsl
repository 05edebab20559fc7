// flash_coop.wgsl — the flash forward on cooperative matrices (tensor cores on NVIDIA,
// simdgroup matrices on Apple): the `wgpu_cooperative_matrix` path of flash.wgsl, same
// bindings, same block-map walk, passes, masks, ALiBi and GQA, same O and LSE.
//
// A workgroup is one subgroup (SGW invocations) and owns BR = RT·S query rows of one
// (batch, head); the head dim is padded with zeros to DP = DS·S (DS slabs of S). Q (scaled)
// stays in workgroup memory in the input type `in1` (f32, or f16 on the f16-storage path),
// and so does the running output O (f32). Per listed key tile of BC = CT·S keys:
//   1. K and V staged in workgroup memory (zeros past M and past D);
//   2. S = Q·Kᵀ: RT × CT accumulators of DS coopMultiplyAdds each (Kᵀ is K's rows read
//      column-major), stored to workgroup memory;
//   3. per row, by scalar code: mask, ALiBi, the tile's max, the rescale factor, the
//      weights P (in1) and the running sum — and the row of O rescaled;
//   4. O += P·V: RT × DS accumulators loaded from O, CT coopMultiplyAdds each, stored back.
// Cooperative matrices have no per-row scaling, so O lives in workgroup memory between
// tiles rather than in accumulators: one load and one store of O per tile, a price the
// tensor-core rate repays. Every cooperative operation runs in uniform control flow: the
// tile list is the workgroup's, and rows past N compute on zeros.
// Workgroup memory: (BR + 2·BC)·DP + BR·BC in1, then BR·BC + BR·DP + 2·BR f32.
// Device-memory traffic: as flash.wgsl's (K and V of every listed tile once per workgroup,
// Q read and O, LSE written once per row per pass).

const S: u32 = COOP_S;
const BR: u32 = RT * S;
const BC: u32 = CT * S;
const D: u32 = D4 * 4u;
const DS: u32 = (D + S - 1u) / S;
const DP: u32 = DS * S;

// Bindings: flash_bindings.wgsl (shared with flash.wgsl).

var<workgroup> q_s: array<in1, BR * DP>;  // scaled Q, [row][d]
var<workgroup> k_s: array<in1, BC * DP>;  // [key][d]
var<workgroup> v_s: array<in1, BC * DP>;  // [key][d]
var<workgroup> p_s: array<in1, BR * BC>;  // softmax weights, [row][key]
var<workgroup> s_s: array<f32, BR * BC>;  // scores, [row][key]
var<workgroup> o_s: array<f32, BR * DP>;  // running output, [row][d]
var<workgroup> m_s: array<f32, BR>;       // running max per row
var<workgroup> l_s: array<f32, BR>;       // running sum per row; 1/l at the end
var<workgroup> span: vec2<u32>;           // this pass's share of the tile list

@compute @workgroup_size(SGW)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    var qt = wg.x;
    if tiles.qtile_list != 0xffffffffu {
        qt = block_map[tiles.qtile_list + wg.x]; // later passes visit only unfinished tiles
    }
    let h = tiles.head_base + wg.y;
    let b = tiles.batch_base + wg.z;
    let kvh = h / contract.group;
    let row0 = qt * BR;
    let head_rows = (b * contract.heads + h) * contract.n; // global row index of row 0 of the head
    let kv_base = (b * contract.kv_heads + kvh) * contract.m * D4 - tiles.kv_shift;
    var slope = 0.0;
    if contract.alibi != 0u {
        slope = slopes[h];
    }

    let map_row = map_head_of(h, tiles.map_heads) * tiles.n_qtiles + qt;
    if lid == 0u {
        span = pass_share(block_map[map_row], block_map[map_row + 1u], tiles.pass_index, tiles.pass_tiles);
    }
    // The tile list is the workgroup's, but read from storage; loaded through workgroup memory
    // it is uniform as WGSL sees it, which the cooperative operations in the loop require.
    let share = workgroupUniformLoad(&span);
    let t_begin = share.x;
    let t_end = share.y;
    let resume = tiles.pass_index > 0u;
    // Nothing left for this query tile (O and LSE are final): the whole body is skipped
    // under one uniform condition (an early return, or `&&`, which naga lowers through a
    // local variable, would make the cooperative operations below non-uniform to its analysis).
    if !(resume & (t_begin == t_end)) {

        // Q rows, scaled, and O: zeros, or what the previous pass left (a row with no visible
        // key so far holds O = 0, LSE = -inf: the fresh state).
        for (var x = lid; x < BR * DP; x += SGW) {
            let r = x / DP;
            let dd = x % DP;
            let row = row0 + r;
            var qv = 0.0;
            var ov = 0.0;
            if row < contract.n && dd < D {
                let at = (head_rows + row) * D4 - tiles.q_shift + dd / 4u;
                qv = f32(q[at][dd % 4u]) * contract.scale;
                if resume {
                    ov = o[at][dd % 4u];
                }
            }
            q_s[x] = in1(qv);
            o_s[x] = ov;
        }
        for (var r = lid; r < BR; r += SGW) {
            var m = MASKED;
            var l = 0.0;
            let row = row0 + r;
            if resume && row < contract.n {
                let prev = lse[head_rows + row - tiles.lse_shift];
                if prev != contract.neg_inf {
                    m = prev;
                    l = 1.0;
                }
            }
            m_s[r] = m;
            l_s[r] = l;
        }
        if COUNT != 0u && lid == 0u {
            let rows = min(BR, contract.n - row0);
            if resume {
                atomicAdd(&counters[4], rows);
            } else {
                atomicAdd(&counters[2], rows);
            }
            atomicAdd(&counters[3], rows);
        }
        workgroupBarrier();

        for (var t = t_begin; t < t_end; t++) {
            let entry = block_map[tiles.map_rows + t];
            let key0 = (entry & ~FULL) * BC;
            let full = (entry & FULL) != 0u;
            let bits_at = block_map[tiles.mask_base + t];
            if COUNT != 0u && lid == 0u {
                atomicAdd(&counters[0], 1u);
                atomicAdd(&counters[1], min(BC, contract.m - key0));
            }

            // 1. K and V (keys past M and dims past D read as zero; such keys are masked below).
            for (var x = lid; x < BC * DP; x += SGW) {
                let key = key0 + x / DP;
                let dd = x % DP;
                var kv = 0.0;
                var vv = 0.0;
                if key < contract.m && dd < D {
                    let at = kv_base + key * D4 + dd / 4u;
                    kv = f32(k[at][dd % 4u]);
                    vv = f32(v[at][dd % 4u]);
                }
                k_s[x] = in1(kv);
                v_s[x] = in1(vv);
            }
            workgroupBarrier();

            // 2. S = Q·Kᵀ.
            for (var rt = 0u; rt < RT; rt++) {
                for (var ct = 0u; ct < CT; ct++) {
                    var sc = coop_c();
                    for (var ds = 0u; ds < DS; ds++) {
                        let qa = coopLoadT<coop_a>(&q_s[rt * S * DP + ds * S], DP);
                        let kb = coopLoad<coop_b>(&k_s[ct * S * DP + ds * S], DP);
                        sc = coopMultiplyAdd(qa, kb, sc);
                    }
                    coopStoreT(sc, &s_s[rt * S * BC + ct * S], BC);
                }
            }
            workgroupBarrier();

            // 3. The online softmax, one row per invocation.
            for (var r = lid; r < BR; r += SGW) {
                let pos = contract.q_offset + i32(row0 + r);
                var row_bits = 0xffffffffu;
                if bits_at != NO_BITS {
                    row_bits = block_map[tiles.bits_base + bits_at + r];
                }
                var tile_max = MASKED;
                for (var c = 0u; c < BC; c++) {
                    let key = i32(key0 + c);
                    var sc = s_s[r * BC + c] + alibi_bias(slope, pos, key);
                    if MODS {
                        sc = score_mod(sc, b, h, row0 + r, key0 + c);
                    }
                    if !tile_visible(contract, full, pos, key, row_bits, c)
                        || (MODS && !full && !mask_mod(b, h, row0 + r, key0 + c)) {
                        sc = MASKED;
                    }
                    s_s[r * BC + c] = sc;
                    tile_max = max(tile_max, sc);
                }
                // A fully masked tile leaves the row unchanged: corr = 1 and every p = 0.
                let step = softmax_rescale(m_s[r], tile_max);
                var tile_l = 0.0;
                for (var c = 0u; c < BC; c++) {
                    let p = softmax_weight(s_s[r * BC + c], step.x);
                    tile_l += p;
                    p_s[r * BC + c] = in1(p);
                }
                m_s[r] = step.x;
                l_s[r] = l_s[r] * step.y + tile_l;
                for (var dd = 0u; dd < DP; dd++) {
                    o_s[r * DP + dd] *= step.y;
                }
            }
            workgroupBarrier();

            // 4. O += P·V.
            for (var rt = 0u; rt < RT; rt++) {
                for (var dt = 0u; dt < DS; dt++) {
                    var acc = coopLoadT<coop_c>(&o_s[rt * S * DP + dt * S], DP);
                    for (var ct = 0u; ct < CT; ct++) {
                        let pa = coopLoadT<coop_a>(&p_s[rt * S * BC + ct * S], BC);
                        let vb = coopLoadT<coop_b>(&v_s[ct * S * DP + dt * S], DP);
                        acc = coopMultiplyAdd(pa, vb, acc);
                    }
                    coopStoreT(acc, &o_s[rt * S * DP + dt * S], DP);
                }
            }
            workgroupBarrier();
        }

        // Finish: LSE per row, then O = acc / l in vec4s.
        for (var r = lid; r < BR; r += SGW) {
            let row = row0 + r;
            let done = softmax_finish(m_s[r], l_s[r], contract.neg_inf);
            // this invocation ran the row's mods: if their loops ran out, the row's scale
            // (and so its O, written by other invocations) and LSE are NaN
            let poisoned = MODS && mod_overrun;
            l_s[r] = select(done.x, mods_nan(), poisoned);
            if row < contract.n {
                lse[head_rows + row - tiles.lse_shift] = select(done.y, mods_nan(), poisoned);
            }
        }
        workgroupBarrier();
        for (var x = lid; x < BR * D4; x += SGW) {
            let r = x / D4;
            let lane = x % D4;
            let row = row0 + r;
            if row < contract.n {
                let at = r * DP + lane * 4u;
                let acc = vec4<f32>(o_s[at], o_s[at + 1u], o_s[at + 2u], o_s[at + 3u]);
                o[(head_rows + row) * D4 - tiles.q_shift + lane] = acc * l_s[r];
            }
        }
    }
}
