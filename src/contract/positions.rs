//! Positional encodings applied to Q and K before the scores: rotary (RoPE; Su et al. 2021)
//! and sinusoidal absolute embeddings (Vaswani et al. 2017, the baseline ALiBi replaced).
//!
//! Positions follow the contract: query row `i` is at `offset + M − N + i`, key `j` at
//! `offset + j` (`offset` shifts both, for a chunk of a longer sequence; in decoding the
//! cache's positions are absolute). With pair frequencies `ω_k = θ^(−2k/D)`, k = 0..D/2:
//!
//! - **RoPE** rotates each pair `(a, b)` of a row at position p by the angle `p·ω_k`:
//!   `(a cos − b sin, a sin + b cos)`. The pairs are `(x_k, x_{k+D/2})` in the half-split
//!   convention (GPT-NeoX, Hugging Face LLaMA) or `(x_{2k}, x_{2k+1})` interleaved (the
//!   paper, GPT-J, Meta's LLaMA). A score then depends on positions only through `p_i − p_j`.
//!   The gradient rotates back: `dx = R(p)ᵀ dx'`.
//! - **Sinusoidal** adds `PE(p)` with `PE(p, 2k) = sin(p·ω_k)`, `PE(p, 2k+1) = cos(p·ω_k)`
//!   (θ = 10000 in the paper) to Q and K rows — the attention-level form of adding it to the
//!   embeddings (the same thing when the projections are the identity). Its gradient is
//!   the identity.
//!
//! RoPE past the training length L (no retraining, or a short fine-tune) rescales the
//! frequencies by a factor s ([`RopeScaling`]):
//!
//! - **position interpolation** (PI; Chen et al. 2023): `ω'_k = ω_k / s` — positions squeezed
//!   into the trained range;
//! - **NTK-aware** (bloc97 2023): the base raised to `θ' = θ · s^(D/(D−2))` — the highest
//!   frequency kept, the lowest divided by exactly s;
//! - **YaRN** (Peng et al. 2023): per pair, `r_k = L / λ_k` wavelengths of `λ_k = 2π/ω_k` fit
//!   in L; `γ_k = clamp((r_k − α)/(β − α), 0, 1)` (α = 1, β = 32); `ω'_k = (1 − γ_k)·ω_k/s +
//!   γ_k·ω_k` — pairs that turn many times in L kept, slow ones interpolated, a ramp between;
//!   and an attention temperature: Q and K scaled by `m = 0.1·ln s + 1` (scores by m²), which
//!   the table carries (its cos and sin times m).
//!
//! The kernels read `cos`/`sin`/`PE` from a table computed here in f64 and rounded once to
//! f32 ([`Positions::table`]), so no shader evaluates a trigonometric function of a large
//! argument (WGSL only promises 2⁻¹¹ absolute error for `sin` on [−π, π]).

use crate::error::{Error, Result};

/// RoPE's frequencies rescaled to run past the training length (module docs).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum RopeScaling {
    /// The frequencies as trained.
    #[default]
    None,
    /// Position interpolation: every `ω_k / s`.
    Pi {
        /// s.
        factor: f64,
    },
    /// NTK-aware: base `θ · s^(D/(D−2))`.
    Ntk {
        /// s.
        factor: f64,
    },
    /// YaRN: interpolation ramped by wavelength, and the temperature `0.1·ln s + 1`.
    Yarn {
        /// s.
        factor: f64,
        /// The training length L the ramp is measured against.
        original: usize,
    },
}

/// YaRN's ramp ends (Peng et al. 2023, for LLaMA): pairs with fewer than α turns in the
/// training length are interpolated, more than β kept.
pub const YARN_ALPHA: f64 = 1.0;
/// See [`YARN_ALPHA`].
pub const YARN_BETA: f64 = 32.0;

impl RopeScaling {
    /// The factor s (1 for none).
    pub fn factor(&self) -> f64 {
        match *self {
            RopeScaling::None => 1.0,
            RopeScaling::Pi { factor } | RopeScaling::Ntk { factor } | RopeScaling::Yarn { factor, .. } => {
                factor
            }
        }
    }

