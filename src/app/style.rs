//! How the app's charts look: the palette as egui colours (one colour per series in every
//! panel; the palette itself lives in [`crate::measure::chart`], shared with the CLI's plots),
//! log axes that plot log10 of their values and label ticks with the values in their units
//! ([`Unit`]: 1K tokens, 10 ms, 1 GiB, 3G/s) on powers of two or 1-2-5 steps, and the axes of
//! matrix views (heatmaps, tile maps).

use std::ops::Range;

use egui::{Align2, Color32, FontId, Painter, Rect, Stroke, pos2};
use egui_plot::{
    Bar, BarChart, Corner, GridInput, GridMark, HLine, Legend, Line, LineStyle, Plot, Points, VLine,
};

use crate::measure::chart::series_rgb;
pub use crate::measure::chart::{Axis, ChartData, Mark, MatrixData, Scale, Unit};

/// The colour of the series a legend label names ([`crate::measure::chart::series_rgb`]).
pub(crate) fn series_color(label: &str) -> Color32 {
    let [r, g, b] = series_rgb(label);
    Color32::from_rgb(r, g, b)
}

/// Tick marks for an axis that plots log10 of values in `unit`: powers of two for binary
/// units, 1-2-5, 1-3 or 1 per decade otherwise — the densest set whose marks stay `min_gap`
/// grid units apart (`min_gap` × the plot's minimal step: egui_plot labels a mark only when
/// its `step_size` spans enough pixels, 60 across and 20 up).
fn log_marks(unit: Unit, input: GridInput, min_gap: f64) -> Vec<GridMark> {
    let (lo, hi) = input.bounds;
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return Vec::new();
    }
    let need = input.base_step_size.abs() * min_gap;
    let mut marks: Vec<(f64, f64)> = Vec::new(); // (value, spacing)
    if unit.binary() {
        let unit_step = 2f64.log10();
        let mut stride = 1i64;
        while (stride as f64) * unit_step < need && stride < 1 << 20 {
            stride *= 2;
        }
        let spacing = stride as f64 * unit_step;
        let (a, b) = ((lo / unit_step).floor() as i64, (hi / unit_step).ceil() as i64);
        marks.extend((a..=b).filter(|k| k.rem_euclid(stride) == 0).map(|k| (k as f64 * unit_step, spacing)));
    } else {
        // (multiples per decade, their smallest gap in log10 units)
        let sets: [(&[f64], f64); 3] =
            [(&[1.0, 2.0, 5.0], 2f64.log10()), (&[1.0, 3.0], (10f64 / 3.0).log10()), (&[1.0], 1.0)];
        let (mut steps, mut gap) = sets.iter().find(|(_, g)| *g >= need).copied().unwrap_or((&[1.0], 1.0));
        // a range inside one decade (1.1 to 1.7 tokens/s, say) may hold no 1-2-5 mark: finer
        // multiples then, where they fit
        const FINE: (&[f64], f64) = (&[1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0], 0.0792);
        let within = |set: &[f64]| {
            (lo.floor() as i64..=hi.ceil() as i64)
                .flat_map(|e| set.iter().map(move |m| e as f64 + m.log10()))
                .filter(|v| *v >= lo && *v <= hi)
                .count()
        };
        if within(steps) < 2 && FINE.1 >= need {
            (steps, gap) = FINE;
        }
        let every = if gap >= need { 1 } else { (need / gap).ceil() as i64 };
        let (a, b) = (lo.floor() as i64, hi.ceil() as i64);
        for e in (a..=b).filter(|e| e.rem_euclid(every) == 0) {
            marks.extend(steps.iter().map(|m| (e as f64 + m.log10(), gap * every as f64)));
        }
    }
    marks
        .into_iter()
        .filter(|(v, _)| *v >= lo - 1e-9 && *v <= hi + 1e-9)
        .map(|(value, step_size)| GridMark { value, step_size })
        .collect()
}

/// What the panels drew this frame: the data behind each chart and matrix view, for the
/// export button (`app::export`).
#[derive(Clone, Default)]
pub(crate) struct Drawn {
    /// Each chart's data.
    pub charts: Vec<ChartData>,
    /// Each matrix view's values.
    pub matrices: Vec<MatrixData>,
}

fn drawn_id() -> egui::Id {
    egui::Id::unique("longctx drawn this frame")
}

/// Takes (and clears) what was drawn since the last call.
pub(crate) fn take_drawn(ctx: &egui::Context) -> Drawn {
    ctx.data_mut(|d| d.remove_temp::<Drawn>(drawn_id())).unwrap_or_default()
}

