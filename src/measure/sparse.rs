//! Learned sparse attention against dense causal flash in the same run (`longctx bench
//! --sparse moba [--backward]`): the selection stage and the attention over its choice timed
//! separately, their FLOPs counted separately, sampled rows checked against the f64 oracle on
//! the GPU's choice; with the backward, the block-list backward against flash's; with
//! `--decode`, a decoding step with MoBA's or NSA's choice against dense decoding.

use serde::{Deserialize, Serialize};

use crate::contract::AttnShape;
use crate::contract::dsa::{Dsa, Indexer, dsa_dq_rows_f64, dsa_rows_f64};
use crate::contract::inputs::{seeded, seeded_qkv};
use crate::contract::nsa::{Nsa, nsa_dq_rows_f64, nsa_rows_f64};
use crate::contract::reference::rel_error;
use crate::contract::selection::{Moba, NONE};
use crate::contract::spec::AttnSpec;
use crate::error::Result;
use crate::kernels::attention::DeviceTensors;
use crate::kernels::attention::backward::{Backward, GradTensors};
use crate::kernels::attention::decode::{Decoder, DecoderConfig};
use crate::kernels::attention::sparse::SparseAttention;
use crate::kernels::attention::sparse_backward::SparseBackward;
use crate::kernels::dsa::{DeviceInverse, DsaAttention, DsaListBackward, ListGradBuffers, inverse_lists};
use crate::kernels::nsa::{NsaAttention, NsaBackward};
use crate::kernels::selection::{block_means_on, choose_on, select_lists};
use crate::kernels::{Attention, Kernel};
use crate::measure::bench::{INPUT_SEED, SPOT_ROWS, spot_error, spot_grad_error, spot_rows};
use crate::runtime::Gpu;
use crate::runtime::timing::{time_host, time_wall};

/// One MoBA configuration against dense causal flash (`longctx bench --sparse moba --json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseRecord {
    /// "moba".
    pub method: String,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Sequence length N (= M).
    pub n: usize,
    /// Head dim D.
    pub d: usize,
    /// Keys per block.
    pub block: usize,
    /// Blocks per query.
    pub topk: usize,
    /// Selection (block means, gate scores, top-k, the lists read back), median ms.
    pub select_ms: Option<f64>,
    /// Attention over the lists (grouping on the host, the kernel, the merge), median ms.
    pub attend_ms: Option<f64>,
    /// Dense causal flash on the same inputs, median ms.
    pub dense_ms: Option<f64>,
    /// Query-key pairs the sparse attention visits (over heads).
    pub sparse_pairs: u64,
    /// Causal's visible pairs (over heads).
    pub dense_pairs: u64,
    /// Selection FLOPs: block means (Hkv·M·D adds) and gate scores (2·D per query and block).
    pub select_flops: f64,
    /// Attention FLOPs: 4·D per visited pair.
    pub attend_flops: f64,
    /// The block-list backward (dQ, dK, dV on the forward's lists), median ms; with --backward.
    #[serde(default)]
    pub backward_ms: Option<f64>,
    /// Flash's backward of dense causal attention on the same inputs, median ms.
    #[serde(default)]
    pub dense_backward_ms: Option<f64>,
    /// Relative error of dQ over sampled rows against the f64 oracle on the GPU's choice; with
    /// --backward.
    #[serde(default)]
    pub grad_err: Option<f64>,
    /// Worst relative error of O over sampled rows against the f64 oracle on the GPU's choice.
    pub rel_err: Option<f64>,
    /// Timed repeats (after one warm-up), wall clock from submission to completion.
    pub reps: usize,
    /// Why the configuration was not measured.
    pub skipped: Option<String>,
    /// The method's parameters as the CLI takes them (`block=256,topk=8`, `cmp=32/16,…`).
    #[serde(default)]
    pub config: String,
    /// Each stage's median ms, in order (NSA: compress, compressed branch, choice, selected
    /// branch, window branch, mix).
    #[serde(default)]
    pub stage_ms: Vec<(String, f64)>,
}

impl SparseRecord {
    /// Dense time over the sparse total (selection + attention).
    pub fn speedup(&self) -> Option<f64> {
        Some(self.dense_ms? / (self.select_ms? + self.attend_ms?))
    }

