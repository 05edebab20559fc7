//! The visualiser in the page (`index.html`): [`start`] runs longctx's app (eframe's web
//! runner) on a canvas. The other exports are what `scripts/browser-test` asks of the running
//! app: its state ([`state`]), a panel to show ([`show`]) and problems to set
//! ([`set_patterns`], [`set_pattern`], [`set_view`], [`set_decode`]), and whether the heatmap's pixels on
//! screen are the engine's probabilities and a learned pattern's routing map the oracle's
//! choice ([`check_heatmap`]).

use std::cell::RefCell;

use longctx::app::{LongctxApp, Tab};
use longctx::contract::reference::probabilities_f64;
use serde::Serialize;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

thread_local! {
    static RUNNER: RefCell<Option<eframe::WebRunner>> = const { RefCell::new(None) };
}

fn js(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&e.to_string())
}

/// Runs `f` on the app; an error when it has not started or has panicked.
fn with_app<T>(f: impl FnOnce(&mut LongctxApp) -> Result<T, JsValue>) -> Result<T, JsValue> {
    RUNNER.with(|r| {
        let r = r.borrow();
        let runner = r.as_ref().ok_or_else(|| js("the app has not started"))?;
        if let Some(p) = runner.panic_summary() {
            return Err(js(format!("the app panicked: {}", p.message())));
        }
        let mut app = runner.app_mut::<LongctxApp>().ok_or_else(|| js("the app is busy or gone"))?;
        f(&mut app)
    })
}

/// Starts the visualiser on the canvas with id `canvas_id`.
#[wasm_bindgen]
pub async fn start(canvas_id: String) -> Result<(), JsValue> {
    crate::page::to_console();
    let canvas = web_sys::window()
        .and_then(|w| w.document())
        .and_then(|d| d.get_element_by_id(&canvas_id))
        .ok_or_else(|| js(format!("no element #{canvas_id} in the page")))?
        .dyn_into::<web_sys::HtmlCanvasElement>()
        .map_err(|_| js(format!("#{canvas_id} is not a canvas")))?;
    let runner = longctx::app::run_web(canvas).await.map_err(js)?;
    RUNNER.with(|r| *r.borrow_mut() = Some(runner));
    Ok(())
}

/// What the driver waits on.
#[derive(Serialize)]
struct State {
    tab: &'static str,
    adapter: String,
    /// The Patterns panel: an error, and the shown heatmap's size (0 × 0 before one).
    patterns_error: Option<String>,
    heatmap: [usize; 2],
    /// Where the heatmap is drawn, in CSS pixels of the canvas: [left, top, right, bottom].
    heatmap_rect: Option<[f32; 4]>,
    /// The computed problem's sparse pattern (`Moba`, `Dsa`, …) and, for a learned one, the
    /// share of causal attention's keys its rows read.
    pattern: Option<String>,
    keys_read: Option<f64>,
    /// Decode: (kv heads, context, tokens/s) measured, and its status line.
    decode: Vec<(usize, usize, f64)>,
    decode_message: String,
    /// Memory traffic: (kernel, N, bytes) counted by the instrumented kernels, or the error.
    traffic: Vec<(String, usize, u64)>,
    traffic_error: Option<String>,
    /// Routing: tokens each router picked (q, kv, ffn), and its status line.
    routing: Option<[usize; 3]>,
    routing_message: String,
}

/// The app's state as JSON.
#[wasm_bindgen]
pub fn state() -> Result<String, JsValue> {
    with_app(|app| {
        let p = &app.patterns;
        let state = State {
            tab: app.tab.label(),
            adapter: app.gpu.as_ref().map_or_else(Clone::clone, |g| format!("{:?}", g.info())),
            patterns_error: p.error.clone(),
            heatmap: p.heat.as_ref().map_or([0, 0], |h| [h.view.width, h.view.height]),
            heatmap_rect: p.shown_at.map(|r| [r.left(), r.top(), r.right(), r.bottom()]),
            pattern: p.computed.as_ref().map(|c| format!("{:?}", c.settings.pattern)),
            keys_read: p.computed.as_ref().and_then(|c| c.keys_read),
            decode: app.decode.measured.clone(),
            decode_message: app.decode.message.clone(),
            traffic: app.traffic.measured.clone(),
            traffic_error: app.traffic.error.clone(),
            routing: app.routing.result.as_ref().map(|r| r.routed.each_ref().map(Vec::len)),
            routing_message: app.routing.message.clone(),
        };
        serde_json::to_string(&state).map_err(js)
    })
}

