//! Training and evaluating the GPT of [`super::gpt`] on a byte corpus (issue 20): the fixed
//! train/validation split, batches drawn reproducibly per step, the learning-rate schedule,
//! the loop (a step is recorded and submitted without reading anything back; losses are read
//! only at log points), checkpoints as `.safetensors` (parameters, AdamW moments, the
//! configuration and the loss log in the metadata), and validation bits per byte at any
//! evaluation length, over non-overlapping windows or a sliding window.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::io::{SafetensorsFile, read_regular, write_safetensors};
use crate::kernels::train::AdamW;
use crate::models::gpt::{GptConfig, Params, inputs_and_targets};
use crate::models::gpt_gpu::GptGpu;
use crate::models::tasks::TaskMix;
use crate::runtime::Gpu;

/// The share of the corpus held out for validation (its end, from a line start).
pub(crate) const VALID_FRACTION: f64 = 0.1;
/// Corpora larger than this are refused (the corpus is held in memory).
pub(crate) const MAX_CORPUS_BYTES: u64 = 1 << 30;

/// A byte corpus split once: the first 90 % trains, the last 10 % (from the first line start
/// at or after the cut) validates.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// Training bytes.
    pub train: Vec<u8>,
    /// Validation bytes.
    pub valid: Vec<u8>,
    /// SHA-256 of the whole text, hex (a checkpoint records what it was trained on).
    pub sha256: String,
}

impl Corpus {
    /// Reads and splits `path`.
    pub fn load(path: &Path) -> Result<Self> {
        Self::split(read_regular(path, MAX_CORPUS_BYTES)?)
    }

    /// Splits `bytes` at the first line start at or after 90 %.
    pub fn split(bytes: Vec<u8>) -> Result<Self> {
        use sha2::Digest;
        let sha256 = format!("{:x}", sha2::Sha256::digest(&bytes));
        let cut = (bytes.len() as f64 * (1.0 - VALID_FRACTION)) as usize;
        let cut = bytes[cut..].iter().position(|&b| b == b'\n').map_or(cut, |p| cut + p + 1);
        let (train, valid) = bytes.split_at(cut);
        Ok(Self { train: train.to_vec(), valid: valid.to_vec(), sha256 })
    }
}

/// Most tokens one training batch may hold (batch × (length + 1)).
pub const MAX_BATCH_TOKENS: u64 = 1 << 24;

/// How a run trains: the model, the batch, the schedule, the optimiser, the checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The model.
    pub model: GptConfig,
    /// Sequences per step.
    pub batch: usize,
    /// Training length L (tokens per sequence).
    pub seq: usize,
    /// Optimiser steps in all.
    pub steps: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Linear warm-up steps, then a cosine decay to `lr · min_lr_ratio` at `steps`.
    pub warmup: usize,
    /// The floor of the cosine decay, as a fraction of `lr`.
    pub min_lr_ratio: f32,
    /// AdamW's decoupled weight decay (matrices and the embedding only).
    pub weight_decay: f32,
    /// Global gradient-norm clip.
    pub max_norm: f32,
    /// AdamW β1, β2.
    pub betas: (f32, f32),
    /// Seeds the initialisation and every step's batch.
    pub seed: u64,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// Steps between log rows (the loss is read back only then).
    pub log_every: usize,
    /// SHA-256 of the corpus trained on.
    pub corpus_sha256: String,
    /// Task examples mixed into the batches (none by default).
    #[serde(default)]
    pub tasks: TaskMix,
}

