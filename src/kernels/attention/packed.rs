//! Packed prefill: several sequences' prompts concatenated without padding and attended in
//! one flash call. Each sequence is causal over its own tokens only — the contract's
//! `Causal ∧ Segments(ids)` with one segment id per sequence — so the block map skips every
//! key tile of another sequence and the work is the sum of each sequence's causal triangle,
//! not the batch padded to its longest member. Positions restart at 0 in every sequence:
//! ALiBi's bias and RoPE's rotation depend only on the distance between two tokens of one
//! sequence, which packing keeps (RoPE is applied by the caller, per sequence).
//!
//! Token-major layout, as a model holds its rows: Q and O `[T, H, D]`, K and V `[T, Hkv, D]`,
//! LSE `[T, H]`, with T the sum of the lengths. The oracle ([`packed_f64`]) runs each
//! sequence alone through the contract's f64 attention.

use std::sync::Arc;

use super::{Kernel, attention};
use crate::contract::AttnShape;
use crate::contract::mask::Mask;
use crate::contract::reference::attention_f64;
use crate::contract::spec::{Alibi, AttnOutput, AttnSpec};
use crate::error::{Error, Result};
use crate::runtime::Gpu;

/// The sequences of one packed call and their heads.
#[derive(Clone, Debug, PartialEq)]
pub struct Packed {
    /// Tokens of each sequence, in the order they are concatenated (each at least 1).
    pub lens: Vec<usize>,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (GQA: a divisor of `heads`).
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// ALiBi slopes, per query head.
    pub alibi: Alibi,
}

impl Packed {
    /// Total tokens, checked.
    pub fn tokens(&self) -> Result<usize> {
        if self.lens.is_empty() || self.lens.contains(&0) {
            return Err(Error::Invalid(format!(
                "a packed call needs at least one sequence and every sequence at least one token: lengths {:?}",
                self.lens
            )));
        }
        self.lens
            .iter()
            .try_fold(0usize, |a, &n| a.checked_add(n))
            .ok_or_else(|| Error::Invalid(format!("packed lengths {:?} overflow", self.lens)))
    }

    /// The attention problem the packed call is: one batch of all tokens, causal, each token
    /// seeing only its own sequence.
    pub fn spec(&self) -> Result<AttnSpec> {
        let t = self.tokens()?;
        let ids: Vec<u32> =
            self.lens.iter().enumerate().flat_map(|(s, &n)| std::iter::repeat_n(s as u32, n)).collect();
        let mut shape = AttnShape::mha(1, self.heads, t, t, self.head_dim);
        shape.kv_heads = self.kv_heads;
        let spec = AttnSpec::new(shape)
            .causal(true)
            .mask(Some(Mask::Segments(Arc::new(ids))))
            .alibi(self.alibi.clone());
        spec.validate()?;
        Ok(spec)
    }
}

/// `[T, H, D]` → `[H, T, D]` (and back with the two counts swapped).
fn swap_rows(x: &[f32], outer: usize, inner: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (i, row) in x.chunks_exact(d).enumerate() {
        let (a, b) = (i / inner, i % inner);
        out[(b * outer + a) * d..][..d].copy_from_slice(row);
    }
    out
}

/// The packed call on the GPU (flash with the sequences' segment mask). Token-major inputs
/// and outputs (module docs).
pub fn packed_attention(gpu: &Gpu, p: &Packed, q: &[f32], k: &[f32], v: &[f32]) -> Result<AttnOutput> {
    let spec = p.spec()?;
    let t = spec.shape.n;
    let (h, hkv, d) = (p.heads, p.kv_heads, p.head_dim);
    for (what, x, heads) in [("Q", q, h), ("K", k, hkv), ("V", v, hkv)] {
        if x.len() != t * heads * d {
            return Err(Error::Length {
                what: format!("packed {what}"),
                got: x.len(),
                shape: vec![t, heads, d],
                expected: t * heads * d,
            });
        }
    }
    let out = attention(
        gpu,
        Kernel::Flash,
        &spec,
        &swap_rows(q, t, h, d),
        &swap_rows(k, t, hkv, d),
        &swap_rows(v, t, hkv, d),
    )?;
    Ok(AttnOutput { o: swap_rows(&out.o, h, t, d), lse: swap_rows(&out.lse, h, t, 1) })
}

/// The oracle: each sequence alone through [`attention_f64`] (causal, its own positions from
/// 0), laid out as [`packed_attention`]'s outputs.
pub fn packed_f64(p: &Packed, q: &[f32], k: &[f32], v: &[f32]) -> Result<(Vec<f64>, Vec<f64>)> {
    let t = p.tokens()?;
    let (h, hkv, d) = (p.heads, p.kv_heads, p.head_dim);
    let (mut o, mut lse) = (Vec::with_capacity(t * h * d), Vec::with_capacity(t * h));
    let mut start = 0;
    for &n in &p.lens {
        let mut shape = AttnShape::mha(1, h, n, n, d);
        shape.kv_heads = hkv;
        let spec = AttnSpec::new(shape).causal(true).alibi(p.alibi.clone());
        let part =
            |x: &[f32], heads: usize| swap_rows(&x[start * heads * d..(start + n) * heads * d], n, heads, d);
        let (so, sl) = attention_f64(&spec, &part(q, h), &part(k, hkv), &part(v, hkv))?;
        // [H, n, D] → [n, H, D]
        for i in 0..n {
            for head in 0..h {
                o.extend_from_slice(&so[(head * n + i) * d..][..d]);
                lse.push(sl[head * n + i]);
            }
        }
        start += n;
    }
    Ok((o, lse))
}
