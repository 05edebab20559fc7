//! `longctx train` and `longctx eval`: the byte-level GPT trained on the kernels, and its
//! validation bits per byte at evaluation lengths beyond the training length.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};
use longctx::contract::positions::RopeScaling;
use longctx::models::gpt::{AttnKind, GptConfig, Params, PosScheme, SinkWindow};
use longctx::models::tasks::{Task, TaskCell, TaskMix, TaskReport, evaluate_task, example};
use longctx::models::training::{
    Checkpoint, Corpus, EvalReport, TrainConfig, Windows, evaluate, log_csv, train,
};

use super::{DeviceArgs, positive};

/// Where `scripts/fetch-corpus` puts the King James Bible.
const DEFAULT_CORPUS: &str = "target/corpus/kjv.txt";

#[derive(clap::Args, Debug)]
#[command(after_help = "\
A byte-level GPT (GPT-2's layout: tied embedding, pre-LayerNorm blocks, GELU FFN of 4·d)
trained with AdamW on the kernels: flash attention forward and backward, the tiled matmul,
the training kernels. Batches are windows of --train-len + 1 bytes drawn from the first 90 %
of the corpus; the last 10 % is the validation text. Writes OUT/checkpoint.safetensors (every
--checkpoint-every steps and at the end: parameters, AdamW moments, configuration, log) and
OUT/log.csv. An interrupted run continues with --resume and the same flags.

Example (the README's runs):
  scripts/fetch-corpus
  longctx train --pos alibi --train-len 128 --out runs/alibi")]
pub struct TrainArgs {
    /// Positional scheme: sinusoidal, rope, alibi or none.
    #[arg(long)]
    pos: String,
    /// The blocks' attention: dense (causal flash), moba:block=B,topk=K (each query reads
    /// its own block and the K-1 earlier blocks of B keys whose mean key scores highest),
    /// nsa:cmp=L/D,slc=L2,top=N,win=W (compressed, selected and window branches mixed by
    /// learned sigmoid gates) or dsa:topk=K[,heads=HI,dim=DI] (each query reads the K keys a
    /// lightning indexer scores highest; the indexer learns the KL to the dense attention);
    /// NSA and DSA not with --pos alibi.
    #[arg(
        long,
        default_value = "dense",
        value_name = "dense|moba:block=B,topk=K|nsa:cmp=L/D,slc=L2,top=N,win=W|dsa:topk=K"
    )]
    attn: String,
    /// Training length L (tokens per sequence). Limits: batch × (L + 1) ≤ 2^24 tokens and
    /// the activations within the device's bindings (checked before training starts); the
    /// matmuls split their inner dimension wherever one invocation would pass the adapter's
    /// loop cap, so long lengths work on lavapipe too.
    #[arg(long, default_value_t = 128, value_parser = positive)]
    train_len: usize,
    /// The corpus (one text file; `scripts/fetch-corpus` fetches the default).
    #[arg(long, default_value = DEFAULT_CORPUS)]
    corpus: PathBuf,
    /// Output directory (default runs/POS).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Model width.
    #[arg(long, default_value_t = 128, value_parser = positive)]
    d_model: usize,
    /// Attention heads.
    #[arg(long, default_value_t = 4, value_parser = positive)]
    heads: usize,
    /// Blocks.
    #[arg(long, default_value_t = 4, value_parser = positive)]
    layers: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 16, value_parser = positive)]
    batch: usize,
    /// Optimiser steps.
    #[arg(long, default_value_t = 2000, value_parser = positive)]
    steps: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f32,
    /// Warm-up steps (then cosine decay to lr/10).
    #[arg(long, default_value_t = 100)]
    warmup: usize,
    /// AdamW weight decay (matrices and the embedding).
    #[arg(long, default_value_t = 0.1)]
    weight_decay: f32,
    /// Global gradient-norm clip.
    #[arg(long, default_value_t = 1.0)]
    clip: f32,
    /// Seed of the initialisation and the batches.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Steps between checkpoints (and validation losses).
    #[arg(long, default_value_t = 100, value_parser = positive)]
    checkpoint_every: usize,
    /// Steps between log rows.
    #[arg(long, default_value_t = 10, value_parser = positive)]
    log_every: usize,
    /// Continue the run in OUT from its checkpoint.
    #[arg(long)]
    resume: bool,
    /// Mix examples of these tasks into the batches at the training length
    /// (comma-separated: passkey, needles, vars), a --task-share of the sequences.
    #[arg(long, value_delimiter = ',')]
    tasks: Vec<String>,
    /// With --tasks: the share of each batch's sequences that are task examples.
    #[arg(long, default_value_t = 0.25)]
    task_share: f64,
}

