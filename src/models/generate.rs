//! Text from a trained GPT (`longctx generate`): many sequences decoded together over the
//! paged, optionally quantised KV cache ([`PagedDecoder`]), sampled with a temperature and
//! nucleus (top-p), and speculative decoding — a small draft model proposes a few tokens, the
//! model verifies them in one step (a chain of drafts) and keeps them by speculative
//! sampling's rule, so the text is distributed as the model's own.
//!
//! Where the work runs: attention (the cache, its pages and formats) on the GPU, one
//! dispatch per layer for every sequence of the step; the projections, LayerNorms and FFN of
//! these small models (d ≤ a few hundred) in f32 on the host between them. The logits agree
//! with the f64 oracle's ([`crate::models::gpt::logits_f64`]) at every step (tests/generate.rs).

use crate::contract::paged::{KvFormat, Tree};
use crate::contract::positions::Positions;
use crate::contract::spec::{Alibi, alibi_slope};
use crate::error::{Error, Result};
use crate::kernels::attention::packed::{Packed, packed_attention};
use crate::kernels::attention::paged::{PagedConfig, PagedDecoder, SeqId};
use crate::models::gpt::{AttnKind, GptConfig, Params, PosScheme, sinusoid};
use crate::runtime::Gpu;

/// How a generator lays out its cache.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CacheLayout {
    /// K and V format.
    pub format: KvFormat,
    /// Slots per page.
    pub page: usize,
    /// Positions the pool holds, all sequences together.
    pub positions: usize,
    /// Most sequences decoded together.
    pub max_seqs: usize,
    /// Most new tokens of one sequence in a step (prompt chunks, drafts to verify).
    pub max_step_tokens: usize,
}

/// The model's weights and the host side of its layers.
struct Model {
    config: GptConfig,
    params: Vec<f32>,
    rope: Option<Positions>,
}

impl Model {
    fn get(&self, name: &str) -> &[f32] {
        &self.params[Params::range(&self.config, name).expect("a parameter of the model")]
    }

    /// Every token inside the vocabulary (checked before a step touches the cache).
    fn check(&self, tokens: &[u32]) -> Result<()> {
        let v = self.config.vocab;
        match tokens.iter().find(|&&t| t as usize >= v) {
            Some(bad) => Err(Error::Invalid(format!("token {bad} is outside the vocabulary of {v}"))),
            None => Ok(()),
        }
    }

