//! Sparse attention patterns as data (`docs/DESIGN.md` §1, "further patterns").
//!
//! Every pattern is a predicate on `(h, i, j)` — query head, query row, key — plus a tile
//! classifier that says, for a rectangle of rows × keys, whether no pair, some pairs or every
//! pair is visible. Patterns compose with [`Mask::and`] / [`Mask::or`] (like FlexAttention's
//! `and_masks` / `or_masks`). An [`AttnSpec`](crate::AttnSpec)'s `mask` is ANDed with its
//! causal/window band, which kernels evaluate in-kernel.
//!
//! Positions follow the contract: query row `i` sits at `p_i = (M − N) + i`, key `j` at `j`.
//! Rules stated "by position" (global tokens, segments, BigBird) use `p_i`; the explicit block
//! mask is indexed by `(i / Bs, j / Bs)` like the contract's block-mask tensor.

use std::ops::Range;
use std::sync::Arc;

use crate::contract::shape::{AttnShape, UNBOUNDED, Window};
use crate::error::{Error, Result};

/// How much of a tile a pattern leaves visible.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage {
    /// No pair of the tile is visible.
    Empty,
    /// Some pairs are visible and some not (also the answer where a composition is unsure).
    Partial,
    /// Every pair of the tile is visible.
    Full,
}

impl Coverage {
    fn and(self, o: Self) -> Self {
        use Coverage::*;
        match (self, o) {
            (Empty, _) | (_, Empty) => Empty,
            (Full, Full) => Full,
            _ => Partial,
        }
    }
    fn or(self, o: Self) -> Self {
        use Coverage::*;
        match (self, o) {
            (Full, _) | (_, Full) => Full,
            (Empty, Empty) => Empty,
            _ => Partial,
        }
    }
    fn from_counts(visible: u64, total: u64) -> Self {
        if visible == 0 {
            Coverage::Empty
        } else if visible == total {
            Coverage::Full
        } else {
            Coverage::Partial
        }
    }
}

/// A grid of `row_bs × bs` blocks (rows × keys), nonzero = the block may be visible. Rows are
/// query indices (explicit block masks; one row each for a per-query selection such as
/// MoBA's, `row_bs = 1`) or query positions (BigBird); one layer per head or shared.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockGrid {
    /// Description for [`Mask::describe`] and error messages.
    pub label: String,
    /// Block side along the keys (and along the rows unless `row_bs` says otherwise), in tokens.
    pub bs: usize,
    /// Block side along the rows, in query rows or positions.
    pub row_bs: usize,
    /// 1 (shared) or H.
    pub heads: usize,
    /// Block rows per head: blocks of query rows, or of query positions when
    /// `rows_are_positions`.
    pub rows: usize,
    /// Block columns per head: blocks of keys.
    pub cols: usize,
    /// Rows index query positions `p_i / bs` (BigBird) rather than query rows `i / bs`
    /// (explicit block mask).
    pub rows_are_positions: bool,
    /// `[heads, rows, cols]`, row-major; `true` = the block may be visible.
    pub cells: Vec<bool>,
    /// Inclusive 2-D prefix sums per head, `(rows+1)·(cols+1)` each.
    prefix: Vec<u32>,
}

impl BlockGrid {
    /// The grid with its prefix sums; errors when `bs` is 0 or `cells` does not hold
    /// `heads · rows · cols` values.
    pub fn new(
        label: String,
        bs: usize,
        heads: usize,
        rows: usize,
        cols: usize,
        rows_are_positions: bool,
        cells: Vec<bool>,
    ) -> Result<Self> {
        if bs == 0 {
            return Err(Error::Invalid("block size must be at least 1".into()));
        }
        if cells.len() != heads * rows * cols {
            return Err(Error::Length {
                what: "block grid".into(),
                got: cells.len(),
                shape: vec![heads, rows, cols],
                expected: heads * rows * cols,
            });
        }
        let (r1, c1) = (rows + 1, cols + 1);
        let mut prefix = vec![0u32; heads * r1 * c1];
        for h in 0..heads {
            let p = &mut prefix[h * r1 * c1..(h + 1) * r1 * c1];
            for r in 0..rows {
                for c in 0..cols {
                    let v = cells[(h * rows + r) * cols + c] as u32;
                    p[(r + 1) * c1 + c + 1] = v + p[r * c1 + c + 1] + p[(r + 1) * c1 + c] - p[r * c1 + c];
                }
            }
        }
        Ok(Self { label, bs, row_bs: bs, heads, rows, cols, rows_are_positions, cells, prefix })
    }

