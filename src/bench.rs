//! Measuring: timing (device timestamps or wall clock; warm-up, repeats, median), fitted
//! exponents, and the machine-readable record `longctx bench --json` writes.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gpu::{Gpu, GpuTimer};
use crate::kernels::{Attention, DeviceTensors};

/// Repeated timings of one configuration, in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
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
    pub fn median(&self) -> f64 {
        let s = self.sorted();
        let n = s.len();
        if n == 0 {
            return f64::NAN;
        }
        if n % 2 == 1 { s[n / 2] } else { 0.5 * (s[n / 2 - 1] + s[n / 2]) }
    }
    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }
    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }
}

/// Runs `attn` `warmup` times untimed, then `reps` times. Each run is timed on the device
/// (timestamps around the kernel's compute pass) when the device has TIMESTAMP_QUERY, else
/// submit-to-idle on the host clock; [`Timing::timer`] says which. Inputs stay resident.
pub fn time_attention(
    gpu: &Gpu,
    attn: &Attention,
    io: &DeviceTensors,
    warmup: usize,
    reps: usize,
) -> Result<Timing> {
    let timer = GpuTimer::new(gpu);
    let mut samples_ms = Vec::with_capacity(reps);
    for i in 0..warmup + reps {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        attn.encode_timed(gpu, &mut enc, &io.buffers(), timer.as_ref().map(GpuTimer::writes))?;
        if let Some(t) = &timer {
            t.resolve(&mut enc);
        }
        let cmd = enc.finish();
        gpu.wait()?;
        let t0 = Instant::now();
        gpu.queue.submit([cmd]);
        gpu.wait()?;
        let wall = t0.elapsed().as_secs_f64() * 1e3;
        if i >= warmup {
            samples_ms.push(match &timer {
                Some(t) => t.read_ms(gpu)?,
                None => wall,
            });
        }
    }
    Ok(Timing { samples_ms, timer: if timer.is_some() { "timestamp" } else { "wall" } })
}

/// Least-squares slope of `ln y` against `ln x`: the exponent `k` in `y ∝ x^k`.
pub fn fitted_exponent(points: &[(f64, f64)]) -> Option<f64> {
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

/// One benchmark result, as `longctx bench --json` writes it (one object per configuration).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub kernel: String,
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub n: usize,
    pub m: usize,
    pub d: usize,
    pub mask: String,
    /// Set when the configuration could not run (e.g. beyond a device limit); timings are then absent.
    pub skipped: Option<String>,
    /// `timestamp` (device) or `wall` (host clock, submit to idle).
    pub timer: String,
    pub reps: usize,
    pub ms_median: Option<f64>,
    pub ms_min: Option<f64>,
    pub ms_max: Option<f64>,
    /// Forward FLOPs counted as 4·B·D·(visible query-key pairs over heads).
    pub flops: f64,
    pub flop_convention: String,
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
    pub traffic_convention: String,
    /// Modelled traffic / median time.
    pub gbps: Option<f64>,
    /// Percent of the adapter's copy-bandwidth probe, when known.
    pub pct_peak_copy: Option<f64>,
    /// Relative error of the output against `reference`, checked before timing.
    pub rel_err: Option<f64>,
    pub reference: String,
    pub adapter: String,
    pub backend: String,
    pub driver: String,
    pub git_commit: String,
    pub longctx_version: String,
    pub timestamp: String,
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
    fn median_of_even_and_odd() {
        let t = Timing { samples_ms: vec![3.0, 1.0, 2.0], timer: "wall" };
        assert_eq!((t.median(), t.min(), t.max()), (2.0, 1.0, 3.0));
        let t = Timing { samples_ms: vec![4.0, 1.0, 2.0, 3.0], timer: "wall" };
        assert_eq!(t.median(), 2.5);
    }
}
