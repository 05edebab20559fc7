//! `flash`: tiled online-softmax attention forward (`shaders/flash.wgsl`).
//!
//! Supports: head dim a multiple of 4 up to 256 ([`Attention`](crate::kernels::Attention) runs
//! every other head dim up to 256 on zero-padded copies, [`pad`](crate::kernels::pad)); any N, M ≥ 1 (N ≠ M, bottom-right aligned);
//! MHA/GQA/MQA by index mapping; causal, window (L, R) and ALiBi in-kernel; any sparse
//! [`Mask`](crate::contract::mask::Mask) through the [`BlockMap`] it walks: unlisted tiles are never
//! loaded, full tiles skip per-element masking, partial ones read visibility bits. Writes O
//! and LSE. An instrumented variant counts tiles, keys and rows moved.
//!
//! Dispatch: one workgroup of `BR` invocations per (query tile, head, batch).

use crate::contract::blockmap::BlockMap;
use crate::contract::spec::AttnSpec;
use crate::error::Result;
use crate::kernels::lowering::STORAGE;
use crate::kernels::matmul::Coop;
use crate::kernels::{
    AttnBuffers, COMMON, CallParams, MODS_NONE, SOFTMAX_TILE, Tiles, Traffic, UNTUNED, check_head_dim,
    check_shuffles, lanes, slopes_words, with_mods,
};
use crate::runtime::shader::{
    BindGroupFields, Bound, Compiled, Shader, ShaderVariant, Snippet, bind_group, header_consts,
};
use crate::runtime::{Gpu, Profile, Tuned};

const NAME: &str = "flash";
bind_group! {
    /// The bindings both flash kernels declare (`shaders/flash_bindings.wgsl`, `common.wgsl`).
    struct FlashBinds {
        0 contract: Uniform, 1 q: Read, 2 k: Read, 3 v: Read, 4 o: ReadWrite, 5 lse: ReadWrite,
        6 block_map: Read, 7 slopes: Read, 8 counters: ReadWrite, 9 tiles: Uniform,
    }
}
/// The tiled kernel (flash.wgsl).
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../../shaders/flash.wgsl"), bindings: FlashBinds::SLOTS };
/// The bindings both flash kernels declare (`shaders/flash_bindings.wgsl`).
const BINDINGS: Snippet =
    Snippet { name: "flash_bindings", source: include_str!("../../../shaders/flash_bindings.wgsl") };
/// The cooperative-matrix variant (`shaders/flash_coop.wgsl`): same bindings.
const COOP_SHADER: Shader = Shader {
    stem: "flash_coop",
    source: include_str!("../../../shaders/flash_coop.wgsl"),
    bindings: FlashBinds::SLOTS,
};

header_consts! {
    /// The vec4 flash kernel's constants (flash.wgsl, softmax_tile.wgsl).
    struct FlashConsts {
        /// vec4 lanes of a head.
        D4,
        /// vec4 lanes each of a row's P invocations holds.
        DP4,
        /// Query rows per workgroup.
        BR,
        /// Keys per tile.
        BC,
        /// Invocations per query row.
        P,
        /// Subgroup width of the shuffle path (0: plain loads).
        SG,
        /// Private lanes: DP4, padded to whole subgroups on the shuffle path.
        D4P,
        /// Length of the partial-score scratch.
        S_PART,
        /// The instrumented variant (counts tiles, keys and rows).
        COUNT,
        /// Q, K, V stored as f16.
        F16_U,
        /// P does not divide D4: the last invocation of a row guards its lanes.
        LANE_GUARD_U,
        /// SG does not divide D4: the shuffle path clamps its loads.
        SG_GUARD_U,
        /// The user's mods compiled in (set by `with_mods`).
        MODS_U,
    }
}

/// Most vec4 lanes of q (and of the accumulator) one invocation keeps in registers; past
/// that GPUs spill, so wider heads are split over `p` invocations per row.
pub(crate) const MAX_LANES_PER_INVOCATION: usize = 32;

/// Tile shape of the flash kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlashConfig {
    /// Query rows per workgroup.
    pub br: u32,
    /// Keys per K/V tile staged in workgroup memory.
    pub bc: u32,
    /// Invocations per query row, each owning a slice of the head dim (1 for D ≤ 128).
    pub p: u32,
    /// Subgroup width of the shuffle path (0: plain workgroup-memory loads). Needs the
    /// SUBGROUP feature, one fixed subgroup size, `p == 1` and `br` a multiple of it.
    pub sg: u32,
    /// Most tiles of one list walked per dispatch (0: whole lists in one pass). Set below an
    /// adapter's loop-iteration cap (see [`Gpu::loop_iteration_limit`]); any value is exact.
    pub pass_tiles: u32,
    /// Cooperative matrices (tensor cores): `shaders/flash_coop.wgsl`, one subgroup per
    /// workgroup, `br` and `bc` multiples of the matrix side, `p = 1`, `sg = 0`; the input
    /// type (f16 or f32) is the storage type of Q, K, V. `None`: the vec4 kernel.
    pub coop: Option<Coop>,
}

