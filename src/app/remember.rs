//! State remembered between runs (eframe persistence): what the user set in each panel —
//! the problem, the view, the sweeps, the paths — not what was computed. A stored value is
//! clamped to what its control allows before it is used, so an edited or stale file cannot
//! ask for more than the panels would.

use serde::{Deserialize, Serialize};

use super::patterns::{Inputs, Pattern, Settings};
use super::{LongctxApp, Tab};
use crate::measure::plan::{Link, ModelShape, RING_GPUS};

/// The key under which eframe stores it.
pub(crate) const KEY: &str = "longctx";

/// Everything remembered, flat; missing fields (an older file) keep their defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Remembered {
    tab: String,
    // Patterns (also Tiles, ALiBi, Memory traffic)
    n: usize,
    d: usize,
    heads: usize,
    kv_heads: usize,
    causal: bool,
    window: Option<(usize, usize)>,
    alibi: bool,
    pattern: String,
    inputs: String,
    files: [String; 4],
    seed: u64,
    mods: String,
    head: usize,
    log_scale: bool,
    mean_pool: bool,
    // Memory traffic
    sram_kib: f32,
    playing: bool,
    // Decode
    decode: [usize; 3],
    // Memory plan
    preset: String,
    context_k: usize,
    ranks: usize,
    ring_gpu: usize,
    infiniband: bool,
    // Routing
    routing: [usize; 3],
    // Model
    model_dir: String,
    model_text: String,
    // Benchmarks
    bench_sizes: String,
    bench_kernels: [bool; 3],
    bench_reps: usize,
    bench_json: String,
    // Training
    runs_dir: String,
    results_path: String,
    sliding: bool,
    // Export
    export_dir: String,
}

impl Default for Remembered {
    fn default() -> Self {
        Self::default_app_fields()
    }
}

fn pattern_name(p: Pattern) -> &'static str {
    match p {
        Pattern::None => "None",
        Pattern::Longformer => "Longformer",
        Pattern::BigBird => "BigBird",
        Pattern::Global => "Global",
        Pattern::Segments => "Segments",
        Pattern::Moba => "MoBA",
        Pattern::Dsa => "DSA",
        Pattern::Nsa => "NSA",
    }
}

impl Remembered {
    /// The values a fresh app starts with.
    fn default_app_fields() -> Self {
        let p = super::patterns::PatternsState::default();
        Self::of_parts(
            Tab::Patterns,
            &p,
            &Default::default(),
            &Default::default(),
            &Default::default(),
            &Default::default(),
            &Default::default(),
            &Default::default(),
            &Default::default(),
            &Default::default(),
        )
    }

