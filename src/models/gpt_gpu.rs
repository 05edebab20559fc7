//! The GPT of [`super::gpt`] on the GPU: forward, backward and an AdamW step, all recorded
//! into command encoders and run without a host round trip inside a step.
//!
//! Parameters live one device tensor per [`GptConfig::shapes`] entry (a LayerNorm's γ and β
//! as one `[2, d]` tensor, as LayerNorm reads them); each covers a contiguous slice of the
//! flat parameter vector, so the host sees the same flat layout as the f64 oracle. The
//! forward keeps what the backward needs per layer (the residual stream before each branch,
//! the LayerNorm outputs, Q, K, V, O and LSE, the FFN's pre-activation and activation).
//!
//! The pieces: embedding gather (and sinusoidal positions) and its gradient, LayerNorm and
//! its backward, the tiled matmul for every projection and every gradient (`dX = dY·Wᵀ`,
//! `dW = Xᵀ·dY` with explicit transposes, biases by column sums), flash attention forward
//! and the tiled backward (causal; ALiBi or RoPE through the attention contract), GELU and
//! its backward, softmax cross-entropy, squared norms and AdamW clipped by the global norm.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use crate::contract::dsa::Dsa;
use crate::contract::nsa::Nsa;
use crate::contract::selection::Moba;
use crate::contract::spec::{Alibi, AttnShape, AttnSpec};
use crate::error::{Error, Result};
use crate::kernels::attention::backward::{Backward, BackwardBuffers};
use crate::kernels::attention::sparse::SparseAttention;
use crate::kernels::attention::sparse_backward::SparseBackward;
use crate::kernels::dsa::{
    AlignBuffers, DeviceInverse, DsaAlign, DsaAttention, DsaListBackward, DsaTensors, ListGradBuffers,
    inverse_lists,
};
use crate::kernels::embed::check_ids;
use crate::kernels::layer::LayerOp;
use crate::kernels::matmul::{Activation, Layout, Matmul, MatmulOptions};
use crate::kernels::nsa::{NsaBackward, NsaGradTensors, NsaTensors};
use crate::kernels::positions::EncodedInputs;
use crate::kernels::selection::select_lists;
use crate::kernels::train::{AdamW, HeadDims, Train};
use crate::kernels::{Attention, AttnBuffers, Kernel};
use crate::models::gpt::{AttnKind, GptConfig, LN_EPS, Params, PosScheme, inputs_and_targets, sinusoid};
use crate::runtime::Gpu;

/// One parameter tensor on the device with its gradient and AdamW moments.
struct Tensor {
    /// Its name in [`GptConfig::shapes`] (a LayerNorm's as `….ln1` for γ | β).
    name: String,
    /// The flat-vector slice it covers.
    range: Range<usize>,
    /// Weight decay applies (matrices and the embedding; not biases or LayerNorm).
    decay: bool,
    param: wgpu::Buffer,
    grad: wgpu::Buffer,
    m: wgpu::Buffer,
    v: wgpu::Buffer,
}

/// What one block keeps from the forward for the backward.
struct Saved {
    /// The residual stream entering the block `[R, d]`.
    x: wgpu::Buffer,
    /// LayerNorm 1's output `[R, d]`.
    a1: wgpu::Buffer,
    /// Q, K, V `[B, H, T, D]` and the attention's O and LSE.
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    o: wgpu::Buffer,
    lse: wgpu::Buffer,
    /// O merged to tokens `[R, d]`.
    att: wgpu::Buffer,
    /// The residual stream after attention `[R, d]`.
    mid: wgpu::Buffer,
    /// LayerNorm 2's output `[R, d]`, the FFN's pre-activation and activation `[R, F]`.
    a2: wgpu::Buffer,
    u: wgpu::Buffer,
    h: wgpu::Buffer,
    ln1: LayerOp,
    ln2: LayerOp,
}

/// Matmul shapes: (M, K, N, bias, accumulate, operands stored transposed).
type MmKey = (usize, usize, usize, bool, bool, Layout);

/// Aᵀ given (`[K, M]`).
const A_T: Layout = Layout { a_t: true, b_t: false };
/// Bᵀ given (`[N, K]`).
const B_T: Layout = Layout { a_t: false, b_t: true };
const PLAIN: Layout = Layout { a_t: false, b_t: false };

/// Index of each block's tensors (after the embedding at 0).
const LN1: usize = 0;
const W_QKV: usize = 1;
const B_QKV: usize = 2;
const W_O: usize = 3;
const B_O: usize = 4;
const LN2: usize = 5;
const W1: usize = 6;
const B1: usize = 7;
const W2: usize = 8;
const B2: usize = 9;
const PER_BLOCK: usize = 10;

/// The model on one device for `batch` sequences of `seq` tokens.
pub struct GptGpu {
    /// The sizes.
    pub config: GptConfig,
    /// Sequences per call.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq: usize,
    train: Train,
    tensors: Vec<Tensor>,
    blocks: Vec<Saved>,
    attention: Attention,
    backward: Backward,
    /// With learned sparse attention: its kernels and each layer's choice (`None`: dense).
    sparse: Option<Sparse>,
    matmuls: HashMap<MmKey, Matmul>,
    lnf: LayerOp,
    /// Token ids and targets `[R]`.
    ids: wgpu::Buffer,
    /// The ids' tokens grouped by id (`train::tokens_by_id`: V + 1 + R values), for the
    /// embedding's gradient.
    by_id: wgpu::Buffer,
    targets: wgpu::Buffer,
    /// Sinusoidal positions `[T, d]` (sinusoidal scheme only).
    table: Option<wgpu::Buffer>,
    /// The residual stream after the last block, the final LayerNorm's output `[R, d]`.
    x_last: wgpu::Buffer,
    xf: wgpu::Buffer,
    logits: wgpu::Buffer,
    dlogits: wgpu::Buffer,
    /// Per-row loss `[R]`.
    loss: wgpu::Buffer,
    /// Backward scratch: the residual stream's gradient and one more `[R, d]`, `[R, F]` twice,
    /// `[R, 3d]`, dO/dQ/dK/dV, a transposed activation and a transposed weight.
    dx: wgpu::Buffer,
    dtmp: wgpu::Buffer,
    dh: wgpu::Buffer,
    du: wgpu::Buffer,
    dqkv: wgpu::Buffer,
    qkv: wgpu::Buffer,
    d_o: wgpu::Buffer,
    dq: wgpu::Buffer,
    dk: wgpu::Buffer,
    dv: wgpu::Buffer,
    act_t: wgpu::Buffer,
    weight_t: wgpu::Buffer,
    /// LayerNorm backward's row statistics `[R, 2]`.
    stats: wgpu::Buffer,
    /// Squared gradient norms, one slot per tensor.
    norms: wgpu::Buffer,
}

/// One layer's block lists: on the device and on the host.
type Lists = (wgpu::Buffer, Vec<u32>);

/// The blocks' learned sparse attention.
enum Sparse {
    /// MoBA: its kernels and each layer's choice.
    Moba(Box<MobaLayers>),
    /// NSA: its kernels, each layer's tensors and choice, the gates.
    Nsa(Box<NsaLayers>),
    /// DSA: its kernels, each layer's indexer inputs, tensors and choice.
    Dsa(Box<DsaLayers>),
}

/// Per layer, the choice of the last forward, kept for the backward.
struct Choices<T>(Mutex<Vec<Option<T>>>);

impl<T> Choices<T> {
    fn new(layers: usize) -> Self {
        Self(Mutex::new((0..layers).map(|_| None).collect()))
    }

    /// Keeps layer `l`'s choice.
    fn keep(&self, l: usize, choice: T) {
        self.0.lock().unwrap_or_else(|e| e.into_inner())[l] = Some(choice);
    }

