//! `longctx bench`: suites and sweeps of validated, timed kernel runs; a table for people,
//! JSON and CSV records for tools.

use std::path::PathBuf;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use indicatif::{ProgressBar, ProgressStyle};
use longctx::kernels::peak;
use longctx::measure::bench::Record;
use longctx::measure::suite::{self, Config};
use longctx::{Alibi, AttnSpec, Kernel};

use super::DeviceArgs;
use super::maskargs::{MaskArgs, PositionArgs, shape};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// Sizes from a time budget (--budget, 50 s): flash vs naive, dense and causal, on a
    /// ladder N = 256, 512, 1K, … that grows while the next rung fits; then causal+ALiBi,
    /// a causal window and BigBird at the largest N reached.
    Default,
    /// N = 1K…8K, dense and causal, flash vs naive.
    Full,
    /// Linear-cost evidence: window (512,0)+causal and BigBird at N = 8K…128K next to dense causal flash.
    Scaling,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
FLOPs: 4·B·D·(visible query-key pairs over heads), the FlashAttention convention (QKᵀ and PV,
one multiply and one add each; softmax, masking, bias not counted). Times: device timestamps
around the kernel's pass when the adapter has TIMESTAMP_QUERY (else host wall clock, submit to
idle); one warm-up; median, min, max of --reps. Every configuration is checked against the
f64 oracle before it is timed (whole output up to N·M = 1M, else 64 sampled rows). Traffic:
modelled from each kernel's loops and measured by its instrumented variant.

Examples:
  longctx bench                                   # the default suite
  longctx bench --n 1k,2k,4k,8k --causal --json out.json
  longctx bench --suite scaling")]
pub struct BenchArgs {
    /// A named suite; sweep flags below replace its sizes and masks.
    #[arg(long, value_enum, default_value_t = Suite::Default)]
    suite: Suite,
    /// The long suite (= --suite full).
    #[arg(long, conflicts_with = "suite")]
    full: bool,
    /// Seconds the default suite may take, from start to table (its sizes are chosen to fit).
    #[arg(long, value_parser = budget_seconds)]
    budget: Option<f64>,
    /// Sequence lengths N (= M), comma-separated; k = 1024 (e.g. 512,1k,2k).
    #[arg(long, value_delimiter = ',')]
    n: Option<Vec<String>>,
    /// Head dims, comma-separated.
    #[arg(long, value_delimiter = ',')]
    d: Option<Vec<usize>>,
    /// Query heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Key/value heads (default: = heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Kernels, comma-separated: flash, naive.
    #[arg(long, value_delimiter = ',')]
    kernels: Option<Vec<String>>,
    #[command(flatten)]
    mask: MaskArgs,
    #[command(flatten)]
    positions: PositionArgs,
    /// Add ALiBi.
    #[arg(long)]
    alibi: bool,
    /// Timed repeats per configuration (after one warm-up).
    #[arg(long, value_parser = super::positive)]
    reps: Option<usize>,
    /// Skip the instrumented run that measures traffic.
    #[arg(long)]
    no_traffic: bool,
    /// Write one JSON record per configuration (an array) to this path.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the records as CSV to this path.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Draw time against N (log–log, one curve per kernel and mask, fitted exponents in the
    /// legend) to this .svg or .png file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Also time flash with Q, K, V stored as f16 (needs SHADER_F16) next to each flash row.
    #[arg(long)]
    f16: bool,
    /// Next to each flash row, time the same rules written as mods (causal, a causal window,
    /// ALiBi → `--mod causal|window=L|alibi`): a "flash-mods" row, and the overhead in %.
    #[arg(long)]
    compare_mods: bool,
    /// Time the backward pass: flash forward, backward (dQ, dK, dV) and both, against the
    /// memory a materialised backward would need. Without sweep flags: N = 1K, 2K dense and
    /// causal, H = 4, D = 64.
    #[arg(long)]
    backward: bool,
    /// Instead of attention, time the matmul at these square sizes or MxKxN shapes (e.g.
    /// 512,1024,2048x128x384).
    #[arg(long, value_delimiter = ',')]
    matmul: Option<Vec<String>>,
    /// Cooperative matrices (tensor cores). With --matmul: `exact`: f32 ones where the
    /// adapter has them (else the vec4 kernel); `f16`: inputs rounded to f16, f32
    /// accumulation (an error where the adapter has none); `off`: never; `all`: each path
    /// the adapter can run, side by side. With attention: flash uses f32 ones wherever the
    /// adapter has them; `f16` and `all` add a flash-f16-tc row (f16 Q, K, V and weights on
    /// f16 matrices) beside each flash row, skipped with the reason where the adapter has none.
    #[arg(long, value_enum, default_value = "exact")]
    tensor_cores: TensorCoresArg,
    /// Learned sparse attention against dense causal flash in the same run: `moba`, `nsa`,
    /// `dsa` (the selection and the attention over its choice timed apart, sampled rows checked
    /// against the oracle; with --backward, their backward against flash's).
    /// Without --n: N = 4K, 8K, 16K; H = 4, D = 64.
    #[arg(long, value_delimiter = ',', value_name = "METHODS")]
    sparse: Option<Vec<String>>,
    /// With --sparse moba: MoBA's block=B,topk=K (default block=256,topk=8).
    #[arg(long, requires = "sparse")]
    moba: Option<String>,
    /// With --sparse nsa: NSA's cmp=L/D,slc=L2,top=N,win=W (default the paper's
    /// cmp=32/16,slc=64,top=16,win=512).
    #[arg(long, requires = "sparse")]
    nsa: Option<String>,
    /// With --sparse dsa: DSA's topk=K[,heads=HI,dim=DI] (default topk=2048 — the paper's —
    /// with an indexer of 4 heads of dim 16 on random inputs).
    #[arg(long, requires = "sparse")]
    dsa: Option<String>,
    /// With --sparse moba,nsa: one decoding step per context in --n (a new token choosing
    /// its blocks from the cache's block means or compressed keys) against dense decoding at
    /// the same context.
    #[arg(long, requires = "sparse", conflicts_with = "backward")]
    decode: bool,
}