impl TrainConfig {
    /// Checks the sizes and settings.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let positive = [
            ("batch", self.batch),
            ("training length", self.seq),
            ("steps", self.steps),
            ("checkpoint interval", self.checkpoint_every),
            ("log interval", self.log_every),
        ];
        if let Some((what, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Invalid(format!("training: {what} must be at least 1")));
        }
        // a batch's tokens, bounded before activations are sized from them
        let tokens = (self.batch as u64).saturating_mul(self.seq as u64 + 1);
        if tokens > MAX_BATCH_TOKENS {
            return Err(Error::OutOfRange {
                what: format!("training batch tokens ({} × ({} + 1))", self.batch, self.seq),
                value: tokens,
                min: 1,
                max: MAX_BATCH_TOKENS,
            });
        }
        self.tasks.check(self.seq + 1)?;
        let finite =
            [self.lr, self.min_lr_ratio, self.weight_decay, self.max_norm, self.betas.0, self.betas.1];
        if finite.iter().any(|x| !x.is_finite() || *x < 0.0)
            || self.lr == 0.0
            || self.betas.0 >= 1.0
            || self.betas.1 >= 1.0
            || self.min_lr_ratio > 1.0
        {
            return Err(Error::Invalid(format!(
                "training: lr {} (> 0), min lr ratio {} (0..=1), weight decay {}, clip {}, betas {:?} (0..1) must be finite and in range",
                self.lr, self.min_lr_ratio, self.weight_decay, self.max_norm, self.betas
            )));
        }
        Ok(())
    }

    /// The learning rate of step `step` (from 0): linear warm-up to `lr`, then a cosine decay
    /// to `lr · min_lr_ratio` at the last step.
    pub(crate) fn lr_at(&self, step: usize) -> f32 {
        if step < self.warmup {
            return self.lr * (step + 1) as f32 / self.warmup as f32;
        }
        let span = self.steps.saturating_sub(self.warmup).max(1);
        let t = ((step - self.warmup) as f64 / span as f64).min(1.0);
        let floor = self.min_lr_ratio as f64;
        (self.lr as f64 * (floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos()))) as f32
    }

    /// Tokens per step.
    pub fn tokens_per_step(&self) -> usize {
        self.batch * self.seq
    }
}

/// One row of a run's log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogRow {
    /// Steps done.
    pub step: usize,
    /// The training loss of the last step (nats per byte).
    pub loss: f32,
    /// The validation loss at the training length on a fixed batch, at checkpoints.
    pub val_loss: Option<f32>,
    /// The learning rate of the last step.
    pub lr: f32,
    /// Training tokens per second since the previous row.
    pub tokens_per_s: f64,
    /// Seconds of training so far (over resumptions).
    pub elapsed_s: f64,
}

/// The header of [`log_csv`].
const LOG_HEADER: &str = "step,loss,val_loss,lr,tokens_per_s,elapsed_s";

/// A run's log as CSV (`step,loss,val_loss,lr,tokens_per_s,elapsed_s`; an empty
/// `val_loss` where none was measured): what `longctx train` writes beside its checkpoint.
pub fn log_csv(rows: &[LogRow]) -> String {
    let mut out = format!("{LOG_HEADER}\n");
    for r in rows {
        let val = r.val_loss.map(|v| v.to_string()).unwrap_or_default();
        out += &format!("{},{},{val},{},{},{}\n", r.step, r.loss, r.lr, r.tokens_per_s, r.elapsed_s);
    }
    out
}

/// Reads [`log_csv`]'s format back (a partial last line, from a run writing it, is skipped).
pub fn parse_log_csv(text: &str) -> Result<Vec<LogRow>> {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(LOG_HEADER) {
        return Err(Error::Invalid(format!("a training log starts with `{LOG_HEADER}`")));
    }
    let bad = |n: usize, line: &str| Error::Invalid(format!("training log line {}: `{line}`", n + 2));
    let mut rows = Vec::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() != 6 {
            if text.ends_with('\n') {
                return Err(bad(n, line));
            }
            break;
        }
        let num = |i: usize| f[i].trim().parse::<f64>().map_err(|_| bad(n, line));
        rows.push(LogRow {
            step: f[0].trim().parse().map_err(|_| bad(n, line))?,
            loss: num(1)? as f32,
            val_loss: if f[2].trim().is_empty() { None } else { Some(num(2)? as f32) },
            lr: num(3)? as f32,
            tokens_per_s: num(4)?,
            elapsed_s: num(5)?,
        });
    }
    Ok(rows)
}

