//! `decode`: incremental decoding (`shaders/decode.wgsl`) — a KV cache on the GPU and a
//! split-K attention kernel (flash-decoding) over it, for MHA, GQA and MQA.
//!
//! The query heads that share a kv head are processed together, so every cached K/V element
//! is read once per kv head per step; MQA (one kv head) reads 1/H of MHA's bytes. The cache
//! is one K and one V buffer per (layer, kv head), preallocated to its capacity, so no single
//! binding holds more than `capacity·D` floats. A ring mode keeps only the last `capacity`
//! positions for window models (positions stay absolute for ALiBi, causal and window).

use crate::contract::mods::Mods;
use crate::contract::positions::Positions;
use crate::contract::spec::{Alibi, AttnShape, AttnSpec, Window};
use crate::error::{Error, Result};
use crate::kernels::mods::ModBuffers;
use crate::kernels::pad::{padded_dim, repack_host};
use crate::kernels::positions::{PositionPass, Rows};
use crate::kernels::{
    COMMON, CallParams, MODS_NONE, SOFTMAX_TILE, Traffic, UNTUNED, check_call_head_dim, lanes, slopes_words,
    with_mods_source,
};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Compiled, Shader, ShaderVariant, bind_group, header_consts};

const NAME: &str = "decode";
const SOURCE: &str = include_str!("../../../shaders/decode.wgsl");
/// contract, step, head, Q, this kv head's K and V, partials, slopes, counters (see
/// decode.wgsl).
const ATTEND: Shader = Shader { stem: NAME, source: SOURCE, bindings: AttendBinds::SLOTS };
bind_group! {
    /// contract, step, head, Q, the head's K and V cache, partials, slopes, counters.
    struct AttendBinds {
        0 contract: Uniform, 1 step: Uniform, 2 head: Uniform, 3 q: Read, 4 k: Read, 5 v: Read,
        6 partials: ReadWrite, 7 slopes: Read, 10 counters: ReadWrite,
    }
}
/// contract, step, partials, O, LSE.
const COMBINE: Shader = Shader { stem: NAME, source: SOURCE, bindings: CombineBinds::SLOTS };
bind_group! {
    /// contract, step, partials, O, LSE.
    struct CombineBinds { 0 contract: Uniform, 1 step: Uniform, 6 partials: ReadWrite, 8 o: ReadWrite, 9 lse: ReadWrite }
}
/// Most invocations per workgroup (query rows of one kv head per row block).
const MAX_WG: u32 = 64;

/// Which attend kernel a decoder runs; both write the same partials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DecodeKernel {
    /// The device profile's choice: `Lanes` where loads cost per lane
    /// (`Profile::per_lane_loads`: CPU adapters) and a kv head has fewer than 4 query rows
    /// per step, else `Staged`.
    #[default]
    Auto,
    /// `attend`: a workgroup per (split, block of query rows) stages each tile of keys in
    /// workgroup memory once for all the rows that share the kv head.
    Staged,
    /// `attend_lanes`: an invocation per (split, query row) reads its split's keys straight
    /// from the cache; every lane busy, no workgroup memory, no barrier.
    Lanes,
}

impl DecodeKernel {
    /// Lowercase name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            DecodeKernel::Auto => "auto",
            DecodeKernel::Staged => "staged",
            DecodeKernel::Lanes => "lanes",
        }
    }
}

/// How a decoder is laid out.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    /// Layers, each with its own cache.
    pub layers: usize,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads Hkv (`heads % kv_heads == 0`; 1 = MQA).
    pub kv_heads: usize,
    /// Head dimension D.
    pub head_dim: usize,
    /// Cache slots per (layer, kv head).
    pub capacity: usize,
    /// Local attention: a query at p sees keys p − window ..= p.
    pub window: Option<usize>,
    /// Keep only the last `capacity` positions (needs `window`, and `capacity` ≥ window +
    /// the most tokens of one step).
    pub ring: bool,
    /// ALiBi over absolute positions (slopes of the query heads).
    pub alibi: Alibi,
    /// Score scale; `None`: `1/sqrt(D)`.
    pub scale: Option<f32>,
    /// Most new tokens per `step`.
    pub max_step_tokens: usize,
    /// Cache slots per split (0: the autotuned or profile value, `Profile::decode_chunk`;
    /// lowered below the adapter's loop cap).
    pub chunk: usize,
    /// Use subgroup shuffles where the device allows (else plain workgroup-memory loads).
    pub subgroups: bool,
    /// Which attend kernel runs (default: the profile's choice).
    pub kernel: DecodeKernel,
    /// Build the instrumented kernel, which counts what it loads ([`Decoder::counted_traffic`]).
    pub instrumented: bool,
    /// The user's `score_mod` / `mask_mod`, called per score as for the full problem a step
    /// is part of: its T queries are the last rows of a T × len call (`q_idx` = 0..T,
    /// `kv_idx` = the key's position, `N_Q` = T, `N_KV` = len; batch 0).
    pub mods: Option<Mods>,
    /// A positional encoding (RoPE or sinusoidal) of queries and keys at their absolute
    /// positions (plus its offset): K encoded once as it enters the cache, Q every step.
    pub positions: Option<Positions>,
}

