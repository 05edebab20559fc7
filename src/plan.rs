//! The memory planner and the seed's cost model: what a model at a context length needs
//! (weights, KV cache for MHA/GQA/MQA, training activations with naive vs flash attention)
//! and costs, and which GPUs it fits — before renting one.
//!
//! Sources of the constants:
//! - Model shapes: LLaMA (Touvron et al. 2023, Table 2; HF config: 32 layers, 4096, 32 heads,
//!   FFN 11008, vocab 32000), Llama 2 70B (Touvron et al. 2023b: 80 layers, 8192, 64 heads,
//!   GQA with 8 kv heads, FFN 28672), MPT-7B-StoryWriter-65k+ (MosaicML 2023: 32 layers,
//!   4096, 32 heads, FFN 16384, vocab 50432, ALiBi).
//! - Activations per layer (no recomputation, no parallelism): s·b·h·(34 + 5·a·s/h) bytes at
//!   16-bit (Korthikanti et al. 2022, "Reducing Activation Recomputation", §4.1); the
//!   5·a·s²·b term is the attention matrix, which FlashAttention never stores.
//! - Training memory per parameter with Adam in mixed precision: 16 bytes (2 weights + 2
//!   gradients + 4 master weights + 8 moments; Rajbhandari et al. 2020, ZeRO §3).
//! - FLOPs: forward ≈ 2·P + 2·L·n·d_attn per token, training ≈ 3× forward (Kaplan et al.
//!   2020, Table 1); attention cost O(n²d + nd²), and the seed's ratio (d + p·n)/(d + n) for
//!   growing the context from n to p·n.
//! - GPU memory: A100 40 GB and 80 GB (NVIDIA A100 datasheet), H100 SXM 80 GB (H100
//!   datasheet), H200 141 GB (H200 datasheet).

use serde::Serialize;

/// A decoder-only transformer's shape.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelShape {
    pub name: String,
    pub layers: usize,
    pub d_model: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// SwiGLU FFNs have three matrices, GELU ones two.
    pub gated_ffn: bool,
}

impl ModelShape {
    /// The named presets: `llama-7b`, `llama2-70b`, `mpt-7b-65k`.
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
    pub const PRESETS: [&'static str; 3] = ["llama-7b", "llama2-70b", "mpt-7b-65k"];

    /// Parameters: embeddings and output head, attention (Q, O: d²; K, V: d·Hkv·hd), FFN.
    pub fn params(&self) -> u64 {
        let d = self.d_model as u64;
        let kv = (self.kv_heads * self.head_dim) as u64;
        let attn = 2 * d * d + 2 * d * kv;
        let ffn = if self.gated_ffn { 3 } else { 2 } * d * self.ffn as u64;
        2 * self.vocab as u64 * d + self.layers as u64 * (attn + ffn + 2 * d)
    }
}

/// GPUs a plan is checked against: (name, bytes).
pub const GPUS: [(&str, u64); 4] = [
    ("A100 40GB", 40_000_000_000),
    ("A100 80GB", 80_000_000_000),
    ("H100 80GB", 80_000_000_000),
    ("H200 141GB", 141_000_000_000),
];

/// What a model needs at context `n`, batch `b`, `bytes` per element.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub model: ModelShape,
    pub n: usize,
    pub batch: usize,
    pub bytes_per_element: usize,
    pub params: u64,
    pub weights: u64,
    /// KV cache at `n` for the model's own kv heads, and as MHA / GQA(8) / MQA.
    pub kv_cache: u64,
    pub kv_cache_mha: u64,
    pub kv_cache_gqa8: u64,
    pub kv_cache_mqa: u64,
    pub activations_naive: u64,
    pub activations_flash: u64,
    /// Weights + gradients + Adam states (16 bytes per parameter).
    pub training_states: u64,
    pub inference_total: u64,
    pub training_total_naive: u64,
    pub training_total_flash: u64,
    pub attention_flops_per_layer: f64,
    pub forward_flops_per_token: f64,
    pub training_flops_per_step: f64,
}

impl Plan {
    pub fn new(model: &ModelShape, n: usize, batch: usize, bytes_per_element: usize) -> Self {
        let (l, d, a) = (model.layers as u64, model.d_model as u64, model.heads as u64);
        let (s, b, e) = (n as u64, batch as u64, bytes_per_element as u64);
        let params = model.params();
        let kv = |kv_heads: u64| 2 * l * kv_heads * model.head_dim as u64 * s * b * e;
        // Korthikanti et al.: s·b·h·34 + 5·a·s²·b bytes per layer at 16-bit; scaled to `e`
        let act_linear = l * s * b * d * 34 * e / 2;
        let act_scores = l * 5 * a * s * s * b * e / 2;
        let training_states = 16 * params;
        let d_attn = (model.heads * model.head_dim) as f64;
        let forward_flops_per_token = 2.0 * params as f64 + 2.0 * l as f64 * n as f64 * d_attn;
        Plan {
            model: model.clone(),
            n,
            batch,
            bytes_per_element,
            params,
            weights: params * e,
            kv_cache: kv(model.kv_heads as u64),
            kv_cache_mha: kv(a),
            kv_cache_gqa8: kv(8.min(a)),
            kv_cache_mqa: kv(1),
            activations_naive: act_linear + act_scores,
            activations_flash: act_linear,
            training_states,
            inference_total: params * e + kv(model.kv_heads as u64),
            training_total_naive: training_states + act_linear + act_scores,
            training_total_flash: training_states + act_linear,
            attention_flops_per_layer: 4.0 * (n as f64).powi(2) * d_attn * b as f64
                + 8.0 * n as f64 * (d as f64).powi(2) * b as f64,
            forward_flops_per_token,
            training_flops_per_step: 3.0 * forward_flops_per_token * (n * batch) as f64,
        }
    }

    /// GPUs needed for `bytes` on each card of [`GPUS`].
    pub fn gpus_needed(bytes: u64) -> Vec<(&'static str, u64)> {
        GPUS.iter().map(|&(name, cap)| (name, bytes.div_ceil(cap))).collect()
    }
}

/// The seed's cost ratio of raising the context from `n` to `p·n` at width `d`:
/// (d + p·n) / (d + n).
pub fn context_cost_ratio(d: usize, n: usize, pn: usize) -> f64 {
    (d + pn) as f64 / (d + n) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_7b_has_about_6_7_billion_parameters() {
        let p = ModelShape::preset("llama-7b").unwrap().params();
        assert!((6.6e9..6.8e9).contains(&(p as f64)), "{p}");
        let p70 = ModelShape::preset("llama2-70b").unwrap().params();
        assert!((68e9..70e9).contains(&(p70 as f64)), "{p70}");
    }

    #[test]
    fn kv_cache_and_cost_ratio() {
        let m = ModelShape::preset("llama-7b").unwrap();
        let plan = Plan::new(&m, 4096, 1, 2);
        // 2 · 32 layers · 32 heads · 128 · 4096 tokens · 2 bytes = 2 GiB
        assert_eq!(plan.kv_cache, 2 << 30);
        assert_eq!(plan.kv_cache_mqa * 32, plan.kv_cache_mha);
        assert!((context_cost_ratio(4096, 2048, 102400) - 106496.0 / 6144.0).abs() < 1e-12);
    }
}