    /// Dense flash's backward time over the block-list backward's (the lists come from the
    /// forward, so the backward has no selection of its own).
    pub fn backward_speedup(&self) -> Option<f64> {
        Some(self.dense_backward_ms? / self.backward_ms?)
    }
}

/// MoBA `moba` on `spec` (one sequence, causal added) against dense causal flash: validated
/// on sampled rows, then `reps` timed runs of each stage, and of the backward with
/// `backward`. A failure becomes `skipped`.
pub fn run_moba(gpu: &Gpu, spec: &AttnSpec, moba: &Moba, reps: usize, backward: bool) -> SparseRecord {
    let config = format!("block={},topk={}", moba.block, moba.topk);
    measured("moba", spec, (moba.block, moba.topk, config), reps, |spec, r| {
        fill_moba(gpu, spec, moba, reps, backward, r)
    })
}

/// A record of `method` (blocks of `block`, `topk` per query, parameters `config`) on `spec`
/// made causal, filled by `fill`; its failure becomes `skipped`.
fn measured(
    method: &str,
    spec: &AttnSpec,
    (block, topk, config): (usize, usize, String),
    reps: usize,
    fill: impl FnOnce(&AttnSpec, &mut SparseRecord) -> Result<()>,
) -> SparseRecord {
    let s = spec.shape;
    let mut r = SparseRecord {
        method: method.into(),
        heads: s.heads,
        kv_heads: s.kv_heads,
        n: s.n,
        d: s.head_dim,
        block,
        topk,
        reps,
        config,
        ..Default::default()
    };
    if let Err(e) = fill(&spec.clone().causal(true), &mut r) {
        r.skipped = Some(e.to_string());
    }
    r
}

fn fill_moba(
    gpu: &Gpu,
    spec: &AttnSpec,
    moba: &Moba,
    reps: usize,
    backward: bool,
    r: &mut SparseRecord,
) -> Result<()> {
    let s = spec.shape;
    moba.check(&s)?;
    let kernel = SparseAttention::new(gpu, spec, moba.block, moba.topk)?;
    let dense = Attention::new(gpu, Kernel::Flash, spec)?;
    let (q, k, v) = seeded_qkv(spec, INPUT_SEED);
    let io = DeviceTensors::upload(gpu, spec, &q, &k, &v)?;
    io.poison(gpu);
    // validate: sampled rows of the output against the oracle on the GPU's choice
    let (lists_buf, lists) = select_lists(gpu, spec, moba, &io.q, &io.k)?;
    kernel.run(gpu, &io.buffers(), &lists, &lists_buf)?;
    let chosen = moba.spec(spec, &lists)?;
    r.rel_err = Some(spot_error(&chosen, &q, &k, &v, &io.read(gpu)?.o)?);
    r.sparse_pairs = chosen.visible_pairs();
    r.dense_pairs = spec.visible_pairs();
    let (d, blocks) = (s.head_dim, s.m.div_ceil(moba.block) as f64);
    r.select_flops = (s.kv_heads * s.m * d) as f64 + 2.0 * (s.heads * s.n * d) as f64 * blocks;
    r.attend_flops = 4.0 * d as f64 * r.sparse_pairs as f64;
    // time: the stages one after another on the same device tensors (each leaves the queue
    // idle), then dense flash
    let select = time_host(1, reps, |_| select_lists(gpu, spec, moba, &io.q, &io.k).map(drop))?;
    let attend = time_host(1, reps, |_| {
        kernel.run(gpu, &io.buffers(), &lists, &lists_buf)?;
        gpu.wait()
    })?;
    let dense = time_wall(gpu, 1, reps, |enc| dense.encode(gpu, enc, &io.buffers()))?;
    (r.select_ms, r.attend_ms, r.dense_ms) =
        (Some(select.median()), Some(attend.median()), Some(dense.median()));
    if backward {
        // the sparse forward's O and LSE again (dense flash last wrote `io`)
        kernel.run(gpu, &io.buffers(), &lists, &lists_buf)?;
        fill_backward(gpu, spec, moba, reps, (&io, &lists, &lists_buf), (&q, &k, &v), r)?;
    }
    Ok(())
}

