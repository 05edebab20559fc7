//! `longctx selftest`: every kernel and feature against the f64 oracle on the present adapter,
//! at small odd sizes (N, M not multiples of any tile, N ≠ M), outputs poisoned before each
//! run — what a user runs on a new GPU or driver. Each check is one line; the command fails
//! when any check does.

use std::time::Instant;

use crate::contract::dsa::{Dsa, Indexer, compare_dsa_selection, dsa_select_f64};
use crate::contract::inputs::{seeded, seeded_qkv};
use crate::contract::mask::{BigBird, Mask};
use crate::contract::mods::{Mods, Named};
use crate::contract::nsa::{Nsa, compare_nsa_selection, nsa_backward_f64, nsa_forward_f64, nsa_select_f64};
use crate::contract::paged::{KvFormat, SeqStep, Tree, step_f64};
use crate::contract::positions::Positions;
use crate::contract::reference::{attention_backward_f64, attention_f64, rel_error};
use crate::contract::selection::{Moba, compare_selection, moba_select_f64};
use crate::contract::spec::{Alibi, AttnSpec};
use crate::contract::{AttnShape, Window};
use crate::error::{Error, Result};
use crate::kernels::attention::backward::Backward;
use crate::kernels::attention::decode::{DecodeKernel, Decoder, DecoderConfig};
use crate::kernels::attention::paged::{PagedConfig, PagedDecoder};
use crate::kernels::dsa::{dsa_attention, dsa_backward};
use crate::kernels::matmul::{Activation, Coop, Matmul, MatmulOptions, TensorCores, matmul_f64};
use crate::kernels::nsa::{NsaAttention, nsa_backward};
use crate::kernels::selection::moba_backward;
use crate::kernels::{Attention, DeviceTensors, Inputs, Kernel};
use crate::models::gpt::{AttnKind, GptConfig, PosScheme};
use crate::models::gpt_gpu::{gradient_check, gradient_check_on};
use crate::runtime::Gpu;

/// Relative error every f32 check must stay under (‖got − oracle‖ / ‖oracle‖); the f16
/// tensor-core check has its own, 5e-3.
pub const BOUND: f64 = 1e-5;

/// The GPT's gradient check: f32 gradients against central differences (step 1e-4) of the
/// f64 loss; measured errors are about 1e-6.
pub(crate) const GPT_BOUND: f64 = 1e-4;

/// One check's outcome.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// What was checked, for people (`flash causal+alibi B=1 H=4/2 N=77 M=130 D=64`).
    pub name: String,
    /// The worst relative error against the oracle over the check's outputs (`None` when it
    /// could not run).
    pub rel_err: Option<f64>,
    /// Why it failed: an error, or an error above [`BOUND`] (`None`: passed).
    pub failure: Option<String>,
    /// Wall time of the check, oracle included, in ms.
    pub ms: f64,
}

