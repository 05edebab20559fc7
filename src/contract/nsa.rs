//! NSA, native sparse attention (Yuan et al., DeepSeek 2025): three branches per query, mixed
//! by gates — attention over compressed keys, over the raw keys of the blocks the compressed
//! branch ranks highest, and over a causal sliding window. The rule is `docs/DESIGN.md` §1
//! (learned sparse attention: NSA); its f64 oracle is [`nsa_select_f64`] (the compression,
//! the compressed branch and the choice) and [`nsa_forward_f64`] (the three branches on a
//! given choice, and their mix).
//!
//! With compression length `l` and stride `d`, selection blocks of `l′` keys, `n` blocks per
//! query and a window of `w` keys, for query row `i` at position `p = q_offset + i`:
//! - **compressed keys**: key `c` covers positions `[c·d, c·d + l)` (`c = 0..Mc`, `Mc =
//!   ⌊(M − l)/d⌋ + 1` when `M ≥ l`, else none): `K̃_c = Σ_t φ_t · K[c·d + t]`, `Ṽ_c` likewise,
//!   φ per kv head (`[Hkv, l]`; the mean `1/l` by default). Key `c` is visible to `p` when
//!   it ends at or before it, `c·d + l − 1 ≤ p`; `o_cmp` is the softmax attention (the call's
//!   scale) over the visible compressed keys — zero, with LSE `−inf`, where none is.
//! - **selection**: the compressed branch's probabilities `P_cmp(h, i, c)`, summed onto every
//!   selection block `b` (`[b·l′, (b+1)·l′)`) their key range overlaps and over the query
//!   heads of a kv group, give one score per (kv head, row, block): one choice per group, as
//!   the paper makes it. Block 0 and the two local blocks (the query's own, `p / l′`, and the
//!   one before it) are always chosen; the other `n − forced` come from blocks `1 ..= own −
//!   2` by descending score (ties: the lower block first; fewer candidates: all of them).
//!   The list per (query head, row) is `n` entries: own, own − 1, 0 (those that exist), then
//!   the chosen blocks by descending score, [`NONE`] where fewer exist. `o_slc` is causal
//!   attention over the keys of the listed blocks.
//! - **window**: `o_win` is causal attention over the `w` latest keys (`p − w < j ≤ p`).
//! - **mix**: `o = g₀·o_cmp + g₁·o_slc + g₂·o_win`, gates `[B, H, N, 3]` (an input; in a
//!   model, the sigmoid of a learned projection). No gradient flows through the choice.
//!
//! A batch folds into heads as MoBA's does ([`crate::contract::selection::Moba::fold`]); the
//! call is causal and carries no other mask, ALiBi or mods (each branch's meaning with them is
//! not the paper's; refused with a typed error). A positional encoding applies to Q and K
//! before everything: the compressed keys compress the encoded keys, every branch and the
//! choice read Q and K encoded, and dQ, dK go back through the encoding.

use crate::contract::AttnShape;
use crate::contract::Window;
use crate::contract::reference::attention_f64;
use crate::contract::selection::{MAX_TOPK, Moba, NONE, SelectionDiff};
use crate::contract::spec::{Alibi, AttnSpec};
use crate::error::{Error, Result};

/// NSA's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Nsa {
    /// Compression length l: keys per compressed key.
    pub cmp_len: usize,
    /// Compression stride d: positions between compressed keys (`d ≤ l`).
    pub cmp_stride: usize,
    /// Selection block l′: keys per selection block.
    pub block: usize,
    /// Selection blocks per query, n (the forced ones included; at least 3).
    pub topk: usize,
    /// Sliding window w: the latest keys each query reads, its own included.
    pub window: usize,
}

/// Forced blocks a list may hold: block 0 and the two local blocks.
pub const FORCED: usize = 3;

