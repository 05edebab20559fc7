//! Learned, content-dependent sparsity: each query chooses which keys it reads. MoBA (mixture
//! of block attention, Lu et al. 2025) is the first method here; its rule is
//! `docs/DESIGN.md` §1.9 and its f64 oracle is [`moba_select_f64`].
//!
//! **MoBA** (`block = B`, `topk = k`): keys are cut into blocks of B positions. For query row
//! `i` at position `p = q_offset + i`, every block that lies wholly before p's own block
//! (`p / B`) gets the gate score `q_i · mean(K[block])` (per query head, reading its kv head;
//! unscaled; Q and K under the call's positional encoding when it has one — RoPE rotates each
//! key at its own position before the mean). The query attends, by one softmax over the union, to its own block (causally
//! masked inside) and to the `k − 1` highest-scoring earlier blocks (ties: the lower block
//! index first; fewer earlier blocks than `k − 1`: all of them); blocks after its own are
//! never chosen. Every other rule of the call (windows, sparse masks, ALiBi, mods) still
//! applies inside the chosen blocks. A row at a negative position sees nothing.
//!
//! The choice is an index list per (head, row): `k` entries, the own block first, then the
//! chosen earlier blocks by descending score, [`NONE`] where fewer exist. The kernels read it
//! as a [`Mask::Blocks`] grid with one row per query ([`BlockGrid::per_row`]), so the block
//! map lists exactly the key tiles some query of a tile chose (per-query visibility bits where
//! the queries of a tile chose differently), and the forward and backward skip the rest.

use std::sync::Arc;

use crate::contract::AttnShape;
use crate::contract::mask::{BlockGrid, Mask};
use crate::contract::spec::{Alibi, AttnSpec};
use crate::error::{Error, Result};

/// An empty entry of an index list.
pub const NONE: u32 = u32::MAX;
/// The most blocks one query may choose (the GPU keeps its running top-k in registers).
pub const MAX_TOPK: usize = 32;

/// MoBA's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Moba {
    /// Keys per block, B.
    pub block: usize,
    /// Blocks each query reads, k (its own included).
    pub topk: usize,
}

impl Moba {
    /// Parses `block=B,topk=K`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: String| Error::Invalid(format!("MoBA `{text}`: {why}"));
        let (mut block, mut topk) = (None, None);
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err(bad(format!("`{part}`: expected block=B or topk=K")));
            };
            let v: usize = value.trim().parse().map_err(|_| bad(format!("`{part}`: not a whole number")))?;
            let slot = match key.trim() {
                "block" => &mut block,
                "topk" => &mut topk,
                other => return Err(bad(format!("unknown part `{other}`; expected block=B,topk=K"))),
            };
            if slot.replace(v).is_some() {
                return Err(bad(format!("{key} is given twice")));
            }
        }
        match (block, topk) {
            (Some(block), Some(topk)) => Ok(Self { block, topk }),
            _ => Err(bad("needs both block=B and topk=K".into())),
        }
    }

    /// `spec` with its batch folded into the heads, the call every MoBA stage runs: Q
    /// `[B, H, N, D]` is `[1, B·H, N, D]` in memory and query head b·H + h reads kv head
    /// (b·H + h)/G = b·Hkv + h/G, the same group rule, so each sequence chooses for itself;
    /// ALiBi's slopes repeat per sequence. The index lists `[B·H, N, k]` are `[B, H, N, k]`.
    /// A sparse mask or mods (whose head index would change meaning) need one sequence per call.
    pub fn fold(&self, spec: &AttnSpec) -> Result<AttnSpec> {
        let s = spec.shape;
        if s.batch == 1 {
            return Ok(spec.clone());
        }
        if spec.mask.is_some() || spec.mods.is_some() {
            return Err(Error::Invalid(format!(
                "MoBA over a batch of {} with a sparse mask or mods: run one sequence per call",
                s.batch
            )));
        }
        let heads =
            s.batch.checked_mul(s.heads).ok_or_else(|| Error::Invalid("MoBA: B·H overflows".into()))?;
        let mut folded = spec.clone();
        folded.shape = AttnShape { batch: 1, heads, kv_heads: s.batch * s.kv_heads, ..s };
        if let Some(slopes) = spec.slopes() {
            folded.alibi = Alibi::Custom(slopes.repeat(s.batch));
        }
        folded.validate()?;
        Ok(folded)
    }

    /// Checks the parameters against a call: B ≥ 1, 1 ≤ k ≤ [`MAX_TOPK`], one batch element
    /// (a mask has no batch index: [`Moba::fold`] turns a batch into heads first).
    pub fn check(&self, shape: &AttnShape) -> Result<()> {
        if self.block == 0 {
            return Err(Error::Invalid("MoBA: the block size must be at least 1".into()));
        }
        if self.topk == 0 || self.topk > MAX_TOPK {
            return Err(Error::OutOfRange {
                what: "MoBA topk".into(),
                value: self.topk as u64,
                min: 1,
                max: MAX_TOPK as u64,
            });
        }
        if shape.batch != 1 {
            return Err(Error::Invalid(format!(
                "MoBA stages run one batch element (batch {}): fold the batch into heads first (Moba::fold)",
                shape.batch
            )));
        }
        Ok(())
    }

    /// Key blocks over M keys.
    pub fn blocks(&self, m: usize) -> usize {
        m.div_ceil(self.block)
    }

    /// The call that attends through `selected` (`[H, N, k]` index lists, as
    /// [`moba_select_f64`] or the GPU writes them): `spec` made causal, its mask ANDed with the
    /// chosen blocks. The oracle and every kernel run this spec. A batch of several sequences
    /// gives the folded call ([`Moba::fold`]: same memory layout, batch 1).
    pub fn spec(&self, spec: &AttnSpec, selected: &[u32]) -> Result<AttnSpec> {
        let spec = &self.fold(spec)?;
        let s = spec.shape;
        self.check(&s)?;
        let label = format!("moba(block={},topk={})", self.block, self.topk);
        listed_spec(spec, ("MoBA", label), (self.block, s.heads, self.topk), selected)
    }
}