/// `--tensor-cores`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TensorCoresArg {
    /// f32 cooperative matrices where offered, else the vec4 kernel.
    Exact,
    /// f16 inputs, f32 accumulation; required.
    F16,
    /// The vec4 kernel only.
    Off,
    /// Every path the adapter can run.
    All,
}

/// `--budget`: 1 s to a day.
fn budget_seconds(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if (1.0..=86_400.0).contains(&v) => Ok(v),
        Ok(v) => Err(format!("{v} s: must be 1 to 86400 seconds")),
        Err(e) => Err(format!("expected seconds: {e}")),
    }
}

/// A size flag's value (`longctx::measure::bench::parse_size`: `512`, `4k`, `16M`).
pub fn parse_size(s: &str) -> anyhow::Result<usize> {
    Ok(longctx::measure::bench::parse_size(s)?)
}

fn kernel(name: &str) -> anyhow::Result<Kernel> {
    match name.trim() {
        "flash" => Ok(Kernel::Flash),
        "naive" => Ok(Kernel::Naive),
        other => bail!("unknown kernel `{other}`; choose from flash, naive"),
    }
}

impl BenchArgs {
    fn suite(&self) -> Suite {
        if self.full { Suite::Full } else { self.suite }
    }

    /// Whether sweep flags replace the suite's sizes and masks.
    fn sweep(&self) -> bool {
        self.n.is_some()
            || self.d.is_some()
            || self.heads.is_some()
            || self.kernels.is_some()
            || self.mask.causal
            || self.mask.window.is_some()
            || self.mask.pattern.is_some()
            || self.positions.rope.is_some()
            || self.positions.sinusoidal.is_some()
    }
}

