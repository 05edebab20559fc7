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
//! sparse [`Mask`](crate::mask::Mask) with tile skipping, GQA/MQA (dK, dV summed over the
//! group), N ≠ M, fully masked rows (zero gradient) — for tensors that fit one storage
//! binding each (the forward additionally runs larger ones in chunks; the backward refuses
//! them with [`Error::BindingTooLarge`]).

use crate::blockmap::{BlockMap, FULL};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, storage_entry, uniform_entry};
use crate::kernels::{
    AttnBuffers, COMMON_WGSL, LANES_PLAIN_WGSL, LANES_SUBGROUP_WGSL, Params, ShaderVariant, Traffic,
    check_head_dim, flash,
};
use crate::spec::{AttnOutput, AttnSpec};

const BODY: &str = include_str!("../../shaders/backward.wgsl");
const NAME: &str = "backward";
/// Rows per workgroup of the `delta` kernel (its `@workgroup_size`).
const DELTA_ROWS: u32 = 64;

/// Tile shape of the backward kernels. `dq` runs `br` invocations (one per query row) and
/// stages `bc` keys of K and V; `dkv` runs `bc` invocations (one per key) and stages `br`
/// rows of Q and dO. Both walk the same `br × bc` block map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackwardConfig {
    pub br: u32,
    pub bc: u32,
    /// Subgroup width of the shuffle path (0: plain loads); needs `br` and `bc` multiples of it.
    pub sg: u32,
    /// Most tiles per list per dispatch (0: whole lists), below a loop-iteration cap.
    pub dq_pass_tiles: u32,
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
        let sg = flash::FlashConfig::for_device(gpu, d).sg;
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
    pub fn loop_iterations(&self, d: usize) -> (u64, u64, u64) {
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

    /// The shader variant of one entry point (`delta`, `dq_main`, `dkv_main`) at head dim `d`.
    pub fn variant(&self, d: usize, entry: &'static str) -> ShaderVariant {
        let d4 = (d / 4) as u32;
        ShaderVariant {
            stem: NAME,
            prelude: vec![COMMON_WGSL, if self.sg > 0 { LANES_SUBGROUP_WGSL } else { LANES_PLAIN_WGSL }],
            body: BODY,
            entry,
            consts: vec![
                ("D4", d4),
                ("D4P", self.private_lanes(d)),
                ("BR", self.br),
                ("BC", self.bc),
                ("SG", self.sg),
                ("SG_GUARD_U", (self.sg > 0 && !d4.is_multiple_of(self.sg)) as u32),
            ],
        }
    }

    /// Every variant this config builds at head dim `d` (for naga validation).
    pub fn variants(&self, d: usize) -> Vec<ShaderVariant> {
        ENTRIES.iter().map(|e| self.variant(d, e.name())).collect()
    }
}

/// The three kernels of the backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Delta,
    Dq,
    Dkv,
}
const ENTRIES: [Entry; 3] = [Entry::Delta, Entry::Dq, Entry::Dkv];

impl Entry {
    fn name(self) -> &'static str {
        match self {
            Entry::Delta => "delta",
            Entry::Dq => "dq_main",
            Entry::Dkv => "dkv_main",
        }
    }

    /// Each kernel's bindings (at most 8 storage buffers, the WebGPU default).
    fn layout(self, gpu: &Gpu) -> wgpu::BindGroupLayout {
        let (stem, bindings): (&'static str, &[(u32, bool)]) = match self {
            Entry::Delta => ("backward delta", &[(4, true), (5, false), (9, true), (10, true)]),
            Entry::Dq => (
                "backward dq",
                &[(1, true), (2, true), (3, true), (4, true), (5, false), (6, false), (11, true)],
            ),
            Entry::Dkv => (
                "backward dkv",
                &[(1, true), (2, true), (3, true), (4, true), (5, false), (7, false), (8, false), (11, true)],
            ),
        };
        let mut entries = vec![uniform_entry(0), uniform_entry(12)];
        entries.extend(bindings.iter().map(|&(b, ro)| storage_entry(b, ro)));
        gpu.layout(stem, &entries)
    }
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
}

