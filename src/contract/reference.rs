//! The CPU oracle: the attention contract computed in f64, row by row, straight from the
//! definition. Every GPU kernel is tested against it; the CLI offers it as `--kernel cpu`.
//!
//! It is deliberately simple (no tiling, no online softmax) so that it is obviously right.
//! Rows are independent, so they run in parallel with rayon.

use rayon::prelude::*;

use crate::contract::mods::At;
use crate::contract::spec::{AttnOutput, AttnSpec};
use crate::error::Result;

/// Forward attention in f64. Returns O `[B,H,N,D]` and LSE `[B,H,N]` (as f64).
pub fn attention_f64(spec: &AttnSpec, q: &[f32], k: &[f32], v: &[f32]) -> Result<(Vec<f64>, Vec<f64>)> {
    spec.check_inputs(q, k, v)?;
    check_rule(spec)?;
    match encoded(spec, q, k) {
        Some((q, k)) => Ok(forward_all(spec, &q, &k, v)),
        None => Ok(forward_all(spec, q, k, v)),
    }
}

/// Q and K under the spec's positional encoding, in f64 (`None` without one).
pub(crate) fn encoded(spec: &AttnSpec, q: &[f32], k: &[f32]) -> Option<(Vec<f64>, Vec<f64>)> {
    let p = spec.positions?;
    let s = spec.shape;
    Some((
        p.encode_rows(q, s.head_dim, s.n, p.query_position(spec.q_offset(), 0)),
        p.encode_rows(k, s.head_dim, s.m, p.key_position(0)),
    ))
}

fn forward_all<T: Copy + Into<f64> + Sync>(
    spec: &AttnSpec,
    q: &[T],
    k: &[T],
    v: &[f32],
) -> (Vec<f64>, Vec<f64>) {
    let s = spec.shape;
    let mut o = vec![0f64; s.q_len()];
    let mut lse = vec![f64::NEG_INFINITY; s.lse_len()];
    let slopes = spec.slopes();
    o.par_chunks_mut(s.head_dim).zip(lse.par_iter_mut()).enumerate().for_each_init(
        || vec![0f64; s.m],
        |scores, (row, (o_row, lse_row))| {
            let q_row = &q[row * s.head_dim..(row + 1) * s.head_dim];
            *lse_row = row_f64(spec, slopes.as_deref(), q_row, k, v, row, scores, o_row);
        },
    );
    (o, lse)
}

/// The oracle on selected rows only (flat row index `(b·H + h)·N + i`): for spot checks of
/// problems too large to compute whole. Returns each row's O (D values) and LSE.
pub(crate) fn attention_rows_f64(
    spec: &AttnSpec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    rows: &[usize],
) -> Result<Vec<(Vec<f64>, f64)>> {
    spec.check_inputs(q, k, v)?;
    check_rule(spec)?;
    let s = spec.shape;
    if let Some(&r) = rows.iter().find(|&&r| r >= s.lse_len()) {
        return Err(crate::Error::OutOfRange {
            what: "oracle row (of B·H·N)".into(),
            value: r as u64,
            min: 0,
            max: s.lse_len() as u64 - 1,
        });
    }
    let slopes = spec.slopes();
    let d = s.head_dim;
    Ok(match spec.positions {
        // only the selected rows of Q, and every key, are encoded
        Some(p) => {
            let k = p.encode_rows(k, d, s.m, p.key_position(0));
            rows.par_iter()
                .map(|&row| {
                    let mut qr: Vec<f64> = q[row * d..(row + 1) * d].iter().map(|&x| x as f64).collect();
                    p.apply(&mut qr, p.query_position(spec.q_offset(), row % s.n));
                    one_row(spec, slopes.as_deref(), &qr, &k, v, row)
                })
                .collect()
        }
        None => rows
            .par_iter()
            .map(|&row| one_row(spec, slopes.as_deref(), &q[row * d..(row + 1) * d], k, v, row))
            .collect(),
    })
}