/// NSA `nsa` on `spec` (one sequence, causal) against dense causal flash: sampled rows of the
/// mix and of the choice checked against the oracle on the GPU's choice, then `reps` timed
/// runs of each stage (select = compression + the choice with the lists read back; attend =
/// the three branches and the mix); with `backward`, NSA's backward on the forward's choice
/// (dQ of sampled rows against the oracle) against flash's dense causal backward. A failure
/// becomes `skipped`.
pub fn run_nsa(gpu: &Gpu, spec: &AttnSpec, nsa: &Nsa, reps: usize, backward: bool) -> SparseRecord {
    measured("nsa", spec, (nsa.block, nsa.topk, nsa.describe()), reps, |spec, r| {
        fill_nsa(gpu, spec, nsa, reps, backward, r)
    })
}

fn fill_nsa(
    gpu: &Gpu,
    spec: &AttnSpec,
    nsa: &Nsa,
    reps: usize,
    backward: bool,
    r: &mut SparseRecord,
) -> Result<()> {
    let s = spec.shape;
    let with_backward = backward.then(|| NsaBackward::new(gpu, spec, nsa)).transpose()?;
    let prepared;
    let call = match &with_backward {
        Some(b) => b.forward(),
        None => {
            prepared = NsaAttention::new(gpu, spec, nsa)?;
            &prepared
        }
    };
    let dense = Attention::new(gpu, Kernel::Flash, spec)?;
    let (q, k, v) = seeded_qkv(spec, INPUT_SEED);
    // gates in (0.05, 0.95), a sigmoid's range
    let gates: Vec<f32> =
        seeded(s.heads * s.n * 3, INPUT_SEED ^ 0x6a7e).iter().map(|x| 0.5 + 0.45 * x).collect();
    let t = call.upload(gpu, spec, (&q, &k, &v), &gates, None)?;
    let (lists, path) = call.run(gpu, &t)?;
    let out = call.read(gpu, &t, lists, path)?;
    let rows = spot_rows(s.heads * s.n);
    let (want, differ, ties) = nsa_rows_f64(spec, nsa, (&q, &k, &v), &gates, None, &out.lists, &rows, 1e-5)?;
    if !ties {
        return Err(crate::error::Error::Invalid(format!(
            "NSA's choice on the GPU differs from the oracle's beyond float32 ties in {differ} of {SPOT_ROWS} sampled rows"
        )));
    }
    let d = s.head_dim;
    let got: Vec<f32> = rows.iter().flat_map(|&row| out.o[row * d..][..d].iter().copied()).collect();
    r.rel_err = Some(rel_error(&got, &want));
    let pairs = nsa_pairs(spec, nsa, &out.lists);
    r.sparse_pairs = pairs.iter().sum();
    r.dense_pairs = spec.visible_pairs();
    // compression: φ over l keys for K and V; the choice: a dot product and an exp per
    // (query head, row, compressed key overlapping a candidate block), keys overlapping two
    // blocks scored in each (≈ (l′ + l − d)/l′ per visible compressed key)
    let (mc, dd) = (nsa.compressed(s.m) as f64, d as f64);
    let overlap = (nsa.block + nsa.cmp_len - nsa.cmp_stride) as f64 / nsa.block as f64;
    r.select_flops =
        4.0 * s.kv_heads as f64 * mc * nsa.cmp_len as f64 * dd + (2.0 * dd + 2.0) * pairs[0] as f64 * overlap;
    r.attend_flops = 4.0 * dd * r.sparse_pairs as f64;
    let mut stage = |name: &str, run: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let ms = time_host(1, reps, |_| {
            run()?;
            gpu.wait()
        })?
        .median();
        r.stage_ms.push((name.to_string(), ms));
        Ok(ms)
    };
    let compress = stage("compress", &mut || call.compress(gpu, &t))?;
    let cmp = stage("compressed", &mut || call.decode_compressed(gpu, &t))?;
    let choose = stage("choose", &mut || call.select(gpu, &t).map(drop))?;
    let slc = stage("selected", &mut || call.selected_branch(gpu, &t, &out.lists).map(drop))?;
    let win = stage("window", &mut || call.decode_window(gpu, &t))?;
    let mix = stage("mix", &mut || call.combine(gpu, &t))?;
    let dense_t = time_wall(gpu, 1, reps, |enc| dense.encode(gpu, enc, &t.io.buffers()))?;
    (r.select_ms, r.attend_ms, r.dense_ms) =
        (Some(compress + choose), Some(cmp + slc + win + mix), Some(dense_t.median()));
    let Some(bwd) = &with_backward else { return Ok(()) };
    // the backward on the forward's tensors (dense flash last wrote the selected branch's O
    // and LSE: the forward again first)
    call.run(gpu, &t)?;
    let d_o = seeded_qkv(spec, INPUT_SEED ^ 0x5eed).0;
    let gr = bwd.upload(gpu, spec, &d_o)?;
    bwd.run(gpu, &t, &gr, &out.lists)?;
    let grads = bwd.read(gpu, spec, &gr)?;
    let want = nsa_dq_rows_f64(spec, nsa, (&q, &k, &v), &gates, None, &out.lists, &d_o, &rows)?;
    let got: Vec<f32> = rows.iter().flat_map(|&row| grads.dq[row * d..][..d].iter().copied()).collect();
    r.grad_err = Some(rel_error(&got, &want));
    let timed = time_host(1, reps, |_| {
        bwd.run(gpu, &t, &gr, &out.lists)?;
        gpu.wait()
    })?;
    let dense_grads = GradTensors::upload(gpu, spec, &d_o)?;
    let dense_b = time_dense_backward(gpu, spec, &t.io, &dense_grads, reps)?;
    (r.backward_ms, r.dense_backward_ms) = (Some(timed.median()), Some(dense_b));
    Ok(())
}