/// The configurations to run: a fixed suite, or a sweep when any sweep flag is given.
fn configs(a: &BenchArgs) -> anyhow::Result<Vec<Config>> {
    let alibi = if a.alibi { Alibi::Standard } else { Alibi::Off };
    let mut out = Vec::new();
    if a.sweep() {
        let ns = match &a.n {
            Some(v) => v.iter().map(|s| parse_size(s)).collect::<anyhow::Result<Vec<_>>>()?,
            None => vec![512, 1024, 2048],
        };
        let kernels = match &a.kernels {
            Some(v) => v.iter().map(|s| kernel(s)).collect::<anyhow::Result<Vec<_>>>()?,
            None => vec![Kernel::Flash, Kernel::Naive],
        };
        let heads = a.heads.unwrap_or(4);
        for &d in a.d.as_deref().unwrap_or(&[64]) {
            for &kern in &kernels {
                for &n in &ns {
                    let spec = a.mask.apply(
                        AttnSpec::new(shape(heads, a.kv_heads.unwrap_or(heads), n, n, d))
                            .alibi(alibi.clone())
                            .positions(a.positions.get()?),
                    )?;
                    out.push(Config { kernel: kern, spec, reps: a.reps.unwrap_or(5) });
                }
            }
        }
        return Ok(out);
    }
    let fixed = match a.suite() {
        Suite::Default => unreachable!("the default suite is sized by its budget (suite::default_suite)"),
        Suite::Full => suite::Fixed::Full,
        Suite::Scaling => suite::Fixed::Scaling,
    };
    Ok(suite::fixed(fixed, a.reps)?)
}

