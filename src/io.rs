//! Tensors on disk: float32 `.npy` files (NumPy's format) in and out.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use npyz::WriterBuilder;

use crate::error::{Error, Result};

/// A dense row-major f32 tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<Self> {
        let want: usize = shape.iter().product();
        if want != data.len() {
            return Err(Error::Shape(format!("shape {shape:?} needs {want} elements, got {}", data.len())));
        }
        Ok(Self { shape, data })
    }
}

fn file_err(path: &Path, message: impl Into<String>) -> Error {
    Error::File { path: path.to_path_buf(), message: message.into() }
}

/// Reads a C-ordered little-endian float32 `.npy` file.
pub fn read_npy(path: &Path) -> Result<Tensor> {
    let file = File::open(path).map_err(|e| file_err(path, format!("cannot open: {e}")))?;
    let npy = npyz::NpyFile::new(BufReader::new(file))
        .map_err(|e| file_err(path, format!("not a valid .npy file: {e}")))?;
    let dtype = npy.dtype();
    let descr = match &dtype {
        npyz::DType::Plain(ts) => ts.to_string(),
        other => format!("{other:?}"),
    };
    if descr != "<f4" {
        return Err(file_err(
            path,
            format!("dtype is {descr}, expected float32 (<f4); convert with `a.astype(np.float32)`"),
        ));
    }
    if npy.order() != npyz::Order::C {
        return Err(file_err(path, "Fortran-ordered array; save it with np.ascontiguousarray"));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let data: Vec<f32> =
        npy.into_vec().map_err(|e| file_err(path, format!("truncated or corrupt data: {e}")))?;
    Tensor::new(shape, data).map_err(|e| file_err(path, e.to_string()))
}

/// Writes a float32 `.npy` file.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f32]) -> Result<()> {
    let file = File::create(path).map_err(|e| file_err(path, format!("cannot create: {e}")))?;
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let io = |e: std::io::Error| file_err(path, format!("write failed: {e}"));
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(BufWriter::new(file))
        .begin_nd()
        .map_err(io)?;
    w.extend(data.iter().copied()).map_err(io)?;
    w.finish().map_err(io)
}
