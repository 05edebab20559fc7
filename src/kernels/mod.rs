//! GPU kernels: one module per shader family, same stem as its `.wgsl` file.
//!
//! Each module declares its [`Shader`](crate::runtime::Shader) once (stem, source,
//! bindings) and builds variants of it; the runtime composes the source (constants header,
//! shared snippets such as `shaders/common.wgsl`, kernel file) and caches pipelines per
//! variant.

pub mod backward;
pub mod decode;
pub mod embed;
mod family;
pub mod flash;
pub mod heatmap;
pub mod layer;
pub mod matmul;
pub mod mods;
pub mod naive;
pub mod pad;
pub mod peak;
pub mod positions;
pub mod ring;
pub mod route;
pub mod train;

use crate::contract::blockmap::BlockMap;
use crate::contract::spec::{AttnOutput, AttnSpec};
use crate::error::{Error, Result};
use crate::runtime::shader::{ShaderVariant, Snippet};
use crate::runtime::{Gpu, block_on};

pub use family::Family;

/// The contract in WGSL: `Params`, the visible band, ALiBi, block-map walking helpers.
pub(crate) const COMMON: Snippet =
    Snippet { name: "common", source: include_str!("../../shaders/common.wgsl") };
/// Entry-point builtins and lane helpers with subgroups.
const LANES_SUBGROUP: Snippet =
    Snippet { name: "lanes_subgroup", source: include_str!("../../shaders/lanes_subgroup.wgsl") };
/// The same without subgroups, so one kernel file compiles on devices with and without SUBGROUP.
const LANES_PLAIN: Snippet =
    Snippet { name: "lanes_plain", source: include_str!("../../shaders/lanes_plain.wgsl") };

/// GELU's tanh form and its derivative: matmul's epilogue and the training kernels.
pub(crate) const GELU: Snippet = Snippet { name: "gelu", source: include_str!("../../shaders/gelu.wgsl") };

/// The online-softmax tile step (the P·V accumulation) flash and decode share.
pub(crate) const SOFTMAX_TILE: Snippet =
    Snippet { name: "softmax_tile", source: include_str!("../../shaders/softmax_tile.wgsl") };

/// The identity mods, for variants built without the user's (`MODS_U` = 0).
pub(crate) const MODS_NONE: Snippet =
    Snippet { name: "mods_none", source: include_str!("../../shaders/mods_none.wgsl") };

/// `variant` (built with [`MODS_NONE`] and `MODS_U` = 0) with `mods` compiled in for an
/// N × M call: the user's WGSL in place of the identity, `MODS_U` = 1.
pub(crate) fn with_mods(
    variant: ShaderVariant,
    mods: Option<&crate::contract::mods::Mods>,
    n: usize,
    m: usize,
) -> ShaderVariant {
    match mods {
        Some(mods) => with_mods_source(variant, mods, mods.kernel_source(n, m)),
        None => variant,
    }
}

/// `variant` with `mods` compiled in from `source` (an assembled module:
/// [`Mods::kernel_source`](crate::contract::mods::Mods::kernel_source) or its per-dispatch
/// form).
pub(crate) fn with_mods_source(
    mut variant: ShaderVariant,
    mods: &crate::contract::mods::Mods,
    source: String,
) -> ShaderVariant {
    variant.prelude.retain(|s| s.name != MODS_NONE.name);
    for c in variant.consts.iter_mut().filter(|c| c.0 == "MODS_U") {
        c.1 = 1;
    }
    let bindings = mods.buffers().iter().map(|b| b.binding).collect();
    variant.with_user(mods.name(), source, bindings)
}

/// A typed error for a kernel that does not run attention mods yet.
pub(crate) fn refuse_mods(kernel: &'static str, spec: &AttnSpec) -> Result<()> {
    match &spec.mods {
        Some(m) => Err(Error::Config {
            kernel,
            config: format!("mods {}", m.name()),
            reason: "score_mod / mask_mod run in flash (forward, on vec4 tiles or cooperative matrices), the tiled backward, decode and the heatmap".into(),
        }),
        None => Ok(()),
    }
}