pub fn run(dev: &DeviceArgs, a: &BenchArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let outputs: Vec<&std::path::Path> =
        a.json.as_deref().into_iter().chain(a.csv.as_deref()).chain(a.plot.as_deref()).collect();
    let read = a.mask.input_paths();
    longctx::io::check_outputs(&outputs, &read.iter().map(|p| p.as_path()).collect::<Vec<_>>())?;
    if let Some(path) = &a.plot {
        super::plot::check_path(path)?;
        if a.matmul.is_some() {
            bail!("--plot draws the attention suites, sweeps and --backward; not --matmul");
        }
    }
    // --compare-mods times flash against itself with the rules as mods: say when it cannot
    if a.compare_mods {
        let flash = a.kernels.as_ref().is_none_or(|k| k.iter().any(|k| k.trim() == "flash"));
        if a.backward || a.matmul.is_some() || !flash {
            bail!(
                "--compare-mods compares flash's forward with its rules as mods: it needs flash among --kernels, and no --backward or --matmul"
            );
        }
    }
    let gpu = dev.gpu()?;
    if let Some(sizes) = &a.matmul {
        let shapes = sizes
            .iter()
            .map(|s| longctx::measure::matmul::parse_shape(s))
            .collect::<longctx::Result<Vec<_>>>()?;
        return matmul_bench(&gpu, &shapes, a.reps.unwrap_or(5), a.tensor_cores);
    }
    if a.tensor_cores == TensorCoresArg::Off {
        bail!(
            "--tensor-cores off applies to --matmul; flash uses cooperative matrices only where the adapter offers f32 ones (`longctx info` lists them)"
        );
    }
    if let Some(methods) = &a.sparse {
        return sparse_bench(&gpu, a, methods, started);
    }
    if a.backward {
        return backward_bench(&gpu, a, started);
    }
    let budgeted = a.suite() == Suite::Default && !a.sweep();
    if a.budget.is_some() && !budgeted {
        let suite = clap::ValueEnum::to_possible_value(&a.suite()).map(|v| v.get_name().to_string());
        bail!(
            "--budget sizes the default suite; it does not apply to sweeps, --full or --suite {}",
            suite.unwrap_or_default()
        );
    }
    let peak = peak::best_reading(&gpu)?;
    let info = gpu.info();
    println!(
        "adapter {} ({:?}, {}); peak probe {:.1} GFLOP/s FMA, {:.1} GB/s copy",
        info.name, info.backend, info.driver, peak.fma_gflops, peak.copy_gbps
    );
    let bar = ProgressBar::new(0);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}").expect("template"));
    let twins = suite::Twins {
        traffic: !a.no_traffic,
        f16: a.f16,
        tensor_cores_f16: matches!(a.tensor_cores, TensorCoresArg::F16 | TensorCoresArg::All),
        mods: a.compare_mods,
    };
    let progress = |p: suite::Progress| match p {
        suite::Progress::Planned(n) => bar.inc_length(n),
        suite::Progress::Starting(what) => bar.set_message(what),
        suite::Progress::Done => bar.inc(1),
    };
    let (records, notes) = if budgeted {
        let budget = a.budget.unwrap_or(suite::DEFAULT_BUDGET_S);
        suite::default_suite(&gpu, twins, &peak, a.reps.unwrap_or(3), budget, started, &progress)?
    } else {
        (suite::run(&gpu, twins, &peak, &configs(a)?, &progress), Vec::new())
    };
    bar.finish_and_clear();
    println!("{}", table(&records));
    for r in records.iter().filter(|r| r.skipped.is_some()) {
        println!("skipped {} {} N={}: {}", r.kernel, r.mask, r.n, r.skipped.as_deref().unwrap_or_default());
    }
    for line in suite::exponents(&records).into_iter().chain(notes).chain(suite::mods_overheads(&records)) {
        println!("{line}");
    }
    write_json(a.json.as_deref(), &records)?;
    if let Some(path) = &a.csv {
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in &records {
            w.serialize(r)?;
        }
        let bytes = w.into_inner().map_err(|e| anyhow::anyhow!("CSV: {e}"))?;
        longctx::io::write_atomic(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.plot {
        super::plot::log_log(path, &longctx::measure::bench::time_chart(&records))?;
        println!("plot: {}", path.display());
    }
    finish(records.len(), !records.is_empty() && records.iter().all(|r| r.skipped.is_some()), started)
}

/// `--json`: the records, written all or nothing.
fn write_json<T: serde::Serialize>(path: Option<&std::path::Path>, records: &[T]) -> anyhow::Result<()> {
    if let Some(path) = path {
        longctx::io::write_atomic(path, serde_json::to_string_pretty(records)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A run's last line; a run whose every configuration was skipped measured nothing: an error.
fn finish(count: usize, all_skipped: bool, started: std::time::Instant) -> anyhow::Result<()> {
    println!("{count} configurations in {:.1} s", started.elapsed().as_secs_f64());
    if all_skipped {
        bail!("every configuration was skipped (reasons above): nothing was measured");
    }
    Ok(())
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1 << 20) as f64)
}

fn table(records: &[Record]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "kernel",
        "mask",
        "N",
        "D",
        "H/Hkv",
        "ms median [min–max]",
        "GFLOP/s",
        "% FMA peak",
        "device MiB",
        "traffic model MiB",
        "measured MiB",
        "GB/s",
        "rel err",
    ]);
    for r in records {
        let mut row = vec![
            r.kernel.clone(),
            r.mask.clone(),
            r.n.to_string(),
            r.d.to_string(),
            format!("{}/{}", r.heads, r.kv_heads),
        ];
        match (&r.skipped, r.ms_median) {
            (Some(_), _) => row.extend(std::iter::repeat_n("skipped".to_string(), 8)),
            (None, Some(ms)) => {
                row.push(format!("{ms:.2} [{:.2}–{:.2}]", r.ms_min.unwrap_or(ms), r.ms_max.unwrap_or(ms)));
                row.push(format!("{:.2}", r.gflops.unwrap_or(0.0)));
                row.push(format!("{:.1}", r.pct_peak_fma.unwrap_or(0.0)));
                row.push(mib(r.device_bytes));
                row.push(mib(r.traffic_model_bytes));
                row.push(r.traffic_measured_bytes.map_or("—".into(), mib));
                row.push(format!("{:.2}", r.gbps.unwrap_or(0.0)));
                row.push(format!("{:.1e} ({})", r.rel_err.unwrap_or(f64::NAN), r.reference));
            }
            (None, None) => row.push("not run".into()),
        }
        t.add_row(row);
    }
    t
}