/// DSA `dsa` on `spec` (one sequence, causal) against dense causal flash, on random indexer
/// inputs: sampled rows of the output and of the choice checked against the oracle on the
/// GPU's lists, then `reps` timed runs of each stage (select = the indexer's scores and the
/// top-k; attend = the attention over the lists). A failure becomes `skipped`.
pub fn run_dsa(gpu: &Gpu, spec: &AttnSpec, dsa: &Dsa, reps: usize, backward: bool) -> SparseRecord {
    measured("dsa", spec, (1, dsa.topk, dsa.describe()), reps, |spec, r| {
        fill_dsa(gpu, spec, dsa, reps, backward, r)
    })
}

fn fill_dsa(
    gpu: &Gpu,
    spec: &AttnSpec,
    dsa: &Dsa,
    reps: usize,
    backward: bool,
    r: &mut SparseRecord,
) -> Result<()> {
    let s = spec.shape;
    let call = DsaAttention::new(gpu, spec, dsa)?;
    let dense = Attention::new(gpu, Kernel::Flash, spec)?;
    let (q, k, v) = seeded_qkv(spec, INPUT_SEED);
    let (hi, di) = (dsa.index_heads, dsa.index_dim);
    let qi = seeded(s.batch * s.n * hi * di, INPUT_SEED ^ 0x1d);
    let ki = seeded(s.batch * s.m * di, INPUT_SEED ^ 0x2d);
    let wi = seeded(s.batch * s.n * hi, INPUT_SEED ^ 0x3d);
    let ix = Indexer { q: &qi, k: &ki, w: &wi };
    let t = call.upload(gpu, (&q, &k, &v), &ix)?;
    call.run(gpu, &t)?;
    let (out, lists) = call.read(gpu, &t)?;
    let rows = spot_rows(s.heads * s.n);
    let (want, differ, ties) = dsa_rows_f64(spec, dsa, &ix, (&q, &k, &v), &lists, &rows, 1e-5)?;
    if !ties {
        return Err(crate::error::Error::Invalid(format!(
            "DSA's choice on the GPU differs from the oracle's beyond float32 ties in {differ} of {SPOT_ROWS} sampled rows"
        )));
    }
    let d = s.head_dim;
    let got: Vec<f32> = rows.iter().flat_map(|&row| out.o[row * d..][..d].iter().copied()).collect();
    r.rel_err = Some(rel_error(&got, &want));
    let listed = lists.iter().filter(|&&j| j != NONE).count() as u64;
    r.sparse_pairs = listed * s.heads as u64;
    r.dense_pairs = spec.visible_pairs();
    // the indexer: HI dot products of DI, a ReLU and a weighted add per visible (row, key)
    let visible = r.dense_pairs as f64 / s.heads as f64;
    r.select_flops = visible * (hi * (2 * di + 2)) as f64;
    r.attend_flops = 4.0 * d as f64 * r.sparse_pairs as f64;
    let mut stage = |name: &str, run: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let ms = time_host(1, reps, |_| {
            run()?;
            gpu.wait()
        })?
        .median();
        r.stage_ms.push((name.to_string(), ms));
        Ok(ms)
    };
    let index = stage("index", &mut || call.index_scores(gpu, &t))?;
    let select = stage("index + top-k", &mut || call.select(gpu, &t))?;
    let attend = stage("attend", &mut || call.attend(gpu, &t))?;
    r.stage_ms.push(("top-k (difference)".into(), select - index));
    if backward {
        // the token-list backward on the forward's O, LSE and lists (before dense flash writes
        // its own into the same tensors); its lists transposed on the host inside the timing
        let bwd = DsaListBackward::new(gpu, spec, dsa)?;
        let d_o = seeded_qkv(spec, INPUT_SEED ^ 0x5eed).0;
        let grads = GradTensors::upload(gpu, spec, &d_o)?;
        grads.poison(gpu);
        let delta = gpu.storage("DSA Δ", s.lse_len() as u64 * 4)?;
        let offsets = gpu.storage("DSA inverse offsets", (s.batch * s.m + 1) as u64 * 4)?;
        let entries = gpu.storage("DSA inverse entries", (s.batch * s.n * dsa.topk).max(1) as u64 * 4)?;
        let run = || -> Result<()> {
            let inverse = inverse_lists(spec, dsa, &lists)?;
            inverse.write(gpu, (&offsets, &entries));
            let inverse = DeviceInverse { offsets: &offsets, entries: &entries, longest: inverse.longest };
            let b = ListGradBuffers {
                d_o: &grads.d_o,
                dq: &grads.dq,
                dk: &grads.dk,
                dv: &grads.dv,
                delta: &delta,
                inverse,
            };
            bwd.run(gpu, &t, &b)
        };
        run()?;
        let dq: Vec<f32> = grads.read(gpu)?.dq;
        let want = dsa_dq_rows_f64(spec, dsa, (&q, &k, &v), &d_o, &lists, &rows)?;
        let got: Vec<f32> = rows.iter().flat_map(|&row| dq[row * d..][..d].iter().copied()).collect();
        r.grad_err = Some(rel_error(&got, &want));
        let timed = time_host(1, reps, |_| {
            run()?;
            gpu.wait()
        })?;
        let dense_grads = GradTensors::upload(gpu, spec, &d_o)?;
        let dense_b = time_dense_backward(gpu, spec, &t.io, &dense_grads, reps)?;
        (r.backward_ms, r.dense_backward_ms) = (Some(timed.median()), Some(dense_b));
    }
    let dense_t = time_wall(gpu, 1, reps, |enc| dense.encode(gpu, enc, &t.io.buffers()))?;
    (r.select_ms, r.attend_ms, r.dense_ms) = (Some(select), Some(attend), Some(dense_t.median()));
    Ok(())
}