    /// `f` on layer `l`'s kept choice; a typed error naming `kind` where the forward has not
    /// run.
    fn with<R>(&self, l: usize, kind: &str, f: impl FnOnce(&T) -> Result<R>) -> Result<R> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let choice = kept[l].as_ref().ok_or_else(|| {
            Error::Invalid(format!("the GPT's backward with {kind} needs its forward's choice first"))
        })?;
        f(choice)
    }
}

/// MoBA in the blocks: the choice on each layer's Q and K, the block-list kernels over it
/// (forward and backward), and each layer's lists kept from the forward for the backward.
struct MobaLayers {
    moba: Moba,
    /// One block's attention call without its positional encoding (unfolded; the selection
    /// folds the batch itself): the choice and the kernels read Q and K encoded.
    spec: AttnSpec,
    /// RoPE's rotation of a layer's Q and K into copies (the choice and the block-list kernels
    /// read them rotated) and of dQ, dK back; `None` for the other schemes.
    encoded: Option<EncodedInputs>,
    forward: SparseAttention,
    backward: SparseBackward,
    /// Per layer, the lists of the last forward: on the device and on the host.
    lists: Choices<Lists>,
}

impl MobaLayers {
    fn new(gpu: &Gpu, moba: Moba, spec: &AttnSpec, layers: usize) -> Result<Self> {
        let plain = spec.clone().positions(None);
        let folded = moba.fold(&plain)?.causal(true);
        let why = SparseAttention::unsupported(gpu, &folded, moba.block)
            .or_else(|| SparseBackward::unsupported(gpu, &folded, moba.block));
        if let Some(why) = why {
            return Err(Error::Invalid(format!(
                "the GPT with MoBA: the block-list kernels do not run its attention: {why}"
            )));
        }
        Ok(Self {
            moba,
            encoded: EncodedInputs::new(gpu, spec, spec.shape.head_dim, false)?,
            spec: plain,
            forward: SparseAttention::new(gpu, &folded, moba.block, moba.topk)?,
            backward: SparseBackward::new(gpu, &folded, moba.block, moba.topk)?,
            lists: Choices::new(layers),
        })
    }
}

impl MobaLayers {
    /// The Q and K a block's choice and kernels read: its own, or (RoPE) copies rotated by
    /// commands recorded into `enc`.
    fn inputs<'a>(
        &'a self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        s: &'a Saved,
    ) -> Result<(&'a wgpu::Buffer, &'a wgpu::Buffer)> {
        match &self.encoded {
            Some(e) => e.encode(gpu, enc, &s.q, &s.k),
            None => Ok((&s.q, &s.k)),
        }
    }
}

/// NSA in the blocks: the gates `sigmoid(LN1(x)·W_gate + b_gate)` of each layer, its
/// stages forward and backward on the layer's Q, K, V (encoded on the copies NSA keeps), each
/// layer's tensors and choice kept from the forward for the backward (φ is the mean).
struct NsaLayers {
    /// The backward with the forward it follows.
    call: NsaBackward,
    /// Per layer, the forward's tensors (inputs, branches, choice and mix).
    tensors: Vec<NsaTensors>,
    /// Per layer, the lists of the last forward on the host (the selected branch's backward
    /// groups its work by them).
    lists: Choices<Vec<u32>>,
    /// The backward's tensors (one layer at a time).
    grads: NsaGradTensors,
    /// Per layer, the gates token-major `[R, 3H]` (the sigmoid's output, for its backward).
    gates: Vec<wgpu::Buffer>,
    /// Scratch `[R, 3H]`: the gate logits, then the gates' gradient and the logits'.
    logits: wgpu::Buffer,
    dgates: wgpu::Buffer,
}

impl NsaLayers {
    fn new(gpu: &Gpu, nsa: Nsa, spec: &AttnSpec, layers: usize) -> Result<Self> {
        let call = NsaBackward::new(gpu, spec, &nsa)?;
        let s = spec.shape;
        let (zeros_q, zeros_kv) = (vec![0f32; s.q_len()], vec![0f32; s.kv_len()]);
        let gates = vec![0f32; s.batch * s.heads * s.n * 3];
        let tensors = (0..layers)
            .map(|_| call.forward().upload(gpu, spec, (&zeros_q, &zeros_kv, &zeros_kv), &gates, None))
            .collect::<Result<Vec<_>>>()?;
        let gate_len = (gates.len() * 4) as u64;
        Ok(Self {
            grads: call.upload(gpu, spec, &zeros_q)?,
            call,
            tensors,
            lists: Choices::new(layers),
            gates: (0..layers).map(|_| gpu.storage("NSA gates [R, 3H]", gate_len)).collect::<Result<_>>()?,
            logits: gpu.storage("NSA gate logits", gate_len)?,
            dgates: gpu.storage("NSA gates' gradient", gate_len)?,
        })
    }

    /// Device bytes beyond the dense model's for `rows` tokens (saturating): per layer its
    /// tensors (Q, K, V, O and three branches' outputs, compressed keys, lists, gates), once
    /// the backward's (dO and its three shares, four dQ, dK and dV twice) and the scratch.
    fn device_bytes(config: &GptConfig, nsa: &Nsa, rows: usize) -> u64 {
        let (r, d, h) = (rows as u64, config.d_model as u64, config.heads as u64);
        let per_layer = r.saturating_mul(8 * d + h * (nsa.topk as u64 + 12));
        (config.layers as u64)
            .saturating_mul(per_layer)
            .saturating_add(r.saturating_mul(14 * d + 9 * h))
            .saturating_mul(4)
    }
}

/// DSA in the blocks: each layer's indexer inputs (qI, kI, w projected from LN1's output into
/// its DSA tensors), the choice and the attention over it on copies of Q, K, V (rotated in
/// place, with RoPE), the token-list backward over the chosen keys, and the indexer's
/// sparse-stage alignment (the KL over each row's chosen keys against the sparse attention's
/// probabilities) for the indexer's gradients (the indexer is detached: no gradient reaches
/// LN1 from it).
struct DsaLayers {
    dsa: Dsa,
    /// One block's call without its positional encoding (Q and K arrive encoded).
    spec: AttnSpec,
    /// RoPE's rotation of the copies in place and of dQ, dK back; `None` for the other schemes.
    encoded: Option<EncodedInputs>,
    attn: DsaAttention,
    backward: DsaListBackward,
    align: DsaAlign,
    /// Per layer, the tensors of the last forward: Q, K, V, O, LSE, the indexer's inputs, lists.
    tensors: Vec<DsaTensors>,
    /// Per layer, the lists of the last forward on the host (transposed for the backward).
    lists: Choices<Vec<u32>>,
    /// The lists transposed ([`inverse_lists`]), one layer's at a time: offsets, entries.
    inverse: (wgpu::Buffer, wgpu::Buffer),
    /// The backward's Δ `[B, H, N]`.
    delta: wgpu::Buffer,
    /// The alignment's scratch: dw and the rows' state, dqI, dkI.
    rows: wgpu::Buffer,
    dqi: wgpu::Buffer,
    dki: wgpu::Buffer,
}