/// `spec` made causal, its mask ANDed with the cells `lists` name: `k` entries per (list head,
/// row) — `heads` lists per row, or one every query head shares —, each a cell of `block` keys
/// ([`NONE`] for an empty entry). `what` names the method in errors, `label` the mask.
pub(crate) fn listed_spec(
    spec: &AttnSpec,
    (what, label): (&str, String),
    (block, heads, k): (usize, usize, usize),
    lists: &[u32],
) -> Result<AttnSpec> {
    let s = spec.shape;
    let (rows, cols) = (s.n, s.m.div_ceil(block));
    if lists.len() != heads * rows * k {
        return Err(Error::Length {
            what: format!("{what} index lists"),
            got: lists.len(),
            shape: vec![heads, rows, k],
            expected: heads * rows * k,
        });
    }
    let mut cells = vec![false; heads * rows * cols];
    for (row, list) in lists.chunks_exact(k).enumerate() {
        for &b in list.iter().filter(|&&b| b != NONE) {
            if b as usize >= cols {
                return Err(Error::Invalid(format!("{what} index list {row}: entry {b} of {cols}")));
            }
            cells[row * cols + b as usize] = true;
        }
    }
    let chosen = Mask::Blocks(Arc::new(BlockGrid::per_row(label, block, heads, rows, cols, cells)?));
    let mut out = spec.clone().causal(true);
    out.mask = Some(match out.mask.take() {
        Some(m) => m.and(chosen),
        None => chosen,
    });
    out.validate()?;
    Ok(out)
}

/// Every block's mean key in f64, `[Hkv, blocks, D]` (a last, partial block over its keys).
fn block_means_f64<T: Copy + Into<f64>>(spec: &AttnSpec, moba: &Moba, k: &[T]) -> Vec<f64> {
    let s = spec.shape;
    let (d, blocks) = (s.head_dim, moba.blocks(s.m));
    let mut means = vec![0f64; s.kv_heads * blocks * d];
    for (kvh, per_head) in means.chunks_exact_mut(blocks * d).enumerate() {
        for (b, mean) in per_head.chunks_exact_mut(d).enumerate() {
            let keys = b * moba.block..((b + 1) * moba.block).min(s.m);
            let count = keys.len() as f64;
            for j in keys {
                let kj = &k[(kvh * s.m + j) * d..][..d];
                mean.iter_mut().zip(kj).for_each(|(m, &x)| *m += x.into());
            }
            mean.iter_mut().for_each(|m| *m /= count);
        }
    }
    means
}

