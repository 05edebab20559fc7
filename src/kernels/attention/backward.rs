//! `backward`: the FlashAttention backward pass (`shaders/backward.wgsl`): dQ, dK, dV from
//! Q, K, V, O, dO and the forward's LSE, recomputing the probabilities tile by tile.
//!
//! Three kernels, no atomics: `delta` (per row `Δ = rowsum(dO ∘ O)`), `dq` (a workgroup per
//! query tile walks the forward's block map; dQ in registers) and `dkv` (a workgroup per key
//! tile walks the transposed map for every query head of its group; dK, dV in registers).
//! Every output element has one owner, so the sums are deterministic; the price is computing
//! the probabilities twice, which WGSL (no float atomics) makes the natural choice.
//!
//! Supports everything the forward does — causal, window, ALiBi (no slope gradient), every
//! sparse [`Mask`](crate::contract::mask::Mask) with tile skipping, GQA/MQA (dK, dV summed over the
//! group), N ≠ M, fully masked rows (zero gradient); tensors beyond one storage binding run
//! in chunks of kv heads, as in the forward. [`Backward::naive`] is the materialised baseline.

use crate::contract::blockmap::{BlockMap, Columns, FULL};
use crate::contract::spec::{AttnOutput, AttnSpec};
use crate::error::{Error, Result};
use crate::kernels::attention::flash;
use crate::kernels::pad::{Padded, Rows};
use crate::kernels::positions::EncodedInputs;
use crate::kernels::{
    AttnBuffers, COMMON, CallParams, Kernel, MODS_NONE, Tiles, Traffic, check_call_head_dim, check_head_dim,
    check_shuffles, lanes, with_mods,
};
use crate::runtime::Gpu;
use crate::runtime::shader::{
    Bound, Compiled, Shader, ShaderVariant, Slot, bind_group, bindings, header_consts,
};

const SOURCE: &str = include_str!("../../../shaders/backward.wgsl");
const NAME: &str = "backward";
/// Rows per workgroup of the `delta` kernel (its `@workgroup_size`).
const DELTA_ROWS: u32 = 64;

/// Tile shape of the backward kernels. `dq` runs `br` invocations (one per query row) and
/// stages `bc` keys of K and V; `dkv` runs `bc` invocations (one per key) and stages `br`
/// rows of Q and dO. Both walk the same `br × bc` block map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackwardConfig {
    /// Query rows per tile (`dq`'s invocations, `dkv`'s staged rows).
    pub br: u32,
    /// Keys per tile (`dkv`'s invocations, `dq`'s staged keys).
    pub bc: u32,
    /// Subgroup width of the shuffle path (0: plain loads); needs `br` and `bc` multiples of it.
    pub sg: u32,
    /// Most tiles per list per dispatch (0: whole lists), below a loop-iteration cap.
    pub dq_pass_tiles: u32,
    /// Most query tiles per column list per `dkv` dispatch (0: whole lists), below a loop cap.
    pub dkv_pass_tiles: u32,
}

impl BackwardConfig {
    /// Workgroup memory of `dq`: a K and a V tile.
    pub fn dq_workgroup_bytes(&self, d: usize) -> u64 {
        2 * self.bc as u64 * d as u64 * 4
    }

    /// Workgroup memory of `dkv`: a Q and a dO tile, and (LSE, Δ, visibility bits) per row.
    pub fn dkv_workgroup_bytes(&self, d: usize) -> u64 {
        2 * self.br as u64 * d as u64 * 4 + 3 * self.br as u64 * 4
    }

    /// The largest tiles that fit the device (both kernels), subgroup shuffles where the
    /// forward uses them on this device, passes below a loop-iteration cap.
    pub fn for_device(gpu: &Gpu, d: usize) -> Self {
        let l = gpu.limits();
        let storage = l.max_compute_workgroup_storage_size as u64;
        let inv = l.max_compute_invocations_per_workgroup.min(l.max_compute_workgroup_size_x);
        let sg = flash::FlashConfig::choose(gpu.profile().0, gpu.tuned(), gpu, d).sg;
        let candidates = [(64, 32), (32, 32), (32, 16), (16, 16), (16, 8), (8, 8), (8, 4), (4, 4)];
        let fits = |c: &Self| {
            c.dq_workgroup_bytes(d) <= storage && c.dkv_workgroup_bytes(d) <= storage && c.br.max(c.bc) <= inv
        };
        let mut c = candidates
            .into_iter()
            .map(|(br, bc)| Self { br, bc, sg: 0, dq_pass_tiles: 0, dkv_pass_tiles: 0 })
            .find(fits)
            .unwrap_or(Self { br: 4, bc: 4, sg: 0, dq_pass_tiles: 0, dkv_pass_tiles: 0 });
        if sg > 0 && c.br.is_multiple_of(sg) && c.bc.is_multiple_of(sg) {
            c.sg = sg;
        }
        c.fit_passes(gpu, d)
    }

    /// This config with pass sizes below the adapter's loop-iteration cap (if any).
    pub fn fit_passes(mut self, gpu: &Gpu, d: usize) -> Self {
        if let Some(limit) = gpu.loop_iteration_limit() {
            let (dq, dkv, overhead) = self.loop_iterations(d);
            let budget = limit.saturating_sub(overhead);
            self.dq_pass_tiles = (budget / dq).max(1) as u32;
            self.dkv_pass_tiles = (budget / dkv).max(1) as u32;
        }
        self
    }

    /// Upper bounds on the loop iterations one invocation runs per tile of `dq` and of `dkv`,
    /// and outside the tile loops, counting every loop as if none were unrolled.
    pub(crate) fn loop_iterations(&self, d: usize) -> (u64, u64, u64) {
        let (br, bc) = (self.br as u64, self.bc as u64);
        let d4 = (d / 4) as u64;
        let d4p = self.private_lanes(d) as u64;
        // one pass over the head dim: a dot product or an accumulation
        let sweep = if self.sg > 0 { d4p / self.sg as u64 * (1 + self.sg as u64) + 1 } else { d4 + 1 };
        let dq = 4 + (bc * d4).div_ceil(br) + bc * (1 + 2 * sweep);
        let dkv = 4 + (br * d4).div_ceil(bc) + br.div_ceil(bc) + br * (1 + 2 * sweep);
        (dq, dkv, 8 * d4p + 64)
    }