    /// The logits after each of `tokens` (at `positions`): embeddings, then every layer with
    /// its attention left to `attend(layer, Q, K, V)` — each `[tokens, H, hd]`, Q and K
    /// already rotated where the model uses RoPE — which returns the attention output
    /// `[tokens, d]`.
    fn run(
        &self,
        tokens: &[u32],
        positions: &[usize],
        mut attend: impl FnMut(usize, &[f32], &[f32], &[f32]) -> Result<Vec<f32>>,
    ) -> Result<Vec<Vec<f32>>> {
        let c = self.config;
        let (d, h) = (c.d_model, c.heads);
        let hd = d / h;
        // borrowed: the layers only read the parameters
        let wte = self.get("wte");
        let mut x: Vec<f32> = tokens.iter().flat_map(|&id| wte[id as usize * d..][..d].to_vec()).collect();
        if c.pos == PosScheme::Sinusoidal {
            for (row, &p) in x.chunks_exact_mut(d).zip(positions) {
                row.iter_mut().zip(sinusoid(p, d)).for_each(|(a, b)| *a += b as f32);
            }
        }
        for l in 0..c.layers {
            let p = |name: &str| format!("h{l}.{name}");
            let a = layer_norm(&x, self.get(&p("ln1.g")), self.get(&p("ln1.b")), d);
            let qkv = linear(&a, self.get(&p("attn.w_qkv")), self.get(&p("attn.b_qkv")), d, 3 * d);
            // [token, 3d] → Q, K, V [token, H, hd] (the row's thirds)
            let part = |k: usize| -> Vec<f32> {
                qkv.chunks_exact(3 * d).flat_map(|r| r[k * d..][..d].to_vec()).collect()
            };
            let (mut q, mut k, vv) = (part(0), part(1), part(2));
            if let Some(rope) = &self.rope {
                for (x, &pos) in
                    [&mut q, &mut k].into_iter().flat_map(|t| t.chunks_exact_mut(d).zip(positions))
                {
                    for head in x.chunks_exact_mut(hd) {
                        let mut row: Vec<f64> = head.iter().map(|&e| e as f64).collect();
                        rope.apply(&mut row, pos as i64);
                        head.iter_mut().zip(row).for_each(|(a, b)| *a = b as f32);
                    }
                }
            }
            let att = attend(l, &q, &k, &vv)?;
            let o = linear(&att, self.get(&p("attn.w_o")), self.get(&p("attn.b_o")), d, d);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let a = layer_norm(&x, self.get(&p("ln2.g")), self.get(&p("ln2.b")), d);
            let mut hidden = linear(&a, self.get(&p("ffn.w1")), self.get(&p("ffn.b1")), d, c.ffn);
            hidden.iter_mut().for_each(|u| *u = gelu(*u));
            let o = linear(&hidden, self.get(&p("ffn.w2")), self.get(&p("ffn.b2")), c.ffn, d);
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        let xf = layer_norm(&x, self.get("lnf.g"), self.get("lnf.b"), d);
        Ok(xf
            .chunks_exact(d)
            .map(|row| wte.chunks_exact(d).map(|w| row.iter().zip(w).map(|(a, b)| a * b).sum()).collect())
            .collect())
    }
}

/// Rows cut into runs of `lens` (per sequence, its share of a step's rows).
fn split_by<T>(rows: Vec<T>, lens: impl Iterator<Item = usize>) -> Vec<Vec<T>> {
    let mut rest = rows.into_iter();
    lens.map(|n| rest.by_ref().take(n).collect()).collect()
}

/// A GPT with a paged KV cache of its own.
pub struct Generator {
    model: Model,
    dec: PagedDecoder,
}

/// One sequence's part of a step: its id and the tokens it adds (a chain).
pub type StepTokens<'a> = (SeqId, &'a [u32]);

impl Generator {
    /// The model `config` with `params` ([`GptConfig::shapes`] order) and a cache as `layout`.
    /// Dense attention only (a checkpoint trained with MoBA, NSA or DSA is refused).
    pub fn new(gpu: &Gpu, config: GptConfig, params: Vec<f32>, layout: CacheLayout) -> Result<Self> {
        config.validate()?;
        if config.attn != AttnKind::Dense {
            return Err(Error::Invalid(format!(
                "generating with {} attention: the paged decoder runs dense causal attention (train with --attn dense)",
                config.attn.name()
            )));
        }
        if let Some(w) = config.window {
            return Err(Error::Invalid(format!(
                "generating with a {}: the generator runs full causal attention",
                w.name()
            )));
        }
        if params.len() != config.params() {
            return Err(Error::Length {
                what: "GPT parameters".into(),
                got: params.len(),
                shape: vec![config.params()],
                expected: config.params(),
            });
        }
        let hd = config.d_model / config.heads;
        let mut cfg =
            PagedConfig::new(config.heads, config.heads, hd, layout.positions.div_ceil(layout.page.max(1)));
        cfg.layers = config.layers;
        cfg.page = layout.page;
        cfg.k_format = layout.format;
        cfg.v_format = layout.format;
        cfg.max_seqs = layout.max_seqs;
        cfg.max_tokens = layout.max_seqs.saturating_mul(layout.max_step_tokens);
        cfg.alibi = Self::alibi(&config);
        let rope = (config.pos == PosScheme::Rope).then(|| config.rope());
        Ok(Self { model: Model { config, params, rope }, dec: PagedDecoder::new(gpu, cfg)? })
    }

    fn alibi(config: &GptConfig) -> Alibi {
        if config.pos == PosScheme::Alibi {
            Alibi::Custom((0..config.heads).map(|h| alibi_slope(config.heads, h)).collect())
        } else {
            Alibi::Off
        }
    }

