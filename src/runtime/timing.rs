//! Timing: device timestamps where the adapter has them (else the host clock, which is a
//! software adapter's device clock), warm-up, repeats, medians. Every measurement in the
//! crate — bench, tune, the probes, decode, CoLT5 — times through here.

use web_time::Instant;

use crate::error::Result;
use crate::runtime::{Gpu, block_on};

/// Repeated timings of one configuration, in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    /// One sample per timed repeat, in milliseconds, in run order.
    pub samples_ms: Vec<f64>,
    /// How the time was taken: `"timestamp"` = device timestamps around the compute pass;
    /// `"wall"` = submit to queue idle, host clock.
    pub timer: &'static str,
}

impl Timing {
    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples_ms.clone();
        s.sort_by(f64::total_cmp);
        s
    }
    /// The median sample (mean of the middle two for an even count); NaN when empty.
    pub fn median(&self) -> f64 {
        let s = self.sorted();
        let n = s.len();
        if n == 0 {
            return f64::NAN;
        }
        if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) }
    }
    /// The fastest sample; NaN when empty.
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }
    /// The slowest sample; NaN when empty.
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// Times whatever `encode` records: `warmup` untimed runs, then `reps` timed ones (device
/// timestamps from the first pass's start to the last pass's end when the device has
/// TIMESTAMP_QUERY, else submit to idle on the host clock). `encode` gets the run index and
/// the timer, whose [`GpuTimer::begin`] / [`GpuTimer::end`] it puts on its first and last pass.
pub(crate) fn time_encoded(
    gpu: &Gpu,
    warmup: usize,
    reps: usize,
    mut encode: impl FnMut(&mut wgpu::CommandEncoder, usize, Option<&GpuTimer>) -> Result<()>,
) -> Result<Timing> {
    let timer = GpuTimer::new(gpu);
    let samples_ms = samples(warmup, reps, |i| {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        encode(&mut enc, i, timer.as_ref())?;
        if let Some(t) = &timer {
            t.resolve(&mut enc);
        }
        let wall = time_submission(gpu, enc.finish())?;
        timer.as_ref().map_or(Ok(wall), |t| t.read_ms(gpu))
    })?;
    Ok(Timing { samples_ms, timer: if timer.is_some() { "timestamp" } else { "wall" } })
}

/// The timing loop: `warmup` untimed runs, then `reps` runs whose milliseconds `run` returns
/// (it gets the run index).
fn samples(warmup: usize, reps: usize, mut run: impl FnMut(usize) -> Result<f64>) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(reps);
    for i in 0..warmup + reps {
        let ms = run(i)?;
        if i >= warmup {
            out.push(ms);
        }
    }
    Ok(out)
}

/// Submits `commands` once the queue is idle and waits for them: milliseconds on the host
/// clock (a software adapter's device clock; on a GPU it includes the submission).
pub fn time_submission(gpu: &Gpu, commands: wgpu::CommandBuffer) -> Result<f64> {
    block_on("time_submission", "await time_submission_async", time_submission_async(gpu, commands))
}

/// [`time_submission`] without blocking the browser.
pub(crate) async fn time_submission_async(gpu: &Gpu, commands: wgpu::CommandBuffer) -> Result<f64> {
    gpu.wait_async().await?;
    let t0 = Instant::now();
    gpu.queue.submit([commands]);
    gpu.wait_async().await?;
    Ok(t0.elapsed().as_secs_f64() * 1e3)
}

/// Times whatever `record` records, on the host clock only (for work whose passes do not
/// take timestamp writes): `warmup` untimed runs, then `reps` timed submissions.
pub fn time_wall(
    gpu: &Gpu,
    warmup: usize,
    reps: usize,
    record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<Timing> {
    block_on("time_wall", "await time_wall_async", time_wall_async(gpu, warmup, reps, record))
}

/// [`time_wall`] without blocking the browser.
pub async fn time_wall_async(
    gpu: &Gpu,
    warmup: usize,
    reps: usize,
    mut record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<Timing> {
    let samples_ms = samples_async(warmup, reps, async |_| {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        record(&mut enc)?;
        time_submission_async(gpu, enc.finish()).await
    })
    .await?;
    Ok(Timing { samples_ms, timer: "wall" })
}

/// Times `run` on the host clock: `warmup` untimed calls, then `reps` timed ones. For work
/// that submits and waits by itself (a decode step, a whole model layer); `run` gets the
/// call index and must leave the queue idle when it returns.
pub fn time_host(warmup: usize, reps: usize, mut run: impl FnMut(usize) -> Result<()>) -> Result<Timing> {
    block_on("time_host", "await time_host_async", time_host_async(warmup, reps, async |i| run(i)))
}

/// [`time_host`] for work that awaits the GPU (`Gpu::wait_async`, `Gpu::read_async`), so
/// that it runs in the browser too.
pub(crate) async fn time_host_async(
    warmup: usize,
    reps: usize,
    mut run: impl AsyncFnMut(usize) -> Result<()>,
) -> Result<Timing> {
    let samples_ms = samples_async(warmup, reps, async |i| {
        let t0 = Instant::now();
        run(i).await?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    })
    .await?;
    Ok(Timing { samples_ms, timer: "wall" })
}

/// [`samples`] for runs that await.
async fn samples_async(
    warmup: usize,
    reps: usize,
    mut run: impl AsyncFnMut(usize) -> Result<f64>,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(reps);
    for i in 0..warmup + reps {
        let ms = run(i).await?;
        if i >= warmup {
            out.push(ms);
        }
    }
    Ok(out)
}

/// Device-side timing of one compute pass with TIMESTAMP_QUERY: two timestamps, resolved and
/// read back in nanoseconds.
pub struct GpuTimer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    period_ns: f64,
}

impl GpuTimer {
    /// `None` when the device lacks TIMESTAMP_QUERY, and on CPU adapters: there the host
    /// clock is the device's clock, and lavapipe's timestamps were seen to come back 30×
    /// too short on a device created by eframe (while matching the wall clock on one created
    /// by longctx) — so software adapters are timed by the wall clock, and records say so.
    pub fn new(gpu: &Gpu) -> Option<Self> {
        if !gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY)
            || gpu.info().device_type == wgpu::DeviceType::Cpu
        {
            return None;
        }
        let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("longctx timer"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("longctx timer resolve"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(Self { queries, resolve, period_ns: gpu.queue.get_timestamp_period() as f64 })
    }

    /// Timestamp writes for the pass to be timed.
    pub fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// Timestamp write at the start of a pass only (the first of several timed passes).
    pub fn begin(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: None,
        }
    }

    /// Timestamp write at the end of a pass only (the last of several timed passes).
    pub fn end(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: None,
            end_of_pass_write_index: Some(1),
        }
    }

    /// Records the resolve; call after the timed pass, in the same encoder.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.queries, 0..2, &self.resolve, 0);
    }

    /// Milliseconds between the two timestamps of the last submitted run.
    pub(crate) fn read_ms(&self, gpu: &Gpu) -> Result<f64> {
        let t: Vec<u64> = gpu.read(&self.resolve, 2)?;
        Ok(t[1].saturating_sub(t[0]) as f64 * self.period_ns / 1e6)
    }
}
