//! `sparse`: attention over per-query lists of key blocks (`shaders/sparse.wgsl`), the
//! kernel behind learned sparse attention once its selection stage has chosen (MoBA's
//! blocks: [`crate::kernels::selection`]).
//!
//! Key-block-centric, as MoBA's own implementation: the host groups the list entries by (kv
//! head, key block) into chunks of at most `BR` rows; one workgroup per chunk stages the
//! block's K/V tiles once for all its rows (flash's tile loop, subgroup shuffles and online
//! softmax) and writes one partial (O, LSE) per list entry; a second pass merges each row's
//! partials by log-sum-exp. The work is exactly the chosen blocks' keys — no tile is visited
//! for a query that did not choose it, however differently the queries of a tile chose —
//! which the per-query block grid of a tiled kernel cannot offer where neighbouring queries
//! disagree.
//!
//! Runs: one sequence, head dims a multiple of 4 up to 128, causal or any band (window) and
//! ALiBi in-kernel; no sparse mask, mods or positional encoding ([`SparseAttention::unsupported`]
//! says why not; the caller then runs flash on the lists' block grid). Any N, M, GQA, MQA.

use crate::contract::selection::NONE;
use crate::contract::spec::AttnSpec;
use crate::error::{Error, Result};
use crate::kernels::attention::AttnBuffers;
use crate::kernels::attention::flash::FlashConfig;
use crate::kernels::{COMMON, CallParams, SOFTMAX_TILE, lanes, slopes_words};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Compiled, Shader, ShaderVariant, bind_group, header_consts};

const NAME: &str = "sparse";
bind_group! {
    /// The call's contract, Q/K/V, the lists and their chunks, the partials, the output.
    struct SparseBinds {
        0 contract: Uniform, 1 q: Read, 2 k: Read, 3 v: Read, 4 lists: Read, 5 chunks: Read,
        6 rows: Read, 7 part_o: ReadWrite, 8 part_lse: ReadWrite, 9 slopes: Read,
        10 sparse: Uniform, 11 o: ReadWrite, 12 lse: ReadWrite,
    }
}
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../../shaders/sparse.wgsl"), bindings: SparseBinds::SLOTS };
/// Invocations per workgroup of `merge`.
const MERGE_WORKGROUP: u64 = 64;

header_consts! {
    /// The sparse kernel's constants (sparse.wgsl, softmax_tile.wgsl).
    struct SparseConsts {
        /// vec4 lanes of a head.
        D4,
        /// vec4 lanes of a row (one invocation per row).
        DP4,
        /// Rows per chunk (invocations of `attend`).
        BR,
        /// Keys per tile.
        BC,
        /// Subgroup width of the shuffle path (0: plain loads).
        SG,
        /// Private lanes: D4, padded to whole subgroups on the shuffle path.
        D4P,
        /// SG does not divide D4: the shuffle path clamps its loads.
        SG_GUARD_U,
        /// Never: one invocation holds a whole row.
        LANE_GUARD_U,
    }
}

/// `Sparse` in sparse.wgsl: one per dispatch.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    block: u32,
    topk: u32,
    count: u32,
    groups_x: u32,
    /// First list slot of this pass (the partials hold the pass's slots only).
    slot_base: u32,
    /// First row (h·N + i) of this pass.
    row_base: u32,
    /// Nonzero: one workgroup per list slot, its block read on the device.
    direct: u32,
    pad: u32,
}

/// The tile shape: flash's vec4 configuration for the device ([`FlashConfig::choose`]), whose
/// rows become a chunk's rows. Few rows per chunk (decoding: one new token per query head)
/// would leave most of BR invocations idle, computing on zeros: a chunk then has as many as a
/// block can get (N · group, in whole subgroups, at least 8) — at one row 8× less idle work
/// on lavapipe.
fn config(gpu: &Gpu, spec: &AttnSpec) -> FlashConfig {
    let s = spec.shape;
    let mut c = FlashConfig::choose(gpu.profile().0, gpu.tuned(), gpu, s.head_dim);
    let rows = (s.n.saturating_mul(s.group())).next_power_of_two().max(c.sg.max(8) as usize);
    if rows < c.br as usize {
        c.br = rows as u32;
    }
    c
}

