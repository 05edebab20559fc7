//! `longctx ring`: ring attention over P ranks — devices of this process (`--devices P`) or
//! processes under `mpirun` (feature `mpi`). Each rank checks sampled rows against the f64
//! oracle; rank 0 prints per-step compute against communication, bytes sent against the
//! model, device memory per rank, and the same problem on one device.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use longctx::measure::ring::{RankJob, RankReport, rank_job, sent_model, single_device};
use longctx::parallel::ring;
use longctx::parallel::schedule::{RingSchedule, Sharding};
use longctx::{Alibi, AttnSpec, Gpu};

use super::DeviceArgs;
use super::bench::parse_size;
use super::maskargs::{MaskArgs, PositionArgs, shape};

#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "\
The sequence is cut into chunks (zigzag for causal: rank r owns chunks r and 2P−1−r, so every
rank computes the same number of visible pairs); K/V blocks travel around the ring while each
rank attends its queries to the block it holds (the next transfer overlaps the computation)
and merges partial outputs by log-sum-exp. Inputs are hashed by index, so each rank makes only
its own shard.

Examples:
  longctx ring --devices 4 --n 8k --heads 8 --d 64 --causal
  mpirun -np 4 longctx ring --n 64k --heads 8 --d 64 --causal     (a build with --features mpi)

With a software adapter (lavapipe) add `--bind-to none` to mpirun: Open MPI pins each process
to one core when it starts two or fewer, and the driver's threads then share that core.")]
pub struct RingArgs {
    /// Query rows N (k = 1024).
    #[arg(long, default_value = "4k")]
    n: String,
    /// Keys M (default: N).
    #[arg(long)]
    m: Option<String>,
    /// Query heads.
    #[arg(long, default_value_t = 8)]
    heads: usize,
    /// Key/value heads (default: the query heads); only these travel.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Head dim.
    #[arg(long, default_value_t = 64)]
    d: usize,
    /// Masks at global positions: --causal, --window, --global, --segments, --bigbird,
    /// --block-mask, --pattern (mods are not carried by the ring).
    #[command(flatten)]
    mask: MaskArgs,
    /// ALiBi biases (global positions).
    #[arg(long)]
    alibi: bool,
    #[command(flatten)]
    positions: PositionArgs,
    /// Ranks as devices of this process, one thread each (1–64, default 2; under mpirun the
    /// MPI world is the ring).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    devices: Option<u16>,
    /// zigzag or contiguous (default: zigzag when causal, else contiguous).
    #[arg(long)]
    sharding: Option<String>,
    /// Also run the backward (dQ, dK, dV) around the ring.
    #[arg(long)]
    backward: bool,
    /// Rows per rank checked against the f64 oracle (0: none; the oracle needs the whole K, V
    /// on every rank).
    #[arg(long, default_value_t = 4)]
    check_rows: usize,
    /// Skip the same problem on one device.
    #[arg(long)]
    no_single: bool,
    /// Seconds a rank waits for another before it gives up.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Write the per-rank records as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn spec_of(a: &RingArgs) -> anyhow::Result<AttnSpec> {
    let n = parse_size(&a.n)?;
    let m = a.m.as_deref().map(parse_size).transpose()?.unwrap_or(n);
    a.mask.apply(
        AttnSpec::new(shape(a.heads, a.kv_heads.unwrap_or(a.heads), n, m, a.d))
            .alibi(if a.alibi { Alibi::Standard } else { Alibi::Off })
            .positions(a.positions.get()?),
    )
}

fn job(a: &RingArgs) -> RankJob {
    RankJob { backward: a.backward, check_rows: a.check_rows }
}

fn plan_of(a: &RingArgs, spec: &AttnSpec, ranks: usize) -> anyhow::Result<RingSchedule> {
    let sharding = match a.sharding.as_deref() {
        None => Sharding::for_spec(spec),
        Some("zigzag") => Sharding::Zigzag,
        Some("contiguous") => Sharding::Contiguous,
        Some(x) => bail!("--sharding `{x}`: choose zigzag or contiguous"),
    };
    Ok(RingSchedule::new(spec, ranks, sharding)?)
}

