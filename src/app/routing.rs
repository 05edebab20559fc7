//! Routing panel: a CoLT5 layer on this device — which tokens each router sends to the heavy
//! branches, the router-score histogram, and time and FLOPs per branch against the dense layer.

use egui::{Color32, Rect, Sense, Vec2, pos2};
use egui_plot::Corner;

use super::style::{Axis, ChartData, Mark, chart_ui};

use super::Job;
use crate::models::colt5::{BranchTiming, Colt5Config, Colt5Layer, Colt5Weights, router_scores_cpu};
use crate::runtime::Gpu;

/// The routing panel's inputs and last result.
pub struct RoutingState {
    /// Tokens N.
    pub n: usize,
    /// Model width (kept a multiple of 64).
    pub d_model: usize,
    /// Each router takes 1/`fraction_inv` of the tokens.
    pub fraction_inv: usize,
    /// The last finished run.
    pub result: Option<RoutingResult>,
    job: Option<Job<RoutingResult>>,
    /// The last error, empty after a successful run.
    pub message: String,
    /// Whether a run was started (the panel starts one when first shown).
    started: bool,
}

impl Default for RoutingState {
    fn default() -> Self {
        Self {
            n: 512,
            d_model: 128,
            fraction_inv: 8,
            result: None,
            job: None,
            message: String::new(),
            started: false,
        }
    }
}

/// One run of the routed and the dense layer.
pub struct RoutingResult {
    /// Tokens N.
    pub n: usize,
    /// Routed indices (q, kv, ffn).
    pub routed: [Vec<u32>; 3],
    /// Router scores (cosine similarity) of every token, (q, kv, ffn), from the CPU.
    pub scores: [Vec<f64>; 3],
    /// Per-branch time and FLOPs of the routed layer.
    pub colt5: Vec<BranchTiming>,
    /// Per-branch time and FLOPs of the dense layer (every token takes both heavy branches).
    pub dense: Vec<BranchTiming>,
}

async fn compute(gpu: &Gpu, n: usize, d_model: usize, fraction: f64) -> Result<RoutingResult, String> {
    let cfg = Colt5Config::standard(n, d_model, 32, fraction);
    let w = Colt5Weights::random(&cfg, 0);
    let x: Vec<f32> =
        (0..n * d_model).map(|i| ((i as f32 * 0.61803).sin() + (i / d_model) as f32 * 0.01).sin()).collect();
    let err = |e: crate::Error| e.to_string();
    let layer = Colt5Layer::new(gpu, &cfg, &w, false).map_err(err)?;
    let (_, colt5) = layer.forward_async(gpu, &x).await.map_err(err)?;
    let routed = layer.routed_async(gpu).await.map_err(err)?;
    let dense = Colt5Layer::new(gpu, &cfg, &w, true).map_err(err)?;
    let (_, dense) = dense.forward_async(gpu, &x).await.map_err(err)?;
    Ok(RoutingResult { n, routed, scores: router_scores_cpu(&cfg, &w, &x), colt5, dense })
}

const NAMES: [&str; 3] = ["heavy attention query", "heavy attention key/value", "heavy FFN"];

