//! `dsa`: DSA-style token selection on the GPU (DeepSeek-V3.2's sparse attention; the rule and
//! its f64 oracle: [`crate::contract::dsa`]). One call runs, in order:
//! 1. the selection (`shaders/dsa_index.wgsl`), in chunks of rows whose scores fit one
//!    buffer: `index_scores` (the lightning indexer over every visible key) and `top_k` (each
//!    row's k best keys by radix select, listed in ascending key order);
//! 2. `attend` (`shaders/dsa.wgsl`): every query head of a row reads the row's listed keys
//!    under an online softmax, in passes over list entries below an adapter's loop cap.
//!
//! Runs: causal calls with no other mask, window, ALiBi, mods or positional encoding; head dims
//! and the indexer's head dim multiples of 4 (up to 256 and 128); any batch, N, M, GQA, MQA.
//! The backward ([`DsaListBackward`], `grad_rows` and `grad_keys` in `shaders/dsa.wgsl`): dQ
//! row by row over its list, dK and dV key by key over the lists transposed on the host
//! ([`inverse_lists`]) — the N·k chosen pairs, not the causal square.
//! [`dsa_attention`] and [`dsa_backward`] take flash on the lists' token grid ([`Dsa::spec`])
//! for a head dim the list kernels do not run.

use crate::contract::dsa::{Alignment, Dsa, Indexer};
use crate::contract::spec::{Alibi, AttnOutput, AttnSpec};
use crate::error::{Error, Result};
use crate::kernels::attention::DeviceTensors;
use crate::kernels::attention::backward::{Backward, Gradients};
use crate::kernels::{Attention, Kernel};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Bound, Compiled, Shader, ShaderVariant, Snippet, bind_group};

const NAME: &str = "dsa";
const INDEX: Shader = Shader {
    stem: "dsa_index",
    source: include_str!("../../shaders/dsa_index.wgsl"),
    bindings: IndexBinds::SLOTS,
};
bind_group! {
    /// The sizes, the indexer's inputs, a chunk's scores and the lists.
    struct IndexBinds { 0 params: Uniform, 1 qi: Read, 2 ki: Read, 3 wi: Read, 4 scores: ReadWrite, 5 lists: ReadWrite }
}
const ATTEND: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/dsa.wgsl"), bindings: AttendBinds::SLOTS };
bind_group! {
    /// The sizes, the lists, Q, K, V, O, LSE and the running sum between passes.
    struct AttendBinds {
        0 params: Uniform, 1 lists: Read, 2 q: Read, 3 k: Read, 4 v: Read, 5 o: ReadWrite,
        6 lse: ReadWrite, 7 run_l: ReadWrite,
    }
}
bind_group! {
    /// `grad_rows`: the sizes, the lists, Q, K, V, O, LSE, dO, dQ and Δ (written).
    struct GradRowsBinds {
        0 params: Uniform, 1 lists: Read, 2 q: Read, 3 k: Read, 4 v: Read, 5 o: ReadWrite,
        6 lse: ReadWrite, 8 d_o: Read, 9 dq: ReadWrite, 12 delta: ReadWrite,
    }
}
bind_group! {
    /// `grad_keys`: the sizes, Q, K, V, LSE, dO, dK, dV, Δ and the inverse lists' offsets and entries.
    struct GradKeysBinds {
        0 params: Uniform, 2 q: Read, 3 k: Read, 4 v: Read, 6 lse: ReadWrite, 8 d_o: Read,
        10 dk: ReadWrite, 11 dv: ReadWrite, 12 delta: ReadWrite, 13 inv_offsets: Read,
        14 inv_entries: Read,
    }
}
const GRAD_ROWS: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/dsa.wgsl"), bindings: GradRowsBinds::SLOTS };
const GRAD_KEYS: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/dsa.wgsl"), bindings: GradKeysBinds::SLOTS };
const ALIGN_SOURCE: &str = include_str!("../../shaders/dsa_align.wgsl");
const ALIGN_ROWS: Shader =
    Shader { stem: "dsa_align", source: ALIGN_SOURCE, bindings: AlignRowsBinds::SLOTS };
const ALIGN_KEYS: Shader =
    Shader { stem: "dsa_align", source: ALIGN_SOURCE, bindings: AlignKeysBinds::SLOTS };
bind_group! {
    /// The sizes, the indexer's inputs, Q, K, the dense LSE, the rows' state and dw, dqI.
    struct AlignRowsBinds {
        0 params: Uniform, 1 qi: Read, 2 ki: Read, 3 wi: Read, 4 q: Read, 5 k: Read, 6 lse: Read,
        7 rows: ReadWrite, 8 dqi: ReadWrite,
    }
}
bind_group! {
    /// The sizes, the indexer's inputs, Q, K, the dense LSE, the rows' state and dkI.
    struct AlignKeysBinds {
        0 params: Uniform, 1 qi: Read, 2 ki: Read, 3 wi: Read, 4 q: Read, 5 k: Read, 6 lse: Read,
        7 rows: ReadWrite, 9 dki: ReadWrite,
    }
}
const ALIGN_ROWS_SPARSE: Shader =
    Shader { stem: "dsa_align", source: ALIGN_SOURCE, bindings: AlignRowsSparseBinds::SLOTS };
const ALIGN_KEYS_SPARSE: Shader =
    Shader { stem: "dsa_align", source: ALIGN_SOURCE, bindings: AlignKeysSparseBinds::SLOTS };
bind_group! {
    /// [`AlignRowsBinds`] and the lists (the sparse stage).
    struct AlignRowsSparseBinds {
        0 params: Uniform, 1 qi: Read, 2 ki: Read, 3 wi: Read, 4 q: Read, 5 k: Read, 6 lse: Read,
        7 rows: ReadWrite, 8 dqi: ReadWrite, 10 lists: Read,
    }
}
bind_group! {
    /// [`AlignKeysBinds`] and the inverse lists (the sparse stage).
    struct AlignKeysSparseBinds {
        0 params: Uniform, 1 qi: Read, 2 ki: Read, 3 wi: Read, 4 q: Read, 5 k: Read, 6 lse: Read,
        7 rows: ReadWrite, 9 dki: ReadWrite, 11 inv_offsets: Read, 12 inv_entries: Read,
    }
}
/// The uniform the shaders read.
const PARAMS: Snippet = Snippet { name: "dsa_params", source: include_str!("../../shaders/dsa_params.wgsl") };
/// Rows of `index_scores`'s tile where the loop cap allows.
const TILE_ROWS: u64 = 16;
/// The scores a chunk keeps (floats): 64 MiB.
const CHUNK_FLOATS: u64 = 16 << 20;
/// The largest indexer head dim (vec4 lanes in registers).
const MAX_INDEX_DIM: usize = 128;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    batch: u32,
    heads: u32,
    kv_heads: u32,
    n: u32,
    m: u32,
    topk: u32,
    index_heads: u32,
    q_offset: i32,
    groups_x: u32,
    row0: u32,
    rows: u32,
    arg0: u32,
    arg1: u32,
    last: u32,
    scale: f32,
    list_base: u32,
    hf0: u32,
    hf1: u32,
    i0: u32,
    i1: u32,
    /// −inf (WGSL cannot spell it; a browser's compiler rejects a constant −inf).
    neg_inf: f32,
    d4: u32,
    di4: u32,
    /// `dsa_align`: the factor on every gradient.
    grad_scale: f32,
}

