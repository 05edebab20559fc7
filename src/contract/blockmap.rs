//! Block maps: for each query tile, the key tiles a kernel must visit (CSR), each tagged
//! *full* (every pair visible: no per-element mask work) or *partial*.
//!
//! Kernels never decide which tiles to skip: they walk the list built here, so work is
//! proportional to the listed tiles. The causal/window band is re-checked in-kernel on
//! partial tiles; where the sparse [`Mask`](crate::contract::mask::Mask) only partly covers a tile,
//! the map carries that tile's per-row visibility bits (`BR` words of `BC ≤ 32` bits), so any
//! pattern — at any block size, aligned with the kernel's tiles or not — stays exact.

use crate::contract::mask::{Coverage, band_coverage};
use crate::contract::spec::AttnSpec;
use crate::error::{Error, Result};

/// Entry flag: every (row, key) pair of the tile is visible and the tile lies inside M.
pub const FULL: u32 = 1 << 31;
/// Mask-index value for "no visibility bits: the sparse mask covers the whole tile".
pub const NO_BITS: u32 = u32::MAX;
/// Widest key tile a bitmask word can describe.
pub(crate) const MAX_BC: usize = 32;

/// A CSR list of key tiles per query tile (per head when the mask differs between heads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMap {
    /// Query rows per tile.
    pub br: usize,
    /// Keys per tile.
    pub bc: usize,
    /// Query tiles: `ceil(N / br)`.
    pub n_qtiles: usize,
    /// Key tiles: `ceil(M / bc)`.
    pub n_ktiles: usize,
    /// Rows of the map per head: 1 when all heads share it.
    pub heads: usize,
    /// `heads * n_qtiles + 1` offsets into `entries`.
    pub row_ptr: Vec<u32>,
    /// `key_tile | FULL` per visited tile.
    pub entries: Vec<u32>,
    /// Per entry: offset of its visibility words in `bits`, or [`NO_BITS`].
    pub mask_index: Vec<u32>,
    /// `br` words per partially masked tile; bit `c` of word `r` = key `c` visible from row `r`.
    pub bits: Vec<u32>,
    /// Exactly visible (row, key) pairs, summed over the map's heads.
    pub visible: u64,
}

/// The most tiles a sparse mask is evaluated on when a map is built (its time grows with
/// them): 2³⁰, under a minute of CPU (a 1M-token BigBird map at 64×32 tiles evaluates 2²⁹).
pub(crate) const MAX_MASKED_TILES: u64 = 1 << 30;

impl BlockMap {
    /// The map of `spec`'s band and sparse mask for `br × bc` tiles (see
    /// [`BlockMap::build_within`]; no byte budget beyond the u32 indexing limit).
    pub fn build(spec: &AttnSpec, br: usize, bc: usize) -> Result<Self> {
        Self::build_within(spec, br, bc, u64::MAX)
    }

