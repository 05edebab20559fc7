//! Decode panel: KV-cache memory against tokens for MHA, GQA and MQA, and decoding speed
//! against context measured on this device.

use egui_plot::Corner;

use super::style::{Axis, ChartData, Mark, Unit, chart_ui};

use super::Job;
use crate::kernels::attention::decode::{Decoder, DecoderConfig};
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
    job: Option<Job<Vec<(usize, usize, f64)>>>,
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
            job: None,
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
        Ok(out)
    }));
}

/// Draws KV-cache GiB against cached tokens (f32) for the three variants, and measures and
/// plots decoding tokens/s against context (256, 1K, 4K) on `gpu` — on first view when
/// `first_view`, else when asked.
pub(crate) fn decode_ui(ui: &mut egui::Ui, st: &mut DecodeState, gpu: &Gpu, inline: bool, first_view: bool) {
    if first_view && !st.started && st.job.is_none() {
        start(ui.ctx(), st, gpu, inline);
    }
    if let Some(r) = st.job.as_ref().and_then(Job::poll) {
        st.job = None;
        match r {
            Ok(m) => {
                st.message = format!("measured {} points", m.len());
                st.measured = m;
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
        chart_ui(&mut cols[1], "tokens per s", speed, Corner::RightTop, None, height);
    });
}
