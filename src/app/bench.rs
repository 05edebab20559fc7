//! Benchmarks panel: run a sweep on the app's device with progress and cancel; time against
//! N on log–log axes with fitted slopes; load records written by `longctx bench --json`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use egui_plot::{Corner, Line, Points};

use super::style::{Unit, log_log, log10, series_color};

use super::Job;
use crate::contract::spec::{AttnShape, AttnSpec};
use crate::kernels::Kernel;
use crate::kernels::peak;
use crate::measure::bench::{Record, fitted_exponent, run_config};
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
        }
    }
}

fn parse_sizes(text: &str) -> Result<Vec<usize>, String> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let t = s.trim().to_lowercase();
            let (num, mul) = t.strip_suffix('k').map_or((t.as_str(), 1), |x| (x, 1024));
            num.parse::<usize>().map(|v| v * mul).map_err(|_| format!("size `{s}`: expected e.g. 512 or 4k"))
        })
        .collect()
}

/// Draws the sweep controls (started as a [`Job`], inline when `inline`), the JSON loader
/// and time against N on log–log axes with a fitted exponent per curve.
pub fn bench_ui(ui: &mut egui::Ui, st: &mut BenchState, gpu: &Gpu, inline: bool) {
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
    // curves by (kernel, mask, D, heads)
    let mut curves: Vec<(String, Vec<[f64; 2]>)> = Vec::new();
    for r in st.records.iter().filter(|r| r.ms_median.is_some()) {
        let key = format!("{} {} D={} H={}", r.kernel, r.mask, r.d, r.heads);
        let p = [r.n as f64, r.ms_median.unwrap_or_default()];
        match curves.iter_mut().find(|c| c.0 == key) {
            Some(c) => c.1.push(p),
            None => curves.push((key, vec![p])),
        }
    }
    let log = |x: f64| log10(x, 1e-9);
    log_log("bench plot", Unit::Tokens, "sequence length N", Unit::Millis, "time per call", Corner::LeftTop)
        .height(ui.available_height().max(200.0))
        .show(ui, |p| {
            for (name, pts) in &curves {
                let slope = fitted_exponent(&pts.iter().map(|x| (x[0], x[1])).collect::<Vec<_>>());
                let label = match slope {
                    Some(k) => format!("{name}: time ~ N^{k:.2}"),
                    None => name.clone(),
                };
                let lp: Vec<[f64; 2]> = pts.iter().map(|x| [log(x[0]), log(x[1])]).collect();
                let color = series_color(name);
                p.line(Line::new(label.clone(), lp.clone()).color(color));
                p.points(Points::new(label, lp).radius(3.0).color(color));
            }
        });
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
    st.total = configs.len();
    st.progress.store(0, Ordering::Relaxed);
    st.cancel.store(false, Ordering::Relaxed);
    st.partial.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    st.message = "running...".into();
    let (gpu, progress, cancel, partial, reps) =
        (gpu.clone(), st.progress.clone(), st.cancel.clone(), st.partial.clone(), st.reps);
    st.job = Some(Job::start(ctx, inline, move || {
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
