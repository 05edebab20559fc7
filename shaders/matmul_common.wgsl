// matmul_common.wgsl — shared by the three matmul kernels (placed after the constants header,
// which defines ACT): the call's `Dims` and its uniform, and the fused activation `activate`.
// ACT: 0 none, 1 GELU (tanh form, as GPT-2 uses), 2 GELU (erf form, as BERT uses; erf by
// Abramowitz–Stegun 7.1.26, |error| ≤ 1.5e-7). With `accumulate` the result is added to C
// (residual branches).

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

fn erf(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))));
    return sign(x) * (1.0 - poly * exp(-a * a));
}

fn gelu_erf(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf(x * 0.70710678118654752));
}

// The fused activation of the epilogue (ACT), per element.
fn activate(x: f32) -> f32 {
    if ACT == 1u {
        return gelu_tanh(x);
    } else if ACT == 2u {
        return gelu_erf(x);
    }
    return x;
}
