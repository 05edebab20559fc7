//! The autotuner: measures candidate configurations per kernel and shape class on the present
//! adapter — each first checked against the oracle, then timed like `bench` — keeps the
//! fastest, and persists it in a JSON cache keyed by adapter, driver, backend and longctx
//! version (`<user cache dir>/longctx/tune.json`). Devices created with
//! [`GpuOptions::tuned`](crate::GpuOptions) use cached winners; a corrupt or stale cache is
//! ignored with a warning.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bench::time_attention;
use crate::error::Result;
use crate::gpu::Gpu;
use crate::kernels::decode::{Decoder, DecoderConfig};
use crate::kernels::flash::FlashConfig;
use crate::kernels::{Attention, DeviceTensors};
use crate::reference::{attention_rows_f64, rel_error};
use crate::spec::{AttnShape, AttnSpec};

/// Winners for one adapter.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Tuned {
    pub adapter: String,
    pub driver: String,
    pub backend: String,
    pub version: String,
    /// `flash:d=64` → (br, bc, p, sg)
    pub flash: BTreeMap<String, [u32; 4]>,
    /// `decode:d=128:group=4` → slots per split
    pub decode: BTreeMap<String, usize>,
}

/// One measured candidate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Candidate {
    pub kernel: String,
    pub config: String,
    pub ms: Option<f64>,
    pub rel_err: Option<f64>,
    pub rejected: Option<String>,
}

pub fn cache_path() -> Option<PathBuf> {
    dirs::cache_dir().map(|d| d.join("longctx").join("tune.json"))
}

fn identity(gpu: &Gpu) -> (String, String, String, String) {
    let i = gpu.info();
    (
        i.name.clone(),
        crate::gpu::driver_of(i),
        format!("{:?}", i.backend),
        env!("CARGO_PKG_VERSION").to_string(),
    )
}

fn read_all() -> Vec<Tuned> {
    let Some(path) = cache_path() else { return Vec::new() };
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            log::warn!("ignoring unreadable tune cache {}: {e}", path.display());
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

/// The cached winners for this adapter, driver, backend and longctx version.
pub fn cached(gpu: &Gpu) -> Option<Tuned> {
    let (a, d, b, v) = identity(gpu);
    read_all().into_iter().find(|t| t.adapter == a && t.driver == d && t.backend == b && t.version == v)
}

/// Stores `tuned`, replacing the entry of the same identity.
pub fn store(tuned: &Tuned) -> Result<()> {
    let Some(path) = cache_path() else { return Ok(()) };
    let mut all = read_all();
    all.retain(|t| {
        !(t.adapter == tuned.adapter
            && t.driver == tuned.driver
            && t.backend == tuned.backend
            && t.version == tuned.version)
    });
    all.push(tuned.clone());
    let err = |e: std::io::Error| crate::Error::File { path: path.clone(), message: e.to_string() };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&all).expect("serialisable")).map_err(err)
}

pub fn flash_key(d: usize) -> String {
    format!("flash:d={d}")
}
pub fn decode_key(d: usize, group: usize) -> String {
    format!("decode:d={d}:group={group}")
}