impl FlashConfig {
    /// Invocations per row needed at head dim `d`.
    pub(crate) fn parts_for(d: usize) -> u32 {
        (d / 4).div_ceil(MAX_LANES_PER_INVOCATION).max(1) as u32
    }

    /// Invocations per workgroup.
    pub fn invocations(&self) -> u32 {
        match self.coop {
            Some(c) => c.subgroup,
            None => self.br.saturating_mul(self.p),
        }
    }

    fn s_part_len(&self) -> u32 {
        if self.p > 1 { self.br.saturating_mul(self.bc).saturating_mul(self.p) } else { 1 }
    }

    /// Workgroup memory of this tile shape at head dim `d`: a K tile, a V tile, and the
    /// partial-score exchange when `p > 1`.
    pub fn workgroup_bytes(&self, d: usize) -> u64 {
        let (br, bc) = (self.br as u64, self.bc as u64);
        match self.coop {
            Some(c) => {
                let dp = (d as u64).div_ceil(c.size as u64) * c.size as u64;
                let elem = if c.f16 { 2 } else { 4 };
                (br * dp + 2 * bc * dp + br * bc) * elem + (br * bc + br * dp + 2 * br) * 4
            }
            None => 2 * bc * d as u64 * 4 + self.s_part_len() as u64 * 4,
        }
    }

    /// The tensor-core configuration at head dim `d` where `gpu` offers square cooperative
    /// matrices of the input type (f16 when Q, K, V are stored as f16, else f32) with f32
    /// accumulation: 2S × 2S tiles, else the largest of 2S × S, S × 2S, S × S that fits its
    /// workgroup memory. `None` where it offers none (every software adapter) or none fits.
    pub fn tensor_cores(gpu: &Gpu, d: usize, f16: bool) -> Option<Self> {
        if f16 && !gpu.features().contains(wgpu::Features::SHADER_F16) {
            return None;
        }
        let coop = Coop::choose(gpu.cooperative_matrices(), gpu.fixed_subgroup(), f16)?;
        [(2, 2), (2, 1), (1, 2), (1, 1)]
            .into_iter()
            .map(|(rt, ct)| Self {
                br: rt * coop.size,
                bc: ct * coop.size,
                p: 1,
                sg: 0,
                pass_tiles: 0,
                coop: Some(coop),
            })
            .find(|c| c.fits(gpu.limits(), d))
            .map(|c| c.fit_passes(gpu, d))
    }

    /// The configuration for this device: f32 cooperative matrices where it offers them
    /// ([`FlashConfig::tensor_cores`]; the same numbers as the vec4 kernel), else
    /// [`FlashConfig::choose`] with its profile, its attached tuned winners and its limits.
    /// (NVIDIA's drivers list f16 inputs only: [`Inputs::F16TensorCores`](crate::kernels::Inputs::F16TensorCores).)
    pub fn for_device(gpu: &Gpu, d: usize) -> Self {
        Self::tensor_cores(gpu, d, false)
            .unwrap_or_else(|| Self::choose(gpu.profile().0, gpu.tuned(), gpu, d))
    }

    /// The one place a flash configuration is chosen: the tuned winner for head dim `d` where
    /// one is attached and valid, else the profile's preset; if that does not fit the device,
    /// 64 rows and the largest key tile that fits ([`FlashConfig::for_limits`]); subgroup
    /// shuffles only at the device's own fixed subgroup width; passes below a loop cap.
    pub fn choose(profile: &Profile, tuned: Option<&Tuned>, gpu: &Gpu, d: usize) -> Self {
        let winner = tuned.and_then(|t| t.get(&Self::tuning_key(d))).and_then(|w| Self::from_winner(w, d));
        let mut c = winner.unwrap_or_else(|| Self::for_profile(profile, d));
        let l = gpu.limits();
        if !c.fits(l, d) {
            c = Self::for_limits(l, d);
        }
        c.sg = match gpu.fixed_subgroup() {
            Some(width) if c.sg == width => c.sg,
            _ => 0,
        };
        c.fit_passes(gpu, d)
    }

    /// The key of this kernel's tuned winners at head dim `d`.
    pub fn tuning_key(d: usize) -> String {
        format!("flash:d={d}")
    }

