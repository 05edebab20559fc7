//! Subcommands: thin layers that parse flags, call the library and print.

mod attention;
mod bench;
mod decode;
#[cfg(feature = "bert")]
mod embed;
mod generate;
mod info;
mod mask;
mod maskargs;
mod peak;
mod plan;
mod plot;
mod ring;
mod route;
mod selftest;
mod train;
mod tune;

use clap::{Parser, Subcommand};
use longctx::{Gpu, GpuOptions};

/// longctx — long-context attention kernels (FlashAttention, ALiBi, windows, MQA/GQA) in
/// WGSL on any wgpu adapter, each checked against an f64 CPU oracle.
#[derive(Parser, Debug)]
#[command(name = "longctx", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// How to pick the GPU adapter.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// Use the first adapter whose name contains this text (case-insensitive); also
    /// LONGCTX_ADAPTER. `longctx info --all` lists the adapters.
    #[arg(long, global = true)]
    pub adapter: Option<String>,
    /// Restrict to these wgpu backends, comma-separated: vulkan, metal, dx12 (default:
    /// WGPU_BACKEND or all). gl is listed by `info --all` but refused: wgpu's GLSL
    /// translation cannot run the kernels.
    #[arg(long, global = true)]
    pub backend: Option<String>,
    /// Kernel configuration preset instead of the detected one: a100, h100, nvidia, amd-cdna,
    /// amd-rdna, apple, intel, software, portable (`longctx info --profiles` shows them).
    #[arg(long, global = true)]
    pub profile: Option<String>,
    /// Ignore the autotuner's cached winners (`longctx tune`) for this adapter.
    #[arg(long, global = true)]
    pub untuned: bool,
}

/// The backends named in `list` (comma-separated); an unknown name is an error naming `flag`
/// (wgpu would ignore it and then find no adapter).
fn backends(flag: &str, list: &str) -> anyhow::Result<wgpu::Backends> {
    const KNOWN: [&str; 11] =
        ["vulkan", "vk", "metal", "mtl", "dx12", "d3d12", "gl", "opengl", "gles", "webgpu", "noop"];
    if list.split(',').all(|s| s.trim().is_empty()) {
        anyhow::bail!("{flag} is empty; choose from vulkan, metal, dx12, gl (comma-separated)");
    }
    for name in list.split(',').map(|s| s.trim().to_lowercase()).filter(|s| !s.is_empty()) {
        if !KNOWN.contains(&name.as_str()) {
            anyhow::bail!(
                "{flag}: unknown backend `{name}`; choose from vulkan, metal, dx12, gl (comma-separated)"
            );
        }
    }
    Ok(wgpu::Backends::from_comma_list(list))
}

/// The most repeats or steps a flag accepts.
pub const MAX_COUNT: usize = 100_000;

/// A count from 1 to [`MAX_COUNT`] (repeats, steps): zero and absurd counts are refused
/// when the flag is parsed.
pub fn positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(v) if v > MAX_COUNT => Err(format!("must be at most {MAX_COUNT}")),
        Ok(v) => Ok(v),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

/// A head dim: 1 to 256 (`longctx::kernels::MAX_HEAD_DIM`).
pub fn head_dim(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(v) if (1..=longctx::kernels::MAX_HEAD_DIM).contains(&v) => Ok(v),
        Ok(v) => Err(format!("head dim {v}: must be 1..={}", longctx::kernels::MAX_HEAD_DIM)),
        Err(e) => Err(format!("expected a whole number: {e}")),
    }
}

