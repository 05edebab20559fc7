//! longctx in the browser. [`run_all`] runs flash forward and backward on a few odd-sized
//! cases (causal, window, ALiBi, GQA, a block mask; N and M not multiples of any tile and
//! N ≠ M) against the f64 oracle and times them, on two devices of the same adapter: one
//! with the adapter's own limits, one with WebGPU's default limits (16 KiB of workgroup
//! storage, 128 MiB bindings), so that tile choice is exercised on both. The page calls it
//! through [`run`] (wasm32); `src/bin/native.rs` runs the same cases natively, so that
//! `scripts/browser-test` can print browser / native time ratios.

use longctx::contract::inputs::{seeded, seeded_qkv};
use longctx::contract::reference::{attention_backward_f64, attention_f64, rel_error};
use longctx::runtime::timing::time_wall_async;
use longctx::{
    Alibi, Attention, AttnShape, AttnSpec, Backward, DeviceTensors, Gpu, GpuOptions, GradTensors, Kernel,
    Mask, Result, Window,
};
use serde::Serialize;

/// The largest relative error (‖got − oracle‖ / ‖oracle‖) a check accepts.
pub const BOUND: f64 = 1e-5;

/// The cases: a name and its spec.
pub fn cases() -> Result<Vec<(&'static str, AttnSpec)>> {
    let shape = |heads, kv_heads, n, m, head_dim| AttnShape { batch: 2, heads, kv_heads, n, m, head_dim };
    let blocks = shape(2, 2, 150, 170, 64);
    let bs = 24;
    let (rows, cols) = (blocks.n.div_ceil(bs), blocks.m.div_ceil(bs));
    // per head: the diagonal, the first key tile (so that every row sees a key) and a
    // head-dependent third of the rest
    let cells: Vec<f32> = (0..blocks.heads * rows * cols)
        .map(|i| {
            let (h, r, c) = (i / (rows * cols), i / cols % rows, i % cols);
            u8::from(r == c || c == 0 || (r + c + h) % 3 == 0) as f32
        })
        .collect();
    let mask = Mask::block_mask(&blocks, bs, &[blocks.heads, rows, cols], &cells)?;
    Ok(vec![
        ("causal", AttnSpec::new(shape(2, 2, 77, 133, 64)).causal(true)),
        ("window", AttnSpec::new(shape(2, 2, 101, 157, 64)).window(Some(Window::new(16, 4)))),
        ("alibi", AttnSpec::new(shape(4, 4, 70, 110, 32)).alibi(Alibi::Standard).causal(true)),
        ("gqa", AttnSpec::new(shape(6, 2, 113, 89, 64))),
        ("block mask", AttnSpec::new(blocks).mask(Some(mask))),
    ])
}

/// One device the cases ran on.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceInfo {
    /// `adapter` (the adapter's own limits) or `webgpu-default` (WebGPU's defaults).
    pub limits: String,
    /// The adapter as wgpu reports it.
    pub adapter: String,
    /// Its backend, device type, driver.
    pub backend: String,
    /// `max_compute_workgroup_storage_size` of the device.
    pub workgroup_storage: u32,
    /// `max_storage_buffer_binding_size` of the device.
    pub storage_binding: u64,
    /// The optional features the device was created with.
    pub features: String,
}

/// One checked and timed kernel call.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// Which device ([`DeviceInfo::limits`]).
    pub limits: String,
    /// The case's name.
    pub case: String,
    /// `B×H/Hkv×N×M×D`.
    pub shape: String,
    /// `forward` or `backward`.
    pub pass: String,
    /// The tile configuration chosen for this device.
    pub tiles: String,
    /// The worst relative error of the outputs (O and LSE, or dQ, dK and dV).
    pub rel_err: f64,
    /// Median milliseconds, submit to done on the host clock.
    pub ms: f64,
    /// What failed, if anything did (the error is then infinite).
    pub error: Option<String>,
}