/// Query-key pairs each NSA branch visits (over heads): `[compressed, selected, window]`
/// (compressed keys counted as keys).
fn nsa_pairs(spec: &AttnSpec, nsa: &Nsa, lists: &[u32]) -> [u64; 3] {
    let s = spec.shape;
    let mc = nsa.compressed(s.m) as i64;
    let mut pairs = [0u64; 3];
    for (row, list) in lists.chunks_exact(nsa.topk).enumerate() {
        let p = spec.position(row % s.n);
        if p < 0 {
            continue;
        }
        let (l, d) = (nsa.cmp_len as i64, nsa.cmp_stride as i64);
        pairs[0] += if p + 1 < l { 0 } else { ((p + 1 - l) / d + 1).min(mc) as u64 };
        for &b in list.iter().filter(|&&b| b != NONE) {
            let first = b as i64 * nsa.block as i64;
            pairs[1] += ((first + nsa.block as i64).min(p + 1) - first) as u64;
        }
        pairs[2] += (p + 1).min(nsa.window as i64) as u64;
    }
    pairs
}

/// The block-list backward on the forward's lists against flash's dense causal backward:
/// sampled rows' dQ checked against the oracle on the GPU's choice, then timed.
fn fill_backward(
    gpu: &Gpu,
    spec: &AttnSpec,
    moba: &Moba,
    reps: usize,
    (io, lists, lists_buf): (&DeviceTensors, &[u32], &wgpu::Buffer),
    (q, k, v): (&[f32], &[f32], &[f32]),
    r: &mut SparseRecord,
) -> Result<()> {
    let sparse = SparseBackward::new(gpu, spec, moba.block, moba.topk)?;
    let d_o = seeded_qkv(spec, INPUT_SEED ^ 0x5eed).0;
    let grads = GradTensors::upload(gpu, spec, &d_o)?;
    grads.poison(gpu);
    // `io` holds the sparse forward's O and LSE
    sparse.run(gpu, &grads.buffers(io), lists, lists_buf)?;
    let chosen = moba.spec(spec, lists)?;
    r.grad_err = Some(spot_grad_error(&chosen, (q, k, v), &d_o, &grads.read(gpu)?.dq)?);
    let timed = time_host(1, reps, |_| {
        sparse.run(gpu, &grads.buffers(io), lists, lists_buf)?;
        gpu.wait()
    })?;
    let dense = time_dense_backward(gpu, spec, io, &grads, reps)?;
    (r.backward_ms, r.dense_backward_ms) = (Some(timed.median()), Some(dense));
    Ok(())
}

