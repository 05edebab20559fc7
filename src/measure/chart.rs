//! The one palette and the units of every chart, in the app and in the CLI's plots: a series
//! is known by the name its legend starts with — `flash`, `naive`, `MHA`, `GQA`, `MQA`, a GPU
//! (`A100 40GB`, `H100`, …), a CoLT5 branch, a positional scheme — and has one colour
//! everywhere ([`series_rgb`]; Okabe and Ito's colour-blind-safe set). [`Unit`] formats a
//! value as people write it: tokens as 1K and 64K (powers of two), ms or s, KiB … PiB, k/s
//! … T/s. [`ChartData`] is the data behind a chart: what the app draws and exports and the
//! CLI plots.

use serde::Serialize;

/// Okabe–Ito: blue, vermillion, bluish green, orange, reddish purple, sky blue, yellow, grey.
pub(crate) const PALETTE: [[u8; 3]; 8] = [
    [0, 114, 178],
    [213, 94, 0],
    [0, 158, 115],
    [230, 159, 0],
    [204, 121, 167],
    [86, 180, 233],
    [240, 228, 66],
    [128, 128, 128],
];

/// Series names and their palette entries, matched case-insensitively against the start of
/// a legend label (longest first, so `GQA (8)` is GQA and `flash, 48 KiB` is flash).
const SERIES: &[(&str, usize)] = &[
    ("flash", 0),
    ("flash backward", 2),
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
    ("alibi moba", 3),
    ("none moba", 4),
    ("sinusoidal moba", 5),
    ("none nsa", 1),
    ("none dsa", 6),
    ("none", 7),
    ("routed", 2),
    ("cpu", 7),
];

/// The colour of the series a legend label names (unknown names: a stable pick from the
/// palette by a hash of the label).
pub fn series_rgb(label: &str) -> [u8; 3] {
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

/// A tick at 10^15.0 may arrive as 0.99999… × 2^50: values this close to a unit take it
/// (1 PiB, not 1024 TiB).
const ROUNDING: f64 = 0.999_999;

/// What an axis counts, for its tick labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
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
                .find(|(s, _)| v.abs() >= *s * ROUNDING)
                .map_or((v, ""), |(s, p)| (v / s, p));
            format!("{}{p}{suffix}", trim_signed(x))
        };
        match self {
            Unit::Tokens => {
                let (x, p) = [(1u64 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")]
                    .into_iter()
                    .find(|(s, _)| v >= *s as f64 * ROUNDING)
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
                .find(|(s, _)| v >= *s as f64 * ROUNDING)
                .map_or((v, "B"), |(s, p)| (v / s as f64, p));
                format!("{} {p}", trim(x))
            }
            Unit::PerSecond => si(v, "/s"),
            Unit::Count => si(v, ""),
        }
    }

    /// Whether ticks sit on powers of two (else on 1, 2, 5 × powers of ten).
    pub fn binary(self) -> bool {
        matches!(self, Unit::Tokens | Unit::Bytes)
    }
}

/// How an axis maps values to positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// Positions proportional to the values.
    Linear,
    /// Positions proportional to log10 of the values (zeros and negatives clamp to the floor).
    Log,
}

/// One axis of a chart: what it shows, in which unit (none: plain numbers), on which scale;
/// `categories` name the positions 0, 1, 2 … of a bar chart's axis.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Axis {
    /// What the axis shows.
    pub name: String,
    /// The unit of its values; none for plain numbers.
    pub unit: Option<Unit>,
    /// Linear or logarithmic.
    pub scale: Scale,
    /// Names of the positions 0, 1, 2 … (a bar chart's categories); empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
}

