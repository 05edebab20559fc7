// nsa_decode.wgsl — NSA's compressed branch and choice for decoding-sized calls: a few query
// rows over a long cache. In a prefill, `score` (nsa.wgsl) gives each (kv head, row) one lane
// and flash gives each (head, tile of rows) one workgroup; with one row, that is one lane
// walking every compressed key and every block in turn. Here the work of a row is spread:
// - `cmp_partial`: one invocation per (query head, row, split of the row's visible compressed
//   keys, arg0 keys each, arg1 splits): an online softmax over its keys — the running max m,
//   the sum l, Σ exp(s − m)·Ṽ — written to `part` (a slot of PART words per invocation), and
//   each score s (scaled, as `score` computes it) to `cmp_s` [H, N, Mc] for the choice. With
//   `last` = w > 0, the same over the row's window of raw keys (p − w < j ≤ p): the window
//   branch.
// - `cmp_merge`: one invocation per (query head, row, column): the splits folded by
//   log-sum-exp into
//   `o_out` and `lse_out` (zeros and −inf where no key is visible): the branch's output as
//   flash writes it (the host binds the compressed or the window branch's buffers).
// - `block_scores`: one invocation per (kv head, row, block; the compressed branch's LSE bound
//   as `lse_out`): a candidate block's score as `score` computes it — the group's
//   probabilities exp(s − LSE) summed over the compressed keys overlapping the block, in the
//   same order, on the same products (`cmp_s`, not computed again) — into `scores`
//   [Hkv, N, blocks].
// - `pick`: one invocation per (kv head, row): the candidate blocks offered in ascending order
//   to a running top (topk.wgsl: descending, ties to the lower block) and each query head's
//   list written (nsa_choice.wgsl).
// The host keeps every loop below an adapter's loop cap (splits, blocks) and the rows few.

// `Params`, `params` (binding 0) and `flat`: nsa_params.wgsl; `TopK`, `offer`: topk.wgsl;
// `NONE`, `list_slot`: nsa_choice.wgsl.
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> kc4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> vc: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
@group(0) @binding(5) var<storage, read_write> lse_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> o_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> scores: array<f32>;
@group(0) @binding(8) var<storage, read_write> lists: array<u32>;
@group(0) @binding(9) var<storage, read> k: array<f32>;
@group(0) @binding(10) var<storage, read> v: array<f32>;
@group(0) @binding(11) var<storage, read_write> cmp_s: array<f32>;

const NEG_BIG: f32 = -3.0e38;
// a split's slot: QCAP4 vec4s of Σ exp(s − m)·Ṽ, then m and l
const PART: u32 = QCAP4 * 4u + 2u;

// the compressed keys visible at position p: the windows ending at or before it
fn visible(p: i32) -> u32 {
    let end = p + 1 - i32(params.cmp_len);
    if end < 0 {
        return 0u;
    }
    return min(u32(end) / params.cmp_stride + 1u, params.mc);
}

// query row `row` scaled, in QCAP4 vec4 lanes (zeros past D), as `score` holds it
fn query(row: u32) -> array<vec4<f32>, QCAP4> {
    var qr: array<vec4<f32>, QCAP4>;
    for (var c = 0u; c < params.d; c++) {
        qr[c / 4u][c % 4u] = q[row * params.d + c] * params.scale;
    }
    return qr;
}

fn score_of(qr: ptr<function, array<vec4<f32>, QCAP4>>, k0: u32) -> f32 {
    var dt = 0.0;
    for (var x = 0u; x < QCAP4; x++) {
        dt += dot((*qr)[x], kc4[k0 + x]);
    }
    return dt;
}

// vec4 x of the D-wide row at `r0` of the compressed values, the raw keys or the raw values
// (zeros past D)
fn row4(which: u32, r0: u32, x: u32) -> vec4<f32> {
    let c = r0 + 4u * x;
    if 4u * x + 4u <= params.d {
        switch which {
            case 0u: { return vec4<f32>(vc[c], vc[c + 1u], vc[c + 2u], vc[c + 3u]); }
            case 1u: { return vec4<f32>(k[c], k[c + 1u], k[c + 2u], k[c + 3u]); }
            default: { return vec4<f32>(v[c], v[c + 1u], v[c + 2u], v[c + 3u]); }
        }
    }
    var out = vec4<f32>(0.0);
    for (var e = 0u; 4u * x + e < params.d; e++) {
        switch which {
            case 0u: { out[e] = vc[c + e]; }
            case 1u: { out[e] = k[c + e]; }
            default: { out[e] = v[c + e]; }
        }
    }
    return out;
}

