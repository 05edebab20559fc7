//! Decode panel: KV-cache memory against tokens for MHA, GQA and MQA, decoding speed against
//! context measured on this device (the contiguous cache per variant, the paged cache per KV
//! format), and a paged pool's pages: which sequence holds each, which are shared.

use egui_plot::Corner;

use super::style::{Axis, ChartData, Mark, Unit, chart_ui};

use super::Job;
use crate::contract::paged::{KvFormat, Tree};
use crate::kernels::attention::decode::{Decoder, DecoderConfig};
use crate::kernels::attention::paged::{PagedConfig, PagedDecoder, PoolUsage};
use crate::runtime::Gpu;
use crate::runtime::timing::time_host_async;

/// The decode panel's inputs and measurements.
pub struct DecodeState {
    /// Query heads H; the variants compared are MHA (H kv heads), GQA (H/4) and MQA (1).
    pub heads: usize,
    /// Head dim D (kept a multiple of 4).
    pub d: usize,
    /// Layers L of the KV-cache memory plot (the speed measurement runs one layer).
    pub layers: usize,
    /// (kv heads, context, tokens/s) measured.
    pub measured: Vec<(usize, usize, f64)>,
    /// (paged cache format, context, tokens/s) measured at the GQA variant.
    pub paged: Vec<(KvFormat, usize, f64)>,
    job: Option<Job<Measured>>,
    /// The example pool (built on first view).
    pub pool: Option<PoolView>,
    /// Status line of the measurement.
    pub message: String,
    /// Whether a measurement was started (the panel starts one when first shown).
    started: bool,
}

impl Default for DecodeState {
    fn default() -> Self {
        Self {
            heads: 32,
            d: 128,
            layers: 32,
            measured: Vec::new(),
            paged: Vec::new(),
            job: None,
            pool: None,
            message: String::new(),
            started: false,
        }
    }
}

impl DecodeState {
    fn variants(&self) -> [usize; 3] {
        [self.heads, (self.heads / 4).max(1), 1]
    }
}

fn name(heads: usize, kv: usize) -> String {
    match kv {
        1 => "MQA (1 kv head)".into(),
        k if k == heads => format!("MHA ({k} kv heads)"),
        k => format!("GQA ({k} kv heads)"),
    }
}

