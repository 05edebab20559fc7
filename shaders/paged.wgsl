// paged.wgsl — decoding for a server: sequences of different lengths in one dispatch, each
// reading its KV cache through its own page table, the cache stored as f32, int8 or 4-bit
// and dequantised here, and the step's new tokens arranged as a tree (speculative
// verification; a chain is the ordinary step).
//
// The pool (per layer, K and V apart) is `pages` pages of PAGE cache slots; page p holds the
// rows of its slots for every kv head, each kv head's in a run: row (p·Hkv + kvh)·PAGE +
// slot % PAGE (a split's keys of one kv head are consecutive rows), each UNITS vec4<u32> words:
//   FORMAT 0 (f32):  a word is 4 floats (bitcast);          UNITS = D/4
//   FORMAT 1 (int8): a word is 16 values, 4 a u32, each i/127 of the row's largest |x|
//                    (pack4x8snorm: round(x / amax · 127)), amax in the row's scale word;
//                    UNITS = D/16
//   FORMAT 2 (int4): a word is a group of 32 values, 8 nibbles a u32 (value k of a u32 in
//                    bits 4k..4k+3), each x = min + n·step with (step, min) as two f16 in
//                    the group's scale word; UNITS = D/32
// Scale words: one per row (int8) or per word (int4), same row order. K and V take their own
// formats (KFMT, VFMT).
//
// `store`: an invocation per (new token, kv head) writes its row into the slot the step gave
// it (quantising). `attend_staged` (below) shares decoded tiles among a kv head's rows;
// `attend`: an invocation per (sequence, kv head, split, query row) streams
// its split of the sequence's visited slots (the sinks, then the window or everything) and
// keeps an online softmax, rescaled once per KB keys; it writes a partial (output normalised,
// LSE) per (split, row). `combine`: per (token, head), the splits merged by log-sum-exp.
//
// Positions (docs/DESIGN.md §1, "Paged and batched decoding"): a cached slot s below the
// step's first new slot is at position s; new token u is at len − T + depth(u) (its depth in
// the step's tree: a chain's token t has depth t). Query t sees an older slot within the
// window (p − s ≤ W) or among the sinks (s < S), and new token u where u is t or one of its
// ancestors. ALiBi adds −slope·(p − position).

struct Batch {
    seqs: u32,       // sequences in the step
    lanes: u32,      // attend invocations
    tokens: u32,     // new tokens, all sequences
    page: u32,       // slots per page (also the constant PAGE, which the kernels use)
}

struct Seq {
    len: u32,        // slots after the step (the new tokens included)
    nq: u32,         // new tokens T (≤ 32)
    q0: u32,         // its first token in Q, O, LSE and the tree
    lane0: u32,      // its first attend invocation
    splits: u32,
    chunk: u32,      // visited slots per split
    sinks: u32,      // slots [0, sinks) visited before `first` (sinks outside the window)
    first: u32,      // first slot of the visited run [first, len)
    window: u32,     // W, 0xffffffff = none
    sink_keys: u32,  // S: slots below S are visible whatever the window
    table0: u32,     // its page table's offset in `pages`
    part0: u32,      // its first partial row
}

