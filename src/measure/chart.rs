//! The one palette and the units of every chart, in the app and in the CLI's plots: a series
//! is known by the name its legend starts with — `flash`, `naive`, `MHA`, `GQA`, `MQA`, a GPU
//! (`A100 40GB`, `H100`, …), a CoLT5 branch, a positional scheme — and has one colour
//! everywhere ([`series_rgb`]; Okabe and Ito's colour-blind-safe set). [`Unit`] formats a
//! value as people write it: tokens as 1K and 64K (powers of two), ms or s, KiB … PiB, k/s
//! … T/s.

/// Okabe–Ito: blue, vermillion, bluish green, orange, reddish purple, sky blue, yellow, grey.
pub const PALETTE: [[u8; 3]; 8] = [
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
    pub fn binary(self) -> bool {
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
        assert_eq!(series_rgb("flash (model)"), series_rgb("flash, 48 KiB"));
        assert_eq!(series_rgb("naive (measured)"), series_rgb("naive attention"));
        assert_ne!(series_rgb("flash"), series_rgb("naive"));
        assert_eq!(series_rgb("GQA (8)"), series_rgb("GQA 4 kv heads"));
        assert_ne!(series_rgb("MHA"), series_rgb("MQA"));
        assert_eq!(series_rgb("H100 80GB"), series_rgb("h100"));
        let gpus: Vec<[u8; 3]> = crate::measure::plan::GPUS.iter().map(|(g, _)| series_rgb(g)).collect();
        for (i, a) in gpus.iter().enumerate() {
            assert!(gpus[i + 1..].iter().all(|b| b != a), "each GPU its own colour: {gpus:?}");
        }
        assert_eq!(series_rgb("some new series"), series_rgb("some new series"));
    }
}
