//! ALiBi panel: the slopes per head (any head count), bias against distance, and what the
//! bias does to attention: mean probability against distance with and without it.

use egui_plot::Corner;

use super::style::{Axis, ChartData, Mark, Unit, chart_ui};

use super::patterns::Settings;
use crate::contract::reference::attention_rows_f64;
use crate::contract::spec::alibi_slopes;

/// The ALiBi panel's state: the cached effect curves.
#[derive(Default)]
pub struct AlibiState {
    /// (settings, with ALiBi, without) of the last effect computation.
    effect: Option<(Settings, Curve, Curve)>,
}

/// Points of one plotted curve.
type Curve = Vec<[f64; 2]>;

/// Mean attention probability at each distance |i − j| over sampled rows of head 0, from
/// the oracle on a cut-down copy of the problem (N ≤ 256).
fn effect(settings: &Settings, alibi: bool) -> Vec<[f64; 2]> {
    let small = Settings { n: settings.n.min(256), alibi, ..settings.clone() };
    let Ok((spec, q, k, v)) = small.materialise() else { return Vec::new() };
    let n = spec.shape.n;
    let rows: Vec<usize> = (0..n).step_by((n / 32).max(1)).collect();
    let Ok(out) = attention_rows_f64(&spec, &q, &k, &v, &rows) else { return Vec::new() };
    let mut sum = vec![0f64; spec.shape.m];
    let mut count = vec![0u32; spec.shape.m];
    // probabilities need the scores; recompute them for the sampled rows
    let d = spec.shape.head_dim;
    let scale = spec.scale_value() as f64;
    let slope = spec.slopes().map_or(0.0, |s| s[0] as f64);
    for (&i, (_, lse)) in rows.iter().zip(&out) {
        if !lse.is_finite() {
            continue;
        }
        for j in (0..spec.shape.m).filter(|&j| spec.visible(0, i, j)) {
            let dot: f64 = q[i * d..(i + 1) * d]
                .iter()
                .zip(&k[j * d..(j + 1) * d])
                .map(|(a, b)| *a as f64 * *b as f64)
                .sum();
            let dist = (spec.position(i) - j as i64).unsigned_abs() as usize;
            sum[dist] += (scale * dot - slope * dist as f64 - lse).exp();
            count[dist] += 1;
        }
    }
    sum.iter()
        .zip(&count)
        .enumerate()
        .filter(|(_, (_, c))| **c > 0)
        .map(|(dist, (s, c))| [dist as f64, s / *c as f64])
        .collect()
}

/// Draws the slopes for the current head count, bias against distance, and the mean
/// probability against distance with and without ALiBi (recomputed when `settings` change).
pub(crate) fn alibi_ui(ui: &mut egui::Ui, st: &mut AlibiState, settings: &Settings) {
    let heads = settings.heads;
    let slopes = alibi_slopes(heads);
    ui.label(format!(
        "get_slopes({heads}): {}",
        slopes.iter().map(|s| format!("{s:.4}")).collect::<Vec<_>>().join(", ")
    ));
    let top = ((ui.available_height() - 60.0) * 0.45).clamp(180.0, 360.0);
    ui.columns(2, |cols| {
        cols[0].label("slope per head");
        let mut per_head = ChartData::new(
            "ALiBi slope per head",
            Axis::categories("head", (0..heads).map(|h| h.to_string())),
            Axis::linear("slope"),
        );
        per_head.add(
            "slope",
            Mark::Bars(0.7),
            slopes.iter().enumerate().map(|(h, &s)| [h as f64, s as f64]).collect(),
        );
        chart_ui(&mut cols[0], "alibi slopes", per_head, Corner::RightTop, None, top);
        cols[1].label("bias -slope·|p - j| against distance (first 8 heads)");
        let mut bias = ChartData::new(
            "ALiBi bias against distance",
            Axis::linear("distance |p - j|"),
            Axis::linear("bias"),
        );
        for (h, &s) in slopes.iter().enumerate().take(8) {
            bias.add(
                format!("head {h}"),
                Mark::Line,
                (0..=64).map(|d| [d as f64, -(s as f64) * d as f64]).collect(),
            );
        }
        chart_ui(&mut cols[1], "alibi bias", bias, Corner::LeftBottom, None, top);
    });
    if st.effect.as_ref().is_none_or(|e| &e.0 != settings) {
        st.effect = Some((settings.clone(), effect(settings, true), effect(settings, false)));
    }
    let Some((_, with, without)) = st.effect.as_ref() else { return };
    ui.label("effect on the pattern: mean probability against distance, head 0 (oracle, N <= 256 of the current inputs); the log scale shows ALiBi's exponential fall-off as a straight line");
    let mut effect = ChartData::new(
        "mean probability against distance",
        Axis::linear("distance |p - j|"),
        Axis::log("mean probability", Unit::Count),
    );
    effect.add("ALiBi", Mark::Line, with.clone());
    effect.add("none (no bias)", Mark::Line, without.clone());
    chart_ui(ui, "alibi effect", effect, Corner::RightTop, None, ui.available_height().max(160.0));
}
