//! The memory planner and the context cost model (docs/DESIGN.md §2): what a model at a
//! context length needs (weights, KV cache for MHA/GQA/MQA, training activations with naive
//! vs flash attention) and costs, and which GPUs it fits — before renting one.
//!
//! Sources of the constants (all public):
//! - Model shapes:
//!   - `llama-7b`: "LLaMA: Open and Efficient Foundation Language Models" (Touvron et al.,
//!     Meta AI, 2023), Table 2: 32 layers, d = 4096, 32 heads; §2.2: SwiGLU FFN of width
//!     2/3·4d, which Meta's released model code rounds up to a multiple of 256 = 11008;
//!     §2.1: SentencePiece BPE tokenizer, 32,000 tokens (the size is stated in the Llama 2
//!     paper, §2.2, which keeps the same tokenizer).
//!   - `llama2-70b`: "Llama 2: Open Foundation and Fine-Tuned Chat Models" (Touvron et al.,
//!     Meta AI, 2023), Table 1: grouped-query attention for the 34B and 70B models; the sizes
//!     (80 layers, d = 8192, 64 heads, 8 kv heads, FFN 28672, vocabulary 32,000) are those of
//!     Meta's released Llama-2-70b configuration.
//!   - `mpt-7b-65k`: MosaicML, "Introducing MPT-7B: A New Standard for Open-Source,
//!     Commercially Usable LLMs" (2023) and the MPT-7B-StoryWriter-65k+ model card: 32 layers,
//!     d = 4096, 32 heads, GELU FFN with expansion ratio 4 (16384), vocabulary 50432, ALiBi
//!     ("Train Short, Test Long", Press, Smith, Lewis, 2021 / ICLR 2022) instead of position
//!     embeddings.
//! - KV cache variants: multi-query attention from "Fast Transformer Decoding: One Write-Head
//!   is All You Need" (Shazeer, 2019); grouped-query attention from "GQA: Training
//!   Generalized Multi-Query Transformer Models from Multi-Head Checkpoints" (Ainslie et al.,
//!   2023), with 8 kv heads as in Llama 2 70B.
//! - Activations per layer (no recomputation, no parallelism): s·b·h·(34 + 5·a·s/h) bytes at
//!   16-bit — "Reducing Activation Recomputation in Large Transformer Models" (Korthikanti
//!   et al., NVIDIA, 2022), §4.1, Eq. (1); the 5·a·s²·b term is the attention matrix, which
//!   FlashAttention ("FlashAttention: Fast and Memory-Efficient Exact Attention with
//!   IO-Awareness", Dao et al., 2022) never stores.
//! - Training memory per parameter with Adam in mixed precision: 16 bytes (2 fp16 weights + 2
//!   fp16 gradients + 4 fp32 master weights + 8 fp32 moments) — "ZeRO: Memory Optimizations
//!   Toward Training Trillion Parameter Models" (Rajbhandari, Rasley, Ruwase, He, SC 2020),
//!   §3.1.
//! - FLOPs: forward ≈ 2·P + 2·L·n·d_attn per token, training ≈ 3× forward — "Scaling Laws
//!   for Neural Language Models" (Kaplan et al., OpenAI, 2020), Table 1 and §2.1.
//!   Attention per layer is O(n²·d) ("Attention Is All You Need", Vaswani et al., 2017,
//!   Table 1) plus O(n·d²) for the projections; the per-layer count 4·n²·d_attn + 8·n·d² is
//!   the attention part of the forward count in "Efficient Large-Scale Language Model
//!   Training on GPU Clusters Using Megatron-LM" (Narayanan et al., SC 2021).
//! - Context cost ratio (d + p·n)/(d + n) for growing the context from n to p·n: per trained
//!   token an attention layer costs ∝ n·d + d²; the ratio is stated in G. Alperovich, "The
//!   Secret Sauce behind 100K context window in LLMs: all tricks in one place" (GoPenAI,
//!   2023).
//! - GPU memory: NVIDIA A100 Tensor Core GPU datasheet (2020): 40 GB HBM2 (1,555 GB/s) or
//!   80 GB HBM2e (2,039 GB/s), 312 TFLOP/s dense FP16/BF16; NVIDIA H100 Tensor Core GPU
//!   datasheet (2022): H100 SXM 80 GB HBM3, 3.35 TB/s, 989 TFLOP/s dense BF16; NVIDIA H200
//!   Tensor Core GPU datasheet (2023): 141 GB HBM3e, 4.8 TB/s. Capacities are counted as
//!   10^9 bytes per GB.