/// Decoding tokens per second (one token per step, one layer) after prefilling `context`
/// positions: 1000 / the median ms of a step.
async fn tokens_per_s(gpu: &Gpu, heads: usize, kv: usize, d: usize, context: usize) -> Result<f64, String> {
    let steps = 4;
    let mut dec = Decoder::new(gpu, DecoderConfig::new(heads, kv, d, context + steps + 1))
        .map_err(|e| e.to_string())?;
    let x = vec![0.01f32; kv * context * d];
    dec.prefill(gpu, 0, &x, &x).map_err(|e| e.to_string())?;
    let (q, kn) = (vec![0.02f32; heads * d], vec![0.03f32; kv * d]);
    let t = time_host_async(1, steps, async |_| {
        dec.step(gpu, 0, &q, &kn, &kn)?;
        gpu.wait_async().await
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(1e3 / t.median())
}

/// Decoding tokens per second of the paged cache in `format` (one sequence, GQA `kv` heads),
/// as [`tokens_per_s`] measures the contiguous one.
async fn paged_tokens_per_s(
    gpu: &Gpu,
    heads: usize,
    kv: usize,
    d: usize,
    context: usize,
    format: KvFormat,
) -> Result<f64, String> {
    let steps = 4;
    let mut cfg = PagedConfig::new(heads, kv, d, (context + steps + 2).div_ceil(64) + 1);
    (cfg.k_format, cfg.v_format, cfg.max_seqs, cfg.max_tokens) = (format, format, 1, 1);
    let mut dec = PagedDecoder::new(gpu, cfg).map_err(|e| e.to_string())?;
    let id = dec.add();
    let x = vec![0.01f32; kv * context * d];
    dec.prefill(gpu, id, &[(&x, &x)]).map_err(|e| e.to_string())?;
    let (q, kn) = (vec![0.02f32; heads * d], vec![0.03f32; kv * d]);
    let t = time_host_async(1, steps, async |_| {
        dec.begin(gpu, &[(id, Tree::chain(1))])?;
        dec.attend(gpu, 0, &q, &kn, &kn)?;
        gpu.wait_async().await
    })
    .await
    .map_err(|e| e.to_string())?;
    Ok(1e3 / t.median())
}

/// What a measurement returns: the contiguous variants, then the paged formats.
type Measured = (Vec<(usize, usize, f64)>, Vec<(KvFormat, usize, f64)>);

/// A paged pool's pages as the panel draws them.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolView {
    /// Per page: the sequences whose tables hold it (empty: free).
    pub owners: Vec<Vec<usize>>,
    /// Pages used and shared.
    pub usage: PoolUsage,
}

/// The example the panel shows: a pool of 48 pages of 16 slots, a window of 96 positions and 16
/// sinks; sequence 1 holds a prompt of 150 tokens, sequence 2 forked from it and wrote 40 more
/// (the prompt's pages shared, the last one copied when written, those behind its window let
/// go), sequence 3 took 300 tokens and a step (the pages behind its window returned).
pub fn pool_example(gpu: &Gpu) -> crate::error::Result<PoolView> {
    let mut cfg = PagedConfig::new(1, 1, 4, 48);
    (cfg.page, cfg.window, cfg.sinks) = (16, Some(96), 16);
    let mut dec = PagedDecoder::new(gpu, cfg)?;
    let row = |n: usize| vec![0.5f32; n * 4];
    let a = dec.add();
    dec.prefill(gpu, a, &[(&row(150), &row(150))])?;
    let b = dec.fork(a)?;
    dec.begin(gpu, &[(b, Tree::chain(8))])?;
    dec.prefill(gpu, b, &[(&row(32), &row(32))])?;
    let c = dec.add();
    dec.prefill(gpu, c, &[(&row(300), &row(300))])?;
    dec.begin(gpu, &[(c, Tree::chain(1))])?;
    let mut owners = vec![Vec::new(); 48];
    for (s, id) in [a, b, c].into_iter().enumerate() {
        for &p in dec.table(id)? {
            if p != u32::MAX {
                owners[p as usize].push(s + 1);
            }
        }
    }
    Ok(PoolView { owners, usage: dec.usage() })
}

/// Draws the pool: a cell per page in the sequence's colour, split where pages are shared,
/// free pages outlined.
fn pool_ui(ui: &mut egui::Ui, pool: &PoolView) {
    let u = pool.usage;
    ui.label(format!(
        "a paged KV pool: {} of {} pages used, {} shared — sequence 2 forked from 1 and wrote on; every sequence keeps a window of 96 positions and 16 sinks, so 3 (300 tokens) returned the pages behind it",
        u.used, u.pages, u.shared
    ));
    let (cell, cols) = (18.0, 24usize);
    let rows = pool.owners.len().div_ceil(cols);
    let (rect, _) =
        ui.allocate_exact_size(egui::vec2(cols as f32 * cell, rows as f32 * cell), egui::Sense::hover());
    let painter = ui.painter_at(rect);
    let stroke = egui::Stroke::new(1.0, ui.visuals().weak_text_color());
    for (i, owners) in pool.owners.iter().enumerate() {
        let min = rect.min + egui::vec2((i % cols) as f32 * cell, (i / cols) as f32 * cell);
        let r = egui::Rect::from_min_size(min, egui::vec2(cell - 2.0, cell - 2.0));
        for (k, s) in owners.iter().enumerate() {
            let w = r.width() / owners.len() as f32;
            let part =
                egui::Rect::from_min_size(r.min + egui::vec2(k as f32 * w, 0.0), egui::vec2(w, r.height()));
            painter.rect_filled(part, 0.0, super::style::series_color(&format!("sequence {s}")));
        }
        painter.rect_stroke(r, 0.0, stroke, egui::StrokeKind::Inside);
    }
    ui.horizontal(|ui| {
        for s in 1..=3 {
            let c = super::style::series_color(&format!("sequence {s}"));
            ui.label(egui::RichText::new(format!("sequence {s}")).color(c));
        }
        ui.label("— empty cells are free pages; a cell split in colours is shared");
    });
}

/// Starts measuring tokens/s of the three variants at contexts 256, 1K and 4K.
fn start(ctx: &egui::Context, st: &mut DecodeState, gpu: &Gpu, inline: bool) {
    let (gpu, heads, d, kvs) = (gpu.clone(), st.heads, st.d, st.variants());
    st.message = "measuring…".into();
    st.started = true;
    st.job = Some(Job::start(ctx, inline, move || async move {
        let mut out = Vec::new();
        for kv in kvs {
            for context in [256, 1024, 4096] {
                out.push((kv, context, tokens_per_s(&gpu, heads, kv, d, context).await?));
            }
        }
        let mut paged = Vec::new();
        for format in KvFormat::ALL {
            for context in [256, 1024, 4096] {
                paged.push((
                    format,
                    context,
                    paged_tokens_per_s(&gpu, heads, kvs[1], d, context, format).await?,
                ));
            }
        }
        Ok((out, paged))
    }));
}

/// Draws KV-cache GiB against cached tokens (f32) for the three variants, and measures and
/// plots decoding tokens/s against context (256, 1K, 4K) on `gpu` — on first view when
/// `first_view`, else when asked.
pub(crate) fn decode_ui(ui: &mut egui::Ui, st: &mut DecodeState, gpu: &Gpu, inline: bool, first_view: bool) {
    if first_view && !st.started && st.job.is_none() {
        start(ui.ctx(), st, gpu, inline);
    }
    if st.pool.is_none() {
        match pool_example(gpu) {
            Ok(p) => st.pool = Some(p),
            Err(e) => st.message = format!("pool: {e}"),
        }
    }
    if let Some(r) = st.job.as_ref().and_then(Job::poll) {
        st.job = None;
        match r {
            Ok((m, paged)) => {
                st.message = format!("measured {} points", m.len() + paged.len());
                st.measured = m;
                st.paged = paged;
            }
            Err(e) => st.message = e,
        }
    }
    ui.horizontal(|ui| {
        let l = ui.label("heads H");
        ui.add(egui::DragValue::new(&mut st.heads).range(1..=128)).labelled_by(l.id);
        let l = ui.label("head dim D");
        ui.add(egui::DragValue::new(&mut st.d).range(4..=256)).labelled_by(l.id);
        let l = ui.label("layers");
        ui.add(egui::DragValue::new(&mut st.layers).range(1..=128)).labelled_by(l.id);
        st.d = st.d / 4 * 4;
        if ui
            .add_enabled(st.job.is_none(), egui::Button::new("measure tokens/s (1 layer, contexts 256…4K)"))
            .clicked()
        {
            start(ui.ctx(), st, gpu, inline);
        }
        if st.job.is_some() {
            ui.spinner();
        }
        ui.label(&st.message);
    });
    let variants = st.variants();
    if let Some(pool) = &st.pool {
        pool_ui(ui, pool);
    }
    let height = (ui.available_height() - 30.0).clamp(240.0, 640.0);
    ui.columns(2, |cols| {
        cols[0].label(format!(
            "KV cache against cached tokens, {} layers, D = {}: 2·L·Hkv·D·4 bytes per token",
            st.layers, st.d
        ));
        let mut kv = ChartData::new(
            "KV cache against cached tokens",
            Axis::linear("cached tokens (K)"),
            Axis::linear("KV cache (GiB)"),
        );
        for kv_heads in variants {
            let per_token = (2 * st.layers * kv_heads * st.d * 4) as f64;
            let pts: Vec<[f64; 2]> = (0..=32)
                .map(|i| i as f64 * 4.0)
                .map(|k| [k, k * 1024.0 * per_token / (1u64 << 30) as f64])
                .collect();
            kv.add(name(st.heads, kv_heads), Mark::Line, pts);
        }
        chart_ui(&mut cols[0], "kv memory", kv, Corner::LeftTop, None, height);
        cols[1].label("tokens/s against context on this device");
        let mut speed = ChartData::new(
            "decoding speed against context",
            Axis::log("context", Unit::Tokens),
            Axis::log("tokens", Unit::PerSecond),
        );
        for kv_heads in variants {
            let pts: Vec<[f64; 2]> =
                st.measured.iter().filter(|m| m.0 == kv_heads).map(|m| [m.1 as f64, m.2]).collect();
            if !pts.is_empty() {
                speed.add(name(st.heads, kv_heads), Mark::LinePoints, pts);
            }
        }
        for format in KvFormat::ALL {
            let pts: Vec<[f64; 2]> =
                st.paged.iter().filter(|m| m.0 == format).map(|m| [m.1 as f64, m.2]).collect();
            if !pts.is_empty() {
                speed.add(
                    format!("paged {} ({})", format.name(), name(st.heads, variants[1])),
                    Mark::LinePoints,
                    pts,
                );
            }
        }
        chart_ui(&mut cols[1], "tokens per s", speed, Corner::RightTop, None, height);
    });
}
