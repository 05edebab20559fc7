// matmul_common.wgsl — shared by matmul.wgsl and matmul_coop.wgsl (placed after the
// constants header, which defines ACT): the call's `Dims`, the bindings, the activations
// and the per-element epilogue. ACT: 0 none, 1 GELU (tanh form, as GPT-2 uses), 2 GELU (erf
// form, as BERT uses; erf by Abramowitz–Stegun 7.1.26, |error| ≤ 1.5e-7). With `accumulate`
// the result is added to C (residual branches).

struct Dims {
    m: u32,
    k: u32,
    n: u32,
    has_bias: u32,
    accumulate: u32, // nonzero: C += act(A·B + bias) (residual branches)
    // rows [row_base, row_end) of this dispatch; A and C are bound from aligned offsets and
    // the shifts (in elements) turn global indices into indices of the bound ranges — so
    // A and C larger than one storage binding run in chunks of rows
    row_base: u32,
    row_end: u32,
    a_shift: u32,
    c_shift: u32,
    // the slice [k_begin, k_end) of K this dispatch sums (K split so that one invocation's
    // loops stay under an adapter's cap; later slices accumulate, without bias)
    k_begin: u32,
    k_end: u32,
}

@group(0) @binding(0) var<uniform> dims: Dims;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn erf(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(x) * (1.0 - poly * exp(-a * a));
}

fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf(x * 0.70710678118654752));
}

// C[gr, gc] = act(value + bias[gc]) (+ C[gr, gc] when accumulating), for an element inside
// C (the caller checks the bounds).
fn store_c(gr: u32, gc: u32, value: f32) {
    var val = value;
    if dims.has_bias != 0u {
        val += bias[gc];
    }
    if ACT == 1u {
        val = gelu_tanh(val);
    } else if ACT == 2u {
        val = gelu_erf(val);
    }
    let at = gr * dims.n + gc - dims.c_shift;
    if dims.accumulate != 0u {
        val += c[at];
    }
    c[at] = val;
}