/// Device buffers of one backward call, owned by the caller: the forward's inputs and
/// outputs (Q, K, V, O, LSE, shaped as in [`AttnBuffers`]), the incoming gradient dO
/// `[B,H,N,D]`, and the gradients written: dQ `[B,H,N,D]`, dK and dV `[B,Hkv,M,D]`.
#[derive(Clone, Copy, Debug)]
pub struct BackwardBuffers<'a> {
    pub forward: AttnBuffers<'a>,
    pub d_o: &'a wgpu::Buffer,
    pub dq: &'a wgpu::Buffer,
    pub dk: &'a wgpu::Buffer,
    pub dv: &'a wgpu::Buffer,
}

/// Gradients read back to the host.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    pub dq: Vec<f32>,
    pub dk: Vec<f32>,
    pub dv: Vec<f32>,
}

struct Dispatch {
    entry: Entry,
    params: wgpu::Buffer,
    bwd: wgpu::Buffer,
    groups: [u32; 3],
}

/// A prepared backward call: checked against the device, maps built and uploaded, pipelines
/// compiled. Reuse it for every call with the same [`AttnSpec`].
pub struct Backward {
    spec: AttnSpec,
    config: BackwardConfig,
    pipelines: [wgpu::ComputePipeline; 3],
    dispatches: Vec<Dispatch>,
    block_map: wgpu::Buffer,
    stats: wgpu::Buffer,
    map: BlockMap,
    dq_passes: usize,
    dkv_dispatches: usize,
}

impl Backward {
    /// Prepares the backward of `spec` with this device's tiles.
    pub fn new(gpu: &Gpu, spec: &AttnSpec) -> Result<Self> {
        Self::with_config(gpu, spec, BackwardConfig::for_device(gpu, spec.shape.head_dim))
    }

    pub fn with_config(gpu: &Gpu, spec: &AttnSpec, config: BackwardConfig) -> Result<Self> {
        spec.validate()?;
        let s = spec.shape;
        let d = s.head_dim;
        check_head_dim(NAME, d)?;
        let c = config;
        if c.br == 0 || c.bc == 0 || c.bc as usize > crate::blockmap::MAX_BC {
            return Err(Error::Invalid(format!("backward tiles {c:?}: need br ≥ 1 and 1 ≤ bc ≤ 32")));
        }
        if c.sg > 0 {
            let info = gpu.info();
            let fixed = info.subgroup_min_size == c.sg && info.subgroup_max_size == c.sg;
            if !gpu.features().contains(wgpu::Features::SUBGROUP)
                || !fixed
                || !c.br.is_multiple_of(c.sg)
                || !c.bc.is_multiple_of(c.sg)
            {
                return Err(Error::Invalid(format!(
                    "backward subgroup path sg={} needs SUBGROUP, a fixed subgroup size of {} (device: {}..={}) and br, bc multiples of it; config {c:?}",
                    c.sg, c.sg, info.subgroup_min_size, info.subgroup_max_size
                )));
            }
        }
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
        let (q_bytes, kv_bytes) = (s.q_len() as u64 * 4, s.kv_len() as u64 * 4);
        for (what, bytes) in [
            ("backward: Q, O, dO and dQ", q_bytes),
            ("backward: K, V, dK and dV", kv_bytes),
            ("backward: (LSE, Δ) per row", s.lse_len() as u64 * 8),
        ] {
            gpu.check_binding(what, bytes)?;
        }
        let map = BlockMap::build(spec, c.br as usize, c.bc as usize)?;
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
        };
        words.extend_from_slice(&cols.col_ptr);
        bwd.col_entries = words.len() as u32;
        words.extend_from_slice(&cols.entries);
        bwd.col_masks = words.len() as u32;
        words.extend_from_slice(&cols.mask_index);
        bwd.slopes = words.len() as u32;
        words.extend(crate::kernels::slopes_words(spec).iter().map(|x| x.to_bits()));

        let mut params = Params::new(spec);
        params.n_qtiles = map.n_qtiles as u32;
        params.map_heads = map.heads as u32;
        params.map_rows = entries;
        params.mask_base = mask_index;
        params.bits_base = bits;

