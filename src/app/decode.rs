//! Decode panel: KV-cache memory against tokens for MHA, GQA and MQA, and decoding speed
//! against context measured on this device.

use egui_plot::{Corner, Legend, Line, Plot, Points};

use super::style::{Unit, log_log, series_color};

use super::Job;
use crate::kernels::decode::{Decoder, DecoderConfig};
use crate::runtime::Gpu;
use crate::runtime::timing::time_host;

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
fn tokens_per_s(gpu: &Gpu, heads: usize, kv: usize, d: usize, context: usize) -> Result<f64, String> {
    let steps = 4;
    let mut dec = Decoder::new(gpu, DecoderConfig::new(heads, kv, d, context + steps + 1))
        .map_err(|e| e.to_string())?;
    let x = vec![0.01f32; kv * context * d];
    dec.prefill(gpu, 0, &x, &x).map_err(|e| e.to_string())?;
    let (q, kn) = (vec![0.02f32; heads * d], vec![0.03f32; kv * d]);
    let t = time_host(1, steps, |_| {
        dec.step(gpu, 0, &q, &kn, &kn)?;
        gpu.wait()
    })
    .map_err(|e| e.to_string())?;
    Ok(1e3 / t.median())
}

/// Starts measuring tokens/s of the three variants at contexts 256, 1K and 4K.
fn start(ctx: &egui::Context, st: &mut DecodeState, gpu: &Gpu, inline: bool) {
    let (gpu, heads, d, kvs) = (gpu.clone(), st.heads, st.d, st.variants());
    st.message = "measuring…".into();
    st.started = true;
    st.job = Some(Job::start(ctx, inline, move || {
        let mut out = Vec::new();
        for kv in kvs {
            for context in [256, 1024, 4096] {
                out.push((kv, context, tokens_per_s(&gpu, heads, kv, d, context)?));
            }
        }
        Ok(out)
    }));
}

/// Draws KV-cache GiB against cached tokens (f32) for the three variants, and measures and
/// plots decoding tokens/s against context (256, 1K, 4K) on `gpu` — on first view when
/// `first_view`, else when asked.
pub fn decode_ui(ui: &mut egui::Ui, st: &mut DecodeState, gpu: &Gpu, inline: bool, first_view: bool) {
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
    ui.columns(2, |cols| {
        cols[0].label(format!(
            "KV cache (GiB) against cached tokens, {} layers, D = {}: 2·L·Hkv·D·4 bytes per token",
            st.layers, st.d
        ));
        Plot::new("kv memory")
            .legend(Legend::default())
            .height(320.0)
            .x_axis_label("tokens (K)")
            .y_axis_label("GiB")
            .show(&mut cols[0], |p| {
                for kv in variants {
                    let per_token = (2 * st.layers * kv * st.d * 4) as f64;
                    let pts: Vec<[f64; 2]> = (0..=32)
                        .map(|i| i as f64 * 4.0)
                        .map(|k| [k, k * 1024.0 * per_token / (1u64 << 30) as f64])
                        .collect();
                    let label = name(st.heads, kv);
                    p.line(Line::new(label.clone(), pts).color(series_color(&label)));
                }
            });
        cols[1].label("tokens/s against context on this device");
        log_log("tokens per s", Unit::Tokens, "context", Unit::PerSecond, "tokens", Corner::RightTop)
            .height(320.0)
            .show(&mut cols[1], |p| {
                for kv in variants {
                    let pts: Vec<[f64; 2]> = st
                        .measured
                        .iter()
                        .filter(|m| m.0 == kv)
                        .map(|m| [(m.1 as f64).log10(), m.2.log10()])
                        .collect();
                    if !pts.is_empty() {
                        let label = name(st.heads, kv);
                        let color = series_color(&label);
                        p.line(Line::new(label.clone(), pts.clone()).color(color));
                        p.points(Points::new(label, pts).radius(3.0).color(color));
                    }
                }
            });
    });
}