    /// The model.
    pub fn config(&self) -> &GptConfig {
        &self.model.config
    }

    /// The cache.
    pub fn cache(&self) -> &PagedDecoder {
        &self.dec
    }

    /// A new, empty sequence.
    pub fn add(&mut self) -> SeqId {
        self.dec.add()
    }

    /// Ends a sequence (its pages return to the pool).
    pub fn release(&mut self, id: SeqId) -> Result<()> {
        self.dec.release(id)
    }

    /// Keeps the first `len` tokens of a sequence (rejected drafts dropped).
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        self.dec.truncate(id, len)
    }

    /// Tokens a sequence holds.
    pub fn len(&self, id: SeqId) -> Result<usize> {
        self.dec.len(id)
    }

    /// Runs `steps` — for each sequence the tokens it adds, at most the layout's
    /// `max_step_tokens` — through the model and returns, per sequence, the logits after each
    /// of its tokens (`[tokens][V]`).
    pub fn forward(&mut self, gpu: &Gpu, steps: &[StepTokens]) -> Result<Vec<Vec<Vec<f32>>>> {
        self.forward_traced(gpu, steps, None)
    }

    /// [`Generator::forward`], pushing each layer's attention output (`[tokens, d]`, before the
    /// output projection) to `trace` where given.
    pub fn forward_traced(
        &mut self,
        gpu: &Gpu,
        steps: &[StepTokens],
        trace: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let trees: Vec<_> = steps.iter().map(|&(id, t)| (id, t, Tree::chain(t.len()))).collect();
        self.step(gpu, &trees, trace)
    }

    /// Verifies drafted trees: for each sequence, tokens arranged as `tree` (token u's parent
    /// an earlier token of the step, or for a root the sequence's last cached token), each
    /// read at its depth's position and seeing its cache and its own ancestors only. Returns,
    /// per sequence, the logits after each token (the model's prediction after the path to
    /// it). Every token is stored in the cache after the sequence's last: keep a path with
    /// [`Generator::truncate`] and feed it again (its slots hold all the tree's tokens).
    pub fn verify(&mut self, gpu: &Gpu, steps: &[(SeqId, &[u32], Tree)]) -> Result<Vec<Vec<Vec<f32>>>> {
        self.step(gpu, steps, None)
    }

    fn step(
        &mut self,
        gpu: &Gpu,
        steps: &[(SeqId, &[u32], Tree)],
        mut trace: Option<&mut Vec<Vec<f32>>>,
    ) -> Result<Vec<Vec<Vec<f32>>>> {
        let mut positions = Vec::new();
        let mut trees = Vec::with_capacity(steps.len());
        for (id, tokens, tree) in steps {
            if tree.len() != tokens.len() {
                return Err(Error::Invalid(format!(
                    "a tree of {} tokens given {} tokens",
                    tree.len(),
                    tokens.len()
                )));
            }
            let len = self.dec.len(*id)?;
            positions.extend((0..tokens.len()).map(|u| len + tree.depth(u)));
            trees.push((*id, tree.clone()));
        }
        let tokens: Vec<u32> = steps.iter().flat_map(|(_, t, _)| t.iter().copied()).collect();
        self.model.check(&tokens)?;
        self.dec.begin(gpu, &trees)?;
        let dec = &self.dec;
        let logits = self.model.run(&tokens, &positions, |l, q, k, v| {
            dec.attend(gpu, l, q, k, v)?;
            let att = dec.output(gpu)?.o;
            if let Some(t) = trace.as_deref_mut() {
                t.push(att.clone());
            }
            Ok(att)
        })?;
        Ok(split_by(logits, steps.iter().map(|(_, t, _)| t.len())))
    }

    /// Starts empty sequences with their prompts in one pass: every prompt concatenated
    /// without padding, each layer's attention one flash call over all of them
    /// ([`packed_attention`]: each token sees its own sequence only), and the K and V of
    /// every prompt token written into the sequences' pages. Returns, per sequence, the
    /// logits after each prompt token. The pages all prompts need are checked free before
    /// anything runs.
    pub fn prefill_packed(&mut self, gpu: &Gpu, prompts: &[StepTokens]) -> Result<Vec<Vec<Vec<f32>>>> {
        let c = self.model.config;
        let page = self.dec.config().page;
        let mut pages = 0usize;
        for (i, &(id, prompt)) in prompts.iter().enumerate() {
            if self.dec.len(id)? != 0 {
                return Err(Error::Invalid(format!(
                    "a packed prefill starts sequences: sequence {i} already holds {} tokens (continue it with forward)",
                    self.dec.len(id)?
                )));
            }
            if prompts[..i].iter().any(|(other, _)| *other == id) {
                return Err(Error::Invalid(format!("sequence {i} is given twice in one prefill")));
            }
            pages += prompt.len().div_ceil(page);
        }
        let usage = self.dec.usage();
        let free = usage.pages - usage.used;
        if pages > free {
            return Err(Error::OutOfRange {
                what: format!("KV pages the prompts need ({free} free of {})", usage.pages),
                value: pages as u64,
                min: 0,
                max: free as u64,
            });
        }
        let hd = c.d_model / c.heads;
        let packed = Packed {
            lens: prompts.iter().map(|(_, p)| p.len()).collect(),
            heads: c.heads,
            kv_heads: c.heads,
            head_dim: hd,
            alibi: Self::alibi(&c),
        };
        packed.tokens()?;
        let tokens: Vec<u32> = prompts.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        self.model.check(&tokens)?;
        let positions: Vec<usize> = prompts.iter().flat_map(|(_, p)| 0..p.len()).collect();
        let mut kv = Vec::with_capacity(c.layers);
        let logits = self.model.run(&tokens, &positions, |_, q, k, v| {
            kv.push((k.to_vec(), v.to_vec()));
            Ok(packed_attention(gpu, &packed, q, k, v)?.o)
        })?;
        let row = c.d_model;
        let mut start = 0;
        for &(id, prompt) in prompts {
            let span = start * row..(start + prompt.len()) * row;
            let layers: Vec<(&[f32], &[f32])> =
                kv.iter().map(|(k, v)| (&k[span.clone()], &v[span.clone()])).collect();
            self.dec.prefill(gpu, id, &layers)?;
            start += prompt.len();
        }
        Ok(split_by(logits, prompts.iter().map(|(_, p)| p.len())))
    }

    /// Feeds a prompt to a sequence in chunks of at most `max_step_tokens` through the paged
    /// decoder (a sequence may already hold tokens); the logits after its last token.
    pub fn prefill(&mut self, gpu: &Gpu, id: SeqId, prompt: &[u32], chunk: usize) -> Result<Vec<f32>> {
        if prompt.is_empty() {
            return Err(Error::Invalid("a prompt needs at least one token".into()));
        }
        let mut last = Vec::new();
        for part in prompt.chunks(chunk.max(1)) {
            last = self.forward(gpu, &[(id, part)])?.pop().and_then(|mut l| l.pop()).unwrap_or_default();
        }
        Ok(last)
    }
}

