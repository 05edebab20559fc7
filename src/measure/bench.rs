//! Benchmarks: each configuration validated against the f64 oracle, then timed with the
//! runtime's timing (device timestamps or wall clock; warm-up, repeats, median); fitted
//! exponents; the machine-readable records `longctx bench --json` writes.

use serde::{Deserialize, Serialize};

use crate::contract::inputs::seeded_qkv;
use crate::contract::reference::{attention_dq_rows_f64, attention_f64, attention_rows_f64, rel_error};
use crate::contract::spec::AttnSpec;
use crate::error::{Error, Result};
use crate::kernels::peak::Peak;
use crate::kernels::{Attention, DeviceTensors, Inputs, Kernel};
use crate::measure::chart::{Axis, ChartData, Mark, Unit};
use crate::runtime::Gpu;
use crate::runtime::timing::{GpuTimer, Timing, time_encoded};

/// A size as a user writes it: `512`, `4k`, `1K`, `16M` (k = 1024, M = 1024²); an error for
/// anything else or a size that overflows `usize`. The one parser of sizes: the CLI's flags
/// and the visualiser's fields both use it.
pub fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim().to_lowercase();
    let (num, mul) = match (t.strip_suffix('k'), t.strip_suffix('m')) {
        (Some(x), _) => (x, 1024),
        (_, Some(x)) => (x, 1024 * 1024),
        _ => (t.as_str(), 1),
    };
    let v: usize = num.parse().map_err(|e| {
        Error::Invalid(format!("size `{}`: expected a number like 512, 4k or 1M ({e})", s.trim()))
    })?;
    v.checked_mul(mul)
        .ok_or_else(|| Error::Invalid(format!("size `{}` does not fit in {} bits", s.trim(), usize::BITS)))
}

/// A comma-separated list of [`parse_size`] sizes (empty items skipped).
pub fn parse_sizes(text: &str) -> Result<Vec<usize>> {
    text.split(',').filter(|s| !s.trim().is_empty()).map(parse_size).collect()
}

/// Runs `attn` `warmup` times untimed, then `reps` times. Each run is timed on the device
/// (timestamps around the kernel's compute pass) when the device has TIMESTAMP_QUERY, else
/// submit-to-idle on the host clock; [`Timing::timer`] says which. Inputs stay resident;
/// run `i` uses input set `i % sets.len()`, so small problems rotate through several copies
/// instead of timing a cache-warm rerun.
pub(crate) fn time_attention(
    gpu: &Gpu,
    attn: &Attention,
    sets: &[&DeviceTensors],
    warmup: usize,
    reps: usize,
) -> Result<Timing> {
    time_encoded(gpu, warmup, reps, |enc, i, timer| {
        attn.encode_timed(gpu, enc, &sets[i % sets.len()].buffers(), timer.map(GpuTimer::writes))
    })
}

