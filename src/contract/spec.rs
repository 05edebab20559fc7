//! The attention contract of `docs/DESIGN.md` §1, as types.
//!
//! * Q `[B, H, N, D]`, K and V `[B, Hkv, M, D]`, O like Q, LSE `[B, H, N]`.
//! * Query head `h` reads kv head `h / (H / Hkv)`.
//! * Bottom-right alignment: query row `i` sits at position `p_i = (M - N) + i`, key `j` at `j`.
//! * `s_ij = scale * q_i·k_j + bias_ij`; ALiBi `bias_ij = -slope_h * |p_i - j|`.
//! * Masks: causal `j <= p_i`; window `(L, R)`: `p_i - L <= j <= p_i + R`.
//! * A row with no visible key has output 0 and LSE `-inf`.

use crate::contract::mask::Mask;
use crate::contract::mods::Mods;
use crate::contract::positions::Positions;
pub use crate::contract::shape::{AttnShape, UNBOUNDED, Window, alibi_slope, alibi_slopes};
use crate::error::{Error, Result};

/// Per-head linear distance penalties (ALiBi).
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Alibi {
    /// No bias (the default).
    #[default]
    Off,
    /// The paper's `get_slopes(H)`.
    Standard,
    /// One slope per query head.
    Custom(Vec<f32>),
}

/// One attention problem: shape, masks, bias and scale. Every kernel and the oracle take this.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnSpec {
    /// Sizes of Q, K and V.
    pub shape: AttnShape,
    /// Causal mask: query row `i` sees keys `j <= p_i = (M - N) + i`.
    pub causal: bool,
    /// Local window `(L, R)` around `p_i`; `None` = no window.
    pub window: Option<Window>,
    /// ALiBi distance bias per query head.
    pub alibi: Alibi,
    /// Defaults to `1 / sqrt(D)`.
    pub scale: Option<f32>,
    /// A sparse pattern ANDed with the causal/window band (see [`crate::contract::mask`]).
    pub mask: Option<Mask>,
    /// Score and mask modifications in WGSL (see [`crate::contract::mods`]): `score_mod` after
    /// the ALiBi bias, `mask_mod` ANDed with every rule above. Flash runs them.
    pub mods: Option<Mods>,
    /// A positional encoding applied to Q and K before the scores (RoPE or sinusoidal; see
    /// [`crate::contract::positions`]).
    pub positions: Option<Positions>,
    /// Position of query row 0 relative to key 0; `None`: `M − N` (bottom-right aligned, the
    /// contract's default). A ring-attention step sets it: its queries and keys are slices
    /// of a longer sequence at their global positions.
    pub q_start: Option<i64>,
}

