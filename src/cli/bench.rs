//! `longctx bench`: validated timings of the attention kernels.

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use longctx::bench::{fitted_exponent, time_attention};
use longctx::reference::{attention_f64, attention_rows_f64, rel_error};
use longctx::{Alibi, Attention, AttnShape, AttnSpec, DeviceTensors, Gpu, Kernel, Window};
use rand::{Rng, SeedableRng, rngs::StdRng};

use super::DeviceArgs;

/// Largest N·M per head at which the whole f64 oracle validates a configuration; above it
/// SPOT_ROWS evenly spaced rows are checked.
const ORACLE_MAX_PAIRS: usize = 1024 * 1024;
/// Rows checked against the oracle above that size.
const SPOT_ROWS: usize = 64;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
FLOPs are counted as 4·B·H·D·(visible query-key pairs): QKᵀ and PV, one multiply and one add
each; softmax, masking and bias are not counted. Times are medians of --reps runs after one
warm-up, submit-to-idle on the host clock, inputs resident on the device.")]
pub struct BenchArgs {
    /// Sequence lengths N (= M), comma-separated; k = 1024 (e.g. 512,1k,2k).
    #[arg(long, value_delimiter = ',', default_values_t = ["256".to_string(), "512".into(), "1k".into(), "2k".into()])]
    n: Vec<String>,
    /// Head dim.
    #[arg(long, default_value_t = 64)]
    d: usize,
    /// Query heads.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Key/value heads (default: = heads).
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Kernels to time, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = ["flash".to_string(), "naive".into()])]
    kernels: Vec<String>,
    /// Only causal (default: both dense and causal).
    #[arg(long)]
    causal: bool,
    /// Add ALiBi.
    #[arg(long)]
    alibi: bool,
    /// Local window L,R.
    #[arg(long, value_name = "L,R", allow_hyphen_values = true)]
    window: Option<String>,
    /// Timed repeats per configuration.
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

/// Parses `512`, `4k`, `1K`.
pub fn parse_size(s: &str) -> anyhow::Result<usize> {
    let t = s.trim().to_lowercase();
    let (num, mul) = match t.strip_suffix('k') {
        Some(x) => (x, 1024),
        None => (t.as_str(), 1),
    };
    let v: usize = num.parse().with_context(|| format!("size `{s}`: expected a number like 512 or 4k"))?;
    Ok(v * mul)
}

fn kernel(name: &str) -> anyhow::Result<Kernel> {
    match name.trim() {
        "flash" => Ok(Kernel::Flash),
        "naive" => Ok(Kernel::Naive),
        other => anyhow::bail!("unknown kernel `{other}`; choose from flash, naive"),
    }
}

