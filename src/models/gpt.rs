//! A small decoder-only transformer (GPT-2's layout, byte-level) for issue 20's
//! train-short-test-long experiment: token embedding tied with the output head, pre-LayerNorm
//! blocks (causal attention, a GELU FFN), a final LayerNorm; four positional schemes that
//! differ in nothing else — none, sinusoidal embeddings added to the input, RoPE on queries
//! and keys, ALiBi biases.
//!
//! Here: the configuration, the parameters as one flat tensor with named slices (what a
//! checkpoint stores), and the f64 forward pass with its next-token loss — the oracle the
//! GPU model's gradients are checked against by finite differences.

use crate::contract::dsa::Dsa;
use crate::contract::nsa::Nsa;
use crate::contract::positions::{Positions, RopeScaling};
use crate::contract::spec::alibi_slope;
use crate::error::{Error, Result};
use crate::kernels::train::{gelu_f64, layer_norm_f64};

/// How positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PosScheme {
    /// No positional information (causal masking alone).
    None,
    /// Sinusoidal embeddings (θ = 10000) added to the token embeddings, scaled by
    /// [`SINUSOID_SCALE`].
    Sinusoidal,
    /// Rotary positions (half-split pairs, θ = 10000) on queries and keys.
    Rope,
    /// ALiBi's per-head linear biases.
    Alibi,
}

impl PosScheme {
    /// The scheme's name as [`PosScheme::parse`] reads it.
    pub fn name(self) -> &'static str {
        match self {
            PosScheme::None => "none",
            PosScheme::Sinusoidal => "sinusoidal",
            PosScheme::Rope => "rope",
            PosScheme::Alibi => "alibi",
        }
    }

    /// Parses `none`, `sinusoidal`, `rope` or `alibi`.
    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text {
            "none" => PosScheme::None,
            "sinusoidal" => PosScheme::Sinusoidal,
            "rope" => PosScheme::Rope,
            "alibi" => PosScheme::Alibi,
            x => {
                return Err(Error::Invalid(format!(
                    "positional scheme `{x}`: choose none, sinusoidal, rope or alibi"
                )));
            }
        })
    }
}

/// The model's sizes.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GptConfig {
    /// Vocabulary (256: bytes).
    pub vocab: usize,
    /// Width d.
    pub d_model: usize,
    /// Attention heads (d_model % heads == 0).
    pub heads: usize,
    /// Blocks.
    pub layers: usize,
    /// FFN width (4·d in GPT-2).
    pub ffn: usize,
    /// Positional scheme.
    pub pos: PosScheme,
    /// The blocks' attention (dense causal unless a checkpoint says otherwise).
    #[serde(default)]
    pub attn: AttnKind,
    /// RoPE's frequencies rescaled to run past the training length (an evaluation's choice;
    /// none when trained).
    #[serde(default)]
    pub rope_scaling: RopeScaling,
    /// StreamingLLM's attention (an evaluation's choice; none: full causal): each query sees
    /// the keys at most `window` before it and the first `sinks` positions. Dense attention
    /// only.
    #[serde(default)]
    pub window: Option<SinkWindow>,
}

/// A window with attention sinks (Xiao et al. 2024, StreamingLLM): query i sees key j ≤ i
/// when `i − j ≤ window` or `j < sinks` — the paged decoder's rule (docs/DESIGN.md §1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SinkWindow {
    /// Keys before the query it still sees.
    pub window: usize,
    /// The first positions every query sees.
    pub sinks: usize,
}

impl SinkWindow {
    /// Parses `W` or `W+S` (a window of W keys and S sinks).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || Error::Invalid(format!("window `{text}`: expected W or W+S (whole numbers)"));
        let (w, s) = text.trim().split_once('+').unwrap_or((text.trim(), "0"));
        Ok(Self { window: w.trim().parse().map_err(|_| bad())?, sinks: s.trim().parse().map_err(|_| bad())? })
    }

    /// Whether query `i` sees key `j ≤ i`.
    pub fn sees(&self, i: usize, j: usize) -> bool {
        i - j <= self.window || j < self.sinks
    }

    /// The contract's mask for it (ANDed with causal).
    pub fn mask(&self) -> crate::contract::mask::Mask {
        use crate::contract::mask::Mask;
        let band = Mask::Window(crate::contract::Window::new(self.window, 0));
        if self.sinks == 0 { band } else { Mask::Or(vec![band, Mask::Global(self.sinks)]) }
    }

    /// `window` or `window+sinks`, for names and records.
    pub fn name(&self) -> String {
        if self.sinks == 0 {
            format!("window {}", self.window)
        } else {
            format!("window {}+{} sinks", self.window, self.sinks)
        }
    }
}

