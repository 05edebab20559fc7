//! The autotuner: measures candidate configurations per kernel and shape class on the present
//! adapter — every candidate of every kernel first checked against the f64 oracle, then
//! timed with the runtime's timing — keeps the fastest that passed, and stores it as a
//! [`Tuned`] winner under the kernel's own key. The runtime persists winners per adapter,
//! driver, backend and longctx version ([`Tuned::store`]); devices created with
//! [`GpuOptions::tuned`](crate::GpuOptions) set (as the CLI sets it) or given
//! [`Gpu::with_cached_tuning`](crate::Gpu::with_cached_tuning) use them.

use serde::Serialize;

use crate::contract::inputs::hashed;
use crate::contract::reference::{attention_rows_f64, rel_error};
use crate::contract::spec::{AttnShape, AttnSpec};
use crate::error::{Error, Result};
use crate::kernels::attention::decode::{Decoder, DecoderConfig};
use crate::kernels::attention::flash::FlashConfig;
use crate::kernels::{Attention, DeviceTensors};
use crate::measure::bench::time_attention;
use crate::runtime::timing::time_host;
use crate::runtime::{Gpu, Tuned};

/// Largest relative error against the oracle a candidate may show and still be timed.
pub const MAX_REL_ERR: f64 = 1e-5;

/// One measured candidate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    /// The kernel (`flash`, `decode`).
    pub kernel: String,
    /// Its configuration, for people.
    pub config: String,
    /// Median milliseconds, when it passed the oracle check and ran.
    pub ms: Option<f64>,
    /// Relative error against the oracle.
    pub rel_err: Option<f64>,
    /// Why it was not timed.
    pub rejected: Option<String>,
}

/// The outcome of tuning one kernel: the preset's time, the winner, every candidate.
#[derive(Clone, Debug)]
pub struct Outcome<C> {
    /// Median ms of the preset (NaN when the preset itself failed).
    pub preset_ms: f64,
    /// The fastest candidate that passed the oracle check (`None`: none passed).
    pub winner: Option<(C, f64)>,
    /// Every candidate, passed or rejected.
    pub candidates: Vec<Candidate>,
}

/// Checks then times each configuration; the fastest checked one wins.
fn race<C: Copy + PartialEq>(
    kernel: &str,
    preset: C,
    configs: Vec<C>,
    label: impl Fn(&C) -> String,
    mut attempt: impl FnMut(C) -> Result<(f64, f64)>,
) -> Outcome<C> {
    let mut out = Outcome { preset_ms: f64::NAN, winner: None, candidates: Vec::new() };
    for c in configs {
        let (ms, rel_err, rejected) = match attempt(c) {
            Ok((ms, err)) => (Some(ms), Some(err), None),
            Err(e) => (None, None, Some(e.to_string())),
        };
        if let Some(ms) = ms {
            if c == preset && out.preset_ms.is_nan() {
                out.preset_ms = ms;
            }
            if out.winner.is_none_or(|(_, best)| ms < best) {
                out.winner = Some((c, ms));
            }
        }
        out.candidates.push(Candidate { kernel: kernel.into(), config: label(&c), ms, rel_err, rejected });
    }
    out
}

/// The error of `got` against `want`, refused above [`MAX_REL_ERR`].
fn checked(got: &[f32], want: &[f64]) -> Result<f64> {
    let err = rel_error(got, want);
    if err.is_finite() && err <= MAX_REL_ERR {
        Ok(err)
    } else {
        Err(Error::Inaccurate { what: "the candidate's output".into(), rel_err: err, bound: MAX_REL_ERR })
    }
}

