//! `nsa`: native sparse attention on the GPU (`shaders/nsa.wgsl` for its own stages; the rule
//! and its f64 oracle: [`crate::contract::nsa`]). One call runs, in order:
//! 1. `compress`: the compressed keys and values (φ over each window of l keys at stride d);
//! 2. the compressed branch: flash over them, their visibility (`c·d + l − 1 ≤ p`) as a
//!    `mask_mod`, so the tiles no query of a tile sees are skipped like any masked tile;
//! 3. `score`: each (kv group, row)'s block scores from the compressed branch's probabilities
//!    and its top blocks, in passes below an adapter's loop cap, written as index lists;
//! 4. the selected branch: the block-list kernel over the lists ([`SparseAttention`]; flash
//!    on the lists' block grid where it does not run the call);
//! 5. the window branch: flash with a causal window of w keys;
//! 6. `combine`: the gated mix.
//!
//! Stages 1 and 3 are the selection (timed and counted apart by `longctx bench --sparse
//! nsa`); the lists come back to the host once, for the block-list kernel's grouping.
//!
//! A decoding step ([`NsaAttention::decode_step`], `shaders/nsa_decode.wgsl`) has a few rows
//! over a long cache: the compressed branch and the window run in splits of their keys merged
//! by log-sum-exp, the choice scores every block at once on the compressed branch's own
//! scores, and the selected branch reads the lists on the device.

use std::sync::Arc;

use crate::contract::mods::{Mods, RuleFns};
use crate::contract::nsa::{Nsa, NsaGrads};
use crate::contract::selection::MAX_TOPK;
use crate::contract::spec::{AttnOutput, AttnSpec};
use crate::error::{Error, Result};
use crate::kernels::attention::backward::{Backward, BackwardBuffers};
use crate::kernels::attention::flash::FlashConfig;
use crate::kernels::attention::sparse::SparseAttention;
use crate::kernels::attention::sparse_backward::SparseBackward;
use crate::kernels::attention::{AttnBuffers, DeviceTensors};
use crate::kernels::positions::EncodedInputs;
use crate::kernels::selection::{MobaPath, lanes};
use crate::kernels::{Attention, Kernel};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Compiled, Shader, ShaderVariant, Snippet, bind_group};

const NAME: &str = "nsa";
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/nsa.wgsl"), bindings: NsaBinds::SLOTS };
bind_group! {
    /// The sizes; Q, K, V and φ; the compressed keys and values; the compressed branch's LSE;
    /// the running choice and the lists; the gates, the three branches and the output.
    struct NsaBinds {
        0 params: Uniform, 1 q: Read, 2 k: Read, 3 v: Read, 4 phi: Read, 5 kc: ReadWrite,
        6 vc: ReadWrite, 7 kc4: ReadWrite, 8 lse: Read, 9 best_s: ReadWrite, 10 best_b: ReadWrite,
        11 lists: ReadWrite, 12 gates: Read, 13 o_cmp: Read, 14 o_slc: Read, 15 o_win: Read,
        16 o: ReadWrite,
    }
}
const BACKWARD: Shader = Shader {
    stem: "nsa_backward",
    source: include_str!("../../shaders/nsa_backward.wgsl"),
    bindings: NsaBackBinds::SLOTS,
};
bind_group! {
    /// K, V and φ; the gates and the branches' outputs; dO, its shares and the gates'
    /// gradient; the branches' dQ and their sum; dK̃, dṼ, dK, dV (the selected branch's, then
    /// the total), the window branch's; φ's partial gradients.
    struct NsaBackBinds {
        0 params: Uniform, 1 k: Read, 2 v: Read, 3 phi: Read, 4 gates: Read, 5 o_cmp: Read,
        6 o_slc: Read, 7 o_win: Read, 8 d_o: Read, 9 d_cmp: ReadWrite, 10 d_slc: ReadWrite,
        11 d_win: ReadWrite, 12 d_gates: ReadWrite, 13 dq_cmp: Read, 14 dq_slc: Read,
        15 dq_win: Read, 16 dq: ReadWrite, 17 dkc: Read, 18 dvc: Read, 19 dk: ReadWrite,
        20 dv: ReadWrite, 21 dk_win: Read, 22 dv_win: Read, 23 d_phi: ReadWrite,
    }
}
const DECODE: Shader = Shader {
    stem: "nsa_decode",
    source: include_str!("../../shaders/nsa_decode.wgsl"),
    bindings: NsaDecodeBinds::SLOTS,
};
bind_group! {
    /// Q, the compressed keys (vec4 lanes) and values; the splits' partial softmaxes; a
    /// branch's LSE and O (the compressed or the window branch's); the block scores; the
    /// lists; the raw K and V (the window); the compressed branch's scores (for the choice).
    struct NsaDecodeBinds {
        0 params: Uniform, 1 q: Read, 2 kc4: Read, 3 vc: Read, 4 part: ReadWrite,
        5 lse_out: ReadWrite, 6 o_out: ReadWrite, 7 scores: ReadWrite, 8 lists: ReadWrite,
        9 k: Read, 10 v: Read, 11 cmp_s: ReadWrite,
    }
}
/// The decoding stages' entry points.
const DECODE_ENTRIES: [&str; 4] = ["cmp_partial", "cmp_merge", "block_scores", "pick"];
/// The most query rows (per head) a call may have for the decoding stages
/// ([`NsaAttention::decode_step`]): their block scores are kept per (kv head, row, block).
pub const DECODE_ROWS: usize = 16;
/// The decoding stages' splits of a row's compressed keys: at least this many keys each…
const DECODE_SPLIT_KEYS: usize = 32;
/// …and at most this many splits (`cmp_merge` walks them)…
const DECODE_SPLITS: usize = 1024;
/// …whose partial softmaxes take at most this many words (16 MiB).
const DECODE_PART_WORDS: usize = 1 << 22;
/// The backward's entry points.
const BACKWARD_ENTRIES: [&str; 5] = ["split_grad", "gate_grads", "add3", "compress_back", "phi_grads"];
/// The uniform both shaders read and their flat invocation index.
const PARAMS: Snippet = Snippet { name: "nsa_params", source: include_str!("../../shaders/nsa_params.wgsl") };
/// What the choice writes (`score`'s last pass, `pick`).
const CHOICE: Snippet = Snippet { name: "nsa_choice", source: include_str!("../../shaders/nsa_choice.wgsl") };
const WORKGROUP: u64 = 64;
/// The largest private query array of `score` (the group's heads × vec4 lanes): 4 KiB.
const MAX_QG: usize = 256;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    heads: u32,
    kv_heads: u32,
    n: u32,
    m: u32,
    d: u32,
    mc: u32,
    cmp_len: u32,
    cmp_stride: u32,
    block: u32,
    topk: u32,
    q_offset: i32,
    groups_x: u32,
    /// A stage's own words: `score`'s pass covers blocks `[arg0, arg1)`; `phi_grads` takes
    /// `arg0` compressed keys per chunk, `arg1` chunks.
    arg0: u32,
    arg1: u32,
    last: u32,
    scale: f32,
    neg_inf: f32,
    _pad: [u32; 3],
}

