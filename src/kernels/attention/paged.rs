//! `paged`: decoding as a server runs it (`shaders/paged.wgsl`) — a KV cache in fixed-size
//! pages from one pool per layer, a page table per sequence (pages shared between sequences
//! that forked from a common prefix, copied on write), K and V stored as f32, int8 or 4-bit
//! and dequantised inside the kernel, sequences of different lengths decoded in one dispatch,
//! and a step's new tokens arranged as a tree for speculative verification.
//!
//! A step: [`PagedDecoder::begin`] reserves the slots of every sequence's new tokens (pool
//! exhaustion is a typed error before anything changes), frees the pages a window has left
//! behind and copies shared pages about to be written; then each layer
//! [`PagedDecoder::attend`]s (or [`PagedDecoder::encode`]s): the new K and V stored into their
//! slots, every new token's queries against its sequence's cache and ancestors, the splits
//! merged. The oracle is [`crate::contract::paged::step_f64`].

use crate::contract::paged::{KvFormat, Tree};
use crate::contract::spec::{Alibi, AttnShape, AttnSpec, check_finite};
use crate::error::{Error, Result};
use crate::kernels::attention::decode::DecodeKernel;
use crate::kernels::{COMMON, CallParams, SOFTMAX_TILE, check_call_head_dim, lanes, slopes_words};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Compiled, Shader, ShaderVariant, bind_group, header_consts};

const NAME: &str = "paged";
const SOURCE: &str = include_str!("../../../shaders/paged.wgsl");

bind_group! {
    /// contract, batch, sequences, page tables, trees, new K and V, the pools written.
    struct StoreBinds {
        0 contract: Uniform, 1 batch: Uniform, 2 seqs: Read, 3 pages: Read, 14 k_new: Read,
        15 v_new: Read, 16 k_out: ReadWrite, 17 v_out: ReadWrite, 18 k_scale_out: ReadWrite,
        19 v_scale_out: ReadWrite,
    }
}
bind_group! {
    /// contract, batch, sequences, page tables, trees, Q, the pools, partials, slopes.
    struct AttendBinds {
        0 contract: Uniform, 1 batch: Uniform, 2 seqs: Read, 3 pages: Read, 4 tree: Read, 5 q: Read,
        6 k_pool: Read, 7 v_pool: Read, 8 k_scale: Read, 9 v_scale: Read, 10 partials: ReadWrite,
        11 slopes: Read,
    }
}
bind_group! {
    /// contract, batch, sequences, partials, O, LSE.
    struct CombineBinds {
        0 contract: Uniform, 1 batch: Uniform, 2 seqs: Read, 10 partials: ReadWrite, 12 o: ReadWrite,
        13 lse: ReadWrite,
    }
}
const STORE: Shader = Shader { stem: NAME, source: SOURCE, bindings: StoreBinds::SLOTS };
const ATTEND: Shader = Shader { stem: NAME, source: SOURCE, bindings: AttendBinds::SLOTS };
const STAGED: Shader = Shader { stem: NAME, source: SOURCE, bindings: AttendBinds::SLOTS };
const COMBINE: Shader = Shader { stem: NAME, source: SOURCE, bindings: CombineBinds::SLOTS };

header_consts! {
    /// paged.wgsl's constants.
    struct PagedConsts {
        /// vec4 lanes of the stored head dim.
        D4,
        /// K's format code (0 f32, 1 int8, 2 int4).
        KFMT,
        /// V's.
        VFMT,
        /// Keys scored per rescale of a row's running sums.
        KB,
        /// Invocations per workgroup of `attend` and `attend_staged`.
        WG,
        /// Keys per staged tile (`attend_staged`).
        BC,
        /// Cache slots per page (a constant: the table's divisions become shifts).
        PAGE,
        /// vec4 lanes a row's invocation holds (softmax_tile.wgsl): all of them.
        DP4,
        /// Private lanes: D4, padded to whole subgroups on the shuffle path.
        D4P,
        /// Subgroup width of `attend_staged`'s shuffles (0: plain loads).
        SG,
        /// SG does not divide D4: the shuffle path clamps its loads.
        SG_GUARD_U,
        /// Never.
        LANE_GUARD_U,
    }
}

/// Keys `attend` scores per rescale.
const KB: u32 = 8;
/// A table entry with no page (freed behind a window, or never written).
const NO_PAGE: u32 = u32::MAX;
/// Each sequence's cache is cut into at least this many splits (of at least `KB` slots) where
/// the split size is chosen automatically: an invocation per (split, row) must fill a CPU
/// adapter's threads even for one short sequence.
const MIN_SPLITS: usize = 64;

/// The shader variants (store, attend, attend_staged, combine) for stored head dim `d`,
/// formats, `wg` invocations per attend workgroup and `sg` lanes per subgroup shuffle (0:
/// none), `bc` keys per staged tile and `page` slots per page.
pub fn variants(
    d: usize,
    k: KvFormat,
    v: KvFormat,
    (wg, sg): (u32, u32),
    bc: u32,
    page: u32,
) -> Vec<ShaderVariant> {
    let d4 = (d / 4) as u32;
    let d4p = if sg > 0 { d4.div_ceil(sg) * sg } else { d4 };
    let consts = PagedConsts {
        D4: d4,
        KFMT: k.code(),
        VFMT: v.code(),
        KB,
        WG: wg,
        BC: bc,
        PAGE: page,
        DP4: d4,
        D4P: d4p,
        SG: sg,
        SG_GUARD_U: (sg > 0 && !d4.is_multiple_of(sg)) as u32,
        LANE_GUARD_U: 0,
    }
    .header();
    [(STORE, "store"), (ATTEND, "attend"), (STAGED, "attend_staged"), (COMBINE, "combine")]
        .into_iter()
        .map(|(shader, entry)| shader.variant(entry, &[COMMON, lanes(sg), SOFTMAX_TILE], consts.clone()))
        .collect()
}