/// `--backward`: flash forward, backward and both, per configuration.
fn backward_bench(gpu: &longctx::Gpu, a: &BenchArgs, started: std::time::Instant) -> anyhow::Result<()> {
    use longctx::measure::bench::{BACKWARD_FLOP_FACTOR, run_backward};
    let specs: Vec<(AttnSpec, usize)> = if a.n.is_some() || a.mask.causal || a.mask.window.is_some() {
        configs(a)?.into_iter().filter(|c| c.kernel == Kernel::Flash).map(|c| (c.spec, c.reps)).collect()
    } else {
        suite::backward_default(a.reps)
    };
    let info = gpu.info();
    println!("adapter {} ({:?}, {})", info.name, info.backend, info.driver);
    let bar = ProgressBar::new(specs.len() as u64);
    bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}").expect("template"));
    let mut records = Vec::new();
    for (spec, reps) in &specs {
        bar.set_message(format!("backward {} N={}", spec.describe(), spec.shape.n));
        records.push(run_backward(gpu, spec, *reps, &spec.describe()));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "mask",
        "N",
        "D",
        "H/Hkv",
        "fwd ms",
        "bwd ms",
        "fwd+bwd ms",
        "bwd/fwd",
        "GFLOP/s fwd / bwd / both",
        "device MiB",
        "naive bwd ms",
        "naive bwd MiB",
        "bwd traffic model MiB",
        "rel err dQ,dK,dV",
    ]);
    for r in &records {
        let mut row =
            vec![r.mask.clone(), r.n.to_string(), r.d.to_string(), format!("{}/{}", r.heads, r.kv_heads)];
        match (&r.skipped, r.fwd_ms, r.bwd_ms, r.fwd_bwd_ms) {
            (None, Some(f), Some(b), Some(fb)) => {
                row.extend([
                    format!("{f:.1}"),
                    format!("{b:.1}"),
                    format!("{fb:.1}"),
                    format!("{:.2}×", b / f),
                    format!(
                        "{:.2} / {:.2} / {:.2}",
                        r.fwd_gflops.unwrap_or(0.0),
                        r.bwd_gflops.unwrap_or(0.0),
                        r.fwd_bwd_gflops.unwrap_or(0.0)
                    ),
                    mib(r.device_bytes),
                    match (r.naive_bwd_ms, &r.naive_skipped) {
                        (Some(ms), _) => format!("{ms:.1} ({:.2}× tiled)", ms / b),
                        (None, Some(_)) => "refused (below)".into(),
                        _ => "—".into(),
                    },
                    r.naive_device_bytes.map_or("—".into(), |n| {
                        format!("{} ({:.1}×)", mib(n), n as f64 / r.device_bytes as f64)
                    }),
                    mib(r.bwd_traffic_model_bytes),
                    r.rel_err.map_or("not checked (size)".into(), |e| format!("{e:.1e}")),
                ]);
            }
            _ => row.push(format!("skipped: {}", r.skipped.as_deref().unwrap_or("not run"))),
        }
        t.add_row(row);
    }
    println!("{t}");
    for r in records.iter().filter(|r| r.naive_skipped.is_some()) {
        println!("naive backward at N={}: {}", r.n, r.naive_skipped.as_deref().unwrap_or_default());
    }
    println!(
        "FLOPs: forward 4·B·D·(visible pairs); backward {BACKWARD_FLOP_FACTOR}× forward (FlashAttention's convention). \
         Times: median of the repeats, {} timer. Device MiB: Q, K, V, O, LSE, dO, dQ, dK, dV and the kernels' scratch, \
         as allocated; the naive backward materialises P, then dS in place, [heads, N, M] per chunk of kv-head groups.",
        records.first().map_or("", |r| r.timer.as_str())
    );
    write_json(a.json.as_deref(), &records)?;
    if let Some(path) = &a.plot {
        super::plot::log_log(path, &longctx::measure::bench::backward_chart(&records))?;
        println!("plot: {}", path.display());
    }
    println!("{} configurations in {:.1} s", records.len(), started.elapsed().as_secs_f64());
    Ok(())
}

