//! Serving-decode benchmarks (`longctx decode --paged`): in one run, the contiguous cache's
//! step against the paged cache's at the same context in each KV format, and a batch of
//! sequences of different lengths decoded in one step against the same sequences' steps one
//! at a time. Each paged configuration's first step is checked against the f64 oracle twice:
//! on what the cache holds (read back and decoded: the kernel's error) and on the K and V
//! given (the format's error). And prompts started three ways: packed into one flash call
//! (each token sees its own sequence), padded to the longest into one batched causal call,
//! and a call each.

use serde::{Deserialize, Serialize};

use crate::contract::AttnShape;
use crate::contract::inputs::hashed as fill;
use crate::contract::paged::{KvFormat, SeqStep, Tree, step_f64};
use crate::contract::reference::rel_error;
use crate::contract::spec::AttnSpec;
use crate::error::{Error, Result};
use crate::kernels::attention::decode::{DecodeKernel, Decoder, DecoderConfig};
use crate::kernels::attention::packed::{Packed, packed_f64};
use crate::kernels::attention::paged::{PagedConfig, PagedDecoder, SeqId};
use crate::kernels::attention::{Attention, DeviceTensors, Kernel};
use crate::runtime::Gpu;

/// What to measure.
#[derive(Clone, Debug)]
pub struct PagedBench {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dim.
    pub head_dim: usize,
    /// Cached positions before the timed steps.
    pub context: usize,
    /// Slots per page.
    pub page: usize,
    /// Timed single-token steps per configuration.
    pub steps: usize,
    /// The formats of the paged cache (K and V alike).
    pub formats: Vec<KvFormat>,
    /// The lengths of the batch's sequences (empty: no batch comparison).
    pub batch: Vec<usize>,
}

/// One timed configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PagedRecord {
    /// `contiguous (staged)`, `contiguous (lanes)`, `paged f32`, `batch of 8`, ….
    pub what: String,
    /// The KV format.
    pub format: String,
    /// Sequences per step.
    pub seqs: usize,
    /// Splits of the cache per step (each sequence's, summed).
    pub splits: usize,
    /// Cached positions, all sequences.
    pub context: usize,
    /// Milliseconds per step (all its sequences): median.
    pub ms_per_step: f64,
    /// Tokens decoded per second (sequences × steps / time).
    pub tokens_per_s: f64,
    /// Device bytes per cached token, K and V.
    pub bytes_per_token: u64,
    /// The first step against the oracle on what the cache holds (the kernel's error).
    pub rel_err_kernel: f64,
    /// The first step against the oracle on the K and V given (the format's error).
    pub rel_err_given: f64,
}

/// One way of starting prompts, timed (`longctx decode --paged --prefill`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrefillRecord {
    /// `packed`, `padded to the longest`, `a call each`.
    pub what: String,
    /// Attention calls per prefill.
    pub calls: usize,
    /// Query rows computed, padding included.
    pub rows: usize,
    /// Visible (query, key) pairs computed, all heads: the work.
    pub pairs: u64,
    /// Milliseconds per prefill (every layer's one attention): median.
    pub ms: f64,
    /// Prompt tokens per second (padding not counted).
    pub tokens_per_s: f64,
    /// Against the f64 oracle (each sequence alone) on the sequences of at most
    /// [`PREFILL_ORACLE_ROWS`] tokens; NaN when none is that short.
    pub rel_err: f64,
    /// Against the packed call's output, every prompt row.
    pub rel_err_packed: f64,
}

/// The longest sequence the prefill comparison checks against the f64 oracle (its cost is
/// the square of the length).
pub const PREFILL_ORACLE_ROWS: usize = 1024;

/// One timed step of a configuration (the step's index in; the queue idle when it returns).
type Step<'a> = Box<dyn FnMut(usize) -> Result<()> + 'a>;

impl PagedRecord {
    /// A configuration's record before it is timed: `seqs` = (sequences, splits summed),
    /// `errors` = (on the cache as stored, on the K and V given).
    fn untimed(
        what: String,
        format: KvFormat,
        seqs: (usize, usize),
        context: usize,
        bytes_per_token: u64,
        errors: (f64, f64),
    ) -> Self {
        Self {
            what,
            format: format.name().into(),
            seqs: seqs.0,
            splits: seqs.1,
            context,
            ms_per_step: f64::NAN,
            tokens_per_s: f64::NAN,
            bytes_per_token,
            rel_err_kernel: errors.0,
            rel_err_given: errors.1,
        }
    }
}

