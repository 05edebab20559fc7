//! `sparse_backward`: the backward of attention over per-query block lists
//! (`shaders/sparse_backward.wgsl`): dQ, dK, dV of [`SparseAttention`]'s call from Q, K, V,
//! O, LSE, dO and the same lists, with no gradient through the choice.
//!
//! Key-block-centric like the forward: `dq_attend` runs the forward's chunks (entries that
//! chose one block of one kv head) and writes each entry's share of its row's dQ, `dq_merge`
//! sums the shares, and `dkv` gives each key one owner that walks every entry that chose its
//! block (all query heads of the group), so dK and dV need no atomics. The work is the chosen
//! blocks' keys, twice (once for dQ, once for dK and dV), FlashAttention-2's recomputation.
//!
//! Runs what the forward runs ([`SparseAttention::unsupported`]'s calls), on the backward's
//! tile shape ([`BackwardConfig::for_device`]); the lists of entries `dkv` walks run in passes
//! below an adapter's loop cap.

use crate::contract::spec::AttnSpec;
use crate::error::{Error, Result};
use crate::kernels::attention::backward::{BackwardBuffers, BackwardConfig};
use crate::kernels::attention::sparse::{Chunks, check_block_lists, rows_per_pass, unsupported_call};
use crate::kernels::{COMMON, CallParams, lanes, slopes_words};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Compiled, Shader, ShaderVariant, bind_group, header_consts};

#[cfg(doc)]
use crate::kernels::attention::sparse::SparseAttention;

const NAME: &str = "sparse_backward";
bind_group! {
    /// The call's contract, the forward's tensors and dO, the lists and their grouping, the
    /// partials of dQ and the gradients.
    struct SparseBwdBinds {
        0 contract: Uniform, 1 q: Read, 2 k: Read, 3 v: Read, 4 d_o: Read, 5 o: Read, 6 lse: Read,
        7 stats: ReadWrite, 8 lists: Read, 9 chunks: Read, 10 entries: Read, 11 part_dq: ReadWrite,
        12 slopes: Read, 13 sp: Uniform, 14 dq: ReadWrite, 15 dk: ReadWrite, 16 dv: ReadWrite,
    }
}
const SHADER: Shader = Shader {
    stem: NAME,
    source: include_str!("../../../shaders/sparse_backward.wgsl"),
    bindings: SparseBwdBinds::SLOTS,
};
/// Invocations per workgroup of `delta` and `dq_merge`.
const ROWS_WORKGROUP: u64 = 64;
/// The entry points, in the order they run.
const ENTRIES: [&str; 4] = ["delta", "dq_attend", "dq_merge", "dkv"];

header_consts! {
    /// The sparse backward's constants (sparse_backward.wgsl).
    struct SparseBwdConsts {
        /// vec4 lanes of a head.
        D4,
        /// Private lanes: D4, padded to whole subgroups on the shuffle path.
        D4P,
        /// Entries per chunk (`dq_attend`'s invocations, `dkv`'s staged rows).
        BR,
        /// Keys per tile (`dkv`'s invocations, `dq_attend`'s staged keys).
        BC,
        /// Subgroup width of the shuffle path (0: plain loads).
        SG,
    }
}

/// `SparseBwd` in sparse_backward.wgsl: one per dispatch.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    block: u32,
    topk: u32,
    count: u32,
    groups_x: u32,
    slot_base: u32,
    row_base: u32,
    blocks: u32,
    key_tiles: u32,
    starts_at: u32,
    pass_index: u32,
    pass_tiles: u32,
    pad: u32,
}

fn variants_for(c: &BackwardConfig, d: usize) -> [ShaderVariant; 4] {
    let d4 = (d / 4) as u32;
    let consts = SparseBwdConsts {
        D4: d4,
        D4P: if c.sg > 0 { d4.div_ceil(c.sg) * c.sg } else { d4 },
        BR: c.br,
        BC: c.bc,
        SG: c.sg,
    };
    ENTRIES.map(|entry| SHADER.variant(entry, &[COMMON, lanes(c.sg)], consts.header()))
}

/// Every variant for the naga sweep: head dims 4 to 128, plain loads and subgroup shuffles.
pub fn variants() -> Vec<ShaderVariant> {
    (4..=128)
        .step_by(4)
        .flat_map(|d| {
            [(32, 32, 0), (64, 32, 8), (16, 16, 16), (4, 4, 0)].into_iter().flat_map(move |(br, bc, sg)| {
                variants_for(&BackwardConfig { br, bc, sg, dq_pass_tiles: 0, dkv_pass_tiles: 0 }, d)
            })
        })
        .collect()
}

