//! Export from every view: the panel as a PNG (a screenshot cropped to it) and the data
//! behind each of its charts and matrix views as CSV and JSON, into one directory; each file
//! is written all or nothing ([`crate::io::write_atomic`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use egui::{ColorImage, Rect};

use super::style::{self, Drawn};
use crate::measure::chart::slug;

/// The export menu's state.
pub struct ExportState {
    /// The directory files are written to (created when missing).
    pub dir: String,
    requested: bool,
    /// What the last export wrote, or why it failed; the PNG's line arrives a frame later.
    pub status: Arc<Mutex<Vec<String>>>,
}

impl Default for ExportState {
    fn default() -> Self {
        Self { dir: "longctx-export".into(), requested: false, status: Default::default() }
    }
}

impl ExportState {
    /// Exports the shown panel at the end of the next frame.
    pub fn request(&mut self) {
        self.requested = true;
    }

    /// The last export's report, one line per file or error.
    pub fn report(&self) -> Vec<String> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The export menu: the directory and the button (not in the page: it has no file system).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn export_ui(ui: &mut egui::Ui, st: &mut ExportState) {
    ui.menu_button("export", |ui| {
        ui.horizontal(|ui| {
            let l = ui.label("directory");
            ui.text_edit_singleline(&mut st.dir).labelled_by(l.id);
        });
        if ui.button("export this panel (PNG, CSV, JSON)").clicked() {
            st.request();
        }
        for line in st.report() {
            ui.weak(line);
        }
    });
}

/// Called before the panels draw: matrix views record their values only in a frame that
/// exports.
pub(crate) fn begin_frame(ctx: &egui::Context, st: &ExportState) {
    style::set_exporting(ctx, st.requested);
}

/// Called after the panels drew: clears what they recorded, or, when an export was asked
/// for, writes it as `DIR/<panel>-<chart>.csv|json` and asks for a screenshot that becomes
/// `DIR/<panel>.png` (cropped to `rect`, the panel).
pub(crate) fn end_frame(ctx: &egui::Context, st: &mut ExportState, panel: &str, rect: Rect) {
    let drawn = style::take_drawn(ctx);
    if !std::mem::take(&mut st.requested) {
        return;
    }
    style::set_exporting(ctx, false);
    let dir = PathBuf::from(st.dir.trim());
    let panel = slug(panel);
    let mut report = match write_data(&dir, &panel, &drawn) {
        Ok(lines) => lines,
        Err(e) => vec![e],
    };
    let status = st.status.clone();
    if report.iter().all(|l| !l.starts_with("error")) {
        let png = dir.join(format!("{panel}.png"));
        let ppp = ctx.pixels_per_point();
        let callback = egui::ScreenshotCallback::new(move |image| {
            let line = match write_png(&png, &image, rect, ppp) {
                Ok(()) => format!("wrote {}", png.display()),
                Err(e) => format!("error: {}: {e}", png.display()),
            };
            status.lock().unwrap_or_else(PoisonError::into_inner).push(line);
        });
        ctx.send_viewport_cmd(egui::ViewportCommand::Screenshot(callback));
        ctx.request_repaint();
    }
    report.insert(0, format!("export of {panel} to {}:", dir.display()));
    *st.status.lock().unwrap_or_else(PoisonError::into_inner) = report;
}

/// Writes each chart's and matrix's CSV and JSON; returns a line per file.
fn write_data(dir: &Path, panel: &str, drawn: &Drawn) -> Result<Vec<String>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("error: creating {}: {e}", dir.display()))?;
    let mut files: Vec<(String, String, String)> = Vec::new(); // (stem, csv, json)
    for c in &drawn.charts {
        files.push((slug(&c.title), c.to_csv(), c.to_json()));
    }
    for m in &drawn.matrices {
        files.push((slug(&m.title), m.to_csv(), m.to_json()));
    }
    let mut lines = Vec::new();
    let mut used: Vec<String> = Vec::new();
    for (stem, csv, json) in files {
        // two charts with one title get -2, -3 …
        let mut name = format!("{panel}-{stem}");
        let mut k = 2;
        while used.contains(&name) {
            name = format!("{panel}-{stem}-{k}");
            k += 1;
        }
        used.push(name.clone());
        for (ext, text) in [("csv", csv), ("json", json)] {
            let path = dir.join(format!("{name}.{ext}"));
            crate::io::write_atomic(&path, text.as_bytes()).map_err(|e| format!("error: {e}"))?;
            lines.push(format!("wrote {}", path.display()));
        }
    }
    if lines.is_empty() {
        lines.push("this panel has no chart data; its PNG only".into());
    }
    Ok(lines)
}

/// The part of a screenshot under `rect` (points; `ppp` pixels per point) as a PNG file.
fn write_png(path: &Path, image: &ColorImage, rect: Rect, ppp: f32) -> Result<(), String> {
    let [w, h] = image.size;
    let clamp = |v: f32, hi: usize| ((v * ppp).round().max(0.0) as usize).min(hi);
    let (x0, x1) = (clamp(rect.left(), w), clamp(rect.right(), w));
    let (y0, y1) = (clamp(rect.top(), h), clamp(rect.bottom(), h));
    if x1 <= x0 || y1 <= y0 {
        return Err(format!("the panel ({rect:?}) lies outside the {w}×{h} screenshot"));
    }
    let mut rgba = Vec::with_capacity((x1 - x0) * (y1 - y0) * 4);
    for y in y0..y1 {
        for px in &image.pixels[y * w + x0..y * w + x1] {
            rgba.extend_from_slice(&px.to_srgba_unmultiplied());
        }
    }
    let mut bytes = Vec::new();
    let mut enc = png::Encoder::new(&mut bytes, (x1 - x0) as u32, (y1 - y0) as u32);
    enc.set_color(png::ColorType::Rgba);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&rgba).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    crate::io::write_atomic(path, &bytes).map_err(|e| e.to_string())
}