        let mut dispatches = Vec::new();
        let mut push = |entry: Entry, params: &Params, bwd: &BwdParams, groups: [usize; 3]| {
            dispatches.push(Dispatch {
                entry,
                params: gpu.uniform("backward params", params),
                bwd: gpu.uniform("backward tiles", bwd),
                groups: groups.map(|g| g as u32),
            })
        };
        push(Entry::Delta, &params, &bwd, [s.n.div_ceil(DELTA_ROWS as usize), s.heads, s.batch]);

        // dq: pass 0 launches every query tile, pass k only those with more than k·T tiles
        let longest_row = map.row_ptr.windows(2).map(|w| (w[1] - w[0]) as usize).max().unwrap_or(0);
        let dq_passes =
            if c.dq_pass_tiles == 0 { 1 } else { longest_row.div_ceil(c.dq_pass_tiles as usize).max(1) };
        params.pass_tiles = c.dq_pass_tiles;
        let mut lists = Vec::new();
        for k in 0..dq_passes {
            if k == 0 {
                lists.push((u32::MAX, map.n_qtiles));
            } else {
                let t = c.dq_pass_tiles as usize * k;
                let active: Vec<u32> = (0..map.n_qtiles)
                    .filter(|&qt| (0..map.heads).any(|h| map.row(h, qt).len() > t))
                    .map(|qt| qt as u32)
                    .collect();
                lists.push((words.len() as u32, active.len()));
                words.extend_from_slice(&active);
            }
        }
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