/// Everything one run found.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The inputs' seed (replay with it).
    pub seed: String,
    /// [`BOUND`].
    pub bound: f64,
    /// Threads the f64 oracle's rayon pool has (1 in the browser).
    pub oracle_threads: usize,
    /// Timed repeats per call (after one untimed).
    pub repeats: usize,
    /// The devices, in the order of the rows.
    pub devices: Vec<DeviceInfo>,
    /// One row per (device, case, pass).
    pub rows: Vec<Row>,
}

/// The two devices: the adapter's limits, and WebGPU's defaults.
async fn devices() -> Result<Vec<(DeviceInfo, Gpu)>> {
    let mut out = Vec::new();
    for (name, limits) in [("adapter", None), ("webgpu-default", Some(wgpu::Limits::default()))] {
        let gpu = Gpu::new_async(&GpuOptions { limits, tuned: false, ..Default::default() }).await?;
        let (i, l) = (gpu.info(), gpu.limits());
        let info = DeviceInfo {
            limits: name.into(),
            adapter: format!("{} (vendor {:#x}, device {:#x})", i.name, i.vendor, i.device),
            backend: format!("{:?}, {:?}, {} {}", i.backend, i.device_type, i.driver, i.driver_info),
            workgroup_storage: l.max_compute_workgroup_storage_size,
            storage_binding: l.max_storage_buffer_binding_size,
            features: format!("{:?}", gpu.features()),
        };
        out.push((info, gpu));
    }
    Ok(out)
}

/// Runs every case on both devices with inputs from `seed`: `repeats` timed runs per call.
pub async fn run_all(seed: u64, repeats: usize) -> Result<Report> {
    let devices = devices().await?;
    let cases = cases()?;
    let mut rows = Vec::new();
    for (info, gpu) in &devices {
        for (name, spec) in &cases {
            let s = spec.shape;
            let row = |pass: &str| Row {
                limits: info.limits.clone(),
                case: name.to_string(),
                shape: format!("{}×{}/{}×{}×{}×{}", s.batch, s.heads, s.kv_heads, s.n, s.m, s.head_dim),
                pass: pass.into(),
                tiles: String::new(),
                rel_err: f64::INFINITY,
                ms: f64::NAN,
                error: None,
            };
            let (mut fwd, mut bwd) = (row("forward"), row("backward"));
            if let Err(e) = check_case(gpu, spec, seed, repeats, &mut fwd, &mut bwd).await {
                let failed = if fwd.error.is_none() && fwd.ms.is_nan() { &mut fwd } else { &mut bwd };
                failed.error = Some(e.to_string());
            }
            rows.push(fwd);
            rows.push(bwd);
        }
    }
    Ok(Report {
        seed: seed.to_string(),
        bound: BOUND,
        // the oracle's pool (rayon falls back to the calling thread where none can be spawned)
        oracle_threads: rayon::current_num_threads(),
        repeats,
        devices: devices.into_iter().map(|(i, _)| i).collect(),
        rows,
    })
}

