//! `longctx attention`: O (and LSE) from .npy tensors.

use std::path::PathBuf;

use anyhow::{Context, bail};
use longctx::io::{Staged, Tensor, read_npy};
use longctx::{Alibi, AttnShape, AttnSpec, Kernel};

use super::DeviceArgs;
use super::maskargs::{MaskArgs, PositionArgs};

/// Which implementation computes the result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelArg {
    /// Tiled FlashAttention (online softmax in workgroup memory).
    Flash,
    /// Textbook attention with the N×M score matrix in device memory.
    Naive,
    /// The f64 CPU oracle (no GPU needed).
    Cpu,
}

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Shapes: Q [H,N,D] or [B,H,N,D]; K and V [Hkv,M,D] or [B,Hkv,M,D] with H % Hkv == 0.
Query row i sits at position M-N+i (bottom-right alignment), key j at j.

Every active mask rule must allow a pair (AND); --pattern longformer is window OR global.

Examples:
  longctx attention --q q.npy --k k.npy --v v.npy --out o.npy --causal --alibi
  longctx attention ... --block-mask blocks.npy --block-size 64 --window 512,0
  longctx attention ... --bigbird global=1,window=1,random=2,block=64,seed=0
  longctx attention ... --causal --grad-out do.npy --dq dq.npy --dk dk.npy --dv dv.npy
  longctx attention ... --moba block=64,topk=4 --selected-out blocks.npy
  longctx attention ... --nsa cmp=32/16,slc=64,top=16,win=512 --gates g.npy --selected-out blocks.npy
  longctx attention ... --dsa topk=256 --index-q qi.npy --index-k ki.npy --index-w w.npy --selected-out keys.npy")]
