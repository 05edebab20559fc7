//! `peak`: the adapter's attainable f32 FMA rate and device-memory copy bandwidth
//! (`shaders/peak.wgsl`), measured once and cached per adapter and driver. They are the
//! denominators of "% of peak" in `longctx bench`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::runtime::cache::DiskCache;
use crate::runtime::shader::{BindGroupFields, Compiled, Shader, ShaderVariant, bind_group};
use crate::runtime::timing::{GpuTimer, Timing, time_encoded};
use crate::runtime::{Gpu, driver_of};

const NAME: &str = "peak";
/// destination, source (see peak.wgsl).
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/peak.wgsl"), bindings: PeakBinds::SLOTS };
bind_group! {
    /// The probes' destination and source.
    struct PeakBinds { 0 dst: ReadWrite, 1 src: Read }
}
/// `<user cache dir>/longctx/peak.json`.
const CACHE: DiskCache = DiskCache { file: "peak.json", schema: 2 };
/// How many times this reading a cached best may be and still be believed.
const BELIEVABLE: f64 = 8.0;
/// FMA steps per invocation per chain.
pub const ITERS: u32 = 2048;
const FMA_GROUPS: [u32; 2] = [1024, 2];
/// Copy probe size: 32 MiB read, 32 MiB written.
const COPY_BYTES: u64 = 32 << 20;

/// Probe results.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// Name of the adapter measured.
    pub adapter: String,
    /// Its driver and version, as [`Gpu::driver`] gives them.
    pub driver: String,
    /// f32 FLOP/s of independent FMA chains, in GFLOP/s (an FMA counts 2).
    pub fma_gflops: f64,
    /// Copy bandwidth counting bytes read + written, in GB/s (1e9).
    pub copy_gbps: f64,
    /// How the time was taken: `timestamp` or `wall` (see [`Timing::timer`]).
    pub timer: String,
    /// When the newest reading was taken: RFC 3339, UTC, to the second.
    pub measured_at: String,
    /// Readings the figures are the best of ([`best_reading`]).
    #[serde(default = "one")]
    pub readings: u32,
}

fn one() -> u32 {
    1
}

impl Peak {
    /// Per figure, the better of two readings of the same adapter: a probe that ran while the
    /// machine was busy reads low, never high.
    fn best(self, other: Peak) -> Peak {
        Peak {
            fma_gflops: self.fma_gflops.max(other.fma_gflops),
            copy_gbps: self.copy_gbps.max(other.copy_gbps),
            readings: self.readings + other.readings,
            ..other
        }
    }
}

/// The probe's shader variants (for validation).
pub fn variants() -> Vec<ShaderVariant> {
    ["fma_probe", "copy_probe"]
        .into_iter()
        .map(|entry| SHADER.variant(entry, &[], vec![("ITERS", ITERS)]))
        .collect()
}

fn time_pass(
    gpu: &Gpu,
    kernel: &Compiled,
    bind: &wgpu::BindGroup,
    groups: [u32; 2],
    reps: usize,
) -> Result<Timing> {
    time_encoded(gpu, 1, reps, |enc, _, timer| {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some(NAME),
            timestamp_writes: timer.map(GpuTimer::writes),
        });
        kernel.dispatch(&mut pass, bind, [groups[0], groups[1], 1]);
        Ok(())
    })
}

/// Runs both probes (median of `reps`).
pub fn measure(gpu: &Gpu, reps: usize) -> Result<Peak> {
    let [fma, copy]: [ShaderVariant; 2] =
        variants().try_into().map_err(|_| Error::Device("peak: expected two probes".into()))?;
    let fma_p = gpu.compile(&fma)?;
    let copy_p = gpu.compile(&copy)?;
    let dst = gpu.storage("peak dst", COPY_BYTES)?;
    let src = gpu.upload("peak src", &vec![1.0f32; (COPY_BYTES / 4) as usize])?;
    let bind = fma_p.bind(gpu, &PeakBinds { dst: (&dst).into(), src: (&src).into() });

    gpu.check_dispatch(NAME, [FMA_GROUPS[0] as u64, FMA_GROUPS[1] as u64, 1])?;
    let t = time_pass(gpu, &fma_p, &bind, FMA_GROUPS, reps)?;
    let invocations = (FMA_GROUPS[0] * FMA_GROUPS[1] * 64) as f64;
    let fma_gflops = invocations * ITERS as f64 * 8.0 * 4.0 * 2.0 / (t.median() * 1e-3) / 1e9;

    let vec4s = COPY_BYTES / 16;
    let [gx, gy, _] = gpu.grid("peak copy", vec4s.div_ceil(64))?;
    let c = time_pass(gpu, &copy_p, &bind, [gx, gy], reps)?;
    let copy_gbps = 2.0 * COPY_BYTES as f64 / (c.median() * 1e-3) / 1e9;

    let info = gpu.info();
    Ok(Peak {
        adapter: info.name.clone(),
        driver: driver_of(info),
        fma_gflops,
        copy_gbps,
        timer: t.timer.to_string(),
        measured_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        readings: 1,
    })
}

