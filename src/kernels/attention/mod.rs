//! Attention by role: the forward call ([`Attention`], built by [`AttentionBuilder`]) and its
//! two kernels ([`flash`], [`naive`]), the backward pass ([`backward`]) and incremental
//! decoding ([`decode`]); here, what they share: the caller's buffers, device copies of a
//! call's tensors and the traffic a kernel moves.

pub mod backward;
pub mod decode;
pub mod flash;
mod forward;
pub mod naive;
pub mod packed;
pub mod paged;
pub mod sparse;
pub mod sparse_backward;

pub use forward::{Attention, AttentionBuilder};

use crate::contract::spec::{AttnOutput, AttnSpec};
use crate::error::Result;
use crate::runtime::Gpu;

/// Which GPU attention kernel to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// Tiled online softmax in workgroup memory; never materialises N×M.
    Flash,
    /// Materialised N×M scores, softmax pass, P·V pass.
    Naive,
}

impl Kernel {
    /// The kernel's name in records and messages.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Flash => "flash",
            Kernel::Naive => "naive",
        }
    }
}

/// Device buffers of one attention call, owned by the caller. Shapes per the contract:
/// Q and O `[B,H,N,D]`, K and V `[B,Hkv,M,D]`, LSE `[B,H,N]`, all f32.
#[derive(Clone, Copy, Debug)]
pub struct AttnBuffers<'a> {
    /// Queries `[B, H, N, D]`.
    pub q: &'a wgpu::Buffer,
    /// Keys `[B, Hkv, M, D]`.
    pub k: &'a wgpu::Buffer,
    /// Values `[B, Hkv, M, D]`.
    pub v: &'a wgpu::Buffer,
    /// Output `[B, H, N, D]`, written.
    pub o: &'a wgpu::Buffer,
    /// Log-sum-exp per row `[B, H, N]` (natural log; `-inf` for a fully masked row), written.
    pub lse: &'a wgpu::Buffer,
}

/// Device-memory bytes a kernel moves: read (Q, K, V, scores…) and written (O, LSE, scores…).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    /// Bytes read from device memory.
    pub read: u64,
    /// Bytes written to device memory.
    pub written: u64,
}

impl Traffic {
    /// Bytes moved either way.
    pub fn total(&self) -> u64 {
        self.read + self.written
    }
}

/// How the forward kernel reads Q, K and V.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Inputs {
    /// f32, as the contract states them.
    #[default]
    F32,
    /// Stored as f16 (half the input bytes), f32 arithmetic. Without SHADER_F16 the values
    /// are rounded to f16 and stored as f32 ([`DeviceTensors::upload_f16`]).
    F16,
    /// Stored as f16, QKᵀ and PV on f16 cooperative matrices with f32 accumulation, the
    /// weights P rounded to f16 before PV as FlashAttention does in half precision.
    F16TensorCores,
}

/// Device copies of one call's Q, K, V and freshly allocated O and LSE.
pub struct DeviceTensors {
    /// Queries `[B, H, N, D]` (f32, or f16 from [`DeviceTensors::upload_f16`]).
    pub q: wgpu::Buffer,
    /// Keys `[B, Hkv, M, D]`.
    pub k: wgpu::Buffer,
    /// Values `[B, Hkv, M, D]`.
    pub v: wgpu::Buffer,
    /// Output `[B, H, N, D]`, f32.
    pub o: wgpu::Buffer,
    /// LSE `[B, H, N]`, f32.
    pub lse: wgpu::Buffer,
    q_len: usize,
    lse_len: usize,
}

impl DeviceTensors {
    /// Uploads Q, K and V (checked against `spec` by the caller) and allocates O and LSE.
    pub fn upload(gpu: &Gpu, spec: &AttnSpec, q: &[f32], k: &[f32], v: &[f32]) -> Result<Self> {
        let s = spec.shape;
        Ok(Self {
            q: gpu.upload_ranged("Q", q)?,
            k: gpu.upload_ranged("K", k)?,
            v: gpu.upload_ranged("V", v)?,
            o: gpu.storage_ranged("O", s.q_len() as u64 * 4)?,
            lse: gpu.storage_ranged("LSE", s.lse_len() as u64 * 4)?,
            q_len: s.q_len(),
            lse_len: s.lse_len(),
        })
    }