impl Outcome {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// A check: its name, its bound on the relative error, and the run.
type Check = (String, f64, Box<dyn Fn(&Gpu) -> Result<f64>>);

/// The attention problems every kernel is checked on: each feature of the contract once.
fn problems() -> Vec<(&'static str, AttnSpec)> {
    let shape = |b, h, hkv, n, m, d| AttnShape { batch: b, heads: h, kv_heads: hkv, n, m, head_dim: d };
    let s = shape(1, 4, 2, 77, 130, 64);
    let bigbird = BigBird { global: 1, window: 1, random: 1, block: 16, seed: 3 };
    vec![
        ("dense", AttnSpec::new(shape(2, 2, 2, 45, 45, 32))),
        ("causal", AttnSpec::new(s).causal(true)),
        ("causal+alibi", AttnSpec::new(s).causal(true).alibi(Alibi::Standard)),
        ("window(16,3)", AttnSpec::new(s).window(Some(Window::new(16, 3)))),
        ("mqa causal D=128", AttnSpec::new(shape(1, 4, 1, 33, 70, 128)).causal(true)),
        (
            "gqa causal+alibi D=37 (padded)",
            AttnSpec::new(shape(1, 4, 2, 29, 51, 37)).causal(true).alibi(Alibi::Standard),
        ),
        ("masked rows (N > M causal)", AttnSpec::new(shape(1, 2, 2, 90, 40, 32)).causal(true)),
        ("global+causal", AttnSpec::new(s).causal(true).mask(Some(Mask::Global(3)))),
        ("bigbird", AttnSpec::new(s).mask(Mask::bigbird(&bigbird, s.m).ok())),
        (
            "segments+causal",
            AttnSpec::new(s)
                .causal(true)
                .mask(Some(Mask::Segments(std::sync::Arc::new((0..s.m as u32).map(|j| j / 50).collect())))),
        ),
    ]
}

/// A forward kernel against the oracle: worst of O and LSE (finite entries; a fully masked
/// row must come back as exactly 0 and −inf).
fn forward(gpu: &Gpu, kernel: Kernel, spec: &AttnSpec) -> Result<f64> {
    let (q, k, v) = seeded_qkv(spec, 7);
    let attn = Attention::new(gpu, kernel, spec)?;
    let io = DeviceTensors::upload(gpu, spec, &q, &k, &v)?;
    io.poison(gpu);
    let out = attn.run_on(gpu, &io)?;
    let (o_ref, lse_ref) = attention_f64(spec, &q, &k, &v)?;
    for (i, (&got, &want)) in out.lse.iter().zip(&lse_ref).enumerate() {
        if want == f64::NEG_INFINITY && got != f32::NEG_INFINITY {
            return Err(Error::Invalid(format!("row {i} has no visible key but LSE {got}, not -inf")));
        }
    }
    let finite: (Vec<f32>, Vec<f64>) =
        out.lse.iter().zip(&lse_ref).filter(|(_, w)| w.is_finite()).map(|(&g, &w)| (g, w)).unzip();
    Ok(rel_error(&out.o, &o_ref).max(rel_error(&finite.0, &finite.1)))
}

/// Flash on f16 cooperative matrices (f16 Q, K, V and weights) against the oracle on the f32
/// inputs.
fn forward_tensor_cores(gpu: &Gpu, spec: &AttnSpec) -> Result<f64> {
    let (q, k, v) = seeded_qkv(spec, 7);
    let attn = Attention::builder(spec).inputs(Inputs::F16TensorCores).build(gpu)?;
    let io = DeviceTensors::upload_f16(gpu, spec, &q, &k, &v)?;
    io.poison(gpu);
    let out = attn.run_on(gpu, &io)?;
    let (o_ref, _) = attention_f64(spec, &q, &k, &v)?;
    Ok(rel_error(&out.o, &o_ref))
}

/// The tiled (or materialised) backward against the oracle: worst of dQ, dK, dV.
fn backward(gpu: &Gpu, spec: &AttnSpec, naive: bool) -> Result<f64> {
    let (q, k, v) = seeded_qkv(spec, 11);
    let d_o = seeded(spec.shape.q_len(), 12);
    let bwd = if naive { Backward::naive(gpu, spec)? } else { Backward::new(gpu, spec)? };
    let (_, g) = bwd.run(gpu, &q, &k, &v, &d_o)?;
    let (dq, dk, dv) = attention_backward_f64(spec, &q, &k, &v, &d_o)?;
    Ok(rel_error(&g.dq, &dq).max(rel_error(&g.dk, &dk)).max(rel_error(&g.dv, &dv)))
}

/// MoBA: the GPU's choice against the f64 oracle's (equal up to float32 ties), then the
/// attention over it and its backward (the block-list kernels where they run the call) against
/// the oracle on the chosen spec: worst of O, LSE, dQ, dK, dV.
fn moba(gpu: &Gpu, spec: &AttnSpec, moba: &Moba) -> Result<f64> {
    let (q, k, v) = seeded_qkv(spec, 13);
    let d_o = seeded_qkv(spec, 14).0;
    let (out, grads, chosen, _) = moba_backward(gpu, spec, moba, &q, &k, &v, &d_o)?;
    let want = moba_select_f64(spec, moba, &q, &k)?;
    let (diffs, ties) = compare_selection(spec, moba, &q, &k, &want, &chosen, 1e-5);
    if !ties {
        return Err(Error::Invalid(format!(
            "the GPU chose other blocks than the oracle beyond float32 ties in {} rows",
            diffs.len()
        )));
    }
    let spec = moba.spec(spec, &chosen)?;
    let (o_ref, lse_ref) = attention_f64(&spec, &q, &k, &v)?;
    let finite: (Vec<f32>, Vec<f64>) =
        out.lse.iter().zip(&lse_ref).filter(|(_, w)| w.is_finite()).map(|(&g, &w)| (g, w)).unzip();
    let forward = rel_error(&out.o, &o_ref).max(rel_error(&finite.0, &finite.1));
    let (dq, dk, dv) = attention_backward_f64(&spec, &q, &k, &v, &d_o)?;
    let backward = rel_error(&grads.dq, &dq).max(rel_error(&grads.dk, &dk)).max(rel_error(&grads.dv, &dv));
    Ok(forward.max(backward))
}

/// NSA: the GPU's choice against the f64 oracle's (equal up to float32 ties), then the mix and
/// its backward against the oracle on the GPU's choice: worst of O, dQ, dK, dV, the gates' and
/// φ's gradients.
fn nsa(gpu: &Gpu, spec: &AttnSpec, nsa: &Nsa) -> Result<f64> {
    let (q, k, v) = seeded_qkv(spec, 15);
    let d_o = seeded_qkv(spec, 16).0;
    let s = spec.shape;
    let gates: Vec<f32> = seeded(s.batch * s.heads * s.n * 3, 17).iter().map(|x| 0.5 + 0.4 * x).collect();
    let phi: Vec<f32> =
        seeded(s.kv_heads * nsa.cmp_len, 18).iter().map(|x| (1.0 + 0.5 * x) / nsa.cmp_len as f32).collect();
    let (out, grads) = nsa_backward(gpu, spec, nsa, (&q, &k, &v), &gates, Some(&phi), &d_o)?;
    let oracle = nsa_select_f64(spec, nsa, &q, &k, &v, Some(&phi))?;
    let (diffs, ties) = compare_nsa_selection(spec, nsa, &oracle, &out.lists, 1e-5);
    if !ties {
        return Err(Error::Invalid(format!(
            "the GPU chose other blocks than the oracle beyond float32 ties in {} rows",
            diffs.len()
        )));
    }
    let want = nsa_forward_f64(spec, nsa, &q, &k, &v, &gates, &oracle, &out.lists)?;
    let g = nsa_backward_f64(spec, nsa, (&q, &k, &v), &gates, Some(&phi), &out.lists, &d_o)?;
    Ok([
        rel_error(&out.o, &want.o),
        rel_error(&grads.dq, &g.dq),
        rel_error(&grads.dk, &g.dk),
        rel_error(&grads.dv, &g.dv),
        rel_error(&grads.dgates, &g.dgates),
        rel_error(&grads.dphi, &g.dphi),
    ]
    .into_iter()
    .fold(0.0, f64::max))
}

/// NSA's decoding step ([`NsaAttention::decode_step`] after the cache's compression): the
/// choice against the oracle's (up to float32 ties), then the mix and each branch's O: worst.
fn nsa_decode(gpu: &Gpu, spec: &AttnSpec, nsa: &Nsa) -> Result<f64> {
    let (q, k, v) = seeded_qkv(spec, 24);
    let s = spec.shape;
    let gates: Vec<f32> = seeded(s.batch * s.heads * s.n * 3, 25).iter().map(|x| 0.5 + 0.4 * x).collect();
    let call = NsaAttention::new(gpu, spec, nsa)?;
    let t = call.upload(gpu, spec, (&q, &k, &v), &gates, None)?;
    call.compress(gpu, &t)?;
    let path = call.decode_step(gpu, &t)?;
    let lists = gpu.read(&t.lists, s.batch * s.heads * s.n * nsa.topk)?;
    let out = call.read(gpu, &t, lists, path)?;
    let oracle = nsa_select_f64(spec, nsa, &q, &k, &v, None)?;
    let (diffs, ties) = compare_nsa_selection(spec, nsa, &oracle, &out.lists, 1e-5);
    if !ties {
        return Err(Error::Invalid(format!(
            "the decoding step chose other blocks than the oracle beyond float32 ties in {} rows",
            diffs.len()
        )));
    }
    let want = nsa_forward_f64(spec, nsa, &q, &k, &v, &gates, &oracle, &out.lists)?;
    Ok((0..3)
        .map(|b| rel_error(&out.branches[b].o, &want.branches[b]))
        .fold(rel_error(&out.o, &want.o), f64::max))
}

/// DSA: the GPU's choice against the f64 oracle's (equal up to float32 ties), then the
/// attention over it (the token-list kernel, or flash's grid for head dims not a multiple of
/// 4) and the backward against the oracle on the chosen spec: worst of O, LSE, dQ, dK, dV.
fn dsa(gpu: &Gpu, spec: &AttnSpec, dsa: &Dsa) -> Result<f64> {
    let (q, k, v) = seeded_qkv(spec, 19);
    let d_o = seeded_qkv(spec, 20).0;
    let s = spec.shape;
    let (hi, di) = (dsa.index_heads, dsa.index_dim);
    let (qi, ki, wi) = (seeded(s.n * hi * di, 21), seeded(s.m * di, 22), seeded(s.n * hi, 23));
    let ix = Indexer { q: &qi, k: &ki, w: &wi };
    let (out, chosen, _) = dsa_attention(gpu, spec, dsa, (&q, &k, &v), &ix)?;
    let want = dsa_select_f64(spec, dsa, &ix)?;
    let (diffs, ties) = compare_dsa_selection(spec, dsa, &ix, &want, &chosen, 1e-5);
    if !ties {
        return Err(Error::Invalid(format!(
            "the GPU chose other keys than the oracle beyond float32 ties in {} rows",
            diffs.len()
        )));
    }
    let (_, grads, _) = dsa_backward(gpu, spec, dsa, (&q, &k, &v), &ix, &d_o)?;
    let spec = dsa.spec(spec, &chosen)?;
    let (o_ref, lse_ref) = attention_f64(&spec, &q, &k, &v)?;
    let forward = rel_error(&out.o, &o_ref).max(rel_error(&out.lse, &lse_ref));
    let (dq, dk, dv) = attention_backward_f64(&spec, &q, &k, &v, &d_o)?;
    let backward = rel_error(&grads.dq, &dq).max(rel_error(&grads.dk, &dk)).max(rel_error(&grads.dv, &dv));
    Ok(forward.max(backward))
}

/// Decoding: a prompt, then single-token steps; each step against one causal attention over
/// everything so far. Worst over the steps.
fn decode(
    gpu: &Gpu,
    heads: usize,
    kv_heads: usize,
    d: usize,
    window: Option<usize>,
    mods: Option<Mods>,
    positions: Option<Positions>,
) -> Result<f64> {
    let (prompt, steps) = (45, 3);
    let mut cfg = DecoderConfig::new(heads, kv_heads, d, prompt + steps);
    cfg.alibi = Alibi::Standard;
    cfg.mods = mods;
    cfg.positions = positions;
    if let Some(w) = window {
        cfg.window = Some(w);
        cfg.ring = true;
        cfg.capacity = w + 1;
    }
    let mut dec = Decoder::new(gpu, cfg)?;
    let (mut hk, mut hv) = (vec![Vec::new(); kv_heads], vec![Vec::new(); kv_heads]);
    let push = |hist: &mut Vec<Vec<f32>>, x: &[f32], t: usize| {
        for (h, row) in hist.iter_mut().enumerate() {
            row.extend_from_slice(&x[h * t * d..(h + 1) * t * d]);
        }
    };
    let (k0, v0) = (seeded(kv_heads * prompt * d, 1), seeded(kv_heads * prompt * d, 2));
    push(&mut hk, &k0, prompt);
    push(&mut hv, &v0, prompt);
    // a ring keeps the last `capacity` positions of the prompt (positions stay absolute)
    dec.prefill(gpu, 0, &k0, &v0)?;
    let mut worst: f64 = 0.0;
    for step in 0..steps {
        let salt = 10 + 3 * step as u64;
        let (q, kn, vn) =
            (seeded(heads * d, salt), seeded(kv_heads * d, salt + 1), seeded(kv_heads * d, salt + 2));
        dec.step(gpu, 0, &q, &kn, &vn)?;
        push(&mut hk, &kn, 1);
        push(&mut hv, &vn, 1);
        let out = dec.output(gpu)?;
        let (o_ref, _) = attention_f64(&dec.equivalent_spec(0), &q, &hk.concat(), &hv.concat())?;
        worst = worst.max(rel_error(&out.o, &o_ref));
    }
    Ok(worst)
}

/// The paged decoder: two sequences in one step (45 and 20 cached slots; the second adds a
/// tree of 4 drafts) in pages of 16, GQA 8/2, D = 40, ALiBi, K and V stored as `format`,
/// with `kernel`; worst O error against the oracle on the cache as stored.
fn paged(gpu: &Gpu, format: KvFormat, kernel: DecodeKernel) -> Result<f64> {
    let (h, hkv, d) = (8, 2, 40);
    let mut cfg = PagedConfig::new(h, hkv, d, 8);
    (cfg.page, cfg.k_format, cfg.v_format, cfg.alibi, cfg.kernel) =
        (16, format, format, Alibi::Standard, kernel);
    let mut dec = PagedDecoder::new(gpu, cfg.clone())?;
    let tree = Tree::new(vec![None, Some(0), None, Some(1)])?;
    let mut steps = Vec::new();
    for (s, (n, t)) in [(45usize, Tree::chain(1)), (20, tree)].into_iter().enumerate() {
        let id = dec.add();
        let salt = 40 + 2 * s as u64;
        dec.prefill(gpu, id, &[(&seeded(n * hkv * d, salt), &seeded(n * hkv * d, salt + 1))])?;
        steps.push((id, t));
    }
    dec.begin(gpu, &steps)?;
    let tokens = dec.step_tokens();
    let q = seeded(tokens * h * d, 50);
    dec.attend(gpu, 0, &q, &seeded(tokens * hkv * d, 51), &seeded(tokens * hkv * d, 52))?;
    let out = dec.output(gpu)?;
    let (mut worst, mut t0) = (0f64, 0);
    for (id, tree) in &steps {
        let (keys, values) = dec.read_cache(gpu, 0, *id)?;
        let rows = tree.len() * h * d;
        let queries = &q[t0..t0 + rows];
        let (o, _) = step_f64(&cfg.rule(), &SeqStep { keys: &keys, values: &values, queries, tree });
        worst = worst.max(rel_error(&out.o[t0..t0 + rows], &o));
        t0 += rows;
    }
    Ok(worst)
}

/// Ring attention over `ranks` ranks sharing this device (threads, an in-process ring):
/// forward and backward against the oracle of the whole call; worst of O, dQ, dK, dV.
fn ring(gpu: &Gpu, spec: &AttnSpec, ranks: usize) -> Result<f64> {
    let (q, k, v) = seeded_qkv(spec, 13);
    let d_o = seeded(spec.shape.q_len(), 14);
    let plan = crate::parallel::ring::schedule(spec, ranks)?;
    let gpus = vec![gpu.clone(); ranks];
    let timeout = std::time::Duration::from_secs(120);
    let (out, g) = crate::parallel::ring::ring_backward(&gpus, &plan, &q, &k, &v, &d_o, timeout)?;
    let (o_ref, _) = attention_f64(spec, &q, &k, &v)?;
    let (dq, dk, dv) = attention_backward_f64(spec, &q, &k, &v, &d_o)?;
    Ok(rel_error(&out.o, &o_ref)
        .max(rel_error(&g.dq, &dq))
        .max(rel_error(&g.dk, &dk))
        .max(rel_error(&g.dv, &dv)))
}

/// The matmul of `[m, k]·[k, n]` with bias and `act` against `matmul_f64`.
fn matmul(gpu: &Gpu, [m, k, n]: [usize; 3], act: Activation, tensor_cores: TensorCores) -> Result<f64> {
    let (a, b, bias) = (seeded(m * k, 1), seeded(k * n, 2), seeded(n, 3));
    let options = MatmulOptions { tensor_cores, ..MatmulOptions::default() };
    let got = Matmul::with_options(gpu, m, k, n, true, act, options)?.run(gpu, &a, &b, Some(&bias))?;
    Ok(rel_error(&got, &matmul_f64(&a, &b, Some(&bias), m, k, n, act)))
}

/// Every check for `gpu`, in order (cooperative-matrix checks only where it has them).
fn checks(gpu: &Gpu) -> Vec<Check> {
    let mut out: Vec<Check> = Vec::new();
    let shape_of = |s: &AttnSpec| {
        let x = s.shape;
        format!("B={} H={}/{} N={} M={} D={}", x.batch, x.heads, x.kv_heads, x.n, x.m, x.head_dim)
    };
    for (label, spec) in problems() {
        for kernel in [Kernel::Flash, Kernel::Naive] {
            let name = format!("{} {label} {}", kernel.name(), shape_of(&spec));
            let spec = spec.clone();
            out.push((name, BOUND, Box::new(move |g: &Gpu| forward(g, kernel, &spec))));
        }
    }
    for (label, spec) in problems().into_iter().filter(|(l, _)| {
        matches!(
            *l,
            "causal+alibi"
                | "window(16,3)"
                | "mqa causal D=128"
                | "gqa causal+alibi D=37 (padded)"
                | "masked rows (N > M causal)"
                | "bigbird"
        )
    }) {
        for naive in [false, true] {
            let name = format!(
                "backward{} {label} {} (dQ, dK, dV)",
                if naive { " naive" } else { "" },
                shape_of(&spec)
            );
            let spec = spec.clone();
            out.push((name, BOUND, Box::new(move |g: &Gpu| backward(g, &spec, naive))));
        }
    }
    for (label, h, hkv, d, w) in [
        ("mha", 4, 4, 32, None),
        ("gqa", 4, 2, 32, None),
        ("gqa (padded)", 4, 2, 37, None),
        ("mqa", 4, 1, 32, None),
        ("mqa ring window 20", 4, 1, 32, Some(20)),
    ] {
        out.push((
            format!("decode {label} alibi H={h}/{hkv} D={d}, 45 cached + 3 steps"),
            BOUND,
            Box::new(move |g: &Gpu| decode(g, h, hkv, d, w, None, None)),
        ));
    }
    for (format, kernel) in [
        (KvFormat::F32, DecodeKernel::Staged),
        (KvFormat::Int8, DecodeKernel::Lanes),
        (KvFormat::Int4, DecodeKernel::Staged),
    ] {
        out.push((
            format!(
                "paged decode {} {} H=8/2 D=40, two sequences (one a tree of 4 drafts) in pages of 16",
                format.name(),
                kernel.name()
            ),
            BOUND,
            Box::new(move |g: &Gpu| paged(g, format, kernel)),
        ));
    }
    // mods (WGSL compiled into the kernels, the oracle running the same rule in Rust): a
    // score_mod and a mask_mod over the built-in causal band and ALiBi
    let mods = || {
        Named::parse("softcap=3", 4)
            .and_then(|a| a.mods().and(Named::parse("sinks=3,window=9", 4)?.mods()))
            .expect("named mods parse")
    };
    let spec = AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 2, n: 61, m: 93, head_dim: 64 })
        .causal(true)
        .alibi(Alibi::Standard)
        .mods(Some(mods()));
    let label = format!("mods softcap=3 + sinks=3,window=9, causal+alibi {}", shape_of(&spec));
    let s = spec.clone();
    out.push((format!("flash {label}"), BOUND, Box::new(move |g: &Gpu| forward(g, Kernel::Flash, &s))));
    let s = spec.clone();
    out.push((
        format!("backward {label} (dQ, dK, dV)"),
        BOUND,
        Box::new(move |g: &Gpu| backward(g, &s, false)),
    ));
    let (mods_spec, mods_label) = (spec, label);
    // positional encodings: a pass on Q and K before the kernels, RoPE's rotation back on
    // dQ and dK after the backward
    for (name, p) in [
        ("rope θ=10000 half", Positions::rope(10000.0)),
        ("rope θ=500000 interleaved", Positions::rope_interleaved(500000.0)),
        ("sinusoidal", Positions::sinusoidal()),
    ] {
        let spec = AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 2, n: 61, m: 93, head_dim: 38 })
            .causal(true)
            .alibi(Alibi::Standard)
            .positions(Some(p));
        let label = format!("{name}, causal+alibi {}", shape_of(&spec));
        let s = spec.clone();
        out.push((format!("flash {label}"), BOUND, Box::new(move |g: &Gpu| forward(g, Kernel::Flash, &s))));
        out.push((
            format!("backward {label} (dQ, dK, dV)"),
            BOUND,
            Box::new(move |g: &Gpu| backward(g, &spec, false)),
        ));
        out.push((
            format!("decode {name} alibi H=4/2 D=32, 45 cached + 3 steps"),
            BOUND,
            Box::new(move |g: &Gpu| decode(g, 4, 2, 32, None, None, Some(p))),
        ));
    }
    out.push((
        "decode mods softcap=3 + sinks=3,window=9, alibi H=4/2 D=32, 45 cached + 3 steps".into(),
        BOUND,
        Box::new(move |g: &Gpu| decode(g, 4, 2, 32, None, Some(mods()), None)),
    ));
    // learned sparse attention: MoBA's choice, the list kernels forward and backward (D a
    // multiple of 4) or flash and its backward on the block grid (D = 37); with RoPE, the
    // choice and the list kernels on rotated Q and K
    let rope = || Some(crate::contract::positions::Positions::rope(10000.0));
    for (d, alibi, positions) in
        [(64, Alibi::Standard, None), (37, Alibi::Off, None), (64, Alibi::Off, rope())]
    {
        let spec = AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 2, n: 77, m: 130, head_dim: d })
            .causal(true)
            .alibi(alibi)
            .positions(positions);
        let m = Moba { block: 16, topk: 3 };
        out.push((
            format!(
                "moba block=16,topk=3 {}{}{} (choice, O, dQ, dK, dV)",
                if spec.alibi == Alibi::Off { "" } else { "alibi " },
                if spec.positions.is_some() { "rope " } else { "" },
                shape_of(&spec)
            ),
            BOUND,
            Box::new(move |g: &Gpu| moba(g, &spec, &m)),
        ));
    }
    // NSA: its choice, the three branches and the mix, forward and backward (the selected
    // branch on the list kernels at D 64, on flash's block grid at D 37)
    for (d, positions) in [(64, None), (37, None), (64, rope())] {
        let spec = AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 2, n: 77, m: 130, head_dim: d })
            .causal(true)
            .positions(positions);
        let n = Nsa { cmp_len: 8, cmp_stride: 4, block: 16, topk: 4, window: 24 };
        let rope = if spec.positions.is_some() { "rope " } else { "" };
        out.push((
            format!("nsa {} {rope}{} (choice, O, dQ, dK, dV, dgates, dφ)", n.describe(), shape_of(&spec)),
            BOUND,
            Box::new(move |g: &Gpu| nsa(g, &spec, &n)),
        ));
    }
    // NSA's decoding step: one new token over a cache of 1500 (the compressed branch, the
    // choice and the window in splits, the selected branch on lists left on the device)
    let spec = AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 2, n: 1, m: 1500, head_dim: 64 })
        .causal(true);
    let n = Nsa { cmp_len: 16, cmp_stride: 8, block: 32, topk: 6, window: 100 };
    out.push((
        format!("nsa decode {} {} (choice, O, branches)", n.describe(), shape_of(&spec)),
        BOUND,
        Box::new(move |g: &Gpu| nsa_decode(g, &spec, &n)),
    ));
    // DSA: the indexer's choice, the attention over it and the backward (the token-list
    // kernels at D 64, flash's token grid at D 37)
    for d in [64, 37] {
        let spec = AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 2, n: 77, m: 130, head_dim: d })
            .causal(true);
        let c = Dsa { topk: 24, index_heads: 2, index_dim: 8 };
        out.push((
            format!("dsa {} {} (choice, O, LSE, dQ, dK, dV)", c.describe(), shape_of(&spec)),
            BOUND,
            Box::new(move |g: &Gpu| dsa(g, &spec, &c)),
        ));
    }
    // ring attention: zigzag causal with ALiBi and GQA, N not a multiple of the ranks
    let spec = AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 2, n: 101, m: 101, head_dim: 32 })
        .causal(true)
        .alibi(Alibi::Standard);
    for ranks in [2, 3] {
        let s = spec.clone();
        out.push((
            format!(
                "ring attention over {ranks} ranks, causal+alibi (zigzag) {} (O, dQ, dK, dV)",
                shape_of(&spec)
            ),
            BOUND,
            Box::new(move |g: &Gpu| ring(g, &s, ranks)),
        ));
    }
    // K and N not multiples of 4 take the tiled kernel; multiples of 4 the profile's choice
    // (register-blocked on CPU adapters)
    for (shape, act) in Activation::ALL.into_iter().flat_map(|act| [([37, 70, 45], act), ([37, 72, 44], act)])
    {
        out.push((
            format!("matmul {0}×{1}·{1}×{2} + bias, {act:?}", shape[0], shape[1], shape[2]),
            BOUND,
            Box::new(move |g: &Gpu| matmul(g, shape, act, TensorCores::Off)),
        ));
    }
    // tensor cores, where the adapter has them: f32 inputs exact (flash takes f32 ones by
    // default, so the flash checks above ran on them), f16 inputs to 5e-3
    if crate::kernels::attention::flash::FlashConfig::tensor_cores(gpu, 64, true).is_some() {
        for (label, spec) in problems().into_iter().filter(|(_, s)| s.shape.head_dim.is_multiple_of(4)) {
            let name = format!("flash {label} {}, cooperative f16 inputs", shape_of(&spec));
            out.push((name, 5e-3, Box::new(move |g: &Gpu| forward_tensor_cores(g, &spec))));
        }
        let name = format!("flash {mods_label}, cooperative f16 inputs");
        out.push((name, 5e-3, Box::new(move |g: &Gpu| forward_tensor_cores(g, &mods_spec))));
    }
    // the GPT trained by `longctx train`: its loss and every tensor's gradient (4 coordinates
    // each) against finite differences of the f64 oracle, per positional scheme
    for pos in [PosScheme::None, PosScheme::Sinusoidal, PosScheme::Rope, PosScheme::Alibi] {
        out.push((
            format!("gpt d=16 H=2 2 blocks B=2 T=9 {}: loss and gradient vs finite differences", pos.name()),
            GPT_BOUND,
            Box::new(move |g: &Gpu| {
                Ok(gradient_check(g, GptConfig::bytes(16, 2, 2, pos), 2, 9, 11, 4)?.worst())
            }),
        ));
    }
    // and with NSA and DSA in its blocks (RoPE: the encodings on their copies); every token
    // once, so DSA's choice meets no near-ties of rows alike
    for attn in ["nsa:cmp=4/2,slc=4,top=4,win=3", "dsa:topk=3,heads=4,dim=4"] {
        out.push((
            format!("gpt d=16 H=2 2 blocks B=2 T=17 rope {attn}: loss and gradient vs finite differences"),
            GPT_BOUND,
            Box::new(move |g: &Gpu| {
                let c =
                    GptConfig { attn: AttnKind::parse(attn)?, ..GptConfig::bytes(16, 2, 2, PosScheme::Rope) };
                let letters: Vec<u8> = (0..=255).collect();
                Ok(gradient_check_on(g, c, (2, 17), 11, 4, &letters)?.worst())
            }),
        ));
    }
    for (tc, bound) in [(TensorCores::Exact, BOUND), (TensorCores::F16, 5e-3)] {
        if let Ok(Some(c)) = Coop::for_device(gpu, tc) {
            out.push((
                format!(
                    "matmul 37×70·70×45 + bias, Gelu, cooperative {0}×{0} {1} inputs",
                    c.size,
                    if c.f16 { "f16" } else { "f32" }
                ),
                bound,
                Box::new(move |g: &Gpu| matmul(g, [37, 70, 45], Activation::Gelu, tc)),
            ));
        }
    }
    out
}

/// Runs every check on `gpu`, calling `each` with each outcome as it finishes.
pub fn run(gpu: &Gpu, mut each: impl FnMut(&Outcome)) -> Vec<Outcome> {
    checks(gpu)
        .into_iter()
        .map(|(name, bound, check)| {
            let t0 = Instant::now();
            let result = check(gpu);
            let ms = t0.elapsed().as_secs_f64() * 1e3;
            let (rel_err, failure) = match result {
                Ok(e) if e.is_finite() && e <= bound => (Some(e), None),
                Ok(e) => (Some(e), Some(format!("rel err {e:.2e} above {bound:.0e}"))),
                Err(e) => (None, Some(e.to_string())),
            };
            let outcome = Outcome { name, rel_err, failure, ms };
            each(&outcome);
            outcome
        })
        .collect()
}