@group(0) @binding(1) var<uniform> batch: Batch;
@group(0) @binding(2) var<storage, read> seqs: array<Seq>;
@group(0) @binding(3) var<storage, read> pages: array<u32>;
// per new token: (bit u set for u = itself and each ancestor, depth)
@group(0) @binding(4) var<storage, read> tree: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read> q: array<vec4<f32>>;          // [tokens, H, D4]
@group(0) @binding(6) var<storage, read> k_pool: array<vec4<u32>>;
@group(0) @binding(7) var<storage, read> v_pool: array<vec4<u32>>;
@group(0) @binding(8) var<storage, read> k_scale: array<u32>;
@group(0) @binding(9) var<storage, read> v_scale: array<u32>;
@group(0) @binding(10) var<storage, read_write> partials: array<vec4<f32>>; // [rows, D4 + 1]
@group(0) @binding(11) var<storage, read> slopes: array<f32>;
@group(0) @binding(12) var<storage, read_write> o: array<vec4<f32>>;     // [tokens, H, D4]
@group(0) @binding(13) var<storage, read_write> lse: array<f32>;         // [tokens, H]
@group(0) @binding(14) var<storage, read> k_new: array<vec4<f32>>;      // [tokens, Hkv, D4]
@group(0) @binding(15) var<storage, read> v_new: array<vec4<f32>>;
@group(0) @binding(16) var<storage, read_write> k_out: array<vec4<u32>>; // the pools, written
@group(0) @binding(17) var<storage, read_write> v_out: array<vec4<u32>>;
@group(0) @binding(18) var<storage, read_write> k_scale_out: array<u32>;
@group(0) @binding(19) var<storage, read_write> v_scale_out: array<u32>;

// vec4<u32> words per cached row of a format.
fn units(fmt: u32) -> u32 {
    return D4 / select(select(8u, 4u, fmt == 1u), 1u, fmt == 0u);
}

// The sequence of the new token `token` (the sequences' tokens are consecutive).
fn seq_of_token(token: u32) -> u32 {
    var b = 0u;
    for (var i = 1u; i < batch.seqs; i++) {
        if seqs[i].q0 <= token {
            b = i;
        }
    }
    return b;
}

// The pool row of `slot` of sequence `s` for kv head `kvh`.
fn pool_row(s: Seq, slot: u32, kvh: u32) -> u32 {
    let page = pages[s.table0 + slot / PAGE];
    return (page * contract.kv_heads + kvh) * PAGE + slot % PAGE;
}

// ----- store -----

// The 4-bit (step, min) of a group whose values lie in [lo, hi], as stored (f16 both), and
// the codes of 8 values.
fn nibbles(x0: vec4<f32>, x1: vec4<f32>, sm: vec2<f32>) -> u32 {
    let inv = select(0.0, 1.0 / sm.x, sm.x > 0.0);
    let n0 = vec4<u32>(clamp(round((x0 - sm.y) * inv), vec4<f32>(0.0), vec4<f32>(15.0)));
    let n1 = vec4<u32>(clamp(round((x1 - sm.y) * inv), vec4<f32>(0.0), vec4<f32>(15.0)));
    let s0 = n0 << vec4<u32>(0u, 4u, 8u, 12u);
    let s1 = n1 << vec4<u32>(16u, 20u, 24u, 28u);
    return s0.x | s0.y | s0.z | s0.w | s1.x | s1.y | s1.z | s1.w;
}