/// The lane helpers for subgroup width `sg` (0: plain workgroup-memory loads).
pub(crate) fn lanes(sg: u32) -> Snippet {
    if sg > 0 { LANES_SUBGROUP } else { LANES_PLAIN }
}

/// One attention call under the contract: `CallParams` in common.wgsl, binding 0 of every
/// attention kernel, one buffer per prepared call.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct CallParams {
    pub heads: u32,
    pub kv_heads: u32,
    pub n: u32,
    pub m: u32,
    pub group: u32,
    pub q_offset: i32,
    pub scale: f32,
    pub band_lo: i32,
    pub band_hi: i32,
    pub alibi: u32,
    pub batch: u32,
    pub neg_inf: f32,
}

impl CallParams {
    pub(crate) fn new(spec: &AttnSpec) -> Self {
        let s = spec.shape;
        let (lo, hi) = spec.band();
        Self {
            heads: s.heads as u32,
            kv_heads: s.kv_heads as u32,
            n: s.n as u32,
            m: s.m as u32,
            group: s.group() as u32,
            q_offset: spec.q_offset() as i32,
            scale: spec.scale_value(),
            band_lo: lo as i32,
            band_hi: hi as i32,
            alibi: spec.slopes().is_some() as u32,
            batch: s.batch as u32,
            neg_inf: f32::NEG_INFINITY,
        }
    }

    /// The uniform buffer of this contract.
    pub(crate) fn upload(&self, gpu: &Gpu) -> wgpu::Buffer {
        gpu.uniform("attention contract", self)
    }
}

/// How one dispatch of a block-map kernel walks the map and which slice of the tensors it
/// covers: `Tiles` in common.wgsl (flash, the backward, the heatmap).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct Tiles {
    pub n_qtiles: u32,
    pub map_heads: u32,
    pub map_rows: u32,
    pub mask_base: u32,
    pub bits_base: u32,
    pub bits_stride: u32,
    pub pass_index: u32,
    pub pass_tiles: u32,
    pub qtile_list: u32,
    pub q_shift: u32,
    pub kv_shift: u32,
    pub lse_shift: u32,
    pub stats_shift: u32,
    pub head_base: u32,
    pub batch_base: u32,
    pub pad: u32,
}

impl Tiles {
    /// The walk of `map` (its entries, mask indices and bits at these offsets of the map
    /// buffer), every query tile launched, whole tensors bound.
    pub(crate) fn of_map(map: &BlockMap, [entries, mask_index, bits]: [u32; 3]) -> Self {
        Self {
            n_qtiles: map.n_qtiles as u32,
            map_heads: map.heads as u32,
            map_rows: entries,
            mask_base: mask_index,
            bits_base: bits,
            qtile_list: u32::MAX,
            ..Self::default()
        }
    }
}

/// The largest head dim: every head dim from 1 to 256 runs ([`Attention`], the backward and
/// the decoder pad one that is not a multiple of 4; see [`pad`]).
pub const MAX_HEAD_DIM: usize = 256;

/// A head dim a call accepts: 1 to [`MAX_HEAD_DIM`].
pub(crate) fn check_call_head_dim(kernel: &'static str, d: usize) -> Result<()> {
    if d > MAX_HEAD_DIM {
        return Err(Error::HeadDim {
            kernel,
            head_dim: d,
            reason: "it must be at most 256 (per-row registers)",
        });
    }
    Ok(())
}

/// A head dim a kernel runs directly: a multiple of 4 (vec4 lanes) up to 256. Calls of
/// other head dims go through [`Attention`], [`backward::Backward`] or [`decode::Decoder`],
/// which pad.
pub(crate) fn check_head_dim(kernel: &'static str, d: usize) -> Result<()> {
    if !d.is_multiple_of(4) {
        return Err(Error::HeadDim {
            kernel,
            head_dim: d,
            reason: "the kernel itself loads vec4 lanes and needs a multiple of 4 (Attention, Backward and Decoder pad other head dims)",
        });
    }
    check_call_head_dim(kernel, d)
}