@compute @workgroup_size(64)
fn cmp_partial(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = flat(wg, lid);
    let splits = params.arg1;
    if t >= params.heads * params.n * splits {
        return;
    }
    let row = t / splits;
    let i = row % params.n;
    let g = (row / params.n) / (params.heads / params.kv_heads);
    let p = params.q_offset + i32(i);
    let window = params.last;
    // the keys this row reads: compressed keys [0, vis), or raw keys [first, first + vis)
    var first = 0u;
    var vis = visible(p);
    var keys = params.mc;
    if window > 0u {
        vis = 0u;
        if p >= 0 {
            first = u32(max(p - i32(window) + 1, 0));
            vis = min(u32(p) + 1u, params.m) - first;
        }
        keys = params.m;
    }
    let c0 = min((t % splits) * params.arg0, vis);
    let c1 = min(c0 + params.arg0, vis);
    var qr = query(row);
    var m = NEG_BIG;
    var l = 0.0;
    var acc: array<vec4<f32>, QCAP4>;
    for (var c = c0; c < c1; c++) {
        let r0 = (g * keys + first + c) * params.d;
        var s = 0.0;
        if window > 0u {
            for (var x = 0u; x < QCAP4; x++) {
                s += dot(qr[x], row4(1u, r0, x));
            }
        } else {
            s = score_of(&qr, (g * params.mc + c) * QCAP4);
            cmp_s[row * params.mc + c] = s;
        }
        let m_new = max(m, s);
        let corr = exp(m - m_new);
        let w = exp(s - m_new);
        l = l * corr + w;
        for (var x = 0u; x < QCAP4; x++) {
            acc[x] = acc[x] * corr + w * row4(select(0u, 2u, window > 0u), r0, x);
        }
        m = m_new;
    }
    let base = t * PART;
    for (var x = 0u; x < QCAP4; x++) {
        for (var e = 0u; e < 4u; e++) {
            part[base + 4u * x + e] = acc[x][e];
        }
    }
    part[base + PART - 2u] = m;
    part[base + PART - 1u] = l;
}

@compute @workgroup_size(64)
fn cmp_merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = flat(wg, lid);
    if t >= params.heads * params.n * params.d {
        return;
    }
    let row = t / params.d;
    let c = t % params.d;
    let splits = params.arg1;
    let base = row * splits * PART;
    var mx = NEG_BIG;
    for (var sp = 0u; sp < splits; sp++) {
        if part[base + sp * PART + PART - 1u] > 0.0 {
            mx = max(mx, part[base + sp * PART + PART - 2u]);
        }
    }
    var l = 0.0;
    var acc = 0.0;
    for (var sp = 0u; sp < splits; sp++) {
        let at = base + sp * PART;
        let ls = part[at + PART - 1u];
        if ls > 0.0 {
            let w = exp(part[at + PART - 2u] - mx);
            l += ls * w;
            acc += part[at + c] * w;
        }
    }
    if l == 0.0 {
        o_out[t] = 0.0;
        if c == 0u {
            lse_out[row] = params.neg_inf;
        }
        return;
    }
    o_out[t] = acc / l;
    if c == 0u {
        lse_out[row] = mx + log(l);
    }
}

// a row's position and own block, and its candidate blocks [1, own − 1)
fn own_block(i: u32) -> u32 {
    let p = params.q_offset + i32(i);
    if p < 0 {
        return 0u;
    }
    return u32(p) / params.block;
}

@compute @workgroup_size(64)
fn block_scores(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = flat(wg, lid);
    let blocks = params.arg1;
    if t >= params.kv_heads * params.n * blocks {
        return;
    }
    let b = t % blocks;
    let gi = t / blocks;
    let i = gi % params.n;
    let g = gi / params.n;
    let own = own_block(i);
    if b < 1u || b + 2u > own {
        return; // not a candidate: `pick` never reads it
    }
    let p = params.q_offset + i32(i);
    let group = params.heads / params.kv_heads;
    // compressed keys overlapping block b: c·stride + l > b·l′ and c·stride < (b+1)·l′
    let first = b * params.block;
    var lo = 0u;
    if first >= params.cmp_len {
        lo = (first - params.cmp_len) / params.cmp_stride + 1u;
    }
    let hi = min((first + params.block + params.cmp_stride - 1u) / params.cmp_stride, params.mc);
    var sc = 0.0;
    for (var c = lo; c < hi; c++) {
        if i32(c * params.cmp_stride + params.cmp_len - 1u) > p {
            continue;
        }
        for (var hh = 0u; hh < group; hh++) {
            let row = (g * group + hh) * params.n + i;
            sc += exp(cmp_s[row * params.mc + c] - lse_out[row]);
        }
    }
    scores[t] = sc;
}

@compute @workgroup_size(64)
fn pick(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let gi = flat(wg, lid);
    if gi >= params.kv_heads * params.n {
        return;
    }
    let blocks = params.arg1;
    let i = gi % params.n;
    let g = gi / params.n;
    let own = own_block(i);
    let forced = min(own, 2u) + 1u;
    let want = params.topk - forced;
    var top: TopK;
    if want > 0u {
        for (var b = 1u; b + 2u <= own; b++) {
            offer(&top, want, scores[gi * blocks + b], b);
        }
    }
    let group = params.heads / params.kv_heads;
    let p = params.q_offset + i32(i);
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