/// The attention every block runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum AttnKind {
    /// Dense causal attention (flash).
    #[default]
    Dense,
    /// MoBA (`docs/DESIGN.md` §1): each query reads its own block of `block` keys and the
    /// `topk` − 1 earlier blocks whose mean key scores highest against it, chosen from the
    /// layer's own Q and K (rotated, with RoPE; no gradient through the choice).
    Moba {
        /// Keys per block.
        block: usize,
        /// Blocks each query reads, its own among them.
        topk: usize,
    },
    /// NSA (`docs/DESIGN.md` §1): each query mixes a compressed branch (mean-pooled keys
    /// and values), the blocks its compressed probabilities rank highest and a sliding
    /// window, by gates `sigmoid(LN1(x)·W_gate + b_gate)` per head and branch (two more
    /// parameter tensors per block, after the final LayerNorm); chosen from the layer's own
    /// Q and K (rotated, with RoPE; no gradient through the choice). φ is the mean.
    Nsa {
        /// Compression length l.
        cmp_len: usize,
        /// Compression stride d.
        cmp_stride: usize,
        /// Selection block l′.
        block: usize,
        /// Selection blocks per query n (the forced ones included).
        topk: usize,
        /// Sliding window w.
        window: usize,
    },
    /// DSA (`docs/DESIGN.md` §1): each query reads the `topk` keys a lightning indexer scores
    /// highest (`index_heads` heads of `index_dim`; qI, kI and w projected from LN1's output
    /// by three more linear maps per block, after the final LayerNorm). The indexer is
    /// detached from the model and learns from the sparse stage's KL to the attention over its
    /// chosen keys (mean over rows, each block's own), the rest from the next-token loss; no
    /// gradient through the choice.
    Dsa {
        /// Keys each query reads.
        topk: usize,
        /// The indexer's heads HI.
        index_heads: usize,
        /// The indexer's head dim DI.
        index_dim: usize,
    },
}

impl AttnKind {
    /// Parses `dense`, `moba:block=B,topk=K`, `nsa:cmp=L/D,slc=L2,top=N,win=W` or
    /// `dsa:topk=K[,heads=HI,dim=DI]`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim().split_once(':') {
            None if text.trim() == "dense" => Ok(Self::Dense),
            Some(("moba", params)) => {
                let m = crate::contract::selection::Moba::parse(params)?;
                Ok(Self::Moba { block: m.block, topk: m.topk })
            }
            Some(("dsa", params)) => {
                let d = Dsa::parse(params)?;
                Ok(Self::Dsa { topk: d.topk, index_heads: d.index_heads, index_dim: d.index_dim })
            }
            Some(("nsa", params)) => {
                let n = Nsa::parse(params)?;
                n.check()?;
                Ok(Self::Nsa {
                    cmp_len: n.cmp_len,
                    cmp_stride: n.cmp_stride,
                    block: n.block,
                    topk: n.topk,
                    window: n.window,
                })
            }
            _ => Err(Error::Invalid(format!(
                "attention `{text}`: expected dense, moba:block=B,topk=K, nsa:cmp=L/D,slc=L2,top=N,win=W or dsa:topk=K[,heads=HI,dim=DI]"
            ))),
        }
    }

    /// The kind's short name: dense, moba or nsa.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Dense => "dense",
            Self::Moba { .. } => "moba",
            Self::Nsa { .. } => "nsa",
            Self::Dsa { .. } => "dsa",
        }
    }

    /// The name as `parse` reads it.
    pub fn describe(&self) -> String {
        match self {
            Self::Dense => "dense".into(),
            Self::Moba { block, topk } => format!("moba:block={block},topk={topk}"),
            Self::Nsa { .. } => format!("nsa:{}", self.nsa().expect("NSA").describe()),
            Self::Dsa { .. } => format!("dsa:{}", self.dsa().expect("DSA").describe()),
        }
    }

    /// MoBA's parameters, if this is MoBA.
    pub fn moba(&self) -> Option<crate::contract::selection::Moba> {
        match *self {
            Self::Moba { block, topk } => Some(crate::contract::selection::Moba { block, topk }),
            Self::Dense | Self::Nsa { .. } | Self::Dsa { .. } => None,
        }
    }

    /// NSA's parameters, if this is NSA.
    pub fn nsa(&self) -> Option<Nsa> {
        match *self {
            Self::Nsa { cmp_len, cmp_stride, block, topk, window } => {
                Some(Nsa { cmp_len, cmp_stride, block, topk, window })
            }
            Self::Dense | Self::Moba { .. } | Self::Dsa { .. } => None,
        }
    }

    /// DSA's parameters, if this is DSA.
    pub fn dsa(&self) -> Option<Dsa> {
        match *self {
            Self::Dsa { topk, index_heads, index_dim } => Some(Dsa { topk, index_heads, index_dim }),
            Self::Dense | Self::Moba { .. } | Self::Nsa { .. } => None,
        }
    }
}

/// The factor on the sinusoidal table: GPT-2's embedding initialisation (σ = 0.02), so the
/// positions enter at the tokens' scale. Unscaled (amplitude 1, 35× the tokens' initial
/// norm at d = 64) they swamp the tokens: in a first run the sinusoidal model trailed the
/// others by a full nat per byte after 190 steps.
pub const SINUSOID_SCALE: f64 = 0.02;

/// Row `t` of the sinusoidal table of width `d` (what the scheme adds at position `t`).
pub fn sinusoid(t: usize, d: usize) -> Vec<f64> {
    let mut row = vec![0f64; d];
    Positions::sinusoidal().apply(&mut row, t as i64);
    row.iter_mut().for_each(|x| *x *= SINUSOID_SCALE);
    row
}

