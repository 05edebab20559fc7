// dsa_params.wgsl — composed into dsa_index.wgsl, dsa.wgsl and dsa_align.wgsl: their one uniform (`Params` in
// src/kernels/dsa.rs) and the NONE of an empty list entry.

struct Params {
    batch: u32,
    heads: u32,
    kv_heads: u32,
    n: u32,
    m: u32,
    topk: u32,
    index_heads: u32,  // HI
    q_offset: i32,     // position of query row 0
    groups_x: u32,     // workgroups per grid row (2-D grids for long dispatches)
    row0: u32,         // the chunk's first (sequence, row), b·N + i (the indexer's stages)
    rows: u32,         // the chunk's rows
    arg0: u32,         // `index_scores`: rows per tile; `attend`: the pass's first list entry
    arg1: u32,         // `attend`: the pass's end entry
    last: u32,         // `attend`: nonzero on the last pass (normalise and write LSE)
    scale: f32,
    list_base: u32,    // the element of `lists` its binding starts at (bound in windows of rows)
    hf0: u32,          // `attend`: the window's first b·H + h
    hf1: u32,          // `attend`: its end
    i0: u32,           // `attend`: the window's first row of a sequence
    i1: u32,           // `attend`: its end
    neg_inf: f32,      // -inf, passed in because WGSL cannot spell it (Tint rejects a constant one)
    d4: u32,           // `dsa_align`: the attention's head dim in vec4s
    di4: u32,          // `dsa_align`: the indexer's head dim in vec4s
    grad_scale: f32,   // `dsa_align`: the factor on every gradient
}

@group(0) @binding(0) var<uniform> params: Params;

const NONE: u32 = 0xffffffffu;