impl Axis {
    /// A linear axis of plain numbers.
    pub fn linear(name: &str) -> Self {
        Self { name: name.into(), unit: None, scale: Scale::Linear, categories: Vec::new() }
    }
    /// A log axis of values in `unit`.
    pub fn log(name: &str, unit: Unit) -> Self {
        Self { name: name.into(), unit: Some(unit), scale: Scale::Log, categories: Vec::new() }
    }
    /// A linear axis whose positions 0, 1, 2 … are `categories`.
    pub fn categories(name: &str, categories: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self { categories: categories.into_iter().map(Into::into).collect(), ..Self::linear(name) }
    }
    /// The label of a tick at `v` (a value, not its logarithm).
    pub fn format(&self, v: f64) -> String {
        if !self.categories.is_empty() {
            let i = v.round();
            return match self.categories.get(i as usize) {
                Some(c) if (v - i).abs() < 1e-6 && i >= 0.0 => c.clone(),
                _ => String::new(),
            };
        }
        match self.unit {
            Some(u) => u.format(v),
            None => trim_signed(v),
        }
    }
    /// Where value `v` sits on the axis: log10 of it on a log axis.
    pub fn position(&self, v: f64) -> f64 {
        if self.scale == Scale::Log { v.log10() } else { v }
    }
    /// The tick label at position `p` (inverse of [`Axis::position`]).
    pub fn label_at(&self, p: f64) -> String {
        self.format(if self.scale == Scale::Log { 10f64.powf(p) } else { p })
    }
    /// The axis title, with the scale said when it is logarithmic.
    pub fn title(&self) -> String {
        match self.scale {
            Scale::Log => format!("{} (log scale)", self.name),
            Scale::Linear => self.name.clone(),
        }
    }
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mark {
    /// A line through the points.
    Line,
    /// A dashed line through the points.
    Dashed,
    /// A thin, faded line (context for another series of the same colour).
    Faint,
    /// A line with a dot on each point.
    LinePoints,
    /// Dots only (measurements beside a model's line).
    Points,
    /// Bars of this width centred on each x.
    Bars(f64),
    /// A horizontal line at the first point's y (a capacity, a limit).
    HLine,
    /// A vertical line at the first point's x (a marker such as the training length).
    VLine,
}

/// One series: its legend label, how it is drawn, its colour ([`series_rgb`] of the label
/// unless set) and its points as (x, y) values, not logarithms.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Series {
    /// The legend label; its start names the series' colour.
    pub label: String,
    /// How it is drawn.
    pub mark: Mark,
    /// Its colour.
    pub rgb: [u8; 3],
    /// (x, y) values.
    pub points: Vec<[f64; 2]>,
}

/// The data behind one chart: what the app draws, the CLI plots, and both export as CSV
/// and JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChartData {
    /// What the chart shows (also its exported files' name).
    pub title: String,
    /// The horizontal axis.
    pub x: Axis,
    /// The vertical axis.
    pub y: Axis,
    /// The series, in legend order.
    pub series: Vec<Series>,
}

impl ChartData {
    /// An empty chart.
    pub fn new(title: &str, x: Axis, y: Axis) -> Self {
        Self { title: title.into(), x, y, series: Vec::new() }
    }

    /// Adds a series coloured by its label; returns it (to change its colour).
    pub fn add(&mut self, label: impl Into<String>, mark: Mark, points: Vec<[f64; 2]>) -> &mut Series {
        let label = label.into();
        let rgb = series_rgb(&label);
        self.series.push(Series { label, mark, rgb, points });
        self.series.last_mut().expect("just pushed")
    }

    /// The colour of the first series whose label starts with `label`.
    #[cfg(test)]
    fn color_of(&self, label: &str) -> Option<[u8; 3]> {
        self.series.iter().find(|s| s.label.starts_with(label)).map(|s| s.rgb)
    }

    /// Long-format CSV: one row per point, `series,<x name>,<y name>`.
    pub fn to_csv(&self) -> String {
        let quote = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let mut out = format!("series,{},{}\n", quote(&self.x.name), quote(&self.y.name));
        for s in &self.series {
            for [x, y] in &s.points {
                out.push_str(&format!("{},{x},{y}\n", quote(&s.label)));
            }
        }
        out
    }

    /// Pretty JSON of the whole chart (axes, units, scales, series, colours, points).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// The values behind a matrix view (a heatmap, a tile map): `height` rows of `width` values,
/// row-major; rows `rows.0..rows.1` and columns `cols.0..cols.1` of the problem are shown,
/// and `scale` says how the colours read the values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MatrixData {
    /// What the view shows (also its exported files' name).
    pub title: String,
    /// What a row is (queries, query tiles).
    pub row_name: String,
    /// What a column is.
    pub col_name: String,
    /// The problem's rows shown, start and end.
    pub rows: (usize, usize),
    /// The problem's columns shown, start and end.
    pub cols: (usize, usize),
    /// How colours read the values (scale and pooling, or the classes' meaning).
    pub scale: String,
    /// Values per row.
    pub width: usize,
    /// Rows.
    pub height: usize,
    /// The values, row-major.
    pub values: Vec<f32>,
}