/// Times flash candidates at `n` tokens (causal), each checked against the oracle on 16 rows.
/// Returns (preset ms, winner, all candidates).
pub fn tune_flash(
    gpu: &Gpu,
    d: usize,
    n: usize,
    reps: usize,
    quick: bool,
) -> Result<(f64, FlashConfig, Vec<Candidate>)> {
    let spec =
        AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 4, n, m: n, head_dim: d }).causal(true);
    let s = spec.shape;
    let fill = |len: usize, salt: u32| {
        (0..len as u32)
            .map(|i| ((i.wrapping_mul(2654435761) ^ salt) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
            .collect::<Vec<f32>>()
    };
    let (q, k, v) = (fill(s.q_len(), 1), fill(s.kv_len(), 2), fill(s.kv_len(), 3));
    let io = DeviceTensors::upload(gpu, &spec, &q, &k, &v)?;
    let rows: Vec<usize> = (0..16).map(|i| i * (s.lse_len() - 1) / 15).collect();
    let want: Vec<f64> =
        attention_rows_f64(&spec, &q, &k, &v, &rows)?.into_iter().flat_map(|r| r.0).collect();
    let preset = FlashConfig::for_device(gpu, d);
    let info = gpu.info();
    let device_sg = if info.subgroup_min_size == info.subgroup_max_size { info.subgroup_min_size } else { 0 };
    let mut configs = vec![preset];
    let brs: &[u32] = if quick { &[64, 128] } else { &[32, 64, 128, 256] };
    for &br in brs {
        for bc in [8, 16, 32] {
            for sg in [0, device_sg] {
                let c = FlashConfig { br, bc, p: FlashConfig::parts_for(d), sg, pass_tiles: 0 }
                    .fit_passes(gpu, d);
                if !configs.contains(&c) {
                    configs.push(c);
                }
            }
        }
    }
    let mut candidates = Vec::new();
    let (mut best, mut best_ms, mut preset_ms) = (preset, f64::INFINITY, f64::NAN);
    for c in configs {
        let label = format!("br={} bc={} p={} sg={}", c.br, c.bc, c.p, c.sg);
        let attempt = (|| -> Result<(f64, f64)> {
            let attn = Attention::flash_with(gpu, &spec, c, false)?;
            let out = attn.run(gpu, &q, &k, &v)?;
            let got: Vec<f32> = rows.iter().flat_map(|&r| out.o[r * d..(r + 1) * d].to_vec()).collect();
            let err = rel_error(&got, &want);
            if err > 1e-5 {
                return Err(crate::Error::Invalid(format!("rel err {err:.2e} against the oracle")));
            }
            Ok((time_attention(gpu, &attn, &[&io], 1, reps)?.median(), err))
        })();
        match attempt {
            Ok((ms, err)) => {
                if c == preset {
                    preset_ms = ms;
                }
                if ms < best_ms {
                    (best, best_ms) = (c, ms);
                }
                candidates.push(Candidate {
                    kernel: "flash".into(),
                    config: label,
                    ms: Some(ms),
                    rel_err: Some(err),
                    rejected: None,
                });
            }
            Err(e) => candidates.push(Candidate {
                kernel: "flash".into(),
                config: label,
                ms: None,
                rel_err: None,
                rejected: Some(e.to_string()),
            }),
        }
    }
    Ok((preset_ms, best, candidates))
}

/// Times decode split sizes for one step over `context` cached positions.
pub fn tune_decode(
    gpu: &Gpu,
    d: usize,
    heads: usize,
    kv_heads: usize,
    context: usize,
    reps: usize,
) -> Result<(f64, usize, Vec<Candidate>)> {
    let preset_chunk = gpu.profile().0.decode_chunk;
    let mut candidates = Vec::new();
    let (mut best, mut best_ms, mut preset_ms) = (preset_chunk, f64::INFINITY, f64::NAN);
    let mut chunks = vec![preset_chunk];
    chunks.extend([128, 256, 512, 1024, 2048].into_iter().filter(|&c| c != preset_chunk));
    let fill = |len: usize| (0..len).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect::<Vec<f32>>();
    let (kc, q, kn) = (fill(kv_heads * context * d), fill(heads * d), fill(kv_heads * d));
    for chunk in chunks {
        let mut cfg = DecoderConfig::new(heads, kv_heads, d, context + reps + 2);
        cfg.chunk = chunk;
        let attempt = (|| -> Result<f64> {
            let mut dec = Decoder::new(gpu, cfg)?;
            dec.prefill(gpu, 0, &kc, &kc)?;
            let mut ms = Vec::new();
            for i in 0..=reps {
                let t0 = std::time::Instant::now();
                dec.step(gpu, 0, &q, &kn, &kn)?;
                gpu.wait()?;
                if i > 0 {
                    ms.push(t0.elapsed().as_secs_f64() * 1e3);
                }
            }
            ms.sort_by(f64::total_cmp);
            Ok(ms[ms.len() / 2])
        })();
        let label = format!("chunk={chunk}");
        match attempt {
            Ok(ms) => {
                if chunk == preset_chunk && preset_ms.is_nan() {
                    preset_ms = ms;
                }
                if ms < best_ms {
                    (best, best_ms) = (chunk, ms);
                }
                candidates.push(Candidate {
                    kernel: "decode".into(),
                    config: label,
                    ms: Some(ms),
                    rel_err: None,
                    rejected: None,
                });
            }
            Err(e) => candidates.push(Candidate {
                kernel: "decode".into(),
                config: label,
                ms: None,
                rel_err: None,
                rejected: Some(e.to_string()),
            }),
        }
    }
    Ok((preset_ms, best, candidates))
}

/// A fresh record for this adapter (to fill and [`store`]).
pub fn new_record(gpu: &Gpu) -> Tuned {
    let (adapter, driver, backend, version) = identity(gpu);
    cached(gpu).unwrap_or(Tuned { adapter, driver, backend, version, ..Default::default() })
}
