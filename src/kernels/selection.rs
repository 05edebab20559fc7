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
use crate::kernels::attention::backward::{Backward, BackwardBuffers, GradTensors, Gradients};
use crate::kernels::attention::sparse::SparseAttention;
use crate::kernels::attention::sparse_backward::SparseBackward;
use crate::kernels::attention::{AttnBuffers, DeviceTensors};
use crate::kernels::positions::EncodedInputs;
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

/// The variant of `entry` for head dim `d`: the choice keeps the query in a private array of
/// vec4 lanes, `d` rounded up to a power of two (9 variants cover D ≤ 256).
fn variant(entry: &'static str, d: usize) -> ShaderVariant {
    SHADER.variant(
        entry,
        &[crate::kernels::TOPK],
        vec![("MAX_TOPK", MAX_TOPK as u32), ("QCAP4", lanes(d) as u32)],
    )
}

/// The vec4 lanes of a query and of a block mean at head dim `d`: ⌈D/4⌉ rounded up to a power of
/// two, a constant of the variant, so the gate's dot product has a fixed trip count.
pub(crate) fn lanes(d: usize) -> u64 {
    (d.next_power_of_two() as u64 / 4).max(1)
}

/// The shader variants: the block means and the choice, for every head dim bucket.
pub fn variants() -> Vec<ShaderVariant> {
    (0..=8).flat_map(|p| ENTRIES.map(|e| variant(e, 1 << p))).collect()
}

/// MoBA's choice on the GPU for `spec` (a batch folds into heads, [`Moba::fold`]; Q and K
/// under its positional encoding, if it has one): `[B, H, N, k]` index lists as
/// [`crate::contract::selection::moba_select_f64`] writes them.
pub fn moba_select(gpu: &Gpu, spec: &AttnSpec, moba: &Moba, q: &[f32], k: &[f32]) -> Result<Vec<u32>> {
    crate::runtime::block_on(
        "moba_select",
        "await moba_select_async",
        moba_select_async(gpu, spec, moba, q, k),
    )
}

/// [`moba_select`] without blocking (the browser).
pub async fn moba_select_async(
    gpu: &Gpu,
    spec: &AttnSpec,
    moba: &Moba,
    q: &[f32],
    k: &[f32],
) -> Result<Vec<u32>> {
    spec.check_inputs(q, k, k)?;
    let q_buf = gpu.upload("MoBA Q", q)?;
    let k_buf = gpu.upload("MoBA K", k)?;
    let chosen = select_on(gpu, spec, moba, &q_buf, &k_buf)?;
    gpu.read_async(&chosen, moba_slots(spec, moba)).await
}

/// Index-list entries of a call: B · H · N · k.
fn moba_slots(spec: &AttnSpec, moba: &Moba) -> usize {
    spec.shape.batch * spec.shape.heads * spec.shape.n * moba.topk
}

/// MoBA's choice on device Q and K (`[B, H, N, D]`, `[B, Hkv, M, D]`, f32, head dim
/// unpadded): the `[B, H, N, k]` index lists in a new device buffer (submitted, not awaited).
/// With a positional encoding, Q and K are encoded into copies first (the gate reads them
/// encoded); then the block means and the choice ([`block_means_on`], [`choose_on`]).
pub fn select_on(
    gpu: &Gpu,
    spec: &AttnSpec,
    moba: &Moba,
    q_buf: &wgpu::Buffer,
    k_buf: &wgpu::Buffer,
) -> Result<wgpu::Buffer> {
    if let Some(encoded) = EncodedInputs::new(gpu, spec, spec.shape.head_dim, false)? {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let (q, k) = encoded.encode(gpu, &mut enc, q_buf, k_buf)?;
        gpu.queue.submit([enc.finish()]);
        let plain = spec.clone().positions(None);
        let means = block_means_on(gpu, &plain, moba, k)?;
        return choose_on(gpu, &plain, moba, q, &means);
    }
    let means = block_means_on(gpu, spec, moba, k_buf)?;
    choose_on(gpu, spec, moba, q_buf, &means)
}

/// The mean key of every block of device K (`[B, Hkv, M, D]`), as the choice reads them
/// (`[B·Hkv, blocks, lanes]` vec4s): what a KV cache keeps once per completed block, so that a
/// decoding step chooses without reading the cache's keys.
pub fn block_means_on(gpu: &Gpu, spec: &AttnSpec, moba: &Moba, k_buf: &wgpu::Buffer) -> Result<wgpu::Buffer> {
    let spec = prepare(gpu, spec, moba)?;
    let len = means_len(&spec, moba);
    let means = gpu.storage("MoBA block means", len * 16)?;
    // `choose`'s output is not written here: a placeholder fills its binding
    let unused = gpu.storage("MoBA index lists (unused)", 4)?;
    dispatch(gpu, &spec, moba, 0, len.div_ceil(WORKGROUP), [k_buf, k_buf, &means, &unused])?;
    Ok(means)
}