fn store_row(fmt: u32, src: u32, row: u32, is_k: bool) {
    let u = units(fmt);
    if fmt == 0u {
        for (var x = 0u; x < D4; x++) {
            var w: vec4<f32>;
            if is_k { w = k_new[src + x]; } else { w = v_new[src + x]; }
            if is_k { k_out[row * u + x] = bitcast<vec4<u32>>(w); } else { v_out[row * u + x] = bitcast<vec4<u32>>(w); }
        }
        return;
    }
    if fmt == 1u {
        var amax = 0.0;
        for (var x = 0u; x < D4; x++) {
            var w: vec4<f32>;
            if is_k { w = k_new[src + x]; } else { w = v_new[src + x]; }
            let a = abs(w);
            amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
        }
        let inv = select(0.0, 1.0 / amax, amax > 0.0);
        for (var x = 0u; x < u; x++) {
            var words: vec4<u32>;
            for (var c = 0u; c < 4u; c++) {
                var w: vec4<f32>;
                if is_k { w = k_new[src + 4u * x + c]; } else { w = v_new[src + 4u * x + c]; }
                words[c] = pack4x8snorm(w * inv);
            }
            if is_k { k_out[row * u + x] = words; } else { v_out[row * u + x] = words; }
        }
        if is_k { k_scale_out[row] = bitcast<u32>(amax); } else { v_scale_out[row] = bitcast<u32>(amax); }
        return;
    }
    for (var x = 0u; x < u; x++) {
        var lo = 3.0e38;
        var hi = -3.0e38;
        for (var c = 0u; c < 8u; c++) {
            var w: vec4<f32>;
            if is_k { w = k_new[src + 8u * x + c]; } else { w = v_new[src + 8u * x + c]; }
            lo = min(lo, min(min(w.x, w.y), min(w.z, w.w)));
            hi = max(hi, max(max(w.x, w.y), max(w.z, w.w)));
        }
        // the stored pair, rounded to f16 first: codes are taken against what is read back
        let packed = pack2x16float(vec2<f32>((hi - lo) / 15.0, lo));
        let sm = unpack2x16float(packed);
        var words: vec4<u32>;
        for (var c = 0u; c < 4u; c++) {
            var w0: vec4<f32>;
            var w1: vec4<f32>;
            if is_k {
                w0 = k_new[src + 8u * x + 2u * c];
                w1 = k_new[src + 8u * x + 2u * c + 1u];
            } else {
                w0 = v_new[src + 8u * x + 2u * c];
                w1 = v_new[src + 8u * x + 2u * c + 1u];
            }
            words[c] = nibbles(w0, w1, sm);
        }
        if is_k {
            k_out[row * u + x] = words;
            k_scale_out[row * u + x] = packed;
        } else {
            v_out[row * u + x] = words;
            v_scale_out[row * u + x] = packed;
        }
    }
}

@compute @workgroup_size(64)
fn store(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= batch.tokens * contract.kv_heads {
        return;
    }
    let token = i / contract.kv_heads;
    let kvh = i % contract.kv_heads;
    let s = seqs[seq_of_token(token)];
    let slot = s.len - s.nq + (token - s.q0);
    let row = pool_row(s, slot, kvh);
    let src = (token * contract.kv_heads + kvh) * D4;
    store_row(KFMT, src, row, true);
    store_row(VFMT, src, row, false);
}

// ----- attend -----

// Value `c` (0..4) of a 4-bit word's u32 as two vec4s of codes.
fn codes(w: u32) -> array<vec4<f32>, 2> {
    let a = vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u));
    let b = vec4<f32>((vec4<u32>(w) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u));
    return array<vec4<f32>, 2>(a, b);
}

// q · k for the key in pool row `row`.
fn key_dot(qr: ptr<function, array<vec4<f32>, D4>>, row: u32) -> f32 {
    let u = units(KFMT);
    var sc = 0.0;
    if KFMT == 0u {
        for (var x = 0u; x < u; x++) {
            sc += dot((*qr)[x], bitcast<vec4<f32>>(k_pool[row * u + x]));
        }
        return sc;
    }
    if KFMT == 1u {
        for (var x = 0u; x < u; x++) {
            let w = k_pool[row * u + x];
            for (var c = 0u; c < 4u; c++) {
                sc += dot((*qr)[4u * x + c], unpack4x8snorm(w[c]));
            }
        }
        return sc * bitcast<f32>(k_scale[row]);
    }
    for (var x = 0u; x < u; x++) {
        let w = k_pool[row * u + x];
        let sm = unpack2x16float(k_scale[row * u + x]);
        var qn = 0.0;
        var qs = 0.0;
        for (var c = 0u; c < 4u; c++) {
            let n = codes(w[c]);
            let q0 = (*qr)[8u * x + 2u * c];
            let q1 = (*qr)[8u * x + 2u * c + 1u];
            qn += dot(q0, n[0]) + dot(q1, n[1]);
            qs += dot(q0 + q1, vec4<f32>(1.0));
        }
        sc += sm.x * qn + sm.y * qs;
    }
    return sc;
}