use crate::error::{Error, Result};

use serde::Serialize;

/// A decoder-only transformer's shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelShape {
    /// Preset name, e.g. `llama-7b`.
    pub name: String,
    /// Transformer layers L.
    pub layers: usize,
    /// Model width d.
    pub d_model: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (= `heads` for MHA, fewer for GQA).
    pub kv_heads: usize,
    /// Per-head width (`d_model / heads` for the presets).
    pub head_dim: usize,
    /// FFN inner width.
    pub ffn: usize,
    /// Vocabulary size (rows of the embedding and of the output head).
    pub vocab: usize,
    /// SwiGLU FFNs have three matrices, GELU ones two.
    pub gated_ffn: bool,
}

impl ModelShape {
    /// The named presets: `llama-7b`, `llama2-70b`, `mpt-7b-65k` (sources in the module docs).
    pub fn preset(name: &str) -> Option<Self> {
        let m = |name: &str, layers, d_model, heads, kv_heads, ffn, vocab, gated_ffn| ModelShape {
            name: name.into(),
            layers,
            d_model,
            heads,
            kv_heads,
            head_dim: d_model / heads,
            ffn,
            vocab,
            gated_ffn,
        };
        match name {
            "llama-7b" => Some(m("llama-7b", 32, 4096, 32, 32, 11008, 32000, true)),
            "llama2-70b" => Some(m("llama2-70b", 80, 8192, 64, 8, 28672, 32000, true)),
            "mpt-7b-65k" => Some(m("mpt-7b-65k", 32, 4096, 32, 32, 16384, 50432, false)),
            _ => None,
        }
    }
    /// Names [`ModelShape::preset`] knows.
    pub const PRESETS: [&'static str; 3] = ["llama-7b", "llama2-70b", "mpt-7b-65k"];

    /// Parameters: embeddings and output head, attention (Q, O: d²; K, V: d·Hkv·hd), FFN;
    /// `None` past 2⁶⁴.
    pub fn params(&self) -> Option<u64> {
        let (d, l) = (self.d_model as u64, self.layers as u64);
        let kv = prod(&[self.kv_heads as u64, self.head_dim as u64])?;
        let attn = prod(&[2, d, d])?.checked_add(prod(&[2, d, kv])?)?;
        let ffn = prod(&[if self.gated_ffn { 3 } else { 2 }, d, self.ffn as u64])?;
        let per_layer = attn.checked_add(ffn)?.checked_add(2 * d)?;
        prod(&[2, self.vocab as u64, d])?.checked_add(prod(&[l, per_layer])?)
    }
}

/// The product of `xs`, `None` past 2⁶⁴.
fn prod(xs: &[u64]) -> Option<u64> {
    xs.iter().try_fold(1u64, |acc, &x| acc.checked_mul(x))
}

/// GPUs a plan is checked against: (name, bytes), capacities from NVIDIA's A100 (2020), H100
/// (2022) and H200 (2023) Tensor Core GPU datasheets.
pub const GPUS: [(&str, u64); 4] = [
    ("A100 40GB", 40_000_000_000),
    ("A100 80GB", 80_000_000_000),
    ("H100 80GB", 80_000_000_000),
    ("H200 141GB", 141_000_000_000),
];

/// What a model needs at context `n`, batch `b`, `bytes` per element.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemoryPlan {
    /// The model planned for.
    pub model: ModelShape,
    /// Context length in tokens.
    pub n: usize,
    /// Sequences per batch.
    pub batch: usize,
    /// Bytes per weight, cache and activation element (2 for fp16/bf16).
    pub bytes_per_element: usize,
    /// Parameter count ([`ModelShape::params`]).
    pub params: u64,
    /// Weights, in bytes: `params · bytes_per_element`.
    pub weights: u64,
    /// KV cache at `n` for the model's own kv heads, and as MHA / GQA(8) / MQA (Shazeer 2019;
    /// Ainslie et al. 2023).
    pub kv_cache: u64,
    /// KV cache with one kv head per query head, in bytes.
    pub kv_cache_mha: u64,
    /// KV cache with 8 kv heads (or `heads`, if fewer), in bytes.
    pub kv_cache_gqa8: u64,
    /// KV cache with one kv head, in bytes.
    pub kv_cache_mqa: u64,
    /// Training activations of all layers with the N×N attention matrix stored, in bytes
    /// (Korthikanti et al. 2022).
    pub activations_naive: u64,
    /// Training activations without the attention matrix, as FlashAttention keeps them, in bytes.
    pub activations_flash: u64,
    /// Weights + gradients + Adam states (16 bytes per parameter; ZeRO, Rajbhandari et al. 2020).
    pub training_states: u64,
    /// Weights + KV cache at the model's own kv heads, in bytes.
    pub inference_total: u64,
    /// `training_states` + `activations_naive`, in bytes.
    pub training_total_naive: u64,
    /// `training_states` + `activations_flash`, in bytes.
    pub training_total_flash: u64,
    /// Forward FLOPs of one layer's attention: 4·n²·d_attn·b (QKᵀ and P·V) + 8·n·d²·b (the
    /// Q, K, V, O projections, counted at MHA width; Narayanan et al. 2021).
    pub attention_flops_per_layer: f64,
    /// 2·P + 2·L·n·d_attn (Kaplan et al. 2020, Table 1).
    pub forward_flops_per_token: f64,
    /// 3 × forward FLOPs per token × n·b tokens (Kaplan et al. 2020, §2.1).
    pub training_flops_per_step: f64,
}

