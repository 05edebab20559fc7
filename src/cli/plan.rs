//! `longctx plan`: memory and cost of a model at a context length, before renting a GPU.

use anyhow::bail;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use longctx::measure::plan::{ModelShape, Plan, context_cost_ratio};

use super::bench::parse_size;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Memory: weights (params × dtype); KV cache 2·L·Hkv·hd·n·b·dtype, also as MHA, GQA (8) and MQA;
training activations per Korthikanti et al. 2022 (s·b·h·34 + 5·a·s²·b bytes per layer at
16-bit — the 5·a·s²·b attention matrix is what flash attention never stores); Adam states 16
bytes per parameter (ZeRO, Rajbhandari et al. 2020). FLOPs: forward 2·P + 2·L·n·d_attn per
token, training 3× (Kaplan et al. 2020); context cost ratio (d + p·n)/(d + n) (docs/DESIGN.md
§2). GPU memory from NVIDIA's A100 (2020), H100 (2022) and H200 (2023) datasheets: A100
40/80 GB, H100 80 GB, H200 141 GB. Sources in the `longctx::measure::plan` module docs.

Example:
  longctx plan --preset llama-7b --n 100k --from 2k")]
pub struct PlanArgs {
    /// Model preset: llama-7b, llama2-70b, mpt-7b-65k.
    #[arg(long)]
    preset: Option<String>,
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    d_model: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    kv_heads: Option<usize>,
    #[arg(long)]
    head_dim: Option<usize>,
    #[arg(long)]
    ffn: Option<usize>,
    #[arg(long)]
    vocab: Option<usize>,
    /// Context length (k = 1024).
    #[arg(long, default_value = "100k")]
    n: String,
    /// Context the cost ratio starts from.
    #[arg(long, default_value = "2k")]
    from: String,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Element type: f32, f16 or bf16.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Sustained TFLOP/s for the time estimate (default: 40% of the 312 TFLOP/s dense BF16 peak
    /// in NVIDIA's A100 Tensor Core GPU datasheet, 2020).
    #[arg(long, default_value_t = 0.4 * 312.0)]
    tflops: f64,
}

fn gb(b: u64) -> String {
    format!("{:.2} GB", b as f64 / 1e9)
}

pub fn run(a: &PlanArgs) -> anyhow::Result<()> {
    let mut m = match &a.preset {
        Some(p) => match ModelShape::preset(p) {
            Some(m) => m,
            None => bail!("unknown preset `{p}`; choose from {}", ModelShape::PRESETS.join(", ")),
        },
        None => ModelShape {
            name: "custom".into(),
            layers: 32,
            d_model: 4096,
            heads: 32,
            kv_heads: 32,
            head_dim: 128,
            ffn: 11008,
            vocab: 32000,
            gated_ffn: true,
        },
    };
    for (slot, v) in [
        (&mut m.layers, a.layers),
        (&mut m.d_model, a.d_model),
        (&mut m.heads, a.heads),
        (&mut m.kv_heads, a.kv_heads),
        (&mut m.ffn, a.ffn),
        (&mut m.vocab, a.vocab),
    ] {
        if let Some(v) = v {
            *slot = v;
        }
    }
    m.head_dim = a.head_dim.unwrap_or(m.d_model / m.heads.max(1));
    if [m.layers, m.d_model, m.heads, m.kv_heads, m.head_dim].contains(&0) || m.heads % m.kv_heads != 0 {
        bail!(
            "model shape: layers {}, d_model {}, heads {}, kv heads {}, head dim {}: sizes must be positive and heads a multiple of kv heads",
            m.layers,
            m.d_model,
            m.heads,
            m.kv_heads,
            m.head_dim
        );
    }
    let bytes = match a.dtype.as_str() {
        "f32" => 4,
        "f16" | "bf16" => 2,
        other => bail!("dtype `{other}`: choose f32, f16 or bf16"),
    };
    let n = parse_size(&a.n)?;
    let from = parse_size(&a.from)?;
    if n == 0 || from == 0 || a.batch == 0 {
        bail!("--n, --from and --batch must be at least 1 (got {n}, {from}, {})", a.batch);
    }
    if !(a.tflops.is_finite() && a.tflops > 0.0) {
        bail!("--tflops {}: must be a positive, finite rate", a.tflops);
    }
    let p = Plan::new(&m, n, a.batch, bytes)?;
    println!(
        "{}: {} layers, d_model {}, {} heads ({} kv heads) of {}, FFN {}, vocab {} — {:.2} B parameters; n = {n}, batch {}, {}",
        m.name,
        m.layers,
        m.d_model,
        m.heads,
        m.kv_heads,
        m.head_dim,
        m.ffn,
        m.vocab,
        p.params as f64 / 1e9,
        a.batch,
        a.dtype
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "memory",
        "bytes",
        "A100 40GB",
        "A100 80GB",
        "H100 80GB",
        "H200 141GB",
    ]);
    let rows = [
        ("weights", p.weights),
        (&*format!("KV cache ({} kv heads)", m.kv_heads), p.kv_cache),
        ("KV cache as MHA", p.kv_cache_mha),
        ("KV cache as GQA (8 kv heads)", p.kv_cache_gqa8),
        ("KV cache as MQA (1 kv head)", p.kv_cache_mqa),
        ("inference: weights + KV cache", p.inference_total),
        ("training activations, naive attention (N² scores)", p.activations_naive),
        ("training activations, flash attention (linear)", p.activations_flash),
        ("weights + grads + Adam states", p.training_states),
        ("training total, naive attention", p.training_total_naive),
        ("training total, flash attention", p.training_total_flash),
    ];
    for (name, b) in rows {
        let mut row = vec![name.to_string(), gb(b)];
        row.extend(
            Plan::gpus_needed(b)
                .into_iter()
                .map(|(_, k)| if k <= 1 { "fits 1".to_string() } else { format!("{k} GPUs") }),
        );
        t.add_row(row);
    }
    println!("{t}");
    println!(
        "attention per layer: 4·n²·d_attn + 8·n·d² = {:.3e} FLOPs (O(n²d + nd²)); forward {:.3e} FLOPs/token; training step {:.3e} FLOPs",
        p.attention_flops_per_layer, p.forward_flops_per_token, p.training_flops_per_step
    );
    println!(
        "cost ratio {from} → {n} tokens ((d + p·n)/(d + n), docs/DESIGN.md §2, d = {}): {:.2}×",
        m.d_model,
        context_cost_ratio(m.d_model, from, n)
    );
    println!(
        "estimated time per training step at {:.0} TFLOP/s: {:.2} s",
        a.tflops,
        p.training_flops_per_step / (a.tflops * 1e12)
    );
    Ok(())
}