/// Flash's backward of dense causal attention on `io`'s Q, K, V into `grads`, median ms of
/// `reps` runs after a warm-up: its own forward first (the backward reads that O and LSE).
fn time_dense_backward(
    gpu: &Gpu,
    spec: &AttnSpec,
    io: &DeviceTensors,
    grads: &GradTensors,
    reps: usize,
) -> Result<f64> {
    let (forward, backward) = (Attention::new(gpu, Kernel::Flash, spec)?, Backward::new(gpu, spec)?);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    forward.encode(gpu, &mut enc, &io.buffers())?;
    gpu.queue.submit([enc.finish()]);
    Ok(time_wall(gpu, 1, reps, |enc| backward.encode(gpu, enc, &grads.buffers(io)))?.median())
}

/// One decoding step with a learned choice (MoBA's or NSA's) over a cache of `context`
/// positions against dense decode on the same context (`longctx bench --sparse moba,nsa
/// --decode --json`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseDecodeRecord {
    /// "moba" or "nsa".
    #[serde(default)]
    pub method: String,
    /// The method's parameters as the CLI takes them.
    #[serde(default)]
    pub config: String,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dim D.
    pub d: usize,
    /// Cached positions the new token attends to (its own included).
    pub context: usize,
    /// Keys per block (NSA: per selection block).
    pub block: usize,
    /// Blocks per query.
    pub topk: usize,
    /// The sparse step with its lists left on the device (MoBA: the choice over the block
    /// means, then the attention over the chosen blocks; NSA: the compressed branch, the
    /// choice, the selected branch, the window, the mix); median ms.
    #[serde(alias = "moba_ms")]
    pub sparse_ms: Option<f64>,
    /// The dense decoding step (split-K over the whole cache) at the same context; median ms.
    pub dense_ms: Option<f64>,
    /// Keys the sparse step reads over the context (per head; NSA's compressed keys count
    /// as keys).
    pub keys_fraction: f64,
    /// Relative error of the sparse step's output against the f64 oracle on its choice.
    pub rel_err: Option<f64>,
    /// Each stage of the step timed alone, median ms (NSA).
    #[serde(default)]
    pub stage_ms: Vec<(String, f64)>,
    /// Timed steps of each (after one warm-up).
    pub reps: usize,
    /// Why the configuration was not measured.
    pub skipped: Option<String>,
}

