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

// Block-map entries: `tile | FULL` when every pair of the tile is visible; a mask index of
// NO_BITS means the sparse mask covers the whole tile (no visibility bits).
const FULL: u32 = 0x80000000u;
const NO_BITS: u32 = 0xffffffffu;

// The block-map head of query head h: maps are per head only when the mask differs by head.
fn map_head_of(h: u32) -> u32 {
    return select(0u, h, params.map_heads > 1u);
}

// Whether key `key` (bit `c` of its tile's visibility word `bits` for this row) is visible
// from position `pos` in a listed tile: FULL tiles skip the test; otherwise the key must lie
// inside M, in the band, and be allowed by the sparse mask's bits.
fn tile_visible(full: bool, pos: i32, key: i32, bits: u32, c: u32) -> bool {
    return full || (u32(key) < params.m && is_visible(pos, key) && ((bits >> c) & 1u) != 0u);
}

// The vec4 lane `lane` loads on the subgroup-shuffle path: j + lane, clamped into the row
// where the subgroup width does not divide D4 (the padding lanes hold zeros of q anyway).
fn lane_at(j: u32, lane: u32) -> u32 {
    return min(j + lane, D4 - 1u);
}

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
