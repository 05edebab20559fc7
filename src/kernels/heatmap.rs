//! `heatmap`: one head's attention probabilities pooled to screen resolution on the GPU
//! (`shaders/heatmap.wgsl`), for the visualiser. Needs the LSE of a flash run over the same
//! spec and reuses its block map, so every mask is honoured. Only `width × height` floats
//! are read back; the N×M matrix never exists.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::kernels::{Attention, AttnBuffers, COMMON, MODS_NONE, with_mods};
use crate::runtime::shader::{
    BindGroupFields, Bound, Compiled, Shader, ShaderVariant, bind_group, header_consts,
};
use crate::runtime::{Gpu, block_on};

const NAME: &str = "heatmap";
/// contract, Q, K, LSE, block map, slopes, pixels, view, the flash call's tiles (see
/// heatmap.wgsl).
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/heatmap.wgsl"), bindings: HeatmapBinds::SLOTS };
bind_group! {
    /// contract, Q, K, LSE, block map, slopes, pixels, view, the flash call's tiles.
    struct HeatmapBinds {
        0 contract: Uniform, 1 q: Read, 2 k: Read, 3 lse: Read, 4 block_map: Read, 5 slopes: Read,
        6 pixels: ReadWrite, 7 view: Uniform, 8 tiles: Uniform,
    }
}
/// Each pixel visits at most SAMPLE × SAMPLE pairs of its rectangle (strided beyond that).
pub const SAMPLE: u32 = 32;

header_consts! {
    /// The heatmap kernel's constants (heatmap.wgsl).
    struct HeatmapConsts {
        /// vec4 lanes of a head.
        D4,
        /// The flash call's query-tile rows (its block map's tiles).
        BR,
        /// The flash call's key-tile columns.
        BC,
        /// Pairs sampled per pixel side.
        SAMPLE,
        /// The user's mods compiled in (set by `with_mods`).
        MODS_U,
    }
}

/// What to draw: a rectangle of (query row, key) space of one (batch, head), at a resolution.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeatView {
    /// The batch of the head shown.
    pub batch: usize,
    /// The query head shown.
    pub head: usize,
    /// Query rows in view.
    pub rows: Range<usize>,
    /// Keys in view.
    pub cols: Range<usize>,
    /// Pixels across (keys are pooled into columns).
    pub width: usize,
    /// Pixels down (query rows are pooled into rows).
    pub height: usize,
    /// Mean instead of max pooling.
    pub mean: bool,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ViewParams {
    batch: u32,
    head: u32,
    row0: u32,
    row1: u32,
    col0: u32,
    col1: u32,
    width: u32,
    height: u32,
    mean: u32,
    pad: [u32; 3],
}

/// The shader variant for head dim `d` and flash tiles `br × bc`.
pub fn variant(d: usize, br: u32, bc: u32) -> ShaderVariant {
    SHADER.variant(
        "main",
        &[COMMON, MODS_NONE],
        HeatmapConsts { D4: (d / 4) as u32, BR: br, BC: bc, SAMPLE, MODS_U: 0 }.header(),
    )
}

/// A heatmap renderer bound to one prepared flash [`Attention`].
pub struct Heatmap {
    kernel: Compiled,
    /// Bind group 1: the mods' buffers, when they read any.
    mod_bind: Option<wgpu::BindGroup>,
    /// Loop iterations the mods may run per invocation.
    mod_steps: u32,
}

impl Heatmap {
    /// Compiles the heatmap for `attn`'s flash call (its block map and tiles).
    pub fn new(gpu: &Gpu, attn: &Attention) -> Result<Self> {
        let flash = attn.flash().ok_or_else(|| {
            Error::Invalid("the heatmap needs a flash attention (for its LSE and block map)".into())
        })?;
        if let Some(p) = &attn.spec().positions {
            return Err(Error::Config {
                kernel: NAME,
                config: p.name(),
                reason: "the heatmap reads Q and K as given; a positional encoding is applied by the attention call's own pass".into(),
            });
        }
        if flash.chunks() > 1 {
            return Err(Error::NeedsOneBinding { what: "the heatmap", chunks: flash.chunks() });
        }

        let c = flash.config();
        let s = attn.spec().shape;
        // each pixel scores up to SAMPLE² pairs, a dot product of d/4 vec4s each
        let kernel_loops = (SAMPLE * SAMPLE) as u64 * (s.head_dim as u64 / 4 + 2);
        let steps = crate::kernels::mod_steps(gpu, kernel_loops);
        let v = with_mods(variant(s.head_dim, c.br, c.bc), attn.spec().mods.as_ref(), s.n, s.m, steps)?;
        let kernel = gpu.compile(&v)?;
        let mod_bind = crate::kernels::mods::ModBuffers::upload(gpu, attn.spec())?.bind(gpu, &kernel);
        Ok(Self { kernel, mod_bind, mod_steps: steps })
    }