/// Below this many query rows per kv head, CPU adapters (`Profile::per_lane_loads`) run the
/// lane-per-row kernel (as the contiguous decoder does, `decode::LANES_BELOW_ROWS`).
const LANES_BELOW_ROWS: usize = 4;

/// How a paged decoder is laid out.
#[derive(Clone, Debug, PartialEq)]
pub struct PagedConfig {
    /// Layers, each with its own pool (the page tables are shared: a sequence's page `i` is
    /// page `i` of every layer).
    pub layers: usize,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads (H a multiple of them).
    pub kv_heads: usize,
    /// Head dim D.
    pub head_dim: usize,
    /// Cache slots per page.
    pub page: usize,
    /// Pages in each layer's pool.
    pub pages: usize,
    /// How K is stored.
    pub k_format: KvFormat,
    /// How V is stored.
    pub v_format: KvFormat,
    /// ALiBi over positions (slopes of the query heads).
    pub alibi: Alibi,
    /// Score scale; `None`: `1/sqrt(D)`.
    pub scale: Option<f32>,
    /// Keys within this many positions before a query are visible (`None`: all); pages wholly
    /// behind it (and past the sinks) go back to the pool.
    pub window: Option<usize>,
    /// The first positions stay visible whatever the window (attention sinks).
    pub sinks: usize,
    /// Most sequences in one step.
    pub max_seqs: usize,
    /// Most new tokens in one step, all sequences together.
    pub max_tokens: usize,
    /// Cache slots per split (0: the profile's, lowered below the adapter's loop cap).
    pub chunk: usize,
    /// Which attend kernel runs: `Staged` (decoded tiles in workgroup memory shared by a kv
    /// head's rows), `Lanes` (an invocation per split and row) or the profile's choice.
    pub kernel: DecodeKernel,
}

impl PagedConfig {
    /// One layer, f32 pages of 64 slots, no window, 16 sequences of one token a step.
    pub fn new(heads: usize, kv_heads: usize, head_dim: usize, pages: usize) -> Self {
        Self {
            layers: 1,
            heads,
            kv_heads,
            head_dim,
            page: 64,
            pages,
            k_format: KvFormat::F32,
            v_format: KvFormat::F32,
            alibi: Alibi::Off,
            scale: None,
            window: None,
            sinks: 0,
            max_seqs: 16,
            max_tokens: 16,
            chunk: 0,
            kernel: DecodeKernel::Auto,
        }
    }

    /// The head dim the kernels run: D rounded up to whole stored words of both formats.
    pub fn stored_dim(&self) -> usize {
        self.k_format.stored_dim(self.head_dim).max(self.v_format.stored_dim(self.head_dim))
    }

    /// Device bytes per cached token, all layers (K and V with their scales).
    pub fn bytes_per_token(&self) -> u64 {
        let d = self.stored_dim();
        let row = self.k_format.row_bytes(d) + self.v_format.row_bytes(d);
        row * (self.layers * self.kv_heads) as u64
    }

    /// The step's rule for the oracle (heads, scale, slopes, window, sinks).
    pub fn rule(&self) -> crate::contract::paged::StepRule {
        let spec = self.spec();
        crate::contract::paged::StepRule {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            scale: spec.scale_value(),
            slopes: spec.slopes(),
            window: self.window,
            sinks: self.sinks,
        }
    }

    fn spec(&self) -> AttnSpec {
        let shape = AttnShape {
            batch: 1,
            heads: self.heads,
            kv_heads: self.kv_heads,
            n: 1,
            m: 1,
            head_dim: self.head_dim,
        };
        AttnSpec::new(shape).alibi(self.alibi.clone()).scale(self.scale)
    }
}

/// A sequence of a [`PagedDecoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqId(usize);

#[derive(Clone, Debug, Default)]
struct SeqState {
    /// Page per `page` slots (`NO_PAGE` where freed).
    table: Vec<u32>,
    /// Slots written (committed and this step's).
    len: usize,
}

/// What the pool holds: free pages and how many tables point at each page.
#[derive(Clone, Debug)]
struct Pool {
    free: Vec<u32>,
    refs: Vec<u32>,
}

impl Pool {
    fn new(pages: usize) -> Self {
        Self { free: (0..pages as u32).rev().collect(), refs: vec![0; pages] }
    }
    fn take(&mut self) -> u32 {
        let p = self.free.pop().expect("pages counted before they are taken");
        self.refs[p as usize] = 1;
        p
    }
    fn drop_ref(&mut self, p: u32) {
        if p == NO_PAGE {
            return;
        }
        let r = &mut self.refs[p as usize];
        *r -= 1;
        if *r == 0 {
            self.free.push(p);
        }
    }
}

/// The pool's state for a report or the visualiser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolUsage {
    /// Pages in the pool (per layer).
    pub pages: usize,
    /// Pages some table points at.
    pub used: usize,
    /// Pages more than one table points at.
    pub shared: usize,
    /// Live sequences.
    pub seqs: usize,
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct BatchParams {
    seqs: u32,
    lanes: u32,
    tokens: u32,
    page: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug, bytemuck::Pod, bytemuck::Zeroable)]
struct SeqParams {
    len: u32,
    nq: u32,
    q0: u32,
    lane0: u32,
    splits: u32,
    chunk: u32,
    sinks: u32,
    first: u32,
    window: u32,
    sink_keys: u32,
    table0: u32,
    part0: u32,
}

/// One layer's pool on the device: K and V words, their scale words.
struct LayerPool {
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    k_scale: wgpu::Buffer,
    v_scale: wgpu::Buffer,
}