/// Least-squares slope of `ln y` against `ln x`: the exponent `k` in `y ∝ x^k`.
pub(crate) fn fitted_exponent(points: &[(f64, f64)]) -> Option<f64> {
    let pts: Vec<(f64, f64)> =
        points.iter().filter(|(x, y)| *x > 0.0 && *y > 0.0).map(|(x, y)| (x.ln(), y.ln())).collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Adds one log–log curve per key of `points` (sorted by x), each label ending in its fitted
/// exponent (`time ~ N^k`), drawn as `mark(key)`.
fn add_curves(chart: &mut ChartData, points: Vec<(String, [f64; 2])>, mark: impl Fn(&str) -> Mark) {
    let mut curves: Vec<(String, Vec<[f64; 2]>)> = Vec::new();
    for (key, p) in points {
        match curves.iter_mut().find(|c| c.0 == key) {
            Some(c) => c.1.push(p),
            None => curves.push((key, vec![p])),
        }
    }
    for (key, mut pts) in curves {
        pts.sort_by(|a, b| a[0].total_cmp(&b[0]));
        let mark = mark(&key);
        let label = match fitted_exponent(&pts.iter().map(|p| (p[0], p[1])).collect::<Vec<_>>()) {
            Some(k) => format!("{key}: time ~ N^{k:.2}"),
            None => key,
        };
        chart.add(label, mark, pts);
    }
}

/// Time per call against N, one curve per (kernel, mask, D, heads) with its fitted exponent:
/// the chart of `longctx bench --plot` and of the app's Benchmarks panel.
pub fn time_chart(records: &[Record]) -> ChartData {
    let mut chart = ChartData::new(
        "attention time per call (validated against the f64 oracle first)",
        Axis::log("sequence length N", Unit::Tokens),
        Axis::log("time per call", Unit::Millis),
    );
    let points = records
        .iter()
        .filter_map(|r| {
            r.ms_median
                .map(|ms| (format!("{} {} D={} H={}", r.kernel, r.mask, r.d, r.heads), [r.n as f64, ms]))
        })
        .collect();
    add_curves(&mut chart, points, |_| Mark::LinePoints);
    chart
}

/// Flash forward, flash backward and the materialised backward against N, per mask (solid:
/// the first mask seen, dashed: the others): the chart of `longctx bench --backward --plot`.
pub fn backward_chart(records: &[BackwardRecord]) -> ChartData {
    let mut chart = ChartData::new(
        "attention backward: time per call (gradients validated against the f64 oracle)",
        Axis::log("sequence length N", Unit::Tokens),
        Axis::log("time per call", Unit::Millis),
    );
    let mut points = Vec::new();
    for r in records.iter().filter(|r| r.skipped.is_none()) {
        let shape = format!("{}, D={} H={}", r.mask, r.d, r.heads);
        for (what, ms) in
            [("flash forward", r.fwd_ms), ("flash backward", r.bwd_ms), ("naive backward", r.naive_bwd_ms)]
        {
            if let Some(ms) = ms {
                points.push((format!("{what}, {shape}"), [r.n as f64, ms]));
            }
        }
    }
    let first_mask = records.first().map(|r| format!(", {},", r.mask)).unwrap_or_default();
    add_curves(
        &mut chart,
        points,
        |key| if key.contains(&first_mask) { Mark::LinePoints } else { Mark::Dashed },
    );
    chart
}

/// Whether the next rung of a size ladder fits a time budget. The rung's cost is predicted
/// as the last rung's measured wall time × `growth`² (attention's cost is quadratic in N at
/// worst; the oracle's and flash's grow no faster), and so is the work that must still
/// follow it at that size (`tail_s`, measured at the last rung): the ladder stops growing
/// while both still fit in what is left of `budget_s`.
pub fn rung_fits(elapsed_s: f64, last_rung_s: f64, tail_s: f64, growth: f64, budget_s: f64) -> bool {
    elapsed_s + (last_rung_s + tail_s) * growth * growth <= budget_s
}

/// One benchmark result, as `longctx bench --json` writes it (one object per configuration).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Kernel name: `flash`, `naive` or `flash-f16`.
    pub kernel: String,
    /// Batch size B.
    pub batch: usize,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads Hkv (H for MHA, 1 for MQA).
    pub kv_heads: usize,
    /// Query length N.
    pub n: usize,
    /// Key/value length M.
    pub m: usize,
    /// Head dim D.
    pub d: usize,
    /// The mask as the caller described it (e.g. `causal`, `dense`).
    pub mask: String,
    /// Set when the configuration could not run (e.g. beyond a device limit); timings are then absent.
    pub skipped: Option<String>,
    /// `timestamp` (device) or `wall` (host clock, submit to idle).
    pub timer: String,
    /// Timed runs (after one warm-up).
    pub reps: usize,
    /// Median of the timed runs, in ms.
    pub ms_median: Option<f64>,
    /// Fastest timed run, in ms.
    pub ms_min: Option<f64>,
    /// Slowest timed run, in ms.
    pub ms_max: Option<f64>,
    /// Forward FLOPs counted as 4·B·D·(visible query-key pairs over heads).
    pub flops: f64,
    /// How `flops` is counted: [`FLOP_CONVENTION`].
    pub flop_convention: String,
    /// `flops` / median time, in GFLOP/s.
    pub gflops: Option<f64>,
    /// Percent of the adapter's FMA probe (`longctx peak`), when known.
    pub pct_peak_fma: Option<f64>,
    /// Device memory allocated for the call: Q, K, V, O, LSE and the kernel's scratch.
    pub device_bytes: u64,
    /// The kernel's own scratch (naive's N×M scores, flash's block map).
    pub scratch_bytes: u64,
    /// Modelled device-memory traffic of the kernel's loop (see `traffic_convention`).
    pub traffic_model_bytes: u64,
    /// Traffic counted by the instrumented kernel, when run.
    pub traffic_measured_bytes: Option<u64>,
    /// What the traffic figures count: [`TRAFFIC_CONVENTION`].
    pub traffic_convention: String,
    /// Modelled traffic / median time.
    pub gbps: Option<f64>,
    /// Percent of the adapter's copy-bandwidth probe, when known.
    pub pct_peak_copy: Option<f64>,
    /// Relative error of the output against `reference`, checked before timing.
    pub rel_err: Option<f64>,
    /// What `rel_err` was measured against: `oracle` (whole output) or `oracle, 64 sampled rows`.
    pub reference: String,
    /// Adapter name, as wgpu reports it.
    pub adapter: String,
    /// wgpu backend (`Vulkan`, `Metal`, …).
    pub backend: String,
    /// Driver and its version.
    pub driver: String,
    /// Short commit hash of the build (`unknown` outside a git checkout).
    pub git_commit: String,
    /// Crate version of the build.
    pub longctx_version: String,
    /// When the record was made, RFC 3339 in UTC to the second.
    pub timestamp: String,
}