pub fn run(dev: &DeviceArgs, a: &RingArgs) -> anyhow::Result<()> {
    let read = a.mask.input_paths();
    longctx::io::check_outputs(
        &a.json.as_deref().into_iter().collect::<Vec<_>>(),
        &read.iter().map(|p| p.as_path()).collect::<Vec<_>>(),
    )?;
    let spec = spec_of(a)?;
    if longctx::parallel::transport::mpi_launched() {
        return run_mpi(dev, a, &spec);
    }
    // each rank opens its own device (≈13 MB of host memory on lavapipe): bounded by the flag
    let ranks = a.devices.map_or(2, usize::from);
    let plan = plan_of(a, &spec, ranks)?;
    let gpus: Vec<Gpu> = (0..ranks)
        .map(|r| dev.gpu().with_context(|| format!("device for rank {r}")))
        .collect::<anyhow::Result<_>>()?;
    let timeout = Duration::from_secs(a.timeout);
    let results = ring::in_process(&gpus, timeout, |gpu, t| rank_job(gpu, t, &plan, job(a)));
    let mut reports = Vec::new();
    let mut errors = Vec::new();
    for r in results {
        match r {
            Ok(x) => reports.push(x),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(ring::is_secondary);
        return Err(errors.remove(0).into());
    }
    report(
        &gpus[0],
        a,
        &plan,
        &reports,
        &format!("{ranks} devices of this process ({})", gpus[0].info().name),
    )
}

/// Rank 0's table: per rank its steps, bytes and memory, the check, and one device.
fn report(
    gpu: &Gpu,
    a: &RingArgs,
    plan: &RingSchedule,
    reports: &[RankReport],
    how: &str,
) -> anyhow::Result<()> {
    let s = plan.spec.shape;
    println!(
        "ring attention: P = {} over {how}; {:?} sharding; B={} H={}/{} N={} M={} D={} {}",
        plan.ranks,
        plan.sharding,
        s.batch,
        s.heads,
        s.kv_heads,
        s.n,
        s.m,
        s.head_dim,
        plan.spec.describe()
    );
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "rank",
        "prepare ms",
        "forward ms",
        "compute ms/step",
        "wait ms/step",
        "block transfer ms",
        "sent MiB (model)",
        "device MiB",
        "visible pairs (share)",
        "backward ms",
        "rel err (rows)",
        "grad rel err",
    ]);
    let total_pairs: u64 = reports.iter().map(|r| r.steps.iter().map(|x| x.pairs).sum::<u64>()).sum();
    for r in reports {
        let n = r.steps.len().max(1) as f64;
        let compute = r.steps.iter().map(|x| x.compute_s).sum::<f64>() * 1e3 / n;
        let wait = r.steps.iter().map(|x| x.wait_s).sum::<f64>() * 1e3 / n;
        let sent: u64 = r.steps.iter().map(|x| x.sent).sum();
        let model = sent_model(plan, r.rank);
        let pairs: u64 = r.steps.iter().map(|x| x.pairs).sum();
        table.add_row([
            r.rank.to_string(),
            format!("{:.1}", r.prepare_ms),
            format!("{:.1}", r.forward_ms),
            format!("{compute:.2}"),
            format!("{wait:.2}"),
            format!("{:.2}", r.transfer_ms),
            format!("{:.2} ({:.2})", mib(sent), mib(model)),
            format!("{:.1}", mib(r.device_bytes)),
            format!("{pairs} ({:.1} %)", 100.0 * pairs as f64 / total_pairs.max(1) as f64),
            r.backward_ms.map_or("—".into(), |x| format!("{x:.1}")),
            r.check_rel_err.map_or("—".into(), |e| format!("{e:.1e} ({})", a.check_rows)),
            r.backward_rel_err.map_or("—".into(), |e| format!("{e:.1e}")),
        ]);
    }
    println!("{table}");
    for r in reports {
        r.check()?;
    }
    let ring_ms = reports.iter().map(|r| r.forward_ms).fold(0.0, f64::max);
    if !a.no_single {
        match single_device(gpu, &plan.spec, a.backward) {
            Ok((fwd, bwd)) => {
                println!(
                    "one device, same problem: flash forward {fwd:.1} ms (ring: {ring_ms:.1} ms, ×{:.2}){}",
                    ring_ms / fwd,
                    bwd.map_or(String::new(), |b| format!("; backward {b:.1} ms"))
                );
            }
            Err(e) => println!("one device, same problem: not run ({e})"),
        }
    }
    if let Some(path) = &a.json {
        longctx::io::write_atomic(path, serde_json::to_string_pretty(reports)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn run_mpi(_dev: &DeviceArgs, _a: &RingArgs, _spec: &AttnSpec) -> anyhow::Result<()> {
    bail!(
        "started by an MPI launcher, but this longctx was built without MPI: build it with `cargo build --release --features mpi` (or use --devices P for devices of one process)"
    )
}

/// Under `mpirun`: this process is one rank. A rank that fails prints its error and ends
/// the job (MPI_Abort), so no other rank waits for it.
#[cfg(feature = "mpi")]
fn run_mpi(dev: &DeviceArgs, a: &RingArgs, spec: &AttnSpec) -> anyhow::Result<()> {
    use longctx::parallel::mpi::Mpi;
    use longctx::parallel::transport::Transport;
    let mut t = Mpi::init(Duration::from_secs(a.timeout))?;
    if a.devices.is_some() {
        t.fail(&"--devices is for devices of one process; under mpirun the MPI world is the ring", 2);
    }
    let plan = plan_of(a, spec, t.size()).unwrap_or_else(|e| t.fail(&e, 2));
    let gpu = dev.gpu().unwrap_or_else(|e| t.fail(&e, 2));
    let mine = rank_job(&gpu, &mut t, &plan, job(a)).unwrap_or_else(|e| t.fail(&e, 2));
    let bytes = serde_json::to_vec(&mine)?;
    let Some(all) = t.gather(&bytes).unwrap_or_else(|e| t.fail(&e, 2)) else { return Ok(()) };
    let reports: Vec<RankReport> =
        all.iter().map(|b| serde_json::from_slice(b)).collect::<Result<_, _>>().context("a rank's report")?;
    let how = format!("{} MPI processes ({})", t.size(), gpu.info().name);
    if let Err(e) = report(&gpu, a, &plan, &reports, &how) {
        t.fail(&e, 2);
    }
    Ok(())
}
