//! Ring attention on one rank: its Q chunks stay on its device; the K/V blocks of every rank
//! pass through it, one per step, while it attends its queries to the block it holds and
//! merges each partial (O, LSE) into its running output by log-sum-exp
//! ([`crate::kernels::ring::Merges`]). The transfer of the next block runs while the current
//! one is computed ([`Transport::shift`]). The backward sends dK and dV with their blocks:
//! each rank adds its queries' contribution, and after P steps every block is home with its
//! complete gradients; dQ stays.
//!
//! [`ring_attention`] and [`ring_backward`] run P ranks as threads of one process, one device
//! each; under MPI every process runs [`forward`] / [`backward`] with its own transport.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::contract::inputs::{hashed, hashed_range};
use crate::contract::spec::{AttnOutput, AttnSpec};
use crate::error::{Error, Result};
use crate::kernels::attention::backward::{Backward, BackwardBuffers, Gradients};
use crate::kernels::ring::Merges;
use crate::kernels::{Attention, AttnBuffers, Kernel};
use crate::parallel::schedule::{RingSchedule, Sharding, put_rows, take_rows};
use crate::parallel::transport::{InProcess, Transport};
use crate::runtime::Gpu;

/// One rank's share of the inputs: per owned chunk (in [`RingSchedule::owned`] order) its Q rows
/// `[B, H, n_c, D]` and its K, V rows `[B, Hkv, m_c, D]`.
#[derive(Clone, Debug, Default)]
pub struct Shard {
    /// Q per owned chunk.
    pub q: Vec<Vec<f32>>,
    /// K per owned chunk.
    pub k: Vec<Vec<f32>>,
    /// V per owned chunk.
    pub v: Vec<Vec<f32>>,
}

impl Shard {
    /// Rank `r`'s share of whole tensors Q `[B, H, N, D]`, K and V `[B, Hkv, M, D]`.
    pub fn of(plan: &RingSchedule, r: usize, q: &[f32], k: &[f32], v: &[f32]) -> Self {
        let s = plan.spec.shape;
        let d = s.head_dim;
        let mut out = Self::default();
        for c in plan.owned(r) {
            out.q.push(take_rows(q, s.batch * s.heads, s.n, d, &plan.q_chunks[c]));
            out.k.push(take_rows(k, s.batch * s.kv_heads, s.m, d, &plan.k_chunks[c]));
            out.v.push(take_rows(v, s.batch * s.kv_heads, s.m, d, &plan.k_chunks[c]));
        }
        out
    }
}

/// Salts of the hashed inputs ([`crate::contract::inputs::hashed`]) of `longctx ring`: Q, K,
/// V and the incoming gradient dO (halved), each a tensor every rank can slice for itself.
const SALTS: [u32; 4] = [1, 2, 3, 4];

/// Rows `range` of every (batch, head) sequence of the hashed tensor with `salt` shaped
/// `[B, heads, len, D]`, made without the rest.
fn hashed_rows(
    plan: &RingSchedule,
    salt: u32,
    heads: usize,
    len: usize,
    range: &std::ops::Range<usize>,
) -> Vec<f32> {
    let s = plan.spec.shape;
    let d = s.head_dim;
    (0..s.batch * heads)
        .flat_map(|bh| hashed_range((bh * len + range.start) * d..(bh * len + range.end) * d, salt))
        .collect()
}

impl Shard {
    /// Rank `r`'s share of the hashed inputs ([`hashed_inputs`]), made without the rest of
    /// the tensors.
    pub fn hashed(plan: &RingSchedule, r: usize) -> Self {
        let s = plan.spec.shape;
        let mut out = Self::default();
        for c in plan.owned(r) {
            out.q.push(hashed_rows(plan, SALTS[0], s.heads, s.n, &plan.q_chunks[c]));
            out.k.push(hashed_rows(plan, SALTS[1], s.kv_heads, s.m, &plan.k_chunks[c]));
            out.v.push(hashed_rows(plan, SALTS[2], s.kv_heads, s.m, &plan.k_chunks[c]));
        }
        out
    }
}