    /// This configuration as a tuned winner: `[br, bc, p, sg]`.
    pub fn winner(&self) -> Vec<u32> {
        vec![self.br, self.bc, self.p, self.sg]
    }

    /// A tuned winner read back, if it is a configuration the kernel can run at head dim `d`.
    fn from_winner(w: &[u32], d: usize) -> Option<Self> {
        let &[br, bc, p, sg] = w else {
            log::warn!(
                "ignoring the tuned flash winner {w:?} for head dim {d} in {}: not [br, bc, p, sg]{}",
                crate::runtime::tuning_cache_hint(),
                UNTUNED
            );
            return None;
        };
        // bounded first, so that no product below can wrap
        let ok = br > 0
            && br <= 1024
            && bc > 0
            && bc as usize <= crate::contract::blockmap::MAX_BC
            && p > 0
            && p as usize <= (d / 4).max(1)
            && (sg == 0 || br.is_multiple_of(sg));
        if !ok {
            log::warn!(
                "ignoring the tuned flash winner {w:?} for head dim {d} in {}: not a valid configuration{}",
                crate::runtime::tuning_cache_hint(),
                UNTUNED
            );
        }
        ok.then_some(Self { br, bc, p, sg, pass_tiles: 0, coop: None })
    }

    /// Whether this configuration fits workgroup memory and invocations of `limits`.
    fn fits(&self, l: &wgpu::Limits, d: usize) -> bool {
        self.workgroup_bytes(d) <= l.max_compute_workgroup_storage_size as u64
            && self.invocations()
                <= l.max_compute_invocations_per_workgroup.min(l.max_compute_workgroup_size_x)
    }

    /// This config with `pass_tiles` set below the adapter's loop-iteration cap (unchanged
    /// where the adapter has none).
    pub fn fit_passes(mut self, gpu: &Gpu, d: usize) -> Self {
        if let Some(limit) = gpu.loop_iteration_limit() {
            self.pass_tiles = (limit / self.loop_iterations_per_tile(d)).max(1) as u32;
        }
        self
    }

    /// An upper bound on the loop iterations one invocation runs per tile, counting every
    /// loop of the tile body as if none were unrolled (compilers unroll most of them).
    pub(crate) fn loop_iterations_per_tile(&self, d: usize) -> u64 {
        let (br, bc, p) = (self.br as u64, self.bc as u64, self.p as u64);
        if let Some(c) = self.coop {
            let (s, w) = (c.size as u64, c.subgroup as u64);
            let ds = (d as u64).div_ceil(s);
            let (rt, ct) = (br / s, bc / s);
            let staging = (bc * ds * s).div_ceil(w);
            let rows = br.div_ceil(w) * (3 + 2 * bc + ds * s);
            return 1 + staging + rt * ct * (1 + ds) + rows + rt * ds * (1 + ct) + 8;
        }
        let d4 = (d / 4) as u64;
        let lanes = d4.div_ceil(p);
        let staging = (bc * d4).div_ceil(br * p);
        let dot = if self.sg > 0 {
            let sg = self.sg as u64;
            1 + d4.div_ceil(sg) * (1 + sg)
        } else {
            1 + lanes
        };
        let exchange = if p > 1 { bc * (3 + p) } else { 0 };
        1 + staging + 2 * bc * dot + exchange + bc + lanes + 8
    }

    /// The configuration a profile prescribes at head dim `d`, within the profile's limits.
    pub fn for_profile(profile: &Profile, d: usize) -> Self {
        Self::sized(profile.rows, profile.subgroup, &profile.limits, d)
    }

    /// 64 rows and the largest key tile that fits these limits, no shuffles: what runs on any
    /// device with `limits`.
    pub fn for_limits(limits: &wgpu::Limits, d: usize) -> Self {
        Self::sized(64, 0, limits, d)
    }

    /// `rows` query rows (fewer per invocation split), the largest key tile of 32, 16, 8, 4
    /// that fits `limits`, and shuffles of width `subgroup` where the rows divide into them.
    fn sized(rows: u32, subgroup: u32, limits: &wgpu::Limits, d: usize) -> Self {
        let p = Self::parts_for(d);
        let max_inv = limits.max_compute_invocations_per_workgroup.min(limits.max_compute_workgroup_size_x);
        let br = (rows / p).min(max_inv / p).max(1);
        let storage = limits.max_compute_workgroup_storage_size as u64;
        let bc = [32u32, 16, 8, 4]
            .into_iter()
            .find(|&bc| Self { br, bc, p, sg: 0, pass_tiles: 0, coop: None }.workgroup_bytes(d) <= storage)
            .unwrap_or(4);
        let sg = if p == 1 && subgroup > 0 && br.is_multiple_of(subgroup) { subgroup } else { 0 };
        Self { br, bc, p, sg, pass_tiles: 0, coop: None }
    }