impl SparseDecodeRecord {
    /// Dense step time over the sparse one's.
    pub fn speedup(&self) -> Option<f64> {
        Some(self.dense_ms? / self.sparse_ms?)
    }
}

/// A record of `method` at `context`, filled by `fill` on the one-token causal call; its
/// failure becomes `skipped`.
fn decode_record(
    method: &str,
    (config, block, topk): (String, usize, usize),
    (heads, kv_heads, d): (usize, usize, usize),
    context: usize,
    reps: usize,
    fill: impl FnOnce(&AttnSpec, &mut SparseDecodeRecord) -> Result<()>,
) -> SparseDecodeRecord {
    let mut r = SparseDecodeRecord {
        method: method.into(),
        config,
        heads,
        kv_heads,
        d,
        context,
        block,
        topk,
        reps,
        ..Default::default()
    };
    let shape = AttnShape { batch: 1, heads, kv_heads, n: 1, m: context, head_dim: d };
    if let Err(e) = fill(&AttnSpec::new(shape).causal(true), &mut r) {
        r.skipped = Some(e.to_string());
    }
    r
}

/// A decoding step with MoBA's choice: one new token per query head at position `context` − 1
/// over a cache of `context` positions, whose completed blocks' means the cache keeps (computed
/// once, as a cache does when a block fills, and not timed); the step chooses from them,
/// reads the chosen blocks' keys only, and is checked against the oracle. Dense decoding
/// ([`Decoder`]'s split-K step) at the same context is timed in the same run. A failure
/// becomes `skipped`.
pub fn run_moba_decode(
    gpu: &Gpu,
    dims: (usize, usize, usize),
    context: usize,
    moba: &Moba,
    reps: usize,
) -> SparseDecodeRecord {
    let config = (format!("block={},topk={}", moba.block, moba.topk), moba.block, moba.topk);
    decode_record("moba", config, dims, context, reps, |spec, r| fill_moba_decode(gpu, spec, moba, reps, r))
}

fn fill_moba_decode(
    gpu: &Gpu,
    spec: &AttnSpec,
    moba: &Moba,
    reps: usize,
    r: &mut SparseDecodeRecord,
) -> Result<()> {
    let kernel = SparseAttention::new(gpu, spec, moba.block, moba.topk)?;
    let (q, k, v) = seeded_qkv(spec, INPUT_SEED);
    let io = DeviceTensors::upload(gpu, spec, &q, &k, &v)?;
    io.poison(gpu);
    let means = block_means_on(gpu, spec, moba, &io.k)?;
    // the step stays on the device: the choice, then one workgroup per chosen block
    let step = || -> Result<wgpu::Buffer> {
        let lists_buf = choose_on(gpu, spec, moba, &io.q, &means)?;
        kernel.run_on_device(gpu, &io.buffers(), &lists_buf)?;
        Ok(lists_buf)
    };
    let lists = gpu.read(&step()?, spec.shape.heads * moba.topk)?;
    let chosen = moba.spec(spec, &lists)?;
    let (o_ref, _) = crate::contract::reference::attention_f64(&chosen, &q, &k, &v)?;
    r.rel_err = Some(rel_error(&io.read(gpu)?.o, &o_ref));
    r.keys_fraction = chosen.visible_pairs() as f64 / spec.visible_pairs().max(1) as f64;
    let sparse = time_host(1, reps, |_| {
        step()?;
        gpu.wait()
    })?;
    r.sparse_ms = Some(sparse.median());
    r.dense_ms = Some(time_dense_decode(gpu, spec, (&q, &k, &v), reps)?);
    Ok(())
}

/// A decoding step with NSA's choice: one new token per query head at position `context` − 1
/// over a cache of `context` positions whose compressed keys and values the cache keeps
/// (computed once, as a cache does when each window of l keys fills, and not timed); the step
/// ([`NsaAttention::decode_step`]) runs the compressed branch, chooses, reads the chosen
/// blocks and the window, mixes, and is checked against the oracle (the choice too, up to
/// float32 ties). Dense decoding at the same context is timed in the same run. A failure
/// becomes `skipped`.
pub fn run_nsa_decode(
    gpu: &Gpu,
    dims: (usize, usize, usize),
    context: usize,
    nsa: &Nsa,
    reps: usize,
) -> SparseDecodeRecord {
    let config = (nsa.describe(), nsa.block, nsa.topk);
    decode_record("nsa", config, dims, context, reps, |spec, r| fill_nsa_decode(gpu, spec, nsa, reps, r))
}

