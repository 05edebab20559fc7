//! DSA-style token selection (DeepSeek-V3.2's sparse attention): a lightning indexer scores
//! every earlier key for each query and the query attends to its `k` best keys. The rule is
//! `docs/DESIGN.md` §1 (learned sparse attention: DSA); its f64 oracle is [`dsa_select_f64`]
//! (the choice), [`Dsa::spec`] (the call it defines, for the attention oracle) and
//! [`dsa_alignment_f64`] (the warm-up's KL loss and its gradient).
//!
//! With the indexer's inputs qI `[B, N, HI, DI]`, kI `[B, M, DI]` and weights w `[B, N, HI]`,
//! query row `i` at position `p = q_offset + i` scores key `s ≤ p` by
//! `I(p, s) = Σ_j w[p, j] · ReLU(qI[p, j] · kI[s])` (no scale); keys after `p` are never
//! chosen. The row's list holds its `k` highest-scoring keys (ties: the lower key first; fewer
//! than `k` visible keys: all of them) in ascending key order, [`NONE`] after; one choice per
//! (sequence, row), shared by every query head (the indexer is per token). The attention is
//! then causal over the listed keys. No gradient flows from the attention into the indexer
//! (the paper's sparse stage); the indexer learns from the alignment loss: per row, the KL
//! divergence `KL(p_t ‖ softmax_s I(p, s))` over the visible keys, where `p_t` is the main
//! attention's probabilities summed over the query heads and L1-normalised (the paper's dense
//! warm-up).

use crate::contract::AttnShape;
use crate::contract::reference::probabilities_f64;
use crate::contract::selection::{NONE, SelectionDiff, diff_choices, listed_spec};
use crate::contract::spec::AttnSpec;
use crate::error::{Error, Result};

/// DSA's parameters and the indexer's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Dsa {
    /// Keys each query reads, k.
    pub topk: usize,
    /// The indexer's heads, HI.
    pub index_heads: usize,
    /// The indexer's head dim, DI.
    pub index_dim: usize,
}

/// The indexer's inputs: qI `[B, N, HI, DI]`, kI `[B, M, DI]`, w `[B, N, HI]`.
#[derive(Clone, Copy, Debug)]
pub struct Indexer<'a> {
    /// Index queries.
    pub q: &'a [f32],
    /// Index keys.
    pub k: &'a [f32],
    /// Per-head weights.
    pub w: &'a [f32],
}

/// The indexer's default shape where a call does not give it (`longctx bench`): 4 heads of
/// dim 16 — 64 multiply-adds per (query, key), an eighth of H 4 · D 64 attention's QKᵀ and
/// P·V, about DeepSeek-V3.2's ratio (64 heads × 128 in fp8 against 128 MLA heads of 576/512).
pub const DEFAULT_INDEX: (usize, usize) = (4, 16);