/// The subgroup-shuffle path at width `sg` (0: not used) needs SUBGROUP with that one fixed
/// width on the device and every tile side in `sides` a multiple of it.
pub(crate) fn check_shuffles(
    gpu: &Gpu,
    kernel: &'static str,
    config: &impl std::fmt::Debug,
    sg: u32,
    sides: &[(&str, u32)],
) -> Result<()> {
    if sg == 0 {
        return Ok(());
    }
    let info = gpu.info();
    let reason = if gpu.fixed_subgroup() != Some(sg) {
        format!(
            "the subgroup path sg={sg} needs SUBGROUP with a fixed subgroup size of {sg} (device: {}..={}{})",
            info.subgroup_min_size,
            info.subgroup_max_size,
            if gpu.features().contains(wgpu::Features::SUBGROUP) { "" } else { ", no SUBGROUP" }
        )
    } else if let Some((side, v)) = sides.iter().find(|(_, v)| !v.is_multiple_of(sg)) {
        format!("the subgroup path sg={sg} needs {side} = {v} to be a multiple of it")
    } else {
        return Ok(());
    };
    Err(Error::Config { kernel, config: format!("{config:?}"), reason })
}

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

/// The forward kernel an [`Attention`] runs.
enum Forward {
    Flash(flash::Flash),
    Naive(naive::Naive),
}

/// A prepared attention call: checked against the device, pipelines compiled, block map and
/// parameters uploaded. Reuse it for every call with the same [`AttnSpec`].
pub struct Attention {
    spec: AttnSpec,
    forward: Forward,
    /// Padded copies of Q, K, V, O when the head dim is not a multiple of 4 (the kernel
    /// runs on them at the padded head dim).
    padded: Option<pad::Padded>,
    /// Q and K under the call's positional encoding (a pass before the kernel).
    positions: Option<positions::EncodedInputs>,
}

/// The tensors [`Attention`] pads: Q, K, V in, O out.
const PADDED_FORWARD: [(&str, pad::Rows); 4] =
    [("Q", pad::Rows::Q), ("K", pad::Rows::Kv), ("V", pad::Rows::Kv), ("O", pad::Rows::Q)];

impl Attention {
    /// Prepares `kernel` for `spec` on `gpu` with the default tile configuration.
    pub fn new(gpu: &Gpu, kernel: Kernel, spec: &AttnSpec) -> Result<Self> {
        Self::prepare(gpu, kernel, spec, false)
    }

    fn prepare(gpu: &Gpu, kernel: Kernel, spec: &AttnSpec, instrumented: bool) -> Result<Self> {
        let inner = Self::checked(spec)?;
        let forward = match kernel {
            Kernel::Flash => Forward::Flash(flash::Flash::new(
                gpu,
                &inner,
                flash::FlashConfig::for_device(gpu, inner.shape.head_dim),
                instrumented,
            )?),
            Kernel::Naive => Forward::Naive(naive::Naive::new(gpu, &inner, instrumented)?),
        };
        Self::with_forward(gpu, spec, forward)
    }

    /// `spec` validated, and as the kernel runs it (the head dim padded to a multiple of 4).
    fn checked(spec: &AttnSpec) -> Result<AttnSpec> {
        spec.validate()?;
        check_call_head_dim("attention", spec.shape.head_dim)?;
        Ok(pad::padded_spec(spec))
    }

    fn with_forward(gpu: &Gpu, spec: &AttnSpec, forward: Forward) -> Result<Self> {
        let padded = pad::Padded::new(gpu, &spec.shape, &PADDED_FORWARD)?;
        let stride = pad::padded_dim(spec.shape.head_dim);
        let positions = positions::EncodedInputs::new(gpu, spec, stride, padded.is_some())?;
        Ok(Self { spec: spec.clone(), forward, padded, positions })
    }

    /// A typed error for the f16-input variants, which read Q and K as stored.
    fn refuse_positions(spec: &AttnSpec) -> Result<()> {
        match &spec.positions {
            Some(p) => Err(Error::Config {
                kernel: "flash (f16 storage)",
                config: p.name(),
                reason: "positional encodings run on f32 Q and K (Attention::new, flash_with); encode them before rounding to f16".into(),
            }),
            None => Ok(()),
        }
    }