pub struct AttentionArgs {
    /// Queries, float32 .npy.
    #[arg(long)]
    q: PathBuf,
    /// Keys, float32 .npy.
    #[arg(long)]
    k: PathBuf,
    /// Values, float32 .npy.
    #[arg(long)]
    v: PathBuf,
    /// Output path for O (same shape as Q).
    #[arg(long)]
    out: PathBuf,
    /// Also write the log-sum-exp of each row ([B,H,N] or [H,N]; -inf for fully masked rows).
    #[arg(long)]
    lse: Option<PathBuf>,
    #[command(flatten)]
    mask: MaskArgs,
    #[command(flatten)]
    positions: PositionArgs,
    /// ALiBi bias -slope_h·|p_i - j| with the paper's slopes for H heads.
    #[arg(long)]
    alibi: bool,
    /// Score scale (default 1/sqrt(D)).
    #[arg(long)]
    scale: Option<f32>,
    /// Implementation.
    #[arg(long, value_enum, default_value_t = KernelArg::Flash)]
    kernel: KernelArg,
    /// Backward pass: the gradient of the loss with respect to O (float32 .npy, O's shape).
    /// With it, write the gradients asked for by --dq, --dk, --dv (flash: the tiled backward;
    /// naive: the materialised one; cpu: the f64 oracle).
    #[arg(long, value_name = "DO.npy")]
    grad_out: Option<PathBuf>,
    /// Output path for dQ (Q's shape); needs --grad-out.
    #[arg(long, requires = "grad_out")]
    dq: Option<PathBuf>,
    /// Output path for dK (K's shape, summed over the query heads of each kv head).
    #[arg(long, requires = "grad_out")]
    dk: Option<PathBuf>,
    /// Output path for dV (V's shape, summed over the query heads of each kv head).
    #[arg(long, requires = "grad_out")]
    dv: Option<PathBuf>,
    /// MoBA, block=B,topk=K: each query reads its own block (causally) and the K-1 earlier
    /// blocks of B keys whose mean key scores highest against it (docs/DESIGN.md §1); the
    /// choice is made on the GPU (by the f64 oracle with --kernel cpu). Causal; each sequence of a
    /// batch chooses for itself (no sparse mask or mods with a batch).
    #[arg(long, value_name = "block=B,topk=K")]
    moba: Option<String>,
    /// With --moba, --nsa or --dsa: write the choice as float32 indices, -1 where fewer exist.
    /// MoBA and NSA: Q's shape with D replaced by K ([B, H, N, K] or [H, N, K]), blocks (MoBA:
    /// own block first, then by descending gate score; NSA: own, own - 1, 0, then by
    /// descending score). DSA: [B, N, K] or [N, K] keys (one list per token, shared by the
    /// heads), ascending.
    #[arg(long, value_name = "FILE.npy")]
    selected_out: Option<PathBuf>,
    /// NSA, cmp=L/D,slc=L2,top=N,win=W (native sparse attention, docs/DESIGN.md §1): the gated
    /// mix of attention over compressed keys (one per L keys at stride D), over the N blocks of
    /// L2 keys the compressed branch ranks highest (the first and two local blocks always among
    /// them; one choice per kv group) and over a causal window of W keys. Causal; --kernel cpu
    /// runs the f64 oracle; with --grad-out, the backward (no gradient through the choice;
    /// --dgates and --dphi write the gates' and φ's gradients).
    #[arg(long, value_name = "cmp=L/D,slc=L2,top=N,win=W", conflicts_with_all = ["moba", "lse"])]
    nsa: Option<String>,
    /// With --nsa and --grad-out: the gates' gradient (the gates' shape).
    #[arg(long, value_name = "FILE.npy", requires_all = ["nsa", "grad_out"])]
    dgates: Option<PathBuf>,
    /// With --nsa and --grad-out: φ's gradient, [Hkv, L].
    #[arg(long, value_name = "FILE.npy", requires_all = ["nsa", "grad_out"])]
    dphi: Option<PathBuf>,
    /// With --nsa: the gates, float32 .npy of Q's shape with D replaced by 3 (g_cmp, g_slc,
    /// g_win per row); default 1/3 each.
    #[arg(long, value_name = "FILE.npy", requires = "nsa")]
    gates: Option<PathBuf>,
    /// With --nsa: the compression weights φ, float32 .npy [Hkv, L] (per kv head, for K and
    /// V); default the mean, 1/L each.
    #[arg(long, value_name = "FILE.npy", requires = "nsa")]
    phi: Option<PathBuf>,
    /// DSA, topk=K (DeepSeek-V3.2's sparse attention, docs/DESIGN.md §1): a lightning indexer
    /// scores every earlier key, Σ_j w_j·ReLU(qI_j·kI), and each query reads its K best keys
    /// (one choice per token, shared by the heads). The indexer's shape comes from
    /// --index-q. Causal; --kernel cpu runs the f64 oracle; with --grad-out, the backward of
    /// the attention (no gradient into the indexer: the paper's sparse stage).
    #[arg(
        long,
        value_name = "topk=K",
        conflicts_with_all = ["moba", "nsa"],
        requires_all = ["index_q", "index_k", "index_w"]
    )]
    dsa: Option<String>,
    /// With --dsa: the indexer's queries, float32 .npy [B, N, HI, DI] ([N, HI, DI] when Q is
    /// [H, N, D]).
    #[arg(long, value_name = "FILE.npy", requires = "dsa")]
    index_q: Option<PathBuf>,
    /// With --dsa: the indexer's keys, [B, M, DI] ([M, DI]).
    #[arg(long, value_name = "FILE.npy", requires = "dsa")]
    index_k: Option<PathBuf>,
    /// With --dsa: the indexer's head weights, [B, N, HI] ([N, HI]).
    #[arg(long, value_name = "FILE.npy", requires = "dsa")]
    index_w: Option<PathBuf>,
}

/// Splits a [H,X,D] or [B,H,X,D] tensor shape into (B, H, X, D).
fn dims(name: &str, t: &Tensor) -> anyhow::Result<(usize, usize, usize, usize)> {
    match t.shape[..] {
        [h, x, d] => Ok((1, h, x, d)),
        [b, h, x, d] => Ok((b, h, x, d)),
        _ => bail!("{name} has shape {:?}; expected [H, N, D] or [B, H, N, D]", t.shape),
    }
}

