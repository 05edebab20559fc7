//! Patterns panel: choose the problem, see one head's attention probabilities computed on
//! the GPU (pooled to screen resolution by the heatmap kernel), zoom, pan, hover.

use std::ops::Range;
use std::sync::Arc;

use egui::{Color32, Pos2, Rect, Sense, Vec2, pos2};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::Job;
use super::colormap::{COLOUR_BAR_WIDTH, color, colour_bar, normalise};
use super::style::{AXIS_BOTTOM, AXIS_LEFT, MatrixData, matrix_axes};
use crate::contract::dsa::{Dsa, Indexer};
use crate::contract::mask::{BigBird, Mask};
use crate::contract::mods::Mods;
use crate::contract::nsa::Nsa;
use crate::contract::selection::{Moba, NONE};
use crate::contract::spec::{Alibi, AttnShape, AttnSpec, Window};
use crate::io::{read_npy, read_safetensors};
use crate::kernels::heatmap::{HeatView, Heatmap};
use crate::kernels::{Attention, DeviceTensors, Kernel};
use crate::runtime::Gpu;

/// Where Q, K, V come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Inputs {
    /// Uniform noise in [-1, 1] from a seed.
    Random,
    /// Smooth positional content: sinusoidal features of the position plus a little noise,
    /// so q_i·k_j falls off with |i − j| and patterns have structure.
    Structured,
    /// `.npy` files (Q, K, V paths) or one `.safetensors` file with tensors `q`, `k`, `v`.
    Files {
        /// Path of Q, `[H, N, D]` or `[1, H, N, D]` float32.
        q: String,
        /// Path of K, `[Hkv, M, D]` or `[1, Hkv, M, D]` float32.
        k: String,
        /// Path of V, shaped as K.
        v: String,
        /// Path of a `.safetensors` file; when not blank it is read instead of the `.npy` paths.
        safetensors: String,
    },
}

/// The sparse pattern on top of causal/window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    /// No sparse pattern.
    None,
    /// A ±64 sliding window plus 4 global tokens.
    Longformer,
    /// BigBird on 64-token blocks: 1 global block, ±1 neighbouring block, 2 random blocks
    /// drawn from `seed`.
    BigBird,
    /// 4 global tokens only.
    Global,
    /// Four equal packed documents; each query sees only its own.
    Segments,
    /// MoBA (learned sparse attention, [`MOBA`]): each query chooses its key blocks by gate
    /// score on the GPU; the heatmap shows the chosen blocks (the routing map).
    Moba,
    /// DSA (learned sparse attention, [`DSA_TOPK`] keys a query): a lightning indexer scores
    /// every earlier key and each query reads its best ones, chosen on the GPU; the heatmap
    /// shows the chosen keys. The indexer here is a stand-in for a trained one: one head reading
    /// the first [`DSA_INDEX_DIM`] dims of head 0's Q and K ([`dsa_indexer`]).
    Dsa,
    /// NSA (native sparse attention, [`NSA`]): the compressed, selected and window branches on
    /// the GPU; the heatmap shows the raw keys the selected and window branches read (the
    /// chosen blocks OR the window; a softmax over their union), the hovered row's blocks and
    /// gates spelled out. The panel's gates are a stand-in, 1/3 each (no trained model here).
    /// Native only: NSA's shaders bind more storage buffers than a browser allows.
    Nsa,
}

impl Pattern {
    /// Every pattern, in the panel's order.
    pub const ALL: [Pattern; 8] = [
        Pattern::None,
        Pattern::Longformer,
        Pattern::BigBird,
        Pattern::Global,
        Pattern::Segments,
        Pattern::Moba,
        Pattern::Dsa,
        Pattern::Nsa,
    ];
}

/// The NSA the patterns panel runs: compressed keys over 16 at stride 8, 4 blocks of 32
/// (the first, the own and the one before among them), a window of 64.
pub const NSA: Nsa = Nsa { cmp_len: 16, cmp_stride: 8, block: 32, topk: 4, window: 64 };

/// The panel's indexer inputs: qI, kI, w.
pub type IndexerInputs = (Vec<f32>, Vec<f32>, Vec<f32>);

/// Keys each query reads with [`Pattern::Dsa`].
pub const DSA_TOPK: usize = 64;

/// The panel's indexer head dim (at most D, a multiple of 4).
pub const DSA_INDEX_DIM: usize = 16;

/// The panel's DSA indexer for Q `[1, H, N, D]` and K `[1, Hkv, M, D]`: one head of
/// min(D, [`DSA_INDEX_DIM`]) dims (rounded down to a multiple of 4) whose queries and keys are
/// head 0's first dims, weight 1: `(Dsa, (qI, kI, w))`.
pub fn dsa_indexer(spec: &AttnSpec, q: &[f32], k: &[f32]) -> crate::Result<(Dsa, IndexerInputs)> {
    let s = spec.shape;
    let (d, di) = (s.head_dim, s.head_dim.min(DSA_INDEX_DIM) / 4 * 4);
    if di == 0 {
        return Err(crate::Error::Invalid(format!(
            "the panel's DSA indexer reads 4 dims of Q and K; D is {d}"
        )));
    }
    let first =
        |x: &[f32], rows: usize| -> Vec<f32> { (0..rows).flat_map(|r| x[r * d..][..di].to_vec()).collect() };
    let dsa = Dsa { topk: DSA_TOPK, index_heads: 1, index_dim: di };
    Ok((dsa, (first(q, s.n), first(k, s.m), vec![1.0; s.n])))
}

