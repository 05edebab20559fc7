//! `longctx tune`: measure candidate configurations on this adapter, keep and cache the fastest.

use std::path::PathBuf;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::ProgressBar;
use longctx::kernels::attention::decode;
use longctx::measure::tune::{self, Candidate};
use longctx::{FlashConfig, Tuned};

use super::DeviceArgs;
use super::bench::parse_size;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
flash: tile shapes (rows 32…256, keys 8/16/32, with and without subgroup shuffles) at the
given head dims, causal, N = --n, H = 4; each candidate is first checked against the f64
oracle on 16 rows, then timed (median of --reps). decode: split sizes for one step over
--context cached positions, H = 32 with 8 kv heads. Winners are cached per adapter, driver,
backend and longctx version; later commands use them (--untuned ignores them).

Example:
  longctx tune --quick")]
pub struct TuneArgs {
    /// Kernels to tune, comma-separated: flash, decode.
    #[arg(long, value_delimiter = ',', default_values_t = ["flash".to_string(), "decode".into()])]
    kernels: Vec<String>,
    /// Head dims for flash (1–256).
    #[arg(long, value_delimiter = ',', default_values_t = [64usize], value_parser = super::head_dim)]
    d: Vec<usize>,
    /// Tokens for flash timing (k = 1024).
    #[arg(long, default_value = "4k")]
    n: String,
    /// Cached positions for decode timing.
    #[arg(long, default_value = "16k")]
    context: String,
    /// Fewer candidates and repeats.
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value_t = 3, value_parser = super::positive)]
    reps: usize,
    /// Write every candidate as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub fn run(dev: &DeviceArgs, a: &TuneArgs) -> anyhow::Result<()> {
    longctx::io::check_outputs(&a.json.as_deref().into_iter().collect::<Vec<_>>(), &[])?;
    let gpu = dev.gpu()?;
    let (n, context) = (parse_size(&a.n)?, parse_size(&a.context)?);
    let reps = if a.quick { 1 } else { a.reps.max(1) };
    let mut record = tune::new_record(&gpu);
    let mut all: Vec<Candidate> = Vec::new();
    let bar = ProgressBar::new_spinner();
    for kernel in &a.kernels {
        match kernel.trim() {
            "flash" => {
                for &d in &a.d {
                    bar.set_message(format!("flash D={d} N={n}"));
                    let out = tune::tune_flash(&gpu, d, n, reps, a.quick)?;
                    all.extend(out.candidates);
                    let Some((best, best_ms)) = out.winner else {
                        bail!(
                            "flash D={d}: no candidate passed the oracle check; nothing cached (see the table)"
                        );
                    };
                    let preset_ms = out.preset_ms;
                    println!(
                        "flash D={d} N={n} causal: preset {preset_ms:.1} ms → tuned br={} bc={} p={} sg={} {best_ms:.1} ms ({:.2}× faster)",
                        best.br,
                        best.bc,
                        best.p,
                        best.sg,
                        preset_ms / best_ms
                    );
                    record.insert(FlashConfig::tuning_key(d), best.winner());
                }
            }
            "decode" => {
                bar.set_message(format!("decode context {context}"));
                let out = tune::tune_decode(&gpu, 128, 32, 8, context, reps.max(2))?;
                all.extend(out.candidates);
                let Some((best, best_ms)) = out.winner else {
                    bail!("decode: no candidate passed the oracle check; nothing cached (see the table)");
                };
                let preset_ms = out.preset_ms;
                println!(
                    "decode H=32/8 D=128 context {context}: preset {preset_ms:.1} ms/step → tuned chunk {best} {best_ms:.1} ms/step ({:.2}× faster)",
                    preset_ms / best_ms
                );
                record.insert(decode::tuning_key(128, 4), vec![best as u32]);
            }
            other => bail!("unknown kernel `{other}`; tune flash or decode"),
        }
    }
    bar.finish_and_clear();
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["kernel", "config", "ms", "rel err", "rejected"]);
    for c in &all {
        t.add_row([
            c.kernel.clone(),
            c.config.clone(),
            c.ms.map_or("—".into(), |m| format!("{m:.2}")),
            c.rel_err.map_or("—".into(), |e| format!("{e:.1e}")),
            c.rejected.clone().unwrap_or_default(),
        ]);
    }
    println!("{t}");
    record.store()?;
    if let Some(path) = Tuned::cache_path() {
        println!("winners cached in {}", path.display());
    }
    if let Some(path) = &a.json {
        longctx::io::write_atomic(path, serde_json::to_string_pretty(&all)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