/// Times flash candidates at `n` tokens (causal), each checked against the oracle on 16 rows.
/// Returns (preset ms, winner, all candidates).
pub fn tune_flash(gpu: &Gpu, d: usize, n: usize, reps: usize, quick: bool) -> Result<Outcome<FlashConfig>> {
    let spec =
        AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 4, n, m: n, head_dim: d }).causal(true);
    spec.validate()?;
    let s = spec.shape;
    // host copies of Q, K, V and the output read back, checked before any is allocated
    let floats = (s.q_len() as u64).saturating_mul(2).saturating_add((s.kv_len() as u64).saturating_mul(2));
    crate::runtime::host::check_bytes("flash tuning's inputs and outputs", floats.saturating_mul(4))?;
    let (q, k, v) = (hashed(s.q_len(), 1), hashed(s.kv_len(), 2), hashed(s.kv_len(), 3));
    let io = DeviceTensors::upload(gpu, &spec, &q, &k, &v)?;
    let rows: Vec<usize> = (0..16).map(|i| i * (s.lse_len() - 1) / 15).collect();
    let want: Vec<f64> =
        attention_rows_f64(&spec, &q, &k, &v, &rows)?.into_iter().flat_map(|r| r.0).collect();
    let preset = FlashConfig::for_device(gpu, d);
    let device_sg = gpu.fixed_subgroup().unwrap_or(0);
    let mut configs = vec![preset];
    let brs: &[u32] = if quick { &[64, 128] } else { &[32, 64, 128, 256] };
    for &br in brs {
        for bc in [8, 16, 32] {
            for sg in [0, device_sg] {
                let c = FlashConfig { br, bc, p: FlashConfig::parts_for(d), sg, pass_tiles: 0, coop: None }
                    .fit_passes(gpu, d);
                if !configs.contains(&c) {
                    configs.push(c);
                }
            }
        }
    }
    let label = |c: &FlashConfig| format!("br={} bc={} p={} sg={}", c.br, c.bc, c.p, c.sg);
    Ok(race("flash", preset, configs, label, |c| {
        let attn = Attention::builder(&spec).tiles(c).build(gpu)?;
        let out = attn.run(gpu, &q, &k, &v)?;
        let got: Vec<f32> = rows.iter().flat_map(|&r| out.o[r * d..(r + 1) * d].to_vec()).collect();
        let err = checked(&got, &want)?;
        Ok((time_attention(gpu, &attn, &[&io], 1, reps)?.median(), err))
    }))
}

/// Times decode split sizes for one step over `context` cached positions, each first
/// checked against the oracle (the step's output for every query head).
pub fn tune_decode(
    gpu: &Gpu,
    d: usize,
    heads: usize,
    kv_heads: usize,
    context: usize,
    reps: usize,
) -> Result<Outcome<usize>> {
    // the cache twice on the host (prefill and the oracle's copy), checked before allocating
    let cache = (kv_heads as u64).saturating_mul(context as u64).saturating_mul(d as u64);
    crate::runtime::host::check_bytes("decode tuning's cache and oracle copy", cache.saturating_mul(8))?;
    if context == 0 || heads == 0 || kv_heads == 0 || d == 0 {
        return Err(crate::error::Error::Empty {
            what: "decode tuning (heads, kv heads, context, D)".into(),
            shape: vec![heads, kv_heads, context, d],
        });
    }
    let preset = gpu.profile().0.decode_chunk;
    let mut chunks = vec![preset];
    chunks.extend([128, 256, 512, 1024, 2048].into_iter().filter(|&c| c != preset));
    let (kc, q, kn) = (hashed(kv_heads * context * d, 1), hashed(heads * d, 2), hashed(kv_heads * d, 3));
    // the oracle: one query row per head against the prefilled cache plus the new key
    let spec = AttnSpec::new(AttnShape { batch: 1, heads, kv_heads, n: 1, m: context + 1, head_dim: d });
    let with_new = |cache: &[f32]| -> Vec<f32> {
        (0..kv_heads)
            .flat_map(|h| {
                let old = &cache[h * context * d..(h + 1) * context * d];
                old.iter().chain(&kn[h * d..(h + 1) * d]).copied().collect::<Vec<f32>>()
            })
            .collect()
    };
    let kv = with_new(&kc);
    let rows: Vec<usize> = (0..heads).collect();
    let want: Vec<f64> =
        attention_rows_f64(&spec, &q, &kv, &kv, &rows)?.into_iter().flat_map(|r| r.0).collect();
    Ok(race(
        "decode",
        preset,
        chunks,
        |c| format!("chunk={c}"),
        |chunk| {
            let mut cfg = DecoderConfig::new(heads, kv_heads, d, context + reps + 2);
            cfg.chunk = chunk;
            let mut dec = Decoder::new(gpu, cfg)?;
            dec.prefill(gpu, 0, &kc, &kc)?;
            dec.step(gpu, 0, &q, &kn, &kn)?;
            let err = checked(&dec.output(gpu)?.o, &want)?;
            // later steps append more keys: timing only
            let t = time_host(1, reps, |_| {
                dec.step(gpu, 0, &q, &kn, &kn)?;
                gpu.wait()
            })?;
            Ok((t.median(), err))
        },
    ))
}

/// A fresh record for this adapter: its cached winners, to add to and [`Tuned::store`].
pub fn new_record(gpu: &Gpu) -> Tuned {
    Tuned::cached(gpu.info()).unwrap_or_else(|| Tuned::for_adapter(gpu.info()))
}