/// Most blocks a model may have.
pub const MAX_LAYERS: usize = 1024;
/// Most width (`d_model`, `ffn`) a model may have.
pub const MAX_WIDTH: usize = 1 << 16;
/// Most vocabulary a model may have.
pub const MAX_VOCAB: usize = 1 << 20;
/// Most parameters a model may have (4 GiB of f32; training holds three copies).
pub const MAX_PARAMS: usize = 1 << 30;

/// LayerNorm's ε (GPT-2's).
pub(crate) const LN_EPS: f64 = 1e-5;

impl GptConfig {
    /// A byte-level model of width `d_model`, `heads` heads, `layers` blocks, FFN 4·d.
    pub fn bytes(d_model: usize, heads: usize, layers: usize, pos: PosScheme) -> Self {
        Self {
            vocab: 256,
            d_model,
            heads,
            layers,
            ffn: 4 * d_model,
            pos,
            attn: AttnKind::Dense,
            rope_scaling: RopeScaling::None,
            window: None,
        }
    }

    /// The RoPE encoding of a [`PosScheme::Rope`] model: base 10000, half-split pairs,
    /// rescaled as `rope_scaling` says.
    pub fn rope(&self) -> Positions {
        Positions::rope(10000.0).scaled(self.rope_scaling)
    }

    /// Checks the sizes: positive, within [`MAX_LAYERS`], [`MAX_WIDTH`] and [`MAX_VOCAB`],
    /// and at most [`MAX_PARAMS`] parameters in all (sizes come from checkpoints and flags:
    /// bounded before anything is allocated).
    pub fn validate(&self) -> Result<()> {
        for (what, value, max) in [
            ("layers", self.layers, MAX_LAYERS),
            ("d_model", self.d_model, MAX_WIDTH),
            ("ffn", self.ffn, MAX_WIDTH),
            ("vocab", self.vocab, MAX_VOCAB),
            ("heads", self.heads, self.d_model.clamp(1, MAX_WIDTH)),
        ] {
            if value > max {
                return Err(Error::OutOfRange {
                    what: format!("model {what}"),
                    value: value as u64,
                    min: 1,
                    max: max as u64,
                });
            }
        }
        let (d, f, l, v) = (self.d_model as u64, self.ffn as u64, self.layers as u64, self.vocab as u64);
        // the bounds above keep this within u64
        // NSA's gate projection: d·3H + 3H more per block (H ≤ d)
        let gates = if self.attn.nsa().is_some() { 3 * d * d + 3 * d } else { 0 };
        // DSA's indexer: d·(HI·DI + DI + HI) and as many biases per block (checked below)
        let index = self.attn.dsa().map_or(0, |x| {
            let cols = (x.index_heads as u64)
                .saturating_mul(x.index_dim as u64 + 1)
                .saturating_add(x.index_dim as u64);
            (d + 1).saturating_mul(cols)
        });
        let gates = gates.saturating_add(index);
        let params = (v * d)
            .saturating_add(l.saturating_mul((4 * d * d + 2 * d * f + 9 * d + f).saturating_add(gates)))
            + 2 * d;
        if params > MAX_PARAMS as u64 {
            return Err(Error::OutOfRange {
                what: format!("model parameters (d_model {d}, ffn {f}, {l} layers, vocab {v})"),
                value: params,
                min: 1,
                max: MAX_PARAMS as u64,
            });
        }
        let ok = self.vocab > 0 && self.d_model > 0 && self.heads > 0 && self.layers > 0 && self.ffn > 0;
        let hd = self.d_model / self.heads.max(1);
        if !ok
            || !self.d_model.is_multiple_of(self.heads)
            || (self.pos == PosScheme::Rope && !hd.is_multiple_of(2))
        {
            return Err(Error::Invalid(format!(
                "model {self:?}: sizes must be positive, d_model a multiple of heads (and the head dim even for RoPE)"
            )));
        }
        if self.rope_scaling != RopeScaling::None {
            if self.pos != PosScheme::Rope {
                return Err(Error::Invalid(format!(
                    "RoPE scaling {} on a {} model: only RoPE's frequencies rescale",
                    self.rope_scaling.name(),
                    self.pos.name()
                )));
            }
            self.rope().validate(hd)?;
        }
        if self.window.is_some() && self.attn != AttnKind::Dense {
            return Err(Error::Invalid(format!(
                "a window with sinks on {} attention: it is defined for dense attention only",
                self.attn.name()
            )));
        }
        if let Some(m) = self.attn.moba() {
            m.check(&crate::contract::AttnShape::mha(1, self.heads, 1, 1, hd))?;
        }
        if let Some(x) = self.attn.dsa() {
            x.check_params()?;
            if x.index_heads > MAX_WIDTH || x.index_dim > MAX_WIDTH {
                return Err(Error::OutOfRange {
                    what: "DSA indexer heads or head dim".into(),
                    value: x.index_heads.max(x.index_dim) as u64,
                    min: 1,
                    max: MAX_WIDTH as u64,
                });
            }
        }
        if let Some(n) = self.attn.nsa() {
            n.check()?;
        }
        if self.pos == PosScheme::Alibi && matches!(self.attn, AttnKind::Nsa { .. } | AttnKind::Dsa { .. }) {
            // NSA's branches define their own masks; DSA's kernels read the chosen keys unbiased
            return Err(Error::Invalid(format!(
                "{} with ALiBi: its kernels take no ALiBi bias; train it with none, sinusoidal or rope",
                self.attn.name().to_uppercase()
            )));
        }
        Ok(())
    }