/// The MoBA the patterns panel runs: blocks of 64 keys, 4 per query.
pub const MOBA: Moba = Moba { block: 64, topk: 4 };

/// Everything that defines the computed problem.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// Sequence length N = M (input files decide their own).
    pub n: usize,
    /// Head dim D (input files decide their own).
    pub d: usize,
    /// Query heads H.
    pub heads: usize,
    /// Key/value heads; must divide `heads`.
    pub kv_heads: usize,
    /// Causal mask.
    pub causal: bool,
    /// Sliding window (L, R): row p sees keys p − L ..= p + R; `None` for no window.
    pub window: Option<(usize, usize)>,
    /// Standard ALiBi slopes.
    pub alibi: bool,
    /// Sparse pattern on top of causal/window.
    pub pattern: Pattern,
    /// Where Q, K, V come from.
    pub inputs: Inputs,
    /// Seed of the random and structured inputs and of BigBird's random blocks.
    pub seed: u64,
    /// Mods in WGSL (`score_mod` and/or `mask_mod`, see `contract::mods`); empty for none.
    pub mods: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            n: 512,
            d: 64,
            heads: 4,
            kv_heads: 4,
            causal: true,
            window: None,
            alibi: false,
            pattern: Pattern::None,
            inputs: Inputs::Structured,
            seed: 1,
            mods: String::new(),
        }
    }
}

/// The name the mod editor's text goes by in compile errors (`mod editor:LINE:COLUMN`).
pub(crate) const MOD_EDITOR: &str = "mod editor";

/// Examples the editor offers: (button, WGSL).
pub const MOD_EXAMPLES: [(&str, &str); 3] = [
    (
        "sinks + window",
        "// StreamingLLM: the first 4 keys and the last 64, causally\nfn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {\n    let d = i32(q_idx) + i32(N_KV) - i32(N_Q) - i32(kv_idx);\n    return d >= 0 && (kv_idx < 4u || d <= 64);\n}\n",
    ),
    (
        "soft-cap",
        "// Gemma 2: cap·tanh(score / cap)\nfn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {\n    return 2.0 * tanh(score / 2.0);\n}\n",
    ),
    (
        "documents",
        "// four packed documents of N/4 tokens: attend within your own\nfn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {\n    return q_idx * 4u / N_Q == kv_idx * 4u / N_KV;\n}\n",
    ),
];

/// A problem on the host: its spec and Q, K, V.
pub(crate) type Problem = (AttnSpec, Vec<f32>, Vec<f32>, Vec<f32>);

impl Settings {
    /// The attention problem these settings describe (files decide N and D).
    pub fn spec(&self, n: usize, d: usize) -> crate::Result<AttnSpec> {
        let shape = AttnShape { batch: 1, heads: self.heads, kv_heads: self.kv_heads, n, m: n, head_dim: d };
        let mask = match self.pattern {
            Pattern::None => None,
            Pattern::Longformer => Some(Mask::Window(Window::new(64, 64)).or(Mask::Global(4))),
            Pattern::BigBird => Some(Mask::bigbird(
                &BigBird { global: 1, window: 1, random: 2, block: 64, seed: self.seed },
                n,
            )?),
            Pattern::Global => Some(Mask::Global(4)),
            Pattern::Segments => Some(Mask::Segments(Arc::new((0..n).map(|p| (p * 4 / n) as u32).collect()))),
            // chosen from Q and K when computed (`Computed::new`)
            Pattern::Moba | Pattern::Dsa | Pattern::Nsa => None,
        };
        let spec = AttnSpec::new(shape)
            .causal(self.causal)
            .window(self.window.map(|(l, r)| Window::new(l, r)))
            .alibi(if self.alibi { Alibi::Standard } else { Alibi::Off })
            .mask(mask)
            .mods(if self.mods.trim().is_empty() { None } else { Some(Mods::wgsl(MOD_EDITOR, &self.mods)?) });
        spec.validate()?;
        Ok(spec)
    }