/// `runs/POS` unless given.
fn out_dir(a: &TrainArgs, pos: PosScheme) -> PathBuf {
    a.out.clone().unwrap_or_else(|| match AttnKind::parse(&a.attn) {
        Ok(kind @ (AttnKind::Moba { .. } | AttnKind::Nsa { .. } | AttnKind::Dsa { .. })) => {
            PathBuf::from("runs").join(format!("{}-{}", pos.name(), kind.name()))
        }
        _ => PathBuf::from("runs").join(pos.name()),
    })
}

fn corpus(path: &Path) -> anyhow::Result<Corpus> {
    if !path.exists() {
        bail!("no corpus at {}: run scripts/fetch-corpus (or give --corpus FILE)", path.display());
    }
    Ok(Corpus::load(path)?)
}

pub fn run_train(device: &DeviceArgs, a: &TrainArgs) -> anyhow::Result<()> {
    let pos = PosScheme::parse(&a.pos)?;
    let model = GptConfig {
        vocab: 256,
        d_model: a.d_model,
        heads: a.heads,
        layers: a.layers,
        ffn: 4 * a.d_model,
        pos,
        attn: AttnKind::parse(&a.attn)?,
        rope_scaling: Default::default(),
        window: None,
    };
    let corpus = corpus(&a.corpus)?;
    let config = TrainConfig {
        model,
        batch: a.batch,
        seq: a.train_len,
        steps: a.steps,
        lr: a.lr,
        warmup: a.warmup,
        min_lr_ratio: 0.1,
        weight_decay: a.weight_decay,
        max_norm: a.clip,
        betas: (0.9, 0.95),
        seed: a.seed,
        checkpoint_every: a.checkpoint_every,
        log_every: a.log_every,
        corpus_sha256: corpus.sha256.clone(),
        tasks: TaskMix {
            tasks: a
                .tasks
                .iter()
                .filter(|t| !t.is_empty())
                .map(|t| Task::parse(t))
                .collect::<Result<_, _>>()?,
            share: a.task_share,
        },
    };
    config.validate()?;
    let dir = out_dir(a, pos);
    let (ckpt, log) = (dir.join("checkpoint.safetensors"), dir.join("log.csv"));
    let start = match (a.resume, ckpt.exists()) {
        (true, true) => {
            let c = Checkpoint::load(&ckpt)?;
            c.check_continues(&config)?;
            Some(c)
        }
        (true, false) => bail!("--resume: no checkpoint at {}", ckpt.display()),
        (false, true) => {
            bail!("{} exists: continue it with --resume, or choose another --out", ckpt.display())
        }
        (false, false) => None,
    };
    let created = !dir.exists();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = train_into(device, a, &config, &corpus, start, &ckpt, &log);
    if result.is_err() && created {
        // a run that failed before its first checkpoint leaves no empty folder behind
        let _ = std::fs::remove_dir(&dir);
    }
    result
}