impl Nsa {
    /// Parses `cmp=L/D,slc=L2,top=N,win=W`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: String| Error::Invalid(format!("NSA `{text}`: {why}"));
        let (mut cmp, mut slc, mut top, mut win) = (None, None, None, None);
        let num = |part: &str, v: &str| -> Result<usize> {
            v.trim().parse().map_err(|_| bad(format!("`{part}`: `{v}` is not a whole number")))
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(bad(format!("`{part}`: expected cmp=L/D, slc=L2, top=N or win=W")));
            };
            let key = key.trim();
            let slot_taken = match key {
                "cmp" => {
                    let Some((l, d)) = value.split_once('/') else {
                        return Err(bad(format!("`{part}`: expected cmp=LENGTH/STRIDE")));
                    };
                    cmp.replace((num(part, l)?, num(part, d)?)).is_some()
                }
                "slc" => slc.replace(num(part, value)?).is_some(),
                "top" => top.replace(num(part, value)?).is_some(),
                "win" => win.replace(num(part, value)?).is_some(),
                other => {
                    return Err(bad(format!("unknown part `{other}`; expected cmp=L/D,slc=L2,top=N,win=W")));
                }
            };
            if slot_taken {
                return Err(bad(format!("{key} is given twice")));
            }
        }
        match (cmp, slc, top, win) {
            (Some((cmp_len, cmp_stride)), Some(block), Some(topk), Some(window)) => {
                Ok(Self { cmp_len, cmp_stride, block, topk, window })
            }
            _ => Err(bad("needs cmp=L/D, slc=L2, top=N and win=W".into())),
        }
    }

    /// The parameters as `cmp=L/D,slc=L2,top=N,win=W`.
    pub fn describe(&self) -> String {
        format!(
            "cmp={}/{},slc={},top={},win={}",
            self.cmp_len, self.cmp_stride, self.block, self.topk, self.window
        )
    }

    /// Checks the parameters: `1 ≤ d ≤ l`, `l′ ≥ 1`, `3 ≤ n ≤` [`MAX_TOPK`], `w ≥ 1`.
    pub fn check(&self) -> Result<()> {
        let bad = |why: &str| Err(Error::Invalid(format!("NSA {}: {why}", self.describe())));
        if self.cmp_stride == 0 || self.cmp_stride > self.cmp_len {
            return bad("the compression stride must be between 1 and the compression length");
        }
        if self.block == 0 || self.window == 0 {
            return bad("the selection block and the window must be at least 1");
        }
        if self.topk < FORCED || self.topk > MAX_TOPK {
            return Err(Error::OutOfRange {
                what: "NSA top (selection blocks per query, the first and two local blocks included)".into(),
                value: self.topk as u64,
                min: FORCED as u64,
                max: MAX_TOPK as u64,
            });
        }
        Ok(())
    }

    /// Compressed keys over M keys: `⌊(M − l)/d⌋ + 1`, none when `M < l`.
    pub fn compressed(&self, m: usize) -> usize {
        if m < self.cmp_len { 0 } else { (m - self.cmp_len) / self.cmp_stride + 1 }
    }

    /// Selection blocks over M keys.
    pub fn blocks(&self, m: usize) -> usize {
        m.div_ceil(self.block)
    }

    /// The selection blocks compressed key `c` overlaps: `[first, last]`.
    pub fn overlapped(&self, c: usize) -> (usize, usize) {
        let start = c * self.cmp_stride;
        (start / self.block, (start + self.cmp_len - 1) / self.block)
    }

    /// The compressed keys overlapping selection block `b`: `c` in `lo..hi` (before the
    /// count of compressed keys is applied).
    pub fn overlapping(&self, b: usize) -> (usize, usize) {
        let (start, end) = (b * self.block, (b + 1) * self.block);
        // c·d + l > start  and  c·d < end
        let lo = if start >= self.cmp_len { (start - self.cmp_len) / self.cmp_stride + 1 } else { 0 };
        (lo, end.div_ceil(self.cmp_stride))
    }

    /// The call NSA runs: `spec` checked (causal, no other mask, ALiBi or mods; NSA's own
    /// parameters) and its batch folded into heads. A positional encoding stays on the call:
    /// every branch and the choice read Q and K encoded.
    pub fn fold(&self, spec: &AttnSpec) -> Result<AttnSpec> {
        self.check()?;
        let refuse = |what: &str| {
            Err(Error::Invalid(format!(
                "NSA with {what}: its three branches define their own masks (causal compressed keys, chosen blocks, a window)"
            )))
        };
        if spec.mask.is_some() || spec.window.is_some() {
            return refuse("a sparse mask or a window");
        }
        if spec.mods.is_some() {
            return refuse("mods");
        }
        if !matches!(spec.alibi, Alibi::Off) {
            return refuse("ALiBi");
        }
        let moba = Moba { block: self.block, topk: self.topk };
        moba.fold(&spec.clone().causal(true))
    }

    /// φ for every folded kv head, `[B·Hkv, l]`: the given weights `[Hkv, l]` repeated per
    /// sequence, or the mean (`1/l` each).
    pub fn phi(&self, shape: &AttnShape, phi: Option<&[f32]>) -> Result<Vec<f32>> {
        let l = self.cmp_len;
        match phi {
            None => Ok(vec![1.0 / l as f32; shape.batch * shape.kv_heads * l]),
            Some(w) => {
                if w.len() != shape.kv_heads * l {
                    return Err(Error::Length {
                        what: "NSA φ (compression weights)".into(),
                        got: w.len(),
                        shape: vec![shape.kv_heads, l],
                        expected: shape.kv_heads * l,
                    });
                }
                if w.iter().any(|x| !x.is_finite()) {
                    return Err(Error::Invalid("NSA φ holds a value that is not finite".into()));
                }
                Ok(w.repeat(shape.batch))
            }
        }
    }

    /// Checks the gates `[B, H, N, 3]` (finite).
    pub fn check_gates(&self, shape: &AttnShape, gates: &[f32]) -> Result<()> {
        let want = shape.batch * shape.heads * shape.n * 3;
        if gates.len() != want {
            return Err(Error::Length {
                what: "NSA gates".into(),
                got: gates.len(),
                shape: vec![shape.batch, shape.heads, shape.n, 3],
                expected: want,
            });
        }
        if gates.iter().any(|x| !x.is_finite()) {
            return Err(Error::Invalid("NSA gates hold a value that is not finite".into()));
        }
        Ok(())
    }

    /// A call's inputs checked against `spec` — Q, K, V, the gates (when given) and φ — as
    /// every NSA entry point takes them: the folded call ([`Nsa::fold`]) and φ for each of its
    /// kv heads ([`Nsa::phi`]).
    pub fn prepare(
        &self,
        spec: &AttnSpec,
        (q, k, v): (&[f32], &[f32], &[f32]),
        gates: Option<&[f32]>,
        phi: Option<&[f32]>,
    ) -> Result<(AttnSpec, Vec<f32>)> {
        spec.check_inputs(q, k, v)?;
        if let Some(g) = gates {
            self.check_gates(&spec.shape, g)?;
        }
        Ok((self.fold(spec)?, self.phi(&spec.shape, phi)?))
    }

    /// The forced blocks of a row whose own block is `own`, in list order: own, own − 1, 0
    /// (those that exist).
    pub fn forced(&self, own: usize) -> Vec<u32> {
        let mut f = vec![own as u32];
        if own >= 1 {
            f.push(own as u32 - 1);
        }
        if own >= 2 {
            f.push(0);
        }
        f
    }

    /// The compressed branch's call (`folded` is [`Nsa::fold`]'s): Q against the Mc
    /// compressed keys, not causal; the kernels add the visibility rule as a `mask_mod`.
    pub fn compressed_spec(&self, folded: &AttnSpec) -> AttnSpec {
        let s = folded.shape;
        let shape = AttnShape { m: self.compressed(s.m), ..s };
        AttnSpec::new(shape).causal(false).scale(Some(folded.scale_value()))
    }

    /// Whether compressed key `c` is visible at position `p`.
    pub fn compressed_visible(&self, c: usize, p: i64) -> bool {
        (c * self.cmp_stride + self.cmp_len - 1) as i64 <= p
    }

    /// The window branch's call: causal over the `w` latest keys.
    pub fn window_spec(&self, folded: &AttnSpec) -> AttnSpec {
        folded.clone().causal(true).window(Some(Window { left: Some(self.window - 1), right: Some(0) }))
    }

    /// The selected branch's call: causal over the listed blocks (`[H, N, n]`).
    pub fn selected_spec(&self, folded: &AttnSpec, lists: &[u32]) -> Result<AttnSpec> {
        Moba { block: self.block, topk: self.topk }.spec(folded, lists)
    }
}

