//! `naive`: the textbook baseline (`shaders/naive.wgsl`): S = scale·QKᵀ + bias materialised
//! in device memory, a softmax pass, a P·V pass. Same contract and API as `flash`; it exists
//! to be compared with. When B·H·N·M scores exceed one storage binding it returns
//! [`Error::BindingTooLarge`](crate::Error::BindingTooLarge) naming the bytes. An
//! instrumented variant counts the words every invocation reads and writes.

use crate::contract::spec::AttnSpec;
use crate::error::Result;
use crate::kernels::{AttnBuffers, COMMON, CallParams, Traffic, check_head_dim};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Compiled, Shader, ShaderVariant, bind_group, header_consts};

const NAME: &str = "naive";
/// contract, Q, K, V, O, LSE, scores, slopes and mask bits, counters, chunk (see naive.wgsl).
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../../shaders/naive.wgsl"), bindings: NaiveBinds::SLOTS };
bind_group! {
    /// contract, Q, K, V, O, LSE, scores, slopes and mask bits, counters, chunk.
    struct NaiveBinds {
        0 contract: Uniform, 1 q: Read, 2 k: Read, 3 v: Read, 4 o: ReadWrite, 5 lse: ReadWrite,
        6 s: ReadWrite, 7 aux: Read, 8 counters: ReadWrite, 9 chunk: Uniform,
    }
}

/// `Chunk` in naive.wgsl: one dispatch's (batch, head) pairs and where its mask bits are.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct ChunkParams {
    bh_base: u32,
    map_heads: u32,
    bits_base: u32,
    bits_stride: u32,
}
const ENTRIES: [&str; 3] = ["scores", "softmax", "pv"];

header_consts! {
    /// The naive kernels' constants (naive.wgsl).
    struct NaiveConsts {
        /// vec4 lanes of a head.
        D4,
        /// The instrumented variant (counts bytes moved).
        COUNT,
    }
}

/// The three shader variants (one per pass) for head dim `d`.
pub fn variants(d: usize, count: bool) -> Vec<ShaderVariant> {
    ENTRIES
        .iter()
        .map(|&entry| {
            SHADER.variant(entry, &[COMMON], NaiveConsts { D4: (d / 4) as u32, COUNT: count as u32 }.header())
        })
        .collect()
}

/// The device-memory traffic of the three passes, exactly as naive.wgsl's loops move it
/// (per invocation, no cache reuse; see the shader's header).
pub fn traffic(spec: &AttnSpec) -> Traffic {
    let s = spec.shape;
    let (n, m, d) = (s.n as u64, s.m as u64, s.head_dim as u64);
    let bh = (s.batch * s.heads) as u64;
    let visible = spec.visible_pairs() * s.batch as u64; // over heads and batch
    // rows with no visible key read the row once instead of three times
    let masked_rows = bh * n - live_rows(spec);
    let read_words =
        visible * 2 * d + (bh * n - masked_rows) * 3 * m + masked_rows * m + bh * n * (d / 4) * 5 * m;
    let written_words = bh * n * m + bh * n * (m + 1) + bh * n * d;
    Traffic { read: read_words * 4, written: written_words * 4 }
}

/// Rows (over batch and heads) with at least one visible key.
fn live_rows(spec: &AttnSpec) -> u64 {
    let s = spec.shape;
    if spec.mask.is_none() {
        // the band alone: row i is live iff [p_i − hi, p_i − lo] meets [0, M)
        let (lo, hi) = spec.band();
        let live =
            (0..s.n).filter(|&i| spec.position(i) - hi < s.m as i64 && spec.position(i) - lo >= 0).count();
        return (live * s.heads * s.batch) as u64;
    }
    let per_head = |h: usize| (0..s.n).filter(|&i| (0..s.m).any(|j| spec.visible(h, i, j))).count() as u64;
    let total: u64 = match &spec.mask {
        Some(m) if m.per_head() => (0..s.heads).map(per_head).sum(),
        _ => per_head(0) * s.heads as u64,
    };
    total * s.batch as u64
}

/// Aux words: slopes as f32 bits from word 0, then the sparse mask as dense visibility bits
/// `[mask heads, N, ceil(M/32)]`. Returns (words, bits offset, mask heads, bits stride).
pub(crate) fn aux_words(spec: &AttnSpec) -> (Vec<u32>, usize, usize, usize) {
    let mut words: Vec<u32> =
        spec.slopes().unwrap_or_else(|| vec![0.0]).iter().map(|x| x.to_bits()).collect();
    let base = words.len();
    let Some(mask) = &spec.mask else { return (words, base, 1, 0) };
    let s = spec.shape;
    let heads = if mask.per_head() { s.heads } else { 1 };
    let stride = s.m.div_ceil(32);
    let q_off = spec.q_offset();
    words.resize(base + heads * s.n * stride, 0);
    for h in 0..heads {
        for i in 0..s.n {
            let row = &mut words[base + (h * s.n + i) * stride..][..stride];
            for j in (0..s.m).filter(|&j| mask.visible(h, i, j, q_off)) {
                row[j / 32] |= 1 << (j % 32);
            }
        }
    }
    (words, base, heads, stride)
}