    /// [`BlockMap::build`] holding at most `budget` bytes of host memory: the map grows
    /// with the tiles it lists (time with the tiles the band allows), and a map that would
    /// outgrow the budget — or the u32 words a kernel indexes it with — is an error before
    /// it does, naming the bytes it would need (extrapolated from the query tiles built).
    pub fn build_within(spec: &AttnSpec, br: usize, bc: usize, budget: u64) -> Result<Self> {
        if br == 0 || bc == 0 || bc > MAX_BC {
            return Err(Error::Config {
                kernel: "block map",
                config: format!("{br}×{bc} tiles"),
                reason: format!("need br ≥ 1 and 1 ≤ bc ≤ {MAX_BC}"),
            });
        }
        let (n, m) = (spec.shape.n, spec.shape.m);
        let (lo, hi) = spec.band();
        let q_off = spec.q_offset();
        let mask = spec.mask.as_ref();
        let heads = if mask.is_some_and(|mk| mk.per_head()) { spec.shape.heads } else { 1 };
        let n_qtiles = n.div_ceil(br);
        let n_ktiles = m.div_ceil(bc);
        let mut map = Self {
            br,
            bc,
            n_qtiles,
            n_ktiles,
            heads,
            row_ptr: vec![0],
            entries: Vec::new(),
            mask_index: Vec::new(),
            bits: Vec::new(),
            visible: 0,
        };
        // The key tiles the band allows from any row of query tile `qt` (its positions
        // p_first ..= p_last see keys p_first − hi ..= p_last − lo); empty when none.
        let band_ktiles = |qt: usize| -> std::ops::Range<usize> {
            let rows = qt * br..((qt + 1) * br).min(n);
            let j_min = (q_off + rows.start as i64 - hi).max(0);
            let j_max = (q_off + rows.end as i64 - 1 - lo).min(m as i64 - 1);
            if j_min > j_max { 0..0 } else { j_min as usize / bc..j_max as usize / bc + 1 }
        };
        let too_big = |words: u64, listed: u64, built: u64| -> Option<Error> {
            let total = (heads * n_qtiles) as u64;
            // extrapolated from the query tiles built so far to all of them
            let whole =
                |x: u64| (x as u128 * total as u128 / built.max(1) as u128).min(u64::MAX as u128) as u64;
            let what = |listed: u64| {
                format!("the block map of {br}×{bc} tiles ({listed} tiles listed over {total} query tiles)")
            };
            if words >= u32::MAX as u64 {
                return Some(Error::OutOfRange {
                    what: format!("{}: u32 words (kernels index the map with u32)", what(listed)),
                    value: whole(words),
                    min: 0,
                    max: u32::MAX as u64 - 1,
                });
            }
            (words * 4 > budget).then(|| Error::HostMemory {
                what: what(listed),
                bytes: whole(words.saturating_mul(4)),
                available: budget,
            })
        };
        // Without a sparse mask the band's tiles are the map: count them (O(query tiles))
        // and refuse before allocating; with one, the checks below stop the build as it grows.
        let in_band: u64 =
            (0..n_qtiles).map(|qt| band_ktiles(qt).len() as u64).sum::<u64>().saturating_mul(heads as u64);
        if mask.is_none() {
            let words = (n_qtiles + 1) as u64 + 2 * in_band;
            if let Some(e) = too_big(words, in_band, n_qtiles as u64) {
                return Err(e);
            }
        } else if in_band > MAX_MASKED_TILES {
            // a sparse mask is evaluated on every tile the band allows: bound the work
            return Err(Error::OutOfRange {
                what: format!(
                    "tiles of {br}×{bc} a sparse mask is evaluated on ({n_qtiles} query tiles, {} heads; larger tiles or a band (causal, window) lower it)",
                    heads
                ),
                value: in_band,
                min: 0,
                max: MAX_MASKED_TILES,
            });
        }
        for h in 0..heads {
            for qt in 0..n_qtiles {
                let rows = qt * br..((qt + 1) * br).min(n);
                let (p_first, p_last) = (q_off + rows.start as i64, q_off + rows.end as i64 - 1);
                for kt in band_ktiles(qt) {
                    let keys = kt * bc..((kt + 1) * bc).min(m);
                    let band = band_coverage(p_first, p_last, keys.start as i64, keys.end as i64 - 1, lo, hi);
                    let sparse = mask.map_or(Coverage::Full, |mk| mk.coverage(h, &rows, &keys, q_off));
                    if band == Coverage::Empty || sparse == Coverage::Empty {
                        continue;
                    }
                    let full = band == Coverage::Full && sparse == Coverage::Full && keys.len() == bc;
                    let mut index = NO_BITS;
                    if let (Coverage::Partial, Some(mk)) = (sparse, mask) {
                        index = map.bits.len() as u32;
                        for r in 0..br {
                            let i = rows.start + r;
                            let word = if i < n {
                                keys.clone()
                                    .enumerate()
                                    .filter(|&(_, j)| mk.visible(h, i, j, q_off))
                                    .fold(0u32, |w, (c, _)| w | 1 << c)
                            } else {
                                0
                            };
                            map.bits.push(word);
                        }
                    }
                    map.visible += if full {
                        (rows.len() * bc) as u64
                    } else {
                        rows.clone()
                            .map(|i| keys.clone().filter(|&j| spec.visible(h, i, j)).count() as u64)
                            .sum::<u64>()
                    };
                    map.entries.push(kt as u32 | if full { FULL } else { 0 });
                    map.mask_index.push(index);
                }
                let words = (map.row_ptr.len() + 2 * map.entries.len() + map.bits.len()) as u64;
                if let Some(e) = too_big(words, map.entries.len() as u64, (h * n_qtiles + qt + 1) as u64) {
                    return Err(e);
                }
                map.row_ptr.push(map.entries.len() as u32);
            }
        }
        Ok(map)
    }

    /// Listed tiles (summed over map heads).
    pub fn visited(&self) -> usize {
        self.entries.len()
    }