    /// The parameters' names and shapes, in storage order.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (d, f) = (self.d_model, self.ffn);
        let mut out = vec![("wte".to_string(), vec![self.vocab, d])];
        for l in 0..self.layers {
            let p = |n: &str| format!("h{l}.{n}");
            out.extend([
                (p("ln1.g"), vec![d]),
                (p("ln1.b"), vec![d]),
                (p("attn.w_qkv"), vec![d, 3 * d]),
                (p("attn.b_qkv"), vec![3 * d]),
                (p("attn.w_o"), vec![d, d]),
                (p("attn.b_o"), vec![d]),
                (p("ln2.g"), vec![d]),
                (p("ln2.b"), vec![d]),
                (p("ffn.w1"), vec![d, f]),
                (p("ffn.b1"), vec![f]),
                (p("ffn.w2"), vec![f, d]),
                (p("ffn.b2"), vec![d]),
            ]);
        }
        out.extend([("lnf.g".to_string(), vec![d]), ("lnf.b".to_string(), vec![d])]);
        if let Some(x) = self.attn.dsa() {
            // DSA's indexer per block: qI [token, HI·DI], kI [token, DI], w [token, HI]
            let (hi, di) = (x.index_heads, x.index_dim);
            for l in 0..self.layers {
                for (part, cols) in [("q", hi * di), ("k", di), ("w", hi)] {
                    out.push((format!("h{l}.index.w_{part}"), vec![d, cols]));
                    out.push((format!("h{l}.index.b_{part}"), vec![cols]));
                }
            }
        }
        if self.attn.nsa().is_some() {
            // NSA's gates per block: [token, head·3 + branch] logits
            for l in 0..self.layers {
                out.push((format!("h{l}.attn.w_gate"), vec![d, 3 * self.heads]));
                out.push((format!("h{l}.attn.b_gate"), vec![3 * self.heads]));
            }
        }
        out
    }

    /// FLOPs of a forward per token at length `seq`: the projections and the tied head
    /// (2 per multiply-add: 2·(4d² + 2d·F)·layers + 2·d·V) and causal attention (QKᵀ and PV
    /// over (seq + 1)/2 keys on average: 2·d·(seq + 1) per layer).
    pub fn forward_flops_per_token(&self, seq: usize) -> f64 {
        let (d, f, l, v) = (self.d_model as f64, self.ffn as f64, self.layers as f64, self.vocab as f64);
        2.0 * (4.0 * d * d + 2.0 * d * f) * l + 2.0 * d * v + 2.0 * d * (seq as f64 + 1.0) * l
    }

    /// FLOPs of a training step per token: the forward, the projections' backward (twice
    /// their forward: dX and dW) and attention's (2.5 times: recomputed scores, dP, dS·K,
    /// dSᵀ·Q, Pᵀ·dO).
    pub fn train_flops_per_token(&self, seq: usize) -> f64 {
        let attention = 2.0 * self.d_model as f64 * (seq as f64 + 1.0) * self.layers as f64;
        let rest = self.forward_flops_per_token(seq) - attention;
        3.0 * rest + 3.5 * attention
    }

    /// Parameters in all.
    pub fn params(&self) -> usize {
        self.shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }
}

/// The parameters as one flat tensor with named slices.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// The sizes.
    pub config: GptConfig,
    /// Every parameter, in [`GptConfig::shapes`] order.
    pub data: Vec<f32>,
}

impl Params {
    /// GPT-2's initialisation from `seed`: weights normal(0, 0.02) (the residual projections
    /// scaled by 1/√(2·layers)), biases 0, LayerNorm γ = 1 and β = 0.
    pub fn init(config: GptConfig, seed: u64) -> Result<Self> {
        use rand::{Rng, SeedableRng};
        config.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut normal = |std: f64| -> f32 {
            // Box–Muller from two uniforms
            let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random_range(0.0..1.0));
            ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * std) as f32
        };
        let residual = 0.02 / (2.0 * config.layers as f64).sqrt();
        let mut data = Vec::with_capacity(config.params());
        for (name, shape) in config.shapes() {
            let n: usize = shape.iter().product();
            let fill: Box<dyn FnMut() -> f32> = if name.ends_with(".g") {
                Box::new(|| 1.0)
            } else if shape.len() == 1 {
                Box::new(|| 0.0)
            } else if name.ends_with("w_o") || name.ends_with("w2") {
                Box::new(|| normal(residual))
            } else {
                Box::new(|| normal(0.02))
            };
            let mut fill = fill;
            data.extend((0..n).map(|_| fill()));
        }
        Ok(Self { config, data })
    }

    /// The slice of parameter `name` in `data` (or any tensor laid out like it).
    pub fn range(config: &GptConfig, name: &str) -> Option<std::ops::Range<usize>> {
        let mut at = 0;
        for (n, shape) in config.shapes() {
            let len: usize = shape.iter().product();
            if n == name {
                return Some(at..at + len);
            }
            at += len;
        }
        None
    }
}

