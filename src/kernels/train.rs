//! `train`: the backward passes and the optimiser a small transformer needs beside matmul and
//! attention (`shaders/train.wgsl`): softmax cross-entropy with its gradient, GELU's and
//! LayerNorm's backward, the embedding gather's gradient, the squared norm of a gradient and
//! an AdamW step clipped by the global norm on the device (no host round trip). Each kernel
//! has its f64 oracle here; `tests/train.rs` checks the kernels against them and the oracles
//! against finite differences of their forward passes.

use crate::error::{Error, Result};
use crate::kernels::GELU;
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Bound, Compiled, Shader, ShaderVariant, Slot, bind_group};

const NAME: &str = "train";
const SOURCE: &str = include_str!("../../shaders/train.wgsl");
const WORKGROUP: u64 = 64;
/// llvmpipe stops a loop nest after 65535 iterations: the per-invocation loops (tokens of the
/// embedding gradient, rows of the LayerNorm parameters, a tensor over 256 lanes) stay below.
const LOOP_CAP: usize = 65_535;

const fn shader(bindings: &'static [Slot]) -> Shader {
    Shader { stem: NAME, source: SOURCE, bindings }
}

// The entries share train.wgsl's generic names (`a`, `b`, `out`, …); each binds its own subset.
bind_group! {
    /// job, source, destination (gelu, column_sum, transpose, split_heads, merge_heads,
    /// sum_squares).
    struct UnaryBinds { 0 job: Uniform, 1 a: Read, 3 out: ReadWrite }
}
bind_group! {
    /// job, x, dy, dx (gelu_backward).
    struct BinaryBinds { 0 job: Uniform, 1 a: Read, 2 b: Read, 3 out: ReadWrite }
}
bind_group! {
    /// job, logits, targets, dlogits, loss.
    struct CrossEntropyBinds { 0 job: Uniform, 1 a: Read, 6 ids: Read, 3 out: ReadWrite, 4 out2: ReadWrite }
}
bind_group! {
    /// job, x, dy, dx, row stats, γ.
    struct LayerNormBackwardBinds {
        0 job: Uniform, 1 a: Read, 2 b: Read, 3 out: ReadWrite, 4 out2: ReadWrite, 7 gamma: Read,
    }
}
bind_group! {
    /// job, x, dy, [dγ, dβ], row stats (in γ's binding).
    struct LayerNormParamsBinds { 0 job: Uniform, 1 a: Read, 2 b: Read, 3 out: ReadWrite, 7 gamma: Read }
}
bind_group! {
    /// job, gradient, norms, parameter, m, v.
    struct AdamWBinds {
        0 job: Uniform, 1 a: Read, 2 b: Read, 3 out: ReadWrite, 4 out2: ReadWrite, 5 out3: ReadWrite,
    }
}
bind_group! {
    /// job, dx, token ids, dE.
    struct EmbeddingBackwardBinds { 0 job: Uniform, 1 a: Read, 6 ids: Read, 3 out: ReadWrite }
}
bind_group! {
    /// job, E, position table, token ids, x.
    struct EmbedBinds { 0 job: Uniform, 1 a: Read, 2 b: Read, 6 ids: Read, 3 out: ReadWrite }
}

const CROSS_ENTROPY: Shader = shader(CrossEntropyBinds::SLOTS);
const GELU_BACKWARD: Shader = shader(BinaryBinds::SLOTS);
const LAYER_NORM_BACKWARD: Shader = shader(LayerNormBackwardBinds::SLOTS);
const LAYER_NORM_PARAMS: Shader = shader(LayerNormParamsBinds::SLOTS);
const SUM_SQUARES: Shader = shader(UnaryBinds::SLOTS);
const ADAMW: Shader = shader(AdamWBinds::SLOTS);
const EMBEDDING_BACKWARD: Shader = shader(EmbeddingBackwardBinds::SLOTS);
const EMBED: Shader = shader(EmbedBinds::SLOTS);
const UNARY: Shader = shader(UnaryBinds::SLOTS);

const ENTRIES: [(Shader, &str); 15] = [
    (CROSS_ENTROPY, "cross_entropy"),
    (GELU_BACKWARD, "gelu_backward"),
    (LAYER_NORM_BACKWARD, "layer_norm_backward"),
    (LAYER_NORM_PARAMS, "layer_norm_params"),
    (SUM_SQUARES, "sum_squares"),
    (ADAMW, "adamw"),
    (EMBEDDING_BACKWARD, "embedding_backward"),
    (EMBED, "embed"),
    (UNARY, "gelu"),
    (UNARY, "column_sum"),
    (UNARY, "transpose"),
    (UNARY, "split_heads"),
    (UNARY, "merge_heads"),
    (UNARY, "sigmoid"),
    (GELU_BACKWARD, "sigmoid_backward"),
];