/// Gate scores of query row `i` of head `h` from the block means: one per block wholly before
/// its own (`[]` for a row at a negative position).
fn gates_f64<T: Copy + Into<f64>>(
    spec: &AttnSpec,
    moba: &Moba,
    q: &[T],
    means: &[f64],
    h: usize,
    i: usize,
) -> Vec<f64> {
    let s = spec.shape;
    let d = s.head_dim;
    let p = spec.position(i);
    if p < 0 {
        return Vec::new();
    }
    let kvh = h / (s.heads / s.kv_heads);
    let qi = &q[(h * s.n + i) * d..][..d];
    let head_means = &means[kvh * moba.blocks(s.m) * d..];
    (0..p as usize / moba.block)
        .map(|b| qi.iter().zip(&head_means[b * d..][..d]).map(|(&a, m)| a.into() * m).sum())
        .collect()
}

/// MoBA's choice in f64: `[H, N, k]` index lists (own block first, then the chosen earlier
/// blocks by descending score, ties to the lower index; [`NONE`] where fewer exist).
pub fn moba_select_f64(spec: &AttnSpec, moba: &Moba, q: &[f32], k: &[f32]) -> Result<Vec<u32>> {
    let spec = &moba.fold(spec)?;
    let s = spec.shape;
    moba.check(&s)?;
    spec.check_inputs(q, k, k)?;
    Ok(match crate::contract::reference::encoded(spec, q, k) {
        Some((q, k)) => choose_f64(spec, moba, &q, &k),
        None => choose_f64(spec, moba, q, k),
    })
}

/// [`moba_select_f64`] on Q and K as given (encoded already, if the call encodes positions).
fn choose_f64<T: Copy + Into<f64>>(spec: &AttnSpec, moba: &Moba, q: &[T], k: &[T]) -> Vec<u32> {
    let s = spec.shape;
    let means = block_means_f64(spec, moba, k);
    let mut out = vec![NONE; s.heads * s.n * moba.topk];
    for h in 0..s.heads {
        for i in 0..s.n {
            let p = spec.position(i);
            if p < 0 {
                continue;
            }
            let list = &mut out[(h * s.n + i) * moba.topk..][..moba.topk];
            list[0] = (p as usize / moba.block) as u32;
            let gates = gates_f64(spec, moba, q, &means, h, i);
            let mut order: Vec<usize> = (0..gates.len()).collect();
            // descending score, ties to the lower block (a stable sort keeps index order)
            order.sort_by(|&a, &b| gates[b].total_cmp(&gates[a]));
            for (slot, &b) in list[1..].iter_mut().zip(&order) {
                *slot = b as u32;
            }
        }
    }
    out
}

/// A row whose two choices differ: head, row, the oracle's blocks and the other's (sorted).
pub type SelectionDiff = (usize, usize, Vec<u32>, Vec<u32>);

/// Where two choices differ: `(head, row, oracle's blocks, other blocks)` for each row whose
/// sets of blocks differ, and whether every difference is a near-tie — the blocks one chose and
/// the other did not have f64 gate scores within `tol` (relative to the largest score's
/// magnitude) of the oracle's lowest chosen score.
pub fn compare_selection(
    spec: &AttnSpec,
    moba: &Moba,
    q: &[f32],
    k: &[f32],
    oracle: &[u32],
    other: &[u32],
    tol: f64,
) -> (Vec<SelectionDiff>, bool) {
    // a batch as the heads it folds into (a call that cannot fold chose nothing to compare)
    let folded = moba.fold(spec).unwrap_or_else(|_| spec.clone());
    let spec = &folded;
    let (q, k) = crate::contract::reference::encoded(spec, q, k)
        .unwrap_or_else(|| (q.iter().map(|&x| x as f64).collect(), k.iter().map(|&x| x as f64).collect()));
    let means = block_means_f64(spec, moba, &k);
    let n = spec.shape.n;
    diff_choices(n, moba.topk, oracle, other, tol, |row| {
        // every block before the row's own has a score; the own block is forced
        gates_f64(spec, moba, &q, &means, row / n, row % n).into_iter().map(Some).collect()
    })
}