/// `x` `[rows, k]` · `w` `[k, n]` + `b` in f64.
fn linear(x: &[f64], w: &[f64], b: &[f64], k: usize, n: usize) -> Vec<f64> {
    x.chunks_exact(k)
        .flat_map(|row| {
            (0..n).map(move |j| b[j] + row.iter().enumerate().map(|(i, &v)| v * w[i * n + j]).sum::<f64>())
        })
        .collect()
}

/// Inputs and targets of sequences of `seq + 1` tokens (the layout [`loss_f64`] reads): each
/// sequence's first `seq` tokens, and its last `seq`.
pub fn inputs_and_targets(tokens: &[u32], seq: usize) -> (Vec<u32>, Vec<u32>) {
    let mut out = (Vec::with_capacity(tokens.len()), Vec::with_capacity(tokens.len()));
    for s in tokens.chunks_exact(seq + 1) {
        out.0.extend(&s[..seq]);
        out.1.extend(&s[1..]);
    }
    out
}

/// Whether row `i` reads key `j ≤ i` under `attn`, for one head's `q` and `k` rows (positions
/// `0..t`): always for dense; for MoBA, whether `j`'s block is the row's own or one of the
/// `topk` − 1 earlier blocks of highest `q_i · mean(K_block)` (ties to the lower block) — the
/// rule of `docs/DESIGN.md` §1 in f64.
fn moba_reads_f64<'a>(
    attn: AttnKind,
    q: &'a [Vec<f64>],
    k: &'a [Vec<f64>],
) -> impl Fn(usize, usize) -> bool + 'a {
    let chosen: Option<(usize, Vec<Vec<usize>>)> = attn.moba().map(|m| {
        let means: Vec<Vec<f64>> = k
            .chunks(m.block)
            .map(|rows| {
                let mut mean = vec![0f64; rows[0].len()];
                rows.iter()
                    .for_each(|r| mean.iter_mut().zip(r).for_each(|(a, b)| *a += b / rows.len() as f64));
                mean
            })
            .collect();
        let lists = q
            .iter()
            .enumerate()
            .map(|(i, qi)| {
                let own = i / m.block;
                let gate = |b: usize| qi.iter().zip(&means[b]).map(|(a, c)| a * c).sum::<f64>();
                let mut earlier: Vec<usize> = (0..own).collect();
                // descending gate, ties to the lower block (a stable sort keeps index order)
                earlier.sort_by(|&x, &y| gate(y).partial_cmp(&gate(x)).unwrap_or(std::cmp::Ordering::Equal));
                earlier.truncate(m.topk - 1);
                earlier.push(own);
                earlier
            })
            .collect();
        (m.block, lists)
    });
    move |i, j| chosen.as_ref().is_none_or(|(block, lists)| lists[i].contains(&(j / block)))
}

/// One row of a head's Q, K or V in f64.
type Row = Vec<f64>;

/// NSA over one head's rows (positions `0..t`; Q and K as the branches read them, rotated
/// with RoPE) in f64, φ the mean: per row, `g₀·o_cmp + g₁·o_slc + g₂·o_win` with `gate(i, b)`
/// — the compressed branch over the mean-pooled windows ending at or before the row, the
/// blocks its probabilities rank highest (the contract's choice: forced blocks, then the best,
/// ties to the lower block) and the latest `window` keys (`docs/DESIGN.md` §1).
fn nsa_head_f64(
    nsa: &Nsa,
    scale: f64,
    (q, k, v): (&[Row], &[Row], &[Row]),
    gate: impl Fn(usize, usize) -> f64,
) -> Vec<Vec<f64>> {
    let (t, hd, l) = (q.len(), q[0].len(), nsa.cmp_len);
    let pool = |x: &[Vec<f64>], c: usize| -> Vec<f64> {
        let mut row = vec![0f64; hd];
        for r in &x[c * nsa.cmp_stride..][..l] {
            row.iter_mut().zip(r).for_each(|(a, b)| *a += b / l as f64);
        }
        row
    };
    let mc = nsa.compressed(t);
    let (kc, vc): (Vec<Vec<f64>>, Vec<Vec<f64>>) =
        ((0..mc).map(|c| pool(k, c)).collect(), (0..mc).map(|c| pool(v, c)).collect());
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    // softmax attention of row i over `keys` (its output, and the probabilities per key)
    let attend = |qi: &[f64], keys: &[(&[f64], &[f64])]| -> (Vec<f64>, Vec<f64>) {
        let mut o = vec![0f64; hd];
        if keys.is_empty() {
            return (o, Vec::new());
        }
        let s: Vec<f64> = keys.iter().map(|(kj, _)| scale * dot(qi, kj)).collect();
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
        let p: Vec<f64> = s.iter().map(|x| (x - m).exp() / z).collect();
        for ((_, vj), pj) in keys.iter().zip(&p) {
            o.iter_mut().zip(*vj).for_each(|(a, b)| *a += pj * b);
        }
        (o, p)
    };
    (0..t)
        .map(|i| {
            let visible: Vec<usize> = (0..mc).filter(|&c| nsa.compressed_visible(c, i as i64)).collect();
            let keys: Vec<(&[f64], &[f64])> = visible.iter().map(|&c| (&kc[c][..], &vc[c][..])).collect();
            let (o_cmp, p_cmp) = attend(&q[i], &keys);
            let mut probs = vec![0f64; mc];
            visible.iter().zip(&p_cmp).for_each(|(&c, &p)| probs[c] = p);
            let scores = crate::contract::nsa::block_scores_f64(nsa, nsa.blocks(t), &[&probs]);
            let list = crate::contract::nsa::choose_row(nsa, i as i64, &scores);
            let chosen: Vec<(&[f64], &[f64])> = (0..=i)
                .filter(|j| list.contains(&((j / nsa.block) as u32)))
                .map(|j| (&k[j][..], &v[j][..]))
                .collect();
            let window: Vec<(&[f64], &[f64])> =
                ((i + 1).saturating_sub(nsa.window)..=i).map(|j| (&k[j][..], &v[j][..])).collect();
            let (o_slc, o_win) = (attend(&q[i], &chosen).0, attend(&q[i], &window).0);
            (0..hd).map(|e| gate(i, 0) * o_cmp[e] + gate(i, 1) * o_slc[e] + gate(i, 2) * o_win[e]).collect()
        })
        .collect()
}