/// Rank `r`'s rows of the hashed dO ([`hashed_inputs`]), per owned chunk.
pub fn hashed_d_o(plan: &RingSchedule, r: usize) -> Vec<Vec<f32>> {
    let s = plan.spec.shape;
    let half = |x: Vec<f32>| x.into_iter().map(|v| v * 0.5).collect();
    plan.owned(r)
        .into_iter()
        .map(|c| half(hashed_rows(plan, SALTS[3], s.heads, s.n, &plan.q_chunks[c])))
        .collect()
}

/// The whole hashed Q, K, V and dO of `spec` that [`Shard::hashed`] and [`hashed_d_o`] slice.
pub fn hashed_inputs(spec: &AttnSpec) -> [Vec<f32>; 4] {
    let s = spec.shape;
    let [q, k, v, g] = SALTS;
    [
        hashed(s.q_len(), q),
        hashed(s.kv_len(), k),
        hashed(s.kv_len(), v),
        hashed(s.q_len(), g).into_iter().map(|x| x * 0.5).collect(),
    ]
}

/// Time and bytes of one ring step on one rank.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StepStats {
    /// Seconds computing (upload of the block, attention and merges, to the device idle).
    pub compute_s: f64,
    /// Seconds waiting for the next block after the computation finished.
    pub wait_s: f64,
    /// Bytes sent to the next rank.
    pub sent: u64,
    /// Visible (query, key) pairs per head computed.
    pub pairs: u64,
}

/// One rank's output: per owned chunk O `[B, H, n_c, D]` and LSE `[B, H, n_c]`, and its steps.
#[derive(Clone, Debug, Default)]
pub struct RankOutput {
    /// O per owned chunk.
    pub o: Vec<Vec<f32>>,
    /// LSE per owned chunk.
    pub lse: Vec<Vec<f32>>,
    /// Per step.
    pub steps: Vec<StepStats>,
    /// Device bytes this rank allocated for the ring (chunks, blocks, scratch).
    pub device_bytes: u64,
    /// Seconds preparing its calls (block maps, pipelines) and buffers before the first step.
    pub prepare_s: f64,
    /// Seconds one block's transfer takes on its own (a shift with nothing to overlap, after
    /// the ring; 0 for one rank): what the steps' compute hides.
    pub transfer_s: f64,
}

fn bytes_of(chunks: &[&[f32]]) -> Vec<u8> {
    chunks.iter().flat_map(|c| bytemuck::cast_slice::<f32, u8>(c).iter().copied()).collect()
}

/// Floats of a block's `parts` tensors (K, V; or K, V, dK, dV) per owned chunk of `owner`.
fn block_floats(plan: &RingSchedule, owner: usize) -> Vec<usize> {
    let hkv = plan.spec.shape.kv_heads;
    plan.owned(owner).into_iter().map(|c| plan.chunk_len(plan.k_chunks[c].len(), hkv)).collect()
}

/// `bytes` cut into `parts` groups of the chunk lengths `lens` (a block as sent).
fn unpack(bytes: &[u8], lens: &[usize], parts: usize) -> Vec<Vec<Vec<f32>>> {
    let floats: &[f32] = bytemuck::cast_slice(bytes);
    let mut at = 0;
    (0..parts)
        .map(|_| {
            lens.iter()
                .map(|&n| {
                    let c = floats[at..at + n].to_vec();
                    at += n;
                    c
                })
                .collect()
        })
        .collect()
}

/// One rank's calls `C` (forward or backward), one per (own Q chunk, any K chunk) pair with a
/// visible key, prepared once, each with its visible pairs per head.
struct Pairs<C> {
    calls: HashMap<(usize, usize), (u64, C)>,
}