/// A paged, optionally quantised KV cache for many sequences and the kernels that decode over
/// it in one dispatch per layer.
pub struct PagedDecoder {
    cfg: PagedConfig,
    /// The stored head dim (D padded to whole words of both formats).
    d: usize,
    pool: Pool,
    seqs: Vec<Option<SeqState>>,
    layers: Vec<LayerPool>,
    store: Compiled,
    attend: Compiled,
    combine: Compiled,
    store_binds: Vec<wgpu::BindGroup>,
    attend_binds: Vec<wgpu::BindGroup>,
    combine_bind: wgpu::BindGroup,
    batch_buf: wgpu::Buffer,
    seq_buf: wgpu::Buffer,
    table_buf: wgpu::Buffer,
    tree_buf: wgpu::Buffer,
    q: wgpu::Buffer,
    k_new: wgpu::Buffer,
    v_new: wgpu::Buffer,
    o: wgpu::Buffer,
    lse: wgpu::Buffer,
    /// Bytes a slot takes in each pool buffer (K words, V words, K scales, V scales).
    slot_bytes: [u64; 4],
    /// One page of the largest pool buffer: where copies within a pool pass through.
    scratch: wgpu::Buffer,
    chunk: usize,
    max_splits: usize,
    wg: u32,
    /// `attend_staged` runs (else `attend`).
    staged: bool,
    /// The step begun: its sequences and trees, tokens, lanes.
    step: Vec<(SeqId, Tree)>,
    batch: BatchParams,
    /// Splits per sequence of the step begun.
    splits: Vec<usize>,
}