/// A prepared naive call.
pub struct Naive {
    pipelines: Vec<Compiled>,
    contract: wgpu::Buffer,
    /// One parameter block per chunk of (batch, head) pairs.
    chunks: Vec<(wgpu::Buffer, u32)>,
    scores: wgpu::Buffer,
    aux: wgpu::Buffer,
    counters: wgpu::Buffer,
    instrumented: bool,
    groups: [[u32; 3]; 3],
}

impl Naive {
    /// Prepares the three passes. The score matrix of one (batch, head) must fit one storage
    /// binding; heads run in chunks of as many as fit together.
    pub fn new(gpu: &Gpu, spec: &AttnSpec, instrumented: bool) -> Result<Self> {
        let s = spec.shape;
        check_head_dim(NAME, s.head_dim)?;
        crate::kernels::refuse_mods(NAME, spec)?;
        gpu.check_workgroup(NAME, 0, 64)?;
        if let Some(limit) = gpu.loop_iteration_limit()
            && s.m as u64 + 1 > limit
        {
            return Err(crate::Error::LoopLimit {
                kernel: NAME,
                needed: s.m as u64 + 1,
                limit,
                hint: "its softmax and P·V passes loop over all M keys per row; use flash",
            });
        }
        let bh = (s.batch * s.heads) as u64;
        let per_head = s.n as u64 * s.m as u64 * 4;
        gpu.check_binding("naive N×M scores of one head", per_head)?;
        let limit = gpu.limits().max_storage_buffer_binding_size.min(gpu.limits().max_buffer_size);
        let chunk =
            (limit / per_head).clamp(1, bh).min(gpu.limits().max_compute_workgroups_per_dimension as u64);
        let groups = [
            [s.m.div_ceil(8) as u64, s.n.div_ceil(8) as u64, chunk],
            [s.n.div_ceil(64) as u64, chunk, 1],
            [(s.n * s.head_dim / 4).div_ceil(64) as u64, chunk, 1],
        ];
        for g in groups {
            gpu.check_dispatch(NAME, g)?;
        }
        for (what, len) in [("Q", s.q_len()), ("K", s.kv_len()), ("V", s.kv_len()), ("O", s.q_len())] {
            gpu.check_binding(what, len as u64 * 4)?;
        }
        let scores = gpu.storage("naive N×M scores", chunk * per_head)?;
        let (aux, bits_base, mask_heads, stride) = aux_words(spec);
        let mut params = ChunkParams {
            bh_base: 0,
            map_heads: mask_heads as u32,
            bits_base: bits_base as u32,
            bits_stride: stride as u32,
        };
        let chunks = (0..bh)
            .step_by(chunk as usize)
            .map(|base| {
                params.bh_base = base as u32;
                (gpu.uniform("naive chunk", &params), (bh - base).min(chunk) as u32)
            })
            .collect();
        let pipelines = variants(s.head_dim, instrumented)
            .iter()
            .map(|v| gpu.compile(v))
            .collect::<Result<Vec<Compiled>>>()?;
        Ok(Self {
            pipelines,
            contract: CallParams::new(spec).upload(gpu),
            chunks,
            scores,
            aux: gpu.upload("naive slopes and mask bits", &aux)?,
            counters: gpu.storage("naive counters", if instrumented { 16 } else { 4 })?,
            instrumented,
            groups: groups.map(|g| g.map(|x| x as u32)),
        })
    }

    /// The score matrix dominates: B·H·N·M·4 bytes.
    pub fn scratch_bytes(&self) -> u64 {
        self.scores.size()
            + self.aux.size()
            + self.contract.size()
            + self.chunks.iter().map(|c| c.0.size()).sum::<u64>()
    }

    /// Bytes the instrumented variant counted in its last run.
    pub async fn counted(&self, gpu: &Gpu) -> Result<Option<Traffic>> {
        if !self.instrumented {
            return Ok(None);
        }
        let c: Vec<u32> = gpu.read_async(&self.counters, 4).await?;
        let word64 = |lo: u32, hi: u32| (hi as u64) << 32 | lo as u64;
        Ok(Some(Traffic { read: word64(c[0], c[1]) * 4, written: word64(c[2], c[3]) * 4 }))
    }

    /// Records the three passes (one compute pass) into `encoder` on buffers `b`.
    pub fn encode(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        b: &AttnBuffers,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
    ) {
        if self.instrumented {
            encoder.clear_buffer(&self.counters, 0, None);
        }
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes });
        for (params, heads) in &self.chunks {
            // the three passes share one layout, so one bind group serves them all
            let binds = NaiveBinds {
                contract: (&self.contract).into(),
                q: b.q.into(),
                k: b.k.into(),
                v: b.v.into(),
                o: b.o.into(),
                lse: b.lse.into(),
                s: (&self.scores).into(),
                aux: (&self.aux).into(),
                counters: (&self.counters).into(),
                chunk: params.into(),
            };
            let bind = self.pipelines[0].bind(gpu, &binds);
            for (pass_idx, (kernel, [x, y, z])) in self.pipelines.iter().zip(self.groups).enumerate() {
                // the chunk's head count sits in the z (scores) or y (softmax, pv) dimension
                let groups = if pass_idx == 0 { [x, y, z.min(*heads)] } else { [x, y.min(*heads), z] };
                kernel.dispatch(&mut pass, &bind, groups);
            }
        }
    }
}