pub fn run(dev: &DeviceArgs, a: &AttentionArgs) -> anyhow::Result<()> {
    let q = read_npy(&a.q)?;
    let k = read_npy(&a.k)?;
    let v = read_npy(&a.v)?;
    if q.shape.len() != k.shape.len() || k.shape != v.shape {
        bail!(
            "shapes disagree: Q {:?}, K {:?}, V {:?} (K and V must match; all of rank 3 or all of rank 4)",
            q.shape,
            k.shape,
            v.shape
        );
    }
    let (b, h, n, d) = dims("Q", &q)?;
    let (bk, hkv, m, dk) = dims("K", &k)?;
    if b != bk {
        bail!("batch differs: Q has {b}, K and V have {bk}");
    }
    if d != dk {
        bail!("head dim differs: Q has {d}, K and V have {dk}");
    }
    let shape = AttnShape { batch: b, heads: h, kv_heads: hkv, n, m, head_dim: d };
    if a.selected_out.is_some() && a.moba.is_none() && a.nsa.is_none() && a.dsa.is_none() {
        bail!("--selected-out writes a learned choice: it needs --moba, --nsa or --dsa");
    }
    let nsa = a.nsa.as_deref().map(longctx::contract::nsa::Nsa::parse).transpose()?;
    if let Some(nsa) = &nsa {
        nsa.check()?;
    }
    let moba = a.moba.as_deref().map(longctx::contract::selection::Moba::parse).transpose()?;
    if let Some(m) = &moba {
        // block and topk now; a batch folds into heads (`Moba::fold`) once the spec is built
        m.check(&AttnShape { batch: 1, ..shape })?;
    }
    let spec = a.mask.apply(
        AttnSpec::new(shape)
            .alibi(if a.alibi { Alibi::Standard } else { Alibi::Off })
            .scale(a.scale)
            .positions(a.positions.get()?),
    )?;
    spec.check_inputs(&q.data, &k.data, &v.data)?;
    // every output path usable and distinct (and no input) before any work
    let outputs: Vec<&std::path::Path> =
        [Some(&a.out), a.lse.as_ref(), a.dq.as_ref(), a.dk.as_ref(), a.dv.as_ref(), a.selected_out.as_ref()]
            .into_iter()
            .chain([a.dgates.as_ref(), a.dphi.as_ref()])
            .flatten()
            .map(|p| p.as_path())
            .collect();
    let read = a.mask.input_paths();
    let inputs: Vec<&std::path::Path> =
        [Some(&a.q), Some(&a.k), Some(&a.v), a.grad_out.as_ref(), a.gates.as_ref(), a.phi.as_ref()]
            .into_iter()
            .chain([a.index_q.as_ref(), a.index_k.as_ref(), a.index_w.as_ref()])
            .flatten()
            .chain(&read)
            .map(|p| p.as_path())
            .collect();
    longctx::io::check_outputs(&outputs, &inputs)?;
    if let Some(nsa) = &nsa {
        return run_nsa(dev, a, &spec, nsa, (&q, &k, &v));
    }
    if let Some(text) = &a.dsa {
        return run_dsa(dev, a, &spec, text, (&q, &k, &v));
    }

    // one device for the choice, the forward and the backward (none for the oracle)
    let gpu = if a.kernel == KernelArg::Cpu { None } else { Some(dev.gpu()?) };
    // MoBA's forward on the GPU: the choice and the attention over the chosen blocks in one call
    let mut direct = None;
    let (spec, chosen_out) = match &moba {
        None => (spec, None),
        Some(m) => {
            let selected = match &gpu {
                None => longctx::contract::selection::moba_select_f64(&spec, m, &q.data, &k.data)?,
                Some(gpu) if a.grad_out.is_none() && a.kernel == KernelArg::Flash => {
                    let (out, selected, _) = longctx::kernels::selection::moba_attention(
                        gpu, &spec, m, &q.data, &k.data, &v.data,
                    )?;
                    direct = Some((out, None));
                    selected
                }
                Some(gpu) if a.kernel == KernelArg::Flash => {
                    let d_o = read_grad(a, &q)?;
                    let (out, grads, selected, _) = longctx::kernels::selection::moba_backward(
                        gpu, &spec, m, &q.data, &k.data, &v.data, &d_o.data,
                    )?;
                    direct = Some((out, Some(grads)));
                    selected
                }
                Some(gpu) => longctx::kernels::selection::moba_select(gpu, &spec, m, &q.data, &k.data)?,
            };
            let mut dims = q.shape[..q.shape.len() - 1].to_vec();
            dims.push(m.topk);
            (m.spec(&spec, &selected)?, Some(Chosen { dims, blocks: selected }))
        }
    };
    if a.grad_out.is_some() {
        let given = direct.and_then(|(out, grads)| Some((out, grads?)));
        return backward(gpu.as_ref(), a, &spec, (&q, &k, &v), given, chosen_out.as_ref());
    }
    let out = match (direct, &gpu) {
        (Some((out, _)), _) => out,
        (None, None) => longctx::contract::reference::attention(&spec, &q.data, &k.data, &v.data)?,
        (None, Some(gpu)) => {
            let kernel = if a.kernel == KernelArg::Flash { Kernel::Flash } else { Kernel::Naive };
            longctx::attention(gpu, kernel, &spec, &q.data, &k.data, &v.data)?
        }
    };
    finite_outputs(&out)?;
    let mut staged = Staged::default();
    staged.npy(&a.out, &q.shape, &out.o).context("writing O")?;
    if let Some(path) = &a.lse {
        staged.npy(path, &q.shape[..q.shape.len() - 1], &out.lse).context("writing LSE")?;
    }
    stage_chosen(&mut staged, a, chosen_out.as_ref())?;
    staged.commit()?;
    Ok(())
}

