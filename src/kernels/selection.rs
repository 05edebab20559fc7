//! `selection`: the selection stage of learned sparse attention on the GPU
//! (`shaders/selection.wgsl`) and the attention that reads its choice. MoBA: block means of K,
//! then each query's gate scores and its top-k blocks as an index list (the rule and the f64
//! oracle: [`crate::contract::selection`]). The lists come back to the host, become the call's
//! per-query block grid ([`Moba::spec`]), and flash (or the backward) runs that spec: the
//! block map lists only the key tiles some query of a tile chose, with per-query visibility
//! bits where the queries of a tile chose differently.

use crate::contract::selection::{MAX_TOPK, Moba};
use crate::contract::spec::AttnOutput;
use crate::contract::spec::AttnSpec;
use crate::error::{Error, Result};
use crate::kernels::{Attention, Kernel};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Shader, ShaderVariant, bind_group};

const NAME: &str = "selection";
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/selection.wgsl"), bindings: SelectBinds::SLOTS };
bind_group! {
    /// The call's sizes, Q, K, the block means and the index lists.
    struct SelectBinds { 0 params: Uniform, 1 q: Read, 2 k: Read, 3 means: ReadWrite, 4 chosen: ReadWrite }
}
const WORKGROUP: u64 = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    heads: u32,
    kv_heads: u32,
    n: u32,
    m: u32,
    d: u32,
    block: u32,
    topk: u32,
    blocks: u32,
    q_offset: i32,
    groups_x: u32,
    pad: [u32; 2],
}

/// The entry points: the block means, then the choice.
const ENTRIES: [&str; 2] = ["block_means", "choose"];

fn variant(entry: &'static str) -> ShaderVariant {
    SHADER.variant(entry, &[], vec![("MAX_TOPK", MAX_TOPK as u32)])
}

/// The shader variants: the block means and the choice.
pub fn variants() -> Vec<ShaderVariant> {
    ENTRIES.map(variant).into()
}

/// MoBA's choice on the GPU for `spec` (one sequence; no positional encoding yet):
/// `[H, N, k]` index lists as [`crate::contract::selection::moba_select_f64`] writes them.
pub fn moba_select(gpu: &Gpu, spec: &AttnSpec, moba: &Moba, q: &[f32], k: &[f32]) -> Result<Vec<u32>> {
    let s = spec.shape;
    moba.check(&s)?;
    spec.check_inputs(q, k, k)?;
    if spec.positions.is_some() {
        return Err(Error::Invalid(
            "MoBA with a positional encoding: the gate reads Q and K after RoPE, which the selection stage does not apply yet"
                .into(),
        ));
    }
    let blocks = moba.blocks(s.m);
    let (d, topk) = (s.head_dim as u64, moba.topk as u64);
    // one `choose` invocation loops over every earlier block (D multiply-adds, then up to k
    // insertion steps); one `block_means` invocation over B keys
    if let Some(limit) = gpu.loop_iteration_limit() {
        let needed = (blocks as u64 * (d + topk) + topk).max(moba.block as u64);
        if needed > limit {
            return Err(Error::LoopLimit {
                kernel: NAME,
                needed,
                limit,
                hint: "use larger MoBA blocks (fewer blocks per query) or a shorter context",
            });
        }
    }
    let (rows, means_len) = (s.heads as u64 * s.n as u64, s.kv_heads as u64 * blocks as u64 * d);
    let q_buf = gpu.upload("MoBA Q", q)?;
    let k_buf = gpu.upload("MoBA K", k)?;
    let means = gpu.storage("MoBA block means", means_len * 4)?;
    let chosen = gpu.storage("MoBA index lists", rows * topk * 4)?;
    let [means_k, choose_k] = ENTRIES.map(|entry| gpu.compile(&variant(entry)));
    let (means_k, choose_k) = (means_k?, choose_k?);
    let params = |groups_x: u32| Params {
        heads: s.heads as u32,
        kv_heads: s.kv_heads as u32,
        n: s.n as u32,
        m: s.m as u32,
        d: s.head_dim as u32,
        block: moba.block as u32,
        topk: moba.topk as u32,
        blocks: blocks as u32,
        q_offset: spec.q_offset() as i32,
        groups_x,
        pad: [0; 2],
    };
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        for (kernel, invocations) in [(&means_k, means_len), (&choose_k, rows)] {
            let grid = gpu.grid(NAME, invocations.div_ceil(WORKGROUP))?;
            let uniform = gpu.uniform("MoBA params", &params(grid[0]));
            let binds = SelectBinds {
                params: (&uniform).into(),
                q: (&q_buf).into(),
                k: (&k_buf).into(),
                means: (&means).into(),
                chosen: (&chosen).into(),
            };
            let bind = kernel.bind(gpu, &binds);
            kernel.dispatch(&mut pass, &bind, grid);
        }
    }
    gpu.queue.submit([enc.finish()]);
    gpu.read(&chosen, (rows * topk) as usize)
}

/// MoBA attention: the choice on the GPU, then flash on the chosen blocks. Returns the output
/// and the index lists (`[H, N, k]`).
pub fn moba_attention(
    gpu: &Gpu,
    spec: &AttnSpec,
    moba: &Moba,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Result<(AttnOutput, Vec<u32>)> {
    let selected = moba_select(gpu, spec, moba, q, k)?;
    let chosen = moba.spec(spec, &selected)?;
    let out = Attention::new(gpu, Kernel::Flash, &chosen)?.run(gpu, q, k, v)?;
    Ok((out, selected))
}
