//! Mask flags shared by `attention`, `mask` and `bench`. Every active rule must allow a pair
//! (the contract's AND); `--pattern longformer` is the one OR: window or global tokens.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use longctx::contract::mask::{BigBird, Mask};
use longctx::contract::mods::{Mods, Named};
use longctx::contract::positions::Positions;
use longctx::io::read_npy_numbers;
use longctx::{AttnShape, AttnSpec, Window};

#[derive(clap::Args, Debug, Clone, Default)]
pub struct MaskArgs {
    /// Causal mask: key j is visible from row i iff j <= M-N+i.
    #[arg(long)]
    pub causal: bool,
    /// Local window L,R: the row at position p sees keys p-L ..= p+R; -1 = unbounded side.
    #[arg(long, value_name = "L,R", allow_hyphen_values = true)]
    pub window: Option<String>,
    /// Global tokens: the first G positions see every key and are seen by every query.
    #[arg(long, value_name = "G")]
    pub global: Option<usize>,
    /// Packed documents: .npy of M non-decreasing segment ids (one per position); a query
    /// sees only keys of its own segment.
    #[arg(long, value_name = "S.npy")]
    pub segments: Option<PathBuf>,
    /// BigBird blocks: global=G,window=W,random=R,block=B,seed=S (blocks of B tokens; W blocks
    /// each side; R random blocks per query block).
    #[arg(long, value_name = "SPEC")]
    pub bigbird: Option<String>,
    /// Block mask .npy [H or 1, ceil(N/B), ceil(M/B)] (nonzero = visible), with --block-size.
    #[arg(long, value_name = "M.npy", requires = "block_size")]
    pub block_mask: Option<PathBuf>,
    /// Block size B of --block-mask, in tokens.
    #[arg(long, value_name = "B", requires = "block_mask")]
    pub block_size: Option<usize>,
    /// Named pattern: longformer (window OR global; set --window and --global, default
    /// 256,256 and 1), bigbird (default global=1,window=1,random=2,block=64), window (256,0).
    #[arg(long, value_name = "NAME")]
    pub pattern: Option<String>,
    /// Attention mods: --score-mod, --mask-mod, --mod, --mod-buffer.
    #[command(flatten)]
    pub mods: ModArgs,
}

/// The mod flags, shared by the mask flags and `decode`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ModArgs {
    /// A WGSL file defining `fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32)
    /// -> f32`, applied to each scaled score (after ALiBi) before the softmax; it may also
    /// define `score_mod_grad`. Run by flash, the backward, decode and the heatmap; the
    /// oracle (`--kernel cpu`, the checks) needs the same rule in Rust (library).
    #[arg(long, value_name = "FILE.wgsl")]
    pub score_mod: Option<PathBuf>,
    /// A WGSL file defining `fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool`
    /// (true = visible), ANDed with every other rule; tiles it hides entirely are skipped.
    /// `N_Q` and `N_KV` are N and M (bottom-right causal: `q_idx + N_KV - N_Q >= kv_idx`).
    #[arg(long, value_name = "FILE.wgsl")]
    pub mask_mod: Option<PathBuf>,
    /// A named mod, repeatable: causal, window=W, alibi, softcap=C, prefix=P,
    /// sinks=K,window=W, dilated=W,dilation=D, documents=IDS.npy (one id per key),
    /// t5=TABLE.npy ([H, 32] relative-position biases) — WGSL and its Rust rule, so the
    /// oracle runs it. Several compose: masks ANDed, score mods applied in the order given;
    /// with a --score-mod file, no named score mod (one score_mod comes from files).
    #[arg(long = "mod", value_name = "NAME")]
    pub named: Vec<String>,
    /// Values of a buffer a mod file declares (`@group(1) @binding(N) var<storage, read>
    /// NAME: array<f32>;`, or u32/i32): NAME=FILE.npy, repeatable.
    #[arg(long, value_name = "NAME=FILE.npy")]
    pub mod_buffer: Vec<String>,
}

