//! Routing on the GPU against the CPU oracle: top-k selection (exact, ties to the lower
//! index), gather, and score-scaled scatter-add.

use crate::common;

use longctx::kernels::route::{Router, top_k_cpu};
use rand::{Rng, SeedableRng, rngs::StdRng};

#[test]
fn top_k_equals_the_oracle_including_ties() {
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for (n, d, k) in [(1, 4, 1), (7, 3, 3), (100, 16, 13), (333, 8, 333), (1000, 32, 125), (4096, 8, 512)] {
        // tokens drawn from a few prototype rows: copies tie exactly (bit-identical scores in
        // any arithmetic), distinct prototypes differ clearly
        let protos: Vec<Vec<f32>> = (0..9).map(|_| common::random(d, &mut rng)).collect();
        let x: Vec<f32> = (0..n).flat_map(|_| protos[rng.random_range(0..protos.len())].clone()).collect();
        let w = common::random(d, &mut rng);
        let router = Router::new(g, n, d, k).unwrap();
        let got = router.select(g, &x, &w).unwrap();
        let want = top_k_cpu(&x, &w, n, d, k);
        let got_idx: Vec<usize> = got.iter().map(|p| p.0).collect();
        let want_idx: Vec<usize> = want.iter().map(|p| p.0).collect();
        for (a, b) in got.iter().zip(&want) {
            assert!((a.1 as f64 - b.1).abs() < 1e-5, "n={n} k={k}: score {} vs {} (seed {seed})", a.1, b.1);
        }
        assert_eq!(got_idx, want_idx, "n={n} d={d} k={k} (seed {seed})");
    }
}

#[test]
fn gather_and_scaled_scatter_add() {
    let g = common::gpu();
    let (n, d, k) = (77, 12, 20);
    let mut rng = StdRng::seed_from_u64(common::seed());
    let x = common::random(n * d, &mut rng);
    let w = common::random(d, &mut rng);
    let base = common::random(n * d, &mut rng);
    let router = Router::new(g, n, d, k).unwrap();
    let (xb, wb) = (g.upload("x", &x).unwrap(), g.upload("w", &w).unwrap());
    let rows = g.storage("rows", (k * d * 4) as u64).unwrap();
    let out = g.upload("out", &base).unwrap();
    let mut enc = g.device.create_command_encoder(&Default::default());
    router.encode_select(g, &mut enc, &xb, &wb, &rows);
    router.encode_gather(g, &mut enc, &xb, &wb, &rows);
    router.encode_scatter(g, &mut enc, &xb, &wb, &rows, &out);
    g.queue.submit([enc.finish()]);
    let gathered: Vec<f32> = g.read(&rows, k * d).unwrap();
    let result: Vec<f32> = g.read(&out, n * d).unwrap();
    let sel = top_k_cpu(&x, &w, n, d, k);
    let mut want = base.clone();
    for (r, &(i, s)) in sel.iter().enumerate() {
        assert_eq!(&gathered[r * d..(r + 1) * d], &x[i * d..(i + 1) * d], "row {r} gathers token {i}");
        for e in 0..d {
            want[i * d + e] += (s as f32) * x[i * d + e];
        }
    }
    let err = result.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(err < 1e-5, "scatter-add max abs err {err}");
}

#[test]
fn k_beyond_n_is_a_typed_error() {
    let g = common::gpu();
    assert!(matches!(Router::new(g, 10, 4, 11), Err(longctx::Error::OutOfRange { value: 11, max: 10, .. })));
    assert!(matches!(Router::new(g, 0, 4, 1), Err(longctx::Error::Empty { .. })));
}
