//! `longctx decode`: tokens per second of incremental decoding for MHA, GQA and MQA.

use std::path::PathBuf;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use longctx::Alibi;
use longctx::kernels::attention::decode::DecoderConfig;
use longctx::kernels::peak;
use longctx::measure::decode::DecodeBench;

use super::DeviceArgs;
use super::bench::parse_size;
use super::maskargs::{ModArgs, PositionArgs, shape};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Each variant prefills a cache of --context positions, then decodes --steps single-token steps
(one query per head attending to the whole cache; the split-K kernel merges splits by
log-sum-exp). The first step is checked against the f64 oracle. Bytes per step: K and V of the
visited cache once per kv head, Q, split partials, O and LSE — MQA reads 1/H of MHA's cache.

Mods (--mod, --score-mod, --mask-mod) see each step as the last rows of the full problem:
q_idx = 0..T (the step's tokens), kv_idx = the key's position, N_Q = T, N_KV = positions so
far; a documents=IDS.npy mod needs one id per position (context + steps + 1).

Examples:
  longctx decode --context 32k --steps 32 --heads 32 --kv-heads 32,8,1 --d 128
  longctx decode --context 4k --mod sinks=4,window=256 --mod softcap=30")]
pub struct DecodeArgs {
    /// Cached positions before decoding starts (k = 1024).
    #[arg(long, default_value = "4k")]
    context: String,
    /// Timed decoding steps (one token each).
    #[arg(long, default_value_t = 32, value_parser = super::positive)]
    steps: usize,
    /// Query heads.
    #[arg(long, default_value_t = 32)]
    heads: usize,
    /// Key/value heads per variant, comma-separated (H = MHA, 1 = MQA, between = GQA).
    #[arg(long, value_delimiter = ',', default_values_t = [32usize, 8, 1])]
    kv_heads: Vec<usize>,
    /// Head dim.
    #[arg(long, default_value_t = 128)]
    d: usize,
    /// ALiBi biases.
    #[arg(long)]
    alibi: bool,
    /// Local window W (keys p−W..=p); the cache becomes a ring of W + 1 slots.
    #[arg(long)]
    window: Option<usize>,
    /// Cache slots per split (default: chosen from the cache length and adapter).
    #[arg(long)]
    chunk: Option<usize>,
    /// Write one JSON record per variant.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The serving comparison instead: the contiguous cache against the paged cache in each
    /// of --kv's formats at --context, and --batch's sequences in one step against a step
    /// each (H = --heads, Hkv = the first --kv-heads, D = --d).
    #[arg(long)]
    paged: bool,
    /// KV formats of the paged cache, comma-separated (f32, int8, int4).
    #[arg(long, value_delimiter = ',', default_value = "f32,int8,int4")]
    kv: Vec<String>,
    /// Slots per page of the paged cache.
    #[arg(long, default_value_t = 64, value_parser = super::positive)]
    page: usize,
    /// Lengths of the sequences decoded together, comma-separated (k = 1024; empty: none).
    #[arg(long, value_delimiter = ',', default_value = "1k,2k,2k,4k,4k,8k,8k,32k")]
    batch: Vec<String>,
    /// With --paged: also start prompts of these lengths three ways — packed into one flash
    /// call, padded to the longest into one batched call, a call each — and time one
    /// layer's attention of each (comma-separated, k = 1024; e.g. 100,200,300,500,700,1k,1k,2k).
    #[arg(long, value_delimiter = ',')]
    prefill: Vec<String>,
    #[command(flatten)]
    mods: ModArgs,
    #[command(flatten)]
    positions: PositionArgs,
}

pub fn run(dev: &DeviceArgs, a: &DecodeArgs) -> anyhow::Result<()> {
    let read = a.mods.input_paths();
    longctx::io::check_outputs(
        &a.json.as_deref().into_iter().collect::<Vec<_>>(),
        &read.iter().map(|p| p.as_path()).collect::<Vec<_>>(),
    )?;
    let context = parse_size(&a.context)?;
    if a.paged {
        return paged(dev, a, context);
    }
    let gpu = dev.gpu()?;
    let peak = peak::best_reading(&gpu)?;
    let info = gpu.info();
    println!("adapter {} ({:?}); copy probe {:.1} GB/s", info.name, info.backend, peak.copy_gbps);
    let mut records = Vec::new();
    for &hkv in &a.kv_heads {
        let capacity = context.checked_add(a.steps).and_then(|c| c.checked_add(1)).with_context(|| {
            format!("--context {context} plus --steps {} does not fit in 64 bits", a.steps)
        })?;
        let mut cfg = DecoderConfig::new(a.heads, hkv, a.d, capacity);
        if let Some(w) = a.window {
            cfg.window = Some(w);
            cfg.ring = true;
            cfg.capacity = w
                .checked_add(1)
                .with_context(|| format!("--window {w} does not fit a ring of W + 1 slots"))?;
        }
        cfg.alibi = if a.alibi { Alibi::Standard } else { Alibi::Off };
        cfg.chunk = a.chunk.unwrap_or(0);
        // positions: the prompt, the checked step and the timed ones (one document id each)
        cfg.mods = a.mods.mods(&shape(a.heads, hkv, 1, capacity, a.d))?;
        cfg.positions = a.positions.get()?;
        let bench = DecodeBench { config: cfg, context, steps: a.steps };
        records.push(bench.run(&gpu, peak.copy_gbps).with_context(|| format!("kv heads {hkv}"))?);
    }
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "H/Hkv",
        "context",
        "splits",
        "ms/step median [min–max]",
        "tokens/s",
        "KV cache MiB",
        "bytes read/step MiB",
        "GB/s",
        "% copy peak",
        "kernel",
        "rel err",
    ]);
    let mib = |b: u64| format!("{:.1}", b as f64 / (1 << 20) as f64);
    for r in &records {
        table.add_row([
            format!("{}/{}", r.heads, r.kv_heads),
            r.context.to_string(),
            r.splits.to_string(),
            format!("{:.2} [{:.2}–{:.2}]", r.ms_per_step_median, r.ms_per_step_min, r.ms_per_step_max),
            format!("{:.1}", r.tokens_per_s),
            mib(r.kv_cache_bytes),
            mib(r.bytes_read_per_step),
            format!("{:.2}", r.gbps),
            format!("{:.1}", r.pct_peak_copy),
            r.kernel.clone(),
            if r.rel_err_first_step.is_nan() {
                "—".into()
            } else {
                format!("{:.1e}", r.rel_err_first_step)
            },
        ]);
    }
    if let Some(m) = records.first().and_then(|r| r.mods.as_ref()) {
        // the library names a named mod `named mod …`; here it was a --mod flag
        println!("mods: {}", m.replace("named mod ", "--mod "));
    }
    if let Some(p) = records.first().and_then(|r| r.positions.as_ref()) {
        println!("positions: {p}");
    }
    println!("{table}");
    if let (Some(first), Some(last)) = (records.first(), records.last())
        && records.len() > 1
    {
        println!(
            "Hkv {} vs {}: bytes read per step ×{:.3}, tokens/s ×{:.2}",
            last.kv_heads,
            first.kv_heads,
            last.bytes_read_per_step as f64 / first.bytes_read_per_step as f64,
            last.tokens_per_s / first.tokens_per_s
        );
    }
    if let Some(path) = &a.json {
        longctx::io::write_atomic(path, serde_json::to_string_pretty(&records)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `--paged`: the serving comparison (measure/paged.rs), one run.
fn paged(dev: &DeviceArgs, a: &DecodeArgs, context: usize) -> anyhow::Result<()> {
    use longctx::contract::paged::KvFormat;
    use longctx::measure::paged::PagedBench;
    if a.window.is_some() || a.alibi || a.chunk.is_some() || a.mods.any() || a.positions.get()?.is_some() {
        anyhow::bail!(
            "--paged measures plain causal steps: leave out --window, --alibi, --chunk, mods and positions"
        );
    }
    let formats = a.kv.iter().map(|f| KvFormat::parse(f)).collect::<Result<Vec<_>, _>>()?;
    let batch =
        a.batch.iter().filter(|s| !s.is_empty()).map(|s| parse_size(s)).collect::<Result<Vec<_>, _>>()?;
    let prefill =
        a.prefill.iter().filter(|s| !s.is_empty()).map(|s| parse_size(s)).collect::<Result<Vec<_>, _>>()?;
    let kv_heads = *a.kv_heads.first().context("--kv-heads is empty")?;
    let bench = PagedBench {
        heads: a.heads,
        kv_heads,
        head_dim: a.d,
        context,
        page: a.page,
        steps: a.steps,
        formats,
        batch,
    };
    longctx::io::check_outputs(&a.json.as_deref().into_iter().collect::<Vec<_>>(), &[])?;
    let gpu = dev.gpu()?;
    let info = gpu.info();
    println!(
        "adapter {} ({:?}); H {} / Hkv {kv_heads}, D {}, pages of {}",
        info.name, info.backend, a.heads, a.d, a.page
    );
    let records = bench.run(&gpu)?;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "cache",
        "seqs",
        "positions",
        "splits",
        "ms/step",
        "tokens/s",
        "× first",
        "bytes/token",
        "rel err (cache)",
        "rel err (given K, V)",
    ]);
    let base = records.first().map_or(1.0, |r| r.tokens_per_s);
    let err = |e: f64| if e.is_nan() { "—".to_string() } else { format!("{e:.1e}") };
    for r in &records {
        table.add_row([
            r.what.clone(),
            r.seqs.to_string(),
            r.context.to_string(),
            r.splits.to_string(),
            format!("{:.2}", r.ms_per_step),
            format!("{:.1}", r.tokens_per_s),
            format!("{:.2}", r.tokens_per_s / base),
            r.bytes_per_token.to_string(),
            err(r.rel_err_kernel),
            err(r.rel_err_given),
        ]);
    }
    println!("{table}");
    let find =
        |w: &str| records.iter().find(|r| r.what.starts_with(w)).map(|r| (r.tokens_per_s, r.what.clone()));
    if let Some((paged, what)) = find("paged f32") {
        // the contiguous cache with the kernel the paged one ran
        let kernel = what.trim_start_matches("paged f32 ");
        if let Some((flat, _)) = find(&format!("contiguous {kernel}")) {
            println!("paged f32 / contiguous, both {kernel}: {:.2}×", paged / flat);
        }
        for f in ["int8", "int4"] {
            if let Some((q, _)) = find(&format!("paged {f}")) {
                println!("paged {f} / paged f32: {:.2}×", q / paged);
            }
        }
    }
    let n = bench.batch.len();
    if let (Some((one, _)), Some((each, _))) =
        (find(&format!("batch of {n}, one step")), find(&format!("batch of {n}, a step each")))
    {
        println!("batch of {n} in one step / a step each: {:.2}×", one / each);
    }
    let prefill = if prefill.is_empty() { Vec::new() } else { bench.prefill(&gpu, &prefill, a.steps)? };
    if !prefill.is_empty() {
        let mut table = Table::new();
        table.load_preset(UTF8_FULL_CONDENSED).set_header([
            "prefill",
            "calls",
            "rows",
            "pairs (work)",
            "ms",
            "prompt tokens/s",
            "× packed",
            "rel err (oracle)",
            "rel err (vs packed)",
        ]);
        let base = prefill[0].tokens_per_s;
        for r in &prefill {
            table.add_row([
                r.what.clone(),
                r.calls.to_string(),
                r.rows.to_string(),
                r.pairs.to_string(),
                format!("{:.1}", r.ms),
                format!("{:.0}", r.tokens_per_s),
                format!("{:.2}", r.tokens_per_s / base),
                err(r.rel_err),
                err(r.rel_err_packed),
            ]);
        }
        println!("{table}");
    }
    if let Some(path) = &a.json {
        let json = serde_json::json!({ "steps": records, "prefill": prefill });
        longctx::io::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
