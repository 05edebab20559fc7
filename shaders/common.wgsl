// common.wgsl — prepended to every attention kernel (after the generated `const` header).
// The attention contract (DESIGN.md §1) in one place: parameters, the visible band, ALiBi.

struct Params {
    heads: u32,
    kv_heads: u32,
    n: u32,
    m: u32,
    group: u32,      // heads / kv_heads: query head h reads kv head h / group
    q_offset: i32,   // M - N: position of query row 0 (bottom-right alignment)
    scale: f32,
    band_lo: i32,    // key j visible from position p iff band_lo <= p - j <= band_hi
    band_hi: i32,    // (causal and window (L, R) both reduce to this band)
    alibi: u32,      // nonzero: add -slope[h] * |p - j|
    n_qtiles: u32,
    map_heads: u32,  // block map rows per head (1: shared by all heads)
    map_rows: u32,   // offset of the tile entries in the block map buffer
    neg_inf: f32,    // -inf, passed in because WGSL cannot spell it
    batch: u32,
    mask_base: u32,  // offset of the per-entry mask indices (flash) / 0 = no mask bits (naive)
    bits_base: u32,  // offset of the visibility bits
    bits_stride: u32, // naive: u32 words per query row of the visibility bits
    bh_base: u32,    // naive: first (batch·H + head) of this chunk of heads
    pass_index: u32, // flash: which pass over the tile lists (see flash.wgsl)
    pass_tiles: u32, // flash: tiles per list per pass; 0 = all in one pass
    qtile_list: u32, // flash: offset of this pass's list of query tiles in the block map
                     // buffer (0xffffffff: every query tile, workgroup x = query tile)
    // flash on tensors beyond one binding: the dispatch covers heads [head_base, +grid y)
    // of batch batch_base, and Q/O, K/V, LSE are bound from an aligned offset: the shifts
    // (in vec4s, vec4s, f32s) turn global indices into indices of the bound ranges.
    q_shift: u32,
    kv_shift: u32,
    lse_shift: u32,
    head_base: u32,
    batch_base: u32,
    stats_shift: u32, // backward: (LSE, Δ) rows bound from an aligned offset, in vec2s
}

@group(0) @binding(0) var<uniform> params: Params;

// Masked scores hold this finite sentinel, so exp(s - m) is exactly 0 with no inf arithmetic.
const MASKED: f32 = -3.0e38;

fn is_visible(pos: i32, key: i32) -> bool {
    let d = pos - key;
    return d >= params.band_lo && d <= params.band_hi;
}

fn alibi_bias(slope: f32, pos: i32, key: i32) -> f32 {
    return -slope * f32(abs(pos - key));
}

// This pass's share [x, y) of the tile list [list_begin, list_end): kernels that walk long
// lists in passes below an adapter's loop cap (pass_tiles = 0: the whole list at once).
fn pass_share(list_begin: u32, list_end: u32) -> vec2<u32> {
    if params.pass_tiles == 0u {
        return vec2<u32>(list_begin, list_end);
    }
    let begin = min(list_end, list_begin + params.pass_index * params.pass_tiles);
    return vec2<u32>(begin, min(list_end, begin + params.pass_tiles));
}
