//! The matmul kernels (tiled, register-blocked, cooperative matrices) against the f64 oracle
//! at odd sizes, with bias and fused GELU.

use crate::common;

use longctx::contract::reference::rel_error;
use longctx::kernels::matmul::{Activation, Matmul, MatmulOptions, TensorCores, matmul_f64};
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
        // K and N multiples of 4 (the register-blocked kernel on CPU adapters), M and N not
        // multiples of its 64 × 64 block
        (37, 20, 12, true, Activation::Gelu),
        (65, 132, 68, false, Activation::None),
        (130, 64, 196, true, Activation::GeluErf),
    ] {
        let a = common::random(m * k, &mut rng);
        let b = common::random(k * n, &mut rng);
        let bv = bias.then(|| common::random(n, &mut rng));
        let want = matmul_f64(&a, &b, bv.as_deref(), m, k, n, act);
        for (subgroups, blocked) in [(true, true), (false, true), (true, false)] {
            let options = MatmulOptions { subgroups, tensor_cores: TensorCores::Off, blocked };
            let mm = Matmul::with_options(g, m, k, n, bias, act, options).unwrap();
            let path = mm.path();
            let c = mm.run(g, &a, &b, bv.as_deref()).unwrap();
            let err = rel_error(&c, &want);
            assert!(
                err <= 1e-5,
                "{m}×{k}×{n} bias={bias} {act:?} {path} subgroups={subgroups}: {err:.2e} (seed {seed})"
            );
            worst = worst.max(err);
        }
    }
    println!("matmul worst rel err {worst:.2e}");
}

#[test]
fn cpu_adapters_take_the_register_blocked_kernel_where_k_and_n_allow() {
    let g = common::gpu();
    let path = |k, n, blocked| {
        let options = MatmulOptions { blocked, ..MatmulOptions::default() };
        Matmul::with_options(g, 33, k, n, false, Activation::None, options).unwrap().path()
    };
    if g.profile().0.per_lane_loads {
        assert_eq!(path(64, 96, true), "register-blocked");
        assert_eq!(path(64, 97, true), "vec4 tiles", "N not a multiple of 4");
        assert_eq!(path(66, 96, true), "vec4 tiles", "K not a multiple of 4");
    }
    assert_eq!(path(64, 96, false), "vec4 tiles");
}

#[test]
fn transposed_operands_match_the_oracle() {
    // the gradients' products xᵀ·dy and dy·Wᵀ: Aᵀ [K, M] and Bᵀ [N, K] read by the
    // register-blocked kernel (CPU adapters), K split past the loop cap included; where
    // another kernel runs, asking for them is a typed error
    use longctx::kernels::matmul::Layout;
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let transpose = |x: &[f32], rows: usize, cols: usize| -> Vec<f32> {
        (0..cols).flat_map(|c| (0..rows).map(move |r| x[r * cols + c])).collect()
    };
    let mut worst = 0f64;
    for (m, k, n, bias) in [
        (4, 4, 4, false),
        (36, 20, 12, true),
        (68, 132, 196, false),
        (132, 64, 44, true),
        (20, 9000, 8, false),
    ] {
        let a = common::random(m * k, &mut rng);
        let b = common::random(k * n, &mut rng);
        let bv = bias.then(|| common::random(n, &mut rng));
        let want = matmul_f64(&a, &b, bv.as_deref(), m, k, n, Activation::None);
        for (a_t, b_t) in [(true, false), (false, true), (true, true)] {
            let layout = Layout { a_t, b_t };
            let mm =
                Matmul::with_layout(g, [m, k, n], bias, Activation::None, MatmulOptions::default(), layout);
            if !g.profile().0.per_lane_loads {
                assert!(matches!(mm, Err(longctx::Error::Invalid(_))), "{layout:?} on {}", g.info().name);
                continue;
            }
            let mm = mm.unwrap();
            let a_in = if a_t { transpose(&a, m, k) } else { a.clone() };
            let b_in = if b_t { transpose(&b, k, n) } else { b.clone() };
            let err = rel_error(&mm.run(g, &a_in, &b_in, bv.as_deref()).unwrap(), &want);
            assert!(err <= 1e-5, "{m}×{k}×{n} bias={bias} {layout:?}: {err:.2e} (seed {seed})");
            worst = worst.max(err);
        }
    }
    println!("transposed operands: worst rel err {worst:.2e}");
    let aligned = Layout { a_t: true, b_t: false };
    let err = Matmul::with_layout(g, [33, 8, 8], false, Activation::None, MatmulOptions::default(), aligned)
        .err()
        .expect("Aᵀ with M = 33");
    assert!(matches!(err, longctx::Error::Invalid(_)) && err.to_string().contains("multiple of 4"), "{err}");
}

