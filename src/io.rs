//! Tensors on disk: float32 `.npy` files (NumPy's format) in and out.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};

use npyz::WriterBuilder;

use crate::error::{Error, Result};

/// A dense row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The elements, `shape.iter().product()` of them.
    pub data: Vec<f32>,
}

/// The number of elements of `shape`, `None` when it overflows `usize`.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

impl Tensor {
    /// A tensor of `shape` over `data`; [`Error::Length`] when the element counts differ.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let want = element_count(&shape).unwrap_or(usize::MAX);
        if want != data.len() {
            return Err(Error::Length { what: "tensor data".into(), got: data.len(), shape, expected: want });
        }
        Ok(Self { shape, data })
    }
}

fn file_err(path: &Path, message: impl Into<String>) -> Error {
    Error::File { path: path.to_path_buf(), message: message.into() }
}

/// The largest file the engine reads whole (weights, configs, tokenizers): 16 GiB.
pub(crate) const MAX_FILE_BYTES: u64 = 16 << 30;

/// The size of `path` if it is a regular file of at most `limit` bytes. A FIFO, device
/// (`/dev/zero`), directory or socket is refused before it is opened — opening a FIFO
/// blocks until a writer comes, and a device can stream forever.
pub fn check_regular(path: &Path, limit: u64) -> Result<u64> {
    let meta = std::fs::metadata(path).map_err(|e| file_err(path, format!("cannot open: {e}")))?;
    if !meta.is_file() {
        let kind =
            if meta.is_dir() { "a directory" } else { "not a regular file (a FIFO, device or socket)" };
        return Err(file_err(
            path,
            format!("{kind}; tensors, weights and configs are read from regular files"),
        ));
    }
    if meta.len() > limit {
        return Err(file_err(
            path,
            format!("{} bytes, more than the {limit} this reader accepts", meta.len()),
        ));
    }
    Ok(meta.len())
}

/// Reads a regular file of at most `limit` bytes whole (see [`check_regular`]).
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>> {
    let len = check_regular(path, limit)?;
    use std::io::Read;
    let file = File::open(path).map_err(|e| file_err(path, format!("cannot open: {e}")))?;
    // never more than the limit, even if the file grew since it was measured
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limit).read_to_end(&mut bytes).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    Ok(bytes)
}

/// The shape in an `.npy` header, read before the parser sees it: a header whose dimensions
/// multiply past `usize` is refused here (the parser would overflow counting its records).
/// `None` when the header cannot be read this way; the parser then reports what is wrong.
fn header_shape(reader: &mut BufReader<File>) -> Option<Vec<u64>> {
    use std::io::BufRead;
    // the header sits in the reader's first buffer (it is consumed by the parser, not here)
    let start = reader.fill_buf().ok()?;
    if start.len() < 10 || &start[..6] != b"\x93NUMPY" {
        return None;
    }
    let (len, skip) = match start[6] {
        1 => (u16::from_le_bytes([start[8], start[9]]) as usize, 10usize),
        _ if start.len() >= 12 => {
            (u32::from_le_bytes([start[8], start[9], start[10], start[11]]) as usize, 12)
        }
        _ => return None,
    };
    let text = String::from_utf8_lossy(start.get(skip..skip.checked_add(len)?)?);
    let tuple = text.split("'shape':").nth(1)?.split('(').nth(1)?.split(')').next()?;
    tuple
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_end_matches('L').parse().ok())
        .collect()
}

fn too_many_elements(path: &Path, shape: &[usize]) -> Error {
    file_err(path, format!("shape {shape:?} holds more elements than fit in memory"))
}

fn open_npy(path: &Path) -> Result<(npyz::NpyFile<BufReader<File>>, String, Vec<usize>)> {
    let file_len = check_regular(path, u64::MAX)?;
    let file = File::open(path).map_err(|e| file_err(path, format!("cannot open: {e}")))?;
    let mut reader = BufReader::new(file);
    if let Some(dims) = header_shape(&mut reader) {
        let shape: Vec<usize> = dims.iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
        // the parser multiplies the dimensions into strides even when one of them is 0: the
        // product of the nonzero ones must fit too
        let strides_fit = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d.max(1))).is_some();
        if element_count(&shape).is_none() || !strides_fit {
            return Err(too_many_elements(path, &shape));
        }
    }
    // the parser's diagnostic can span lines: one line, bounded
    let npy = npyz::NpyFile::new(reader).map_err(|e| {
        let text: String = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        let text = if text.chars().count() > 200 {
            format!("{}…", text.chars().take(200).collect::<String>())
        } else {
            text
        };
        file_err(path, format!("not a valid .npy file: {text}"))
    })?;
    let descr = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => format!("{other:?}"),
    };
    if npy.order() != npyz::Order::C {
        return Err(file_err(path, "Fortran-ordered array; save it with np.ascontiguousarray"));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect();
    // a header whose dimensions multiply past usize would otherwise wrap to a small count
    let Some(count) = element_count(&shape) else {
        return Err(too_many_elements(path, &shape));
    };
    // the data the header promises must be in the file: reads stay bounded by it, and a
    // lying header is an error before anything is allocated for it
    let item = match npy.dtype() {
        npyz::DType::Plain(ts) => ts.num_bytes().unwrap_or(1) as u64,
        _ => 1,
    };
    match (count as u64).checked_mul(item) {
        Some(bytes) if bytes <= file_len => Ok((npy, descr, shape)),
        promised => Err(file_err(
            path,
            format!(
                "truncated: shape {shape:?} of {descr} promises {} bytes of data, the whole file has {file_len}",
                promised.map_or("more than 2^64".to_string(), |b| b.to_string())
            ),
        )),
    }
}