    /// The shader variant for head dim `d`; `count` builds the instrumented variant.
    pub fn variant(&self, d: usize, count: bool) -> ShaderVariant {
        self.variant_f16(d, count, false)
    }

    /// [`FlashConfig::variant`] with Q, K, V stored as f16 when `f16`.
    pub(crate) fn variant_f16(&self, d: usize, count: bool, f16: bool) -> ShaderVariant {
        let d4 = (d / 4) as u32;
        if let Some(c) = self.coop {
            let shape = [
                ("RT", self.br / c.size),
                ("CT", self.bc / c.size),
                ("D4", d4),
                ("COUNT", count as u32),
                ("MODS_U", 0),
            ];
            return COOP_SHADER
                .variant(
                    "main",
                    &[COMMON, BINDINGS, MODS_NONE],
                    c.consts().into_iter().chain(shape).collect(),
                )
                .lowered(STORAGE);
        }
        let consts = FlashConsts {
            D4: d4,
            DP4: d4.div_ceil(self.p),
            BR: self.br,
            BC: self.bc,
            P: self.p,
            SG: self.sg,
            D4P: if self.sg > 0 { d4.div_ceil(self.sg) * self.sg } else { d4.div_ceil(self.p) },
            S_PART: self.s_part_len(),
            COUNT: count as u32,
            F16_U: f16 as u32,
            LANE_GUARD_U: !d4.is_multiple_of(self.p) as u32,
            SG_GUARD_U: (self.sg > 0 && !d4.is_multiple_of(self.sg)) as u32,
            MODS_U: 0,
        };
        SHADER
            .variant("main", &[COMMON, lanes(self.sg), SOFTMAX_TILE, BINDINGS, MODS_NONE], consts.header())
            .lowered(STORAGE)
    }
}

/// Every cooperative-matrix variant the flash kernel can build — both matrix sides, f16 and
/// f32 inputs, subgroups of 32 and 64, the largest and smallest tiles, head dims that are
/// and are not multiples of the side, counting or not: what CI validates with naga.
pub fn coop_variants() -> Vec<ShaderVariant> {
    let mut out = Vec::new();
    for size in [8, 16] {
        for f16 in [false, true] {
            for subgroup in [32, 64] {
                let coop = Some(Coop { size, f16, subgroup, emulated: false });
                for (rt, ct) in [(2, 2), (1, 1)] {
                    let c = FlashConfig { br: rt * size, bc: ct * size, p: 1, sg: 0, pass_tiles: 0, coop };
                    for d in [4, 40, 64, 128, 256] {
                        out.push(c.variant(d, false));
                    }
                    out.push(c.variant(64, true));
                }
            }
        }
    }
    out
}

/// What the instrumented kernel counted in one run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlashCounters {
    /// K/V tiles staged in workgroup memory.
    pub tiles: u64,
    /// Keys staged (K and V rows each).
    pub keys: u64,
    /// Query rows read in the first pass.
    pub rows_read: u64,
    /// Output rows written (O and LSE), every pass.
    pub rows_written: u64,
    /// Rows resumed in a later pass (Q, O and LSE read again).
    pub rows_resumed: u64,
}

impl FlashCounters {
    /// Device-memory bytes moved for Q, K, V, resumed O and LSE (read) and O, LSE (written)
    /// at head dim `d`.
    pub fn traffic(&self, d: usize) -> Traffic {
        let d = d as u64;
        Traffic {
            read: self.keys * 2 * d * 4 + self.rows_read * d * 4 + self.rows_resumed * (2 * d + 1) * 4,
            written: self.rows_written * (d + 1) * 4,
        }
    }
}

/// A prepared flash call.
pub struct Flash {
    config: FlashConfig,
    kernel: Compiled,
    /// One dispatch per (chunk of heads that fits the bindings, pass over the tile lists).
    passes: Vec<Dispatch>,
    chunks: usize,
    f16: bool,
    contract: wgpu::Buffer,
    block_map: wgpu::Buffer,
    map: BlockMap,
    slopes: wgpu::Buffer,
    /// Real counters when instrumented, else a 4-byte placeholder binding.
    counters: wgpu::Buffer,
    instrumented: bool,
    mask_mod_map: Option<std::time::Duration>,
    /// Bind group 1: the mods' buffers, when they read any.
    mod_bind: Option<wgpu::BindGroup>,
    /// Loop iterations the call's mods may run per invocation (`None` without mods).
    mod_steps: Option<u32>,
}