/// The variant of `entry` for head dim `d`, `group` query heads per kv head (`score` keeps
/// the group's query rows in private vec4 lanes: both rounded up to powers of two) and
/// subgroups of `sg` (0: none; `score` shuffles the keys' vec4s across them).
fn variant(entry: &'static str, d: usize, group: usize, sg: u32) -> ShaderVariant {
    let (qcap4, gcap) = (lanes(d) as u32, group.next_power_of_two() as u32);
    SHADER.variant(
        entry,
        &[PARAMS, crate::kernels::TOPK, CHOICE, crate::kernels::lanes(sg)],
        vec![
            ("MAX_TOPK", MAX_TOPK as u32),
            ("QCAP4", qcap4),
            ("GCAP", gcap),
            ("QG", qcap4 * gcap),
            ("SG", sg),
        ],
    )
}

/// A decoding stage's variant for head dim `d` (its vec4 lanes as `score`'s).
fn decode_variant(entry: &'static str, d: usize) -> ShaderVariant {
    DECODE.variant(
        entry,
        &[PARAMS, crate::kernels::TOPK, CHOICE],
        vec![("MAX_TOPK", MAX_TOPK as u32), ("QCAP4", lanes(d) as u32)],
    )
}

/// The shader variants: `compress` per head-dim bucket, `score` per (head-dim bucket, group
/// bucket) whose private query array fits [`MAX_QG`] and subgroup width, `combine` once; the
/// decoding stages (`nsa_decode.wgsl`) per head-dim bucket.
pub fn variants() -> Vec<ShaderVariant> {
    let mut out = vec![variant("combine", 4, 1, 0)];
    for p in 0..=8 {
        let d = 1 << p;
        out.push(variant("compress", d, 1, 0));
        for g in (0..=4).map(|e| 1 << e) {
            if lanes(d) as usize * g <= MAX_QG {
                // without subgroups, and with subgroups of 8 (lavapipe's) and 32
                out.extend([0, 8, 32].map(|sg| variant("score", d, g, sg)));
            }
        }
        out.extend(DECODE_ENTRIES.map(|e| decode_variant(e, d)));
    }
    out
}

/// The backward's variants (one each: no constant depends on the call).
pub fn backward_variants() -> Vec<ShaderVariant> {
    BACKWARD_ENTRIES.iter().map(|e| BACKWARD.variant(e, &[PARAMS], vec![])).collect()
}

/// NSA prepared for one call: the folded spec, the branches' kernels and NSA's own stages.
pub struct NsaAttention {
    spec: AttnSpec,
    nsa: Nsa,
    /// Flash over the compressed keys (`None`: M < l, no compressed key).
    cmp: Option<Attention>,
    /// The block-list kernel (`None`: flash on the lists' block grid).
    slc: Option<SparseAttention>,
    win: Attention,
    compress: Compiled,
    score: Compiled,
    combine: Compiled,
    /// The decoding stages, for calls of at most [`DECODE_ROWS`] rows.
    decode: Option<DecodeStages>,
    /// The call's positional encoding, applied to Q and K in place when they are uploaded
    /// (every stage and branch reads them encoded) and taken back off dQ and dK.
    encoded: Option<EncodedInputs>,
}

/// `nsa_decode.wgsl`'s stages for one call and how they split a row's compressed keys.
struct DecodeStages {
    partial: Compiled,
    merge: Compiled,
    scores: Compiled,
    pick: Compiled,
    /// Compressed keys per split (`arg0` of `cmp_partial`).
    chunk: usize,
    /// Splits per row.
    splits: usize,
    /// The window branch's keys per split and splits.
    win_chunk: usize,
    win_splits: usize,
}

impl DecodeStages {
    /// The stages for the folded call `spec` (`None` past [`DECODE_ROWS`] rows); the splits
    /// and the block loop checked against the adapter's loop cap.
    fn new(gpu: &Gpu, spec: &AttnSpec, nsa: &Nsa) -> Result<Option<Self>> {
        let s = spec.shape;
        if s.n > DECODE_ROWS {
            return Ok(None);
        }
        // the splits' partials stay below DECODE_PART_WORDS
        let rows = s.heads * s.n;
        let most =
            (DECODE_PART_WORDS / (rows * (lanes(s.head_dim) as usize * 4 + 2))).clamp(1, DECODE_SPLITS);
        let split = |keys: usize| {
            let splits = keys.max(1).div_ceil(DECODE_SPLIT_KEYS).clamp(1, most);
            (keys.max(1).div_ceil(splits), splits)
        };
        let (chunk, splits) = split(nsa.compressed(s.m));
        let (win_chunk, win_splits) = split(nsa.window.min(s.m));
        if let Some(limit) = gpu.loop_iteration_limit() {
            // `pick` offers each candidate block; `cmp_partial` walks a chunk
            let per_key = lanes(s.head_dim) as usize + 1;
            let needed = nsa.blocks(s.m).max(chunk.max(win_chunk) * per_key) as u64;
            if needed > limit {
                return Err(Error::LoopLimit {
                    kernel: NAME,
                    needed,
                    limit,
                    hint: "decode with longer selection blocks or a longer compression stride",
                });
            }
        }
        let d = s.head_dim;
        Ok(Some(Self {
            partial: gpu.compile(&decode_variant("cmp_partial", d))?,
            merge: gpu.compile(&decode_variant("cmp_merge", d))?,
            scores: gpu.compile(&decode_variant("block_scores", d))?,
            pick: gpu.compile(&decode_variant("pick", d))?,
            chunk,
            splits,
            win_chunk,
            win_splits,
        }))
    }
}