/// Records the values behind a matrix view for export; `m` is called only in a frame that
/// exports ([`exporting`]), as the values can be large.
pub(crate) fn record_matrix(ui: &egui::Ui, m: impl FnOnce() -> MatrixData) {
    if exporting(ui.ctx()) {
        let m = m();
        ui.ctx().data_mut(|d| d.get_temp_mut_or_default::<Drawn>(drawn_id()).matrices.push(m));
    }
}

fn exporting_id() -> egui::Id {
    egui::Id::unique("longctx exporting this frame")
}

/// Marks this frame as one that exports (matrix views then record their values).
pub(crate) fn set_exporting(ctx: &egui::Context, on: bool) {
    ctx.data_mut(|d| d.insert_temp(exporting_id(), on));
}

/// Whether this frame exports.
pub fn exporting(ctx: &egui::Context) -> bool {
    ctx.data(|d| d.get_temp::<bool>(exporting_id())).unwrap_or(false)
}

fn to_color([r, g, b]: [u8; 3]) -> Color32 {
    Color32::from_rgb(r, g, b)
}

/// Draws `chart` — log axes as log10 of the values labelled in their units, linear ones
/// labelled in theirs, each series in its colour and mark — with the legend in `legend`,
/// `height` points high (and `width` wide, else the available width); records its data for
/// export. Points a log axis cannot show (zero, negative) are left out.
pub(crate) fn chart_ui(
    ui: &mut egui::Ui,
    id: &str,
    chart: ChartData,
    legend: Corner,
    width: Option<f32>,
    height: f32,
) -> egui::Response {
    let (x, y) = (chart.x.clone(), chart.y.clone());
    let mut plot = Plot::new(id)
        .legend(Legend::default().position(legend))
        // a category axis names its ticks; its title would sit on their second lines
        .x_axis_label(if x.categories.is_empty() { x.title() } else { String::new() })
        .y_axis_label(y.title())
        .height(height);
    if let Some(w) = width {
        plot = plot.width(w);
    }
    let shown = |a: &Axis, v: f64| a.scale == Scale::Linear || v > 0.0;
    let (ax, ay) = (x.clone(), y.clone());
    plot = plot
        .x_axis_formatter(move |m, _| ax.label_at(m.value))
        .y_axis_formatter(move |m, _| ay.label_at(m.value));
    if x.scale == Scale::Log {
        let unit = x.unit.unwrap_or(Unit::Count);
        plot = plot.x_grid_spacer(move |i| log_marks(unit, i, 11.0));
    } else if !x.categories.is_empty() {
        plot = plot.x_grid_spacer(egui_plot::uniform_grid_spacer(|_| [1.0, 5.0, 10.0]));
    }
    if y.scale == Scale::Log {
        let unit = y.unit.unwrap_or(Unit::Count);
        plot = plot.y_grid_spacer(move |i| log_marks(unit, i, 4.0));
    }
    let response = plot
        .show(ui, |p| {
            for s in &chart.series {
                let pts: Vec<[f64; 2]> = s
                    .points
                    .iter()
                    .filter(|[a, b]| shown(&x, *a) && shown(&y, *b))
                    .map(|&[a, b]| [x.position(a), y.position(b)])
                    .collect();
                let color = to_color(s.rgb);
                let line = |pts: Vec<[f64; 2]>| Line::new(s.label.clone(), pts).color(color).width(1.5);
                match s.mark {
                    Mark::Line => p.line(line(pts)),
                    Mark::Dashed => p.line(line(pts).style(LineStyle::dashed_loose())),
                    Mark::Faint => p.line(line(pts).color(color.gamma_multiply(0.55)).width(1.0)),
                    Mark::LinePoints => {
                        p.line(line(pts.clone()));
                        p.points(Points::new(s.label.clone(), pts).radius(3.0).color(color));
                    }
                    Mark::Points => p.points(Points::new(s.label.clone(), pts).radius(4.0).color(color)),
                    Mark::Bars(w) => {
                        let bars = pts.iter().map(|&[a, b]| Bar::new(a, b).width(w)).collect();
                        p.bar_chart(BarChart::new(s.label.clone(), bars).color(color));
                    }
                    Mark::HLine => {
                        if let Some(&[_, b]) = pts.first() {
                            p.hline(
                                HLine::new(s.label.clone(), b).color(color).style(LineStyle::dashed_dense()),
                            );
                        }
                    }
                    Mark::VLine => {
                        if let Some(&[a, _]) = pts.first() {
                            p.vline(VLine::new(s.label.clone(), a).color(color));
                        }
                    }
                }
            }
        })
        .response;
    ui.ctx().data_mut(|d| d.get_temp_mut_or_default::<Drawn>(drawn_id()).charts.push(chart));
    response
}

