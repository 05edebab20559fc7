//! The CPU oracle: the attention contract computed in f64, row by row, straight from the
//! definition. Every GPU kernel is tested against it; the CLI offers it as `--kernel cpu`.
//!
//! It is deliberately simple (no tiling, no online softmax) so that it is obviously right.
//! Rows are independent, so they run in parallel with rayon.

use rayon::prelude::*;

use crate::error::Result;
use crate::spec::{AttnOutput, AttnSpec};

/// Forward attention in f64. Returns O `[B,H,N,D]` and LSE `[B,H,N]` (as f64).
pub fn attention_f64(
    spec: &AttnSpec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Result<(Vec<f64>, Vec<f64>)> {
    spec.check_inputs(q, k, v)?;
    let s = spec.shape;
    let (d, n, m) = (s.head_dim, s.n, s.m);
    let scale = spec.scale_value() as f64;
    let slopes = spec.slopes();
    let (lo, hi) = spec.band();
    let q_offset = s.q_offset();

    let mut o = vec![0f64; s.q_len()];
    let mut lse = vec![f64::NEG_INFINITY; s.lse_len()];
    o.par_chunks_mut(d)
        .zip(lse.par_iter_mut())
        .enumerate()
        .for_each_init(
            || vec![0f64; m],
            |scores, (row, (o_row, lse_row))| {
                let i = row % n;
                let bh = row / n;
                let (b, h) = (bh / s.heads, bh % s.heads);
                let kvh = h / s.group();
                let q_row = &q[row * d..(row + 1) * d];
                let kv_base = (b * s.kv_heads + kvh) * m * d;
                let slope = slopes.as_ref().map_or(0.0, |sl| sl[h] as f64);
                let pos = q_offset + i as i64;
                let mut max = f64::NEG_INFINITY;
                for (j, sc) in scores.iter_mut().enumerate() {
                    let dist = pos - j as i64;
                    if dist < lo || dist > hi {
                        *sc = f64::NEG_INFINITY;
                        continue;
                    }
                    let k_row = &k[kv_base + j * d..kv_base + (j + 1) * d];
                    let dot: f64 = q_row
                        .iter()
                        .zip(k_row)
                        .map(|(&a, &b)| a as f64 * b as f64)
                        .sum();
                    *sc = scale * dot - slope * dist.unsigned_abs() as f64;
                    max = max.max(*sc);
                }
                if max == f64::NEG_INFINITY {
                    return; // fully masked row: O = 0, LSE = -inf
                }
                let mut sum = 0.0;
                for (j, &sc) in scores.iter().enumerate() {
                    if sc == f64::NEG_INFINITY {
                        continue;
                    }
                    let p = (sc - max).exp();
                    sum += p;
                    let v_row = &v[kv_base + j * d..kv_base + (j + 1) * d];
                    for (acc, &x) in o_row.iter_mut().zip(v_row) {
                        *acc += p * x as f64;
                    }
                }
                o_row.iter_mut().for_each(|x| *x /= sum);
                *lse_row = max + sum.ln();
            },
        );
    Ok((o, lse))
}

/// Forward attention on the CPU, rounded to f32 (the `--kernel cpu` path).
pub fn attention(spec: &AttnSpec, q: &[f32], k: &[f32], v: &[f32]) -> Result<AttnOutput> {
    let (o, lse) = attention_f64(spec, q, k, v)?;
    Ok(AttnOutput {
        o: o.into_iter().map(|x| x as f32).collect(),
        lse: lse.into_iter().map(|x| x as f32).collect(),
    })
}

/// `‖a − b‖₂ / ‖b‖₂` (absolute norm when `b` is zero): the relative error the tests report.
pub fn rel_error(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "rel_error: length mismatch");
    let (mut num, mut den) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let diff = x as f64 - y;
        num += diff * diff;
        den += y * y;
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        (num / den).sqrt()
    }
}