/// How the next token is drawn from logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0: the most likely token.
    pub temperature: f32,
    /// Nucleus: the smallest set of tokens whose probabilities sum to at least this.
    pub top_p: f32,
}

impl Sampling {
    /// The most likely token (ties to the lower id).
    pub fn greedy() -> Self {
        Self { temperature: 0.0, top_p: 1.0 }
    }

    /// The distribution tokens are drawn from: the softmax of `logits / temperature` cut to
    /// the nucleus and renormalised (probabilities summing to 1, zeros outside it); at
    /// temperature 0 all of it on the most likely token.
    pub fn probs(&self, logits: &[f32]) -> Vec<f64> {
        let mut out = vec![0.0; logits.len()];
        if self.temperature <= 0.0 {
            out[argmax(logits) as usize] = 1.0;
            return out;
        }
        let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut probs: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i, (((x - m) / self.temperature) as f64).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut kept = 0.0;
        let mut cut = probs.len();
        for (i, p) in probs.iter().enumerate() {
            kept += p.1 / total;
            if kept >= self.top_p as f64 {
                cut = i + 1;
                break;
            }
        }
        probs.truncate(cut);
        let sum: f64 = probs.iter().map(|p| p.1).sum();
        for (i, p) in probs {
            out[i] = p / sum;
        }
        out
    }