    /// Host Q, K, V and the problem.
    pub(crate) fn materialise(&self) -> crate::Result<Problem> {
        match &self.inputs {
            Inputs::Files { q, k, v, safetensors } => {
                let (tq, tk, tv) = if !safetensors.trim().is_empty() {
                    let p = std::path::Path::new(safetensors.trim());
                    (read_safetensors(p, "q")?, read_safetensors(p, "k")?, read_safetensors(p, "v")?)
                } else {
                    (read_npy(q.trim().as_ref())?, read_npy(k.trim().as_ref())?, read_npy(v.trim().as_ref())?)
                };
                let dims = |t: &crate::io::Tensor| match t.shape[..] {
                    [h, n, d] => Ok((h, n, d)),
                    [1, h, n, d] => Ok((h, n, d)),
                    _ => Err(crate::Error::Shape(format!(
                        "expected [H, N, D] or [1, H, N, D], got {:?}",
                        t.shape
                    ))),
                };
                let (h, n, d) = dims(&tq)?;
                let (hkv, m, _) = dims(&tk)?;
                let shape = AttnShape { batch: 1, heads: h, kv_heads: hkv, n, m, head_dim: d };
                let base = Settings { heads: h, kv_heads: hkv, ..self.clone() };
                let mut spec = base.spec(n, d)?;
                spec.shape = shape;
                spec.check_inputs(&tq.data, &tk.data, &tv.data)?;
                Ok((spec, tq.data, tk.data, tv.data))
            }
            Inputs::Random | Inputs::Structured => {
                let spec = self.spec(self.n, self.d)?;
                let s = spec.shape;
                let mut rng = StdRng::seed_from_u64(self.seed);
                let (q, k, v) = if self.inputs == Inputs::Random {
                    let mut r =
                        |len: usize| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>();
                    (r(s.q_len()), r(s.kv_len()), r(s.kv_len()))
                } else {
                    (
                        structured(s.heads, s.n, s.head_dim, &mut rng),
                        structured(s.kv_heads, s.m, s.head_dim, &mut rng),
                        { (0..s.kv_len()).map(|_| rng.random_range(-1.0f32..1.0)).collect() },
                    )
                };
                Ok((spec, q, k, v))
            }
        }
    }
}

/// Sinusoidal position features (per head a different frequency band) plus noise.
fn structured(heads: usize, n: usize, d: usize, rng: &mut StdRng) -> Vec<f32> {
    let mut out = Vec::with_capacity(heads * n * d);
    for h in 0..heads {
        for p in 0..n {
            for x in 0..d {
                let freq = 0.5 / 10000f32.powf((x / 2) as f32 * 2.0 / d as f32) / (1.0 + h as f32);
                let phase = p as f32 * freq;
                let feature = if x % 2 == 0 { phase.cos() } else { phase.sin() };
                out.push(feature + 0.3 * rng.random_range(-1.0f32..1.0));
            }
        }
    }
    out
}

/// The computed problem: host inputs (for hover readouts), device state, per-row LSE.
pub struct Computed {
    /// The settings it was computed from.
    pub settings: Settings,
    /// The problem, with the shape of the input files where they were used.
    pub spec: AttnSpec,
    /// Host Q, `[B, H, N, D]` with B = 1.
    pub q: Vec<f32>,
    /// Host K, `[B, Hkv, M, D]` with B = 1.
    pub k: Vec<f32>,
    /// The flash kernel prepared for `spec`; its block map feeds the Tiles panel.
    pub attn: Attention,
    /// Q, K, V, O and LSE on the device.
    pub io: DeviceTensors,
    /// The heatmap kernel for `attn`, rendering views from `io`.
    pub heatmap: Heatmap,
    /// `[B, H, N]` read back once per computation.
    pub lse: Vec<f32>,
    /// With [`Pattern::Moba`]: the chosen blocks, `[H, N, k]` index lists; with
    /// [`Pattern::Dsa`]: the chosen keys, `[N, k]` (shared by the heads).
    pub selected: Option<Vec<u32>>,
    /// With [`Pattern::Moba`] or [`Pattern::Dsa`]: the keys the rows read over those causal
    /// attention (with the same window) reads, all rows and heads.
    pub keys_read: Option<f64>,
}

