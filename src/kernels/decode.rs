//! `decode`: incremental decoding (`shaders/decode.wgsl`) — a KV cache on the GPU and a
//! split-K attention kernel (flash-decoding) over it, for MHA, GQA and MQA.
//!
//! The query heads that share a kv head are processed together, so every cached K/V element
//! is read once per kv head per step; MQA (one kv head) reads 1/H of MHA's bytes. The cache
//! is one K and one V buffer per (layer, kv head), preallocated to its capacity, so no single
//! binding holds more than `capacity·D` floats. A ring mode keeps only the last `capacity`
//! positions for window models (positions stay absolute for ALiBi, causal and window).

use crate::error::{Error, Result};
use crate::gpu::{Gpu, storage_entry, uniform_entry};
use crate::kernels::{LANES_PLAIN_WGSL, LANES_SUBGROUP_WGSL, ShaderVariant, Traffic, check_head_dim};
use crate::spec::{Alibi, AttnShape, AttnSpec, UNBOUNDED, Window};

const BODY: &str = include_str!("../../shaders/decode.wgsl");
const NAME: &str = "decode";
/// Most invocations per workgroup (query rows of one kv head per row block).
const MAX_WG: u32 = 64;

/// How a decoder is laid out.
#[derive(Clone, Debug, PartialEq)]
pub struct DecoderConfig {
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// Cache slots per (layer, kv head).
    pub capacity: usize,
    /// Local attention: a query at p sees keys p − window ..= p.
    pub window: Option<usize>,
    /// Keep only the last `capacity` positions (needs `window`, and `capacity` ≥ window +
    /// the most tokens of one step).
    pub ring: bool,
    pub alibi: Alibi,
    pub scale: Option<f32>,
    /// Most new tokens per `step`.
    pub max_step_tokens: usize,
    /// Cache slots per split (0: the autotuned or profile value, `Profile::decode_chunk`;
    /// lowered below the adapter's loop cap).
    pub chunk: usize,
    /// Use subgroup shuffles where the device allows (else plain workgroup-memory loads).
    pub subgroups: bool,
    /// Build the instrumented kernel, which counts what it loads ([`Decoder::counted_traffic`]).
    pub instrumented: bool,
}

