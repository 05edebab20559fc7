//! The attention contract of `DESIGN.md` section 1, as types.
//!
//! * Q `[B, H, N, D]`, K and V `[B, Hkv, M, D]`, O like Q, LSE `[B, H, N]`.
//! * Query head `h` reads kv head `h / (H / Hkv)`.
//! * Bottom-right alignment: query row `i` sits at position `p_i = (M - N) + i`, key `j` at `j`.
//! * `s_ij = scale * q_i·k_j + bias_ij`; ALiBi `bias_ij = -slope_h * |p_i - j|`.
//! * Masks: causal `j <= p_i`; window `(L, R)`: `p_i - L <= j <= p_i + R`.
//! * A row with no visible key has output 0 and LSE `-inf`.

use crate::error::{Error, Result};
use crate::mask::Mask;

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
    pub fn q_dims(&self) -> [usize; 4] {
        [self.batch, self.heads, self.n, self.head_dim]
    }
    /// The contract's K/V shape `[B, Hkv, M, D]`.
    pub fn kv_dims(&self) -> [usize; 4] {
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
        Ok(())
    }
}

/// A local attention window `(L, R)`: query at position `p` sees keys `p - L ..= p + R`.
/// `None` on a side means unbounded on that side (FlashAttention's `-1`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Window {
    pub left: Option<usize>,
    pub right: Option<usize>,
}

impl Window {
    pub fn new(left: usize, right: usize) -> Self {
        Self { left: Some(left), right: Some(right) }
    }

    /// Parses `L,R`; `-1` on a side means unbounded. Examples: `128,0`, `64,64`, `-1,0`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || {
            Error::Invalid(format!(
                "window `{text}`: expected `L,R` with non-negative integers or -1 for unbounded, \
                 e.g. `128,0`"
            ))
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

/// Per-head linear distance penalties (ALiBi).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Alibi {
    #[default]
    Off,
    /// The paper's `get_slopes(H)`.
    Standard,
    /// One slope per query head.
    Custom(Vec<f32>),
}

/// The ALiBi paper's `get_slopes(H)`, exactly as DESIGN.md states it.
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    fn pow2(n: usize) -> Vec<f64> {
        (0..n).map(|h| 2f64.powf(-8.0 * (h + 1) as f64 / n as f64)).collect()
    }
    if heads == 0 {
        return Vec::new();
    }
    if heads.is_power_of_two() {
        return pow2(heads).into_iter().map(|s| s as f32).collect();
    }
    let c = 1usize << heads.ilog2();
    let mut out = pow2(c);
    out.extend(pow2(2 * c).into_iter().step_by(2).take(heads - c));
    out.into_iter().map(|s| s as f32).collect()
}

/// Sentinel for "unbounded" in the kernels' window band; larger than any position.
pub const UNBOUNDED: i64 = 1 << 30;

/// One attention problem: shape, masks, bias and scale. Every kernel and the oracle take this.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnSpec {
    pub shape: AttnShape,
    pub causal: bool,
    pub window: Option<Window>,
    pub alibi: Alibi,
    /// Defaults to `1 / sqrt(D)`.
    pub scale: Option<f32>,
    /// A sparse pattern ANDed with the causal/window band (see [`crate::mask`]).
    pub mask: Option<Mask>,
}

impl AttnSpec {
    pub fn new(shape: AttnShape) -> Self {
        Self { shape, causal: false, window: None, alibi: Alibi::Off, scale: None, mask: None }
    }
    pub fn mask(mut self, mask: Option<Mask>) -> Self {
        self.mask = mask;
        self
    }
    pub fn causal(mut self, on: bool) -> Self {
        self.causal = on;
        self
    }
    pub fn window(mut self, window: Option<Window>) -> Self {
        self.window = window;
        self
    }
    pub fn alibi(mut self, alibi: Alibi) -> Self {
        self.alibi = alibi;
        self
    }
    pub fn scale(mut self, scale: Option<f32>) -> Self {
        self.scale = scale;
        self
    }

    /// The score scale actually used.
    pub fn scale_value(&self) -> f32 {
        self.scale.unwrap_or(1.0 / (self.shape.head_dim as f32).sqrt())
    }

    /// Slopes per query head, or `None` without ALiBi.
    pub fn slopes(&self) -> Option<Vec<f32>> {
        match &self.alibi {
            Alibi::Off => None,
            Alibi::Standard => Some(alibi_slopes(self.shape.heads)),
            Alibi::Custom(s) => Some(s.clone()),
        }
    }

    /// The visible band of `d = p_i - j` as `(lo, hi)`: a key is visible iff `lo <= d <= hi`.
    /// Causal and window both reduce to this band; unbounded sides are `∓UNBOUNDED`.
    pub fn band(&self) -> (i64, i64) {
        let w = self.window.unwrap_or_default();
        let hi = w.left.map_or(UNBOUNDED, |l| (l as i64).min(UNBOUNDED));
        let mut right = w.right.map_or(UNBOUNDED, |r| (r as i64).min(UNBOUNDED));
        if self.causal {
            right = right.min(0);
        }
        (-right, hi)
    }

    /// Position of query row `i`.
    pub fn position(&self, i: usize) -> i64 {
        self.shape.q_offset() + i as i64
    }

    /// Whether key `j` is visible from query row `i` of head `h` (all active rules).
    pub fn visible(&self, h: usize, i: usize, j: usize) -> bool {
        let (lo, hi) = self.band();
        let d = self.position(i) - j as i64;
        lo <= d && d <= hi && self.mask.as_ref().is_none_or(|m| m.visible(h, i, j, self.shape.q_offset()))
    }