fn index_variant(entry: &'static str, di4: usize, sg: u32) -> ShaderVariant {
    let consts = vec![("DI4", di4 as u32), ("KR", 4 * di4 as u32), ("SG", sg), ("SG1", sg.max(1))];
    INDEX.variant(entry, &[PARAMS, crate::kernels::lanes(sg)], consts)
}

/// `attend` for head dim 4·`d4` with subgroups of `sg` (0: none): LPR lanes a row (up to a
/// subgroup, no more than the row's vec4s rounded up to a power of two), C vec4s a lane.
fn attend_variant(d4: usize, sg: u32) -> ShaderVariant {
    let (lpr, c) = attend_lanes(d4, sg);
    let consts = vec![("D4", d4 as u32), ("SG", sg), ("LPR", lpr), ("C", c)];
    ATTEND.variant("attend", &[PARAMS, crate::kernels::lanes(sg)], consts)
}

/// `grad_rows` or `grad_keys` for head dim 4·`d4` (a lane a row or key).
fn grad_variant(entry: &'static str, d4: usize) -> ShaderVariant {
    let consts = vec![("D4", d4 as u32), ("SG", 0), ("LPR", 1), ("C", d4 as u32)];
    let shader = if entry == "grad_rows" { GRAD_ROWS } else { GRAD_KEYS };
    shader.variant(entry, &[PARAMS, crate::kernels::lanes(0)], consts)
}

/// (LPR, C) of [`attend_variant`].
fn attend_lanes(d4: usize, sg: u32) -> (u32, u32) {
    let lpr = (d4.next_power_of_two() as u32).min(sg.max(1)).min(64);
    (lpr, (d4 as u32).div_ceil(lpr))
}

/// The shader variants: `index_scores` per indexer head dim (4 … 128), `top_k` once, `attend`
/// per head dim (4 … 256).
pub fn variants() -> Vec<ShaderVariant> {
    let mut out = vec![index_variant("top_k", 1, 0)];
    for di4 in 1..=MAX_INDEX_DIM / 4 {
        // without subgroups, and with subgroups of 8 (lavapipe's) and 32
        out.extend([0, 8, 32].map(|sg| index_variant("index_scores", di4, sg)));
    }
    for d4 in 1..=crate::kernels::MAX_HEAD_DIM / 4 {
        out.extend([0, 8, 32].map(|sg| attend_variant(d4, sg)));
    }
    for d4 in 1..=crate::kernels::MAX_HEAD_DIM / 4 {
        out.extend(["grad_rows", "grad_keys"].map(|e| grad_variant(e, d4)));
    }
    out.push(ALIGN_ROWS.variant("align_rows", &[PARAMS], vec![]));
    out.push(ALIGN_KEYS.variant("align_keys", &[PARAMS], vec![]));
    out.push(ALIGN_ROWS_SPARSE.variant("align_rows_sparse", &[PARAMS], vec![]));
    out.push(ALIGN_KEYS_SPARSE.variant("align_keys_sparse", &[PARAMS], vec![]));
    out
}

/// Why the token-list kernel does not run `spec` (`None`: it does).
pub fn unsupported(spec: &AttnSpec) -> Option<String> {
    let d = spec.shape.head_dim;
    if !d.is_multiple_of(4) || d > crate::kernels::MAX_HEAD_DIM {
        return Some(format!("head dim {d}: the token-list kernel reads vec4s, up to 256"));
    }
    None
}

/// DSA prepared for one call: the checked spec, the kernels and the chunking.
pub struct DsaAttention {
    spec: AttnSpec,
    dsa: Dsa,
    scores: Compiled,
    top_k: Compiled,
    attend: Compiled,
    /// Rows per chunk of the selection.
    chunk_rows: usize,
    /// Rows per `index_scores` tile.
    tile_rows: u64,
    /// List entries per `attend` pass.
    entries_per_pass: usize,
    /// Lanes of `attend` per (head, row).
    lanes_per_row: u32,
    /// (Sequence, row) pairs whose lists one binding holds: the lists are bound in windows of
    /// at most this many rows (long calls with a large k pass one binding).
    list_rows: usize,
}

/// One call's tensors on the device.
pub struct DsaTensors {
    /// Q, K, V, O and LSE.
    pub io: DeviceTensors,
    pub(crate) qi: wgpu::Buffer,
    pub(crate) ki: wgpu::Buffer,
    pub(crate) wi: wgpu::Buffer,
    scores: wgpu::Buffer,
    /// The chosen keys, `[B, N, k]`.
    pub lists: wgpu::Buffer,
    run_l: wgpu::Buffer,
}

impl DsaAttention {
    /// Prepares `dsa` for `spec` (checked: causal is implied; no other mask, window, ALiBi,
    /// mods or positional encoding; head dims as the module says; the loops against an
    /// adapter's cap).
    pub fn new(gpu: &Gpu, spec: &AttnSpec, dsa: &Dsa) -> Result<Self> {
        Self::with_layout(gpu, spec, dsa, clusters(gpu))
    }

    /// [`DsaAttention::new`] with `attend`'s layout chosen: `clustered`, each row spread over
    /// a subgroup's lanes where the device has subgroups (what `new` picks on a GPU); else one
    /// lane a row (on a CPU adapter).
    pub fn with_layout(gpu: &Gpu, spec: &AttnSpec, dsa: &Dsa, clustered: bool) -> Result<Self> {
        let spec = check_call(spec, dsa)?;
        if let Some(why) = unsupported(&spec) {
            return Err(Error::Invalid(format!("DSA's token-list kernel: {why}")));
        }
        let s = spec.shape;
        let (hi, di4) = (dsa.index_heads as u64, (dsa.index_dim / 4) as u64);
        let d4 = (s.head_dim / 4) as u64;
        let rows = s.batch * s.n;
        let mut tile_rows = TILE_ROWS;
        let mut entries_per_pass = dsa.topk;
        let sg = subgroup(gpu, s.head_dim);
        let attend_sg = if clustered { sg } else { 0 };
        if let Some(limit) = gpu.loop_iteration_limit() {
            // every loop counts its trips and its exit (measured on lavapipe: D 256 with 500
            // entries a pass, 500 · (2·64 + 2) + 3·64 = 65 192 trips, is cut short):
            // index_scores: rows · (HI · (DI4 + 2) + 1) + 5 · (DI4 + 1) (the keys' loads);
            // top_k: ⌈M/256⌉ vec4s + 1 per round and lane, 256 bins; attend: 2·(C + 1) +
            // log2 LPR + 6 an entry, 4·(C + 1) around them
            let per_row = hi * (di4 + 2) + 1;
            tile_rows = tile_rows.min(limit.saturating_sub(5 * (di4 + 1)) / per_row);
            let per_pass = (s.m as u64).div_ceil(256) * 5 + 258;
            let (lpr, c) = attend_lanes(d4 as usize, attend_sg);
            let per_entry = 2 * (c as u64 + 1) + lpr.ilog2() as u64 + 6;
            let entries = limit.saturating_sub(4 * (c as u64 + 1)) / per_entry;
            if tile_rows == 0 || per_pass > limit || entries == 0 {
                return Err(Error::LoopLimit {
                    kernel: NAME,
                    needed: (per_row + 5 * (di4 + 1)).max(per_pass).max(per_entry + 4 * (c as u64 + 1)),
                    limit,
                    hint: "use fewer indexer heads or a shorter context",
                });
            }
            entries_per_pass = entries_per_pass.min(entries as usize);
        }
        // the lists' windows: an aligned binding start leaves up to `align` bytes before a
        // window's first entry
        let l = gpu.limits();
        let (binding, align) =
            (l.max_storage_buffer_binding_size, l.min_storage_buffer_offset_alignment as u64);
        let row_bytes = dsa.topk as u64 * 4;
        let list_rows = (binding.saturating_sub(align) / row_bytes) as usize;
        if list_rows == 0 {
            return Err(Error::BindingTooLarge {
                what: format!("DSA: one row's list of {} keys", dsa.topk),
                bytes: row_bytes + align,
                limit: binding,
            });
        }
        let chunk_rows = ((CHUNK_FLOATS / row_floats(s.m)) as usize).clamp(1, rows.max(1)).min(list_rows);
        Ok(Self {
            scores: gpu.compile(&index_variant("index_scores", di4 as usize, sg))?,
            top_k: gpu.compile(&index_variant("top_k", 1, 0))?,
            attend: gpu.compile(&attend_variant(d4 as usize, attend_sg))?,
            spec,
            dsa: *dsa,
            chunk_rows,
            tile_rows,
            entries_per_pass,
            lanes_per_row: attend_lanes(d4 as usize, attend_sg).0,
            list_rows,
        })
    }

