//! Timing kernels: warm-up, repeats, median. Used by `longctx bench`.

use std::time::Instant;

use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::{Attention, DeviceTensors};

/// Repeated timings of one configuration, in milliseconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Timing {
    pub samples_ms: Vec<f64>,
    /// How the time was taken: `"wall"` = submit to queue idle, host clock.
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

/// Runs `attn` `warmup` times untimed, then `reps` times, each submit-to-idle on the host
/// clock. Inputs stay resident; only the kernel's dispatches are inside the timed region.
pub fn time_attention(
    gpu: &Gpu,
    attn: &Attention,
    io: &DeviceTensors,
    warmup: usize,
    reps: usize,
) -> Result<Timing> {
    let mut samples_ms = Vec::with_capacity(reps);
    for i in 0..warmup + reps {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        attn.encode(gpu, &mut enc, &io.buffers())?;
        let cmd = enc.finish();
        gpu.wait()?;
        let t0 = Instant::now();
        gpu.queue.submit([cmd]);
        gpu.wait()?;
        if i >= warmup {
            samples_ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(Timing { samples_ms, timer: "wall" })
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