fn variants_for(c: &FlashConfig, d: usize) -> [ShaderVariant; 2] {
    let d4 = (d / 4) as u32;
    let consts = SparseConsts {
        D4: d4,
        DP4: d4,
        BR: c.br,
        BC: c.bc,
        SG: c.sg,
        D4P: if c.sg > 0 { d4.div_ceil(c.sg) * c.sg } else { d4 },
        SG_GUARD_U: (c.sg > 0 && !d4.is_multiple_of(c.sg)) as u32,
        LANE_GUARD_U: 0,
    };
    ["attend", "merge"]
        .map(|entry| SHADER.variant(entry, &[COMMON, lanes(c.sg), SOFTMAX_TILE], consts.header()))
}

/// Every variant for a device with `limits` (the naga sweep): head dims 4 to 128.
pub fn variants(limits: &wgpu::Limits) -> Vec<ShaderVariant> {
    (4..=128)
        .step_by(4)
        .flat_map(|d| {
            let c = FlashConfig::for_limits(limits, d);
            let mut out = variants_for(&c, d).to_vec();
            // the subgroup-shuffle path as a profile with subgroups of 8 builds it, and the
            // chunks of 8 rows of decoding-sized calls
            if c.br.is_multiple_of(8) {
                out.extend(variants_for(&FlashConfig { sg: 8, ..c }, d));
                out.extend(variants_for(&FlashConfig { sg: 8, br: 8, ..c }, d));
            }
            out
        })
        .collect()
}

/// The grouping of one call's list entries: chunks of at most `br` entries that chose the same
/// block of the same kv head (ordered by kv head, then block, then entry), and the entries.
pub(crate) struct Chunks {
    /// (kv head, block, first entry, entries) per chunk.
    pub(crate) chunks: Vec<[u32; 4]>,
    /// List slots `(h·N + i)·topk + s`, grouped by (kv head, block).
    pub(crate) rows: Vec<u32>,
    /// Where each (kv head, block)'s entries begin in `rows` (`kv head · blocks + block`), and
    /// the end as the last word.
    pub(crate) starts: Vec<usize>,
}

impl Chunks {
    /// Counting sort by (kv head, block) of the entries of `lists` (`[H, N, topk]`) in the
    /// slots `slots`.
    pub(crate) fn of(
        spec: &AttnSpec,
        blocks: usize,
        topk: usize,
        lists: &[u32],
        slots: std::ops::Range<usize>,
        br: usize,
    ) -> Result<Self> {
        let s = spec.shape;
        let group = s.group();
        let key_of = |slot: usize| -> Result<Option<usize>> {
            let b = lists[slot];
            if b == NONE {
                return Ok(None);
            }
            if b as usize >= blocks {
                return Err(Error::Invalid(format!("block list entry {slot}: block {b} of {blocks}")));
            }
            let h = slot / topk / s.n;
            Ok(Some((h / group) * blocks + b as usize))
        };
        let mut starts = vec![0usize; s.kv_heads * blocks + 1];
        for slot in slots.clone() {
            if let Some(key) = key_of(slot)? {
                starts[key + 1] += 1;
            }
        }
        for i in 1..starts.len() {
            starts[i] += starts[i - 1];
        }
        let mut fill = starts.clone();
        let mut rows = vec![0u32; starts[starts.len() - 1]];
        for slot in slots {
            if let Some(key) = key_of(slot)? {
                rows[fill[key]] = slot as u32;
                fill[key] += 1;
            }
        }
        let mut chunks = Vec::new();
        for key in 0..s.kv_heads * blocks {
            let (kvh, b) = (key / blocks, key % blocks);
            for first in (starts[key]..starts[key + 1]).step_by(br) {
                let len = (starts[key + 1] - first).min(br);
                chunks.push([kvh as u32, b as u32, first as u32, len as u32]);
            }
        }
        Ok(Self { chunks, rows, starts })
    }

    /// The chunks and their entries on the device, with the chunk count; a storage binding
    /// cannot be empty, so a grouping with no chunk (every entry NONE) uploads placeholders.
    pub(crate) fn upload(&self, gpu: &Gpu) -> Result<(u64, wgpu::Buffer, wgpu::Buffer)> {
        let n = self.chunks.len() as u64;
        let chunks = gpu.upload("sparse chunks", if n == 0 { &[[0u32; 4]] } else { &self.chunks[..] })?;
        let rows = gpu.upload("sparse rows", if n == 0 { &[0u32] } else { &self.rows[..] })?;
        Ok((n, chunks, rows))
    }
}