    /// The same call with its lists bound in windows of at most `rows` (sequence, row) pairs
    /// (at least 1; what a call past one binding does, forced for tests).
    pub fn with_list_rows(mut self, rows: usize) -> Self {
        self.list_rows = rows.clamp(1, self.list_rows);
        self.chunk_rows = self.chunk_rows.min(self.list_rows);
        self
    }

    /// The lists' binding for the (sequence, row) pairs `first .. first + count`: a byte range
    /// starting at an aligned offset, and the list element it starts at.
    fn list_window<'a>(
        &self,
        gpu: &Gpu,
        lists: &'a wgpu::Buffer,
        first: usize,
        count: usize,
    ) -> (Bound<'a>, u32) {
        let align = gpu.limits().min_storage_buffer_offset_alignment as u64;
        let k = self.dsa.topk as u64;
        let start = first as u64 * k * 4;
        let aligned = start - start % align;
        let end = (first + count) as u64 * k * 4;
        (Bound::range(lists, Some((aligned, (end - aligned).max(4)))), (aligned / 4) as u32)
    }

    /// The same call with its selection in chunks of at most `rows` rows (at least 1; a
    /// smaller chunk keeps fewer scores in memory).
    pub fn with_chunk_rows(mut self, rows: usize) -> Self {
        self.chunk_rows = rows.clamp(1, self.chunk_rows);
        self
    }

    /// The checked call.
    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }

    /// Dispatches of `attend`: its list entries in passes below the adapter's loop cap.
    pub fn attend_passes(&self) -> usize {
        self.dsa.topk.div_ceil(self.entries_per_pass)
    }

    /// Uploads Q, K, V and the indexer's inputs (checked against the call) and allocates the
    /// rest; O, LSE and the lists poisoned.
    pub fn upload(&self, gpu: &Gpu, (q, k, v): (&[f32], &[f32], &[f32]), ix: &Indexer) -> Result<DsaTensors> {
        let s = self.spec.shape;
        self.spec.check_inputs(q, k, v)?;
        self.dsa.check(&s, ix)?;
        let io = DeviceTensors::upload(gpu, &self.spec, q, k, v)?;
        io.poison(gpu);
        let list_len = s.batch * s.n * self.dsa.topk;
        // bound in windows of rows: only the buffer-size limit applies to the whole
        let lists = gpu.upload_ranged("DSA lists", &vec![0xdead_beef_u32; list_len.max(1)])?;
        Ok(DsaTensors {
            io,
            qi: gpu.upload("DSA index queries", ix.q)?,
            ki: gpu.upload("DSA index keys", ix.k)?,
            wi: gpu.upload("DSA index weights", ix.w)?,
            scores: gpu
                .storage("DSA index scores (a chunk)", self.chunk_rows as u64 * row_floats(s.m) * 4)?,
            lists,
            run_l: gpu.storage("DSA running sums", s.lse_len().max(1) as u64 * 4)?,
        })
    }

    /// The selection: the indexer's scores and each row's top k, chunk by chunk (submitted).
    pub fn select(&self, gpu: &Gpu, t: &DsaTensors) -> Result<()> {
        self.select_stages(gpu, t, true)
    }

    /// The indexer's scores and, with `top`, each row's top k, chunk by chunk.
    fn select_stages(&self, gpu: &Gpu, t: &DsaTensors, top: bool) -> Result<()> {
        let s = self.spec.shape;
        let rows = s.batch * s.n;
        let key_tiles = row_floats(s.m).div_ceil(256);
        for row0 in (0..rows).step_by(self.chunk_rows) {
            let chunk = self.chunk_rows.min(rows - row0);
            let tiles = (chunk as u64).div_ceil(self.tile_rows) * key_tiles;
            let arg = (row0, chunk, self.tile_rows as u32);
            self.dispatch_index(gpu, &self.scores, t, tiles, arg)?;
            if top {
                self.dispatch_index(gpu, &self.top_k, t, chunk as u64, arg)?;
            }
        }
        Ok(())
    }

    /// The indexer alone, chunk by chunk, each chunk's scores over the last's (submitted): the
    /// selection's first stage, for timing it apart from the top-k.
    pub fn index_scores(&self, gpu: &Gpu, t: &DsaTensors) -> Result<()> {
        self.select_stages(gpu, t, false)
    }

    /// The attention over the lists (submitted): one dispatch per window of the lists (all
    /// rows where one binding holds them, else runs of one sequence's rows) and pass of list
    /// entries.
    pub fn attend(&self, gpu: &Gpu, t: &DsaTensors) -> Result<()> {
        let s = self.spec.shape;
        let per_group = 64 / self.lanes_per_row as usize;
        // (first b·H + h, end, first row, end row)
        let windows: Vec<(usize, usize, usize, usize)> = if s.batch * s.n <= self.list_rows {
            vec![(0, s.batch * s.heads, 0, s.n)]
        } else {
            (0..s.batch)
                .flat_map(|b| {
                    (0..s.n)
                        .step_by(self.list_rows)
                        .map(move |i0| (b * s.heads, (b + 1) * s.heads, i0, (i0 + self.list_rows).min(s.n)))
                })
                .collect()
        };
        for (hf0, hf1, i0, i1) in windows {
            let groups = (hf1 - hf0) as u64 * (i1 - i0).div_ceil(per_group) as u64;
            let grid = gpu.grid(NAME, groups)?;
            let (b0, b1) = (hf0 / s.heads, hf1.div_ceil(s.heads));
            // the lists of rows i0 .. i1 of sequences b0 .. b1 (one sequence where windowed)
            let (first, count) = (b0 * s.n + i0, (b1 - b0 - 1) * s.n + (i1 - i0));
            let (lists, list_base) = self.list_window(gpu, &t.lists, first, count);
            for e0 in (0..self.dsa.topk).step_by(self.entries_per_pass) {
                let e1 = (e0 + self.entries_per_pass).min(self.dsa.topk);
                let mut params = self.params(grid[0], (0, 0));
                (params.arg0, params.arg1, params.last) =
                    (e0 as u32, e1 as u32, (e1 == self.dsa.topk) as u32);
                (params.list_base, params.hf0, params.hf1) = (list_base, hf0 as u32, hf1 as u32);
                (params.i0, params.i1) = (i0 as u32, i1 as u32);
                let uniform = gpu.uniform("DSA params", &params);
                let binds = AttendBinds {
                    params: (&uniform).into(),
                    lists,
                    q: (&t.io.q).into(),
                    k: (&t.io.k).into(),
                    v: (&t.io.v).into(),
                    o: (&t.io.o).into(),
                    lse: (&t.io.lse).into(),
                    run_l: (&t.run_l).into(),
                };
                submit(gpu, &self.attend, &binds, grid);
            }
        }
        Ok(())
    }

    /// The selection, then the attention (submitted).
    pub fn run(&self, gpu: &Gpu, t: &DsaTensors) -> Result<()> {
        self.select(gpu, t)?;
        self.attend(gpu, t)
    }

    /// The lists, `[B, N, k]`.
    pub fn read_lists(&self, gpu: &Gpu, t: &DsaTensors) -> Result<Vec<u32>> {
        let s = self.spec.shape;
        gpu.read(&t.lists, s.batch * s.n * self.dsa.topk)
    }

    /// O, LSE and the lists (an output that is not finite is an error).
    pub fn read(&self, gpu: &Gpu, t: &DsaTensors) -> Result<(AttnOutput, Vec<u32>)> {
        let out = t.io.read(gpu)?;
        if out.o.iter().any(|x| !x.is_finite()) {
            return Err(Error::Invalid("DSA's output holds a value that is not finite".into()));
        }
        Ok((out, self.read_lists(gpu, t)?))
    }

    /// One selection stage over the chunk `(row0, rows)` on `groups` workgroups.
    fn dispatch_index(
        &self,
        gpu: &Gpu,
        kernel: &Compiled,
        t: &DsaTensors,
        groups: u64,
        (row0, rows, tile): (usize, usize, u32),
    ) -> Result<()> {
        let grid = gpu.grid(NAME, groups)?;
        let mut params = self.params(grid[0], (row0, rows));
        params.arg0 = tile;
        let (lists, list_base) = self.list_window(gpu, &t.lists, row0, rows);
        params.list_base = list_base;
        let uniform = gpu.uniform("DSA params", &params);
        let binds = IndexBinds {
            params: (&uniform).into(),
            qi: (&t.qi).into(),
            ki: (&t.ki).into(),
            wi: (&t.wi).into(),
            scores: (&t.scores).into(),
            lists,
        };
        submit(gpu, kernel, &binds, grid);
        Ok(())
    }

    fn params(&self, groups_x: u32, rows: (usize, usize)) -> Params {
        params(&self.spec, &self.dsa, groups_x, rows)
    }
}