/// Indices into [`ENTRIES`].
mod entry {
    pub(crate) const CROSS_ENTROPY: usize = 0;
    pub(crate) const GELU_BACKWARD: usize = 1;
    pub(crate) const LAYER_NORM_BACKWARD: usize = 2;
    pub(crate) const LAYER_NORM_PARAMS: usize = 3;
    pub(crate) const SUM_SQUARES: usize = 4;
    pub(crate) const ADAMW: usize = 5;
    pub(crate) const EMBEDDING_BACKWARD: usize = 6;
    pub(crate) const EMBED: usize = 7;
    pub const GELU: usize = 8;
    pub(crate) const COLUMN_SUM: usize = 9;
    pub(crate) const TRANSPOSE: usize = 10;
    pub(crate) const SPLIT_HEADS: usize = 11;
    pub(crate) const MERGE_HEADS: usize = 12;
    pub(crate) const SIGMOID: usize = 13;
    pub(crate) const SIGMOID_BACKWARD: usize = 14;
}

/// Every variant (one per entry).
pub fn variants() -> Vec<ShaderVariant> {
    ENTRIES.iter().map(|(s, e)| s.variant(e, &[GELU], vec![])).collect()
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct TrainJob {
    n: u32,
    d: u32,
    groups_x: u32,
    slot: u32,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    max_norm: f32,
    c1: f32,
    c2: f32,
    scale: f32,
    seq: u32,
    heads: u32,
    parts: u32,
    accumulate: u32,
    pad: [u32; 3],
}

/// AdamW's settings for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamW {
    /// Learning rate of this step.
    pub lr: f32,
    /// First-moment decay β1.
    pub beta1: f32,
    /// Second-moment decay β2.
    pub beta2: f32,
    /// ε in the denominator.
    pub eps: f32,
    /// Decoupled weight decay λ (`p ← p − lr·λ·p`).
    pub weight_decay: f32,
    /// Clip the global gradient norm to this (0: no clipping).
    pub max_norm: f32,
    /// Step number t, from 1 (bias correction).
    pub step: u32,
}

impl Default for AdamW {
    fn default() -> Self {
        Self { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, max_norm: 1.0, step: 1 }
    }
}

/// The compiled kernels for one device. Each method records one pass into `encoder`.
pub struct Train {
    kernels: Vec<Compiled>,
}

impl Train {
    /// Compiles every entry.
    pub fn new(gpu: &Gpu) -> Result<Self> {
        Ok(Self { kernels: variants().iter().map(|v| gpu.compile(v)).collect::<Result<_>>()? })
    }