    /// Prepares the flash kernel with an explicit tile configuration; `instrumented` builds
    /// the variant that counts tiles, keys and rows moved (see [`Attention::flash_counters`]).
    pub fn flash_with(
        gpu: &Gpu,
        spec: &AttnSpec,
        config: flash::FlashConfig,
        instrumented: bool,
    ) -> Result<Self> {
        let inner = Self::checked(spec)?;
        Self::with_forward(gpu, spec, Forward::Flash(flash::Flash::new(gpu, &inner, config, instrumented)?))
    }

    /// Prepares flash reading Q, K and V stored as f16 (half the input bytes; f32 arithmetic
    /// and outputs). Feed it with [`DeviceTensors::upload_f16`]. Without SHADER_F16 both fall
    /// back to f16-rounded values stored as f32 and the f32 kernel — same numbers, f32 bytes.
    /// The f16 variant needs a head dim that is a multiple of 4 (it is not padded).
    pub fn flash_f16(gpu: &Gpu, spec: &AttnSpec) -> Result<Self> {
        spec.validate()?;
        Self::refuse_positions(spec)?;
        check_head_dim("flash (f16 storage)", spec.shape.head_dim)?;
        // vec4 tiles (f32 arithmetic); f16 cooperative matrices are flash_tensor_cores
        let config = flash::FlashConfig::choose(gpu.profile().0, gpu.tuned(), gpu, spec.shape.head_dim);
        // without SHADER_F16: the fallback, f16-rounded values stored as f32 (upload_f16)
        let native = gpu.features().contains(wgpu::Features::SHADER_F16);
        Ok(Self {
            spec: spec.clone(),
            forward: Forward::Flash(flash::Flash::new_with(gpu, spec, config, false, native)?),
            padded: None,
            positions: None,
        })
    }

    /// Prepares flash on tensor cores: Q, K, V stored as f16 (feed it with
    /// [`DeviceTensors::upload_f16`]), QKᵀ and PV on f16 cooperative matrices with f32
    /// accumulation, the weights P rounded to f16 before PV as FlashAttention does in half
    /// precision (relative error ≈ 1e-3, where [`Attention::flash_f16`] keeps f32
    /// arithmetic). A typed error where the device offers no f16 cooperative matrix (every
    /// software adapter) or lacks SHADER_F16.
    pub fn flash_tensor_cores(gpu: &Gpu, spec: &AttnSpec) -> Result<Self> {
        spec.validate()?;
        Self::refuse_positions(spec)?;
        check_head_dim("flash (tensor cores)", spec.shape.head_dim)?;
        let config = flash::FlashConfig::tensor_cores(gpu, spec.shape.head_dim, true).ok_or_else(|| Error::Config {
            kernel: "flash",
            config: "f16 inputs on cooperative matrices".into(),
            reason: format!(
                "the device offers no square f16×f16→f32 cooperative matrix that fits at head dim {} with a fixed subgroup width and SHADER_F16 (configurations: {:?}; fixed subgroup: {:?}; SHADER_F16: {})",
                spec.shape.head_dim,
                gpu.cooperative_matrices(),
                gpu.fixed_subgroup(),
                gpu.features().contains(wgpu::Features::SHADER_F16)
            ),
        })?;
        Self::flash_f16_with(gpu, spec, config)
    }

    /// [`Attention::flash_f16`] with an explicit tile configuration (Q, K, V stored as f16;
    /// needs SHADER_F16): f32 arithmetic on vec4 tiles, or f16 cooperative matrices when
    /// `config.coop` has f16 inputs.
    pub fn flash_f16_with(gpu: &Gpu, spec: &AttnSpec, config: flash::FlashConfig) -> Result<Self> {
        spec.validate()?;
        Self::refuse_positions(spec)?;
        check_head_dim("flash (f16 storage)", spec.shape.head_dim)?;
        Ok(Self {
            spec: spec.clone(),
            forward: Forward::Flash(flash::Flash::new_with(gpu, spec, config, false, true)?),
            padded: None,
            positions: None,
        })
    }