/// `--sparse moba,nsa --decode`: one decoding step per context and method against dense
/// decoding.
fn sparse_decode_bench(
    gpu: &longctx::Gpu,
    a: &BenchArgs,
    methods: &[String],
    (moba, nsa): (&longctx::contract::selection::Moba, &longctx::contract::nsa::Nsa),
    contexts: &[usize],
    started: std::time::Instant,
) -> anyhow::Result<()> {
    use longctx::measure::sparse::{run_moba_decode, run_nsa_decode};
    let heads = a.heads.unwrap_or(4);
    let kv_heads = a.kv_heads.unwrap_or(heads);
    let reps = a.reps.unwrap_or(5);
    let mut records = Vec::new();
    for &d in a.d.as_deref().unwrap_or(&[64]) {
        for &n in contexts {
            for m in methods {
                records.push(match m.trim() {
                    "nsa" => run_nsa_decode(gpu, (heads, kv_heads, d), n, nsa, reps),
                    _ => run_moba_decode(gpu, (heads, kv_heads, d), n, moba, reps),
                });
            }
        }
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "method",
        "context",
        "D",
        "H/Hkv",
        "sparse step ms",
        "dense step ms",
        "speedup",
        "keys read",
        "rel err",
        "stages ms",
    ]);
    for r in &records {
        let mut row = vec![
            format!("{}({})", r.method, r.config),
            r.context.to_string(),
            r.d.to_string(),
            format!("{}/{}", r.heads, r.kv_heads),
        ];
        match (&r.skipped, r.sparse_ms, r.dense_ms) {
            (None, Some(sparse), Some(dense)) => row.extend([
                format!("{sparse:.2}"),
                format!("{dense:.2}"),
                format!("{:.2}×", r.speedup().unwrap_or(0.0)),
                format!("{:.1} %", 100.0 * r.keys_fraction),
                r.rel_err.map_or("—".into(), |e| format!("{e:.1e}")),
                r.stage_ms.iter().map(|(name, ms)| format!("{name} {ms:.2}")).collect::<Vec<_>>().join(", "),
            ]),
            _ => row.push(format!("skipped: {}", r.skipped.as_deref().unwrap_or("not run"))),
        }
        t.add_row(row);
    }
    println!("{t}");
    println!(
        "Times: median of {reps} steps after a warm-up, wall clock from submission to completion, nothing read back. \
         MoBA step = the new token's choice over the block means the cache keeps (one per completed block, not \
         timed), then one workgroup per chosen block and the merge. NSA step = the compressed branch over the \
         compressed keys the cache keeps (one per window of l keys, not timed), the choice, one workgroup per \
         chosen block, the window branch and the gated mix (stages also timed alone). Dense step = split-K \
         decoding over the whole cache (the new token's K and V appended)."
    );
    write_json(a.json.as_deref(), &records)?;
    finish(records.len(), records.iter().all(|r| r.skipped.is_some()), started)
}

