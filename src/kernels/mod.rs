//! GPU kernels: one module per shader family, same stem as its `.wgsl` file.
//!
//! Each module declares its [`Shader`](crate::runtime::Shader) once (stem, source,
//! bindings) and builds variants of it; the runtime composes the source (constants header,
//! shared snippets such as `shaders/common.wgsl`, kernel file) and caches pipelines per
//! variant.

pub mod attention;
pub mod dsa;
pub mod embed;
mod family;
pub mod heatmap;
pub mod layer;
mod lowering;
pub mod matmul;
pub mod mods;
pub mod nsa;
pub mod pad;
pub mod peak;
pub mod positions;
pub mod ring;
pub mod route;
pub mod selection;
pub mod train;

use crate::contract::blockmap::BlockMap;
use crate::contract::spec::AttnSpec;
use crate::error::{Error, Result};
use crate::runtime::Gpu;
use crate::runtime::shader::{ShaderVariant, Snippet};

pub use attention::{
    Attention, AttentionBuilder, AttnBuffers, DeviceTensors, Inputs, Kernel, Traffic, attention,
};
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

/// A query's running top list kept by insertion: the learned-sparse choices' ranking rule
/// (MoBA's `choose`, NSA's `score`; needs the variant's `MAX_TOPK`).
pub(crate) const TOPK: Snippet = Snippet { name: "topk", source: include_str!("../../shaders/topk.wgsl") };

/// A row's step over a staged key tile: its scores and the online-softmax P·V accumulation
/// (flash, decode and the block-list kernel share it).
pub(crate) const SOFTMAX_TILE: Snippet =
    Snippet { name: "softmax_tile", source: include_str!("../../shaders/softmax_tile.wgsl") };

/// The identity mods, for variants built without the user's (`MODS_U` = 0).
pub(crate) const MODS_NONE: Snippet =
    Snippet { name: "mods_none", source: include_str!("../../shaders/mods_none.wgsl") };

/// `variant` (built with [`MODS_NONE`] and `MODS_U` = 0) with `mods` compiled in for an
/// N × M call: the user's WGSL in place of the identity, `MODS_U` = 1, its loops held to
/// `steps` iterations per invocation ([`mod_steps`]).
pub(crate) fn with_mods(
    variant: ShaderVariant,
    mods: Option<&crate::contract::mods::Mods>,
    n: usize,
    m: usize,
    steps: u32,
) -> Result<ShaderVariant> {
    match mods {
        Some(mods) => Ok(with_mods_source(variant, mods, mods.kernel_source(n, m, steps)?)),
        None => Ok(variant),
    }
}

/// Loop iterations a mod may run per invocation where the adapter states no cap: real GPUs,
/// whose watchdogs reset a device that runs too long.
pub(crate) const MOD_STEPS_UNCAPPED: u32 = 1 << 20;

/// [`Error::ModSteps`] when `kernel` ran `mods` (allowed `steps` loop iterations per
/// invocation) and any of `outputs` is NaN: what the kernels write where the mods' loops ran
/// out; [`Error::ModScore`] when the NaN's payload says the score_mod returned NaN or +inf.
/// The callers' inputs are checked finite, so a NaN is the mods'.
pub(crate) fn check_mod_steps(
    mods: Option<&crate::contract::mods::Mods>,
    kernel: &'static str,
    steps: u32,
    outputs: &[&[f32]],
) -> Result<()> {
    let Some(m) = mods else { return Ok(()) };
    let mut nans = outputs.iter().flat_map(|o| o.iter()).filter(|x| x.is_nan()).peekable();
    if nans.peek().is_none() {
        return Ok(());
    }
    let mods = m.name().to_string();
    Err(if nans.any(|x| x.to_bits() == crate::contract::mods::BAD_SCORE_NAN) {
        Error::ModScore { mods, kernel }
    } else {
        Error::ModSteps { mods, kernel, steps, adapter_cap: steps != MOD_STEPS_UNCAPPED }
    })
}

/// The share of the adapter's loop cap a kernel's own loops may use in a call with `mods`:
/// all of it, or half where the mods have loops (theirs count in the same nests).
pub(crate) fn kernel_loop_cap(gpu: &Gpu, mods: Option<&crate::contract::mods::Mods>) -> Option<u64> {
    let limit = gpu.loop_iteration_limit()?;
    Some(if mods.is_some_and(|m| m.has_loops()) { limit / 2 } else { limit })
}

/// Loop iterations the user's mods may run per invocation of a kernel whose own loops run
/// `kernel_loops`: what the adapter's cap leaves ([`Gpu::loop_iteration_limit`]; lavapipe
/// counts a loop nest's iterations, mods' included, and silently leaves the nest past its
/// cap), or [`MOD_STEPS_UNCAPPED`]. A mod past it leaves NaN in the kernel's outputs.
pub(crate) fn mod_steps(gpu: &Gpu, kernel_loops: u64) -> u32 {
    match gpu.loop_iteration_limit() {
        Some(limit) => limit.saturating_sub(kernel_loops).min(u32::MAX as u64) as u32,
        None => MOD_STEPS_UNCAPPED,
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

/// The advice that ends a warning about a bad tuned winner.
pub(crate) const UNTUNED: &str = "; the preset runs instead (measure again with the autotuner, or create the device without its cached winners)";

/// Host bytes a block map may take: what the host has available (unbounded where that
/// cannot be read).
pub fn host_budget() -> u64 {
    crate::runtime::host::available_bytes().unwrap_or(u64::MAX)
}

/// `spec`'s block map for `br × bc` tiles, for a kernel on `gpu`: held to what the host has
/// and to one of the device's storage bindings (the map is uploaded as one), so a map too
/// large for either is an error while it is built, naming the limit it would pass.
pub fn build_map(gpu: &Gpu, spec: &AttnSpec, br: usize, bc: usize) -> Result<BlockMap> {
    let host = host_budget();
    let binding = gpu.limits().max_storage_buffer_binding_size.min(gpu.limits().max_buffer_size);
    BlockMap::build_within(spec, br, bc, host.min(binding)).map_err(|e| match e {
        Error::HostMemory { what, bytes, .. } if binding < host => {
            Error::BindingTooLarge { what, bytes, limit: binding }
        }
        e => e,
    })
}

/// Slopes buffer contents: the spec's slopes or a single zero (bindings cannot be empty).
pub(crate) fn slopes_words(spec: &AttnSpec) -> Vec<f32> {
    spec.slopes().unwrap_or_else(|| vec![0.0])
}