/// The uniform of a dispatch of `spec` (checked and causal) on a grid `groups_x` wide over the
/// chunk `(row0, rows)`; the stage-specific words zero.
fn params(spec: &AttnSpec, dsa: &Dsa, groups_x: u32, (row0, rows): (usize, usize)) -> Params {
    let s = spec.shape;
    Params {
        batch: s.batch as u32,
        heads: s.heads as u32,
        kv_heads: s.kv_heads as u32,
        n: s.n as u32,
        m: s.m as u32,
        topk: dsa.topk as u32,
        index_heads: dsa.index_heads as u32,
        q_offset: spec.q_offset() as i32,
        groups_x,
        row0: row0 as u32,
        rows: rows as u32,
        arg0: 0,
        arg1: 0,
        last: 0,
        scale: spec.scale_value(),
        list_base: 0,
        hf0: 0,
        hf1: 0,
        i0: 0,
        i1: 0,
        neg_inf: f32::NEG_INFINITY,
        d4: (s.head_dim / 4) as u32,
        di4: (dsa.index_dim / 4) as u32,
        grad_scale: 1.0,
    }
}

/// A row's scores: M rounded up to whole vec4s (at least one).
fn row_floats(m: usize) -> u64 {
    (m.div_ceil(4) as u64).max(1) * 4
}

/// Whether `attend` spreads a row over a subgroup's lanes: on a GPU, so that a key's row is one
/// coalesced read; not on a CPU adapter, where one lane a row is faster (lavapipe, H 4, D 64,
/// N 4K, k 2048: 1.23 s against 2.06 s clustered — each lane's gathers run 8 rows at once,
/// the cluster's shuffles and scalar softmax one).
fn clusters(gpu: &Gpu) -> bool {
    gpu.info().device_type != wgpu::DeviceType::Cpu
}

/// The subgroup width the indexer shuffles across (0: none), as flash chooses it.
fn subgroup(gpu: &Gpu, d: usize) -> u32 {
    crate::kernels::attention::flash::FlashConfig::choose(gpu.profile().0, gpu.tuned(), gpu, d).sg
}

/// One dispatch of `kernel` bound to `binds` on `grid`, submitted.
fn submit<F: BindGroupFields>(gpu: &Gpu, kernel: &Compiled, binds: &F, grid: [u32; 3]) {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        kernel.dispatch(&mut pass, &kernel.bind(gpu, binds), grid);
    }
    gpu.queue.submit([enc.finish()]);
}

/// `spec` as DSA's kernels run it: made causal, checked to carry nothing else (the chosen keys
/// are the mask), its sizes within the shaders' u32/i32 indices and the indexer's head dim a
/// multiple of 4 up to 128.
fn check_call(spec: &AttnSpec, dsa: &Dsa) -> Result<AttnSpec> {
    dsa.check_params()?;
    let refuse = |what: &str| {
        Err(Error::Invalid(format!(
            "DSA on the GPU with {what}: its kernels run the chosen keys, causal, and nothing else yet"
        )))
    };
    if spec.mask.is_some() || spec.window.is_some() {
        return refuse("a sparse mask or a window");
    }
    if spec.mods.is_some() {
        return refuse("mods");
    }
    if !matches!(spec.alibi, Alibi::Off) {
        return refuse("ALiBi");
    }
    if spec.positions.is_some() {
        return refuse("a positional encoding");
    }
    let s = spec.shape;
    crate::kernels::check_call_head_dim(NAME, s.head_dim)?;
    if !dsa.index_dim.is_multiple_of(4) || dsa.index_dim > MAX_INDEX_DIM {
        return Err(Error::Invalid(format!(
            "DSA's indexer on the GPU: head dim {} must be a multiple of 4 up to {MAX_INDEX_DIM}",
            dsa.index_dim
        )));
    }
    let big = (s.batch as u64 * s.n.max(s.m) as u64).saturating_mul(dsa.topk.max(s.heads) as u64);
    if s.m > i32::MAX as usize / 2 || s.n > i32::MAX as usize / 2 || big > u32::MAX as u64 {
        return Err(Error::Invalid(format!(
            "DSA over {} × {} positions (batch {}, k {}): past the shaders' 32-bit indices",
            s.n, s.m, s.batch, dsa.topk
        )));
    }
    Ok(spec.clone().causal(true))
}

/// DSA's choice on the GPU: `[B, N, k]` lists as [`crate::contract::dsa::dsa_select_f64`]
/// writes them.
pub fn dsa_select(gpu: &Gpu, spec: &AttnSpec, dsa: &Dsa, ix: &Indexer) -> Result<Vec<u32>> {
    crate::runtime::block_on("dsa_select", "await dsa_select_async", dsa_select_async(gpu, spec, dsa, ix))
}

/// [`dsa_select`] without blocking (the browser).
pub async fn dsa_select_async(gpu: &Gpu, spec: &AttnSpec, dsa: &Dsa, ix: &Indexer<'_>) -> Result<Vec<u32>> {
    // the selection reads no Q, K or V: a call of head dim 4 over the same positions
    let shape = crate::contract::AttnShape { head_dim: 4, ..spec.shape };
    let call = DsaAttention::new(gpu, &AttnSpec { shape, ..spec.clone() }, dsa)?;
    let zeros = |len: usize| vec![0f32; len];
    let t = call.upload(gpu, (&zeros(shape.q_len()), &zeros(shape.kv_len()), &zeros(shape.kv_len())), ix)?;
    call.select(gpu, &t)?;
    gpu.read_async(&t.lists, shape.batch * shape.n * dsa.topk).await
}

