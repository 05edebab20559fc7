//! Benchmark suites as a library service: the configurations of the fixed suites, the
//! default suite sized by a time budget (a ladder of N that grows while the next rung is
//! predicted to fit), each configuration validated against the f64 oracle then timed (with
//! its f16, tensor-core and named-mods twins when asked), and the lines a report prints
//! beside the table (fitted exponents, mods overheads). The CLI and the visualiser only
//! parse and render.

use web_time::Instant;

use crate::contract::mask::{BigBird, Mask};
use crate::contract::mods::Named;
use crate::contract::spec::{Alibi, AttnSpec};
use crate::contract::{AttnShape, Window};
use crate::error::Result;
use crate::kernels::Kernel;
use crate::kernels::peak::Peak;
use crate::measure::bench::{Record, fitted_exponent, run_config, run_config_f16, rung_fits};
use crate::runtime::Gpu;

/// One configuration of a suite: a kernel on a call, timed `reps` times.
#[derive(Clone, Debug)]
pub struct Config {
    /// The kernel.
    pub kernel: Kernel,
    /// The call.
    pub spec: AttnSpec,
    /// Timed repeats (after one warm-up).
    pub reps: usize,
}

/// What each configuration adds to its own record.
#[derive(Clone, Copy, Debug, Default)]
pub struct Twins {
    /// Model and measure the kernel's memory traffic (its instrumented variant).
    pub traffic: bool,
    /// Flash again with f16 inputs (f32 arithmetic).
    pub f16: bool,
    /// Flash again with f16 cooperative matrices (tensor cores), where offered.
    pub tensor_cores_f16: bool,
    /// Flash again with the call's causal, window and ALiBi rules as named mods.
    pub mods: bool,
}

/// The fixed suites.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixed {
    /// N = 1K…8K, dense and causal, flash vs naive.
    Full,
    /// Linear-cost evidence: window (512, 0) + causal and BigBird at N = 8K…128K next to dense
    /// causal flash.
    Scaling,
}

/// H = 4 (= kv heads), N = M, D = 64, batch 1: the suites' shape.
fn shape(heads: usize, n: usize) -> AttnShape {
    AttnShape { batch: 1, heads, kv_heads: heads, n, m: n, head_dim: 64 }
}

fn bigbird(n: usize) -> Result<Mask> {
    Mask::bigbird(&BigBird { global: 1, window: 1, random: 2, block: 64, seed: 0 }, n)
}

/// The backward table's default calls and repeats: N = 1K, 2K, dense and causal, H = 4,
/// D = 64 (`reps` overrides the 3 repeats).
pub fn backward_default(reps: Option<usize>) -> Vec<(AttnSpec, usize)> {
    let mut v = Vec::new();
    for causal in [false, true] {
        for n in [1024, 2048] {
            v.push((AttnSpec::new(shape(4, n)).causal(causal), reps.unwrap_or(3)));
        }
    }
    v
}

/// The configurations of a fixed suite; `reps` overrides each one's repeats.
pub fn fixed(suite: Fixed, reps: Option<usize>) -> Result<Vec<Config>> {
    let reps = |r| reps.unwrap_or(r);
    let mut out = Vec::new();
    match suite {
        Fixed::Full => {
            for causal in [false, true] {
                for kernel in [Kernel::Flash, Kernel::Naive] {
                    for n in [1024, 2048, 4096, 8192] {
                        out.push(Config {
                            kernel,
                            spec: AttnSpec::new(shape(4, n)).causal(causal),
                            reps: reps(3),
                        });
                    }
                }
            }
        }
        Fixed::Scaling => {
            for k in [8, 16, 32, 64, 128] {
                let n = k * 1024;
                let window = AttnSpec::new(shape(1, n)).causal(true).window(Some(Window::new(512, 0)));
                out.push(Config { kernel: Kernel::Flash, spec: window, reps: reps(3) });
                let bb = AttnSpec::new(shape(1, n)).mask(Some(bigbird(n)?));
                out.push(Config { kernel: Kernel::Flash, spec: bb, reps: reps(3) });
            }
            for k in [8, 16, 32] {
                let spec = AttnSpec::new(shape(1, k * 1024)).causal(true);
                out.push(Config { kernel: Kernel::Flash, spec, reps: reps(1) });
            }
        }
    }
    Ok(out)
}