#[test]
fn a_k_past_the_loop_cap_is_split_and_summed() {
    // lavapipe leaves a loop nest after 65 535 iterations: one invocation summing K = 8 200
    // would pass it, so K runs in slices that accumulate into C (once a LoopLimit error that
    // stopped `eval --lengths 8192` and `train --train-len 8192`)
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // K = 8 200 on the tiled kernel (N = 45), K = 9 000 on the register-blocked one (N = 44)
    for (m, k, n) in [(37, 8200, 45), (37, 9000, 44)] {
        let a = common::random(m * k, &mut rng);
        let b = common::random(k * n, &mut rng);
        let bias = common::random(n, &mut rng);
        let want = matmul_f64(&a, &b, Some(&bias), m, k, n, Activation::None);
        for subgroups in [true, false] {
            let mm = Matmul::with_subgroups(g, m, k, n, true, Activation::None, subgroups).unwrap();
            if g.loop_iteration_limit().is_some() {
                assert!(mm.dispatches() > 1, "K = {k} in one slice under a loop cap ({})", mm.path());
            }
            let err = rel_error(&mm.run(g, &a, &b, Some(&bias)).unwrap(), &want);
            assert!(err <= 1e-5, "{m}×{k}×{n} {} subgroups={subgroups}: {err:.2e} (seed {seed})", mm.path());
        }
    }
    // an activation cannot be summed in slices: a typed error where K must be split
    if g.loop_iteration_limit().is_some() {
        let err = Matmul::new(g, 37, 8200, 45, true, Activation::Gelu).err().expect("GELU over split K");
        assert!(matches!(err, longctx::Error::LoopLimit { .. }), "{err}");
    }
}

#[test]
fn bad_shapes_are_typed_errors() {
    let g = common::gpu();
    assert!(matches!(Matmul::new(g, 0, 3, 3, false, Activation::None), Err(longctx::Error::Empty { .. })));
    let mm = Matmul::new(g, 2, 3, 4, false, Activation::None).unwrap();
    assert!(matches!(mm.run(g, &[0.0; 5], &[0.0; 12], None), Err(longctx::Error::Shape(_))));
}

#[test]
fn tensor_cores_match_the_oracle_where_the_adapter_has_them() {
    // Cooperative matrices (EXPERIMENTAL_COOPERATIVE_MATRIX): every configuration the
    // adapter offers runs against the f64 oracle at sizes that are not multiples of the
    // 2S × 2S block. The software adapter (lavapipe) has none: there the test checks that
    // the engine says so — the default path is the vec4 kernel and asking for f16 tensor
    // cores is a typed error — and the kernels' variants are validated by tests/shaders.rs.
    use longctx::kernels::matmul::{Coop, MatmulOptions, TensorCores};
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let f16 = MatmulOptions { tensor_cores: TensorCores::F16, ..MatmulOptions::default() };
    if g.cooperative_matrices().is_empty() {
        let mm = Matmul::new(g, 33, 40, 50, false, Activation::None).unwrap();
        assert_eq!((mm.coop(), mm.path().as_str()), (None, "vec4 tiles"));
        let err = Matmul::with_options(g, 33, 40, 50, false, Activation::None, f16).err().unwrap();
        assert!(matches!(err, longctx::Error::Config { .. }), "{err}");
        println!("{}: no cooperative matrices ({err})", g.info().name);
        return;
    }
    let mut ran = 0;
    for (tc, bound) in [(TensorCores::Exact, 1e-5), (TensorCores::F16, 5e-3)] {
        let Ok(Some(coop)) = Coop::for_device(g, tc) else { continue };
        for (m, k, n, bias, act) in [
            (1, 1, 1, false, Activation::None),
            (37, 70, 45, true, Activation::Gelu),
            (130, 257, 99, true, Activation::GeluErf),
        ] {
            let (a, b) = (common::random(m * k, &mut rng), common::random(k * n, &mut rng));
            let bv = bias.then(|| common::random(n, &mut rng));
            let options = MatmulOptions { tensor_cores: tc, ..MatmulOptions::default() };
            let mm = Matmul::with_options(g, m, k, n, bias, act, options).unwrap();
            assert_eq!(mm.coop(), Some(coop));
            let err = rel_error(
                &mm.run(g, &a, &b, bv.as_deref()).unwrap(),
                &matmul_f64(&a, &b, bv.as_deref(), m, k, n, act),
            );
            assert!(err <= bound, "{} {m}×{k}×{n}: {err:.2e} > {bound:.0e} (seed {seed})", mm.path());
            ran += 1;
        }
    }
    assert!(
        ran > 0,
        "the adapter reports cooperative matrices {:?} but no path ran",
        g.cooperative_matrices()
    );
}

#[test]
fn the_tensor_core_kernel_with_emulated_matrices_matches_the_oracle() {
    // matmul_coop.wgsl with its cooperative-matrix operations rewritten into plain WGSL
    // (Coop::emulated): the real kernel's staging, layouts, edges and epilogue, run here
    // where no adapter has the feature.
    use longctx::kernels::matmul::{MatmulOptions, TensorCores};
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for (size, f16, bound) in [(8, false, 1e-5), (8, true, 5e-3)] {
        // one activation: llvmpipe takes ~20 s to compile each emulated variant
        for (m, k, n, bias, act) in [(1, 1, 1, false, Activation::Gelu), (37, 70, 45, true, Activation::Gelu)]
        {
            let (a, b) = (common::random(m * k, &mut rng), common::random(k * n, &mut rng));
            let bv = bias.then(|| common::random(n, &mut rng));
            let options = MatmulOptions {
                tensor_cores: TensorCores::Emulated { size, f16 },
                ..MatmulOptions::default()
            };
            let mm = Matmul::with_options(g, m, k, n, bias, act, options).unwrap();
            assert!(mm.path().ends_with("(emulated)"), "{}", mm.path());
            let got = mm.run(g, &a, &b, bv.as_deref()).unwrap();
            let err = rel_error(&got, &matmul_f64(&a, &b, bv.as_deref(), m, k, n, act));
            assert!(err <= bound, "{} {m}×{k}×{n}: {err:.2e} > {bound:.0e} (seed {seed})", mm.path());
            println!("{} {m}×{k}×{n}: rel err {err:.2e}", mm.path());
        }
    }
}