impl PagedDecoder {
    /// Checks the layout against the device, compiles the kernels and allocates every pool and
    /// buffer (nothing is allocated later).
    pub fn new(gpu: &Gpu, cfg: PagedConfig) -> Result<Self> {
        check_call_head_dim(NAME, cfg.head_dim)?;
        for (what, v) in [
            ("heads", cfg.heads),
            ("kv heads", cfg.kv_heads),
            ("layers", cfg.layers),
            ("slots per page", cfg.page),
            ("pages", cfg.pages),
            ("sequences per step", cfg.max_seqs),
            ("tokens per step", cfg.max_tokens),
        ] {
            if v == 0 {
                return Err(Error::Invalid(format!("a paged decoder needs at least one of {what}")));
            }
        }
        if !cfg.heads.is_multiple_of(cfg.kv_heads) {
            return Err(Error::Invalid(format!(
                "{} query heads do not share {} kv heads evenly",
                cfg.heads, cfg.kv_heads
            )));
        }
        let spec = cfg.spec();
        spec.validate()?;
        let d = cfg.stored_dim();
        let too_big = |what: &str| Error::Invalid(format!("paged decoder: {what} does not fit in 64 bits"));
        let slots = cfg.pages.checked_mul(cfg.page).ok_or_else(|| too_big("the pool's slots"))?;
        if slots > u32::MAX as usize {
            return Err(Error::OutOfRange {
                what: "cache slots in one pool (pages × slots per page)".into(),
                value: slots as u64,
                min: 1,
                max: u32::MAX as u64,
            });
        }
        let rows = (slots * cfg.kv_heads) as u64;
        let words = |f: KvFormat| (d / f.values_per_word()) as u64 * 16;
        let scales = |f: KvFormat| f.scales_per_row(d) as u64 * 4;
        let slot_bytes =
            [words(cfg.k_format), words(cfg.v_format), scales(cfg.k_format), scales(cfg.v_format)]
                .map(|b| b * cfg.kv_heads as u64);
        for (what, b) in ["K pool", "V pool", "K scales", "V scales"].iter().zip(slot_bytes) {
            gpu.check_binding(what, rows / cfg.kv_heads as u64 * b)?;
        }
        let per_lane_loads = gpu.profile().0.per_lane_loads;
        let group = cfg.heads / cfg.kv_heads;
        // decoded tiles shared by a kv head's rows, except where CPU adapters have too few rows
        // to share them (one SIMD group of lanes each on its own row is faster there)
        let staged = match cfg.kernel {
            DecodeKernel::Auto => !per_lane_loads || group >= LANES_BELOW_ROWS,
            DecodeKernel::Staged => true,
            DecodeKernel::Lanes => false,
        };
        let bc = crate::kernels::attention::decode::tile_keys(gpu, d);
        // the staged kernel shuffles each lane's vec4 of a key to the others (fewer
        // same-address loads from workgroup memory, which CPU adapters gather)
        let sg = if staged { gpu.fixed_subgroup().unwrap_or(0) } else { 0 };
        let wg = if staged {
            (group.next_power_of_two() as u32).clamp(8, 64).max(sg)
        } else if per_lane_loads {
            8
        } else {
            64
        };
        if staged {
            gpu.check_workgroup(NAME, 2 * bc as u64 * d as u64 * 4, wg)?;
        }
        // slots per split, below the loop cap: per key a score and a value sum (≈ D/4 each),
        // a rescale per KB keys (lanes) or the staging of a tile (staged), the table lookup
        let d4 = d as u64 / 4;
        let per_key = if staged {
            (d4 * 2).div_ceil(wg as u64) + 2 * (2 * d4 + 2) + 4
        } else {
            2 * d4 + 8 + d4.div_ceil(KB as u64)
        };
        let step = if staged { bc as usize } else { KB as usize };
        let mut chunk = if cfg.chunk == 0 { gpu.profile().0.decode_chunk } else { cfg.chunk };
        if let Some(limit) = gpu.loop_iteration_limit() {
            chunk = chunk.min(((limit / per_key) as usize / step).max(1) * step);
        }
        let chunk = chunk.max(1);
        let max_splits = slots.div_ceil(chunk).max(if cfg.chunk == 0 { MIN_SPLITS } else { 1 });
        let partial_rows = (cfg.max_tokens * cfg.heads) as u64 * max_splits as u64;
        gpu.check_binding("paged partials", partial_rows * (d as u64 + 4) * 4)?;
        let lanes = partial_rows;
        gpu.check_dispatch(NAME, lane_groups(lanes, wg, gpu))?;

        let [vs, va, vst, vc]: [ShaderVariant; 4] =
            variants(d, cfg.k_format, cfg.v_format, (wg, sg), bc, cfg.page as u32)
                .try_into()
                .map_err(|_| Error::Device("paged: expected four kernels".into()))?;
        let va = if staged { vst } else { va };
        let (store, attend, combine) = (gpu.compile(&vs)?, gpu.compile(&va)?, gpu.compile(&vc)?);

        let layers = (0..cfg.layers)
            .map(|l| {
                let make =
                    |what: &str, b: u64| gpu.storage(&format!("{what} of layer {l}"), slots as u64 * b);
                Ok(LayerPool {
                    k: make("K pool", slot_bytes[0])?,
                    v: make("V pool", slot_bytes[1])?,
                    k_scale: make("K scales", slot_bytes[2])?,
                    v_scale: make("V scales", slot_bytes[3])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let contract = CallParams::new(&spec).upload(gpu);
        let batch_buf = gpu.uniform("paged batch", &BatchParams::default());
        let seq_buf = gpu.storage("paged sequences", (cfg.max_seqs * size_of::<SeqParams>()) as u64)?;
        // every sequence may hold the whole pool through shared pages
        let table_entries = cfg.max_seqs as u64 * cfg.pages as u64;
        let table_buf = gpu.storage("paged page tables", table_entries * 4)?;
        let tree_buf = gpu.storage("paged trees", (cfg.max_tokens * 8) as u64)?;
        let q = gpu.storage("paged Q", (cfg.max_tokens * cfg.heads * d * 4) as u64)?;
        let k_new = gpu.storage("paged new K", (cfg.max_tokens * cfg.kv_heads * d * 4) as u64)?;
        let v_new = gpu.storage("paged new V", (cfg.max_tokens * cfg.kv_heads * d * 4) as u64)?;
        let partials = gpu.storage("paged partials", partial_rows * (d as u64 + 4) * 4)?;
        let slopes = gpu.upload("ALiBi slopes", &slopes_words(&spec))?;
        let o = gpu.storage("paged O", (cfg.max_tokens * cfg.heads * d * 4) as u64)?;
        let lse = gpu.storage("paged LSE", (cfg.max_tokens * cfg.heads * 4) as u64)?;
        let scratch =
            gpu.storage("paged page copy", slot_bytes.iter().max().copied().unwrap_or(4) * cfg.page as u64)?;
        let store_binds = layers
            .iter()
            .map(|p| {
                let b = StoreBinds {
                    contract: (&contract).into(),
                    batch: (&batch_buf).into(),
                    seqs: (&seq_buf).into(),
                    pages: (&table_buf).into(),
                    k_new: (&k_new).into(),
                    v_new: (&v_new).into(),
                    k_out: (&p.k).into(),
                    v_out: (&p.v).into(),
                    k_scale_out: (&p.k_scale).into(),
                    v_scale_out: (&p.v_scale).into(),
                };
                store.bind(gpu, &b)
            })
            .collect();
        let attend_binds = layers
            .iter()
            .map(|p| {
                let b = AttendBinds {
                    contract: (&contract).into(),
                    batch: (&batch_buf).into(),
                    seqs: (&seq_buf).into(),
                    pages: (&table_buf).into(),
                    tree: (&tree_buf).into(),
                    q: (&q).into(),
                    k_pool: (&p.k).into(),
                    v_pool: (&p.v).into(),
                    k_scale: (&p.k_scale).into(),
                    v_scale: (&p.v_scale).into(),
                    partials: (&partials).into(),
                    slopes: (&slopes).into(),
                };
                attend.bind(gpu, &b)
            })
            .collect();
        let cb = CombineBinds {
            contract: (&contract).into(),
            batch: (&batch_buf).into(),
            seqs: (&seq_buf).into(),
            partials: (&partials).into(),
            o: (&o).into(),
            lse: (&lse).into(),
        };
        let combine_bind = combine.bind(gpu, &cb);
        let dec = Self {
            pool: Pool::new(cfg.pages),
            seqs: Vec::new(),
            layers,
            store,
            attend,
            combine,
            store_binds,
            attend_binds,
            combine_bind,
            batch_buf,
            seq_buf,
            table_buf,
            tree_buf,
            q,
            k_new,
            v_new,
            o,
            lse,
            slot_bytes,
            scratch,
            chunk,
            max_splits,
            wg,
            staged,
            step: Vec::new(),
            batch: BatchParams::default(),
            splits: Vec::new(),
            d,
            cfg,
        };
        dec.warm_up(gpu);
        Ok(dec)
    }

    /// Runs one workgroup of each kernel on the empty batch (every invocation returns at
    /// once). On lavapipe the size of a pipeline's first dispatch stays with it: a decoder
    /// whose first step was 8 sequences after a prefill ran every later 8-sequence step in
    /// 17 ms, against 3 ms when any small step came first (CPU time in the driver, not in the
    /// kernel's code; the mechanism inside Mesa was not found). Harmless elsewhere.
    fn warm_up(&self, gpu: &Gpu) {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(NAME),
                timestamp_writes: None,
            });
            if let (Some(s), Some(a)) = (self.store_binds.first(), self.attend_binds.first()) {
                self.store.dispatch(&mut pass, s, [1, 1, 1]);
                self.attend.dispatch(&mut pass, a, [1, 1, 1]);
            }
            self.combine.dispatch(&mut pass, &self.combine_bind, [1, 1, 1]);
        }
        gpu.queue.submit([enc.finish()]);
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &PagedConfig {
        &self.cfg
    }

    /// The head dim the kernels run (D padded to whole stored words).
    pub fn stored_dim(&self) -> usize {
        self.d
    }

    /// Cache slots per split.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// The attend kernel it runs (`Staged` or `Lanes`).
    pub fn kernel(&self) -> DecodeKernel {
        if self.staged { DecodeKernel::Staged } else { DecodeKernel::Lanes }
    }

    /// Splits of each sequence in the step begun.
    pub fn splits(&self) -> &[usize] {
        &self.splits
    }

    /// Device bytes of every pool (K and V, scales, all layers).
    pub fn pool_bytes(&self) -> u64 {
        let slots = (self.cfg.pages * self.cfg.page) as u64;
        self.slot_bytes.iter().sum::<u64>() * slots * self.cfg.layers as u64
    }

    /// Pages used and shared, live sequences.
    pub fn usage(&self) -> PoolUsage {
        PoolUsage {
            pages: self.cfg.pages,
            used: self.pool.refs.iter().filter(|&&r| r > 0).count(),
            shared: self.pool.refs.iter().filter(|&&r| r > 1).count(),
            seqs: self.seqs.iter().flatten().count(),
        }
    }

    /// A new, empty sequence.
    pub fn add(&mut self) -> SeqId {
        self.insert(SeqState::default())
    }

    fn insert(&mut self, s: SeqState) -> SeqId {
        match self.seqs.iter().position(Option::is_none) {
            Some(i) => {
                self.seqs[i] = Some(s);
                SeqId(i)
            }
            None => {
                self.seqs.push(Some(s));
                SeqId(self.seqs.len() - 1)
            }
        }
    }

    fn state(&self, id: SeqId) -> Result<&SeqState> {
        self.seqs
            .get(id.0)
            .and_then(Option::as_ref)
            .ok_or_else(|| Error::Invalid(format!("no live sequence {}", id.0)))
    }

    /// Slots written to `id` (its positions so far, the step begun included).
    pub fn len(&self, id: SeqId) -> Result<usize> {
        Ok(self.state(id)?.len)
    }

    /// `id`'s page table (`u32::MAX` where a page was freed behind the window).
    pub fn table(&self, id: SeqId) -> Result<&[u32]> {
        Ok(&self.state(id)?.table)
    }

    /// A sequence that starts as `id` (the same tokens): every page shared, copied when one of
    /// the two writes into a shared page.
    pub fn fork(&mut self, id: SeqId) -> Result<SeqId> {
        let s = self.state(id)?.clone();
        for &p in &s.table {
            if p != NO_PAGE {
                self.pool.refs[p as usize] += 1;
            }
        }
        Ok(self.insert(s))
    }

    /// Ends `id`: its pages go back to the pool where no other table holds them.
    pub fn release(&mut self, id: SeqId) -> Result<()> {
        self.state(id)?;
        let s = self.seqs[id.0].take().expect("checked live");
        s.table.into_iter().for_each(|p| self.pool.drop_ref(p));
        Ok(())
    }

    /// Keeps `id`'s first `len` slots (rejected drafts dropped); whole pages past them return.
    pub fn truncate(&mut self, id: SeqId, len: usize) -> Result<()> {
        let have = self.state(id)?.len;
        if len > have {
            return Err(Error::OutOfRange {
                what: format!("slots kept of sequence {}", id.0),
                value: len as u64,
                min: 0,
                max: have as u64,
            });
        }
        let keep = len.div_ceil(self.cfg.page);
        let s = self.seqs[id.0].as_mut().expect("checked live");
        let gone: Vec<u32> = s.table.drain(keep..).collect();
        s.len = len;
        gone.into_iter().for_each(|p| self.pool.drop_ref(p));
        Ok(())
    }

    /// Appends a prompt to `id` without attending: one `(K, V)` per layer, each
    /// `[T, Hkv, D]`, stored on the host's side in the cache's formats (the rule of
    /// [`KvFormat::encode_row`], which the store kernel follows) and written into new pages.
    /// A step in progress ends (begin the next one after).
    pub fn prefill(&mut self, gpu: &Gpu, id: SeqId, kv: &[(&[f32], &[f32])]) -> Result<()> {
        let (hkv, dc, page) = (self.cfg.kv_heads, self.cfg.head_dim, self.cfg.page);
        if kv.len() != self.cfg.layers {
            return Err(Error::Invalid(format!(
                "a prefill takes K and V of every layer: {} given, {} layers",
                kv.len(),
                self.cfg.layers
            )));
        }
        let per = hkv * dc;
        let t = kv[0].0.len() / per;
        for (l, (k, v)) in kv.iter().enumerate() {
            for (what, x) in [("K", k), ("V", v)] {
                if x.len() != t * per || t == 0 {
                    return Err(Error::Length {
                        what: format!("prefill {what} of layer {l}"),
                        got: x.len(),
                        shape: vec![t.max(1), hkv, dc],
                        expected: t.max(1) * per,
                    });
                }
                check_finite(what, x)?;
            }
        }
        let s = self.state(id)?;
        let len = s.len;
        let shared = !len.is_multiple_of(page) && self.pool.refs[s.table[len / page] as usize] > 1;
        let need = (len + t).div_ceil(page) - s.table.len() + shared as usize;
        if need > self.pool.free.len() {
            return Err(Error::OutOfRange {
                what: format!(
                    "KV pages a prefill of {t} tokens needs ({} free of {})",
                    self.pool.free.len(),
                    self.cfg.pages
                ),
                value: need as u64,
                min: 0,
                max: self.pool.free.len() as u64,
            });
        }
        // the prompt may continue a page shared with a fork: this sequence writes into a copy
        let copies = self.own_last_page(id).into_iter().collect::<Vec<_>>();
        self.copy_pages(gpu, &copies);
        let s = self.seqs[id.0].as_mut().expect("checked live");
        while s.table.len() < (len + t).div_ceil(page) {
            s.table.push(self.pool.take());
        }
        s.len = len + t;
        let table = s.table.clone();
        let d = self.d;
        for (pool, (k, v)) in self.layers.iter().zip(kv) {
            for (f, x, words, scales, wb, sb) in [
                (self.cfg.k_format, k, &pool.k, &pool.k_scale, self.slot_bytes[0], self.slot_bytes[2]),
                (self.cfg.v_format, v, &pool.v, &pool.v_scale, self.slot_bytes[1], self.slot_bytes[3]),
            ] {
                // a kv head's run of slots within one page is contiguous in the pool: one
                // write each
                let (wr, sr) = (wb / hkv as u64, sb / hkv as u64);
                let mut slot = len;
                while slot < len + t {
                    let end = ((slot / page + 1) * page).min(len + t);
                    for kvh in 0..hkv {
                        let (mut w, mut sc) = (Vec::new(), Vec::new());
                        for i in slot..end {
                            let mut row = x[((i - len) * hkv + kvh) * dc..][..dc].to_vec();
                            row.resize(d, 0.0);
                            let (rw, rs) = f.encode_row(&row);
                            w.extend(rw);
                            sc.extend(rs);
                        }
                        let at = pool_row(table[slot / page], slot, kvh, page, hkv) as u64;
                        gpu.queue.write_buffer(words, at * wr, bytemuck::cast_slice(&w));
                        if sr > 0 {
                            gpu.queue.write_buffer(scales, at * sr, bytemuck::cast_slice(&sc));
                        }
                    }
                    slot = end;
                }
            }
        }
        self.step.clear();
        Ok(())
    }

    /// Reserves the slots of a step: for each sequence, the tokens of its tree after its
    /// cache. Pages behind the window (past the sinks) return to the pool first, then shared
    /// pages about to be written are copied (every layer) and new pages taken; if the pool
    /// cannot hold the step, nothing changes and the error says how many pages it lacks.
    pub fn begin(&mut self, gpu: &Gpu, steps: &[(SeqId, Tree)]) -> Result<()> {
        if steps.is_empty() || steps.len() > self.cfg.max_seqs {
            return Err(Error::OutOfRange {
                what: "sequences in one step (PagedConfig::max_seqs)".into(),
                value: steps.len() as u64,
                min: 1,
                max: self.cfg.max_seqs as u64,
            });
        }
        let tokens: usize = steps.iter().map(|(_, t)| t.len()).sum();
        if tokens > self.cfg.max_tokens {
            return Err(Error::OutOfRange {
                what: "new tokens in one step, all sequences (PagedConfig::max_tokens)".into(),
                value: tokens as u64,
                min: 1,
                max: self.cfg.max_tokens as u64,
            });
        }
        for (i, (id, _)) in steps.iter().enumerate() {
            self.state(*id)?;
            if steps[..i].iter().any(|(other, _)| other == id) {
                return Err(Error::Invalid(format!("sequence {} appears twice in one step", id.0)));
            }
        }
        let page = self.cfg.page;
        // pages behind the window: every later query is at ≥ len, so slots below len − W stay
        // hidden unless they hold a sink
        if let Some(w) = self.cfg.window {
            for (id, _) in steps {
                let s = self.seqs[id.0].as_mut().expect("checked live");
                let hidden = s.len.saturating_sub(w);
                let first_free = self.cfg.sinks.div_ceil(page);
                for p in first_free..hidden / page {
                    let e = std::mem::replace(&mut s.table[p], NO_PAGE);
                    self.pool.drop_ref(e);
                }
            }
        }
        // pages needed: new pages past each table, and a copy of a shared page written into
        let mut need = 0usize;
        for (id, tree) in steps {
            let s = self.state(*id)?;
            let (len, t) = (s.len, tree.len());
            need += (len + t).div_ceil(page) - s.table.len();
            if !len.is_multiple_of(page) && self.pool.refs[s.table[len / page] as usize] > 1 {
                need += 1;
            }
        }
        if need > self.pool.free.len() {
            return Err(Error::OutOfRange {
                what: format!(
                    "KV pages a step of {} sequences needs ({} free of {})",
                    steps.len(),
                    self.pool.free.len(),
                    self.cfg.pages
                ),
                value: need as u64,
                min: 0,
                max: self.pool.free.len() as u64,
            });
        }
        let mut copies = Vec::new();
        for (id, tree) in steps {
            copies.extend(self.own_last_page(*id));
            let s = self.seqs[id.0].as_mut().expect("checked live");
            let len = s.len;
            while s.table.len() < (len + tree.len()).div_ceil(page) {
                s.table.push(self.pool.take());
            }
            s.len = len + tree.len();
        }
        self.copy_pages(gpu, &copies);
        self.upload_step(gpu, steps)
    }

    /// Gives `id` its own copy of the page its next slot falls in, if that page is partly
    /// written and shared: the (from, to) pages to copy (a free page is counted beforehand).
    fn own_last_page(&mut self, id: SeqId) -> Option<(u32, u32)> {
        let page = self.cfg.page;
        let s = self.seqs[id.0].as_mut().expect("checked live");
        let len = s.len;
        if len.is_multiple_of(page) {
            return None;
        }
        let shared = s.table[len / page];
        if self.pool.refs[shared as usize] < 2 {
            return None;
        }
        let fresh = self.pool.take();
        self.pool.refs[shared as usize] -= 1;
        s.table[len / page] = fresh;
        Some((shared, fresh))
    }

    /// Copies whole pages within every layer's pools.
    fn copy_pages(&self, gpu: &Gpu, copies: &[(u32, u32)]) {
        let page = self.cfg.page;
        if !copies.is_empty() {
            // a page to another page of the same buffer, through a page of scratch (WebGPU
            // copies between two buffers only)
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            for pool in &self.layers {
                for (buf, b) in
                    [&pool.k, &pool.v, &pool.k_scale, &pool.v_scale].into_iter().zip(self.slot_bytes)
                {
                    let bytes = b * page as u64;
                    for &(from, to) in copies.iter().filter(|_| bytes > 0) {
                        enc.copy_buffer_to_buffer(buf, from as u64 * bytes, &self.scratch, 0, bytes);
                        enc.copy_buffer_to_buffer(&self.scratch, 0, buf, to as u64 * bytes, bytes);
                    }
                }
            }
            gpu.queue.submit([enc.finish()]);
        }
    }

    /// The step's descriptors, page tables and trees on the device.
    fn upload_step(&mut self, gpu: &Gpu, steps: &[(SeqId, Tree)]) -> Result<()> {
        let mut params = Vec::with_capacity(steps.len());
        let mut tables: Vec<u32> = Vec::new();
        let mut tree: Vec<[u32; 2]> = Vec::new();
        let (mut lanes, mut part) = (0usize, 0usize);
        self.splits.clear();
        let h = self.cfg.heads;
        for (id, t) in steps {
            let s = self.state(*id)?;
            let nq = t.len();
            let fresh = s.len - nq;
            // slots any of the step's queries may see: the sinks, then the run the window
            // leaves from the shallowest query (at `fresh`)
            let first = self.cfg.window.map_or(0, |w| fresh.saturating_sub(w));
            let sinks = self.cfg.sinks.min(first);
            let visited = sinks + (s.len - first);
            let mut splits = visited.div_ceil(self.chunk);
            if self.cfg.chunk == 0 && !self.staged {
                splits = splits.max(MIN_SPLITS.min(visited.div_ceil(KB as usize)));
            }
            let splits = splits.clamp(1, self.max_splits);
            let chunk = visited.div_ceil(splits).next_multiple_of(if self.staged { 4 } else { KB as usize });
            let splits = visited.div_ceil(chunk).max(1);
            params.push(SeqParams {
                len: s.len as u32,
                nq: nq as u32,
                q0: tree.len() as u32,
                lane0: lanes as u32,
                splits: splits as u32,
                chunk: chunk as u32,
                sinks: sinks as u32,
                first: first as u32,
                window: self.cfg.window.map_or(u32::MAX, |w| w.min(u32::MAX as usize - 1) as u32),
                sink_keys: self.cfg.sinks.min(u32::MAX as usize) as u32,
                table0: tables.len() as u32,
                part0: part as u32,
            });
            tables.extend_from_slice(&s.table);
            tree.extend((0..nq).map(|u| [t.ancestors(u), t.depth(u) as u32]));
            // invocations (lanes) or workgroups (staged: a block of rows of a kv head)
            let hkv = self.cfg.kv_heads;
            lanes += if self.staged {
                hkv * splits * (h / hkv * nq).div_ceil(self.wg as usize)
            } else {
                splits * h * nq
            };
            part += splits * h * nq;
            self.splits.push(splits);
        }
        let batch = BatchParams {
            seqs: steps.len() as u32,
            lanes: lanes as u32,
            tokens: tree.len() as u32,
            page: self.cfg.page as u32,
        };
        gpu.queue.write_buffer(&self.batch_buf, 0, bytemuck::bytes_of(&batch));
        gpu.queue.write_buffer(&self.seq_buf, 0, bytemuck::cast_slice(&params));
        gpu.queue.write_buffer(&self.table_buf, 0, bytemuck::cast_slice(&tables));
        gpu.queue.write_buffer(&self.tree_buf, 0, bytemuck::cast_slice(&tree));
        self.batch = batch;
        self.step = steps.to_vec();
        Ok(())
    }

    /// Tokens of the step begun, all sequences (the rows of Q, K, V and O in order).
    pub fn step_tokens(&self) -> usize {
        self.batch.tokens as usize
    }

    /// One layer of the step begun from host slices: `q` `[tokens, H, D]`, `k` and `v`
    /// `[tokens, Hkv, D]` (the sequences' tokens in the order `begin` listed them). The
    /// output stays on the device ([`PagedDecoder::output`]).
    pub fn attend(&self, gpu: &Gpu, layer: usize, q: &[f32], k: &[f32], v: &[f32]) -> Result<()> {
        self.check_layer(layer)?;
        let tokens = self.step_tokens();
        let (h, hkv, dc) = (self.cfg.heads, self.cfg.kv_heads, self.cfg.head_dim);
        for (what, x, heads) in [("Q", q, h), ("K", k, hkv), ("V", v, hkv)] {
            if x.len() != tokens * heads * dc {
                return Err(Error::Length {
                    what: what.into(),
                    got: x.len(),
                    shape: vec![tokens, heads, dc],
                    expected: tokens * heads * dc,
                });
            }
            check_finite(what, x)?;
        }
        let widen = |x: &[f32]| crate::kernels::pad::repack_host(x, x.len() / dc, dc, self.d);
        gpu.queue.write_buffer(&self.q, 0, bytemuck::cast_slice(&widen(q)));
        gpu.queue.write_buffer(&self.k_new, 0, bytemuck::cast_slice(&widen(k)));
        gpu.queue.write_buffer(&self.v_new, 0, bytemuck::cast_slice(&widen(v)));
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.encode(gpu, &mut enc, layer)?;
        gpu.queue.submit([enc.finish()]);
        Ok(())
    }

    /// The device buffers a layer reads — Q `[tokens, H, Ds]`, new K and V `[tokens, Hkv, Ds]`
    /// at the stored head dim — for a caller that writes them on the device before
    /// [`PagedDecoder::encode`].
    pub fn inputs(&self) -> (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer) {
        (&self.q, &self.k_new, &self.v_new)
    }

    /// O `[tokens, H, Ds]` and LSE `[tokens, H]` of the last layer run, on the device.
    pub fn outputs(&self) -> (&wgpu::Buffer, &wgpu::Buffer) {
        (&self.o, &self.lse)
    }

    /// Records one layer of the step begun: the new K and V stored, the attention, the merge.
    pub fn encode(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, layer: usize) -> Result<()> {
        self.check_layer(layer)?;
        let b = self.batch;
        let mut pass = enc
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        let rows = b.tokens as u64 * self.cfg.kv_heads as u64;
        self.store.dispatch(&mut pass, &self.store_binds[layer], [rows.div_ceil(64) as u32, 1, 1]);
        let groups = if self.staged {
            lane_groups(b.lanes as u64, 1, gpu)
        } else {
            lane_groups(b.lanes as u64, self.wg, gpu)
        };
        let groups = groups.map(|g| g as u32);
        self.attend.dispatch(&mut pass, &self.attend_binds[layer], groups);
        let rows = b.tokens as u64 * self.cfg.heads as u64;
        self.combine.dispatch(&mut pass, &self.combine_bind, [rows.div_ceil(64) as u32, 1, 1]);
        Ok(())
    }

    /// A layer of this decoder, inside a step.
    fn check_layer(&self, layer: usize) -> Result<()> {
        if layer >= self.cfg.layers {
            return Err(Error::OutOfRange {
                what: "paged decoder layer".into(),
                value: layer as u64,
                min: 0,
                max: self.cfg.layers as u64 - 1,
            });
        }
        if self.step.is_empty() {
            return Err(Error::Invalid("a paged layer runs inside a step: call begin first".into()));
        }
        Ok(())
    }

    /// The last layer's output: O `[tokens, H, D]` and LSE `[tokens, H]`.
    pub fn output(&self, gpu: &Gpu) -> Result<crate::contract::spec::AttnOutput> {
        let rows = self.step_tokens() * self.cfg.heads;
        let o = gpu.read(&self.o, rows * self.d)?;
        let lse: Vec<f32> = gpu.read(&self.lse, rows)?;
        let o = crate::kernels::pad::repack_host(&o, rows, self.d, self.cfg.head_dim);
        check_finite("paged decode O", &o)?;
        if let Some(index) = lse.iter().position(|x| x.is_nan()) {
            return Err(Error::NonFinite { what: "paged decode LSE".into(), index, value: lse[index] });
        }
        Ok(crate::contract::spec::AttnOutput { o, lse })
    }

    /// What `id`'s cache holds in `layer`, read back and decoded: K and V `[len, Hkv, D]`
    /// (zeros at freed slots) — what the kernel reads, for the oracle.
    pub fn read_cache(&self, gpu: &Gpu, layer: usize, id: SeqId) -> Result<(Vec<f32>, Vec<f32>)> {
        let s = self.state(id)?;
        let pool = &self.layers[layer];
        let slots = self.cfg.pages * self.cfg.page;
        let (hkv, dc) = (self.cfg.kv_heads, self.cfg.head_dim);
        let mut out = Vec::new();
        for (f, words, scales, wb, sb) in [
            (self.cfg.k_format, &pool.k, &pool.k_scale, self.slot_bytes[0], self.slot_bytes[2]),
            (self.cfg.v_format, &pool.v, &pool.v_scale, self.slot_bytes[1], self.slot_bytes[3]),
        ] {
            let w: Vec<u32> = gpu.read(words, slots * wb as usize / 4)?;
            let sc: Vec<u32> = if sb > 0 { gpu.read(scales, slots * sb as usize / 4)? } else { Vec::new() };
            let (wr, sr) = (wb as usize / 4 / hkv, sb as usize / 4 / hkv);
            let mut x = vec![0f32; s.len * hkv * dc];
            for slot in 0..s.len {
                let p = s.table[slot / self.cfg.page];
                if p == NO_PAGE {
                    continue;
                }
                for kvh in 0..hkv {
                    let row = pool_row(p, slot, kvh, self.cfg.page, hkv);
                    let vals =
                        f.decode_row(&w[row * wr..][..wr], if sr > 0 { &sc[row * sr..][..sr] } else { &[] });
                    x[(slot * hkv + kvh) * dc..][..dc].copy_from_slice(&vals[..dc]);
                }
            }
            out.push(x);
        }
        let v = out.pop().expect("two");
        Ok((out.pop().expect("two"), v))
    }
}

/// The pool row of `slot` (in `page`) for kv head `kvh` (paged.wgsl's `pool_row`): a page
/// holds each kv head's slots in a run.
fn pool_row(page: u32, slot: usize, kvh: usize, slots_per_page: usize, kv_heads: usize) -> usize {
    (page as usize * kv_heads + kvh) * slots_per_page + slot % slots_per_page
}

/// The attend dispatch for `lanes` invocations of `wg`: x, then y past the per-dimension limit.
fn lane_groups(lanes: u64, wg: u32, gpu: &Gpu) -> [u64; 3] {
    let groups = lanes.div_ceil(wg as u64).max(1);
    let x = groups.min(gpu.limits().max_compute_workgroups_per_dimension as u64).max(1);
    [x, groups.div_ceil(x), 1]
}
