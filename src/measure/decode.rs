//! Decode benchmarks: a cache prefilled with a prompt, the first step checked against the
//! f64 oracle, then single-token steps timed on the host clock (each step submits and waits),
//! with the bytes each step moves and their share of the copy probe.

use serde::{Deserialize, Serialize};

use crate::contract::inputs::hashed as fill;
use crate::contract::reference::{attention_f64, rel_error};
use crate::error::{Error, Result};
use crate::kernels::attention::decode::{Decoder, DecoderConfig};
use crate::runtime::Gpu;
use crate::runtime::timing::time_host;

/// One decode benchmark: a decoder laid out as `config` (one layer is measured), a prompt of
/// `context` positions, `steps` timed single-token steps.
#[derive(Clone, Debug)]
pub struct DecodeBench {
    /// The decoder's layout; its capacity must hold the prompt and `steps + 1` steps.
    pub config: DecoderConfig,
    /// Prompt length (positions prefilled before the first step).
    pub context: usize,
    /// Timed steps after the checked first one.
    pub steps: usize,
}

/// What a decode benchmark measured (`longctx decode --json` writes a list of them).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecodeRecord {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (MHA = heads, GQA fewer, MQA 1).
    pub kv_heads: usize,
    /// Head dim.
    pub d: usize,
    /// Prompt length.
    pub context: usize,
    /// Timed steps.
    pub steps: usize,
    /// The ring cache's window, if any.
    pub window: Option<usize>,
    /// ALiBi on.
    pub alibi: bool,
    /// The attention mods' name, if any.
    pub mods: Option<String>,
    /// The positional encoding's name, if any.
    pub positions: Option<String>,
    /// Splits of the cache per step (split-K).
    pub splits: usize,
    /// The attend kernel that ran: `staged` (K/V tiles shared by a kv head's rows) or `lanes`
    /// (an invocation per split and row).
    pub kernel: String,
    /// How steps were timed.
    pub timer: String,
    /// Milliseconds per step: median, fastest, slowest.
    pub ms_per_step_median: f64,
    /// Fastest step.
    pub ms_per_step_min: f64,
    /// Slowest step.
    pub ms_per_step_max: f64,
    /// 1000 / the median.
    pub tokens_per_s: f64,
    /// Bytes of the KV cache.
    pub kv_cache_bytes: u64,
    /// Cache bytes per token.
    pub kv_bytes_per_token: u64,
    /// Bytes a step reads (the traffic model).
    pub bytes_read_per_step: u64,
    /// Bytes a step writes.
    pub bytes_written_per_step: u64,
    /// Bytes moved per second at the median step.
    pub gbps: f64,
    /// `gbps` as a share of the copy probe.
    pub pct_peak_copy: f64,
    /// The first step's error against the f64 oracle; NaN where the oracle cannot follow (a
    /// ring cache forgets what it would need; a mod from a file has no Rust rule).
    pub rel_err_first_step: f64,
    /// Adapter name.
    pub adapter: String,
    /// Driver.
    pub driver: String,
    /// The build's commit.
    pub git_commit: String,
    /// When it ran (RFC 3339).
    pub timestamp: String,
}

impl DecodeBench {
    /// Prefills, checks the first step against the oracle, times `steps` more; `copy_gbps` is
    /// the copy probe's reading the bandwidth is compared with.
    pub fn run(&self, gpu: &Gpu, copy_gbps: f64) -> Result<DecodeRecord> {
        let cfg = &self.config;
        let (h, hkv, d, context) = (cfg.heads, cfg.kv_heads, cfg.head_dim, self.context);
        let mut dec = Decoder::new(gpu, cfg.clone())?;
        // the prompt's K and V on the host, plus the oracle's joined copies: checked first
        let floats = (hkv as u64).saturating_mul(context as u64).saturating_mul(d as u64);
        crate::runtime::host::check_bytes(
            "the prompt's K and V and the oracle's copies",
            floats.saturating_mul(16),
        )?;
        let per_head = context
            .checked_mul(d)
            .ok_or_else(|| Error::Invalid(format!("context {context} × d {d} overflows")))?;
        let (k, v) = (fill(hkv * per_head, 1), fill(hkv * per_head, 2));
        dec.prefill(gpu, 0, &k, &v)?;
        gpu.wait()?;
        let step_inputs = |step: usize| {
            let salt = step as u32;
            (fill(h * d, 3 + salt), fill(hkv * d, 1000 + salt), fill(hkv * d, 2000 + salt))
        };
        // the first step (also the warm-up) is checked against the oracle
        let (q, kn, vn) = step_inputs(0);
        dec.step(gpu, 0, &q, &kn, &vn)?;
        gpu.wait()?;
        let mut err = f64::NAN;
        if cfg.window.is_none() && cfg.mods.as_ref().is_none_or(|m| m.rule().is_some()) {
            let out = dec.output(gpu)?;
            let join = |cache: &[f32], new: &[f32]| -> Vec<f32> {
                (0..hkv)
                    .flat_map(|g| {
                        [&cache[g * per_head..(g + 1) * per_head], &new[g * d..(g + 1) * d]].concat()
                    })
                    .collect()
            };
            let (o_ref, _) = attention_f64(&dec.equivalent_spec(0), &q, &join(&k, &kn), &join(&v, &vn))?;
            err = rel_error(&out.o, &o_ref);
        }
        let t = time_host(0, self.steps, |i| {
            let (q, kn, vn) = step_inputs(i + 1);
            dec.step(gpu, 0, &q, &kn, &vn)?;
            gpu.wait()
        })?;
        let traffic = dec.step_traffic();
        let ms = t.median();
        let gbps = traffic.total() as f64 / (ms * 1e-3) / 1e9;
        let info = gpu.info();
        Ok(DecodeRecord {
            heads: h,
            kv_heads: hkv,
            d,
            context,
            steps: self.steps,
            window: cfg.window,
            alibi: cfg.alibi != crate::Alibi::Off,
            mods: cfg.mods.as_ref().map(|m| m.name().to_string()),
            positions: cfg.positions.map(|p| p.name()),
            splits: dec.splits(),
            kernel: dec.kernel().name().into(),
            timer: "wall (submit to idle, per step)".into(),
            ms_per_step_median: ms,
            ms_per_step_min: t.min(),
            ms_per_step_max: t.max(),
            tokens_per_s: 1e3 / ms,
            kv_cache_bytes: dec.cache().bytes(),
            kv_bytes_per_token: cfg.bytes_per_token(),
            bytes_read_per_step: traffic.read,
            bytes_written_per_step: traffic.written,
            gbps,
            pct_peak_copy: 100.0 * gbps / copy_gbps,
            rel_err_first_step: err,
            adapter: info.name.clone(),
            driver: crate::runtime::driver_of(info),
            git_commit: crate::GIT_COMMIT.into(),
            timestamp: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        })
    }
}