/// Largest N·M per head at which the whole f64 oracle validates a configuration; above it
/// [`SPOT_ROWS`] evenly spaced rows are checked against the oracle.
pub const ORACLE_MAX_PAIRS: usize = 1024 * 1024;
/// Rows, evenly spaced over all B·H·N, checked against the oracle above [`ORACLE_MAX_PAIRS`].
pub const SPOT_ROWS: usize = 64;
/// Below this many bytes of Q, K and V, timed runs rotate through three input copies.
pub(crate) const ROTATE_BELOW_BYTES: u64 = 64 << 20;

/// How a [`Record`]'s `flops` are counted; copied into its `flop_convention`.
pub const FLOP_CONVENTION: &str = "forward: 4·B·D·(visible query-key pairs over heads) — QKᵀ and PV, one multiply + one add each; softmax, masking and bias not counted";
/// What a [`Record`]'s traffic bytes count; copied into its `traffic_convention`.
pub const TRAFFIC_CONVENTION: &str = "bytes of Q, K, V read and O, LSE written (naive: and its N×M scores), as each workgroup/invocation moves them to or from device memory; no cache reuse assumed; uniforms, block map and slopes not counted";

fn base_record(gpu: &Gpu, kernel: Kernel, spec: &AttnSpec, reps: usize, mask: &str) -> Record {
    let s = spec.shape;
    let info = gpu.info();
    Record {
        kernel: kernel.name().into(),
        batch: s.batch,
        heads: s.heads,
        kv_heads: s.kv_heads,
        n: s.n,
        m: s.m,
        d: s.head_dim,
        mask: mask.into(),
        flops: spec.flops(),
        flop_convention: FLOP_CONVENTION.into(),
        traffic_convention: TRAFFIC_CONVENTION.into(),
        reps,
        adapter: info.name.clone(),
        backend: format!("{:?}", info.backend),
        driver: gpu.driver(),
        git_commit: crate::GIT_COMMIT.into(),
        longctx_version: crate::VERSION.into(),
        timestamp: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ..Default::default()
    }
}

/// One benchmark configuration, end to end: seeded inputs, a run checked against the f64
/// oracle (whole output up to [`ORACLE_MAX_PAIRS`], else [`SPOT_ROWS`] rows), optionally
/// an instrumented run measuring traffic, then `reps` timed runs after one warm-up.
/// Whatever fails (a device limit, say) becomes the record's `skipped` reason.
pub fn run_config(
    gpu: &Gpu,
    kernel: Kernel,
    spec: &AttnSpec,
    reps: usize,
    peak: &Peak,
    traffic: bool,
    mask: &str,
) -> Record {
    let mut r = base_record(gpu, kernel, spec, reps, mask);
    if let Err(e) = fill(gpu, kernel, spec, reps, peak, traffic, Inputs::F32, &mut r) {
        r.skipped = Some(e.to_string());
    }
    r
}

