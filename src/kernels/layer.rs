//! `layer`: LayerNorm, head/token permutes and copies (`shaders/layer.wgsl`), the glue of a
//! transformer layer around matmul and attention. Oracles inline in the tests and in
//! [`crate::colt5`].

use crate::error::{Error, Result};
use crate::gpu::{Gpu, storage_entry, uniform_entry};
use crate::kernels::ShaderVariant;

const BODY: &str = include_str!("../../shaders/layer.wgsl");
const NAME: &str = "layer";

/// One of the layer operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `[rows, d]` → normalised rows (mean 0, variance 1, eps 1e-5, no affine).
    LayerNorm { rows: usize, d: usize },
    /// `[rows, d]` → `γ ⊙ normalised + β`, with `eps` and γ, β given to
    /// [`LayerOp::layer_norm_affine`] (BERT's LayerNorm).
    LayerNormAffine { rows: usize, d: usize },
    /// `[rows, heads·d]` → `[heads, rows, d]`.
    ToHeads { rows: usize, heads: usize, d: usize },
    /// `[heads, rows, d]` → `[rows, heads·d]`.
    ToTokens { rows: usize, heads: usize, d: usize },
    /// `[rows, d]` copied.
    Copy { rows: usize, d: usize },
}

impl Op {
    fn entry(self) -> &'static str {
        match self {
            Op::LayerNorm { .. } => "layer_norm",
            Op::LayerNormAffine { .. } => "layer_norm_affine",
            Op::ToHeads { .. } => "to_heads",
            Op::ToTokens { .. } => "to_tokens",
            Op::Copy { .. } => "copy",
        }
    }
    fn shape(self, eps: f32) -> [u32; 4] {
        match self {
            Op::LayerNorm { rows, d } | Op::LayerNormAffine { rows, d } => {
                [rows as u32, d as u32, 1, eps.to_bits()]
            }
            Op::Copy { rows, d } => [rows as u32, d as u32, 1, 0],
            Op::ToHeads { rows, heads, d } | Op::ToTokens { rows, heads, d } => {
                [rows as u32, d as u32, heads as u32, 0]
            }
        }
    }
    /// Invocations: rows for LayerNorm, elements otherwise.
    fn threads(self) -> usize {
        match self {
            Op::LayerNorm { rows, .. } | Op::LayerNormAffine { rows, .. } => rows,
            Op::Copy { rows, d } => rows * d,
            Op::ToHeads { rows, heads, d } | Op::ToTokens { rows, heads, d } => rows * heads * d,
        }
    }
}

/// The shader variants, one per entry point.
pub fn variants() -> Vec<ShaderVariant> {
    ["layer_norm", "layer_norm_affine", "to_heads", "to_tokens", "copy"]
        .into_iter()
        .map(|entry| ShaderVariant { stem: NAME, prelude: vec![], body: BODY, entry, consts: vec![] })
        .collect()
}

fn layout(gpu: &Gpu) -> wgpu::BindGroupLayout {
    gpu.layout(
        NAME,
        &[uniform_entry(0), storage_entry(1, true), storage_entry(2, false), storage_entry(3, true)],
    )
}

/// A prepared layer operation.
pub struct LayerOp {
    op: Op,
    pipeline: wgpu::ComputePipeline,
    shape: wgpu::Buffer,
    /// γ | β for the affine LayerNorm, else a 4-byte placeholder binding.
    affine: wgpu::Buffer,
}

impl LayerOp {
    pub fn new(gpu: &Gpu, op: Op) -> Result<Self> {
        if matches!(op, Op::LayerNormAffine { .. }) {
            return Err(Error::Invalid(
                "an affine LayerNorm needs γ and β: LayerOp::layer_norm_affine".into(),
            ));
        }
        Self::build(gpu, op, 1e-5, gpu.upload("unused", &[0.0f32])?)
    }

    /// `γ ⊙ (x − mean)/sqrt(var + eps) + β` per row of `[rows, d]`.
    pub fn layer_norm_affine(
        gpu: &Gpu,
        rows: usize,
        d: usize,
        eps: f32,
        gamma: &[f32],
        beta: &[f32],
    ) -> Result<Self> {
        Self::layer_norm_affine_on(gpu, rows, d, eps, &Self::affine_weights(gpu, d, gamma, beta)?)
    }

    /// γ and β of a LayerNorm of width `d` on the device, for [`LayerOp::layer_norm_affine_on`]:
    /// upload once, reuse for every row count.
    pub fn affine_weights(gpu: &Gpu, d: usize, gamma: &[f32], beta: &[f32]) -> Result<wgpu::Buffer> {
        if gamma.len() != d || beta.len() != d {
            return Err(Error::Shape(format!(
                "LayerNorm of width {d}: γ has {} values, β {}",
                gamma.len(),
                beta.len()
            )));
        }
        gpu.upload("layer norm affine", &[gamma, beta].concat())
    }

    /// [`LayerOp::layer_norm_affine`] with γ | β already on the device.
    pub fn layer_norm_affine_on(
        gpu: &Gpu,
        rows: usize,
        d: usize,
        eps: f32,
        affine: &wgpu::Buffer,
    ) -> Result<Self> {
        Self::build(gpu, Op::LayerNormAffine { rows, d }, eps, affine.clone())
    }

    fn build(gpu: &Gpu, op: Op, eps: f32, affine: wgpu::Buffer) -> Result<Self> {
        if op.threads() == 0 {
            return Err(Error::Empty {
                what: format!("{op:?}"),
                shape: op.shape(eps)[..3].iter().map(|&x| x as usize).collect(),
            });
        }
        if let (Op::LayerNorm { d, .. } | Op::LayerNormAffine { d, .. }, Some(limit)) =
            (op, gpu.loop_iteration_limit())
            && d as u64 > limit / 3
        {
            return Err(Error::LoopLimit {
                kernel: NAME,
                needed: 3 * d as u64,
                limit,
                hint: "LayerNorm loops over the row three times",
            });
        }
        let groups = op.threads().div_ceil(64) as u64;
        gpu.check_dispatch(NAME, [groups, 1, 1])?;
        let layout = layout(gpu);
        let variant = variants().into_iter().find(|v| v.entry == op.entry()).expect("entry exists");
        Ok(Self {
            op,
            pipeline: gpu.pipeline(&variant, &layout)?,
            shape: gpu.uniform("layer shape", &op.shape(eps)),
            affine,
        })
    }

    pub fn encode(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, src: &wgpu::Buffer, dst: &wgpu::Buffer) {
        let bind = gpu.bind_group(&layout(gpu), &[&self.shape, src, dst, &self.affine]);
        let mut pass = enc
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups(self.op.threads().div_ceil(64) as u32, 1, 1);
    }
}