impl Flash {
    /// Prepares flash for `spec` with tile configuration `config` (checked against the device);
    /// `instrumented` builds the counting variant.
    pub fn new(gpu: &Gpu, spec: &AttnSpec, config: FlashConfig, instrumented: bool) -> Result<Self> {
        Self::new_with(gpu, spec, config, instrumented, false)
    }

    /// [`Flash::new`]; with `f16`, Q, K and V are read as f16 (needs SHADER_F16 and tensors
    /// that fit one binding each).
    pub(crate) fn new_with(
        gpu: &Gpu,
        spec: &AttnSpec,
        mut config: FlashConfig,
        instrumented: bool,
        f16: bool,
    ) -> Result<Self> {
        let s = spec.shape;
        // mods with loops share the adapter's loop cap: fewer tiles per pass (any count is exact)
        if let (true, Some(cap)) = (
            spec.mods.as_ref().is_some_and(|m| m.has_loops()),
            crate::kernels::kernel_loop_cap(gpu, spec.mods.as_ref()),
        ) {
            let fit = (cap / config.loop_iterations_per_tile(s.head_dim)).max(1) as u32;
            if config.pass_tiles == 0 || config.pass_tiles > fit {
                config.pass_tiles = fit;
            }
        }
        if f16 && !gpu.features().contains(wgpu::Features::SHADER_F16) {
            return Err(crate::Error::MissingFeature {
                feature: "SHADER_F16",
                needed_for: "flash with f16 storage",
                instead: "use f32 inputs (or Inputs::F16 without explicit tiles, which falls back to them)",
            });
        }
        check_head_dim(NAME, s.head_dim)?;
        if config.br == 0
            || config.bc == 0
            || config.bc as usize > crate::contract::blockmap::MAX_BC
            || config.p == 0
            || (config.p as usize) > s.head_dim / 4
        {
            return Err(crate::Error::Config {
                kernel: NAME,
                config: format!("{config:?}"),
                reason: format!(
                    "need br, p ≥ 1, 1 ≤ bc ≤ {}, p ≤ D/4 = {}",
                    crate::contract::blockmap::MAX_BC,
                    s.head_dim / 4
                ),
            });
        }
        let lanes = (s.head_dim / 4).div_ceil(config.p as usize);
        if lanes > MAX_LANES_PER_INVOCATION && config.coop.is_none() {
            return Err(crate::Error::Config {
                kernel: NAME,
                config: format!("{config:?}"),
                reason: format!(
                    "each invocation would keep {lanes} vec4 lanes of head dim {}; at most {MAX_LANES_PER_INVOCATION} (raise p)",
                    s.head_dim
                ),
            });
        }
        if config.sg > 0 && config.p != 1 {
            return Err(crate::Error::Config {
                kernel: NAME,
                config: format!("{config:?}"),
                reason: "the subgroup path needs p = 1 (one invocation per row)".into(),
            });
        }
        check_shuffles(gpu, NAME, &config, config.sg, &[("br", config.br)])?;
        if let Some(c) = config.coop {
            Self::check_coop(gpu, &config, c, f16)?;
        }
        if let Some(limit) = gpu.loop_iteration_limit() {
            let per_tile = config.loop_iterations_per_tile(s.head_dim);
            if config.pass_tiles == 0 || config.pass_tiles as u64 * per_tile > limit {
                return Err(crate::Error::LoopLimit {
                    kernel: NAME,
                    needed: config.pass_tiles.max(1) as u64 * per_tile,
                    limit,
                    hint: "set pass_tiles with FlashConfig::fit_passes",
                });
            }
        }
        gpu.check_workgroup(NAME, config.workgroup_bytes(s.head_dim), config.invocations())?;
        gpu.check_dispatch(NAME, [s.n.div_ceil(config.br as usize) as u64, s.heads as u64, s.batch as u64])?;
        let chunks = Chunk::plan(gpu, spec)?;
        if f16 && chunks.len() > 1 {
            return Err(crate::Error::NeedsOneBinding {
                what: "flash with f16 storage",
                chunks: chunks.len(),
            });
        }

        let mut map = crate::kernels::build_map(gpu, spec, config.br as usize, config.bc as usize)?;
        let mut mask_mod_map = None;
        if let Some(m) = spec.mods.as_ref().filter(|m| m.has_mask_mod()) {
            let (refined, took) = crate::kernels::mods::refine(gpu, spec, m, &map)?;
            map = refined;
            mask_mod_map = Some(took);
        }
        let (mut words, [entries, mask_index, bits]) = map.to_gpu_words();
        let mut tiles = Tiles::of_map(&map, [entries, mask_index, bits]);
        tiles.pass_tiles = config.pass_tiles;
        // Pass 0 launches every query tile; pass k only those whose list (in any head) is
        // longer than k·pass_tiles, listed after the map in the same buffer.
        let pass_lists = map.pass_lists(config.pass_tiles, &mut words);
        let mut passes = Vec::new();
        for chunk in &chunks {
            chunk.shift(&mut tiles);
            for (k, &(list, launched)) in pass_lists.iter().enumerate() {
                tiles.pass_index = k as u32;
                tiles.qtile_list = list;
                let groups = [launched as u32, chunk.heads as u32, chunk.batches as u32];
                passes.push(Dispatch {
                    tiles: gpu.uniform("flash tiles", &tiles),
                    groups,
                    chunk: chunk.clone(),
                });
            }
        }

        // the mods' loops get what the adapter's cap leaves beside a pass of the kernel's
        let kernel_loops = config.pass_tiles as u64 * config.loop_iterations_per_tile(s.head_dim);
        let steps = crate::kernels::mod_steps(gpu, kernel_loops);
        let variant = with_mods(
            config.variant_f16(s.head_dim, instrumented, f16),
            spec.mods.as_ref(),
            s.n,
            s.m,
            steps,
        )?;
        let kernel = gpu.compile(&variant)?;
        let mod_bind = crate::kernels::mods::ModBuffers::upload(gpu, spec)?.bind(gpu, &kernel);
        Ok(Self {
            config,
            kernel,
            passes,
            chunks: chunks.len(),
            f16,
            contract: CallParams::new(spec).upload(gpu),
            block_map: gpu.upload("flash block map", &words)?,
            map,
            slopes: gpu.upload("ALiBi slopes", &slopes_words(spec))?,
            counters: gpu.storage("flash counters", if instrumented { 20 } else { 4 })?,
            instrumented,
            mask_mod_map,
            mod_bind,
            mod_steps: spec.mods.is_some().then_some(steps),
        })
    }