    /// A token drawn from `logits` with `rng` (from [`Sampling::probs`]).
    pub fn draw(&self, logits: &[f32], rng: &mut impl rand::Rng) -> u32 {
        sample(&self.probs(logits), rng)
    }
}

/// A token drawn from `probs` (non-negative, not all zero; need not sum to 1).
pub fn sample(probs: &[f64], rng: &mut impl rand::Rng) -> u32 {
    let sum: f64 = probs.iter().sum();
    let mut r = rng.random::<f64>() * sum;
    let mut last = 0;
    for (i, &p) in probs.iter().enumerate() {
        if p > 0.0 {
            last = i;
            r -= p;
            if r < 0.0 {
                return i as u32;
            }
        }
    }
    last as u32
}

/// Speculative sampling's rule for one drafted token `x`, drawn from the draft's
/// distribution `q`, given the model's `p` (Leviathan et al. 2023; Chen et al. 2023): keep
/// `x` with probability `min(1, p(x) / q(x))`, else draw from the residual `max(0, p − q)`
/// renormalised. The token that comes out is distributed exactly as `p`. Returns the token
/// and whether it is the draft's. With one-hot distributions (greedy) this keeps `x` exactly
/// when it is the model's choice and otherwise gives the model's choice.
pub fn accept_or_resample(p: &[f64], q: &[f64], x: u32, rng: &mut impl rand::Rng) -> (u32, bool) {
    let (px, qx) = (p[x as usize], q[x as usize]);
    if px >= qx || rng.random::<f64>() * qx < px {
        return (x, true);
    }
    let residual: Vec<f64> = p.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).collect();
    (sample(&residual, rng), false)
}

/// The most likely token (ties to the lower id).
pub fn argmax(logits: &[f32]) -> u32 {
    logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
        as u32
}

fn layer_norm(x: &[f32], g: &[f32], b: &[f32], d: usize) -> Vec<f32> {
    let eps = crate::models::gpt::LN_EPS as f32;
    x.chunks_exact(d)
        .flat_map(|row| {
            let mean = row.iter().sum::<f32>() / d as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
            let inv = 1.0 / (var + eps).sqrt();
            row.iter().zip(g).zip(b).map(move |((v, g), b)| (v - mean) * inv * g + b)
        })
        .collect()
}

fn linear(x: &[f32], w: &[f32], b: &[f32], k: usize, n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len() / k * n);
    for row in x.chunks_exact(k) {
        let mut acc = b.to_vec();
        for (xi, wr) in row.iter().zip(w.chunks_exact(n)) {
            acc.iter_mut().zip(wr).for_each(|(a, w)| *a += xi * w);
        }
        out.extend(acc);
    }
    out
}