impl Computed {
    /// Runs flash on the problem `settings` describe and reads back its LSE.
    pub async fn new(gpu: &Gpu, settings: Settings) -> crate::Result<Self> {
        let (mut spec, q, k, v) = settings.materialise()?;
        let (mut selected, mut keys_read) = (None, None);
        let chosen = match settings.pattern {
            Pattern::Moba => {
                let chosen = crate::kernels::selection::moba_select_async(gpu, &spec, &MOBA, &q, &k).await?;
                spec = MOBA.spec(&spec, &chosen)?;
                Some(chosen)
            }
            Pattern::Dsa => {
                let (dsa, (qi, ki, w)) = dsa_indexer(&spec, &q, &k)?;
                let ix = Indexer { q: &qi, k: &ki, w: &w };
                // the choice depends on the positions only; the window, ALiBi, mods apply after it
                let bare = AttnSpec::new(spec.shape);
                let chosen = crate::kernels::dsa::dsa_select_async(gpu, &bare, &dsa, &ix).await?;
                spec = dsa.spec(&spec, &chosen)?;
                Some(chosen)
            }
            Pattern::Nsa => {
                // NSA runs causal with nothing else; the panel's window, ALiBi and mods do
                // not apply to it
                let bare = AttnSpec::new(spec.shape).causal(true);
                let gates = vec![1.0 / 3.0; spec.shape.lse_len() * 3];
                let out = crate::kernels::nsa::nsa_attention(gpu, &bare, &NSA, &q, &k, &v, &gates, None)?;
                let window = Mask::Window(Window::new(NSA.window - 1, 0));
                let chosen = NSA.selected_spec(&bare, &out.lists)?;
                let mask = chosen.mask.expect("the chosen blocks' grid").or(window);
                spec = AttnSpec { mask: Some(mask), ..bare };
                Some(out.lists)
            }
            _ => None,
        };
        if let Some(chosen) = chosen {
            let causal = AttnSpec { mask: None, mods: None, ..spec.clone() };
            keys_read = Some(spec.visible_pairs() as f64 / causal.visible_pairs().max(1) as f64);
            selected = Some(chosen);
        }
        let attn = Attention::new(gpu, Kernel::Flash, &spec)?;
        let io = DeviceTensors::upload(gpu, &spec, &q, &k, &v)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        attn.encode(gpu, &mut enc, &io.buffers())?;
        gpu.queue.submit([enc.finish()]);
        let lse = gpu.read_async(&io.lse, spec.shape.lse_len()).await?;
        let heatmap = Heatmap::new(gpu, &attn)?;
        Ok(Self { settings, spec, q, k, attn, io, heatmap, lse, selected, keys_read })
    }

    /// With [`Pattern::Dsa`]: the keys row `i` chose (ascending; every head alike).
    pub fn chosen_keys(&self, i: usize) -> Option<Vec<u32>> {
        if self.settings.pattern != Pattern::Dsa {
            return None;
        }
        let list = self.selected.as_ref()?.get(i * DSA_TOPK..(i + 1) * DSA_TOPK)?;
        Some(list.iter().copied().filter(|&j| j != NONE).collect())
    }

    /// With [`Pattern::Moba`] or [`Pattern::Nsa`]: the blocks row `i` of `head` chose (its
    /// own first).
    pub fn chosen_blocks(&self, head: usize, i: usize) -> Option<Vec<u32>> {
        let k = match self.settings.pattern {
            Pattern::Moba => MOBA.topk,
            Pattern::Nsa => NSA.topk,
            _ => return None,
        };
        let row = head * self.spec.shape.n + i;
        let list = self.selected.as_ref()?.get(row * k..(row + 1) * k)?;
        Some(list.iter().copied().filter(|&b| b != NONE).collect())
    }

    /// Score, bias, visibility and probability of (row i, key j) of `head`, on the CPU.
    pub fn readout(&self, head: usize, i: usize, j: usize) -> Readout {
        let s = self.spec.shape;
        let d = s.head_dim;
        let kvh = head / s.group();
        let qi = &self.q[(head * s.n + i) * d..][..d];
        let kj = &self.k[(kvh * s.m + j) * d..][..d];
        let dot: f32 = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
        let slope = self.spec.slopes().map_or(0.0, |sl| sl[head]);
        let bias = if slope == 0.0 {
            0.0
        } else {
            -slope * (self.spec.position(i) - j as i64).unsigned_abs() as f32
        };
        let score = self.spec.scale_value() * dot + bias;
        let visible = self.spec.visible(head, i, j);
        let lse = self.lse[head * s.n + i];
        let mods = self.spec.mods.is_some();
        let p = if mods {
            f32::NAN // the mods change the score and the mask: only the GPU knows p
        } else if visible && lse.is_finite() {
            (score - lse).exp()
        } else {
            0.0
        };
        Readout { i, j, score, bias, visible, p, mods }
    }
}

/// What the hover shows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Readout {
    /// Query row.
    pub i: usize,
    /// Key column.
    pub j: usize,
    /// Score as the softmax sees it: scale·q_i·k_j + `bias`.
    pub score: f32,
    /// ALiBi bias −slope·|p_i − j| (0 without ALiBi).
    pub bias: f32,
    /// Whether the mask lets row i see key j.
    pub visible: bool,
    /// Attention probability, exp(score − LSE); 0 where masked.
    pub p: f32,
    /// Whether the problem has mods, which the CPU readout does not apply (WGSL runs on the
    /// GPU only; the heatmap includes them).
    pub mods: bool,
}

/// One rendered view of the heatmap.
pub struct HeatImage {
    /// What was rendered: head, rows, keys, size in pixels, pooling.
    pub view: HeatView,
    /// Pooled probabilities, one per pixel, `[height, width]`.
    pub values: Vec<f32>,
    /// The coloured image uploaded to egui.
    pub texture: Option<egui::TextureHandle>,
    /// Whether it was coloured on the log scale.
    pub log: bool,
    /// The probability at the top of the colour scale (the view's 99.5th percentile).
    pub scale_max: f32,
}

impl HeatImage {
    /// The colour probability `p` is drawn in, on this image's scale.
    pub fn colour_of(&self, p: f32) -> Color32 {
        color(normalise(p, self.scale_max, self.log))
    }
}

