//! Memory panel: the planner's table for a model preset and context, and memory against
//! context for naive vs flash training and MHA vs GQA vs MQA caches, with GPU capacities.

use egui_plot::Corner;

use super::style::{Axis, ChartData, Mark, Unit, chart_ui};

use crate::measure::plan::{
    GPUS, Link, MemoryPlan, ModelShape, RING_GPUS, RingMemoryPlan, context_cost_ratio,
};

/// The memory panel's inputs.
pub struct MemoryState {
    /// Model preset, one of [`ModelShape::PRESETS`].
    pub preset: &'static str,
    /// Context length in K tokens (×1024).
    pub n_k: usize,
    /// Ranks of the ring-attention plan.
    pub ranks: usize,
    /// Its GPU, an index into [`RING_GPUS`].
    pub gpu: usize,
    /// Its link.
    pub link: Link,
}

impl Default for MemoryState {
    fn default() -> Self {
        Self { preset: "llama-7b", n_k: 100, ranks: 8, gpu: 2, link: Link::NvLink }
    }
}

fn gb(b: u64) -> String {
    format!("{:.1} GB", b as f64 / 1e9)
}

/// Draws the plan table (batch 1, bf16) with GPUs needed, and training memory and KV cache
/// against context on log–log axes with each GPU's capacity.
pub(crate) fn memory_ui(ui: &mut egui::Ui, st: &mut MemoryState) {
    ui.horizontal(|ui| {
        egui::ComboBox::from_label("model").selected_text(st.preset).show_ui(ui, |ui| {
            for p in ModelShape::PRESETS {
                ui.selectable_value(&mut st.preset, p, p);
            }
        });
        ui.add(egui::Slider::new(&mut st.n_k, 1..=10240).logarithmic(true).text("context (K tokens)"));
    });
    let Some(model) = ModelShape::preset(st.preset) else {
        ui.label(format!("unknown model preset `{}`", st.preset));
        return;
    };
    let n = st.n_k * 1024;
    // presets at 1K–256K tokens are far below 2^64 bytes; an error is shown, never a panic
    let plan = match MemoryPlan::new(&model, n, 1, 2) {
        Ok(p) => p,
        Err(e) => {
            ui.label(e.to_string());
            return;
        }
    };
    // the context cost model of docs/DESIGN.md §2
    ui.label(format!(
        "{}: {:.2} B parameters, bf16; growing the context 2K -> {}K costs {:.1}x by the cost model (d + p·n)/(d + n)",
        model.name,
        plan.params as f64 / 1e9,
        st.n_k,
        context_cost_ratio(model.d_model, 2048, n)
    ));
    egui::Grid::new("plan table").striped(true).show(ui, |ui| {
        ui.strong("memory");
        ui.strong("bytes");
        for (gpu, _) in GPUS {
            ui.strong(gpu);
        }
        ui.end_row();
        for (name, b) in [
            ("weights", plan.weights),
            ("KV cache (model's kv heads)", plan.kv_cache),
            ("KV cache as MQA", plan.kv_cache_mqa),
            ("training, naive attention", plan.training_total_naive),
            ("training, flash attention", plan.training_total_flash),
        ] {
            ui.label(name);
            ui.label(gb(b));
            for (_, k) in MemoryPlan::gpus_needed(b) {
                ui.label(if k <= 1 { "fits 1".to_string() } else { format!("{k} GPUs") });
            }
            ui.end_row();
        }
    });
    ring_ui(ui, st, &model, n);
    let ks: Vec<usize> = (0..=9).map(|i| 1usize << i).map(|k| k * 1024).collect(); // 1K … 512K
    let series = |f: &dyn Fn(&MemoryPlan) -> u64| -> Vec<[f64; 2]> {
        ks.iter()
            .filter_map(|&n| MemoryPlan::new(&model, n, 1, 2).ok().map(|p| [n as f64, f(&p) as f64]))
            .collect()
    };
    let capacities = |chart: &mut ChartData| {
        for (gpu, cap) in GPUS {
            chart.add(gpu, Mark::HLine, vec![[1.0, cap as f64]]);
        }
    };
    let height = (ui.available_height() - 30.0).clamp(240.0, 640.0);
    ui.columns(2, |cols| {
        let context = || Axis::log("context", Unit::Tokens);
        let mut train =
            ChartData::new("training memory against context", context(), Axis::log("memory", Unit::Bytes));
        train.add("naive attention", Mark::Line, series(&|pl| pl.training_total_naive));
        train.add("flash attention", Mark::Line, series(&|pl| pl.training_total_flash));
        capacities(&mut train);
        cols[0].label(&train.title);
        chart_ui(&mut cols[0], "train memory", train, Corner::LeftTop, None, height);
        let mut kv =
            ChartData::new("KV cache against context", context(), Axis::log("KV cache", Unit::Bytes));
        kv.add("MHA", Mark::Line, series(&|pl| pl.kv_cache_mha));
        kv.add("GQA (8)", Mark::Line, series(&|pl| pl.kv_cache_gqa8));
        kv.add("MQA", Mark::Line, series(&|pl| pl.kv_cache_mqa));
        capacities(&mut kv);
        cols[1].label(&kv.title);
        chart_ui(&mut cols[1], "kv memory plan", kv, Corner::RightBottom, None, height);
    });
}

/// Ring attention over `st.ranks` GPUs at context `n` (causal, zigzag, 40 % of the BF16
/// peak): memory per rank and one ring step's compute against its K/V transfer.
fn ring_ui(ui: &mut egui::Ui, st: &mut MemoryState, model: &ModelShape, n: usize) {
    ui.separator();
    ui.horizontal(|ui| {
        ui.label("ring attention over");
        ui.add(egui::Slider::new(&mut st.ranks, 1..=64).logarithmic(true).text("GPUs"));
        egui::ComboBox::from_id_salt("ring gpu")
            .selected_text(RING_GPUS[st.gpu].name.to_uppercase())
            .show_ui(ui, |ui| {
                for (i, g) in RING_GPUS.iter().enumerate() {
                    ui.selectable_value(&mut st.gpu, i, g.name.to_uppercase());
                }
            });
        ui.selectable_value(&mut st.link, Link::NvLink, "NVLink");
        ui.selectable_value(&mut st.link, Link::InfiniBand, "InfiniBand");
    });
    let gpu = RING_GPUS[st.gpu];
    match RingMemoryPlan::new(model, n, 1, 2, st.ranks, gpu, st.link, 0.4, true) {
        Ok(r) => {
            ui.label(format!(
                "{} tokens per rank: KV cache {} + weights {} + 2 blocks in flight {} = {} per rank ({} in {}); training {} per rank",
                r.tokens_per_rank,
                gb(r.kv_cache),
                gb(r.weights),
                gb(r.blocks_in_flight),
                gb(r.inference_per_rank),
                if r.inference_per_rank <= gpu.memory { "fits" } else { "does not fit" },
                gb(gpu.memory),
                gb(r.training_per_rank)
            ));
            ui.label(format!(
                "one ring step (one layer, causal): compute {:.2} ms at 40 % of {:.0} TFLOP/s, K/V transfer {:.2} ms at {:.0} GB/s: {} (hidden from {} tokens per rank)",
                r.step_compute_s * 1e3,
                gpu.bf16_tflops,
                r.step_transfer_s * 1e3,
                r.link_gbps,
                if r.transfer_hidden() { "the transfer hides behind the compute" } else { "the transfer is exposed" },
                r.min_tokens_to_hide
            ));
        }
        Err(e) => {
            ui.label(e.to_string());
        }
    }
}