/// A run's state as a checkpoint stores it.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// How the run trains.
    pub config: TrainConfig,
    /// Steps done.
    pub step: usize,
    /// The parameters, flat ([`GptConfig::shapes`] order).
    pub params: Vec<f32>,
    /// AdamW's moments, flat (absent in a weights-only file).
    pub moments: Option<(Vec<f32>, Vec<f32>)>,
    /// The log so far.
    pub log: Vec<LogRow>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    config: TrainConfig,
    step: usize,
    log: Vec<LogRow>,
}

const META_KEY: &str = "longctx.train";

impl Checkpoint {
    /// Writes the checkpoint atomically: each parameter by its name and shape, the moments as
    /// `adamw.m.NAME` and `adamw.v.NAME`, the rest as JSON in the metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let shapes = self.config.model.shapes();
        // every tensor a slice of its flat vector, named with its prefix
        let mut views: Vec<(String, Vec<usize>, &[f32])> = Vec::new();
        let mut flats = vec![("", self.params.as_slice())];
        if let Some((m, v)) = &self.moments {
            flats.extend([("adamw.m.", m.as_slice()), ("adamw.v.", v.as_slice())]);
        }
        for (prefix, flat) in flats {
            let mut at = 0;
            for (name, shape) in &shapes {
                let n: usize = shape.iter().product();
                views.push((format!("{prefix}{name}"), shape.clone(), &flat[at..at + n]));
                at += n;
            }
        }
        let header = Header { config: self.config.clone(), step: self.step, log: self.log.clone() };
        let meta = HashMap::from([(
            META_KEY.to_string(),
            serde_json::to_string(&header).map_err(|e| Error::Invalid(format!("checkpoint header: {e}")))?,
        )]);
        write_safetensors(path, &views, meta)
    }

    /// Refuses to continue this checkpoint as a run configured as `config` when they differ.
    pub fn check_continues(&self, config: &TrainConfig) -> Result<()> {
        if self.config == *config {
            return Ok(());
        }
        let (a, b) = (
            serde_json::to_value(&self.config).unwrap_or_default(),
            serde_json::to_value(config).unwrap_or_default(),
        );
        let fields: Vec<String> = a
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| b.get(k.as_str()) != Some(v))
            .map(|(k, v)| format!("{k} {v} (asked {})", b.get(k.as_str()).cloned().unwrap_or_default()))
            .collect();
        Err(Error::Invalid(format!(
            "the checkpoint's run differs from the one asked for: {}",
            fields.join(", ")
        )))
    }

    /// Reads a checkpoint written by [`Checkpoint::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let bad = |why: String| Error::File { path: path.to_path_buf(), message: why };
        let header: Header =
            serde_json::from_str(file.metadata(META_KEY).ok_or_else(|| {
                bad(format!("not a longctx training checkpoint (no `{META_KEY}` metadata)"))
            })?)
            .map_err(|e| bad(format!("checkpoint header: {e}")))?;
        header.config.validate()?;
        let shapes = header.config.model.shapes();
        let read = |prefix: &str| -> Result<Vec<f32>> {
            let mut flat = Vec::with_capacity(header.config.model.params());
            for (name, shape) in &shapes {
                let t = file.tensor(&format!("{prefix}{name}"))?;
                if &t.shape != shape {
                    return Err(bad(format!(
                        "tensor `{prefix}{name}` has shape {:?}, the model {shape:?}",
                        t.shape
                    )));
                }
                crate::contract::spec::check_finite(name, &t.data)?;
                flat.extend(t.data);
            }
            Ok(flat)
        };
        let params = read("")?;
        let has_moments = file.names().iter().any(|n| n.starts_with("adamw.m."));
        let moments = if has_moments { Some((read("adamw.m.")?, read("adamw.v.")?)) } else { None };
        Ok(Self { config: header.config, step: header.step, params, moments, log: header.log })
    }
}