/// A single-token chain for every sequence.
fn one_each(ids: &[SeqId]) -> Vec<(SeqId, Tree)> {
    ids.iter().map(|&id| (id, Tree::chain(1))).collect()
}

impl PagedBench {
    fn paged_config(&self, format: KvFormat, slots: usize, seqs: usize) -> PagedConfig {
        let mut c = PagedConfig::new(self.heads, self.kv_heads, self.head_dim, 0);
        c.page = self.page;
        c.pages = slots.div_ceil(self.page) + seqs;
        c.k_format = format;
        c.v_format = format;
        c.max_seqs = seqs;
        c.max_tokens = seqs;
        c
    }

    /// The prompt of sequence `s`: K and V `[n, Hkv, D]`.
    fn prompt(&self, n: usize, s: u32) -> Result<(Vec<f32>, Vec<f32>)> {
        let floats = n
            .checked_mul(self.kv_heads * self.head_dim)
            .ok_or_else(|| Error::Invalid(format!("a prompt of {n} positions overflows")))?;
        crate::runtime::host::check_bytes("the prompts' K and V", floats as u64 * 8)?;
        Ok((fill(floats, 10 + 2 * s), fill(floats, 11 + 2 * s)))
    }

    /// Q, K, V of step `i` for `seqs` sequences (one token each).
    fn step_inputs(&self, i: usize, seqs: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (h, hkv, d) = (self.heads, self.kv_heads, self.head_dim);
        let salt = 1000 + 3 * i as u32;
        (fill(seqs * h * d, salt), fill(seqs * hkv * d, salt + 1), fill(seqs * hkv * d, salt + 2))
    }

    /// The contiguous decoder with `kernel`, prefilled with the context and past its first
    /// step, and its record with the time left out.
    fn contiguous(&self, gpu: &Gpu, kernel: DecodeKernel) -> Result<(Decoder, PagedRecord)> {
        let (h, hkv, d) = (self.heads, self.kv_heads, self.head_dim);
        let mut cfg = DecoderConfig::new(h, hkv, d, self.context + self.steps + 2);
        cfg.kernel = kernel;
        let mut dec = Decoder::new(gpu, cfg.clone())?;
        let (k, v) = self.prompt(self.context, 0)?;
        // the decoder takes [Hkv, T, D]
        let heads_first = |x: &[f32]| -> Vec<f32> {
            (0..hkv)
                .flat_map(|g| (0..self.context).flat_map(move |t| x[(t * hkv + g) * d..][..d].to_vec()))
                .collect()
        };
        dec.prefill(gpu, 0, &heads_first(&k), &heads_first(&v))?;
        let (q, kn, vn) = self.step_inputs(0, 1);
        dec.step(gpu, 0, &q, &kn, &vn)?;
        gpu.wait()?;
        let what = format!("contiguous ({})", dec.kernel().name());
        let record = PagedRecord::untimed(
            what,
            KvFormat::F32,
            (1, dec.splits()),
            self.context,
            cfg.bytes_per_token(),
            (f64::NAN, f64::NAN),
        );
        Ok((dec, record))
    }