    /// Visible (query, key) pairs of one (batch, head) under the causal/window band alone.
    pub fn band_pairs(&self) -> u64 {
        let (lo, hi) = self.band();
        let m = self.shape.m as i64;
        (0..self.shape.n)
            .map(|i| {
                let p = self.position(i);
                let first = (p - hi).max(0);
                let last = (p - lo).min(m - 1);
                (last - first + 1).max(0) as u64
            })
            .sum()
    }

    /// Visible (query, key) pairs summed over heads (one batch), counting the sparse mask
    /// exactly via its block map.
    pub fn visible_pairs(&self) -> u64 {
        match &self.mask {
            None => self.band_pairs() * self.shape.heads as u64,
            Some(_) => crate::blockmap::BlockMap::build(self, 64, 32)
                .map_or(0, |m| m.visible_pairs(self.shape.heads)),
        }
    }

    /// Forward FLOPs, the standard count: `4·B·D·(visible pairs over all heads)` (two
    /// matmuls, one multiply and one add each; softmax, masking and bias not counted).
    pub fn flops(&self) -> f64 {
        let s = self.shape;
        4.0 * (s.batch * s.head_dim) as f64 * self.visible_pairs() as f64
    }

    /// Checks shape, scale and slopes.
    pub fn validate(&self) -> Result<()> {
        self.shape.validate()?;
        if let Some(s) = self.scale
            && !s.is_finite()
        {
            return Err(Error::Invalid(format!("scale must be finite, got {s}")));
        }
        if let Alibi::Custom(s) = &self.alibi {
            if s.len() != self.shape.heads {
                return Err(Error::Invalid(format!(
                    "{} custom ALiBi slopes given for {} query heads",
                    s.len(),
                    self.shape.heads
                )));
            }
            if let Some(x) = s.iter().find(|x| !x.is_finite()) {
                return Err(Error::Invalid(format!("ALiBi slope {x} is not finite")));
            }
        }
        if let Some(m) = &self.mask {
            m.validate(&self.shape)?;
        }
        let max_pos = self.shape.n.max(self.shape.m) as i64;
        if max_pos >= UNBOUNDED {
            return Err(Error::Shape(format!(
                "sequence length {max_pos} exceeds the supported maximum {}",
                UNBOUNDED - 1
            )));
        }
        Ok(())
    }

    /// Checks the incoming gradient dO of a backward pass: O's shape, finite values.
    pub fn check_grad(&self, d_o: &[f32]) -> Result<()> {
        let s = self.shape;
        if d_o.len() != s.q_len() {
            return Err(Error::Shape(format!(
                "dO has {} values, O's shape {:?} needs {}",
                d_o.len(),
                s.q_dims(),
                s.q_len()
            )));
        }
        check_finite("dO", d_o)
    }

    /// Checks Q, K, V lengths against the shape and rejects NaN/Inf.
    pub fn check_inputs(&self, q: &[f32], k: &[f32], v: &[f32]) -> Result<()> {
        self.validate()?;
        let s = &self.shape;
        for (name, data, want, dims) in [
            ("Q", q, s.q_len(), s.q_dims()),
            ("K", k, s.kv_len(), s.kv_dims()),
            ("V", v, s.kv_len(), s.kv_dims()),
        ] {
            if data.len() != want {
                return Err(Error::Shape(format!(
                    "{name} has {} elements, shape {dims:?} needs {want}",
                    data.len()
                )));
            }
            check_finite(name, data)?;
        }
        Ok(())
    }
}

/// Rejects NaN and infinities with the first offending index.
pub fn check_finite(what: &str, data: &[f32]) -> Result<()> {
    match data.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(Error::NonFinite { what: what.to_string(), index, value: data[index] }),
        None => Ok(()),
    }
}

/// Output of one attention call, host side.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnOutput {
    /// `[B, H, N, D]`.
    pub o: Vec<f32>,
    /// `[B, H, N]`, natural log; `-inf` for fully masked rows.
    pub lse: Vec<f32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slopes_match_the_paper() {
        let s8 = alibi_slopes(8);
        for (h, s) in s8.iter().enumerate() {
            assert_eq!(*s, 2f32.powi(-(h as i32 + 1)));
        }
        let s12 = alibi_slopes(12);
        let want: Vec<f32> = (1..=8)
            .map(|e| 2f64.powi(-e) as f32)
            .chain([-0.5f64, -1.5, -2.5, -3.5].map(|e| 2f64.powf(e) as f32))
            .collect();
        assert_eq!(s12, want);
        assert_eq!(alibi_slopes(1), vec![2f32.powi(-8)]);
    }

    #[test]
    fn band_combines_causal_and_window() {
        let shape = AttnShape::mha(1, 1, 4, 10, 8);
        let spec = AttnSpec::new(shape).causal(true).window(Some(Window::new(2, 5)));
        assert_eq!(spec.band(), (0, 2));
        // row 0 sits at position 6
        assert!(
            spec.visible(0, 0, 6)
                && spec.visible(0, 0, 4)
                && !spec.visible(0, 0, 3)
                && !spec.visible(0, 0, 7)
        );
    }

    #[test]
    fn window_parse() {
        assert_eq!(Window::parse("3,0").unwrap(), Window::new(3, 0));
        assert_eq!(Window::parse("-1, 4").unwrap().left, None);
        assert!(
            Window::parse("3").is_err() && Window::parse("a,1").is_err() && Window::parse("-2,1").is_err()
        );
    }
}