    /// Private vec4 lanes per row: D/4, padded to whole subgroups on the shuffle path.
    fn private_lanes(&self, d: usize) -> u32 {
        let d4 = (d / 4) as u32;
        if self.sg > 0 { d4.div_ceil(self.sg) * self.sg } else { d4 }
    }

    /// The shader variant of one kernel (`delta`, `dq_main`, `dkv_main`, `naive_*`) at head
    /// dim `d`.
    fn variant(&self, d: usize, entry: Entry) -> ShaderVariant {
        let d4 = (d / 4) as u32;
        entry.shader().variant(
            entry.name(),
            &[COMMON, lanes(self.sg), MODS_NONE],
            BackwardConsts {
                D4: d4,
                D4P: self.private_lanes(d),
                BR: self.br,
                BC: self.bc,
                SG: self.sg,
                MODS_U: 0,
            }
            .header(),
        )
    }

    /// Every variant this config builds at head dim `d`, the baseline's passes included (for
    /// naga validation).
    pub fn variants(&self, d: usize) -> Vec<ShaderVariant> {
        ENTRIES.iter().map(|&e| self.variant(d, e)).collect()
    }
}

header_consts! {
    /// The backward kernels' constants (backward.wgsl).
    struct BackwardConsts {
        /// vec4 lanes of a head.
        D4,
        /// Private lanes: D4, padded to whole subgroups on the shuffle path.
        D4P,
        /// Query rows per tile.
        BR,
        /// Keys per tile.
        BC,
        /// Subgroup width of the shuffle path (0: plain loads).
        SG,
        /// The user's mods compiled in (set by `with_mods`).
        MODS_U,
    }
}

bind_group! {
    /// Every buffer of the backward pass; each entry binds its subset ([`Entry::bindings`]).
    struct BackwardBinds {
        0 contract: Uniform, 12 bwd: Uniform, 14 tiles: Uniform, 1 q: Read, 2 k: Read, 3 v: Read,
        4 d_o: Read, 5 stats: ReadWrite, 6 dq: ReadWrite, 7 dk: ReadWrite, 8 dv: ReadWrite, 9 o: Read,
        10 lse: Read, 11 block_map: Read, 13 s: ReadWrite,
    }
}

/// The kernels of the backward pass: `delta`, then the tiled `dq` and `dkv`, or the
/// materialised baseline's five passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Delta,
    Dq,
    Dkv,
    NaiveP,
    NaiveKv,
    NaiveDs,
    NaiveDq,
}
const ENTRIES: [Entry; 7] =
    [Entry::Delta, Entry::Dq, Entry::Dkv, Entry::NaiveP, Entry::NaiveKv, Entry::NaiveDs, Entry::NaiveDq];

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::Delta => "delta",
            Entry::Dq => "dq_main",
            Entry::Dkv => "dkv_main",
            Entry::NaiveP => "naive_p",
            Entry::NaiveKv => "naive_kv",
            Entry::NaiveDs => "naive_ds",
            Entry::NaiveDq => "naive_dq",
        }
    }

    /// Bindings of each kernel, a subset of [`BackwardBinds`]: the uniforms `CallParams`
    /// (0), `Backward` (12) and `Tiles` (14), then at most 8 storage buffers, the WebGPU
    /// default.
    fn bindings(self) -> &'static [Slot] {
        match self {
            Entry::Delta => {
                bindings![
                    0 contract: Uniform, 12 bwd: Uniform, 14 tiles: Uniform, 4 d_o: Read,
                    5 stats: ReadWrite, 9 o: Read, 10 lse: Read,
                ]
            }
            Entry::Dq => {
                bindings![
                    0 contract: Uniform, 12 bwd: Uniform, 14 tiles: Uniform, 1 q: Read, 2 k: Read,
                    3 v: Read, 4 d_o: Read, 5 stats: ReadWrite, 6 dq: ReadWrite, 11 block_map: Read,
                ]
            }
            Entry::Dkv => {
                bindings![
                    0 contract: Uniform, 12 bwd: Uniform, 14 tiles: Uniform, 1 q: Read, 2 k: Read,
                    3 v: Read, 4 d_o: Read, 5 stats: ReadWrite, 7 dk: ReadWrite, 8 dv: ReadWrite,
                    11 block_map: Read,
                ]
            }
            Entry::NaiveP => {
                bindings![
                    0 contract: Uniform, 12 bwd: Uniform, 14 tiles: Uniform, 1 q: Read, 2 k: Read,
                    5 stats: ReadWrite, 11 block_map: Read, 13 s: ReadWrite,
                ]
            }
            Entry::NaiveKv => {
                bindings![
                    0 contract: Uniform, 12 bwd: Uniform, 14 tiles: Uniform, 1 q: Read, 4 d_o: Read,
                    7 dk: ReadWrite, 8 dv: ReadWrite, 13 s: ReadWrite,
                ]
            }
            Entry::NaiveDs => {
                bindings![
                    0 contract: Uniform, 12 bwd: Uniform, 14 tiles: Uniform, 3 v: Read, 4 d_o: Read,
                    5 stats: ReadWrite, 13 s: ReadWrite,
                ]
            }
            Entry::NaiveDq => {
                bindings![
                    0 contract: Uniform, 12 bwd: Uniform, 14 tiles: Uniform, 2 k: Read,
                    6 dq: ReadWrite, 13 s: ReadWrite,
                ]
            }
        }
    }

    fn shader(self) -> Shader {
        Shader { stem: NAME, source: SOURCE, bindings: self.bindings() }
    }
}

/// One compiled kernel of the pass and its entry.
struct Prepared {
    entry: Entry,
    kernel: Compiled,
    /// Bind group 1: the mods' buffers, when they read any.
    user: Option<wgpu::BindGroup>,
    /// Loop iterations the mods may run per invocation.
    steps: u32,
}

