//! # longctx
//!
//! A compute-shader research engine for the attention tricks behind long-context language
//! models: tiled FlashAttention, ALiBi, sliding windows, MQA/GQA, written in WGSL and run
//! through wgpu on any adapter, each kernel proven against an f64 CPU oracle.
//!
//! ```no_run
//! use longctx::{AttnShape, AttnSpec, Gpu, GpuOptions, Kernel};
//! let gpu = Gpu::new(&GpuOptions::default())?;
//! let shape = AttnShape { batch: 1, heads: 8, kv_heads: 2, n: 1000, m: 1000, head_dim: 64 };
//! let spec = AttnSpec::new(shape).causal(true);
//! let (q, k, v) = (vec![0.1; shape.q_len()], vec![0.2; shape.kv_len()], vec![0.3; shape.kv_len()]);
//! let out = longctx::attention(&gpu, Kernel::Flash, &spec, &q, &k, &v)?;
//! assert_eq!(out.o.len(), shape.q_len());
//! # Ok::<(), longctx::Error>(())
//! ```
//!
//! To run on a host application's own device, wrap it with [`Gpu::from_wgpu`] (and
//! [`Gpu::with_cached_tuning`] for the autotuner's winners) and record into the host's
//! encoder with [`Attention::encode`] on buffers the host owns.
//!
//! The crate is layered, each layer using only those below it: [`contract`] (shapes, masks,
//! block maps, the f64 oracle; no GPU) → [`runtime`] (devices, shader assembly and caches,
//! timing) → [`kernels`] → [`models`] and [`measure`] → the visualiser (`app`, feature
//! `app`) and the `longctx` binary (feature `cli`). With `default-features = false` the
//! library depends on no CLI or GUI crate.

#![warn(missing_docs)]

#[cfg(feature = "app")]
pub mod app;
pub mod contract;
pub mod error;
pub mod io;
pub mod kernels;
pub mod measure;
pub mod models;
pub mod parallel;
pub mod runtime;

pub use contract::blockmap::BlockMap;
pub use contract::mask::Mask;
pub use contract::spec::{Alibi, AttnOutput, AttnSpec, alibi_slopes};
pub use contract::{AttnShape, Window};
pub use error::{Error, Result};
pub use kernels::attention::backward::{Backward, BackwardBuffers, GradTensors, Gradients};
pub use kernels::attention::flash::FlashConfig;
pub use kernels::{Attention, AttentionBuilder, AttnBuffers, DeviceTensors, Inputs, Kernel, attention};
pub use runtime::{Gpu, GpuOptions, Profile, Tuned};

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The short commit hash this build was made from (`unknown` outside a git checkout).
pub const GIT_COMMIT: &str = env!("LONGCTX_GIT_COMMIT");