/// Reads a numeric `.npy` file of any common dtype (float, int, uint, bool) as f64 — for
/// masks and segment ids, which people save as bool or integers.
pub fn read_npy_numbers(path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let (npy, descr, shape) = open_npy(path)?;
    let bad = |e: std::io::Error| file_err(path, format!("truncated or corrupt data: {e}"));
    let data: Vec<f64> = match descr.as_str() {
        "<f4" => npy.into_vec::<f32>().map_err(bad)?.into_iter().map(f64::from).collect(),
        "<f8" => npy.into_vec::<f64>().map_err(bad)?,
        "<i8" => npy.into_vec::<i64>().map_err(bad)?.into_iter().map(|x| x as f64).collect(),
        "<i4" => npy.into_vec::<i32>().map_err(bad)?.into_iter().map(f64::from).collect(),
        "<u4" => npy.into_vec::<u32>().map_err(bad)?.into_iter().map(f64::from).collect(),
        "|u1" => npy.into_vec::<u8>().map_err(bad)?.into_iter().map(f64::from).collect(),
        "|i1" => npy.into_vec::<i8>().map_err(bad)?.into_iter().map(f64::from).collect(),
        "|b1" => npy.into_vec::<bool>().map_err(bad)?.into_iter().map(|b| b as u8 as f64).collect(),
        other => {
            return Err(file_err(
                path,
                format!("dtype {other} is not supported; use bool, int32/64, uint8/32 or float32/64"),
            ));
        }
    };
    if Some(data.len()) != element_count(&shape) {
        return Err(file_err(path, format!("shape {shape:?} does not match {} values", data.len())));
    }
    Ok((shape, data))
}

/// Reads a C-ordered little-endian float32 `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let (npy, descr, shape) = open_npy(path)?;
    if descr != "<f4" {
        return Err(file_err(
            path,
            format!("dtype is {descr}, expected float32 (<f4); convert with `a.astype(np.float32)`"),
        ));
    }
    let data: Vec<f32> =
        npy.into_vec().map_err(|e| file_err(path, format!("truncated or corrupt data: {e}")))?;
    Tensor::new(shape, data).map_err(|e| file_err(path, e.to_string()))
}

/// Writes a float32 `.npy` file atomically (a temporary file beside it, then a rename): a
/// failed write leaves the previous file as it was.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let mut staged = Staged::default();
    staged.npy(path, shape, data)?;
    staged.commit()
}

/// Outputs written all or nothing: each is written to a temporary file beside its path, and
/// only when every one is complete are they renamed into place. On any failure (a full disk,
/// a later output that cannot be written) the temporary files are removed and the previous
/// contents of every path stay as they were.
#[derive(Debug, Default)]
pub struct Staged {
    /// (temporary file, final path) of each output written so far.
    files: Vec<(PathBuf, PathBuf)>,
}

impl Staged {
    /// Writes a float32 `.npy` file to a temporary file beside `path` (beside its target
    /// when `path` is a symlink).
    pub fn npy(&mut self, path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
        let (tmp, path) = self.stage(path)?;
        let path = &path;
        let io = |e: std::io::Error| file_err(path, format!("write failed: {e}"));
        let file = File::create(&tmp).map_err(|e| file_err(path, format!("cannot create: {e}")))?;
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&shape)
            .writer(BufWriter::new(file))
            .begin_nd()
            .map_err(io)?;
        w.extend(data.iter().copied()).map_err(io)?;
        w.finish().map_err(io)
    }

    /// Writes `bytes` to a temporary file beside `path` (beside its target when `path` is a
    /// symlink).
    pub fn bytes(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let (tmp, path) = self.stage(path)?;
        std::fs::write(&tmp, bytes).map_err(|e| file_err(&path, format!("write failed: {e}")))
    }

    /// The (temporary file, destination) of an output at `path`, recorded so that the
    /// temporary file is renamed on commit and removed on drop.
    fn stage(&mut self, path: &Path) -> Result<(PathBuf, PathBuf)> {
        let target = output_target(path)?;
        let tmp = temp_beside(&target);
        self.files.push((tmp.clone(), target.clone()));
        Ok((tmp, target))
    }

    /// Renames every staged file into place, once every destination is known to take it
    /// (a destination that became a directory or device meanwhile fails before any rename).
    pub fn commit(mut self) -> Result<()> {
        for (_, path) in &self.files {
            output_target(path)?;
        }
        for (tmp, path) in std::mem::take(&mut self.files) {
            std::fs::rename(&tmp, &path).map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                file_err(&path, format!("cannot move the finished file into place: {e}"))
            })?;
        }
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Writes `bytes` to `path` atomically (a temporary file beside it, then a rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut staged = Staged::default();
    staged.bytes(path, bytes)?;
    staged.commit()
}