/// The kernels of `entries` for `spec` (its mods compiled in), once per device and variant.
fn compile(gpu: &Gpu, c: &BackwardConfig, spec: &AttnSpec, entries: &[Entry]) -> Result<Vec<Prepared>> {
    let s = spec.shape;
    let buffers = crate::kernels::mods::ModBuffers::upload(gpu, spec)?;
    entries
        .iter()
        .map(|&entry| {
            // the mods' loops get what the adapter's cap leaves beside the kernel's own pass
            let (dq, dkv, overhead) = c.loop_iterations(s.head_dim);
            let kernel_loops = overhead + (c.dq_pass_tiles as u64 * dq).max(c.dkv_pass_tiles as u64 * dkv);
            let steps = crate::kernels::mod_steps(gpu, kernel_loops);
            let v = with_mods(c.variant(s.head_dim, entry), spec.mods.as_ref(), s.n, s.m, steps)?;
            let kernel = gpu.compile(&v)?;
            Ok(Prepared { entry, user: buffers.bind(gpu, &kernel), kernel, steps })
        })
        .collect()
}

/// The `Backward` uniform of backward.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct BwdParams {
    n_ktiles: u32,
    col_ptr: u32,
    col_entries: u32,
    col_masks: u32,
    slopes: u32,
    head_lo: u32,
    head_hi: u32,
    resume: u32,
    batch: u32,
    dk_pass: u32,
    pad: [u32; 2],
}

/// Device buffers of one backward call, owned by the caller: the forward's inputs and
/// outputs (Q, K, V, O, LSE, shaped as in [`AttnBuffers`]), the incoming gradient dO
/// `[B,H,N,D]`, and the gradients written: dQ `[B,H,N,D]`, dK and dV `[B,Hkv,M,D]`.
#[derive(Clone, Copy, Debug)]
pub struct BackwardBuffers<'a> {
    /// The forward's Q, K, V, O and LSE.
    pub forward: AttnBuffers<'a>,
    /// The incoming gradient dO `[B, H, N, D]`.
    pub d_o: &'a wgpu::Buffer,
    /// dQ `[B, H, N, D]`, written.
    pub dq: &'a wgpu::Buffer,
    /// dK `[B, Hkv, M, D]`, written (summed over each kv head's query heads).
    pub dk: &'a wgpu::Buffer,
    /// dV `[B, Hkv, M, D]`, written (summed likewise).
    pub dv: &'a wgpu::Buffer,
}

/// Gradients read back to the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    /// dQ `[B, H, N, D]`.
    pub dq: Vec<f32>,
    /// dK `[B, Hkv, M, D]`.
    pub dk: Vec<f32>,
    /// dV `[B, Hkv, M, D]`.
    pub dv: Vec<f32>,
}

struct Dispatch {
    entry: Entry,
    tiles: wgpu::Buffer,
    bwd: wgpu::Buffer,
    groups: [u32; 3],
    /// The chunk of heads and its (LSE, Δ) range, when tensors run in chunks.
    chunk: Option<(flash::Chunk, Option<(u64, u64)>)>,
}

/// The tensors the backward pads (Q, K, V, O, dO in) and cuts (dQ, dK, dV out).
const PADDED: [(&str, Rows); 8] = [
    ("Q", Rows::Q),
    ("K", Rows::Kv),
    ("V", Rows::Kv),
    ("O", Rows::Q),
    ("dO", Rows::Q),
    ("dQ", Rows::Q),
    ("dK", Rows::Kv),
    ("dV", Rows::Kv),
];

/// A prepared backward call: checked against the device, maps built and uploaded, pipelines
/// compiled. Reuse it for every call with the same [`AttnSpec`].
pub struct Backward {
    /// The caller's problem (the kernels run it at the padded head dim).
    spec: AttnSpec,
    /// Padded copies of every tensor when the head dim is not a multiple of 4.
    padded: Option<Padded>,
    /// Q and K under the call's positional encoding, and RoPE's gradient on dQ and dK.
    positions: Option<EncodedInputs>,
    config: BackwardConfig,
    pipelines: Vec<Prepared>,
    dispatches: Vec<Dispatch>,
    contract: wgpu::Buffer,
    block_map: wgpu::Buffer,
    stats: wgpu::Buffer,
    method: Method,
}

/// How a [`Backward`] computes the gradients.
enum Method {
    /// `dq` and `dkv` over the listed tiles of a block map, never N×M.
    Tiled {
        /// The tiles both kernels visit, and its transpose for `dkv`.
        map: BlockMap,
        cols: Columns,
        /// Dispatches of `dq` (passes) and of `dkv` (group heads × passes under a loop cap).
        dq_passes: usize,
        dkv_dispatches: usize,
    },
    /// The baseline: P, then dS in its place, materialised per kv-head group.
    Materialised {
        /// P / dS `[heads, N, M]` for one chunk of kv-head groups.
        scores: wgpu::Buffer,
    },
}

impl Backward {
    /// Prepares the backward of `spec` with this device's tiles.
    pub fn new(gpu: &Gpu, spec: &AttnSpec) -> Result<Self> {
        let d = crate::kernels::pad::padded_dim(spec.shape.head_dim);
        Self::with_config(gpu, spec, BackwardConfig::for_device(gpu, d))
    }

    /// `spec` validated, and as the kernels run it (the head dim padded to a multiple of 4),
    /// with the padded copies such a head dim needs.
    fn kernel_spec(gpu: &Gpu, spec: &AttnSpec) -> Result<(AttnSpec, Option<Padded>, Option<EncodedInputs>)> {
        spec.validate()?;
        check_call_head_dim(NAME, spec.shape.head_dim)?;
        if let Some(m) = spec.mods.as_ref().filter(|m| !m.has_grad()) {
            return Err(Error::Config {
                kernel: NAME,
                config: format!("mods {}", m.name()),
                reason: "score_mod without score_mod_grad: the backward needs d score_mod / d score".into(),
            });
        }
        let padded = Padded::new(gpu, &spec.shape, &PADDED)?;
        let stride = crate::kernels::pad::padded_dim(spec.shape.head_dim);
        let positions = EncodedInputs::new(gpu, spec, stride, padded.is_some())?;
        Ok((crate::kernels::pad::padded_spec(spec), padded, positions))
    }