/// MoBA's choice from device Q (`[B, H, N, D]`) and the block means of [`block_means_on`] for
/// the same call: the `[B, H, N, k]` index lists in a new device buffer (submitted).
pub fn choose_on(
    gpu: &Gpu,
    spec: &AttnSpec,
    moba: &Moba,
    q_buf: &wgpu::Buffer,
    means: &wgpu::Buffer,
) -> Result<wgpu::Buffer> {
    let spec = prepare(gpu, spec, moba)?;
    let s = spec.shape;
    let expected = means_len(&spec, moba) * 16;
    if means.size() < expected {
        return Err(Error::Invalid(format!(
            "MoBA block means of {} bytes for a call that needs {expected}",
            means.size()
        )));
    }
    let rows = s.heads as u64 * s.n as u64;
    let chosen = gpu.storage("MoBA index lists", rows * moba.topk as u64 * 4)?;
    // a workgroup per (head, 64 rows); the K binding is unused by `choose`
    let groups = s.heads as u64 * (s.n as u64).div_ceil(WORKGROUP);
    dispatch(gpu, &spec, moba, 1, groups, [q_buf, q_buf, means, &chosen])?;
    Ok(chosen)
}

/// The folded call (a batch as heads), checked: MoBA's parameters, no positional encoding
/// (the stages read Q and K as given: [`select_on`] encodes them first), the head dim, and the
/// loops of both stages against an adapter's cap.
fn prepare(gpu: &Gpu, spec: &AttnSpec, moba: &Moba) -> Result<AttnSpec> {
    let spec = moba.fold(spec)?;
    let s = spec.shape;
    moba.check(&s)?;
    if spec.positions.is_some() {
        return Err(Error::Invalid(
            "MoBA's block means and choice read Q and K as given: call them on encoded Q and K with the positional encoding taken off the call (select_on does both)"
                .into(),
        ));
    }
    crate::kernels::check_call_head_dim(NAME, s.head_dim)?;
    let blocks = moba.blocks(s.m);
    let (d, d4, topk) = (s.head_dim as u64, lanes(s.head_dim), moba.topk as u64);
    // one `choose` invocation loops over every earlier block (D4 vec4 dots, then up to k
    // insertion steps); one `block_means` invocation over B keys (4 columns each)
    if let Some(limit) = gpu.loop_iteration_limit() {
        let needed = (blocks as u64 * (d4 + topk) + topk + d).max(5 * moba.block as u64);
        if needed > limit {
            return Err(Error::LoopLimit {
                kernel: NAME,
                needed,
                limit,
                hint: "use larger MoBA blocks (fewer blocks per query) or a shorter context",
            });
        }
    }
    Ok(spec)
}

/// vec4s of the block means: one `block_means` invocation each.
fn means_len(spec: &AttnSpec, moba: &Moba) -> u64 {
    let s = spec.shape;
    s.kv_heads as u64 * moba.blocks(s.m) as u64 * lanes(s.head_dim)
}

/// One stage (`ENTRIES[entry]`) of the folded call on `groups` workgroups, bound to (Q, K,
/// means, lists), submitted.
fn dispatch(
    gpu: &Gpu,
    spec: &AttnSpec,
    moba: &Moba,
    entry: usize,
    groups: u64,
    [q, k, means, chosen]: [&wgpu::Buffer; 4],
) -> Result<()> {
    let s = spec.shape;
    let kernel = gpu.compile(&variant(ENTRIES[entry], s.head_dim))?;
    let grid = gpu.grid(NAME, groups)?;
    let params = Params {
        heads: s.heads as u32,
        kv_heads: s.kv_heads as u32,
        n: s.n as u32,
        m: s.m as u32,
        d: s.head_dim as u32,
        block: moba.block as u32,
        topk: moba.topk as u32,
        blocks: moba.blocks(s.m) as u32,
        q_offset: spec.q_offset() as i32,
        groups_x: grid[0],
        pad: [0; 2],
    };
    let uniform = gpu.uniform("MoBA params", &params);
    let binds = SelectBinds {
        params: (&uniform).into(),
        q: q.into(),
        k: k.into(),
        means: means.into(),
        chosen: chosen.into(),
    };
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
        kernel.dispatch(&mut pass, &kernel.bind(gpu, &binds), grid);
    }
    gpu.queue.submit([enc.finish()]);
    Ok(())
}

/// [`select_on`], then the lists read back: the device buffer and its host copy (the list
/// kernel groups the entries on the host).
pub fn select_lists(
    gpu: &Gpu,
    spec: &AttnSpec,
    moba: &Moba,
    q_buf: &wgpu::Buffer,
    k_buf: &wgpu::Buffer,
) -> Result<(wgpu::Buffer, Vec<u32>)> {
    let buf = select_on(gpu, spec, moba, q_buf, k_buf)?;
    let lists = gpu.read(&buf, moba_slots(spec, moba))?;
    Ok((buf, lists))
}