/// Shows the panel labelled `tab`.
#[wasm_bindgen]
pub fn show(tab: String) -> Result<(), JsValue> {
    with_app(|app| {
        app.tab = *Tab::ALL.iter().find(|t| t.label() == tab).ok_or_else(|| js(format!("no tab `{tab}`")))?;
        app.egui.request_repaint();
        Ok(())
    })
}

/// Sets the Patterns problem to N = M = `n`, ALiBi on or off, head 0 (the whole matrix
/// comes into view when it is computed).
#[wasm_bindgen]
pub fn set_patterns(n: usize, alibi: bool) -> Result<(), JsValue> {
    with_app(|app| {
        let s = &mut app.patterns.settings;
        s.n = n;
        s.alibi = alibi;
        app.patterns.head = 0;
        app.egui.request_repaint();
        Ok(())
    })
}

/// Sets the Patterns panel's sparse pattern by name (`None`, `Moba`, `Dsa`, …: the names the
/// state reports); the problem is computed again.
#[wasm_bindgen]
pub fn set_pattern(name: String) -> Result<(), JsValue> {
    use longctx::app::Pattern;
    let pattern = *Pattern::ALL
        .iter()
        .find(|p| format!("{p:?}") == name)
        .ok_or_else(|| js(format!("no pattern `{name}`")))?;
    with_app(|app| {
        app.patterns.settings.pattern = pattern;
        app.egui.request_repaint();
        Ok(())
    })
}

/// Zooms the Patterns heatmap to query rows `r0..r1` and keys `c0..c1` (after the problem is
/// computed: a new computation shows the whole matrix).
#[wasm_bindgen]
pub fn set_view(r0: usize, r1: usize, c0: usize, c1: usize) -> Result<(), JsValue> {
    with_app(|app| {
        let p = &mut app.patterns;
        let c = p.computed.as_ref().ok_or_else(|| js("no problem computed yet"))?;
        let s = c.spec.shape;
        if r0 >= r1 || r1 > s.n || c0 >= c1 || c1 > s.m {
            return Err(js(format!("view {r0}..{r1} × {c0}..{c1} outside {} × {}", s.n, s.m)));
        }
        (p.rows, p.cols) = (r0..r1, c0..c1);
        app.egui.request_repaint();
        Ok(())
    })
}

/// Sets the Decode panel's query heads and head dim (before it is first shown, when it
/// measures).
#[wasm_bindgen]
pub fn set_decode(heads: usize, head_dim: usize) -> Result<(), JsValue> {
    with_app(|app| {
        app.decode.heads = heads;
        app.decode.d = head_dim;
        Ok(())
    })
}

/// Starts the Memory traffic panel's measurement (its button): naive and flash, instrumented.
#[wasm_bindgen]
pub fn measure_traffic() -> Result<(), JsValue> {
    with_app(|app| {
        let gpu = app.gpu.clone().map_err(js)?;
        app.traffic.start_measuring(&app.egui.clone(), &gpu, &app.patterns.settings, false);
        app.tab = Tab::Traffic;
        app.egui.request_repaint();
        Ok(())
    })
}

/// The heatmap check's findings.
#[derive(Serialize)]
struct HeatCheck {
    /// View pixels compared (one per (query row, key) when the view is 1:1).
    cells: usize,
    /// The largest |GPU probability − f64 oracle|.
    oracle_worst_abs: f64,
    /// The largest difference of one colour channel between the screenshot at a cell's
    /// centre and the colour the app maps the GPU's probability to (0–255).
    worst_channel: u8,
    /// Cells whose channels differ by more than the tolerance.
    mismatched: usize,
    /// A learned pattern's choice against the f64 oracle's: rows whose sets differ, and
    /// whether every difference is a float32 near-tie (`None` for a fixed pattern).
    choice: Option<(usize, bool)>,
    /// Distinct colours among the expected ones (a flat image would prove nothing).
    distinct_colours: usize,
}

