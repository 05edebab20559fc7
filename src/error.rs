//! The library's one error type. Every variant carries the numbers needed to act on it.

use std::path::PathBuf;

/// Result alias used throughout longctx.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between a call into longctx and its readback.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no GPU adapter found{detail}. On headless Linux without a GPU install the software \
         Vulkan driver: `sudo apt-get install mesa-vulkan-drivers` (Mesa lavapipe), then retry; \
         `longctx info` lists what wgpu sees"
    )]
    NoAdapter { detail: String },

    #[error("the adapter refused the device: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),

    #[error("{0}")]
    Shape(String),

    #[error("query heads ({heads}) must be a multiple of key/value heads ({kv_heads})")]
    HeadGroups { heads: usize, kv_heads: usize },

    #[error("head dim {head_dim} is not supported by the {kernel} kernel: {reason}")]
    HeadDim { kernel: &'static str, head_dim: usize, reason: &'static str },

    #[error("{what} is empty (shape {shape:?}); every dimension must be at least 1")]
    Empty { what: String, shape: Vec<usize> },

    #[error("{what} holds a non-finite value ({value}) at flat index {index}")]
    NonFinite { what: String, index: usize, value: f32 },

    #[error(
        "{kernel}: needs {needed} bytes of workgroup memory, the device allows {limit} \
         (max_compute_workgroup_storage_size)"
    )]
    WorkgroupMemory { kernel: &'static str, needed: u64, limit: u64 },

    #[error(
        "{kernel}: needs {needed} invocations per workgroup, the device allows {limit} \
         (max_compute_invocations_per_workgroup / max_compute_workgroup_size_x)"
    )]
    Invocations { kernel: &'static str, needed: u32, limit: u32 },

    #[error("{kernel}: needs {needed} workgroups along one dispatch dimension, the device allows {limit}")]
    Dispatch { kernel: &'static str, needed: u64, limit: u64 },

    #[error(
        "{what} needs {bytes} bytes in one storage binding, the device allows {limit} \
         (max_storage_buffer_binding_size)"
    )]
    BindingTooLarge { what: String, bytes: u64, limit: u64 },

    #[error("{what} needs a buffer of {bytes} bytes, the device allows {limit} (max_buffer_size)")]
    BufferTooLarge { what: String, bytes: u64, limit: u64 },

    #[error(
        "{kernel}: one invocation would loop {needed} times, this adapter leaves a loop nest after \
         {limit} iterations (Mesa llvmpipe); {hint}"
    )]
    LoopLimit { kernel: &'static str, needed: u64, limit: u64, hint: &'static str },

    #[error("model tensor `{name}`: {message}")]
    ModelTensor { name: String, message: String },

    #[error("invalid option: {0}")]
    Invalid(String),

    #[error("shader {name} was rejected: {message}")]
    Shader { name: String, message: String },

    #[error("GPU device error: {0}")]
    Device(String),

    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
}
