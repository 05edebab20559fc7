//! Decode panel: KV-cache memory against tokens for MHA, GQA and MQA, and decoding speed
//! against context measured on this device.

use std::time::Instant;

use egui_plot::{Legend, Line, Plot, Points};

use super::Job;
use crate::gpu::Gpu;
use crate::kernels::decode::{Decoder, DecoderConfig};

pub struct DecodeState {
    pub heads: usize,
    pub d: usize,
    pub layers: usize,
    /// (kv heads, context, tokens/s) measured.
    pub measured: Vec<(usize, usize, f64)>,
    job: Option<Job<Vec<(usize, usize, f64)>>>,
    pub message: String,
}

impl Default for DecodeState {
    fn default() -> Self {
        Self { heads: 32, d: 128, layers: 32, measured: Vec::new(), job: None, message: String::new() }
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

/// Median ms per one-token step after prefilling `context` positions (one layer).
fn tokens_per_s(gpu: &Gpu, heads: usize, kv: usize, d: usize, context: usize) -> Result<f64, String> {
    let steps = 4;
    let mut dec = Decoder::new(gpu, DecoderConfig::new(heads, kv, d, context + steps + 1))
        .map_err(|e| e.to_string())?;
    let x = vec![0.01f32; kv * context * d];
    dec.prefill(gpu, 0, &x, &x).map_err(|e| e.to_string())?;
    let (q, kn) = (vec![0.02f32; heads * d], vec![0.03f32; kv * d]);
    let mut ms = Vec::new();
    for i in 0..=steps {
        let t0 = Instant::now();
        dec.step(gpu, 0, &q, &kn, &kn).map_err(|e| e.to_string())?;
        gpu.wait().map_err(|e| e.to_string())?;
        if i > 0 {
            ms.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(1e3 / ms[ms.len() / 2])
}

pub fn decode_ui(ui: &mut egui::Ui, st: &mut DecodeState, gpu: &Gpu, inline: bool) {
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
            let (gpu, heads, d, kvs) = (gpu.clone(), st.heads, st.d, st.variants());
            st.message = "measuring…".into();
            st.job = Some(Job::start(ui.ctx(), inline, move || {
                let mut out = Vec::new();
                for kv in kvs {
                    for context in [256, 1024, 4096] {
                        out.push((kv, context, tokens_per_s(&gpu, heads, kv, d, context)?));
                    }
                }
                Ok(out)
            }));
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
                    p.line(Line::new(name(st.heads, kv), pts));
                }
            });
        cols[1].label("tokens/s against context on this device (log10 axes)");
        Plot::new("tokens per s")
            .legend(Legend::default())
            .height(320.0)
            .x_axis_label("log10 context")
            .y_axis_label("log10 tokens/s")
            .show(&mut cols[1], |p| {
                for kv in variants {
                    let pts: Vec<[f64; 2]> = st
                        .measured
                        .iter()
                        .filter(|m| m.0 == kv)
                        .map(|m| [(m.1 as f64).log10(), m.2.log10()])
                        .collect();
                    if !pts.is_empty() {
                        p.line(Line::new(name(st.heads, kv), pts.clone()));
                        p.points(Points::new(name(st.heads, kv), pts).radius(3.0));
                    }
                }
            });
    });
}