    fn run(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        entry: usize,
        job: TrainJob,
        threads: u64,
        bind: impl FnOnce(&Compiled, Bound) -> wgpu::BindGroup,
    ) -> Result<()> {
        // sum_squares is one workgroup of 256 lanes; the others one invocation per item
        let grid = if entry == entry::SUM_SQUARES {
            [1, 1, 1]
        } else {
            gpu.grid(NAME, threads.div_ceil(WORKGROUP))?
        };
        let job = gpu.uniform("train job", &TrainJob { groups_x: grid[0], ..job });
        let kernel = &self.kernels[entry];
        let bind = bind(kernel, (&job).into());
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(ENTRIES[entry].1),
            timestamp_writes: None,
        });
        kernel.dispatch(&mut pass, &bind, grid);
        Ok(())
    }

    /// Loss per row (`loss`, `[rows]`) and `dlogits` = (softmax − onehot)·`scale` of `logits`
    /// `[rows, vocab]` against `targets` (a target ≥ vocab: the row does not count).
    #[allow(clippy::too_many_arguments)]
    pub fn cross_entropy(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        logits: &wgpu::Buffer,
        targets: &wgpu::Buffer,
        dlogits: &wgpu::Buffer,
        loss: &wgpu::Buffer,
        rows: usize,
        vocab: usize,
        scale: f32,
    ) -> Result<()> {
        let job = TrainJob { n: rows as u32, d: vocab as u32, scale, ..TrainJob::default() };
        self.run(gpu, encoder, entry::CROSS_ENTROPY, job, rows as u64, |k, job| {
            let (a, ids, out, out2) = (logits.into(), targets.into(), dlogits.into(), loss.into());
            k.bind(gpu, &CrossEntropyBinds { job, a, ids, out, out2 })
        })
    }

    /// `dx` = `dy`·GELU'(`x`) over `n` elements (GELU's tanh form).
    pub fn gelu_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        n: usize,
    ) -> Result<()> {
        self.elementwise2(gpu, encoder, entry::GELU_BACKWARD, (x, dy, dx), n)
    }

    /// LayerNorm's backward for `x` `[rows, d]` (y = γ ⊙ x̂ + β, `eps`): `dx` (written, or
    /// added to it when `accumulate`: the residual stream's gradient), and dγ, dβ into
    /// `dgamma_beta` (`[2, d]`); `stats` (`[rows, 2]` floats) is scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        gamma: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        dgamma_beta: &wgpu::Buffer,
        stats: &wgpu::Buffer,
        rows: usize,
        d: usize,
        eps: f32,
        accumulate: bool,
    ) -> Result<()> {
        check_loop("LayerNorm backward rows (one loop per column)", rows, LOOP_CAP)?;
        let job = TrainJob {
            n: rows as u32,
            d: d as u32,
            eps,
            accumulate: accumulate as u32,
            ..TrainJob::default()
        };
        self.run(gpu, encoder, entry::LAYER_NORM_BACKWARD, job, rows as u64, |k, job| {
            let (a, b, out, out2, gamma) = (x.into(), dy.into(), dx.into(), stats.into(), gamma.into());
            k.bind(gpu, &LayerNormBackwardBinds { job, a, b, out, out2, gamma })
        })?;
        self.run(gpu, encoder, entry::LAYER_NORM_PARAMS, job, d as u64, |k, job| {
            let (a, b, out, gamma) = (x.into(), dy.into(), dgamma_beta.into(), stats.into());
            k.bind(gpu, &LayerNormParamsBinds { job, a, b, out, gamma })
        })
    }

    /// Σ x² of `x` (`n` floats) into `norms[slot]`.
    pub fn sum_squares(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        norms: &wgpu::Buffer,
        n: usize,
        slot: usize,
    ) -> Result<()> {
        check_loop("floats in one squared norm (256 lanes)", n, LOOP_CAP * 256)?;
        self.run(
            gpu,
            encoder,
            entry::SUM_SQUARES,
            TrainJob { n: n as u32, slot: slot as u32, ..TrainJob::default() },
            256,
            |k, job| k.bind(gpu, &UnaryBinds { job, a: x.into(), out: norms.into() }),
        )
    }

    /// One AdamW step on `param` (`n` floats) with moments `m`, `v`, its gradient `grad`
    /// scaled by min(1, max_norm/‖g‖) where ‖g‖² is the sum of the first `slots` of `norms`.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        param: &wgpu::Buffer,
        grad: &wgpu::Buffer,
        m: &wgpu::Buffer,
        v: &wgpu::Buffer,
        norms: &wgpu::Buffer,
        slots: usize,
        n: usize,
        o: &AdamW,
    ) -> Result<()> {
        if o.step == 0 {
            return Err(Error::Invalid("AdamW steps count from 1".into()));
        }
        let job = TrainJob {
            n: n as u32,
            slot: slots as u32,
            lr: o.lr,
            beta1: o.beta1,
            beta2: o.beta2,
            eps: o.eps,
            weight_decay: o.weight_decay,
            max_norm: o.max_norm,
            c1: (1.0 / (1.0 - (o.beta1 as f64).powi(o.step as i32))) as f32,
            c2: (1.0 / (1.0 - (o.beta2 as f64).powi(o.step as i32))) as f32,
            ..TrainJob::default()
        };
        self.run(gpu, encoder, entry::ADAMW, job, n as u64, |k, job| {
            let (a, b, out, out2, out3) = (grad.into(), norms.into(), param.into(), m.into(), v.into());
            k.bind(gpu, &AdamWBinds { job, a, b, out, out2, out3 })
        })
    }

    /// `de[v]` += Σ over tokens t with `ids[t] == v` of `dx[t]` (in increasing t): `dx`
    /// `[tokens, d]`, `de` `[vocab, d]`, `by_id` the tokens grouped by id
    /// ([`tokens_by_id`]: `vocab + 1 + tokens` values). Each entry of `de` sums only its own
    /// tokens (a scan of every token per entry cost 47 ms a step at 1024 tokens × 256 × 64).
    #[allow(clippy::too_many_arguments)]
    pub fn embedding_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        dx: &wgpu::Buffer,
        by_id: &wgpu::Buffer,
        de: &wgpu::Buffer,
        tokens: usize,
        vocab: usize,
        d: usize,
    ) -> Result<()> {
        check_loop("tokens in one embedding gradient (one loop per entry)", tokens, LOOP_CAP)?;
        let needed = (vocab as u64 + 1 + tokens as u64) * 4;
        if by_id.size() < needed {
            return Err(Error::Invalid(format!(
                "embedding backward: the tokens grouped by id take {needed} bytes ({vocab} + 1 offsets and {tokens} positions), the buffer has {}",
                by_id.size()
            )));
        }
        let job = TrainJob { n: tokens as u32, d: d as u32, slot: vocab as u32, ..TrainJob::default() };
        self.run(gpu, encoder, entry::EMBEDDING_BACKWARD, job, (vocab * d) as u64, |k, job| {
            k.bind(gpu, &EmbeddingBackwardBinds { job, a: dx.into(), ids: by_id.into(), out: de.into() })
        })
    }

    /// `x` `[tokens, d]` = `e[ids]` (rows of `e` `[vocab, d]`), plus row `t mod seq` of
    /// `table` `[seq, d]` when given (sinusoidal positions added to the tokens).
    #[allow(clippy::too_many_arguments)]
    pub fn embed(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        e: &wgpu::Buffer,
        table: Option<&wgpu::Buffer>,
        ids: &wgpu::Buffer,
        x: &wgpu::Buffer,
        tokens: usize,
        d: usize,
        seq: usize,
    ) -> Result<()> {
        let n = checked_u32("embedding rows × width", tokens, d)?;
        let job = TrainJob {
            n: tokens as u32,
            d: d as u32,
            seq: seq as u32,
            parts: table.is_some() as u32,
            ..TrainJob::default()
        };
        self.run(gpu, encoder, entry::EMBED, job, n as u64, |k, job| {
            let (a, b, ids, out) = (e.into(), table.unwrap_or(e).into(), ids.into(), x.into());
            k.bind(gpu, &EmbedBinds { job, a, b, ids, out })
        })
    }

    /// `y` = GELU(`x`) over `n` elements (the tanh form).
    pub fn gelu(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        n: usize,
    ) -> Result<()> {
        self.elementwise(gpu, encoder, entry::GELU, (x, y), n)
    }

    /// `y` = sigmoid(`x`) = 1 / (1 + e^−x) over `n` elements (NSA's gates).
    pub fn sigmoid(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        y: &wgpu::Buffer,
        n: usize,
    ) -> Result<()> {
        self.elementwise(gpu, encoder, entry::SIGMOID, (x, y), n)
    }

    /// `dx` = `dy`·y·(1 − y) over `n` elements, from the sigmoid's output `y`.
    pub fn sigmoid_backward(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        y: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        n: usize,
    ) -> Result<()> {
        self.elementwise2(gpu, encoder, entry::SIGMOID_BACKWARD, (y, dy, dx), n)
    }

    /// Entry `entry` over `n` elements, one input and one output (`gelu`, `sigmoid`).
    fn elementwise(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        entry: usize,
        (a, out): (&wgpu::Buffer, &wgpu::Buffer),
        n: usize,
    ) -> Result<()> {
        let job = TrainJob { n: n as u32, ..TrainJob::default() };
        self.run(gpu, encoder, entry, job, n as u64, |k, job| {
            k.bind(gpu, &UnaryBinds { job, a: a.into(), out: out.into() })
        })
    }

    /// Entry `entry` over `n` elements, two inputs and one output (the activations'
    /// backward: the forward's input or output, and dy).
    fn elementwise2(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        entry: usize,
        (a, b, out): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
        n: usize,
    ) -> Result<()> {
        let job = TrainJob { n: n as u32, ..TrainJob::default() };
        self.run(gpu, encoder, entry, job, n as u64, |k, job| {
            k.bind(gpu, &BinaryBinds { job, a: a.into(), b: b.into(), out: out.into() })
        })
    }

    /// `out[c]` = Σ over rows of `x` `[rows, cols]` (a bias's gradient).
    #[allow(clippy::too_many_arguments)]
    pub fn column_sum(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        out: &wgpu::Buffer,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        check_loop("rows in one column sum (one loop per column)", rows, LOOP_CAP)?;
        let job = TrainJob { n: rows as u32, d: cols as u32, ..TrainJob::default() };
        self.run(gpu, encoder, entry::COLUMN_SUM, job, cols as u64, |k, job| {
            k.bind(gpu, &UnaryBinds { job, a: x.into(), out: out.into() })
        })
    }

    /// `out` `[cols, rows]` = `x` `[rows, cols]` transposed.
    pub fn transpose(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        out: &wgpu::Buffer,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let n = checked_u32("transpose rows × columns", rows, cols)?;
        let job = TrainJob { n: rows as u32, d: cols as u32, ..TrainJob::default() };
        self.run(gpu, encoder, entry::TRANSPOSE, job, n as u64, |k, job| {
            k.bind(gpu, &UnaryBinds { job, a: x.into(), out: out.into() })
        })
    }

    /// Part `part` of `tokens` `[batch·seq, parts·heads·d]` to `heads` `[batch, heads, seq, d]`
    /// (`split`), or back (`!split`, writing only that part's columns).
    #[allow(clippy::too_many_arguments)]
    pub fn permute_heads(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        split: bool,
        tokens: &wgpu::Buffer,
        heads_major: &wgpu::Buffer,
        dims: HeadDims,
        part: usize,
    ) -> Result<()> {
        let HeadDims { batch, seq, heads, d, parts } = dims;
        if part >= parts {
            return Err(Error::Invalid(format!("head permute: part {part} of {parts}")));
        }
        let n = checked_u32("head permute elements", batch * seq, heads * d)?;
        let job = TrainJob {
            n,
            d: d as u32,
            seq: seq as u32,
            heads: heads as u32,
            parts: parts as u32,
            slot: part as u32,
            ..TrainJob::default()
        };
        if split {
            self.run(gpu, encoder, entry::SPLIT_HEADS, job, n as u64, |k, job| {
                k.bind(gpu, &UnaryBinds { job, a: tokens.into(), out: heads_major.into() })
            })
        } else {
            self.run(gpu, encoder, entry::MERGE_HEADS, job, n as u64, |k, job| {
                k.bind(gpu, &UnaryBinds { job, a: heads_major.into(), out: tokens.into() })
            })
        }
    }
}

