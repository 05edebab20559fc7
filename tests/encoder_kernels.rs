//! The encoder's small kernels against their f64 oracles at odd sizes: affine LayerNorm,
//! token-embedding gather, mean pooling + L2 normalisation; bad input as typed errors.

use crate::common::{gpu, random, seed};
use longctx::contract::reference::rel_error;
use longctx::kernels::embed::{Embeddings, Pool, gather_f64, pool_normalize_f64};
use longctx::kernels::layer::LayerOp;
use rand::{Rng, SeedableRng, rngs::StdRng};

#[test]
fn affine_layer_norm_matches_the_oracle() {
    let g = gpu();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    for (rows, d, eps) in [(1, 4, 1e-12f32), (37, 384, 1e-12), (70, 100, 1e-5)] {
        let x: Vec<f32> = random(rows * d, &mut rng).iter().map(|v| v * 3.0 + 0.5).collect();
        let (gamma, beta) = (random(d, &mut rng), random(d, &mut rng));
        let op = LayerOp::layer_norm_affine(g, rows, d, eps, &gamma, &beta).unwrap();
        let (src, dst) = (g.upload("x", &x).unwrap(), g.storage("y", (rows * d * 4) as u64).unwrap());
        let mut enc = g.device.create_command_encoder(&Default::default());
        op.encode(g, &mut enc, &src, &dst);
        g.queue.submit([enc.finish()]);
        let got: Vec<f32> = g.read(&dst, rows * d).unwrap();
        let want: Vec<f64> = x
            .chunks(d)
            .flat_map(|r| {
                let mean = r.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
                let inv = 1.0 / (var + eps as f64).sqrt();
                let (gamma, beta) = (&gamma, &beta);
                r.iter()
                    .enumerate()
                    .map(move |(e, &v)| (v as f64 - mean) * inv * gamma[e] as f64 + beta[e] as f64)
            })
            .collect();
        let err = rel_error(&got, &want);
        println!("affine LayerNorm {rows}×{d} eps {eps:e}: rel err {err:.2e}");
        assert!(err < 1e-5, "{err} (seed {seed})");
    }
    assert!(LayerOp::layer_norm_affine(g, 2, 4, 1e-5, &[1.0; 3], &[0.0; 4]).is_err());
}

#[test]
fn gather_and_pooling_match_the_oracles() {
    let g = gpu();
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let (vocab, max_pos, d) = (101, 40, 36);
    let (word, pos, ty) = (random(vocab * d, &mut rng), random(max_pos * d, &mut rng), random(d, &mut rng));
    let emb = Embeddings::new(g, &word, &pos, &ty, d).unwrap();
    // three sentences of lengths 5, 17, 9 padded to 17 rows each
    let lengths = [5u32, 17, 9];
    let l = 17;
    let mut ids = vec![0u32; 3 * l];
    let mut positions = vec![0u32; 3 * l];
    for (s, &len) in lengths.iter().enumerate() {
        for i in 0..l {
            ids[s * l + i] = if i < len as usize { rng.random_range(0..vocab as u32) } else { 0 };
            positions[s * l + i] = i as u32;
        }
    }
    let gather = emb.prepare(g, &ids, &positions).unwrap();
    let x = g.storage("x", (3 * l * d * 4) as u64).unwrap();
    let out = g.storage("out", (3 * d * 4) as u64).unwrap();
    let pool = Pool::new(g, &lengths, l, d).unwrap();
    let mut enc = g.device.create_command_encoder(&Default::default());
    emb.encode(g, &mut enc, &gather, &x);
    pool.encode(g, &mut enc, &x, &out);
    g.queue.submit([enc.finish()]);
    let got_x: Vec<f32> = g.read(&x, 3 * l * d).unwrap();
    let got_out: Vec<f32> = g.read(&out, 3 * d).unwrap();
    let mut worst = (0f64, 0f64);
    for (s, &len) in lengths.iter().enumerate() {
        // positions restart at 0 in every sentence: the oracle sees one sentence at a time
        let rows = &ids[s * l..s * l + len as usize];
        let want = gather_f64(&word, &pos, &ty, rows, d);
        let got = &got_x[s * l * d..(s * l + len as usize) * d];
        worst.0 = worst.0.max(rel_error(got, &want));
        let pooled = pool_normalize_f64(&want, d);
        worst.1 = worst.1.max(rel_error(&got_out[s * d..(s + 1) * d], &pooled));
    }
    println!("gather rel err {:.2e}, pool + normalise rel err {:.2e} (seed {seed})", worst.0, worst.1);
    assert!(worst.0 < 1e-6 && worst.1 < 1e-5, "{worst:?} (seed {seed})");
    // bad input: ids beyond the vocabulary, positions beyond the table, empty or over-long sentences
    let err = emb.prepare(g, &[vocab as u32], &[0]).unwrap_err();
    assert!(
        matches!(err, longctx::Error::OutOfRange { value, max, .. } if value == vocab as u64 && max == vocab as u64 - 1),
        "{err}"
    );
    assert!(err.to_string().contains("vocabulary"), "{err}");
    let err = emb.prepare(g, &[0], &[max_pos as u32]).unwrap_err();
    assert!(matches!(err, longctx::Error::OutOfRange { value, .. } if value == max_pos as u64), "{err}");
    assert!(err.to_string().contains("position"), "{err}");
    assert!(Pool::new(g, &[0, 3], 4, d).is_err());
    assert!(Pool::new(g, &[5], 4, d).is_err());
}