/// NSA (`--nsa`): the GPU's stages, or the f64 oracle with `--kernel cpu`; with `--grad-out`
/// the backward too; O, the choice and the gradients asked for written.
fn run_nsa(
    dev: &DeviceArgs,
    a: &AttentionArgs,
    spec: &AttnSpec,
    nsa: &longctx::contract::nsa::Nsa,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
) -> anyhow::Result<()> {
    use longctx::contract::nsa::{nsa_backward_f64, nsa_forward_f64, nsa_select_f64};
    let rows = &q.shape[..q.shape.len() - 1];
    let gates = match &a.gates {
        None => vec![1.0 / 3.0; rows.iter().product::<usize>() * 3],
        Some(path) => {
            let g = read_npy(path)?;
            let want: Vec<usize> = rows.iter().copied().chain([3]).collect();
            if g.shape != want {
                bail!("--gates has shape {:?}; it must be Q's with D replaced by 3: {want:?}", g.shape);
            }
            g.data
        }
    };
    let phi = match &a.phi {
        None => None,
        Some(path) => {
            let p = read_npy(path)?;
            let want = [spec.shape.kv_heads, nsa.cmp_len];
            if p.shape != want {
                bail!("--phi has shape {:?}; it must be [Hkv, L] = {want:?}", p.shape);
            }
            Some(p.data)
        }
    };
    let d_o = a.grad_out.is_some().then(|| read_grad(a, q)).transpose()?;
    let qkv = (&q.data[..], &k.data[..], &v.data[..]);
    let (o, lists, grads) = match a.kernel {
        KernelArg::Cpu => {
            let sel = nsa_select_f64(spec, nsa, &q.data, &k.data, &v.data, phi.as_deref())?;
            let out = nsa_forward_f64(spec, nsa, &q.data, &k.data, &v.data, &gates, &sel, &sel.lists)?;
            let grads = match &d_o {
                None => None,
                Some(d_o) => Some(
                    nsa_backward_f64(spec, nsa, qkv, &gates, phi.as_deref(), &sel.lists, &d_o.data)?.to_f32(),
                ),
            };
            (out.o.iter().map(|&x| x as f32).collect(), sel.lists, grads)
        }
        KernelArg::Flash => {
            let gpu = dev.gpu()?;
            match &d_o {
                None => {
                    let out = longctx::kernels::nsa::nsa_attention(
                        &gpu,
                        spec,
                        nsa,
                        &q.data,
                        &k.data,
                        &v.data,
                        &gates,
                        phi.as_deref(),
                    )?;
                    (out.o, out.lists, None)
                }
                Some(d_o) => {
                    let (out, g) = longctx::kernels::nsa::nsa_backward(
                        &gpu,
                        spec,
                        nsa,
                        qkv,
                        &gates,
                        phi.as_deref(),
                        &d_o.data,
                    )?;
                    (out.o, out.lists, Some(g))
                }
            }
        }
        KernelArg::Naive => {
            bail!("--nsa runs on its own kernels (--kernel flash) or the oracle (--kernel cpu)")
        }
    };
    finite_o(&o)?;
    let mut staged = Staged::default();
    staged.npy(&a.out, &q.shape, &o).context("writing O")?;
    let dims = rows.iter().copied().chain([nsa.topk]).collect();
    stage_chosen(&mut staged, a, Some(&Chosen { dims, blocks: lists }))?;
    if let Some(g) = &grads {
        let gate_shape: Vec<usize> = rows.iter().copied().chain([3]).collect();
        let phi_shape = [spec.shape.kv_heads, nsa.cmp_len];
        stage_grads(
            &mut staged,
            &[
                (&a.dq, &q.shape, &g.dq, "dQ"),
                (&a.dk, &k.shape, &g.dk, "dK"),
                (&a.dv, &v.shape, &g.dv, "dV"),
                (&a.dgates, &gate_shape, &g.dgates, "the gates' gradient"),
                (&a.dphi, &phi_shape, &g.dphi, "φ's gradient"),
            ],
        )?;
    }
    staged.commit()?;
    Ok(())
}