    /// Prepares the instrumented variant of `kernel` (default tiles), which counts the bytes
    /// it moves; read them with [`Attention::measured_traffic`] after a run.
    pub fn instrumented(gpu: &Gpu, kernel: Kernel, spec: &AttnSpec) -> Result<Self> {
        Self::prepare(gpu, kernel, spec, true)
    }

    /// The traffic model: device-memory bytes this kernel's loops move, derived from the
    /// kernel's own tiling (flash: its block map; naive: its three passes), plus the padding
    /// copies for a head dim that is not a multiple of 4 and the positional encoding's pass.
    pub fn traffic_model(&self) -> Traffic {
        let inner = pad::padded_spec(&self.spec);
        let kernel = match &self.forward {
            Forward::Flash(f) => f.traffic(&inner),
            Forward::Naive(_) => naive::traffic(&inner),
        };
        self.with_padding(kernel)
    }

    fn with_padding(&self, t: Traffic) -> Traffic {
        let p = self.padded.as_ref().map(pad::Padded::traffic).unwrap_or_default();
        let e = self.positions.as_ref().map(|e| e.traffic(false)).unwrap_or_default();
        Traffic { read: t.read + p.read + e.read, written: t.written + p.written + e.written }
    }

    /// Bytes the instrumented variant counted in its last run (`None` if not instrumented),
    /// plus the padding copies' (from their loops, which have fixed trip counts).
    pub fn measured_traffic(&self, gpu: &Gpu) -> Result<Option<Traffic>> {
        block_on(
            "Attention::measured_traffic",
            "await Attention::measured_traffic_async",
            self.measured_traffic_async(gpu),
        )
    }

    /// [`Attention::measured_traffic`] without blocking the browser.
    pub(crate) async fn measured_traffic_async(&self, gpu: &Gpu) -> Result<Option<Traffic>> {
        let d = pad::padded_dim(self.spec.shape.head_dim);
        let counted = match &self.forward {
            Forward::Flash(f) => f.counters(gpu).await?.map(|c| c.traffic(d)),
            Forward::Naive(n) => n.counted(gpu).await?,
        };
        Ok(counted.map(|t| self.with_padding(t)))
    }

    /// The prepared flash kernel (`None` for other kernels).
    pub fn flash(&self) -> Option<&flash::Flash> {
        match &self.forward {
            Forward::Flash(f) => Some(f),
            Forward::Naive(_) => None,
        }
    }

    /// The flash kernel's block map (`None` for other kernels).
    pub fn block_map(&self) -> Option<&BlockMap> {
        match &self.forward {
            Forward::Flash(f) => Some(f.block_map()),
            Forward::Naive(_) => None,
        }
    }

    /// Counters of the last run of an instrumented flash kernel.
    pub fn flash_counters(&self, gpu: &Gpu) -> Result<Option<flash::FlashCounters>> {
        match &self.forward {
            Forward::Flash(f) => {
                block_on("Attention::flash_counters", "await Attention::flash().counters", f.counters(gpu))
            }
            Forward::Naive(_) => Ok(None),
        }
    }