/// dQ of selected rows only (flat row index `(b·H + h)·N + i`), from the definition as in
/// [`attention_backward_f64`]: a row's dQ needs only its own scores, so sizes too large for the
/// whole backward can be spot-checked. Calls without a positional encoding or a `score_mod`.
pub(crate) fn attention_dq_rows_f64(
    spec: &AttnSpec,
    (q, k, v): (&[f32], &[f32], &[f32]),
    d_o: &[f32],
    rows: &[usize],
) -> Result<Vec<Vec<f64>>> {
    spec.check_grad(d_o)?;
    if spec.positions.is_some() || spec.mods.as_ref().and_then(|m| m.rule()).is_some() {
        return Err(crate::Error::Invalid(
            "the dQ spot check runs calls without a positional encoding or a score_mod".into(),
        ));
    }
    let forward = attention_rows_f64(spec, q, k, v, rows)?;
    let s = spec.shape;
    let (d, m) = (s.head_dim, s.m);
    let scale = spec.scale_value() as f64;
    let slopes = spec.slopes();
    Ok(rows
        .par_iter()
        .zip(forward)
        .map(|(&row, (o_row, lse))| {
            let mut dq = vec![0f64; d];
            if lse == f64::NEG_INFINITY {
                return dq;
            }
            let mut scores = vec![0f64; m];
            let mut scratch = vec![0f64; d];
            row_f64(
                spec,
                slopes.as_deref(),
                &q[row * d..(row + 1) * d],
                k,
                v,
                row,
                &mut scores,
                &mut scratch,
            );
            let kv_base = ((row / s.n / s.heads) * s.kv_heads + (row / s.n % s.heads) / s.group()) * m * d;
            let dor = &d_o[row * d..(row + 1) * d];
            let delta: f64 = dor.iter().zip(&o_row).map(|(&a, &b)| a as f64 * b).sum();
            for (j, &sc) in scores.iter().enumerate() {
                if sc == f64::NEG_INFINITY {
                    continue;
                }
                let (kj, vj) = (&k[kv_base + j * d..][..d], &v[kv_base + j * d..][..d]);
                let dp: f64 = dor.iter().zip(vj).map(|(&a, &b)| a as f64 * b as f64).sum();
                let ds = (sc - lse).exp() * (dp - delta);
                for x in 0..d {
                    dq[x] += scale * ds * kj[x] as f64;
                }
            }
            dq
        })
        .collect())
}

/// One row's O and LSE (fresh scratch).
fn one_row<T: Copy + Into<f64>>(
    spec: &AttnSpec,
    slopes: Option<&[f32]>,
    q_row: &[T],
    k: &[T],
    v: &[f32],
    row: usize,
) -> (Vec<f64>, f64) {
    let mut scores = vec![0f64; spec.shape.m];
    let mut o_row = vec![0f64; spec.shape.head_dim];
    let lse = row_f64(spec, slopes, q_row, k, v, row, &mut scores, &mut o_row);
    (o_row, lse)
}