/// The arguments both block-list kernels need: blocks of at least one key, one entry per row.
pub(crate) fn check_block_lists(block: usize, topk: usize) -> Result<()> {
    if block == 0 || topk == 0 {
        return Err(Error::Invalid(
            "block lists need blocks of at least one key and one entry per row".into(),
        ));
    }
    Ok(())
}

/// Why the block-list kernels (forward and backward) cannot run the call `spec` whatever the
/// device (`None`: they can, loop caps aside).
pub(crate) fn unsupported_call(spec: &AttnSpec) -> Option<String> {
    let s = spec.shape;
    let d = s.head_dim;
    let why = if s.batch != 1 {
        "more than one sequence".to_string()
    } else if !d.is_multiple_of(4) || d > 128 {
        format!("head dim {d} (it runs multiples of 4 up to 128)")
    } else if spec.mask.is_some() {
        "a sparse mask beside the lists".to_string()
    } else if spec.mods.is_some() {
        "attention mods".to_string()
    } else if spec.positions.is_some() {
        "a positional encoding".to_string()
    } else {
        return None;
    };
    Some(why)
}

/// Rows whose per-entry partials (D floats each, `topk` per row) fit one storage binding: the
/// partials of all H·N·topk entries may pass a binding's limit (4 heads of 32K rows with 8
/// blocks of D = 64: 256 MiB), so the rows run in passes of this many.
pub(crate) fn rows_per_pass(gpu: &Gpu, head_dim: usize, topk: usize) -> usize {
    let slot_bytes = (head_dim as u64 / 4) * 16;
    let max_slots = gpu.limits().max_storage_buffer_binding_size / slot_bytes;
    (max_slots / topk as u64).max(1) as usize
}

/// Attention over per-query block lists, prepared for one call shape.
pub struct SparseAttention {
    spec: AttnSpec,
    block: usize,
    topk: usize,
    config: FlashConfig,
    attend: Compiled,
    merge: Compiled,
    /// The call's contract and ALiBi slopes on the device (fixed by the spec).
    contract: wgpu::Buffer,
    slopes: wgpu::Buffer,
}

impl SparseAttention {
    /// Why this kernel cannot run `spec` on `gpu` (`None`: it can).
    pub fn unsupported(gpu: &Gpu, spec: &AttnSpec, block: usize) -> Option<String> {
        let d = spec.shape.head_dim;
        let why = if let Some(why) = unsupported_call(spec) {
            why
        } else {
            let c = config(gpu, spec);
            let tiles = block.div_ceil(c.bc as usize) as u64;
            let needed = tiles * c.loop_iterations_per_tile(d);
            match gpu.loop_iteration_limit() {
                Some(limit) if needed > limit => {
                    format!(
                        "blocks of {block} keys loop {needed} times per invocation, past the adapter's cap of {limit}"
                    )
                }
                _ if c.p != 1 => format!("head dim {d} split over {} invocations", c.p),
                _ => return None,
            }
        };
        Some(why)
    }

    /// Prepares the kernel for `spec` (its band and ALiBi apply inside every block) with
    /// blocks of `block` keys and `topk` entries per query row.
    pub fn new(gpu: &Gpu, spec: &AttnSpec, block: usize, topk: usize) -> Result<Self> {
        spec.validate()?;
        if let Some(why) = Self::unsupported(gpu, spec, block) {
            return Err(Error::Invalid(format!("the block-list kernel does not run {why}")));
        }
        check_block_lists(block, topk)?;
        let config = config(gpu, spec);
        let [attend, merge] = variants_for(&config, spec.shape.head_dim).map(|v| gpu.compile(&v));
        Ok(Self {
            spec: spec.clone(),
            block,
            topk,
            config,
            attend: attend?,
            merge: merge?,
            contract: CallParams::new(spec).upload(gpu),
            slopes: gpu.upload("ALiBi slopes", &slopes_words(spec))?,
        })
    }

    /// Runs on `io` (Q, K, V on the device; O and LSE written) through `lists` (`[H, N, topk]` block
    /// indices, [`NONE`] for an empty entry), held on the host and on the device (`lists_buf`):
    /// the host groups the entries that chose one block so that they share its K/V tiles.
    pub fn run(&self, gpu: &Gpu, io: &AttnBuffers, lists: &[u32], lists_buf: &wgpu::Buffer) -> Result<()> {
        let s = self.spec.shape;
        let slots = s.heads * s.n * self.topk;
        if lists.len() != slots {
            return Err(Error::Length {
                what: "block lists".into(),
                got: lists.len(),
                shape: vec![s.heads, s.n, self.topk],
                expected: slots,
            });
        }
        self.encode(gpu, io, lists_buf, Some(lists))
    }

