//! Memory-traffic panel: device-memory bytes of naive and flash as N grows (modelled from
//! each kernel's loops, and measured by the instrumented kernels), an animated tile schedule,
//! and a workgroup-memory slider showing traffic follow Θ(N²D²/SRAM).

use egui::{Color32, Rect, Sense, Vec2, pos2};
use egui_plot::{Corner, Line, Points};

use super::style::{Unit, log_log, log10, series_color};

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
    measured: Vec<(String, usize, u64)>,
    measure_job: Option<Job<Vec<(String, usize, u64)>>>,
    /// Workgroup memory of the IO-bound plot, in KiB.
    pub sram_kib: f32,
    /// Whether the tile schedule animates.
    pub playing: bool,
}

impl Default for TrafficState {
    fn default() -> Self {
        Self { model: None, measured: Vec::new(), measure_job: None, sram_kib: 32.0, playing: true }
    }
}

fn modelled(gpu: &Gpu, settings: &Settings) -> Vec<(usize, u64, u64)> {
    NS.iter()
        .filter_map(|&n| {
            let spec = settings.spec(n, settings.d).ok()?;
            let flash = Attention::new(gpu, Kernel::Flash, &spec).ok()?.traffic_model().total();
            Some((n, crate::kernels::naive::traffic(&spec).total(), flash))
        })
        .collect()
}

fn measure(gpu: &Gpu, settings: &Settings) -> Result<Vec<(String, usize, u64)>, String> {
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
            let attn = Attention::instrumented(gpu, kernel, &spec).map_err(|e| e.to_string())?;
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            attn.encode(gpu, &mut enc, &io.buffers()).map_err(|e| e.to_string())?;
            gpu.queue.submit([enc.finish()]);
            if let Some(t) = attn.measured_traffic(gpu).map_err(|e| e.to_string())? {
                out.push((kernel.name().to_string(), n, t.total()));
            }
        }
    }
    Ok(out)
}

/// Draws modelled (and, on request, measured) device-memory bytes of naive and flash
/// against N for `settings`, the workgroup-memory plot and the tile-schedule animation.
pub fn traffic_ui(ui: &mut egui::Ui, st: &mut TrafficState, settings: &Settings, gpu: &Gpu, inline: bool) {
    if st.model.as_ref().is_none_or(|m| &m.0 != settings) {
        st.model = Some((settings.clone(), modelled(gpu, settings)));
        st.measured.clear();
    }
    if let Some(r) = st.measure_job.as_ref().and_then(Job::poll) {
        st.measure_job = None;
        if let Ok(m) = r {
            st.measured = m;
        }
    }
    let log = |x: f64| log10(x, 1.0);
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
            let (gpu, s) = (gpu.clone(), settings.clone());
            st.measure_job = Some(Job::start(ui.ctx(), inline, move || measure(&gpu, &s)));
        }
    });
    ui.columns(2, |cols| {
        log_log(
            "traffic vs n",
            Unit::Tokens,
            "sequence length N",
            Unit::Bytes,
            "device memory moved",
            Corner::LeftTop,
        )
        .height(260.0)
        .show(&mut cols[0], |p| {
            p.line(
                Line::new(
                    "naive (model)",
                    model.iter().map(|&(n, nv, _)| [log(n as f64), log(nv as f64)]).collect::<Vec<_>>(),
                )
                .color(series_color("naive")),
            );
            p.line(
                Line::new(
                    "flash (model)",
                    model.iter().map(|&(n, _, f)| [log(n as f64), log(f as f64)]).collect::<Vec<_>>(),
                )
                .color(series_color("flash")),
            );
            for kernel in ["naive", "flash"] {
                let pts: Vec<[f64; 2]> = st
                    .measured
                    .iter()
                    .filter(|m| m.0 == kernel)
                    .map(|m| [log(m.1 as f64), log(m.2 as f64)])
                    .collect();
                if !pts.is_empty() {
                    p.points(
                        Points::new(format!("{kernel} (measured)"), pts)
                            .radius(4.0)
                            .color(series_color(kernel)),
                    );
                }
            }
        });
        sram_ui(&mut cols[1], st, settings);
    });
    ui.separator();
    schedule_ui(ui, st, settings);
}

/// FlashAttention's IO bound with tiles sized to the workgroup memory: Bc = SRAM/(4·D·4 B),
/// Br = min(Bc, D); K and V are streamed once per query tile: 2·N·M·D·4/Br bytes.
fn sram_ui(ui: &mut egui::Ui, st: &mut TrafficState, settings: &Settings) {
    ui.add(egui::Slider::new(&mut st.sram_kib, 4.0..=228.0).logarithmic(true).text("workgroup memory KiB"));
    let d = settings.d as f64;
    let sram = st.sram_kib as f64 * 1024.0;
    let bc = (sram / (4.0 * d * 4.0)).floor().max(1.0);
    let br = bc.min(d);
    ui.label(format!("tiles Br = {br}, Bc = {bc}: K/V bytes = 2·N^2·D·4/Br ~ N^2D^2/SRAM"));
    let log = |x: f64| log10(x, 1.0);
    log_log(
        "traffic vs sram",
        Unit::Tokens,
        "sequence length N",
        Unit::Bytes,
        "device memory moved",
        Corner::LeftTop,
    )
    .height(220.0)
    .show(ui, |p| {
        let flash: Vec<[f64; 2]> = NS
            .iter()
            .map(|&n| [log(n as f64), log(2.0 * (n * n) as f64 * d * 4.0 / br + 2.0 * n as f64 * d * 4.0)])
            .collect();
        let naive: Vec<[f64; 2]> =
            NS.iter().map(|&n| [log(n as f64), log((n * n) as f64 * (2.0 * d + 5.0) * 4.0)]).collect();
        p.line(Line::new(format!("flash, {:.0} KiB", st.sram_kib), flash).color(series_color("flash")));
        p.line(Line::new("naive (no reuse)", naive).color(series_color("naive")));
    });
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
    let side = 220.0;
    let (rect, _) = ui.allocate_exact_size(
        Vec2::new(side * map.n_ktiles as f32 / map.n_qtiles as f32, side),
        Sense::hover(),
    );
    let painter = ui.painter_at(rect);
    let (cw, ch) = (rect.width() / map.n_ktiles as f32, rect.height() / map.n_qtiles as f32);
    for (idx, &(qt, kt)) in steps.iter().enumerate() {
        let color = if idx == step {
            Color32::from_rgb(253, 231, 37)
        } else if idx < step {
            Color32::from_rgb(59, 82, 139)
        } else {
            Color32::from_rgb(33, 145, 140)
        };
        let min = pos2(rect.left() + kt as f32 * cw, rect.top() + qt as f32 * ch);
        painter.rect_filled(Rect::from_min_size(min, Vec2::new(cw - 1.0, ch - 1.0)), 1.0, color);
    }
    painter.rect_stroke(
        Rect::from_min_size(pos2(rect.left(), rect.top() + qt_now as f32 * ch), Vec2::new(rect.width(), ch)),
        0.0,
        egui::Stroke::new(2.0, Color32::WHITE),
        egui::StrokeKind::Inside,
    );
}