/// One call's tensors on the device: the inputs, each branch's output and LSE, the
/// compressed keys and values, the choice and the mix.
pub struct NsaTensors {
    /// Q, K, V; O and LSE are the selected branch's.
    pub io: DeviceTensors,
    phi: wgpu::Buffer,
    /// The gates `[H, N, 3]`.
    pub(crate) gates: wgpu::Buffer,
    kc: wgpu::Buffer,
    vc: wgpu::Buffer,
    kc4: wgpu::Buffer,
    o_cmp: wgpu::Buffer,
    lse_cmp: wgpu::Buffer,
    o_win: wgpu::Buffer,
    lse_win: wgpu::Buffer,
    best_s: wgpu::Buffer,
    best_b: wgpu::Buffer,
    /// The index lists `[H, N, n]`.
    pub lists: wgpu::Buffer,
    /// The gated mix `[H, N, D]`.
    pub o: wgpu::Buffer,
    /// The decoding stages' partial softmaxes and block scores (a word each where the call
    /// has no decoding stages).
    part: wgpu::Buffer,
    scores: wgpu::Buffer,
    cmp_s: wgpu::Buffer,
}

/// NSA's result: the mix, each branch's output and LSE, the choice and the selected branch's
/// path.
#[derive(Clone, Debug)]
pub struct NsaOutput {
    /// `o = g₀·o_cmp + g₁·o_slc + g₂·o_win`, `[B, H, N, D]`.
    pub o: Vec<f32>,
    /// The compressed, selected and window branches (O and LSE each).
    pub branches: [AttnOutput; 3],
    /// The choice, `[B, H, N, n]` index lists.
    pub lists: Vec<u32>,
    /// How the selected branch ran.
    pub path: MobaPath,
}

impl NsaAttention {
    /// Prepares NSA `nsa` for `spec` (checked and folded: [`Nsa::fold`]).
    pub fn new(gpu: &Gpu, spec: &AttnSpec, nsa: &Nsa) -> Result<Self> {
        let folded = nsa.fold(spec)?;
        let encoded = EncodedInputs::new(gpu, &folded, folded.shape.head_dim, true)?;
        // every kernel runs the call without its encoding, on encoded Q and K
        let spec = folded.positions(None);
        let s = spec.shape;
        crate::kernels::check_call_head_dim(NAME, s.head_dim)?;
        if s.m > i32::MAX as usize / 2 || s.n > i32::MAX as usize / 2 {
            return Err(Error::Invalid(format!("NSA over {} × {} positions: past i32 positions", s.n, s.m)));
        }
        let group = s.group();
        if lanes(s.head_dim) as usize * group.next_power_of_two() > MAX_QG {
            return Err(Error::Invalid(format!(
                "NSA's selection keeps a group's query rows in registers: {group} query heads per kv head at head dim {} is past its {MAX_QG} vec4s",
                s.head_dim
            )));
        }
        let cmp = match nsa.compressed(s.m) {
            0 => None,
            _ => Some(Attention::new(gpu, Kernel::Flash, &compressed_call(&spec, nsa)?)?),
        };
        let slc = match SparseAttention::unsupported(gpu, &spec, nsa.block) {
            None => Some(SparseAttention::new(gpu, &spec, nsa.block, nsa.topk)?),
            Some(_) => None,
        };
        let win = Attention::new(gpu, Kernel::Flash, &nsa.window_spec(&spec))?;
        // the passes of `score` need at least one block each
        blocks_per_pass(gpu, &spec, nsa)?;
        Ok(Self {
            decode: DecodeStages::new(gpu, &spec, nsa)?,
            encoded,
            compress: gpu.compile(&variant("compress", s.head_dim, 1, 0))?,
            score: gpu.compile(&variant("score", s.head_dim, group, score_subgroup(gpu, s.head_dim)))?,
            combine: gpu.compile(&variant("combine", 4, 1, 0))?,
            spec,
            nsa: *nsa,
            cmp,
            slc,
            win,
        })
    }

    /// Dispatches of the choice (`score`): its blocks in passes below the adapter's loop cap.
    pub fn score_passes(&self, gpu: &Gpu) -> Result<usize> {
        let blocks = self.nsa.blocks(self.spec.shape.m).max(1);
        Ok(blocks.div_ceil(blocks_per_pass(gpu, &self.spec, &self.nsa)?))
    }

    /// The folded call (without its positional encoding: Q and K are encoded on upload).
    pub fn spec(&self) -> &AttnSpec {
        &self.spec
    }

    /// Uploads Q, K, V (`[B, H, N, D]`, `[B, Hkv, M, D]`), the gates (`[B, H, N, 3]`) and φ
    /// (`[Hkv, l]`, or the mean) and allocates the rest; outputs poisoned with NaN.
    pub fn upload(
        &self,
        gpu: &Gpu,
        original: &AttnSpec,
        (q, k, v): (&[f32], &[f32], &[f32]),
        gates: &[f32],
        phi: Option<&[f32]>,
    ) -> Result<NsaTensors> {
        let (_, phi) = self.nsa.prepare(original, (q, k, v), Some(gates), phi)?;
        let s = self.spec.shape;
        let (mc, d) = (self.nsa.compressed(s.m) as u64, s.head_dim as u64);
        let io = DeviceTensors::upload(gpu, &self.spec, q, k, v)?;
        io.poison(gpu);
        if let Some(e) = &self.encoded {
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            e.encode(gpu, &mut enc, &io.q, &io.k)?;
            gpu.queue.submit([enc.finish()]);
        }
        let rows = s.heads as u64 * s.n as u64;
        let nan = |what: &str, len: u64| gpu.poisoned(what, len as usize);
        let choice = s.kv_heads as u64 * s.n as u64 * self.nsa.topk as u64;
        let (part_words, score_words, cmp_words) = match &self.decode {
            Some(dec) => (
                rows * dec.splits.max(dec.win_splits) as u64 * (lanes(s.head_dim) * 4 + 2),
                s.kv_heads as u64 * s.n as u64 * self.nsa.blocks(s.m) as u64,
                rows * mc,
            ),
            None => (0, 0, 0),
        };
        Ok(NsaTensors {
            phi: gpu.upload("NSA φ", &phi)?,
            gates: gpu.upload("NSA gates", gates)?,
            kc: gpu.storage("NSA compressed K", (s.kv_heads as u64 * mc * d).max(1) * 4)?,
            vc: gpu.storage("NSA compressed V", (s.kv_heads as u64 * mc * d).max(1) * 4)?,
            kc4: gpu.storage(
                "NSA compressed K (vec4 lanes)",
                (s.kv_heads as u64 * mc * lanes(s.head_dim)).max(1) * 16,
            )?,
            o_cmp: nan("NSA o_cmp", rows * d)?,
            lse_cmp: nan("NSA LSE_cmp", rows)?,
            o_win: nan("NSA o_win", rows * d)?,
            lse_win: nan("NSA LSE_win", rows)?,
            best_s: gpu.storage("NSA running scores", choice.max(1) * 4)?,
            best_b: gpu.storage("NSA running blocks", choice.max(1) * 4)?,
            lists: gpu.storage("NSA index lists", (rows * self.nsa.topk as u64).max(1) * 4)?,
            o: nan("NSA O", rows * d)?,
            part: gpu.storage("NSA decoding partials", part_words.max(1) * 4)?,
            scores: gpu.storage("NSA decoding block scores", score_words.max(1) * 4)?,
            cmp_s: gpu.storage("NSA decoding compressed scores", cmp_words.max(1) * 4)?,
            io,
        })
    }