/// DSA (`--dsa`): the indexer's choice and the attention over it on the GPU, or the f64
/// oracle with `--kernel cpu`; with `--grad-out` the attention's backward too.
fn run_dsa(
    dev: &DeviceArgs,
    a: &AttentionArgs,
    spec: &AttnSpec,
    text: &str,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
) -> anyhow::Result<()> {
    use longctx::contract::dsa::{Dsa, Indexer, dsa_select_f64};
    let s = spec.shape;
    let read = |path: &Option<PathBuf>| -> anyhow::Result<Tensor> {
        Ok(read_npy(path.as_deref().context("--dsa reads --index-q, --index-k and --index-w")?)?)
    };
    let (iq, ik, iw) = (read(&a.index_q)?, read(&a.index_k)?, read(&a.index_w)?);
    // a batch dimension exactly where Q has one
    let lead: Vec<usize> = if q.shape.len() == 4 { vec![s.batch] } else { vec![] };
    let (hi, di) = match iq.shape.strip_prefix(&lead[..]) {
        Some(&[n, hi, di]) if n == s.n => (hi, di),
        _ => bail!("--index-q has shape {:?}; expected {:?} + [N = {}, HI, DI]", iq.shape, lead, s.n),
    };
    let with = |tail: &[usize]| lead.iter().chain(tail).copied().collect::<Vec<_>>();
    for (flag, t, want) in [("--index-k", &ik, with(&[s.m, di])), ("--index-w", &iw, with(&[s.n, hi]))] {
        if t.shape != want {
            bail!("{flag} has shape {:?}; with --index-q {:?} it must be {want:?}", t.shape, iq.shape);
        }
    }
    let given = Dsa::parse(text)?;
    let dsa = Dsa { index_heads: hi, index_dim: di, ..given };
    for (part, said, got) in [("heads", given.index_heads, hi), ("dim", given.index_dim, di)] {
        if text.contains(&format!("{part}=")) && said != got {
            bail!("--dsa says {part}={said} but --index-q's shape gives {got}");
        }
    }
    let ix = Indexer { q: &iq.data, k: &ik.data, w: &iw.data };
    dsa.check(&s, &ix)?;
    let d_o = a.grad_out.is_some().then(|| read_grad(a, q)).transpose()?;
    let qkv = (&q.data[..], &k.data[..], &v.data[..]);
    let (out, grads, lists) = match a.kernel {
        KernelArg::Cpu => {
            let lists = dsa_select_f64(spec, &dsa, &ix)?;
            let chosen = dsa.spec(spec, &lists)?;
            let out = longctx::contract::reference::attention(&chosen, &q.data, &k.data, &v.data)?;
            let grads = match &d_o {
                None => None,
                Some(d_o) => {
                    let (dq, dk, dv) = longctx::contract::reference::attention_backward_f64(
                        &chosen, &q.data, &k.data, &v.data, &d_o.data,
                    )?;
                    let f = |x: Vec<f64>| x.into_iter().map(|v| v as f32).collect();
                    Some(longctx::Gradients { dq: f(dq), dk: f(dk), dv: f(dv) })
                }
            };
            (out, grads, lists)
        }
        KernelArg::Flash => {
            let gpu = dev.gpu()?;
            match &d_o {
                None => {
                    let (out, lists, _) = longctx::kernels::dsa::dsa_attention(&gpu, spec, &dsa, qkv, &ix)?;
                    (out, None, lists)
                }
                Some(d_o) => {
                    let (out, grads, lists) =
                        longctx::kernels::dsa::dsa_backward(&gpu, spec, &dsa, qkv, &ix, &d_o.data)?;
                    (out, Some(grads), lists)
                }
            }
        }
        KernelArg::Naive => {
            bail!("--dsa runs on its own kernels (--kernel flash) or the oracle (--kernel cpu)")
        }
    };
    finite_outputs(&out)?;
    let mut staged = Staged::default();
    staged.npy(&a.out, &q.shape, &out.o).context("writing O")?;
    if let Some(path) = &a.lse {
        staged.npy(path, &q.shape[..q.shape.len() - 1], &out.lse).context("writing LSE")?;
    }
    stage_chosen(&mut staged, a, Some(&Chosen { dims: with(&[s.n, dsa.topk]), blocks: lists }))?;
    if let Some(g) = &grads {
        stage_grads(
            &mut staged,
            &[(&a.dq, &q.shape, &g.dq, "dQ"), (&a.dk, &k.shape, &g.dk, "dK"), (&a.dv, &v.shape, &g.dv, "dV")],
        )?;
    }
    staged.commit()?;
    Ok(())
}