/// Checks and times the forward (into `fwd`) and the backward (into `bwd`) of one case.
async fn check_case(
    gpu: &Gpu,
    spec: &AttnSpec,
    seed: u64,
    repeats: usize,
    fwd: &mut Row,
    bwd: &mut Row,
) -> Result<()> {
    let (q, k, v) = seeded_qkv(spec, seed);
    let d_o = seeded(spec.shape.q_len(), seed ^ 0x5eed);

    // forward: the encode path, awaited
    let attn = Attention::new(gpu, Kernel::Flash, spec)?;
    fwd.tiles = attn.flash().map_or(String::new(), |f| {
        let c = f.config();
        format!("br {} bc {} p {} sg {}", c.br, c.bc, c.p, c.sg)
    });
    let io = DeviceTensors::upload(gpu, spec, &q, &k, &v)?;
    io.poison(gpu);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    attn.encode(gpu, &mut enc, &io.buffers())?;
    gpu.queue.submit([enc.finish()]);
    let out = io.read_async(gpu).await?;
    let (o_ref, lse_ref) = attention_f64(spec, &q, &k, &v)?;
    fwd.rel_err = rel_error(&out.o, &o_ref).max(lse_error(&out.lse, &lse_ref));
    fwd.ms = time(gpu, repeats, |enc| attn.encode(gpu, enc, &io.buffers())).await?;

    // backward: run_async (forward and backward on fresh buffers, poisoned), then timed alone
    let backward = Backward::new(gpu, spec)?;
    let c = backward.config();
    bwd.tiles = format!("br {} bc {} sg {}", c.br, c.bc, c.sg);
    let (_, g) = backward.run_async(gpu, &q, &k, &v, &d_o).await?;
    let (dq, dk, dv) = attention_backward_f64(spec, &q, &k, &v, &d_o)?;
    bwd.rel_err = rel_error(&g.dq, &dq).max(rel_error(&g.dk, &dk)).max(rel_error(&g.dv, &dv));
    let grads = GradTensors::upload(gpu, spec, &d_o)?;
    bwd.ms = time(gpu, repeats, |enc| backward.encode(gpu, enc, &grads.buffers(&io))).await?;
    Ok(())
}

/// LSE's relative error over rows the oracle sees keys in; infinite when a fully masked
/// row is not `-inf` or a visible one is not finite.
fn lse_error(got: &[f32], oracle: &[f64]) -> f64 {
    let (mut g, mut o) = (Vec::new(), Vec::new());
    for (&x, &y) in got.iter().zip(oracle) {
        match (y.is_finite(), x.is_finite()) {
            (true, true) => {
                g.push(x);
                o.push(y);
            }
            (false, false) if x == f32::NEG_INFINITY => {}
            _ => return f64::INFINITY,
        }
    }
    rel_error(&g, &o)
}

/// Median milliseconds of `repeats` submissions of what `record` records (after one untimed),
/// from submit to done, each started on an idle queue.
async fn time(
    gpu: &Gpu,
    repeats: usize,
    record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<()>,
) -> Result<f64> {
    Ok(time_wall_async(gpu, 1, repeats, record).await?.median())
}

#[cfg(target_arch = "wasm32")]
mod visualiser;

#[cfg(target_arch = "wasm32")]
mod page {
    use wasm_bindgen::prelude::*;

    #[wasm_bindgen]
    extern "C" {
        #[wasm_bindgen(js_namespace = console, js_name = error)]
        fn console_error(s: &str);
        #[wasm_bindgen(js_namespace = console, js_name = warn)]
        fn console_warn(s: &str);
    }

    /// The library's warnings and errors on the page's console (where the driver sees them).
    struct Console;

    impl log::Log for Console {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record) {
            let text = format!("{}: {}", r.target(), r.args());
            match r.level() {
                log::Level::Error => console_error(&text),
                _ => console_warn(&text),
            }
        }
        fn flush(&self) {}
    }

    /// Panics and the library's warnings on the page's console, once per page.
    pub(crate) fn to_console() {
        std::panic::set_hook(Box::new(|info| console_error(&format!("panic: {info}"))));
        if log::set_logger(&Console).is_ok() {
            log::set_max_level(log::LevelFilter::Warn);
        }
    }

    /// Runs every case (see [`crate::run_all`]) and returns the report as JSON. `seed`: a
    /// decimal u64, or empty for a fresh one.
    #[wasm_bindgen]
    pub async fn run(seed: String, repeats: u32) -> Result<String, JsValue> {
        to_console();
        let seed = match seed.trim() {
            "" => rand::random(),
            s => s.parse().map_err(|_| JsValue::from_str(&format!("seed `{s}` is not a u64")))?,
        };
        let report =
            crate::run_all(seed, repeats as usize).await.map_err(|e| JsValue::from_str(&e.to_string()))?;
        serde_json::to_string(&report).map_err(|e| JsValue::from_str(&e.to_string()))
    }
}