    /// What `app` would remember now.
    pub fn of(app: &LongctxApp) -> Self {
        Self::of_parts(
            app.tab,
            &app.patterns,
            &app.traffic,
            &app.decode,
            &app.memory,
            &app.routing,
            &app.model,
            &app.bench,
            &app.training,
            &app.export,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn of_parts(
        tab: Tab,
        p: &super::patterns::PatternsState,
        traffic: &super::traffic::TrafficState,
        decode: &super::decode::DecodeState,
        memory: &super::memory::MemoryState,
        routing: &super::routing::RoutingState,
        model: &super::model::ModelState,
        bench: &super::bench::BenchState,
        training: &super::training::TrainingState,
        export: &super::export::ExportState,
    ) -> Self {
        let s = &p.settings;
        let (inputs, files) = match &s.inputs {
            Inputs::Random => ("Random", Default::default()),
            Inputs::Structured => ("Structured", Default::default()),
            Inputs::Files { q, k, v, safetensors } => {
                ("Files", [q.clone(), k.clone(), v.clone(), safetensors.clone()])
            }
        };
        Self {
            tab: tab.label().into(),
            n: s.n,
            d: s.d,
            heads: s.heads,
            kv_heads: s.kv_heads,
            causal: s.causal,
            window: s.window,
            alibi: s.alibi,
            pattern: pattern_name(s.pattern).into(),
            inputs: inputs.into(),
            files,
            seed: s.seed,
            mods: s.mods.clone(),
            head: p.head,
            log_scale: p.log_scale,
            mean_pool: p.mean_pool,
            sram_kib: traffic.sram_kib,
            playing: traffic.playing,
            decode: [decode.heads, decode.d, decode.layers],
            preset: memory.preset.into(),
            context_k: memory.n_k,
            ranks: memory.ranks,
            ring_gpu: memory.gpu,
            infiniband: memory.link == Link::InfiniBand,
            routing: [routing.n, routing.d_model, routing.fraction_inv],
            model_dir: model.dir.clone(),
            model_text: model.text.clone(),
            bench_sizes: bench.sizes.clone(),
            bench_kernels: [bench.flash, bench.naive, bench.causal],
            bench_reps: bench.reps,
            bench_json: bench.json_path.clone(),
            runs_dir: training.runs_dir.clone(),
            results_path: training.results_path.clone(),
            sliding: training.sliding,
            export_dir: export.dir.clone(),
        }
    }

    /// Sets `app`'s controls from what was remembered, each clamped to its control's range.
    pub fn restore(self, app: &mut LongctxApp) {
        app.tab = Tab::ALL.into_iter().find(|t| t.label() == self.tab).unwrap_or(Tab::Patterns);
        let heads = self.heads.clamp(1, 64);
        let window = self.window.map(|(l, r)| (l.min(131072), r.min(131072)));
        let inputs = match self.inputs.as_str() {
            "Random" => Inputs::Random,
            "Files" => {
                let [q, k, v, safetensors] = self.files;
                Inputs::Files { q, k, v, safetensors }
            }
            _ => Inputs::Structured,
        };
        app.patterns.settings = Settings {
            n: self.n.clamp(1, 131072),
            d: self.d.clamp(4, 256),
            heads,
            kv_heads: self.kv_heads.clamp(1, heads),
            causal: self.causal,
            window,
            alibi: self.alibi,
            pattern: super::patterns_pattern(&self.pattern),
            inputs,
            seed: self.seed,
            mods: self.mods,
        };
        app.patterns.head = self.head.min(heads - 1);
        app.patterns.log_scale = self.log_scale;
        app.patterns.mean_pool = self.mean_pool;
        app.traffic.sram_kib = if self.sram_kib.is_finite() { self.sram_kib.clamp(4.0, 228.0) } else { 32.0 };
        app.traffic.playing = self.playing;
        let [h, d, l] = self.decode;
        (app.decode.heads, app.decode.d, app.decode.layers) =
            (h.clamp(1, 128), d.clamp(4, 256), l.clamp(1, 128));
        if let Some(&preset) = ModelShape::PRESETS.iter().find(|p| **p == self.preset) {
            app.memory.preset = preset;
        }
        app.memory.n_k = self.context_k.clamp(1, 10240);
        app.memory.ranks = self.ranks.clamp(1, 64);
        app.memory.gpu = self.ring_gpu.min(RING_GPUS.len() - 1);
        app.memory.link = if self.infiniband { Link::InfiniBand } else { Link::NvLink };
        let [n, dm, f] = self.routing;
        (app.routing.n, app.routing.d_model, app.routing.fraction_inv) =
            (n.clamp(16, 8192), (dm.clamp(64, 512) / 64) * 64, f.clamp(1, 64));
        app.model.dir = self.model_dir;
        app.model.text = self.model_text;
        app.bench.sizes = self.bench_sizes;
        [app.bench.flash, app.bench.naive, app.bench.causal] = self.bench_kernels;
        app.bench.reps = self.bench_reps.clamp(1, 50);
        app.bench.json_path = self.bench_json;
        app.training.runs_dir = self.runs_dir;
        app.training.results_path = self.results_path;
        app.training.sliding = self.sliding;
        app.export.dir = self.export_dir;
    }
}
