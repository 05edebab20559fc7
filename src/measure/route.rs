//! CoLT5 conditional computation measured: the routed layer and its dense reference, each
//! checked against the f64 oracle (small N) and timed per branch. The CLI (`longctx route`)
//! and the app render the records.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::models::colt5::{BranchTiming, Colt5Config, Colt5Layer, Colt5Weights, colt5_f64};
use crate::runtime::Gpu;

/// Largest relative error of a layer against its f64 oracle that a run accepts.
pub const BOUND: f64 = 1e-4;
/// The largest N checked against the oracle (it is O(N²) on the host).
pub const CHECKED_UP_TO: usize = 512;

/// One branch of one layer.
#[derive(Clone, Debug, Serialize)]
pub struct RouteRecord {
    /// "CoLT5" or "dense".
    pub layer: &'static str,
    /// The branch's name.
    pub branch: &'static str,
    /// Milliseconds (host clock, the branch submitted on its own).
    pub ms: f64,
    /// FLOPs (2 per multiply-add).
    pub flops: f64,
    /// GFLOP/s.
    pub gflops: f64,
}

/// One layer's run.
#[derive(Clone, Debug)]
pub struct LayerRun {
    /// "CoLT5" or "dense".
    pub layer: &'static str,
    /// Its branches.
    pub branches: Vec<RouteRecord>,
    /// Relative error against the f64 oracle (N ≤ [`CHECKED_UP_TO`]).
    pub rel_err: Option<f64>,
    /// The routed token indices (q, kv, ffn) of the CoLT5 layer; empty for the dense one.
    pub routed: Vec<Vec<u32>>,
}

impl LayerRun {
    /// Milliseconds and FLOPs over the branches.
    pub fn totals(&self) -> (f64, f64) {
        (self.branches.iter().map(|b| b.ms).sum(), self.branches.iter().map(|b| b.flops).sum())
    }
}

/// The CoLT5 layer, then its dense reference, on `x` `[N, d_model]`: a warm-up run, the
/// check against the f64 oracle (an error above [`BOUND`] fails), then a timed run.
pub fn run_route(gpu: &Gpu, cfg: &Colt5Config, weights: &Colt5Weights, x: &[f32]) -> Result<[LayerRun; 2]> {
    let one = |layer: &'static str, dense: bool| -> Result<LayerRun> {
        let l = Colt5Layer::new(gpu, cfg, weights, dense)?;
        l.forward(gpu, x)?; // warm-up: compile and upload
        let (out, timings) = l.forward(gpu, x)?;
        let rel_err = if cfg.n <= CHECKED_UP_TO {
            let err = crate::contract::reference::rel_error(&out, &colt5_f64(cfg, weights, x, dense));
            if err.is_nan() || err > BOUND {
                return Err(Error::Invalid(format!(
                    "{layer}: rel err {err:.2e} against the f64 oracle is above {BOUND:.0e}"
                )));
            }
            Some(err)
        } else {
            None
        };
        let branches = timings
            .into_iter()
            .map(|BranchTiming { branch, ms, flops }| RouteRecord {
                layer,
                branch,
                ms,
                flops,
                gflops: flops / (ms * 1e-3) / 1e9,
            })
            .collect();
        let routed = if dense { Vec::new() } else { l.routed(gpu)?.to_vec() };
        Ok(LayerRun { layer, branches, rel_err, routed })
    };
    Ok([one("CoLT5", false)?, one("dense", true)?])
}
