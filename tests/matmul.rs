//! The tiled matmul against the f64 oracle at odd sizes, with bias and fused GELU.

mod common;

use longctx::contract::reference::rel_error;
use longctx::kernels::matmul::{Activation, Matmul, matmul_f64};
use rand::{SeedableRng, rngs::StdRng};

#[test]
fn odd_sizes_bias_and_gelu_match_the_oracle() {
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut worst = 0f64;
    for (m, k, n, bias, act) in [
        (1, 1, 1, false, Activation::None),
        (7, 13, 5, true, Activation::Gelu),
        (33, 65, 31, false, Activation::None),
        (100, 37, 129, true, Activation::None),
        (64, 256, 96, true, Activation::Gelu),
        (257, 300, 70, false, Activation::Gelu),
        (70, 384, 150, true, Activation::GeluErf),
    ] {
        let a = common::random(m * k, &mut rng);
        let b = common::random(k * n, &mut rng);
        let bv = bias.then(|| common::random(n, &mut rng));
        let want = matmul_f64(&a, &b, bv.as_deref(), m, k, n, act);
        for subgroups in [true, false] {
            let mm = Matmul::with_subgroups(g, m, k, n, bias, act, subgroups).unwrap();
            let c = mm.run(g, &a, &b, bv.as_deref()).unwrap();
            let err = rel_error(&c, &want);
            assert!(
                err <= 1e-5,
                "{m}×{k}×{n} bias={bias} {act:?} subgroups={subgroups}: {err:.2e} (seed {seed})"
            );
            worst = worst.max(err);
        }
    }
    println!("matmul worst rel err {worst:.2e}");
}

#[test]
fn bad_shapes_are_typed_errors() {
    let g = common::gpu();
    assert!(matches!(Matmul::new(g, 0, 3, 3, false, Activation::None), Err(longctx::Error::Empty { .. })));
    let mm = Matmul::new(g, 2, 3, 4, false, Activation::None).unwrap();
    assert!(matches!(mm.run(g, &[0.0; 5], &[0.0; 12], None), Err(longctx::Error::Shape(_))));
}
