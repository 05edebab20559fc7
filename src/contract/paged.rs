//! Paged and batched decoding (docs/DESIGN.md §1, "Paged and batched decoding"): the KV
//! formats a cache stores (f32, int8, 4-bit) as bytes and back, the tree of a step's drafted
//! tokens, and the f64 oracle of one sequence's step — its new tokens' queries against the
//! cache and their own ancestors.

use crate::error::{Error, Result};

/// How a cache stores one row of K or V (`D` values of one kv head at one slot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum KvFormat {
    /// 4 bytes a value, exact.
    #[default]
    F32,
    /// A byte a value: `round(x / amax · 127)` (WGSL's `pack4x8snorm`) with the row's largest
    /// |x| as an f32 beside it; read back as `i / 127 · amax`.
    Int8,
    /// Half a byte a value, in groups of 32: codes `round((x − min) / step)` in 0..=15 with
    /// `step = (max − min) / 15` and `min` stored as two f16 beside each group (both rounded
    /// to f16 before the codes are taken); read back as `min + n · step`.
    Int4,
}

impl KvFormat {
    /// Every format.
    pub const ALL: [KvFormat; 3] = [KvFormat::F32, KvFormat::Int8, KvFormat::Int4];

    /// `f32`, `int8` or `int4`.
    pub fn name(self) -> &'static str {
        match self {
            KvFormat::F32 => "f32",
            KvFormat::Int8 => "int8",
            KvFormat::Int4 => "int4",
        }
    }

    /// From `f32`, `int8` (or `i8`, `q8`) or `int4` (`i4`, `q4`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Ok(KvFormat::F32),
            "int8" | "i8" | "q8" => Ok(KvFormat::Int8),
            "int4" | "i4" | "q4" => Ok(KvFormat::Int4),
            other => Err(Error::Invalid(format!("unknown KV format {other:?}: expected f32, int8 or int4"))),
        }
    }

    /// The kernel's format code (paged.wgsl's KFMT / VFMT).
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Values a stored 16-byte word holds.
    pub fn values_per_word(self) -> usize {
        match self {
            KvFormat::F32 => 4,
            KvFormat::Int8 => 16,
            KvFormat::Int4 => 32,
        }
    }

    /// The head dim a cache of this format stores for head dim `d`: `d` rounded up to whole
    /// words (the padding is zeros, which Q's zero padding multiplies).
    pub fn stored_dim(self, d: usize) -> usize {
        d.next_multiple_of(self.values_per_word())
    }

    /// Scale words (u32) per stored row of `stored` values: none, one, one per group of 32.
    pub fn scales_per_row(self, stored: usize) -> usize {
        match self {
            KvFormat::F32 => 0,
            KvFormat::Int8 => 1,
            KvFormat::Int4 => stored / 32,
        }
    }

    /// Device bytes of one row of head dim `d` (words and scales).
    pub fn row_bytes(self, d: usize) -> u64 {
        let stored = self.stored_dim(d);
        (stored / self.values_per_word() * 16 + self.scales_per_row(stored) * 4) as u64
    }

    /// One row of `stored_dim` values as the cache holds it: (four u32 a word, scale words).
    pub fn encode_row(self, x: &[f32]) -> (Vec<u32>, Vec<u32>) {
        match self {
            KvFormat::F32 => (x.iter().map(|v| v.to_bits()).collect(), Vec::new()),
            KvFormat::Int8 => {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let inv = if amax > 0.0 { 1.0 / amax } else { 0.0 };
                let words = x
                    .chunks_exact(4)
                    .map(|c| {
                        c.iter().enumerate().fold(0u32, |w, (k, &v)| {
                            let code = ((v * inv).clamp(-1.0, 1.0) * 127.0).round_ties_even() as i8;
                            w | ((code as u8 as u32) << (8 * k))
                        })
                    })
                    .collect();
                (words, vec![amax.to_bits()])
            }
            KvFormat::Int4 => {
                let mut words = Vec::with_capacity(x.len() / 8);
                let mut scales = Vec::with_capacity(x.len() / 32);
                for g in x.chunks_exact(32) {
                    let lo = g.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                    let hi = g.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                    let (step, min) = (half::f16::from_f32((hi - lo) / 15.0), half::f16::from_f32(lo));
                    scales.push(step.to_bits() as u32 | (min.to_bits() as u32) << 16);
                    let (step, min) = (step.to_f32(), min.to_f32());
                    let inv = if step > 0.0 { 1.0 / step } else { 0.0 };
                    for c in g.chunks_exact(8) {
                        words.push(c.iter().enumerate().fold(0u32, |w, (k, &v)| {
                            let code = ((v - min) * inv).round_ties_even().clamp(0.0, 15.0) as u32;
                            w | code << (4 * k)
                        }));
                    }
                }
                (words, scales)
            }
        }
    }

    /// The values of one stored row (`words` four u32 a word, `scales` its scale words).
    pub fn decode_row(self, words: &[u32], scales: &[u32]) -> Vec<f32> {
        match self {
            KvFormat::F32 => words.iter().map(|&w| f32::from_bits(w)).collect(),
            KvFormat::Int8 => {
                let amax = f32::from_bits(scales[0]);
                words
                    .iter()
                    .flat_map(|&w| {
                        (0..4).map(move |k| ((w >> (8 * k)) as u8 as i8 as f32 / 127.0).max(-1.0) * amax)
                    })
                    .collect()
            }
            KvFormat::Int4 => words
                .chunks_exact(4)
                .zip(scales)
                .flat_map(|(g, &sm)| {
                    let step = half::f16::from_bits(sm as u16).to_f32();
                    let min = half::f16::from_bits((sm >> 16) as u16).to_f32();
                    g.iter()
                        .flat_map(move |&w| (0..8).map(move |k| min + ((w >> (4 * k)) & 15) as f32 * step))
                })
                .collect(),
        }
    }
}