    /// Visible pairs over `heads` query heads (a shared map counts once per head).
    pub fn visible_pairs(&self, heads: usize) -> u64 {
        if self.heads == 1 { self.visible * heads as u64 } else { self.visible }
    }

    /// Fraction of (query tile, key tile) pairs not visited.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.visited() as f64 / (self.heads * self.n_qtiles * self.n_ktiles) as f64
    }

    /// Entries of query tile `qt` of map head `h`.
    pub fn row(&self, h: usize, qt: usize) -> &[u32] {
        let r = h * self.n_qtiles + qt;
        &self.entries[self.row_ptr[r] as usize..self.row_ptr[r + 1] as usize]
    }

    /// The map as one u32 buffer: row pointers, entries, mask indices, bits. Returns the
    /// words and the offsets of entries, mask indices and bits.
    pub(crate) fn to_gpu_words(&self) -> (Vec<u32>, [u32; 3]) {
        let mut words = self.row_ptr.clone();
        let e = words.len() as u32;
        words.extend_from_slice(&self.entries);
        let mi = words.len() as u32;
        words.extend_from_slice(&self.mask_index);
        let b = words.len() as u32;
        words.extend_from_slice(&self.bits);
        (words, [e, mi, b])
    }

    /// The longest list of key tiles of any query tile.
    pub(crate) fn longest_row(&self) -> usize {
        self.row_ptr.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0)
    }

    /// The query tiles a kernel walking lists in passes of `pass_tiles` launches per pass: pass
    /// 0 all of them (`(u32::MAX, n_qtiles)`, "every query tile"), pass k only those whose list
    /// (in any head) is longer than k·pass_tiles, appended to `words` — returned as (offset of
    /// the list in `words`, query tiles launched). One pass when `pass_tiles` is 0.
    pub(crate) fn pass_lists(&self, pass_tiles: u32, words: &mut Vec<u32>) -> Vec<(u32, usize)> {
        let passes =
            if pass_tiles == 0 { 1 } else { self.longest_row().div_ceil(pass_tiles as usize).max(1) };
        let mut lists = vec![(u32::MAX, self.n_qtiles)];
        for k in 1..passes {
            let t = pass_tiles as usize * k;
            let active: Vec<u32> = (0..self.n_qtiles)
                .filter(|&qt| (0..self.heads).any(|h| self.row(h, qt).len() > t))
                .map(|qt| qt as u32)
                .collect();
            lists.push((words.len() as u32, active.len()));
            words.extend_from_slice(&active);
        }
        lists
    }

    /// Device bytes of the map.
    pub fn bytes(&self) -> u64 {
        4 * (self.row_ptr.len() + 2 * self.entries.len() + self.bits.len()) as u64
    }

    /// The transposed map: per (map head, key tile), the query tiles that list it, in
    /// query-tile order — what a kernel owning a key tile walks (the dK/dV backward).
    pub fn columns(&self) -> Columns {
        let cols = self.heads * self.n_ktiles;
        let mut count = vec![0u32; cols + 1];
        for h in 0..self.heads {
            for qt in 0..self.n_qtiles {
                for &e in self.row(h, qt) {
                    count[h * self.n_ktiles + (e & !FULL) as usize + 1] += 1;
                }
            }
        }
        for c in 0..cols {
            count[c + 1] += count[c];
        }
        let col_ptr = count.clone();
        let mut next = count;
        let mut entries = vec![0u32; self.entries.len()];
        let mut mask_index = vec![0u32; self.entries.len()];
        for h in 0..self.heads {
            for qt in 0..self.n_qtiles {
                let r = h * self.n_qtiles + qt;
                for t in self.row_ptr[r] as usize..self.row_ptr[r + 1] as usize {
                    let e = self.entries[t];
                    let c = h * self.n_ktiles + (e & !FULL) as usize;
                    let at = next[c] as usize;
                    next[c] += 1;
                    entries[at] = qt as u32 | (e & FULL);
                    mask_index[at] = self.mask_index[t];
                }
            }
        }
        Columns { col_ptr, entries, mask_index }
    }
}

/// A [`BlockMap`] transposed: CSC over key tiles. The visibility bits stay in the map's
/// `bits`, indexed by `mask_index` as before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Columns {
    /// `heads * n_ktiles + 1` offsets into `entries`.
    pub col_ptr: Vec<u32>,
    /// `query_tile | FULL` per listed (query tile, key tile) pair.
    pub entries: Vec<u32>,
    /// The pair's offset in [`BlockMap::bits`], or [`NO_BITS`].
    pub mask_index: Vec<u32>,
}