/// One head's attention probabilities in f64, `P[i][j] = exp(score − LSE)`, for query rows
/// `rows` and keys `cols` of (batch `b`, head `h`), row-major: what the heatmap pools. 0 where
/// masked and on fully masked rows. (It allocates a zero V of the spec's size for the row
/// evaluation: meant for the small problems the heatmap is checked on.)
pub fn probabilities_f64(
    spec: &AttnSpec,
    q: &[f32],
    k: &[f32],
    (b, h): (usize, usize),
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Result<Vec<f64>> {
    let s = spec.shape;
    let v = vec![0f32; s.kv_len()];
    spec.check_inputs(q, k, &v)?;
    check_rule(spec)?;
    if b >= s.batch || h >= s.heads || rows.end > s.n || cols.end > s.m {
        return Err(crate::Error::Invalid(format!(
            "probabilities of (b, h) = ({b}, {h}), rows {rows:?}, keys {cols:?} outside B={} H={} N={} M={}",
            s.batch, s.heads, s.n, s.m
        )));
    }
    Ok(match encoded(spec, q, k) {
        Some((q, k)) => probabilities_rows(spec, &q, &k, &v, (b, h), rows, cols),
        None => probabilities_rows(spec, q, k, &v, (b, h), rows, cols),
    })
}

fn probabilities_rows<T: Copy + Into<f64>>(
    spec: &AttnSpec,
    q: &[T],
    k: &[T],
    v: &[f32],
    (b, h): (usize, usize),
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) -> Vec<f64> {
    let s = spec.shape;
    let slopes = spec.slopes();
    let (mut scores, mut o_row) = (vec![0f64; s.m], vec![0f64; s.head_dim]);
    let mut out = Vec::with_capacity(rows.len() * cols.len());
    for i in rows {
        let row = (b * s.heads + h) * s.n + i;
        let q_row = &q[row * s.head_dim..][..s.head_dim];
        let lse = row_f64(spec, slopes.as_deref(), q_row, k, v, row, &mut scores, &mut o_row);
        out.extend(cols.clone().map(|j| {
            if lse.is_finite() && scores[j] > f64::NEG_INFINITY { (scores[j] - lse).exp() } else { 0.0 }
        }));
    }
    out
}

/// The oracle evaluates mods through their Rust rule: WGSL alone it cannot run.
pub(crate) fn check_rule(spec: &AttnSpec) -> Result<()> {
    match &spec.mods {
        Some(m) if m.rule().is_none() => Err(crate::Error::Invalid(format!(
            "the oracle needs the Rust rule of the mods `{}` (Mods::with_rule); it cannot run WGSL",
            m.name()
        ))),
        _ => Ok(()),
    }
}

/// One query row from the definition; writes O into `o_row` and returns the LSE.
#[allow(clippy::too_many_arguments)]
fn row_f64<T: Copy + Into<f64>>(
    spec: &AttnSpec,
    slopes: Option<&[f32]>,
    q_row: &[T],
    k: &[T],
    v: &[f32],
    row: usize,
    scores: &mut [f64],
    o_row: &mut [f64],
) -> f64 {
    let s = spec.shape;
    let (d, n, m) = (s.head_dim, s.n, s.m);
    let scale = spec.scale_value() as f64;
    let (lo, hi) = spec.band();
    let i = row % n;
    let bh = row / n;
    let (b, h) = (bh / s.heads, bh % s.heads);
    let kvh = h / s.group();
    let kv_base = (b * s.kv_heads + kvh) * m * d;
    let slope = slopes.map_or(0.0, |sl| sl[h] as f64);
    let pos = spec.position(i);
    o_row.iter_mut().for_each(|x| *x = 0.0);
    let mut max = f64::NEG_INFINITY;
    let rule = spec.mods.as_ref().and_then(|md| md.rule());
    for (j, sc) in scores.iter_mut().enumerate() {
        let dist = pos - j as i64;
        let at = At { b, h, q: i, kv: j, n, m };
        if dist < lo
            || dist > hi
            || spec.mask.as_ref().is_some_and(|mk| !mk.visible(h, i, j, spec.q_offset()))
            || rule.is_some_and(|r| !r.mask(at))
        {
            *sc = f64::NEG_INFINITY;
            continue;
        }
        let k_row = &k[kv_base + j * d..kv_base + (j + 1) * d];
        let dot: f64 = q_row.iter().zip(k_row).map(|(&a, &b)| a.into() * b.into()).sum();
        *sc = scale * dot - slope * dist.unsigned_abs() as f64;
        if let Some(r) = rule {
            *sc = r.score(*sc, at);
        }
        max = max.max(*sc);
    }
    if max == f64::NEG_INFINITY {
        return f64::NEG_INFINITY; // fully masked row: O = 0, LSE = -inf
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
    max + sum.ln()
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
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

/// Gradients of attention in f64: given dO `[B,H,N,D]`, returns (dQ, dK, dV) shaped like Q,
/// K, V. Recomputes P row by row from the definition; GQA sums dK and dV over the query
/// heads of a group; ALiBi adds no gradient to Q, K, V; fully masked rows get zero gradient.
pub fn attention_backward_f64(
    spec: &AttnSpec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
) -> Result<(Vec<f64>, Vec<f64>, Vec<f64>)> {
    check_rule(spec)?;
    spec.check_inputs(q, k, v)?;
    spec.check_grad(d_o)?;
    let Some((qe, ke)) = encoded(spec, q, k) else { return Ok(backward_all(spec, q, k, v, d_o)) };
    // through the encoding: the gradients of the encoded Q and K, rotated back (RoPE)
    let (mut dq, mut dk, dv) = backward_all(spec, &qe, &ke, v, d_o);
    let (p, s) = (spec.positions.expect("encoded"), spec.shape);
    for (r, row) in dq.chunks_exact_mut(s.head_dim).enumerate() {
        p.apply_grad(row, p.query_position(spec.q_offset(), r % s.n));
    }
    for (r, row) in dk.chunks_exact_mut(s.head_dim).enumerate() {
        p.apply_grad(row, p.key_position(r % s.m));
    }
    Ok((dq, dk, dv))
}

/// The backward on (possibly encoded) Q and K.
fn backward_all<T: Copy + Into<f64> + Sync>(
    spec: &AttnSpec,
    q: &[T],
    k: &[T],
    v: &[f32],
    d_o: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let s = spec.shape;
    let (d, n, m, g) = (s.head_dim, s.n, s.m, s.group());
    let scale = spec.scale_value() as f64;
    let slopes = spec.slopes();
    let mut dq = vec![0f64; s.q_len()];
    let mut dk = vec![0f64; s.kv_len()];
    let mut dv = vec![0f64; s.kv_len()];
    // one task per (batch, kv head): it owns that head's dK, dV and its group's dQ rows
    let per_kv = m * d;
    let per_group_q = g * n * d;
    let rule = spec.mods.as_ref().and_then(|md| md.rule());
    dk.par_chunks_mut(per_kv)
        .zip(dv.par_chunks_mut(per_kv))
        .zip(dq.par_chunks_mut(per_group_q))
        .enumerate()
        .for_each(|(bk, ((dk_h, dv_h), dq_g))| {
            let (b, kvh) = (bk / s.kv_heads, bk % s.kv_heads);
            let kv_base = (b * s.kv_heads + kvh) * m * d;
            let mut scores = vec![0f64; m];
            let mut o_row = vec![0f64; d];
            for gi in 0..g {
                let h = kvh * g + gi;
                for i in 0..n {
                    let row = (b * s.heads + h) * n + i;
                    let qr = &q[row * d..(row + 1) * d];
                    let lse = row_f64(spec, slopes.as_deref(), qr, k, v, row, &mut scores, &mut o_row);
                    if lse == f64::NEG_INFINITY {
                        continue;
                    }
                    let dor = &d_o[row * d..(row + 1) * d];
                    let delta: f64 = dor.iter().zip(&o_row).map(|(&a, &b)| a as f64 * b).sum();
                    let dq_row = &mut dq_g[(gi * n + i) * d..(gi * n + i + 1) * d];
                    for (j, &sc) in scores.iter().enumerate() {
                        if sc == f64::NEG_INFINITY {
                            continue;
                        }
                        let p = (sc - lse).exp();
                        let vj = &v[kv_base + j * d..kv_base + (j + 1) * d];
                        let kj = &k[kv_base + j * d..kv_base + (j + 1) * d];
                        let dp: f64 = dor.iter().zip(vj).map(|(&a, &b)| a as f64 * b as f64).sum();
                        // with a score_mod, dS also carries d score_mod / d score at the
                        // score before the mod
                        let grad = rule.map_or(1.0, |r| {
                            let dot: f64 = qr.iter().zip(kj).map(|(&a, &b)| a.into() * b.into()).sum();
                            let slope = slopes.as_deref().map_or(0.0, |sl| sl[h] as f64);
                            let before =
                                scale * dot - slope * (spec.position(i) - j as i64).unsigned_abs() as f64;
                            r.score_grad(before, At { b, h, q: i, kv: j, n, m })
                        });
                        let ds = p * (dp - delta) * grad;
                        for x in 0..d {
                            dv_h[j * d + x] += p * dor[x] as f64;
                            dq_row[x] += scale * ds * kj[x].into();
                            dk_h[j * d + x] += scale * ds * qr[x].into();
                        }
                    }
                }
            }
        });
    (dq, dk, dv)
}