fn fill_nsa_decode(
    gpu: &Gpu,
    spec: &AttnSpec,
    nsa: &Nsa,
    reps: usize,
    r: &mut SparseDecodeRecord,
) -> Result<()> {
    let s = spec.shape;
    let call = NsaAttention::new(gpu, spec, nsa)?;
    let (q, k, v) = seeded_qkv(spec, INPUT_SEED);
    let gates: Vec<f32> = seeded(s.heads * 3, INPUT_SEED ^ 0x6a7e).iter().map(|x| 0.5 + 0.45 * x).collect();
    let t = call.upload(gpu, spec, (&q, &k, &v), &gates, None)?;
    call.compress(gpu, &t)?;
    call.decode_step(gpu, &t)?;
    let lists = gpu.read(&t.lists, s.heads * nsa.topk)?;
    let o: Vec<f32> = gpu.read(&t.o, s.heads * s.head_dim)?;
    let rows: Vec<usize> = (0..s.heads).collect();
    let (want, differ, ties) = nsa_rows_f64(spec, nsa, (&q, &k, &v), &gates, None, &lists, &rows, 1e-5)?;
    if !ties {
        return Err(crate::error::Error::Invalid(format!(
            "NSA's choice on the GPU differs from the oracle's beyond float32 ties in {differ} of {} heads",
            s.heads
        )));
    }
    r.rel_err = Some(rel_error(&o, &want));
    r.keys_fraction = nsa_pairs(spec, nsa, &lists).iter().sum::<u64>() as f64 / (s.heads * s.m) as f64;
    let mut stage = |name: &str, run: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let ms = time_host(1, reps, |_| {
            run()?;
            gpu.wait()
        })?
        .median();
        r.stage_ms.push((name.to_string(), ms));
        Ok(ms)
    };
    stage("compressed", &mut || call.decode_compressed(gpu, &t))?;
    stage("choose", &mut || call.decode_choose(gpu, &t))?;
    stage("selected", &mut || call.selected_on_device(gpu, &t).map(drop))?;
    stage("window", &mut || call.decode_window(gpu, &t))?;
    stage("mix", &mut || call.combine(gpu, &t))?;
    r.sparse_ms = Some(stage("step", &mut || call.decode_step(gpu, &t).map(drop))?);
    r.stage_ms.pop();
    r.dense_ms = Some(time_dense_decode(gpu, spec, (&q, &k, &v), reps)?);
    Ok(())
}

/// Dense decoding's step ([`Decoder`], split-K) for the one-token call `spec`: the cache holds
/// the context but its last position, which each timed step appends; median ms of `reps`.
fn time_dense_decode(
    gpu: &Gpu,
    spec: &AttnSpec,
    (q, k, v): (&[f32], &[f32], &[f32]),
    reps: usize,
) -> Result<f64> {
    let s = spec.shape;
    let (kv_heads, d, context) = (s.kv_heads, s.head_dim, s.m);
    let mut cfg = DecoderConfig::new(s.heads, kv_heads, d, context + reps + 1);
    cfg.max_step_tokens = 1;
    let mut dec = Decoder::new(gpu, cfg)?;
    let cached = context - 1;
    let head_rows = |x: &[f32], rows: std::ops::Range<usize>| -> Vec<f32> {
        (0..kv_heads)
            .flat_map(|g| x[(g * context + rows.start) * d..(g * context + rows.end) * d].to_vec())
            .collect()
    };
    dec.prefill(gpu, 0, &head_rows(k, 0..cached), &head_rows(v, 0..cached))?;
    let (k_new, v_new) = (head_rows(k, cached..context), head_rows(v, cached..context));
    let dense = time_host(1, reps, |_| {
        dec.step(gpu, 0, q, &k_new, &v_new)?;
        gpu.wait()
    })?;
    Ok(dense.median())
}
