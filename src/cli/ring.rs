//! `longctx ring`: ring attention over P ranks — devices of this process (`--devices P`) or
//! processes under `mpirun` (feature `mpi`). Each rank checks sampled rows against the f64
//! oracle; rank 0 prints per-step compute against communication, bytes sent against the
//! model, device memory per rank, and the same problem on one device.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use longctx::contract::reference::{attention_backward_f64, attention_rows_f64, rel_error};
use longctx::kernels::backward::{Backward, GradTensors};
use longctx::parallel::ring::{self, RankOutput, Shard, StepStats};
use longctx::parallel::schedule::{RingSchedule, Sharding, take_rows};
use longctx::parallel::transport::Transport;
use longctx::{Alibi, Attention, AttnSpec, DeviceTensors, Gpu, Kernel};
use serde::{Deserialize, Serialize};

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
    /// Ranks as devices of this process, one thread each (default 2; under mpirun the MPI
    /// world is the ring).
    #[arg(long)]
    devices: Option<usize>,
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

/// What a rank reports to rank 0.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct RankReport {
    rank: usize,
    prepare_ms: f64,
    forward_ms: f64,
    /// One block's transfer on its own (not overlapped).
    transfer_ms: f64,
    backward_ms: Option<f64>,
    steps: Vec<StepStats>,
    backward_steps: Vec<StepStats>,
    device_bytes: u64,
    check_rel_err: Option<f64>,
    /// Worst of this rank's dQ, dK, dV chunks against the f64 oracle (small problems only).
    backward_rel_err: Option<f64>,
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

fn plan_of(a: &RingArgs, spec: &AttnSpec, ranks: usize) -> anyhow::Result<RingSchedule> {
    let sharding = match a.sharding.as_deref() {
        None => Sharding::for_spec(spec),
        Some("zigzag") => Sharding::Zigzag,
        Some("contiguous") => Sharding::Contiguous,
        Some(x) => bail!("--sharding `{x}`: choose zigzag or contiguous"),
    };
    Ok(RingSchedule::new(spec, ranks, sharding)?)
}

/// One rank's whole job: its shard, the forward (and backward), the check of sampled rows.
fn rank_job(
    gpu: &Gpu,
    t: &mut dyn Transport,
    plan: &RingSchedule,
    a: &RingArgs,
) -> longctx::Result<RankReport> {
    let r = t.rank();
    let shard = Shard::hashed(plan, r);
    let t0 = Instant::now();
    let fwd = ring::forward(gpu, t, plan, &shard)?;
    // the ring itself: from the first step to the last (the calls were prepared before)
    let forward_ms = (t0.elapsed().as_secs_f64() - fwd.prepare_s - fwd.transfer_s) * 1e3;
    // the whole inputs for the oracle, made once (the shard is a slice of them)
    let whole = if a.check_rows > 0 {
        let s = plan.spec.shape;
        longctx::runtime::host::check_bytes(
            "the oracle's whole Q, K, V and dO (--check-rows 0 skips the check)",
            ((2 * s.q_len() + 2 * s.kv_len()) as u64).saturating_mul(4),
        )?;
        Some(ring::hashed_inputs(&plan.spec))
    } else {
        None
    };
    let (mut backward_ms, mut backward_steps, mut backward_rel_err) = (None, Vec::new(), None);
    if a.backward {
        let s = plan.spec.shape;
        let t1 = Instant::now();
        let g = ring::backward(gpu, t, plan, &shard, &fwd, &ring::hashed_d_o(plan, r))?;
        backward_ms = Some(t1.elapsed().as_secs_f64() * 1e3);
        // the whole backward oracle is O(N·M): small problems only
        if let Some([q, k, v, d_o]) =
            whole.as_ref().filter(|_| (s.n as u64 * s.m as u64 * s.heads as u64) <= 1 << 24)
        {
            let (dq, dk, dv) = attention_backward_f64(&plan.spec, q, k, v, d_o)?;
            let (d, bh, bkv) = (s.head_dim, s.batch * s.heads, s.batch * s.kv_heads);
            let mut worst = 0f64;
            for (i, c) in plan.owned(r).into_iter().enumerate() {
                let (qr, kr) = (&plan.q_chunks[c], &plan.k_chunks[c]);
                worst = worst
                    .max(rel_error(&g.dq[i], &take_rows(&dq, bh, s.n, d, qr)))
                    .max(rel_error(&g.dk[i], &take_rows(&dk, bkv, s.m, d, kr)))
                    .max(rel_error(&g.dv[i], &take_rows(&dv, bkv, s.m, d, kr)));
            }
            backward_rel_err = Some(worst);
        }
        backward_steps = g.steps;
    }
    let check_rel_err = match &whole {
        Some([q, k, v, _]) => Some(check(plan, r, &fwd, a.check_rows, q, k, v)?),
        None => None,
    };
    Ok(RankReport {
        rank: r,
        prepare_ms: fwd.prepare_s * 1e3,
        forward_ms,
        transfer_ms: fwd.transfer_s * 1e3,
        backward_ms,
        steps: fwd.steps,
        backward_steps,
        device_bytes: fwd.device_bytes,
        check_rel_err,
        backward_rel_err,
    })
}