impl Dsa {
    /// Parses `topk=K[,heads=HI,dim=DI]` (the indexer's shape defaults to [`DEFAULT_INDEX`]).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: String| Error::Invalid(format!("DSA `{text}`: {why}"));
        let (mut topk, mut heads, mut dim) = (None, None, None);
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(bad(format!("`{part}`: expected topk=K, heads=HI or dim=DI")));
            };
            let v: usize = value.trim().parse().map_err(|_| bad(format!("`{part}`: not a whole number")))?;
            let slot = match key.trim() {
                "topk" => &mut topk,
                "heads" => &mut heads,
                "dim" => &mut dim,
                other => {
                    return Err(bad(format!("unknown part `{other}`; expected topk=K[,heads=HI,dim=DI]")));
                }
            };
            if slot.replace(v).is_some() {
                return Err(bad(format!("{key} is given twice")));
            }
        }
        let Some(topk) = topk else { return Err(bad("needs topk=K".into())) };
        let dsa = Self {
            topk,
            index_heads: heads.unwrap_or(DEFAULT_INDEX.0),
            index_dim: dim.unwrap_or(DEFAULT_INDEX.1),
        };
        dsa.check_params()?;
        Ok(dsa)
    }

    /// The parameters as `topk=K,heads=HI,dim=DI`.
    pub fn describe(&self) -> String {
        format!("topk={},heads={},dim={}", self.topk, self.index_heads, self.index_dim)
    }

    pub(crate) fn check_params(&self) -> Result<()> {
        if self.topk == 0 || self.index_heads == 0 || self.index_dim == 0 {
            return Err(Error::Invalid(format!(
                "DSA: topk ({}), indexer heads ({}) and indexer head dim ({}) must be at least 1",
                self.topk, self.index_heads, self.index_dim
            )));
        }
        Ok(())
    }

    /// Checks the parameters and the indexer's inputs against `shape`: k ≥ 1, HI ≥ 1, DI ≥ 1,
    /// lengths, finite values.
    pub fn check(&self, shape: &AttnShape, ix: &Indexer) -> Result<()> {
        self.check_params()?;
        let (b, n, m) = (shape.batch, shape.n, shape.m);
        let (hi, di) = (self.index_heads, self.index_dim);
        for (what, got, dims) in [
            ("DSA index queries", ix.q.len(), vec![b, n, hi, di]),
            ("DSA index keys", ix.k.len(), vec![b, m, di]),
            ("DSA index weights", ix.w.len(), vec![b, n, hi]),
        ] {
            let expected: usize = dims.iter().product();
            if got != expected {
                return Err(Error::Length { what: what.into(), got, shape: dims, expected });
            }
        }
        if [ix.q, ix.k, ix.w].iter().any(|x| x.iter().any(|v| !v.is_finite())) {
            return Err(Error::Invalid("DSA's indexer inputs hold a value that is not finite".into()));
        }
        Ok(())
    }

    /// The index scores of row `i` of sequence `b` over the keys `0 ..= p` (empty where p < 0).
    pub fn scores_f64(&self, spec: &AttnSpec, ix: &Indexer, b: usize, i: usize) -> Vec<f64> {
        let s = spec.shape;
        let (hi, di) = (self.index_heads, self.index_dim);
        let p = spec.position(i);
        if p < 0 {
            return Vec::new();
        }
        let keys = (p as usize + 1).min(s.m);
        let row = b * s.n + i;
        (0..keys)
            .map(|j| {
                let kj = &ix.k[(b * s.m + j) * di..][..di];
                (0..hi)
                    .map(|h| {
                        let qh = &ix.q[(row * hi + h) * di..][..di];
                        let dot: f64 = qh.iter().zip(kj).map(|(&a, &c)| a as f64 * c as f64).sum();
                        ix.w[row * hi + h] as f64 * dot.max(0.0)
                    })
                    .sum()
            })
            .collect()
    }

    /// The call that attends through `lists` (`[B, N, k]`, one per sequence and row): `spec`
    /// made causal, its mask ANDed with "key j is listed for row i" (every head alike). A batch
    /// folds into the heads (Q `[B, H, N, D]` is `[1, B·H, N, D]` in memory, query head
    /// b·H + h reads kv head b·Hkv + h/G, the same group rule), each sequence's lists repeated
    /// for its heads; the folded call reads and writes the same buffers in the same layout.
    pub fn spec(&self, spec: &AttnSpec, lists: &[u32]) -> Result<AttnSpec> {
        let s = spec.shape;
        let label = ("DSA", format!("dsa(topk={})", self.topk));
        if s.batch == 1 {
            return listed_spec(spec, label, (1, 1, self.topk), lists);
        }
        if spec.mask.is_some() || spec.mods.is_some() || spec.slopes().is_some() {
            return Err(Error::Invalid(format!(
                "DSA over a batch of {} with a mask, mods or ALiBi: run one sequence per call",
                s.batch
            )));
        }
        let row_len = s.n * self.topk;
        if lists.len() != s.batch * row_len {
            return Err(Error::Length {
                what: "DSA index lists".into(),
                got: lists.len(),
                shape: vec![s.batch, s.n, self.topk],
                expected: s.batch * row_len,
            });
        }
        let heads = s.batch * s.heads;
        let mut folded = spec.clone();
        folded.shape = AttnShape { batch: 1, heads, kv_heads: s.batch * s.kv_heads, ..s };
        folded.validate()?;
        let per_head: Vec<u32> = lists.chunks_exact(row_len).flat_map(|seq| seq.repeat(s.heads)).collect();
        listed_spec(&folded, label, (1, heads, self.topk), &per_head)
    }
}

