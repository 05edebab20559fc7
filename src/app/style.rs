//! One palette and one kind of log axis for every chart of the app.
//!
//! **Palette**: a series is known by the name its legend starts with — `flash`, `naive`,
//! `MHA`, `GQA`, `MQA`, a GPU (`A100`, `H100`, `H200`, …), a CoLT5 branch, a positional scheme —
//! and has that one colour in every panel ([`series_color`]). The colours are Okabe and Ito's
//! colour-blind-safe set.
//!
//! **Log axes**: a chart on log scales plots log10 of its values and labels the ticks with the
//! values themselves in their unit ([`Unit`]): tokens as 256, 1K, 64K, 1M (powers of two),
//! times as 10 ms or 2 s, bytes as 1 KiB … 1 GiB (powers of two), rates as 10 k/s or 3 G/s.

use std::ops::Range;

use egui::{Align2, Color32, FontId, Painter, Rect, Stroke, pos2};
use egui_plot::{Corner, GridInput, GridMark, Legend, Plot};

/// Okabe–Ito: blue, vermillion, bluish green, orange, reddish purple, sky blue, yellow, grey.
pub const PALETTE: [Color32; 8] = [
    Color32::from_rgb(0, 114, 178),
    Color32::from_rgb(213, 94, 0),
    Color32::from_rgb(0, 158, 115),
    Color32::from_rgb(230, 159, 0),
    Color32::from_rgb(204, 121, 167),
    Color32::from_rgb(86, 180, 233),
    Color32::from_rgb(240, 228, 66),
    Color32::from_rgb(128, 128, 128),
];

/// Series names and their palette entries, matched case-insensitively against the start of
/// a legend label (longest first, so `GQA (8)` is GQA and `flash, 48 KiB` is flash).
const SERIES: &[(&str, usize)] = &[
    ("flash", 0),
    ("naive", 1),
    ("mha", 1),
    ("gqa", 3),
    ("mqa", 0),
    ("a100 40", 2),
    ("a100 80", 6),
    ("a100", 2),
    ("h100", 4),
    ("h200", 5),
    ("rtx 4090", 3),
    ("4090", 3),
    ("mi300x", 1),
    ("light", 5),
    ("heavy attention query", 4),
    ("heavy attention key", 5),
    ("heavy attention", 4),
    ("heavy ffn", 3),
    ("heavy", 4),
    ("dense", 7),
    ("sinusoidal", 1),
    ("rope", 2),
    ("alibi", 0),
    ("none", 7),
    ("routed", 2),
    ("cpu", 7),
];

/// The colour of the series a legend label names (unknown names: a stable pick from the
/// palette by a hash of the label).
pub fn series_color(label: &str) -> Color32 {
    let lower = label.to_lowercase();
    let mut best: Option<(usize, usize)> = None;
    for &(key, idx) in SERIES {
        if lower.starts_with(key) && best.is_none_or(|(len, _)| key.len() > len) {
            best = Some((key.len(), idx));
        }
    }
    let idx = best.map_or_else(
        || lower.bytes().fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize)) % PALETTE.len(),
        |(_, idx)| idx,
    );
    PALETTE[idx]
}

/// What an axis counts, for its tick labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Tokens (sequence lengths, contexts): powers of two, 1K = 1024.
    Tokens,
    /// Milliseconds, shown as µs, ms or s.
    Millis,
    /// Bytes, shown as B, KiB, MiB, GiB, TiB, PiB (powers of two).
    Bytes,
    /// Anything per second (tokens/s, FLOP/s): k, M, G, T.
    PerSecond,
    /// A plain number: k, M, G.
    Count,
}