impl DsaLayers {
    fn new(gpu: &Gpu, dsa: Dsa, spec: &AttnSpec, layers: usize) -> Result<Self> {
        let plain = spec.clone().positions(None);
        let attn = DsaAttention::new(gpu, &plain, &dsa)?;
        let s = spec.shape;
        let (zeros_q, zeros_kv) = (vec![0f32; s.q_len()], vec![0f32; s.kv_len()]);
        let rows = s.batch * s.n;
        let (hi, di) = (dsa.index_heads, dsa.index_dim);
        let (iq, ik, iw) = (vec![0f32; rows * hi * di], vec![0f32; rows * di], vec![0f32; rows * hi]);
        let ix = crate::contract::dsa::Indexer { q: &iq, k: &ik, w: &iw };
        let tensors = (0..layers)
            .map(|_| attn.upload(gpu, (&zeros_q, &zeros_kv, &zeros_kv), &ix))
            .collect::<Result<Vec<_>>>()?;
        let align = DsaAlign::new(gpu, &plain, &dsa)?;
        Ok(Self {
            backward: DsaListBackward::new(gpu, &plain, &dsa)?,
            inverse: (
                gpu.storage("DSA inverse offsets", ((s.batch * s.m + 1) * 4) as u64)?,
                gpu.storage("DSA inverse entries", ((rows * dsa.topk).max(1) * 4) as u64)?,
            ),
            delta: gpu.storage("DSA Δ", (s.lse_len() * 4) as u64)?,
            rows: gpu.storage("DSA alignment rows", (align.rows_len() * 4) as u64)?,
            dqi: gpu.storage("DSA dqI", (iq.len() * 4) as u64)?,
            dki: gpu.storage("DSA dkI", (ik.len() * 4) as u64)?,
            encoded: EncodedInputs::new(gpu, spec, s.head_dim, true)?,
            dsa,
            spec: plain,
            attn,
            align,
            tensors,
            lists: Choices::new(layers),
        })
    }

    /// Device bytes beyond the dense model's for `rows` tokens of sequences of `seq`
    /// (saturating): per layer Q, K, V, O, LSE, the indexer's inputs, the lists and a chunk of
    /// scores (at most all rows' over the sequence); once the alignment's scratch, the inverse
    /// lists and Δ.
    fn device_bytes(config: &GptConfig, dsa: &Dsa, rows: usize, seq: usize) -> u64 {
        let (r, d, h) = (rows as u64, config.d_model as u64, config.heads as u64);
        let (hi, di) = (dsa.index_heads as u64, dsa.index_dim as u64);
        let index = hi.saturating_mul(di + 1).saturating_add(di);
        let per_layer = r.saturating_mul(
            (4 * d + h + 2 * h)
                .saturating_add(index)
                .saturating_add(dsa.topk as u64)
                .saturating_add(seq as u64),
        );
        (config.layers as u64)
            .saturating_mul(per_layer)
            .saturating_add(r.saturating_mul(index + 4))
            .saturating_add(r.saturating_mul(dsa.topk as u64 + 1 + h) + 1)
            .saturating_mul(4)
    }
}

/// Submits what `enc` recorded and starts a fresh encoder in its place: the block-list
/// kernels submit their own work (and the choice reads its lists back), so what precedes them
/// must run first.
fn flush(gpu: &Gpu, enc: &mut wgpu::CommandEncoder) {
    let done = std::mem::replace(enc, gpu.device.create_command_encoder(&Default::default()));
    gpu.queue.submit([done.finish()]);
}

/// The final LayerNorm's index among the device tensors (the embedding, the blocks' fused
/// tensors, then it; NSA's gate projections follow it).
fn lnf_index(config: &GptConfig) -> usize {
    1 + config.layers * PER_BLOCK
}

/// The attention problem of one block: causal self-attention over `seq` tokens (within the
/// window and sinks where the model has them), with the scheme's ALiBi slopes or RoPE
/// rotation.
pub(crate) fn attention_spec(config: &GptConfig, batch: usize, seq: usize) -> AttnSpec {
    let hd = config.d_model / config.heads;
    let spec = AttnSpec::new(AttnShape::mha(batch, config.heads, seq, seq, hd))
        .causal(true)
        .mask(config.window.map(|w| w.mask()));
    match config.pos {
        PosScheme::Alibi => spec.alibi(Alibi::Standard),
        PosScheme::Rope => spec.positions(Some(config.rope())),
        PosScheme::None | PosScheme::Sinusoidal => spec,
    }
}

/// The sinusoidal table added to the embeddings `[seq, d]` ([`sinusoid`] per row).
pub(crate) fn sinusoidal_table(seq: usize, d: usize) -> Vec<f32> {
    (0..seq).flat_map(|t| sinusoid(t, d).into_iter().map(|x| x as f32)).collect()
}