impl MemoryPlan {
    /// Plans `model` at context `n`, `batch` sequences, `bytes_per_element` bytes per element;
    /// an error when a total passes 2⁶⁴ bytes (never a wrapped, smaller number).
    pub fn new(model: &ModelShape, n: usize, batch: usize, bytes_per_element: usize) -> Result<Self> {
        let (l, d, a) = (model.layers as u64, model.d_model as u64, model.heads as u64);
        let (s, b, e) = (n as u64, batch as u64, bytes_per_element as u64);
        let too_big = |what: &str| {
            Error::Invalid(format!(
                "plan of {} at n = {n}, batch {batch}: {what} passes 2^64 bytes",
                model.name
            ))
        };
        let params = model.params().ok_or_else(|| too_big("the parameter count"))?;
        let hd = model.head_dim as u64;
        let kv = |kv_heads: u64| prod(&[2, l, kv_heads, hd, s, b, e]).ok_or_else(|| too_big("the KV cache"));
        // Korthikanti et al. 2022, §4.1 Eq. (1): s·b·h·34 + 5·a·s²·b bytes per layer at 16-bit;
        // scaled to `e`
        let act_linear = prod(&[l, s, b, d, 34, e]).ok_or_else(|| too_big("the activations"))? / 2;
        let act_scores = prod(&[l, 5, a, s, s, b, e]).ok_or_else(|| too_big("the attention scores"))? / 2;
        let training_states = prod(&[16, params]).ok_or_else(|| too_big("the training states"))?;
        let weights = prod(&[params, e]).ok_or_else(|| too_big("the weights"))?;
        let sum = |x: u64, y: u64, what: &str| x.checked_add(y).ok_or_else(|| too_big(what));
        let d_attn = (model.heads * model.head_dim) as f64;
        let forward_flops_per_token = 2.0 * params as f64 + 2.0 * l as f64 * n as f64 * d_attn;
        let kv_cache = kv(model.kv_heads as u64)?;
        let act_naive = sum(act_linear, act_scores, "the activations")?;
        Ok(MemoryPlan {
            model: model.clone(),
            n,
            batch,
            bytes_per_element,
            params,
            weights,
            kv_cache,
            kv_cache_mha: kv(a)?,
            kv_cache_gqa8: kv(8.min(a))?,
            kv_cache_mqa: kv(1)?,
            activations_naive: act_naive,
            activations_flash: act_linear,
            training_states,
            inference_total: sum(weights, kv_cache, "weights and KV cache")?,
            training_total_naive: sum(training_states, act_naive, "the training total")?,
            training_total_flash: sum(training_states, act_linear, "the training total")?,
            attention_flops_per_layer: 4.0 * (n as f64).powi(2) * d_attn * b as f64
                + 8.0 * n as f64 * (d as f64).powi(2) * b as f64,
            forward_flops_per_token,
            training_flops_per_step: 3.0 * forward_flops_per_token * n as f64 * batch as f64,
        })
    }