/// State of the panel.
pub struct PatternsState {
    /// The problem as edited; a change starts a new computation.
    pub settings: Settings,
    /// Head shown.
    pub head: usize,
    /// Colour on a log scale.
    pub log_scale: bool,
    /// Pool probabilities into pixels by mean (else max).
    pub mean_pool: bool,
    /// Rows and keys in view.
    pub rows: Range<usize>,
    /// Keys in view.
    pub cols: Range<usize>,
    /// Most pixels per side of the heatmap.
    pub resolution: usize,
    /// The last successful computation (shared with the heatmap's render jobs).
    pub computed: Option<Arc<Computed>>,
    /// The last rendered view.
    pub heat: Option<HeatImage>,
    /// The computation in flight.
    pub job: Option<Job<Computed>>,
    /// The heatmap view being rendered: pooled probabilities of that computation.
    render: Option<Job<Rendered>>,
    /// The last computation or rendering error.
    pub error: Option<String>,
    /// Settings whose computation failed (not retried until they change).
    pub failed: Option<Settings>,
    pending: Option<Settings>,
    /// Readout of the cell under the pointer.
    pub hover: Option<Readout>,
    /// Bytes read back for the last heatmap (the pooled pixels only).
    pub readback_bytes: usize,
    /// Where the heatmap was last drawn, in points (one texel per view pixel).
    pub shown_at: Option<Rect>,
}

impl Default for PatternsState {
    fn default() -> Self {
        Self {
            settings: Settings::default(),
            head: 0,
            log_scale: false,
            mean_pool: false,
            rows: 0..512,
            cols: 0..512,
            resolution: 256,
            computed: None,
            heat: None,
            job: None,
            render: None,
            error: None,
            failed: None,
            pending: None,
            hover: None,
            readback_bytes: 0,
            shown_at: None,
        }
    }
}

impl PatternsState {
    /// Starts a computation if the settings changed, collects finished ones.
    pub(crate) fn refresh(&mut self, ctx: &egui::Context, gpu: &Gpu, inline: bool) {
        let stale = self.computed.as_ref().is_none_or(|c| c.settings != self.settings);
        if stale && self.job.is_none() && self.failed.as_ref() != Some(&self.settings) {
            let (gpu, settings) = (gpu.clone(), self.settings.clone());
            self.pending = Some(settings.clone());
            self.job = Some(Job::start(ctx, inline, move || async move {
                Computed::new(&gpu, settings).await.map_err(|e| e.to_string())
            }));
        }
        let Some(result) = self.job.as_ref().and_then(Job::poll) else { return };
        self.job = None;
        match result {
            Ok(c) => {
                let s = c.spec.shape;
                if self.rows.end > s.n
                    || self.cols.end > s.m
                    || self.computed.as_ref().is_none_or(|old| old.spec.shape != s)
                {
                    self.rows = 0..s.n;
                    self.cols = 0..s.m;
                }
                self.head = self.head.min(s.heads - 1);
                self.computed = Some(Arc::new(c));
                self.heat = None;
                self.error = None;
                self.failed = None;
            }
            Err(e) => {
                self.error = Some(e);
                self.failed = self.pending.take();
            }
        }
    }

    /// Renders the current view if it changed (reads back only the pooled pixels), as a
    /// [`Job`] (inline when `inline`); a finished rendering of an older computation is
    /// dropped.
    pub(crate) fn render_heat(&mut self, ctx: &egui::Context, gpu: &Gpu, inline: bool) {
        let Some(c) = &self.computed else { return };
        let s = c.spec.shape;
        let view = HeatView {
            batch: 0,
            head: self.head.min(s.heads - 1),
            rows: self.rows.clone(),
            cols: self.cols.clone(),
            width: self.resolution.min(self.cols.len()),
            height: self.resolution.min(self.rows.len()),
            mean: self.mean_pool,
        };
        let shown = self.heat.as_ref().is_some_and(|h| h.view == view && h.log == self.log_scale);
        if !shown && self.render.is_none() {
            let (gpu, c) = (gpu.clone(), c.clone());
            self.render = Some(Job::start(ctx, inline, move || async move {
                let values = c.heatmap.render_async(&gpu, &c.attn, &c.io.buffers(), &view).await;
                Ok(Rendered { of: c, view, values: values.map_err(|e| e.to_string())? })
            }));
        }
        let Some(done) = self.render.as_ref().and_then(Job::poll) else { return };
        self.render = None;
        match done {
            Ok(r) if self.computed.as_ref().is_some_and(|c| Arc::ptr_eq(c, &r.of)) => self.show(ctx, r),
            Ok(_) => {} // computed before the settings changed: the next frame renders anew
            Err(e) => self.error = Some(e),
        }
    }