/// The mean next-token loss of `tokens` (`batch` sequences of `len + 1` ids: inputs and
/// shifted targets) under parameters `p` (f64, [`GptConfig::shapes`] order): the f64 oracle.
pub fn loss_f64(config: &GptConfig, p: &[f64], tokens: &[u32], batch: usize) -> Result<f64> {
    Ok(losses_f64(config, p, tokens, batch, None)?.0)
}

/// DSA's indexer objective under parameters `p` (tokens as [`loss_f64`]): each block's
/// sparse-stage KL, per row over its chosen keys, of its indexer's distribution to the
/// attention's over them (Q and K as the block reads them, averaged over the heads), averaged
/// over the rows and summed over the blocks — what the indexer's parameters learn from; 0 for
/// the other attention kinds.
pub fn index_loss_f64(config: &GptConfig, p: &[f64], tokens: &[u32], batch: usize) -> Result<f64> {
    Ok(losses_f64(config, p, tokens, batch, None)?.1)
}

/// DSA's choice for one sequence's rows in f64: per row i (position i), the `topk` keys
/// `s ≤ i` of the highest index score `I(i, s) = Σ_j w_j·ReLU(qI_j · kI_s)` (ties to the lower
/// key), and every row's `(scores, their LSE)`. `ix` = (qI `[t, HI·DI]`, kI `[t, DI]`, w
/// `[t, HI]`).
#[allow(clippy::type_complexity)]
fn dsa_rows_f64(
    dsa: &Dsa,
    (qi, ki, w): (&[f64], &[f64], &[f64]),
    t: usize,
) -> (Vec<Vec<usize>>, Vec<(Vec<f64>, f64)>) {
    let (hi, di) = (dsa.index_heads, dsa.index_dim);
    let mut lists = Vec::with_capacity(t);
    let mut scores = Vec::with_capacity(t);
    for i in 0..t {
        let row: Vec<f64> = (0..=i)
            .map(|s| {
                (0..hi)
                    .map(|j| {
                        let dot: f64 = qi[(i * hi + j) * di..][..di]
                            .iter()
                            .zip(&ki[s * di..][..di])
                            .map(|(a, b)| a * b)
                            .sum();
                        w[i * hi + j] * dot.max(0.0)
                    })
                    .sum()
            })
            .collect();
        let mut order: Vec<usize> = (0..=i).collect();
        // descending score, ties to the lower key (a stable sort keeps key order)
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]));
        order.truncate(dsa.topk);
        let m = row.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        lists.push(order);
        scores.push((row, lse));
    }
    (lists, scores)
}

/// The next-token loss and DSA's indexer objective ([`loss_f64`], [`index_loss_f64`]).
/// The f64 oracle's next-token logits after every token of `tokens` (one sequence): `[t][V]`.
pub fn logits_f64(config: &GptConfig, p: &[f64], tokens: &[u32]) -> Result<Vec<Vec<f64>>> {
    // the loss needs a target after the last token: any byte, its loss is not read
    let with_target = [tokens, &[0]].concat();
    let mut out = Vec::with_capacity(tokens.len());
    losses_f64(config, p, &with_target, 1, Some(&mut out))?;
    Ok(out)
}