    /// Records copies of Q, K, V (`[B, H, N, D]`, `[B, Hkv, M, D]`, as [`NsaAttention::upload`]
    /// takes them) from device buffers into `t`, and their encoding in place: a model's layer
    /// feeding tensors it computed (the gates go straight into `t.gates`).
    pub(crate) fn load(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        t: &NsaTensors,
        qkv: (&wgpu::Buffer, &wgpu::Buffer, &wgpu::Buffer),
    ) -> Result<()> {
        t.io.copy_inputs(enc, qkv);
        if let Some(e) = &self.encoded {
            e.encode(gpu, enc, &t.io.q, &t.io.k)?;
        }
        Ok(())
    }

    /// Stage 1: the compressed keys and values (submitted).
    pub fn compress(&self, gpu: &Gpu, t: &NsaTensors) -> Result<()> {
        let s = self.spec.shape;
        let mc = self.nsa.compressed(s.m) as u64;
        if mc == 0 {
            return Ok(());
        }
        let invocations = s.kv_heads as u64 * mc * lanes(s.head_dim);
        self.dispatch(gpu, &self.compress, t, invocations.div_ceil(WORKGROUP), (0, 0, false))
    }

    /// Stage 2: the compressed branch (submitted); rows that see no compressed key get O = 0
    /// and LSE = −inf.
    pub fn compressed_branch(&self, gpu: &Gpu, t: &NsaTensors) -> Result<()> {
        let Some(cmp) = &self.cmp else {
            let rows = self.spec.shape.heads * self.spec.shape.n;
            gpu.queue.write_buffer(
                &t.o_cmp,
                0,
                bytemuck::cast_slice(&vec![0f32; rows * self.spec.shape.head_dim]),
            );
            gpu.queue.write_buffer(&t.lse_cmp, 0, bytemuck::cast_slice(&vec![f32::NEG_INFINITY; rows]));
            return Ok(());
        };
        let bufs = AttnBuffers { q: &t.io.q, k: &t.kc, v: &t.vc, o: &t.o_cmp, lse: &t.lse_cmp };
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        cmp.encode(gpu, &mut enc, &bufs)?;
        gpu.queue.submit([enc.finish()]);
        Ok(())
    }

    /// Stage 3: the choice from the compressed branch's LSE, in passes over the blocks; the
    /// lists read back (`[H, N, n]`).
    pub fn select(&self, gpu: &Gpu, t: &NsaTensors) -> Result<Vec<u32>> {
        self.choose(gpu, t)?;
        let s = self.spec.shape;
        gpu.read(&t.lists, s.heads * s.n * self.nsa.topk)
    }

    /// The choice's passes, submitted; the lists stay in `t.lists`.
    pub fn choose(&self, gpu: &Gpu, t: &NsaTensors) -> Result<()> {
        let s = self.spec.shape;
        let per_pass = blocks_per_pass(gpu, &self.spec, &self.nsa)?;
        let blocks = self.nsa.blocks(s.m);
        let groups = s.kv_heads as u64 * (s.n as u64).div_ceil(WORKGROUP);
        let mut b0 = 0;
        loop {
            let b1 = (b0 + per_pass).min(blocks);
            let last = b1 >= blocks;
            self.dispatch(gpu, &self.score, t, groups, (b0 as u32, b1 as u32, last))?;
            if last {
                return Ok(());
            }
            b0 = b1;
        }
    }

    /// Stage 4: the selected branch over `lists` (submitted); its O and LSE are `t.io`'s.
    pub fn selected_branch(&self, gpu: &Gpu, t: &NsaTensors, lists: &[u32]) -> Result<MobaPath> {
        match &self.slc {
            Some(kernel) => {
                kernel.run(gpu, &t.io.buffers(), lists, &t.lists)?;
                Ok(MobaPath::Lists)
            }
            None => {
                let chosen = self.nsa.selected_spec(&self.spec, lists)?;
                let flash = Attention::new(gpu, Kernel::Flash, &chosen)?;
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                flash.encode(gpu, &mut enc, &t.io.buffers())?;
                gpu.queue.submit([enc.finish()]);
                Ok(MobaPath::Grid)
            }
        }
    }

    /// Stage 5: the window branch (submitted).
    pub fn window_branch(&self, gpu: &Gpu, t: &NsaTensors) -> Result<()> {
        let bufs = AttnBuffers { q: &t.io.q, k: &t.io.k, v: &t.io.v, o: &t.o_win, lse: &t.lse_win };
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.win.encode(gpu, &mut enc, &bufs)?;
        gpu.queue.submit([enc.finish()]);
        Ok(())
    }

    /// Stage 6: the gated mix (submitted).
    pub fn combine(&self, gpu: &Gpu, t: &NsaTensors) -> Result<()> {
        let s = self.spec.shape;
        let elements = s.heads as u64 * s.n as u64 * s.head_dim as u64;
        self.dispatch(gpu, &self.combine, t, elements.div_ceil(WORKGROUP), (0, 0, false))
    }