// acc += p · v for the value in pool row `row`.
fn add_value(acc: ptr<function, array<vec4<f32>, D4>>, p: f32, row: u32) {
    let u = units(VFMT);
    if VFMT == 0u {
        for (var x = 0u; x < u; x++) {
            (*acc)[x] += p * bitcast<vec4<f32>>(v_pool[row * u + x]);
        }
        return;
    }
    if VFMT == 1u {
        let ps = p * bitcast<f32>(v_scale[row]);
        for (var x = 0u; x < u; x++) {
            let w = v_pool[row * u + x];
            for (var c = 0u; c < 4u; c++) {
                (*acc)[4u * x + c] += ps * unpack4x8snorm(w[c]);
            }
        }
        return;
    }
    for (var x = 0u; x < u; x++) {
        let w = v_pool[row * u + x];
        let sm = unpack2x16float(v_scale[row * u + x]) * p;
        for (var c = 0u; c < 4u; c++) {
            let n = codes(w[c]);
            (*acc)[8u * x + 2u * c] += fma(n[0], vec4<f32>(sm.x), vec4<f32>(sm.y));
            (*acc)[8u * x + 2u * c + 1u] += fma(n[1], vec4<f32>(sm.x), vec4<f32>(sm.y));
        }
    }
}

// The slot of visited index `vi` of sequence `s`: the sinks first, then the run from `first`.
fn visited_slot(s: Seq, vi: u32) -> u32 {
    return select(s.first + vi - s.sinks, vi, vi < s.sinks);
}

@compute @workgroup_size(WG)
fn attend(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.y * groups.x * WG + gid.x;
    if i >= batch.lanes {
        return;
    }
    var b = 0u;
    for (var j = 1u; j < batch.seqs; j++) {
        if seqs[j].lane0 <= i {
            b = j;
        }
    }
    let s = seqs[b];
    let local = i - s.lane0;
    let rows = contract.group * s.nq;
    let r = local % rows;
    let split = (local / rows) % s.splits;
    let kvh = local / (rows * s.splits);
    let t = r % s.nq;
    let h = kvh * contract.group + r / s.nq;
    let token = s.q0 + t;
    let me = tree[token];
    let fresh = s.len - s.nq;          // the step's first new slot
    let pos = i32(fresh + me.y);
    var slope = 0.0;
    if contract.alibi != 0u {
        slope = slopes[h];
    }
    var qr: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    for (var x = 0u; x < D4; x++) {
        qr[x] = q[(token * contract.heads + h) * D4 + x] * contract.scale;
        acc[x] = vec4<f32>(0.0);
    }
    let total = s.sinks + (s.len - s.first);
    let begin = min(total, split * s.chunk);
    let end = min(total, begin + s.chunk);
    var m_run = MASKED;
    var l_run = 0.0;
    for (var c0 = begin; c0 < end; c0 += KB) {
        var sc: array<f32, KB>;
        var rowsk: array<u32, KB>;
        var tile_max = MASKED;
        for (var c = 0u; c < KB; c++) {
            var score = MASKED;
            if c0 + c < end {
                let slot = visited_slot(s, c0 + c);
                var kp = i32(slot);
                var visible = true;
                if slot >= fresh {
                    let u = slot - fresh;
                    visible = ((me.x >> u) & 1u) != 0u;
                    kp = i32(fresh + tree[s.q0 + u].y);
                }
                visible = visible && (u32(pos - kp) <= s.window || u32(kp) < s.sink_keys);
                let row = pool_row(s, slot, kvh);
                rowsk[c] = row;
                if visible {
                    score = key_dot(&qr, row) + alibi_bias(slope, pos, kp);
                }
            }
            sc[c] = score;
            tile_max = max(tile_max, score);
        }
        let rescale = softmax_rescale(m_run, tile_max);
        var tile_l = 0.0;
        for (var x = 0u; x < D4; x++) {
            acc[x] *= rescale.y;
        }
        for (var c = 0u; c < KB; c++) {
            let p = softmax_weight(sc[c], rescale.x);
            if p > 0.0 {
                tile_l += p;
                add_value(&acc, p, rowsk[c]);
            }
        }
        l_run = l_run * rescale.y + tile_l;
        m_run = rescale.x;
    }
    let base = (s.part0 + (split * contract.heads + h) * s.nq + t) * (D4 + 1u);
    let done = softmax_finish(m_run, l_run, contract.neg_inf);
    for (var x = 0u; x < D4; x++) {
        partials[base + x] = acc[x] * done.x;
    }
    partials[base + D4] = vec4<f32>(done.y, 0.0, 0.0, 0.0);
}

