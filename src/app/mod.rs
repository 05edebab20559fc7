//! `longctx viz`: the desktop visualiser. It runs the engine on eframe's own wgpu device (the
//! app is longctx's first embedder), one file per panel; functions that draw end in `_ui`.

// The panels' state is public for the app's tests (tests/app.rs drives the real app under
// egui_kittest), not for embedders: hidden from the docs.
mod alibi;
mod bench;
mod colormap;
mod decode;
#[doc(hidden)]
pub mod export;
mod memory;
// the Model panel runs BERT (feature `bert`); without it the panel says so
#[cfg_attr(not(feature = "bert"), path = "model_off.rs")]
#[doc(hidden)]
pub mod model;
#[doc(hidden)]
pub mod patterns;
#[doc(hidden)]
pub mod remember;
mod routing;
#[doc(hidden)]
pub mod style;
mod tiles;
mod traffic;
#[doc(hidden)]
pub mod training;

use std::sync::mpsc;

#[doc(hidden)]
pub use patterns::{Computed, Pattern, Settings};

/// A sparse pattern by name (`None`, `Longformer`, `BigBird`, `Global`, `Segments`, `MoBA`, `DSA`, `NSA`).
#[doc(hidden)]
pub fn patterns_pattern(name: &str) -> Pattern {
    match name {
        "Longformer" => Pattern::Longformer,
        "BigBird" => Pattern::BigBird,
        "Global" => Pattern::Global,
        "Segments" => Pattern::Segments,
        "MoBA" => Pattern::Moba,
        "DSA" => Pattern::Dsa,
        "NSA" => Pattern::Nsa,
        _ => Pattern::None,
    }
}

use crate::runtime::Gpu;

/// The panels, in tab order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tab {
    /// Attention heatmaps of the current problem.
    Patterns,
    /// The flash kernel's block map: tiles visited and skipped.
    Tiles,
    /// ALiBi slopes, bias and its effect on attention.
    Alibi,
    /// Device-memory traffic of naive vs flash attention.
    Traffic,
    /// KV-cache memory and decoding speed against context.
    Decode,
    /// The memory planner.
    Memory,
    /// CoLT5 conditional routing.
    Routing,
    /// A BERT encoder's attention maps.
    Model,
    /// Benchmark sweeps and `longctx bench --json` records.
    Bench,
    /// Training runs' loss curves and the extrapolation chart.
    Training,
}

impl Tab {
    /// Every tab, in display order.
    pub const ALL: [Tab; 10] = [
        Tab::Patterns,
        Tab::Tiles,
        Tab::Alibi,
        Tab::Traffic,
        Tab::Decode,
        Tab::Memory,
        Tab::Routing,
        Tab::Model,
        Tab::Bench,
        Tab::Training,
    ];
    /// The tab's caption.
    pub fn label(self) -> &'static str {
        match self {
            Tab::Patterns => "Patterns",
            Tab::Tiles => "Tiles",
            Tab::Alibi => "ALiBi",
            Tab::Traffic => "Memory traffic",
            Tab::Decode => "Decode",
            Tab::Memory => "Memory plan",
            Tab::Routing => "Routing",
            Tab::Model => "Model",
            Tab::Bench => "Benchmarks",
            Tab::Training => "Training",
        }
    }
}

/// Work that runs off the UI thread (or inline, in tests), with its result collected later.
/// The work is a future made where it runs, so the same code serves both targets: on native
/// a thread drives it (the GPU futures wait on the queue when polled), in the browser the
/// page's event loop does (`spawn_local`), between frames.
pub struct Job<T> {
    rx: mpsc::Receiver<Result<T, String>>,
}

impl<T: Send + 'static> Job<T> {
    /// Starts the future `work` makes, on a thread (native) or the page's event loop
    /// (browser), or runs it to completion now when `inline` (native only: tests).
    pub fn start<F>(ctx: &egui::Context, inline: bool, work: impl FnOnce() -> F + Send + 'static) -> Self
    where
        F: std::future::Future<Output = Result<T, String>> + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let ctx = ctx.clone();
        let done = move |r| {
            let _ = tx.send(r);
            ctx.request_repaint();
        };
        #[cfg(not(target_arch = "wasm32"))]
        if inline {
            done(pollster::block_on(work()));
        } else {
            std::thread::spawn(move || done(pollster::block_on(work())));
        }
        #[cfg(target_arch = "wasm32")]
        {
            let _ = inline;
            wasm_bindgen_futures::spawn_local(async move { done(work().await) });
        }
        Self { rx }
    }

    /// The result, once ready.
    pub(crate) fn poll(&self) -> Option<Result<T, String>> {
        self.rx.try_recv().ok()
    }
}

