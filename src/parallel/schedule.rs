//! How ring attention splits one attention call over P ranks (no GPU here).
//!
//! The N query rows and the M keys are each cut into chunks along the sequence; rank r owns
//! some Q chunks and the K/V chunks of the same indices (its *block*). Contiguous sharding
//! gives rank r chunk r of P. Zigzag sharding (for causal attention) cuts 2P chunks and gives
//! rank r chunks r and 2P − 1 − r, so every rank holds as many early (cheap) as late
//! (expensive) causal rows: equal work per rank. Chunk sizes differ by at most one row, so N
//! and M need not be multiples of P.
//!
//! At ring step s (0..P) rank r holds the block of rank (r − s) mod P. Each (Q chunk, K
//! chunk) pair is one attention call at global positions — [`RingSchedule::pair_spec`] sets its query
//! start so the band, ALiBi and positional encodings see global positions, and its mask is
//! the whole call's seen from the pair ([`Mask::shifted`]) — and a pair with no visible key
//! under the band or the mask is skipped.

use std::ops::Range;

use crate::contract::mask::{Coverage, Mask};
use crate::contract::spec::AttnSpec;
use crate::error::{Error, Result};

/// How the sequence is cut into rank-owned chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharding {
    /// Rank r owns chunk r of P.
    Contiguous,
    /// Rank r owns chunks r and 2P − 1 − r of 2P (load-balanced for causal attention).
    Zigzag,
}

impl Sharding {
    /// Zigzag for causal attention (where contiguous chunks give the last rank P× the first
    /// one's work), contiguous otherwise.
    pub fn for_spec(spec: &AttnSpec) -> Self {
        if spec.causal { Sharding::Zigzag } else { Sharding::Contiguous }
    }

    /// Chunks the sequence is cut into for `ranks` ranks.
    pub fn chunks(self, ranks: usize) -> usize {
        match self {
            Sharding::Contiguous => ranks,
            Sharding::Zigzag => 2 * ranks,
        }
    }

    /// The chunk indices rank `r` of `ranks` owns, in sequence order.
    pub fn owned(self, r: usize, ranks: usize) -> Vec<usize> {
        match self {
            Sharding::Contiguous => vec![r],
            Sharding::Zigzag => vec![r, 2 * ranks - 1 - r],
        }
    }
}

/// `len` items cut into `parts` ranges whose sizes differ by at most one (the first
/// `len % parts` one longer).
pub fn split(len: usize, parts: usize) -> Vec<Range<usize>> {
    let (base, extra) = (len / parts, len % parts);
    let mut start = 0;
    (0..parts)
        .map(|i| {
            let n = base + usize::from(i < extra);
            let r = start..start + n;
            start += n;
            r
        })
        .collect()
}

/// One call's ring plan: the full problem, its ranks and chunks.
#[derive(Clone, Debug)]
pub struct RingSchedule {
    /// The whole attention call.
    pub spec: AttnSpec,
    /// Ranks P.
    pub ranks: usize,
    /// How the sequence is cut.
    pub sharding: Sharding,
    /// Query rows of each chunk.
    pub q_chunks: Vec<Range<usize>>,
    /// Keys of each chunk.
    pub k_chunks: Vec<Range<usize>>,
}

impl RingSchedule {
    /// Plans `spec` over `ranks` ranks; a typed error when the problem cannot be split so
    /// (fewer rows or keys than chunks, rules the ring does not carry).
    pub fn new(spec: &AttnSpec, ranks: usize, sharding: Sharding) -> Result<Self> {
        spec.validate()?;
        let s = spec.shape;
        let chunks = sharding.chunks(ranks.max(1));
        if ranks == 0 || s.n < chunks || s.m < chunks {
            return Err(Error::Invalid(format!(
                "ring attention over {ranks} ranks ({sharding:?}) cuts N = {} query rows and M = {} keys into {chunks} chunks each: both need at least one row per chunk",
                s.n, s.m
            )));
        }
        let refuse = |what: &str| {
            Err(Error::Invalid(format!(
                "ring attention does not carry {what} yet (causal, windows, sparse masks, ALiBi, positional encodings and GQA/MQA it does)"
            )))
        };
        if spec.mods.is_some() {
            return refuse("mods");
        }
        if spec.q_start.is_some() {
            return refuse("an explicit query start");
        }
        Ok(Self {
            spec: spec.clone(),
            ranks,
            sharding,
            q_chunks: split(s.n, chunks),
            k_chunks: split(s.m, chunks),
        })
    }

    /// The chunk indices rank `r` owns (its Q chunks and its K/V block).
    pub fn owned(&self, r: usize) -> Vec<usize> {
        self.sharding.owned(r, self.ranks)
    }

    /// The rank whose block rank `r` holds at step `step`.
    pub(crate) fn holder_of(&self, r: usize, step: usize) -> usize {
        (r + self.ranks - step % self.ranks) % self.ranks
    }