// ----- attend_staged -----
// The same partials from a workgroup per (sequence, kv head, split, block of WG query rows):
// BC keys and values at a time are read from their pages and dequantised once into workgroup
// memory for all the rows that share the kv head (GQA's G rows, times the step's tokens), then
// each row scores them and folds them into its online softmax (softmax_tile.wgsl). Where a
// kv head has several rows this reads and decodes each cached value once instead of once per
// row; `lane0` and `lanes` count workgroups here.

var<workgroup> k_tile: array<vec4<f32>, BC * D4>;
var<workgroup> v_tile: array<vec4<f32>, BC * D4>;

// Value vec4 `j` of a row from its word `w` and scale word `sc`.
fn dequant(fmt: u32, w: vec4<u32>, j: u32, sc: u32) -> vec4<f32> {
    if fmt == 0u {
        return bitcast<vec4<f32>>(w);
    }
    if fmt == 1u {
        return unpack4x8snorm(w[j % 4u]) * bitcast<f32>(sc);
    }
    let sm = unpack2x16float(sc);
    let shift = vec4<u32>(0u, 4u, 8u, 12u) + vec4<u32>((j % 2u) * 16u);
    let n = vec4<f32>((vec4<u32>(w[(j % 8u) / 2u]) >> shift) & vec4<u32>(15u));
    return fma(n, vec4<f32>(sm.x), vec4<f32>(sm.y));
}

// Key `c` of the tile from pool row `row` (zeros where not `live`): f32 rows a vec4 a lane;
// quantised rows a stored word a lane (its 4 or 8 vec4s decoded together), so that no two
// lanes load the same word.
fn stage_k(c: u32, row: u32, live: bool, lid: u32) {
    let u = units(KFMT);
    let per = D4 / u;
    for (var w = lid; w < u; w += WG) {
        var word = vec4<u32>(0u);
        var sc = 0u;
        if live {
            word = k_pool[row * u + w];
            if KFMT != 0u {
                sc = k_scale[select(row * u + w, row, KFMT == 1u)];
            }
        }
        for (var e = 0u; e < per; e++) {
            k_tile[c * D4 + w * per + e] = select(vec4<f32>(0.0), dequant(KFMT, word, w * per + e, sc), live);
        }
    }
}

fn stage_v(c: u32, row: u32, live: bool, lid: u32) {
    let u = units(VFMT);
    let per = D4 / u;
    for (var w = lid; w < u; w += WG) {
        var word = vec4<u32>(0u);
        var sc = 0u;
        if live {
            word = v_pool[row * u + w];
            if VFMT != 0u {
                sc = v_scale[select(row * u + w, row, VFMT == 1u)];
            }
        }
        for (var e = 0u; e < per; e++) {
            v_tile[c * D4 + w * per + e] = select(vec4<f32>(0.0), dequant(VFMT, word, w * per + e, sc), live);
        }
    }
}