/// The sizes of a head permute: `batch` sequences of `seq` tokens, `heads` heads of width
/// `d`, `parts` column blocks on the token-major side (3 for a fused QKV projection).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadDims {
    /// Sequences B.
    pub batch: usize,
    /// Tokens per sequence T.
    pub seq: usize,
    /// Heads H.
    pub heads: usize,
    /// Head width D.
    pub d: usize,
    /// Column blocks of `[B·T, parts·H·D]`.
    pub parts: usize,
}

/// `value` (what one invocation loops over) at most `max`, or a typed error naming `what`.
fn check_loop(what: &str, value: usize, max: usize) -> Result<()> {
    if value > max {
        return Err(Error::OutOfRange { what: what.into(), value: value as u64, min: 1, max: max as u64 });
    }
    Ok(())
}

/// `a·b` as a u32 element count, or a typed error naming `what`.
fn checked_u32(what: &str, a: usize, b: usize) -> Result<u32> {
    a.checked_mul(b).and_then(|n| u32::try_from(n).ok()).ok_or_else(|| Error::OutOfRange {
        what: what.into(),
        value: (a as u128 * b as u128).min(u64::MAX as u128) as u64,
        min: 0,
        max: u32::MAX as u64,
    })
}

/// Cross-entropy in f64: per-row loss and (softmax − onehot)·scale (rows with a target ≥
/// vocab: zeros).
pub fn cross_entropy_f64(logits: &[f32], targets: &[u32], vocab: usize, scale: f64) -> (Vec<f64>, Vec<f64>) {
    let mut loss = vec![0f64; targets.len()];
    let mut grad = vec![0f64; logits.len()];
    for (r, &t) in targets.iter().enumerate() {
        if t as usize >= vocab {
            continue;
        }
        let row = &logits[r * vocab..(r + 1) * vocab];
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &x| a.max(x as f64));
        let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        loss[r] = lse - row[t as usize] as f64;
        for (v, &x) in row.iter().enumerate() {
            grad[r * vocab + v] = ((x as f64 - lse).exp() - if v == t as usize { 1.0 } else { 0.0 }) * scale;
        }
    }
    (loss, grad)
}

