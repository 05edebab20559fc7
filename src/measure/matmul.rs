//! Matmul benchmarks: C = A·B for square sizes, 16 rows checked against the f64 oracle, then
//! timed (host clock, submit to idle: the matmul's passes take no timestamp writes).

use serde::{Deserialize, Serialize};

use crate::contract::inputs::hashed;
use crate::contract::reference::rel_error;
use crate::error::{Error, Result};
use crate::kernels::matmul::{Activation, Coop, Matmul, MatmulOptions, TensorCores, matmul_f64};
use crate::runtime::Gpu;
use crate::runtime::timing::time_wall;

/// What one square matmul measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MatmulRecord {
    /// M = K = N.
    pub n: usize,
    /// The kernel that ran (`vec4 …` or `coop S×S …`).
    pub path: String,
    /// Milliseconds: median, fastest, slowest.
    pub ms_median: f64,
    /// Fastest repeat.
    pub ms_min: f64,
    /// Slowest repeat.
    pub ms_max: f64,
    /// 2·M·K·N over the median.
    pub gflops: f64,
    /// `gflops` as a share of the FMA probe.
    pub pct_peak_fma: f64,
    /// 16 rows of C against the f64 oracle.
    pub rel_err: f64,
}

/// An `n`³ matmul on `path`: checked, then timed `reps` times after one warm-up;
/// `fma_gflops` is the FMA probe's reading.
pub fn run_matmul(
    gpu: &Gpu,
    n: usize,
    path: TensorCores,
    reps: usize,
    fma_gflops: f64,
) -> Result<MatmulRecord> {
    let elems = n.checked_mul(n).ok_or_else(|| Error::Invalid(format!("matmul {n}×{n} overflows")))?;
    let options = MatmulOptions { subgroups: true, tensor_cores: path };
    let mm = Matmul::with_options(gpu, n, n, n, false, Activation::None, options)?;
    let (a, b) = (hashed(elems, 1), hashed(elems, 2));
    let c = mm.run(gpu, &a, &b, None)?;
    let rows: Vec<usize> = (0..16).map(|i| i * (n - 1) / 15).collect();
    let a_rows: Vec<f32> = rows.iter().flat_map(|&r| a[r * n..(r + 1) * n].to_vec()).collect();
    let want = matmul_f64(&a_rows, &b, None, rows.len(), n, n, Activation::None);
    let got: Vec<f32> = rows.iter().flat_map(|&r| c[r * n..(r + 1) * n].to_vec()).collect();
    let rel_err = rel_error(&got, &want);
    let (ab, bb) = (gpu.upload("A", &a)?, gpu.upload("B", &b)?);
    let cb = gpu.storage("C", (elems * 4) as u64)?;
    let timing = time_wall(gpu, 1, reps, |enc| mm.encode(gpu, enc, &ab, &bb, None, &cb))?;
    let gflops = mm.flops() / (timing.median() * 1e-3) / 1e9;
    Ok(MatmulRecord {
        n,
        path: mm.path(),
        ms_median: timing.median(),
        ms_min: timing.min(),
        ms_max: timing.max(),
        gflops,
        pct_peak_fma: 100.0 * gflops / fma_gflops,
        rel_err,
    })
}

/// Every matmul path this adapter runs: the vec4 kernel, then f32 and f16 cooperative
/// matrices where offered.
pub fn available_paths(gpu: &Gpu) -> Result<Vec<TensorCores>> {
    let mut v = vec![TensorCores::Off];
    if Coop::for_device(gpu, TensorCores::Exact)?.is_some() {
        v.push(TensorCores::Exact);
    }
    if Coop::for_device(gpu, TensorCores::F16).is_ok() {
        v.push(TensorCores::F16);
    }
    Ok(v)
}