impl<C> Pairs<C> {
    fn new(plan: &RingSchedule, r: usize, prepare: impl Fn(&AttnSpec) -> Result<C>) -> Result<Self> {
        let mut calls = HashMap::new();
        for qc in plan.owned(r) {
            for kc in 0..plan.k_chunks.len() {
                if let Some(spec) = plan.pair_spec(qc, kc) {
                    calls.insert((qc, kc), (spec.band_pairs(), prepare(&spec)?));
                }
            }
        }
        Ok(Self { calls })
    }
}

/// Checks that the ranks of `t` agree on `plan` (sizes, rules, sharding): every rank passes
/// its plan's fingerprint around the ring, so a mismatch is an error on every rank.
fn agree(t: &mut dyn Transport, plan: &RingSchedule) -> Result<()> {
    let mine = fingerprint(plan);
    let (mut lo, mut hi) = (mine, mine);
    for _ in 1..t.size() {
        let send = [lo.to_le_bytes(), hi.to_le_bytes()].concat();
        let (got, _) = t.shift(&send, 16, &mut || Ok(()))?;
        let a = u64::from_le_bytes(got[..8].try_into().expect("8 bytes"));
        let b = u64::from_le_bytes(got[8..].try_into().expect("8 bytes"));
        (lo, hi) = (lo.min(a), hi.max(b));
    }
    if lo != hi {
        return Err(Error::Rank { rank: t.rank(), message: "the ranks were given different problems (sizes, rules or rank count differ); every rank must get the same arguments".into() });
    }
    Ok(())
}

fn fingerprint(plan: &RingSchedule) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    format!("{:?}|{}|{:?}", plan.spec, plan.ranks, plan.sharding).hash(&mut h);
    h.finish()
}