/// Q and K as the compressed branch and the choice read them, in f64: under the call's
/// positional encoding (each row at its own position), or as given.
fn encoded_f64(folded: &AttnSpec, q: &[f32], k: &[f32]) -> (Vec<f64>, Vec<f64>) {
    crate::contract::reference::encoded(folded, q, k).unwrap_or_else(|| {
        let f = |x: &[f32]| x.iter().map(|&v| v as f64).collect();
        (f(q), f(k))
    })
}

/// The gradient of encoded rows taken back to the inputs (RoPE's rotation back; the identity
/// for an additive encoding): `rows` rows of `d` in place, row r at position `first + r %
/// per_seq`.
fn decode_grad_f64(folded: &AttnSpec, x: &mut [f64], per_seq: usize, first: i64) {
    let Some(p) = folded.positions else { return };
    for (r, row) in x.chunks_exact_mut(folded.shape.head_dim).enumerate() {
        p.apply_grad(row, first + (r % per_seq) as i64);
    }
}

/// The compressed keys and values in f64, `[Hkv, Mc, D]` each (`folded` and `phi` as
/// [`Nsa::fold`] and [`Nsa::phi`] give them).
pub fn compress_f64<T: Copy + Into<f64>>(folded: &AttnSpec, nsa: &Nsa, phi: &[f32], x: &[T]) -> Vec<f64> {
    let s = folded.shape;
    let (d, mc, l) = (s.head_dim, nsa.compressed(s.m), nsa.cmp_len);
    let mut out = vec![0f64; s.kv_heads * mc * d];
    for g in 0..s.kv_heads {
        for c in 0..mc {
            let row = &mut out[(g * mc + c) * d..][..d];
            for t in 0..l {
                let w = phi[g * l + t] as f64;
                let src = &x[(g * s.m + c * nsa.cmp_stride + t) * d..][..d];
                row.iter_mut().zip(src).for_each(|(o, &v)| *o += w * v.into());
            }
        }
    }
    out
}