/// The rows (`n` per head) where two choices of `topk`-entry lists differ, and whether
/// every difference is a near-tie: `scores(row)` gives each block's f64 score (`None` for a
/// block that is not chosen by score — forced or never eligible); a block one list holds and
/// the other does not is a near-tie when its score is within `tol` (relative to the row's
/// largest score magnitude) of the oracle's weakest chosen score.
pub(crate) fn diff_choices(
    n: usize,
    topk: usize,
    oracle: &[u32],
    other: &[u32],
    tol: f64,
    scores: impl Fn(usize) -> Vec<Option<f64>>,
) -> (Vec<SelectionDiff>, bool) {
    let set = |l: &[u32]| {
        let mut v: Vec<u32> = l.iter().copied().filter(|&b| b != NONE).collect();
        v.sort_unstable();
        v
    };
    let mut diffs = Vec::new();
    let mut all_ties = true;
    for (row, (a, b)) in oracle.chunks_exact(topk).zip(other.chunks_exact(topk)).enumerate() {
        let (sa, sb) = (set(a), set(b));
        if sa == sb {
            continue;
        }
        let scores = scores(row);
        let score = |x: u32| scores.get(x as usize).copied().flatten();
        let scale = scores.iter().flatten().fold(0f64, |m, g| m.max(g.abs())).max(1e-30);
        // the oracle's weakest block chosen by score
        let cut = sa.iter().filter_map(|&x| score(x)).reduce(f64::min);
        let near = |x: u32| match (cut, score(x)) {
            (Some(c), Some(g)) => (g - c).abs() <= tol * scale,
            _ => false,
        };
        all_ties &= sa.iter().chain(&sb).filter(|x| !(sa.contains(x) && sb.contains(x))).all(|&x| near(x));
        diffs.push((row / n, row % n, sa, sb));
    }
    (diffs, all_ties)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_check() {
        assert_eq!(Moba::parse("block=64, topk=3").unwrap(), Moba { block: 64, topk: 3 });
        for bad in ["block=64", "topk=2", "block=x,topk=2", "block=4,topk=2,block=5", "size=4,topk=2"] {
            assert!(Moba::parse(bad).is_err(), "{bad}");
        }
        let shape = AttnShape::mha(1, 2, 10, 10, 4);
        assert!(Moba { block: 0, topk: 2 }.check(&shape).is_err());
        assert!(Moba { block: 4, topk: 0 }.check(&shape).is_err());
        assert!(Moba { block: 4, topk: MAX_TOPK + 1 }.check(&shape).is_err());
        assert!(Moba { block: 4, topk: 2 }.check(&AttnShape::mha(2, 2, 10, 10, 4)).is_err());
    }

    /// A hand-made case: one head, D = 1, B = 2; keys' block means 1, 3, -1, 2 (blocks 0..4),
    /// query 1 at the last position (block 4): scores 1, 3, -1, 2 → top 2 = blocks 1, 3.
    #[test]
    fn selection_by_hand() {
        let spec = AttnSpec::new(AttnShape::mha(1, 1, 1, 9, 1));
        let k = [0.0, 2.0, 3.0, 3.0, -2.0, 0.0, 2.0, 2.0, 5.0];
        let q = [1.0];
        let moba = Moba { block: 2, topk: 3 };
        assert_eq!(moba_select_f64(&spec, &moba, &q, &k).unwrap(), vec![4, 1, 3]);
        // ties to the lower index: blocks 0 and 1 both score 1
        let k = [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0];
        let moba = Moba { block: 2, topk: 2 };
        assert_eq!(moba_select_f64(&spec, &moba, &q, &k).unwrap(), vec![4, 0]);
        // fewer earlier blocks than k - 1: all of them, then NONE
        let spec = AttnSpec::new(AttnShape::mha(1, 1, 1, 3, 1));
        let moba = Moba { block: 2, topk: 4 };
        assert_eq!(moba_select_f64(&spec, &moba, &q, &k[..3]).unwrap(), vec![1, 0, NONE, NONE]);
    }

    /// The spec built from a choice: causal, and key j visible iff its block was chosen.
    #[test]
    fn spec_from_a_choice() {
        let base = AttnSpec::new(AttnShape::mha(1, 1, 3, 8, 1));
        let moba = Moba { block: 2, topk: 2 };
        // rows at positions 5, 6, 7: own blocks 2, 3, 3
        let selected = [2, 0, 3, 1, 3, NONE];
        let spec = moba.spec(&base, &selected).unwrap();
        let vis = |i: usize| (0..8).filter(|&j| spec.visible(0, i, j)).collect::<Vec<_>>();
        assert_eq!(vis(0), vec![0, 1, 4, 5]);
        assert_eq!(vis(1), vec![2, 3, 6]);
        assert_eq!(vis(2), vec![6, 7]);
        assert!(moba.spec(&base, &selected[..4]).is_err());
        assert!(moba.spec(&base, &[9, 0, 3, 1, 3, NONE]).is_err());
    }
}