impl DecoderConfig {
    /// One layer, no window, no ALiBi, one token per step, autotuned splits.
    pub fn new(heads: usize, kv_heads: usize, head_dim: usize, capacity: usize) -> Self {
        Self {
            layers: 1,
            heads,
            kv_heads,
            head_dim,
            capacity,
            window: None,
            ring: false,
            alibi: Alibi::Off,
            scale: None,
            max_step_tokens: 1,
            chunk: 0,
            subgroups: true,
            kernel: DecodeKernel::Auto,
            instrumented: false,
            mods: None,
            positions: None,
        }
    }

    /// KV-cache bytes per cached token, all layers: 2·L·Hkv·D·4.
    pub(crate) fn bytes_per_token(&self) -> u64 {
        (2 * self.layers * self.kv_heads * self.head_dim * 4) as u64
    }
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct StepParams {
    len: u32,
    nq: u32,
    lo: u32,
    slot0: u32,
    slots: u32,
    chunk: u32,
    splits: u32,
    /// Ring capacity in slots (0: a linear cache).
    ring: u32,
}

/// The key of this kernel's tuned winner (cache slots per split) at head dim `d` and `group`
/// query heads per kv head.
pub fn tuning_key(d: usize, group: usize) -> String {
    format!("decode:d={d}:group={group}")
}

/// Invocations per workgroup for `rows` query rows per kv head: one per row, rounded up to a
/// power of two between 8 and 64 — MHA (one row) must not run 63 idle invocations.
pub fn workgroup_size(rows: usize) -> u32 {
    (rows.next_power_of_two() as u32).clamp(8, MAX_WG)
}

header_consts! {
    /// The decode kernels' constants (decode.wgsl, softmax_tile.wgsl).
    struct DecodeConsts {
        /// vec4 lanes of a head.
        D4,
        /// vec4 lanes one invocation holds: all of a row's (as flash with P = 1).
        DP4,
        /// Private lanes: D4, padded to whole subgroups on the shuffle path.
        D4P,
        /// Cache slots per tile.
        BC,
        /// Invocations per workgroup.
        WG,
        /// Subgroup width of the shuffle path (0: plain loads).
        SG,
        /// SG does not divide D4: the shuffle path clamps its loads.
        SG_GUARD_U,
        /// Never: one invocation holds a row's every lane.
        LANE_GUARD_U,
        /// Keys `attend_lanes` scores per rescale of its running sums.
        KB,
        /// The instrumented variant (counts slots and rows).
        COUNT,
        /// The user's mods compiled in (set by `with_mods`).
        MODS_U,
    }
}

/// Keys `attend_lanes` scores per rescale of its running sums.
const LANE_KEYS: u32 = 8;

/// `DecodeKernel::Auto` takes `attend_lanes` on CPU adapters below this many query rows per
/// kv head and step: measured on llvmpipe at a 32K cache, H = 32, D = 128, the lanes kernel
/// is 3.3× faster with one row (MHA), 1.7× with two, and 9–28 % slower with four, where
/// the staged kernel's shared tiles serve four rows per load.
const LANES_BELOW_ROWS: usize = 4;

/// `attend_lanes` cuts a step into at least this many splits (of at least `LANE_KEYS` slots)
/// where the split size is chosen automatically: it runs one invocation per split and row, so
/// a short cache in the profile's splits would leave most of a CPU adapter's threads idle
/// (64 invocations = 8 SIMD groups of 8).
const LANES_MIN_SPLITS: usize = 64;

/// The shader variants (attend, attend_lanes and combine) for head dim `d`, `wg`
/// invocations, subgroup width `sg` (0: no subgroup shuffles); `count` builds the
/// instrumented attend kernels.
pub fn variants(d: usize, bc: u32, wg: u32, sg: u32, count: bool) -> Vec<ShaderVariant> {
    let d4 = (d / 4) as u32;
    let d4p = if sg > 0 { d4.div_ceil(sg) * sg } else { d4 };
    [(ATTEND, "attend"), (ATTEND, "attend_lanes"), (COMBINE, "combine")]
        .into_iter()
        .map(|(shader, entry)| {
            shader.variant(
                entry,
                &[COMMON, lanes(sg), SOFTMAX_TILE, MODS_NONE],
                DecodeConsts {
                    D4: d4,
                    DP4: d4,
                    D4P: d4p,
                    BC: bc,
                    WG: wg,
                    SG: sg,
                    KB: LANE_KEYS,
                    SG_GUARD_U: (sg > 0 && !d4.is_multiple_of(sg)) as u32,
                    LANE_GUARD_U: 0,
                    COUNT: count as u32,
                    MODS_U: 0,
                }
                .header(),
            )
        })
        .collect()
}

/// Keys per staged tile: the largest of 32, 16, 8, 4 whose K and V tiles fit.
pub(crate) fn tile_keys(gpu: &Gpu, d: usize) -> u32 {
    let storage = gpu.limits().max_compute_workgroup_storage_size as usize;
    [32u32, 16, 8, 4].into_iter().find(|&bc| 2 * bc as usize * d * 4 <= storage).unwrap_or(4)
}

/// The K and V cache of every (layer, kv head) on the device.
pub struct KvCache {
    /// `[layer][kv head]` buffers of `capacity·D` floats.
    k: Vec<Vec<wgpu::Buffer>>,
    v: Vec<Vec<wgpu::Buffer>>,
    capacity: usize,
    ring: bool,
    d: usize,
    /// Positions appended so far, per layer.
    len: Vec<usize>,
}

impl KvCache {
    fn new(gpu: &Gpu, cfg: &DecoderConfig) -> Result<Self> {
        let bytes = (cfg.capacity * cfg.head_dim * 4) as u64;
        let make = |what: &str| -> Result<Vec<Vec<wgpu::Buffer>>> {
            (0..cfg.layers)
                .map(|l| {
                    (0..cfg.kv_heads)
                        .map(|h| gpu.storage(&format!("{what} cache layer {l} kv head {h}"), bytes))
                        .collect()
                })
                .collect()
        };
        Ok(Self {
            k: make("K")?,
            v: make("V")?,
            capacity: cfg.capacity,
            ring: cfg.ring,
            d: cfg.head_dim,
            len: vec![0; cfg.layers],
        })
    }