/// The most tokens one sequence's step may add (a step's tree is a bit mask in a u32).
pub const MAX_STEP_TOKENS: usize = 32;

/// The tokens one step adds to a sequence, as a tree: token `t`'s parent is an earlier token
/// of the step or, for `None`, the last cached token. A chain (`Tree::chain`) is an ordinary
/// step; a tree holds several drafted continuations verified at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    parents: Vec<Option<usize>>,
}

impl Tree {
    /// `t` tokens in a row, each the parent of the next.
    pub fn chain(t: usize) -> Self {
        Self { parents: (0..t).map(|i| i.checked_sub(1)).collect() }
    }

    /// A tree from each token's parent (an earlier token of the step, or `None`).
    pub fn new(parents: Vec<Option<usize>>) -> Result<Self> {
        if parents.is_empty() || parents.len() > MAX_STEP_TOKENS {
            return Err(Error::OutOfRange {
                what: "tokens in one sequence's step".into(),
                value: parents.len() as u64,
                min: 1,
                max: MAX_STEP_TOKENS as u64,
            });
        }
        for (t, p) in parents.iter().enumerate() {
            if let Some(p) = *p
                && p >= t
            {
                return Err(Error::Invalid(format!(
                    "draft token {t}'s parent must be an earlier token of the step; got {p}"
                )));
            }
        }
        Ok(Self { parents })
    }

    /// Tokens.
    pub fn len(&self) -> usize {
        self.parents.len()
    }

    /// Never: a step adds at least one token.
    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }

    /// Token `t`'s parent.
    pub fn parent(&self, t: usize) -> Option<usize> {
        self.parents[t]
    }

    /// Tokens between `t` and the cache: 0 for a child of the last cached token.
    pub fn depth(&self, t: usize) -> usize {
        let mut d = 0;
        let mut at = self.parents[t];
        while let Some(p) = at {
            d += 1;
            at = self.parents[p];
        }
        d
    }

    /// Bit `u` set for `t` itself and each of its ancestors.
    pub fn ancestors(&self, t: usize) -> u32 {
        let mut mask = 1u32 << t;
        let mut at = self.parents[t];
        while let Some(p) = at {
            mask |= 1 << p;
            at = self.parents[p];
        }
        mask
    }

    /// The tokens from the root to `t`, in order.
    pub fn path(&self, t: usize) -> Vec<usize> {
        let mut path = vec![t];
        let mut at = self.parents[t];
        while let Some(p) = at {
            path.push(p);
            at = self.parents[p];
        }
        path.reverse();
        path
    }
}

/// The attention every sequence of a step shares: heads, scale, bias, window and sinks.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRule {
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads (H a multiple of them).
    pub kv_heads: usize,
    /// Head dim D.
    pub head_dim: usize,
    /// Score scale.
    pub scale: f32,
    /// ALiBi slopes per query head, if any.
    pub slopes: Option<Vec<f32>>,
    /// A key is visible within this many positions before the query (`None`: all).
    pub window: Option<usize>,
    /// The first positions, visible whatever the window (StreamingLLM's sinks).
    pub sinks: usize,
}