/// Draws the controls, runs the routed and dense layers as a [`Job`] (inline when `inline`),
/// and shows the routed tokens per router, the score histogram and the per-branch table.
pub(crate) fn routing_ui(
    ui: &mut egui::Ui,
    st: &mut RoutingState,
    gpu: &Gpu,
    inline: bool,
    first_view: bool,
) {
    if first_view && !st.started && st.job.is_none() {
        st.started = true;
        let (gpu, n, d, f) = (gpu.clone(), st.n, st.d_model, 1.0 / st.fraction_inv as f64);
        st.job = Some(Job::start(ui.ctx(), inline, move || async move { compute(&gpu, n, d, f).await }));
    }
    if let Some(r) = st.job.as_ref().and_then(Job::poll) {
        st.job = None;
        match r {
            Ok(res) => {
                st.message.clear();
                st.result = Some(res);
            }
            Err(e) => st.message = e,
        }
    }
    ui.horizontal(|ui| {
        let l = ui.label("tokens N");
        ui.add(egui::DragValue::new(&mut st.n).range(16..=8192)).labelled_by(l.id);
        let l = ui.label("d_model");
        ui.add(egui::DragValue::new(&mut st.d_model).range(64..=512).speed(64)).labelled_by(l.id);
        st.d_model = (st.d_model / 64).max(1) * 64;
        let l = ui.label("route 1 /");
        ui.add(egui::DragValue::new(&mut st.fraction_inv).range(1..=64)).labelled_by(l.id);
        if ui.add_enabled(st.job.is_none(), egui::Button::new("run CoLT5 and dense layers")).clicked() {
            st.started = true;
            let (gpu, n, d, f) = (gpu.clone(), st.n, st.d_model, 1.0 / st.fraction_inv as f64);
            st.job = Some(Job::start(ui.ctx(), inline, move || async move { compute(&gpu, n, d, f).await }));
        }
        if st.job.is_some() {
            ui.spinner();
        }
        ui.label(&st.message);
    });
    let Some(r) = &st.result else {
        ui.label(if st.job.is_some() {
            "running the CoLT5 layer and its dense reference…"
        } else {
            "run the layers to see which tokens the routers pick"
        });
        return;
    };
    ui.label("tokens in order; each row one router: coloured = routed to the heavy branch, grey = light branch only");
    let width = ui.available_width();
    let (rect, response) = ui.allocate_exact_size(Vec2::new(width, 3.0 * 22.0), Sense::hover());
    let painter = ui.painter_at(rect);
    let cw = rect.width() / r.n as f32;
    for (row, idx) in r.routed.iter().enumerate() {
        let y = rect.top() + row as f32 * 22.0;
        painter.rect_filled(
            Rect::from_min_size(pos2(rect.left(), y), Vec2::new(rect.width(), 18.0)),
            0.0,
            Color32::from_gray(60),
        );
        for &i in idx {
            painter.rect_filled(
                Rect::from_min_size(pos2(rect.left() + i as f32 * cw, y), Vec2::new(cw.max(1.0), 18.0)),
                0.0,
                super::style::series_color(NAMES[row]),
            );
        }
    }
    if let Some(pos) = response.hover_pos() {
        let token = (((pos.x - rect.left()) / cw) as usize).min(r.n - 1);
        let row = (((pos.y - rect.top()) / 22.0) as usize).min(2);
        let routed = r.routed[row].contains(&(token as u32));
        response.on_hover_text(format!(
            "token {token}: {} score {:.4} — {}",
            NAMES[row],
            r.scores[row][token],
            if routed { "heavy" } else { "light only" }
        ));
    }
    let height = (ui.available_height() - 130.0).clamp(200.0, 520.0);
    ui.columns(2, |cols| {
        cols[0].label("router scores (cosine similarity), histogram");
        let mut hist = ChartData::new(
            "router scores",
            Axis::linear("router score (cosine similarity)"),
            Axis::linear("tokens"),
        );
        let bins = 40;
        for (k, scores) in r.scores.iter().enumerate() {
            let mut counts = vec![0u32; bins];
            for &s in scores {
                counts[(((s + 1.0) / 2.0 * bins as f64) as usize).min(bins - 1)] += 1;
            }
            let pts = counts
                .iter()
                .enumerate()
                .map(|(b, &c)| [-1.0 + (b as f64 + 0.5) * 2.0 / bins as f64, c as f64]);
            hist.add(NAMES[k], Mark::Bars(2.0 / bins as f64), pts.collect());
        }
        chart_ui(&mut cols[0], "router hist", hist, Corner::LeftTop, None, height);
        cols[1].label("per branch: GFLOP, CoLT5 against dense");
        let branches = r.colt5.iter().map(|t| t.branch);
        let mut flops =
            ChartData::new("GFLOP per branch", Axis::categories("branch", branches), Axis::linear("GFLOP"));
        for (k, (name, timings)) in
            [("routed (CoLT5)", &r.colt5), ("dense", &r.dense)].into_iter().enumerate()
        {
            let pts =
                timings.iter().enumerate().map(|(i, t)| [i as f64 + 0.2 * k as f64 - 0.1, t.flops / 1e9]);
            flops.add(name, Mark::Bars(0.2), pts.collect());
        }
        chart_ui(&mut cols[1], "branch flops", flops, Corner::RightTop, None, height);
    });
    egui::Grid::new("branch table").striped(true).show(ui, |ui| {
        for h in ["branch", "CoLT5 ms", "CoLT5 GFLOP", "dense ms", "dense GFLOP"] {
            ui.strong(h);
        }
        ui.end_row();
        for (c, d) in r.colt5.iter().zip(&r.dense) {
            ui.label(c.branch);
            ui.label(format!("{:.2}", c.ms));
            ui.label(format!("{:.3}", c.flops / 1e9));
            ui.label(format!("{:.2}", d.ms));
            ui.label(format!("{:.3}", d.flops / 1e9));
            ui.end_row();
        }
    });
}