        let block_map = gpu.upload("backward block maps", &words)?;
        let pipelines = ENTRIES.map(|e| gpu.pipeline(&c.variant(d, e.name()), &e.layout(gpu)));
        let [a, b, cc] = pipelines;
        Ok(Self {
            spec: spec.clone(),
            config: c,
            pipelines: [a?, b?, cc?],
            dispatches,
            block_map,
            stats: gpu.storage("backward (LSE, Δ)", s.lse_len() as u64 * 8)?,
            map,
            dq_passes,
            dkv_dispatches,
        })
    }

    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }

    pub fn config(&self) -> BackwardConfig {
        self.config
    }

    /// The tiles both kernels visit (the `dkv` kernel walks it transposed).
    pub fn block_map(&self) -> &BlockMap {
        &self.map
    }

    /// Dispatches of `dq` (passes) and of `dkv` (group heads × passes under a loop cap).
    pub fn dispatch_counts(&self) -> (usize, usize) {
        (self.dq_passes, self.dkv_dispatches)
    }

    /// Device memory beyond the caller's tensors: (LSE, Δ) per row, maps and parameters —
    /// linear in N and in the listed tiles, never N×M.
    pub fn scratch_bytes(&self) -> u64 {
        self.stats.size()
            + self.block_map.size()
            + self.dispatches.iter().map(|d| d.params.size() + d.bwd.size()).sum::<u64>()
    }

    /// The traffic model: device-memory bytes the three kernels' loops move. `delta` reads
    /// O, dO, LSE and writes (LSE, Δ); `dq` reads each row's Q, dO, (LSE, Δ) and each listed
    /// tile's K and V, writes dQ; `dkv` reads each key's K, V and, per query head of the
    /// group, each listed tile's rows of Q, dO and (LSE, Δ), writes dK, dV. Resumed passes add
    /// a read and a write of the sums they continue.
    pub fn traffic(&self) -> Traffic {
        let s = self.spec.shape;
        let (d, n, m) = (s.head_dim as u64, s.n as u64, s.m as u64);
        let rows = (s.batch * s.heads) as u64 * n;
        let keys_total = (s.batch * s.kv_heads) as u64 * m;
        let map = &self.map;
        let (br, bc) = (map.br as u64, map.bc as u64);
        let per_map = if map.heads == 1 { s.heads as u64 } else { 1 } * s.batch as u64;
        let tile_keys = |kt: u64| (kt * bc + bc).min(m) - kt * bc;
        let tile_rows = |qt: u64| (qt * br + br).min(n) - qt * br;
        let cols = map.columns();
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
            let passes = self.dkv_dispatches / s.group();
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
        Traffic { read, written }
    }

    /// Records the three kernels (one compute pass) into `encoder`. Nothing is submitted.
    pub fn encode(&self, gpu: &Gpu, encoder: &mut wgpu::CommandEncoder, b: &BackwardBuffers) -> Result<()> {
        self.encode_timed(gpu, encoder, b, None)
    }

    /// [`Backward::encode`] with timestamps at the start and end of the pass.
    pub fn encode_timed(
        &self,
        gpu: &Gpu,
        encoder: &mut wgpu::CommandEncoder,
        b: &BackwardBuffers,
        timestamp_writes: Option<wgpu::ComputePassTimestampWrites>,
    ) -> Result<()> {
        self.check_buffers(b)?;
        let f = &b.forward;
        let mut pass =
            encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes });
        for dsp in &self.dispatches {
            let u = [(0, &dsp.params), (12, &dsp.bwd)];
            let buffers: Vec<(u32, &wgpu::Buffer)> = match dsp.entry {
                Entry::Delta => vec![(4, b.d_o), (5, &self.stats), (9, f.o), (10, f.lse)],
                Entry::Dq => vec![
                    (1, f.q),
                    (2, f.k),
                    (3, f.v),
                    (4, b.d_o),
                    (5, &self.stats),
                    (6, b.dq),
                    (11, &self.block_map),
                ],
                Entry::Dkv => vec![
                    (1, f.q),
                    (2, f.k),
                    (3, f.v),
                    (4, b.d_o),
                    (5, &self.stats),
                    (7, b.dk),
                    (8, b.dv),
                    (11, &self.block_map),
                ],
            };
            let all: Vec<(u32, &wgpu::Buffer)> = u.into_iter().chain(buffers).collect();
            let bind = gpu.bind_group_at(&dsp.entry.layout(gpu), &all);
            pass.set_pipeline(&self.pipelines[dsp.entry as usize]);
            pass.set_bind_group(0, &bind, &[]);
            let [x, y, z] = dsp.groups;
            pass.dispatch_workgroups(x, y, z);
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
                return Err(Error::Shape(format!(
                    "{name} buffer holds {} bytes, shape {:?} needs {want}",
                    buf.size(),
                    s
                )));
            }
        }
        Ok(())
    }

    /// Host convenience: runs the flash forward and this backward on host tensors, returns
    /// the forward's output and the gradients.
    pub fn run(
        &self,
        gpu: &Gpu,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        d_o: &[f32],
    ) -> Result<(AttnOutput, Gradients)> {
        let forward = crate::kernels::Attention::new(gpu, crate::kernels::Kernel::Flash, &self.spec)?;
        let io = crate::kernels::DeviceTensors::upload(gpu, &self.spec, q, k, v)?;
        let grads = GradTensors::upload(gpu, &self.spec, d_o)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        forward.encode(gpu, &mut enc, &io.buffers())?;
        self.encode(gpu, &mut enc, &grads.buffers(&io))?;
        gpu.queue.submit([enc.finish()]);
        Ok((io.read(gpu)?, grads.read(gpu)?))
    }
}

/// Device copies of dO and freshly allocated dQ, dK, dV for one backward call.
pub struct GradTensors {
    pub d_o: wgpu::Buffer,
    pub dq: wgpu::Buffer,
    pub dk: wgpu::Buffer,
    pub dv: wgpu::Buffer,
    q_len: usize,
    kv_len: usize,
}

impl GradTensors {
    /// Uploads dO `[B,H,N,D]` (checked: shape, finite values) and allocates the gradients.
    pub fn upload(gpu: &Gpu, spec: &AttnSpec, d_o: &[f32]) -> Result<Self> {
        let s = spec.shape;
        if d_o.len() != s.q_len() {
            return Err(Error::Shape(format!(
                "dO has {} values, O's shape {:?} needs {}",
                d_o.len(),
                s.q_dims(),
                s.q_len()
            )));
        }
        crate::spec::check_finite("dO", d_o)?;
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

    pub fn read(&self, gpu: &Gpu) -> Result<Gradients> {
        Ok(Gradients {
            dq: gpu.read(&self.dq, self.q_len)?,
            dk: gpu.read(&self.dk, self.kv_len)?,
            dv: gpu.read(&self.dv, self.kv_len)?,
        })
    }
}
