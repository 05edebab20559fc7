// common.wgsl — prepended to every attention kernel (after the generated `const` header).
// The attention contract (docs/DESIGN.md §1) in one place: the call's `CallParams` uniform,
// the visible band, ALiBi, the block-map walk and the online softmax. Helpers take what
// they need as arguments; only the kernels read the bound uniforms.

// One attention call under the contract: binding 0 of every attention kernel, one buffer
// for all of a call's dispatches.
struct CallParams {
    heads: u32,
    kv_heads: u32,
    n: u32,          // query rows (decode: the most new tokens of one step)
    m: u32,          // keys (decode: cache slots)
    group: u32,      // heads / kv_heads: query head h reads kv head h / group
    q_offset: i32,   // M - N: position of query row 0 (bottom-right alignment)
    scale: f32,
    band_lo: i32,    // key j visible from position p iff band_lo <= p - j <= band_hi
    band_hi: i32,    // (causal and window (L, R) both reduce to this band)
    alibi: u32,      // nonzero: add -slope[h] * |p - j|
    batch: u32,
    neg_inf: f32,    // -inf, passed in because WGSL cannot spell it
}

@group(0) @binding(0) var<uniform> contract: CallParams;

// How one dispatch of a block-map kernel (flash, the backward, the heatmap) walks the map
// and which slice of the tensors it covers; each kernel binds it at its own number.
struct Tiles {
    n_qtiles: u32,
    map_heads: u32,  // block map rows per head (1: shared by all heads)
    map_rows: u32,   // offset of the tile entries in the block map buffer
    mask_base: u32,  // offset of the per-entry mask indices
    bits_base: u32,  // offset of the visibility bits
    bits_stride: u32, // the backward's materialised passes: u32 words per query row of bits
    pass_index: u32, // which pass over the tile lists
    pass_tiles: u32, // tiles per list per pass; 0 = all in one pass
    qtile_list: u32, // offset of this pass's list of query tiles in the block map buffer
                     // (0xffffffff: every query tile, workgroup x = query tile)
    // tensors beyond one binding: the dispatch covers heads [head_base, +grid y) of batch
    // batch_base, and Q/O, K/V, LSE are bound from an aligned offset: the shifts (in vec4s,
    // vec4s, f32s, vec2s) turn global indices into indices of the bound ranges.
    q_shift: u32,
    kv_shift: u32,
    lse_shift: u32,
    stats_shift: u32,
    head_base: u32,
    batch_base: u32,
    pad: u32,
}

// Masked scores hold this finite sentinel, so exp(s - m) is exactly 0 with no inf arithmetic.
const MASKED: f32 = -3.0e38;

// Block-map entries: `tile | FULL` when every pair of the tile is visible; a mask index of
// NO_BITS means the sparse mask covers the whole tile (no visibility bits).
const FULL: u32 = 0x80000000u;
const NO_BITS: u32 = 0xffffffffu;

// The block-map head of query head h: maps are per head only when the mask differs by head.
fn map_head_of(h: u32, map_heads: u32) -> u32 {
    return select(0u, h, map_heads > 1u);
}

// Whether key `key` lies in the call's visible band from position `pos` (causal, window).
fn in_band(c: CallParams, pos: i32, key: i32) -> bool {
    let d = pos - key;
    return d >= c.band_lo && d <= c.band_hi;
}

// Whether key `key` (bit `col` of its tile's visibility word `bits` for this row) is visible
// from position `pos` in a listed tile: FULL tiles skip the test; otherwise the key must lie
// inside M, in the band, and be allowed by the sparse mask's bits.
fn tile_visible(c: CallParams, full: bool, pos: i32, key: i32, bits: u32, col: u32) -> bool {
    return full || (u32(key) < c.m && in_band(c, pos, key) && ((bits >> col) & 1u) != 0u);
}

fn alibi_bias(slope: f32, pos: i32, key: i32) -> f32 {
    return -slope * f32(abs(pos - key));
}

// The vec4 lane `lane` loads on the subgroup-shuffle path: j + lane, clamped into the row
// where the subgroup width does not divide D4 (the padding lanes hold zeros of q anyway).
fn lane_at(j: u32, lane: u32) -> u32 {
    return min(j + lane, D4 - 1u);
}

// A pass's share [x, y) of the tile list [list_begin, list_end): kernels that walk long lists
// in passes of `pass_tiles` below an adapter's loop cap (0: the whole list at once).
fn pass_share(list_begin: u32, list_end: u32, pass_index: u32, pass_tiles: u32) -> vec2<u32> {
    if pass_tiles == 0u {
        return vec2<u32>(list_begin, list_end);
    }
    let begin = min(list_end, list_begin + pass_index * pass_tiles);
    return vec2<u32>(begin, min(list_end, begin + pass_tiles));
}

// Online softmax, one tile at a time. After a tile whose largest score is `tile_max`: the
// new running max and the factor that rescales what was summed so far (a fully masked tile
// leaves both unchanged: corr = 1).
fn softmax_rescale(m_run: f32, tile_max: f32) -> vec2<f32> {
    let m_new = max(m_run, tile_max);
    return vec2<f32>(m_new, exp(m_run - m_new));
}

// The weight of score `s` under running max `m`; masked scores weigh exactly 0.
fn softmax_weight(s: f32, m: f32) -> f32 {
    return select(0.0, exp(s - m), s > MASKED);
}

// A finished row: (1 / l, LSE = m + log l), or (0, -inf) for a row with no visible key.
fn softmax_finish(m_run: f32, l_run: f32, neg_inf: f32) -> vec2<f32> {
    if l_run > 0.0 {
        return vec2<f32>(1.0 / l_run, m_run + log(l_run));
    }
    return vec2<f32>(0.0, neg_inf);
}

// log(exp(a) + exp(b)), exact for -inf on either side: merges two partial softmaxes.
fn lse_merge(a: f32, b: f32, neg_inf: f32) -> f32 {
    if a == neg_inf {
        return b;
    }
    if b == neg_inf {
        return a;
    }
    let hi = max(a, b);
    return hi + log(exp(a - hi) + exp(b - hi));
}
