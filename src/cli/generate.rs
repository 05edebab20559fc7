//! `longctx generate`: text from a trained checkpoint over the paged (optionally quantised)
//! KV cache — one prompt printed as it grows, several decoded together, or speculative
//! decoding with a smaller draft checkpoint.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use longctx::contract::paged::KvFormat;
use longctx::models::generate::{CacheLayout, Generator, Sampling, SpecStats, kv_format_errors, speculate};
use longctx::models::training::Checkpoint;
use rand::SeedableRng;

use super::DeviceArgs;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
The model reads bytes: the prompt is its UTF-8 bytes, the output bytes printed as they come
(invalid UTF-8 shown with replacement characters). Attention runs on the GPU over the paged
cache (one dispatch per layer for every sequence); the projections and FFN of these small
models on the host. tokens/s counts generated tokens after the prompt.

Examples:
  longctx generate --checkpoint runs/alibi512-dense/checkpoint.safetensors --prompt 'In the beginning'
  longctx generate --checkpoint C --kv int8 --batch-prompts prompts.txt --tokens 100
  longctx generate --checkpoint C --draft D --draft-tokens 4 --prompt 'And God said'")]
pub struct GenerateArgs {
    /// A checkpoint written by `longctx train` (dense attention).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The prompt (ignored with --batch-prompts).
    #[arg(long, default_value = "In the beginning")]
    prompt: String,
    /// Tokens to generate per prompt.
    #[arg(long, default_value_t = 200, value_parser = super::positive)]
    tokens: usize,
    /// Sampling temperature (0: the most likely byte).
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Nucleus sampling: the smallest set of bytes whose probability reaches P.
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    /// Random seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// KV cache format: f32, int8 or int4.
    #[arg(long, default_value = "f32")]
    kv: String,
    /// Slots per KV page.
    #[arg(long, default_value_t = 64, value_parser = super::positive)]
    page: usize,
    /// A file with one prompt per line, decoded together.
    #[arg(long)]
    batch_prompts: Option<PathBuf>,
    /// A smaller checkpoint drafting tokens for greedy speculative decoding (needs
    /// --temperature 0).
    #[arg(long)]
    draft: Option<PathBuf>,
    /// Tokens the draft proposes per verification step.
    #[arg(long, default_value_t = 4, value_parser = super::positive)]
    draft_tokens: usize,
    /// After generating, feed the prompt and the text again through an f32 cache and through
    /// int8 and int4 caches, a token a step, and print the distribution of the attention
    /// outputs' relative errors (per token, layer and head) against the f32 cache's.
    #[arg(long)]
    kv_error: bool,
}

/// The most prompts decoded together.
const MAX_PROMPTS: usize = 64;

fn bytes(text: &str) -> Vec<u32> {
    text.bytes().map(u32::from).collect()
}

fn text(tokens: &[u32]) -> String {
    String::from_utf8_lossy(&tokens.iter().map(|&t| t as u8).collect::<Vec<_>>()).into_owned()
}