/// MoBA's, NSA's or DSA's choice, for --selected-out.
struct Chosen {
    /// Q's shape with D replaced by K (`[B, H, N, K]` or `[H, N, K]`).
    dims: Vec<usize>,
    blocks: Vec<u32>,
}

/// Stages --selected-out (block or key indices as float32, -1 where a list is shorter than K).
fn stage_chosen(staged: &mut Staged, a: &AttentionArgs, chosen: Option<&Chosen>) -> anyhow::Result<()> {
    if let (Some(path), Some(c)) = (&a.selected_out, chosen) {
        let none = longctx::contract::selection::NONE;
        let as_f32: Vec<f32> = c.blocks.iter().map(|&b| if b == none { -1.0 } else { b as f32 }).collect();
        staged.npy(path, &c.dims, &as_f32).context("writing the choice")?;
    }
    Ok(())
}

/// O must be finite and LSE finite or −inf (a fully masked row): anything else is f32 overflow
/// (a huge --scale or inputs near f32's range), refused rather than written with exit 0.
fn finite_outputs(out: &longctx::AttnOutput) -> anyhow::Result<()> {
    finite_o(&out.o)?;
    if let Some(i) = out.lse.iter().position(|x| x.is_nan() || *x == f32::INFINITY) {
        bail!("LSE is {} at row {i}: f32 overflow — lower --scale or the inputs' range", out.lse[i]);
    }
    Ok(())
}