/// Step `step`'s batch: `batch` windows of `seq + 1` bytes at positions drawn from
/// (`seed`, `step`) alone, so a resumed run sees the batches an uninterrupted one would; with
/// an active `mix`, each window is a task example instead with the mix's probability.
pub(crate) fn batch_at(
    text: &[u8],
    seed: u64,
    step: usize,
    (batch, seq): (usize, usize),
    mix: &TaskMix,
) -> Result<Vec<u32>> {
    if text.len() < seq + 1 {
        return Err(Error::Invalid(format!(
            "the training text has {} bytes; a sequence needs {}",
            text.len(),
            seq + 1
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut out = Vec::with_capacity(batch * (seq + 1));
    for _ in 0..batch {
        match mix.draw(&mut rng, seq + 1)? {
            Some(example) => out.extend(example.iter().map(|&b| b as u32)),
            None => {
                let start = rng.random_range(0..=text.len() - seq - 1);
                out.extend(text[start..start + seq + 1].iter().map(|&b| b as u32));
            }
        }
    }
    Ok(out)
}

/// Trains from `start` (a checkpoint to resume, or a fresh initialisation from the seed) up
/// to step `until` (at most `config.steps`; the schedule is always `config.steps` long),
/// writing a checkpoint to `path` every `checkpoint_every` steps and at `until`; `on_log`
/// sees every log row. Returns the final state.
pub fn train(
    gpu: &Gpu,
    corpus: &Corpus,
    config: &TrainConfig,
    start: Option<Checkpoint>,
    until: usize,
    path: &Path,
    mut on_log: impl FnMut(&LogRow),
) -> Result<Checkpoint> {
    config.validate()?;
    if config.corpus_sha256 != corpus.sha256 {
        return Err(Error::Invalid(format!(
            "the run was configured for corpus {}, this corpus is {}",
            config.corpus_sha256, corpus.sha256
        )));
    }
    if let Some(c) = &start {
        c.check_continues(config)?;
    }
    let (b, t) = (config.batch, config.seq);
    let valid_tokens = b * (t + 1);
    if corpus.valid.len() < valid_tokens {
        return Err(Error::Invalid(format!(
            "the validation text has {} bytes; one batch needs {valid_tokens}",
            corpus.valid.len()
        )));
    }
    let model = GptGpu::new(gpu, config.model, b, t)?;
    let mut state = match start {
        Some(c) => {
            c.check_continues(config)?;
            model.load(gpu, &c.params)?;
            if let Some((m, v)) = &c.moments {
                model.load_moments(gpu, m, v)?;
            }
            c
        }
        None => {
            let params = Params::init(config.model, config.seed)?.data;
            model.load(gpu, &params)?;
            Checkpoint { config: config.clone(), step: 0, params, moments: None, log: Vec::new() }
        }
    };
    // the fixed validation batch: windows spread evenly over the held-out text
    let gap = (corpus.valid.len() - (t + 1)) / b.max(1);
    let val: Vec<u32> =
        (0..b).flat_map(|i| corpus.valid[i * gap..i * gap + t + 1].iter().map(|&x| x as u32)).collect();
    let (val_in, val_tg) = inputs_and_targets(&val, t);
    let scale = 1.0 / (b * t) as f32;
    let mean = |l: Vec<f32>| l.iter().map(|&x| x as f64).sum::<f64>() as f32 * scale;
    let mut clock = Instant::now();
    let mut since = 0usize;
    let mut elapsed = state.log.last().map_or(0.0, |r| r.elapsed_s);
    let until = until.min(config.steps);
    while state.step < until {
        let step = state.step;
        let (inputs, targets) =
            inputs_and_targets(&batch_at(&corpus.train, config.seed, step, (b, t), &config.tasks)?, t);
        model.set_tokens(gpu, &inputs, &targets)?;
        let opt = AdamW {
            lr: config.lr_at(step),
            beta1: config.betas.0,
            beta2: config.betas.1,
            eps: 1e-8,
            weight_decay: config.weight_decay,
            max_norm: config.max_norm,
            step: u32::try_from(step + 1).map_err(|_| Error::Invalid("more than 2³² steps".into()))?,
        };
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        model.encode_forward(gpu, &mut enc, scale)?;
        model.encode_backward(gpu, &mut enc)?;
        model.encode_step(gpu, &mut enc, &opt)?;
        gpu.queue.submit([enc.finish()]);
        state.step += 1;
        since += b * t;
        let checkpoint = state.step % config.checkpoint_every == 0 || state.step == until;
        if state.step % config.log_every == 0 || checkpoint {
            let loss = mean(model.losses(gpu)?);
            let seconds = clock.elapsed().as_secs_f64();
            elapsed += seconds;
            let val_loss =
                if checkpoint { Some(mean(model.forward_losses(gpu, &val_in, &val_tg)?)) } else { None };
            if !loss.is_finite() || val_loss.is_some_and(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!(
                        "the training loss at step {} (lr {}; training and validation)",
                        state.step, opt.lr
                    ),
                    index: usize::from(loss.is_finite()),
                    value: if loss.is_finite() { val_loss.unwrap_or(f32::NAN) } else { loss },
                });
            }
            let row = LogRow {
                step: state.step,
                loss,
                val_loss,
                lr: opt.lr,
                tokens_per_s: since as f64 / seconds.max(1e-9),
                elapsed_s: elapsed,
            };
            on_log(&row);
            state.log.push(row);
            if checkpoint {
                state.params = model.params(gpu)?;
                state.moments = Some(model.moments(gpu)?);
                state.save(path)?;
            }
            since = 0;
            clock = Instant::now();
        }
    }
    Ok(state)
}

/// How evaluation windows cover the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Windows {
    /// Consecutive windows of L tokens, every token scored once (the ALiBi paper's
    /// non-overlapping evaluation: early tokens of a window see little context).
    NonOverlapping,
    /// Windows of L tokens advanced by `stride`; the first scores all its tokens, the
    /// others their last `stride` (each scored token sees at least L − stride of context).
    Sliding {
        /// Tokens a window advances.
        stride: usize,
    },
}

/// One checkpoint's evaluation, as `longctx eval --json` writes it (a list of these).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// The checkpoint's path.
    pub checkpoint: String,
    /// Its positional scheme.
    pub pos: crate::models::gpt::PosScheme,
    /// Its blocks' attention.
    #[serde(default)]
    pub attn: crate::models::gpt::AttnKind,
    /// RoPE's rescaling at evaluation.
    #[serde(default)]
    pub rope_scaling: crate::contract::positions::RopeScaling,
    /// The window with sinks at evaluation (none: full causal).
    #[serde(default)]
    pub window: Option<crate::models::gpt::SinkWindow>,
    /// Its training length.
    pub train_len: usize,
    /// Its steps.
    pub steps: usize,
    /// One row per (length, windows).
    pub rows: Vec<EvalRow>,
}