/// The application state.
pub struct LongctxApp {
    /// The engine on eframe's device, or why there is none (shown instead of every panel).
    pub gpu: Result<Gpu, String>,
    /// The panel shown.
    pub tab: Tab,
    /// Patterns panel; its settings and computed problem also feed Tiles, ALiBi and Traffic.
    pub patterns: patterns::PatternsState,
    /// ALiBi panel.
    pub alibi: alibi::AlibiState,
    /// Memory-traffic panel.
    pub traffic: traffic::TrafficState,
    /// Decode panel.
    pub decode: decode::DecodeState,
    /// Memory-plan panel.
    pub memory: memory::MemoryState,
    /// Routing panel.
    pub routing: routing::RoutingState,
    /// Model panel.
    pub model: model::ModelState,
    /// Benchmarks panel.
    pub bench: bench::BenchState,
    /// Training panel.
    pub training: training::TrainingState,
    /// The export menu.
    pub export: export::ExportState,
    /// Run jobs in the UI thread (deterministic frames, for tests).
    pub inline_jobs: bool,
    /// Panels whose content is measured (Decode, Routing, Benchmarks, Model) start on first
    /// view; tests of pixel snapshots turn this off, as measured speeds differ run to run.
    pub first_views: bool,
    /// The app's egui context, for code outside a frame that changes the state (the page's
    /// probes) and must ask for one.
    pub egui: egui::Context,
}

impl LongctxApp {
    /// Builds the app on eframe's wgpu device (`cc.wgpu_render_state`).
    pub fn new(cc: &eframe::CreationContext<'_>) -> Self {
        let gpu = match &cc.wgpu_render_state {
            Some(rs) => Ok(Gpu::from_wgpu(rs.device.clone(), rs.queue.clone(), rs.adapter.get_info())
                .with_cached_tuning()),
            None => Err("eframe started without its wgpu renderer; longctx needs wgpu".to_string()),
        };
        Self {
            gpu,
            tab: Tab::Patterns,
            patterns: Default::default(),
            alibi: Default::default(),
            traffic: Default::default(),
            decode: Default::default(),
            memory: Default::default(),
            routing: Default::default(),
            model: Default::default(),
            bench: Default::default(),
            training: Default::default(),
            export: Default::default(),
            inline_jobs: false,
            first_views: true,
            egui: cc.egui_ctx.clone(),
        }
    }

    /// [`LongctxApp::new`] with the controls set as they were when the app last closed
    /// (eframe's storage), for the window.
    pub(crate) fn restored(cc: &eframe::CreationContext<'_>) -> Self {
        let mut app = Self::new(cc);
        if let Some(r) = cc.storage.and_then(|s| eframe::get_value::<remember::Remembered>(s, remember::KEY))
        {
            r.restore(&mut app);
        }
        app
    }

    /// [`LongctxApp::new`] with jobs run inline and no first-view measurements, for tests
    /// (set `first_views` to test those).
    pub fn new_inline(cc: &eframe::CreationContext<'_>) -> Self {
        Self { inline_jobs: true, first_views: false, ..Self::new(cc) }
    }
}