    /// Every stage in order; returns the lists and the selected branch's path.
    pub fn run(&self, gpu: &Gpu, t: &NsaTensors) -> Result<(Vec<u32>, MobaPath)> {
        self.compress(gpu, t)?;
        self.compressed_branch(gpu, t)?;
        let lists = self.select(gpu, t)?;
        let path = self.selected_branch(gpu, t, &lists)?;
        self.window_branch(gpu, t)?;
        self.combine(gpu, t)?;
        Ok((lists, path))
    }

    /// A decoding step's stages, for calls of a few rows (at most [`DECODE_ROWS`]; more run
    /// the prefill's stages) over a cache whose compressed keys and values are already in `t`
    /// (a cache computes each when its window of l keys fills: [`NsaAttention::compress`]
    /// once): the compressed branch and the choice spread over the compressed keys and blocks
    /// (`nsa_decode.wgsl`), the selected branch reading the lists where the choice left them
    /// (one workgroup per list slot: no read-back, no grouping on the host), the window over
    /// splits of its keys, the mix; all submitted. Where the block-list kernel does not run
    /// (head dims not a multiple of 4) the lists are read back for flash's block grid; the
    /// selected branch's path is returned.
    pub fn decode_step(&self, gpu: &Gpu, t: &NsaTensors) -> Result<MobaPath> {
        self.decode_compressed(gpu, t)?;
        self.decode_choose(gpu, t)?;
        let path = self.selected_on_device(gpu, t)?;
        self.decode_window(gpu, t)?;
        self.combine(gpu, t)?;
        Ok(path)
    }

    /// The window branch for a decoding-sized call (submitted): each row's window of raw keys
    /// in splits, then merged; flash where the call has more than [`DECODE_ROWS`] rows.
    pub fn decode_window(&self, gpu: &Gpu, t: &NsaTensors) -> Result<()> {
        let Some(dec) = &self.decode else { return self.window_branch(gpu, t) };
        let rows = (self.spec.shape.heads * self.spec.shape.n) as u64;
        let args = (dec.win_chunk as u32, dec.win_splits as u32, self.nsa.window as u32);
        let out = (&t.o_win, &t.lse_win);
        self.decode_dispatch(gpu, &dec.partial, t, out, rows * dec.win_splits as u64, args)?;
        self.decode_dispatch(gpu, &dec.merge, t, out, rows * self.spec.shape.head_dim as u64, args)
    }

    /// The compressed branch for a decoding-sized call (submitted): each row's visible
    /// compressed keys in splits, then merged (`nsa_decode.wgsl`); flash where the call has
    /// more than [`DECODE_ROWS`] rows.
    pub fn decode_compressed(&self, gpu: &Gpu, t: &NsaTensors) -> Result<()> {
        let (Some(dec), Some(_)) = (&self.decode, &self.cmp) else {
            return self.compressed_branch(gpu, t);
        };
        let rows = (self.spec.shape.heads * self.spec.shape.n) as u64;
        let args = (dec.chunk as u32, dec.splits as u32, 0);
        let out = (&t.o_cmp, &t.lse_cmp);
        self.decode_dispatch(gpu, &dec.partial, t, out, rows * dec.splits as u64, args)?;
        self.decode_dispatch(gpu, &dec.merge, t, out, rows * self.spec.shape.head_dim as u64, args)
    }

    /// The choice for a decoding-sized call (submitted; the lists stay in `t.lists`): every
    /// (kv head, row, block)'s score, then each (kv head, row)'s top blocks; [`Self::choose`]
    /// where the call has more than [`DECODE_ROWS`] rows.
    pub fn decode_choose(&self, gpu: &Gpu, t: &NsaTensors) -> Result<()> {
        let Some(dec) = &self.decode else { return self.choose(gpu, t) };
        let s = self.spec.shape;
        let (rows, blocks) = ((s.kv_heads * s.n) as u64, self.nsa.blocks(s.m));
        let args = (0, blocks as u32, 0);
        let cmp = (&t.o_cmp, &t.lse_cmp);
        self.decode_dispatch(gpu, &dec.scores, t, cmp, rows * blocks as u64, args)?;
        self.decode_dispatch(gpu, &dec.pick, t, cmp, rows, args)
    }

    /// A decoding stage over `invocations` with the branch output `(o, lse)` bound,
    /// submitted.
    fn decode_dispatch(
        &self,
        gpu: &Gpu,
        kernel: &Compiled,
        t: &NsaTensors,
        (o, lse): (&wgpu::Buffer, &wgpu::Buffer),
        invocations: u64,
        args: (u32, u32, u32),
    ) -> Result<()> {
        let grid = gpu.grid(NAME, invocations.div_ceil(WORKGROUP).max(1))?;
        let uniform = gpu.uniform("NSA decoding params", &self.params(grid[0], args));
        let binds = NsaDecodeBinds {
            params: (&uniform).into(),
            q: (&t.io.q).into(),
            kc4: (&t.kc4).into(),
            vc: (&t.vc).into(),
            part: (&t.part).into(),
            lse_out: lse.into(),
            o_out: o.into(),
            scores: (&t.scores).into(),
            lists: (&t.lists).into(),
            k: (&t.io.k).into(),
            v: (&t.io.v).into(),
            cmp_s: (&t.cmp_s).into(),
        };
        submit(gpu, kernel, &binds, grid);
        Ok(())
    }

    /// The selected branch over the lists the choice left in `t.lists` (submitted): one
    /// workgroup per list slot, or, where the block-list kernel does not run, flash on the
    /// block grid of the lists read back.
    pub fn selected_on_device(&self, gpu: &Gpu, t: &NsaTensors) -> Result<MobaPath> {
        match &self.slc {
            Some(kernel) => {
                kernel.run_on_device(gpu, &t.io.buffers(), &t.lists)?;
                Ok(MobaPath::Lists)
            }
            None => {
                let s = self.spec.shape;
                let lists = gpu.read(&t.lists, s.heads * s.n * self.nsa.topk)?;
                self.selected_branch(gpu, t, &lists)
            }
        }
    }

