//! Ring attention measured: one rank's job (its shard, the forward and backward around the
//! ring, sampled rows and gradients against the f64 oracle) as a [`RankReport`], the bytes a
//! rank should send, and the same problem on one device. The CLI (`longctx ring`) renders.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::contract::reference::{attention_backward_f64, attention_rows_f64, rel_error};
use crate::error::{Error, Result};
use crate::kernels::attention::backward::{Backward, GradTensors};
use crate::parallel::ring::{self, RankOutput, Shard, StepStats};
use crate::parallel::schedule::{RingSchedule, take_rows};
use crate::parallel::transport::Transport;
use crate::{Attention, AttnSpec, DeviceTensors, Gpu, Kernel};

/// The relative error of a rank's rows or gradients above which its run fails.
pub const BOUND: f64 = 1e-5;

/// What one rank measures.
#[derive(Clone, Copy, Debug)]
pub struct RankJob {
    /// Also run the backward (dQ, dK, dV) around the ring.
    pub backward: bool,
    /// Output rows checked against the f64 oracle (0: none; the oracle needs the whole K, V).
    pub check_rows: usize,
}

/// What a rank reports to rank 0.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RankReport {
    /// The rank.
    pub rank: usize,
    /// Preparing its calls (pipelines, block maps), milliseconds.
    pub prepare_ms: f64,
    /// The forward ring, from its first step to its last, milliseconds.
    pub forward_ms: f64,
    /// One block's transfer on its own (not overlapped), milliseconds.
    pub transfer_ms: f64,
    /// The backward ring, milliseconds (when run).
    pub backward_ms: Option<f64>,
    /// Per forward step: compute, wait, bytes sent, visible pairs.
    pub steps: Vec<StepStats>,
    /// Per backward step.
    pub backward_steps: Vec<StepStats>,
    /// Device memory the rank allocated.
    pub device_bytes: u64,
    /// Worst relative error of its sampled output rows against the f64 oracle.
    pub check_rel_err: Option<f64>,
    /// Worst of this rank's dQ, dK, dV chunks against the f64 oracle (small problems only).
    pub backward_rel_err: Option<f64>,
}

/// One rank's whole job: its shard, the forward (and backward), the check of sampled rows.
pub fn rank_job(gpu: &Gpu, t: &mut dyn Transport, plan: &RingSchedule, job: RankJob) -> Result<RankReport> {
    let r = t.rank();
    let shard = Shard::hashed(plan, r);
    let t0 = Instant::now();
    let fwd = ring::forward(gpu, t, plan, &shard)?;
    // the ring itself: from the first step to the last (the calls were prepared before)
    let forward_ms = (t0.elapsed().as_secs_f64() - fwd.prepare_s - fwd.transfer_s) * 1e3;
    // the whole inputs for the oracle, made once (the shard is a slice of them)
    let whole = if job.check_rows > 0 {
        let s = plan.spec.shape;
        crate::runtime::host::check_bytes(
            "the oracle's whole Q, K, V and dO (--check-rows 0 skips the check)",
            ((2 * s.q_len() + 2 * s.kv_len()) as u64).saturating_mul(4),
        )?;
        Some(ring::hashed_inputs(&plan.spec))
    } else {
        None
    };
    let (mut backward_ms, mut backward_steps, mut backward_rel_err) = (None, Vec::new(), None);
    if job.backward {
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
        Some([q, k, v, _]) => Some(check(plan, r, &fwd, job.check_rows, q, k, v)?),
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
) -> Result<f64> {
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
pub fn single_device(gpu: &Gpu, spec: &AttnSpec, backward: bool) -> Result<(f64, Option<f64>)> {
    let [q, k, v, d_o] = ring::hashed_inputs(spec);
    let attn = Attention::new(gpu, Kernel::Flash, spec)?;
    let io = DeviceTensors::upload(gpu, spec, &q, &k, &v)?;
    // a warm-up, then the median of 3 (record only: time_wall submits and waits)
    let time = |record: &mut dyn FnMut(&mut wgpu::CommandEncoder) -> Result<()>| {
        crate::runtime::timing::time_wall(gpu, 1, 3, record).map(|t| t.median())
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

impl RankReport {
    /// Fails when the rank's rows or gradients are farther than [`BOUND`] from the oracle.
    pub fn check(&self) -> Result<()> {
        let far = |e: Option<f64>| e.is_some_and(|e| e.is_nan() || e > BOUND);
        if far(self.check_rel_err) || far(self.backward_rel_err) {
            return Err(Error::Invalid(format!(
                "rank {}: its output is {:.2e} (forward rows) / {:.2e} (gradients) from the f64 oracle (bound {BOUND:.0e})",
                self.rank,
                self.check_rel_err.unwrap_or(0.0),
                self.backward_rel_err.unwrap_or(0.0)
            )));
        }
        Ok(())
    }
}

/// The bytes rank `r` should send in the forward: K and V of every other rank's block pass
/// through it once.
pub fn sent_model(plan: &RingSchedule, r: usize) -> u64 {
    let s = plan.spec.shape;
    (1..plan.ranks)
        .map(|step| {
            let holder = plan.holder_of(r, step - 1);
            plan.owned(holder)
                .iter()
                .map(|&c| 2 * 4 * plan.chunk_len(plan.k_chunks[c].len(), s.kv_heads) as u64)
                .sum::<u64>()
        })
        .sum()
}
