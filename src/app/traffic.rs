//! Memory-traffic panel: device-memory bytes of naive and flash as N grows (modelled from
//! each kernel's loops, and measured by the instrumented kernels), an animated tile schedule,
//! and a workgroup-memory slider showing traffic follow Θ(N²D²/SRAM).

use egui::{Color32, Rect, Sense, Vec2, pos2};
use egui_plot::Corner;

use super::style::{Axis, ChartData, Mark, Unit, chart_ui};

use super::Job;
use super::patterns::Settings;
use crate::kernels::{Attention, DeviceTensors, Kernel};
use crate::runtime::Gpu;

const NS: [usize; 8] = [128, 256, 512, 1024, 2048, 4096, 8192, 16384];

/// The memory-traffic panel's state: modelled and measured curves, slider, animation.
/// (N, naive bytes, flash bytes) per modelled size.
type ModelPoints = Vec<(usize, u64, u64)>;

pub struct TrafficState {
    /// (settings, [(N, naive model, flash model)]).
    model: Option<(Settings, ModelPoints)>,
    /// (kernel, N, bytes) counted by the instrumented kernels, when asked.
    pub measured: Vec<(String, usize, u64)>,
    measure_job: Option<Job<Vec<(String, usize, u64)>>>,
    /// Why the last measurement failed.
    pub error: Option<String>,
    /// Workgroup memory of the IO-bound plot, in KiB.
    pub sram_kib: f32,
    /// Whether the tile schedule animates.
    pub playing: bool,
}

impl Default for TrafficState {
    fn default() -> Self {
        Self {
            model: None,
            measured: Vec::new(),
            measure_job: None,
            error: None,
            sram_kib: 32.0,
            playing: true,
        }
    }
}

impl TrafficState {
    /// Starts counting the bytes naive and flash move at N = 128…1K with their instrumented
    /// variants, as a [`Job`] (inline when `inline`); the panel's measure button.
    pub fn start_measuring(&mut self, ctx: &egui::Context, gpu: &Gpu, settings: &Settings, inline: bool) {
        let (gpu, s) = (gpu.clone(), settings.clone());
        self.measure_job = Some(Job::start(ctx, inline, move || async move { measure(&gpu, &s).await }));
    }
}

fn modelled(gpu: &Gpu, settings: &Settings) -> Vec<(usize, u64, u64)> {
    NS.iter()
        .filter_map(|&n| {
            let spec = settings.spec(n, settings.d).ok()?;
            let flash = Attention::new(gpu, Kernel::Flash, &spec).ok()?.traffic_model().total();
            Some((n, crate::kernels::attention::naive::traffic(&spec).total(), flash))
        })
        .collect()
}

async fn measure(gpu: &Gpu, settings: &Settings) -> Result<Vec<(String, usize, u64)>, String> {
    let mut out = Vec::new();
    for n in [128, 256, 512, 1024] {
        let spec = settings.spec(n, settings.d).map_err(|e| e.to_string())?;
        let x = vec![0.01f32; spec.shape.q_len().max(spec.shape.kv_len())];
        let io = DeviceTensors::upload(
            gpu,
            &spec,
            &x[..spec.shape.q_len()],
            &x[..spec.shape.kv_len()],
            &x[..spec.shape.kv_len()],
        )
        .map_err(|e| e.to_string())?;
        for kernel in [Kernel::Naive, Kernel::Flash] {
            let attn = Attention::builder(&spec)
                .kernel(kernel)
                .instrumented(true)
                .build(gpu)
                .map_err(|e| e.to_string())?;
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            attn.encode(gpu, &mut enc, &io.buffers()).map_err(|e| e.to_string())?;
            gpu.queue.submit([enc.finish()]);
            if let Some(t) = attn.measured_traffic_async(gpu).await.map_err(|e| e.to_string())? {
                out.push((kernel.name().to_string(), n, t.total()));
            }
        }
    }
    Ok(out)
}

