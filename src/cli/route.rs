//! `longctx route`: the CoLT5 layer against its dense reference, per branch, in one run.

use std::path::PathBuf;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use longctx::measure::route::{RouteRecord, run_route};
use longctx::models::colt5::{Colt5Config, Colt5Weights};

use super::DeviceArgs;
use super::bench::parse_size;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
The CoLT5 layer (Ainslie et al. 2023): every token takes a light branch (local attention with
one head, FFN of d_model/2); routers pick --route-q queries and --route-kv keys/values for a
heavy attention (d_model/64 heads of 64) and --route-ffn tokens for a heavy FFN (4·d_model);
heavy outputs are scaled by the router score and added back. The dense reference sends every
token through both heavy branches. Each branch is submitted and timed on its own (host clock);
FLOPs count 2 per multiply-add of projections, attention (QKᵀ and PV over visible pairs) and
FFNs. The first config is checked against the f64 oracle when N ≤ 512.

Weights: seeded random, or --weights W.safetensors with tensors light.{wq,wk,wv,wo},
heavy.{wq,wk,wv,wo}, light_ffn.{w1,b1,w2,b2}, heavy_ffn.{w1,b1,w2,b2}, router.{q,kv,ffn}
(row-major [in, out]).

Example:
  longctx route --n 4k --d-model 256 --window 128 --route-q 1/8 --route-kv 1/8 --route-ffn 1/8")]
pub struct RouteArgs {
    /// Tokens N (k = 1024).
    #[arg(long, default_value = "4k")]
    n: String,
    #[arg(long, default_value_t = 256)]
    d_model: usize,
    /// Heavy attention heads (head dim = d_model / heads).
    #[arg(long)]
    heads: Option<usize>,
    /// Light attention window (keys p−W..=p+W).
    #[arg(long, default_value_t = 128)]
    window: usize,
    /// Routed queries: a count or a fraction like 1/8.
    #[arg(long, default_value = "1/8")]
    route_q: String,
    #[arg(long, default_value = "1/8")]
    route_kv: String,
    #[arg(long, default_value = "1/8")]
    route_ffn: String,
    /// Weights from a .safetensors file (names above).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Seed of random weights and inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the routed token indices (q, kv, ffn) to this .npy prefix: PREFIX_q.npy, …
    #[arg(long)]
    routed_out: Option<PathBuf>,
    /// Write the per-branch records as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn count(text: &str, n: usize) -> anyhow::Result<usize> {
    let k = match text.split_once('/') {
        Some((a, b)) => {
            let (a, b): (f64, f64) = (a.trim().parse()?, b.trim().parse()?);
            (n as f64 * a / b).round() as usize
        }
        None => parse_size(text)?,
    };
    if k == 0 || k > n {
        bail!("routing `{text}` gives {k} tokens of N = {n}; it must be 1..=N");
    }
    Ok(k)
}

pub fn run(dev: &DeviceArgs, a: &RouteArgs) -> anyhow::Result<()> {
    // every output checked (distinct, writable, not an input) before any work
    let routed: Vec<PathBuf> = a
        .routed_out
        .iter()
        .flat_map(|p| ["q", "kv", "ffn"].map(|t| PathBuf::from(format!("{}_{t}.npy", p.display()))))
        .collect();
    let outputs: Vec<&std::path::Path> =
        routed.iter().map(PathBuf::as_path).chain(a.json.as_deref()).collect();
    longctx::io::check_outputs(&outputs, &a.weights.as_deref().into_iter().collect::<Vec<_>>())?;
    let gpu = dev.gpu()?;
    let n = parse_size(&a.n)?;
    let mut cfg = Colt5Config::standard(n, a.d_model, a.window, 1.0);
    if let Some(h) = a.heads {
        if h == 0 || !a.d_model.is_multiple_of(h) {
            bail!("--heads {h} must divide d_model {}", a.d_model);
        }
        cfg.heads = h;
        cfg.head_dim = a.d_model / h;
    }
    cfg.route_q = count(&a.route_q, n)?;
    cfg.route_kv = count(&a.route_kv, n)?;
    cfg.route_ffn = count(&a.route_ffn, n)?;
    longctx::runtime::host::check_bytes("the CoLT5 layer's weights and activations", cfg.host_bytes())?;
    let weights = match &a.weights {
        Some(p) => Colt5Weights::from_safetensors(&cfg, p)?,
        None => Colt5Weights::random(&cfg, a.seed),
    };
    let x = {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ 0x5eed);
        (0..n * a.d_model).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>()
    };
    println!(
        "CoLT5 layer: N = {n}, d_model {}, heavy {} heads × {}, light 1 head, window ±{}, FFN light {} / heavy {}; routed q {} kv {} ffn {}",
        cfg.d_model,
        cfg.heads,
        cfg.head_dim,
        cfg.window,
        cfg.ffn_light,
        cfg.ffn_heavy,
        cfg.route_q,
        cfg.route_kv,
        cfg.route_ffn
    );
    let runs = run_route(&gpu, &cfg, &weights, &x)?;
    for r in &runs {
        if let Some(err) = r.rel_err {
            println!("{}: rel err vs the f64 oracle {err:.2e}", r.layer);
        }
    }
    if let Some(prefix) = &a.routed_out {
        let mut staged = longctx::io::Staged::default();
        for (tag, idx) in ["q", "kv", "ffn"].iter().zip(&runs[0].routed) {
            let path = PathBuf::from(format!("{}_{tag}.npy", prefix.display()));
            let v: Vec<f32> = idx.iter().map(|&i| i as f32).collect();
            staged.npy(&path, &[v.len()], &v)?;
        }
        staged.commit()?;
    }
    let rows: Vec<RouteRecord> = runs.iter().flat_map(|r| r.branches.clone()).collect();
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["layer", "branch", "ms", "GFLOP", "GFLOP/s"]);
    for r in &rows {
        t.add_row([
            r.layer.to_string(),
            r.branch.to_string(),
            format!("{:.2}", r.ms),
            format!("{:.3}", r.flops / 1e9),
            format!("{:.2}", r.gflops),
        ]);
    }
    println!("{t}");
    let (c, d) = (runs[0].totals(), runs[1].totals());
    println!(
        "total: CoLT5 {:.1} ms, {:.2} GFLOP; dense {:.1} ms, {:.2} GFLOP — speedup {:.2}× (FLOPs ×{:.2})",
        c.0,
        c.1 / 1e9,
        d.0,
        d.1 / 1e9,
        d.0 / c.0,
        d.1 / c.1
    );
    if let Some(path) = &a.json {
        longctx::io::write_atomic(path, serde_json::to_string_pretty(&rows)?.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
