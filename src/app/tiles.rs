//! Tiles panel: the block map of the current problem — which key tiles each query tile
//! visits (full, partial, skipped), sparsity and the FLOPs kept.

use egui::{Color32, Rect, Sense, Vec2, pos2};

use super::patterns::PatternsState;
use crate::contract::blockmap::FULL;

/// A tile every element of which is visible: computed without the per-element mask.
pub(crate) const FULL_COLOR: Color32 = Color32::from_rgb(253, 231, 37);
/// A tile visited with the per-element mask applied.
pub(crate) const PARTIAL_COLOR: Color32 = Color32::from_rgb(33, 145, 140);
/// A tile the block map skips: never loaded.
pub(crate) const SKIPPED_COLOR: Color32 = Color32::from_rgb(40, 40, 48);

/// Draws the block map of the last computed pattern for the selected head, with its
/// sparsity and FLOPs kept; hovering names a tile's rows and keys.
pub(crate) fn tiles_ui(ui: &mut egui::Ui, st: &mut PatternsState) {
    let Some(c) = &st.computed else {
        ui.label("compute a pattern first (Patterns tab)");
        return;
    };
    let spec = &c.spec;
    // the map the computed flash call walks (built once, with this device's tiles)
    let Some(map) = c.attn.block_map() else { return };
    let head = st.head.min(map.heads - 1);
    let full = map.entries.iter().filter(|&&e| e & FULL != 0).count();
    let s = spec.shape;
    let dense = 4.0 * s.head_dim as f64 * (s.heads * s.n * s.m) as f64;
    let kept = 4.0 * s.head_dim as f64 * map.visible_pairs(s.heads) as f64;
    ui.label(format!(
        "flash tiles {}×{} on this device -> {} query tiles × {} key tiles{}",
        map.br,
        map.bc,
        map.n_qtiles,
        map.n_ktiles,
        if map.heads > 1 {
            format!(", per head (showing head {head})")
        } else {
            ", shared by all heads".into()
        }
    ));
    ui.label(format!(
        "visited {} of {} tiles ({} full, {} partial): sparsity {:.2}%   FLOPs kept {:.3} of {:.3} GFLOP ({:.2}%)",
        map.visited(),
        map.heads * map.n_qtiles * map.n_ktiles,
        full,
        map.visited() - full,
        100.0 * map.sparsity(),
        kept / 1e9,
        dense / 1e9,
        100.0 * kept / dense
    ));
    ui.horizontal(|ui| {
        for (c, label) in [
            (FULL_COLOR, "full"),
            (PARTIAL_COLOR, "partial (per-element mask)"),
            (SKIPPED_COLOR, "skipped (never loaded)"),
        ] {
            let (r, _) = ui.allocate_exact_size(Vec2::splat(12.0), Sense::hover());
            ui.painter().rect_filled(r, 2.0, c);
            ui.label(label);
        }
    });
    // one cell per group of tiles, at most 128 per side
    let cells = 128usize;
    let (gy, gx) = (map.n_qtiles.div_ceil(cells), map.n_ktiles.div_ceil(cells));
    let (ny, nx) = (map.n_qtiles.div_ceil(gy), map.n_ktiles.div_ceil(gx));
    let mut grid = vec![0u8; map.n_qtiles * map.n_ktiles];
    for qt in 0..map.n_qtiles {
        for &e in map.row(head, qt) {
            grid[qt * map.n_ktiles + (e & !FULL) as usize] = if e & FULL != 0 { 2 } else { 1 };
        }
    }
    super::style::record_matrix(ui, || super::style::MatrixData {
        title: format!("flash tile map head {head}"),
        row_name: "query tile".into(),
        col_name: "key tile".into(),
        rows: (0, map.n_qtiles),
        cols: (0, map.n_ktiles),
        scale: format!("0 skipped, 1 partial, 2 full; tiles {}x{}", map.br, map.bc),
        width: map.n_ktiles,
        height: map.n_qtiles,
        values: grid.iter().map(|&v| v as f32).collect(),
    });
    let (left, bottom) = (super::style::AXIS_LEFT, super::style::AXIS_BOTTOM);
    let side = (ui.available_width() - left).min(ui.available_height() - bottom).max(64.0);
    let (outer, _) = ui.allocate_exact_size(Vec2::new(left + side, side + bottom), Sense::hover());
    let rect = Rect::from_min_size(outer.min + Vec2::new(left, 0.0), Vec2::splat(side));
    let response = ui.interact(rect, ui.scope_id().with("tile map"), Sense::hover());
    let text = ui.visuals().text_color();
    super::style::matrix_axes(
        ui.painter(),
        rect,
        0..map.n_qtiles,
        0..map.n_ktiles,
        "query tile",
        "key tile",
        text,
    );
    let painter = ui.painter_at(rect);
    let (cw, ch) = (rect.width() / nx as f32, rect.height() / ny as f32);
    for cy in 0..ny {
        for cx in 0..nx {
            let mut any = false;
            let mut all_full = true;
            for qt in cy * gy..((cy + 1) * gy).min(map.n_qtiles) {
                for kt in cx * gx..((cx + 1) * gx).min(map.n_ktiles) {
                    let v = grid[qt * map.n_ktiles + kt];
                    any |= v > 0;
                    all_full &= v == 2;
                }
            }
            let color = if all_full {
                FULL_COLOR
            } else if any {
                PARTIAL_COLOR
            } else {
                SKIPPED_COLOR
            };
            let min = pos2(rect.left() + cx as f32 * cw, rect.top() + cy as f32 * ch);
            painter.rect_filled(Rect::from_min_size(min, Vec2::new(cw.max(1.0), ch.max(1.0))), 0.0, color);
        }
    }
    if let Some(pos) = response.hover_pos() {
        let qt = (((pos.y - rect.top()) / ch) as usize * gy).min(map.n_qtiles - 1);
        let kt = (((pos.x - rect.left()) / cw) as usize * gx).min(map.n_ktiles - 1);
        let state = match grid[qt * map.n_ktiles + kt] {
            2 => "full",
            1 => "partial",
            _ => "skipped",
        };
        response.on_hover_text(format!(
            "query tile {qt} (rows {}..{}) × key tile {kt} (keys {}..{}): {state}",
            qt * map.br,
            ((qt + 1) * map.br).min(s.n),
            kt * map.bc,
            ((kt + 1) * map.bc).min(s.m)
        ));
    }
}