    /// The mix and each branch read back (blocks until the queue is idle).
    pub fn read(&self, gpu: &Gpu, t: &NsaTensors, lists: Vec<u32>, path: MobaPath) -> Result<NsaOutput> {
        let s = self.spec.shape;
        let (rows, d) = (s.heads * s.n, s.head_dim);
        let out = |o: &wgpu::Buffer, lse: &wgpu::Buffer| -> Result<AttnOutput> {
            Ok(AttnOutput { o: gpu.read(o, rows * d)?, lse: gpu.read(lse, rows)? })
        };
        let branches = [out(&t.o_cmp, &t.lse_cmp)?, t.io.read(gpu)?, out(&t.o_win, &t.lse_win)?];
        let o: Vec<f32> = gpu.read(&t.o, rows * d)?;
        if o.iter().any(|x| !x.is_finite()) {
            return Err(Error::Invalid("NSA's output holds a value that is not finite".into()));
        }
        Ok(NsaOutput { o, branches, lists, path })
    }

    /// One of NSA's own stages on `groups` workgroups (`score`: its pass `(arg0, arg1, last)`),
    /// submitted.
    fn dispatch(
        &self,
        gpu: &Gpu,
        kernel: &Compiled,
        t: &NsaTensors,
        groups: u64,
        (b0, b1, last): (u32, u32, bool),
    ) -> Result<()> {
        let grid = gpu.grid(NAME, groups)?;
        let params = self.params(grid[0], (b0, b1, last as u32));
        let uniform = gpu.uniform("NSA params", &params);
        let binds = NsaBinds {
            params: (&uniform).into(),
            q: (&t.io.q).into(),
            k: (&t.io.k).into(),
            v: (&t.io.v).into(),
            phi: (&t.phi).into(),
            kc: (&t.kc).into(),
            vc: (&t.vc).into(),
            kc4: (&t.kc4).into(),
            lse: (&t.lse_cmp).into(),
            best_s: (&t.best_s).into(),
            best_b: (&t.best_b).into(),
            lists: (&t.lists).into(),
            gates: (&t.gates).into(),
            o_cmp: (&t.o_cmp).into(),
            o_slc: (&t.io.o).into(),
            o_win: (&t.o_win).into(),
            o: (&t.o).into(),
        };
        submit(gpu, kernel, &binds, grid);
        Ok(())
    }

    /// The stages' uniform: the call's sizes, NSA's parameters, the grid's width and a
    /// stage's own three words (`score`: its pass; `phi_grads`: its chunks).
    fn params(&self, groups_x: u32, (arg0, arg1, last): (u32, u32, u32)) -> Params {
        let s = self.spec.shape;
        let n = &self.nsa;
        Params {
            heads: s.heads as u32,
            kv_heads: s.kv_heads as u32,
            n: s.n as u32,
            m: s.m as u32,
            d: s.head_dim as u32,
            mc: n.compressed(s.m) as u32,
            cmp_len: n.cmp_len as u32,
            cmp_stride: n.cmp_stride as u32,
            block: n.block as u32,
            topk: n.topk as u32,
            q_offset: self.spec.q_offset() as i32,
            groups_x,
            arg0,
            arg1,
            last,
            scale: self.spec.scale_value(),
            neg_inf: f32::NEG_INFINITY,
            _pad: [0; 3],
        }
    }
}

/// One dispatch of `kernel` bound to `binds` on `grid`, submitted.
fn submit<F: BindGroupFields>(gpu: &Gpu, kernel: &Compiled, binds: &F, grid: [u32; 3]) {
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        kernel.dispatch(&mut pass, &kernel.bind(gpu, binds), grid);
    }
    gpu.queue.submit([enc.finish()]);
}

/// The backward's tensors on the device: dO and its three gated shares, each branch's dQ
/// and their sum, the compressed keys' and values' gradients, dK and dV (the selected
/// branch's, then the total), the window branch's, the gates' gradient and φ's partial sums.
pub struct NsaGradTensors {
    pub(crate) d_o: wgpu::Buffer,
    d_cmp: wgpu::Buffer,
    d_slc: wgpu::Buffer,
    d_win: wgpu::Buffer,
    dq_cmp: wgpu::Buffer,
    dq_slc: wgpu::Buffer,
    dq_win: wgpu::Buffer,
    pub(crate) dq: wgpu::Buffer,
    dkc: wgpu::Buffer,
    dvc: wgpu::Buffer,
    pub(crate) dk: wgpu::Buffer,
    pub(crate) dv: wgpu::Buffer,
    dk_win: wgpu::Buffer,
    dv_win: wgpu::Buffer,
    pub(crate) d_gates: wgpu::Buffer,
    d_phi: wgpu::Buffer,
}

/// NSA's backward prepared for one call: the forward, each branch's backward and NSA's own
/// backward stages (no gradient through the choice).
pub struct NsaBackward {
    forward: NsaAttention,
    cmp: Option<Backward>,
    slc: Option<SparseBackward>,
    win: Backward,
    split: Compiled,
    gates: Compiled,
    add3: Compiled,
    compress_back: Compiled,
    phi: Compiled,
}

impl NsaBackward {
    /// Prepares NSA's forward and backward for `spec`.
    pub fn new(gpu: &Gpu, spec: &AttnSpec, nsa: &Nsa) -> Result<Self> {
        let forward = NsaAttention::new(gpu, spec, nsa)?;
        let folded = forward.spec.clone();
        let cmp = match nsa.compressed(folded.shape.m) {
            0 => None,
            _ => Some(Backward::new(gpu, &compressed_call(&folded, nsa)?)?),
        };
        let slc = match SparseBackward::unsupported(gpu, &folded, nsa.block) {
            None => Some(SparseBackward::new(gpu, &folded, nsa.block, nsa.topk)?),
            Some(_) => None,
        };
        let compile = |entry| gpu.compile(&BACKWARD.variant(entry, &[PARAMS], vec![]));
        Ok(Self {
            cmp,
            slc,
            win: Backward::new(gpu, &nsa.window_spec(&folded))?,
            split: compile("split_grad")?,
            gates: compile("gate_grads")?,
            add3: compile("add3")?,
            compress_back: compile("compress_back")?,
            phi: compile("phi_grads")?,
            forward,
        })
    }

    /// The forward this backward follows.
    pub fn forward(&self) -> &NsaAttention {
        &self.forward
    }

