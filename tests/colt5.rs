//! The CoLT5 layer on the GPU against its f64 oracle; routing everything equals the dense
//! reference; bad configurations are typed errors.

use crate::common;

use longctx::contract::reference::rel_error;
use longctx::models::colt5::{Colt5Config, Colt5Layer, Colt5Weights, colt5_f64};
use rand::{SeedableRng, rngs::StdRng};

fn small(n: usize, fraction: f64) -> Colt5Config {
    let mut c = Colt5Config::standard(n, 64, 8, fraction);
    c.heads = 2;
    c.head_dim = 32;
    c
}

#[test]
fn layer_matches_the_oracle() {
    let g = common::gpu();
    let seed = common::seed();
    let mut worst = 0f64;
    for (n, fraction) in [(37, 0.25), (100, 0.125), (64, 1.0)] {
        let cfg = small(n, fraction);
        let w = Colt5Weights::random(&cfg, seed);
        let x = common::random(n * cfg.d_model, &mut StdRng::seed_from_u64(seed ^ 1));
        for dense in [false, true] {
            let layer = Colt5Layer::new(g, &cfg, &w, dense).unwrap();
            let (out, timings) = layer.forward(g, &x).unwrap();
            assert_eq!(timings.len(), 5);
            let want = colt5_f64(&cfg, &w, &x, dense);
            let err = rel_error(&out, &want);
            assert!(err <= 1e-4, "N={n} fraction {fraction} dense={dense}: rel err {err:.2e} (seed {seed})");
            worst = worst.max(err);
        }
    }
    println!("CoLT5 layer vs oracle: worst rel err {worst:.2e}");
}

#[test]
fn routing_every_token_equals_the_dense_layer() {
    let g = common::gpu();
    let seed = common::seed();
    let cfg = small(53, 1.0);
    let w = Colt5Weights::random(&cfg, seed);
    let x = common::random(53 * cfg.d_model, &mut StdRng::seed_from_u64(seed));
    let (routed, _) = Colt5Layer::new(g, &cfg, &w, false).unwrap().forward(g, &x).unwrap();
    let (dense, _) = Colt5Layer::new(g, &cfg, &w, true).unwrap().forward(g, &x).unwrap();
    let err = rel_error(&routed, &dense.iter().map(|&v| v as f64).collect::<Vec<_>>());
    assert!(err <= 1e-5, "fraction 1.0 vs dense: {err:.2e} (seed {seed})");
}

#[test]
fn bad_configurations_are_typed_errors() {
    let g = common::gpu();
    let mut cfg = small(10, 0.5);
    cfg.route_q = 11;
    let w = Colt5Weights::random(&small(10, 0.5), 1);
    assert!(matches!(
        Colt5Layer::new(g, &cfg, &w, false),
        Err(longctx::Error::OutOfRange { value: 11, max: 10, .. })
    ));
    let cfg = small(10, 0.5);
    let mut bad = w.clone();
    bad.tensors[3].pop();
    assert!(matches!(Colt5Layer::new(g, &cfg, &bad, false), Err(longctx::Error::Shape(_))));
    // a weights file missing a tensor names it
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    let bytes: Vec<u8> = w.tensors[0].iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![64, 32], &bytes).unwrap();
    std::fs::write(&path, safetensors::serialize([("light.wq", view)], None).unwrap()).unwrap();
    let err = Colt5Weights::from_safetensors(&cfg, &path).unwrap_err().to_string();
    assert!(err.contains("no tensor `light.wk`"), "{err}");
}