    /// The problem this call was prepared for.
    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }

    /// Device memory this kernel allocates beyond Q, K, V, O and LSE (scores, block map…).
    pub fn scratch_bytes(&self) -> u64 {
        let padded = self.padded.as_ref().map_or(0, pad::Padded::bytes);
        let encoded = self.positions.as_ref().map_or(0, positions::EncodedInputs::bytes);
        padded
            + encoded
            + match &self.forward {
                Forward::Flash(f) => f.scratch_bytes(),
                Forward::Naive(n) => n.scratch_bytes(),
            }
    }

    /// Records the kernel's dispatches (one compute pass) into `encoder`. Nothing is submitted.
    pub fn encode(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder, bufs: &AttnBuffers) -> Result<()> {
        self.encode_timed(gpu, encoder, bufs, None)
    }

    /// [`Attention::encode`] with timestamps written at the start and end of the kernel's
    /// pass (for a head dim that is not a multiple of 4, the padding copies before and after
    /// are passes of their own, outside the timestamps).
    pub(crate) fn encode_timed(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        bufs: &AttnBuffers,
        timestamps: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        self.check_buffers(bufs)?;
        let mut inner = match &self.padded {
            None => *bufs,
            Some(p) => {
                for (i, src) in [bufs.q, bufs.k, bufs.v].into_iter().enumerate() {
                    p.pad(gpu, encoder, i, src);
                }
                AttnBuffers { q: p.copy(0), k: p.copy(1), v: p.copy(2), o: p.copy(3), lse: bufs.lse }
            }
        };
        if let Some(e) = &self.positions {
            (inner.q, inner.k) = e.encode(gpu, encoder, inner.q, inner.k)?;
        }
        match &self.forward {
            Forward::Flash(f) => f.encode(gpu, encoder, &inner, timestamps),
            Forward::Naive(n) => n.encode(gpu, encoder, &inner, timestamps),
        }
        if let Some(p) = &self.padded {
            p.cut(gpu, encoder, 3, bufs.o);
        }
        Ok(())
    }

    fn check_buffers(&self, b: &AttnBuffers) -> Result<()> {
        let s = self.spec.shape;
        let f = 4u64;
        let fin = if self.flash().is_some_and(flash::Flash::is_f16) { 2 } else { 4 };
        for (name, buf, want) in [
            ("Q", b.q, s.q_len() as u64 * fin),
            ("K", b.k, s.kv_len() as u64 * fin),
            ("V", b.v, s.kv_len() as u64 * fin),
            ("O", b.o, s.q_len() as u64 * f),
            ("LSE", b.lse, s.lse_len() as u64 * f),
        ] {
            if buf.size() < want {
                return Err(Error::BufferTooSmall { what: name, bytes: buf.size(), needed: want });
            }
        }
        Ok(())
    }

    /// Uploads host tensors, runs, and reads O and LSE back.
    pub fn run(&self, gpu: &Gpu, q: &[f32], k: &[f32], v: &[f32]) -> Result<AttnOutput> {
        self.spec.check_inputs(q, k, v)?;
        self.run_on(gpu, &DeviceTensors::upload(gpu, &self.spec, q, k, v)?)
    }

    /// Runs on tensors already on the device (f32 or, for the f16 variants, f16 inputs) and
    /// reads O and LSE back (blocks until done).
    pub fn run_on(&self, gpu: &Gpu, io: &DeviceTensors) -> Result<AttnOutput> {
        self.submit(gpu, io)?;
        io.read(gpu)
    }

    /// [`Attention::run`] without blocking (the browser's way): uploads, runs, and awaits
    /// O and LSE.
    pub async fn run_async(&self, gpu: &Gpu, q: &[f32], k: &[f32], v: &[f32]) -> Result<AttnOutput> {
        self.spec.check_inputs(q, k, v)?;
        let io = DeviceTensors::upload(gpu, &self.spec, q, k, v)?;
        self.submit(gpu, &io)?;
        io.read_async(gpu).await
    }

    fn submit(&self, gpu: &Gpu, io: &DeviceTensors) -> Result<()> {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.encode(gpu, &mut enc, &io.buffers())?;
        gpu.queue.submit([enc.finish()]);
        Ok(())
    }
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

    /// Q, K, V rounded to f16 (for [`Attention::flash_f16`]); O and LSE stay f32. Without
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

/// The advice that ends a warning about a bad tuned winner.
pub(crate) const UNTUNED: &str = "; the preset runs instead (measure again with the autotuner, or create the device without its cached winners)";

/// Host bytes a block map may take: what the host has available (unbounded where that
/// cannot be read).
pub fn host_budget() -> u64 {
    crate::runtime::host::available_bytes().unwrap_or(u64::MAX)
}

/// Slopes buffer contents: the spec's slopes or a single zero (bindings cannot be empty).
pub(crate) fn slopes_words(spec: &AttnSpec) -> Vec<f32> {
    spec.slopes().unwrap_or_else(|| vec![0.0])
}