/// The forward on rank `t.rank()` of `plan` with device `gpu`: attends `shard`'s queries to
/// every block in turn; returns its chunks' O and LSE.
pub fn forward(gpu: &Gpu, t: &mut dyn Transport, plan: &RingSchedule, shard: &Shard) -> Result<RankOutput> {
    let (r, p) = (t.rank(), t.size());
    if p != plan.ranks {
        return Err(Error::Rank {
            rank: r,
            message: format!("the ring has {p} ranks but the plan {}", plan.ranks),
        });
    }
    agree(t, plan)?;
    let prepared = Instant::now();
    let s = plan.spec.shape;
    let d = s.head_dim;
    let mine = plan.owned(r);
    let pairs = Pairs::new(plan, r, |spec| Attention::new(gpu, Kernel::Flash, spec))?;
    let merges = Merges::new(gpu)?;
    let bh = s.batch * s.heads;
    // device buffers: per own Q chunk its rows, running and partial outputs; per block
    // position K and V at the largest chunk
    let mut bytes = 0u64;
    let mut storage = |label: &str, floats: usize| -> Result<wgpu::Buffer> {
        bytes += floats as u64 * 4;
        gpu.storage(label, floats.max(1) as u64 * 4)
    };
    let mut q_bufs = Vec::new();
    let mut acc = Vec::new();
    for (i, &c) in mine.iter().enumerate() {
        let rows = bh * plan.q_chunks[c].len();
        let q = storage("ring Q chunk", rows * d)?;
        gpu.queue.write_buffer(&q, 0, bytemuck::cast_slice(&shard.q[i]));
        let o = storage("ring O", rows * d)?;
        let lse = storage("ring LSE", rows)?;
        gpu.queue.write_buffer(&o, 0, bytemuck::cast_slice(&vec![0f32; rows * d]));
        gpu.queue.write_buffer(&lse, 0, bytemuck::cast_slice(&vec![f32::NEG_INFINITY; rows]));
        q_bufs.push(q);
        acc.push((o, lse, storage("ring partial O", rows * d)?, storage("ring partial LSE", rows)?));
    }
    let max_kv = plan.k_chunks.iter().map(|k| plan.chunk_len(k.len(), s.kv_heads)).max().unwrap_or(0);
    let per_block = mine.len();
    let kv_bufs: Vec<(wgpu::Buffer, wgpu::Buffer)> = (0..per_block)
        .map(|_| Ok((storage("ring K block", max_kv)?, storage("ring V block", max_kv)?)))
        .collect::<Result<_>>()?;
    bytes += pairs.calls.values().map(|(_, a)| a.scratch_bytes()).sum::<u64>();

    let mut block = bytes_of(&shard.k.iter().chain(&shard.v).map(Vec::as_slice).collect::<Vec<_>>());
    gpu.wait()?;
    let prepare_s = prepared.elapsed().as_secs_f64();
    let mut steps = Vec::with_capacity(p);
    for step in 0..p {
        let holder = plan.holder_of(r, step);
        let kcs = plan.owned(holder);
        let lens = block_floats(plan, holder);
        let parts = unpack(&block, &lens, 2);
        let mut stat = StepStats::default();
        let mut work = || -> Result<()> {
            let t0 = Instant::now();
            for (i, (kb, vb)) in kv_bufs.iter().enumerate() {
                gpu.queue.write_buffer(kb, 0, bytemuck::cast_slice(&parts[0][i]));
                gpu.queue.write_buffer(vb, 0, bytemuck::cast_slice(&parts[1][i]));
            }
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            for (qi, &qc) in mine.iter().enumerate() {
                let (o, lse, o_part, lse_part) = &acc[qi];
                for (ki, &kc) in kcs.iter().enumerate() {
                    let Some((visible, attn)) = pairs.calls.get(&(qc, kc)) else { continue };
                    let bufs = AttnBuffers {
                        q: &q_bufs[qi],
                        k: &kv_bufs[ki].0,
                        v: &kv_bufs[ki].1,
                        o: o_part,
                        lse: lse_part,
                    };
                    attn.encode(gpu, &mut enc, &bufs)?;
                    merges.merge(gpu, &mut enc, o, lse, o_part, lse_part, bh * plan.q_chunks[qc].len(), d)?;
                    stat.pairs += visible;
                }
            }
            gpu.queue.submit([enc.finish()]);
            gpu.wait()?;
            stat.compute_s = t0.elapsed().as_secs_f64();
            Ok(())
        };
        if step + 1 < p {
            let next = block_floats(plan, plan.holder_of(r, step + 1)).iter().sum::<usize>() * 2 * 4;
            stat.sent = block.len() as u64;
            let (got, wait) = t.shift(&block, next, &mut work)?;
            stat.wait_s = wait;
            block = got;
        } else {
            work()?;
        }
        steps.push(stat);
    }
    // one more shift with nothing to overlap: the bare transfer time of a block (every rank
    // now holds the block of its next rank and receives its own back)
    let transfer_s = if p > 1 {
        let own = block_floats(plan, r).iter().sum::<usize>() * 2 * 4;
        let t0 = Instant::now();
        t.shift(&block, own, &mut || Ok(()))?;
        t0.elapsed().as_secs_f64()
    } else {
        0.0
    };
    let mut out = RankOutput { steps, device_bytes: bytes, prepare_s, transfer_s, ..Default::default() };
    for (qi, &c) in mine.iter().enumerate() {
        let rows = bh * plan.q_chunks[c].len();
        out.o.push(gpu.read(&acc[qi].0, rows * d)?);
        out.lse.push(gpu.read(&acc[qi].1, rows)?);
    }
    Ok(out)
}

