//! The training kernels (kernels/train.rs) against their f64 oracles at odd sizes, outputs
//! poisoned first; and the oracles against central finite differences of their forward
//! passes, so a wrong derivative cannot hide in both.

use crate::common;

use longctx::contract::reference::rel_error;
use longctx::kernels::train::{
    AdamW, Train, adamw_f64, cross_entropy_f64, embedding_backward_f64, gelu_f64, layer_norm_backward_f64,
    layer_norm_f64,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

const BOUND: f64 = 1e-5;

fn run(f: impl FnOnce(&mut wgpu::CommandEncoder)) {
    let g = common::gpu();
    let mut enc = g.device.create_command_encoder(&Default::default());
    f(&mut enc);
    g.queue.submit([enc.finish()]);
}

fn poisoned(len: usize) -> wgpu::Buffer {
    common::gpu().upload("poisoned", &vec![f32::NAN; len]).unwrap()
}

fn f64s(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

#[test]
fn cross_entropy_matches_the_oracle_and_its_gradient_the_loss() {
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let (rows, vocab) = (37, 259);
    let logits: Vec<f32> = (0..rows * vocab).map(|_| rng.random_range(-6.0f32..6.0)).collect();
    // every fifth row does not count (target ≥ vocab)
    let targets: Vec<u32> =
        (0..rows).map(|r| if r % 5 == 4 { u32::MAX } else { rng.random_range(0..vocab as u32) }).collect();
    let counted = targets.iter().filter(|&&t| (t as usize) < vocab).count();
    let scale = 1.0 / counted as f32;
    let k = Train::new(g).unwrap();
    let (lb, tb) = (g.upload("logits", &logits).unwrap(), g.upload("targets", &targets).unwrap());
    let (db, lossb) = (poisoned(rows * vocab), poisoned(rows));
    run(|e| k.cross_entropy(g, e, &lb, &tb, &db, &lossb, rows, vocab, scale).unwrap());
    let (loss, grad) = (g.read::<f32>(&lossb, rows).unwrap(), g.read::<f32>(&db, rows * vocab).unwrap());
    let (loss_ref, grad_ref) = cross_entropy_f64(&logits, &targets, vocab, scale as f64);
    let e = rel_error(&loss, &loss_ref).max(rel_error(&grad, &grad_ref));
    assert!(e <= BOUND, "cross-entropy rel err {e:.2e} (seed {seed})");
    // the oracle's gradient is the derivative of its mean loss
    let h = 1e-3;
    let mean = |x: &[f32]| cross_entropy_f64(x, &targets, vocab, 1.0).0.iter().sum::<f64>() / counted as f64;
    for idx in [0, 5 * vocab + 17, (rows - 1) * vocab + vocab - 1] {
        let (mut up, mut down) = (logits.clone(), logits.clone());
        up[idx] += h;
        down[idx] -= h;
        // divided by the step float32 actually took (1e-3 around 6 is off by ~5e-4 relative)
        let fd = (mean(&up) - mean(&down)) / (up[idx] as f64 - down[idx] as f64);
        assert!((fd - grad_ref[idx]).abs() < 1e-6, "dlogits[{idx}]: {fd} vs {}", grad_ref[idx]);
    }
    println!("cross-entropy {rows}×{vocab}: rel err {e:.1e}");
}

#[test]
fn gelu_and_layer_norm_backward_match_the_oracles() {
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let k = Train::new(g).unwrap();
    // GELU
    let n = 1001;
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-5.0f32..5.0)).collect();
    let dy: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let (xb, dyb, dxb) = (g.upload("x", &x).unwrap(), g.upload("dy", &dy).unwrap(), poisoned(n));
    run(|e| k.gelu_backward(g, e, &xb, &dyb, &dxb, n).unwrap());
    let want: Vec<f64> = x.iter().zip(&dy).map(|(&a, &b)| b as f64 * gelu_f64(a as f64).1).collect();
    let e_gelu = rel_error(&g.read::<f32>(&dxb, n).unwrap(), &want);
    assert!(e_gelu <= BOUND, "GELU backward {e_gelu:.2e} (seed {seed})");
    for &v in &[-3.0, -0.5, 0.0, 0.7, 2.5] {
        let fd = (gelu_f64(v + 1e-5).0 - gelu_f64(v - 1e-5).0) / 2e-5;
        assert!((fd - gelu_f64(v).1).abs() < 1e-8, "GELU'({v})");
    }
    // the sigmoid (NSA's gates) and its backward, from its output
    let x: Vec<f32> = (0..n).map(|_| rng.random_range(-12.0f32..12.0)).collect();
    let (xb, yb, dxb) = (g.upload("x", &x).unwrap(), poisoned(n), poisoned(n));
    run(|e| k.sigmoid(g, e, &xb, &yb, n).unwrap());
    let sig = |v: f32| 1.0 / (1.0 + (-(v as f64)).exp());
    let e_sig = rel_error(&g.read::<f32>(&yb, n).unwrap(), &x.iter().map(|&v| sig(v)).collect::<Vec<_>>());
    assert!(e_sig <= BOUND, "sigmoid {e_sig:.2e} (seed {seed})");
    run(|e| k.sigmoid_backward(g, e, &yb, &dyb, &dxb, n).unwrap());
    let want: Vec<f64> = x.iter().zip(&dy).map(|(&a, &b)| b as f64 * sig(a) * (1.0 - sig(a))).collect();
    let e_dsig = rel_error(&g.read::<f32>(&dxb, n).unwrap(), &want);
    assert!(e_dsig <= BOUND, "sigmoid backward {e_dsig:.2e} (seed {seed})");
    // LayerNorm
    let (rows, d, eps) = (29, 67, 1e-5f32);
    let x: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-2.0f32..3.0)).collect();
    let dy: Vec<f32> = (0..rows * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let gamma: Vec<f32> = (0..d).map(|_| rng.random_range(0.5f32..1.5)).collect();
    let (xb, dyb, gb) =
        (g.upload("x", &x).unwrap(), g.upload("dy", &dy).unwrap(), g.upload("gamma", &gamma).unwrap());
    let (dxb, dgb, stats) = (poisoned(rows * d), poisoned(2 * d), poisoned(2 * rows));
    run(|e| k.layer_norm_backward(g, e, &xb, &dyb, &gb, &dxb, &dgb, &stats, rows, d, eps, false).unwrap());
    let (dx, dgam, dbet) = layer_norm_backward_f64(&f64s(&x), &f64s(&dy), &f64s(&gamma), d, eps as f64);
    let got = g.read::<f32>(&dgb, 2 * d).unwrap();
    let e_ln = rel_error(&g.read::<f32>(&dxb, rows * d).unwrap(), &dx)
        .max(rel_error(&got[..d], &dgam))
        .max(rel_error(&got[d..], &dbet));
    assert!(e_ln <= BOUND, "LayerNorm backward {e_ln:.2e} (seed {seed})");
    // the oracle against finite differences of Σ dy ⊙ LayerNorm(x)
    let beta = vec![0.1f64; d];
    let obj = |x: &[f64], gm: &[f64], bt: &[f64]| -> f64 {
        layer_norm_f64(x, gm, bt, d, eps as f64).iter().zip(&dy).map(|(a, &b)| a * b as f64).sum()
    };
    let (x64, g64) = (f64s(&x), f64s(&gamma));
    let h = 1e-6;
    for idx in [0, 3 * d + 5, rows * d - 1] {
        let (mut up, mut down) = (x64.clone(), x64.clone());
        up[idx] += h;
        down[idx] -= h;
        let fd = (obj(&up, &g64, &beta) - obj(&down, &g64, &beta)) / (2.0 * h);
        assert!((fd - dx[idx]).abs() < 1e-6 * (1.0 + fd.abs()), "dx[{idx}]: {fd} vs {}", dx[idx]);
    }
    for c in [0, d - 1] {
        let (mut up, mut down) = (g64.clone(), g64.clone());
        up[c] += h;
        down[c] -= h;
        let fd = (obj(&x64, &up, &beta) - obj(&x64, &down, &beta)) / (2.0 * h);
        assert!((fd - dgam[c]).abs() < 1e-6 * (1.0 + fd.abs()), "dγ[{c}]: {fd} vs {}", dgam[c]);
    }
    println!(
        "GELU backward rel err {e_gelu:.1e}; sigmoid {e_sig:.1e}, its backward {e_dsig:.1e}; LayerNorm backward (dx, dγ, dβ) {e_ln:.1e}"
    );
}