/// Where probe results are cached: `<user cache dir>/longctx/peak.json` (a list).
pub fn cache_path() -> Option<PathBuf> {
    CACHE.path()
}

/// The cached probe for this adapter and driver, if any and if it is plausible: figures
/// positive, finite and below 10 PFLOP/s and 100 TB/s, text free of control characters
/// (an implausible entry is ignored with a warning naming the cache file).
pub fn cached(gpu: &Gpu) -> Option<Peak> {
    let info = gpu.info();
    let driver = driver_of(info);
    let p = CACHE.load::<Peak>().into_iter().find(|p| p.adapter == info.name && p.driver == driver)?;
    let figure = |x: f64, max: f64| x.is_finite() && x > 0.0 && x < max;
    let text = |s: &str| !s.chars().any(char::is_control);
    if figure(p.fma_gflops, 1e7) && figure(p.copy_gbps, 1e5) && text(&p.timer) && text(&p.measured_at) {
        return Some(p);
    }
    log::warn!(
        "ignoring an implausible cached peak in {} (delete it; it is measured again)",
        cache_path().map_or_else(|| "the peak cache".into(), |p| p.display().to_string())
    );
    None
}

/// Stores `peak`, replacing an entry for the same adapter and driver (atomic write).
pub fn store(peak: &Peak) -> Result<()> {
    CACHE.upsert(peak.clone(), |p| p.adapter == peak.adapter && p.driver == peak.driver)
}

/// The denominators of "% of peak", honestly: probes now (about a second, in this process)
/// and keeps, per figure, the best of this reading and the cached ones, so a contended reading
/// never lowers the peak; the merged result is cached.
pub fn best_reading(gpu: &Gpu) -> Result<Peak> {
    keep_best(gpu, measure(gpu, 5)?)
}

/// Merges reading `now` into the cached best for this adapter and driver, stores and returns
/// the result.
pub fn keep_best(gpu: &Gpu, now: Peak) -> Result<Peak> {
    // a cached figure must be positive, finite and within BELIEVABLE× of this reading: a busy
    // machine was seen to read 3.8× low, never high, so anything further off is a corrupt or
    // foreign entry and is dropped rather than kept as the peak forever
    let believable = |cached: f64, now: f64| cached.is_finite() && cached > 0.0 && cached <= now * BELIEVABLE;
    let best = match cached(gpu) {
        Some(before)
            if believable(before.fma_gflops, now.fma_gflops)
                && believable(before.copy_gbps, now.copy_gbps) =>
        {
            before.best(now)
        }
        Some(before) => {
            log::warn!(
                "ignoring the cached peak {:.1} GFLOP/s, {:.1} GB/s in {}: not believable beside this reading ({:.1}, {:.1})",
                before.fma_gflops,
                before.copy_gbps,
                cache_path().map_or_else(|| "the peak cache".into(), |p| p.display().to_string()),
                now.fma_gflops,
                now.copy_gbps
            );
            now
        }
        None => now,
    };
    store(&best)?;
    Ok(best)
}

/// The cached probe, or a fresh measurement (then cached).
pub fn cached_or_measure(gpu: &Gpu) -> Result<Peak> {
    if let Some(p) = cached(gpu) {
        return Ok(p);
    }
    let p = measure(gpu, 5)?;
    store(&p)?;
    Ok(p)
}