    /// Uploads dO (`[B, H, N, D]`) and allocates the gradients (poisoned with NaN).
    pub fn upload(&self, gpu: &Gpu, original: &AttnSpec, d_o: &[f32]) -> Result<NsaGradTensors> {
        original.check_grad(d_o)?;
        let s = self.forward.spec.shape;
        let nsa = &self.forward.nsa;
        let (rows, d) = (s.heads as u64 * s.n as u64, s.head_dim as u64);
        let kv = s.kv_heads as u64 * s.m as u64 * d;
        let kvc = (s.kv_heads as u64 * nsa.compressed(s.m) as u64 * d).max(1);
        let nan = |what: &str, len: u64| gpu.poisoned(what, len as usize);
        let (chunks, _) = self.phi_chunks(gpu);
        Ok(NsaGradTensors {
            d_o: gpu.upload("NSA dO", d_o)?,
            d_cmp: gpu.storage("NSA dO (compressed share)", rows * d * 4)?,
            d_slc: gpu.storage("NSA dO (selected share)", rows * d * 4)?,
            d_win: gpu.storage("NSA dO (window share)", rows * d * 4)?,
            dq_cmp: nan("NSA dQ (compressed)", rows * d)?,
            dq_slc: nan("NSA dQ (selected)", rows * d)?,
            dq_win: nan("NSA dQ (window)", rows * d)?,
            dq: nan("NSA dQ", rows * d)?,
            dkc: nan("NSA dK̃", kvc)?,
            dvc: nan("NSA dṼ", kvc)?,
            dk: nan("NSA dK", kv)?,
            dv: nan("NSA dV", kv)?,
            dk_win: nan("NSA dK (window)", kv)?,
            dv_win: nan("NSA dV (window)", kv)?,
            d_gates: nan("NSA dgates", rows * 3)?,
            d_phi: nan("NSA dφ partials", s.kv_heads as u64 * nsa.cmp_len as u64 * chunks as u64)?,
        })
    }

    /// φ's gradient in chunks of compressed keys: (chunks, keys per chunk), each chunk's loop
    /// below an adapter's cap (D + 1 iterations per key).
    fn phi_chunks(&self, gpu: &Gpu) -> (usize, usize) {
        let s = self.forward.spec.shape;
        let mc = self.forward.nsa.compressed(s.m).max(1);
        let mut per = mc.div_ceil(64);
        if let Some(limit) = gpu.loop_iteration_limit() {
            per = per.min((limit as usize / (s.head_dim + 1)).max(1));
        }
        (mc.div_ceil(per), per)
    }

    /// The backward on the forward's tensors `t` (run, its choice `lists`) for `gr`'s dO.
    pub fn run(&self, gpu: &Gpu, t: &NsaTensors, gr: &NsaGradTensors, lists: &[u32]) -> Result<()> {
        let f = &self.forward;
        let s = f.spec.shape;
        let (rows, d) = (s.heads as u64 * s.n as u64, s.head_dim as u64);
        let stage = |kernel: &Compiled, invocations: u64, words: (u32, u32)| -> Result<()> {
            self.dispatch(gpu, kernel, t, gr, invocations, words)
        };
        stage(&self.split, rows * d, (0, 0))?;
        stage(&self.gates, rows * 3, (0, 0))?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        match &self.cmp {
            Some(bwd) => {
                let forward = AttnBuffers { q: &t.io.q, k: &t.kc, v: &t.vc, o: &t.o_cmp, lse: &t.lse_cmp };
                let b = BackwardBuffers { forward, d_o: &gr.d_cmp, dq: &gr.dq_cmp, dk: &gr.dkc, dv: &gr.dvc };
                bwd.encode(gpu, &mut enc, &b)?;
            }
            None => enc.clear_buffer(&gr.dq_cmp, 0, None),
        }
        let forward = AttnBuffers { q: &t.io.q, k: &t.io.k, v: &t.io.v, o: &t.o_win, lse: &t.lse_win };
        let b = BackwardBuffers { forward, d_o: &gr.d_win, dq: &gr.dq_win, dk: &gr.dk_win, dv: &gr.dv_win };
        self.win.encode(gpu, &mut enc, &b)?;
        gpu.queue.submit([enc.finish()]);
        let b = BackwardBuffers {
            forward: t.io.buffers(),
            d_o: &gr.d_slc,
            dq: &gr.dq_slc,
            dk: &gr.dk,
            dv: &gr.dv,
        };
        match &self.slc {
            Some(kernel) => kernel.run(gpu, &b, lists, &t.lists)?,
            None => {
                let chosen = f.nsa.selected_spec(&f.spec, lists)?;
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                Backward::new(gpu, &chosen)?.encode(gpu, &mut enc, &b)?;
                gpu.queue.submit([enc.finish()]);
            }
        }
        stage(&self.add3, rows * d, (0, 0))?;
        stage(&self.compress_back, s.kv_heads as u64 * s.m as u64 * d, (0, 0))?;
        let (chunks, per) = self.phi_chunks(gpu);
        let partials = s.kv_heads as u64 * f.nsa.cmp_len as u64 * chunks as u64;
        stage(&self.phi, partials, (per as u32, chunks as u32))?;
        // dQ and dK are the encoded Q's and K's: back through the encoding
        if let Some(e) = &f.encoded {
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            e.grads(gpu, &mut enc, &gr.dq, &gr.dk)?;
            gpu.queue.submit([enc.finish()]);
        }
        Ok(())
    }

    /// One backward stage on `invocations` invocations (`phi_grads`: its chunking in
    /// `words`), submitted.
    fn dispatch(
        &self,
        gpu: &Gpu,
        kernel: &Compiled,
        t: &NsaTensors,
        gr: &NsaGradTensors,
        invocations: u64,
        (per_chunk, chunks): (u32, u32),
    ) -> Result<()> {
        let grid = gpu.grid("nsa_backward", invocations.div_ceil(WORKGROUP))?;
        let uniform =
            gpu.uniform("NSA backward params", &self.forward.params(grid[0], (per_chunk, chunks, 0)));
        let binds = NsaBackBinds {
            params: (&uniform).into(),
            k: (&t.io.k).into(),
            v: (&t.io.v).into(),
            phi: (&t.phi).into(),
            gates: (&t.gates).into(),
            o_cmp: (&t.o_cmp).into(),
            o_slc: (&t.io.o).into(),
            o_win: (&t.o_win).into(),
            d_o: (&gr.d_o).into(),
            d_cmp: (&gr.d_cmp).into(),
            d_slc: (&gr.d_slc).into(),
            d_win: (&gr.d_win).into(),
            d_gates: (&gr.d_gates).into(),
            dq_cmp: (&gr.dq_cmp).into(),
            dq_slc: (&gr.dq_slc).into(),
            dq_win: (&gr.dq_win).into(),
            dq: (&gr.dq).into(),
            dkc: (&gr.dkc).into(),
            dvc: (&gr.dvc).into(),
            dk: (&gr.dk).into(),
            dv: (&gr.dv).into(),
            dk_win: (&gr.dk_win).into(),
            dv_win: (&gr.dv_win).into(),
            d_phi: (&gr.d_phi).into(),
        };
        submit(gpu, kernel, &binds, grid);
        Ok(())
    }