impl DecoderConfig {
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
            instrumented: false,
        }
    }

    /// KV-cache bytes per cached token, all layers: 2·L·Hkv·D·4.
    pub fn bytes_per_token(&self) -> u64 {
        (2 * self.layers * self.kv_heads * self.head_dim * 4) as u64
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CfgParams {
    heads: u32,
    kv_heads: u32,
    group: u32,
    ring: u32,
    scale: f32,
    band_lo: i32,
    band_hi: i32,
    alibi: u32,
    neg_inf: f32,
    pad: [u32; 3],
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
    pad: u32,
}

/// Invocations per workgroup for `rows` query rows per kv head: one per row, rounded up to a
/// power of two between 8 and 64 — MHA (one row) must not run 63 idle invocations.
pub fn workgroup_size(rows: usize) -> u32 {
    (rows.next_power_of_two() as u32).clamp(8, MAX_WG)
}

/// The shader variants (attend and combine) for head dim `d`, `wg` invocations, subgroup
/// width `sg` (0: no subgroup shuffles); `count` builds the instrumented attend.
pub fn variants(d: usize, bc: u32, wg: u32, sg: u32, count: bool) -> Vec<ShaderVariant> {
    let d4 = (d / 4) as u32;
    let d4p = if sg > 0 { d4.div_ceil(sg) * sg } else { d4 };
    ["attend", "combine"]
        .into_iter()
        .map(|entry| ShaderVariant {
            stem: NAME,
            prelude: vec![if sg > 0 { LANES_SUBGROUP_WGSL } else { LANES_PLAIN_WGSL }],
            body: BODY,
            entry,
            consts: vec![
                ("D4", d4),
                ("D4P", d4p),
                ("BC", bc),
                ("WG", wg),
                ("SG", sg),
                ("SG_GUARD_U", (sg > 0 && !d4.is_multiple_of(sg)) as u32),
                ("COUNT", count as u32),
            ],
        })
        .collect()
}

/// The subgroup width for shuffles on this device, if it has SUBGROUP with one fixed size.
fn subgroup_width(gpu: &Gpu) -> u32 {
    let i = gpu.info();
    if gpu.features().contains(wgpu::Features::SUBGROUP) && i.subgroup_min_size == i.subgroup_max_size {
        i.subgroup_min_size
    } else {
        0
    }
}

/// Keys per staged tile: the largest of 32, 16, 8, 4 whose K and V tiles fit.
fn tile_keys(gpu: &Gpu, d: usize) -> u32 {
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
            return Err(Error::Invalid(format!(
                "KV cache overflow: {len} cached + {t} new positions exceed the capacity of {} (layer {layer})",
                self.capacity
            )));
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

/// A decoder: a KV cache plus the split-K kernel. `prefill` the prompt's K/V, then `step`.
pub struct Decoder {
    cfg: DecoderConfig,
    cache: KvCache,
    attend: wgpu::ComputePipeline,
    combine: wgpu::ComputePipeline,
    attend_layout: wgpu::BindGroupLayout,
    combine_layout: wgpu::BindGroupLayout,
    cfg_buf: wgpu::Buffer,
    step_buf: wgpu::Buffer,
    head_bufs: Vec<wgpu::Buffer>,
    slopes: wgpu::Buffer,
    q: wgpu::Buffer,
    partials: wgpu::Buffer,
    o: wgpu::Buffer,
    lse: wgpu::Buffer,
    counters: wgpu::Buffer,
    chunk: usize,
    max_splits: usize,
    wg: u32,
    last: StepParams,
}

impl Decoder {
    pub fn new(gpu: &Gpu, cfg: DecoderConfig) -> Result<Self> {
        let shape = AttnShape {
            batch: 1,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            n: 1,
            m: cfg.capacity.max(1),
            head_dim: cfg.head_dim,
        };
        shape.validate()?;
        check_head_dim(NAME, cfg.head_dim)?;
        if cfg.max_step_tokens == 0 || cfg.capacity == 0 {
            return Err(Error::Invalid("decoder capacity and max_step_tokens must be at least 1".into()));
        }
        if cfg.ring {
            let w = cfg.window.ok_or_else(|| Error::Invalid("ring mode needs a window".into()))?;
            if cfg.capacity < w + cfg.max_step_tokens {
                return Err(Error::Invalid(format!(
                    "ring capacity {} must hold the window {w} plus {} new tokens",
                    cfg.capacity, cfg.max_step_tokens
                )));
            }
        }
        let slopes = match &cfg.alibi {
            Alibi::Off => vec![0.0],
            Alibi::Standard => crate::spec::alibi_slopes(cfg.heads),
            Alibi::Custom(s) if s.len() == cfg.heads => s.clone(),
            Alibi::Custom(s) => {
                return Err(Error::Invalid(format!("{} ALiBi slopes for {} heads", s.len(), cfg.heads)));
            }
        };
        let d = cfg.head_dim;
        let bc = tile_keys(gpu, d);
        let sg = if cfg.subgroups { subgroup_width(gpu) } else { 0 };
        let wg = workgroup_size(cfg.heads / cfg.kv_heads * cfg.max_step_tokens).max(sg);
        gpu.check_workgroup(NAME, 2 * bc as u64 * d as u64 * 4, wg)?;
        // slots per split: below the adapter's loop cap (staging plus ≈ 2·BC·(D/4 + 1)
        // iterations per tile)
        let tuned = gpu.tuned().and_then(|t| {
            t.decode.get(&crate::tune::decode_key(cfg.head_dim, cfg.heads / cfg.kv_heads)).copied()
        });
        let mut chunk =
            if cfg.chunk == 0 { tuned.unwrap_or(gpu.profile().0.decode_chunk) } else { cfg.chunk };
        if let Some(limit) = gpu.loop_iteration_limit() {
            let staging = (bc as u64 * d as u64 / 4).div_ceil(wg as u64);
            let per_tile = staging + 2 * bc as u64 * (d as u64 / 4 * 2 + 2) + bc as u64 * 2 + 16;
            let max_chunk = ((limit / per_tile).max(1) * bc as u64) as usize;
            chunk = chunk.min(max_chunk);
        }
        let max_splits = cfg.capacity.div_ceil(chunk).max(1);
        let rows = cfg.heads * cfg.max_step_tokens;
        let row_blocks = (cfg.heads / cfg.kv_heads * cfg.max_step_tokens).div_ceil(wg as usize);
        gpu.check_dispatch(NAME, [max_splits as u64, row_blocks as u64, 1])?;
        gpu.check_binding("decode partials", (max_splits * rows * (d + 4) * 4) as u64)?;

        let attend_layout = gpu.layout(
            "decode attend",
            &[
                uniform_entry(0),
                uniform_entry(1),
                uniform_entry(2),
                storage_entry(3, true),
                storage_entry(4, true),
                storage_entry(5, true),
                storage_entry(6, false),
                storage_entry(7, true),
                storage_entry(10, false),
            ],
        );
        let combine_layout = gpu.layout(
            "decode combine",
            &[
                uniform_entry(0),
                uniform_entry(1),
                storage_entry(6, false),
                storage_entry(8, false),
                storage_entry(9, false),
            ],
        );
        let [va, vc]: [ShaderVariant; 2] =
            variants(d, bc, wg, sg, cfg.instrumented).try_into().expect("two entries");
        let attend = gpu.pipeline(&va, &attend_layout)?;
        let combine = gpu.pipeline(&vc, &combine_layout)?;

        let (lo, hi) = band(cfg.window);
        let cfg_params = CfgParams {
            heads: cfg.heads as u32,
            kv_heads: cfg.kv_heads as u32,
            group: (cfg.heads / cfg.kv_heads) as u32,
            ring: if cfg.ring { cfg.capacity as u32 } else { 0 },
            scale: cfg.scale.unwrap_or(1.0 / (d as f32).sqrt()),
            band_lo: lo as i32,
            band_hi: hi as i32,
            alibi: (cfg.alibi != Alibi::Off) as u32,
            neg_inf: f32::NEG_INFINITY,
            pad: [0; 3],
        };
        let head_bufs =
            (0..cfg.kv_heads).map(|h| gpu.uniform("decode kv head", &[h as u32, 0, 0, 0])).collect();
        Ok(Self {
            cache: KvCache::new(gpu, &cfg)?,
            attend,
            combine,
            attend_layout,
            combine_layout,
            cfg_buf: gpu.uniform("decode cfg", &cfg_params),
            step_buf: gpu.uniform("decode step", &StepParams::default()),
            head_bufs,
            slopes: gpu.upload("ALiBi slopes", &slopes)?,
            q: gpu.storage("decode Q", (rows * d * 4) as u64)?,
            partials: gpu.storage("decode partials", (max_splits * rows * (d + 4) * 4) as u64)?,
            o: gpu.storage("decode O", (rows * d * 4) as u64)?,
            lse: gpu.storage("decode LSE", (rows * 4) as u64)?,
            counters: gpu.storage("decode counters", 16)?,
            chunk,
            max_splits,
            wg,
            cfg,
            last: StepParams::default(),
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.cfg
    }
    pub fn cache(&self) -> &KvCache {
        &self.cache
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
        if self.cfg.ring && t > self.cfg.capacity {
            // only the last `capacity` positions survive; append them, counting the rest
            let d = self.cfg.head_dim;
            let skip = t - self.cfg.capacity;
            let tail = |x: &[f32]| -> Vec<f32> {
                (0..self.cfg.kv_heads).flat_map(|h| x[(h * t + skip) * d..(h + 1) * t * d].to_vec()).collect()
            };
            self.cache.len[layer] += skip;
            let (kt, vt) = (tail(k), tail(v));
            return self.cache.append(gpu, layer, &kt, &vt, self.cfg.capacity);
        }
        self.cache.append(gpu, layer, k, v, t)
    }

    fn check_kv(&self, layer: usize, k: &[f32], v: &[f32]) -> Result<usize> {
        if layer >= self.cfg.layers {
            return Err(Error::Invalid(format!("layer {layer} of {}", self.cfg.layers)));
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
        crate::spec::check_finite("K", k)?;
        crate::spec::check_finite("V", v)?;
        Ok(k.len() / per)
    }

    /// One decoding step on `layer`: appends the new tokens' K and V (`[Hkv, T, D]`) and
    /// attends their queries (`[H, T, D]`) to the whole cache. The output stays on the device
    /// ([`Decoder::output`] reads it back). A few dispatches; no CPU round trip.
    pub fn step(&mut self, gpu: &Gpu, layer: usize, q: &[f32], k: &[f32], v: &[f32]) -> Result<()> {
        let t = self.check_kv(layer, k, v)?;
        if t > self.cfg.max_step_tokens {
            return Err(Error::Invalid(format!(
                "{t} tokens in one step; the decoder was built for {}",
                self.cfg.max_step_tokens
            )));
        }
        if q.len() != self.cfg.heads * t * self.cfg.head_dim {
            return Err(Error::Shape(format!(
                "Q must be [H = {}, T = {t}, D = {}]; got {} values",
                self.cfg.heads,
                self.cfg.head_dim,
                q.len()
            )));
        }
        crate::spec::check_finite("Q", q)?;
        self.cache.append(gpu, layer, k, v, t)?;
        gpu.queue.write_buffer(&self.q, 0, bytemuck::cast_slice(q));
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
        let splits = slots.div_ceil(self.chunk).clamp(1, self.max_splits);
        let step = StepParams {
            len: len as u32,
            nq: t as u32,
            lo: lo as u32,
            slot0: slot0 as u32,
            slots: slots as u32,
            chunk: slots.div_ceil(splits).next_multiple_of(4) as u32,
            splits: splits as u32,
            pad: 0,
        };
        self.last = step;
        gpu.queue.write_buffer(&self.step_buf, 0, bytemuck::bytes_of(&step));
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(NAME),
                timestamp_writes: None,
            });
            pass.set_pipeline(&self.attend);
            let row_blocks = (self.cfg.heads / self.cfg.kv_heads * t).div_ceil(self.wg as usize) as u32;
            for kvh in 0..self.cfg.kv_heads {
                let bind = gpu.bind_group_at(
                    &self.attend_layout,
                    &[
                        (0, &self.cfg_buf),
                        (1, &self.step_buf),
                        (2, &self.head_bufs[kvh]),
                        (3, &self.q),
                        (4, &self.cache.k[layer][kvh]),
                        (5, &self.cache.v[layer][kvh]),
                        (6, &self.partials),
                        (7, &self.slopes),
                        (10, &self.counters),
                    ],
                );
                pass.set_bind_group(0, &bind, &[]);
                pass.dispatch_workgroups(splits as u32, row_blocks, 1);
            }
            let bind = gpu.bind_group_at(
                &self.combine_layout,
                &[(0, &self.cfg_buf), (1, &self.step_buf), (6, &self.partials), (8, &self.o), (9, &self.lse)],
            );
            pass.set_pipeline(&self.combine);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups((self.cfg.heads * t).div_ceil(64) as u32, 1, 1);
        }
        gpu.queue.submit([enc.finish()]);
        Ok(())
    }

    /// The last step's output: O `[H, T, D]` and LSE `[H, T]`.
    pub fn output(&self, gpu: &Gpu) -> Result<crate::spec::AttnOutput> {
        let rows = self.cfg.heads * self.last.nq as usize;
        Ok(crate::spec::AttnOutput {
            o: gpu.read(&self.o, rows * self.cfg.head_dim)?,
            lse: gpu.read(&self.lse, rows)?,
        })
    }

    /// The attention problem the last step computed, as one full (non-incremental) call:
    /// queries at the last T positions against every position so far (the oracle's view).
    pub fn equivalent_spec(&self, layer: usize) -> AttnSpec {
        let len = self.cache.len[layer];
        let shape = AttnShape {
            batch: 1,
            heads: self.cfg.heads,
            kv_heads: self.cfg.kv_heads,
            n: self.last.nq as usize,
            m: len,
            head_dim: self.cfg.head_dim,
        };
        AttnSpec::new(shape)
            .causal(true)
            .window(self.cfg.window.map(|w| Window { left: Some(w), right: Some(0) }))
            .alibi(self.cfg.alibi.clone())
            .scale(self.cfg.scale)
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
        let d = self.cfg.head_dim as u64;
        let (_, combine_read, combine_written) = self.combine_traffic();
        Ok(Some(Traffic {
            read: c[0] as u64 * 2 * d * 4 + c[1] as u64 * d * 4 + combine_read,
            written: c[2] as u64 * (d + 4) * 4 + combine_written,
        }))
    }

    /// (rows, combine bytes read, combine bytes written) of the last step.
    fn combine_traffic(&self) -> (u64, u64, u64) {
        let d = self.cfg.head_dim as u64;
        let s = self.last;
        let rows = self.cfg.heads as u64 * s.nq as u64;
        (rows, s.splits as u64 * rows * (d + 4) * 4, rows * (d + 1) * 4)
    }

    /// Device-memory traffic of the last step, from the kernels' loops: every split's
    /// workgroup stages its cache slots of K and V once per kv head (and row block) and
    /// reads its query rows; partials are written once and read once by the combine, which
    /// writes O and LSE. MQA's K/V term is 1/H of MHA's.
    pub fn step_traffic(&self) -> Traffic {
        let d = self.cfg.head_dim as u64;
        let s = self.last;
        let (rows, combine_read, combine_written) = self.combine_traffic();
        let row_blocks = ((self.cfg.heads / self.cfg.kv_heads) as u64 * s.nq as u64).div_ceil(self.wg as u64);
        let kv = self.cfg.kv_heads as u64 * row_blocks * s.slots as u64 * 2 * d * 4;
        let q = s.splits as u64 * rows * d * 4;
        let partial_written = s.splits as u64 * rows * (d + 4) * 4;
        Traffic { read: kv + q + combine_read, written: partial_written + combine_written }
    }
}

/// The causal band of a decode step, limited on the left by the window.
fn band(window: Option<usize>) -> (i64, i64) {
    (0, window.map_or(UNBOUNDED, |w| (w as i64).min(UNBOUNDED)))
}