/// Where an output at `path` is written: `path` itself (new, or an existing regular file),
/// or a symlink's regular target. A directory, device, FIFO or socket is refused: outputs
/// replace a regular file by renaming, which would otherwise replace `/dev/null` with a
/// regular file or fail only after the earlier outputs were moved into place.
pub(crate) fn output_target(path: &Path) -> Result<PathBuf> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(file_err(path, format!("cannot be written: {e}"))),
        Ok(m) => m,
    };
    let (target, meta) = if meta.file_type().is_symlink() {
        let target = std::fs::canonicalize(path)
            .map_err(|e| file_err(path, format!("is a symlink whose target cannot be used: {e}")))?;
        let meta =
            std::fs::metadata(&target).map_err(|e| file_err(path, format!("cannot be written: {e}")))?;
        (target, meta)
    } else {
        (path.to_path_buf(), meta)
    };
    if meta.is_dir() {
        return Err(file_err(path, "is a directory; give a file name for the output"));
    }
    if !meta.is_file() {
        return Err(file_err(
            path,
            "is not a regular file (a device, FIFO or socket); outputs are written to a temporary file and renamed over a regular file",
        ));
    }
    Ok(target)
}

fn temp_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Checks output paths before any work: distinct from each other and from the inputs, and
/// each one's folder exists and takes a new file (probed with a temporary file).
pub fn check_outputs(outputs: &[&Path], inputs: &[&Path]) -> Result<()> {
    let canon = |p: &Path| {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::canonicalize(dir).map(|d| d.join(p.file_name().unwrap_or_default()))
    };
    let mut seen: Vec<PathBuf> = inputs.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
    let n_inputs = seen.len();
    for &out in outputs {
        let target = output_target(out)?;
        let full = canon(&target).map_err(|e| file_err(out, format!("its folder cannot be used: {e}")))?;
        if let Some(i) = seen.iter().position(|s| *s == full) {
            let what = if i < n_inputs { "an input" } else { "another output" };
            return Err(file_err(out, format!("is also {what}; every output needs its own path")));
        }
        let probe = temp_beside(&target);
        File::create(&probe).map_err(|e| file_err(out, format!("cannot be written: {e}")))?;
        let _ = std::fs::remove_file(&probe);
        seen.push(full);
    }
    Ok(())
}

/// Reads tensor `name` of a `.safetensors` file as f32 (F32, F16 and BF16 are accepted).
pub fn read_safetensors(path: &Path, name: &str) -> Result<Tensor> {
    SafetensorsFile::open(path)?.tensor(name)
}

/// Writes f32 tensors `(name, shape, data)` and string `metadata` as a `.safetensors` file,
/// atomically (a checkpoint is either the old one or the new one).
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: std::collections::HashMap<String, String>,
) -> Result<()> {
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            if element_count(shape) != Some(data.len()) {
                return Err(file_err(
                    path,
                    format!("tensor `{name}`: shape {shape:?} but {} values", data.len()),
                ));
            }
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(data),
            )
            .map_err(|e| file_err(path, format!("tensor `{name}`: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| file_err(path, format!("cannot be serialised: {e}")))?;
    write_atomic(path, &bytes)
}

/// A `.safetensors` file read once, for loading many tensors (a model's weights).
pub struct SafetensorsFile {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
    /// Header length and the parsed header (names, dtypes, shapes, offsets), read once.
    header: usize,
    metadata: safetensors::tensor::Metadata,
}

impl SafetensorsFile {
    /// Reads the file and parses its header.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = read_regular(path, MAX_FILE_BYTES)?;
        let (header, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| file_err(path, format!("not a valid .safetensors file: {e}")))?;
        Ok(Self { path: path.to_path_buf(), bytes, header, metadata })
    }

    /// The header's string metadata under `key`.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.metadata().as_ref().and_then(|m| m.get(key)).map(String::as_str)
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.metadata.tensors().into_keys().collect();
        names.sort_unstable();
        names
    }

    /// Tensor `name` as f32 (from F32, F16 or BF16).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let path = &self.path;
        let info = self.metadata.info(name).ok_or_else(|| {
            file_err(path, format!("no tensor `{name}`; it holds {}", self.names().join(", ")))
        })?;
        // offsets are relative to the data after the 8-byte length and the header (checked in open)
        let (start, end) = info.data_offsets;
        let raw = &self.bytes[8 + self.header + start..8 + self.header + end];
        let data: Vec<f32> = match info.dtype {
            safetensors::Dtype::F32 => {
                raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            safetensors::Dtype::F16 => {
                raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            safetensors::Dtype::BF16 => {
                raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
            }
            other => {
                return Err(file_err(
                    path,
                    format!("tensor `{name}` is {other:?}; F32, F16 or BF16 expected"),
                ));
            }
        };
        Tensor::new(info.shape.clone(), data).map_err(|e| file_err(path, format!("tensor `{name}`: {e}")))
    }
}