/// One configuration validated and timed, and its twins: a record each (a failure is a
/// record with `skipped` set, so a suite goes on).
pub fn measure(gpu: &Gpu, twins: Twins, peak: &Peak, c: &Config) -> Vec<Record> {
    let mask = c.spec.describe();
    let mut out = vec![run_config(gpu, c.kernel, &c.spec, c.reps, peak, twins.traffic, &mask)];
    if twins.f16 && c.kernel == Kernel::Flash {
        out.push(run_config_f16(gpu, &c.spec, c.reps, peak, &mask, false));
    }
    if twins.mods && c.kernel == Kernel::Flash {
        match as_mods(&c.spec) {
            Some(spec) => {
                let mut r = run_config(gpu, Kernel::Flash, &spec, c.reps, peak, false, &mask);
                // the same visible pairs as the built-in rules (the mod spec alone counts dense)
                r.kernel = "flash-mods".into();
                r.flops = out[0].flops;
                if let Some(ms) = r.ms_median {
                    r.gflops = Some(r.flops / (ms * 1e-3) / 1e9);
                    r.pct_peak_fma = r.gflops.map(|g| 100.0 * g / peak.fma_gflops);
                }
                out.push(r);
            }
            None => log::warn!(
                "named-mods twin: {mask} has no named-mod equivalent (causal, window (L, 0), standard ALiBi)"
            ),
        }
    }
    if twins.tensor_cores_f16 && c.kernel == Kernel::Flash {
        out.push(run_config_f16(gpu, &c.spec, c.reps, peak, &mask, true));
    }
    out
}

/// Each configuration [`measure`]d in turn, reported to `progress` as it starts and ends.
pub fn run(
    gpu: &Gpu,
    twins: Twins,
    peak: &Peak,
    configs: &[Config],
    progress: &dyn Fn(Progress),
) -> Vec<Record> {
    progress(Progress::Planned(configs.len() as u64));
    configs.iter().flat_map(|c| run_one(gpu, twins, peak, c, progress)).collect()
}

/// One configuration between its `Starting` and `Done` reports.
fn run_one(gpu: &Gpu, twins: Twins, peak: &Peak, c: &Config, progress: &dyn Fn(Progress)) -> Vec<Record> {
    progress(Progress::Starting(format!("{} {} N={}", c.kernel.name(), c.spec.describe(), c.spec.shape.n)));
    let records = measure(gpu, twins, peak, c);
    progress(Progress::Done);
    records
}

/// `spec`'s causal, window (L, 0) and standard ALiBi rules as named mods instead (`None` when
/// it has none of them, or one they cannot express).
pub fn as_mods(spec: &AttnSpec) -> Option<AttnSpec> {
    let mut named = Vec::new();
    match spec.window {
        Some(Window { left: Some(l), right: Some(0) }) => named.push(Named::Window(l as u32)),
        Some(_) => return None,
        None if spec.causal => named.push(Named::Causal),
        None => {}
    }
    match &spec.alibi {
        Alibi::Off => {}
        Alibi::Standard => named.push(Named::Alibi(spec.shape.heads)),
        Alibi::Custom(_) => return None,
    }
    let mods = Named::compose(&named).ok()?;
    Some(AttnSpec { causal: false, window: None, alibi: Alibi::Off, ..spec.clone() }.mods(Some(mods)))
}

/// The default suite's ladder of N (= M); H = 4, D = 64. The first [`MIN_RUNGS`] always run
/// (an exponent needs two sizes); each later one only if [`rung_fits`] the budget.
pub(crate) const LADDER: [usize; 7] = [256, 512, 1024, 2048, 4096, 8192, 16384];
/// Rungs that run whatever the budget.
pub const MIN_RUNGS: usize = 2;
/// The default suite's budget, seconds from start to table.
pub const DEFAULT_BUDGET_S: f64 = 50.0;

/// What a suite reports while it runs, for a progress bar.
#[derive(Clone, Debug)]
pub enum Progress {
    /// This many more configurations are planned.
    Planned(u64),
    /// A configuration starts (its kernel, rules and N).
    Starting(String),
    /// A configuration is done.
    Done,
}