    /// Loop iterations the call's mods may run per invocation (`None` without mods); a row
    /// whose mods ran past them is NaN in O and LSE.
    pub fn mod_steps(&self) -> Option<u32> {
        self.mod_steps
    }

    /// How long refining the block map by the call's `mask_mod` took on the device (`None`
    /// without one): done once when the call is prepared, reused by every run.
    pub fn mask_mod_map_time(&self) -> Option<std::time::Duration> {
        self.mask_mod_map
    }

    /// A cooperative-matrix configuration against the kernel's shape rules and the device.
    fn check_coop(gpu: &Gpu, config: &FlashConfig, c: Coop, f16: bool) -> Result<()> {
        let reason = if config.p != 1 || config.sg != 0 {
            "cooperative matrices need p = 1 and sg = 0 (one subgroup per workgroup)".to_string()
        } else if config.br == 0
            || config.bc == 0
            || !config.br.is_multiple_of(c.size)
            || !config.bc.is_multiple_of(c.size)
        {
            format!(
                "br = {} and bc = {} must be positive multiples of the matrix side {}",
                config.br, config.bc, c.size
            )
        } else if c.f16 != f16 {
            format!(
                "the matrices' inputs are {} but Q, K, V are stored as {}: they must match",
                if c.f16 { "f16" } else { "f32" },
                if f16 { "f16" } else { "f32" }
            )
        } else if !c.emulated
            && Coop::choose(gpu.cooperative_matrices(), gpu.fixed_subgroup(), c.f16).is_none_or(|o| {
                o.subgroup != c.subgroup || !gpu.cooperative_matrices().iter().any(|p| p.m_size == c.size)
            })
        {
            format!(
                "the device offers no {0}×{0} {1} cooperative matrix at subgroup width {2} (configurations: {3:?})",
                c.size,
                if c.f16 { "f16" } else { "f32" },
                c.subgroup,
                gpu.cooperative_matrices()
            )
        } else {
            return Ok(());
        };
        Err(crate::Error::Config { kernel: NAME, config: format!("{config:?}"), reason })
    }

    /// The tile configuration in use.
    pub fn config(&self) -> FlashConfig {
        self.config
    }

    /// Passes over the tile lists per call (1 unless the adapter caps loop iterations).
    pub fn passes(&self) -> usize {
        self.passes.len() / self.chunks
    }

    /// Whether Q, K, V are read as f16.
    pub fn is_f16(&self) -> bool {
        self.f16
    }

    /// Chunks of heads dispatched separately so every binding fits (1 when all fit).
    pub fn chunks(&self) -> usize {
        self.chunks
    }