/// The compressed branch of query row `i` of head `h` in f64: `(o, lse, probabilities)`, the
/// probabilities over the Mc compressed keys (zero where not visible; O zero and LSE `−inf`
/// where none is).
fn compressed_row_f64(
    folded: &AttnSpec,
    nsa: &Nsa,
    q: &[f64],
    (kc, vc): (&[f64], &[f64]),
    h: usize,
    i: usize,
) -> (Vec<f64>, f64, Vec<f64>) {
    let s = folded.shape;
    let (d, mc) = (s.head_dim, nsa.compressed(s.m));
    let g = h / s.group();
    let scale = folded.scale_value() as f64;
    let p = folded.position(i);
    let qi = &q[(h * s.n + i) * d..][..d];
    let mut o = vec![0f64; d];
    let mut probs = vec![0f64; mc];
    let visible: Vec<usize> = (0..mc).filter(|&c| nsa.compressed_visible(c, p)).collect();
    if visible.is_empty() {
        return (o, f64::NEG_INFINITY, probs);
    }
    let scores: Vec<f64> = visible
        .iter()
        .map(|&c| scale * qi.iter().zip(&kc[(g * mc + c) * d..][..d]).map(|(&a, &b)| a * b).sum::<f64>())
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + scores.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    for (&c, &sc) in visible.iter().zip(&scores) {
        let w = (sc - lse).exp();
        probs[c] = w;
        o.iter_mut().zip(&vc[(g * mc + c) * d..][..d]).for_each(|(x, &v)| *x += w * v);
    }
    (o, lse, probs)
}

/// The block scores of one (kv head, row) in f64 from its group's compressed probabilities
/// (one `[Mc]` row per query head of the group): each key's probability added to every
/// selection block its range overlaps.
pub(crate) fn block_scores_f64(nsa: &Nsa, blocks: usize, group_probs: &[&[f64]]) -> Vec<f64> {
    let mut scores = vec![0f64; blocks];
    for row in group_probs {
        for (c, &w) in row.iter().enumerate() {
            let (b0, b1) = nsa.overlapped(c);
            for score in &mut scores[b0..=b1.min(blocks - 1)] {
                *score += w;
            }
        }
    }
    scores
}

/// The list of a row at position `p ≥ 0` from its block scores: the forced blocks, then the
/// best candidates (1 ..= own − 2) by descending score, ties to the lower block.
pub(crate) fn choose_row(nsa: &Nsa, p: i64, scores: &[f64]) -> Vec<u32> {
    let own = p as usize / nsa.block;
    let mut list = nsa.forced(own);
    let mut order: Vec<usize> = (1..own.saturating_sub(1)).collect();
    // a stable sort keeps index order among equal scores
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let room = nsa.topk - list.len();
    list.extend(order.iter().take(room).map(|&b| b as u32));
    list
}

/// The scores that rank a row's candidates (`None` for a forced or ineligible block), for the
/// tie-aware comparison of two choices.
fn ranked(nsa: &Nsa, p: i64, scores: &[f64]) -> Vec<Option<f64>> {
    let own = if p < 0 { 0 } else { p as usize / nsa.block };
    (0..scores.len()).map(|b| (b >= 1 && b + 1 < own).then_some(scores[b])).collect()
}

/// What NSA's oracle computes before the selected and window branches: the compressed keys
/// and values, the compressed branch and the choice.
pub struct NsaSelection {
    /// The choice, `[H, N, n]` index lists (one choice per kv group, repeated per head).
    pub lists: Vec<u32>,
    /// `o_cmp`, `[H, N, D]`.
    pub o_cmp: Vec<f64>,
    /// The compressed branch's LSE, `[H, N]`.
    pub lse_cmp: Vec<f64>,
    /// `P_cmp`, `[H, N, Mc]`.
    probs: Vec<f64>,
    /// Per (query head, row), the scores that ranked its candidates (for tie checks).
    scores: Vec<Vec<Option<f64>>>,
}

/// NSA's compression, compressed branch and choice in f64 (a batch folds into heads; `phi`
/// `[Hkv, l]` or the mean).
pub fn nsa_select_f64(
    spec: &AttnSpec,
    nsa: &Nsa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    phi: Option<&[f32]>,
) -> Result<NsaSelection> {
    let (folded, phi) = nsa.prepare(spec, (q, k, v), None, phi)?;
    let folded = &folded;
    let s = folded.shape;
    let (q, k) = &encoded_f64(folded, q, k);
    let (kc, vc) = (compress_f64(folded, nsa, &phi, k), compress_f64(folded, nsa, &phi, v));
    let (d, mc, group, blocks) = (s.head_dim, nsa.compressed(s.m), s.group(), nsa.blocks(s.m));
    let mut sel = NsaSelection {
        lists: vec![NONE; s.heads * s.n * nsa.topk],
        o_cmp: vec![0f64; s.heads * s.n * d],
        lse_cmp: vec![f64::NEG_INFINITY; s.heads * s.n],
        probs: vec![0f64; s.heads * s.n * mc],
        scores: vec![Vec::new(); s.heads * s.n],
    };
    for h in 0..s.heads {
        for i in 0..s.n {
            let row = h * s.n + i;
            let (o, lse, probs) = compressed_row_f64(folded, nsa, q, (&kc, &vc), h, i);
            sel.o_cmp[row * d..][..d].copy_from_slice(&o);
            sel.lse_cmp[row] = lse;
            sel.probs[row * mc..][..mc].copy_from_slice(&probs);
        }
    }
    for g in 0..s.kv_heads {
        for i in 0..s.n {
            let heads = g * group..(g + 1) * group;
            let rows: Vec<&[f64]> = heads.clone().map(|h| &sel.probs[(h * s.n + i) * mc..][..mc]).collect();
            let scores = block_scores_f64(nsa, blocks, &rows);
            let p = folded.position(i);
            let list = if p < 0 { Vec::new() } else { choose_row(nsa, p, &scores) };
            for h in heads {
                sel.lists[(h * s.n + i) * nsa.topk..][..list.len()].copy_from_slice(&list);
                sel.scores[h * s.n + i] = ranked(nsa, p, &scores);
            }
        }
    }
    Ok(sel)
}