/// A gradient to write: its path (if asked for), shape, data and name.
type GradOut<'a> = (&'a Option<PathBuf>, &'a [usize], &'a [f32], &'a str);

/// Stages each gradient asked for (`(path, shape, data, what)`), refusing one that is not
/// finite (f32 overflow) whether or not it is written.
fn stage_grads(staged: &mut Staged, grads: &[GradOut]) -> anyhow::Result<()> {
    for &(path, shape, data, what) in grads {
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            bail!("{what} is not finite at flat index {i} ({}): f32 overflow", data[i]);
        }
        if let Some(path) = path {
            staged.npy(path, shape, data).with_context(|| format!("writing {what}"))?;
        }
    }
    Ok(())
}

/// O must be finite (see [`finite_outputs`]).
fn finite_o(o: &[f32]) -> anyhow::Result<()> {
    if let Some(i) = o.iter().position(|x| !x.is_finite()) {
        bail!(
            "O is not finite at flat index {i} ({}): f32 overflow — lower --scale or the inputs' range",
            o[i]
        );
    }
    Ok(())
}

/// dO from --grad-out, shaped like Q.
fn read_grad(a: &AttentionArgs, q: &Tensor) -> anyhow::Result<Tensor> {
    let path = a.grad_out.as_deref().context("--grad-out names dO")?;
    if [&a.dq, &a.dk, &a.dv, &a.dgates, &a.dphi].iter().all(|p| p.is_none()) {
        bail!(
            "--grad-out computes gradients: name at least one of --dq, --dk, --dv (with --nsa: --dgates, --dphi)"
        );
    }
    let d_o = read_npy(path)?;
    if d_o.shape != q.shape {
        bail!("dO has shape {:?}; it must match O (and Q): {:?}", d_o.shape, q.shape);
    }
    Ok(d_o)
}

/// Forward and backward: O (and LSE) as usual, then dQ, dK, dV for the given dO (`given`:
/// already computed, as MoBA's block-list kernels do in one call).
fn backward(
    gpu: Option<&longctx::Gpu>,
    a: &AttentionArgs,
    spec: &AttnSpec,
    (q, k, v): (&Tensor, &Tensor, &Tensor),
    given: Option<(longctx::AttnOutput, longctx::Gradients)>,
    chosen: Option<&Chosen>,
) -> anyhow::Result<()> {
    let (out, grads) = match given {
        Some(done) => done,
        None => {
            let d_o = read_grad(a, q)?;
            spec.check_grad(&d_o.data)?;
            match gpu {
                None => {
                    let out = longctx::contract::reference::attention(spec, &q.data, &k.data, &v.data)?;
                    let (dq, dk, dv) = longctx::contract::reference::attention_backward_f64(
                        spec, &q.data, &k.data, &v.data, &d_o.data,
                    )?;
                    let f = |x: Vec<f64>| x.into_iter().map(|v| v as f32).collect();
                    (out, longctx::Gradients { dq: f(dq), dk: f(dk), dv: f(dv) })
                }
                Some(gpu) => {
                    let bwd = if a.kernel == KernelArg::Flash {
                        longctx::Backward::new(gpu, spec)?
                    } else {
                        longctx::Backward::naive(gpu, spec)?
                    };
                    bwd.run(gpu, &q.data, &k.data, &v.data, &d_o.data)?
                }
            }
        }
    };
    finite_outputs(&out)?;
    let mut staged = Staged::default();
    staged.npy(&a.out, &q.shape, &out.o).context("writing O")?;
    if let Some(path) = &a.lse {
        staged.npy(path, &q.shape[..q.shape.len() - 1], &out.lse).context("writing LSE")?;
    }
    stage_grads(
        &mut staged,
        &[
            (&a.dq, &q.shape, &grads.dq, "dQ"),
            (&a.dk, &k.shape, &grads.dk, "dK"),
            (&a.dv, &v.shape, &grads.dv, "dV"),
        ],
    )?;
    stage_chosen(&mut staged, a, chosen)?;
    staged.commit()?;
    Ok(())
}