    /// Colours a rendered view into the heatmap's texture.
    fn show(&mut self, ctx: &egui::Context, Rendered { view, values, .. }: Rendered) {
        self.readback_bytes = values.len() * 4;
        // colour scale up to the 99.5th percentile of nonzero values, so that one saturated
        // cell (a row with a single visible key) does not wash out the rest
        let mut nz: Vec<f32> = values.iter().copied().filter(|&p| p > 0.0).collect();
        nz.sort_by(f32::total_cmp);
        let max = nz.get(nz.len().saturating_sub(1) * 995 / 1000).copied().unwrap_or(1.0);
        let mut heat = HeatImage { view, values, texture: None, log: self.log_scale, scale_max: max };
        let pixels: Vec<Color32> = heat.values.iter().map(|&p| heat.colour_of(p)).collect();
        let image = egui::ColorImage::new([heat.view.width, heat.view.height], pixels);
        heat.texture = Some(ctx.load_texture("attention heatmap", image, egui::TextureOptions::NEAREST));
        self.heat = Some(heat);
    }
}

/// A view rendered from one computation.
struct Rendered {
    of: Arc<Computed>,
    view: HeatView,
    values: Vec<f32>,
}

/// Draws the settings panel and the heatmap: recomputes when the settings change (as a
/// [`Job`], inline when `inline`), re-renders when the view changes; zoom, pan, hover.
pub(crate) fn patterns_ui(ui: &mut egui::Ui, st: &mut PatternsState, gpu: &Gpu, inline: bool) {
    egui::Panel::left("pattern settings").resizable(false).show(ui, |ui| settings_ui(ui, st));
    st.refresh(ui.ctx(), gpu, inline);
    st.render_heat(ui.ctx(), gpu, inline);
    egui::CentralPanel::default().show(ui, |ui| heatmap_ui(ui, st));
}

fn settings_ui(ui: &mut egui::Ui, st: &mut PatternsState) {
    let s = &mut st.settings;
    ui.heading("Problem");
    egui::Grid::new("settings grid").num_columns(2).show(ui, |ui| {
        let l = ui.label("N = M");
        ui.add(egui::DragValue::new(&mut s.n).range(1..=131072).speed(16)).labelled_by(l.id);
        ui.end_row();
        let l = ui.label("head dim D");
        egui::ComboBox::from_id_salt("d")
            .selected_text(s.d.to_string())
            .show_ui(ui, |ui| {
                for d in [32, 64, 80, 96, 128, 256] {
                    ui.selectable_value(&mut s.d, d, d.to_string());
                }
            })
            .response
            .labelled_by(l.id);
        ui.end_row();
        let l = ui.label("heads H");
        ui.add(egui::DragValue::new(&mut s.heads).range(1..=64)).labelled_by(l.id);
        ui.end_row();
        let l = ui.label("kv heads");
        ui.add(egui::DragValue::new(&mut s.kv_heads).range(1..=s.heads)).labelled_by(l.id);
        ui.end_row();
    });
    if !s.heads.is_multiple_of(s.kv_heads) {
        s.kv_heads = 1;
    }
    ui.checkbox(&mut s.causal, "causal");
    let mut windowed = s.window.is_some();
    ui.checkbox(&mut windowed, "window");
    if windowed {
        let (mut l, mut r) = s.window.unwrap_or((128, 0));
        ui.horizontal(|ui| {
            let lab = ui.label("L");
            ui.add(egui::DragValue::new(&mut l).range(0..=131072)).labelled_by(lab.id);
            let lab = ui.label("R");
            ui.add(egui::DragValue::new(&mut r).range(0..=131072)).labelled_by(lab.id);
        });
        s.window = Some((l, r));
    } else {
        s.window = None;
    }
    ui.checkbox(&mut s.alibi, "ALiBi");
    egui::ComboBox::from_label("sparse pattern").selected_text(format!("{:?}", s.pattern)).show_ui(
        ui,
        |ui| {
            for p in Pattern::ALL {
                ui.selectable_value(&mut s.pattern, p, format!("{p:?}"));
            }
        },
    );
    ui.separator();
    ui.heading("Mods (WGSL)");
    ui.horizontal_wrapped(|ui| {
        if ui.button("none").clicked() {
            s.mods.clear();
        }
        for (name, text) in MOD_EXAMPLES {
            if ui.button(name).clicked() {
                s.mods = text.to_string();
            }
        }
    });
    let lab = ui.weak("score_mod(score, b, h, q_idx, kv_idx) -> f32, mask_mod(b, h, q_idx, kv_idx) -> bool");
    ui.add(
        egui::TextEdit::multiline(&mut s.mods)
            .code_editor()
            .desired_rows(6)
            .desired_width(f32::INFINITY)
            .hint_text("// e.g. fn mask_mod(...) -> bool { return kv_idx < 4u || q_idx >= kv_idx; }"),
    )
    .labelled_by(lab.id);
    if let Some(e) = st.error.as_ref().filter(|e| e.contains(MOD_EDITOR)) {
        ui.label(egui::RichText::new(plain(e)).monospace().color(Color32::RED));
    }
    ui.separator();
    ui.heading("Inputs");
    let kind = match s.inputs {
        Inputs::Random => 0,
        Inputs::Structured => 1,
        Inputs::Files { .. } => 2,
    };
    let mut new_kind = kind;
    ui.radio_value(&mut new_kind, 1, "structured (positional)");
    ui.radio_value(&mut new_kind, 0, "random");
    ui.radio_value(&mut new_kind, 2, "files (.npy / .safetensors)");
    if new_kind != kind {
        s.inputs = match new_kind {
            0 => Inputs::Random,
            1 => Inputs::Structured,
            _ => Inputs::Files {
                q: String::new(),
                k: String::new(),
                v: String::new(),
                safetensors: String::new(),
            },
        };
        st.failed = None;
    }
    if let Inputs::Files { q, k, v, safetensors } = &mut s.inputs {
        let mut edited = false;
        for (label, path) in
            [("Q .npy", q), ("K .npy", k), ("V .npy", v), (".safetensors (q, k, v)", safetensors)]
        {
            let lab = ui.label(label);
            edited |= ui.text_edit_singleline(path).labelled_by(lab.id).lost_focus();
        }
        if edited {
            st.failed = None;
        }
    } else {
        ui.horizontal(|ui| {
            let lab = ui.label("seed");
            ui.add(egui::DragValue::new(&mut s.seed)).labelled_by(lab.id);
        });
    }
    ui.separator();
    ui.heading("View");
    let heads = st.computed.as_ref().map_or(s.heads, |c| c.spec.shape.heads);
    ui.add(egui::Slider::new(&mut st.head, 0..=heads.saturating_sub(1)).text("head"));
    ui.checkbox(&mut st.log_scale, "log colour scale");
    ui.checkbox(&mut st.mean_pool, "mean pooling (else max)");
    if ui.button("reset zoom").clicked()
        && let Some(c) = &st.computed
    {
        st.rows = 0..c.spec.shape.n;
        st.cols = 0..c.spec.shape.m;
    }
    if st.failed.is_some() && ui.button("retry").clicked() {
        st.failed = None;
    }
}