/// How DSA's attention ran: the token-list kernel, or flash on the lists' token grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DsaPath {
    /// [`DsaAttention`]'s `attend`.
    Lists,
    /// Flash on [`Dsa::spec`] (a batch folded into heads).
    Grid,
}

/// DSA attention: the choice on the GPU, then the attention over the chosen keys. Returns the
/// output, the lists (`[B, N, k]`) and the path taken.
pub fn dsa_attention(
    gpu: &Gpu,
    spec: &AttnSpec,
    dsa: &Dsa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    ix: &Indexer,
) -> Result<(AttnOutput, Vec<u32>, DsaPath)> {
    if unsupported(spec).is_some() {
        check_call(spec, dsa)?;
        spec.check_inputs(q, k, v)?;
        let lists = dsa_select(gpu, spec, dsa, ix)?;
        let out = Attention::new(gpu, Kernel::Flash, &dsa.spec(spec, &lists)?)?.run(gpu, q, k, v)?;
        return Ok((out, lists, DsaPath::Grid));
    }
    let call = DsaAttention::new(gpu, spec, dsa)?;
    let t = call.upload(gpu, (q, k, v), ix)?;
    call.run(gpu, &t)?;
    let (out, lists) = call.read(gpu, &t)?;
    Ok((out, lists, DsaPath::Lists))
}

/// DSA's forward and backward for the incoming gradient `d_o` (no gradient into the indexer:
/// the paper's sparse stage): the choice on the GPU, the attention over it, then the
/// token-list backward ([`DsaListBackward`]) — or, for a head dim the list kernels do not run,
/// flash's backward on the lists' token grid (a batch folded into heads, [`Dsa::spec`]).
/// Returns the output, the gradients of Q, K, V and the lists.
pub fn dsa_backward(
    gpu: &Gpu,
    spec: &AttnSpec,
    dsa: &Dsa,
    inputs: (&[f32], &[f32], &[f32]),
    ix: &Indexer,
    d_o: &[f32],
) -> Result<(AttnOutput, Gradients, Vec<u32>)> {
    let (out, grads, lists, _) = dsa_backward_in_passes(gpu, spec, dsa, inputs, ix, d_o, usize::MAX)?;
    Ok((out, grads, lists))
}

/// [`dsa_backward`] with the token-list backward's passes at most `most` entries long
/// (forced for tests), and the path it took.
pub fn dsa_backward_in_passes(
    gpu: &Gpu,
    spec: &AttnSpec,
    dsa: &Dsa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    ix: &Indexer,
    d_o: &[f32],
    most: usize,
) -> Result<(AttnOutput, Gradients, Vec<u32>, DsaPath)> {
    let causal = check_call(spec, dsa)?;
    spec.check_inputs(q, k, v)?;
    if unsupported(&causal).is_some() {
        let lists = dsa_select(gpu, spec, dsa, ix)?;
        let (out, grads) = Backward::new(gpu, &dsa.spec(spec, &lists)?)?.run(gpu, q, k, v, d_o)?;
        return Ok((out, grads, lists, DsaPath::Grid));
    }
    causal.check_grad(d_o)?;
    let call = DsaAttention::new(gpu, spec, dsa)?;
    let grad = DsaListBackward::in_passes(gpu, spec, dsa, most)?;
    let t = call.upload(gpu, (q, k, v), ix)?;
    call.run(gpu, &t)?;
    let (out, lists) = call.read(gpu, &t)?;
    let inverse = inverse_lists(&causal, dsa, &lists)?;
    let (offsets, entries) = inverse.upload(gpu)?;
    let s = causal.shape;
    let d_o = gpu.upload("dO", d_o)?;
    let (dq, dk, dv) =
        (gpu.poisoned("dQ", q.len())?, gpu.poisoned("dK", k.len())?, gpu.poisoned("dV", v.len())?);
    let delta = gpu.poisoned("DSA Δ", s.lse_len())?;
    let inv = DeviceInverse { offsets: &offsets, entries: &entries, longest: inverse.longest };
    let b = ListGradBuffers { d_o: &d_o, dq: &dq, dk: &dk, dv: &dv, delta: &delta, inverse: inv };
    grad.run(gpu, &t, &b)?;
    let grads =
        Gradients { dq: gpu.read(&dq, q.len())?, dk: gpu.read(&dk, k.len())?, dv: gpu.read(&dv, v.len())? };
    for (name, x) in [("dQ", &grads.dq), ("dK", &grads.dk), ("dV", &grads.dv)] {
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!("DSA's gradient {name} is not finite at flat index {i}")));
        }
    }
    Ok((out, grads, lists, DsaPath::Lists))
}

/// The lists `[B, N, k]` transposed ([`inverse_lists`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InverseLists {
    /// Per (sequence b, key j), at `b·M + j`, where its entries start; `B·M + 1` of them.
    pub offsets: Vec<u32>,
    /// The flat list entries `(b·N + i)·k + t` that chose each key, rows ascending.
    pub entries: Vec<u32>,
    /// The longest key's count (what sizes the keys' side's passes).
    pub longest: usize,
}

impl InverseLists {
    /// The offsets and the entries in two device buffers (entries at least one word).
    pub fn upload(&self, gpu: &Gpu) -> Result<(wgpu::Buffer, wgpu::Buffer)> {
        let entries = if self.entries.is_empty() { &[0u32][..] } else { &self.entries };
        Ok((gpu.upload("DSA inverse offsets", &self.offsets)?, gpu.upload("DSA inverse entries", entries)?))
    }

    /// Writes the offsets and entries into `(offsets, entries)` (sized for them).
    pub fn write(&self, gpu: &Gpu, (offsets, entries): (&wgpu::Buffer, &wgpu::Buffer)) {
        gpu.queue.write_buffer(offsets, 0, bytemuck::cast_slice(&self.offsets));
        if !self.entries.is_empty() {
            gpu.queue.write_buffer(entries, 0, bytemuck::cast_slice(&self.entries));
        }
    }
}

/// The inverse lists on the device: offsets, entries and the longest key's count.
#[derive(Clone, Copy, Debug)]
pub struct DeviceInverse<'a> {
    /// `B·M + 1` offsets.
    pub offsets: &'a wgpu::Buffer,
    /// The flat entries.
    pub entries: &'a wgpu::Buffer,
    /// The longest key's count.
    pub longest: usize,
}

/// The lists `[B, N, k]` transposed: for each (sequence b, key j), the flat list entries
/// `(b·N + i)·k + t` that chose it, rows ascending (a CSR by key).
pub fn inverse_lists(spec: &AttnSpec, dsa: &Dsa, lists: &[u32]) -> Result<InverseLists> {
    let s = spec.shape;
    let (keys, k) = (s.batch * s.m, dsa.topk);
    if lists.len() != s.batch * s.n * k {
        return Err(Error::Invalid(format!(
            "DSA lists: {} entries, want {}",
            lists.len(),
            s.batch * s.n * k
        )));
    }
    let key_of = |e: usize| -> Result<Option<usize>> {
        let j = lists[e];
        if j == crate::contract::selection::NONE {
            return Ok(None);
        }
        if j as usize >= s.m {
            return Err(Error::Invalid(format!("DSA lists: entry {e} names key {j} of {}", s.m)));
        }
        Ok(Some((e / (s.n * k)) * s.m + j as usize))
    };
    let mut offsets = vec![0u32; keys + 1];
    for e in 0..lists.len() {
        if let Some(key) = key_of(e)? {
            offsets[key + 1] += 1;
        }
    }
    let longest = offsets.iter().copied().max().unwrap_or(0) as usize;
    for x in 1..=keys {
        offsets[x] += offsets[x - 1];
    }
    let mut entries = vec![0u32; offsets[keys] as usize];
    let mut next = offsets.clone();
    for e in 0..lists.len() {
        if let Some(key) = key_of(e)? {
            entries[next[key] as usize] = e as u32;
            next[key] += 1;
        }
    }
    Ok(InverseLists { offsets, entries, longest })
}

