//! The library's one error type. Every variant carries the numbers needed to act on it.

use std::path::PathBuf;

/// Result alias used throughout longctx.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong between a call into longctx and its readback.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No wgpu adapter was found, or none matched the adapter filter.
    #[error(
        "no GPU adapter found{detail}. On headless Linux without a GPU install the software \
         Vulkan driver: `apt-get install mesa-vulkan-drivers` as root, or with sudo (Mesa lavapipe), then retry; \
         `longctx info` lists what wgpu sees"
    )]
    NoAdapter {
        /// Appended to the message: the filter (`LONGCTX_ADAPTER` / `--adapter`) and the
        /// adapters present, with a leading space; empty when no filter was set.
        detail: String,
    },

    /// The chosen adapter refused the device request (limits or features).
    #[error("the adapter refused the device: {0}")]
    RequestDevice(#[from] wgpu::RequestDeviceError),

    /// Tensor lengths or shapes that do not agree; the message names both sides.
    #[error("{0}")]
    Shape(String),

    /// Grouped-query attention needs `heads` to be a multiple of `kv_heads`.
    #[error("query heads ({heads}) must be a multiple of key/value heads ({kv_heads})")]
    HeadGroups {
        /// Query heads H.
        heads: usize,
        /// Key/value heads Hkv.
        kv_heads: usize,
    },

    /// A head dim the kernel cannot run (not a multiple of 4, or above 256).
    #[error("head dim {head_dim} is not supported by the {kernel} kernel: {reason}")]
    HeadDim {
        /// Name of the kernel that refused.
        kernel: &'static str,
        /// The head dim D asked for.
        head_dim: usize,
        /// Which rule D breaks.
        reason: &'static str,
    },

    /// A tensor or problem with a zero-sized dimension.
    #[error("{what} is empty (shape {shape:?}); every dimension must be at least 1")]
    Empty {
        /// What was empty, e.g. `matmul (M, K, N)`.
        what: String,
        /// Its dimensions, at least one of them 0.
        shape: Vec<usize>,
    },

    /// An input holds NaN or an infinity.
    #[error("{what} holds a non-finite value ({value}) at flat index {index}")]
    NonFinite {
        /// Name of the input checked.
        what: String,
        /// Flat index of the first non-finite element.
        index: usize,
        /// The offending value.
        value: f32,
    },

    /// A kernel needs more workgroup memory than the device allows (wgpu does not check this).
    #[error(
        "{kernel}: needs {needed} bytes of workgroup memory, the device allows {limit} \
         (max_compute_workgroup_storage_size)"
    )]
    WorkgroupMemory {
        /// Name of the kernel.
        kernel: &'static str,
        /// Workgroup memory the variant declares, in bytes.
        needed: u64,
        /// `max_compute_workgroup_storage_size`, in bytes.
        limit: u64,
    },

    /// A kernel's workgroup has more invocations than the device allows.
    #[error(
        "{kernel}: needs {needed} invocations per workgroup, the device allows {limit} \
         (max_compute_invocations_per_workgroup / max_compute_workgroup_size_x)"
    )]
    Invocations {
        /// Name of the kernel.
        kernel: &'static str,
        /// Invocations per workgroup the variant needs.
        needed: u32,
        /// The smaller of `max_compute_invocations_per_workgroup` and
        /// `max_compute_workgroup_size_x`.
        limit: u32,
    },

    /// A dispatch needs more workgroups along one dimension than the device allows.
    #[error("{kernel}: needs {needed} workgroups along one dispatch dimension, the device allows {limit}")]
    Dispatch {
        /// Name of the kernel.
        kernel: &'static str,
        /// Workgroup count of the first dimension over the limit.
        needed: u64,
        /// `max_compute_workgroups_per_dimension`.
        limit: u64,
    },

    /// One storage binding would exceed `max_storage_buffer_binding_size`.
    #[error(
        "{what} needs {bytes} bytes in one storage binding, the device allows {limit} \
         (max_storage_buffer_binding_size)"
    )]
    BindingTooLarge {
        /// Which buffer.
        what: String,
        /// Size of the binding, in bytes.
        bytes: u64,
        /// `max_storage_buffer_binding_size`, in bytes.
        limit: u64,
    },

    /// One buffer would exceed `max_buffer_size`.
    #[error("{what} needs a buffer of {bytes} bytes, the device allows {limit} (max_buffer_size)")]
    BufferTooLarge {
        /// Which buffer.
        what: String,
        /// Size of the buffer, in bytes.
        bytes: u64,
        /// `max_buffer_size`, in bytes.
        limit: u64,
    },

    /// One invocation would loop past the adapter's silent loop-iteration cap (Mesa llvmpipe).
    #[error(
        "{kernel}: one invocation would loop {needed} times, this adapter leaves a loop nest after \
         {limit} iterations (Mesa llvmpipe); {hint}"
    )]
    LoopLimit {
        /// Name of the kernel.
        kernel: &'static str,
        /// Loop iterations one invocation would run.
        needed: u64,
        /// Iterations after which the adapter leaves a loop nest.
        limit: u64,
        /// How to stay under the cap.
        hint: &'static str,
    },

    /// A mod's loops ran past the iterations one invocation may spend on them: the result
    /// would have been wrong (an adapter leaves or resets long loops), so none is returned.
    #[error(
        "mods {mods}: their loops ran past the {steps} iterations one invocation of {kernel} may spend on them ({steps_why}); make the mods' loops shorter, or use smaller tiles (fewer keys per pass)",
        steps_why = if *adapter_cap { "what the adapter's loop cap leaves beside the kernel's own loops" } else { "the engine's cap where the adapter states none, against device resets" }
    )]
    ModSteps {
        /// The mods' name (their file, or the named mods).
        mods: String,
        /// The kernel that ran them.
        kernel: &'static str,
        /// The iterations allowed per invocation.
        steps: u32,
        /// Whether `steps` is what an adapter's loop cap leaves (else the engine's own cap).
        adapter_cap: bool,
    },

    /// A score_mod returned NaN or +inf (−inf masks a key): no result is returned.
    #[error(
        "mods {mods}: score_mod returned NaN or +inf in {kernel} (return a finite score, or -inf to mask the key)"
    )]
    ModScore {
        /// The mods' name (their file, or the named mods).
        mods: String,
        /// The kernel that ran them.
        kernel: &'static str,
    },

    /// The host has less memory available than a step needs (checked before allocating).
    #[error("{what} needs {bytes} bytes of host memory, {available} are available")]
    HostMemory {
        /// What would be allocated.
        what: String,
        /// Bytes it needs.
        bytes: u64,
        /// Bytes the host has available (`MemAvailable`).
        available: u64,
    },

    /// A caller's buffer is smaller than the call's shape needs.
    #[error("{what} buffer holds {bytes} bytes, the shape needs {needed}")]
    BufferTooSmall {
        /// Which tensor.
        what: &'static str,
        /// The buffer's size, in bytes.
        bytes: u64,
        /// Bytes the shape needs.
        needed: u64,
    },

    /// A model checkpoint tensor is missing or has the wrong shape for the config.
    #[error("model tensor `{name}`: {message}")]
    ModelTensor {
        /// Full tensor name in the checkpoint, prefix included.
        name: String,
        /// What is wrong with it, with the expected shape.
        message: String,
    },

    /// A tensor, table or buffer holds the wrong number of values.
    #[error("{what} has {got} values; its shape {shape:?} needs {expected}")]
    Length {
        /// What was given.
        what: String,
        /// Values given.
        got: usize,
        /// The shape it must have.
        shape: Vec<usize>,
        /// Values the shape needs.
        expected: usize,
    },

    /// A count, index or position outside the range the call allows.
    #[error("{what} is {value}, outside {min}..={max}")]
    OutOfRange {
        /// What the value is.
        what: String,
        /// The value given.
        value: u64,
        /// Smallest allowed value.
        min: u64,
        /// Largest allowed value.
        max: u64,
    },

    /// Text that does not parse as the option it is given for.
    #[error("{what} `{text}`: expected {expected}")]
    Parse {
        /// The option or value being parsed.
        what: &'static str,
        /// The text given.
        text: String,
        /// What would have parsed, with an example.
        expected: &'static str,
    },

    /// The device lacks a feature the call needs.
    #[error("{needed_for} needs the {feature} feature, which this device lacks; {instead}")]
    MissingFeature {
        /// The wgpu feature.
        feature: &'static str,
        /// What needs it.
        needed_for: &'static str,
        /// What to do instead.
        instead: &'static str,
    },

    /// A kernel configuration (tile shape, lanes, subgroup width) the kernel cannot run.
    #[error("{kernel}: configuration {config} cannot run: {reason}")]
    Config {
        /// Name of the kernel.
        kernel: &'static str,
        /// The configuration, as its `Debug` form.
        config: String,
        /// Which rule it breaks, with the numbers.
        reason: String,
    },

    /// A call that binds its tensors whole got a problem that needs chunks to fit the device.
    #[error(
        "{what} binds its tensors whole; this problem needs {chunks} chunks to fit the device's bindings"
    )]
    NeedsOneBinding {
        /// What binds them whole.
        what: &'static str,
        /// Chunks the problem would need.
        chunks: usize,
    },

    /// A result checked against the f64 oracle is further from it than allowed.
    #[error("{what} is {rel_err:.2e} from the f64 oracle (relative); at most {bound:.0e} is allowed")]
    Inaccurate {
        /// What was checked.
        what: String,
        /// Its relative error ‖got − oracle‖ / ‖oracle‖ (NaN for non-finite output).
        rel_err: f64,
        /// The bound it had to meet.
        bound: f64,
    },

    /// An option or argument outside its allowed values.
    #[error("invalid option: {0}")]
    Invalid(String),

    /// The device rejected a shader variant (WGSL validation or pipeline creation).
    #[error("shader {name} was rejected: {message}")]
    Shader {
        /// Name of the shader variant.
        name: String,
        /// The validation error from wgpu.
        message: String,
    },

    /// One rank of a ring (`parallel`) failed: arguments that differ between ranks, a message of
    /// the wrong length, a panic.
    #[error("rank {rank}: {message}")]
    Rank {
        /// The rank reporting.
        rank: usize,
        /// What it saw.
        message: String,
    },

    /// A rank of a ring saw another one fail: a neighbour gone, or silent past the timeout
    /// (the consequence of another rank's error, not a cause).
    #[error("rank {rank}: {message}")]
    Peer {
        /// The rank reporting.
        rank: usize,
        /// What it saw.
        message: String,
    },

    /// A call this target cannot make: in the browser (wasm32 on WebGPU) a blocking call,
    /// since GPU work completes only when the page's event loop runs, or threads.
    #[error("{what} is not available in the browser (wasm32): {instead}")]
    Unsupported {
        /// The call.
        what: &'static str,
        /// Why, and what to call instead.
        instead: &'static str,
    },

    /// An adapter on a backend the engine does not run on.
    #[error("adapter {adapter} is not supported: {reason}")]
    UnsupportedBackend {
        /// The adapter and its backend.
        adapter: String,
        /// Why, and what to use instead.
        reason: &'static str,
    },

    /// A device-side failure: readback mapping, queue wait, or a kernel set built wrongly.
    #[error("GPU device error: {0}")]
    Device(String),

    /// A file that could not be read or written, or whose contents are not as expected
    /// (format, dtype, shape, a missing tensor).
    #[error("{}: {message}", path.display())]
    File {
        /// The file concerned.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}