/// NSA's output on sampled rows in f64 (indices into the folded `[H·N]` rows) for a kernel's
/// choice `lists`: `(o of those rows, rows whose kernel list differs from the oracle's, whether
/// every difference is a near-tie within tol)`. For benchmarks: the compression of all keys,
/// then only the sampled rows' groups.
#[allow(clippy::too_many_arguments)]
pub fn nsa_rows_f64(
    spec: &AttnSpec,
    nsa: &Nsa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    gates: &[f32],
    phi: Option<&[f32]>,
    lists: &[u32],
    rows: &[usize],
    tol: f64,
) -> Result<(Vec<f64>, usize, bool)> {
    let (folded, phi) = nsa.prepare(spec, (q, k, v), Some(gates), phi)?;
    let folded = &folded;
    let s = folded.shape;
    let slc =
        crate::contract::reference::attention_rows_f64(&nsa.selected_spec(folded, lists)?, q, k, v, rows)?;
    let win = crate::contract::reference::attention_rows_f64(&nsa.window_spec(folded), q, k, v, rows)?;
    let (q, k) = &encoded_f64(folded, q, k);
    let (kc, vc) = (compress_f64(folded, nsa, &phi, k), compress_f64(folded, nsa, &phi, v));
    let (d, group, blocks) = (s.head_dim, s.group(), nsa.blocks(s.m));
    let (mut out, mut differ, mut all_ties) = (Vec::with_capacity(rows.len() * d), 0, true);
    for (r, &row) in rows.iter().enumerate() {
        let (h, i) = (row / s.n, row % s.n);
        let (o_cmp, _, _) = compressed_row_f64(folded, nsa, q, (&kc, &vc), h, i);
        let gate = &gates[row * 3..][..3];
        out.extend((0..d).map(|x| {
            gate[0] as f64 * o_cmp[x] + gate[1] as f64 * slc[r].0[x] + gate[2] as f64 * win[r].0[x]
        }));
        // the row's choice: its group's compressed probabilities
        let g = h / group;
        let probs: Vec<Vec<f64>> = (g * group..(g + 1) * group)
            .map(|hh| compressed_row_f64(folded, nsa, q, (&kc, &vc), hh, i).2)
            .collect();
        let scores = block_scores_f64(nsa, blocks, &probs.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let p = folded.position(i);
        let mut want = if p < 0 { Vec::new() } else { choose_row(nsa, p, &scores) };
        want.resize(nsa.topk, NONE);
        let got = &lists[row * nsa.topk..][..nsa.topk];
        let ranks = ranked(nsa, p, &scores);
        let (diffs, ties) =
            crate::contract::selection::diff_choices(1, nsa.topk, &want, got, tol, |_| ranks.clone());
        differ += diffs.len();
        all_ties &= ties;
    }
    Ok((out, differ, all_ties))
}

/// NSA's branches on a given choice, in f64: `(o, [o_cmp, o_slc, o_win], [lse_cmp, lse_slc,
/// lse_win])`, all `[B, H, N, D]` / `[B, H, N]` (the compressed branch from `selection`, the
/// selected one over `lists` — the oracle's or a kernel's choice).
#[allow(clippy::too_many_arguments)]
pub fn nsa_forward_f64(
    spec: &AttnSpec,
    nsa: &Nsa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    gates: &[f32],
    selection: &NsaSelection,
    lists: &[u32],
) -> Result<NsaBranches> {
    let folded = &nsa.fold(spec)?;
    nsa.check_gates(&spec.shape, gates)?;
    let (o_slc, lse_slc) = attention_f64(&nsa.selected_spec(folded, lists)?, q, k, v)?;
    let (o_win, lse_win) = attention_f64(&nsa.window_spec(folded), q, k, v)?;
    let d = folded.shape.head_dim;
    let o = (0..o_slc.len())
        .map(|t| {
            let g = &gates[t / d * 3..][..3];
            g[0] as f64 * selection.o_cmp[t] + g[1] as f64 * o_slc[t] + g[2] as f64 * o_win[t]
        })
        .collect();
    Ok(NsaBranches {
        o,
        branches: [selection.o_cmp.clone(), o_slc, o_win],
        lse: [selection.lse_cmp.clone(), lse_slc, lse_win],
    })
}

/// NSA's gradients (f64 from the oracle, f32 from the kernels).
#[derive(Clone, Debug)]
pub struct NsaGrads<T> {
    /// dQ `[B, H, N, D]`.
    pub dq: Vec<T>,
    /// dK `[B, Hkv, M, D]` (the three branches', the compressed one through φ).
    pub dk: Vec<T>,
    /// dV `[B, Hkv, M, D]`.
    pub dv: Vec<T>,
    /// The gates' gradient `[B, H, N, 3]`: `dO · o_branch` per row.
    pub dgates: Vec<T>,
    /// φ's gradient `[Hkv, l]` (summed over the sequences of a batch).
    pub dphi: Vec<T>,
}

impl NsaGrads<f64> {
    /// Rounded to f32, as the kernels return them.
    pub fn to_f32(&self) -> NsaGrads<f32> {
        let f = |x: &[f64]| x.iter().map(|&v| v as f32).collect();
        NsaGrads {
            dq: f(&self.dq),
            dk: f(&self.dk),
            dv: f(&self.dv),
            dgates: f(&self.dgates),
            dphi: f(&self.dphi),
        }
    }
}

/// Branch `b`'s share of dO: `g_b·dO` row by row (`d` columns per row).
fn gated_share(d_o: &[f32], gates: &[f32], d: usize, b: usize) -> Vec<f32> {
    d_o.iter().enumerate().map(|(t, &x)| gates[t / d * 3 + b] * x).collect()
}

/// Row `row`'s share of dO in the compressed branch, `g₀·dO`, in f64.
fn compressed_share_row(d_o: &[f32], gates: &[f32], d: usize, row: usize) -> Vec<f64> {
    d_o[row * d..][..d].iter().map(|&x| gates[row * 3] as f64 * x as f64).collect()
}

/// The compressed branch's backward for row `i` of head `h` and its share `dor` of dO, in f64:
/// the row's `o_cmp` and, per visible compressed key, `(c, P_c, dS_c)` with the score's scale
/// folded in (`dQ += dS_c·K̃_c`, `dK̃_c += dS_c·q`, `dṼ_c += P_c·dO`); no key for a row that
/// sees none.
#[allow(clippy::type_complexity)]
fn compressed_row_back_f64(
    folded: &AttnSpec,
    nsa: &Nsa,
    q: &[f64],
    (kc, vc): (&[f64], &[f64]),
    (h, i): (usize, usize),
    dor: &[f64],
) -> (Vec<f64>, Vec<(usize, f64, f64)>) {
    let (o, lse, probs) = compressed_row_f64(folded, nsa, q, (kc, vc), h, i);
    if lse == f64::NEG_INFINITY {
        return (o, Vec::new());
    }
    let s = folded.shape;
    let (d, mc, g) = (s.head_dim, nsa.compressed(s.m), h / s.group());
    let scale = folded.scale_value() as f64;
    let delta: f64 = dor.iter().zip(&o).map(|(a, b)| a * b).sum();
    let keys = (probs.iter().enumerate().filter(|(_, p)| **p > 0.0))
        .map(|(c, &pc)| {
            let dp: f64 = dor.iter().zip(&vc[(g * mc + c) * d..][..d]).map(|(a, b)| a * b).sum();
            (c, pc, pc * (dp - delta) * scale)
        })
        .collect();
    (o, keys)
}

/// NSA's backward in f64 for the incoming gradient `d_o` on a given choice (`lists`, no
/// gradient through it): each branch's backward for its gated share `g_b·dO`, the compressed
/// branch's carried back through the compression to K, V and φ; the gates' gradient is
/// `dO · o_b`.
#[allow(clippy::too_many_arguments)]
pub fn nsa_backward_f64(
    spec: &AttnSpec,
    nsa: &Nsa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    gates: &[f32],
    phi: Option<&[f32]>,
    lists: &[u32],
    d_o: &[f32],
) -> Result<NsaGrads<f64>> {
    use crate::contract::reference::attention_backward_f64;
    spec.check_grad(d_o)?;
    let (folded, phi_all) = nsa.prepare(spec, (q, k, v), Some(gates), phi)?;
    let folded = &folded;
    let s = folded.shape;
    let (d, mc, l, group) = (s.head_dim, nsa.compressed(s.m), nsa.cmp_len, s.group());
    let (selected, window) = (nsa.selected_spec(folded, lists)?, nsa.window_spec(folded));
    // the selected and window branches: the attention oracle's backward on their calls
    let (mut dq, mut dk, mut dv) =
        attention_backward_f64(&selected, q, k, v, &gated_share(d_o, gates, d, 1))?;
    let (dq_w, dk_w, dv_w) = attention_backward_f64(&window, q, k, v, &gated_share(d_o, gates, d, 2))?;
    dq.iter_mut().zip(&dq_w).for_each(|(a, b)| *a += b);
    dk.iter_mut().zip(&dk_w).for_each(|(a, b)| *a += b);
    dv.iter_mut().zip(&dv_w).for_each(|(a, b)| *a += b);
    // the compressed branch on K̃, Ṽ (its output kept for the gates' gradient), then back
    // through φ — on Q and K encoded: its gradients to them taken back through the encoding
    let (qe, ke) = &encoded_f64(folded, q, k);
    let (kc, vc) = (compress_f64(folded, nsa, &phi_all, ke), compress_f64(folded, nsa, &phi_all, v));
    let (mut dkc, mut dvc) = (vec![0f64; kc.len()], vec![0f64; vc.len()]);
    let (mut dq_c, mut dk_c) = (vec![0f64; dq.len()], vec![0f64; dk.len()]);
    let mut o_cmp = Vec::with_capacity(dq.len());
    for h in 0..s.heads {
        let g = h / group;
        for i in 0..s.n {
            let row = h * s.n + i;
            let dor = compressed_share_row(d_o, gates, d, row);
            let (o, keys) = compressed_row_back_f64(folded, nsa, qe, (&kc, &vc), (h, i), &dor);
            o_cmp.extend(o);
            for (c, pc, ds) in keys {
                let at = (g * mc + c) * d;
                for x in 0..d {
                    dq_c[row * d + x] += ds * kc[at + x];
                    dkc[at + x] += ds * qe[row * d + x];
                    dvc[at + x] += pc * dor[x];
                }
            }
        }
    }
    let mut dphi = vec![0f64; s.kv_heads * l];
    for g in 0..s.kv_heads {
        for c in 0..mc {
            for t in 0..l {
                let key = g * s.m + c * nsa.cmp_stride + t;
                let w = phi_all[g * l + t] as f64;
                for x in 0..d {
                    let (gk, gv) = (dkc[(g * mc + c) * d + x], dvc[(g * mc + c) * d + x]);
                    dk_c[key * d + x] += w * gk;
                    dv[key * d + x] += w * gv;
                    dphi[g * l + t] += ke[key * d + x] * gk + v[key * d + x] as f64 * gv;
                }
            }
        }
    }
    let first_q = folded.positions.map_or(0, |p| p.query_position(folded.q_offset(), 0));
    let first_k = folded.positions.map_or(0, |p| p.key_position(0));
    decode_grad_f64(folded, &mut dq_c, s.n, first_q);
    decode_grad_f64(folded, &mut dk_c, s.m, first_k);
    dq.iter_mut().zip(&dq_c).for_each(|(a, b)| *a += b);
    dk.iter_mut().zip(&dk_c).for_each(|(a, b)| *a += b);
    // φ is per kv head of one sequence: a batch's folded heads add up
    let per_seq = spec.shape.kv_heads * l;
    let dphi = (0..per_seq).map(|x| dphi.iter().skip(x).step_by(per_seq).sum()).collect();
    let outputs = [o_cmp, attention_f64(&selected, q, k, v)?.0, attention_f64(&window, q, k, v)?.0];
    let dgates = (0..s.heads * s.n * 3)
        .map(|t| {
            let (row, b) = (t / 3, t % 3);
            (0..d).map(|x| d_o[row * d + x] as f64 * outputs[b][row * d + x]).sum()
        })
        .collect();
    Ok(NsaGrads { dq, dk, dv, dgates, dphi })
}

/// dQ of sampled rows in f64 (indices into the folded `[H·N]` rows) for a kernel's choice
/// `lists`: each branch's for its gated share of dO, from the definition (for benchmarks).
#[allow(clippy::too_many_arguments)]
pub fn nsa_dq_rows_f64(
    spec: &AttnSpec,
    nsa: &Nsa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    gates: &[f32],
    phi: Option<&[f32]>,
    lists: &[u32],
    d_o: &[f32],
    rows: &[usize],
) -> Result<Vec<f64>> {
    use crate::contract::reference::attention_dq_rows_f64;
    spec.check_grad(d_o)?;
    let qkv = (q, k, v);
    let (folded, phi) = nsa.prepare(spec, qkv, Some(gates), phi)?;
    let folded = &folded;
    let s = folded.shape;
    let (d, mc) = (s.head_dim, nsa.compressed(s.m));
    let slc =
        attention_dq_rows_f64(&nsa.selected_spec(folded, lists)?, qkv, &gated_share(d_o, gates, d, 1), rows)?;
    let win = attention_dq_rows_f64(&nsa.window_spec(folded), qkv, &gated_share(d_o, gates, d, 2), rows)?;
    let (qe, ke) = &encoded_f64(folded, q, k);
    let (kc, vc) = (compress_f64(folded, nsa, &phi, ke), compress_f64(folded, nsa, &phi, v));
    let first_q = folded.positions.map_or(0, |p| p.query_position(folded.q_offset(), 0));
    let mut out = Vec::with_capacity(rows.len() * d);
    for (r, &row) in rows.iter().enumerate() {
        let (h, i) = (row / s.n, row % s.n);
        let g = h / s.group();
        let dor = compressed_share_row(d_o, gates, d, row);
        let mut dq_c = vec![0f64; d];
        for (c, _, ds) in compressed_row_back_f64(folded, nsa, qe, (&kc, &vc), (h, i), &dor).1 {
            dq_c.iter_mut().zip(&kc[(g * mc + c) * d..][..d]).for_each(|(x, &kv)| *x += ds * kv);
        }
        // this row alone, at its own position
        decode_grad_f64(folded, &mut dq_c, 1, first_q + i as i64);
        out.extend(slc[r].iter().zip(&win[r]).zip(&dq_c).map(|((a, b), c)| a + b + c));
    }
    Ok(out)
}

/// NSA's output and its three branches (f64).
pub struct NsaBranches {
    /// The gated mix.
    pub o: Vec<f64>,
    /// `o_cmp`, `o_slc`, `o_win`.
    pub branches: [Vec<f64>; 3],
    /// Each branch's LSE (`−inf` on a row that sees nothing in it).
    pub lse: [Vec<f64>; 3],
}

/// Where a kernel's choice differs from the oracle's, as [`crate::contract::selection::compare_selection`]
/// reports MoBA's: the rows whose sets differ, and whether every difference is a near-tie
/// (block scores within `tol`, relative to the row's largest score, of the oracle's weakest
/// chosen block).
pub fn compare_nsa_selection(
    spec: &AttnSpec,
    nsa: &Nsa,
    selection: &NsaSelection,
    other: &[u32],
    tol: f64,
) -> (Vec<SelectionDiff>, bool) {
    let Ok(folded) = nsa.fold(spec) else { return (Vec::new(), false) };
    let n = folded.shape.n;
    crate::contract::selection::diff_choices(n, nsa.topk, &selection.lists, other, tol, |row| {
        selection.scores[row].clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        let nsa = Nsa::parse("cmp=32/16, slc=64, top=16, win=512").unwrap();
        assert_eq!(nsa, Nsa { cmp_len: 32, cmp_stride: 16, block: 64, topk: 16, window: 512 });
        assert_eq!(Nsa::parse(&nsa.describe()).unwrap(), nsa);
        for bad in [
            "cmp=32,slc=64,top=16,win=512",
            "cmp=32/16,slc=64,top=16",
            "cmp=32/16,slc=64,top=16,win=5,win=6",
            "cmp=32/x,slc=64,top=16,win=512",
            "cmp=32/16,slc=64,top=16,win=512,size=3",
        ] {
            assert!(Nsa::parse(bad).is_err(), "{bad}");
        }
        for bad in ["cmp=8/16,slc=4,top=4,win=4", "cmp=8/0,slc=4,top=4,win=4", "cmp=8/4,slc=4,top=2,win=4"] {
            assert!(Nsa::parse(bad).unwrap().check().is_err(), "{bad}");
        }
    }

    /// The compressed keys and the blocks they overlap: l = 4, d = 2, l′ = 3.
    #[test]
    fn compressed_keys_and_blocks() {
        let nsa = Nsa { cmp_len: 4, cmp_stride: 2, block: 3, topk: 3, window: 2 };
        assert_eq!(nsa.compressed(3), 0);
        assert_eq!(nsa.compressed(4), 1);
        assert_eq!(nsa.compressed(9), 3); // keys 0..4, 2..6, 4..8
        // c = 1 covers 2..6: blocks 0 (0..3) and 1 (3..6)
        assert_eq!(nsa.overlapped(1), (0, 1));
        // block 2 (6..9) is overlapped by c with c·2 + 4 > 6 and c·2 < 9: c = 2, 3, 4
        assert_eq!(nsa.overlapping(2), (2, 5));
        for b in 0..5 {
            let (lo, hi) = nsa.overlapping(b);
            for c in 0..8 {
                let (b0, b1) = nsa.overlapped(c);
                assert_eq!((lo..hi).contains(&c), (b0..=b1).contains(&b), "block {b}, key {c}");
            }
        }
        assert!(nsa.compressed_visible(1, 5) && !nsa.compressed_visible(1, 4));
        assert_eq!(nsa.forced(0), vec![0]);
        assert_eq!(nsa.forced(1), vec![1, 0]);
        assert_eq!(nsa.forced(5), vec![5, 4, 0]);
    }

    /// One head, D = 1, keys chosen so that the compressed branch prefers block 2: the
    /// choice by hand.
    #[test]
    fn selection_by_hand() {
        // l = d = l′ = 2: compressed key c is block c; M = 12, one query at position 11 (own
        // block 5): candidates 1..=3, forced 5, 4, 0
        let nsa = Nsa { cmp_len: 2, cmp_stride: 2, block: 2, topk: 4, window: 1 };
        let spec = AttnSpec::new(AttnShape::mha(1, 1, 1, 12, 1)).scale(Some(1.0));
        let k = [0.0, 0.0, 1.0, 1.0, 3.0, 3.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0];
        let sel = nsa_select_f64(&spec, &nsa, &[1.0], &k, &k, None).unwrap();
        assert_eq!(sel.lists, vec![5, 4, 0, 2]);
        let nsa = Nsa { topk: 6, ..nsa };
        let sel = nsa_select_f64(&spec, &nsa, &[1.0], &k, &k, None).unwrap();
        assert_eq!(sel.lists, vec![5, 4, 0, 2, 3, 1]);
        // the compressed keys' probabilities sum to one
        let total: f64 = sel.probs.iter().sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        // a row before the first compressed key ends sees none of them
        let early = AttnSpec::new(AttnShape::mha(1, 1, 12, 12, 1));
        let sel = nsa_select_f64(&early, &nsa, &[1.0; 12], &k, &k, None).unwrap();
        assert_eq!(sel.lse_cmp[0], f64::NEG_INFINITY);
        assert!(sel.lse_cmp[1].is_finite());
    }
}