/// A typed error where one of `bindings` passes the adapter's storage binding size.
fn check_bindings(gpu: &Gpu, what: &str, bindings: &[(&str, u64)]) -> Result<()> {
    let limit = gpu.limits().max_storage_buffer_binding_size;
    for &(name, bytes) in bindings {
        if bytes > limit {
            return Err(Error::BindingTooLarge { what: format!("{what}: {name}"), bytes, limit });
        }
    }
    Ok(())
}

/// DSA's token-list backward (`grad_rows`, `grad_keys` in `shaders/dsa.wgsl`): dQ per row over
/// its list, dK and dV per key over the rows that chose it ([`inverse_lists`]) — work
/// proportional to the N·k chosen pairs, not to the causal square. No gradient into the
/// choice (the paper's sparse stage). Head dims multiples of 4 up to 256; lists bound whole.
pub struct DsaListBackward {
    spec: AttnSpec,
    dsa: Dsa,
    rows: Compiled,
    keys: Compiled,
    /// List entries per `grad_rows` pass and inverse entries per `grad_keys` pass.
    per_pass: (usize, usize),
}

/// The token-list backward's buffers beyond the forward's [`DsaTensors`]: dO (shaped as Q),
/// dQ, dK, dV, Δ `[B, H, N]` (scratch) and the inverse lists ([`inverse_lists`]).
pub struct ListGradBuffers<'a> {
    /// dO `[B, H, N, D]`.
    pub d_o: &'a wgpu::Buffer,
    /// dQ, written.
    pub dq: &'a wgpu::Buffer,
    /// dK `[B, Hkv, M, D]`, written.
    pub dk: &'a wgpu::Buffer,
    /// dV, written.
    pub dv: &'a wgpu::Buffer,
    /// Δ = rowsum(dO ∘ O) `[B, H, N]`, scratch.
    pub delta: &'a wgpu::Buffer,
    /// The inverse lists ([`inverse_lists`]).
    pub inverse: DeviceInverse<'a>,
}

impl DsaListBackward {
    /// Prepares the backward for `spec` (checked as [`DsaAttention::new`] checks it), its
    /// passes below an adapter's loop cap.
    pub fn new(gpu: &Gpu, spec: &AttnSpec, dsa: &Dsa) -> Result<Self> {
        Self::in_passes(gpu, spec, dsa, usize::MAX)
    }

    /// [`DsaListBackward::new`] with passes of at most `most` entries (at least 1).
    pub fn in_passes(gpu: &Gpu, spec: &AttnSpec, dsa: &Dsa, most: usize) -> Result<Self> {
        let spec = check_call(spec, dsa)?;
        if let Some(why) = unsupported(&spec) {
            return Err(Error::Invalid(format!("DSA's token-list backward: {why}")));
        }
        let s = spec.shape;
        let d4 = (s.head_dim / 4) as u64;
        let group = (s.heads / s.kv_heads) as u64;
        // every loop counts its trips and its exit: grad_rows 2·(D4 + 1) + 3 an entry and
        // 2·(D4 + 1) around; grad_keys per entry the group's 2·(D4 + 1) + 3, and 2·(D4 + 1)
        let (row_entry, key_entry, fixed) =
            (2 * (d4 + 1) + 3, group * (2 * (d4 + 1) + 3) + 2, 2 * (d4 + 1) + 2);
        let (mut rows_pass, mut keys_pass) = (usize::MAX, usize::MAX);
        if let Some(limit) = gpu.loop_iteration_limit() {
            if limit <= fixed + key_entry.max(row_entry) {
                return Err(Error::LoopLimit {
                    kernel: NAME,
                    needed: fixed + key_entry.max(row_entry),
                    limit,
                    hint: "use fewer query heads per kv head",
                });
            }
            rows_pass = ((limit - fixed) / row_entry) as usize;
            keys_pass = ((limit - fixed) / key_entry) as usize;
        }
        Ok(Self {
            rows: gpu.compile(&grad_variant("grad_rows", d4 as usize))?,
            keys: gpu.compile(&grad_variant("grad_keys", d4 as usize))?,
            spec,
            dsa: *dsa,
            per_pass: (rows_pass.clamp(1, most.max(1)), keys_pass.clamp(1, most.max(1))),
        })
    }

    /// Runs the backward on the forward's tensors `t` (its Q, K, V, O, LSE and lists) and `b`
    /// (submitted). The lists and the inverse entries are bound whole: each must fit one
    /// storage binding (a typed error otherwise; at k 2048 lavapipe's 128 MiB holds 16K rows).
    pub fn run(&self, gpu: &Gpu, t: &DsaTensors, b: &ListGradBuffers) -> Result<()> {
        let s = self.spec.shape;
        let (rows, keys) = (s.batch * s.heads * s.n, s.batch * s.kv_heads * s.m);
        let list_bytes = (s.batch * s.n * self.dsa.topk) as u64 * 4;
        let inv = b.inverse;
        check_bindings(
            gpu,
            "DSA's token-list backward",
            &[
                ("the lists", list_bytes),
                ("the inverse lists", inv.entries.size()),
                ("their offsets", inv.offsets.size()),
            ],
        )?;
        let ranges =
            |len: usize, per: usize| (0..len.max(1)).step_by(per).map(move |a| (a, (a + per).min(len)));
        for (a0, a1) in ranges(self.dsa.topk, self.per_pass.0) {
            let (uniform, grid) = self.uniform(gpu, rows, (a0, a1))?;
            let binds = GradRowsBinds {
                params: (&uniform).into(),
                lists: (&t.lists).into(),
                q: (&t.io.q).into(),
                k: (&t.io.k).into(),
                v: (&t.io.v).into(),
                o: (&t.io.o).into(),
                lse: (&t.io.lse).into(),
                d_o: b.d_o.into(),
                dq: b.dq.into(),
                delta: b.delta.into(),
            };
            submit(gpu, &self.rows, &binds, grid);
        }
        for (a0, a1) in ranges(inv.longest, self.per_pass.1) {
            let (uniform, grid) = self.uniform(gpu, keys, (a0, a1))?;
            let binds = GradKeysBinds {
                params: (&uniform).into(),
                q: (&t.io.q).into(),
                k: (&t.io.k).into(),
                v: (&t.io.v).into(),
                lse: (&t.io.lse).into(),
                d_o: b.d_o.into(),
                dk: b.dk.into(),
                dv: b.dv.into(),
                delta: b.delta.into(),
                inv_offsets: inv.offsets.into(),
                inv_entries: inv.entries.into(),
            };
            submit(gpu, &self.keys, &binds, grid);
        }
        Ok(())
    }

    /// The uniform and grid of one pass over `count` lanes, entries `[a0, a1)`.
    fn uniform(&self, gpu: &Gpu, count: usize, (a0, a1): (usize, usize)) -> Result<(wgpu::Buffer, [u32; 3])> {
        let grid = gpu.grid(NAME, (count as u64).div_ceil(64))?;
        let mut words = params(&self.spec, &self.dsa, grid[0], (0, count));
        (words.arg0, words.arg1) = (a0 as u32, a1 as u32);
        Ok((gpu.uniform("DSA backward params", &words), grid))
    }
}