/// A compiler message with its box-drawing characters in ASCII (egui's fonts have none).
fn plain(message: &str) -> String {
    message
        .chars()
        .map(|c| match c {
            '┌' | '└' | '├' | '┬' | '┴' | '┼' | '╭' | '╰' => '+',
            '─' | '━' => '-',
            '│' | '┃' => '|',
            c => c,
        })
        .collect()
}

fn heatmap_ui(ui: &mut egui::Ui, st: &mut PatternsState) {
    // the mod editor's errors are shown beside it
    if let Some(e) = st.error.as_ref().filter(|e| !e.contains(MOD_EDITOR)) {
        ui.label(egui::RichText::new(plain(e)).monospace().color(Color32::RED));
    }
    if st.job.is_some() {
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label("computing on the GPU...");
        });
    }
    let Some(heat) = &st.heat else { return };
    let Some(c) = &st.computed else { return };
    ui.label(format!(
        "rows {}..{} × keys {}..{} of N = {}, head {} — {}×{} pixels, {} bytes read back for this view",
        st.rows.start,
        st.rows.end,
        st.cols.start,
        st.cols.end,
        c.spec.shape.n,
        heat.view.head,
        heat.view.width,
        heat.view.height,
        st.readback_bytes
    ));
    if let Some(f) = c.keys_read {
        ui.label(match c.settings.pattern {
            Pattern::Nsa => format!(
                "NSA ({}): the selected branch's {} blocks of {} OR the window of {} (compressed keys over {} at stride {} not drawn), gates 1/3 each (a stand-in); {:.1}% of causal's keys read raw",
                NSA.describe(),
                NSA.topk,
                NSA.block,
                NSA.window,
                NSA.cmp_len,
                NSA.cmp_stride,
                100.0 * f
            ),
            Pattern::Dsa => format!(
                "DSA (top {DSA_TOPK}): the keys of highest index score ReLU(qI·kI), the indexer reading head 0's first dims; {:.1}% of causal's keys read",
                100.0 * f
            ),
            _ => format!(
                "MoBA (block {}, top {}): own block + {} earlier blocks of highest q·mean(K); {:.1}% of causal's keys read",
                MOBA.block,
                MOBA.topk,
                MOBA.topk - 1,
                100.0 * f
            ),
        });
    }
    let (left, bottom, bar) = (AXIS_LEFT, AXIS_BOTTOM, COLOUR_BAR_WIDTH);
    let side = ((ui.available_width() - left - bar).min(ui.available_height() - 60.0 - bottom)).max(64.0);
    let (outer, response) =
        ui.allocate_exact_size(Vec2::new(left + side + bar, side + bottom), Sense::click_and_drag());
    let rect = Rect::from_min_size(outer.min + Vec2::new(left, 0.0), Vec2::splat(side));
    let text = ui.visuals().text_color();
    matrix_axes(ui.painter(), rect, st.rows.clone(), st.cols.clone(), "query i", "key j", text);
    let bar_rect =
        Rect::from_min_max(pos2(rect.right() + 14.0, rect.top()), pos2(rect.right() + 30.0, rect.bottom()));
    let pooling = if heat.view.mean { "mean" } else { "max" };
    colour_bar(ui.painter(), bar_rect, heat.scale_max, heat.log, &format!("p ({pooling} per pixel)"), text);
    super::style::record_matrix(ui, || MatrixData {
        title: format!("attention probabilities head {}", heat.view.head),
        row_name: "query i".into(),
        col_name: "key j".into(),
        rows: (st.rows.start, st.rows.end),
        cols: (st.cols.start, st.cols.end),
        scale: format!(
            "probability, {pooling} per pixel; colours {} up to {}",
            if heat.log { "log" } else { "linear" },
            heat.scale_max
        ),
        width: heat.view.width,
        height: heat.view.height,
        values: heat.values.clone(),
    });
    st.shown_at = Some(rect);
    if let Some(tex) = &heat.texture {
        ui.painter().image(
            tex.id(),
            rect,
            Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0)),
            Color32::WHITE,
        );
    }
    // pixel → (row, key)
    let to_cell = |pos: Pos2| -> (usize, usize) {
        let fx = ((pos.x - rect.left()) / rect.width()).clamp(0.0, 0.9999);
        let fy = ((pos.y - rect.top()) / rect.height()).clamp(0.0, 0.9999);
        (
            st.rows.start + (fy * st.rows.len() as f32) as usize,
            st.cols.start + (fx * st.cols.len() as f32) as usize,
        )
    };
    st.hover = response.hover_pos().filter(|p| rect.contains(*p)).map(|pos| {
        let (i, j) = to_cell(pos);
        c.readout(heat.view.head, i, j)
    });
    // zoom around the pointer, pan by dragging
    let (n, m) = (c.spec.shape.n, c.spec.shape.m);
    if let Some(pos) = response.hover_pos() {
        let scroll = ui.input(|i| i.smooth_scroll_delta.y);
        if scroll != 0.0 {
            let factor = (-scroll / 200.0).exp();
            let (ci, cj) = to_cell(pos);
            st.rows = zoom(&st.rows, ci, factor, n);
            st.cols = zoom(&st.cols, cj, factor, m);
        }
    }
    if response.dragged() {
        let d = response.drag_delta();
        st.rows = pan(&st.rows, -(d.y / rect.height()) * st.rows.len() as f32, n);
        st.cols = pan(&st.cols, -(d.x / rect.width()) * st.cols.len() as f32, m);
    }
    if let Some(r) = st.hover {
        ui.label(format!(
            "(i, j) = ({}, {})   p = {:.6}   score = {:.4}   bias = {:.4}   {}",
            r.i,
            r.j,
            r.p,
            r.score,
            r.bias,
            if r.visible { "visible" } else { "masked" }
        ));
        if r.mods {
            ui.weak("score and mask above are before the mods (WGSL runs on the GPU only); the heatmap includes them");
        }
        if let Some(blocks) = c.chosen_blocks(heat.view.head, r.i) {
            let b = if c.settings.pattern == Pattern::Nsa { NSA.block } else { MOBA.block };
            let spans: Vec<String> =
                blocks.iter().map(|&x| format!("{}..{}", x as usize * b, (x as usize + 1) * b)).collect();
            ui.label(format!("row {} chose blocks {blocks:?} (keys {})", r.i, spans.join(", ")));
        }
        if let Some(keys) = c.chosen_keys(r.i) {
            let visible = (c.spec.position(r.i) + 1).clamp(0, c.spec.shape.m as i64);
            ui.label(format!("row {} chose {} of its {visible} keys: {}", r.i, keys.len(), spans(&keys)));
        }
    } else {
        ui.weak("hover for (i, j), probability, score, bias; scroll to zoom, drag to pan");
    }
}

/// Sorted indices as runs, `a..=b` for consecutive ones (`0..=3, 17, 40..=52`).
fn spans(sorted: &[u32]) -> String {
    let mut runs: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1] == sorted[j] + 1 {
            j += 1;
        }
        runs.push(if i == j { sorted[i].to_string() } else { format!("{}..={}", sorted[i], sorted[j]) });
        i = j + 1;
    }
    runs.join(", ")
}

fn zoom(range: &Range<usize>, center: usize, factor: f32, limit: usize) -> Range<usize> {
    let len = ((range.len() as f32 * factor).round() as usize).clamp(8.min(limit), limit);
    let frac = (center - range.start) as f32 / range.len().max(1) as f32;
    let start = (center as f32 - frac * len as f32).round().max(0.0) as usize;
    let start = start.min(limit - len);
    start..start + len
}

fn pan(range: &Range<usize>, by: f32, limit: usize) -> Range<usize> {
    let start = (range.start as f32 + by).round().clamp(0.0, (limit - range.len()) as f32) as usize;
    start..start + range.len()
}