impl Columns {
    /// Entries of key tile `kt` of map head `h`.
    pub fn column(&self, n_ktiles: usize, h: usize, kt: usize) -> &[u32] {
        let c = h * n_ktiles + kt;
        &self.entries[self.col_ptr[c] as usize..self.col_ptr[c + 1] as usize]
    }

    /// The longest column.
    pub fn longest(&self) -> usize {
        self.col_ptr.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0)
    }
}

/// FLOP counts live beside the block map that counts sparse masks exactly, so the spec (below
/// this module) never depends on it.
impl AttnSpec {
    /// Visible (query, key) pairs summed over heads (one batch), counting the sparse mask
    /// exactly via its block map.
    pub fn visible_pairs(&self) -> u64 {
        match &self.mask {
            None => self.band_pairs() * self.shape.heads as u64,
            Some(_) => BlockMap::build(self, 64, 32).map_or(0, |m| m.visible_pairs(self.shape.heads)),
        }
    }

    /// Forward FLOPs, the standard count: `4·B·D·(visible pairs over all heads)` (two
    /// matmuls, one multiply and one add each; softmax, masking and bias not counted).
    pub fn flops(&self) -> f64 {
        let s = self.shape;
        4.0 * (s.batch * s.head_dim) as f64 * self.visible_pairs() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::spec::{AttnShape, Window};

    /// Brute force: which tiles hold a visible pair, and which are entirely visible.
    fn brute(spec: &AttnSpec, br: usize, bc: usize) -> Vec<Vec<(usize, bool)>> {
        let (n, m) = (spec.shape.n, spec.shape.m);
        (0..n.div_ceil(br))
            .map(|qt| {
                (0..m.div_ceil(bc))
                    .filter_map(|kt| {
                        let rows = qt * br..((qt + 1) * br).min(n);
                        let mut any = false;
                        let mut all = (kt + 1) * bc <= m;
                        for i in rows {
                            for j in kt * bc..(kt + 1) * bc {
                                let vis = j < m && spec.visible(0, i, j);
                                any |= vis;
                                all &= vis;
                            }
                        }
                        any.then_some((kt, all))
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn columns_transpose_the_rows() {
        let spec = AttnSpec::new(AttnShape::mha(1, 2, 50, 70, 4))
            .causal(true)
            .mask(Some(crate::contract::mask::Mask::Global(3)));
        let map = BlockMap::build(&spec, 8, 16).unwrap();
        let cols = map.columns();
        assert_eq!(cols.entries.len(), map.entries.len());
        for h in 0..map.heads {
            for kt in 0..map.n_ktiles {
                let want: Vec<u32> = (0..map.n_qtiles)
                    .flat_map(|qt| {
                        map.row(h, qt)
                            .iter()
                            .filter(move |&&e| (e & !FULL) as usize == kt)
                            .map(move |&e| qt as u32 | (e & FULL))
                    })
                    .collect();
                assert_eq!(cols.column(map.n_ktiles, h, kt), &want[..], "head {h} key tile {kt}");
            }
        }
    }

    #[test]
    fn band_map_matches_brute_force() {
        for (n, m) in [(1, 1), (7, 7), (13, 40), (40, 13), (64, 64), (100, 37)] {
            for (causal, window) in [
                (false, None),
                (true, None),
                (false, Some(Window::new(3, 0))),
                (true, Some(Window::new(5, 9))),
                (false, Some(Window::new(0, 0))),
                (false, Some(Window { left: None, right: Some(2) })),
            ] {
                let spec = AttnSpec::new(AttnShape::mha(1, 1, n, m, 4)).causal(causal).window(window);
                for (br, bc) in [(4, 8), (8, 4), (16, 16), (3, 5)] {
                    let map = BlockMap::build(&spec, br, bc).unwrap();
                    assert_eq!(map.visible, spec.band_pairs());
                    let want = brute(&spec, br, bc);
                    for (qt, row) in want.iter().enumerate() {
                        let got: Vec<(usize, bool)> =
                            map.row(0, qt).iter().map(|&e| ((e & !FULL) as usize, e & FULL != 0)).collect();
                        assert_eq!(
                            &got, row,
                            "n={n} m={m} causal={causal} window={window:?} br={br} bc={bc} qt={qt}"
                        );
                    }
                }
            }
        }
    }
}