    /// A paged decoder in `format` holding `lens` prompts; checks its first step (all
    /// sequences at once) against the oracle.
    fn paged(
        &self,
        gpu: &Gpu,
        format: KvFormat,
        lens: &[usize],
    ) -> Result<(PagedDecoder, Vec<SeqId>, f64, f64)> {
        let slots: usize = lens.iter().map(|n| n + self.steps + 2).sum();
        let cfg = self.paged_config(format, slots, lens.len());
        let mut dec = PagedDecoder::new(gpu, cfg.clone())?;
        let mut given = Vec::new();
        let mut ids = Vec::new();
        for (s, &n) in lens.iter().enumerate() {
            let id = dec.add();
            let (k, v) = self.prompt(n, s as u32)?;
            dec.prefill(gpu, id, &[(&k, &v)])?;
            ids.push(id);
            given.push((k, v));
        }
        let (h, hkv, d) = (self.heads, self.kv_heads, self.head_dim);
        let (q, kn, vn) = self.step_inputs(0, lens.len());
        dec.begin(gpu, &one_each(&ids))?;
        dec.attend(gpu, 0, &q, &kn, &vn)?;
        let out = dec.output(gpu)?;
        let rule = cfg.rule();
        let chain = Tree::chain(1);
        let (mut kernel, mut format_err) = (0f64, 0f64);
        for (s, (&id, (k, v))) in ids.iter().zip(&given).enumerate() {
            let q = &q[s * h * d..][..h * d];
            let got = &out.o[s * h * d..][..h * d];
            let (ck, cv) = dec.read_cache(gpu, 0, id)?;
            let (o, _) = step_f64(&rule, &SeqStep { keys: &ck, values: &cv, queries: q, tree: &chain });
            kernel = kernel.max(rel_error(got, &o));
            let keys = [k.as_slice(), &kn[s * hkv * d..][..hkv * d]].concat();
            let values = [v.as_slice(), &vn[s * hkv * d..][..hkv * d]].concat();
            let (o, _) = step_f64(&rule, &SeqStep { keys: &keys, values: &values, queries: q, tree: &chain });
            format_err = format_err.max(rel_error(got, &o));
        }
        Ok((dec, ids, kernel, format_err))
    }