@compute @workgroup_size(WG)
fn attend_staged(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let lid = ids.lid;
    let lane = lane_of(ids);
    let item = wg.y * groups.x + wg.x;
    if item >= batch.lanes {
        return;
    }
    var b = 0u;
    for (var j = 1u; j < batch.seqs; j++) {
        if seqs[j].lane0 <= item {
            b = j;
        }
    }
    let s = seqs[b];
    let local = item - s.lane0;
    let rows = contract.group * s.nq;
    let blocks = (rows + WG - 1u) / WG;
    let rb = local % blocks;
    let split = (local / blocks) % s.splits;
    let kvh = local / (blocks * s.splits);
    let r = rb * WG + lid;
    let live = r < rows;
    let t = r % s.nq;
    let h = kvh * contract.group + min(r, rows - 1u) / s.nq;
    let token = s.q0 + t;
    let me = tree[token];
    let fresh = s.len - s.nq;
    let pos = i32(fresh + me.y);
    var slope = 0.0;
    if contract.alibi != 0u && live {
        slope = slopes[h];
    }
    var qr: array<vec4<f32>, D4P>;
    var acc: array<vec4<f32>, D4P>;
    for (var x = 0u; x < D4P; x++) {
        qr[x] = vec4<f32>(0.0);
        if live && x < D4 {
            qr[x] = q[(token * contract.heads + h) * D4 + x] * contract.scale;
        }
        acc[x] = vec4<f32>(0.0);
    }
    let total = s.sinks + (s.len - s.first);
    let begin = min(total, split * s.chunk);
    let end = min(total, begin + s.chunk);
    var m_run = MASKED;
    var l_run = 0.0;
    var sc: array<f32, BC>;
    for (var c0 = begin; c0 < end; c0 += BC) {
        // key by key, so that a key's row (through the page table) is the same value in
        // every lane — a uniform address — and the lanes' vec4s of it are consecutive: one
        // vector load, where a row that differed by lane made every load a gather
        for (var c = 0u; c < BC; c++) {
            let vi = c0 + c;
            var row = 0u;
            if vi < end {
                row = pool_row(s, visited_slot(s, vi), kvh);
            }
            stage_k(c, row, vi < end, lid);
            stage_v(c, row, vi < end, lid);
        }
        workgroupBarrier();
        var tile_max = MASKED;
        for (var c = 0u; c < BC; c++) {
            // every lane scores (the shuffles need them all); hidden keys are masked after
            let qk = tile_score(&qr, c, 0u, lane);
            var score = MASKED;
            let vi = c0 + c;
            if vi < end && live {
                let slot = visited_slot(s, vi);
                var kp = i32(slot);
                var visible = true;
                if slot >= fresh {
                    let u = slot - fresh;
                    visible = ((me.x >> u) & 1u) != 0u;
                    kp = i32(fresh + tree[s.q0 + u].y);
                }
                visible = visible && (u32(pos - kp) <= s.window || u32(kp) < s.sink_keys);
                if visible {
                    score = qk + alibi_bias(slope, pos, kp);
                }
            }
            sc[c] = score;
            tile_max = max(tile_max, score);
        }
        softmax_tile(&sc, tile_max, &m_run, &l_run, &acc, 0u, lane);
        workgroupBarrier();
    }
    if live {
        let base = (s.part0 + (split * contract.heads + h) * s.nq + t) * (D4 + 1u);
        let done = softmax_finish(m_run, l_run, contract.neg_inf);
        for (var x = 0u; x < D4; x++) {
            partials[base + x] = acc[x] * done.x;
        }
        partials[base + D4] = vec4<f32>(done.y, 0.0, 0.0, 0.0);
    }
}

@compute @workgroup_size(64)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= batch.tokens * contract.heads {
        return;
    }
    let token = i / contract.heads;
    let h = i % contract.heads;
    let s = seqs[seq_of_token(token)];
    let t = token - s.q0;
    var total = contract.neg_inf;
    for (var sp = 0u; sp < s.splits; sp++) {
        let base = (s.part0 + (sp * contract.heads + h) * s.nq + t) * (D4 + 1u);
        total = lse_merge(total, partials[base + D4].x, contract.neg_inf);
    }
    for (var x = 0u; x < D4; x++) {
        var out = vec4<f32>(0.0);
        if total != contract.neg_inf {
            for (var sp = 0u; sp < s.splits; sp++) {
                let base = (s.part0 + (sp * contract.heads + h) * s.nq + t) * (D4 + 1u);
                let l = partials[base + D4].x;
                if l != contract.neg_inf {
                    out += partials[base + x] * exp(l - total);
                }
            }
        }
        o[i * D4 + x] = out;
    }
    lse[i] = total;
}
