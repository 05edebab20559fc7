//! Shared test helpers: one real device per test binary, seeded random inputs, comparisons
//! against the f64 oracle with the error printed.
#![allow(dead_code)]

use std::sync::OnceLock;

use longctx::contract::reference::{attention_f64, rel_error};
use longctx::{Attention, AttnSpec, DeviceTensors, Gpu, GpuOptions, Kernel};
use rand::{Rng, rngs::StdRng};

/// The device for GPU tests. No adapter is a failure, never a skip.
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| match Gpu::new(&GpuOptions::from_env()) {
        Ok(g) => g,
        Err(e) => panic!("GPU tests need an adapter: {e}"),
    })
}

/// A fresh seed (or `LONGCTX_SEED` to replay one), printed with every failure.
pub fn seed() -> u64 {
    std::env::var("LONGCTX_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random)
}

pub fn random(len: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Random Q, K, V for `spec` from `seed` (the library's generator, uniform in [-1, 1)).
pub fn inputs(spec: &AttnSpec, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    longctx::contract::inputs::seeded_qkv(spec, seed)
}

/// Relative errors of one kernel run against the oracle: (O, LSE).
#[derive(Clone, Copy, Debug)]
pub struct Errors {
    pub o: f64,
    pub lse: f64,
}

/// Runs `kernel` (outputs poisoned with NaN first) and compares it with the oracle.
/// Fully masked rows must come back as exactly 0 and LSE `-inf`.
pub fn check_kernel(attn: &Attention, seed: u64, bound: f64) -> Errors {
    check_kernel_on(gpu(), attn, seed, bound)
}

/// [`check_kernel`] on a given device (the one `attn` was prepared on).
pub fn check_kernel_on(g: &Gpu, attn: &Attention, seed: u64, bound: f64) -> Errors {
    let spec = attn.spec().clone();
    let (q, k, v) = inputs(&spec, seed);
    let (o_ref, lse_ref) = attention_f64(&spec, &q, &k, &v).unwrap();
    let dev = DeviceTensors::upload(g, &spec, &q, &k, &v).unwrap();
    dev.poison(g);
    let mut enc = g.device.create_command_encoder(&Default::default());
    attn.encode(g, &mut enc, &dev.buffers()).unwrap();
    g.queue.submit([enc.finish()]);
    let out = dev.read(g).unwrap();

    let ctx = format!("seed {seed} (replay with LONGCTX_SEED={seed}), spec {spec:?}");
    let d = spec.shape.head_dim;
    for (row, &l) in lse_ref.iter().enumerate() {
        if l == f64::NEG_INFINITY {
            assert_eq!(
                out.lse[row],
                f32::NEG_INFINITY,
                "fully masked row {row}: LSE {} ≠ -inf; {ctx}",
                out.lse[row]
            );
            assert!(
                out.o[row * d..(row + 1) * d].iter().all(|&x| x == 0.0),
                "fully masked row {row}: output not 0; {ctx}"
            );
        } else {
            assert!(out.lse[row].is_finite(), "row {row}: LSE {} for a visible row; {ctx}", out.lse[row]);
        }
    }
    let finite: Vec<(f32, f64)> =
        out.lse.iter().zip(&lse_ref).filter(|(_, r)| r.is_finite()).map(|(&a, &b)| (a, b)).collect();
    let lse_err = rel_error(
        &finite.iter().map(|x| x.0).collect::<Vec<_>>(),
        &finite.iter().map(|x| x.1).collect::<Vec<_>>(),
    );
    let errs = Errors { o: rel_error(&out.o, &o_ref), lse: lse_err };
    assert!(
        errs.o <= bound && errs.lse <= bound,
        "relative error O {:.3e}, LSE {:.3e} exceeds {bound:.0e}; {ctx}",
        errs.o,
        errs.lse
    );
    errs
}

/// Runs flash and naive on `spec` against the oracle; returns the worst (flash, naive) O error.
pub fn check_both(spec: &AttnSpec, bound: f64) -> (f64, f64) {
    let seed = seed();
    let flash = Attention::new(gpu(), Kernel::Flash, spec).unwrap();
    let naive = Attention::new(gpu(), Kernel::Naive, spec).unwrap();
    let ef = check_kernel(&flash, seed, bound);
    let en = check_kernel(&naive, seed, bound);
    (ef.o.max(ef.lse), en.o.max(en.lse))
}