/// Room a matrix view leaves at its left for row labels.
pub(crate) const AXIS_LEFT: f32 = 52.0;
/// Room a matrix view leaves below it for column labels.
pub(crate) const AXIS_BOTTOM: f32 = 30.0;

/// Row and column axes of a matrix view drawn in `rect` that shows rows `rows` and columns
/// `cols`: five ticks on each, labelled with the index there, and the axis names (`row_name`
/// at the left, `col_name` below).
pub(crate) fn matrix_axes(
    painter: &Painter,
    rect: Rect,
    rows: Range<usize>,
    cols: Range<usize>,
    row_name: &str,
    col_name: &str,
    text: Color32,
) {
    let font = FontId::proportional(11.0);
    let stroke = Stroke::new(1.0, text.gamma_multiply(0.7));
    for k in 0..=4 {
        let f = k as f32 / 4.0;
        let row = (rows.start + (rows.len() as f32 * f).round() as usize).min(rows.end.saturating_sub(1));
        let col = (cols.start + (cols.len() as f32 * f).round() as usize).min(cols.end.saturating_sub(1));
        let y = rect.top() + f * rect.height();
        let x = rect.left() + f * rect.width();
        painter.line_segment([pos2(rect.left() - 4.0, y), pos2(rect.left(), y)], stroke);
        painter.text(pos2(rect.left() - 6.0, y), Align2::RIGHT_CENTER, row.to_string(), font.clone(), text);
        painter.line_segment([pos2(x, rect.bottom()), pos2(x, rect.bottom() + 4.0)], stroke);
        painter.text(pos2(x, rect.bottom() + 5.0), Align2::CENTER_TOP, col.to_string(), font.clone(), text);
    }
    painter.text(
        pos2(rect.left() - 6.0, rect.bottom() + 17.0),
        Align2::RIGHT_TOP,
        row_name,
        font.clone(),
        text,
    );
    painter.text(
        pos2(rect.right(), rect.bottom() + 17.0),
        Align2::RIGHT_TOP,
        col_name.to_string(),
        font,
        text,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_fall_on_round_values() {
        let input = |lo: f64, hi: f64| GridInput { bounds: (lo, hi), base_step_size: 0.01 };
        let marks = log_marks(Unit::Tokens, input(2.0, 4.0), 11.0); // 100 … 10 000 tokens
        let shown: Vec<String> = marks.iter().map(|m| Unit::Tokens.format(10f64.powf(m.value))).collect();
        assert_eq!(shown, ["128", "256", "512", "1K", "2K", "4K", "8K"]);
        let marks = log_marks(Unit::Millis, input(-0.2, 1.5), 11.0);
        let shown: Vec<String> = marks.iter().map(|m| Unit::Millis.format(10f64.powf(m.value))).collect();
        assert_eq!(shown, ["1 ms", "2 ms", "5 ms", "10 ms", "20 ms"]);
        // dense views thin out: every fourth power of two, every other decade
        let marks = log_marks(Unit::Bytes, input(3.0, 12.0), 100.0); // a grid unit is 1.0 log10
        let shown: Vec<String> = marks.iter().map(|m| Unit::Bytes.format(10f64.powf(m.value))).collect();
        assert_eq!(shown, ["4 KiB", "64 KiB", "1 MiB", "16 MiB", "256 MiB", "4 GiB", "64 GiB"]);
        let marks = log_marks(Unit::PerSecond, input(0.0, 8.0), 150.0);
        let shown: Vec<String> = marks.iter().map(|m| Unit::PerSecond.format(10f64.powf(m.value))).collect();
        assert_eq!(shown, ["1/s", "100/s", "10k/s", "1M/s", "100M/s"]);
        assert!(marks.iter().all(|m| m.step_size >= 1.5), "labels need their spacing");
        // inside one decade (decoding at 1.1 to 1.7 tokens/s) finer multiples, where they fit
        let marks = log_marks(Unit::PerSecond, input(0.03, 0.24), 4.0);
        let shown: Vec<String> = marks.iter().map(|m| Unit::PerSecond.format(10f64.powf(m.value))).collect();
        assert_eq!(shown, ["1.2/s", "1.5/s"]);
        let crowded = GridInput { bounds: (0.03, 0.24), base_step_size: 0.05 };
        assert!(log_marks(Unit::PerSecond, crowded, 4.0).is_empty(), "no room for finer marks");
    }
}