    /// Records copies of Q, K, V from device buffers of at least these tensors' sizes (f32, as
    /// [`DeviceTensors::upload`] holds them): a model's layer feeding tensors it computed.
    pub(crate) fn copy_inputs(
        &self,
        enc: &mut wgpu::CommandEncoder,
        (q, k, v): (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    ) {
        for (src, dst) in [(q, &self.q), (k, &self.k), (v, &self.v)] {
            enc.copy_buffer_to_buffer(src, 0, dst, 0, Some(dst.size()));
        }
    }

    /// Q, K, V rounded to f16 (for [`Inputs::F16`]); O and LSE stay f32. Without
    /// SHADER_F16 the rounded values are stored as f32 (the fallback).
    pub fn upload_f16(gpu: &Gpu, spec: &AttnSpec, q: &[f32], k: &[f32], v: &[f32]) -> Result<Self> {
        spec.check_inputs(q, k, v)?;
        if !gpu.features().contains(wgpu::Features::SHADER_F16) {
            let r = |x: &[f32]| x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect::<Vec<f32>>();
            return Self::upload(gpu, spec, &r(q), &r(k), &r(v));
        }
        let s = spec.shape;
        let half = |x: &[f32]| x.iter().map(|&v| half::f16::from_f32(v)).collect::<Vec<half::f16>>();
        let bytes = |x: &[half::f16]| -> Vec<u16> { x.iter().map(|h| h.to_bits()).collect() };
        Ok(Self {
            q: gpu.upload_ranged("Q (f16)", &bytes(&half(q)))?,
            k: gpu.upload_ranged("K (f16)", &bytes(&half(k)))?,
            v: gpu.upload_ranged("V (f16)", &bytes(&half(v)))?,
            o: gpu.storage_ranged("O", s.q_len() as u64 * 4)?,
            lse: gpu.storage_ranged("LSE", s.lse_len() as u64 * 4)?,
            q_len: s.q_len(),
            lse_len: s.lse_len(),
        })
    }

    /// Fills O and LSE with NaN, so that an element the kernel forgets to write shows.
    pub fn poison(&self, gpu: &Gpu) {
        gpu.queue.write_buffer(&self.o, 0, bytemuck::cast_slice(&vec![f32::NAN; self.q_len]));
        gpu.queue.write_buffer(&self.lse, 0, bytemuck::cast_slice(&vec![f32::NAN; self.lse_len]));
    }

    /// The buffers as one call's bindings.
    pub fn buffers(&self) -> AttnBuffers<'_> {
        AttnBuffers { q: &self.q, k: &self.k, v: &self.v, o: &self.o, lse: &self.lse }
    }

    /// Reads O and LSE back (blocks until the queue is idle).
    pub fn read(&self, gpu: &Gpu) -> Result<AttnOutput> {
        Ok(AttnOutput { o: gpu.read(&self.o, self.q_len)?, lse: gpu.read(&self.lse, self.lse_len)? })
    }

    /// Awaits O and LSE (the browser's way; see [`Gpu::read_async`]).
    pub async fn read_async(&self, gpu: &Gpu) -> Result<AttnOutput> {
        Ok(AttnOutput {
            o: gpu.read_async(&self.o, self.q_len).await?,
            lse: gpu.read_async(&self.lse, self.lse_len).await?,
        })
    }
}

/// One-shot attention on host tensors: prepare, upload, run, read back.
pub fn attention(
    gpu: &Gpu,
    kernel: Kernel,
    spec: &AttnSpec,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Result<AttnOutput> {
    Attention::new(gpu, kernel, spec)?.run(gpu, q, k, v)
}