/// GELU (tanh form) and its derivative in f64.
pub fn gelu_f64(x: f64) -> (f64, f64) {
    let k = 0.7978845608028654;
    let u = k * (x + 0.044715 * x * x * x);
    let t = u.tanh();
    (0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x))
}

/// LayerNorm y = γ ⊙ (x − μ)/√(σ² + eps) + β of `x` `[rows, d]` in f64.
pub fn layer_norm_f64(x: &[f64], gamma: &[f64], beta: &[f64], d: usize, eps: f64) -> Vec<f64> {
    x.chunks_exact(d)
        .flat_map(|row| {
            let mean = row.iter().sum::<f64>() / d as f64;
            let rstd = 1.0 / (row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64 + eps).sqrt();
            row.iter()
                .enumerate()
                .map(move |(e, v)| (v - mean) * rstd * gamma[e] + beta[e])
                .collect::<Vec<_>>()
        })
        .collect()
}

/// LayerNorm's backward in f64: (dx, dγ, dβ).
pub fn layer_norm_backward_f64(
    x: &[f64],
    dy: &[f64],
    gamma: &[f64],
    d: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![0f64; x.len()];
    let (mut dg, mut db) = (vec![0f64; d], vec![0f64; d]);
    for (r, row) in x.chunks_exact(d).enumerate() {
        let mean = row.iter().sum::<f64>() / d as f64;
        let rstd = 1.0 / (row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64 + eps).sqrt();
        let xh: Vec<f64> = row.iter().map(|v| (v - mean) * rstd).collect();
        let g: Vec<f64> = (0..d).map(|e| dy[r * d + e] * gamma[e]).collect();
        let mean_g = g.iter().sum::<f64>() / d as f64;
        let mean_gx = g.iter().zip(&xh).map(|(a, b)| a * b).sum::<f64>() / d as f64;
        for e in 0..d {
            dx[r * d + e] = rstd * (g[e] - mean_g - xh[e] * mean_gx);
            dg[e] += dy[r * d + e] * xh[e];
            db[e] += dy[r * d + e];
        }
    }
    (dx, dg, db)
}