/// The training run of [`run_train`] into its prepared folder.
fn train_into(
    device: &DeviceArgs,
    a: &TrainArgs,
    config: &TrainConfig,
    corpus: &Corpus,
    start: Option<Checkpoint>,
    ckpt: &Path,
    log: &Path,
) -> anyhow::Result<()> {
    let model = &config.model;
    longctx::io::check_outputs(&[ckpt, log], &[a.corpus.as_path()])?;
    let gpu = device.gpu()?;
    let done = start.as_ref().map_or(0, |c| c.step);
    let mut rows = start.as_ref().map_or_else(Vec::new, |c| c.log.clone());
    println!(
        "training {} with {} attention ({} parameters; d {} × {} layers, {} heads) at L = {} on {}: {} steps of {} tokens from step {done}",
        model.pos.name(),
        model.attn.describe(),
        model.params(),
        model.d_model,
        model.layers,
        model.heads,
        a.train_len,
        gpu.info().name,
        a.steps,
        config.tokens_per_step()
    );
    let bar = ProgressBar::new(a.steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed}<{eta} {msg}").expect("template"),
    );
    bar.set_position(done as u64);
    let mut write_err = None;
    let state = train(&gpu, corpus, config, start, config.steps, ckpt, |row| {
        bar.set_position(row.step as u64);
        bar.set_message(format!(
            "loss {:.3}{} lr {:.1e} {:.0} tok/s",
            row.loss,
            row.val_loss.map(|v| format!(" val {v:.3}")).unwrap_or_default(),
            row.lr,
            row.tokens_per_s
        ));
        if row.val_loss.is_some() {
            bar.println(format!(
                "step {:>6}  loss {:.4}  val {:.4} ({:.3} bits/byte)  {:.0} tok/s",
                row.step,
                row.loss,
                row.val_loss.unwrap_or(f32::NAN),
                row.val_loss.unwrap_or(f32::NAN) as f64 / std::f64::consts::LN_2,
                row.tokens_per_s
            ));
        }
        rows.push(row.clone());
        if let Err(e) = longctx::io::write_atomic(log, log_csv(&rows).as_bytes()) {
            write_err.get_or_insert(e);
        }
    })?;
    bar.finish_and_clear();
    if let Some(e) = write_err {
        return Err(anyhow::Error::from(e).context(format!("writing {}", log.display())));
    }
    let last = state.log.last().context("no steps were run")?;
    let mut rates: Vec<f64> = state.log.iter().map(|r| r.tokens_per_s).filter(|x| x.is_finite()).collect();
    rates.sort_by(f64::total_cmp);
    let rate = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
    let gflops = rate * model.train_flops_per_token(a.train_len) / 1e9;
    let probe = longctx::kernels::peak::best_reading(&gpu)?;
    println!(
        "throughput: {rate:.0} tokens/s (median of the log rows) = {gflops:.2} GFLOP/s, {:.1} % of this adapter's FMA probe ({:.1} GFLOP/s)",
        100.0 * gflops / probe.fma_gflops,
        probe.fma_gflops
    );
    println!(
        "step {}: loss {:.4}, validation {:.4} nats ({:.3} bits/byte); {:.0} s of training; {}",
        state.step,
        last.loss,
        last.val_loss.unwrap_or(f32::NAN),
        last.val_loss.unwrap_or(f32::NAN) as f64 / std::f64::consts::LN_2,
        last.elapsed_s,
        ckpt.display()
    );
    Ok(())
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Validation bits per byte of trained checkpoints at each evaluation length, on the same bytes
for every length (the first --span bytes of the validation text): non-overlapping windows
(as in the ALiBi paper's Figure 1; a token early in a window sees little context) and a
sliding window advancing by L/--slide (each scored token after the first window sees at
least L − L/slide tokens).

Example:
  longctx eval --checkpoint runs/alibi/checkpoint.safetensors --lengths 128,256,512,1024,2048")]
pub struct EvalArgs {
    /// Checkpoints to evaluate (repeat the flag for several).
    #[arg(long, required = true)]
    checkpoint: Vec<PathBuf>,
    /// Evaluation lengths, comma-separated, each at most --span (which must be a multiple of
    /// every length); a forward holds max(L, --tokens-per-call) tokens, within the device's
    /// bindings (the matmuls split K past the adapter's loop cap: 16K works on lavapipe).
    #[arg(long, default_value = "128,256,512,1024,2048", value_delimiter = ',', value_parser = positive)]
    lengths: Vec<usize>,
    /// The corpus the checkpoints were trained on.
    #[arg(long, default_value = DEFAULT_CORPUS)]
    corpus: PathBuf,
    /// Validation bytes scored (a multiple of every length).
    #[arg(long, default_value_t = 16384, value_parser = positive)]
    span: usize,
    /// Sliding windows advance by L / SLIDE (0: no sliding evaluation).
    #[arg(long, default_value_t = 4)]
    slide: usize,
    /// Tokens per forward (windows batched up to this).
    #[arg(long, default_value_t = 4096, value_parser = positive)]
    tokens_per_call: usize,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A retrieval task instead of bits per byte: passkey, needles or vars; accuracy per
    /// (length, depth) (models/tasks.rs).
    #[arg(long)]
    task: Option<String>,
    /// With --task: where the asked-for fact sits, fractions of the text before the question.
    #[arg(long, default_value = "0,0.25,0.5,0.75,1", value_delimiter = ',')]
    depths: Vec<f64>,
    /// With --task: examples per (length, depth).
    #[arg(long, default_value_t = 20, value_parser = positive)]
    examples: usize,
    /// With --task: seeds the examples.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// RoPE models: rescale the frequencies for lengths past training — none, pi:S, ntk:S or
    /// yarn:S (YaRN's ramp measured against the checkpoint's training length); default: as
    /// the checkpoint was trained.
    #[arg(long)]
    rope_scaling: Option<String>,
    /// StreamingLLM's attention at evaluation: W (each query sees the W keys before it) or
    /// W+S (and the first S positions, the sinks); dense checkpoints only.
    #[arg(long)]
    window: Option<String>,
}

pub fn run_eval(device: &DeviceArgs, a: &EvalArgs) -> anyhow::Result<()> {
    let mut inputs: Vec<&Path> = a.checkpoint.iter().map(PathBuf::as_path).collect();
    inputs.push(&a.corpus);
    longctx::io::check_outputs(&a.json.as_deref().into_iter().collect::<Vec<_>>(), &inputs)?;
    let corpus = corpus(&a.corpus)?;
    let checkpoints = a
        .checkpoint
        .iter()
        .map(|p| Checkpoint::load(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (c, p) in checkpoints.iter().zip(&a.checkpoint) {
        if c.config.corpus_sha256 != corpus.sha256 {
            bail!(
                "{} was trained on corpus {}, not {} ({})",
                p.display(),
                c.config.corpus_sha256,
                a.corpus.display(),
                corpus.sha256
            );
        }
    }
    if let Some((_, l)) = a.lengths.iter().enumerate().find(|(i, l)| a.lengths[..*i].contains(l)) {
        bail!("--lengths: {l} is given twice");
    }
    let mut modes = vec![Windows::NonOverlapping];
    if a.slide > 0 {
        for &l in &a.lengths {
            if l % a.slide != 0 {
                bail!("--slide {}: length {l} is not a multiple of it", a.slide);
            }
        }
        modes.push(Windows::Sliding { stride: 0 });
    }
    // each checkpoint's model with the RoPE scaling asked for (checked before any work)
    let models = checkpoints
        .iter()
        .map(|c| {
            let mut m = c.config.model;
            if let Some(s) = &a.rope_scaling {
                m.rope_scaling = RopeScaling::parse(s, c.config.seq)?;
            }
            if let Some(w) = &a.window {
                m.window = Some(SinkWindow::parse(w)?);
            }
            m.validate()?;
            Ok(m)
        })
        .collect::<longctx::Result<Vec<_>>>()?;
    if let Some(task) = &a.task {
        return run_task_eval(device, a, Task::parse(task)?, &checkpoints, &models);
    }
    let gpu = device.gpu()?;
    let bar = ProgressBar::new((checkpoints.len() * a.lengths.len() * modes.len()) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}").expect("template"));
    let mut reports = Vec::new();
    for ((c, path), model) in checkpoints.iter().zip(&a.checkpoint).zip(&models) {
        let params = Params { config: *model, data: c.params.clone() };
        let mut rows = Vec::new();
        for &l in &a.lengths {
            for mode in &modes {
                let w = match mode {
                    Windows::Sliding { .. } => Windows::Sliding { stride: l / a.slide },
                    m => *m,
                };
                bar.set_message(format!("{} L={l} {w:?}", c.config.model.pos.name()));
                rows.push(evaluate(&gpu, &params, &corpus.valid, a.span, l, w, a.tokens_per_call)?);
                bar.inc(1);
            }
        }
        reports.push(EvalReport {
            checkpoint: path.display().to_string(),
            pos: c.config.model.pos,
            attn: c.config.model.attn,
            rope_scaling: model.rope_scaling,
            window: model.window,
            train_len: c.config.seq,
            steps: c.step,
            rows,
        });
    }
    bar.finish_and_clear();
    println!("{}", table(&reports, a.slide));
    if let Some(path) = &a.json {
        longctx::io::write_atomic(path, serde_json::to_string_pretty(&reports)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `eval --task`: accuracy per (length, depth) for each checkpoint.
fn run_task_eval(
    device: &DeviceArgs,
    a: &EvalArgs,
    task: Task,
    checkpoints: &[Checkpoint],
    models: &[GptConfig],
) -> anyhow::Result<()> {
    if a.depths.is_empty() || a.depths.iter().any(|d| !(0.0..=1.0).contains(d)) {
        bail!("--depths: fractions in 0..=1, at least one");
    }
    // every (length, depth) has room for the task's sentences, before the GPU starts
    for &l in &a.lengths {
        example(task, l, 0.0, 0)?;
    }
    let gpu = device.gpu()?;
    let bar = ProgressBar::new((checkpoints.len() * a.lengths.len()) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}").expect("template"));
    let mut reports = Vec::new();
    for ((c, path), model) in checkpoints.iter().zip(&a.checkpoint).zip(models) {
        let params = Params { config: *model, data: c.params.clone() };
        let mut cells = Vec::new();
        for &l in &a.lengths {
            bar.set_message(format!("{} {} L={l}", c.config.model.pos.name(), task.name()));
            cells.extend(evaluate_task(
                &gpu,
                &params,
                (task, l),
                &a.depths,
                a.examples,
                a.seed,
                a.tokens_per_call,
            )?);
            bar.inc(1);
        }
        reports.push(TaskReport {
            checkpoint: path.display().to_string(),
            pos: c.config.model.pos,
            attn: c.config.model.attn,
            rope_scaling: model.rope_scaling.name(),
            window: model.window,
            train_len: c.config.seq,
            cells,
        });
    }
    bar.finish_and_clear();
    for r in &reports {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        let window = r.window.map_or(String::new(), |w| format!(", {}", w.name()));
        let mut header = vec![format!(
            "{} (L={}, RoPE scaling {}{window}): L (eval)",
            r.pos.name(),
            r.train_len,
            r.rope_scaling
        )];
        header.extend(a.depths.iter().map(|d| format!("depth {:.0} %", d * 100.0)));
        header.push("mean".into());
        t.set_header(header);
        for &l in &a.lengths {
            let row: Vec<&TaskCell> = r.cells.iter().filter(|c| c.length == l).collect();
            let mean = row.iter().map(|c| c.accuracy()).sum::<f64>() / row.len().max(1) as f64;
            let mut cells = vec![format!("{l} ({:.0}×)", l as f64 / r.train_len as f64)];
            cells.extend(row.iter().map(|c| format!("{:.2}", c.accuracy())));
            cells.push(format!("{mean:.2}"));
            t.add_row(cells);
        }
        println!("{} accuracy, {} examples per cell\n{t}", task.name(), a.examples);
    }
    if let Some(path) = &a.json {
        longctx::io::write_atomic(path, serde_json::to_string_pretty(&reports)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn table(reports: &[EvalReport], slide: usize) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec!["L (eval)".to_string()];
    for r in reports {
        let name = r.name();
        header.push(format!("{name} (L={}) non-overlapping", r.train_len));
        if slide > 0 {
            header.push(format!("{name} sliding L/{slide}"));
        }
    }
    t.set_header(header);
    let lengths: Vec<usize> =
        reports.first().map(|r| r.rows.iter().map(|x| x.length).collect()).unwrap_or_default();
    let mut lengths = lengths;
    lengths.dedup();
    for l in lengths {
        let mut row = vec![l.to_string()];
        for r in reports {
            for x in r.rows.iter().filter(|x| x.length == l) {
                row.push(format!("{:.3}", x.bits_per_byte));
            }
        }
        t.add_row(row);
    }
    t
}