/// [`run_config`] for flash reading f16-stored Q, K, V: "flash-f16" (f32 arithmetic) or,
/// with `tensor_cores`, "flash-f16-tc" (f16 cooperative matrices,
/// [`Inputs::F16TensorCores`]). The error is against the oracle on the f32 inputs;
/// traffic is not modelled for these variants.
pub(crate) fn run_config_f16(
    gpu: &Gpu,
    spec: &AttnSpec,
    reps: usize,
    peak: &Peak,
    mask: &str,
    tensor_cores: bool,
) -> Record {
    let mut r = base_record(gpu, Kernel::Flash, spec, reps, mask);
    r.kernel = if tensor_cores { "flash-f16-tc" } else { "flash-f16" }.into();
    let inputs = if tensor_cores { Inputs::F16TensorCores } else { Inputs::F16 };
    if let Err(e) = fill(gpu, Kernel::Flash, spec, reps, peak, false, inputs, &mut r) {
        r.skipped = Some(e.to_string());
    }
    r
}

/// The relative error of `o` on [`SPOT_ROWS`] rows evenly spaced over all B·H·N against the
/// f64 oracle of `spec` (for sizes whose whole oracle is too slow).
pub(crate) fn spot_error(spec: &AttnSpec, q: &[f32], k: &[f32], v: &[f32], o: &[f32]) -> Result<f64> {
    let s = spec.shape;
    let rows = spot_rows(s.lse_len());
    let want: Vec<f64> = attention_rows_f64(spec, q, k, v, &rows)?.into_iter().flat_map(|(o, _)| o).collect();
    let d = s.head_dim;
    let got: Vec<f32> = rows.iter().flat_map(|&row| o[row * d..(row + 1) * d].iter().copied()).collect();
    Ok(rel_error(&got, &want))
}

/// The relative error of dQ on [`SPOT_ROWS`] rows evenly spaced over all B·H·N against the f64
/// oracle of `spec` (a row's dQ needs only its own scores; dK and dV need every row's).
pub(crate) fn spot_grad_error(
    spec: &AttnSpec,
    (q, k, v): (&[f32], &[f32], &[f32]),
    d_o: &[f32],
    dq: &[f32],
) -> Result<f64> {
    let s = spec.shape;
    let rows = spot_rows(s.lse_len());
    let want: Vec<f64> = attention_dq_rows_f64(spec, (q, k, v), d_o, &rows)?.into_iter().flatten().collect();
    let d = s.head_dim;
    let got: Vec<f32> = rows.iter().flat_map(|&row| dq[row * d..(row + 1) * d].iter().copied()).collect();
    Ok(rel_error(&got, &want))
}

/// [`SPOT_ROWS`] row indices evenly spaced over `total` rows, the first and the last included.
pub(crate) fn spot_rows(total: usize) -> Vec<usize> {
    (0..SPOT_ROWS).map(|i| i * (total - 1) / (SPOT_ROWS - 1)).collect()
}

/// The seed of every benchmark's inputs ([`seeded_qkv`]).
pub(crate) const INPUT_SEED: u64 = 0x10c7;

