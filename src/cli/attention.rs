//! `longctx attention`: O (and LSE) from .npy tensors.

use std::path::PathBuf;

use anyhow::{Context, bail};
use longctx::io::{Tensor, read_npy, write_npy};
use longctx::{Alibi, AttnShape, AttnSpec, Kernel};

use super::DeviceArgs;
use super::maskargs::MaskArgs;

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
  longctx attention ... --bigbird global=1,window=1,random=2,block=64,seed=0")]
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
    /// ALiBi bias -slope_h·|p_i - j| with the paper's slopes for H heads.
    #[arg(long)]
    alibi: bool,
    /// Score scale (default 1/sqrt(D)).
    #[arg(long)]
    scale: Option<f32>,
    /// Implementation.
    #[arg(long, value_enum, default_value_t = KernelArg::Flash)]
    kernel: KernelArg,
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
    let spec = a.mask.apply(
        AttnSpec::new(shape).alibi(if a.alibi { Alibi::Standard } else { Alibi::Off }).scale(a.scale),
    )?;
    spec.check_inputs(&q.data, &k.data, &v.data)?;

    let out = match a.kernel {
        KernelArg::Cpu => longctx::reference::attention(&spec, &q.data, &k.data, &v.data)?,
        KernelArg::Flash | KernelArg::Naive => {
            let kernel = if a.kernel == KernelArg::Flash { Kernel::Flash } else { Kernel::Naive };
            let gpu = dev.gpu()?;
            longctx::attention(&gpu, kernel, &spec, &q.data, &k.data, &v.data)?
        }
    };
    write_npy(&a.out, &q.shape, &out.o).context("writing O")?;
    if let Some(path) = &a.lse {
        write_npy(path, &q.shape[..q.shape.len() - 1], &out.lse).context("writing LSE")?;
    }
    Ok(())
}