impl GptGpu {
    /// Allocates the model (parameters zero until [`GptGpu::load`]) for `batch` sequences of
    /// `seq` tokens, checking every size before the first allocation.
    pub fn new(gpu: &Gpu, config: GptConfig, batch: usize, seq: usize) -> Result<Self> {
        config.validate()?;
        let (d, f, v) = (config.d_model, config.ffn, config.vocab);
        let rows = batch.checked_mul(seq).filter(|&r| r > 0).ok_or_else(|| Error::OutOfRange {
            what: "tokens per call (batch × sequence length)".into(),
            value: batch.saturating_mul(seq) as u64,
            min: 1,
            max: u32::MAX as u64,
        })?;
        let bytes = Self::device_bytes(&config, batch, seq);
        crate::runtime::host::check_bytes("the GPT's activations, parameters and optimiser state", bytes)?;
        let widest = (rows as u64) * (f.max(3 * d).max(v) as u64) * 4;
        gpu.check_binding("GPT activation [tokens, widest]", widest)?;
        let spec = attention_spec(&config, batch, seq);
        let attention = Attention::new(gpu, Kernel::Flash, &spec)?;
        let backward = Backward::new(gpu, &spec)?;
        let train = Train::new(gpu)?;
        let layers = config.layers;
        let sparse = match config.attn {
            AttnKind::Dense => None,
            AttnKind::Moba { .. } => config
                .attn
                .moba()
                .map(|m| MobaLayers::new(gpu, m, &spec, layers).map(|x| Sparse::Moba(Box::new(x)))),
            AttnKind::Nsa { .. } => config
                .attn
                .nsa()
                .map(|n| NsaLayers::new(gpu, n, &spec, layers).map(|x| Sparse::Nsa(Box::new(x)))),
            AttnKind::Dsa { .. } => config
                .attn
                .dsa()
                .map(|x| DsaLayers::new(gpu, x, &spec, layers).map(|x| Sparse::Dsa(Box::new(x)))),
        }
        .transpose()?;

        let buf = |what: &str, floats: usize| gpu.storage(what, (floats.max(1) * 4) as u64);
        // tensors: the shapes list with each LayerNorm's γ and β fused
        let mut tensors = Vec::new();
        let mut at = 0;
        let shapes = config.shapes();
        let mut i = 0;
        while i < shapes.len() {
            let (name, shape) = &shapes[i];
            let mut len: usize = shape.iter().product();
            if name.ends_with(".g") {
                len *= 2; // γ then β
                i += 1;
            }
            tensors.push(Tensor {
                name: name.trim_end_matches(".g").to_string(),
                range: at..at + len,
                decay: shape.len() == 2,
                param: buf(name, len)?,
                grad: buf("gradient", len)?,
                m: buf("AdamW m", len)?,
                v: buf("AdamW v", len)?,
            });
            at += len;
            i += 1;
        }
        debug_assert_eq!(at, config.params());
        let tensor = |l: usize, k: usize| &tensors[1 + l * PER_BLOCK + k].param;
        let head_len = spec.shape.q_len();
        let blocks = (0..config.layers)
            .map(|l| {
                Ok(Saved {
                    x: buf("x", rows * d)?,
                    a1: buf("a1", rows * d)?,
                    q: buf("q", head_len)?,
                    k: buf("k", head_len)?,
                    v: buf("v", head_len)?,
                    o: buf("o", head_len)?,
                    lse: buf("lse", spec.shape.lse_len())?,
                    att: buf("att", rows * d)?,
                    mid: buf("mid", rows * d)?,
                    a2: buf("a2", rows * d)?,
                    u: buf("u", rows * f)?,
                    h: buf("h", rows * f)?,
                    ln1: LayerOp::layer_norm_affine_on(gpu, rows, d, LN_EPS as f32, tensor(l, LN1))?,
                    ln2: LayerOp::layer_norm_affine_on(gpu, rows, d, LN_EPS as f32, tensor(l, LN2))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lnf =
            LayerOp::layer_norm_affine_on(gpu, rows, d, LN_EPS as f32, &tensors[lnf_index(&config)].param)?;
        let r = rows;
        let keys: [MmKey; 15] = [
            (r, d, 3 * d, true, false, PLAIN), // QKV
            (r, d, d, true, true, PLAIN),      // output projection, added to the stream
            (r, d, f, true, false, PLAIN),     // FFN in
            (r, f, d, true, true, PLAIN),      // FFN out, added to the stream
            (r, d, v, false, false, B_T),      // tied head: logits = xf·Eᵀ
            (r, v, d, false, false, PLAIN),    // dxf = dlogits·E
            (v, r, d, false, false, A_T),      // dE = dlogitsᵀ·xf
            (r, d, f, false, false, B_T),      // dh = dx·W2ᵀ
            (f, r, d, false, false, A_T),      // dW2 = hᵀ·dx
            (r, f, d, false, false, B_T),      // da2 = du·W1ᵀ
            (d, r, f, false, false, A_T),      // dW1 = a2ᵀ·du
            (r, d, d, false, false, B_T),      // datt = dx·W_oᵀ
            (d, r, d, false, false, A_T),      // dW_o = attᵀ·dx
            (r, 3 * d, d, false, false, B_T),  // da1 = dqkv·W_qkvᵀ
            (d, r, 3 * d, false, false, A_T),  // dW_qkv = a1ᵀ·dqkv
        ];
        // NSA's gates: logits = a1·W_gate + b_gate, dW_gate = a1ᵀ·dlogits, da1 += dlogits·W_gateᵀ
        let g3 = 3 * config.heads;
        let gate_keys: &[MmKey] = match config.attn.nsa() {
            Some(_) => &[
                (r, d, g3, true, false, PLAIN),
                (d, r, g3, false, false, A_T),
                (r, g3, d, false, true, PLAIN),
            ],
            None => &[],
        };
        // DSA's indexer: qI, kI, w = a1·W + b, their weights' gradients a1ᵀ·d(·)
        let index_keys: Vec<MmKey> = config.attn.dsa().map_or_else(Vec::new, |x| {
            let (hi, di) = (x.index_heads, x.index_dim);
            [hi * di, di, hi]
                .into_iter()
                .flat_map(|c| [(r, d, c, true, false, PLAIN), (d, r, c, false, false, A_T)])
                .collect()
        });
        let mut matmuls = HashMap::new();
        for key in keys.into_iter().chain(gate_keys.iter().copied()).chain(index_keys) {
            if let std::collections::hash_map::Entry::Vacant(e) = matmuls.entry(key) {
                let (m, k, n, bias, acc, layout) = key;
                let act = Activation::None;
                // transposed operands in place where the kernel reads them (CPU adapters), else
                // the plain product of transposed copies (`product`)
                let mm =
                    match Matmul::with_layout(gpu, [m, k, n], bias, act, MatmulOptions::default(), layout) {
                        Err(Error::Invalid(_)) => Matmul::new(gpu, m, k, n, bias, act)?,
                        built => built?,
                    };
                e.insert(if acc { mm.accumulating(gpu) } else { mm });
            }
        }
        let table = match config.pos {
            PosScheme::Sinusoidal => Some(gpu.upload("sinusoidal positions", &sinusoidal_table(seq, d))?),
            _ => None,
        };
        let widest_t = rows * f.max(d).max(v);
        Ok(Self {
            config,
            batch,
            seq,
            train,
            blocks,
            attention,
            backward,
            sparse,
            matmuls,
            lnf,
            ids: buf("token ids", rows)?,
            by_id: buf("tokens by id", config.vocab + 1 + rows)?,
            targets: buf("targets", rows)?,
            table,
            x_last: buf("x last", rows * d)?,
            xf: buf("xf", rows * d)?,
            logits: buf("logits", rows * v)?,
            dlogits: buf("dlogits", rows * v)?,
            loss: buf("loss", rows)?,
            dx: buf("dx", rows * d)?,
            dtmp: buf("dtmp", rows * d)?,
            dh: buf("dh", rows * f)?,
            du: buf("du", rows * f)?,
            dqkv: buf("dqkv", rows * 3 * d)?,
            qkv: buf("qkv", rows * 3 * d)?,
            d_o: buf("dO", head_len)?,
            dq: buf("dQ", head_len)?,
            dk: buf("dK", head_len)?,
            dv: buf("dV", head_len)?,
            act_t: buf("activation transposed", widest_t)?,
            weight_t: buf("weight transposed", (3 * d * d).max(d * f).max(v * d))?,
            stats: buf("LayerNorm stats", 2 * rows)?,
            norms: buf("gradient norms", tensors.len())?,
            tensors,
        })
    }

    /// Device bytes of the model for `batch` sequences of `seq` tokens: parameters with gradients and
    /// moments, the saved activations, the backward's scratch (saturating).
    pub fn device_bytes(config: &GptConfig, batch: usize, seq: usize) -> u64 {
        let rows = batch.saturating_mul(seq);
        let (d, f, v, l) =
            (config.d_model as u64, config.ffn as u64, config.vocab as u64, config.layers as u64);
        let r = rows as u64;
        let per_block = r.saturating_mul(9 * d + 2 * f) + r.saturating_mul(config.heads as u64);
        let fixed = r.saturating_mul(5 * d + 2 * v + 2 * f + 6 * d + 4 * d + f.max(d).max(v) + 3);
        let nsa = config.attn.nsa().map_or(0, |n| NsaLayers::device_bytes(config, &n, rows));
        let dsa = config.attn.dsa().map_or(0, |x| DsaLayers::device_bytes(config, &x, rows, seq));
        (4 * config.params() as u64)
            .saturating_add(nsa)
            .saturating_add(dsa)
            .saturating_add(l.saturating_mul(per_block))
            .saturating_add(fixed)
            .saturating_add((3 * d * d).max(d * f).max(v * d))
            .saturating_add(v + 1 + r) // the tokens grouped by id
            .saturating_mul(4)
    }

    fn mm(&self, key: MmKey) -> &Matmul {
        &self.matmuls[&key]
    }

    /// C `[m, n]` = A·B for A and B stored as `layout` says (Aᵀ `[k, m]`, Bᵀ `[n, k]`): read
    /// in place where the matmul can, else through transposed copies.
    #[allow(clippy::too_many_arguments)]
    fn product(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        [m, k, n]: [usize; 3],
        layout: Layout,
        a: &wgpu::Buffer,
        b: &wgpu::Buffer,
        c: &wgpu::Buffer,
    ) -> Result<()> {
        let mm = self.mm((m, k, n, false, false, layout));
        if mm.layout() == layout {
            return mm.encode(gpu, enc, a, b, None, c);
        }
        let a = if layout.a_t {
            self.train.transpose(gpu, enc, a, &self.act_t, k, m)?;
            &self.act_t
        } else {
            a
        };
        let b = if layout.b_t {
            self.train.transpose(gpu, enc, b, &self.weight_t, n, k)?;
            &self.weight_t
        } else {
            b
        };
        mm.encode(gpu, enc, a, b, None, c)
    }

    fn rows(&self) -> usize {
        self.batch * self.seq
    }

    /// Uploads the flat parameters (`[`GptConfig::params`]` floats, the oracle's layout).
    pub fn load(&self, gpu: &Gpu, params: &[f32]) -> Result<()> {
        self.write_flat(gpu, params, |t| &t.param, "parameters")
    }

    /// Uploads AdamW's moments (flat, like the parameters).
    pub(crate) fn load_moments(&self, gpu: &Gpu, m: &[f32], v: &[f32]) -> Result<()> {
        self.write_flat(gpu, m, |t| &t.m, "AdamW m")?;
        self.write_flat(gpu, v, |t| &t.v, "AdamW v")
    }

    fn write_flat(
        &self,
        gpu: &Gpu,
        data: &[f32],
        pick: impl Fn(&Tensor) -> &wgpu::Buffer,
        what: &str,
    ) -> Result<()> {
        if data.len() != self.config.params() {
            return Err(Error::Length {
                what: what.into(),
                got: data.len(),
                shape: vec![self.config.params()],
                expected: self.config.params(),
            });
        }
        crate::contract::spec::check_finite(what, data)?;
        for t in &self.tensors {
            gpu.queue.write_buffer(pick(t), 0, bytemuck::cast_slice(&data[t.range.clone()]));
        }
        Ok(())
    }

    fn read_flat(&self, gpu: &Gpu, pick: impl Fn(&Tensor) -> &wgpu::Buffer) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(self.config.params());
        for t in &self.tensors {
            out.extend(gpu.read::<f32>(pick(t), t.range.len())?);
        }
        Ok(out)
    }

    /// The parameters, flat.
    pub fn params(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.read_flat(gpu, |t| &t.param)
    }

    /// The last backward's gradients, flat.
    pub fn grads(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        self.read_flat(gpu, |t| &t.grad)
    }

    /// AdamW's moments (m, v), flat.
    pub fn moments(&self, gpu: &Gpu) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.read_flat(gpu, |t| &t.m)?, self.read_flat(gpu, |t| &t.v)?))
    }