    /// GPUs needed for `bytes` on each card of [`GPUS`].
    pub fn gpus_needed(bytes: u64) -> Vec<(&'static str, u64)> {
        GPUS.iter().map(|&(name, cap)| (name, bytes.div_ceil(cap))).collect()
    }
}

/// How a paged KV cache stores the model's K and V: 16- or 32-bit floats, or the paged
/// decoder's int8 and int4 ([`crate::contract::paged::KvFormat`]: their scales included).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KvFormatPlan {
    /// `bf16`, `f32`, `int8`, `int4`.
    pub format: String,
    /// Cache bytes per token, all layers, K and V (scales included).
    pub bytes_per_token: u64,
    /// The cache at the plan's context and batch, whole pages per sequence.
    pub kv_cache: u64,
    /// Per GPU of [`GPUS`]: the longest context (whole pages) whose cache for the batch fits
    /// beside the weights on one card, tokens (0: the weights alone do not fit).
    pub max_context: Vec<(&'static str, u64)>,
}

impl KvFormatPlan {
    /// Every format for `plan`'s model, context and batch, in pages of `page` tokens.
    pub fn all(plan: &MemoryPlan, page: usize) -> Result<Vec<Self>> {
        use crate::contract::paged::KvFormat;
        let m = &plan.model;
        let hd = m.head_dim;
        let rows: [(&str, u64); 4] = [
            ("bf16", 2 * hd as u64),
            ("f32", KvFormat::F32.row_bytes(hd)),
            ("int8", KvFormat::Int8.row_bytes(hd)),
            ("int4", KvFormat::Int4.row_bytes(hd)),
        ];
        let too_big =
            || Error::Invalid(format!("KV plan of {} at n = {}: passes 2^64 bytes", m.name, plan.n));
        let page = page.max(1) as u64;
        rows.into_iter()
            .map(|(name, row)| {
                let per_token = prod(&[2, m.layers as u64, m.kv_heads as u64, row]).ok_or_else(too_big)?;
                let stored = (plan.n as u64).div_ceil(page) * page;
                let kv_cache = prod(&[per_token, stored, plan.batch as u64]).ok_or_else(too_big)?;
                let per_batch_token = prod(&[per_token, plan.batch as u64]).ok_or_else(too_big)?;
                let max_context = GPUS
                    .iter()
                    .map(|&(gpu, cap)| {
                        (gpu, cap.saturating_sub(plan.weights) / per_batch_token / page * page)
                    })
                    .collect();
                Ok(Self { format: name.into(), bytes_per_token: per_token, kv_cache, max_context })
            })
            .collect()
    }
}

/// The cost ratio of raising the context from `n` to `p·n` at width `d`: (d + p·n) / (d + n),
/// from attention's O(n²d + nd²) per layer (Vaswani et al. 2017, Table 1) — per token ∝
/// d·(n + d) — as stated in Alperovich, "The Secret Sauce behind 100K context window in
/// LLMs" (2023); see docs/DESIGN.md §2.
pub fn context_cost_ratio(d: usize, n: usize, pn: usize) -> f64 {
    (d + pn) as f64 / (d + n) as f64
}