/// `--sparse`: each method against dense causal flash at each N, one table row each.
fn sparse_bench(
    gpu: &longctx::Gpu,
    a: &BenchArgs,
    methods: &[String],
    started: std::time::Instant,
) -> anyhow::Result<()> {
    use longctx::measure::sparse::{run_dsa, run_moba, run_nsa};
    for m in methods {
        match m.trim() {
            "moba" => {}
            "nsa" => {}
            "dsa" if a.decode => {
                bail!("--sparse dsa with --decode: DSA's decoding step is not built yet (issue #35)")
            }
            "dsa" => {}
            other => bail!("unknown sparse method `{other}`; choose from moba, nsa, dsa"),
        }
    }
    if a.mask.causal || a.mask.window.is_some() || a.mask.pattern.is_some() || a.kernels.is_some() || a.alibi
    {
        bail!(
            "--sparse compares against dense causal flash: it takes --n, --d, --heads, --kv-heads, --reps, --moba, --nsa, --dsa and --backward"
        );
    }
    if a.csv.is_some() || a.plot.is_some() {
        bail!("--sparse writes --json; not --csv or --plot");
    }
    let moba = longctx::contract::selection::Moba::parse(a.moba.as_deref().unwrap_or("block=256,topk=8"))?;
    let nsa =
        longctx::contract::nsa::Nsa::parse(a.nsa.as_deref().unwrap_or("cmp=32/16,slc=64,top=16,win=512"))?;
    nsa.check()?;
    let dsa = longctx::contract::dsa::Dsa::parse(a.dsa.as_deref().unwrap_or("topk=2048"))?;
    let ns = match &a.n {
        Some(v) => v.iter().map(|s| parse_size(s)).collect::<anyhow::Result<Vec<_>>>()?,
        None => vec![4096, 8192, 16384],
    };
    let heads = a.heads.unwrap_or(4);
    let info = gpu.info();
    println!("adapter {} ({:?}, {})", info.name, info.backend, info.driver);
    if a.decode {
        return sparse_decode_bench(gpu, a, methods, (&moba, &nsa), &ns, started);
    }
    let mut records = Vec::new();
    for &d in a.d.as_deref().unwrap_or(&[64]) {
        for &n in &ns {
            let spec = AttnSpec::new(shape(heads, a.kv_heads.unwrap_or(heads), n, n, d));
            for m in methods {
                records.push(match m.trim() {
                    "nsa" => run_nsa(gpu, &spec, &nsa, a.reps.unwrap_or(3), a.backward),
                    "dsa" => run_dsa(gpu, &spec, &dsa, a.reps.unwrap_or(3), a.backward),
                    _ => run_moba(gpu, &spec, &moba, a.reps.unwrap_or(3), a.backward),
                });
            }
        }
    }
    let mut header = vec![
        "method",
        "N",
        "D",
        "H/Hkv",
        "select ms",
        "attend ms",
        "dense causal ms",
        "speedup",
        "pairs / causal's",
        "GFLOP select / attend",
        "rel err (64 rows)",
    ];
    if a.backward {
        header.extend(["backward ms", "dense backward ms", "backward speedup", "dQ rel err (64 rows)"]);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    for r in &records {
        let mut row = vec![
            format!("{}({})", r.method, r.config),
            r.n.to_string(),
            r.d.to_string(),
            format!("{}/{}", r.heads, r.kv_heads),
        ];
        match (&r.skipped, r.select_ms, r.attend_ms, r.dense_ms) {
            (None, Some(sel), Some(att), Some(dense)) => row.extend([
                format!("{sel:.1}"),
                format!("{att:.1}"),
                format!("{dense:.1}"),
                format!("{:.2}×", r.speedup().unwrap_or(0.0)),
                format!("{:.3}", r.sparse_pairs as f64 / r.dense_pairs.max(1) as f64),
                format!("{:.2} / {:.2}", r.select_flops / 1e9, r.attend_flops / 1e9),
                r.rel_err.map_or("—".into(), |e| format!("{e:.1e}")),
            ]),
            _ => row.push(format!("skipped: {}", r.skipped.as_deref().unwrap_or("not run"))),
        }
        if let (true, None, Some(sparse), Some(dense)) =
            (a.backward, &r.skipped, r.backward_ms, r.dense_backward_ms)
        {
            row.extend([
                format!("{sparse:.1}"),
                format!("{dense:.1}"),
                format!("{:.2}×", r.backward_speedup().unwrap_or(0.0)),
                r.grad_err.map_or("—".into(), |e| format!("{e:.1e}")),
            ]);
        }
        t.add_row(row);
    }
    println!("{t}");
    for r in records.iter().filter(|r| !r.stage_ms.is_empty()) {
        let stages: Vec<String> = r.stage_ms.iter().map(|(name, ms)| format!("{name} {ms:.1}")).collect();
        println!("{}({}) N {}: stages ms: {}", r.method, r.config, r.n, stages.join(", "));
    }
    println!(
        "Times: median of {} runs after a warm-up, wall clock from submission to completion; MoBA: select = block \
         means, gate scores, top-k and the lists read back; attend = grouping the lists on the host, the block-list \
         kernel and the merge. NSA: select = the compression and the choice (block scores from the compressed \
         branch's probabilities, top-n, the lists read back); attend = the compressed, selected and window \
         branches and the gated mix. DSA: select = the lightning indexer's scores and each row's top-k \
         (radix select, the lists compacted in key order); attend = the attention over the listed keys. \
         speedup = dense / (select + attend).{}",
        a.reps.unwrap_or(3),
        if a.backward {
            " backward = MoBA: the block-list backward on the forward's lists (Δ, dQ's shares and their sum, dK and \
             dV); NSA: dO's gated shares, each branch's backward (flash's over the compressed keys and the window, \
             the block-list one over the chosen blocks), the compression's backward to dK, dV and φ, the gates' \
             gradient; DSA: the lists transposed on the host and uploaded, dQ by rows, dK and dV by keys over \
             them; dense backward = flash's backward of causal attention; backward speedup = dense backward / \
             backward."
        } else {
            ""
        }
    );
    write_json(a.json.as_deref(), &records)?;
    finish(records.len(), records.iter().all(|r| r.skipped.is_some()), started)
}

/// Matmuls ([`longctx::measure::matmul::run_matmul`]: validated rows against the f64 oracle,
/// then timed), one table row each.
fn matmul_bench(
    gpu: &longctx::Gpu,
    shapes: &[[usize; 3]],
    reps: usize,
    tc: TensorCoresArg,
) -> anyhow::Result<()> {
    use longctx::kernels::matmul::{MatmulOptions, TensorCores};
    let peak = peak::best_reading(gpu)?;
    let with = |tensor_cores| vec![MatmulOptions { tensor_cores, ..MatmulOptions::default() }];
    let paths: Vec<MatmulOptions> = match tc {
        TensorCoresArg::Exact => with(TensorCores::Exact),
        TensorCoresArg::F16 => with(TensorCores::F16),
        TensorCoresArg::Off => with(TensorCores::Off),
        TensorCoresArg::All => longctx::measure::matmul::available_paths(gpu)?,
    };
    if gpu.cooperative_matrices().is_empty() {
        println!("cooperative matrices: none on this adapter; the vec4 kernels run");
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "M×K×N",
        "path",
        "ms median [min–max]",
        "GFLOP/s (2·M·K·N)",
        "% FMA peak",
        "rel err (16 rows)",
    ]);
    for (&shape, &path) in shapes.iter().flat_map(|s| paths.iter().map(move |p| (s, p))) {
        let r = longctx::measure::matmul::run_matmul(gpu, shape, path, reps, peak.fma_gflops)?;
        let [m, k, n] = shape;
        t.add_row([
            if m == k && k == n { n.to_string() } else { format!("{m}×{k}×{n}") },
            r.path,
            format!("{:.2} [{:.2}–{:.2}]", r.ms_median, r.ms_min, r.ms_max),
            format!("{:.2}", r.gflops),
            format!("{:.1}", r.pct_peak_fma),
            format!("{:.1e}", r.rel_err),
        ]);
    }
    println!("{t}");
    Ok(())
}