    /// Sets the next call's tokens: `inputs` and `targets` (`[batch·seq]` each; a target ≥
    /// vocab marks a position whose loss does not count).
    pub fn set_tokens(&self, gpu: &Gpu, inputs: &[u32], targets: &[u32]) -> Result<()> {
        let r = self.rows();
        if inputs.len() != r || targets.len() != r {
            return Err(Error::Length {
                what: "token ids and targets".into(),
                got: inputs.len().min(targets.len()),
                shape: vec![self.batch, self.seq],
                expected: r,
            });
        }
        check_ids(inputs, self.config.vocab)?;
        gpu.queue.write_buffer(&self.ids, 0, bytemuck::cast_slice(inputs));
        let by_id = crate::kernels::train::tokens_by_id(inputs, self.config.vocab);
        gpu.queue.write_buffer(&self.by_id, 0, bytemuck::cast_slice(&by_id));
        gpu.queue.write_buffer(&self.targets, 0, bytemuck::cast_slice(targets));
        Ok(())
    }

    /// Per-position losses of the last forward (0 where the target did not count).
    pub fn losses(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        gpu.read(&self.loss, self.rows())
    }

    /// The logits of the last forward, `[batch · seq, vocab]` (row p predicts token p + 1).
    pub fn logits(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        gpu.read(&self.logits, self.rows() * self.config.vocab)
    }

    fn heads(&self, parts: usize) -> HeadDims {
        HeadDims {
            batch: self.batch,
            seq: self.seq,
            heads: self.config.heads,
            d: self.config.d_model / self.config.heads,
            parts,
        }
    }

    /// Tensor `k` of block `l`.
    fn tensor(&self, l: usize, k: usize) -> &Tensor {
        &self.tensors[1 + l * PER_BLOCK + k]
    }

    /// Block `l`'s DSA indexer projection `part` (0: qI, 1: kI, 2: w), its weight (`bias`
    /// false) or bias, after the final LayerNorm.
    fn index_tensor(&self, l: usize, part: usize, bias: bool) -> &Tensor {
        &self.tensors[lnf_index(&self.config) + 1 + 6 * l + 2 * part + bias as usize]
    }

    /// Block `l`'s NSA gate projection: the weight (`gate` 0, `[d, 3H]`) or the bias (1), after
    /// the final LayerNorm.
    fn gate_tensor(&self, l: usize, gate: usize) -> &Tensor {
        &self.tensors[lnf_index(&self.config) + 1 + 2 * l + gate]
    }

    fn param(&self, l: usize, k: usize) -> &wgpu::Buffer {
        &self.tensor(l, k).param
    }

    fn grad(&self, l: usize, k: usize) -> &wgpu::Buffer {
        &self.tensor(l, k).grad
    }

