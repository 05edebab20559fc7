//! Probability → colour (a viridis-like ramp), linear or logarithmic.

use egui::Color32;

const STOPS: [(f32, [u8; 3]); 5] = [
    (0.0, [68, 1, 84]),
    (0.25, [59, 82, 139]),
    (0.5, [33, 145, 140]),
    (0.75, [94, 201, 98]),
    (1.0, [253, 231, 37]),
];

/// Decades shown by the log scale: 1e-6 … 1.
pub const LOG_DECADES: f32 = 6.0;

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