    /// The gradients read back: dQ, dK, dV, the gates', and φ's (its chunks and a batch's
    /// sequences added in f64); a value that is not finite is an error.
    pub fn read(&self, gpu: &Gpu, original: &AttnSpec, gr: &NsaGradTensors) -> Result<NsaGrads<f32>> {
        let s = self.forward.spec.shape;
        let (rows, d, l) = (s.heads * s.n, s.head_dim, self.forward.nsa.cmp_len);
        let (chunks, _) = self.phi_chunks(gpu);
        let partials: Vec<f32> = gpu.read(&gr.d_phi, s.kv_heads * l * chunks)?;
        let per_seq = original.shape.kv_heads * l;
        let mut dphi = vec![0f64; per_seq];
        for (x, part) in partials.chunks_exact(chunks).enumerate() {
            dphi[x % per_seq] += part.iter().map(|&p| p as f64).sum::<f64>();
        }
        let out = NsaGrads {
            dq: gpu.read(&gr.dq, rows * d)?,
            dk: gpu.read(&gr.dk, s.kv_heads * s.m * d)?,
            dv: gpu.read(&gr.dv, s.kv_heads * s.m * d)?,
            dgates: gpu.read(&gr.d_gates, rows * 3)?,
            dphi: dphi.into_iter().map(|x| x as f32).collect(),
        };
        for (name, x) in
            [("dQ", &out.dq), ("dK", &out.dk), ("dV", &out.dv), ("dgates", &out.dgates), ("dφ", &out.dphi)]
        {
            if let Some(i) = x.iter().position(|v| !v.is_finite()) {
                return Err(Error::Invalid(format!("NSA's {name} is not finite at flat index {i}")));
            }
        }
        Ok(out)
    }
}

/// NSA's forward and backward on host tensors for the incoming gradient `d_o` (no gradient
/// through the choice): the output, its branches and choice, and the gradients.
#[allow(clippy::too_many_arguments)]
pub fn nsa_backward(
    gpu: &Gpu,
    spec: &AttnSpec,
    nsa: &Nsa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    gates: &[f32],
    phi: Option<&[f32]>,
    d_o: &[f32],
) -> Result<(NsaOutput, NsaGrads<f32>)> {
    let call = NsaBackward::new(gpu, spec, nsa)?;
    let t = call.forward.upload(gpu, spec, (q, k, v), gates, phi)?;
    let gr = call.upload(gpu, spec, d_o)?;
    let (lists, path) = call.forward.run(gpu, &t)?;
    call.run(gpu, &t, &gr, &lists)?;
    let grads = call.read(gpu, spec, &gr)?;
    Ok((call.forward.read(gpu, &t, lists, path)?, grads))
}

/// The subgroup width `score` shuffles across: flash's for the device and head dim (its
/// profile, tuned winners and shuffle checks; 0 where it has none).
fn score_subgroup(gpu: &Gpu, d: usize) -> u32 {
    FlashConfig::choose(gpu.profile().0, gpu.tuned(), gpu, d).sg
}

/// The compressed branch's call: Q against the compressed keys, their visibility
/// (`c·d + l − 1 ≤ p`) as a `mask_mod` with its Rust rule.
fn compressed_call(folded: &AttnSpec, nsa: &Nsa) -> Result<AttnSpec> {
    let (stride, last, offset) = (nsa.cmp_stride as i64, nsa.cmp_len as i64 - 1, folded.q_offset());
    let source = format!(
        "fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {{\n    return i32(kv_idx) * {stride} + {last} <= i32(q_idx) + ({offset});\n}}\n"
    );
    let rule = RuleFns {
        score: None,
        mask: Some(Box::new(move |at| at.kv as i64 * stride + last <= at.q as i64 + offset)),
    };
    let mods =
        Mods::wgsl(&format!("NSA compressed keys ({})", nsa.describe()), &source)?.with_rule(Arc::new(rule));
    Ok(nsa.compressed_spec(folded).mods(Some(mods)))
}

/// Blocks one `score` pass may walk below the adapter's loop cap (all of them where there is
/// none): per block, the compressed keys overlapping it (each: the group's dot products of
/// QCAP4 vec4s and an exp) and an insertion; per invocation, the query rows' load and the
/// state's load and store.
fn blocks_per_pass(gpu: &Gpu, spec: &AttnSpec, nsa: &Nsa) -> Result<usize> {
    let s = spec.shape;
    let blocks = nsa.blocks(s.m).max(1);
    let Some(limit) = gpu.loop_iteration_limit() else { return Ok(blocks) };
    let group = s.group() as u64;
    let keys = ((nsa.block + nsa.cmp_len) / nsa.cmp_stride + 1) as u64;
    let gcap = group.next_power_of_two();
    let per_block = keys * gcap * (lanes(s.head_dim) + 1) + nsa.topk as u64 + 1;
    let fixed = group * s.head_dim as u64 + (group + 3) * nsa.topk as u64;
    let per_pass = limit.saturating_sub(fixed) / per_block;
    if per_pass == 0 {
        return Err(Error::LoopLimit {
            kernel: NAME,
            needed: fixed + per_block,
            limit,
            hint: "use a longer compression stride or shorter selection blocks",
        });
    }
    Ok((per_pass as usize).min(blocks))
}

/// NSA on host tensors: prepare, upload, run every stage, read back (a batch folds into
/// heads; `gates` `[B, H, N, 3]`, `phi` `[Hkv, l]` or the mean).
#[allow(clippy::too_many_arguments)]
pub fn nsa_attention(
    gpu: &Gpu,
    spec: &AttnSpec,
    nsa: &Nsa,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    gates: &[f32],
    phi: Option<&[f32]>,
) -> Result<NsaOutput> {
    let call = NsaAttention::new(gpu, spec, nsa)?;
    let t = call.upload(gpu, spec, (q, k, v), gates, phi)?;
    let (lists, path) = call.run(gpu, &t)?;
    call.read(gpu, &t, lists, path)
}