/// The mean next-token loss and DSA's indexer loss; each position's logits pushed to `logits`
/// where given.
fn losses_f64(
    config: &GptConfig,
    p: &[f64],
    tokens: &[u32],
    batch: usize,
    mut logits_out: Option<&mut Vec<Vec<f64>>>,
) -> Result<(f64, f64)> {
    config.validate()?;
    if p.len() != config.params()
        || batch == 0
        || !tokens.len().is_multiple_of(batch)
        || tokens.len() / batch < 2
    {
        return Err(Error::Invalid(format!(
            "oracle: {} parameters (want {}), {} tokens in {batch} sequences of at least 2",
            p.len(),
            config.params(),
            tokens.len()
        )));
    }
    let get = |name: &str| &p[Params::range(config, name).expect("known parameter")];
    let (d, h, f, v) = (config.d_model, config.heads, config.ffn, config.vocab);
    let hd = d / h;
    let t = tokens.len() / batch - 1;
    let mut total = 0f64;
    let mut index_total = 0f64;
    let rope = config.rope();
    for seq in tokens.chunks_exact(t + 1) {
        if let Some(&bad) = seq.iter().find(|&&x| x as usize >= v) {
            return Err(Error::Invalid(format!("token {bad} is outside the vocabulary of {v}")));
        }
        // embeddings (+ sinusoidal positions)
        let wte = get("wte");
        let mut x: Vec<f64> =
            seq[..t].iter().flat_map(|&id| wte[id as usize * d..(id as usize + 1) * d].to_vec()).collect();
        if config.pos == PosScheme::Sinusoidal {
            for (i, row) in x.chunks_exact_mut(d).enumerate() {
                row.iter_mut().zip(sinusoid(i, d)).for_each(|(a, b)| *a += b);
            }
        }
        for l in 0..config.layers {
            let n = |name: &str| get(&format!("h{l}.{name}"));
            let a = layer_norm_f64(&x, n("ln1.g"), n("ln1.b"), d, LN_EPS);
            let qkv = linear(&a, n("attn.w_qkv"), n("attn.b_qkv"), d, 3 * d);
            let mut att = vec![0f64; t * d];
            // NSA's gate logits [t, 3H]
            let gate_logits = config.attn.nsa().map(|_| {
                let w = get(&format!("h{l}.attn.w_gate"));
                linear(&a, w, get(&format!("h{l}.attn.b_gate")), d, 3 * h)
            });
            // DSA's indexer on LN1's output and its choice, shared by the heads
            let index = config.attn.dsa().map(|x| {
                let (hi, di) = (x.index_heads, x.index_dim);
                let proj = |part: &str, cols: usize| {
                    linear(
                        &a,
                        get(&format!("h{l}.index.w_{part}")),
                        get(&format!("h{l}.index.b_{part}")),
                        d,
                        cols,
                    )
                };
                let (qi, ki, w) = (proj("q", hi * di), proj("k", di), proj("w", hi));
                dsa_rows_f64(&x, (&qi, &ki, &w), t)
            });
            // each head's Q and K as attention reads them, for DSA's dense target
            let mut read: Vec<(Vec<Row>, Vec<Row>)> = Vec::new();
            for head in 0..h {
                let col = |r: usize, part: usize| -> Vec<f64> {
                    qkv[r * 3 * d + part * d + head * hd..r * 3 * d + part * d + (head + 1) * hd].to_vec()
                };
                let (mut q, mut k): (Vec<Vec<f64>>, Vec<Vec<f64>>) =
                    ((0..t).map(|r| col(r, 0)).collect(), (0..t).map(|r| col(r, 1)).collect());
                if config.pos == PosScheme::Rope {
                    for (i, (qi, ki)) in q.iter_mut().zip(&mut k).enumerate() {
                        rope.apply(qi, i as i64);
                        rope.apply(ki, i as i64);
                    }
                }
                let scale = 1.0 / (hd as f64).sqrt();
                if index.is_some() {
                    read.push((q.clone(), k.clone()));
                }
                if let (Some(nsa), Some(logits)) = (config.attn.nsa(), &gate_logits) {
                    let v: Vec<Vec<f64>> = (0..t).map(|r| col(r, 2)).collect();
                    let gate = |i: usize, b: usize| 1.0 / (1.0 + (-logits[i * 3 * h + head * 3 + b]).exp());
                    for (i, row) in nsa_head_f64(&nsa, scale, (&q, &k, &v), gate).iter().enumerate() {
                        att[i * d + head * hd..][..hd].copy_from_slice(row);
                    }
                    continue;
                }
                let slope = if config.pos == PosScheme::Alibi { alibi_slope(h, head) as f64 } else { 0.0 };
                let reads = moba_reads_f64(config.attn, &q, &k);
                for i in 0..t {
                    let s: Vec<f64> = (0..=i)
                        .map(|j| {
                            let listed = index.as_ref().is_none_or(|(lists, _)| lists[i].contains(&j));
                            let seen = config.window.is_none_or(|w| w.sees(i, j));
                            if !reads(i, j) || !listed || !seen {
                                return f64::NEG_INFINITY;
                            }
                            scale * q[i].iter().zip(&k[j]).map(|(a, b)| a * b).sum::<f64>()
                                - slope * (i - j) as f64
                        })
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                    for (j, sj) in s.iter().enumerate() {
                        let w = (sj - m).exp() / z;
                        let vj = col(j, 2);
                        for e in 0..hd {
                            att[i * d + head * hd + e] += w * vj[e];
                        }
                    }
                }
            }
            if let Some((lists, scores)) = &index {
                // the sparse stage's KL per row over its chosen keys: p_t each head's attention
                // over them, averaged; the index softmax over them
                let scale = 1.0 / (hd as f64).sqrt();
                for (i, (keys, (row, _))) in lists.iter().zip(scores).enumerate() {
                    let mut target = vec![0f64; keys.len()];
                    for (q, k) in &read {
                        let s: Vec<f64> = keys
                            .iter()
                            .map(|&j| scale * q[i].iter().zip(&k[j]).map(|(a, b)| a * b).sum::<f64>())
                            .collect();
                        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let z: f64 = s.iter().map(|x| (x - m).exp()).sum();
                        target.iter_mut().zip(&s).for_each(|(tg, x)| *tg += (x - m).exp() / z / h as f64);
                    }
                    let m = keys.iter().map(|&j| row[j]).fold(f64::NEG_INFINITY, f64::max);
                    let lse = m + keys.iter().map(|&j| (row[j] - m).exp()).sum::<f64>().ln();
                    index_total += target
                        .iter()
                        .zip(keys)
                        .filter(|(p, _)| **p > 0.0)
                        .map(|(p, &j)| p * (p.ln() - (row[j] - lse)))
                        .sum::<f64>();
                }
            }
            let o = linear(&att, n("attn.w_o"), n("attn.b_o"), d, d);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let a = layer_norm_f64(&x, n("ln2.g"), n("ln2.b"), d, LN_EPS);
            let hidden: Vec<f64> =
                linear(&a, n("ffn.w1"), n("ffn.b1"), d, f).into_iter().map(|u| gelu_f64(u).0).collect();
            let o = linear(&hidden, n("ffn.w2"), n("ffn.b2"), f, d);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        let xf = layer_norm_f64(&x, get("lnf.g"), get("lnf.b"), d, LN_EPS);
        // the tied head, logits = x · wteᵀ, and the cross-entropy against the next byte
        let wte = get("wte");
        for (row, &target) in xf.chunks_exact(d).zip(&seq[1..]) {
            let logits: Vec<f64> = (0..v)
                .map(|id| row.iter().zip(&wte[id * d..(id + 1) * d]).map(|(a, b)| a * b).sum())
                .collect();
            let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + logits.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            total += lse - logits[target as usize];
            if let Some(out) = logits_out.as_deref_mut() {
                out.push(logits);
            }
        }
    }
    Ok((total / (batch * t) as f64, index_total / (batch * t) as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_from_a_checkpoint_are_bounded_before_anything_is_allocated() {
        // once: `layers = 1e12` built a trillion shapes, `d_model = 2^62` overflowed the
        // parameter count ("capacity overflow" panic), `vocab = 2^40` aborted allocating
        let ok = GptConfig::bytes(64, 4, 4, PosScheme::Alibi);
        ok.validate().unwrap();
        for bad in [
            GptConfig { layers: 1_000_000_000_000, ..ok },
            GptConfig { d_model: 1 << 62, heads: 1, ..ok },
            GptConfig { vocab: 1 << 40, ..ok },
            GptConfig { ffn: usize::MAX, ..ok },
            GptConfig { d_model: 1 << 16, ffn: 1 << 16, layers: 1024, ..ok },
        ] {
            let t = std::time::Instant::now();
            let e = bad.validate().unwrap_err();
            assert!(matches!(e, Error::OutOfRange { .. }), "{e}");
            assert!(t.elapsed().as_millis() < 100);
        }
        assert_eq!(ok.params() as u64, {
            let (d, f) = (64u64, 256u64);
            256 * d + 4 * (4 * d * d + 2 * d * f + 9 * d + f) + 2 * d
        });
    }

    #[test]
    fn parameters_are_laid_out_and_initialised_as_gpt2() {
        let c = GptConfig::bytes(32, 4, 2, PosScheme::Alibi);
        // wte + per layer (2·LN + qkv + o + 2·LN + two FFN matrices, with biases) + final LN
        let per_layer = 2 * 32 + 32 * 96 + 96 + 32 * 32 + 32 + 2 * 32 + 32 * 128 + 128 + 128 * 32 + 32;
        assert_eq!(c.params(), 256 * 32 + 2 * per_layer + 2 * 32);
        let p = Params::init(c, 1).unwrap();
        assert_eq!(p.data.len(), c.params());
        let g = &p.data[Params::range(&c, "h1.ln2.g").unwrap()];
        assert!(g.iter().all(|&x| x == 1.0));
        let w = &p.data[Params::range(&c, "h0.ffn.w1").unwrap()];
        let std = (w.iter().map(|&x| (x as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
        assert!((std - 0.02).abs() < 0.002, "std {std}");
        assert!(GptConfig::bytes(30, 4, 1, PosScheme::None).validate().is_err());
        assert!(GptConfig::bytes(12, 4, 1, PosScheme::Rope).validate().is_err()); // head dim 3
    }

    #[test]
    fn the_oracle_starts_near_uniform_and_sees_positions() {
        // a fresh model predicts about uniformly: loss ≈ ln 256
        let tokens: Vec<u32> =
            b"In the beginning God created the heaven and the earth.".iter().map(|&b| b as u32).collect();
        let mut losses = Vec::new();
        for pos in [PosScheme::None, PosScheme::Sinusoidal, PosScheme::Rope, PosScheme::Alibi] {
            let c = GptConfig::bytes(16, 2, 1, pos);
            let p: Vec<f64> = Params::init(c, 3).unwrap().data.iter().map(|&x| x as f64).collect();
            let loss = loss_f64(&c, &p, &tokens, 1).unwrap();
            assert!((loss - 256f64.ln()).abs() < 0.2, "{pos:?}: {loss}");
            losses.push(loss);
        }
        // the schemes differ (positions enter the model)
        for i in 1..4 {
            assert!((losses[i] - losses[0]).abs() > 1e-9, "{losses:?}");
        }
        assert!(loss_f64(&GptConfig::bytes(16, 2, 1, PosScheme::None), &[0.0], &tokens, 1).is_err());
    }
}