pub fn run(dev: &DeviceArgs, a: &BenchArgs) -> anyhow::Result<()> {
    let gpu = dev.gpu()?;
    let ns = a.n.iter().map(|s| parse_size(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let kernels = a.kernels.iter().map(|s| kernel(s)).collect::<anyhow::Result<Vec<_>>>()?;
    let window = a.window.as_deref().map(Window::parse).transpose()?;
    let causal_modes: &[bool] = if a.causal { &[true] } else { &[false, true] };
    let info = gpu.info();
    println!("adapter: {} ({:?}, {})", info.name, info.backend, info.driver);

    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "kernel",
        "mask",
        "N",
        "D",
        "H/Hkv",
        "median ms",
        "min ms",
        "max ms",
        "GFLOP/s",
        "rel err",
        "scratch MiB",
    ]);
    let mut curves: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for &causal in causal_modes {
        for &kern in &kernels {
            let mut curve = Vec::new();
            for &n in &ns {
                let shape = AttnShape {
                    batch: 1,
                    heads: a.heads,
                    kv_heads: a.kv_heads.unwrap_or(a.heads),
                    n,
                    m: n,
                    head_dim: a.d,
                };
                let spec = AttnSpec::new(shape).causal(causal).window(window).alibi(if a.alibi {
                    Alibi::Standard
                } else {
                    Alibi::Off
                });
                let mask = mask_name(&spec);
                match bench_one(&gpu, kern, &spec, a.reps) {
                    Ok(r) => {
                        let gflops = spec.flops() / (r.median_ms * 1e-3) / 1e9;
                        curve.push((n as f64, r.median_ms));
                        table.add_row([
                            kern.name().to_string(),
                            mask,
                            n.to_string(),
                            a.d.to_string(),
                            format!("{}/{}", shape.heads, shape.kv_heads),
                            format!("{:.2}", r.median_ms),
                            format!("{:.2}", r.min_ms),
                            format!("{:.2}", r.max_ms),
                            format!("{gflops:.2}"),
                            format!("{:.1e} vs {}", r.err, r.reference),
                            format!("{:.2}", r.scratch as f64 / (1 << 20) as f64),
                        ]);
                    }
                    Err(e) => {
                        table.add_row([
                            kern.name().to_string(),
                            mask,
                            n.to_string(),
                            a.d.to_string(),
                            String::new(),
                            format!("skipped: {e}"),
                        ]);
                    }
                }
            }
            curves.push((format!("{} {}", kern.name(), if causal { "causal" } else { "dense" }), curve));
        }
    }
    println!("{table}");
    for (name, curve) in curves {
        if let Some(k) = fitted_exponent(&curve) {
            println!("time ∝ N^{k:.2}  ({name}, least squares on log-log over {} sizes)", curve.len());
        }
    }
    Ok(())
}

fn mask_name(spec: &AttnSpec) -> String {
    let mut parts = Vec::new();
    if spec.causal {
        parts.push("causal".to_string());
    }
    if let Some(w) = spec.window {
        let side = |x: Option<usize>| x.map_or("-1".to_string(), |v| v.to_string());
        parts.push(format!("window({},{})", side(w.left), side(w.right)));
    }
    if spec.alibi != Alibi::Off {
        parts.push("alibi".into());
    }
    if parts.is_empty() { "dense".into() } else { parts.join("+") }
}

struct BenchResult {
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    err: f64,
    reference: &'static str,
    scratch: u64,
}

/// Validates one configuration, then times it.
fn bench_one(gpu: &Gpu, kern: Kernel, spec: &AttnSpec, reps: usize) -> longctx::Result<BenchResult> {
    let s = spec.shape;
    let mut rng = StdRng::seed_from_u64(0x10c7);
    let mut rand_vec = |len: usize| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
    let (q, k, v) = (rand_vec(s.q_len()), rand_vec(s.kv_len()), rand_vec(s.kv_len()));
    let attn = Attention::new(gpu, kern, spec)?;
    let io = DeviceTensors::upload(gpu, spec, &q, &k, &v)?;
    io.poison(gpu);
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    attn.encode(gpu, &mut enc, &io.buffers())?;
    gpu.queue.submit([enc.finish()]);
    let out = io.read(gpu)?;
    let (err, reference) = if s.n * s.m <= ORACLE_MAX_PAIRS {
        let (o_ref, _) = attention_f64(spec, &q, &k, &v)?;
        (rel_error(&out.o, &o_ref), "oracle")
    } else {
        // Too big for the whole oracle: spot-check evenly spaced rows (first and last included).
        let total = s.lse_len();
        let rows: Vec<usize> = (0..SPOT_ROWS).map(|r| r * (total - 1) / (SPOT_ROWS - 1)).collect();
        let want = attention_rows_f64(spec, &q, &k, &v, &rows)?;
        let d = s.head_dim;
        let got: Vec<f32> = rows.iter().flat_map(|&r| out.o[r * d..(r + 1) * d].iter().copied()).collect();
        let want: Vec<f64> = want.into_iter().flat_map(|(o, _)| o).collect();
        (rel_error(&got, &want), "oracle rows")
    };
    let t = time_attention(gpu, &attn, &io, 1, reps)?;
    Ok(BenchResult {
        median_ms: t.median(),
        min_ms: t.min(),
        max_ms: t.max(),
        err,
        reference,
        scratch: attn.scratch_bytes(),
    })
}