pub fn run(dev: &DeviceArgs, a: &GenerateArgs) -> anyhow::Result<()> {
    let format = KvFormat::parse(&a.kv)?;
    if !(a.temperature >= 0.0 && a.temperature.is_finite() && a.top_p > 0.0 && a.top_p <= 1.0) {
        bail!("--temperature must be ≥ 0 and --top-p in (0, 1]; got {} and {}", a.temperature, a.top_p);
    }
    let prompts: Vec<Vec<u32>> = match &a.batch_prompts {
        Some(path) => {
            let body =
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            body.lines().filter(|l| !l.trim().is_empty()).map(bytes).collect()
        }
        None => vec![bytes(&a.prompt)],
    };
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS || prompts.iter().any(Vec::is_empty) {
        bail!("give 1 to {MAX_PROMPTS} non-empty prompts; got {}", prompts.len());
    }
    if a.draft.is_some() && prompts.len() > 1 {
        bail!("--draft decodes one prompt; leave out --batch-prompts");
    }
    let ckpt =
        Checkpoint::load(&a.checkpoint).with_context(|| format!("reading {}", a.checkpoint.display()))?;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let per_seq = longest
        .checked_add(a.tokens)
        .and_then(|n| n.checked_add(a.draft_tokens + 2))
        .context("--tokens overflows")?;
    let positions = per_seq
        .checked_add(a.page)
        .and_then(|n| n.checked_mul(prompts.len()))
        .context("--tokens × prompts overflows")?;
    let layout = CacheLayout {
        format,
        page: a.page,
        positions,
        max_seqs: prompts.len(),
        max_step_tokens: a.draft_tokens + 1,
    };
    let gpu = dev.gpu()?;
    let model_params = if a.kv_error { ckpt.params.clone() } else { Vec::new() };
    let mut model = Generator::new(&gpu, ckpt.config.model, ckpt.params, layout)?;
    let info = gpu.info();
    let c = ckpt.config.model;
    println!(
        "adapter {} ({:?}); model d {} × {} layers, {} heads, {} positions; KV {} in pages of {} ({} bytes/token)",
        info.name,
        info.backend,
        c.d_model,
        c.layers,
        c.heads,
        c.pos.name(),
        format.name(),
        a.page,
        model.cache().config().bytes_per_token()
    );
    let sampling = Sampling { temperature: a.temperature, top_p: a.top_p };
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let ids: Vec<_> = prompts.iter().map(|_| model.add()).collect();
    if let Some(draft_path) = &a.draft {
        let dc = Checkpoint::load(draft_path).with_context(|| format!("reading {}", draft_path.display()))?;
        if dc.config.model.vocab != c.vocab {
            bail!("the draft's vocabulary ({}) is not the model's ({})", dc.config.model.vocab, c.vocab);
        }
        let mut draft = Generator::new(&gpu, dc.config.model, dc.params, layout)?;
        let did = draft.add();
        let prompt = &prompts[0];
        let head = &prompt[..prompt.len() - 1];
        let t0 = web_time::Instant::now();
        if !head.is_empty() {
            model.prefill_packed(&gpu, &[(ids[0], head)])?;
            draft.prefill_packed(&gpu, &[(did, head)])?;
        }
        print!("{}", text(prompt));
        let mut last = *prompt.last().expect("non-empty");
        let (mut out, mut stats): (Vec<u32>, _) = (Vec::new(), SpecStats::default());
        let t1 = web_time::Instant::now();
        while out.len() < a.tokens {
            let new = speculate(
                &gpu,
                (&mut model, ids[0]),
                (&mut draft, did),
                last,
                (a.draft_tokens, &sampling),
                &mut rng,
                &mut stats,
            )?;
            last = *new.last().expect("at least one");
            let take = new.len().min(a.tokens - out.len());
            print!("{}", text(&new[..take]));
            std::io::stdout().flush()?;
            out.extend(&new[..take]);
        }
        let secs = t1.elapsed().as_secs_f64();
        println!();
        println!(
            "{} tokens in {secs:.2} s: {:.1} tokens/s (prompt {:.2} s); draft {}: {} of {} proposals accepted ({:.0} %) in {} verification steps",
            out.len(),
            out.len() as f64 / secs,
            (t1 - t0).as_secs_f64(),
            draft_path.display(),
            stats.accepted,
            stats.proposed,
            100.0 * stats.accepted as f64 / stats.proposed.max(1) as f64,
            stats.steps
        );
        return Ok(());
    }
    let t0 = web_time::Instant::now();
    // every prompt in one packed pass
    let views: Vec<(_, &[u32])> = ids.iter().zip(&prompts).map(|(&id, p)| (id, &p[..])).collect();
    let mut next: Vec<u32> = Vec::with_capacity(prompts.len());
    for logits in model.prefill_packed(&gpu, &views)? {
        next.push(sampling.draw(logits.last().expect("a prompt is never empty"), &mut rng));
    }
    let single = prompts.len() == 1;
    if single {
        print!("{}{}", text(&prompts[0]), text(&next));
        std::io::stdout().flush()?;
    }
    let mut outs: Vec<Vec<u32>> = next.iter().map(|&t| vec![t]).collect();
    let t1 = web_time::Instant::now();
    for _ in 1..a.tokens {
        let feed: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let steps: Vec<_> = ids.iter().zip(&feed).map(|(&id, t)| (id, &t[..])).collect();
        let logits = model.forward(&gpu, &steps)?;
        for (s, l) in logits.iter().enumerate() {
            next[s] = sampling.draw(&l[0], &mut rng);
            outs[s].push(next[s]);
        }
        if single {
            print!("{}", text(&next));
            std::io::stdout().flush()?;
        }
    }
    let secs = t1.elapsed().as_secs_f64();
    if single {
        println!();
    } else {
        for (p, o) in prompts.iter().zip(&outs) {
            println!("--- {}{}", text(p), text(o));
        }
    }
    if a.kv_error {
        let text_tokens = [prompts[0].as_slice(), &outs[0]].concat();
        for format in [KvFormat::Int8, KvFormat::Int4] {
            let e = kv_format_errors(&gpu, c, &model_params, &text_tokens, format, a.page)?;
            let at = |q: f64| e[((e.len() - 1) as f64 * q).round() as usize];
            let within = e.iter().filter(|&&x| x <= 1e-2).count() as f64 / e.len() as f64;
            println!(
                "KV {} against f32, attention outputs of {} tokens × {} layers × {} heads: median {:.1e}, p90 {:.1e}, p99 {:.1e}, max {:.1e}; {:.1} % within 1e-2",
                format.name(),
                text_tokens.len(),
                c.layers,
                c.heads,
                at(0.5),
                at(0.9),
                at(0.99),
                at(1.0),
                100.0 * within
            );
        }
    }
    let generated = prompts.len() * (a.tokens - 1);
    println!(
        "{} prompts × {} tokens: {:.1} tokens/s after the first ({} sequences a step; prompts {:.2} s); pool {} of {} pages used",
        prompts.len(),
        a.tokens,
        generated as f64 / secs.max(1e-9),
        prompts.len(),
        (t1 - t0).as_secs_f64(),
        model.cache().usage().used,
        model.cache().usage().pages
    );
    Ok(())
}