    /// Parses `none`, `pi:S`, `ntk:S` or `yarn:S` (YaRN's L is `original`, the training
    /// length).
    pub fn parse(text: &str, original: usize) -> Result<Self> {
        let bad = |why: &str| Error::Invalid(format!("RoPE scaling `{text}`: {why}"));
        let text = text.trim();
        if text == "none" {
            return Ok(RopeScaling::None);
        }
        let (kind, s) = text.split_once(':').ok_or_else(|| bad("expected none, pi:S, ntk:S or yarn:S"))?;
        let factor: f64 = s.trim().parse().map_err(|_| bad("the factor is not a number"))?;
        let out = match kind.trim() {
            "pi" => RopeScaling::Pi { factor },
            "ntk" => RopeScaling::Ntk { factor },
            "yarn" => RopeScaling::Yarn { factor, original },
            _ => return Err(bad("expected none, pi:S, ntk:S or yarn:S")),
        };
        out.check()?;
        Ok(out)
    }

    fn check(&self) -> Result<()> {
        let s = self.factor();
        if !(s.is_finite() && s >= 1.0) {
            return Err(Error::Invalid(format!("RoPE scaling factor {s}: it must be a finite number ≥ 1")));
        }
        if let RopeScaling::Yarn { original: 0, .. } = self {
            return Err(Error::Invalid("YaRN needs the training length (> 0)".into()));
        }
        Ok(())
    }

    /// The name for records: `none`, `pi:4`, `ntk:4`, `yarn:4`.
    pub fn name(&self) -> String {
        match self {
            RopeScaling::None => "none".into(),
            RopeScaling::Pi { factor } => format!("pi:{factor}"),
            RopeScaling::Ntk { factor } => format!("ntk:{factor}"),
            RopeScaling::Yarn { factor, .. } => format!("yarn:{factor}"),
        }
    }

    /// The scale of Q and K (YaRN's `0.1·ln s + 1`; 1 otherwise).
    pub fn magnitude(&self) -> f64 {
        match *self {
            RopeScaling::Yarn { factor, .. } => 0.1 * factor.ln() + 1.0,
            _ => 1.0,
        }
    }

    /// `ω'_k` for pair `k` of head dim `d` and base `theta`.
    pub fn frequency(&self, theta: f64, k: usize, d: usize) -> f64 {
        let plain = theta.powf(-2.0 * k as f64 / d as f64);
        match *self {
            RopeScaling::None => plain,
            RopeScaling::Pi { factor } => plain / factor,
            RopeScaling::Ntk { factor } => {
                // d = 2 has one pair, the highest frequency, which NTK keeps
                let base = if d > 2 { theta * factor.powf(d as f64 / (d as f64 - 2.0)) } else { theta };
                base.powf(-2.0 * k as f64 / d as f64)
            }
            RopeScaling::Yarn { factor, original } => {
                let turns = original as f64 * plain / (2.0 * std::f64::consts::PI);
                let keep = ((turns - YARN_ALPHA) / (YARN_BETA - YARN_ALPHA)).clamp(0.0, 1.0);
                (1.0 - keep) * plain / factor + keep * plain
            }
        }
    }
}

/// Which encoding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Encoding {
    /// Rotary: pairs rotated by `p·ω_k`.
    Rope {
        /// Base θ of the frequencies (10000 in most models; 500000 in LLaMA 3).
        theta: f64,
        /// Pairs `(x_{2k}, x_{2k+1})`; otherwise `(x_k, x_{k+D/2})`.
        interleaved: bool,
        /// Frequencies rescaled past the training length.
        scaling: RopeScaling,
    },
    /// `PE(p)` added to Q and K rows.
    Sinusoidal {
        /// Base of the frequencies (10000 in the paper).
        base: f64,
    },
}

/// A positional encoding and the position of key 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Positions {
    /// The encoding.
    pub encoding: Encoding,
    /// Position of key 0 (queries are bottom-right aligned to the keys).
    pub offset: usize,
}

impl Positions {
    /// RoPE with base `theta`, half-split pairs, offset 0.
    pub fn rope(theta: f64) -> Self {
        Self { encoding: Encoding::Rope { theta, interleaved: false, scaling: RopeScaling::None }, offset: 0 }
    }

