//! Block maps refined by a user's `mask_mod` (`shaders/mod_map.wgsl`): FlexAttention's
//! `create_block_mask`, evaluated on the GPU tile by tile over the tiles the call's other
//! rules (band, sparse mask) already list. Tiles no pair of which `mask_mod` lets through
//! are dropped (never loaded by flash), tiles it lets through whole keep FULL (flash skips
//! every per-element test there), the rest are partial (flash calls `mask_mod` per score).
//! The map is built once per prepared call and reused by every run.

use std::time::Duration;

use web_time::Instant;

use crate::contract::blockmap::{BlockMap, FULL};
use crate::contract::mods::Mods;
use crate::contract::spec::AttnSpec;
use crate::error::{Error, Result};
use crate::kernels::{COMMON, CallParams, Tiles};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Compiled, Shader, ShaderVariant, bind_group};

/// contract, block map, tiles, entry rows, counts, job (see mod_map.wgsl).
/// What `mod_map.wgsl` leaves in an entry's count when the mod ran past its step budget.
const OVERRUN: u32 = u32::MAX;
const SHADER: Shader =
    Shader { stem: "mod_map", source: include_str!("../../shaders/mod_map.wgsl"), bindings: MapBinds::SLOTS };
bind_group! {
    /// contract, block map, tiles, entry rows, counts, job.
    struct MapBinds {
        0 contract: Uniform, 1 block_map: Read, 2 tiles: Uniform, 3 entry_row: Read,
        4 counts: ReadWrite, 5 job: Uniform,
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MapJob {
    entries: u32,
    b: u32,
    groups_x: u32,
    pad: u32,
}

/// A call's mod buffers on the device (bind group 1 of every kernel compiled with its mods).
#[derive(Default)]
pub(crate) struct ModBuffers {
    buffers: Vec<(u32, wgpu::Buffer)>,
}

impl ModBuffers {
    /// The buffers of `spec`'s mods, uploaded; an error names one declared without values.
    pub(crate) fn upload(gpu: &Gpu, spec: &AttnSpec) -> Result<Self> {
        let Some(mods) = &spec.mods else { return Ok(Self::default()) };
        mods.check_buffers()?;
        let buffers = mods
            .buffers()
            .iter()
            .map(|b| {
                let words = b.words.as_deref().map_or(&[][..], |w| &w[..]);
                Ok((b.binding, gpu.upload(&format!("mod buffer {}", b.name), words)?))
            })
            .collect::<Result<_>>()?;
        Ok(Self { buffers })
    }

    /// Bind group 1 for `kernel` (`None` when it reads no buffers).
    pub(crate) fn bind(&self, gpu: &Gpu, kernel: &Compiled) -> Option<wgpu::BindGroup> {
        let refs: Vec<(u32, &wgpu::Buffer)> = self.buffers.iter().map(|(n, b)| (*n, b)).collect();
        kernel.bind_user(gpu, &refs)
    }
}

/// The map kernel for `mods`' `mask_mod` over `br × bc` tiles of an N × M call.
pub(crate) fn variant(
    mods: &Mods,
    br: u32,
    bc: u32,
    n: usize,
    m: usize,
    steps: u32,
) -> Result<ShaderVariant> {
    Ok(SHADER.variant("main", &[COMMON], vec![("D4", 1), ("BR", br), ("BC", bc)]).with_user(
        mods.name(),
        mods.kernel_source(n, m, steps)?,
        mods.buffers().iter().map(|b| b.binding).collect(),
    ))
}

/// `map` with one copy of its rows per head (for a `mask_mod` that reads `h`).
fn per_head(map: &BlockMap, heads: usize) -> BlockMap {
    let mut out =
        BlockMap { heads, row_ptr: vec![0], entries: Vec::new(), mask_index: Vec::new(), ..map.clone() };
    for _ in 0..heads {
        for w in map.row_ptr.windows(2) {
            let (a, b) = (w[0] as usize, w[1] as usize);
            out.entries.extend_from_slice(&map.entries[a..b]);
            out.mask_index.extend_from_slice(&map.mask_index[a..b]);
            out.row_ptr.push(out.entries.len() as u32);
        }
    }
    out.visible = map.visible * heads as u64;
    out
}

/// `map` (the band and sparse mask of `spec`, `br × bc` tiles) refined by `mods`'
/// `mask_mod` on `gpu`, and the time it took. Evaluated for every batch only when
/// `mask_mod` reads `b`, per head only when it reads `h`; the map's visible-pair count is
/// then the mean over batches.
pub fn refine(gpu: &Gpu, spec: &AttnSpec, mods: &Mods, map: &BlockMap) -> Result<(BlockMap, Duration)> {
    let t0 = Instant::now();
    let s = spec.shape;
    let (reads_b, reads_h) = mods.mask_reads();
    // the device's and the host's limits before any copy: the map (per head when the mod
    // reads h) and its entries' rows go to the GPU as one binding each
    let copies = if reads_h && map.heads == 1 { s.heads as u64 } else { 1 };
    let entries = (map.entries.len() as u64).saturating_mul(copies);
    let words = entries.saturating_mul(2).saturating_add(map.row_ptr.len() as u64 * copies);
    gpu.check_binding(
        "the mask_mod block map",
        words.saturating_add(map.bits.len() as u64).saturating_mul(4),
    )?;
    gpu.check_binding("the mask_mod entry rows", entries.saturating_mul(4))?;
    // a copy of the map, its words, the entry rows, the counts read back
    crate::runtime::host::check_bytes(
        "the mask_mod block map's copies",
        words.saturating_mul(4).saturating_mul(3),
    )?;
    let map = if reads_h && map.heads == 1 && s.heads > 1 { per_head(map, s.heads) } else { map.clone() };
    if map.entries.is_empty() {
        return Ok((map, t0.elapsed()));
    }
    let batches = if reads_b { s.batch } else { 1 };
    let entries = map.entries.len();
    let mut entry_row = Vec::with_capacity(entries);
    for (row, w) in map.row_ptr.windows(2).enumerate() {
        entry_row.extend(std::iter::repeat_n(row as u32, (w[1] - w[0]) as usize));
    }
    let (words, offsets) = map.to_gpu_words();
    // one invocation walks its entry's BR × BC pairs
    let steps = crate::kernels::mod_steps(gpu, (map.br * (map.bc + 1)) as u64 + 1);
    let kernel = gpu.compile(&variant(mods, map.br as u32, map.bc as u32, s.n, s.m, steps)?)?;
    let user_buffers = ModBuffers::upload(gpu, spec)?;
    let user = user_buffers.bind(gpu, &kernel);
    let grid = gpu.grid("mod_map", entries.div_ceil(64) as u64)?;
    let contract = CallParams::new(spec).upload(gpu);
    let block_map = gpu.upload("mask_mod block map", &words)?;
    let tiles = gpu.uniform("mask_mod tiles", &Tiles::of_map(&map, offsets));
    let rows = gpu.upload("mask_mod entry rows", &entry_row)?;
    let counts = gpu.storage("mask_mod counts", 4 * entries as u64)?;
    let jobs: Vec<wgpu::Buffer> = (0..batches)
        .map(|b| {
            let job = MapJob { entries: entries as u32, b: b as u32, groups_x: grid[0], pad: 0 };
            gpu.uniform("mask_mod job", &job)
        })
        .collect();
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("mod_map"),
            timestamp_writes: None,
        });
        for job in &jobs {
            let binds = MapBinds {
                contract: (&contract).into(),
                block_map: (&block_map).into(),
                tiles: (&tiles).into(),
                entry_row: (&rows).into(),
                counts: (&counts).into(),
                job: job.into(),
            };
            let bind = kernel.bind(gpu, &binds);
            kernel.dispatch_with(&mut pass, &bind, user.as_ref(), grid);
        }
    }
    gpu.queue.submit([enc.finish()]);
    let counts: Vec<u32> = gpu.read(&counts, entries)?;
    if counts.contains(&OVERRUN) {
        return Err(Error::ModSteps {
            mods: mods.name().to_string(),
            kernel: "mod_map",
            steps,
            adapter_cap: gpu.loop_iteration_limit().is_some(),
        });
    }

    let mut out =
        BlockMap { row_ptr: vec![0], entries: Vec::new(), mask_index: Vec::new(), visible: 0, ..map.clone() };
    let mut visible = 0u64;
    for (row, w) in map.row_ptr.windows(2).enumerate() {
        let qt = row % map.n_qtiles;
        let rows_in = ((qt + 1) * map.br).min(s.n) - qt * map.br;
        let listed = w[0] as usize..w[1] as usize;
        for ((&entry, &mask_index), &count) in
            map.entries[listed.clone()].iter().zip(&map.mask_index[listed.clone()]).zip(&counts[listed])
        {
            let count = count as u64;
            if count == 0 {
                continue;
            }
            let key0 = (entry & !FULL) as usize * map.bc;
            let keys = (key0 + map.bc).min(s.m) - key0;
            let full = entry & FULL != 0 && count == (batches * rows_in * keys) as u64;
            out.entries.push((entry & !FULL) | if full { FULL } else { 0 });
            out.mask_index.push(mask_index);
            visible += count;
        }
        out.row_ptr.push(out.entries.len() as u32);
    }
    out.visible = visible / batches as u64;
    Ok((out, t0.elapsed()))
}
