//! Matmul benchmarks: C = A·B for square sizes or M×K×N shapes, 16 rows checked against the
//! f64 oracle, then timed (host clock, submit to idle: the matmul's passes take no timestamp
//! writes).

use serde::{Deserialize, Serialize};

use crate::contract::inputs::hashed;
use crate::contract::reference::rel_error;
use crate::error::{Error, Result};
use crate::kernels::matmul::{Activation, Coop, Matmul, MatmulOptions, TensorCores, matmul_f64};
use crate::runtime::Gpu;
use crate::runtime::timing::time_wall;

/// What one matmul measured.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MatmulRecord {
    /// M, K, N of C [M, N] = A [M, K]·B [K, N].
    pub shape: [usize; 3],
    /// The kernel that ran (`vec4 tiles`, `register-blocked` or `coop S×S …`).
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

/// `512` (a square size, as [`crate::measure::bench::parse_size`] reads it: `4k` too) or
/// `MxKxN` (`2048x128x384`): the shape of one matmul.
pub fn parse_shape(text: &str) -> Result<[usize; 3]> {
    let sizes =
        text.split(['x', 'X', '×']).map(crate::measure::bench::parse_size).collect::<Result<Vec<_>>>()?;
    match sizes[..] {
        [n] => Ok([n; 3]),
        [m, k, n] => Ok([m, k, n]),
        _ => Err(Error::Invalid(format!("matmul shape `{text}`: expected N (square) or MxKxN"))),
    }
}

/// A `[m, k, n]` matmul run as `options` allow: 16 rows checked against the f64 oracle, then
/// timed `reps` times after one warm-up; `fma_gflops` is the FMA probe's reading.
pub fn run_matmul(
    gpu: &Gpu,
    [m, k, n]: [usize; 3],
    options: MatmulOptions,
    reps: usize,
    fma_gflops: f64,
) -> Result<MatmulRecord> {
    let elems = |r: usize, c: usize| {
        r.checked_mul(c).ok_or_else(|| Error::Invalid(format!("matmul {m}×{k}×{n}: {r}×{c} overflows")))
    };
    let (a_len, b_len, c_len) = (elems(m, k)?, elems(k, n)?, elems(m, n)?);
    let mm = Matmul::with_options(gpu, m, k, n, false, Activation::None, options)?;
    crate::runtime::host::check_bytes("matmul A, B and C on the host", 4 * (a_len + b_len + c_len) as u64)?;
    let (a, b) = (hashed(a_len, 1), hashed(b_len, 2));
    // uploaded once: the first run is checked, then the same buffers are timed
    let (ab, bb) = (gpu.upload_ranged("A", &a)?, gpu.upload("B", &b)?);
    let cb = gpu.storage_ranged("C", (c_len * 4) as u64)?;
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    mm.encode(gpu, &mut enc, &ab, &bb, None, &cb)?;
    gpu.queue.submit([enc.finish()]);
    let c: Vec<f32> = gpu.read(&cb, c_len)?;
    let rows: Vec<usize> = (0..16).map(|i| i * (m - 1) / 15).collect();
    let a_rows: Vec<f32> = rows.iter().flat_map(|&r| a[r * k..(r + 1) * k].to_vec()).collect();
    let want = matmul_f64(&a_rows, &b, None, rows.len(), k, n, Activation::None);
    let got: Vec<f32> = rows.iter().flat_map(|&r| c[r * n..(r + 1) * n].to_vec()).collect();
    let rel_err = rel_error(&got, &want);
    let timing = time_wall(gpu, 1, reps, |enc| mm.encode(gpu, enc, &ab, &bb, None, &cb))?;
    let gflops = mm.flops() / (timing.median() * 1e-3) / 1e9;
    Ok(MatmulRecord {
        shape: [m, k, n],
        path: mm.path(),
        ms_median: timing.median(),
        ms_min: timing.min(),
        ms_max: timing.max(),
        gflops,
        pct_peak_fma: 100.0 * gflops / fma_gflops,
        rel_err,
    })
}

/// Every matmul path this adapter runs: the tiled vec4 kernel, the register-blocked one where
/// the profile prefers it, then f32 and f16 cooperative matrices where offered.
pub fn available_paths(gpu: &Gpu) -> Result<Vec<MatmulOptions>> {
    let with = |tensor_cores, blocked| MatmulOptions { subgroups: true, tensor_cores, blocked };
    let mut v = vec![with(TensorCores::Off, false)];
    if gpu.profile().0.per_lane_loads {
        v.push(with(TensorCores::Off, true));
    }
    if Coop::for_device(gpu, TensorCores::Exact)?.is_some() {
        v.push(with(TensorCores::Exact, true));
    }
    if Coop::for_device(gpu, TensorCores::F16).is_ok() {
        v.push(with(TensorCores::F16, true));
    }
    Ok(v)
}