/// Checks the Patterns heatmap on screen: the GPU's pooled probabilities against the f64
/// oracle's, and, in `png` (a screenshot of the page whose top-left pixel is the canvas's
/// (`left`, `top`) in CSS pixels), each cell's colour at its centre against the colour the
/// app gives that probability. The view must be 1:1 (one pixel per (row, key)).
#[wasm_bindgen]
pub fn check_heatmap(png: &[u8], left: u32, top: u32, tolerance: u8) -> Result<String, JsValue> {
    let image = decode_rgb(png)?;
    with_app(|app| {
        let ppp = app.egui.pixels_per_point();
        let p = &app.patterns;
        let (Some(heat), Some(c), Some(rect)) = (&p.heat, &p.computed, p.shown_at) else {
            return Err(js("no heatmap shown"));
        };
        let v = &heat.view;
        if v.rows.len() != v.height || v.cols.len() != v.width {
            return Err(js(format!("the view {v:?} is pooled; the check needs one pixel per cell")));
        }
        let want = probabilities_f64(&c.spec, &c.q, &c.k, (v.batch, v.head), v.rows.clone(), v.cols.clone())
            .map_err(js)?;
        let oracle_worst_abs =
            heat.values.iter().zip(&want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max);
        let (cell_w, cell_h) = (rect.width() / v.width as f32, rect.height() / v.height as f32);
        let (mut worst_channel, mut mismatched) = (0u8, 0usize);
        let mut colours = std::collections::HashSet::new();
        for i in 0..v.height {
            for j in 0..v.width {
                let expect = heat.colour_of(heat.values[i * v.width + j]);
                colours.insert(expect.to_array());
                let x = ((rect.left() + (j as f32 + 0.5) * cell_w) * ppp) as i64 - left as i64;
                let y = ((rect.top() + (i as f32 + 0.5) * cell_h) * ppp) as i64 - top as i64;
                let got = image
                    .at(x, y)
                    .ok_or_else(|| js(format!("cell ({i}, {j}) at ({x}, {y}) is off the screenshot")))?;
                let diff = [expect.r(), expect.g(), expect.b()]
                    .iter()
                    .zip(got)
                    .map(|(&a, b)| a.abs_diff(b))
                    .max()
                    .unwrap_or(0);
                worst_channel = worst_channel.max(diff);
                mismatched += usize::from(diff > tolerance);
            }
        }
        let check = HeatCheck {
            choice: choice_against_oracle(c).map_err(js)?,
            cells: v.width * v.height,
            oracle_worst_abs,
            worst_channel,
            mismatched,
            distinct_colours: colours.len(),
        };
        serde_json::to_string(&check).map_err(js)
    })
}

/// A learned pattern's choice (MoBA's blocks, DSA's keys) against the f64 oracle's on the
/// panel's own problem: `(rows whose choice differs, every difference a near-tie)`.
fn choice_against_oracle(c: &longctx::app::Computed) -> longctx::Result<Option<(usize, bool)>> {
    use longctx::app::Pattern;
    use longctx::app::patterns::{MOBA, dsa_indexer};
    let Some(chosen) = &c.selected else { return Ok(None) };
    let s = c.spec.shape;
    let spec = c.settings.spec(s.n, s.head_dim)?;
    let (diffs, ties) = match c.settings.pattern {
        Pattern::Moba => {
            let want = longctx::contract::selection::moba_select_f64(&spec, &MOBA, &c.q, &c.k)?;
            longctx::contract::selection::compare_selection(&spec, &MOBA, &c.q, &c.k, &want, chosen, 1e-5)
        }
        Pattern::Dsa => {
            let (dsa, (qi, ki, w)) = dsa_indexer(&spec, &c.q, &c.k)?;
            let ix = longctx::contract::dsa::Indexer { q: &qi, k: &ki, w: &w };
            let bare = longctx::AttnSpec::new(spec.shape);
            let want = longctx::contract::dsa::dsa_select_f64(&bare, &dsa, &ix)?;
            longctx::contract::dsa::compare_dsa_selection(&bare, &dsa, &ix, &want, chosen, 1e-5)
        }
        _ => return Ok(None),
    };
    Ok(Some((diffs.len(), ties)))
}

/// An 8-bit RGB(A) screenshot.
struct Rgb {
    width: usize,
    height: usize,
    channels: usize,
    bytes: Vec<u8>,
}

impl Rgb {
    fn at(&self, x: i64, y: i64) -> Option<[u8; 3]> {
        let (x, y) = (usize::try_from(x).ok()?, usize::try_from(y).ok()?);
        if x >= self.width || y >= self.height {
            return None;
        }
        let at = (y * self.width + x) * self.channels;
        Some([self.bytes[at], self.bytes[at + 1], self.bytes[at + 2]])
    }
}

fn decode_rgb(png_bytes: &[u8]) -> Result<Rgb, JsValue> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes)).read_info().map_err(js)?;
    let mut bytes = vec![0; reader.output_buffer_size().ok_or_else(|| js("the screenshot is too large"))?];
    let info = reader.next_frame(&mut bytes).map_err(js)?;
    let channels = match (info.color_type, info.bit_depth) {
        (png::ColorType::Rgb, png::BitDepth::Eight) => 3,
        (png::ColorType::Rgba, png::BitDepth::Eight) => 4,
        other => return Err(js(format!("screenshot format {other:?}: expected 8-bit RGB or RGBA"))),
    };
    bytes.truncate(info.buffer_size());
    Ok(Rgb { width: info.width as usize, height: info.height as usize, channels, bytes })
}
