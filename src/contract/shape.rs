//! Sizes and windows: the contract's plain geometry, below the masks and the spec.

use crate::error::{Error, Result};

/// Sizes of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AttnShape {
    /// B: independent sequences.
    pub batch: usize,
    /// H: query heads.
    pub heads: usize,
    /// Hkv: key/value heads; `heads % kv_heads == 0`.
    pub kv_heads: usize,
    /// N: query tokens.
    pub n: usize,
    /// M: key/value tokens.
    pub m: usize,
    /// D: head dimension (shared by Q, K and V).
    pub head_dim: usize,
}

impl AttnShape {
    /// Multi-head attention shape with `Hkv == H`.
    pub fn mha(batch: usize, heads: usize, n: usize, m: usize, head_dim: usize) -> Self {
        Self { batch, heads, kv_heads: heads, n, m, head_dim }
    }

    /// Query heads per kv head.
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
    /// Elements of Q (and of O).
    pub fn q_len(&self) -> usize {
        self.batch * self.heads * self.n * self.head_dim
    }
    /// Elements of K (and of V).
    pub fn kv_len(&self) -> usize {
        self.batch * self.kv_heads * self.m * self.head_dim
    }
    /// Elements of LSE.
    pub fn lse_len(&self) -> usize {
        self.batch * self.heads * self.n
    }
    /// `M - N`: the position of query row 0 (may be negative when N > M).
    pub fn q_offset(&self) -> i64 {
        self.m as i64 - self.n as i64
    }
    /// The contract's Q shape `[B, H, N, D]`.
    pub(crate) fn q_dims(&self) -> [usize; 4] {
        [self.batch, self.heads, self.n, self.head_dim]
    }
    /// The contract's K/V shape `[B, Hkv, M, D]`.
    pub(crate) fn kv_dims(&self) -> [usize; 4] {
        [self.batch, self.kv_heads, self.m, self.head_dim]
    }

    /// Checks every dimension is non-zero and the head grouping divides.
    pub fn validate(&self) -> Result<()> {
        let dims = [self.batch, self.heads, self.kv_heads, self.n, self.m, self.head_dim];
        if dims.contains(&0) {
            return Err(Error::Empty {
                what: "attention shape (B, H, Hkv, N, M, D)".into(),
                shape: dims.to_vec(),
            });
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::HeadGroups { heads: self.heads, kv_heads: self.kv_heads });
        }
        // every element and byte count the engine derives must fit: checked here, once, so
        // q_len() and friends never wrap
        let count = |what: &str, dims: &[usize]| -> Result<()> {
            let elements = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
            match elements.and_then(|e| e.checked_mul(8)).filter(|&b| b <= isize::MAX as u64) {
                Some(_) => Ok(()),
                None => Err(Error::OutOfRange {
                    what: match elements {
                        Some(_) => format!("elements of {what} {dims:?}"),
                        None => format!("elements of {what} {dims:?} (past 2^64; shown as the largest u64)"),
                    },
                    value: elements.unwrap_or(u64::MAX),
                    min: 1,
                    max: isize::MAX as u64 / 8,
                }),
            }
        };
        count("Q (B·H·N·D)", &[self.batch, self.heads, self.n, self.head_dim])?;
        count("K (B·Hkv·M·D)", &[self.batch, self.kv_heads, self.m, self.head_dim])?;
        count("the scores (B·H·N·M)", &[self.batch, self.heads, self.n, self.m])
    }
}

/// A local attention window `(L, R)`: query at position `p` sees keys `p - L ..= p + R`.
/// `None` on a side means unbounded on that side (FlashAttention's `-1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Window {
    /// L: how far before the query's position keys are visible; `None` = unbounded.
    pub left: Option<usize>,
    /// R: how far after the query's position keys are visible; `None` = unbounded.
    pub right: Option<usize>,
}

impl Window {
    /// The window `(left, right)`, bounded on both sides.
    pub fn new(left: usize, right: usize) -> Self {
        Self { left: Some(left), right: Some(right) }
    }

    /// Refuses a side at or beyond [`UNBOUNDED`] (it would wrap in the kernels' i32 band); use
    /// `None` (`-1` on the command line) for an unbounded side.
    pub fn check(&self) -> Result<()> {
        for (side, v) in [("window left", self.left), ("window right", self.right)] {
            if let Some(v) = v
                && v as u64 >= UNBOUNDED as u64
            {
                return Err(Error::OutOfRange {
                    what: side.into(),
                    value: v as u64,
                    min: 0,
                    max: UNBOUNDED as u64 - 1,
                });
            }
        }
        Ok(())
    }

    /// Parses `L,R`; `-1` on a side means unbounded. Examples: `128,0`, `64,64`, `-1,0`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::Parse {
            what: "window",
            text: text.to_string(),
            expected: "`L,R` with non-negative integers or -1 for unbounded, e.g. `128,0`",
        };
        let (l, r) = text.split_once(',').ok_or_else(bad)?;
        let side = |s: &str| -> Result<Option<usize>> {
            match s.trim() {
                "-1" => Ok(None),
                t => t.parse::<usize>().map(Some).map_err(|_| bad()),
            }
        };
        Ok(Self { left: side(l)?, right: side(r)? })
    }
}

/// Sentinel for "unbounded" in the kernels' window band; larger than any position.
pub const UNBOUNDED: i64 = 1 << 30;

/// The ALiBi paper's `get_slopes(H)`, exactly as `docs/DESIGN.md` §1 states it.
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    (0..heads).map(|h| alibi_slope(heads, h)).collect()
}

/// The slope of query head `h` of `heads` ([`alibi_slopes`]`(heads)[h]`, without the list):
/// `2^(−8(h+1)/c)` for the first `c` heads (`c` the largest power of two ≤ H), then every
/// other slope of `2c` heads.
pub fn alibi_slope(heads: usize, h: usize) -> f32 {
    let pow2 = |i: usize, n: usize| 2f64.powf(-8.0 * (i + 1) as f64 / n as f64) as f32;
    let c = 1usize << heads.max(1).ilog2();
    if h < c { pow2(h, c) } else { pow2(2 * (h - c), 2 * c) }
}
