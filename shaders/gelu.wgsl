// gelu.wgsl — GELU's tanh form (GPT-2's) and its derivative: one definition for matmul's fused
// epilogue (ACT = 1) and the training kernels (kernels/train.rs; oracle train::gelu_f64).

fn gelu_tanh(x: f32) -> f32 {
    return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

fn gelu_tanh_grad(x: f32) -> f32 {
    let k = 0.7978845608028654;
    let t = tanh(k * (x + 0.044715 * x * x * x));
    return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
}