/// Draws modelled (and, on request, measured) device-memory bytes of naive and flash
/// against N for `settings`, the workgroup-memory plot and the tile-schedule animation.
pub(crate) fn traffic_ui(
    ui: &mut egui::Ui,
    st: &mut TrafficState,
    settings: &Settings,
    gpu: &Gpu,
    inline: bool,
) {
    if st.model.as_ref().is_none_or(|m| &m.0 != settings) {
        st.model = Some((settings.clone(), modelled(gpu, settings)));
        st.measured.clear();
    }
    if let Some(r) = st.measure_job.as_ref().and_then(Job::poll) {
        st.measure_job = None;
        match r {
            Ok(m) => (st.measured, st.error) = (m, None),
            Err(e) => st.error = Some(e),
        }
    }
    let Some(model) = st.model.as_ref().map(|m| m.1.clone()) else { return };
    ui.horizontal(|ui| {
        ui.label(format!(
            "device-memory bytes per call, D = {}, H = {}, current mask",
            settings.d, settings.heads
        ));
        if ui
            .add_enabled(
                st.measure_job.is_none(),
                egui::Button::new("measure (instrumented kernels, N <= 1K)"),
            )
            .clicked()
        {
            st.start_measuring(ui.ctx(), gpu, settings, inline);
        }
        if let Some(e) = &st.error {
            ui.colored_label(egui::Color32::RED, e);
        }
    });
    // the charts take half the height, the schedule the rest
    let chart_height = ((ui.available_height() - 90.0) * 0.5).clamp(200.0, 460.0);
    ui.columns(2, |cols| {
        let mut chart = ChartData::new(
            "device memory moved per call",
            Axis::log("sequence length N", Unit::Tokens),
            Axis::log("device memory moved", Unit::Bytes),
        );
        chart.add(
            "naive (model)",
            Mark::Line,
            model.iter().map(|&(n, nv, _)| [n as f64, nv as f64]).collect(),
        );
        chart.add("flash (model)", Mark::Line, model.iter().map(|&(n, _, f)| [n as f64, f as f64]).collect());
        for kernel in ["naive", "flash"] {
            let pts: Vec<[f64; 2]> =
                st.measured.iter().filter(|m| m.0 == kernel).map(|m| [m.1 as f64, m.2 as f64]).collect();
            if !pts.is_empty() {
                chart.add(format!("{kernel} (measured)"), Mark::Points, pts);
            }
        }
        chart_ui(&mut cols[0], "traffic vs n", chart, Corner::LeftTop, None, chart_height);
        sram_ui(&mut cols[1], st, settings, chart_height);
    });
    ui.separator();
    schedule_ui(ui, st, settings);
}

/// FlashAttention's IO bound with tiles sized to the workgroup memory: Bc = SRAM/(4·D·4 B),
/// Br = min(Bc, D); K and V are streamed once per query tile: 2·N·M·D·4/Br bytes.
fn sram_ui(ui: &mut egui::Ui, st: &mut TrafficState, settings: &Settings, height: f32) {
    ui.add(egui::Slider::new(&mut st.sram_kib, 4.0..=228.0).logarithmic(true).text("workgroup memory KiB"));
    let d = settings.d as f64;
    let sram = st.sram_kib as f64 * 1024.0;
    let bc = (sram / (4.0 * d * 4.0)).floor().max(1.0);
    let br = bc.min(d);
    ui.label(format!("tiles Br = {br}, Bc = {bc}: K/V bytes = 2·N^2·D·4/Br ~ N^2D^2/SRAM"));
    let mut chart = ChartData::new(
        "IO bound against workgroup memory",
        Axis::log("sequence length N", Unit::Tokens),
        Axis::log("device memory moved", Unit::Bytes),
    );
    let flash =
        NS.iter().map(|&n| [n as f64, 2.0 * (n * n) as f64 * d * 4.0 / br + 2.0 * n as f64 * d * 4.0]);
    chart.add(format!("flash, {:.0} KiB", st.sram_kib), Mark::Line, flash.collect());
    let naive = NS.iter().map(|&n| [n as f64, (n * n) as f64 * (2.0 * d + 5.0) * 4.0]);
    chart.add("naive (no reuse)", Mark::Line, naive.collect());
    chart_ui(ui, "traffic vs sram", chart, Corner::LeftTop, None, height - 40.0);
}

