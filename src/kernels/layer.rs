//! `layer`: LayerNorm, head/token permutes and copies (`shaders/layer.wgsl`), the glue of a
//! transformer layer around matmul and attention. Oracles inline in the tests and in
//! [`crate::models::colt5`].

use crate::error::{Error, Result};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Compiled, Shader, ShaderVariant, bind_group};

const NAME: &str = "layer";
/// shape, source, destination, γ | β (see layer.wgsl).
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/layer.wgsl"), bindings: LayerBinds::SLOTS };
bind_group! {
    /// The shape, the source rows, the destination and the affine parameters.
    struct LayerBinds { 0 sh: Uniform, 1 src: Read, 2 dst: ReadWrite, 3 affine: Read }
}

/// One of the layer operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// `[rows, d]` → normalised rows (mean 0, variance 1, eps 1e-5, no affine).
    LayerNorm {
        /// Rows, normalised independently.
        rows: usize,
        /// Row width.
        d: usize,
    },
    /// `[rows, d]` → `γ ⊙ normalised + β`, with `eps` and γ, β given to
    /// [`LayerOp::layer_norm_affine`] (BERT's LayerNorm).
    LayerNormAffine {
        /// Rows, normalised independently.
        rows: usize,
        /// Row width (and length of γ and β).
        d: usize,
    },
    /// `[rows, heads·d]` → `[heads, rows, d]`.
    ToHeads {
        /// Tokens.
        rows: usize,
        /// Heads.
        heads: usize,
        /// Width per head.
        d: usize,
    },
    /// `[heads, rows, d]` → `[rows, heads·d]`.
    ToTokens {
        /// Tokens.
        rows: usize,
        /// Heads.
        heads: usize,
        /// Width per head.
        d: usize,
    },
    /// `[rows, d]` copied.
    Copy {
        /// Rows.
        rows: usize,
        /// Row width.
        d: usize,
    },
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
        .map(|entry| SHADER.variant(entry, &[], vec![]))
        .collect()
}

/// A prepared layer operation.
pub struct LayerOp {
    op: Op,
    kernel: Compiled,
    shape: wgpu::Buffer,
    /// γ | β for the affine LayerNorm, else a 4-byte placeholder binding.
    affine: wgpu::Buffer,
}

impl LayerOp {
    /// Prepares `op` (LayerNorm with eps 1e-5); [`Op::LayerNormAffine`] is refused: it needs
    /// γ and β through [`LayerOp::layer_norm_affine`].
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
    pub(crate) fn affine_weights(gpu: &Gpu, d: usize, gamma: &[f32], beta: &[f32]) -> Result<wgpu::Buffer> {
        if gamma.len() != d || beta.len() != d {
            let (what, got) =
                if gamma.len() != d { ("LayerNorm γ", gamma.len()) } else { ("LayerNorm β", beta.len()) };
            return Err(Error::Length { what: what.into(), got, shape: vec![d], expected: d });
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
        Ok(Self {
            op,
            kernel: gpu.compile(&SHADER.variant(op.entry(), &[], vec![]))?,
            shape: gpu.uniform("layer shape", &op.shape(eps)),
            affine,
        })
    }

    /// Records the operation, `src` to `dst`, as one compute pass.
    pub fn encode(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, src: &wgpu::Buffer, dst: &wgpu::Buffer) {
        let binds = LayerBinds {
            sh: (&self.shape).into(),
            src: src.into(),
            dst: dst.into(),
            affine: (&self.affine).into(),
        };
        let bind = self.kernel.bind(gpu, &binds);
        let mut pass = enc
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        self.kernel.dispatch(&mut pass, &bind, [self.op.threads().div_ceil(64) as u32, 1, 1]);
    }
}
