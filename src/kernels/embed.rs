//! `embed`: the ends of a sentence encoder (`shaders/embed.wgsl`): the token-embedding gather
//! (word + position + token type) and mean pooling over real tokens with L2 normalisation.
//! Oracles: [`gather_f64`], [`pool_normalize_f64`].

use crate::error::{Error, Result};
use crate::runtime::Gpu;
use crate::runtime::shader::{BindGroupFields, Compiled, Shader, ShaderVariant, bind_group};

const NAME: &str = "embed";
bind_group! {
    /// shape, two read tables or index lists, one more read table, the output (see embed.wgsl).
    struct EmbedBinds { 0 sh: Uniform, 1 index: Read, 2 src: Read, 3 table: Read, 4 dst: ReadWrite }
}
const SHADER: Shader =
    Shader { stem: NAME, source: include_str!("../../shaders/embed.wgsl"), bindings: EmbedBinds::SLOTS };
const ENTRIES: [&str; 3] = ["gather", "pool", "l2_normalize"];

/// The shader variants, one per entry point.
pub fn variants() -> Vec<ShaderVariant> {
    ENTRIES.into_iter().map(|entry| SHADER.variant(entry, &[], vec![])).collect()
}

fn pipeline(gpu: &Gpu, entry: &'static str) -> Result<Compiled> {
    gpu.compile(&SHADER.variant(entry, &[], vec![]))
}

fn dispatch(
    gpu: &Gpu,
    enc: &mut wgpu::CommandEncoder,
    kernel: &Compiled,
    binds: &EmbedBinds,
    threads: usize,
) {
    let bind = kernel.bind(gpu, binds);
    let mut pass =
        enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some(NAME), timestamp_writes: None });
    kernel.dispatch(&mut pass, &bind, [threads.div_ceil(64) as u32, 1, 1]);
}

/// Every id an index into a vocabulary of `vocab` entries ([`Error::OutOfRange`] names the
/// first that is not).
pub(crate) fn check_ids(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().find(|&&i| i as usize >= vocab) {
        Some(&bad) => Err(Error::OutOfRange {
            what: "token id (an index into the vocabulary)".into(),
            value: bad as u64,
            min: 0,
            max: vocab as u64 - 1,
        }),
        None => Ok(()),
    }
}

/// Token embeddings on the device: the word table `[vocab, d]`, position table
/// `[max_pos, d]` and token-type row 0 `[d]`, uploaded once.
pub struct Embeddings {
    /// Rows of the word table: token ids are `0..vocab`.
    pub vocab: usize,
    /// Rows of the position table: positions are `0..max_positions`.
    pub max_positions: usize,
    /// Embedding width.
    pub d: usize,
    word: wgpu::Buffer,
    /// positions, then the token-type row
    table: wgpu::Buffer,
    pipeline: Compiled,
}

impl Embeddings {
    /// Uploads `word [vocab, d]`, `positions [max_positions, d]` and `token_type [d]`;
    /// `vocab` and `max_positions` follow from the lengths.
    pub fn new(gpu: &Gpu, word: &[f32], positions: &[f32], token_type: &[f32], d: usize) -> Result<Self> {
        if d == 0
            || !word.len().is_multiple_of(d)
            || !positions.len().is_multiple_of(d)
            || token_type.len() != d
        {
            return Err(Error::Shape(format!(
                "embedding tables of width {d}: word {} values, positions {}, token type {}",
                word.len(),
                positions.len(),
                token_type.len()
            )));
        }
        Ok(Self {
            vocab: word.len() / d,
            max_positions: positions.len() / d,
            d,
            word: gpu.upload("word embeddings", word)?,
            table: gpu.upload("position and token-type embeddings", &[positions, token_type].concat())?,
            pipeline: pipeline(gpu, "gather")?,
        })
    }

    /// A prepared gather of `ids` at `positions` (checked against the tables).
    pub fn prepare(&self, gpu: &Gpu, ids: &[u32], positions: &[u32]) -> Result<Gather> {
        if ids.is_empty() || ids.len() != positions.len() {
            return Err(Error::Length {
                what: "token positions (one per token id)".into(),
                got: positions.len(),
                shape: vec![ids.len()],
                expected: ids.len(),
            });
        }
        check_ids(ids, self.vocab)?;
        if let Some(&bad) = positions.iter().find(|&&p| p as usize >= self.max_positions) {
            return Err(Error::OutOfRange {
                what: "token position (an index into the position embeddings)".into(),
                value: bad as u64,
                min: 0,
                max: self.max_positions as u64 - 1,
            });
        }
        let t = ids.len();
        gpu.check_dispatch(NAME, [(t * self.d).div_ceil(64) as u64, 1, 1])?;
        let shape = [t as u32, self.d as u32, 0, (self.max_positions * self.d) as u32];
        Ok(Gather {
            tokens: t,
            shape: gpu.uniform("gather shape", &shape),
            index: gpu.upload("token ids and positions", &[ids, positions].concat())?,
        })
    }