/// One AdamW step in f64 on (param, m, v) with gradient `grad` clipped by the global norm
/// `norm`; returns the new (param, m, v).
pub fn adamw_f64(
    param: &[f64],
    grad: &[f64],
    m: &[f64],
    v: &[f64],
    norm: f64,
    o: &AdamW,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (b1, b2) = (o.beta1 as f64, o.beta2 as f64);
    let clip = if o.max_norm > 0.0 && norm > o.max_norm as f64 { o.max_norm as f64 / norm } else { 1.0 };
    let (c1, c2) = (1.0 / (1.0 - b1.powi(o.step as i32)), 1.0 / (1.0 - b2.powi(o.step as i32)));
    let mut out = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..param.len() {
        let g = grad[i] * clip;
        let mi = b1 * m[i] + (1.0 - b1) * g;
        let vi = b2 * v[i] + (1.0 - b2) * g * g;
        let mut p = param[i] * (1.0 - o.lr as f64 * o.weight_decay as f64);
        p -= o.lr as f64 * mi * c1 / ((vi * c2).sqrt() + o.eps as f64);
        out.0.push(p);
        out.1.push(mi);
        out.2.push(vi);
    }
    out
}

/// The tokens grouped by id, as [`Train::embedding_backward`] reads them: `vocab + 1` offsets
/// (the tokens of id v are positions `[offsets[v], offsets[v + 1])` of the list), then the
/// token positions ordered by id and, within an id, by position. Ids ≥ `vocab` are left out.
pub fn tokens_by_id(ids: &[u32], vocab: usize) -> Vec<u32> {
    let mut offsets = vec![0u32; vocab + 1];
    for &id in ids.iter().filter(|&&id| (id as usize) < vocab) {
        offsets[id as usize + 1] += 1;
    }
    for v in 0..vocab {
        offsets[v + 1] += offsets[v];
    }
    let mut next = offsets.clone();
    let mut out = offsets;
    out.resize(vocab + 1 + next[vocab] as usize, 0);
    for (t, &id) in ids.iter().enumerate().filter(|(_, id)| (**id as usize) < vocab) {
        out[vocab + 1 + next[id as usize] as usize] = t as u32;
        next[id as usize] += 1;
    }
    out
}

/// The embedding gather's gradient in f64: dE `[vocab, d]` = Σ over tokens of dx rows.
pub fn embedding_backward_f64(dx: &[f32], ids: &[u32], vocab: usize, d: usize) -> Vec<f64> {
    let mut de = vec![0f64; vocab * d];
    for (t, &id) in ids.iter().enumerate() {
        for c in 0..d {
            de[id as usize * d + c] += dx[t * d + c] as f64;
        }
    }
    de
}