impl MaskArgs {
    /// Every file these flags read (segments, block mask, mod files, tables and buffers), for
    /// the check that no output overwrites an input.
    pub fn input_paths(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.segments.iter().chain(&self.block_mask).cloned().collect();
        out.extend(self.mods.input_paths());
        out
    }

    /// Applies the flags to `spec` (its shape must be final).
    pub fn apply(&self, mut spec: AttnSpec) -> anyhow::Result<AttnSpec> {
        let shape = spec.shape;
        let mut window = self.window.as_deref().map(Window::parse).transpose()?;
        let mut parts: Vec<Mask> = Vec::new();
        let mut global = self.global;
        let mut bigbird = self.bigbird.clone();
        match self.pattern.as_deref() {
            None => {}
            Some("window") => window = window.or(Some(Window::new(256, 0))),
            Some("bigbird") => bigbird = bigbird.or(Some(String::new())),
            Some("longformer") => {
                let w = window.take().unwrap_or(Window::new(256, 256));
                parts.push(Mask::Window(w).or(Mask::Global(global.take().unwrap_or(1))));
            }
            Some(other) => bail!("unknown --pattern `{other}`; choose longformer, bigbird or window"),
        }
        if let Some(g) = global {
            parts.push(Mask::Global(g));
        }
        if let Some(text) = &bigbird {
            parts.push(Mask::bigbird(&BigBird::parse(text)?, shape.m)?);
        }
        if let Some(path) = &self.segments {
            parts.push(Mask::Segments(Arc::new(read_ids(path, "segment")?)));
        }
        if let Some(path) = &self.block_mask {
            let bs = self.block_size.context("--block-mask needs --block-size")?;
            let (dims, cells) = read_npy_numbers(path)?;
            let cells: Vec<f32> = cells.into_iter().map(|x| x as f32).collect();
            parts.push(
                Mask::block_mask(&shape, bs, &dims, &cells)
                    .with_context(|| format!("--block-mask {} (--block-size {bs})", path.display()))?,
            );
        }
        spec = spec.causal(self.causal).window(window).mods(self.mods.mods(&shape)?);
        spec.mask = match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(Mask::And(parts)),
        };
        spec.validate()?;
        Ok(spec)
    }
}

impl ModArgs {
    /// The mods of --score-mod, --mask-mod and --mod, combined (`None` without any), for
    /// `shape` (its heads and keys M size the documents and T5 tables).
    pub fn mods(&self, shape: &AttnShape) -> anyhow::Result<Option<Mods>> {
        let mut all: Vec<Mods> = Vec::new();
        for (path, function, flag) in
            [(&self.score_mod, "score_mod", "--score-mod"), (&self.mask_mod, "mask_mod", "--mask-mod")]
        {
            let Some(path) = path else { continue };
            let bytes = longctx::io::read_regular(path, 1 << 20)?;
            let text =
                String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8 text", path.display()))?;
            let mods = Mods::wgsl(&path.display().to_string(), &text)?;
            let defines = if function == "score_mod" { mods.has_score_mod() } else { mods.has_mask_mod() };
            if !defines {
                bail!("{flag} {}: the file defines no `fn {function}`", path.display());
            }
            if self.score_mod == self.mask_mod && function == "mask_mod" {
                continue; // one file for both
            }
            all.push(mods);
        }
        let mut named = Vec::new();
        for text in &self.named {
            if let Some(path) = text.strip_prefix("documents=") {
                let ids = read_ids(path.as_ref(), "document")?;
                if ids.len() != shape.m {
                    bail!(
                        "--mod documents={path}: one id per key position: {} ids for M = {}",
                        ids.len(),
                        shape.m
                    );
                }
                named.push(Named::Documents(Arc::new(ids)));
                continue;
            }
            if let Some(path) = text.strip_prefix("t5=") {
                let (dims, table) = read_npy_numbers(path.as_ref())?;
                let want = [shape.heads, longctx::contract::mods::T5_BUCKETS];
                if dims != want {
                    bail!(
                        "--mod t5={path}: the bias table must have shape {want:?} (heads, buckets), got {dims:?}"
                    );
                }
                if let Some((i, x)) =
                    table.iter().enumerate().find(|&(_, x)| !(x.is_finite() && x.abs() <= f32::MAX as f64))
                {
                    bail!("--mod t5={path}: bias {x} at index {i} is not a finite f32");
                }
                named.push(Named::T5(Arc::new(table.into_iter().map(|x| x as f32).collect())));
                continue;
            }
            named.push(Named::parse(text, shape.heads).context("--mod")?);
        }
        // the named mods compose among themselves (masks ANDed, scores in order)
        if !named.is_empty() {
            all.push(Named::compose(&named)?);
        }
        let mut out = Mods::all_of(all)?;
        for given in &self.mod_buffer {
            let Some((name, path)) = given.split_once('=') else {
                bail!("--mod-buffer `{given}`: expected NAME=FILE.npy");
            };
            let Some(mods) = out.take() else {
                bail!("--mod-buffer {name}: no --score-mod / --mask-mod file declares buffers");
            };
            let (_, values) = read_npy_numbers(path.as_ref())?;
            out = Some(mods.with_buffer(name.trim(), &values)?);
        }
        if let Some(m) = &out {
            m.check_buffers().context("give each buffer's values with --mod-buffer NAME=FILE.npy")?;
        }
        Ok(out)
    }
}

