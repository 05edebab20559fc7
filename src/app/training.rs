//! Training panel: the loss curves of `longctx train` runs (re-read while they train) and
//! the extrapolation chart of `longctx eval --json` results — validation bits per byte
//! against evaluation length, one curve per positional scheme, the training length marked.

use std::path::Path;
use std::time::{Duration, Instant};

use egui::Color32;
use egui_plot::Corner;

use super::style::{Axis, ChartData, Mark, Unit, chart_ui};
use crate::measure::chart::{PALETTE, series_rgb};

use crate::models::gpt::PosScheme;
use crate::models::training::{EvalReport, LogRow, extrapolation_curves, parse_log_csv};

/// Where the README's runs and results live in the repository.
pub(crate) const COMMITTED_RUNS: &str = "assets/training";

/// The training-length marker's colour (the palette's grey).
const GREY: [u8; 3] = PALETTE[7];

/// How often a live view re-reads the logs.
const REFRESH: Duration = Duration::from_secs(2);

/// The panel's inputs and what it read.
pub struct TrainingState {
    /// A directory of runs: each subdirectory with a `log.csv` is one curve.
    pub runs_dir: String,
    /// Re-read the logs every two seconds (a run in progress).
    pub live: bool,
    /// Runs read: (name, log).
    pub runs: Vec<(String, Vec<LogRow>)>,
    /// A `longctx eval --json` file.
    pub results_path: String,
    /// The evaluations read.
    pub results: Vec<EvalReport>,
    /// Show the sliding-window curves beside the non-overlapping ones.
    pub sliding: bool,
    /// Read errors, one line each.
    pub message: String,
    read_at: Option<Instant>,
}

impl Default for TrainingState {
    fn default() -> Self {
        Self {
            runs_dir: COMMITTED_RUNS.into(),
            live: false,
            runs: Vec::new(),
            results_path: format!("{COMMITTED_RUNS}/extrapolation.json"),
            results: Vec::new(),
            sliding: true,
            message: String::new(),
            read_at: None,
        }
    }
}

/// Reads every `DIR/*/log.csv` (sorted by name) and the results file.
pub(crate) fn reload(st: &mut TrainingState) {
    let mut errors = Vec::new();
    let mut runs = Vec::new();
    match std::fs::read_dir(st.runs_dir.trim()) {
        Ok(entries) => {
            let mut dirs: Vec<_> =
                entries.flatten().map(|e| e.path()).filter(|p| p.join("log.csv").is_file()).collect();
            dirs.sort();
            for dir in dirs {
                let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                match std::fs::read_to_string(dir.join("log.csv"))
                    .map_err(|e| e.to_string())
                    .and_then(|t| parse_log_csv(&t).map_err(|e| e.to_string()))
                {
                    Ok(rows) => runs.push((name, rows)),
                    Err(e) => errors.push(format!("{}: {e}", dir.display())),
                }
            }
        }
        Err(e) => errors.push(format!("{}: {e}", st.runs_dir.trim())),
    }
    st.runs = runs;
    let path = Path::new(st.results_path.trim());
    if !st.results_path.trim().is_empty() {
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Vec<EvalReport>>(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => st.results = r,
            Err(e) => errors.push(format!("{}: {e}", path.display())),
        }
    }
    st.message = errors.join("\n");
    st.read_at = Some(Instant::now());
}

fn scheme_of(name: &str) -> Option<PosScheme> {
    PosScheme::parse(name.split(['-', '_', '.']).next().unwrap_or(name)).ok()
}

/// Draws the controls, the loss curves (left) and the extrapolation chart (right).
pub(crate) fn training_ui(ui: &mut egui::Ui, st: &mut TrainingState) {
    if st.read_at.is_none() || (st.live && st.read_at.is_some_and(|t| t.elapsed() >= REFRESH)) {
        reload(st);
    }
    if st.live {
        ui.ctx().request_repaint_after(REFRESH);
    }
    ui.horizontal(|ui| {
        let lab = ui.label("runs directory");
        ui.text_edit_singleline(&mut st.runs_dir).labelled_by(lab.id);
        ui.checkbox(&mut st.live, "live (re-read every 2 s)");
        let lab = ui.label("eval results");
        ui.text_edit_singleline(&mut st.results_path).labelled_by(lab.id);
        ui.checkbox(&mut st.sliding, "sliding windows");
        if ui.button("reload").clicked() {
            reload(st);
        }
    });
    if !st.message.is_empty() {
        ui.colored_label(Color32::from_rgb(200, 80, 60), &st.message);
    }
    let height = (ui.available_height() - 30.0).max(200.0);
    let width = (ui.available_width() / 2.0 - 8.0).max(200.0);
    ui.horizontal(|ui| {
        ui.vertical(|ui| {
            ui.strong("Training loss (bits per byte) by step");
            loss_plot(ui, st, width, height);
        });
        ui.vertical(|ui| {
            let train_len = st.results.first().map_or(0, |r| r.train_len);
            ui.strong(format!(
                "Validation bits per byte by evaluation length (trained at L = {train_len}; lower is better)"
            ));
            extrapolation_plot(ui, st, width, height);
        });
    });
}

fn loss_plot(ui: &mut egui::Ui, st: &TrainingState, width: f32, height: f32) {
    let bits = std::f64::consts::LN_2;
    let mut chart =
        ChartData::new("training loss by step", Axis::linear("step"), Axis::linear("bits per byte"));
    for (name, rows) in &st.runs {
        // a run is coloured by its scheme (its directory's name) and its learned sparse
        // attention where it says so, train and validation alike
        let rgb = match scheme_of(name) {
            Some(pos) if name.contains("moba") => series_rgb(&format!("{} moba", pos.name())),
            Some(pos) if name.contains("nsa") => series_rgb(&format!("{} nsa", pos.name())),
            Some(pos) if name.contains("dsa") => series_rgb(&format!("{} dsa", pos.name())),
            Some(pos) => series_rgb(pos.name()),
            None => series_rgb(name),
        };
        let train = rows.iter().map(|r| [r.step as f64, r.loss as f64 / bits]).collect();
        chart.add(format!("{name} (train)"), Mark::Faint, train).rgb = rgb;
        let val = rows.iter().filter_map(|r| r.val_loss.map(|v| [r.step as f64, v as f64 / bits])).collect();
        chart.add(format!("{name} (validation)"), Mark::LinePoints, val).rgb = rgb;
    }
    chart_ui(ui, "training loss", chart, Corner::RightTop, Some(width), height);
}

fn extrapolation_plot(ui: &mut egui::Ui, st: &TrainingState, width: f32, height: f32) {
    let mut chart = ChartData::new(
        "validation bits per byte by evaluation length",
        Axis::log("evaluation length L", Unit::Tokens),
        Axis::linear("validation bits per byte"),
    );
    if let Some(r) = st.results.first() {
        chart.add("training length", Mark::VLine, vec![[r.train_len as f64, 0.0]]).rgb = GREY;
    }
    for (label, dashed, pts) in extrapolation_curves(&st.results, st.sliding) {
        chart.add(label, if dashed { Mark::Dashed } else { Mark::LinePoints }, pts);
    }
    chart_ui(ui, "extrapolation", chart, Corner::LeftTop, Some(width), height);
}