/// Runs `plan` on `gpus` (one rank each, as threads of this process) for whole tensors:
/// shards them, runs [`forward`] on every rank, and joins the outputs. Every wait gives up
/// after `timeout`.
pub fn ring_attention(
    gpus: &[Gpu],
    plan: &RingSchedule,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    timeout: Duration,
) -> Result<(AttnOutput, Vec<RankOutput>)> {
    plan.spec.check_inputs(q, k, v)?;
    check_devices(gpus, plan)?;
    let outs = run_ranks(gpus, timeout, |gpu, t| {
        let shard = Shard::of(plan, t.rank(), q, k, v);
        forward(gpu, t, plan, &shard)
    })?;
    let s = plan.spec.shape;
    let (bh, d) = (s.batch * s.heads, s.head_dim);
    let mut o = vec![0f32; s.q_len()];
    let mut lse = vec![0f32; s.lse_len()];
    for (r, out) in outs.iter().enumerate() {
        for (i, c) in plan.owned(r).into_iter().enumerate() {
            put_rows(&mut o, &out.o[i], bh, s.n, d, &plan.q_chunks[c]);
            put_rows(&mut lse, &out.lse[i], bh, s.n, 1, &plan.q_chunks[c]);
        }
    }
    Ok((AttnOutput { o, lse }, outs))
}

fn check_devices(gpus: &[Gpu], plan: &RingSchedule) -> Result<()> {
    if gpus.len() != plan.ranks {
        return Err(Error::Invalid(format!("ring over {} ranks given {} devices", plan.ranks, gpus.len())));
    }
    Ok(())
}

/// Runs `rank` on every device in its own thread, the threads joined by an in-process ring
/// ([`InProcess`]) whose waits give up after `timeout`; every rank's result, in rank order.
/// A rank that fails leaves the others an error naming it (it is gone, or silent).
pub fn in_process<T: Send>(
    gpus: &[Gpu],
    timeout: Duration,
    rank: impl Fn(&Gpu, &mut dyn Transport) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    let transports = InProcess::ring(gpus.len(), timeout);
    // the browser's wasm32 has no threads (and its devices cannot cross them)
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (transports, rank);
        (0..gpus.len())
            .map(|_| {
                Err(Error::Unsupported {
                    what: "ring::in_process",
                    instead: "its ranks are threads; run it natively",
                })
            })
            .collect()
    }
    #[cfg(not(target_arch = "wasm32"))]
    std::thread::scope(|scope| {
        let handles: Vec<_> = gpus
            .iter()
            .zip(transports)
            .map(|(gpu, mut t)| {
                let rank = &rank;
                scope.spawn(move || rank(gpu, &mut t))
            })
            .collect();
        handles
            .into_iter()
            .enumerate()
            .map(|(r, h)| {
                h.join().unwrap_or_else(|_| Err(Error::Rank { rank: r, message: "panicked".into() }))
            })
            .collect()
    })
}