/// GELU, the tanh form GPT-2 and the trainer use.
fn gelu(x: f32) -> f32 {
    let c = (2.0 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

/// How far a quantised cache moves the trained model's attention: `tokens` fed one at a time
/// (each a decoding step over everything before it) through the model with an f32 cache and
/// with `format`; per token, layer and head, the relative error ‖o − o_f32‖ / ‖o_f32‖ of the
/// attention output — on the model's own activations, each run on its own cache, so errors
/// carry through the layers as they would in use. Sorted ascending.
pub fn kv_format_errors(
    gpu: &Gpu,
    config: GptConfig,
    params: &[f32],
    tokens: &[u32],
    format: KvFormat,
    page: usize,
) -> Result<Vec<f64>> {
    let layout = CacheLayout {
        format: KvFormat::F32,
        page,
        positions: tokens.len() + page,
        max_seqs: 1,
        max_step_tokens: 1,
    };
    let mut exact = Generator::new(gpu, config, params.to_vec(), layout)?;
    let mut quant = Generator::new(gpu, config, params.to_vec(), CacheLayout { format, ..layout })?;
    let (a, b) = (exact.add(), quant.add());
    let hd = config.d_model / config.heads;
    let mut errors = Vec::with_capacity(tokens.len() * config.layers * config.heads);
    for &t in tokens {
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        exact.forward_traced(gpu, &[(a, &[t])], Some(&mut ta))?;
        quant.forward_traced(gpu, &[(b, &[t])], Some(&mut tb))?;
        for (la, lb) in ta.iter().zip(&tb) {
            for (ha, hb) in la.chunks_exact(hd).zip(lb.chunks_exact(hd)) {
                let num: f64 = ha.iter().zip(hb).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
                let den: f64 = ha.iter().map(|x| (*x as f64).powi(2)).sum();
                errors.push(if den > 0.0 { (num / den).sqrt() } else { num.sqrt() });
            }
        }
    }
    errors.sort_by(f64::total_cmp);
    Ok(errors)
}

/// What [`speculate`] did: tokens produced, drafts proposed and accepted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecStats {
    /// Verification steps of the model.
    pub steps: usize,
    /// Draft tokens proposed.
    pub proposed: usize,
    /// Draft tokens the model agreed with.
    pub accepted: usize,
}

/// Speculative decoding of one sequence: `draft` proposes `k` tokens after `last`, each
/// drawn from its own distribution under `sampling` (each sequence already holding the same
/// tokens before `last`); `model` reads `last` and the proposals in one step and keeps them
/// one by one by [`accept_or_resample`], ending at the first it replaces — or, when it keeps
/// all `k`, with one more token of its own. The text is distributed as the model's alone
/// under `sampling` (greedy: exactly the model's greedy text). Returns the new tokens (at
/// least one); both caches end holding every token before the last new one.
pub fn speculate(
    gpu: &Gpu,
    (model, mid): (&mut Generator, SeqId),
    (draft, did): (&mut Generator, SeqId),
    last: u32,
    (k, sampling): (usize, &Sampling),
    rng: &mut impl rand::Rng,
    stats: &mut SpecStats,
) -> Result<Vec<u32>> {
    if k == 0 {
        return Err(Error::Invalid("speculative decoding needs at least one draft token".into()));
    }
    let base = model.len(mid)?;
    // the draft's proposals, one token a step, and the distributions they were drawn from
    let (mut proposals, mut qs) = (Vec::with_capacity(k), Vec::with_capacity(k));
    let mut next = last;
    for _ in 0..k {
        let logits = draft.forward(gpu, &[(did, &[next])])?.remove(0).remove(0);
        let q = sampling.probs(&logits);
        next = sample(&q, rng);
        proposals.push(next);
        qs.push(q);
    }
    // the model reads `last` and the proposals in one step: logits after each
    let input = [&[last][..], &proposals].concat();
    let logits = model.forward(gpu, &[(mid, &input)])?.remove(0);
    let mut out = Vec::new();
    for (i, l) in logits.iter().enumerate() {
        let p = sampling.probs(l);
        let Some(&x) = proposals.get(i) else {
            // every proposal kept: the model's own next token
            out.push(sample(&p, rng));
            break;
        };
        let (token, kept) = accept_or_resample(&p, &qs[i], x, rng);
        out.push(token);
        if !kept {
            break;
        }
    }
    let accepted = out.len() - 1;
    stats.steps += 1;
    stats.proposed += k;
    stats.accepted += accepted;
    // keep `last` and the accepted drafts; the last new token is fed next time
    model.truncate(mid, base + 1 + accepted)?;
    let draft_len = draft.len(did)?;
    draft.truncate(did, draft_len.min(base + 1 + accepted))?;
    if draft.len(did)? < base + 1 + accepted {
        // every proposal was accepted: the draft never read its last one
        let missing = &proposals[draft.len(did)? - base - 1..accepted];
        draft.forward(gpu, &[(did, missing)])?;
    }
    Ok(out)
}