/// `rows` of rank `r`'s output rows (spread over its chunks and the heads) against the f64
/// oracle on the whole inputs `q`, `k`, `v`: the worst relative error of O.
fn check(
    plan: &RingSchedule,
    r: usize,
    fwd: &RankOutput,
    rows: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> longctx::Result<f64> {
    let s = plan.spec.shape;
    let d = s.head_dim;
    let owned = plan.owned(r);
    let mut picks = Vec::new(); // (flat row, chunk index, local row)
    for x in 0..rows {
        let ci = x % owned.len();
        let chunk = &plan.q_chunks[owned[ci]];
        let i = chunk.start + (x / owned.len() * 7919 + x * 31) % chunk.len();
        let bh = (x * 13) % (s.batch * s.heads);
        picks.push((bh * s.n + i, ci, bh * chunk.len() + (i - chunk.start)));
    }
    let want = attention_rows_f64(&plan.spec, q, k, v, &picks.iter().map(|p| p.0).collect::<Vec<_>>())?;
    let mut got = Vec::new();
    let mut reference = Vec::new();
    for (&(_, ci, local), (o_row, _)) in picks.iter().zip(&want) {
        got.extend_from_slice(&fwd.o[ci][local * d..(local + 1) * d]);
        reference.extend_from_slice(o_row);
    }
    Ok(rel_error(&got, &reference))
}

/// The same problem on one device: flash forward (and backward), milliseconds (median of 3).
fn single_device(gpu: &Gpu, spec: &AttnSpec, backward: bool) -> longctx::Result<(f64, Option<f64>)> {
    let [q, k, v, d_o] = ring::hashed_inputs(spec);
    let attn = Attention::new(gpu, Kernel::Flash, spec)?;
    let io = DeviceTensors::upload(gpu, spec, &q, &k, &v)?;
    // a warm-up, then the median of 3 (record only: time_wall submits and waits)
    let time = |record: &mut dyn FnMut(&mut wgpu::CommandEncoder) -> longctx::Result<()>| {
        longctx::runtime::timing::time_wall(gpu, 1, 3, record).map(|t| t.median())
    };
    let fwd = time(&mut |enc| attn.encode(gpu, enc, &io.buffers()))?;
    let bwd = if backward {
        let bw = Backward::new(gpu, spec)?;
        let grads = GradTensors::upload(gpu, spec, &d_o)?;
        Some(time(&mut |enc| bw.encode(gpu, enc, &grads.buffers(&io)))?)
    } else {
        None
    };
    Ok((fwd, bwd))
}

pub fn run(dev: &DeviceArgs, a: &RingArgs) -> anyhow::Result<()> {
    longctx::io::check_outputs(&a.json.as_deref().into_iter().collect::<Vec<_>>(), &[])?;
    let spec = spec_of(a)?;
    if longctx::parallel::transport::mpi_launched() {
        return run_mpi(dev, a, &spec);
    }
    let ranks = a.devices.unwrap_or(2);
    if ranks == 0 {
        bail!("--devices must be at least 1");
    }
    let plan = plan_of(a, &spec, ranks)?;
    let gpus: Vec<Gpu> = (0..ranks)
        .map(|r| dev.gpu().with_context(|| format!("device for rank {r}")))
        .collect::<anyhow::Result<_>>()?;
    let timeout = Duration::from_secs(a.timeout);
    let results = ring::in_process(&gpus, timeout, |gpu, t| rank_job(gpu, t, &plan, a));
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
        // the model: K and V of every other rank's block pass through once
        let model: u64 = (1..plan.ranks)
            .map(|step| {
                let holder = plan.holder_of(r.rank, step - 1);
                plan.owned(holder)
                    .iter()
                    .map(|&c| 2 * 4 * plan.chunk_len(plan.k_chunks[c].len(), s.kv_heads) as u64)
                    .sum::<u64>()
            })
            .sum();
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
    let far = |e: Option<f64>| e.is_some_and(|e| e.is_nan() || e > 1e-5);
    if let Some(bad) = reports.iter().find(|r| far(r.check_rel_err) || far(r.backward_rel_err)) {
        bail!(
            "rank {}: its output is {:.2e} (forward rows) / {:.2e} (gradients) from the f64 oracle (bound 1e-5)",
            bad.rank,
            bad.check_rel_err.unwrap_or(0.0),
            bad.backward_rel_err.unwrap_or(0.0)
        );
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
    let mut t = Mpi::init(Duration::from_secs(a.timeout))?;
    if a.devices.is_some() {
        t.fail(&"--devices is for devices of one process; under mpirun the MPI world is the ring", 2);
    }
    let plan = plan_of(a, spec, t.size()).unwrap_or_else(|e| t.fail(&e, 2));
    let gpu = dev.gpu().unwrap_or_else(|e| t.fail(&e, 2));
    let mine = rank_job(&gpu, &mut t, &plan, a).unwrap_or_else(|e| t.fail(&e, 2));
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