#[allow(clippy::too_many_arguments)]
fn fill(
    gpu: &Gpu,
    kernel: Kernel,
    spec: &AttnSpec,
    reps: usize,
    peak: &Peak,
    traffic: bool,
    inputs: Inputs,
    r: &mut Record,
) -> Result<()> {
    let s = spec.shape;
    let half_inputs = inputs != Inputs::F32;
    // the device's limits first, then the host's, then the inputs
    let attn = Attention::builder(spec).kernel(kernel).inputs(inputs).build(gpu)?;
    // host: Q, K, V, read-back O and LSE, and the oracle's f64 rows
    let host = 4 * (2 * s.q_len() + 2 * s.kv_len() + s.lse_len()) as u64 + 8 * s.q_len() as u64;
    crate::runtime::host::check_bytes("the benchmark's inputs, outputs and oracle", host)?;
    let (q, k, v) = seeded_qkv(spec, INPUT_SEED);
    let upload = |gpu: &Gpu| {
        if half_inputs {
            DeviceTensors::upload_f16(gpu, spec, &q, &k, &v)
        } else {
            DeviceTensors::upload(gpu, spec, &q, &k, &v)
        }
    };
    let io = upload(gpu)?;
    io.poison(gpu);
    let out = attn.run_on(gpu, &io)?;
    let (err, reference) = if s.n * s.m <= ORACLE_MAX_PAIRS {
        let (o_ref, _) = attention_f64(spec, &q, &k, &v)?;
        (rel_error(&out.o, &o_ref), "oracle")
    } else {
        (spot_error(spec, &q, &k, &v, &out.o)?, "oracle, 64 sampled rows")
    };
    r.rel_err = Some(err);
    r.reference = reference.into();
    r.scratch_bytes = attn.scratch_bytes();
    let input_bytes = if half_inputs { 2 } else { 4 } * (s.q_len() + 2 * s.kv_len()) as u64;
    r.device_bytes = r.scratch_bytes + input_bytes + 4 * (s.q_len() + s.lse_len()) as u64;
    r.traffic_model_bytes = if half_inputs { 0 } else { attn.traffic_model().total() };
    if traffic {
        let inst = Attention::builder(spec).kernel(kernel).instrumented(true).build(gpu)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        inst.encode(gpu, &mut enc, &io.buffers())?;
        gpu.queue.submit([enc.finish()]);
        r.traffic_measured_bytes = inst.measured_traffic(gpu)?.map(|t| t.total());
    }
    // rotate through copies while the inputs are small enough to sit in the host's caches
    let input_bytes = 4 * (s.q_len() + 2 * s.kv_len()) as u64;
    let copies = if input_bytes <= ROTATE_BELOW_BYTES { 3 } else { 1 };
    let extra: Vec<DeviceTensors> = (1..copies).map(|_| upload(gpu)).collect::<Result<_>>()?;
    let mut sets = vec![&io];
    sets.extend(extra.iter());
    let t = time_attention(gpu, &attn, &sets, 1, reps)?;
    let ms = t.median();
    r.timer = t.timer.into();
    r.ms_median = Some(ms);
    r.ms_min = Some(t.min());
    r.ms_max = Some(t.max());
    let gflops = r.flops / (ms * 1e-3) / 1e9;
    r.gflops = Some(gflops);
    r.pct_peak_fma = Some(100.0 * gflops / peak.fma_gflops);
    let gbps = r.traffic_model_bytes as f64 / (ms * 1e-3) / 1e9;
    r.gbps = Some(gbps);
    r.pct_peak_copy = Some(100.0 * gbps / peak.copy_gbps);
    Ok(())
}

/// FLOP convention of the backward benchmark (FlashAttention's): the backward pass counts
/// 2.5× the forward's FLOPs (five N×M×D matmuls to the forward's two).
pub const BACKWARD_FLOP_FACTOR: f64 = 2.5;

/// One forward + backward benchmark (`longctx bench --backward --json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BackwardRecord {
    /// Batch size B.
    pub batch: usize,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads Hkv.
    pub kv_heads: usize,
    /// Query length N.
    pub n: usize,
    /// Key/value length M.
    pub m: usize,
    /// Head dim D.
    pub d: usize,
    /// The mask as the caller described it (e.g. `causal`, `dense`).
    pub mask: String,
    /// Set when the configuration could not run; timings are then absent.
    pub skipped: Option<String>,
    /// `timestamp` (device) or `wall` (host clock, submit to idle).
    pub timer: String,
    /// Timed runs of each measurement (after one warm-up).
    pub reps: usize,
    /// Medians: flash forward alone, backward alone, both in one submission.
    pub fwd_ms: Option<f64>,
    /// Median of the backward alone, in ms.
    pub bwd_ms: Option<f64>,
    /// Median of forward and backward in one submission, in ms.
    pub fwd_bwd_ms: Option<f64>,
    /// Forward FLOPs (4·B·D·visible pairs); backward = 2.5× that.
    pub fwd_flops: f64,
    /// Forward GFLOP/s: `fwd_flops` / `fwd_ms`.
    pub fwd_gflops: Option<f64>,
    /// Backward GFLOP/s: 2.5 × `fwd_flops` / `bwd_ms`.
    pub bwd_gflops: Option<f64>,
    /// Forward + backward GFLOP/s: 3.5 × `fwd_flops` / `fwd_bwd_ms`.
    pub fwd_bwd_gflops: Option<f64>,
    /// Device memory of flash forward + backward: Q, K, V, O, LSE, dO, dQ, dK, dV and both
    /// kernels' scratch (block maps, (LSE, Δ)).
    pub device_bytes: u64,
    /// The materialised backward ([`Backward::naive`](crate::kernels::attention::backward::Backward::naive)):
    /// the same tensors plus its P / dS matrices, as allocated; its median time; its error.
    pub naive_device_bytes: Option<u64>,
    /// Median time of the materialised backward, in ms.
    pub naive_bwd_ms: Option<f64>,
    /// Worst relative error of its dQ, dK, dV against the tiled backward's (not the oracle).
    pub naive_rel_err: Option<f64>,
    /// Why the materialised backward did not run (a binding or loop limit), if it did not.
    pub naive_skipped: Option<String>,
    /// The backward kernels' modelled device-memory traffic.
    pub bwd_traffic_model_bytes: u64,
    /// Worst relative error of dQ, dK, dV against the f64 oracle (absent above the size the
    /// oracle validates in reasonable time).
    pub rel_err: Option<f64>,
    /// Adapter name, as wgpu reports it.
    pub adapter: String,
    /// Driver and its version.
    pub driver: String,
    /// Short commit hash of the build (`unknown` outside a git checkout).
    pub git_commit: String,
    /// When the record was made, RFC 3339 in UTC to the second.
    pub timestamp: String,
}