/// The default suite within `budget_s` seconds counted from `started`: the ladder (flash and
/// naive, dense and causal), then causal + ALiBi, a causal window of N/8 and BigBird at the
/// largest N reached. Returns the records and the notes that say where the ladder stopped
/// and why.
pub fn default_suite(
    gpu: &Gpu,
    twins: Twins,
    peak: &Peak,
    reps: usize,
    budget_s: f64,
    started: Instant,
    progress: &dyn Fn(Progress),
) -> Result<(Vec<Record>, Vec<String>)> {
    let mut records = Vec::new();
    let mut notes = Vec::new();
    let run = |kernel: Kernel, spec: AttnSpec, records: &mut Vec<Record>| {
        let t = Instant::now();
        records.extend(run_one(gpu, twins, peak, &Config { kernel, spec, reps }, progress));
        t.elapsed().as_secs_f64()
    };
    let mut top: Option<(usize, f64, f64)> = None; // (N, rung seconds, tail's predicted seconds)
    for (i, &n) in LADDER.iter().enumerate() {
        if let Some((last, rung_s, tail_s)) = top {
            let growth = n as f64 / last as f64;
            let elapsed = started.elapsed().as_secs_f64();
            if i >= MIN_RUNGS && !rung_fits(elapsed, rung_s, tail_s, growth, budget_s) {
                notes.push(format!(
                    "sizes from the {:.0} s budget: N {}…{last}; N = {n} would take about {:.0} s more with its \
                     ALiBi/window/BigBird runs, {:.0} s are left (--budget SECONDS, or --full for N = 1K…8K)",
                    budget_s,
                    LADDER[0],
                    (rung_s + tail_s) * growth * growth,
                    (budget_s - elapsed).max(0.0),
                ));
                break;
            }
        }
        progress(Progress::Planned(4));
        let mut secs = [[0.0; 2]; 2]; // [causal][flash, naive]
        for (c, causal) in [false, true].into_iter().enumerate() {
            for (k, kernel) in [Kernel::Flash, Kernel::Naive].into_iter().enumerate() {
                secs[c][k] = run(kernel, AttnSpec::new(shape(4, n)).causal(causal), &mut records);
            }
        }
        // The tail: ALiBi and window ≈ the causal pair each, BigBird ≈ dense flash.
        let tail_s = 2.0 * (secs[1][0] + secs[1][1]) + secs[0][0];
        top = Some((n, secs.iter().flatten().sum(), tail_s));
    }
    let n = top.map_or(LADDER[0], |t| t.0);
    progress(Progress::Planned(5));
    let causal = AttnSpec::new(shape(4, n)).causal(true);
    for kernel in [Kernel::Flash, Kernel::Naive] {
        run(kernel, causal.clone().alibi(Alibi::Standard), &mut records);
        run(kernel, causal.clone().window(Some(Window::new(n / 8, 0))), &mut records);
    }
    let bb = AttnSpec::new(shape(4, n)).mask(Some(bigbird(n)?));
    run(Kernel::Flash, bb, &mut records);
    Ok((records, notes))
}

/// Per flash record followed by its flash-mods twin: the mods' time over the built-in rules'.
pub fn mods_overheads(records: &[Record]) -> Vec<String> {
    records
        .windows(2)
        .filter(|w| w[0].kernel == "flash" && w[1].kernel == "flash-mods")
        .filter_map(|w| {
            let (a, b) = (w[0].ms_median?, w[1].ms_median?);
            Some(format!(
                "mods vs built-in {} N={}: {b:.2} ms vs {a:.2} ms = {:+.1} %",
                w[0].mask,
                w[0].n,
                100.0 * (b / a - 1.0)
            ))
        })
        .collect()
}

/// Fitted exponent of time vs N per (kernel, mask, D, heads) curve with ≥ 2 sizes.
pub fn exponents(records: &[Record]) -> Vec<String> {
    let curve = |r: &Record| (r.kernel.clone(), r.mask.replace(&format!("({})", r.n), ""), r.d, r.heads);
    let mut keys: Vec<(String, String, usize, usize)> = Vec::new();
    for r in records {
        if !keys.contains(&curve(r)) {
            keys.push(curve(r));
        }
    }
    keys.into_iter()
        .filter_map(|key| {
            let pts: Vec<(f64, f64)> = records
                .iter()
                .filter(|r| curve(r) == key)
                .filter_map(|r| r.ms_median.map(|ms| (r.n as f64, ms)))
                .collect();
            let lo = pts.iter().map(|p| p.0).fold(f64::MAX, f64::min);
            let hi = pts.iter().map(|p| p.0).fold(0.0, f64::max);
            let (kernel, mask, d, heads) = key;
            fitted_exponent(&pts).map(|k| {
                format!(
                    "time ∝ N^{k:.2}   {kernel} {mask} D={d} H={heads} (least squares on log–log, {} sizes, N {lo}…{hi})",
                    pts.len()
                )
            })
        })
        .collect()
}
