//! Probability → colour (a viridis-like ramp), linear or logarithmic.

use egui::{Align2, Color32, FontId, Painter, Rect, Stroke, StrokeKind, pos2};

const STOPS: [(f32, [u8; 3]); 5] = [
    (0.0, [68, 1, 84]),
    (0.25, [59, 82, 139]),
    (0.5, [33, 145, 140]),
    (0.75, [94, 201, 98]),
    (1.0, [253, 231, 37]),
];

/// Decades shown by the log scale: 1e-6 … 1.
pub(crate) const LOG_DECADES: f32 = 6.0;

/// Maps a probability to [0, 1] on the chosen scale, relative to the view's maximum.
pub fn normalise(p: f32, max: f32, log: bool) -> f32 {
    if p <= 0.0 || max <= 0.0 {
        return 0.0;
    }
    if log { ((p / max).log10() / LOG_DECADES + 1.0).clamp(0.0, 1.0) } else { (p / max).clamp(0.0, 1.0) }
}

/// The ramp at `t` in [0, 1]; masked cells are drawn apart by the caller.
pub fn color(t: f32) -> Color32 {
    let t = t.clamp(0.0, 1.0);
    let i = STOPS.iter().position(|s| s.0 >= t).unwrap_or(STOPS.len() - 1).max(1);
    let (t0, c0) = STOPS[i - 1];
    let (t1, c1) = STOPS[i];
    let f = (t - t0) / (t1 - t0);
    let mix = |a: u8, b: u8| (a as f32 + (b as f32 - a as f32) * f).round() as u8;
    Color32::from_rgb(mix(c0[0], c1[0]), mix(c0[1], c1[1]), mix(c0[2], c1[2]))
}

/// Horizontal room a [`colour_bar`] takes beside a view, labels included.
pub(crate) const COLOUR_BAR_WIDTH: f32 = 96.0;

/// A vertical colour bar in `rect` for probabilities 0 ..= `max` on the linear or log scale
/// (as [`normalise`] maps them), ticks labelled to its right, `caption` above.
pub fn colour_bar(painter: &Painter, rect: Rect, max: f32, log: bool, caption: &str, text: Color32) {
    let steps = 64;
    for s in 0..steps {
        let t = s as f32 / (steps - 1) as f32;
        let y0 = rect.bottom() - rect.height() * (s + 1) as f32 / steps as f32;
        let cell = Rect::from_min_max(
            pos2(rect.left(), y0),
            pos2(rect.right(), y0 + rect.height() / steps as f32 + 0.5),
        );
        painter.rect_filled(cell, 0.0, color(t));
    }
    painter.rect_stroke(rect, 0.0, Stroke::new(1.0, text.gamma_multiply(0.5)), StrokeKind::Outside);
    let font = FontId::proportional(11.0);
    let ticks: Vec<(f32, String)> = if log {
        (0..=LOG_DECADES as i32)
            .map(|k| (1.0 - k as f32 / LOG_DECADES, format!("{:.0e}", max * 10f32.powi(-k))))
            .collect()
    } else {
        (0..=4).map(|k| (k as f32 / 4.0, format!("{:.3}", max * k as f32 / 4.0))).collect()
    };
    for (t, label) in ticks {
        let y = rect.bottom() - t * rect.height();
        painter.line_segment([pos2(rect.right(), y), pos2(rect.right() + 4.0, y)], Stroke::new(1.0, text));
        painter.text(pos2(rect.right() + 6.0, y), Align2::LEFT_CENTER, label, font.clone(), text);
    }
    let scale = if log { "log" } else { "linear" };
    painter.text(
        pos2(rect.left(), rect.top() - 4.0),
        Align2::LEFT_BOTTOM,
        format!("{caption}, {scale}"),
        font,
        text,
    );
}