/// How MoBA attention ran: the chosen blocks' kernel, or flash on their block grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MobaPath {
    /// Key-block-centric over the index lists ([`SparseAttention`]).
    Lists,
    /// Flash on the per-query block grid the lists define ([`Moba::spec`]): the path for what
    /// the list kernel does not run ([`SparseAttention::unsupported`]).
    Grid,
}

/// MoBA attention: the choice on the GPU, then the attention over the chosen blocks (the
/// block-list kernel where it runs the call, else flash on the chosen block grid). Returns
/// the output, the index lists (`[H, N, k]`) and the path taken.
pub fn moba_attention(
    gpu: &Gpu,
    spec: &AttnSpec,
    moba: &Moba,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Result<(AttnOutput, Vec<u32>, MobaPath)> {
    let spec = &moba.fold(spec)?;
    moba.check(&spec.shape)?;
    // the list kernels read Q and K encoded (on_lists); flash's grid encodes them itself
    let plain = &spec.clone().positions(None);
    if SparseAttention::unsupported(gpu, plain, moba.block).is_some() {
        let selected = moba_select(gpu, spec, moba, q, k)?;
        let chosen = moba.spec(spec, &selected)?;
        let out = Attention::new(gpu, Kernel::Flash, &chosen)?.run(gpu, q, k, v)?;
        return Ok((out, selected, MobaPath::Grid));
    }
    let (out, _, lists) = on_lists(gpu, spec, moba, q, k, v, None)?;
    Ok((out, lists, MobaPath::Lists))
}

/// MoBA's forward and backward for the incoming gradient `d_o` (no gradient through the
/// choice): the choice on the GPU, then the block-list kernels where both run the call, else
/// flash and its backward on the chosen block grid. Returns the output, the gradients, the
/// index lists (`[H, N, k]`) and the path taken.
pub fn moba_backward(
    gpu: &Gpu,
    spec: &AttnSpec,
    moba: &Moba,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
) -> Result<(AttnOutput, Gradients, Vec<u32>, MobaPath)> {
    let spec = &moba.fold(spec)?;
    moba.check(&spec.shape)?;
    let plain = &spec.clone().positions(None);
    if SparseAttention::unsupported(gpu, plain, moba.block).is_some()
        || SparseBackward::unsupported(gpu, plain, moba.block).is_some()
    {
        let selected = moba_select(gpu, spec, moba, q, k)?;
        let chosen = moba.spec(spec, &selected)?;
        let (out, grads) = Backward::new(gpu, &chosen)?.run(gpu, q, k, v, d_o)?;
        return Ok((out, grads, selected, MobaPath::Grid));
    }
    let (out, grads, lists) = on_lists(gpu, spec, moba, q, k, v, Some(d_o))?;
    let grads = grads.expect("the backward ran: dO was given");
    Ok((out, grads, lists, MobaPath::Lists))
}

/// The choice, the block-list forward and, given dO, its backward, on freshly uploaded
/// tensors (outputs poisoned with NaN first); with a positional encoding, on encoded copies of
/// Q and K, and dQ, dK taken back through it.
fn on_lists(
    gpu: &Gpu,
    spec: &AttnSpec,
    moba: &Moba,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: Option<&[f32]>,
) -> Result<(AttnOutput, Option<Gradients>, Vec<u32>)> {
    spec.check_inputs(q, k, v)?;
    let plain = spec.clone().positions(None);
    let causal = plain.clone().causal(true);
    let forward = SparseAttention::new(gpu, &causal, moba.block, moba.topk)?;
    let backward = d_o.map(|_| SparseBackward::new(gpu, &causal, moba.block, moba.topk)).transpose()?;
    let io = DeviceTensors::upload(gpu, spec, q, k, v)?;
    io.poison(gpu);
    let grads = d_o.map(|d_o| GradTensors::upload(gpu, spec, d_o)).transpose()?;
    let encoded = EncodedInputs::new(gpu, spec, spec.shape.head_dim, false)?;
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    let (q_in, k_in) = match &encoded {
        Some(e) => e.encode(gpu, &mut enc, &io.q, &io.k)?,
        None => (&io.q, &io.k),
    };
    gpu.queue.submit([enc.finish()]);
    let bufs = AttnBuffers { q: q_in, k: k_in, ..io.buffers() };
    let (lists_buf, lists) = select_lists(gpu, &plain, moba, q_in, k_in)?;
    forward.run(gpu, &bufs, &lists, &lists_buf)?;
    if let (Some(backward), Some(grads)) = (&backward, &grads) {
        grads.poison(gpu);
        let back = BackwardBuffers { forward: bufs, ..grads.buffers(&io) };
        backward.run(gpu, &back, &lists, &lists_buf)?;
        if let Some(e) = &encoded {
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            e.grads(gpu, &mut enc, back.dq, back.dk)?;
            gpu.queue.submit([enc.finish()]);
        }
    }
    let grads = grads.map(|g| g.read(gpu)).transpose()?;
    Ok((io.read(gpu)?, grads, lists))
}