/// Workgroup memory of `dkv`: a Q and a dO tile, (LSE, Δ), position and slope per row (the
/// larger of the two tiled kernels; `dq_attend` stages a K and a V tile).
fn dkv_workgroup_bytes(c: &BackwardConfig, d: usize) -> u64 {
    2 * c.br as u64 * d as u64 * 4 + 4 * c.br as u64 * 4
}

/// The backward of attention over per-query block lists, prepared for one call shape.
pub struct SparseBackward {
    spec: AttnSpec,
    block: usize,
    topk: usize,
    config: BackwardConfig,
    kernels: [Compiled; 4],
    /// The call's contract and ALiBi slopes on the device (fixed by the spec).
    contract: wgpu::Buffer,
    slopes: wgpu::Buffer,
}

impl SparseBackward {
    /// Why this backward cannot run `spec` with blocks of `block` keys on `gpu` (`None`: it can).
    pub fn unsupported(gpu: &Gpu, spec: &AttnSpec, block: usize) -> Option<String> {
        if let Some(why) = unsupported_call(spec) {
            return Some(why);
        }
        let d = spec.shape.head_dim;
        let c = BackwardConfig::for_device(gpu, d);
        let (dq_tile, dkv_tile, outside) = c.loop_iterations(d);
        let needed = (block.div_ceil(c.bc as usize) as u64 * dq_tile).max(dkv_tile) + outside;
        match gpu.loop_iteration_limit() {
            Some(limit) if needed > limit => Some(format!(
                "blocks of {block} keys loop {needed} times per invocation of the backward, past the adapter's cap of {limit}"
            )),
            _ => None,
        }
    }

    /// Prepares the backward of [`SparseAttention`]'s call `spec` with blocks of `block` keys
    /// and `topk` entries per query row.
    pub fn new(gpu: &Gpu, spec: &AttnSpec, block: usize, topk: usize) -> Result<Self> {
        spec.validate()?;
        if let Some(why) = Self::unsupported(gpu, spec, block) {
            return Err(Error::Invalid(format!("the block-list backward does not run {why}")));
        }
        check_block_lists(block, topk)?;
        let d = spec.shape.head_dim;
        let config = BackwardConfig::for_device(gpu, d);
        gpu.check_workgroup(NAME, dkv_workgroup_bytes(&config, d), config.br.max(config.bc))?;
        let [a, b, c, e] = variants_for(&config, d).map(|v| gpu.compile(&v));
        Ok(Self {
            spec: spec.clone(),
            block,
            topk,
            config,
            kernels: [a?, b?, c?, e?],
            contract: CallParams::new(spec).upload(gpu),
            slopes: gpu.upload("ALiBi slopes", &slopes_words(spec))?,
        })
    }

    /// How the backward runs `lists` on `gpu`: (passes of rows for dQ's partials, passes over
    /// the lists of entries for dK and dV).
    pub fn passes(&self, gpu: &Gpu, lists: &[u32]) -> Result<(usize, usize)> {
        let s = self.spec.shape;
        let slots = s.heads * s.n * self.topk;
        let all = Chunks::of(
            &self.spec,
            s.m.div_ceil(self.block),
            self.topk,
            lists,
            0..slots,
            self.config.br as usize,
        )?;
        let rows = s.heads * s.n;
        Ok((rows.div_ceil(rows_per_pass(gpu, s.head_dim, self.topk)), self.dkv_passes(gpu, &all).1))
    }

    /// Row tiles per list per `dkv` pass below the adapter's loop cap (0: whole lists), and the
    /// passes the longest list of `all` needs.
    fn dkv_passes(&self, gpu: &Gpu, all: &Chunks) -> (usize, usize) {
        let br = self.config.br as usize;
        let longest = all.starts.windows(2).map(|w| (w[1] - w[0]).div_ceil(br)).max().unwrap_or(0);
        let (_, dkv_tile, outside) = self.config.loop_iterations(self.spec.shape.head_dim);
        match gpu.loop_iteration_limit() {
            Some(limit) => {
                let tiles = (limit.saturating_sub(outside) / dkv_tile).max(1) as usize;
                (tiles, longest.div_ceil(tiles).max(1))
            }
            None => (0, 1),
        }
    }