    /// The call of query chunk `qc` against key chunk `kc`: their sizes, query row 0 at its
    /// global position relative to the chunk's first key, a positional encoding's offset at
    /// that key. `None` when the band leaves no pair visible (the pair is skipped).
    pub fn pair_spec(&self, qc: usize, kc: usize) -> Option<AttnSpec> {
        let (q, k) = (&self.q_chunks[qc], &self.k_chunks[kc]);
        let mut spec = self.spec.clone();
        spec.shape.n = q.len();
        spec.shape.m = k.len();
        spec.q_start = Some(self.spec.position(q.start) - k.start as i64);
        if let Some(p) = &mut spec.positions {
            p.offset += k.start;
        }
        spec.mask = spec.mask.map(|m| m.shifted(q.start, k.start));
        // skipped when the band, or the mask in every head, hides the whole pair
        let heads = if spec.mask.as_ref().is_some_and(Mask::per_head) { spec.shape.heads } else { 1 };
        let hidden = spec.mask.as_ref().is_some_and(|m| {
            (0..heads)
                .all(|h| m.coverage(h, &(0..q.len()), &(0..k.len()), spec.q_offset()) == Coverage::Empty)
        });
        (spec.band_pairs() > 0 && !hidden).then_some(spec)
    }

    /// Visible (query, key) pairs per head that rank `r` computes over the whole ring: its
    /// share of the work.
    pub fn rank_pairs(&self, r: usize) -> u64 {
        let mine = self.owned(r);
        (0..self.ranks)
            .flat_map(|other| self.owned(other))
            .flat_map(|kc| mine.iter().map(move |&qc| (qc, kc)))
            .filter_map(|(qc, kc)| self.pair_spec(qc, kc))
            .map(|s| s.band_pairs())
            .sum()
    }

    /// Floats of one (batch, head) sequence chunk's rows times the heads: the length of
    /// rank-local Q-shaped data for chunk `qc` (`heads` = H) or K-shaped for a key chunk
    /// (`heads` = Hkv).
    pub(crate) fn chunk_len(&self, rows: usize, heads: usize) -> usize {
        let s = self.spec.shape;
        s.batch * heads * rows * s.head_dim
    }
}

/// Rows `rows` of every (batch, head) sequence of a `[B, heads, len, D]` tensor, as a
/// `[B, heads, rows.len(), D]` tensor.
pub(crate) fn take_rows<T: Copy>(
    x: &[T],
    batch_heads: usize,
    len: usize,
    d: usize,
    rows: &Range<usize>,
) -> Vec<T> {
    (0..batch_heads)
        .flat_map(|bh| &x[(bh * len + rows.start) * d..(bh * len + rows.end) * d])
        .copied()
        .collect()
}

/// Writes a `[B, heads, rows.len(), D]` chunk back into rows `rows` of a `[B, heads, len, D]`
/// tensor.
pub(crate) fn put_rows(
    out: &mut [f32],
    chunk: &[f32],
    batch_heads: usize,
    len: usize,
    d: usize,
    rows: &Range<usize>,
) {
    let n = rows.len() * d;
    for bh in 0..batch_heads {
        out[(bh * len + rows.start) * d..(bh * len + rows.end) * d]
            .copy_from_slice(&chunk[bh * n..(bh + 1) * n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::AttnShape;

    #[test]
    fn zigzag_balances_causal_work_and_skips_hidden_pairs() {
        let shape = AttnShape { batch: 1, heads: 1, kv_heads: 1, n: 1000, m: 1000, head_dim: 8 };
        let spec = AttnSpec::new(shape).causal(true);
        for ranks in [2, 3, 4] {
            let zig = RingSchedule::new(&spec, ranks, Sharding::Zigzag).unwrap();
            let flat = RingSchedule::new(&spec, ranks, Sharding::Contiguous).unwrap();
            let z: Vec<u64> = (0..ranks).map(|r| zig.rank_pairs(r)).collect();
            let c: Vec<u64> = (0..ranks).map(|r| flat.rank_pairs(r)).collect();
            // every pair once, whatever the sharding
            assert_eq!(z.iter().sum::<u64>(), spec.band_pairs());
            assert_eq!(c.iter().sum::<u64>(), spec.band_pairs());
            let spread = |v: &[u64]| *v.iter().max().unwrap() as f64 / *v.iter().min().unwrap() as f64;
            assert!(spread(&z) < 1.01, "zigzag {z:?}");
            assert!(spread(&c) > 2.0, "contiguous {c:?}");
            // causal: a query chunk never sees a later key chunk
            assert!(flat.pair_spec(0, 1).is_none() && flat.pair_spec(1, 0).is_some());
        }
    }

    #[test]
    fn odd_sizes_and_refusals() {
        assert_eq!(split(10, 4), vec![0..3, 3..6, 6..8, 8..10]);
        let shape = AttnShape { batch: 1, heads: 1, kv_heads: 1, n: 5, m: 7, head_dim: 8 };
        assert!(RingSchedule::new(&AttnSpec::new(shape), 3, Sharding::Zigzag).is_err());
        assert!(RingSchedule::new(&AttnSpec::new(shape), 2, Sharding::Zigzag).is_ok());
        assert!(RingSchedule::new(&AttnSpec::new(shape), 0, Sharding::Contiguous).is_err());
    }
}