    /// `out` (+)= `x`·W + b for block `l`'s weight `w` `[k, n]` and bias `b`: added to `out`
    /// when `accumulate` (a residual branch).
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        l: usize,
        (w, b): (usize, usize),
        x: &wgpu::Buffer,
        out: &wgpu::Buffer,
        (k, n): (usize, usize),
        accumulate: bool,
    ) -> Result<()> {
        let mm = self.mm((self.rows(), k, n, true, accumulate, PLAIN));
        mm.encode(gpu, enc, x, self.param(l, w), Some(self.param(l, b)), out)
    }

    /// The backward of LayerNorm `ln` (input `x`) for the gradient in `dtmp`: its input's
    /// gradient into `dx` (added when `accumulate`: the residual stream's), γ and β's into
    /// its gradient.
    fn norm_backward(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        ln: &Tensor,
        accumulate: bool,
    ) -> Result<()> {
        let (r, d) = (self.rows(), self.config.d_model);
        self.train.layer_norm_backward(
            gpu,
            enc,
            x,
            &self.dtmp,
            &ln.param,
            &self.dx,
            &ln.grad,
            &self.stats,
            r,
            d,
            LN_EPS as f32,
            accumulate,
        )
    }

    /// Per-position losses of `inputs` against `targets` (a forward only; read back).
    pub(crate) fn forward_losses(&self, gpu: &Gpu, inputs: &[u32], targets: &[u32]) -> Result<Vec<f32>> {
        self.set_tokens(gpu, inputs, targets)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.encode_forward(gpu, &mut enc, 1.0)?;
        gpu.queue.submit([enc.finish()]);
        self.losses(gpu)
    }

    /// Records the forward to the per-position losses; `dlogits` gets the cross-entropy's
    /// gradient scaled by `loss_scale` (1 / counted positions for a mean).
    pub fn encode_forward(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, loss_scale: f32) -> Result<()> {
        let c = &self.config;
        let (r, d, f, v) = (self.rows(), c.d_model, c.ffn, c.vocab);
        let t = &self.train;
        let wte = &self.tensors[0].param;
        let first = self.blocks.first().map_or(&self.x_last, |b| &b.x);
        t.embed(gpu, enc, wte, self.table.as_ref(), &self.ids, first, r, d, self.seq)?;
        for (l, s) in self.blocks.iter().enumerate() {
            s.ln1.encode(gpu, enc, &s.x, &s.a1);
            self.linear(gpu, enc, l, (W_QKV, B_QKV), &s.a1, &self.qkv, (d, 3 * d), false)?;
            for (part, dst) in [&s.q, &s.k, &s.v].into_iter().enumerate() {
                t.permute_heads(gpu, enc, true, &self.qkv, dst, self.heads(3), part)?;
            }
            let bufs = AttnBuffers { q: &s.q, k: &s.k, v: &s.v, o: &s.o, lse: &s.lse };
            // O merged to tokens in `s.att` (NSA and DSA merge their own)
            match &self.sparse {
                None => {
                    self.attention.encode(gpu, enc, &bufs)?;
                    t.permute_heads(gpu, enc, false, &s.att, &s.o, self.heads(1), 0)?;
                }
                Some(Sparse::Moba(mb)) => {
                    // the choice reads this layer's Q and K (rotated, with RoPE): what is
                    // recorded so far runs first
                    let (q, k) = mb.inputs(gpu, enc, s)?;
                    flush(gpu, enc);
                    let (buf, lists) = select_lists(gpu, &mb.spec, &mb.moba, q, k)?;
                    mb.forward.run(gpu, &AttnBuffers { q, k, ..bufs }, &lists, &buf)?;
                    mb.lists.keep(l, (buf, lists));
                    t.permute_heads(gpu, enc, false, &s.att, &s.o, self.heads(1), 0)?;
                }
                Some(Sparse::Nsa(nl)) => self.nsa_forward(gpu, enc, nl, l, s)?,
                Some(Sparse::Dsa(dl)) => self.dsa_forward(gpu, enc, dl, l, s)?,
            }
            enc.copy_buffer_to_buffer(&s.x, 0, &s.mid, 0, (r * d * 4) as u64);
            self.linear(gpu, enc, l, (W_O, B_O), &s.att, &s.mid, (d, d), true)?;
            s.ln2.encode(gpu, enc, &s.mid, &s.a2);
            self.linear(gpu, enc, l, (W1, B1), &s.a2, &s.u, (d, f), false)?;
            t.gelu(gpu, enc, &s.u, &s.h, r * f)?;
            let next = self.blocks.get(l + 1).map_or(&self.x_last, |b| &b.x);
            enc.copy_buffer_to_buffer(&s.mid, 0, next, 0, (r * d * 4) as u64);
            self.linear(gpu, enc, l, (W2, B2), &s.h, next, (f, d), true)?;
        }
        self.lnf.encode(gpu, enc, &self.x_last, &self.xf);
        // tied head: logits = xf · Eᵀ
        self.product(gpu, enc, [r, d, v], B_T, &self.xf, wte, &self.logits)?;
        t.cross_entropy(gpu, enc, &self.logits, &self.targets, &self.dlogits, &self.loss, r, v, loss_scale)
    }

    /// The gates' layout: `[B, T, H·3]` token-major against NSA's `[B, H, T, 3]`.
    fn gate_heads(&self) -> HeadDims {
        HeadDims { d: 3, ..self.heads(1) }
    }

    /// Block `l`'s attention under NSA: the gates from LN1's output, Q, K, V copied into the
    /// layer's NSA tensors (and rotated there, with RoPE), every stage (the choice read back
    /// and kept), the mix merged to tokens in `s.att`. What `enc` recorded runs first.
    fn nsa_forward(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        nl: &NsaLayers,
        l: usize,
        s: &Saved,
    ) -> Result<()> {
        let (r, d, g3) = (self.rows(), self.config.d_model, 3 * self.config.heads);
        let (w, b) = (&self.gate_tensor(l, 0).param, &self.gate_tensor(l, 1).param);
        self.mm((r, d, g3, true, false, PLAIN)).encode(gpu, enc, &s.a1, w, Some(b), &nl.logits)?;
        self.train.sigmoid(gpu, enc, &nl.logits, &nl.gates[l], r * g3)?;
        let nt = &nl.tensors[l];
        self.train.permute_heads(gpu, enc, true, &nl.gates[l], &nt.gates, self.gate_heads(), 0)?;
        let forward = nl.call.forward();
        forward.load(gpu, enc, nt, (&s.q, &s.k, &s.v))?;
        flush(gpu, enc);
        let (lists, _) = forward.run(gpu, nt)?;
        nl.lists.keep(l, lists);
        self.train.permute_heads(gpu, enc, false, &s.att, &nt.o, self.heads(1), 0)
    }

    /// Block `l`'s attention under DSA: the indexer's qI, kI, w from LN1's output straight
    /// into the layer's DSA tensors, Q, K, V copied there (rotated in place, with RoPE), the
    /// choice (read back and kept) and the attention over it, O merged to tokens in `s.att`.
    /// What `enc` recorded runs first.
    fn dsa_forward(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        dl: &DsaLayers,
        l: usize,
        s: &Saved,
    ) -> Result<()> {
        let (r, d) = (self.rows(), self.config.d_model);
        let (hi, di) = (dl.dsa.index_heads, dl.dsa.index_dim);
        let dt = &dl.tensors[l];
        for (part, (cols, out)) in [(hi * di, &dt.qi), (di, &dt.ki), (hi, &dt.wi)].into_iter().enumerate() {
            let (w, b) = (&self.index_tensor(l, part, false).param, &self.index_tensor(l, part, true).param);
            self.mm((r, d, cols, true, false, PLAIN)).encode(gpu, enc, &s.a1, w, Some(b), out)?;
        }
        dt.io.copy_inputs(enc, (&s.q, &s.k, &s.v));
        if let Some(e) = &dl.encoded {
            e.encode(gpu, enc, &dt.io.q, &dt.io.k)?;
        }
        flush(gpu, enc);
        dl.attn.run(gpu, dt)?;
        let lists = dl.attn.read_lists(gpu, dt)?;
        dl.lists.keep(l, lists);
        self.train.permute_heads(gpu, enc, false, &s.att, &dt.io.o, self.heads(1), 0)
    }

    /// Block `l`'s DSA backward for dO in `self.d_o`: the token-list backward over the
    /// forward's lists into `self.dq`, `dk`, `dv` (dQ and dK rotated back, with RoPE); then the
    /// indexer's: the sparse-stage alignment's gradients (a mean over the rows, against the
    /// forward's sparse LSE) and its projections'. What `enc` recorded runs first.
    fn dsa_backward(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        dl: &DsaLayers,
        l: usize,
        s: &Saved,
    ) -> Result<()> {
        let dt = &dl.tensors[l];
        let inverse = dl.lists.with(l, "DSA", |lists| inverse_lists(&dl.spec, &dl.dsa, lists))?;
        inverse.write(gpu, (&dl.inverse.0, &dl.inverse.1));
        let inv = DeviceInverse { offsets: &dl.inverse.0, entries: &dl.inverse.1, longest: inverse.longest };
        flush(gpu, enc);
        let grads = ListGradBuffers {
            d_o: &self.d_o,
            dq: &self.dq,
            dk: &self.dk,
            dv: &self.dv,
            delta: &dl.delta,
            inverse: inv,
        };
        dl.backward.run(gpu, dt, &grads)?;
        let b = AlignBuffers {
            index: (&dt.qi, &dt.ki, &dt.wi),
            q: &dt.io.q,
            k: &dt.io.k,
            lse: &dt.io.lse,
            rows: &dl.rows,
            dqi: &dl.dqi,
            dki: &dl.dki,
        };
        dl.align.run_sparse(gpu, &b, (&dt.lists, inv), 1.0 / self.rows() as f32)?;
        if let Some(e) = &dl.encoded {
            e.grads(gpu, enc, &self.dq, &self.dk)?;
        }
        let (hi, di) = (dl.dsa.index_heads, dl.dsa.index_dim);
        for (part, (cols, grad)) in
            [(hi * di, &dl.dqi), (di, &dl.dki), (hi, &dl.rows)].into_iter().enumerate()
        {
            let (w, b) = (self.index_tensor(l, part, false), self.index_tensor(l, part, true));
            self.train.column_sum(gpu, enc, grad, &b.grad, self.rows(), cols)?;
            self.weight_grad(gpu, enc, &s.a1, grad, &w.grad, self.config.d_model, cols)?;
        }
        Ok(())
    }

    /// Block `l`'s NSA backward for dO in `self.d_o`: dQ, dK, dV (taken back through RoPE)
    /// into `self.dq`, `dk`, `dv`, the gates' gradient into `dgates` token-major.
    fn nsa_backward(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        nl: &NsaLayers,
        l: usize,
    ) -> Result<()> {
        let gr = &nl.grads;
        let bytes = (self.config.d_model * self.rows() * 4) as u64;
        enc.copy_buffer_to_buffer(&self.d_o, 0, &gr.d_o, 0, bytes);
        flush(gpu, enc);
        nl.lists.with(l, "NSA", |lists| nl.call.run(gpu, &nl.tensors[l], gr, lists))?;
        for (src, dst) in [(&gr.dq, &self.dq), (&gr.dk, &self.dk), (&gr.dv, &self.dv)] {
            enc.copy_buffer_to_buffer(src, 0, dst, 0, bytes);
        }
        self.train.permute_heads(gpu, enc, false, &nl.dgates, &gr.d_gates, self.gate_heads(), 0)
    }

    /// The gates' projection backward for block `l` (gradient in `dgates`): through the
    /// sigmoid, to W_gate and b_gate, and LN1's output gradient in `dtmp` added to.
    fn gates_backward(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        nl: &NsaLayers,
        l: usize,
        s: &Saved,
    ) -> Result<()> {
        let (r, d, g3) = (self.rows(), self.config.d_model, 3 * self.config.heads);
        let t = &self.train;
        // the logits' gradient, in the logits' scratch (the forward is done with it)
        t.sigmoid_backward(gpu, enc, &nl.gates[l], &nl.dgates, &nl.logits, r * g3)?;
        t.column_sum(gpu, enc, &nl.logits, &self.gate_tensor(l, 1).grad, r, g3)?;
        self.weight_grad(gpu, enc, &s.a1, &nl.logits, &self.gate_tensor(l, 0).grad, d, g3)?;
        // da1 += dlogits·W_gateᵀ: the weight transposed, then an accumulating product
        t.transpose(gpu, enc, &self.gate_tensor(l, 0).param, &self.weight_t, d, g3)?;
        self.mm((r, g3, d, false, true, PLAIN)).encode(gpu, enc, &nl.logits, &self.weight_t, None, &self.dtmp)
    }

    /// `grad` = xᵀ·dy for x `[R, k]`, dy `[R, n]`.
    #[allow(clippy::too_many_arguments)]
    fn weight_grad(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        x: &wgpu::Buffer,
        dy: &wgpu::Buffer,
        grad: &wgpu::Buffer,
        k: usize,
        n: usize,
    ) -> Result<()> {
        self.product(gpu, enc, [k, self.rows(), n], A_T, x, dy, grad)
    }

    /// `dx` = dy·Wᵀ for dy `[R, n]`, W `[k, n]`.
    #[allow(clippy::too_many_arguments)]
    fn input_grad(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        dy: &wgpu::Buffer,
        w: &wgpu::Buffer,
        dx: &wgpu::Buffer,
        k: usize,
        n: usize,
    ) -> Result<()> {
        self.product(gpu, enc, [self.rows(), n, k], B_T, dy, w, dx)
    }

    /// Records the backward of the last forward: every parameter's gradient.
    pub fn encode_backward(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder) -> Result<()> {
        let c = &self.config;
        let (r, d, f, v) = (self.rows(), c.d_model, c.ffn, c.vocab);
        let t = &self.train;
        let (wte, dwte) = (&self.tensors[0].param, &self.tensors[0].grad);
        // head: dE = dlogitsᵀ·xf (the embedding's share is added at the end), dxf = dlogits·E
        self.product(gpu, enc, [v, r, d], A_T, &self.dlogits, &self.xf, dwte)?;
        self.mm((r, v, d, false, false, PLAIN)).encode(gpu, enc, &self.dlogits, wte, None, &self.dtmp)?;
        self.norm_backward(gpu, enc, &self.x_last, &self.tensors[lnf_index(c)], false)?;
        for (l, s) in self.blocks.iter().enumerate().rev() {
            // FFN: next = mid + GELU(u)·W2 + b2, u = LN2(mid)·W1 + b1
            t.column_sum(gpu, enc, &self.dx, self.grad(l, B2), r, d)?;
            self.weight_grad(gpu, enc, &s.h, &self.dx, self.grad(l, W2), f, d)?;
            self.input_grad(gpu, enc, &self.dx, self.param(l, W2), &self.dh, f, d)?;
            t.gelu_backward(gpu, enc, &s.u, &self.dh, &self.du, r * f)?;
            t.column_sum(gpu, enc, &self.du, self.grad(l, B1), r, f)?;
            self.weight_grad(gpu, enc, &s.a2, &self.du, self.grad(l, W1), d, f)?;
            self.input_grad(gpu, enc, &self.du, self.param(l, W1), &self.dtmp, d, f)?;
            self.norm_backward(gpu, enc, &s.mid, self.tensor(l, LN2), true)?;
            // attention: mid = x + merge(attn(split(LN1(x)·W_qkv + b_qkv)))·W_o + b_o
            t.column_sum(gpu, enc, &self.dx, self.grad(l, B_O), r, d)?;
            self.weight_grad(gpu, enc, &s.att, &self.dx, self.grad(l, W_O), d, d)?;
            self.input_grad(gpu, enc, &self.dx, self.param(l, W_O), &self.dtmp, d, d)?;
            t.permute_heads(gpu, enc, true, &self.dtmp, &self.d_o, self.heads(1), 0)?;
            let forward = AttnBuffers { q: &s.q, k: &s.k, v: &s.v, o: &s.o, lse: &s.lse };
            let grads = BackwardBuffers { forward, d_o: &self.d_o, dq: &self.dq, dk: &self.dk, dv: &self.dv };
            match &self.sparse {
                None => self.backward.encode(gpu, enc, &grads)?,
                Some(Sparse::Moba(mb)) => {
                    // the copies hold the last layer's rotation: this layer's again
                    let (q, k) = mb.inputs(gpu, enc, s)?;
                    flush(gpu, enc);
                    let rotated = BackwardBuffers { forward: AttnBuffers { q, k, ..forward }, ..grads };
                    mb.lists.with(l, "MoBA", |(buf, host)| mb.backward.run(gpu, &rotated, host, buf))?;
                    if let Some(e) = &mb.encoded {
                        e.grads(gpu, enc, &self.dq, &self.dk)?;
                    }
                }
                Some(Sparse::Nsa(nl)) => self.nsa_backward(gpu, enc, nl, l)?,
                Some(Sparse::Dsa(dl)) => self.dsa_backward(gpu, enc, dl, l, s)?,
            }
            for (part, src) in [&self.dq, &self.dk, &self.dv].into_iter().enumerate() {
                t.permute_heads(gpu, enc, false, &self.dqkv, src, self.heads(3), part)?;
            }
            t.column_sum(gpu, enc, &self.dqkv, self.grad(l, B_QKV), r, 3 * d)?;
            self.weight_grad(gpu, enc, &s.a1, &self.dqkv, self.grad(l, W_QKV), d, 3 * d)?;
            self.input_grad(gpu, enc, &self.dqkv, self.param(l, W_QKV), &self.dtmp, d, 3 * d)?;
            if let Some(Sparse::Nsa(nl)) = &self.sparse {
                self.gates_backward(gpu, enc, nl, l, s)?;
            }
            self.norm_backward(gpu, enc, &s.x, self.tensor(l, LN1), true)?;
        }
        // the gather's gradient, added to the head's
        t.embedding_backward(gpu, enc, &self.dx, &self.by_id, dwte, r, v, d)
    }

    /// Records one AdamW step on every tensor, the gradient clipped to `o.max_norm` by the
    /// global norm (computed on the device); weight decay on matrices only.
    pub fn encode_step(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, o: &AdamW) -> Result<()> {
        for (slot, t) in self.tensors.iter().enumerate() {
            self.train.sum_squares(gpu, enc, &t.grad, &self.norms, t.range.len(), slot)?;
        }
        for t in &self.tensors {
            let o = AdamW { weight_decay: if t.decay { o.weight_decay } else { 0.0 }, ..*o };
            self.train.adamw(
                gpu,
                enc,
                &t.param,
                &t.grad,
                &t.m,
                &t.v,
                &self.norms,
                self.tensors.len(),
                t.range.len(),
                &o,
            )?;
        }
        Ok(())
    }

    /// The global gradient norm of the last backward (read back: for reports, not steps).
    pub fn grad_norm(&self, gpu: &Gpu) -> Result<f32> {
        Ok(gpu.read::<f32>(&self.norms, self.tensors.len())?.iter().sum::<f32>().sqrt())
    }

    /// Which parameter tensors exist, with their flat ranges (a LayerNorm as `….ln1` for γ | β).
    pub(crate) fn tensor_ranges(&self) -> Vec<(String, Range<usize>)> {
        self.tensors.iter().map(|t| (t.name.clone(), t.range.clone())).collect()
    }
}