    /// A grid with one row per query row (`row_bs = 1`) and `bs` keys per column: a selection
    /// each query made for itself (MoBA's blocks), `cells` `[heads, rows, cols]`.
    pub fn per_row(
        label: String,
        bs: usize,
        heads: usize,
        rows: usize,
        cols: usize,
        cells: Vec<bool>,
    ) -> Result<Self> {
        let mut g = Self::new(label, bs, heads, rows, cols, false, cells)?;
        g.row_bs = 1;
        Ok(g)
    }

    fn layer(&self, h: usize) -> usize {
        if self.heads == 1 { 0 } else { h }
    }

    fn row_of(&self, i: usize, q_offset: i64) -> Option<usize> {
        let r = if self.rows_are_positions { q_offset + i as i64 } else { i as i64 };
        (r >= 0).then(|| r as usize / self.row_bs).filter(|&r| r < self.rows)
    }

    fn get(&self, h: usize, i: usize, j: usize, q_offset: i64) -> bool {
        match self.row_of(i, q_offset) {
            Some(r) => self.cells[(self.layer(h) * self.rows + r) * self.cols + j / self.bs],
            None => false,
        }
    }

    /// Nonzero cells in rows `r0..r1`, cols `c0..c1`.
    fn count(&self, h: usize, r0: usize, r1: usize, c0: usize, c1: usize) -> u64 {
        let c1w = self.cols + 1;
        let p = &self.prefix[self.layer(h) * (self.rows + 1) * c1w..];
        (p[r1 * c1w + c1] + p[r0 * c1w + c0] - p[r0 * c1w + c1] - p[r1 * c1w + c0]) as u64
    }

    fn coverage(&self, h: usize, rows: &Range<usize>, keys: &Range<usize>, q_offset: i64) -> Coverage {
        let first = if self.rows_are_positions { q_offset + rows.start as i64 } else { rows.start as i64 };
        let last = first + rows.len() as i64 - 1;
        if last < 0 {
            return Coverage::Empty;
        }
        let some_rows_outside = first < 0;
        let r0 = first.max(0) as usize / self.row_bs;
        let r1 = (last as usize / self.row_bs + 1).min(self.rows);
        let c0 = keys.start / self.bs;
        let c1 = ((keys.end - 1) / self.bs + 1).min(self.cols);
        if r0 >= r1 || c0 >= c1 {
            return Coverage::Empty;
        }
        let cov = Coverage::from_counts(self.count(h, r0, r1, c0, c1), ((r1 - r0) * (c1 - c0)) as u64);
        if some_rows_outside && cov == Coverage::Full { Coverage::Partial } else { cov }
    }
}

/// BigBird's block-sparse pattern, in blocks of `block` tokens by position: a query block sees
/// the first `global` blocks, its neighbours within `window` blocks on each side, and `random`
/// further blocks drawn deterministically from `seed`; the first `global` blocks see all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BigBird {
    /// Leading blocks that see, and are seen by, every block.
    pub global: usize,
    /// Neighbouring blocks visible on each side of a query's own block.
    pub window: usize,
    /// Further blocks per query block, drawn from those not yet visible (fewer if fewer remain).
    pub random: usize,
    /// Block side, in tokens.
    pub block: usize,
    /// Seed of the random blocks: the same seed gives the same grid.
    pub seed: u64,
}

/// The most cells a BigBird block grid may have: 2³⁰ (1 GiB; 1M tokens in blocks of 64 take
/// 2²⁸).
pub(crate) const MAX_GRID_CELLS: u64 = 1 << 30;