    /// Pools the probabilities of `view` into `width × height` values (row-major, top row
    /// first). `io` must hold the Q, K and the LSE written by `attn`.
    pub fn render(&self, gpu: &Gpu, attn: &Attention, io: &AttnBuffers, view: &HeatView) -> Result<Vec<f32>> {
        block_on("Heatmap::render", "await Heatmap::render_async", self.render_async(gpu, attn, io, view))
    }

    /// [`Heatmap::render`] without blocking the browser.
    pub(crate) async fn render_async(
        &self,
        gpu: &Gpu,
        attn: &Attention,
        io: &AttnBuffers<'_>,
        view: &HeatView,
    ) -> Result<Vec<f32>> {
        let mut one = self.render_many_async(gpu, attn, &[(*io, view.clone())]).await?;
        one.pop().ok_or_else(|| Error::Device("heatmap: no view rendered".into()))
    }

    /// [`Heatmap::render`] for many (buffers, view) pairs of the same `attn`: one submission
    /// and one readback for all of them (a model's every layer and head, say).
    pub fn render_many(
        &self,
        gpu: &Gpu,
        attn: &Attention,
        views: &[(AttnBuffers, HeatView)],
    ) -> Result<Vec<Vec<f32>>> {
        block_on(
            "Heatmap::render_many",
            "await Heatmap::render_many_async",
            self.render_many_async(gpu, attn, views),
        )
    }

    /// [`Heatmap::render_many`] without blocking the browser.
    pub(crate) async fn render_many_async(
        &self,
        gpu: &Gpu,
        attn: &Attention,
        views: &[(AttnBuffers<'_>, HeatView)],
    ) -> Result<Vec<Vec<f32>>> {
        let s = attn.spec().shape;
        let flash =
            attn.flash().ok_or_else(|| Error::Invalid("the heatmap needs a flash attention".into()))?;
        // each view's pixels start at an offset aligned for binding
        let align = (gpu.limits().min_storage_buffer_offset_alignment as usize / 4).max(1);
        let mut offsets = Vec::with_capacity(views.len());
        let mut total = 0usize;
        for (_, view) in views {
            let bad = view.batch >= s.batch
                || view.head >= s.heads
                || view.rows.is_empty()
                || view.cols.is_empty()
                || view.rows.end > s.n
                || view.cols.end > s.m
                || view.width == 0
                || view.height == 0;
            if bad {
                return Err(Error::Invalid(format!(
                    "heatmap view {view:?} does not fit B={} H={} N={} M={}",
                    s.batch, s.heads, s.n, s.m
                )));
            }
            gpu.check_dispatch(NAME, [view.width.div_ceil(8) as u64, view.height.div_ceil(8) as u64, 1])?;
            offsets.push(total);
            total += (view.width * view.height).next_multiple_of(align);
        }
        // bound in per-view ranges: only the buffer-size limit applies to the whole
        let pixels = gpu.storage_ranged("heatmap pixels", (total * 4) as u64)?;
        let (contract, tiles, block_map, slopes) = flash.bindings();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(NAME),
                timestamp_writes: None,
            });
            for ((io, view), &at) in views.iter().zip(&offsets) {
                let params = ViewParams {
                    batch: view.batch as u32,
                    head: view.head as u32,
                    row0: view.rows.start as u32,
                    row1: view.rows.end as u32,
                    col0: view.cols.start as u32,
                    col1: view.cols.end as u32,
                    width: view.width as u32,
                    height: view.height as u32,
                    mean: view.mean as u32,
                    pad: [0; 3],
                };
                let view_buf = gpu.uniform("heatmap view", &params);
                let range = Some(((at * 4) as u64, (view.width * view.height * 4) as u64));
                let binds = HeatmapBinds {
                    contract: contract.into(),
                    q: io.q.into(),
                    k: io.k.into(),
                    lse: io.lse.into(),
                    block_map: block_map.into(),
                    slopes: slopes.into(),
                    pixels: Bound::range(&pixels, range),
                    view: (&view_buf).into(),
                    tiles: tiles.into(),
                };
                let bind = self.kernel.bind(gpu, &binds);
                let groups = [view.width.div_ceil(8) as u32, view.height.div_ceil(8) as u32, 1];
                self.kernel.dispatch_with(&mut pass, &bind, self.mod_bind.as_ref(), groups);
            }
        }
        gpu.queue.submit([enc.finish()]);
        let all: Vec<f32> = gpu.read_async(&pixels, total).await?;
        crate::kernels::check_mod_steps(attn.spec().mods.as_ref(), "heatmap", self.mod_steps, &[&all])?;
        Ok(views
            .iter()
            .zip(&offsets)
            .map(|((_, v), &at)| all[at..at + v.width * v.height].to_vec())
            .collect())
    }
}