    /// A single-token step of every sequence of `dec`: all in one step (`together`), or a
    /// step each, submitted back to back and waited for once.
    fn paged_step<'a>(
        &'a self,
        gpu: &'a Gpu,
        mut dec: PagedDecoder,
        ids: Vec<SeqId>,
        together: bool,
    ) -> Step<'a> {
        let (h, hkv, d, n) = (self.heads, self.kv_heads, self.head_dim, ids.len());
        Box::new(move |i| {
            let (q, kn, vn) = self.step_inputs(i, n);
            if together {
                dec.begin(gpu, &one_each(&ids))?;
                dec.attend(gpu, 0, &q, &kn, &vn)?;
            } else {
                for (s, &id) in ids.iter().enumerate() {
                    dec.begin(gpu, &[(id, Tree::chain(1))])?;
                    let at = |x: &[f32], w: usize| x[s * w * d..][..w * d].to_vec();
                    dec.attend(gpu, 0, &at(&q, h), &at(&kn, hkv), &at(&vn, hkv))?;
                }
            }
            gpu.wait()
        })
    }

    /// Prompts of `lens` tokens started three ways, each one attention call's work of a layer
    /// (Q, K, V already on the device, `[·, H, ·, D]`): packed into one flash call, padded
    /// to the longest into one causal call of a batch, and a causal call each (recorded into
    /// one submission). Every output is checked first — the packed one against the oracle on
    /// the short sequences, the others against the packed one on every row —, then the three
    /// are timed in `reps` interleaved rounds; medians.
    pub fn prefill(&self, gpu: &Gpu, lens: &[usize], reps: usize) -> Result<Vec<PrefillRecord>> {
        let (h, hkv, d) = (self.heads, self.kv_heads, self.head_dim);
        let packed =
            Packed { lens: lens.to_vec(), heads: h, kv_heads: hkv, head_dim: d, alibi: Default::default() };
        let t = packed.tokens()?;
        let longest = lens.iter().copied().max().unwrap_or(0);
        let padded_rows =
            longest.checked_mul(lens.len()).ok_or_else(|| Error::Invalid("padded rows overflow".into()))?;
        crate::runtime::host::check_bytes(
            "the prompts' Q, K, V",
            (padded_rows * (h + 2 * hkv) * d) as u64 * 8,
        )?;
        // token-major prompts, the way a model holds them
        let (q, k, v) = (fill(t * h * d, 21), fill(t * hkv * d, 22), fill(t * hkv * d, 23));
        let seq = |x: &[f32], heads: usize, s: usize| -> Vec<f32> {
            let start: usize = lens[..s].iter().sum();
            x[start * heads * d..(start + lens[s]) * heads * d].to_vec()
        };
        // [n, heads, D] → [heads, n, D], padded with zeros to `rows`
        let head_major = |x: &[f32], heads: usize, n: usize, rows: usize| -> Vec<f32> {
            let mut out = vec![0.0; heads * rows * d];
            for (i, r) in x.chunks_exact(d).enumerate() {
                out[((i % heads) * rows + i / heads) * d..][..d].copy_from_slice(r);
            }
            debug_assert_eq!(x.len(), n * heads * d);
            out
        };
        let causal = |batch: usize, n: usize| {
            let mut shape = AttnShape::mha(batch, h, n, n, d);
            shape.kv_heads = hkv;
            AttnSpec::new(shape).causal(true)
        };
        // (name, calls, rows, pairs, prepared calls with their tensors), in the order
        // packed, padded, a call each
        type Call = (Attention, DeviceTensors);
        let tri = |n: usize| (n * (n + 1) / 2) as u64 * h as u64;
        let mut ways: Vec<(&str, usize, usize, u64, Vec<Call>)> = Vec::new();
        let spec = packed.spec()?;
        let whole = |x: &[f32], heads: usize| head_major(x, heads, t, t);
        let io = DeviceTensors::upload(gpu, &spec, &whole(&q, h), &whole(&k, hkv), &whole(&v, hkv))?;
        let work: u64 = lens.iter().map(|&n| tri(n)).sum();
        ways.push((
            "packed (one call, segments)",
            1,
            t,
            work,
            vec![(Attention::new(gpu, Kernel::Flash, &spec)?, io)],
        ));
        let spec = causal(lens.len(), longest);
        let batch = |x: &[f32], heads: usize| -> Vec<f32> {
            (0..lens.len()).flat_map(|s| head_major(&seq(x, heads, s), heads, lens[s], longest)).collect()
        };
        let io = DeviceTensors::upload(gpu, &spec, &batch(&q, h), &batch(&k, hkv), &batch(&v, hkv))?;
        ways.push((
            "padded to the longest",
            1,
            padded_rows,
            tri(longest) * lens.len() as u64,
            vec![(Attention::new(gpu, Kernel::Flash, &spec)?, io)],
        ));
        let mut each = Vec::with_capacity(lens.len());
        for (s, &n) in lens.iter().enumerate() {
            let spec = causal(1, n);
            let part = |x: &[f32], heads: usize| head_major(&seq(x, heads, s), heads, n, n);
            let io = DeviceTensors::upload(gpu, &spec, &part(&q, h), &part(&k, hkv), &part(&v, hkv))?;
            each.push((Attention::new(gpu, Kernel::Flash, &spec)?, io));
        }
        ways.push(("a call each", lens.len(), t, work, each));
        // every way's output, token-major over the prompt rows: call c's O is [B, H, R, D]
        // with its batch entries' first rows the prompts'
        let layout = |way: usize, c: usize| -> (usize, Vec<usize>) {
            match way {
                0 => (t, vec![t]),
                1 => (longest, lens.to_vec()),
                _ => (lens[c], vec![lens[c]]),
            }
        };
        let mut outputs = Vec::new();
        for (way, (_, _, _, _, calls)) in ways.iter().enumerate() {
            let mut o = Vec::with_capacity(t * h * d);
            for (c, (attn, io)) in calls.iter().enumerate() {
                io.poison(gpu);
                let out = attn.run_on(gpu, io)?;
                let (rows, entries) = layout(way, c);
                for (b, &n) in entries.iter().enumerate() {
                    for i in 0..n {
                        for head in 0..h {
                            o.extend_from_slice(&out.o[((b * h + head) * rows + i) * d..][..d]);
                        }
                    }
                }
            }
            outputs.push(o);
        }
        // the oracle on the short sequences
        let short: Vec<usize> = (0..lens.len()).filter(|&s| lens[s] <= PREFILL_ORACLE_ROWS).collect();
        let oracle = if short.is_empty() {
            None
        } else {
            let sub = Packed { lens: short.iter().map(|&s| lens[s]).collect(), ..packed.clone() };
            let pick = |x: &[f32], heads: usize| -> Vec<f32> {
                short.iter().flat_map(|&s| seq(x, heads, s)).collect()
            };
            Some(packed_f64(&sub, &pick(&q, h), &pick(&k, hkv), &pick(&v, hkv))?.0)
        };
        let reference: Vec<f64> = outputs[0].iter().map(|&x| x as f64).collect();
        let mut records = Vec::new();
        for ((name, calls, rows, pairs, _), o) in ways.iter().zip(&outputs) {
            let rel_err = oracle.as_ref().map_or(f64::NAN, |want| {
                let got: Vec<f32> = short.iter().flat_map(|&s| seq(o, h, s)).collect();
                rel_error(&got, want)
            });
            records.push(PrefillRecord {
                what: (*name).into(),
                calls: *calls,
                rows: *rows,
                pairs: *pairs,
                ms: f64::NAN,
                tokens_per_s: f64::NAN,
                rel_err,
                rel_err_packed: rel_error(o, &reference),
            });
        }
        let mut samples = vec![Vec::with_capacity(reps); ways.len()];
        for _ in 0..reps.max(1) {
            for ((_, _, _, _, calls), s) in ways.iter().zip(&mut samples) {
                let t0 = web_time::Instant::now();
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                for (attn, io) in calls {
                    attn.encode(gpu, &mut enc, &io.buffers())?;
                }
                gpu.queue.submit([enc.finish()]);
                gpu.wait()?;
                s.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        for (r, samples_ms) in records.iter_mut().zip(samples) {
            r.ms = crate::runtime::timing::Timing { samples_ms, timer: "wall" }.median();
            r.tokens_per_s = t as f64 * 1e3 / r.ms;
        }
        Ok(records)
    }

    /// Every configuration, in one run: the contiguous cache (the profile's kernel, and the
    /// lanes kernel), the paged cache in each format, the batch in one step and its sequences
    /// a step each (submitted back to back, waited for once). All are built and checked
    /// first, then timed in rounds — one step of each per round — so that the machine's
    /// drift falls on all of them alike; each reports its median.
    pub fn run(&self, gpu: &Gpu) -> Result<Vec<PagedRecord>> {
        let mut runs: Vec<(PagedRecord, usize, Step)> = Vec::new();
        let mut kernels = Vec::new();
        for kernel in [DecodeKernel::Auto, DecodeKernel::Lanes] {
            let (mut dec, record) = self.contiguous(gpu, kernel)?;
            if kernel == DecodeKernel::Lanes && kernels.contains(&dec.kernel()) {
                continue;
            }
            kernels.push(dec.kernel());
            let step: Step = Box::new(move |i| {
                let (q, kn, vn) = self.step_inputs(i, 1);
                dec.step(gpu, 0, &q, &kn, &vn)?;
                gpu.wait()
            });
            runs.push((record, 1, step));
        }
        for &f in &self.formats {
            let (dec, ids, kernel, given) = self.paged(gpu, f, &[self.context])?;
            let what = format!("paged {} ({})", f.name(), dec.kernel().name());
            let seqs = (1, dec.splits().iter().sum());
            let record = PagedRecord::untimed(
                what,
                f,
                seqs,
                self.context,
                dec.config().bytes_per_token(),
                (kernel, given),
            );
            runs.push((record, 1, self.paged_step(gpu, dec, ids, true)));
        }
        if !self.batch.is_empty() {
            let n = self.batch.len();
            let context = self.batch.iter().sum();
            // two decoders holding the same sequences: one steps them together, one apart
            for together in [true, false] {
                let (dec, ids, kernel, given) = self.paged(gpu, KvFormat::F32, &self.batch)?;
                let what = if together {
                    format!("batch of {n}, one step")
                } else {
                    format!("batch of {n}, a step each")
                };
                let seqs = (n, dec.splits().iter().sum());
                let record = PagedRecord::untimed(
                    what,
                    KvFormat::F32,
                    seqs,
                    context,
                    dec.config().bytes_per_token(),
                    (kernel, given),
                );
                runs.push((record, n, self.paged_step(gpu, dec, ids, together)));
            }
        }
        let mut samples = vec![Vec::with_capacity(self.steps); runs.len()];
        for i in 0..self.steps {
            for ((_, _, step), s) in runs.iter_mut().zip(&mut samples) {
                let t0 = web_time::Instant::now();
                step(i + 1)?;
                s.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(runs
            .into_iter()
            .zip(samples)
            .map(|((mut r, tokens, _), samples_ms)| {
                let ms = crate::runtime::timing::Timing { samples_ms, timer: "wall" }.median();
                r.ms_per_step = ms;
                r.tokens_per_s = tokens as f64 * 1e3 / ms;
                r
            })
            .collect())
    }
}