impl StepRule {
    /// Whether the query at `pos` sees the key at `key` (≤ `pos`) outside the step's tree.
    pub fn sees(&self, pos: usize, key: usize) -> bool {
        key < self.sinks || self.window.is_none_or(|w| pos - key <= w)
    }
}

/// One sequence's step: the cache it reads (every slot's K and V, new tokens last) and its new
/// tokens' queries and tree.
#[derive(Clone, Copy, Debug)]
pub struct SeqStep<'a> {
    /// `[len, Hkv, D]`: the cached slots, the step's new tokens last (slot `len − T + u` is
    /// token `u`).
    pub keys: &'a [f32],
    /// As `keys`.
    pub values: &'a [f32],
    /// `[T, H, D]`.
    pub queries: &'a [f32],
    /// The new tokens' tree (T tokens).
    pub tree: &'a Tree,
}

/// The f64 oracle of one sequence's step: O `[T, H, D]` and LSE `[T, H]` (−∞ and zeros for a
/// query that sees nothing). Positions: slot s below the step's first new slot F = len − T is
/// at s, new token u at F + depth(u); query t at F + depth(t) sees old slot s where
/// `rule.sees`, new token u where u is t or an ancestor (and `rule.sees` its position).
pub fn step_f64(rule: &StepRule, seq: &SeqStep) -> (Vec<f64>, Vec<f64>) {
    let (h, hkv, d) = (rule.heads, rule.kv_heads, rule.head_dim);
    let t_new = seq.tree.len();
    let len = seq.keys.len() / (hkv * d);
    let fresh = len - t_new;
    let mut o = vec![0f64; t_new * h * d];
    let mut lse = vec![f64::NEG_INFINITY; t_new * h];
    for t in 0..t_new {
        let pos = fresh + seq.tree.depth(t);
        let anc = seq.tree.ancestors(t);
        for head in 0..h {
            let kvh = head / (h / hkv);
            let slope = rule.slopes.as_ref().map_or(0.0, |s| s[head] as f64);
            let q = &seq.queries[(t * h + head) * d..][..d];
            let scores: Vec<(usize, f64)> = (0..len)
                .filter_map(|s| {
                    let kp = if s < fresh {
                        s
                    } else {
                        let u = s - fresh;
                        if anc >> u & 1 == 0 {
                            return None;
                        }
                        fresh + seq.tree.depth(u)
                    };
                    if !rule.sees(pos, kp) {
                        return None;
                    }
                    let k = &seq.keys[(s * hkv + kvh) * d..][..d];
                    let dot: f64 = q.iter().zip(k).map(|(&a, &b)| a as f64 * b as f64).sum();
                    Some((s, dot * rule.scale as f64 - slope * (pos - kp) as f64))
                })
                .collect();
            if scores.is_empty() {
                continue;
            }
            let m = scores.iter().fold(f64::NEG_INFINITY, |m, &(_, x)| m.max(x));
            let l: f64 = scores.iter().map(|&(_, x)| (x - m).exp()).sum();
            let out = &mut o[(t * h + head) * d..][..d];
            for &(s, x) in &scores {
                let p = (x - m).exp() / l;
                let v = &seq.values[(s * hkv + kvh) * d..][..d];
                out.iter_mut().zip(v).for_each(|(a, &b)| *a += p * b as f64);
            }
            lse[t * h + head] = m + l.ln();
        }
    }
    (o, lse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_round_trip_within_their_step() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 64) as f32 - 31.5) / 9.0).collect();
        for f in KvFormat::ALL {
            let (w, s) = f.encode_row(&x);
            assert_eq!((w.len() * 4 + s.len() * 4) as u64, f.row_bytes(64), "{f:?}");
            let y = f.decode_row(&w, &s);
            let worst = x.iter().zip(&y).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            let bound = match f {
                KvFormat::F32 => 0.0,
                KvFormat::Int8 => 3.5 / 127.0 * 0.5 * 1.01,
                KvFormat::Int4 => 7.0 / 15.0 * 0.52,
            };
            assert!(worst <= bound, "{f:?}: {worst} > {bound}");
        }
    }

    #[test]
    fn trees_know_their_ancestors() {
        let t = Tree::new(vec![None, Some(0), Some(0), Some(2), None]).unwrap();
        assert_eq!(t.ancestors(3), 0b1101);
        assert_eq!((t.depth(3), t.depth(4)), (2, 0));
        assert_eq!(t.path(3), vec![0, 2, 3]);
        assert_eq!(Tree::chain(3).ancestors(2), 0b111);
        assert!(Tree::new(vec![Some(0)]).is_err());
        assert!(Tree::new(vec![None; 33]).is_err());
    }
}