impl eframe::App for LongctxApp {
    /// For [`eframe::WebRunner::app_mut`]: the page's probes read and set the app's state.
    #[cfg(target_arch = "wasm32")]
    fn as_any_mut(&mut self) -> Option<&mut dyn std::any::Any> {
        Some(&mut *self)
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        eframe::set_value(storage, remember::KEY, &remember::Remembered::of(self));
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        egui::Panel::top("tabs").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("longctx");
                ui.separator();
                for tab in Tab::ALL {
                    ui.selectable_value(&mut self.tab, tab, tab.label());
                }
                // the page has no file system to export into
                #[cfg(not(target_arch = "wasm32"))]
                {
                    ui.separator();
                    export::export_ui(ui, &mut self.export);
                }
                if let Ok(g) = &self.gpu {
                    ui.separator();
                    let name = if g.info().name.is_empty() { "unnamed adapter" } else { &g.info().name };
                    ui.weak(format!("{name} ({:?})", g.info().backend));
                }
            });
        });
        export::begin_frame(ui.ctx(), &self.export);
        let central = egui::CentralPanel::default().show(ui, |ui| {
            let gpu = match &self.gpu {
                Ok(g) => g.clone(),
                Err(e) => {
                    ui.colored_label(egui::Color32::RED, e);
                    return;
                }
            };
            let inline = self.inline_jobs;
            if let Some(why) = not_in_the_browser(self.tab) {
                ui.label(why);
                return;
            }
            match self.tab {
                Tab::Patterns => patterns::patterns_ui(ui, &mut self.patterns, &gpu, inline),
                Tab::Tiles => tiles::tiles_ui(ui, &mut self.patterns),
                Tab::Alibi => alibi::alibi_ui(ui, &mut self.alibi, &self.patterns.settings),
                Tab::Traffic => {
                    traffic::traffic_ui(ui, &mut self.traffic, &self.patterns.settings, &gpu, inline)
                }
                Tab::Decode => decode::decode_ui(ui, &mut self.decode, &gpu, inline, self.first_views),
                Tab::Memory => memory::memory_ui(ui, &mut self.memory),
                Tab::Routing => routing::routing_ui(ui, &mut self.routing, &gpu, inline, self.first_views),
                Tab::Model => model::model_ui(ui, &mut self.model, &gpu, inline, self.first_views),
                Tab::Bench => bench::bench_ui(ui, &mut self.bench, &gpu, inline, self.first_views),
                Tab::Training => training::training_ui(ui, &mut self.training),
            }
        });
        export::end_frame(ui.ctx(), &mut self.export, self.tab.label(), central.response.rect);
    }
}

/// Why a panel is not shown in the browser (`None` where it is, and on native).
pub(crate) fn not_in_the_browser(tab: Tab) -> Option<&'static str> {
    if !cfg!(target_arch = "wasm32") {
        return None;
    }
    match tab {
        Tab::Model => Some(
            "The Model panel reads all-MiniLM-L6-v2 from a directory on disk, and a page has no \
             file system: run `longctx viz` natively.",
        ),
        Tab::Bench => Some(
            "Benchmark sweeps validate and time kernels with blocking waits on the GPU queue, \
             which a page cannot make: run `longctx bench` natively (scripts/browser-test prints \
             the page's own timings of flash forward and backward).",
        ),
        Tab::Training => Some(
            "The Training panel reads training runs from a directory on disk, and a page has no \
             file system: run `longctx viz` natively.",
        ),
        _ => None,
    }
}

/// longctx's device request on eframe's wgpu set-up (the adapter's limits and useful
/// features), so that the engine can share eframe's device.
fn request_engine_device(config: &mut egui_wgpu::WgpuConfiguration) {
    if let egui_wgpu::WgpuSetup::CreateNew(setup) = &mut config.wgpu_setup {
        if cfg!(target_arch = "wasm32") {
            // the kernels need compute shaders: WebGPU, never a WebGL fallback
            setup.instance_descriptor.backends = wgpu::Backends::BROWSER_WEBGPU;
        }
        setup.device_descriptor =
            std::sync::Arc::new(|adapter| crate::runtime::device_descriptor(adapter, None));
    }
}

/// Opens the visualiser window. The device is created by eframe with longctx's request
/// (the adapter's limits and useful features), then shared with the engine.
#[cfg(not(target_arch = "wasm32"))]
pub fn run() -> Result<(), eframe::Error> {
    let mut options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default().with_inner_size([1280.0, 860.0]).with_title("longctx"),
        ..Default::default()
    };
    request_engine_device(&mut options.wgpu_options);
    eframe::run_native("longctx", options, Box::new(|cc| Ok(Box::new(LongctxApp::restored(cc)))))
}

/// Starts the visualiser in a page, on `canvas`, on the browser's WebGPU; the settings are
/// remembered in the page's local storage. The runner gives access to the app
/// ([`eframe::WebRunner::app_mut`]) and to a panic's message.
#[cfg(target_arch = "wasm32")]
pub async fn run_web(canvas: eframe::web_sys::HtmlCanvasElement) -> Result<eframe::WebRunner, String> {
    let mut options = eframe::WebOptions::default();
    request_engine_device(&mut options.wgpu_options);
    let runner = eframe::WebRunner::new();
    runner
        .start(canvas, options, Box::new(|cc| Ok(Box::new(LongctxApp::restored(cc)))))
        .await
        .map_err(|e| e.as_string().unwrap_or_else(|| format!("{e:?}")))?;
    Ok(runner)
}