    /// [`SparseAttention::run`] with the lists on the device only (as the selection stage
    /// wrote them): one workgroup per list entry reads its block there — no read-back, no
    /// grouping on the host, no GPU–host round trip, but no K/V tile shared between the rows
    /// that chose one block. For decoding-sized calls (a row or a few per block).
    pub fn run_on_device(&self, gpu: &Gpu, io: &AttnBuffers, lists_buf: &wgpu::Buffer) -> Result<()> {
        let s = self.spec.shape;
        let bytes = (s.heads * s.n * self.topk) as u64 * 4;
        if lists_buf.size() < bytes {
            return Err(Error::Invalid(format!(
                "block lists of {} bytes for a call of {bytes}",
                lists_buf.size()
            )));
        }
        self.encode(gpu, io, lists_buf, None)
    }

    /// Both runs: the grouped chunks where `lists` is on the host, else one workgroup per slot.
    fn encode(
        &self,
        gpu: &Gpu,
        io: &AttnBuffers,
        lists_buf: &wgpu::Buffer,
        lists: Option<&[u32]>,
    ) -> Result<()> {
        let s = self.spec.shape;
        let blocks = s.m.div_ceil(self.block);
        let slots = s.heads * s.n * self.topk;
        if u32::try_from(slots).is_err() {
            return Err(Error::Invalid(format!(
                "block lists of {slots} entries: the kernel indexes them with 32-bit words"
            )));
        }
        let d4 = (s.head_dim / 4) as u64;
        let slot_bytes = d4 * 16;
        let rows_per_pass = rows_per_pass(gpu, s.head_dim, self.topk);
        let total_rows = s.heads * s.n;
        let pass_rows = rows_per_pass.min(total_rows);
        let part_o = gpu.storage("sparse partial O", (pass_rows * self.topk) as u64 * slot_bytes)?;
        let part_lse = gpu.storage("sparse partial LSE", (pass_rows * self.topk) as u64 * 4)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for row_base in (0..total_rows).step_by(rows_per_pass) {
            let row_end = (row_base + rows_per_pass).min(total_rows);
            let slots = row_base * self.topk..row_end * self.topk;
            let grouped = match lists {
                Some(lists) => {
                    Chunks::of(&self.spec, blocks, self.topk, lists, slots.clone(), self.config.br as usize)?
                }
                None => Chunks { chunks: Vec::new(), rows: Vec::new(), starts: Vec::new() },
            };
            // a pass whose entries are all NONE attends to nothing (its merge still writes
            // O = 0, LSE = -inf)
            let (chunk_count, chunks, rows) = grouped.upload(gpu)?;
            // without the lists on the host: a workgroup per slot of the pass
            let chunk_count = if lists.is_some() { chunk_count } else { slots.len() as u64 };
            let merged = (row_end - row_base) as u64 * d4;
            let attend_grid = gpu.grid(NAME, chunk_count)?;
            let merge_grid = gpu.grid(NAME, merged.div_ceil(MERGE_WORKGROUP))?;
            let params = |count: u64, grid: [u32; 3]| Params {
                block: self.block as u32,
                topk: self.topk as u32,
                count: count as u32,
                groups_x: grid[0],
                slot_base: (row_base * self.topk) as u32,
                row_base: row_base as u32,
                direct: lists.is_none() as u32,
                pad: 0,
            };
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(NAME),
                timestamp_writes: None,
            });
            for (kernel, count, grid) in
                [(&self.attend, chunk_count, attend_grid), (&self.merge, merged, merge_grid)]
            {
                let uniform = gpu.uniform("sparse params", &params(count, grid));
                let binds = SparseBinds {
                    contract: (&self.contract).into(),
                    q: io.q.into(),
                    k: io.k.into(),
                    v: io.v.into(),
                    lists: lists_buf.into(),
                    chunks: (&chunks).into(),
                    rows: (&rows).into(),
                    part_o: (&part_o).into(),
                    part_lse: (&part_lse).into(),
                    slopes: (&self.slopes).into(),
                    sparse: (&uniform).into(),
                    o: io.o.into(),
                    lse: io.lse.into(),
                };
                let bind = kernel.bind(gpu, &binds);
                kernel.dispatch(&mut pass, &bind, grid);
            }
        }
        gpu.queue.submit([enc.finish()]);
        Ok(())
    }
}