    /// [`Backward::new`] with an explicit tile configuration (checked against the device).
    pub fn with_config(gpu: &Gpu, user: &AttnSpec, config: BackwardConfig) -> Result<Self> {
        let (inner, padded, positions) = Self::kernel_spec(gpu, user)?;
        let spec = &inner;
        let s = spec.shape;
        let d = s.head_dim;
        check_head_dim(NAME, d)?;
        let mut c = config;
        // mods with loops share the adapter's loop cap: fewer tiles per pass (any count is exact)
        if let (true, Some(cap)) = (
            spec.mods.as_ref().is_some_and(|m| m.has_loops()),
            crate::kernels::kernel_loop_cap(gpu, spec.mods.as_ref()),
        ) && c.br > 0
            && c.bc > 0
        {
            let (dq, dkv, overhead) = c.loop_iterations(d);
            let budget = cap.saturating_sub(overhead);
            let fit = |tiles: u32, per: u64| {
                let most = (budget / per).max(1) as u32;
                if tiles == 0 || tiles > most { most } else { tiles }
            };
            c.dq_pass_tiles = fit(c.dq_pass_tiles, dq);
            c.dkv_pass_tiles = fit(c.dkv_pass_tiles, dkv);
        }
        if c.br == 0 || c.bc == 0 || c.bc as usize > crate::contract::blockmap::MAX_BC {
            return Err(Error::Config {
                kernel: NAME,
                config: format!("{c:?}"),
                reason: format!("need br ≥ 1 and 1 ≤ bc ≤ {}", crate::contract::blockmap::MAX_BC),
            });
        }
        check_shuffles(gpu, NAME, &c, c.sg, &[("br", c.br), ("bc", c.bc)])?;
        if let Some(limit) = gpu.loop_iteration_limit() {
            let (dq, dkv, overhead) = c.loop_iterations(d);
            for (name, tiles, per) in [("dq", c.dq_pass_tiles, dq), ("dkv", c.dkv_pass_tiles, dkv)] {
                let needed = overhead + tiles as u64 * per;
                if tiles == 0 || needed > limit {
                    return Err(Error::LoopLimit {
                        kernel: NAME,
                        needed: if tiles == 0 { u64::MAX } else { needed },
                        limit,
                        hint: if name == "dq" {
                            "lower dq_pass_tiles (BackwardConfig::fit_passes sets it)"
                        } else {
                            "lower dkv_pass_tiles (BackwardConfig::fit_passes sets it)"
                        },
                    });
                }
            }
        }
        gpu.check_workgroup("backward dq", c.dq_workgroup_bytes(d), c.br)?;
        gpu.check_workgroup("backward dkv", c.dkv_workgroup_bytes(d), c.bc)?;
        // tensors beyond one binding run in chunks of kv heads, as the forward does
        let chunks = flash::Chunk::plan(gpu, spec)?;
        let mut map = crate::kernels::build_map(gpu, spec, c.br as usize, c.bc as usize)?;
        if let Some(m) = spec.mods.as_ref().filter(|m| m.has_mask_mod()) {
            map = crate::kernels::mods::refine(gpu, spec, m, &map)?.0;
        }
        let cols = map.columns();
        for (kernel, groups) in [
            ("backward delta", [s.n.div_ceil(DELTA_ROWS as usize), s.heads, s.batch]),
            ("backward dq", [map.n_qtiles, s.heads, s.batch]),
            ("backward dkv", [map.n_ktiles, s.kv_heads, s.batch]),
        ] {
            gpu.check_dispatch(kernel, groups.map(|g| g as u64))?;
        }

        // one buffer: forward map, transposed map, slopes, later passes' query-tile lists
        let (mut words, [entries, mask_index, bits]) = map.to_gpu_words();
        let mut bwd = BwdParams {
            n_ktiles: map.n_ktiles as u32,
            col_ptr: words.len() as u32,
            col_entries: 0,
            col_masks: 0,
            slopes: 0,
            head_lo: 0,
            head_hi: s.group() as u32,
            resume: 0,
            batch: 0,
            dk_pass: 0,
            pad: [0; 2],
        };
        words.extend_from_slice(&cols.col_ptr);
        bwd.col_entries = words.len() as u32;
        words.extend_from_slice(&cols.entries);
        bwd.col_masks = words.len() as u32;
        words.extend_from_slice(&cols.mask_index);
        bwd.slopes = words.len() as u32;
        words.extend(crate::kernels::slopes_words(spec).iter().map(|x| x.to_bits()));

        let mut params = Tiles::of_map(&map, [entries, mask_index, bits]);

        // the dispatches of one chunk: (entry, tiles, backward params, workgroups along x); y
        // runs over the chunk's query heads (delta, dq) or kv heads (dkv), z over its batches
        let mut plan: Vec<(Entry, Tiles, BwdParams, usize)> = Vec::new();
        let mut push = |entry: Entry, params: &Tiles, bwd: &BwdParams, groups: [usize; 3]| {
            plan.push((entry, *params, *bwd, groups[0]));
        };
        push(Entry::Delta, &params, &bwd, [s.n.div_ceil(DELTA_ROWS as usize), s.heads, s.batch]);

        // dq: pass 0 launches every query tile, pass k only those with more than k·T tiles
        params.pass_tiles = c.dq_pass_tiles;
        let lists = map.pass_lists(c.dq_pass_tiles, &mut words);
        let dq_passes = lists.len();
        for (k, &(list, launched)) in lists.iter().enumerate() {
            params.pass_index = k as u32;
            params.qtile_list = list;
            push(Entry::Dq, &params, &bwd, [launched, s.heads, s.batch]);
        }

        // dkv: one dispatch over the whole group, or, under a loop cap, one per
        // (query head of the group, pass), each resuming the sums of the one before
        params.qtile_list = u32::MAX;
        params.pass_index = 0;
        params.pass_tiles = c.dkv_pass_tiles;
        let kv_groups = [map.n_ktiles, s.kv_heads, s.batch];
        let mut dkv_dispatches = 0;
        if c.dkv_pass_tiles == 0 {
            push(Entry::Dkv, &params, &bwd, kv_groups);
            dkv_dispatches = 1;
        } else {
            let passes = cols.longest().div_ceil(c.dkv_pass_tiles as usize).max(1);
            for hh in 0..s.group() {
                for k in 0..passes {
                    params.pass_index = k as u32;
                    bwd.head_lo = hh as u32;
                    bwd.head_hi = hh as u32 + 1;
                    bwd.resume = (hh > 0 || k > 0) as u32;
                    push(Entry::Dkv, &params, &bwd, kv_groups);
                    dkv_dispatches += 1;
                }
            }
        }

        let align = gpu.limits().min_storage_buffer_offset_alignment as u64;
        let mut dispatches = Vec::new();
        for chunk in &chunks {
            let stats = chunk.stats_range(spec, align);
            for (entry, params, bwd, x) in &plan {
                let mut params = *params;
                chunk.shift(&mut params);
                params.stats_shift = stats.map_or(0, |r| (r.0 / 8) as u32);
                let y = if *entry == Entry::Dkv { chunk.heads / s.group() } else { chunk.heads };
                dispatches.push(Dispatch {
                    entry: *entry,
                    tiles: gpu.uniform("backward tiles", &params),
                    bwd: gpu.uniform("backward params", bwd),
                    groups: [*x as u32, y as u32, chunk.batches as u32],
                    chunk: (chunks.len() > 1).then(|| (chunk.clone(), stats)),
                });
            }
        }
        let stats = if chunks.len() > 1 {
            gpu.storage_ranged("backward (LSE, Δ)", s.lse_len() as u64 * 8)?
        } else {
            gpu.storage("backward (LSE, Δ)", s.lse_len() as u64 * 8)?
        };

        let block_map = gpu.upload("backward block maps", &words)?;
        let pipelines = compile(gpu, &c, spec, &[Entry::Delta, Entry::Dq, Entry::Dkv])?;
        Ok(Self {
            spec: user.clone(),
            padded,
            positions,
            config: c,
            pipelines,
            dispatches,
            contract: CallParams::new(spec).upload(gpu),
            block_map,
            stats,
            method: Method::Tiled { map, cols, dq_passes, dkv_dispatches },
        })
    }

