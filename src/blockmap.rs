//! Block maps: for each query tile, the key tiles a kernel must visit (CSR), each tagged
//! *full* (every pair visible: no per-element mask work) or *partial*.
//!
//! Kernels never decide which tiles to skip: they walk the list built here. Tiles that the
//! causal and window rules make entirely invisible are simply not listed.

use crate::spec::AttnSpec;

/// Entry flag: every (row, key) pair of the tile is visible and the tile lies inside M.
pub const FULL: u32 = 1 << 31;

/// A CSR list of key tiles per query tile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockMap {
    /// Query rows per tile.
    pub br: usize,
    /// Keys per tile.
    pub bc: usize,
    pub n_qtiles: usize,
    pub n_ktiles: usize,
    /// Rows of the map per head: 1 when all heads share it.
    pub heads: usize,
    /// `heads * n_qtiles + 1` offsets into `entries`.
    pub row_ptr: Vec<u32>,
    /// `key_tile | FULL` per visited tile.
    pub entries: Vec<u32>,
}

impl BlockMap {
    /// The map of the causal/window band of `spec` for `br × bc` tiles.
    pub fn from_band(spec: &AttnSpec, br: usize, bc: usize) -> Self {
        let (n, m) = (spec.shape.n, spec.shape.m);
        let (lo, hi) = spec.band();
        let n_qtiles = n.div_ceil(br);
        let n_ktiles = m.div_ceil(bc);
        let mut row_ptr = Vec::with_capacity(n_qtiles + 1);
        let mut entries = Vec::new();
        row_ptr.push(0);
        for qt in 0..n_qtiles {
            let p_first = spec.position(qt * br);
            let p_last = spec.position(((qt + 1) * br).min(n) - 1);
            // keys visible from any row of the tile: p_first - hi ..= p_last - lo
            let j_min = (p_first - hi).max(0);
            let j_max = (p_last - lo).min(m as i64 - 1);
            if j_min <= j_max {
                for kt in (j_min as usize / bc)..=(j_max as usize / bc) {
                    let j0 = kt * bc;
                    let j1 = j0 + bc; // exclusive, unclipped
                    let d_min = p_first - (j1 as i64 - 1);
                    let d_max = p_last - j0 as i64;
                    let full = j1 <= m && d_min >= lo && d_max <= hi;
                    entries.push(kt as u32 | if full { FULL } else { 0 });
                }
            }
            row_ptr.push(entries.len() as u32);
        }
        Self {
            br,
            bc,
            n_qtiles,
            n_ktiles,
            heads: 1,
            row_ptr,
            entries,
        }
    }

    /// Listed tiles (summed over map heads).
    pub fn visited(&self) -> usize {
        self.entries.len()
    }

    /// Fraction of (query tile, key tile) pairs not visited.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.visited() as f64 / (self.heads * self.n_qtiles * self.n_ktiles) as f64
    }

    /// The map as one u32 buffer: row pointers, then entries.
    pub fn to_gpu_words(&self) -> Vec<u32> {
        let mut words = self.row_ptr.clone();
        words.extend_from_slice(&self.entries);
        words
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AttnShape, Window};

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
                                let vis = j < m && spec.visible(i, j);
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
    fn band_map_matches_brute_force() {
        for (n, m) in [(1, 1), (7, 7), (13, 40), (40, 13), (64, 64), (100, 37)] {
            for (causal, window) in [
                (false, None),
                (true, None),
                (false, Some(Window::new(3, 0))),
                (true, Some(Window::new(5, 9))),
                (false, Some(Window::new(0, 0))),
                (
                    false,
                    Some(Window {
                        left: None,
                        right: Some(2),
                    }),
                ),
            ] {
                let spec = AttnSpec::new(AttnShape::mha(1, 1, n, m, 4))
                    .causal(causal)
                    .window(window);
                for (br, bc) in [(4, 8), (8, 4), (16, 16), (3, 5)] {
                    let map = BlockMap::from_band(&spec, br, bc);
                    let want = brute(&spec, br, bc);
                    for (qt, row) in want.iter().enumerate() {
                        let got: Vec<(usize, bool)> = map.entries
                            [map.row_ptr[qt] as usize..map.row_ptr[qt + 1] as usize]
                            .iter()
                            .map(|&e| ((e & !FULL) as usize, e & FULL != 0))
                            .collect();
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