/// DSA's choice in f64: `[B, N, k]` key lists (the `k` best index scores, ties to the lower
/// key, listed in ascending key order; [`NONE`] where fewer keys are visible). Scores compare
/// as numbers (−0 ties +0).
pub fn dsa_select_f64(spec: &AttnSpec, dsa: &Dsa, ix: &Indexer) -> Result<Vec<u32>> {
    let s = spec.shape;
    dsa.check(&s, ix)?;
    let mut out = Vec::with_capacity(s.batch * s.n * dsa.topk);
    for b in 0..s.batch {
        for i in 0..s.n {
            out.extend(select_row_f64(spec, dsa, ix, b, i).0);
        }
    }
    Ok(out)
}

/// Rows where `other`'s lists (`[B, N, k]`, e.g. the GPU's) choose different keys from the
/// oracle's `lists`, and whether every difference is a near-tie: the keys in one list and not
/// the other all score within `tol` (relative to the row's largest score) of the oracle's
/// weakest chosen key. Rows are numbered `b·N + i`.
pub fn compare_dsa_selection(
    spec: &AttnSpec,
    dsa: &Dsa,
    ix: &Indexer,
    lists: &[u32],
    other: &[u32],
    tol: f64,
) -> (Vec<SelectionDiff>, bool) {
    let n = spec.shape.n;
    diff_choices(n, dsa.topk, lists, other, tol, |row| {
        dsa.scores_f64(spec, ix, row / n, row % n).into_iter().map(Some).collect()
    })
}

/// The choice of row `i` of sequence `b` in f64 (its list, `k` entries, as
/// [`dsa_select_f64`] writes it) and its scores.
fn select_row_f64(spec: &AttnSpec, dsa: &Dsa, ix: &Indexer, b: usize, i: usize) -> (Vec<u32>, Vec<f64>) {
    let scores = dsa.scores_f64(spec, ix, b, i);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // descending score, ties to the lower key (a stable sort keeps index order); the scores
    // are finite
    order.sort_by(|&x, &y| scores[y].partial_cmp(&scores[x]).expect("finite index scores"));
    order.truncate(dsa.topk);
    order.sort_unstable();
    let mut list: Vec<u32> = order.into_iter().map(|j| j as u32).collect();
    list.resize(dsa.topk, NONE);
    (list, scores)
}

