//! `longctx decode`: tokens per second of incremental decoding for MHA, GQA and MQA.

use std::path::PathBuf;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use longctx::Alibi;
use longctx::contract::inputs::hashed as fill;
use longctx::contract::reference::{attention_f64, rel_error};
use longctx::kernels::decode::{Decoder, DecoderConfig};
use longctx::kernels::peak;
use longctx::runtime::timing::time_host;
use serde::Serialize;

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
    #[command(flatten)]
    mods: ModArgs,
    #[command(flatten)]
    positions: PositionArgs,
}

#[derive(Serialize)]
struct DecodeRecord {
    heads: usize,
    kv_heads: usize,
    d: usize,
    context: usize,
    steps: usize,
    window: Option<usize>,
    alibi: bool,
    mods: Option<String>,
    positions: Option<String>,
    splits: usize,
    timer: String,
    ms_per_step_median: f64,
    ms_per_step_min: f64,
    ms_per_step_max: f64,
    tokens_per_s: f64,
    kv_cache_bytes: u64,
    kv_bytes_per_token: u64,
    bytes_read_per_step: u64,
    bytes_written_per_step: u64,
    gbps: f64,
    pct_peak_copy: f64,
    rel_err_first_step: f64,
    adapter: String,
    driver: String,
    git_commit: String,
    timestamp: String,
}

pub fn run(dev: &DeviceArgs, a: &DecodeArgs) -> anyhow::Result<()> {
    longctx::io::check_outputs(&a.json.as_deref().into_iter().collect::<Vec<_>>(), &[])?;
    let gpu = dev.gpu()?;
    let context = parse_size(&a.context)?;
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
        let mut dec = Decoder::new(&gpu, cfg.clone()).with_context(|| format!("kv heads {hkv}"))?;
        // the prompt's K and V on the host, plus the oracle's joined copies: checked first
        let floats = (hkv as u64).saturating_mul(context as u64).saturating_mul(a.d as u64);
        longctx::runtime::host::check_bytes(
            "the prompt's K and V and the oracle's copies",
            floats.saturating_mul(16),
        )?;
        let (k, v) = (fill(hkv * context * a.d, 1), fill(hkv * context * a.d, 2));
        dec.prefill(&gpu, 0, &k, &v)?;
        gpu.wait()?;
        let step_inputs = |step: usize| {
            let salt = step as u32;
            (fill(a.heads * a.d, 3 + salt), fill(hkv * a.d, 1000 + salt), fill(hkv * a.d, 2000 + salt))
        };
        // the first step (also the warm-up) is checked against the oracle
        let (q, kn, vn) = step_inputs(0);
        dec.step(&gpu, 0, &q, &kn, &vn)?;
        gpu.wait()?;
        let mut err = f64::NAN;
        // (a ring forgets what the oracle would need; a mod from a file has no Rust rule)
        if a.window.is_none() && cfg.mods.as_ref().is_none_or(|m| m.rule().is_some()) {
            let out = dec.output(&gpu)?;
            let join = |cache: &[f32], new: &[f32]| -> Vec<f32> {
                (0..hkv)
                    .flat_map(|h| {
                        [&cache[h * context * a.d..(h + 1) * context * a.d], &new[h * a.d..(h + 1) * a.d]]
                            .concat()
                    })
                    .collect()
            };
            let (o_ref, _) = attention_f64(&dec.equivalent_spec(0), &q, &join(&k, &kn), &join(&v, &vn))?;
            err = rel_error(&out.o, &o_ref);
        }
        let t = time_host(0, a.steps, |i| {
            let (q, kn, vn) = step_inputs(i + 1);
            dec.step(&gpu, 0, &q, &kn, &vn)?;
            gpu.wait()
        })?;
        let traffic = dec.step_traffic();
        let ms = t.median();
        let gbps = traffic.total() as f64 / (ms * 1e-3) / 1e9;
        records.push(DecodeRecord {
            heads: a.heads,
            kv_heads: hkv,
            d: a.d,
            context,
            steps: a.steps,
            window: a.window,
            alibi: a.alibi,
            mods: cfg.mods.as_ref().map(|m| m.name().to_string()),
            positions: cfg.positions.map(|p| p.name()),
            splits: dec.splits(),
            timer: "wall (submit to idle, per step)".into(),
            ms_per_step_median: ms,
            ms_per_step_min: t.min(),
            ms_per_step_max: t.max(),
            tokens_per_s: 1e3 / ms,
            kv_cache_bytes: dec.cache().bytes(),
            kv_bytes_per_token: cfg.bytes_per_token(),
            bytes_read_per_step: traffic.read,
            bytes_written_per_step: traffic.written,
            gbps,
            pct_peak_copy: 100.0 * gbps / peak.copy_gbps,
            rel_err_first_step: err,
            adapter: info.name.clone(),
            driver: longctx::runtime::driver_of(info),
            git_commit: env!("LONGCTX_GIT_COMMIT").into(),
            timestamp: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        });
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
            if r.rel_err_first_step.is_nan() {
                "—".into()
            } else {
                format!("{:.1e}", r.rel_err_first_step)
            },
        ]);
    }
    if let Some(m) = records.first().and_then(|r| r.mods.as_ref()) {
        println!("mods: {m}");
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
