//! Learned sparse attention against dense causal flash in the same run (`longctx bench
//! --sparse moba`): the selection stage and the attention over its choice timed separately,
//! their FLOPs counted separately, sampled rows checked against the f64 oracle on the GPU's
//! choice.

use serde::{Deserialize, Serialize};

use crate::contract::inputs::seeded_qkv;
use crate::contract::selection::Moba;
use crate::contract::spec::AttnSpec;
use crate::error::Result;
use crate::kernels::attention::DeviceTensors;
use crate::kernels::attention::sparse::SparseAttention;
use crate::kernels::selection::select_lists;
use crate::kernels::{Attention, Kernel};
use crate::measure::bench::{INPUT_SEED, spot_error};
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
    /// Worst relative error of O over sampled rows against the f64 oracle on the GPU's choice.
    pub rel_err: Option<f64>,
    /// Timed repeats (after one warm-up), wall clock from submission to completion.
    pub reps: usize,
    /// Why the configuration was not measured.
    pub skipped: Option<String>,
}

impl SparseRecord {
    /// Dense time over the sparse total (selection + attention).
    pub fn speedup(&self) -> Option<f64> {
        Some(self.dense_ms? / (self.select_ms? + self.attend_ms?))
    }
}

/// MoBA `moba` on `spec` (one sequence, causal added) against dense causal flash: validated
/// on sampled rows, then `reps` timed runs of each stage. A failure becomes `skipped`.
pub fn run_moba(gpu: &Gpu, spec: &AttnSpec, moba: &Moba, reps: usize) -> SparseRecord {
    let s = spec.shape;
    let mut r = SparseRecord {
        method: "moba".into(),
        heads: s.heads,
        kv_heads: s.kv_heads,
        n: s.n,
        d: s.head_dim,
        block: moba.block,
        topk: moba.topk,
        reps,
        ..Default::default()
    };
    if let Err(e) = fill_moba(gpu, &spec.clone().causal(true), moba, reps, &mut r) {
        r.skipped = Some(e.to_string());
    }
    r
}

fn fill_moba(gpu: &Gpu, spec: &AttnSpec, moba: &Moba, reps: usize, r: &mut SparseRecord) -> Result<()> {
    let s = spec.shape;
    moba.check(&s)?;
    let kernel = SparseAttention::new(gpu, spec, moba.block, moba.topk)?;
    let dense = Attention::new(gpu, Kernel::Flash, spec)?;
    let (q, k, v) = seeded_qkv(spec, INPUT_SEED);
    let io = DeviceTensors::upload(gpu, spec, &q, &k, &v)?;
    io.poison(gpu);
    // validate: sampled rows of the output against the oracle on the GPU's choice
    let (lists_buf, lists) = select_lists(gpu, spec, moba, &io.q, &io.k)?;
    kernel.run(gpu, &io, &lists, &lists_buf)?;
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
        kernel.run(gpu, &io, &lists, &lists_buf)?;
        gpu.wait()
    })?;
    let dense = time_wall(gpu, 1, reps, |enc| dense.encode(gpu, enc, &io.buffers()))?;
    (r.select_ms, r.attend_ms, r.dense_ms) =
        (Some(select.median()), Some(attend.median()), Some(dense.median()));
    Ok(())
}