/// [`in_process`], failing with the root cause when any rank fails (an error that is not
/// another rank's absence or silence).
fn run_ranks<T: Send>(
    gpus: &[Gpu],
    timeout: Duration,
    rank: impl Fn(&Gpu, &mut dyn Transport) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let mut errors: Vec<Error> = Vec::new();
    let mut outs = Vec::new();
    for r in in_process(gpus, timeout, rank) {
        match r {
            Ok(x) => outs.push(x),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        return Ok(outs);
    }
    errors.sort_by_key(is_secondary);
    Err(errors.remove(0))
}

/// Whether `e` only reports another rank's failure (gone, or silent past the timeout).
pub fn is_secondary(e: &Error) -> bool {
    matches!(e, Error::Peer { .. })
}

/// One rank's gradients: per owned chunk dQ `[B, H, n_c, D]`, dK and dV `[B, Hkv, m_c, D]`.
#[derive(Clone, Debug, Default)]
pub struct RankGradients {
    /// dQ per owned chunk.
    pub dq: Vec<Vec<f32>>,
    /// dK per owned chunk.
    pub dk: Vec<Vec<f32>>,
    /// dV per owned chunk.
    pub dv: Vec<Vec<f32>>,
    /// Per step.
    pub steps: Vec<StepStats>,
}

/// The backward on rank `t.rank()`: given its chunks' O and LSE from [`forward`] and dO
/// (per owned chunk, `[B, H, n_c, D]`), passes every block with its dK, dV accumulators
/// around the ring (P steps, then one more shift brings each home); dQ stays.
pub fn backward(
    gpu: &Gpu,
    t: &mut dyn Transport,
    plan: &RingSchedule,
    shard: &Shard,
    fwd: &RankOutput,
    d_o: &[Vec<f32>],
) -> Result<RankGradients> {
    let (r, p) = (t.rank(), t.size());
    agree(t, plan)?;
    let s = plan.spec.shape;
    let d = s.head_dim;
    let mine = plan.owned(r);
    let bh = s.batch * s.heads;
    let merges = Merges::new(gpu)?;
    let pairs = Pairs::new(plan, r, |spec| Backward::new(gpu, spec))?;
    let upload = |label: &str, x: &[f32]| gpu.upload(label, x);
    let mut own = Vec::new();
    for (i, &c) in mine.iter().enumerate() {
        let rows = bh * plan.q_chunks[c].len();
        own.push((
            upload("ring Q", &shard.q[i])?,
            upload("ring O", &fwd.o[i])?,
            upload("ring LSE", &fwd.lse[i])?,
            upload("ring dO", &d_o[i])?,
            upload("ring dQ", &vec![0f32; rows * d])?,
            gpu.storage("ring dQ part", (rows * d).max(1) as u64 * 4)?,
        ));
    }
    let max_kv = plan.k_chunks.iter().map(|k| plan.chunk_len(k.len(), s.kv_heads)).max().unwrap_or(0);
    let kv_bytes = (max_kv.max(1) * 4) as u64;
    let blocks: Vec<[wgpu::Buffer; 6]> = (0..mine.len())
        .map(|_| {
            Ok([
                gpu.storage("ring K block", kv_bytes)?,
                gpu.storage("ring V block", kv_bytes)?,
                gpu.storage("ring dK block", kv_bytes)?,
                gpu.storage("ring dV block", kv_bytes)?,
                gpu.storage("ring dK part", kv_bytes)?,
                gpu.storage("ring dV part", kv_bytes)?,
            ])
        })
        .collect::<Result<_>>()?;
    // the travelling block: K, V, dK, dV of each chunk
    let zeros: Vec<Vec<f32>> = shard.k.iter().map(|k| vec![0f32; k.len()]).collect();
    let mut block = bytes_of(
        &shard.k.iter().chain(&shard.v).chain(&zeros).chain(&zeros).map(Vec::as_slice).collect::<Vec<_>>(),
    );
    let mut steps = Vec::with_capacity(p + 1);
    for step in 0..p {
        let holder = plan.holder_of(r, step);
        let kcs = plan.owned(holder);
        let lens = block_floats(plan, holder);
        let parts = unpack(&block, &lens, 4);
        let mut stat = StepStats::default();
        let mut updated: Vec<u8> = Vec::new();
        let t0 = Instant::now();
        for (i, b) in blocks.iter().enumerate() {
            for (j, buf) in b[..4].iter().enumerate() {
                gpu.queue.write_buffer(buf, 0, bytemuck::cast_slice(&parts[j][i]));
            }
        }
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for (qi, &qc) in mine.iter().enumerate() {
            let (q, o, lse, d_o, dq, dq_part) = &own[qi];
            for (ki, &kc) in kcs.iter().enumerate() {
                let Some((visible, bwd)) = pairs.calls.get(&(qc, kc)) else { continue };
                let b = &blocks[ki];
                let bufs = BackwardBuffers {
                    forward: AttnBuffers { q, k: &b[0], v: &b[1], o, lse },
                    d_o,
                    dq: dq_part,
                    dk: &b[4],
                    dv: &b[5],
                };
                bwd.encode(gpu, &mut enc, &bufs)?;
                merges.add(gpu, &mut enc, dq, dq_part, bh * plan.q_chunks[qc].len() * d)?;
                merges.add(gpu, &mut enc, &b[2], &b[4], lens[ki])?;
                merges.add(gpu, &mut enc, &b[3], &b[5], lens[ki])?;
                stat.pairs += visible;
            }
        }
        gpu.queue.submit([enc.finish()]);
        // the block leaves with its updated gradients
        let mut grads: Vec<Vec<f32>> = Vec::new();
        for j in 2..4 {
            for (i, b) in blocks.iter().enumerate() {
                grads.push(gpu.read(&b[j], lens[i])?);
            }
        }
        let mut tensors: Vec<&[f32]> = parts[0].iter().chain(&parts[1]).map(Vec::as_slice).collect();
        tensors.extend(grads.iter().map(Vec::as_slice));
        updated.extend(bytes_of(&tensors));
        stat.compute_s = t0.elapsed().as_secs_f64();
        // every step passes the block on, the last one home to its owner
        let next = block_floats(plan, plan.holder_of(r, step + 1)).iter().sum::<usize>() * 4 * 4;
        stat.sent = updated.len() as u64;
        let (got, wait) = t.shift(&updated, next, &mut || Ok(()))?;
        stat.wait_s = wait;
        block = got;
        steps.push(stat);
    }
    // home: this rank's own block with every rank's contributions
    let lens = block_floats(plan, r);
    let mut parts = unpack(&block, &lens, 4);
    let mut out = RankGradients { steps, ..Default::default() };
    out.dv = parts.pop().expect("dV");
    out.dk = parts.pop().expect("dK");
    for (qi, &c) in mine.iter().enumerate() {
        out.dq.push(gpu.read(&own[qi].4, bh * plan.q_chunks[c].len() * d)?);
    }
    Ok(out)
}

/// The forward and backward of `plan` on `gpus` (one rank each, threads of this process) for
/// whole tensors: O and LSE, and dQ, dK, dV for the incoming gradient `d_o`.
pub fn ring_backward(
    gpus: &[Gpu],
    plan: &RingSchedule,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_o: &[f32],
    timeout: Duration,
) -> Result<(AttnOutput, Gradients)> {
    plan.spec.check_inputs(q, k, v)?;
    plan.spec.check_grad(d_o)?;
    check_devices(gpus, plan)?;
    let s = plan.spec.shape;
    let d = s.head_dim;
    let outs = run_ranks(gpus, timeout, |gpu, t| {
        let r = t.rank();
        let shard = Shard::of(plan, r, q, k, v);
        let fwd = forward(gpu, t, plan, &shard)?;
        let d_o: Vec<Vec<f32>> = plan
            .owned(r)
            .into_iter()
            .map(|c| take_rows(d_o, s.batch * s.heads, s.n, d, &plan.q_chunks[c]))
            .collect();
        let grads = backward(gpu, t, plan, &shard, &fwd, &d_o)?;
        Ok((fwd, grads))
    })?;
    let mut o = vec![0f32; s.q_len()];
    let mut lse = vec![0f32; s.lse_len()];
    let mut g =
        Gradients { dq: vec![0f32; s.q_len()], dk: vec![0f32; s.kv_len()], dv: vec![0f32; s.kv_len()] };
    let (bh, bkv) = (s.batch * s.heads, s.batch * s.kv_heads);
    for (r, (fwd, grads)) in outs.iter().enumerate() {
        for (i, c) in plan.owned(r).into_iter().enumerate() {
            let (qr, kr) = (&plan.q_chunks[c], &plan.k_chunks[c]);
            put_rows(&mut o, &fwd.o[i], bh, s.n, d, qr);
            put_rows(&mut lse, &fwd.lse[i], bh, s.n, 1, qr);
            put_rows(&mut g.dq, &grads.dq[i], bh, s.n, d, qr);
            put_rows(&mut g.dk, &grads.dk[i], bkv, s.m, d, kr);
            put_rows(&mut g.dv, &grads.dv[i], bkv, s.m, d, kr);
        }
    }
    Ok((AttnOutput { o, lse }, g))
}

/// The sharding `spec` gets by default ([`Sharding::for_spec`]) over `ranks` ranks.
pub fn schedule(spec: &AttnSpec, ranks: usize) -> Result<RingSchedule> {
    RingSchedule::new(spec, ranks, Sharding::for_spec(spec))
}