    /// The materialised baseline: P, then dS in its place, as `[heads, N, M]` matrices in
    /// device memory for as many whole kv-head groups as fit one binding; the same contract,
    /// buffers and results as the tiled backward, for comparing time and memory. Refuses (typed
    /// errors) when one group's matrices exceed a binding or a row's loops exceed the
    /// adapter's loop cap.
    pub fn naive(gpu: &Gpu, user: &AttnSpec) -> Result<Self> {
        crate::kernels::refuse_mods("backward (materialised)", user)?;
        let (inner, padded, positions) = Self::kernel_spec(gpu, user)?;
        let spec = &inner;
        let s = spec.shape;
        let d = s.head_dim;
        check_head_dim(NAME, d)?;
        let c = BackwardConfig::for_device(gpu, d); // constants the module needs to compile
        let g = s.group();
        if let Some(limit) = gpu.loop_iteration_limit() {
            let needed = (s.m as u64 * (d as u64 / 4 + 1)).max((g * s.n) as u64) + 1;
            if needed > limit {
                return Err(Error::LoopLimit {
                    kernel: "naive backward",
                    needed,
                    limit,
                    hint: "its passes loop over every key of a row and every query of a group; use the tiled backward",
                });
            }
        }
        for (what, bytes) in [
            ("naive backward: Q, O, dO and dQ", s.q_len() as u64 * 4),
            ("naive backward: K, V, dK and dV", s.kv_len() as u64 * 4),
        ] {
            gpu.check_binding(what, bytes)?;
        }
        let per_group = (g * s.n) as u64 * s.m as u64 * 4;
        gpu.check_binding("naive backward: P of one kv head's query heads", per_group)?;
        let l = gpu.limits();
        let limit = l.max_storage_buffer_binding_size.min(l.max_buffer_size);
        let chunk = ((limit / per_group) as usize).clamp(1, s.kv_heads);
        let d4 = d / 4;
        for groups in [
            [s.m.div_ceil(8), s.n.div_ceil(8), chunk * g],
            [(s.m * d4).div_ceil(64), chunk, 1],
            [s.n.div_ceil(64), chunk * g, 1],
            [(s.n * d4).div_ceil(64), chunk * g, 1],
            [s.n.div_ceil(DELTA_ROWS as usize), s.heads, s.batch],
        ] {
            gpu.check_dispatch("naive backward", groups.map(|x| x as u64))?;
        }
        let (words, bits_base, mask_heads, stride) = crate::kernels::attention::naive::aux_words(spec);
        let params = Tiles {
            map_heads: mask_heads as u32,
            bits_base: bits_base as u32,
            bits_stride: stride as u32,
            qtile_list: u32::MAX,
            ..Tiles::default()
        };
        let mut bwd = BwdParams {
            n_ktiles: 0,
            col_ptr: 0,
            col_entries: 0,
            col_masks: 0,
            slopes: 0, // the aux words start with the slopes
            head_lo: 0,
            head_hi: 0,
            resume: 0,
            batch: 0,
            dk_pass: 0,
            pad: [0; 2],
        };
        let mut dispatches = Vec::new();
        let mut push = |entry: Entry, bwd: &BwdParams, groups: [usize; 3]| {
            dispatches.push(Dispatch {
                entry,
                tiles: gpu.uniform("naive backward tiles", &params),
                bwd: gpu.uniform("naive backward chunk", bwd),
                groups: groups.map(|x| x as u32),
                chunk: None,
            })
        };
        push(Entry::Delta, &bwd, [s.n.div_ceil(DELTA_ROWS as usize), s.heads, s.batch]);
        for b in 0..s.batch {
            for kv0 in (0..s.kv_heads).step_by(chunk) {
                let kvs = (kv0 + chunk).min(s.kv_heads) - kv0;
                let heads = kvs * g;
                bwd.batch = b as u32;
                bwd.head_lo = (kv0 * g) as u32;
                bwd.head_hi = bwd.head_lo + heads as u32;
                bwd.dk_pass = 0;
                push(Entry::NaiveP, &bwd, [s.m.div_ceil(8), s.n.div_ceil(8), heads]);
                push(Entry::NaiveKv, &bwd, [(s.m * d4).div_ceil(64), kvs, 1]); // dV from P
                push(Entry::NaiveDs, &bwd, [s.n.div_ceil(64), heads, 1]);
                push(Entry::NaiveDq, &bwd, [(s.n * d4).div_ceil(64), heads, 1]);
                bwd.dk_pass = 1;
                push(Entry::NaiveKv, &bwd, [(s.m * d4).div_ceil(64), kvs, 1]); // dK from dS
            }
        }
        let pipelines = compile(
            gpu,
            &c,
            spec,
            &[Entry::Delta, Entry::NaiveP, Entry::NaiveKv, Entry::NaiveDs, Entry::NaiveDq],
        )?;
        Ok(Self {
            spec: user.clone(),
            padded,
            positions,
            config: c,
            pipelines,
            dispatches,
            contract: CallParams::new(spec).upload(gpu),
            block_map: gpu.upload("naive backward slopes and mask bits", &words)?,
            stats: gpu.storage("backward (LSE, Δ)", s.lse_len() as u64 * 8)?,
            method: Method::Materialised {
                scores: gpu.storage("naive backward P / dS", chunk as u64 * per_group)?,
            },
        })
    }