/// An animated walk of flash's tile loop on an 8×8-tile example of the current mask.
fn schedule_ui(ui: &mut egui::Ui, st: &mut TrafficState, settings: &Settings) {
    let tiles = 8usize;
    let tile = 64usize;
    let Ok(spec) = settings.spec(tiles * tile, settings.d) else { return };
    let Ok(map) = crate::contract::blockmap::BlockMap::build(&spec, tile, tile.min(32)) else { return };
    let steps: Vec<(usize, u32)> = (0..map.n_qtiles)
        .flat_map(|qt| map.row(0, qt).iter().map(move |&e| (qt, e & !crate::contract::blockmap::FULL)))
        .collect();
    ui.horizontal(|ui| {
        ui.checkbox(&mut st.playing, "animate the tile schedule");
        ui.label(format!(
            "N = {} in {}×{} tiles: {} K/V tiles streamed",
            tiles * tile,
            map.n_qtiles,
            map.n_ktiles,
            steps.len()
        ));
    });
    if steps.is_empty() {
        return;
    }
    let t = ui.input(|i| i.time);
    let step = if st.playing { (t * 4.0) as usize % steps.len() } else { 0 };
    if st.playing {
        ui.ctx().request_repaint_after(std::time::Duration::from_millis(250));
    }
    let (qt_now, kt_now) = steps[step];
    let tile_bytes = (2 * map.bc * settings.d * 4) as u64;
    ui.label(format!(
        "query tile {qt_now} sits in workgroup memory; K/V tile {kt_now} is streaming; K/V bytes so far {} of {}",
        (step as u64 + 1) * tile_bytes,
        steps.len() as u64 * tile_bytes
    ));
    // done, now, to come
    const COLORS: [(Color32, &str); 3] = [
        (Color32::from_rgb(59, 82, 139), "K/V tiles already streamed past this query tile"),
        (Color32::from_rgb(253, 231, 37), "the K/V tile streaming now"),
        (Color32::from_rgb(33, 145, 140), "to come"),
    ];
    let side = (ui.available_height() - 12.0).clamp(160.0, 520.0);
    ui.horizontal(|ui| {
        let (rect, _) = ui.allocate_exact_size(
            Vec2::new(side * map.n_ktiles as f32 / map.n_qtiles as f32, side),
            Sense::hover(),
        );
        let painter = ui.painter_at(rect);
        let (cw, ch) = (rect.width() / map.n_ktiles as f32, rect.height() / map.n_qtiles as f32);
        for (idx, &(qt, kt)) in steps.iter().enumerate() {
            let color = COLORS[if idx < step {
                0
            } else if idx == step {
                1
            } else {
                2
            }]
            .0;
            let min = pos2(rect.left() + kt as f32 * cw, rect.top() + qt as f32 * ch);
            painter.rect_filled(Rect::from_min_size(min, Vec2::new(cw - 1.0, ch - 1.0)), 1.0, color);
        }
        painter.rect_stroke(
            Rect::from_min_size(
                pos2(rect.left(), rect.top() + qt_now as f32 * ch),
                Vec2::new(rect.width(), ch),
            ),
            0.0,
            egui::Stroke::new(2.0, Color32::WHITE),
            egui::StrokeKind::Inside,
        );
        ui.add_space(16.0);
        ui.vertical(|ui| {
            ui.label("rows: query tiles (the white row sits in workgroup memory)");
            ui.label("columns: key/value tiles, streamed from device memory");
            for (color, what) in COLORS {
                ui.horizontal(|ui| {
                    let (r, _) = ui.allocate_exact_size(Vec2::splat(14.0), Sense::hover());
                    ui.painter().rect_filled(r, 2.0, color);
                    ui.label(what);
                });
            }
            ui.label("empty cells: tiles the mask skips, never loaded");
        });
    });
}
