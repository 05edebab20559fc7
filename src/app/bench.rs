//! Benchmarks panel: run a sweep on the app's device with progress and cancel; time against
//! N on log–log axes with fitted slopes; load records written by `longctx bench --json`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use egui_plot::Corner;

use super::style::chart_ui;

use super::Job;
use crate::contract::spec::{AttnShape, AttnSpec};
use crate::kernels::Kernel;
use crate::kernels::peak;
use crate::measure::bench::{Record, run_config, time_chart};
use crate::runtime::Gpu;

/// The benchmarks panel's inputs, running sweep and results.
pub struct BenchState {
    /// Sequence lengths N to sweep, comma-separated; a `k` suffix means ×1024.
    pub sizes: String,
    /// Include the flash kernel.
    pub flash: bool,
    /// Include the naive kernel.
    pub naive: bool,
    /// Sweep with a causal mask (else dense).
    pub causal: bool,
    /// Timed runs per configuration.
    pub reps: usize,
    /// Path of a `longctx bench --json` file to load.
    pub json_path: String,
    /// Records plotted: the sweep so far, or those loaded.
    pub records: Vec<Record>,
    progress: Arc<AtomicUsize>,
    total: usize,
    cancel: Arc<AtomicBool>,
    partial: Arc<Mutex<Vec<Record>>>,
    job: Option<Job<()>>,
    /// Status line: progress, `done`, `cancelled` or an error.
    pub message: String,
    /// Whether a sweep was started (the panel starts its default one when first shown).
    started: bool,
}

impl Default for BenchState {
    fn default() -> Self {
        Self {
            sizes: "256,512,1k".into(),
            flash: true,
            naive: true,
            causal: true,
            reps: 3,
            json_path: String::new(),
            records: Vec::new(),
            progress: Default::default(),
            total: 0,
            cancel: Default::default(),
            partial: Default::default(),
            job: None,
            message: String::new(),
            started: false,
        }
    }
}

/// The sizes field: [`crate::measure::bench::parse_sizes`], its error as text.
fn parse_sizes(text: &str) -> Result<Vec<usize>, String> {
    crate::measure::bench::parse_sizes(text).map_err(|e| e.to_string())
}

/// Draws the sweep controls (started as a [`Job`], inline when `inline`; the default sweep
/// starts on the `first_view`), the JSON loader and time against N on log–log axes with a
/// fitted exponent per curve.
pub(crate) fn bench_ui(ui: &mut egui::Ui, st: &mut BenchState, gpu: &Gpu, inline: bool, first_view: bool) {
    if first_view
        && !st.started
        && st.job.is_none()
        && st.records.is_empty()
        && let Ok(ns) = parse_sizes(&st.sizes)
    {
        start(ui.ctx(), st, gpu, ns, inline);
    }
    if let Some(r) = st.job.as_ref().and_then(Job::poll) {
        st.job = None;
        st.message = match r {
            Ok(()) if st.cancel.load(Ordering::Relaxed) => "cancelled".into(),
            Ok(()) => "done".into(),
            Err(e) => e,
        };
    }
    if st.job.is_some() {
        st.records = st.partial.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    }
    ui.horizontal(|ui| {
        let lab = ui.label("N");
        ui.text_edit_singleline(&mut st.sizes).labelled_by(lab.id);
        ui.checkbox(&mut st.flash, "flash");
        ui.checkbox(&mut st.naive, "naive");
        ui.checkbox(&mut st.causal, "causal");
        ui.add(egui::DragValue::new(&mut st.reps).range(1..=50).prefix("reps "));
        let running = st.job.is_some();
        if ui.add_enabled(!running, egui::Button::new("run sweep")).clicked() {
            match parse_sizes(&st.sizes) {
                Ok(ns) => start(ui.ctx(), st, gpu, ns, inline),
                Err(e) => st.message = e,
            }
        }
        if ui.add_enabled(running, egui::Button::new("cancel")).clicked() {
            st.cancel.store(true, Ordering::Relaxed);
        }
    });
    if st.job.is_some() {
        let done = st.progress.load(Ordering::Relaxed);
        ui.add(
            egui::ProgressBar::new(done as f32 / st.total.max(1) as f32)
                .text(format!("{done} / {}", st.total)),
        );
        ui.ctx().request_repaint_after(std::time::Duration::from_millis(200));
    }
    ui.horizontal(|ui| {
        let lab = ui.label("records JSON");
        ui.text_edit_singleline(&mut st.json_path).labelled_by(lab.id);
        if ui.button("load").clicked() {
            match std::fs::read(st.json_path.trim())
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Vec<Record>>(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => {
                    st.message = format!("loaded {} records", r.len());
                    st.records = r;
                }
                Err(e) => st.message = format!("{}: {e}", st.json_path.trim()),
            }
        }
    });
    if !st.message.is_empty() {
        ui.label(&st.message);
    }
    let chart = time_chart(&st.records);
    chart_ui(ui, "bench plot", chart, Corner::LeftTop, None, ui.available_height().max(200.0));
}

fn start(ctx: &egui::Context, st: &mut BenchState, gpu: &Gpu, ns: Vec<usize>, inline: bool) {
    let mut kernels = Vec::new();
    if st.flash {
        kernels.push(Kernel::Flash);
    }
    if st.naive {
        kernels.push(Kernel::Naive);
    }
    let configs: Vec<(Kernel, AttnSpec)> = kernels
        .iter()
        .flat_map(|&k| ns.iter().map(move |&n| (k, AttnSpec::new(AttnShape::mha(1, 4, n, n, 64)))))
        .map(|(k, s)| (k, s.causal(st.causal)))
        .collect();
    st.started = true;
    st.total = configs.len();
    st.progress.store(0, Ordering::Relaxed);
    st.cancel.store(false, Ordering::Relaxed);
    st.partial.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    st.message = "running...".into();
    let (gpu, progress, cancel, partial, reps) =
        (gpu.clone(), st.progress.clone(), st.cancel.clone(), st.partial.clone(), st.reps);
    st.job = Some(Job::start(ctx, inline, move || async move {
        let peak = peak::best_reading(&gpu).map_err(|e| e.to_string())?;
        for (kernel, spec) in configs {
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            let mask = if spec.causal { "causal" } else { "dense" };
            let r = run_config(&gpu, kernel, &spec, reps, &peak, false, mask);
            partial.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(r);
            progress.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }));
    if inline {
        st.records = st.partial.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    }
}