/// A gradient check's result: the GPU loss against the oracle's, and per parameter tensor the
/// relative error of the GPU gradient against central finite differences of the oracle loss.
#[derive(Clone, Debug)]
pub struct GradCheck {
    /// The GPU's mean loss and the oracle's.
    pub loss: (f64, f64),
    /// Per tensor (a LayerNorm as `….ln1`): name, coordinates checked, relative error.
    pub tensors: Vec<(String, usize, f64)>,
    /// Coordinates left out: where the oracle's loss is not smooth within the step (a learned
    /// choice flips, a ReLU bends), its central differences at the step and at half of it
    /// disagree and neither measures the gradient (the GPU's there is checked by nothing).
    pub kinks: usize,
}

impl GradCheck {
    /// The worst relative error: the loss's or any tensor's.
    pub fn worst(&self) -> f64 {
        let loss = (self.loss.0 - self.loss.1).abs() / self.loss.1.abs().max(f64::MIN_POSITIVE);
        self.tensors.iter().map(|t| t.2).fold(loss, f64::max)
    }
}

/// Checks the whole model's gradient on the GPU against finite differences of
/// [`crate::models::gpt::loss_f64`] (DSA's indexer tensors: of
/// [`crate::models::gpt::index_loss_f64`], the objective it learns from): parameters from GPT-2's initialisation plus uniform
/// noise of ±0.25 (so every path carries a gradient well above f32 rounding), `batch`
/// sequences of `seq + 1` tokens from a 13-letter alphabet (tokens repeat, so the embedding's
/// gradient sums rows), `per_tensor` coordinates spread over each tensor, step 1e-5; a
/// coordinate where the oracle's loss is not smooth within the step is left out and counted
/// ([`GradCheck::kinks`]).
pub fn gradient_check(
    gpu: &Gpu,
    config: GptConfig,
    batch: usize,
    seq: usize,
    seed: u64,
    per_tensor: usize,
) -> Result<GradCheck> {
    gradient_check_on(gpu, config, (batch, seq), seed, per_tensor, b"etaoin shrdlu")
}