impl AttnSpec {
    /// A readable name for the active rules, e.g. `causal+window(512,0)` (`dense` when there
    /// are none): the `mask` of benchmark records.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.causal {
            parts.push("causal".to_string());
        }
        if let Some(w) = self.window {
            parts.push(Mask::Window(w).describe());
        }
        if let Some(m) = &self.mask {
            parts.push(m.describe());
        }
        if self.alibi != Alibi::Off {
            parts.push("alibi".into());
        }
        if let Some(m) = &self.mods {
            parts.push(format!("mods({})", m.name().replace("named mod ", "")));
        }
        if let Some(p) = &self.positions {
            parts.push(p.name());
        }
        if parts.is_empty() { "dense".into() } else { parts.join("+") }
    }

    /// Plain attention over `shape`: not causal, no window, ALiBi or mask, default scale.
    pub fn new(shape: AttnShape) -> Self {
        Self {
            shape,
            causal: false,
            window: None,
            alibi: Alibi::Off,
            scale: None,
            mask: None,
            mods: None,
            positions: None,
            q_start: None,
        }
    }
    /// With query row 0 at position `q_start` relative to key 0 (`None`: `M − N`).
    pub fn q_start(mut self, q_start: Option<i64>) -> Self {
        self.q_start = q_start;
        self
    }
    /// Position of query row 0 relative to key 0: `q_start`, or `M − N`.
    pub fn q_offset(&self) -> i64 {
        self.q_start.unwrap_or(self.shape.q_offset())
    }
    /// With a positional encoding on Q and K (`None`: none).
    pub fn positions(mut self, positions: Option<Positions>) -> Self {
        self.positions = positions;
        self
    }
    /// With score and mask modifications (`None`: none).
    pub fn mods(mut self, mods: Option<Mods>) -> Self {
        self.mods = mods;
        self
    }
    /// With the sparse pattern `mask` (`None`: no pattern).
    pub fn mask(mut self, mask: Option<Mask>) -> Self {
        self.mask = mask;
        self
    }
    /// With the causal mask on or off.
    pub fn causal(mut self, on: bool) -> Self {
        self.causal = on;
        self
    }
    /// With the local window `window` (`None`: no window).
    pub fn window(mut self, window: Option<Window>) -> Self {
        self.window = window;
        self
    }
    /// With the ALiBi setting `alibi`.
    pub fn alibi(mut self, alibi: Alibi) -> Self {
        self.alibi = alibi;
        self
    }
    /// With the score scale `scale` (`None`: `1 / sqrt(D)`).
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
        self.q_offset() + i as i64
    }

    /// Whether key `j` is visible from query row `i` of head `h` (all active rules).
    pub fn visible(&self, h: usize, i: usize, j: usize) -> bool {
        let (lo, hi) = self.band();
        let d = self.position(i) - j as i64;
        lo <= d && d <= hi && self.mask.as_ref().is_none_or(|m| m.visible(h, i, j, self.q_offset()))
    }

    /// Visible (query, key) pairs of one (batch, head) under the causal/window band alone.
    pub(crate) fn band_pairs(&self) -> u64 {
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

    /// Checks shape, scale and slopes.
    pub fn validate(&self) -> Result<()> {
        self.shape.validate()?;
        if let Some(s) = self.scale
            && !s.is_finite()
        {
            return Err(Error::NonFinite { what: "scale".into(), index: 0, value: s });
        }
        if let Alibi::Custom(s) = &self.alibi {
            if s.len() != self.shape.heads {
                return Err(Error::Length {
                    what: "custom ALiBi slopes (one per query head)".into(),
                    got: s.len(),
                    shape: vec![self.shape.heads],
                    expected: self.shape.heads,
                });
            }
            check_finite("ALiBi slopes", s)?;
        }
        if let Some(w) = self.window {
            w.check()?;
        }
        if let Some(m) = &self.mask {
            m.validate(&self.shape)?;
        }
        if let Some(p) = &self.positions {
            p.validate(self.shape.head_dim)?;
            // the kernels hold positions as i32
            let (_, hi) = p.span(self.q_offset(), self.shape.n, self.shape.m);
            if hi - 1 > i32::MAX as i64 {
                return Err(Error::OutOfRange {
                    what: "last position of the positional encoding (offset + sequence)".into(),
                    value: (hi - 1) as u64,
                    min: 0,
                    max: i32::MAX as u64,
                });
            }
        }
        if let Some(q) = self.q_start {
            if q.unsigned_abs() >= UNBOUNDED as u64 {
                return Err(Error::OutOfRange {
                    what: "query start position (relative to key 0)".into(),
                    value: q.unsigned_abs(),
                    min: 0,
                    max: UNBOUNDED as u64 - 1,
                });
            }
            if let Some(m) = &self.mods {
                return Err(Error::Invalid(format!(
                    "mods `{}` see bottom-right-aligned indices (N_Q, N_KV); a spec with an explicit query start cannot carry them",
                    m.name()
                )));
            }
        }
        let max_pos = self.shape.n.max(self.shape.m) as i64;
        if max_pos >= UNBOUNDED {
            return Err(Error::OutOfRange {
                what: "sequence length (the larger of N and M)".into(),
                value: max_pos as u64,
                min: 1,
                max: UNBOUNDED as u64 - 1,
            });
        }
        Ok(())
    }

    /// Checks the incoming gradient dO of a backward pass: O's shape, finite values.
    pub fn check_grad(&self, d_o: &[f32]) -> Result<()> {
        let s = self.shape;
        if d_o.len() != s.q_len() {
            return Err(Error::Length {
                what: "dO".into(),
                got: d_o.len(),
                shape: s.q_dims().to_vec(),
                expected: s.q_len(),
            });
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
                return Err(Error::Length {
                    what: name.into(),
                    got: data.len(),
                    shape: dims.to_vec(),
                    expected: want,
                });
            }
            check_finite(name, data)?;
        }
        Ok(())
    }
}

/// Rejects NaN and infinities with the first offending index.
pub(crate) fn check_finite(what: &str, data: &[f32]) -> Result<()> {
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