impl EvalReport {
    /// The checkpoint's name in tables and charts: its scheme, and its attention where that is
    /// not dense (`alibi moba:block=64,topk=3`).
    pub fn name(&self) -> String {
        let base = match self.attn {
            crate::models::gpt::AttnKind::Dense => self.pos.name().to_string(),
            other => format!("{} {}", self.pos.name(), other.describe()),
        };
        let base = match self.rope_scaling {
            crate::contract::positions::RopeScaling::None => base,
            s => format!("{base} {}", s.name()),
        };
        match self.window {
            None => base,
            Some(w) => format!("{base} {}", w.name()),
        }
    }
}

/// The curves of bits per byte against evaluation length, one per report and kind of windows
/// (non-overlapping always, sliding with `sliding`): `(label, marked as dashed, points)` — what
/// the Training panel draws.
pub fn extrapolation_curves(reports: &[EvalReport], sliding: bool) -> Vec<(String, bool, Vec<[f64; 2]>)> {
    let mut out = Vec::new();
    for r in reports {
        for slide in [false, true] {
            if slide && !sliding {
                continue;
            }
            let rows: Vec<_> =
                r.rows.iter().filter(|x| matches!(x.windows, Windows::Sliding { .. }) == slide).collect();
            let Some(first) = rows.first() else { continue };
            let pts = rows.iter().map(|x| [x.length as f64, x.bits_per_byte]).collect();
            let label = match first.windows {
                Windows::Sliding { stride } => {
                    format!("{} (sliding, stride L/{})", r.name(), first.length / stride.max(1))
                }
                Windows::NonOverlapping => format!("{} (non-overlapping)", r.name()),
            };
            out.push((label, slide, pts));
        }
    }
    out
}