/// [`gradient_check`] on tokens drawn from `alphabet`, each at most once where it holds
/// enough letters. A repeated token makes rows alike: under RoPE two rows of the same token
/// differ only slightly after a block, and a learned choice over them meets near-ties that
/// flip within the step (or between f32 and f64); distinct tokens keep rows apart.
pub fn gradient_check_on(
    gpu: &Gpu,
    config: GptConfig,
    (batch, seq): (usize, usize),
    seed: u64,
    per_tensor: usize,
    alphabet: &[u8],
) -> Result<GradCheck> {
    use rand::{Rng, SeedableRng};
    if alphabet.is_empty() {
        return Err(Error::Invalid("a gradient check needs an alphabet of at least one token".into()));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut p = Params::init(config, rng.random())?.data;
    p.iter_mut().for_each(|x| *x += rng.random_range(-0.25f32..0.25));
    let count = batch * (seq + 1);
    let tokens: Vec<u32> = if alphabet.len() >= count {
        // no token twice: distinct rows (see `gradient_check_on`)
        let mut letters = alphabet.to_vec();
        for i in 0..count {
            let j = rng.random_range(i..letters.len());
            letters.swap(i, j);
        }
        letters[..count].iter().map(|&b| b as u32).collect()
    } else {
        (0..count).map(|_| alphabet[rng.random_range(0..alphabet.len())] as u32).collect()
    };
    let (inputs, targets) = inputs_and_targets(&tokens, seq);
    let model = GptGpu::new(gpu, config, batch, seq)?;
    model.load(gpu, &p)?;
    model.set_tokens(gpu, &inputs, &targets)?;
    let rows = (batch * seq) as f64;
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    model.encode_forward(gpu, &mut enc, (1.0 / rows) as f32)?;
    model.encode_backward(gpu, &mut enc)?;
    gpu.queue.submit([enc.finish()]);
    let got = model.losses(gpu)?.iter().map(|&x| x as f64).sum::<f64>() / rows;
    let grads = model.grads(gpu)?;
    let mut p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
    let loss = |q: &[f64]| crate::models::gpt::loss_f64(&config, q, &tokens, batch);
    // DSA's indexer learns from its own objective, detached from the model
    let index_loss = |q: &[f64]| crate::models::gpt::index_loss_f64(&config, q, &tokens, batch);
    let want = loss(&p64)?;
    let h = 1e-5;
    let mut tensors = Vec::new();
    let mut kinks = 0;
    for (name, range) in model.tensor_ranges() {
        let step = (range.len() / per_tensor.max(1)).max(1);
        let idx: Vec<usize> = range.step_by(step).collect();
        let mut fd = Vec::with_capacity(idx.len());
        let objective =
            if name.contains(".index.") { &index_loss as &dyn Fn(&[f64]) -> Result<f64> } else { &loss };
        let mut central = |i: usize, h: f64| -> Result<f64> {
            let x = p64[i];
            p64[i] = x + h;
            let up = objective(&p64)?;
            p64[i] = x - h;
            let down = objective(&p64)?;
            p64[i] = x;
            Ok((up - down) / (2.0 * h))
        };
        let mut kept = Vec::with_capacity(idx.len());
        for &i in &idx {
            let at_h = central(i, h)?;
            let g = grads[i] as f64;
            // where the GPU disagrees, the differences at h/2 tell a kink from a fault: on a
            // smooth loss they agree with those at h to ~h² (1e-9 here), far inside any real
            // disagreement; across a flipped choice or a bent ReLU they move by about as much
            // as the disagreement itself
            if (g - at_h).abs() > 1e-4 * (at_h.abs() + 1e-3) {
                let at_half = central(i, h / 2.0)?;
                if 4.0 * (at_half - at_h).abs() >= (g - at_h).abs() {
                    kinks += 1;
                    continue;
                }
            }
            kept.push(i);
            fd.push(at_h);
        }
        let idx = kept;
        let gpu_grad: Vec<f32> = idx.iter().map(|&i| grads[i]).collect();
        tensors.push((name, idx.len(), crate::contract::reference::rel_error(&gpu_grad, &fd)));
    }
    Ok(GradCheck { loss: (got, want), tensors, kinks })
}