/// Largest B·H·N·M at which `longctx bench --backward` checks the gradients against the
/// f64 oracle before timing.
pub const BACKWARD_ORACLE_MAX: usize = 16 << 20;

/// Flash forward and backward of `spec`: checked against the oracle (up to
/// [`BACKWARD_ORACLE_MAX`]), then `reps` timed runs of each after one warm-up.
pub fn run_backward(gpu: &Gpu, spec: &AttnSpec, reps: usize, mask: &str) -> BackwardRecord {
    let s = spec.shape;
    let info = gpu.info();
    let mut r = BackwardRecord {
        batch: s.batch,
        heads: s.heads,
        kv_heads: s.kv_heads,
        n: s.n,
        m: s.m,
        d: s.head_dim,
        mask: mask.into(),
        reps,
        fwd_flops: spec.flops(),
        adapter: info.name.clone(),
        driver: gpu.driver(),
        git_commit: crate::GIT_COMMIT.into(),
        timestamp: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ..Default::default()
    };
    if let Err(e) = fill_backward(gpu, spec, reps, &mut r) {
        r.skipped = Some(e.to_string());
    }
    r
}

fn fill_backward(gpu: &Gpu, spec: &AttnSpec, reps: usize, r: &mut BackwardRecord) -> Result<()> {
    use crate::kernels::attention::backward::{Backward, GradTensors};
    let s = spec.shape;
    // the device's limits first, then the host's, then the inputs
    let fwd = Attention::new(gpu, Kernel::Flash, spec)?;
    let bwd = Backward::new(gpu, spec)?;
    // host: Q, K, V, dO, the read-back dQ, dK, dV (and the oracle's below its size bound)
    let floats = (3u64 * s.q_len() as u64).saturating_add(4u64.saturating_mul(s.kv_len() as u64));
    crate::runtime::host::check_bytes(
        "the backward benchmark's inputs and gradients",
        floats.saturating_mul(4),
    )?;
    let (q, k, v) = seeded_qkv(spec, 0xbac4);
    let d_o = crate::contract::inputs::seeded(s.q_len(), 0xbac5);
    let io = DeviceTensors::upload(gpu, spec, &q, &k, &v)?;
    let grads = GradTensors::upload(gpu, spec, &d_o)?;
    grads.poison(gpu);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    fwd.encode(gpu, &mut enc, &io.buffers())?;
    bwd.encode(gpu, &mut enc, &grads.buffers(&io))?;
    gpu.queue.submit([enc.finish()]);
    let got = grads.read(gpu)?;
    if s.batch * s.heads * s.n * s.m <= BACKWARD_ORACLE_MAX {
        let (dq, dk, dv) = crate::contract::reference::attention_backward_f64(spec, &q, &k, &v, &d_o)?;
        let e = rel_error(&got.dq, &dq).max(rel_error(&got.dk, &dk)).max(rel_error(&got.dv, &dv));
        r.rel_err = Some(e);
    }
    let (q_bytes, kv_bytes) = (4 * s.q_len() as u64, 4 * s.kv_len() as u64);
    let tensors = 4 * q_bytes + 4 * kv_bytes + 4 * s.lse_len() as u64;
    r.device_bytes = tensors + fwd.scratch_bytes() + bwd.scratch_bytes();
    r.bwd_traffic_model_bytes = bwd.traffic().map_or(0, |t| t.total());

    let both = time_encoded(gpu, 1, reps, |enc, _, timer| {
        fwd.encode_timed(gpu, enc, &io.buffers(), timer.map(GpuTimer::begin))?;
        bwd.encode_timed(gpu, enc, &grads.buffers(&io), timer.map(GpuTimer::end))
    })?;
    let fwd_t = time_encoded(gpu, 1, reps, |enc, _, timer| {
        fwd.encode_timed(gpu, enc, &io.buffers(), timer.map(GpuTimer::writes))
    })?;
    let bwd_t = time_encoded(gpu, 1, reps, |enc, _, timer| {
        bwd.encode_timed(gpu, enc, &grads.buffers(&io), timer.map(GpuTimer::writes))
    })?;
    r.timer = both.timer.into();
    let gflops = |flops: f64, ms: f64| flops / (ms * 1e-3) / 1e9;
    let f = r.fwd_flops;
    r.fwd_ms = Some(fwd_t.median());
    r.bwd_ms = Some(bwd_t.median());
    r.fwd_bwd_ms = Some(both.median());
    r.fwd_gflops = Some(gflops(f, fwd_t.median()));
    r.bwd_gflops = Some(gflops(BACKWARD_FLOP_FACTOR * f, bwd_t.median()));
    r.fwd_bwd_gflops = Some(gflops((1.0 + BACKWARD_FLOP_FACTOR) * f, both.median()));

    // the materialised baseline on the same tensors, where the device allows it
    match Backward::naive(gpu, spec) {
        Ok(naive) => {
            grads.poison(gpu);
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            naive.encode(gpu, &mut enc, &grads.buffers(&io))?;
            gpu.queue.submit([enc.finish()]);
            let n = grads.read(gpu)?;
            let e = |a: &[f32], b: &[f32]| rel_error(a, &b.iter().map(|&x| x as f64).collect::<Vec<f64>>());
            // against the tiled backward's gradients (both were checked against the oracle in tests)
            r.naive_rel_err = Some(e(&n.dq, &got.dq).max(e(&n.dk, &got.dk)).max(e(&n.dv, &got.dv)));
            r.naive_device_bytes = Some(tensors + fwd.scratch_bytes() + naive.scratch_bytes());
            let t = time_encoded(gpu, 1, reps, |enc, _, timer| {
                naive.encode_timed(gpu, enc, &grads.buffers(&io), timer.map(GpuTimer::writes))
            })?;
            r.naive_bwd_ms = Some(t.median());
        }
        Err(e) => r.naive_skipped = Some(e.to_string()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponent_of_a_power_law() {
        let pts: Vec<_> = [1.0, 2.0, 4.0, 8.0].iter().map(|&x: &f64| (x, 3.0 * x.powf(1.5))).collect();
        assert!((fitted_exponent(&pts).unwrap() - 1.5).abs() < 1e-12);
        assert_eq!(fitted_exponent(&pts[..1]), None);
    }

    #[test]
    fn a_rung_fits_only_with_its_tail() {
        // 10 s spent, the last rung took 2 s and its tail 1 s: the next (2× N) is predicted 12 s.
        assert!(rung_fits(10.0, 2.0, 1.0, 2.0, 22.0));
        assert!(!rung_fits(10.0, 2.0, 1.0, 2.0, 21.9));
        assert!(!rung_fits(0.0, 2.0, 0.0, 2.0, 7.9));
    }

    #[test]
    fn median_of_even_and_odd() {
        let t = Timing { samples_ms: vec![3.0, 1.0, 2.0], timer: "wall" };
        assert_eq!((t.median(), t.min(), t.max()), (2.0, 1.0, 3.0));
        let t = Timing { samples_ms: vec![4.0, 1.0, 2.0, 3.0], timer: "wall" };
        assert_eq!(t.median(), 2.5);
    }
}
