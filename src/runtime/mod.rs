//! The runtime: a device owned or borrowed, buffers and readback, shader assembly with
//! pipeline and layout caches, timing, on-disk caches, and the per-adapter data (profiles,
//! tuned winners) a caller attaches to a [`Gpu`]. It names no kernel.

pub(crate) mod cache;
mod device;
pub mod host;
pub mod profile;
pub mod shader;
pub mod timing;
mod tuning;

pub use device::{
    Gpu, GpuOptions, USEFUL_FEATURES, block_on, device_descriptor, list_adapters, list_adapters_async,
};
pub use profile::{Profile, driver_of};
pub use shader::{BindGroupFields, Binding, Bound, Compiled, Shader, ShaderVariant, Slot, Snippet};
pub use timing::{GpuTimer, Timing};
pub use tuning::{Tuned, cache_hint as tuning_cache_hint};