    /// Whether this is the materialised baseline ([`Backward::naive`]).
    pub fn is_naive(&self) -> bool {
        matches!(self.method, Method::Materialised { .. })
    }

    /// The problem this call was prepared for.
    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }

    /// The tile configuration in use (the baseline's is unused).
    pub fn config(&self) -> BackwardConfig {
        self.config
    }

    /// The tiles both tiled kernels visit (the `dkv` kernel walks it transposed); `None` for
    /// the materialised baseline.
    pub fn block_map(&self) -> Option<&BlockMap> {
        match &self.method {
            Method::Tiled { map, .. } => Some(map),
            Method::Materialised { .. } => None,
        }
    }

    /// Dispatches of `dq` (passes) and of `dkv` (group heads × passes under a loop cap);
    /// (0, 0) for the materialised baseline.
    pub fn dispatch_counts(&self) -> (usize, usize) {
        match self.method {
            Method::Tiled { dq_passes, dkv_dispatches, .. } => (dq_passes, dkv_dispatches),
            Method::Materialised { .. } => (0, 0),
        }
    }

    /// Device memory beyond the caller's tensors: (LSE, Δ) per row, maps and parameters —
    /// linear in N and in the listed tiles, never N×M — and for the materialised baseline
    /// its P / dS matrices.
    pub fn scratch_bytes(&self) -> u64 {
        self.padded.as_ref().map_or(0, Padded::bytes)
            + self.positions.as_ref().map_or(0, EncodedInputs::bytes)
            + self.stats.size()
            + self.block_map.size()
            + match &self.method {
                Method::Materialised { scores } => scores.size(),
                Method::Tiled { .. } => 0,
            }
            + self.contract.size()
            + self.dispatches.iter().map(|d| d.tiles.size() + d.bwd.size()).sum::<u64>()
    }

    /// The traffic model of the tiled kernels (`None` for the baseline): device-memory bytes
    /// the three kernels' loops move. `delta` reads
    /// O, dO, LSE and writes (LSE, Δ); `dq` reads each row's Q, dO, (LSE, Δ) and each listed
    /// tile's K and V, writes dQ; `dkv` reads each key's K, V and, per query head of the
    /// group, each listed tile's rows of Q, dO and (LSE, Δ), writes dK, dV. Resumed passes add
    /// a read and a write of the sums they continue. A head dim that is not a multiple of 4
    /// moves the padded width, plus the padding copies.
    pub fn traffic(&self) -> Option<Traffic> {
        let Method::Tiled { map, cols, dkv_dispatches, .. } = &self.method else {
            return None;
        };
        let s = self.spec.shape;
        let d = crate::kernels::pad::padded_dim(s.head_dim) as u64;
        let (n, m) = (s.n as u64, s.m as u64);
        let rows = (s.batch * s.heads) as u64 * n;
        let keys_total = (s.batch * s.kv_heads) as u64 * m;
        let (br, bc) = (map.br as u64, map.bc as u64);
        let per_map = if map.heads == 1 { s.heads as u64 } else { 1 } * s.batch as u64;
        let tile_keys = |kt: u64| (kt * bc + bc).min(m) - kt * bc;
        let tile_rows = |qt: u64| (qt * br + br).min(n) - qt * br;
        let (mut keys, mut qrows) = (0u64, 0u64);
        for h in 0..map.heads {
            for qt in 0..map.n_qtiles {
                for &e in map.row(h, qt) {
                    keys += tile_keys((e & !FULL) as u64);
                    qrows += tile_rows(qt as u64);
                }
            }
        }
        let mut read = rows * (2 * d + 1) * 4 + rows * 8; // delta
        let mut written = rows * 8;
        read += rows * (2 * d * 4 + 8) + keys * per_map * 2 * d * 4; // dq
        written += rows * d * 4;
        read += keys_total * 2 * d * 4 + qrows * per_map * (2 * d * 4 + 8); // dkv
        written += keys_total * 2 * d * 4;
        // resumed sums: dq rows in later passes; dkv keys in later dispatches
        if self.config.dq_pass_tiles > 0 {
            let t = self.config.dq_pass_tiles as usize;
            for (r, w) in map.row_ptr.windows(2).enumerate() {
                let later = ((w[1] - w[0]) as usize).div_ceil(t).saturating_sub(1) as u64;
                let moved = later * tile_rows((r % map.n_qtiles) as u64) * d * 4 * per_map;
                read += moved;
                written += moved;
            }
        }
        if self.config.dkv_pass_tiles > 0 {
            let t = self.config.dkv_pass_tiles as usize;
            let passes = dkv_dispatches / s.group();
            let per_map_kv = s.batch as u64 * if map.heads == 1 { s.kv_heads as u64 } else { 1 };
            for hh in 0..s.group() {
                for k in 0..passes {
                    if hh == 0 && k == 0 {
                        continue;
                    }
                    for kt in 0..map.n_ktiles {
                        // a key tile resumes if any head of its dispatch has tiles in pass k
                        let busy = |h: usize| cols.column(map.n_ktiles, h, kt).len() > k * t;
                        let active = if map.heads == 1 {
                            busy(0) as u64 * per_map_kv
                        } else {
                            (0..s.kv_heads).filter(|&kvh| busy(kvh * s.group() + hh)).count() as u64
                                * s.batch as u64
                        };
                        let moved = active * tile_keys(kt as u64) * 2 * d * 4;
                        read += moved;
                        written += moved;
                    }
                }
            }
        }
        let p = self.padded.as_ref().map(Padded::traffic).unwrap_or_default();
        let e = self.positions.as_ref().map(|e| e.traffic(true)).unwrap_or_default();
        Some(Traffic { read: read + p.read + e.read, written: written + p.written + e.written })
    }

    /// Records the backward's kernels (one compute pass) into `encoder`. Nothing is submitted.
    pub fn encode(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder, b: &BackwardBuffers) -> Result<()> {
        self.encode_timed(gpu, encoder, b, None)
    }

    /// [`Backward::encode`] with timestamps at the start and end of the pass.
    pub(crate) fn encode_timed(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        b: &BackwardBuffers,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        self.check_buffers(b)?;
        let Some(p) = &self.padded else {
            let mut inner = *b;
            if let Some(e) = &self.positions {
                (inner.forward.q, inner.forward.k) = e.encode(gpu, encoder, b.forward.q, b.forward.k)?;
            }
            self.encode_kernels(gpu, encoder, &inner, timestamp_writes)?;
            return self.grads_through_positions(gpu, encoder, b);
        };
        let f = &b.forward;
        for (i, src) in [f.q, f.k, f.v, f.o, b.d_o].into_iter().enumerate() {
            p.pad(gpu, encoder, i, src);
        }
        if let Some(e) = &self.positions {
            e.encode(gpu, encoder, p.copy(0), p.copy(1))?;
        }
        let inner = BackwardBuffers {
            forward: crate::kernels::AttnBuffers {
                q: p.copy(0),
                k: p.copy(1),
                v: p.copy(2),
                o: p.copy(3),
                lse: f.lse,
            },
            d_o: p.copy(4),
            dq: p.copy(5),
            dk: p.copy(6),
            dv: p.copy(7),
        };
        self.encode_kernels(gpu, encoder, &inner, timestamp_writes)?;
        for (i, dst) in [(5, b.dq), (6, b.dk), (7, b.dv)] {
            p.cut(gpu, encoder, i, dst);
        }
        self.grads_through_positions(gpu, encoder, b)
    }

    /// dQ and dK of the encoded Q and K taken back through the encoding (RoPE rotates them
    /// back; sinusoidal's gradient is the identity).
    fn grads_through_positions(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        b: &BackwardBuffers,
    ) -> Result<()> {
        match &self.positions {
            Some(e) => e.grads(gpu, encoder, b.dq, b.dk),
            None => Ok(()),
        }
    }

    /// The kernels' dispatches on buffers at the kernels' head dim.
    fn encode_kernels(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        b: &BackwardBuffers,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        let f = &b.forward;
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes });
        for dsp in &self.dispatches {
            let chunk = dsp.chunk.as_ref().map(|(chunk, _)| chunk);
            // a buffer bound whole, or the chunk's byte range of it
            let q_rows = |b| Bound::range(b, chunk.and_then(|c| c.q_range()));
            let kv_rows = |b| Bound::range(b, chunk.and_then(|c| c.kv_range()));
            let binds = BackwardBinds {
                contract: (&self.contract).into(),
                bwd: (&dsp.bwd).into(),
                tiles: (&dsp.tiles).into(),
                q: q_rows(f.q),
                k: kv_rows(f.k),
                v: kv_rows(f.v),
                d_o: q_rows(b.d_o),
                stats: Bound::range(&self.stats, dsp.chunk.as_ref().and_then(|(_, stats)| *stats)),
                dq: q_rows(b.dq),
                dk: kv_rows(b.dk),
                dv: kv_rows(b.dv),
                o: q_rows(f.o),
                lse: Bound::range(f.lse, chunk.and_then(|c| c.lse_range())),
                block_map: (&self.block_map).into(),
                s: match &self.method {
                    Method::Materialised { scores } => scores.into(),
                    // the tiled entries do not bind `s`: any buffer fills the field
                    Method::Tiled { .. } => (&self.block_map).into(),
                },
            };
            let Some(p) = self.pipelines.iter().find(|k| k.entry == dsp.entry) else {
                return Err(Error::Device(format!(
                    "backward: kernel `{}` was not compiled",
                    dsp.entry.name()
                )));
            };
            let bind = p.kernel.bind(gpu, &binds);
            p.kernel.dispatch_with(&mut pass, &bind, p.user.as_ref(), dsp.groups);
        }
        Ok(())
    }

    fn check_buffers(&self, b: &BackwardBuffers) -> Result<()> {
        let s = self.spec.shape;
        let (q, kv, rows) = (s.q_len() as u64 * 4, s.kv_len() as u64 * 4, s.lse_len() as u64 * 4);
        let f = &b.forward;
        for (name, buf, want) in [
            ("Q", f.q, q),
            ("K", f.k, kv),
            ("V", f.v, kv),
            ("O", f.o, q),
            ("LSE", f.lse, rows),
            ("dO", b.d_o, q),
            ("dQ", b.dq, q),
            ("dK", b.dk, kv),
            ("dV", b.dv, kv),
        ] {
            if buf.size() < want {
                return Err(Error::BufferTooSmall { what: name, bytes: buf.size(), needed: want });
            }
        }
        Ok(())
    }

    /// Host convenience: runs the forward (flash, or naive for the materialised baseline) and
    /// this backward on host tensors (outputs poisoned with NaN first), returns the forward's
    /// output and the gradients.
    pub fn run(
        &self,
        gpu: &Gpu,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d_o: &[f32],
    ) -> Result<(AttnOutput, Gradients)> {
        let (io, grads) = self.submit(gpu, q, k, v, d_o)?;
        self.checked(io.read(gpu)?, grads.read(gpu)?)
    }

    /// The gradients of a forward the caller ran: its inputs Q, K, V, its output O `[B,H,N,D]`
    /// and LSE `[B,H,N]` (as [`Attention::run`](crate::Attention::run) returns them), and dO.
    /// Every tensor is checked (shapes, finite values; LSE may hold −inf for fully masked
    /// rows); the gradients are poisoned with NaN before the run.
    pub fn run_given(
        &self,
        gpu: &Gpu,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &AttnOutput,
        d_o: &[f32],
    ) -> Result<Gradients> {
        let s = self.spec.shape;
        self.spec.check_inputs(q, k, v)?;
        for (what, got, dims) in
            [("O", out.o.len(), &s.q_dims()[..]), ("LSE", out.lse.len(), &s.q_dims()[..3])]
        {
            let expected = dims.iter().product();
            if got != expected {
                return Err(Error::Length { what: what.into(), got, shape: dims.to_vec(), expected });
            }
        }
        crate::contract::spec::check_finite("O", &out.o)?;
        if let Some((index, &value)) =
            out.lse.iter().enumerate().find(|&(_, x)| x.is_nan() || *x == f32::INFINITY)
        {
            return Err(Error::NonFinite { what: "LSE".into(), index, value });
        }
        let io = crate::kernels::DeviceTensors::upload(gpu, &self.spec, q, k, v)?;
        gpu.queue.write_buffer(&io.o, 0, bytemuck::cast_slice(&out.o));
        gpu.queue.write_buffer(&io.lse, 0, bytemuck::cast_slice(&out.lse));
        let g = self.submit_on(gpu, None, &io, d_o)?.read(gpu)?;
        crate::kernels::check_mod_steps(
            self.spec.mods.as_ref(),
            "backward",
            self.mod_steps(),
            &[&g.dq, &g.dk, &g.dv],
        )?;
        Ok(g)
    }

    /// The loop budget of the call's mods in these pipelines (the smallest).
    fn mod_steps(&self) -> u32 {
        self.pipelines.iter().map(|p| p.steps).min().unwrap_or(0)
    }

    /// The forward's output and the gradients, or [`Error::ModSteps`] where the call's mods
    /// ran past their loop budget in either pass (their rows are NaN).
    fn checked(&self, out: AttnOutput, g: Gradients) -> Result<(AttnOutput, Gradients)> {
        let (mods, steps) = (self.spec.mods.as_ref(), self.mod_steps());
        crate::kernels::check_mod_steps(mods, "flash (the backward's forward)", steps, &[&out.lse])?;
        crate::kernels::check_mod_steps(mods, "backward", steps, &[&g.dq, &g.dk, &g.dv])?;
        Ok((out, g))
    }

    /// [`Backward::run`] without blocking (the browser's way): the outputs are awaited.
    pub async fn run_async(
        &self,
        gpu: &Gpu,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d_o: &[f32],
    ) -> Result<(AttnOutput, Gradients)> {
        let (io, grads) = self.submit(gpu, q, k, v, d_o)?;
        self.checked(io.read_async(gpu).await?, grads.read_async(gpu).await?)
    }

    /// The forward and this backward on host tensors, submitted.
    fn submit(
        &self,
        gpu: &Gpu,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d_o: &[f32],
    ) -> Result<(crate::kernels::DeviceTensors, GradTensors)> {
        let kernel = if self.is_naive() { Kernel::Naive } else { Kernel::Flash };
        let forward = crate::kernels::Attention::new(gpu, kernel, &self.spec)?;
        let io = crate::kernels::DeviceTensors::upload(gpu, &self.spec, q, k, v)?;
        let grads = self.submit_on(gpu, Some(&forward), &io, d_o)?;
        Ok((io, grads))
    }

    /// dO uploaded and this backward submitted on the forward tensors `io` (after `forward`
    /// itself, where given, which writes O and LSE); what the kernels write is poisoned with
    /// NaN first, so an element they forget shows.
    fn submit_on(
        &self,
        gpu: &Gpu,
        forward: Option<&crate::kernels::Attention>,
        io: &crate::kernels::DeviceTensors,
        d_o: &[f32],
    ) -> Result<GradTensors> {
        let grads = GradTensors::upload(gpu, &self.spec, d_o)?;
        grads.poison(gpu);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        if let Some(forward) = forward {
            io.poison(gpu);
            forward.encode(gpu, &mut enc, &io.buffers())?;
        }
        self.encode(gpu, &mut enc, &grads.buffers(io))?;
        gpu.queue.submit([enc.finish()]);
        Ok(grads)
    }
}