impl BigBird {
    /// Parses `global=G,window=W,random=R,block=B,seed=S` (any order; seed optional).
    pub fn parse(text: &str) -> Result<Self> {
        let mut bb = BigBird { global: 1, window: 1, random: 2, block: 64, seed: 0 };
        let mut seen: Vec<String> = Vec::new();
        for part in text.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| Error::Parse {
                what: "bigbird",
                text: text.to_string(),
                expected: "key=value pairs, e.g. global=1,window=1,random=2,block=64,seed=0",
            })?;
            let v: u64 = v.trim().parse().map_err(|_| Error::Parse {
                what: "bigbird",
                text: part.to_string(),
                expected: "a non-negative integer value",
            })?;
            if seen.iter().any(|s| s == k.trim()) {
                return Err(Error::Invalid(format!("bigbird: `{}` given twice in `{text}`", k.trim())));
            }
            seen.push(k.trim().to_string());
            let v =
                usize::try_from(v).map_err(|_| Error::Invalid(format!("bigbird: {part} is too large")))?;
            match k.trim() {
                "global" => bb.global = v,
                "window" => bb.window = v,
                "random" => bb.random = v,
                "block" => bb.block = v,
                "seed" => bb.seed = v as u64,
                other => {
                    return Err(Error::Invalid(format!(
                        "bigbird: unknown key `{other}` (global, window, random, block, seed)"
                    )));
                }
            }
        }
        if bb.block == 0 {
            return Err(Error::Invalid("bigbird: block must be at least 1".into()));
        }
        Ok(bb)
    }

    /// The block grid over positions `0..m` (queries by position, keys by index).
    pub fn grid(&self, m: usize) -> Result<BlockGrid> {
        let nb = m.div_ceil(self.block);
        // the grid is dense (nb² cells, one byte each; its time is nb²): bounded before
        // anything is allocated
        match nb.checked_mul(nb) {
            Some(cells) if cells as u64 <= MAX_GRID_CELLS => {}
            _ => {
                return Err(Error::OutOfRange {
                    what: format!(
                        "bigbird: cells of the block grid ({nb}² blocks of {} tokens over {m} keys; larger blocks lower it)",
                        self.block
                    ),
                    value: (nb as u64).saturating_mul(nb as u64),
                    min: 1,
                    max: MAX_GRID_CELLS,
                });
            }
        }
        let mut cells = vec![false; nb * nb];
        for qb in 0..nb {
            let row = &mut cells[qb * nb..(qb + 1) * nb];
            for (kb, cell) in row.iter_mut().enumerate() {
                *cell = qb < self.global || kb < self.global || qb.abs_diff(kb) <= self.window;
            }
            // Random blocks: a seeded partial Fisher–Yates over the blocks not yet visible.
            let mut free: Vec<usize> = (0..nb).filter(|&kb| !row[kb]).collect();
            let mut state = self.seed ^ (qb as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            for t in 0..self.random.min(free.len()) {
                state = splitmix64(state);
                let pick = t + (state % (free.len() - t) as u64) as usize;
                free.swap(t, pick);
                row[free[t]] = true;
            }
        }
        let label = format!(
            "bigbird(global={},window={},random={},block={},seed={})",
            self.global, self.window, self.random, self.block, self.seed
        );
        BlockGrid::new(label, self.block, 1, nb, nb, true, cells)
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A composable visibility rule.
#[derive(Clone, Debug, PartialEq)]
pub enum Mask {
    /// `j <= p_i`.
    Causal,
    /// `p_i − L <= j <= p_i + R`.
    Window(Window),
    /// The first `G` positions see every key and are seen by every query.
    Global(usize),
    /// Packed documents: one non-decreasing segment id per position `0..M`; a query sees only
    /// keys of its own segment.
    Segments(Arc<Vec<u32>>),
    /// Block-level visibility (explicit block mask or BigBird).
    Blocks(Arc<BlockGrid>),
    /// Visible where every member is.
    And(Vec<Mask>),
    /// Visible where any member is.
    Or(Vec<Mask>),
    /// A mask of a longer call seen from a slice of it: query row `i` is the inner mask's row
    /// `rows + i`, key `j` its key `keys + j` (a ring-attention pair: a Q chunk against a K
    /// chunk at their global positions). Validated as the whole call's mask.
    Shifted {
        /// The whole call's mask.
        inner: Arc<Mask>,
        /// Row of the slice's first query in the whole call.
        rows: usize,
        /// The slice's first key in the whole call.
        keys: usize,
    },
}

impl Mask {
    /// `self` AND `other`, appended to `self` when it is already a [`Mask::And`].
    pub fn and(self, other: Mask) -> Mask {
        match self {
            Mask::And(mut v) => {
                v.push(other);
                Mask::And(v)
            }
            m => Mask::And(vec![m, other]),
        }
    }
    /// `self` OR `other`, appended to `self` when it is already a [`Mask::Or`].
    pub fn or(self, other: Mask) -> Mask {
        match self {
            Mask::Or(mut v) => {
                v.push(other);
                Mask::Or(v)
            }
            m => Mask::Or(vec![m, other]),
        }
    }

    /// The explicit block mask `[H or 1, ceil(N/Bs), ceil(M/Bs)]`, nonzero = visible tile.
    pub fn block_mask(shape: &AttnShape, bs: usize, dims: &[usize], data: &[f32]) -> Result<Mask> {
        if bs == 0 {
            return Err(Error::Invalid("block mask: the block size must be at least 1".into()));
        }
        let (rows, cols) = (shape.n.div_ceil(bs), shape.m.div_ceil(bs));
        let heads = match dims {
            [h, r, c] if *r == rows && *c == cols && (*h == 1 || *h == shape.heads) => *h,
            [r, c] if *r == rows && *c == cols => 1,
            _ => {
                return Err(Error::Shape(format!(
                    "block mask has shape {dims:?}; with N={}, M={}, block size {bs} and H={} it must be [1 or {}, {rows}, {cols}]",
                    shape.n, shape.m, shape.heads, shape.heads
                )));
            }
        };
        let cells = data.iter().map(|&x| x != 0.0).collect();
        Ok(Mask::Blocks(Arc::new(BlockGrid::new(
            format!("block mask [{heads},{rows},{cols}] Bs={bs}"),
            bs,
            heads,
            rows,
            cols,
            false,
            cells,
        )?)))
    }

    /// BigBird's pattern over `m` positions as a [`Mask::Blocks`] (see [`BigBird::grid`]).
    pub fn bigbird(bb: &BigBird, m: usize) -> Result<Mask> {
        Ok(Mask::Blocks(Arc::new(bb.grid(m)?)))
    }

    /// `self` (a mask of a whole call) seen from the slice of it whose first query is row
    /// `rows` and first key is `keys` ([`Mask::Shifted`]).
    pub fn shifted(self, rows: usize, keys: usize) -> Mask {
        match self {
            Mask::Shifted { inner, rows: r, keys: k } => {
                Mask::Shifted { inner, rows: r + rows, keys: k + keys }
            }
            m => Mask::Shifted { inner: Arc::new(m), rows, keys },
        }
    }

    /// Whether the mask differs between heads.
    pub fn per_head(&self) -> bool {
        match self {
            Mask::Blocks(g) => g.heads > 1,
            Mask::And(v) | Mask::Or(v) => v.iter().any(Mask::per_head),
            Mask::Shifted { inner, .. } => inner.per_head(),
            _ => false,
        }
    }

    /// Checks the mask's own sizes against the problem.
    pub fn validate(&self, shape: &AttnShape) -> Result<()> {
        match self {
            Mask::Window(w) => w.check(),
            Mask::Global(g) if *g as u64 >= UNBOUNDED as u64 => Err(Error::OutOfRange {
                what: "global tokens".into(),
                value: *g as u64,
                min: 0,
                max: UNBOUNDED as u64 - 1,
            }),
            Mask::Segments(s) => {
                if s.len() != shape.m {
                    return Err(Error::Length {
                        what: "segment ids (one per key position)".into(),
                        got: s.len(),
                        shape: vec![shape.m],
                        expected: shape.m,
                    });
                }
                if let Some(w) = s.windows(2).position(|w| w[1] < w[0]) {
                    return Err(Error::Invalid(format!(
                        "segment ids must be non-decreasing (packed documents); position {} has {} after {}",
                        w + 1,
                        s[w + 1],
                        s[w]
                    )));
                }
                Ok(())
            }
            Mask::Blocks(g) => {
                if g.heads != 1 && g.heads != shape.heads {
                    return Err(Error::Shape(format!(
                        "{} has {} heads; 1 or {} expected",
                        g.label, g.heads, shape.heads
                    )));
                }
                let rows_needed = if g.rows_are_positions { shape.m } else { shape.n };
                if g.rows * g.row_bs < rows_needed || g.cols * g.bs < shape.m {
                    return Err(Error::Shape(format!(
                        "{} covers {}×{} tokens, the problem needs {}×{}",
                        g.label,
                        g.rows * g.row_bs,
                        g.cols * g.bs,
                        rows_needed,
                        shape.m
                    )));
                }
                Ok(())
            }
            Mask::And(v) | Mask::Or(v) => v.iter().try_for_each(|m| m.validate(shape)),
            Mask::Causal | Mask::Global(_) | Mask::Shifted { .. } => Ok(()),
        }
    }

    /// Whether key `j` is visible from query row `i` of head `h`.
    pub fn visible(&self, h: usize, i: usize, j: usize, q_offset: i64) -> bool {
        let p = q_offset + i as i64;
        let j_i = j as i64;
        match self {
            Mask::Causal => j_i <= p,
            Mask::Window(w) => {
                w.left.is_none_or(|l| j_i >= p - l as i64) && w.right.is_none_or(|r| j_i <= p + r as i64)
            }
            Mask::Global(g) => p < *g as i64 || j < *g,
            Mask::Segments(s) => p >= 0 && s[p as usize] == s[j],
            Mask::Blocks(g) => g.get(h, i, j, q_offset),
            Mask::And(v) => v.iter().all(|m| m.visible(h, i, j, q_offset)),
            Mask::Or(v) => v.iter().any(|m| m.visible(h, i, j, q_offset)),
            // the same position: q_offset + i relative to key j is (q_offset + keys − rows) +
            // (rows + i) relative to key keys + j
            Mask::Shifted { inner, rows, keys } => {
                inner.visible(h, i + rows, j + keys, q_offset + *keys as i64 - *rows as i64)
            }
        }
    }

    /// Coverage of the tile `rows × keys` (non-empty ranges, keys inside `0..M`) for head `h`.
    /// Exact for leaves; conservative (`Partial` where unsure) for compositions.
    pub fn coverage(&self, h: usize, rows: &Range<usize>, keys: &Range<usize>, q_offset: i64) -> Coverage {
        let p0 = q_offset + rows.start as i64;
        let p1 = q_offset + rows.end as i64 - 1;
        let (j0, j1) = (keys.start as i64, keys.end as i64 - 1);
        match self {
            Mask::Causal => band_coverage(p0, p1, j0, j1, 0, i64::MAX),
            Mask::Window(w) => band_coverage(
                p0,
                p1,
                j0,
                j1,
                w.right.map_or(i64::MIN, |r| -(r as i64)),
                w.left.map_or(i64::MAX, |l| l as i64),
            ),
            Mask::Global(g) => {
                let g = *g as i64;
                if p1 < g || j1 < g {
                    Coverage::Full
                } else if p0 >= g && j0 >= g {
                    Coverage::Empty
                } else {
                    Coverage::Partial
                }
            }
            Mask::Segments(s) => {
                if p1 < 0 {
                    return Coverage::Empty;
                }
                let (qs0, qs1) = (s[p0.max(0) as usize], s[p1 as usize]);
                let (ks0, ks1) = (s[keys.start], s[keys.end - 1]);
                if qs1 < ks0 || ks1 < qs0 {
                    Coverage::Empty
                } else if p0 >= 0 && qs0 == qs1 && ks0 == ks1 && qs0 == ks0 {
                    Coverage::Full
                } else {
                    Coverage::Partial
                }
            }
            Mask::Blocks(g) => g.coverage(h, rows, keys, q_offset),
            Mask::And(v) => {
                v.iter().fold(Coverage::Full, |acc, m| acc.and(m.coverage(h, rows, keys, q_offset)))
            }
            Mask::Or(v) => {
                v.iter().fold(Coverage::Empty, |acc, m| acc.or(m.coverage(h, rows, keys, q_offset)))
            }
            Mask::Shifted { inner, rows: r, keys: k } => inner.coverage(
                h,
                &(rows.start + r..rows.end + r),
                &(keys.start + k..keys.end + k),
                q_offset + *k as i64 - *r as i64,
            ),
        }
    }

    /// A short description, e.g. `causal & global(4)`.
    pub fn describe(&self) -> String {
        match self {
            Mask::Causal => "causal".into(),
            Mask::Window(w) => {
                format!("window({},{})", w.left.map_or(-1, |x| x as i64), w.right.map_or(-1, |x| x as i64))
            }
            Mask::Global(g) => format!("global({g})"),
            Mask::Segments(s) => format!("segments({})", s.last().map_or(0, |&x| x as usize + 1)),
            Mask::Blocks(g) => g.label.clone(),
            Mask::And(v) => v.iter().map(Mask::describe).collect::<Vec<_>>().join(" & "),
            Mask::Or(v) => format!("({})", v.iter().map(Mask::describe).collect::<Vec<_>>().join(" | ")),
            Mask::Shifted { inner, rows, keys } => {
                format!("{} from row {rows}, key {keys}", inner.describe())
            }
        }
    }
}

/// Coverage of a tile by the band `lo <= p − j <= hi`.
pub(crate) fn band_coverage(p0: i64, p1: i64, j0: i64, j1: i64, lo: i64, hi: i64) -> Coverage {
    let (d_min, d_max) = (p0 - j1, p1 - j0);
    if d_max < lo || d_min > hi {
        Coverage::Empty
    } else if d_min >= lo && d_max <= hi {
        Coverage::Full
    } else {
        Coverage::Partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(shape: &AttnShape) -> Vec<Mask> {
        let bb = BigBird { global: 1, window: 1, random: 2, block: 5, seed: 7 };
        let seg: Vec<u32> = (0..shape.m).map(|p| (p / 9) as u32 + (p > 20) as u32).collect();
        let cells: Vec<f32> = (0..2 * shape.n.div_ceil(4) * shape.m.div_ceil(4))
            .map(|x| ((x * 7) % 3 == 0) as u8 as f32)
            .collect();
        vec![
            Mask::Causal,
            Mask::Window(Window::new(4, 2)),
            Mask::Global(3),
            Mask::Segments(Arc::new(seg)),
            Mask::bigbird(&bb, shape.m).unwrap(),
            Mask::block_mask(shape, 4, &[2, shape.n.div_ceil(4), shape.m.div_ceil(4)], &cells).unwrap(),
        ]
    }

    /// A shifted mask is the whole mask on the slice: every element, and tile coverage
    /// exactly as the whole mask's on the same tile.
    #[test]
    fn shifted_masks_see_the_whole_call_from_a_slice() {
        let shape = AttnShape { batch: 1, heads: 2, kv_heads: 2, n: 30, m: 37, head_dim: 4 };
        let q_offset = shape.m as i64 - shape.n as i64;
        for mask in leaves(&shape) {
            for (r0, k0) in [(0, 0), (7, 11), (20, 3)] {
                let part = mask.clone().shifted(r0, k0);
                // the slice's rows sit at the same positions relative to its first key
                let q_part = q_offset + r0 as i64 - k0 as i64;
                for h in 0..2 {
                    for i in 0..shape.n - r0 {
                        for j in 0..shape.m - k0 {
                            assert_eq!(
                                part.visible(h, i, j, q_part),
                                mask.visible(h, i + r0, j + k0, q_offset)
                            );
                        }
                    }
                    let (rows, keys) = (1..5, 2..9);
                    assert_eq!(
                        part.coverage(h, &rows, &keys, q_part),
                        mask.coverage(
                            h,
                            &(rows.start + r0..rows.end + r0),
                            &(keys.start + k0..keys.end + k0),
                            q_offset
                        ),
                        "{}",
                        part.describe()
                    );
                }
            }
        }
    }

    /// Tile coverage agrees with the element predicate: exact for leaves, and never claims
    /// Empty or Full wrongly for compositions.
    #[test]
    fn coverage_agrees_with_predicate() {
        for (n, m) in [(23, 37), (37, 23), (30, 30)] {
            let shape = AttnShape { batch: 1, heads: 2, kv_heads: 2, n, m, head_dim: 4 };
            let ls = leaves(&shape);
            let mut masks = ls.clone();
            masks.push(ls[0].clone().and(ls[2].clone()));
            masks.push(ls[1].clone().or(ls[2].clone()).or(ls[3].clone()));
            masks.push(ls[4].clone().and(ls[5].clone()));
            let q_offset = m as i64 - n as i64;
            for (idx, mask) in masks.iter().enumerate() {
                mask.validate(&shape).unwrap();
                let leaf = idx < ls.len();
                for h in 0..2 {
                    for (br, bc) in [(4, 4), (3, 7), (8, 5)] {
                        for r0 in (0..n).step_by(br) {
                            for c0 in (0..m).step_by(bc) {
                                let rows = r0..(r0 + br).min(n);
                                let keys = c0..(c0 + bc).min(m);
                                let vis = rows
                                    .clone()
                                    .flat_map(|i| keys.clone().map(move |j| (i, j)))
                                    .filter(|&(i, j)| mask.visible(h, i, j, q_offset))
                                    .count() as u64;
                                let truth = Coverage::from_counts(vis, (rows.len() * keys.len()) as u64);
                                let got = mask.coverage(h, &rows, &keys, q_offset);
                                if leaf {
                                    assert_eq!(
                                        got,
                                        truth,
                                        "{} h={h} rows={rows:?} keys={keys:?} n={n} m={m}",
                                        mask.describe()
                                    );
                                } else {
                                    assert!(
                                        got == truth || got == Coverage::Partial,
                                        "{} h={h} rows={rows:?} keys={keys:?}: {got:?} vs {truth:?}",
                                        mask.describe()
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn bigbird_rows_have_global_window_and_random_blocks() {
        let bb = BigBird { global: 1, window: 1, random: 2, block: 4, seed: 3 };
        let g = bb.grid(64).unwrap();
        assert_eq!(g.rows, 16);
        for qb in 1..16 {
            let row = &g.cells[qb * 16..(qb + 1) * 16];
            let win = (qb.saturating_sub(1)..=(qb + 1).min(15)).count();
            let expected = 1 + win - (qb == 1) as usize + 2; // global block 0 overlaps qb=1's window
            assert_eq!(row.iter().filter(|&&c| c).count(), expected, "qb {qb}");
        }
        assert_eq!(bb.grid(64).unwrap(), g, "deterministic from the seed");
        assert_ne!(BigBird { seed: 4, ..bb }.grid(64).unwrap().cells, g.cells);
    }

    #[test]
    fn parse_and_validate_errors() {
        assert!(BigBird::parse("global=1,window=2,random=0,block=16,seed=9").is_ok());
        assert!(BigBird::parse("globl=1").is_err() && BigBird::parse("block=0").is_err());
        let shape = AttnShape::mha(1, 2, 8, 8, 4);
        assert!(Mask::Segments(Arc::new(vec![0, 0, 1, 0, 1, 1, 1, 1])).validate(&shape).is_err());
        assert!(Mask::block_mask(&shape, 4, &[3, 2, 2], &[0.0; 12]).is_err());
    }
}