    /// The traffic of the tile loop: every listed tile stages its keys of K and V once per
    /// workgroup; each query row reads Q and writes O and LSE, and in every later pass that
    /// still has tiles for it, reads Q, O and LSE again and writes O and LSE. Dense, that is
    /// 2·D·4·M·⌈N/BR⌉ bytes of K/V per head — Θ(N·M·D/BR) with BR ∝ SRAM/D, the
    /// FlashAttention bound Θ(N²D²/SRAM).
    pub fn traffic(&self, spec: &AttnSpec) -> Traffic {
        let s = spec.shape;
        let (m, bc, br) = (s.m as u64, self.map.bc as u64, self.map.br);
        let keys: u64 = self
            .map
            .entries
            .iter()
            .map(|&e| {
                let k0 = (e & !crate::contract::blockmap::FULL) as u64 * bc;
                (k0 + bc).min(m) - k0
            })
            .sum();
        let per_map = if self.map.heads == 1 { s.heads as u64 } else { 1 } * s.batch as u64;
        let rows_in = |qt: usize| (((qt + 1) * br).min(s.n) - qt * br) as u64;
        let mut resumed = 0;
        if self.config.pass_tiles > 0 {
            let t = self.config.pass_tiles as usize;
            for (r, w) in self.map.row_ptr.windows(2).enumerate() {
                let len = (w[1] - w[0]) as usize;
                let later_passes = len.div_ceil(t).saturating_sub(1) as u64;
                resumed += later_passes * rows_in(r % self.map.n_qtiles);
            }
        }
        let rows = (s.batch * s.heads * s.n) as u64;
        let resumed = resumed * per_map;
        FlashCounters {
            tiles: 0,
            keys: keys * per_map,
            rows_read: rows,
            rows_written: rows + resumed,
            rows_resumed: resumed,
        }
        .traffic(s.head_dim)
    }

    /// The contract, the first pass's tiles, the block map and the slopes, for kernels that
    /// read the same map (the heatmap).
    pub(crate) fn bindings(&self) -> (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer) {
        (&self.contract, &self.passes[0].tiles, &self.block_map, &self.slopes)
    }

    /// The tiles this call visits.
    pub fn block_map(&self) -> &BlockMap {
        &self.map
    }

    /// Block map and parameters: linear in the number of listed tiles, never N×M floats.
    pub fn scratch_bytes(&self) -> u64 {
        self.contract.size()
            + self.block_map.size()
            + self.slopes.size()
            + self.passes.iter().map(|p| p.tiles.size()).sum::<u64>()
    }

    /// The counters of the last run (instrumented variant only).
    pub async fn counters(&self, gpu: &Gpu) -> Result<Option<FlashCounters>> {
        if !self.instrumented {
            return Ok(None);
        }
        let c: Vec<u32> = gpu.read_async(&self.counters, 5).await?;
        Ok(Some(FlashCounters {
            tiles: c[0] as u64,
            keys: c[1] as u64,
            rows_read: c[2] as u64,
            rows_written: c[3] as u64,
            rows_resumed: c[4] as u64,
        }))
    }

    /// Records the call's dispatches (one compute pass) into `encoder` on buffers `b`.
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
        for d in &self.passes {
            let c = &d.chunk;
            let binds = FlashBinds {
                contract: (&self.contract).into(),
                q: Bound::range(b.q, c.q_range()),
                k: Bound::range(b.k, c.kv_range()),
                v: Bound::range(b.v, c.kv_range()),
                o: Bound::range(b.o, c.q_range()),
                lse: Bound::range(b.lse, c.lse_range()),
                block_map: (&self.block_map).into(),
                slopes: (&self.slopes).into(),
                counters: (&self.counters).into(),
                tiles: (&d.tiles).into(),
            };
            let bind = self.kernel.bind(gpu, &binds);
            self.kernel.dispatch_with(&mut pass, &bind, self.mod_bind.as_ref(), d.groups);
        }
    }
}

/// One dispatch: its parameters, workgroup counts and the chunk it covers.
struct Dispatch {
    tiles: wgpu::Buffer,
    groups: [u32; 3],
    chunk: Chunk,
}

/// Heads dispatched together and the byte ranges of Q/O, K/V and LSE they read and write,
/// each starting at an offset aligned for binding (the shifts in `Tiles` undo the slack).
#[derive(Clone, Debug)]
pub(crate) struct Chunk {
    pub head_base: usize,
    pub heads: usize,
    pub batch_base: usize,
    pub batches: usize,
    /// (aligned offset, size) in bytes; size 0 = the whole buffer.
    pub q: (u64, u64),
    pub kv: (u64, u64),
    pub lse: (u64, u64),
}