/// Device copies of dO and freshly allocated dQ, dK, dV for one backward call.
pub struct GradTensors {
    /// dO `[B, H, N, D]`.
    pub d_o: wgpu::Buffer,
    /// dQ `[B, H, N, D]`.
    pub dq: wgpu::Buffer,
    /// dK `[B, Hkv, M, D]`.
    pub dk: wgpu::Buffer,
    /// dV `[B, Hkv, M, D]`.
    pub dv: wgpu::Buffer,
    q_len: usize,
    kv_len: usize,
}

impl GradTensors {
    /// Uploads dO `[B,H,N,D]` (checked: shape, finite values) and allocates the gradients.
    pub fn upload(gpu: &Gpu, spec: &AttnSpec, d_o: &[f32]) -> Result<Self> {
        spec.check_grad(d_o)?;
        let s = spec.shape;
        Ok(Self {
            d_o: gpu.upload_ranged("dO", d_o)?,
            dq: gpu.storage_ranged("dQ", s.q_len() as u64 * 4)?,
            dk: gpu.storage_ranged("dK", s.kv_len() as u64 * 4)?,
            dv: gpu.storage_ranged("dV", s.kv_len() as u64 * 4)?,
            q_len: s.q_len(),
            kv_len: s.kv_len(),
        })
    }