    /// Records `dst [T, d] = word[ids] + positions[pos] + token_type[0]`.
    pub fn encode(&self, gpu: &Gpu, enc: &mut wgpu::CommandEncoder, g: &Gather, dst: &wgpu::Buffer) {
        dispatch(
            gpu,
            enc,
            &self.pipeline,
            &EmbedBinds {
                sh: (&g.shape).into(),
                index: (&g.index).into(),
                src: (&self.word).into(),
                table: (&self.table).into(),
                dst: dst.into(),
            },
            g.tokens * self.d,
        );
    }
}

/// One batch's token ids and positions on the device.
#[derive(Debug)]
pub struct Gather {
    tokens: usize,
    shape: wgpu::Buffer,
    index: wgpu::Buffer,
}

/// Mean pooling of each sentence's first `len_b` rows of its `stride` rows, then L2
/// normalisation: `[sentences · stride, d]` → `[sentences, d]`.
pub struct Pool {
    sentences: usize,
    d: usize,
    pool: Compiled,
    norm: Compiled,
    pool_shape: wgpu::Buffer,
    norm_shape: wgpu::Buffer,
    lengths: wgpu::Buffer,
    means: wgpu::Buffer,
    dummy: wgpu::Buffer,
}

impl Pool {
    /// Pooling of `lengths.len()` sentences of `stride` rows of width `d`; sentence `b` averages
    /// its first `lengths[b]` rows (`1 ..= stride`).
    pub fn new(gpu: &Gpu, lengths: &[u32], stride: usize, d: usize) -> Result<Self> {
        if lengths.is_empty() || d == 0 {
            return Err(Error::Empty { what: "pooling".into(), shape: vec![lengths.len(), stride, d] });
        }
        if let Some(&bad) = lengths.iter().find(|&&l| l == 0 || l as usize > stride) {
            return Err(Error::OutOfRange {
                what: "sentence length".into(),
                value: bad as u64,
                min: 1,
                max: stride as u64,
            });
        }
        let b = lengths.len();
        Ok(Self {
            sentences: b,
            d,
            pool: pipeline(gpu, "pool")?,
            norm: pipeline(gpu, "l2_normalize")?,
            pool_shape: gpu.uniform("pool shape", &[b as u32, d as u32, stride as u32, 0]),
            norm_shape: gpu.uniform("normalize shape", &[b as u32, d as u32, 0, 0]),
            lengths: gpu.upload("sentence lengths", lengths)?,
            means: gpu.storage("pooled means", (b * d * 4) as u64)?,
            dummy: gpu.storage("unused", 4)?,
        })
    }

    /// Records `dst [sentences, d]` = normalised means of `hidden`'s real rows.
    pub fn encode(
        &self,
        gpu: &Gpu,
        enc: &mut wgpu::CommandEncoder,
        hidden: &wgpu::Buffer,
        dst: &wgpu::Buffer,
    ) {
        let (b, d) = (self.sentences, self.d);
        dispatch(
            gpu,
            enc,
            &self.pool,
            &EmbedBinds {
                sh: (&self.pool_shape).into(),
                index: (&self.lengths).into(),
                src: hidden.into(),
                table: (&self.dummy).into(),
                dst: (&self.means).into(),
            },
            b * d,
        );
        let unused = (&self.dummy).into();
        let binds = EmbedBinds {
            sh: (&self.norm_shape).into(),
            index: unused,
            src: (&self.means).into(),
            table: unused,
            dst: dst.into(),
        };
        dispatch(gpu, enc, &self.norm, &binds, b);
    }
}

/// Oracle of the gather for one sentence: `word[id] + position[i] + token_type[0]`.
pub fn gather_f64(word: &[f32], positions: &[f32], token_type: &[f32], ids: &[u32], d: usize) -> Vec<f64> {
    ids.iter()
        .enumerate()
        .flat_map(|(i, &id)| {
            (0..d).map(move |e| {
                word[id as usize * d + e] as f64 + positions[i * d + e] as f64 + token_type[e] as f64
            })
        })
        .collect()
}

/// Oracle of pooling: the mean of `rows [n, d]`, L2-normalised.
pub fn pool_normalize_f64(rows: &[f64], d: usize) -> Vec<f64> {
    let n = rows.len() / d;
    let mean: Vec<f64> = (0..d).map(|e| (0..n).map(|r| rows[r * d + e]).sum::<f64>() / n as f64).collect();
    let norm = mean.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    mean.into_iter().map(|x| x / norm).collect()
}