/// DSA's indexer warm-up prepared for one call (`shaders/dsa_align.wgsl`): the alignment
/// loss `Σ_i KL(p_t ‖ softmax_s I(p_i, s))` over every visible key, `p_t` the dense causal
/// attention's probabilities of (Q, K) averaged over the query heads, and its gradients to qI,
/// kI and w — what [`crate::contract::dsa::dsa_alignment_f64`] computes, for any batch. Dense
/// cost: every (row, visible key) pair, twice (rows' side, then keys' side), in passes below
/// an adapter's loop cap. Head dims multiples of 4.
pub struct DsaAlign {
    spec: AttnSpec,
    dsa: Dsa,
    rows: Compiled,
    keys: Compiled,
    rows_sparse: Compiled,
    keys_sparse: Compiled,
    /// Keys (rows' side) or rows (keys' side) per pass.
    per_pass: usize,
}

/// The alignment's device buffers: the indexer's inputs, the call's Q and K (as the attention
/// reads them: rotated, with RoPE), the dense LSE `[B, H, N]`, and the outputs — `rows`
/// ([`DsaAlign::rows_len`] floats: dw `[B, N, HI]` first, then four words a row: the index
/// softmax's LSE, a running sum, the row's KL term, one unused), dqI, dkI.
pub struct AlignBuffers<'a> {
    /// qI `[B, N, HI, DI]`, kI `[B, M, DI]`, w `[B, N, HI]`.
    pub index: (&'a wgpu::Buffer, &'a wgpu::Buffer, &'a wgpu::Buffer),
    /// Q `[B, H, N, D]`.
    pub q: &'a wgpu::Buffer,
    /// K `[B, Hkv, M, D]`.
    pub k: &'a wgpu::Buffer,
    /// The dense causal attention's LSE of (Q, K).
    pub lse: &'a wgpu::Buffer,
    /// dw and the rows' state.
    pub rows: &'a wgpu::Buffer,
    /// dqI (shaped as qI).
    pub dqi: &'a wgpu::Buffer,
    /// dkI (shaped as kI).
    pub dki: &'a wgpu::Buffer,
}

impl DsaAlign {
    /// Prepares the alignment for `spec` (checked as DSA's kernels check it: causal, nothing
    /// else, head dims multiples of 4); its passes sized below an adapter's loop cap.
    pub fn new(gpu: &Gpu, spec: &AttnSpec, dsa: &Dsa) -> Result<Self> {
        Self::in_passes(gpu, spec, dsa, usize::MAX)
    }

    /// [`DsaAlign::new`] with passes of at most `most` keys (rows, on the keys' side), at least
    /// 1 (what a long call does below a loop cap, forced for tests).
    pub fn in_passes(gpu: &Gpu, spec: &AttnSpec, dsa: &Dsa, most: usize) -> Result<Self> {
        let causal = check_call(spec, dsa)?;
        let s = causal.shape;
        if let Some(why) = unsupported(&causal) {
            return Err(Error::Invalid(format!("DSA's alignment loss on the GPU: {why}")));
        }
        let (hi, di4, d4) = (dsa.index_heads, dsa.index_dim / 4, s.head_dim / 4);
        // one (row, key) pair: the score twice (HI dots of DI4 vec4s), H dots of D4 for p_t and
        // the gradient's HI·DI4 updates; every loop counts its trips and its exit
        let per_pair = (3 * hi * (di4 + 2) + s.heads * (d4 + 2) + 8) as u64;
        let fixed = (2 * hi * (di4 + 2) + 16) as u64;
        let per_pass = match gpu.loop_iteration_limit() {
            Some(limit) if limit <= fixed + per_pair => {
                return Err(Error::LoopLimit {
                    kernel: NAME,
                    needed: fixed + per_pair,
                    limit,
                    hint: "use fewer indexer or attention heads",
                });
            }
            Some(limit) => ((limit - fixed) / per_pair) as usize,
            None => s.m.max(s.n),
        }
        .clamp(1, most.max(1));
        Ok(Self {
            rows: gpu.compile(&ALIGN_ROWS.variant("align_rows", &[PARAMS], vec![]))?,
            keys: gpu.compile(&ALIGN_KEYS.variant("align_keys", &[PARAMS], vec![]))?,
            rows_sparse: gpu.compile(&ALIGN_ROWS_SPARSE.variant("align_rows_sparse", &[PARAMS], vec![]))?,
            keys_sparse: gpu.compile(&ALIGN_KEYS_SPARSE.variant("align_keys_sparse", &[PARAMS], vec![]))?,
            spec: causal,
            dsa: *dsa,
            per_pass,
        })
    }

    /// Floats of the `rows` buffer: dw `[B, N, HI]`, then four a row.
    pub fn rows_len(&self) -> usize {
        self.spec.shape.batch * self.spec.shape.n * (self.dsa.index_heads + 4)
    }

    /// Runs the warm-up alignment on `b` (submitted): the loss terms in `rows`, the gradients
    /// times `grad_scale` (a mean's 1/rows, say) in dw, dqI and dkI; `b.lse` the dense LSE.
    pub fn run(&self, gpu: &Gpu, b: &AlignBuffers, grad_scale: f32) -> Result<()> {
        self.run_on(gpu, b, None, grad_scale)
    }

    /// Runs the sparse stage's alignment on `b` (submitted): as [`DsaAlign::run`] over each
    /// row's listed keys, `b.lse` the sparse attention's LSE, `sparse` the lists `[B, N, k]` and
    /// their inverse ([`inverse_lists`]), each bound whole (a typed error past one binding).
    pub fn run_sparse(
        &self,
        gpu: &Gpu,
        b: &AlignBuffers,
        sparse: (&wgpu::Buffer, DeviceInverse),
        grad_scale: f32,
    ) -> Result<()> {
        let (lists, inv) = sparse;
        check_bindings(
            gpu,
            "DSA's sparse alignment",
            &[
                ("the lists", lists.size()),
                ("the inverse lists", inv.entries.size()),
                ("their offsets", inv.offsets.size()),
            ],
        )?;
        self.run_on(gpu, b, Some(sparse), grad_scale)
    }