impl DeviceArgs {
    pub fn options(&self) -> anyhow::Result<GpuOptions> {
        let backends = match (&self.backend, std::env::var("WGPU_BACKEND")) {
            (Some(list), _) => Some(backends("--backend", list)?),
            // an empty variable counts as unset
            (None, Ok(list)) if !list.trim().is_empty() => Some(backends("WGPU_BACKEND", &list)?),
            (None, Ok(_)) => None,
            (None, Err(_)) => None,
        };
        Ok(GpuOptions {
            backends,
            adapter: self.adapter.clone().or_else(|| GpuOptions::from_env().adapter),
            limits: None,
            profile: self.profile.clone(),
            tuned: !self.untuned,
        })
    }
    pub fn gpu(&self) -> anyhow::Result<Gpu> {
        let options = self.options()?;
        Gpu::new(&options).map_err(|e| match (&e, &options.adapter, &self.backend) {
            (longctx::Error::NoAdapter { .. }, Some(_), _) => {
                anyhow::Error::new(e).context("--adapter (or LONGCTX_ADAPTER) matched no adapter")
            }
            (longctx::Error::NoAdapter { .. }, None, Some(_)) => {
                anyhow::Error::new(e).context("--backend has no adapter")
            }
            _ => e.into(),
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show the adapter, its features and the limits the kernels depend on.
    Info(info::InfoArgs),
    /// Run attention on .npy tensors: O = softmax(scale·QKᵀ + bias, masked)·V.
    Attention(attention::AttentionArgs),
    /// Time the kernels (validated against the oracle first) and print a table.
    Bench(bench::BenchArgs),
    /// Incremental decoding: tokens/s, KV-cache bytes and bytes read per step, MHA vs GQA vs MQA.
    Decode(decode::DecodeArgs),
    /// Text from a trained checkpoint over the paged (int8/int4-quantisable) KV cache: one
    /// prompt streamed, several decoded together, or speculative decoding with a draft.
    Generate(generate::GenerateArgs),
    /// Measure this adapter's FMA rate and copy bandwidth (cached; the "% of peak" denominators).
    Peak(peak::PeakArgs),
    /// Open the desktop visualiser: attention patterns, tile maps, ALiBi, memory traffic,
    /// decoding, memory plans, CoLT5 routing, a real model's heads (BERT), benchmarks —
    /// computed on the window's own wgpu device.
    #[cfg(feature = "app")]
    Viz,
    /// Memory and cost of a model at a context length: weights, KV cache (MHA/GQA/MQA),
    /// activations with naive vs flash attention, which GPUs it fits, the context cost model
    /// (docs/DESIGN.md §2).
    Plan(plan::PlanArgs),
    /// CoLT5 conditional computation: the routed layer against its dense reference, per branch.
    Route(route::RouteArgs),
    /// Ring attention (context parallelism) over P ranks: devices of this process
    /// (`--devices P`) or processes under mpirun (a build with `--features mpi`); sampled rows
    /// against the oracle, compute vs communication per step, memory per rank.
    Ring(ring::RingArgs),
    /// Autotune kernel configurations on this adapter and cache the winners.
    Tune(tune::TuneArgs),
    /// Sentence embeddings from a local BERT model (all-MiniLM-L6-v2) on the GPU kernels;
    /// cosine similarities; attention probabilities of every layer and head.
    #[cfg(feature = "bert")]
    Embed(embed::EmbedArgs),
    /// Print a mask's block map (full, partial, skipped tiles), sparsity and FLOPs. No GPU.
    Mask(mask::MaskCmdArgs),
    /// Check every kernel and feature against the f64 oracle on this adapter at small sizes
    /// (one line per check; fails if any does): run it on a new GPU or driver.
    Selftest,
    /// Train a small byte-level GPT on the kernels (flash forward and backward, matmul,
    /// AdamW) with sinusoidal, RoPE, ALiBi or no positions; checkpoints and a loss log.
    Train(train::TrainArgs),
    /// Validation bits per byte of trained checkpoints at evaluation lengths beyond the
    /// training length (non-overlapping and sliding windows).
    Eval(train::EvalArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // the global device flags are checked for every command, also those that use no GPU
    // (`plan`, `mask`), so a misspelt --backend or --profile is never silently ignored
    cli.device.options()?;
    if let Some(name) = &cli.device.profile {
        let names: Vec<&str> = longctx::runtime::Profile::all().iter().map(|p| p.name).collect();
        if !names.contains(&name.as_str()) {
            anyhow::bail!("--profile `{name}`: unknown; choose from {}", names.join(", "));
        }
    }
    match cli.command {
        Command::Info(a) => info::run(&cli.device, &a),
        Command::Attention(a) => attention::run(&cli.device, &a),
        Command::Bench(a) => bench::run(&cli.device, &a),
        Command::Mask(a) => mask::run(&cli.device, &a),
        Command::Plan(a) => plan::run(&a),
        Command::Route(a) => route::run(&cli.device, &a),
        Command::Ring(a) => ring::run(&cli.device, &a),
        Command::Tune(a) => tune::run(&cli.device, &a),
        #[cfg(feature = "app")]
        Command::Viz => {
            longctx::app::run().map_err(|e| anyhow::anyhow!("the visualiser could not start: {e}"))
        }
        Command::Peak(a) => peak::run(&cli.device, &a),
        Command::Decode(a) => decode::run(&cli.device, &a),
        Command::Generate(a) => generate::run(&cli.device, &a),
        #[cfg(feature = "bert")]
        Command::Embed(a) => embed::run(&cli.device, &a),
        Command::Selftest => selftest::run(&cli.device),
        Command::Train(a) => train::run_train(&cli.device, &a),
        Command::Eval(a) => train::run_eval(&cli.device, &a),
    }
}