/// One evaluation result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    /// Evaluation length L.
    pub length: usize,
    /// How the windows cover the text.
    pub windows: Windows,
    /// Tokens scored.
    pub tokens: usize,
    /// Mean loss in bits per byte.
    pub bits_per_byte: f64,
}

/// (start, first scored position) of every window of `length` over `span` scored tokens.
fn windows(span: usize, length: usize, w: Windows) -> Result<Vec<(usize, usize)>> {
    let out: Vec<(usize, usize)> = match w {
        Windows::NonOverlapping => (0..span / length).map(|i| (i * length, 0)).collect(),
        Windows::Sliding { stride } => {
            if stride == 0 || stride > length {
                return Err(Error::Invalid(format!("sliding stride {stride}: choose 1..={length}")));
            }
            std::iter::once((0, 0))
                .chain((1..=(span - length) / stride).map(|i| (i * stride, length - stride)))
                .collect()
        }
    };
    let scored: usize = out.iter().map(|&(_, first)| length - first).sum();
    if span < length || scored != span {
        return Err(Error::Invalid(format!(
            "evaluation span {span} is not covered exactly by windows of {length} ({w:?}); choose a span that is a multiple of every length and stride"
        )));
    }
    Ok(out)
}

/// Validation bits per byte of a model (`params`) at evaluation length `length`: the first `span`
/// tokens after the first byte of `text` are scored (so every length scores the same
/// bytes), `tokens_per_call` tokens per forward.
pub fn evaluate(
    gpu: &Gpu,
    params: &Params,
    text: &[u8],
    span: usize,
    length: usize,
    w: Windows,
    tokens_per_call: usize,
) -> Result<EvalRow> {
    if text.len() < span + 1 {
        return Err(Error::Invalid(format!(
            "evaluation needs {} bytes of validation text; it has {}",
            span + 1,
            text.len()
        )));
    }
    let list = windows(span, length, w)?;
    let batch = (tokens_per_call / length).clamp(1, list.len());
    let model = GptGpu::new(gpu, params.config, batch, length)?;
    model.load(gpu, &params.data)?;
    let mut nats = 0f64;
    for group in list.chunks(batch) {
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for i in 0..batch {
            // a short last group repeats its first window, scoring nothing
            let (start, first) = group.get(i).copied().unwrap_or((group[0].0, length));
            inputs.extend(text[start..start + length].iter().map(|&b| b as u32));
            targets
                .extend((0..length).map(|p| if p >= first { text[start + p + 1] as u32 } else { u32::MAX }));
        }
        nats += model.forward_losses(gpu, &inputs, &targets)?.iter().map(|&x| x as f64).sum::<f64>();
    }
    let bits_per_byte = nats / span as f64 / std::f64::consts::LN_2;
    if !bits_per_byte.is_finite() {
        return Err(Error::NonFinite {
            what: format!("the validation loss at length {length}"),
            index: 0,
            value: bits_per_byte as f32,
        });
    }
    Ok(EvalRow { length, windows: w, tokens: span, bits_per_byte })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::tasks::Task;

    #[test]
    fn the_log_round_trips_through_csv() {
        let rows = vec![
            LogRow { step: 10, loss: 2.5, val_loss: None, lr: 1e-3, tokens_per_s: 400.5, elapsed_s: 3.25 },
            LogRow {
                step: 20,
                loss: 2.25,
                val_loss: Some(2.375),
                lr: 5e-4,
                tokens_per_s: 401.0,
                elapsed_s: 6.5,
            },
        ];
        let text = log_csv(&rows);
        assert_eq!(parse_log_csv(&text).unwrap(), rows);
        // a line being written is skipped; a bad complete one is an error
        assert_eq!(parse_log_csv(&text[..text.len() - 5]).unwrap(), rows[..1]);
        assert!(parse_log_csv(&(text.clone() + "x,1\n")).is_err());
        assert!(parse_log_csv("loss\n").is_err());
    }

    #[test]
    fn windows_score_every_token_once() {
        for (span, len, w) in [
            (64, 16, Windows::NonOverlapping),
            (64, 16, Windows::Sliding { stride: 4 }),
            (64, 64, Windows::Sliding { stride: 8 }),
        ] {
            let list = windows(span, len, w).unwrap();
            let mut seen = vec![0; span];
            for (start, first) in list {
                (start + first..start + len).for_each(|p| seen[p] += 1);
            }
            assert!(seen.iter().all(|&c| c == 1), "{span} {len} {w:?}: {seen:?}");
        }
        assert!(windows(60, 16, Windows::NonOverlapping).is_err());
        assert!(windows(64, 16, Windows::Sliding { stride: 0 }).is_err());
    }

    #[test]
    fn the_schedule_warms_up_then_decays_to_the_floor() {
        let c = TrainConfig {
            model: GptConfig::bytes(16, 2, 1, crate::models::gpt::PosScheme::None),
            batch: 1,
            seq: 8,
            steps: 100,
            lr: 1e-3,
            warmup: 10,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            max_norm: 1.0,
            betas: (0.9, 0.95),
            seed: 1,
            checkpoint_every: 10,
            log_every: 1,
            corpus_sha256: String::new(),
            tasks: TaskMix::default(),
        };
        assert!((c.lr_at(0) - 1e-4).abs() < 1e-9);
        assert!((c.lr_at(9) - 1e-3).abs() < 1e-9);
        assert!((c.lr_at(10) - 1e-3).abs() < 1e-9);
        assert!((c.lr_at(99) - 1e-4).abs() < 2e-6);
        assert!(c.lr_at(50) < c.lr_at(30));
        // batches depend on (seed, step) only
        let text = b"abcdefghijklmnopqrstuvwxyz".repeat(4);
        let none = TaskMix::default();
        let at = |step, mix: &TaskMix| batch_at(&text, 3, step, (2, 8), mix).unwrap();
        assert_eq!(at(7, &none), at(7, &none));
        assert_ne!(at(7, &none), at(8, &none));
        // a mix replaces some windows by task examples, still by (seed, step) alone
        let text = b"abcdefghijklmnopqrstuvwxyz".repeat(40);
        let mix = TaskMix { tasks: vec![Task::Passkey], share: 0.5 };
        let at = |step| batch_at(&text, 3, step, (8, 255), &mix).unwrap();
        assert_eq!(at(4), at(4));
        let examples: usize =
            (0..20).map(|s| at(s).chunks(256).filter(|w| w.contains(&(b'?' as u32))).count()).sum();
        assert!((40..=120).contains(&examples), "{examples} of 160 windows are examples at share 0.5");
    }
}