    fn run_on(
        &self,
        gpu: &Gpu,
        b: &AlignBuffers,
        sparse: Option<(&wgpu::Buffer, DeviceInverse)>,
        grad_scale: f32,
    ) -> Result<()> {
        let s = self.spec.shape;
        let (rows, keys) = (s.batch * s.n, s.batch * s.m);
        let dispatch = |keys_side: bool, count: usize, (a0, a1, mode): (usize, usize, u32)| -> Result<()> {
            let grid = gpu.grid(NAME, (count as u64).div_ceil(64))?;
            let mut words = params(&self.spec, &self.dsa, grid[0], (0, count));
            (words.arg0, words.arg1, words.last, words.grad_scale) = (a0 as u32, a1 as u32, mode, grad_scale);
            let uniform = gpu.uniform("DSA alignment params", &words);
            let (qi, ki, wi) = b.index;
            let (params, qi, ki, wi) = ((&uniform).into(), qi.into(), ki.into(), wi.into());
            let (q, k, lse, rows) = (b.q.into(), b.k.into(), b.lse.into(), b.rows.into());
            let (dqi, dki) = (b.dqi.into(), b.dki.into());
            match (keys_side, sparse) {
                (true, None) => submit(
                    gpu,
                    &self.keys,
                    &AlignKeysBinds { params, qi, ki, wi, q, k, lse, rows, dki },
                    grid,
                ),
                (false, None) => submit(
                    gpu,
                    &self.rows,
                    &AlignRowsBinds { params, qi, ki, wi, q, k, lse, rows, dqi },
                    grid,
                ),
                (true, Some((_, inv))) => {
                    let (inv_offsets, inv_entries) = (inv.offsets.into(), inv.entries.into());
                    let binds = AlignKeysSparseBinds {
                        params,
                        qi,
                        ki,
                        wi,
                        q,
                        k,
                        lse,
                        rows,
                        dki,
                        inv_offsets,
                        inv_entries,
                    };
                    submit(gpu, &self.keys_sparse, &binds, grid)
                }
                (false, Some((lists, _))) => {
                    let lists = lists.into();
                    let binds = AlignRowsSparseBinds { params, qi, ki, wi, q, k, lse, rows, dqi, lists };
                    submit(gpu, &self.rows_sparse, &binds, grid)
                }
            }
            Ok(())
        };
        let per = self.per_pass;
        let ranges = |len: usize| (0..len.max(1)).step_by(per).map(move |a| (a, (a + per).min(len)));
        // the rows' side over keys (list entries), the keys' side over rows (inverse entries)
        let (row_len, key_len) = sparse.map_or((s.m, s.n), |(_, inv)| (self.dsa.topk, inv.longest));
        for mode in [0, 1] {
            for (a0, a1) in ranges(row_len) {
                dispatch(false, rows, (a0, a1, mode))?;
            }
        }
        for (a0, a1) in ranges(key_len) {
            dispatch(true, keys, (a0, a1, 0))?;
        }
        Ok(())
    }
}

/// DSA's indexer warm-up on host tensors ([`DsaAlign`]): the loss summed over a batch's
/// sequences and its gradients.
pub fn dsa_alignment(
    gpu: &Gpu,
    spec: &AttnSpec,
    dsa: &Dsa,
    qk: (&[f32], &[f32]),
    ix: &Indexer,
) -> Result<Alignment<f32>> {
    dsa_alignment_in_passes(gpu, spec, dsa, qk, ix, usize::MAX)
}

/// [`dsa_alignment`] with its passes at most `most` long ([`DsaAlign::in_passes`]).
pub fn dsa_alignment_in_passes(
    gpu: &Gpu,
    spec: &AttnSpec,
    dsa: &Dsa,
    (q, k): (&[f32], &[f32]),
    ix: &Indexer,
    most: usize,
) -> Result<Alignment<f32>> {
    let align = DsaAlign::in_passes(gpu, spec, dsa, most)?;
    let causal = &align.spec;
    causal.check_inputs(q, k, k)?;
    dsa.check(&causal.shape, ix)?;
    // the dense attention's LSE (V does not enter it: K stands in)
    let lse = Attention::new(gpu, Kernel::Flash, causal)?.run(gpu, q, k, k)?.lse;
    let (qi, ki, wi) = (
        gpu.upload("DSA index queries", ix.q)?,
        gpu.upload("DSA index keys", ix.k)?,
        gpu.upload("DSA index weights", ix.w)?,
    );
    let (qb, kb, lb) = (gpu.upload("Q", q)?, gpu.upload("K", k)?, gpu.upload("dense LSE", &lse)?);
    read_alignment(gpu, &align, ix, ((&qi, &ki, &wi), &qb, &kb, &lb), None)
}

/// The sparse stage's alignment on host tensors ([`dsa_sparse_alignment_in_passes`] with
/// passes as long as the adapter allows): the loss and its gradients, and the lists.
pub fn dsa_sparse_alignment(
    gpu: &Gpu,
    spec: &AttnSpec,
    dsa: &Dsa,
    qk: (&[f32], &[f32]),
    ix: &Indexer,
) -> Result<(Alignment<f32>, Vec<u32>)> {
    dsa_sparse_alignment_in_passes(gpu, spec, dsa, qk, ix, usize::MAX)
}

/// The sparse stage's alignment on host tensors: DSA's choice and attention on the GPU (for
/// the lists and the sparse LSE), then [`DsaAlign::run_sparse`] with passes at most `most`
/// long — what [`crate::contract::dsa::dsa_sparse_alignment_f64`] computes, for any batch.
/// Returns the loss and gradients, and the lists.
pub fn dsa_sparse_alignment_in_passes(
    gpu: &Gpu,
    spec: &AttnSpec,
    dsa: &Dsa,
    (q, k): (&[f32], &[f32]),
    ix: &Indexer,
    most: usize,
) -> Result<(Alignment<f32>, Vec<u32>)> {
    let align = DsaAlign::in_passes(gpu, spec, dsa, most)?;
    let call = DsaAttention::new(gpu, spec, dsa)?;
    let t = call.upload(gpu, (q, k, k), ix)?;
    call.run(gpu, &t)?;
    let lists = call.read_lists(gpu, &t)?;
    let inverse = inverse_lists(&align.spec, dsa, &lists)?;
    let (offsets, entries) = inverse.upload(gpu)?;
    let inv = DeviceInverse { offsets: &offsets, entries: &entries, longest: inverse.longest };
    let inputs = ((&t.qi, &t.ki, &t.wi), &t.io.q, &t.io.k, &t.io.lse);
    let out = read_alignment(gpu, &align, ix, inputs, Some((&t.lists, inv)))?;
    Ok((out, lists))
}

/// The inputs of [`AlignBuffers`]: the indexer's (qI, kI, w), Q, K and the attention's LSE.
type AlignInputs<'a> = (
    (&'a wgpu::Buffer, &'a wgpu::Buffer, &'a wgpu::Buffer),
    &'a wgpu::Buffer,
    &'a wgpu::Buffer,
    &'a wgpu::Buffer,
);

/// Runs `align` on `inputs` into fresh poisoned outputs and reads the loss and gradients back,
/// every value checked finite.
fn read_alignment(
    gpu: &Gpu,
    align: &DsaAlign,
    ix: &Indexer,
    (index, q, k, lse): AlignInputs,
    sparse: Option<(&wgpu::Buffer, DeviceInverse)>,
) -> Result<Alignment<f32>> {
    let (rows, dqi, dki) = (
        gpu.poisoned("DSA alignment rows", align.rows_len())?,
        gpu.poisoned("dqI", ix.q.len())?,
        gpu.poisoned("dkI", ix.k.len())?,
    );
    let b = AlignBuffers { index, q, k, lse, rows: &rows, dqi: &dqi, dki: &dki };
    match sparse {
        Some(sparse) => align.run_sparse(gpu, &b, sparse, 1.0)?,
        None => align.run(gpu, &b, 1.0)?,
    }
    let state: Vec<f32> = gpu.read(&rows, align.rows_len())?;
    let (dw, words) = state.split_at(ix.w.len());
    let out = Alignment {
        loss: words.chunks_exact(4).map(|r| r[2] as f64).sum(),
        dq: gpu.read(&dqi, ix.q.len())?,
        dk: gpu.read(&dki, ix.k.len())?,
        dw: dw.to_vec(),
    };
    for (name, x) in [("dqI", &out.dq), ("dkI", &out.dk), ("dw", &out.dw)] {
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "DSA's alignment gradient {name} is not finite at flat index {i}"
            )));
        }
    }
    if !out.loss.is_finite() {
        return Err(Error::Invalid("DSA's alignment loss is not finite".into()));
    }
    Ok(out)
}