/// Sampled rows of DSA attention in f64 on `lists` (`[B, N, k]`, e.g. the GPU's), for
/// benchmarks at sizes where the per-row token grid would not fit: `rows` index the output's
/// rows (`(b·H + h)·N + i`); each row's softmax runs over its listed keys directly. Also the
/// rows' choice against the oracle's: (outputs `[rows, D]`, rows whose choice differs, whether
/// every difference is a near-tie within `tol`).
pub fn dsa_rows_f64(
    spec: &AttnSpec,
    dsa: &Dsa,
    ix: &Indexer,
    (q, k, v): (&[f32], &[f32], &[f32]),
    lists: &[u32],
    rows: &[usize],
    tol: f64,
) -> Result<(Vec<f64>, usize, bool)> {
    let s = spec.shape;
    spec.check_inputs(q, k, v)?;
    dsa.check(&s, ix)?;
    let (d, scale) = (s.head_dim, spec.scale_value() as f64);
    let (mut out, mut differ, mut all_ties) = (Vec::with_capacity(rows.len() * d), 0, true);
    for &row in rows {
        let (hf, i) = (row / s.n, row % s.n);
        let (b, h) = (hf / s.heads, hf % s.heads);
        let kvh = b * s.kv_heads + h / s.group();
        let list = &lists[(b * s.n + i) * dsa.topk..][..dsa.topk];
        let (want, scores) = select_row_f64(spec, dsa, ix, b, i);
        let (diffs, ties) =
            diff_choices(1, dsa.topk, &want, list, tol, |_| scores.iter().copied().map(Some).collect());
        differ += diffs.len();
        all_ties &= ties;
        let qi = &q[row * d..][..d];
        let keys: Vec<usize> = list.iter().take_while(|&&j| j != NONE).map(|&j| j as usize).collect();
        let logits: Vec<f64> = keys
            .iter()
            .map(|&j| {
                let kj = &k[(kvh * s.m + j) * d..][..d];
                scale * qi.iter().zip(kj).map(|(&a, &c)| a as f64 * c as f64).sum::<f64>()
            })
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = logits.iter().map(|x| (x - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let mut o = vec![0f64; d];
        for (&j, w) in keys.iter().zip(&weights) {
            let vj = &v[(kvh * s.m + j) * d..][..d];
            o.iter_mut().zip(vj).for_each(|(acc, &x)| *acc += w / total * x as f64);
        }
        out.extend(o);
    }
    Ok((out, differ, all_ties))
}

/// dQ of sampled rows of DSA attention in f64 on `lists` (as [`dsa_rows_f64`]; the benchmarks'
/// check of the token-list backward): per row `dQ = scale · Σ_j P_j (dO·v_j − Δ) k_j` over its
/// listed keys, `P` the softmax over them and `Δ = Σ_j P_j dO·v_j` (= dO·O). Returns `[rows, D]`.
pub fn dsa_dq_rows_f64(
    spec: &AttnSpec,
    dsa: &Dsa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    d_o: &[f32],
    lists: &[u32],
    rows: &[usize],
) -> Result<Vec<f64>> {
    let s = spec.shape;
    spec.check_inputs(q, k, v)?;
    if d_o.len() != q.len() || lists.len() != s.batch * s.n * dsa.topk {
        return Err(Error::Invalid(format!(
            "DSA dQ rows: dO holds {} floats (Q {}), lists {} (want {})",
            d_o.len(),
            q.len(),
            lists.len(),
            s.batch * s.n * dsa.topk
        )));
    }
    let (d, scale) = (s.head_dim, spec.scale_value() as f64);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
    let mut out = Vec::with_capacity(rows.len() * d);
    for &row in rows {
        let (hf, i) = (row / s.n, row % s.n);
        let (b, h) = (hf / s.heads, hf % s.heads);
        let kvh = b * s.kv_heads + h / s.group();
        let (qi, doi) = (&q[row * d..][..d], &d_o[row * d..][..d]);
        let listed: Vec<usize> = lists[(b * s.n + i) * dsa.topk..][..dsa.topk]
            .iter()
            .take_while(|&&j| j != NONE)
            .map(|&j| (kvh * s.m + j as usize) * d)
            .collect();
        let keys: Vec<&[f32]> = listed.iter().map(|&at| &k[at..][..d]).collect();
        let values: Vec<&[f32]> = listed.iter().map(|&at| &v[at..][..d]).collect();
        let logits: Vec<f64> = keys.iter().map(|kj| scale * dot(qi, kj)).collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let weights: Vec<f64> = logits.iter().map(|x| (x - max).exp()).collect();
        let total: f64 = weights.iter().sum();
        let dp: Vec<f64> = values.iter().map(|vj| dot(doi, vj)).collect();
        let delta: f64 = weights.iter().zip(&dp).map(|(w, p)| w / total * p).sum();
        let mut dq = vec![0f64; d];
        for ((w, p), kj) in weights.iter().zip(&dp).zip(&keys) {
            let ds = w / total * (p - delta) * scale;
            dq.iter_mut().zip(kj.iter()).for_each(|(acc, &x)| *acc += ds * x as f64);
        }
        out.extend(dq);
    }
    Ok(out)
}

/// The indexer's alignment loss and its gradient in f64 (one sequence): per row at a
/// position ≥ 0, `KL(p_t ‖ softmax(I))` over the keys `0 ..= p`, `p_t` the dense causal
/// attention's probabilities of `spec` (Q, K) summed over the query heads and L1-normalised;
/// the loss is summed over rows (the paper's warm-up stage).
pub fn dsa_alignment_f64(
    spec: &AttnSpec,
    dsa: &Dsa,
    qk: (&[f32], &[f32]),
    ix: &Indexer,
) -> Result<Alignment> {
    alignment_f64(spec, dsa, qk, ix, None)
}

/// The sparse stage's alignment in f64 (one sequence): as [`dsa_alignment_f64`], but per row
/// over its listed keys `S` only (`lists` `[N, k]`, e.g. the GPU's): `KL(p_S ‖ softmax_S(I))`,
/// `p_S` each query head's attention over `S` (the sparse attention's probabilities) averaged
/// over the heads.
pub fn dsa_sparse_alignment_f64(
    spec: &AttnSpec,
    dsa: &Dsa,
    qk: (&[f32], &[f32]),
    ix: &Indexer,
    lists: &[u32],
) -> Result<Alignment> {
    if lists.len() != spec.shape.n * dsa.topk {
        return Err(Error::Invalid(format!(
            "DSA's sparse alignment: {} list entries, want {}",
            lists.len(),
            spec.shape.n * dsa.topk
        )));
    }
    alignment_f64(spec, dsa, qk, ix, Some(lists))
}

/// [`dsa_alignment_f64`] over every visible key, or over each row's listed keys.
fn alignment_f64(
    spec: &AttnSpec,
    dsa: &Dsa,
    (q, k): (&[f32], &[f32]),
    ix: &Indexer,
    lists: Option<&[u32]>,
) -> Result<Alignment> {
    let s = spec.shape;
    dsa.check(&s, ix)?;
    if s.batch != 1 {
        return Err(Error::Invalid("DSA's alignment loss: one sequence per call".into()));
    }
    let causal = spec.clone().causal(true);
    let (hi, di) = (dsa.index_heads, dsa.index_dim);
    let (mut dq, mut dk, mut dw) = (vec![0f64; ix.q.len()], vec![0f64; ix.k.len()], vec![0f64; ix.w.len()]);
    let mut loss = 0.0;
    // the main attention's probabilities, per head, `[H, N, M]`
    let probs: Vec<Vec<f64>> = (0..s.heads)
        .map(|h| probabilities_f64(&causal, q, k, (0, h), 0..s.n, 0..s.m))
        .collect::<Result<_>>()?;
    for i in 0..s.n {
        let scores = dsa.scores_f64(spec, ix, 0, i);
        if scores.is_empty() {
            continue;
        }
        let keys: Vec<usize> = match lists {
            None => (0..scores.len()).collect(),
            Some(l) => l[i * dsa.topk..][..dsa.topk]
                .iter()
                .take_while(|&&j| j != NONE)
                .map(|&j| j as usize)
                .filter(|&j| j < scores.len())
                .collect(),
        };
        // each head's probabilities renormalised over the keys, averaged over the heads
        let mut target = vec![0f64; keys.len()];
        for p in &probs {
            let total: f64 = keys.iter().map(|&j| p[i * s.m + j]).sum();
            if total > 0.0 {
                target
                    .iter_mut()
                    .zip(&keys)
                    .for_each(|(t, &j)| *t += p[i * s.m + j] / total / s.heads as f64);
            }
        }
        let max = keys.iter().map(|&j| scores[j]).fold(f64::NEG_INFINITY, f64::max);
        let lse = max + keys.iter().map(|&j| (scores[j] - max).exp()).sum::<f64>().ln();
        for (&j, &t) in keys.iter().zip(&target) {
            let p_i = (scores[j] - lse).exp();
            if t > 0.0 {
                loss += t * (t.ln() - (scores[j] - lse));
            }
            // d loss / d I(p, j) = softmax(I) − p_t
            let g = p_i - t;
            let kj = &ix.k[j * di..][..di];
            for h in 0..hi {
                let at = i * hi + h;
                let qh = &ix.q[at * di..][..di];
                let dot: f64 = qh.iter().zip(kj).map(|(&a, &c)| a as f64 * c as f64).sum();
                if dot <= 0.0 {
                    continue;
                }
                dw[at] += g * dot;
                let wg = g * ix.w[at] as f64;
                for x in 0..di {
                    dq[at * di + x] += wg * kj[x] as f64;
                    dk[j * di + x] += wg * qh[x] as f64;
                }
            }
        }
    }
    Ok(Alignment { loss, dq, dk, dw })
}

/// The indexer's alignment loss and its gradient (shapes as the indexer's inputs): f64 from
/// the oracle, f32 from the GPU.
#[derive(Clone, Debug)]
pub struct Alignment<T = f64> {
    /// Σ over rows of KL(p_t ‖ softmax(I)).
    pub loss: f64,
    /// d loss / d qI.
    pub dq: Vec<T>,
    /// d loss / d kI.
    pub dk: Vec<T>,
    /// d loss / d w.
    pub dw: Vec<T>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(len: usize, seed: u64) -> Vec<f32> {
        crate::contract::inputs::seeded(len, seed)
    }

    /// One query at position 3 over 4 keys, one indexer head, DI = 1: scores w·ReLU(q·k).
    #[test]
    fn selection_by_hand() {
        let spec = AttnSpec::new(AttnShape::mha(1, 1, 1, 4, 1));
        let dsa = Dsa { topk: 2, index_heads: 1, index_dim: 1 };
        let ix = Indexer { q: &[2.0], k: &[1.0, -3.0, 3.0, 1.0], w: &[0.5] };
        // scores 1, 0 (ReLU), 3, 1: the best two are keys 2 and 0 (tie with 3: lower first)
        assert_eq!(dsa_select_f64(&spec, &dsa, &ix).unwrap(), vec![0, 2]);
        // two rows: row 0 at position 2 sees keys 0..=2 only
        let spec = AttnSpec::new(AttnShape::mha(1, 1, 2, 4, 1));
        let dsa = Dsa { topk: 4, ..dsa };
        let ix = Indexer { q: &[2.0, 2.0], k: &[1.0, -3.0, 3.0, 1.0], w: &[0.5, 0.5] };
        assert_eq!(dsa_select_f64(&spec, &dsa, &ix).unwrap(), vec![0, 1, 2, NONE, 0, 1, 2, 3]);
        let chosen = Dsa { topk: 2, ..dsa }.spec(&spec, &[2, 0, 3, 1]).unwrap();
        let vis = |i: usize| (0..4).filter(|&j| chosen.visible(0, i, j)).collect::<Vec<_>>();
        assert_eq!((vis(0), vis(1)), (vec![0, 2], vec![1, 3]));
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let spec = AttnSpec::new(AttnShape::mha(1, 1, 2, 4, 1));
        let dsa = Dsa { topk: 2, index_heads: 1, index_dim: 1 };
        let k = [1.0, 2.0, 3.0, 4.0];
        assert!(dsa_select_f64(&spec, &dsa, &Indexer { q: &[1.0], k: &k, w: &[1.0, 1.0] }).is_err());
        assert!(
            dsa_select_f64(&spec, &dsa, &Indexer { q: &[1.0, f32::NAN], k: &k, w: &[1.0, 1.0] }).is_err()
        );
        assert!(
            dsa_select_f64(&spec, &Dsa { topk: 0, ..dsa }, &Indexer { q: &[1.0; 2], k: &k, w: &[1.0; 2] })
                .is_err()
        );
    }

    /// The alignment loss's gradient against central differences of the loss itself.
    #[test]
    fn alignment_gradient_matches_finite_differences() {
        let spec = AttnSpec::new(AttnShape::mha(1, 2, 5, 7, 4));
        let dsa = Dsa { topk: 3, index_heads: 2, index_dim: 3 };
        let (q, k) = (draw(2 * 5 * 4, 1), draw(2 * 7 * 4, 2));
        let (qi, ki, w) = (draw(5 * 2 * 3, 3), draw(7 * 3, 4), draw(5 * 2, 5));
        let ix = Indexer { q: &qi, k: &ki, w: &w };
        let Alignment { loss, dq, dk, dw } = dsa_alignment_f64(&spec, &dsa, (&q, &k), &ix).unwrap();
        assert!(loss > 0.0);
        let h = 1e-3f32;
        let at = |qi: &[f32], ki: &[f32], w: &[f32]| {
            dsa_alignment_f64(&spec, &dsa, (&q, &k), &Indexer { q: qi, k: ki, w }).unwrap().loss
        };
        let close = |name: &str, analytic: f64, plus: f64, minus: f64| {
            let numeric = (plus - minus) / (2.0 * h as f64);
            assert!(
                (analytic - numeric).abs() <= 1e-3 * (1.0 + numeric.abs()),
                "{name}: {analytic} vs {numeric}"
            );
        };
        for t in [0, 7, 20] {
            let (mut up, mut down) = (qi.clone(), qi.clone());
            (up[t], down[t]) = (up[t] + h, down[t] - h);
            close(&format!("dqI[{t}]"), dq[t], at(&up, &ki, &w), at(&down, &ki, &w));
        }
        for t in [1, 11] {
            let (mut up, mut down) = (ki.clone(), ki.clone());
            (up[t], down[t]) = (up[t] + h, down[t] - h);
            close(&format!("dkI[{t}]"), dk[t], at(&qi, &up, &w), at(&qi, &down, &w));
        }
        for t in [0, 9] {
            let (mut up, mut down) = (w.clone(), w.clone());
            (up[t], down[t]) = (up[t] + h, down[t] - h);
            close(&format!("dw[{t}]"), dw[t], at(&qi, &ki, &up), at(&qi, &ki, &down));
        }
    }
}