    /// Positions appended to `layer`.
    pub fn len(&self, layer: usize) -> usize {
        self.len[layer]
    }

    /// Device bytes of the whole cache (K and V, all layers and kv heads).
    pub fn bytes(&self) -> u64 {
        (2 * self.k.len() * self.k.first().map_or(0, Vec::len) * self.capacity * self.d * 4) as u64
    }

    /// Appends `t` positions to `layer`: `k`, `v` are `[Hkv, t, D]`.
    fn append(&mut self, gpu: &Gpu, layer: usize, k: &[f32], v: &[f32], t: usize) -> Result<()> {
        let len = self.len[layer];
        if !self.ring && len + t > self.capacity {
            return Err(Error::OutOfRange {
                what: format!("KV cache overflow: positions cached in layer {layer} after {t} new ones"),
                value: (len + t) as u64,
                min: 0,
                max: self.capacity as u64,
            });
        }
        let d = self.d;
        for (kvh, (kb, vb)) in self.k[layer].iter().zip(&self.v[layer]).enumerate() {
            for (buf, src) in [(kb, k), (vb, v)] {
                let rows = &src[kvh * t * d..(kvh + 1) * t * d];
                // a ring wraps at most once per append (t ≤ capacity)
                let start = (len % self.capacity) * d;
                let first = rows.len().min(self.capacity * d - start);
                gpu.queue.write_buffer(buf, (start * 4) as u64, bytemuck::cast_slice(&rows[..first]));
                if first < rows.len() {
                    gpu.queue.write_buffer(buf, 0, bytemuck::cast_slice(&rows[first..]));
                }
            }
        }
        self.len[layer] = len + t;
        Ok(())
    }
}

/// The attend dispatch for `splits` splits of `group_rows` query rows per kv head: `attend`
/// takes a workgroup per (split, row block), `attend_lanes` an invocation per (split, row),
/// its workgroups laid out in x, then y past the dispatch's limit per dimension.
fn attend_groups(lanes: bool, wg: u32, splits: usize, group_rows: usize, gpu: &Gpu) -> [u64; 3] {
    let wg = wg as u64;
    if !lanes {
        return [splits as u64, (group_rows as u64).div_ceil(wg), 1];
    }
    let groups = (splits as u64 * group_rows as u64).div_ceil(wg);
    let x = groups.min(gpu.limits().max_compute_workgroups_per_dimension as u64).max(1);
    [x, groups.div_ceil(x), 1]
}

/// A decoder: a KV cache plus the split-K kernel. `prefill` the prompt's K/V, then `step`.
pub struct Decoder {
    cfg: DecoderConfig,
    /// The head dim the kernels and the cache run: `cfg.head_dim` padded to a multiple of 4.
    d: usize,
    /// The contract of a step (one query against the cache); shapes vary per step.
    spec: AttnSpec,
    cache: KvCache,
    attend: Compiled,
    combine: Compiled,
    /// `[layer][kv head]`: built once, as every buffer they bind is the decoder's own.
    attend_binds: Vec<Vec<wgpu::BindGroup>>,
    /// Bind group 1: the mods' buffers (`None` without mods or when they read none).
    mod_bind: Option<wgpu::BindGroup>,
    /// Loop iterations the mods may run per invocation.
    mod_steps: u32,
    /// The positional encoding's pass and table.
    positions: Option<PositionPass>,
    combine_bind: wgpu::BindGroup,
    step_buf: wgpu::Buffer,
    q: wgpu::Buffer,
    o: wgpu::Buffer,
    lse: wgpu::Buffer,
    counters: wgpu::Buffer,
    chunk: usize,
    max_splits: usize,
    wg: u32,
    /// `attend_lanes` runs (else `attend`).
    lanes: bool,
    last: StepParams,
}

impl Decoder {
    /// Checks the configuration against the contract and the device, compiles the kernels,
    /// allocates the cache and builds every bind group.
    pub fn new(gpu: &Gpu, cfg: DecoderConfig) -> Result<Self> {
        let shape = AttnShape {
            batch: 1,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            n: 1,
            m: cfg.capacity.max(1),
            head_dim: cfg.head_dim,
        };
        check_call_head_dim(NAME, cfg.head_dim)?;
        if cfg.max_step_tokens == 0 || cfg.capacity == 0 {
            return Err(Error::Invalid("decoder capacity and max_step_tokens must be at least 1".into()));
        }
        if cfg.ring {
            let w = cfg.window.ok_or_else(|| Error::Invalid("ring mode needs a window".into()))?;
            if w.checked_add(cfg.max_step_tokens).is_none_or(|need| cfg.capacity < need) {
                return Err(Error::Invalid(format!(
                    "ring capacity {} must hold the window {w} plus {} new tokens",
                    cfg.capacity, cfg.max_step_tokens
                )));
            }
        }
        // one query of a step against the whole cache, under the contract: the band and the
        // slopes come from the spec, as for every other kernel
        let spec = AttnSpec::new(shape)
            .causal(true)
            .window(cfg.window.map(|w| Window::new(w, 0)))
            .alibi(cfg.alibi.clone())
            .scale(cfg.scale)
            .mods(cfg.mods.clone())
            .positions(cfg.positions);
        spec.validate()?;
        if let Some(mods) = &cfg.mods {
            mods.check_per_dispatch()?;
        }
        let slopes = slopes_words(&spec);
        // the kernels run a head dim that is not a multiple of 4 zero-padded (K, V and Q rows
        // widened on the way in, O cut on the way out)
        let d = padded_dim(cfg.head_dim);
        let bc = tile_keys(gpu, d);
        let group_rows = cfg.heads / cfg.kv_heads * cfg.max_step_tokens;
        let lanes = match cfg.kernel {
            DecodeKernel::Auto => gpu.profile().0.per_lane_loads && group_rows < LANES_BELOW_ROWS,
            DecodeKernel::Staged => false,
            DecodeKernel::Lanes => true,
        };
        let (wg, sg) = if lanes {
            // a workgroup is independent lanes: one SIMD group on a CPU adapter (so that a
            // few splits still spread over its threads), two warps elsewhere
            (if gpu.profile().0.per_lane_loads { 8 } else { MAX_WG }, 0)
        } else {
            let sg = if cfg.subgroups { gpu.fixed_subgroup().unwrap_or(0) } else { 0 };
            (workgroup_size(group_rows).max(sg), sg)
        };
        let tiles = if lanes { 0 } else { 2 * bc as u64 * d as u64 * 4 };
        gpu.check_workgroup(NAME, tiles, wg)?;
        // slots per split: below the adapter's loop cap (staging plus ≈ 2·BC·(D/4 + 1)
        // iterations per tile)
        let tuned = gpu.tuned().and_then(|t| match t.get(&tuning_key(d, cfg.heads / cfg.kv_heads)) {
            Some(&[chunk]) if chunk > 0 => Some(chunk as usize),
            Some(w) => {
                log::warn!(
                    "ignoring the tuned decode winner {w:?} in {}: not a split size{}",
                    crate::runtime::tuning_cache_hint(),
                    UNTUNED
                );
                None
            }
            None => None,
        });
        let mut chunk =
            if cfg.chunk == 0 { tuned.unwrap_or(gpu.profile().0.decode_chunk) } else { cfg.chunk };
        // loop iterations per BC slots (staged: staging plus ≈ 2·BC·(D/4 + 1); lanes: the
        // score's and the V sum's D/4 per slot plus one rescale per LANE_KEYS slots)
        let d4 = d as u64 / 4;
        let per_tile = if lanes {
            bc as u64 * (2 * d4 + 2) + (bc / LANE_KEYS) as u64 * (d4 + 1) + 16
        } else {
            (bc as u64 * d4).div_ceil(wg as u64) + 2 * bc as u64 * (d4 * 2 + 2) + bc as u64 * 2 + 16
        };
        if let Some(limit) = crate::kernels::kernel_loop_cap(gpu, cfg.mods.as_ref()) {
            let max_chunk = ((limit / per_tile).max(1) * bc as u64) as usize;
            chunk = chunk.min(max_chunk);
        }
        // room for the splits a short cache gets from the lanes kernel (see `step`)
        let min_splits = if lanes && cfg.chunk == 0 { LANES_MIN_SPLITS } else { 1 };
        let max_splits = cfg.capacity.div_ceil(chunk).max(min_splits);
        let rows = cfg.heads * cfg.max_step_tokens;
        gpu.check_dispatch(NAME, attend_groups(lanes, wg, max_splits, group_rows, gpu))?;
        gpu.check_binding("decode partials", (max_splits * rows * (d + 4) * 4) as u64)?;

        // the mods' loops get what the adapter's cap leaves beside one split's tiles
        let mod_steps = crate::kernels::mod_steps(gpu, chunk.div_ceil(bc as usize) as u64 * per_tile);
        let [va, val, vc]: [ShaderVariant; 3] = variants(d, bc, wg, sg, cfg.instrumented)
            .try_into()
            .map_err(|_| Error::Device("decode: expected three kernels".into()))?;
        let va = if lanes { val } else { va };
        let va = match &cfg.mods {
            Some(mods) => with_mods_source(va, mods, mods.kernel_source_per_dispatch(mod_steps)?),
            None => va,
        };
        let (attend, combine) = (gpu.compile(&va)?, gpu.compile(&vc)?);
        let mod_bind = ModBuffers::upload(gpu, &spec)?.bind(gpu, &attend);
        // the table holds the positions of one append: a step, or the kept part of a prefill
        let positions = cfg
            .positions
            .map(|p| PositionPass::new(gpu, p, cfg.head_dim, cfg.capacity.max(cfg.max_step_tokens)))
            .transpose()?;

        let head_bufs: Vec<wgpu::Buffer> =
            (0..cfg.kv_heads).map(|h| gpu.uniform("decode kv head", &[h as u32, 0, 0, 0])).collect();
        let cache = KvCache::new(gpu, &DecoderConfig { head_dim: d, ..cfg.clone() })?;
        let cfg_buf = CallParams::new(&spec).upload(gpu);
        let step_buf = gpu.uniform("decode step", &StepParams::default());
        let slopes = gpu.upload("ALiBi slopes", &slopes)?;
        let q = gpu.storage("decode Q", (rows * d * 4) as u64)?;
        let partials = gpu.storage("decode partials", (max_splits * rows * (d + 4) * 4) as u64)?;
        let o = gpu.storage("decode O", (rows * d * 4) as u64)?;
        let lse = gpu.storage("decode LSE", (rows * 4) as u64)?;
        let counters = gpu.storage("decode counters", 16)?;
        // every buffer is the decoder's own: the bind groups are built once, here
        let attend_binds = (0..cfg.layers)
            .map(|layer| {
                (0..cfg.kv_heads)
                    .map(|kvh| {
                        let binds = AttendBinds {
                            contract: (&cfg_buf).into(),
                            step: (&step_buf).into(),
                            head: (&head_bufs[kvh]).into(),
                            q: (&q).into(),
                            k: (&cache.k[layer][kvh]).into(),
                            v: (&cache.v[layer][kvh]).into(),
                            partials: (&partials).into(),
                            slopes: (&slopes).into(),
                            counters: (&counters).into(),
                        };
                        attend.bind(gpu, &binds)
                    })
                    .collect()
            })
            .collect();
        let binds = CombineBinds {
            contract: (&cfg_buf).into(),
            step: (&step_buf).into(),
            partials: (&partials).into(),
            o: (&o).into(),
            lse: (&lse).into(),
        };
        let combine_bind = combine.bind(gpu, &binds);
        Ok(Self {
            spec,
            cache,
            attend,
            combine,
            attend_binds,
            mod_bind,
            mod_steps,
            positions,
            combine_bind,
            step_buf,
            q,
            o,
            lse,
            counters,
            chunk,
            max_splits,
            wg,
            lanes,
            d,
            cfg,
            last: StepParams::default(),
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }
    /// The KV cache.
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }
    /// The attend kernel it runs (`Staged` or `Lanes`, never `Auto`).
    pub fn kernel(&self) -> DecodeKernel {
        if self.lanes { DecodeKernel::Lanes } else { DecodeKernel::Staged }
    }
    /// Cache slots per split.
    pub fn chunk(&self) -> usize {
        self.chunk
    }
    /// Splits of the last step.
    pub fn splits(&self) -> usize {
        self.last.splits as usize
    }

    /// Appends the prompt's K and V (`[Hkv, T, D]` each) to `layer` without attending.
    pub fn prefill(&mut self, gpu: &Gpu, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let t = self.check_kv(layer, k, v)?;
        let (k, v) = (&*self.widen(k), &*self.widen(v));
        if self.cfg.ring && t > self.cfg.capacity {
            // only the last `capacity` positions survive; append them, counting the rest
            let d = self.d;
            let skip = t - self.cfg.capacity;
            let tail = |x: &[f32]| -> Vec<f32> {
                (0..self.cfg.kv_heads).flat_map(|h| x[(h * t + skip) * d..(h + 1) * t * d].to_vec()).collect()
            };
            self.cache.len[layer] += skip;
            let (kt, vt) = (tail(k), tail(v));
            self.cache.append(gpu, layer, &kt, &vt, self.cfg.capacity)?;
            return self.encode_appended(gpu, layer, self.cfg.capacity);
        }
        self.cache.append(gpu, layer, k, v, t)?;
        self.encode_appended(gpu, layer, t)
    }

    /// Writes the table rows of the last `t` positions appended to `layer` (the rows a
    /// step's queries and keys take) and returns the pass, if the decoder encodes positions.
    fn table_for_last(&self, gpu: &Gpu, layer: usize, t: usize) -> Option<&PositionPass> {
        let (pass, p) = (self.positions.as_ref()?, self.cfg.positions?);
        let len = self.cache.len[layer];
        pass.write_table(gpu, 0, p.key_position(len - t), p.key_position(len));
        Some(pass)
    }

    /// The rows of the last `t` keys appended to `buffer` (a cache of `layer`).
    fn appended_rows<'a>(&self, buffer: &'a wgpu::Buffer, layer: usize, t: usize) -> Rows<'a> {
        let first = (self.cache.len[layer] - t) % self.cfg.capacity;
        Rows { buffer, rows: t, per_seq: t, table0: 0, first, wrap: self.cfg.capacity, stride: self.d }
    }