impl Unit {
    /// The value `v` (not its logarithm) as a tick label.
    pub fn format(self, v: f64) -> String {
        let si = |v: f64, suffix: &str| {
            let (x, p) = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]
                .into_iter()
                .find(|(s, _)| v.abs() >= *s)
                .map_or((v, ""), |(s, p)| (v / s, p));
            format!("{}{p}{suffix}", trim(x))
        };
        match self {
            Unit::Tokens => {
                let (x, p) = [(1u64 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")]
                    .into_iter()
                    .find(|(s, _)| v >= *s as f64)
                    .map_or((v, ""), |(s, p)| (v / s as f64, p));
                format!("{}{p}", trim(x))
            }
            Unit::Millis => match v {
                v if v >= 1000.0 => format!("{} s", trim(v / 1000.0)),
                v if v >= 1.0 => format!("{} ms", trim(v)),
                v => format!("{} µs", trim(v * 1000.0)),
            },
            Unit::Bytes => {
                let (x, p) = [
                    (1u64 << 50, "PiB"),
                    (1 << 40, "TiB"),
                    (1 << 30, "GiB"),
                    (1 << 20, "MiB"),
                    (1 << 10, "KiB"),
                ]
                .into_iter()
                .find(|(s, _)| v >= *s as f64)
                .map_or((v, "B"), |(s, p)| (v / s as f64, p));
                format!("{} {p}", trim(x))
            }
            Unit::PerSecond => si(v, "/s"),
            Unit::Count => si(v, ""),
        }
    }

    /// Whether ticks sit on powers of two (else on 1, 2, 5 × powers of ten).
    fn binary(self) -> bool {
        matches!(self, Unit::Tokens | Unit::Bytes)
    }
}

/// Up to three significant digits, no trailing zeros.
fn trim(x: f64) -> String {
    let s = if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
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
        let (steps, gap) = sets.iter().find(|(_, g)| *g >= need).copied().unwrap_or((&[1.0], 1.0));
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

/// A plot whose axes are log10 of values in `x` and `y`, labelled with the values and their
/// units (`x_name`, `y_name` say what they are), and the legend in the corner where it
/// covers the least data.
pub fn log_log(id: &str, x: Unit, x_name: &str, y: Unit, y_name: &str, legend: Corner) -> Plot<'static> {
    Plot::new(id)
        .legend(Legend::default().position(legend))
        .x_axis_label(format!("{x_name} (log scale)"))
        .y_axis_label(format!("{y_name} (log scale)"))
        .x_axis_formatter(move |m, _| x.format(10f64.powf(m.value)))
        .y_axis_formatter(move |m, _| y.format(10f64.powf(m.value)))
        .x_grid_spacer(move |i| log_marks(x, i, 11.0))
        .y_grid_spacer(move |i| log_marks(y, i, 4.0))
}

/// Room a matrix view leaves at its left for row labels.
pub const AXIS_LEFT: f32 = 52.0;
/// Room a matrix view leaves below it for column labels.
pub const AXIS_BOTTOM: f32 = 30.0;

/// Row and column axes of a matrix view drawn in `rect` that shows rows `rows` and columns
/// `cols`: five ticks on each, labelled with the index there, and the axis names (`row_name`
/// at the left, `col_name` below).
pub fn matrix_axes(
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

/// log10 of `v`, floored at `floor` (zeros and negatives stay on the chart).
pub fn log10(v: f64, floor: f64) -> f64 {
    v.max(floor).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_read_as_people_write_them() {
        assert_eq!(Unit::Tokens.format(1024.0), "1K");
        assert_eq!(Unit::Tokens.format(65536.0), "64K");
        assert_eq!(Unit::Tokens.format(256.0), "256");
        assert_eq!(Unit::Tokens.format(1048576.0), "1M");
        assert_eq!(Unit::Millis.format(10.0), "10 ms");
        assert_eq!(Unit::Millis.format(2500.0), "2.5 s");
        assert_eq!(Unit::Millis.format(0.05), "50 µs");
        assert_eq!(Unit::Bytes.format((1u64 << 30) as f64), "1 GiB");
        assert_eq!(Unit::Bytes.format(1536.0), "1.5 KiB");
        assert_eq!(Unit::PerSecond.format(3e9), "3G/s");
        assert_eq!(Unit::Count.format(20.0), "20");
    }

    #[test]
    fn one_series_one_colour() {
        assert_eq!(series_color("flash (model)"), series_color("flash, 48 KiB"));
        assert_eq!(series_color("naive (measured)"), series_color("naive attention"));
        assert_ne!(series_color("flash"), series_color("naive"));
        assert_eq!(series_color("GQA (8)"), series_color("GQA 4 kv heads"));
        assert_ne!(series_color("MHA"), series_color("MQA"));
        assert_eq!(series_color("H100 80GB"), series_color("h100"));
        let gpus: Vec<Color32> = crate::measure::plan::GPUS.iter().map(|(g, _)| series_color(g)).collect();
        for (i, a) in gpus.iter().enumerate() {
            assert!(gpus[i + 1..].iter().all(|b| b != a), "each GPU its own colour: {gpus:?}");
        }
        assert_eq!(series_color("some new series"), series_color("some new series"));
    }

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
    }
}
