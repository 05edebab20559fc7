// nsa_params.wgsl — composed into nsa.wgsl, nsa_decode.wgsl and nsa_backward.wgsl: their one uniform
// (`Params` in src/kernels/nsa.rs) and the flat invocation index of their 64-wide workgroups.

struct Params {
    heads: u32,
    kv_heads: u32,
    n: u32,
    m: u32,
    d: u32,
    mc: u32,          // compressed keys
    cmp_len: u32,     // l
    cmp_stride: u32,  // d (the stride)
    block: u32,       // l′
    topk: u32,        // n
    q_offset: i32,    // position of query row 0
    groups_x: u32,    // workgroups per grid row (2-D grids for long dispatches)
    arg0: u32,        // a stage's own words: `score`'s pass covers blocks [arg0, arg1);
    arg1: u32,        //   `phi_grads` takes arg0 compressed keys per chunk, arg1 chunks
    last: u32,        // nonzero: `score`'s last pass writes the lists; `cmp_partial`: the window w
                      //   (0: the compressed keys)
    scale: f32,
    neg_inf: f32,     // -inf, passed in because WGSL cannot spell it
}

@group(0) @binding(0) var<uniform> params: Params;

fn flat(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * params.groups_x + wg.x) * 64u + lid;
}