    /// Encodes the last `t` keys appended to `layer` at their positions (a prefill's own
    /// submission; a step encodes in its pass).
    fn encode_appended(&self, gpu: &Gpu, layer: usize, t: usize) -> Result<()> {
        let Some(pass) = self.table_for_last(gpu, layer, t) else { return Ok(()) };
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut cpass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("decode positions"),
                timestamp_writes: None,
            });
            for k in &self.cache.k[layer] {
                pass.encode(gpu, &mut cpass, &self.appended_rows(k, layer, t), false)?;
            }
        }
        gpu.queue.submit([enc.finish()]);
        Ok(())
    }

    /// Rows of the caller's head dim at the kernels' (zero-padded; borrowed when equal).
    fn widen<'a>(&self, x: &'a [f32]) -> std::borrow::Cow<'a, [f32]> {
        let dc = self.cfg.head_dim;
        if dc == self.d {
            return x.into();
        }
        repack_host(x, x.len() / dc, dc, self.d).into()
    }

    fn check_kv(&self, layer: usize, k: &[f32], v: &[f32]) -> Result<usize> {
        if layer >= self.cfg.layers {
            return Err(Error::OutOfRange {
                what: "decoder layer".into(),
                value: layer as u64,
                min: 0,
                max: self.cfg.layers as u64 - 1,
            });
        }
        let per = self.cfg.kv_heads * self.cfg.head_dim;
        if k.len() != v.len() || k.is_empty() || !k.len().is_multiple_of(per) {
            return Err(Error::Shape(format!(
                "K and V must both be [Hkv = {}, T, D = {}]; got {} and {} values",
                self.cfg.kv_heads,
                self.cfg.head_dim,
                k.len(),
                v.len()
            )));
        }
        crate::contract::spec::check_finite("K", k)?;
        crate::contract::spec::check_finite("V", v)?;
        Ok(k.len() / per)
    }

    /// One decoding step on `layer`: appends the new tokens' K and V (`[Hkv, T, D]`) and
    /// attends their queries (`[H, T, D]`) to the whole cache. The output stays on the device
    /// ([`Decoder::output`] reads it back). A few dispatches; no CPU round trip.
    pub fn step(&mut self, gpu: &Gpu, layer: usize, q: &[f32], k: &[f32], v: &[f32]) -> Result<()> {
        let t = self.check_kv(layer, k, v)?;
        if t > self.cfg.max_step_tokens {
            return Err(Error::OutOfRange {
                what: "tokens in one step (DecoderConfig::max_step_tokens)".into(),
                value: t as u64,
                min: 1,
                max: self.cfg.max_step_tokens as u64,
            });
        }
        if q.len() != self.cfg.heads * t * self.cfg.head_dim {
            return Err(Error::Length {
                what: "Q".into(),
                got: q.len(),
                shape: vec![self.cfg.heads, t, self.cfg.head_dim],
                expected: self.cfg.heads * t * self.cfg.head_dim,
            });
        }
        crate::contract::spec::check_finite("Q", q)?;
        self.cache.append(gpu, layer, &self.widen(k), &self.widen(v), t)?;
        gpu.queue.write_buffer(&self.q, 0, bytemuck::cast_slice(&self.widen(q)));
        let len = self.cache.len[layer];
        let cached = len.min(self.cfg.capacity);
        let lo = len - cached;
        // slots worth visiting: linear caches skip what the window hides from the first query
        let (slot0, slots) = match (self.cfg.ring, self.cfg.window) {
            (false, Some(w)) => {
                let first = (len - t).saturating_sub(w);
                (first, len - first)
            }
            _ => (0, cached),
        };
        let mut splits = slots.div_ceil(self.chunk);
        // the lanes kernel with an automatic split size: short caches get at least
        // LANES_MIN_SPLITS splits
        if self.lanes && self.cfg.chunk == 0 {
            splits = splits.max(LANES_MIN_SPLITS.min(slots.div_ceil(LANE_KEYS as usize)));
        }
        let splits = splits.clamp(1, self.max_splits);
        let step = StepParams {
            len: len as u32,
            nq: t as u32,
            lo: lo as u32,
            slot0: slot0 as u32,
            slots: slots as u32,
            chunk: slots.div_ceil(splits).next_multiple_of(4) as u32,
            splits: splits as u32,
            ring: if self.cfg.ring { self.cfg.capacity as u32 } else { 0 },
        };
        self.last = step;
        gpu.queue.write_buffer(&self.step_buf, 0, bytemuck::bytes_of(&step));
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(NAME),
                timestamp_writes: None,
            });
            // the new keys and the queries encoded at their positions first
            if let Some(positions) = self.table_for_last(gpu, layer, t) {
                for k in &self.cache.k[layer] {
                    positions.encode(gpu, &mut pass, &self.appended_rows(k, layer, t), false)?;
                }
                let q = Rows {
                    buffer: &self.q,
                    rows: self.cfg.heads * t,
                    per_seq: t,
                    table0: 0,
                    first: 0,
                    wrap: 0,
                    stride: self.d,
                };
                positions.encode(gpu, &mut pass, &q, false)?;
            }
            let groups =
                attend_groups(self.lanes, self.wg, splits, self.cfg.heads / self.cfg.kv_heads * t, gpu);
            let groups = groups.map(|g| g as u32);
            for bind in &self.attend_binds[layer] {
                self.attend.dispatch_with(&mut pass, bind, self.mod_bind.as_ref(), groups);
            }
            let groups = [(self.cfg.heads * t).div_ceil(64) as u32, 1, 1];
            self.combine.dispatch(&mut pass, &self.combine_bind, groups);
        }
        gpu.queue.submit([enc.finish()]);
        Ok(())
    }

    /// The last step's output: O `[H, T, D]` and LSE `[H, T]`.
    pub fn output(&self, gpu: &Gpu) -> Result<crate::contract::spec::AttnOutput> {
        let rows = self.cfg.heads * self.last.nq as usize;
        let o = gpu.read(&self.o, rows * self.d)?;
        let lse = gpu.read(&self.lse, rows)?;
        crate::kernels::check_mod_steps(self.cfg.mods.as_ref(), "decode", self.mod_steps, &[&lse])?;
        Ok(crate::contract::spec::AttnOutput {
            o: if self.d == self.cfg.head_dim { o } else { repack_host(&o, rows, self.d, self.cfg.head_dim) },
            lse,
        })
    }

    /// The attention problem the last step computed, as one full (non-incremental) call:
    /// queries at the last T positions against every position so far (the oracle's view).
    pub fn equivalent_spec(&self, layer: usize) -> AttnSpec {
        let mut spec = self.spec.clone();
        spec.shape.n = self.last.nq as usize;
        spec.shape.m = self.cache.len[layer];
        spec
    }

    /// What the instrumented kernel moved in the last step, in the units of
    /// [`Decoder::step_traffic`] (`None` unless built with `instrumented`). The attend pass
    /// counts on the device; the combine pass (every split's partial read, O and LSE
    /// written) is added from its loop, which has no data-dependent trip counts.
    pub fn counted_traffic(&self, gpu: &Gpu) -> Result<Option<Traffic>> {
        if !self.cfg.instrumented {
            return Ok(None);
        }
        let c: Vec<u32> = gpu.read(&self.counters, 3)?;
        let d = self.d as u64;
        let (_, combine_read, combine_written) = self.combine_traffic();
        Ok(Some(Traffic {
            read: c[0] as u64 * 2 * d * 4 + c[1] as u64 * d * 4 + combine_read,
            written: c[2] as u64 * (d + 4) * 4 + combine_written,
        }))
    }

    /// (rows, combine bytes read, combine bytes written) of the last step.
    fn combine_traffic(&self) -> (u64, u64, u64) {
        let d = self.d as u64;
        let s = self.last;
        let rows = self.cfg.heads as u64 * s.nq as u64;
        (rows, s.splits as u64 * rows * (d + 4) * 4, rows * (d + 1) * 4)
    }

    /// Device-memory traffic of the last step, from the kernels' loops: every split's
    /// workgroup stages its cache slots of K and V once per kv head (and row block) — the
    /// lanes kernel reads them once per query row — and reads its query rows; partials are
    /// written once and read once by the combine, which writes O and LSE. With the staged
    /// kernel MQA's K/V term is 1/H of MHA's.
    pub fn step_traffic(&self) -> Traffic {
        let d = self.d as u64;
        let s = self.last;
        let (rows, combine_read, combine_written) = self.combine_traffic();
        let group_rows = (self.cfg.heads / self.cfg.kv_heads) as u64 * s.nq as u64;
        // who reads a slot: each row block of `attend` once, each row of `attend_lanes`
        let readers = if self.lanes { group_rows } else { group_rows.div_ceil(self.wg as u64) };
        let kv = self.cfg.kv_heads as u64 * readers * s.slots as u64 * 2 * d * 4;
        let q = s.splits as u64 * rows * d * 4;
        let partial_written = s.splits as u64 * rows * (d + 4) * 4;
        Traffic { read: kv + q + combine_read, written: partial_written + combine_written }
    }
}