impl MatrixData {
    /// One CSV row per matrix row.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        for row in self.values.chunks(self.width.max(1)) {
            let cells: Vec<String> = row.iter().map(|v| v.to_string()).collect();
            out.push_str(&cells.join(","));
            out.push('\n');
        }
        out
    }

    /// JSON with the metadata and the values as rows.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// A title as a file-name stem: lower case, words joined by `-`.
pub fn slug(title: &str) -> String {
    let mut out = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

/// A plain number with up to three significant digits (negatives too).
fn trim_signed(v: f64) -> String {
    if v < 0.0 { format!("-{}", trim(-v)) } else { trim(v) }
}

/// Up to three significant digits, no trailing zeros.
fn trim(x: f64) -> String {
    if x > 0.0 && x < 1e-3 {
        // 2.5e-7, not 0.00000025
        let s = format!("{x:.2e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
        return format!("{mantissa}e{exp}");
    }
    let s = if x > 0.0 && x < 0.1 {
        let digits = (-x.log10()).ceil() as usize + 2;
        format!("{x:.digits$}")
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    };
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
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
        assert_eq!(Unit::Bytes.format(10f64.powf(50.0 * 2f64.log10())), "1 PiB"); // not 1024 TiB
        assert_eq!(Unit::Count.format(0.0039), "0.0039");
        assert_eq!(Unit::Count.format(10f64.powf(-18.0)), "1e-18");
        assert_eq!(Unit::Count.format(2.5e-7), "2.5e-7");
        assert_eq!(Axis::linear("slope").format(-0.25), "-0.25");
        assert_eq!(Axis::categories("branch", ["light", "heavy"]).format(1.0), "heavy");
        assert_eq!(Axis::categories("branch", ["light", "heavy"]).format(0.5), "");
    }

    #[test]
    fn one_series_one_colour() {
        assert_eq!(series_rgb("flash (model)"), series_rgb("flash, 48 KiB"));
        assert_eq!(series_rgb("naive (measured)"), series_rgb("naive attention"));
        assert_ne!(series_rgb("flash"), series_rgb("naive"));
        assert_eq!(series_rgb("GQA (8)"), series_rgb("GQA 4 kv heads"));
        assert_ne!(series_rgb("MHA"), series_rgb("MQA"));
        assert_eq!(series_rgb("H100 80GB"), series_rgb("h100"));
        assert_eq!(series_rgb("flash forward, causal"), series_rgb("flash"));
        assert_ne!(series_rgb("flash backward, causal"), series_rgb("flash"));
        let gpus: Vec<[u8; 3]> = crate::measure::plan::GPUS.iter().map(|(g, _)| series_rgb(g)).collect();
        for (i, a) in gpus.iter().enumerate() {
            assert!(gpus[i + 1..].iter().all(|b| b != a), "each GPU its own colour: {gpus:?}");
        }
        assert_eq!(series_rgb("some new series"), series_rgb("some new series"));
    }

    #[test]
    fn chart_data_exports_every_point() {
        let mut c =
            ChartData::new("Time, per call", Axis::log("N", Unit::Tokens), Axis::log("time", Unit::Millis));
        c.add("flash", Mark::Line, vec![[128.0, 0.5], [256.0, 1.5]]);
        c.add("naive, \"dense\"", Mark::Points, vec![[128.0, 2.0]]);
        assert_eq!(
            c.to_csv(),
            "series,N,time\nflash,128,0.5\nflash,256,1.5\n\"naive, \"\"dense\"\"\",128,2\n"
        );
        let json: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(json["x"]["unit"], "tokens");
        assert_eq!(json["y"]["scale"], "log");
        assert_eq!(json["series"][0]["rgb"], serde_json::json!(PALETTE[0]));
        assert_eq!(json["series"][1]["points"][0], serde_json::json!([128.0, 2.0]));
        assert_eq!(c.color_of("naive"), Some(series_rgb("naive")));
        assert_eq!(slug("Time, per call (log)"), "time-per-call-log");
    }
}