#[test]
fn clipped_adamw_and_the_embedding_gradient_match_the_oracles() {
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let k = Train::new(g).unwrap();
    // two tensors' squared norms into two slots; the step clips by the global norm
    let (n1, n2) = (1000, 333);
    let mut draw = |n: usize, r: f32| -> Vec<f32> { (0..n).map(|_| rng.random_range(-r..r)).collect() };
    let (g1, g2) = (draw(n1, 2.0), draw(n2, 2.0));
    let (p1, m1, v1) =
        (draw(n1, 1.0), draw(n1, 0.1), draw(n1, 0.01).iter().map(|x| x.abs()).collect::<Vec<_>>());
    let norms = poisoned(2);
    let (g1b, g2b) = (g.upload("g1", &g1).unwrap(), g.upload("g2", &g2).unwrap());
    let (p1b, m1b, v1b) =
        (g.upload("p", &p1).unwrap(), g.upload("m", &m1).unwrap(), g.upload("v", &v1).unwrap());
    let o = AdamW { lr: 3e-3, step: 7, max_norm: 5.0, ..AdamW::default() };
    run(|e| {
        k.sum_squares(g, e, &g1b, &norms, n1, 0).unwrap();
        k.sum_squares(g, e, &g2b, &norms, n2, 1).unwrap();
        k.adamw(g, e, &p1b, &g1b, &m1b, &v1b, &norms, 2, n1, &o).unwrap();
    });
    let norm = f64s(&g1).iter().chain(&f64s(&g2)).map(|x| x * x).sum::<f64>().sqrt();
    assert!(norm > 5.0, "the test must clip (norm {norm})");
    let sq = g.read::<f32>(&norms, 2).unwrap();
    let e_norm = rel_error(&[sq[0] + sq[1]], &[norm * norm]);
    let (p, m, v) = adamw_f64(&f64s(&p1), &f64s(&g1), &f64s(&m1), &f64s(&v1), norm, &o);
    let e_adam = rel_error(&g.read::<f32>(&p1b, n1).unwrap(), &p)
        .max(rel_error(&g.read::<f32>(&m1b, n1).unwrap(), &m))
        .max(rel_error(&g.read::<f32>(&v1b, n1).unwrap(), &v));
    assert!(e_norm <= BOUND && e_adam <= BOUND, "norm {e_norm:.2e}, AdamW {e_adam:.2e} (seed {seed})");
    // embedding: 300 tokens over a vocabulary of 37, added to what dE holds (the tied head's part)
    let (tokens, vocab, d) = (300, 37, 19);
    let ids: Vec<u32> = (0..tokens).map(|_| rng.random_range(0..vocab as u32)).collect();
    let dx: Vec<f32> = (0..tokens * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let before: Vec<f32> = (0..vocab * d).map(|i| (i % 7) as f32 * 0.25).collect();
    let by_id = longctx::kernels::train::tokens_by_id(&ids, vocab);
    assert_eq!(by_id.len(), vocab + 1 + tokens);
    let (dxb, idb, deb) =
        (g.upload("dx", &dx).unwrap(), g.upload("by id", &by_id).unwrap(), g.upload("dE", &before).unwrap());
    run(|e| k.embedding_backward(g, e, &dxb, &idb, &deb, tokens, vocab, d).unwrap());
    let want: Vec<f64> =
        embedding_backward_f64(&dx, &ids, vocab, d).iter().zip(&before).map(|(a, &b)| a + b as f64).collect();
    let e_emb = rel_error(&g.read::<f32>(&deb, vocab * d).unwrap(), &want);
    assert!(e_emb <= BOUND, "embedding backward {e_emb:.2e} (seed {seed})");
    // limits are typed errors, not hangs
    let mut enc = g.device.create_command_encoder(&Default::default());
    assert!(k.embedding_backward(g, &mut enc, &dxb, &idb, &deb, 70_000, vocab, d).is_err());
    assert!(k.adamw(g, &mut enc, &p1b, &g1b, &m1b, &v1b, &norms, 2, n1, &AdamW { step: 0, ..o }).is_err());
    println!("squared norm {e_norm:.1e}; AdamW (p, m, v) {e_adam:.1e}; embedding backward {e_emb:.1e}");
}

#[test]
fn the_model_glue_matches_its_definitions() {
    use longctx::kernels::train::HeadDims;
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let k = Train::new(g).unwrap();
    let rand =
        |n: usize, rng: &mut StdRng| -> Vec<f32> { (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect() };
    // embedding gather with and without a position table (T = 5 per sequence)
    let (vocab, d, tokens, seq) = (11, 7, 15, 5);
    let e = rand(vocab * d, &mut rng);
    let table = rand(seq * d, &mut rng);
    let ids: Vec<u32> = (0..tokens).map(|_| rng.random_range(0..vocab as u32)).collect();
    let (eb, tb, ib) =
        (g.upload("E", &e).unwrap(), g.upload("table", &table).unwrap(), g.upload("ids", &ids).unwrap());
    for with_table in [false, true] {
        let xb = poisoned(tokens * d);
        run(|enc| k.embed(g, enc, &eb, with_table.then_some(&tb), &ib, &xb, tokens, d, seq).unwrap());
        let want: Vec<f64> = (0..tokens * d)
            .map(|i| {
                let (t, c) = (i / d, i % d);
                e[ids[t] as usize * d + c] as f64
                    + if with_table { table[(t % seq) * d + c] as f64 } else { 0.0 }
            })
            .collect();
        assert_eq!(rel_error(&g.read::<f32>(&xb, tokens * d).unwrap(), &want), 0.0, "table {with_table}");
    }
    // GELU forward
    let x = rand(301, &mut rng);
    let (xb, yb) = (g.upload("x", &x).unwrap(), poisoned(301));
    run(|enc| k.gelu(g, enc, &xb, &yb, 301).unwrap());
    let want: Vec<f64> = x.iter().map(|&v| gelu_f64(v as f64).0).collect();
    let err = rel_error(&g.read::<f32>(&yb, 301).unwrap(), &want);
    assert!(err <= BOUND, "GELU {err:.2e} (seed {seed})");
    // column sums and a transpose of [13, 9]
    let (rows, cols) = (13, 9);
    let m = rand(rows * cols, &mut rng);
    let (mb, sb, tb2) = (g.upload("m", &m).unwrap(), poisoned(cols), poisoned(rows * cols));
    run(|enc| {
        k.column_sum(g, enc, &mb, &sb, rows, cols).unwrap();
        k.transpose(g, enc, &mb, &tb2, rows, cols).unwrap();
    });
    let sums: Vec<f64> = (0..cols).map(|c| (0..rows).map(|r| m[r * cols + c] as f64).sum()).collect();
    let err = rel_error(&g.read::<f32>(&sb, cols).unwrap(), &sums);
    assert!(err <= BOUND, "column sums {err:.2e}");
    let t: Vec<f64> = (0..rows * cols).map(|i| m[(i % rows) * cols + i / rows] as f64).collect();
    assert_eq!(rel_error(&g.read::<f32>(&tb2, rows * cols).unwrap(), &t), 0.0);
    // QKV split into heads and merged back: B = 2, T = 3, H = 2, D = 5, three parts
    let dims = HeadDims { batch: 2, seq: 3, heads: 2, d: 5, parts: 3 };
    let width = 3 * 2 * 5;
    let qkv = rand(6 * width, &mut rng);
    let qb = g.upload("qkv", &qkv).unwrap();
    let parts: Vec<wgpu::Buffer> = (0..3).map(|_| poisoned(60)).collect();
    let back = poisoned(6 * width);
    run(|enc| {
        for (p, dst) in parts.iter().enumerate() {
            k.permute_heads(g, enc, true, &qb, dst, dims, p).unwrap();
        }
        for (p, src) in parts.iter().enumerate() {
            k.permute_heads(g, enc, false, &back, src, dims, p).unwrap();
        }
    });
    let k_heads = g.read::<f32>(&parts[1], 60).unwrap();
    // K[b = 1, h = 0, t = 2, x = 3] (index ((b·H + h)·T + t)·D + x) is token row b·T + t,
    // column (part·H + h)·D + x
    let (b, h, t, x, part) = (1, 0, 2, 3, 1);
    assert_eq!(k_heads[((b * 2 + h) * 3 + t) * 5 + x], qkv[(b * 3 + t) * width + (part * 2 + h) * 5 + x]);
    assert_eq!(g.read::<f32>(&back, 6 * width).unwrap(), qkv, "merge undoes split");
    assert!(
        k.permute_heads(
            g,
            &mut g.device.create_command_encoder(&Default::default()),
            true,
            &qb,
            &back,
            dims,
            3
        )
        .is_err()
    );
}
