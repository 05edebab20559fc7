//! `longctx plan`: memory and cost of a model at a context length, before renting a GPU.

use anyhow::bail;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use longctx::measure::plan::{
    GPUS, KvFormatPlan, Link, MemoryPlan, ModelShape, RING_GPUS, RingMemoryPlan, context_cost_ratio,
};

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
Ring attention (--ranks P): weights replicated, the KV cache and activations split by P, two
K/V blocks of one layer in flight; per step compute 4·(n/P)²·d_attn (halved for causal) at the
sustained rate against the block's 2·(n/P)·Hkv·hd bytes over NVLink (A100 300, H100/H200 450
GB/s per direction: half the datasheets' 600 and 900 GB/s) or InfiniBand (HDR 25, NDR 50 GB/s
per GPU).

Examples:
  longctx plan --preset llama-7b --n 100k --from 2k
  longctx plan --ranks 8 --gpu h200 --n 1m")]
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
    /// Tokens per KV page (the KV-format table rounds each sequence's cache up to pages).
    #[arg(long, default_value_t = 64, value_parser = super::positive)]
    page: usize,
    /// Sustained TFLOP/s for the time estimate (default: 40% of the 312 TFLOP/s dense BF16 peak
    /// in NVIDIA's A100 Tensor Core GPU datasheet, 2020).
    #[arg(long, default_value_t = 0.4 * 312.0)]
    tflops: f64,
    /// Ring attention (context parallelism) over this many GPUs: memory per rank, compute per
    /// ring step against the K/V transfer, for n and 1M–10M tokens.
    #[arg(long)]
    ranks: Option<usize>,
    /// GPU of the ring: a100, h100, h200.
    #[arg(long, default_value = "h200", requires = "ranks")]
    gpu: String,
    /// Link of the ring: nvlink (inside a node) or ib (InfiniBand between nodes).
    #[arg(long, default_value = "nvlink", requires = "ranks")]
    link: String,
    /// Sustained fraction of the GPU's dense BF16 peak for the ring's compute.
    #[arg(long, default_value_t = 0.4, requires = "ranks")]
    efficiency: f64,
    /// Full (not causal) attention in the ring plan (causal halves each step's work).
    #[arg(long, requires = "ranks")]
    bidirectional: bool,
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
    let p = MemoryPlan::new(&m, n, a.batch, bytes)?;
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
            MemoryPlan::gpus_needed(b)
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
    let mut t = Table::new();
    let mut header =
        vec![format!("KV format (pages of {})", a.page), "bytes/token".into(), format!("cache at n = {n}")];
    header.extend(GPUS.iter().map(|(gpu, _)| format!("max context, {gpu}")));
    t.load_preset(UTF8_FULL_CONDENSED).set_header(header);
    for f in KvFormatPlan::all(&p, a.page)? {
        let mut row = vec![f.format.clone(), f.bytes_per_token.to_string(), gb(f.kv_cache)];
        row.extend(
            f.max_context.iter().map(|&(_, tokens)| {
                if tokens == 0 { "weights do not fit".into() } else { tokens.to_string() }
            }),
        );
        t.add_row(row);
    }
    println!("{t}");
    if let Some(ranks) = a.ranks {
        ring(a, &m, n, bytes, ranks)?;
    }
    Ok(())
}

/// `--ranks`: the ring plan at n and at 1M, 2M, 4M, 10M tokens.
fn ring(a: &PlanArgs, m: &ModelShape, n: usize, bytes: usize, ranks: usize) -> anyhow::Result<()> {
    let Some(gpu) = RING_GPUS.iter().find(|g| g.name == a.gpu) else {
        bail!("--gpu `{}`: choose a100, h100 or h200", a.gpu);
    };
    let link = match a.link.as_str() {
        "nvlink" => Link::NvLink,
        "ib" | "infiniband" => Link::InfiniBand,
        x => bail!("--link `{x}`: choose nvlink or ib"),
    };
    let causal = !a.bidirectional;
    let mut ns = vec![n, 1 << 20, 2 << 20, 4 << 20, 10 << 20];
    ns.sort_unstable();
    ns.dedup();
    let first = RingMemoryPlan::new(m, n, a.batch, bytes, ranks, *gpu, link, a.efficiency, causal)?;
    println!();
    println!(
        "ring attention over {ranks} × {} ({:.0} GB, {:.0} TFLOP/s dense BF16 at {:.0} % = {:.0} TFLOP/s sustained), {} at {:.0} GB/s per direction; {} attention; K/V blocks of one layer per step",
        gpu.name.to_uppercase(),
        gpu.memory as f64 / 1e9,
        gpu.bf16_tflops,
        a.efficiency * 100.0,
        gpu.bf16_tflops * a.efficiency,
        if link == Link::NvLink { "NVLink" } else { "InfiniBand" },
        first.link_gbps,
        if causal { "causal (zigzag)" } else { "full" }
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "n",
        "tokens/rank",
        "KV cache/rank",
        "inference/rank",
        "fits",
        "training/rank",
        "step compute ms",
        "step transfer ms",
        "hidden?",
        "attention per forward s",
    ]);
    for &nn in &ns {
        let r = RingMemoryPlan::new(m, nn, a.batch, bytes, ranks, *gpu, link, a.efficiency, causal)?;
        t.add_row([
            if nn == n { format!("{nn} (asked)") } else { nn.to_string() },
            r.tokens_per_rank.to_string(),
            gb(r.kv_cache),
            gb(r.inference_per_rank),
            if r.inference_per_rank <= gpu.memory { "yes".into() } else { "no".into() },
            gb(r.training_per_rank),
            format!("{:.2}", r.step_compute_s * 1e3),
            format!("{:.2}", r.step_transfer_s * 1e3),
            if r.transfer_hidden() { "yes".into() } else { "no".into() },
            format!("{:.1}", r.forward_attention_s),
        ]);
    }
    println!("{t}");
    println!(
        "a block's transfer hides behind its compute from {} tokens per rank ({} in all over {ranks} ranks); memory per rank falls as 1/P except the replicated weights ({})",
        first.min_tokens_to_hide,
        first.min_tokens_to_hide * ranks,
        gb(first.weights)
    );
    Ok(())
}