    /// With RoPE's frequencies rescaled (no change to a sinusoidal encoding).
    pub fn scaled(mut self, with: RopeScaling) -> Self {
        if let Encoding::Rope { scaling, .. } = &mut self.encoding {
            *scaling = with;
        }
        self
    }

    /// RoPE with interleaved pairs.
    pub fn rope_interleaved(theta: f64) -> Self {
        Self { encoding: Encoding::Rope { theta, interleaved: true, scaling: RopeScaling::None }, offset: 0 }
    }

    /// Sinusoidal embeddings with base 10000, offset 0.
    pub fn sinusoidal() -> Self {
        Self { encoding: Encoding::Sinusoidal { base: 10000.0 }, offset: 0 }
    }

    /// With key 0 at position `offset`.
    pub fn offset(mut self, offset: usize) -> Self {
        self.offset = offset;
        self
    }

    /// Parses the CLI's form: `theta=10000[,interleaved][,offset=P]` for RoPE, or
    /// `[base=10000][,offset=P]` for sinusoidal (`rope` chooses which).
    pub fn parse(text: &str, rope: bool) -> Result<Self> {
        let bad = |why: String| {
            Error::Invalid(format!("{} `{text}`: {why}", if rope { "RoPE" } else { "sinusoidal" }))
        };
        let mut base = 10000.0;
        let (mut interleaved, mut offset) = (false, 0usize);
        let mut seen: Vec<&str> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            // one value per parameter: `theta=1e4,theta=5` or `interleaved,half` is a mistake
            let key = match part.split_once('=') {
                Some((k, _)) => k.trim(),
                None if part == "interleaved" || part == "half" => "layout",
                None => part,
            };
            if seen.contains(&key) {
                return Err(bad(format!("`{part}`: {key} is given twice")));
            }
            seen.push(key);
            match part.split_once('=') {
                Some(("theta", v)) if rope => {
                    base = v.parse().map_err(|_| bad(format!("theta `{v}` is not a number")))?
                }
                Some(("base", v)) if !rope => {
                    base = v.parse().map_err(|_| bad(format!("base `{v}` is not a number")))?
                }
                Some(("offset", v)) => {
                    offset = v.parse().map_err(|_| bad(format!("offset `{v}` is not a whole number ≥ 0")))?;
                    // positions are i32 in the kernels
                    if offset > i32::MAX as usize {
                        return Err(bad(format!("offset {offset}: must be at most {}", i32::MAX)));
                    }
                }
                None if rope && part == "interleaved" => interleaved = true,
                None if rope && part == "half" => interleaved = false,
                _ => {
                    return Err(bad(format!(
                        "unknown part `{part}`; expected {}",
                        if rope { "theta=θ, interleaved, half or offset=P" } else { "base=B or offset=P" }
                    )));
                }
            }
        }
        let encoding = if rope {
            Encoding::Rope { theta: base, interleaved, scaling: RopeScaling::None }
        } else {
            Encoding::Sinusoidal { base }
        };
        let p = Self { encoding, offset };
        p.check_base()?;
        Ok(p)
    }

    fn base(&self) -> f64 {
        match self.encoding {
            Encoding::Rope { theta, .. } => theta,
            Encoding::Sinusoidal { base } => base,
        }
    }

    fn check_base(&self) -> Result<()> {
        if let Encoding::Rope { scaling, .. } = self.encoding {
            scaling.check()?;
        }
        let b = self.base();
        if !(b.is_finite() && b > 1.0) {
            return Err(Error::Invalid(format!(
                "positional encoding base θ = {b}: it must be a finite number > 1"
            )));
        }
        Ok(())
    }

    /// Checks the encoding against head dim `d`: RoPE rotates pairs, so D must be even.
    pub fn validate(&self, d: usize) -> Result<()> {
        self.check_base()?;
        if self.offset > i32::MAX as usize {
            return Err(Error::OutOfRange {
                what: "positional encoding offset".into(),
                value: self.offset as u64,
                min: 0,
                max: i32::MAX as u64,
            });
        }
        if matches!(self.encoding, Encoding::Rope { .. }) && !d.is_multiple_of(2) {
            return Err(Error::HeadDim {
                kernel: "rope",
                head_dim: d,
                reason: "RoPE rotates pairs of values: the head dim must be even",
            });
        }
        Ok(())
    }

    /// Whether this is RoPE (whose gradient is a rotation; sinusoidal's is the identity).
    pub(crate) fn is_rope(&self) -> bool {
        matches!(self.encoding, Encoding::Rope { .. })
    }

    /// Whether RoPE pairs are interleaved.
    pub fn interleaved(&self) -> bool {
        matches!(self.encoding, Encoding::Rope { interleaved: true, .. })
    }

    /// `ω_k` for pair `k` of head dim `d` (RoPE's rescaled where it says so).
    fn frequency(&self, k: usize, d: usize) -> f64 {
        match self.encoding {
            Encoding::Rope { theta, scaling, .. } => scaling.frequency(theta, k, d),
            Encoding::Sinusoidal { base } => base.powf(-2.0 * k as f64 / d as f64),
        }
    }

    /// One table row for position `p`, head dim `d` (f64): RoPE `m·cos(p·ω_k)` for k < D/2
    /// then `m·sin(p·ω_k)` (m: the scaling's magnitude, 1 but for YaRN); sinusoidal
    /// `PE(p, e)` for e < D.
    pub(crate) fn table_row(&self, p: i64, d: usize) -> Vec<f64> {
        let angle = |k: usize| p as f64 * self.frequency(k, d);
        match self.encoding {
            Encoding::Rope { scaling, .. } => {
                let (half, m) = (d / 2, scaling.magnitude());
                (0..half).map(|k| m * angle(k).cos()).chain((0..half).map(|k| m * angle(k).sin())).collect()
            }
            Encoding::Sinusoidal { .. } => {
                (0..d).map(|e| if e % 2 == 0 { angle(e / 2).sin() } else { angle(e / 2).cos() }).collect()
            }
        }
    }

    /// The table the kernels read: rows for positions `lo..hi`, `d` values each, rounded
    /// once to f32.
    pub fn table(&self, lo: i64, hi: i64, d: usize) -> Vec<f32> {
        (lo..hi).flat_map(|p| self.table_row(p, d)).map(|x| x as f32).collect()
    }

    /// The pairs `(a, b)` RoPE rotates in a row of `d` values.
    fn pair(&self, k: usize, d: usize) -> (usize, usize) {
        if self.interleaved() { (2 * k, 2 * k + 1) } else { (k, k + d / 2) }
    }

    /// Encodes a row at position `p` in place (f64: the oracle).
    pub fn apply(&self, row: &mut [f64], p: i64) {
        let d = row.len();
        let t = self.table_row(p, d);
        match self.encoding {
            Encoding::Rope { .. } => {
                for k in 0..d / 2 {
                    let (ia, ib) = self.pair(k, d);
                    let (a, b, c, s) = (row[ia], row[ib], t[k], t[d / 2 + k]);
                    row[ia] = a * c - b * s;
                    row[ib] = a * s + b * c;
                }
            }
            Encoding::Sinusoidal { .. } => row.iter_mut().zip(&t).for_each(|(x, pe)| *x += pe),
        }
    }

    /// The gradient through the encoding at position `p`, in place: RoPE rotates back
    /// (`Rᵀ`), sinusoidal leaves it.
    pub fn apply_grad(&self, row: &mut [f64], p: i64) {
        if !self.is_rope() {
            return;
        }
        let d = row.len();
        let t = self.table_row(p, d);
        for k in 0..d / 2 {
            let (ia, ib) = self.pair(k, d);
            let (a, b, c, s) = (row[ia], row[ib], t[k], t[d / 2 + k]);
            row[ia] = a * c + b * s;
            row[ib] = -a * s + b * c;
        }
    }

    /// Position of query row `i` of a call whose row 0 sits at `q_offset` relative to key 0
    /// (`AttnSpec::q_offset`: M − N unless set).
    pub(crate) fn query_position(&self, q_offset: i64, i: usize) -> i64 {
        self.offset as i64 + q_offset + i as i64
    }

    /// Position of key `j`.
    pub(crate) fn key_position(&self, j: usize) -> i64 {
        self.offset as i64 + j as i64
    }

    /// The positions an N × M call's rows take (query row 0 at `q_offset`): `lo..hi` over
    /// queries and keys.
    pub fn span(&self, q_offset: i64, n: usize, m: usize) -> (i64, i64) {
        let lo = self.query_position(q_offset, 0).min(self.key_position(0));
        let hi = self.query_position(q_offset, n).max(self.key_position(m));
        (lo, hi)
    }

    /// `rows` rows of Q (`per_seq` = N rows per (batch, head)) or K encoded in f64, the
    /// oracle's inputs: row r at position `first + r % per_seq`.
    pub(crate) fn encode_rows(&self, x: &[f32], d: usize, per_seq: usize, first: i64) -> Vec<f64> {
        let mut out: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        for (r, row) in out.chunks_exact_mut(d).enumerate() {
            self.apply(row, first + (r % per_seq) as i64);
        }
        out
    }

    /// The name for records and messages: `rope(θ=10000, half)`, `sinusoidal(10000)`.
    pub fn name(&self) -> String {
        let offset = if self.offset > 0 { format!(", offset {}", self.offset) } else { String::new() };
        match self.encoding {
            Encoding::Rope { theta, interleaved, scaling } => {
                let scaled = if scaling == RopeScaling::None {
                    String::new()
                } else {
                    format!(", {}", scaling.name())
                };
                format!(
                    "rope(θ={theta}, {}{scaled}{offset})",
                    if interleaved { "interleaved" } else { "half" }
                )
            }
            Encoding::Sinusoidal { base } => format!("sinusoidal({base}{offset})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_scores_depend_on_the_distance_only() {
        // q·k after rotating q to p and k to p − 5 is the same for every p
        let d = 8;
        let q: Vec<f64> = (0..d).map(|i| (i as f64 * 0.37).sin()).collect();
        let k: Vec<f64> = (0..d).map(|i| (i as f64 * 0.91).cos()).collect();
        for pos in [Positions::rope(10000.0), Positions::rope_interleaved(500.0)] {
            let dot = |p: i64| {
                let (mut a, mut b) = (q.clone(), k.clone());
                pos.apply(&mut a, p);
                pos.apply(&mut b, p - 5);
                a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>()
            };
            let d0 = dot(5);
            for p in [6, 100, 12345] {
                assert!((dot(p) - d0).abs() < 1e-9, "{pos:?} p={p}");
            }
            // and the gradient rotation undoes the rotation
            let mut x = q.clone();
            pos.apply(&mut x, 77);
            pos.apply_grad(&mut x, 77);
            assert!(x.iter().zip(&q).all(|(a, b)| (a - b).abs() < 1e-12));
        }
    }

    /// The scalings against the papers' formulas written out here in f64, separately from
    /// `RopeScaling::frequency`.
    #[test]
    fn rope_scalings_follow_their_papers() {
        use std::f64::consts::PI as PI_;
        let (theta, d, s, l) = (10000.0f64, 64usize, 4.0f64, 512usize);
        let plain = |k: usize| 1.0 / theta.powf(2.0 * k as f64 / d as f64);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-300);
        let pi = RopeScaling::Pi { factor: s };
        let ntk = RopeScaling::Ntk { factor: s };
        let yarn = RopeScaling::Yarn { factor: s, original: l };
        for k in 0..d / 2 {
            // PI: positions divided by s
            assert!(close(pi.frequency(theta, k, d), plain(k) / s), "pi k={k}");
            // NTK-aware: base θ·s^(d/(d−2))
            let base = theta * s.powf(d as f64 / (d as f64 - 2.0));
            assert!(
                close(ntk.frequency(theta, k, d), 1.0 / base.powf(2.0 * k as f64 / d as f64)),
                "ntk k={k}"
            );
            // YaRN: wavelength λ = 2π/ω, r = L/λ, ramp between α = 1 and β = 32
            let lambda = 2.0 * PI_ / plain(k);
            let r = l as f64 / lambda;
            let want = if r < 1.0 {
                plain(k) / s
            } else if r > 32.0 {
                plain(k)
            } else {
                let g = (r - 1.0) / 31.0;
                (1.0 - g) * plain(k) / s + g * plain(k)
            };
            assert!(close(yarn.frequency(theta, k, d), want), "yarn k={k}");
        }
        // NTK keeps the highest frequency and divides the lowest by exactly s
        assert!(close(ntk.frequency(theta, 0, d), 1.0));
        assert!(close(ntk.frequency(theta, d / 2 - 1, d), plain(d / 2 - 1) / s));
        // PI at position s·p is the plain encoding at p
        let (a, b) = (Positions::rope(theta).scaled(pi), Positions::rope(theta));
        assert!(a.table_row(400, d).iter().zip(b.table_row(100, d)).all(|(x, y)| (x - y).abs() < 1e-9));
        // YaRN's temperature: the table's pairs have length 0.1·ln s + 1, so a score is m² times
        let y = Positions::rope(theta).scaled(yarn);
        let row = y.table_row(1234, d);
        let m = 0.1 * s.ln() + 1.0;
        for k in 0..d / 2 {
            assert!((row[k].hypot(row[d / 2 + k]) - m).abs() < 1e-12);
        }
        let (q, kk): (Vec<f64>, Vec<f64>) =
            ((0..d).map(|i| (i as f64).sin()).collect(), (0..d).map(|i| (i as f64).cos()).collect());
        let dot = |p: &Positions| {
            let (mut a, mut b) = (q.clone(), kk.clone());
            p.apply(&mut a, 0);
            p.apply(&mut b, 0);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>()
        };
        assert!((dot(&y) - m * m * dot(&b)).abs() < 1e-9);
        // parsing and the bounds
        assert_eq!(
            RopeScaling::parse("yarn:8", 256).unwrap(),
            RopeScaling::Yarn { factor: 8.0, original: 256 }
        );
        assert_eq!(RopeScaling::parse("none", 256).unwrap(), RopeScaling::None);
        for bad in ["pi", "pi:x", "pi:0.5", "ntk:inf", "linear:2"] {
            assert!(RopeScaling::parse(bad, 256).is_err(), "{bad}");
        }
        assert!(RopeScaling::parse("yarn:2", 0).is_err());
    }

    #[test]
    fn conventions_pair_the_documented_elements() {
        // D = 4, p = 1, θ = 10000: ω = (1, 0.01); half-split pairs (0,2), (1,3)
        let mut x = vec![1.0, 0.0, 0.0, 0.0];
        Positions::rope(10000.0).apply(&mut x, 1);
        assert!((x[0] - 1f64.cos()).abs() < 1e-15 && (x[2] - 1f64.sin()).abs() < 1e-15);
        let mut y = vec![1.0, 0.0, 0.0, 0.0];
        Positions::rope_interleaved(10000.0).apply(&mut y, 1);
        assert!((y[0] - 1f64.cos()).abs() < 1e-15 && (y[1] - 1f64.sin()).abs() < 1e-15);
        // sinusoidal: PE(p, 0) = sin p, PE(p, 1) = cos p, PE(p, 2) = sin(p/100)
        let mut z = vec![0.0; 4];
        Positions::sinusoidal().apply(&mut z, 3);
        assert!((z[0] - 3f64.sin()).abs() < 1e-15 && (z[1] - 3f64.cos()).abs() < 1e-15);
        assert!((z[2] - 0.03f64.sin()).abs() < 1e-15);
    }

    #[test]
    fn parse_and_validate() {
        let p = Positions::parse("theta=500000,interleaved,offset=7", true).unwrap();
        assert_eq!(p, Positions::rope_interleaved(500000.0).offset(7));
        assert_eq!(Positions::parse("", false).unwrap(), Positions::sinusoidal());
        assert!(Positions::parse("theta=1", true).is_err());
        assert!(Positions::parse("theta=x", true).is_err());
        assert!(Positions::parse("interleaved", false).is_err());
        assert!(Positions::rope(10000.0).validate(7).is_err());
        assert!(Positions::sinusoidal().validate(7).is_ok());
    }
}