impl ModArgs {
    /// Whether any mod flag was given.
    pub fn any(&self) -> bool {
        !self.input_paths().is_empty() || !self.named.is_empty()
    }

    /// Every file these flags read: the mod files, the named mods' tables, the buffers.
    pub fn input_paths(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = self.score_mod.iter().chain(&self.mask_mod).cloned().collect();
        for text in &self.named {
            if let Some(path) = text.strip_prefix("documents=").or_else(|| text.strip_prefix("t5=")) {
                out.push(PathBuf::from(path));
            }
        }
        out.extend(self.mod_buffer.iter().filter_map(|b| b.split_once('=')).map(|(_, p)| PathBuf::from(p)));
        out
    }
}

/// Positional encoding flags (`attention`, `bench`, `decode`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PositionArgs {
    /// Rotary positions on Q and K: theta=10000[,interleaved][,offset=P] — pairs (k, k+D/2)
    /// (half-split, as Hugging Face LLaMA) unless `interleaved` (2k, 2k+1); `offset` is the
    /// position of key 0. Bare `--rope`: θ = 10000.
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "")]
    pub rope: Option<String>,
    /// Sinusoidal absolute embeddings (Vaswani et al.) added to Q and K: [base=10000][,offset=P].
    #[arg(long, value_name = "SPEC", num_args = 0..=1, default_missing_value = "", conflicts_with = "rope")]
    pub sinusoidal: Option<String>,
}

impl PositionArgs {
    /// The encoding asked for (`None` without either flag).
    pub fn get(&self) -> anyhow::Result<Option<Positions>> {
        Ok(match (&self.rope, &self.sinusoidal) {
            (Some(text), _) => Some(Positions::parse(text, true).context("--rope")?),
            (None, Some(text)) => Some(Positions::parse(text, false).context("--sinusoidal")?),
            (None, None) => None,
        })
    }
}

/// A 1-D `.npy` of ids (segments, documents): whole numbers in u32's range.
fn read_ids(path: &std::path::Path, what: &str) -> anyhow::Result<Vec<u32>> {
    let (dims, ids) = read_npy_numbers(path)?;
    if dims.len() != 1 {
        bail!("{}: {what} ids must be a 1-D array, got shape {dims:?}", path.display());
    }
    if let Some((i, x)) =
        ids.iter().enumerate().find(|&(_, &x)| !(x >= 0.0 && x.fract() == 0.0 && x <= u32::MAX as f64))
    {
        bail!(
            "{}: {what} id {x} at index {i}: ids must be whole numbers in 0..={}",
            path.display(),
            u32::MAX
        );
    }
    Ok(ids.into_iter().map(|x| x as u32).collect())
}

/// `shape` with everything but N, M, heads and D at defaults (for `mask` and `bench`).
pub fn shape(heads: usize, kv_heads: usize, n: usize, m: usize, d: usize) -> AttnShape {
    AttnShape { batch: 1, heads, kv_heads, n, m, head_dim: d }
}