impl Chunk {
    /// One chunk for everything when every tensor fits one binding; else, per batch, runs
    /// of kv heads (with their query heads) as long as Q and K fit one binding each.
    pub(crate) fn plan(gpu: &Gpu, spec: &AttnSpec) -> Result<Vec<Chunk>> {
        let s = spec.shape;
        let l = gpu.limits();
        let limit = l.max_storage_buffer_binding_size;
        for (what, len) in [("Q", s.q_len()), ("K", s.kv_len()), ("V", s.kv_len()), ("O", s.q_len())] {
            let bytes = len as u64 * 4;
            if bytes > l.max_buffer_size {
                return Err(crate::Error::BufferTooLarge {
                    what: what.into(),
                    bytes,
                    limit: l.max_buffer_size,
                });
            }
        }
        if (s.q_len().max(s.kv_len()) as u64) * 4 <= limit {
            let whole = (0, 0);
            return Ok(vec![Chunk {
                head_base: 0,
                heads: s.heads,
                batch_base: 0,
                batches: s.batch,
                q: whole,
                kv: whole,
                lse: whole,
            }]);
        }
        let align = l.min_storage_buffer_offset_alignment as u64;
        let g = s.group();
        let (d, n, m) = (s.head_dim as u64, s.n as u64, s.m as u64);
        let q_per_kv = g as u64 * n * d * 4;
        let kv_per_kv = m * d * 4;
        let per_chunk = (limit.saturating_sub(align) / q_per_kv).min(limit.saturating_sub(align) / kv_per_kv);
        if per_chunk == 0 {
            return Err(crate::Error::BindingTooLarge {
                what: format!(
                    "flash: the Q rows of one kv head's {g} query heads ({q_per_kv} bytes) or its K ({kv_per_kv} bytes)"
                ),
                bytes: q_per_kv.max(kv_per_kv) + align,
                limit,
            });
        }
        let range = |offset: u64, size: u64| {
            let aligned = offset - offset % align;
            (aligned, offset + size - aligned)
        };
        let mut out = Vec::new();
        for b in 0..s.batch {
            for kh0 in (0..s.kv_heads).step_by(per_chunk as usize) {
                let kh1 = (kh0 + per_chunk as usize).min(s.kv_heads);
                let (h0, heads) = (kh0 * g, (kh1 - kh0) * g);
                let first_row = (b * s.heads + h0) as u64;
                out.push(Chunk {
                    head_base: h0,
                    heads,
                    batch_base: b,
                    batches: 1,
                    q: range(first_row * n * d * 4, heads as u64 * n * d * 4),
                    kv: range((b * s.kv_heads + kh0) as u64 * m * d * 4, (kh1 - kh0) as u64 * m * d * 4),
                    lse: range(first_row * n * 4, heads as u64 * n * 4),
                });
            }
        }
        Ok(out)
    }

    /// Points `tiles` at this chunk: its first head and batch, and the shifts that turn
    /// global indices into indices of the ranges bound for it.
    pub(crate) fn shift(&self, tiles: &mut Tiles) {
        tiles.q_shift = (self.q.0 / 16) as u32;
        tiles.kv_shift = (self.kv.0 / 16) as u32;
        tiles.lse_shift = (self.lse.0 / 4) as u32;
        tiles.head_base = self.head_base as u32;
        tiles.batch_base = self.batch_base as u32;
    }

    fn whole(r: (u64, u64)) -> bool {
        r.1 == 0
    }
    pub(crate) fn q_range(&self) -> Option<(u64, u64)> {
        (!Self::whole(self.q)).then_some(self.q)
    }
    pub(crate) fn kv_range(&self) -> Option<(u64, u64)> {
        (!Self::whole(self.kv)).then_some(self.kv)
    }
    pub(crate) fn lse_range(&self) -> Option<(u64, u64)> {
        (!Self::whole(self.lse)).then_some(self.lse)
    }

    /// The byte range of the (LSE, Δ) pairs of this chunk's rows (8 bytes a row), aligned
    /// for binding like the others; `None` = the whole buffer.
    pub(crate) fn stats_range(&self, spec: &AttnSpec, align: u64) -> Option<(u64, u64)> {
        if Self::whole(self.q) {
            return None;
        }
        let s = spec.shape;
        let first_row = (self.batch_base * s.heads + self.head_base) as u64 * s.n as u64;
        let (offset, size) = (first_row * 8, (self.heads * s.n) as u64 * 8);
        let aligned = offset - offset % align;
        Some((aligned, offset + size - aligned))
    }
}