    /// Encodes and submits the backward on `b` (Q, K, V, O, LSE of the forward over the same
    /// lists, and dO; dQ, dK, dV written) through `lists` (`[H, N, topk]` block indices, [`NONE`](crate::contract::selection::NONE)
    /// for an empty entry), held on the host and on the device (`lists_buf`).
    pub fn run(&self, gpu: &Gpu, b: &BackwardBuffers, lists: &[u32], lists_buf: &wgpu::Buffer) -> Result<()> {
        let s = self.spec.shape;
        let (topk, br) = (self.topk, self.config.br as usize);
        let blocks = s.m.div_ceil(self.block);
        let total_rows = s.heads * s.n;
        let slots = total_rows * topk;
        if lists.len() != slots {
            return Err(Error::Length {
                what: "block lists".into(),
                got: lists.len(),
                shape: vec![s.heads, s.n, topk],
                expected: slots,
            });
        }
        let d4 = s.head_dim / 4;
        let key_tiles = self.block.div_ceil(self.config.bc as usize);
        let word = |what: &str, n: usize| {
            u32::try_from(n).map_err(|_| {
                Error::Invalid(format!("{what} of {n}: the kernel indexes them with 32-bit words"))
            })
        };
        word("block lists", slots)?;
        word("vec4 lanes of dQ", total_rows * d4)?;
        let dkv_groups = word("key tiles", s.kv_heads * blocks * key_tiles)?;

        // `dkv` walks each (kv head, block)'s entries: the grouping of every slot, its ranges
        // after the entries; a list longer than a loop cap allows runs in passes
        let all = Chunks::of(&self.spec, blocks, topk, lists, 0..slots, br)?;
        let mut dkv_entries = all.rows.clone();
        let starts_at = word("list entries", dkv_entries.len())?;
        dkv_entries.extend(all.starts.iter().map(|&x| x as u32));
        let dkv_entries = gpu.upload("sparse backward entries", &dkv_entries)?;
        let (pass_tiles, dkv_passes) = self.dkv_passes(gpu, &all);

        // dQ's partials run in passes of rows that fit one binding, as the forward's
        let pass_rows = rows_per_pass(gpu, s.head_dim, topk);
        let part_rows = pass_rows.min(total_rows);
        let part_dq = gpu.storage("sparse backward partial dQ", (part_rows * topk * d4) as u64 * 16)?;
        let stats = gpu.storage("sparse backward (LSE, delta)", total_rows as u64 * 8)?;
        let one_pass = pass_rows >= total_rows;

        let base = Params {
            block: self.block as u32,
            topk: topk as u32,
            blocks: blocks as u32,
            key_tiles: key_tiles as u32,
            starts_at,
            pass_tiles: pass_tiles as u32,
            ..Default::default()
        };
        let f = &b.forward;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let mut pass = enc
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        let mut dispatch = |kernel: usize,
                            groups: u64,
                            p: Params,
                            chunks: &wgpu::Buffer,
                            entries: &wgpu::Buffer|
         -> Result<()> {
            let grid = gpu.grid(NAME, groups)?;
            let uniform = gpu.uniform("sparse backward params", &Params { groups_x: grid[0], ..p });
            let binds = SparseBwdBinds {
                contract: (&self.contract).into(),
                q: f.q.into(),
                k: f.k.into(),
                v: f.v.into(),
                d_o: b.d_o.into(),
                o: f.o.into(),
                lse: f.lse.into(),
                stats: (&stats).into(),
                lists: lists_buf.into(),
                chunks: chunks.into(),
                entries: entries.into(),
                part_dq: (&part_dq).into(),
                slopes: (&self.slopes).into(),
                sp: (&uniform).into(),
                dq: b.dq.into(),
                dk: b.dk.into(),
                dv: b.dv.into(),
            };
            let k = &self.kernels[kernel];
            k.dispatch(&mut pass, &k.bind(gpu, &binds), grid);
            Ok(())
        };
        let (all_count, all_chunks, all_rows) = all.upload(gpu)?;

        dispatch(
            0,
            (total_rows as u64).div_ceil(ROWS_WORKGROUP),
            Params { count: total_rows as u32, ..base },
            &all_chunks,
            &dkv_entries,
        )?;
        for row_base in (0..total_rows).step_by(pass_rows) {
            let row_end = (row_base + pass_rows).min(total_rows);
            let own = if one_pass {
                None
            } else {
                let grouped =
                    Chunks::of(&self.spec, blocks, topk, lists, row_base * topk..row_end * topk, br)?;
                Some(grouped.upload(gpu)?)
            };
            let (count, chunks, rows) = match &own {
                Some((n, c, r)) => (*n, c, r),
                None => (all_count, &all_chunks, &all_rows),
            };
            let p = Params { slot_base: (row_base * topk) as u32, row_base: row_base as u32, ..base };
            dispatch(1, count, Params { count: count as u32, ..p }, chunks, rows)?;
            let merged = ((row_end - row_base) * d4) as u64;
            dispatch(2, merged.div_ceil(ROWS_WORKGROUP), Params { count: merged as u32, ..p }, chunks, rows)?;
        }
        for pass_index in 0..dkv_passes {
            let p = Params { count: dkv_groups, pass_index: pass_index as u32, ..base };
            dispatch(3, dkv_groups as u64, p, &all_chunks, &dkv_entries)?;
        }
        drop(pass);
        gpu.queue.submit([enc.finish()]);
        Ok(())
    }
}
