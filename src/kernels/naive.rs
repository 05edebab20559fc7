//! `naive`: the textbook baseline (`shaders/naive.wgsl`): S = scale·QKᵀ + bias materialised
//! in device memory, a softmax pass, a P·V pass. Same contract and API as `flash`; it exists
//! to be compared with. When B·H·N·M scores exceed one storage binding it returns
//! [`Error::BindingTooLarge`](crate::Error::BindingTooLarge) naming the bytes.

use crate::error::Result;
use crate::gpu::{Gpu, storage_entry, uniform_entry};
use crate::kernels::{AttnBuffers, Params, ShaderVariant, check_head_dim, slopes_words};
use crate::spec::AttnSpec;

const BODY: &str = include_str!("../../shaders/naive.wgsl");
const NAME: &str = "naive";
const ENTRIES: [&str; 3] = ["scores", "softmax", "pv"];

/// The three shader variants (one per pass) for head dim `d`.
pub fn variants(d: usize) -> Vec<ShaderVariant> {
    ENTRIES
        .iter()
        .map(|&entry| ShaderVariant { stem: NAME, body: BODY, entry, consts: vec![("D4", (d / 4) as u32)] })
        .collect()
}

fn layout(gpu: &Gpu) -> wgpu::BindGroupLayout {
    gpu.layout(
        NAME,
        &[
            uniform_entry(0),
            storage_entry(1, true),
            storage_entry(2, true),
            storage_entry(3, true),
            storage_entry(4, false),
            storage_entry(5, false),
            storage_entry(6, false),
            storage_entry(7, true),
            storage_entry(8, true),
        ],
    )
}

/// Bytes of the materialised score matrix.
pub fn scores_bytes(spec: &AttnSpec) -> u64 {
    let s = spec.shape;
    (s.batch * s.heads) as u64 * s.n as u64 * s.m as u64 * 4
}

/// A prepared naive call.
pub struct Naive {
    pipelines: Vec<wgpu::ComputePipeline>,
    params: wgpu::Buffer,
    scores: wgpu::Buffer,
    slopes: wgpu::Buffer,
    mask_bits: wgpu::Buffer,
    groups: [[u32; 3]; 3],
}

/// The sparse mask as dense visibility bits, `[mask heads, N, ceil(M/32)]` words, and the
/// number of mask heads; a single zero word when there is no mask.
fn mask_bits(spec: &AttnSpec) -> (Vec<u32>, usize, usize) {
    let Some(mask) = &spec.mask else { return (vec![0], 1, 0) };
    let s = spec.shape;
    let heads = if mask.per_head() { s.heads } else { 1 };
    let stride = s.m.div_ceil(32);
    let q_off = s.q_offset();
    let mut words = vec![0u32; heads * s.n * stride];
    for h in 0..heads {
        for i in 0..s.n {
            let row = &mut words[(h * s.n + i) * stride..][..stride];
            for j in (0..s.m).filter(|&j| mask.visible(h, i, j, q_off)) {
                row[j / 32] |= 1 << (j % 32);
            }
        }
    }
    (words, heads, stride)
}

impl Naive {
    pub fn new(gpu: &Gpu, spec: &AttnSpec) -> Result<Self> {
        let s = spec.shape;
        check_head_dim(NAME, s.head_dim)?;
        gpu.check_workgroup(NAME, 0, 64)?;
        let bh = (s.batch * s.heads) as u64;
        let groups = [
            [s.m.div_ceil(8) as u64, s.n.div_ceil(8) as u64, bh],
            [s.n.div_ceil(64) as u64, bh, 1],
            [(s.n * s.head_dim / 4).div_ceil(64) as u64, bh, 1],
        ];
        for g in groups {
            gpu.check_dispatch(NAME, g)?;
        }
        for (what, len) in [("Q", s.q_len()), ("K", s.kv_len()), ("V", s.kv_len()), ("O", s.q_len())] {
            gpu.check_binding(what, len as u64 * 4)?;
        }
        let scores = gpu.storage("naive N×M scores", scores_bytes(spec))?;
        let (bits, mask_heads, stride) = mask_bits(spec);
        let mut params = Params::new(spec);
        params.map_heads = mask_heads as u32;
        params.bits_stride = stride as u32;
        let layout = layout(gpu);
        let pipelines =
            variants(s.head_dim).iter().map(|v| gpu.pipeline(v, &layout)).collect::<Result<Vec<_>>>()?;
        Ok(Self {
            pipelines,
            params: gpu.uniform("naive params", &params),
            scores,
            slopes: gpu.upload("ALiBi slopes", &slopes_words(spec))?,
            mask_bits: gpu.upload("naive mask bits", &bits)?,
            groups: groups.map(|g| g.map(|x| x as u32)),
        })
    }

    /// The score matrix dominates: B·H·N·M·4 bytes.
    pub fn scratch_bytes(&self) -> u64 {
        self.scores.size() + self.slopes.size() + self.params.size() + self.mask_bits.size()
    }

    pub fn encode(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder, b: &AttnBuffers) {
        let bind = gpu.bind_group(
            &layout(gpu),
            &[&self.params, b.q, b.k, b.v, b.o, b.lse, &self.scores, &self.slopes, &self.mask_bits],
        );
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        pass.set_bind_group(0, &bind, &[]);
        for (pipeline, [x, y, z]) in self.pipelines.iter().zip(self.groups) {
            pass.set_pipeline(pipeline);
            pass.dispatch_workgroups(x, y, z);
        }
    }
}