/// A GPU for ring planning: memory, dense BF16 rate and link bandwidth per direction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GpuSpec {
    /// Name (`a100`, `h100`, `h200`).
    pub name: &'static str,
    /// Memory, bytes (10⁹ per GB).
    pub memory: u64,
    /// Dense BF16 tensor-core peak, TFLOP/s.
    pub bf16_tflops: f64,
    /// NVLink bandwidth per direction, GB/s (half the datasheet's total bidirectional figure).
    pub nvlink_gbps: f64,
    /// InfiniBand per GPU per direction, GB/s: one HDR 200 Gb/s port per A100, one NDR
    /// 400 Gb/s port per H100/H200 (as in DGX A100 and DGX H100/H200 systems).
    pub ib_gbps: f64,
}

/// The GPUs of [`RingMemoryPlan`]: NVIDIA A100 80GB (2020 datasheet: 312 TFLOP/s dense BF16, NVLink
/// 600 GB/s), H100 SXM (2022: 989 TFLOP/s dense BF16, NVLink 900 GB/s), H200 SXM (2023: 141
/// GB, 989 TFLOP/s dense BF16, NVLink 900 GB/s); InfiniBand HDR 200 Gb/s and NDR 400 Gb/s
/// (NVIDIA Quantum and Quantum-2 product briefs) per GPU.
pub const RING_GPUS: [GpuSpec; 3] = [
    GpuSpec { name: "a100", memory: 80_000_000_000, bf16_tflops: 312.0, nvlink_gbps: 300.0, ib_gbps: 25.0 },
    GpuSpec { name: "h100", memory: 80_000_000_000, bf16_tflops: 989.0, nvlink_gbps: 450.0, ib_gbps: 50.0 },
    GpuSpec { name: "h200", memory: 141_000_000_000, bf16_tflops: 989.0, nvlink_gbps: 450.0, ib_gbps: 50.0 },
];

/// The link K/V blocks travel over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Link {
    /// NVLink inside a node.
    NvLink,
    /// InfiniBand between nodes.
    InfiniBand,
}

/// Ring attention (context parallelism) for a model at context `n` over `ranks` GPUs: memory
/// per rank, and per ring step (one layer, forward) the attention compute against the K/V
/// block transfer — whether the transfer hides behind the compute.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RingMemoryPlan {
    /// Ranks P.
    pub ranks: usize,
    /// Context, tokens.
    pub n: usize,
    /// Tokens each rank holds: ⌈n / P⌉.
    pub tokens_per_rank: usize,
    /// The GPU.
    pub gpu: GpuSpec,
    /// The link.
    pub link: Link,
    /// Its bandwidth per direction, GB/s.
    pub link_gbps: f64,
    /// Weights on every rank (context parallelism replicates them), bytes.
    pub weights: u64,
    /// KV cache of the rank's tokens, all layers, bytes.
    pub kv_cache: u64,
    /// Two K/V blocks of one layer in flight (the one computed on, the one arriving), bytes.
    pub blocks_in_flight: u64,
    /// Inference (prefill keeping the cache): weights + KV cache + blocks in flight, bytes.
    pub inference_per_rank: u64,
    /// Training: weights, gradients and Adam states (replicated) + the rank's flash
    /// activations, bytes.
    pub training_per_rank: u64,
    /// FLOPs of one ring step of one layer: 4·t²·d_attn·b (t = tokens per rank), halved for
    /// causal attention (zigzag gives every rank half of each block pair on average).
    pub step_flops: f64,
    /// Seconds of that compute at the sustained rate.
    pub step_compute_s: f64,
    /// Bytes of one K/V block of one layer: 2·t·Hkv·hd·b·e.
    pub step_bytes: u64,
    /// Seconds to send it over the link.
    pub step_transfer_s: f64,
    /// Tokens per rank above which a block's transfer hides behind its compute.
    pub min_tokens_to_hide: usize,
    /// Attention time of one forward pass through every layer: L·P·max(compute, transfer).
    pub forward_attention_s: f64,
}

