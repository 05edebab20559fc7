// matmul_scalar.wgsl — the f32 bindings and the per-element epilogue of the kernels that
// address single elements (matmul.wgsl, matmul_coop.wgsl); matmul_blocked.wgsl binds the same
// buffers as vec4 arrays.

@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

// C[gr, gc] = act(value + bias[gc]) (+ C[gr, gc] when accumulating), for an element inside
// C (the caller checks the bounds).
fn store_c(gr: u32, gc: u32, value: f32) {
    var val = value;
    if dims.has_bias != 0u {
        val += bias[gc];
    }
    val = activate(val);
    let at = gr * dims.n + gc - dims.c_shift;
    if dims.accumulate != 0u {
        val += c[at];
    }
    c[at] = val;
}
