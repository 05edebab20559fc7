//! Learned sparse attention against dense causal flash in the same run (`longctx bench
//! --sparse moba`): the selection stage and the attention over its choice timed separately,
//! their FLOPs counted separately, sampled rows checked against the f64 oracle on the GPU's
//! choice.

use serde::{Deserialize, Serialize};

use crate::contract::inputs::seeded_qkv;
use crate::contract::reference::{attention_rows_f64, rel_error};
use crate::contract::selection::Moba;
use crate::contract::spec::AttnSpec;
use crate::error::Result;
use crate::kernels::attention::DeviceTensors;
use crate::kernels::attention::sparse::SparseAttention;
use crate::kernels::selection::select_on;
use crate::kernels::{Attention, Kernel};
use crate::measure::bench::{INPUT_SEED, SPOT_ROWS};
use crate::runtime::Gpu;
use crate::runtime::timing::time_submission;

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

/// Median of `reps` wall-clock runs of `run` after one warm-up.
fn median_ms(reps: usize, mut run: impl FnMut() -> Result<f64>) -> Result<f64> {
    run()?;
    let mut t = (0..reps).map(|_| run()).collect::<Result<Vec<f64>>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
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
    if let Some(why) = SparseAttention::unsupported(gpu, spec, moba.block) {
        return Err(crate::Error::Invalid(format!("the block-list kernel does not run {why}")));
    }
    let kernel = SparseAttention::new(gpu, spec, moba.block, moba.topk)?;
    let dense = Attention::new(gpu, Kernel::Flash, spec)?;
    let (q, k, v) = seeded_qkv(spec, INPUT_SEED);
    let io = DeviceTensors::upload(gpu, spec, &q, &k, &v)?;
    io.poison(gpu);
    let slots = s.heads * s.n * moba.topk;
    let select = || -> Result<(wgpu::Buffer, Vec<u32>)> {
        let buf = select_on(gpu, spec, moba, &io.q, &io.k)?;
        let lists = gpu.read(&buf, slots)?;
        Ok((buf, lists))
    };
    // validate: sampled rows of the output against the oracle on the GPU's choice
    let (lists_buf, lists) = select()?;
    kernel.run(gpu, &io, &lists, &lists_buf)?;
    let out = io.read(gpu)?;
    let chosen = moba.spec(spec, &lists)?;
    let total = s.lse_len();
    let rows: Vec<usize> = (0..SPOT_ROWS).map(|i| i * (total - 1) / (SPOT_ROWS - 1)).collect();
    let want: Vec<f64> =
        attention_rows_f64(&chosen, &q, &k, &v, &rows)?.into_iter().flat_map(|(o, _)| o).collect();
    let d = s.head_dim;
    let got: Vec<f32> = rows.iter().flat_map(|&row| out.o[row * d..(row + 1) * d].iter().copied()).collect();
    r.rel_err = Some(rel_error(&got, &want));
    r.sparse_pairs = chosen.visible_pairs();
    r.dense_pairs = spec.visible_pairs();
    let blocks = s.m.div_ceil(moba.block) as f64;
    r.select_flops = (s.kv_heads * s.m * d) as f64 + 2.0 * (s.heads * s.n * d) as f64 * blocks;
    r.attend_flops = 4.0 * d as f64 * r.sparse_pairs as f64;
    // time: the stages one after another on the same device tensors, then dense flash
    let wall = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        gpu.wait()?;
        let t = std::time::Instant::now();
        f()?;
        gpu.wait()?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    r.select_ms = Some(median_ms(reps, || wall(&mut || select().map(drop)))?);
    r.attend_ms = Some(median_ms(reps, || wall(&mut || kernel.run(gpu, &io, &lists, &lists_buf)))?);
    r.dense_ms = Some(median_ms(reps, || {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        dense.encode(gpu, &mut enc, &io.buffers())?;
        time_submission(gpu, enc.finish())
    })?);
    Ok(())
}