impl RingMemoryPlan {
    /// Plans ring attention; `efficiency` is the sustained fraction of the GPU's BF16 peak.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &ModelShape,
        n: usize,
        batch: usize,
        bytes_per_element: usize,
        ranks: usize,
        gpu: GpuSpec,
        link: Link,
        efficiency: f64,
        causal: bool,
    ) -> Result<Self> {
        if ranks == 0 || n < ranks {
            return Err(Error::Invalid(format!(
                "ring over {ranks} ranks needs at least one token per rank (n = {n})"
            )));
        }
        if !(efficiency.is_finite() && efficiency > 0.0 && efficiency <= 1.0) {
            return Err(Error::Invalid(format!("efficiency {efficiency}: a fraction in (0, 1]")));
        }
        let t = n.div_ceil(ranks);
        let rank = MemoryPlan::new(model, t, batch, bytes_per_element)?;
        let (l, hkv, hd, e, b) = (
            model.layers as u64,
            model.kv_heads as u64,
            model.head_dim as u64,
            bytes_per_element as u64,
            batch as u64,
        );
        let too_big =
            || Error::Invalid(format!("ring plan of {} at n = {n}: a size passes 2^64 bytes", model.name));
        let step_bytes = prod(&[2, t as u64, hkv, hd, b, e]).ok_or_else(too_big)?;
        let blocks_in_flight = step_bytes.checked_mul(2).ok_or_else(too_big)?;
        let inference_per_rank = [rank.weights, rank.kv_cache, blocks_in_flight]
            .into_iter()
            .try_fold(0u64, |a, x| a.checked_add(x))
            .ok_or_else(too_big)?;
        let training_per_rank =
            rank.training_states.checked_add(rank.activations_flash).ok_or_else(too_big)?;
        let d_attn = (model.heads * model.head_dim) as f64;
        let causal_factor = if causal { 0.5 } else { 1.0 };
        let step_flops = 4.0 * (t as f64).powi(2) * d_attn * batch as f64 * causal_factor;
        let rate = gpu.bf16_tflops * 1e12 * efficiency;
        let link_gbps = match link {
            Link::NvLink => gpu.nvlink_gbps,
            Link::InfiniBand => gpu.ib_gbps,
        };
        let step_compute_s = step_flops / rate;
        let step_transfer_s = step_bytes as f64 / (link_gbps * 1e9);
        // compute ∝ t², transfer ∝ t: equal at t* = 2·Hkv·hd·e·rate / (4·d_attn·c·bw)
        let per_token_bytes = (2 * hkv * hd * e) as f64;
        let min_tokens_to_hide =
            (per_token_bytes * rate / (4.0 * d_attn * causal_factor * link_gbps * 1e9)).ceil() as usize;
        Ok(Self {
            ranks,
            n,
            tokens_per_rank: t,
            gpu,
            link,
            link_gbps,
            weights: rank.weights,
            kv_cache: rank.kv_cache,
            blocks_in_flight,
            inference_per_rank,
            training_per_rank,
            step_flops,
            step_compute_s,
            step_bytes,
            step_transfer_s,
            min_tokens_to_hide,
            forward_attention_s: l as f64 * ranks as f64 * step_compute_s.max(step_transfer_s),
        })
    }

    /// Whether a block's transfer hides behind its compute.
    pub fn transfer_hidden(&self) -> bool {
        self.step_transfer_s <= self.step_compute_s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_7b_has_about_6_7_billion_parameters() {
        let p = ModelShape::preset("llama-7b").unwrap().params().unwrap();
        assert!((6.6e9..6.8e9).contains(&(p as f64)), "{p}");
        let p70 = ModelShape::preset("llama2-70b").unwrap().params().unwrap();
        assert!((68e9..70e9).contains(&(p70 as f64)), "{p70}");
    }

    #[test]
    fn kv_formats_count_their_scales_and_whole_pages() {
        let m = ModelShape::preset("llama-7b").unwrap();
        let plan = MemoryPlan::new(&m, 1000, 2, 2).unwrap();
        let f = KvFormatPlan::all(&plan, 64).unwrap();
        let per: Vec<u64> = f.iter().map(|f| f.bytes_per_token).collect();
        // 2 · 32 layers · 32 kv heads · (256, 512, 128 + 4, 64 + 4·4) bytes a row
        assert_eq!(per, vec![524_288, 1_048_576, 270_336, 163_840]);
        assert_eq!(f[0].kv_cache, 524_288 * 1024 * 2, "1000 tokens in 16 pages of 64, two sequences");
        assert_eq!(f[0].kv_cache, plan.kv_cache / 1000 * 1024);
        let h200 = |x: &KvFormatPlan| x.max_context[3].1;
        assert!(h200(&f[3]) > h200(&f[2]) && h200(&f[2]) > h200(&f[0]) && h200(&f[0]) > h200(&f[1]));
        assert!(f.iter().all(|x| x.max_context.iter().all(|c| c.1 % 64 == 0)));
    }

    #[test]
    fn kv_cache_and_cost_ratio() {
        let m = ModelShape::preset("llama-7b").unwrap();
        let plan = MemoryPlan::new(&m, 4096, 1, 2).unwrap();
        // 2 · 32 layers · 32 heads · 128 · 4096 tokens · 2 bytes = 2 GiB
        assert_eq!(plan.kv_cache, 2 << 30);
        assert_eq!(plan.kv_cache_mqa * 32, plan.kv_cache_mha);
        assert!((context_cost_ratio(4096, 2048, 102400) - 106496.0 / 6144.0).abs() < 1e-12);
    }

    #[test]
    fn totals_past_2_64_are_errors_not_wrapped() {
        let m = ModelShape::preset("llama-7b").unwrap();
        // 99999999999k tokens: the score activations pass 2^64 bytes
        assert!(MemoryPlan::new(&m, 99_999_999_999 * 1024, 1, 2).is_err());
        let huge = ModelShape { layers: usize::MAX, ..m.clone() };
        assert!(huge.params().is_none());
        assert!(MemoryPlan::new(&huge, 1, 1, 2).is_err());
    }

    #[test]
    fn ring_plans_split_the_cache_and_hide_transfers_at_long_contexts() {
        let m = ModelShape::preset("llama-7b").unwrap();
        let h200 = RING_GPUS[2];
        let one = RingMemoryPlan::new(&m, 1 << 20, 1, 2, 1, h200, Link::NvLink, 0.4, true).unwrap();
        let eight = RingMemoryPlan::new(&m, 1 << 20, 1, 2, 8, h200, Link::NvLink, 0.4, true).unwrap();
        assert_eq!(eight.tokens_per_rank, 1 << 17);
        assert_eq!(one.kv_cache, 8 * eight.kv_cache);
        assert!(eight.transfer_hidden() && eight.tokens_per_rank >= eight.min_tokens_to_hide);
        // at the threshold compute and transfer meet
        let at =
            RingMemoryPlan::new(&m, 8 * eight.min_tokens_to_hide, 1, 2, 8, h200, Link::NvLink, 0.4, true)
                .unwrap();
        assert!((at.step_compute_s / at.step_transfer_s - 1.0).abs() < 0.01);
        // InfiniBand is slower: a longer context per rank is needed to hide it
        let ib = RingMemoryPlan::new(&m, 1 << 20, 1, 2, 8, h200, Link::InfiniBand, 0.4, true).unwrap();
        assert!(ib.min_tokens_to_hide > eight.min_tokens_to_hide);
        assert!(RingMemoryPlan::new(&m, 4, 1, 2, 8, h200, Link::NvLink, 0.4, true).is_err());
    }
}