    /// Fills dQ, dK, dV with NaN, so that an element the kernels forget to write shows.
    pub fn poison(&self, gpu: &Gpu) {
        gpu.queue.write_buffer(&self.dq, 0, bytemuck::cast_slice(&vec![f32::NAN; self.q_len]));
        gpu.queue.write_buffer(&self.dk, 0, bytemuck::cast_slice(&vec![f32::NAN; self.kv_len]));
        gpu.queue.write_buffer(&self.dv, 0, bytemuck::cast_slice(&vec![f32::NAN; self.kv_len]));
    }

    /// The buffers of a call whose forward tensors are `fwd`.
    pub fn buffers<'a>(&'a self, fwd: &'a crate::kernels::DeviceTensors) -> BackwardBuffers<'a> {
        BackwardBuffers { forward: fwd.buffers(), d_o: &self.d_o, dq: &self.dq, dk: &self.dk, dv: &self.dv }
    }

    /// Reads dQ, dK and dV back (blocks until the queue is idle).
    pub fn read(&self, gpu: &Gpu) -> Result<Gradients> {
        Ok(Gradients {
            dq: gpu.read(&self.dq, self.q_len)?,
            dk: gpu.read(&self.dk, self.kv_len)?,
            dv: gpu.read(&self.dv, self.kv_len)?,
        })
    }

    /// Awaits dQ, dK and dV (the browser's way; see [`Gpu::read_async`]).
    pub async fn read_async(&self, gpu: &Gpu) -> Result<Gradients> {
        Ok(Gradients {
            dq: gpu.read_async(&self.dq, self.q_len).await?,
            dk: gpu.read_async(&self.dk, self.kv_len).await?,
            dv: gpu.read_async(&self.dv, self.kv_len).await?,
        })
    }
}
