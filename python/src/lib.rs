//! `longctx._native`: the extension module under the `longctx` Python package.
//!
//! A thin layer on the library: it turns numpy arrays (float32, C-contiguous — the Python
//! layer converts everything else by its stated rule) into the library's slices without a
//! copy, builds the call's [`AttnSpec`] from the options dict the Python layer normalises,
//! runs the library with the GIL released, and returns new numpy arrays. Errors become the
//! typed exceptions of `longctx.errors`, with the library's message; a panic is caught and
//! raised as `longctx.errors.InternalError`, never carried across the boundary.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use longctx::contract::dsa::{Dsa, Indexer};
use longctx::contract::mask::{BigBird, Mask};
use longctx::contract::mods::{Mods, Named};
use longctx::contract::nsa::{Nsa, NsaGrads};
use longctx::contract::positions::Positions;
use longctx::contract::reference;
use longctx::contract::selection::Moba;
use longctx::kernels::attention::decode::{Decoder, DecoderConfig};
use longctx::kernels::matmul::{Activation, Matmul};
use longctx::measure::plan::{MemoryPlan, ModelShape};
use longctx::{Alibi, AttnOutput, AttnShape, AttnSpec, Backward, Error, Gpu, GpuOptions, Kernel, Window};
use numpy::{IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// The exception of `longctx.errors` an error of the library raises, and its extra arguments.
fn exception_name(e: &Error) -> &'static str {
    match e {
        Error::Shape(_)
        | Error::HeadGroups { .. }
        | Error::HeadDim { .. }
        | Error::Empty { .. }
        | Error::Length { .. } => "ShapeError",
        Error::NonFinite { .. } => "NonFiniteError",
        Error::WorkgroupMemory { .. }
        | Error::Invocations { .. }
        | Error::Dispatch { .. }
        | Error::BindingTooLarge { .. }
        | Error::BufferTooLarge { .. }
        | Error::LoopLimit { .. }
        | Error::HostMemory { .. }
        | Error::BufferTooSmall { .. }
        | Error::NeedsOneBinding { .. } => "LimitError",
        Error::Shader { .. } | Error::ModSteps { .. } | Error::ModScore { .. } => "ShaderError",
        Error::NoAdapter { .. }
        | Error::RequestDevice(_)
        | Error::Unsupported { .. }
        | Error::UnsupportedBackend { .. }
        | Error::MissingFeature { .. } => "DeviceError",
        Error::Invalid(_) | Error::Parse { .. } | Error::Config { .. } | Error::OutOfRange { .. } => {
            "OptionError"
        }
        Error::Inaccurate { .. } => "AccuracyError",
        _ => "LongctxError",
    }
}

/// The typed Python exception of `e`, with the library's message (and, for a shader, the
/// file and line the message names).
fn py_error(py: Python<'_>, e: Error) -> PyErr {
    let name = exception_name(&e);
    let (file, line) = match &e {
        // a mod's messages name `NAME:LINE` (its own checks) or `NAME:LINE:COLUMN` (naga's
        // diagnostics): the user's text comes first in its module, so lines are the user's
        Error::Shader { name, message } => {
            let tag = format!("{name}:");
            let line = message.match_indices(&tag).find_map(|(at, _)| {
                let digits: String =
                    message[at + tag.len()..].chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<u32>().ok()
            });
            (Some(name.clone()), line)
        }
        _ => (None, None),
    };
    raise(py, name, e.to_string(), file, line)
}

fn raise(py: Python<'_>, name: &str, message: String, file: Option<String>, line: Option<u32>) -> PyErr {
    let class = py.import("longctx.errors").and_then(|m| m.getattr(name));
    match class {
        Ok(class) => {
            let made = if name == "ShaderError" {
                class.call1((message.clone(), file, line))
            } else {
                class.call1((message.clone(),))
            };
            match made {
                Ok(instance) => PyErr::from_value(instance),
                Err(err) => err,
            }
        }
        // only when the package is broken: still the message, as a plain error
        Err(_) => PyValueError::new_err(message),
    }
}

/// Runs `f` with the GIL released, its panics caught: the library's errors become typed
/// exceptions, a panic `InternalError`.
fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> longctx::Result<T> + Send) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(f))) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(py_error(py, e)),
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic without a message".into());
            Err(raise(
                py,
                "InternalError",
                format!("longctx panicked (a bug; please report it): {what}"),
                None,
                None,
            ))
        }
    }
}

/// A library error raised in Python, for checks made with the GIL held.
fn fail<T>(py: Python<'_>, e: Error) -> PyResult<T> {
    Err(py_error(py, e))
}

/// A float32 array's data (C-contiguous: the Python layer made it so).
fn slice<'a>(py: Python<'_>, a: &'a PyReadonlyArrayDyn<'_, f32>, what: &str) -> PyResult<&'a [f32]> {
    match a.as_slice() {
        Ok(s) => Ok(s),
        Err(_) => fail(py, Error::Shape(format!("{what}: the array is not C-contiguous"))),
    }
}

/// A new numpy array of `data` with `dims`.
fn array<'py, T: numpy::Element>(
    py: Python<'py>,
    data: Vec<T>,
    dims: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    data.into_pyarray(py).reshape(dims.to_vec())
}

/// Two new arrays: (O, LSE).
type Two<'py, T> = (Bound<'py, PyArrayDyn<T>>, Bound<'py, PyArrayDyn<T>>);
/// Three new arrays: (dQ, dK, dV).
type Three<'py, T> = (Bound<'py, PyArrayDyn<T>>, Bound<'py, PyArrayDyn<T>>, Bound<'py, PyArrayDyn<T>>);

/// The options of an attention call, normalised by the Python layer (every key present).
#[derive(FromPyObject)]
struct Opts {
    #[pyo3(item)]
    causal: bool,
    /// `L,R` (`-1`: unbounded side), as `Window::parse` reads it.
    #[pyo3(item)]
    window: Option<String>,
    /// `off`, `standard` or `custom` (then `slopes`).
    #[pyo3(item)]
    alibi: String,
    #[pyo3(item)]
    slopes: Option<Vec<f32>>,
    #[pyo3(item)]
    scale: Option<f32>,
    #[pyo3(item)]
    global_tokens: Option<usize>,
    #[pyo3(item)]
    segments: Option<Vec<u32>>,
    /// (dims, cells) of a block mask `[H or 1, ceil(N/B), ceil(M/B)]`, with `block_size`.
    #[pyo3(item)]
    block_mask: Option<(Vec<usize>, Vec<f32>)>,
    #[pyo3(item)]
    block_size: Option<usize>,
    #[pyo3(item)]
    bigbird: Option<String>,
    /// RoPE as `theta=…[,interleaved][,offset=P]`.
    #[pyo3(item)]
    rope: Option<String>,
    /// Sinusoidal encoding as `[base=…][,offset=P]`.
    #[pyo3(item)]
    sinusoidal: Option<String>,
    /// Named mods (`softcap=30`, `sinks=4,window=64`, …).
    #[pyo3(item)]
    mods: Vec<String>,
    #[pyo3(item)]
    score_mod: Option<String>,
    #[pyo3(item)]
    mask_mod: Option<String>,
    #[pyo3(item)]
    mod_buffers: Vec<(String, Vec<f64>)>,
    #[pyo3(item)]
    q_start: Option<i64>,
}

impl Opts {
    /// The call's mods: the WGSL functions from strings, then the named ones, ANDed, with the
    /// buffers they declare.
    fn mods(&self, shape: &AttnShape) -> longctx::Result<Option<Mods>> {
        let mut all: Vec<Mods> = Vec::new();
        let same = self.score_mod.is_some() && self.score_mod == self.mask_mod;
        for (text, function) in [(&self.score_mod, "score_mod"), (&self.mask_mod, "mask_mod")] {
            let Some(text) = text else { continue };
            if same && function == "mask_mod" {
                continue; // one source defines both
            }
            let name = if same { "mods" } else { function };
            let mods = Mods::wgsl(name, text)?;
            let defines = if function == "score_mod" { mods.has_score_mod() } else { mods.has_mask_mod() };
            if !defines {
                return Err(Error::Invalid(format!("{function}: the source defines no `fn {function}`")));
            }
            all.push(mods);
        }
        if !self.mods.is_empty() {
            let named = self
                .mods
                .iter()
                .map(|t| Named::parse(t, shape.heads))
                .collect::<longctx::Result<Vec<_>>>()?;
            all.push(Named::compose(&named)?);
        }
        let mut out = Mods::all_of(all)?;
        for (name, values) in &self.mod_buffers {
            let Some(mods) = out.take() else {
                return Err(Error::Invalid(format!(
                    "mod_buffers[{name:?}]: no score_mod / mask_mod source declares buffers"
                )));
            };
            out = Some(mods.with_buffer(name, values)?);
        }
        if let Some(m) = &out {
            m.check_buffers()?;
        }
        Ok(out)
    }

    /// The call's spec for `shape`, validated.
    fn spec(&self, shape: AttnShape) -> longctx::Result<AttnSpec> {
        let window = self.window.as_deref().map(Window::parse).transpose()?;
        let alibi = match (self.alibi.as_str(), &self.slopes) {
            ("off", _) => Alibi::Off,
            ("standard", _) => Alibi::Standard,
            ("custom", Some(s)) => Alibi::Custom(s.clone()),
            (other, _) => return Err(Error::Invalid(format!("alibi `{other}`"))),
        };
        let mut parts: Vec<Mask> = Vec::new();
        if let Some(g) = self.global_tokens {
            parts.push(Mask::Global(g));
        }
        if let Some(text) = &self.bigbird {
            parts.push(Mask::bigbird(&BigBird::parse(text)?, shape.m)?);
        }
        if let Some(ids) = &self.segments {
            parts.push(Mask::Segments(Arc::new(ids.clone())));
        }
        match (&self.block_mask, self.block_size) {
            (Some((dims, cells)), Some(bs)) => parts.push(Mask::block_mask(&shape, bs, dims, cells)?),
            (None, None) => {}
            _ => return Err(Error::Invalid("block_mask and block_size go together".into())),
        }
        let positions = positions(self.rope.as_deref(), self.sinusoidal.as_deref())?;
        let mut spec = AttnSpec::new(shape)
            .causal(self.causal)
            .window(window)
            .alibi(alibi)
            .scale(self.scale)
            .positions(positions)
            .q_start(self.q_start)
            .mods(self.mods(&shape)?);
        spec.mask = match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(Mask::And(parts)),
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// The positional encoding of a call: RoPE (`theta=…`) or sinusoidal, not both.
fn positions(rope: Option<&str>, sinusoidal: Option<&str>) -> longctx::Result<Option<Positions>> {
    match (rope, sinusoidal) {
        (Some(_), Some(_)) => {
            Err(Error::Invalid("rope and sinusoidal: choose one positional encoding".into()))
        }
        (Some(r), None) => Ok(Some(Positions::parse(r, true)?)),
        (None, Some(s)) => Ok(Some(Positions::parse(s, false)?)),
        (None, None) => Ok(None),
    }
}

/// The attention shape of Q `[B,H,N,D]` (or `[H,N,D]`) and K, V `[B,Hkv,M,D]` (or `[Hkv,M,D]`).
fn attn_shape(q: &[usize], k: &[usize], v: &[usize]) -> longctx::Result<AttnShape> {
    let four = |d: &[usize]| -> Option<[usize; 4]> {
        match *d {
            [b, h, n, e] => Some([b, h, n, e]),
            [h, n, e] => Some([1, h, n, e]),
            _ => None,
        }
    };
    let (Some(q4), Some(k4)) = (four(q), four(k)) else {
        return Err(Error::Shape(format!(
            "Q, K and V must be [B, H, N, D] or [H, N, D] arrays: Q is {q:?}, K is {k:?}"
        )));
    };
    if q.len() != k.len() || k != v {
        return Err(Error::Shape(format!(
            "Q {q:?}, K {k:?} and V {v:?}: K and V must have one shape, and Q the same rank"
        )));
    }
    if q4[0] != k4[0] || q4[3] != k4[3] {
        return Err(Error::Shape(format!("Q {q:?} and K {k:?} must agree on the batch and the head dim D")));
    }
    Ok(AttnShape { batch: q4[0], heads: q4[1], kv_heads: k4[1], n: q4[2], m: k4[2], head_dim: q4[3] })
}

/// Q, K and V of a call, read in place: the attention shape they give, the dims of Q and of
/// K (V's), and their data.
struct Qkv<'a> {
    shape: AttnShape,
    q_dims: Vec<usize>,
    kv_dims: Vec<usize>,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

impl<'a> Qkv<'a> {
    fn new(
        py: Python<'_>,
        q: &'a PyReadonlyArrayDyn<'_, f32>,
        k: &'a PyReadonlyArrayDyn<'_, f32>,
        v: &'a PyReadonlyArrayDyn<'_, f32>,
    ) -> PyResult<Self> {
        let shape = attn_shape(q.shape(), k.shape(), v.shape()).or_else(|e| fail(py, e))?;
        Ok(Self {
            shape,
            q_dims: q.shape().to_vec(),
            kv_dims: k.shape().to_vec(),
            q: slice(py, q, "q")?,
            k: slice(py, k, "k")?,
            v: slice(py, v, "v")?,
        })
    }

    /// The data of `a` (named `what`), which the call needs shaped `want`.
    fn other<'b>(
        &self,
        py: Python<'_>,
        what: &str,
        a: &'b PyReadonlyArrayDyn<'_, f32>,
        want: &[usize],
    ) -> PyResult<&'b [f32]> {
        if a.shape() != want {
            return fail(
                py,
                Error::Shape(format!("{what} has shape {:?}, the call needs {want:?}", a.shape())),
            );
        }
        slice(py, a, what)
    }
}

/// The LSE's dims: Q's without D.
fn lse_dims(q: &[usize]) -> Vec<usize> {
    q[..q.len() - 1].to_vec()
}

fn kernel_of(name: &str) -> longctx::Result<Kernel> {
    match name {
        "flash" => Ok(Kernel::Flash),
        "naive" => Ok(Kernel::Naive),
        other => Err(Error::Invalid(format!("kernel `{other}`: choose flash or naive"))),
    }
}

/// A device: an adapter, its limits and profile, the kernels' pipelines cached on it.
#[pyclass(frozen, module = "longctx._native")]
struct Device {
    gpu: Arc<Gpu>,
}

#[pymethods]
impl Device {
    #[new]
    #[pyo3(signature = (adapter=None, backend=None, profile=None, tuned=true))]
    fn new(
        py: Python<'_>,
        adapter: Option<String>,
        backend: Option<String>,
        profile: Option<String>,
        tuned: bool,
    ) -> PyResult<Self> {
        let options = GpuOptions {
            backends: backends(py, backend.as_deref())?,
            adapter,
            profile,
            tuned,
            ..GpuOptions::from_env()
        };
        let gpu = detached(py, move || Gpu::new(&options))?;
        Ok(Self { gpu: Arc::new(gpu) })
    }

    /// The adapter: name, backend, driver, device type, the profile in use and whether
    /// tuned winners are attached.
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let info = self.gpu.info();
        let d = PyDict::new(py);
        d.set_item("name", &info.name)?;
        d.set_item("backend", format!("{:?}", info.backend))?;
        d.set_item("driver", self.gpu.driver())?;
        d.set_item("device_type", format!("{:?}", info.device_type))?;
        d.set_item("profile", self.gpu.profile().1)?;
        d.set_item("tuned", self.gpu.tuned().is_some())?;
        d.set_item("loop_iteration_limit", self.gpu.loop_iteration_limit())?;
        d.set_item("cooperative_matrices", self.gpu.cooperative_matrices().len())?;
        Ok(d)
    }

    /// The limits the engine checks before it allocates or dispatches.
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let l = self.gpu.limits();
        let d = PyDict::new(py);
        d.set_item("max_buffer_size", l.max_buffer_size)?;
        d.set_item("max_storage_buffer_binding_size", l.max_storage_buffer_binding_size)?;
        d.set_item("max_compute_workgroup_storage_size", l.max_compute_workgroup_storage_size)?;
        d.set_item("max_compute_invocations_per_workgroup", l.max_compute_invocations_per_workgroup)?;
        d.set_item("max_compute_workgroup_size_x", l.max_compute_workgroup_size_x)?;
        d.set_item("max_compute_workgroups_per_dimension", l.max_compute_workgroups_per_dimension)?;
        Ok(d)
    }

    /// The profile's presets, as the library prints them.
    fn profile(&self) -> String {
        let (p, name) = self.gpu.profile();
        format!("{name}: {p:?}")
    }

    /// Attention under the contract: `(O, LSE)` as float32 arrays shaped like Q and Q
    /// without D.
    fn attention<'py>(
        &self,
        py: Python<'py>,
        q: PyReadonlyArrayDyn<'py, f32>,
        k: PyReadonlyArrayDyn<'py, f32>,
        v: PyReadonlyArrayDyn<'py, f32>,
        kernel: &str,
        opts: Opts,
    ) -> PyResult<Two<'py, f32>> {
        let t = Qkv::new(py, &q, &k, &v)?;
        let gpu = &self.gpu;
        let out = detached(py, || {
            let spec = opts.spec(t.shape)?;
            longctx::attention(gpu, kernel_of(kernel)?, &spec, t.q, t.k, t.v)
        })?;
        Ok((array(py, out.o, &t.q_dims)?, array(py, out.lse, &lse_dims(&t.q_dims))?))
    }

    /// dQ, dK, dV of the forward `(O, LSE)` the caller ran on Q, K, V, for the incoming
    /// gradient dO.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward<'py>(
        &self,
        py: Python<'py>,
        q: PyReadonlyArrayDyn<'py, f32>,
        k: PyReadonlyArrayDyn<'py, f32>,
        v: PyReadonlyArrayDyn<'py, f32>,
        o: PyReadonlyArrayDyn<'py, f32>,
        lse: PyReadonlyArrayDyn<'py, f32>,
        d_o: PyReadonlyArrayDyn<'py, f32>,
        opts: Opts,
    ) -> PyResult<Three<'py, f32>> {
        let t = Qkv::new(py, &q, &k, &v)?;
        let os = t.other(py, "o", &o, &t.q_dims)?;
        let ds = t.other(py, "do", &d_o, &t.q_dims)?;
        let ls = t.other(py, "lse", &lse, &lse_dims(&t.q_dims))?;
        let gpu = &self.gpu;
        let g = detached(py, || {
            let spec = opts.spec(t.shape)?;
            let out = AttnOutput { o: os.to_vec(), lse: ls.to_vec() };
            Backward::new(gpu, &spec)?.run_given(gpu, t.q, t.k, t.v, &out, ds)
        })?;
        Ok((array(py, g.dq, &t.q_dims)?, array(py, g.dk, &t.kv_dims)?, array(py, g.dv, &t.kv_dims)?))
    }

    /// MoBA: each query's blocks chosen on the GPU, then attention over them: `(O, LSE,
    /// blocks)`, blocks `[.., H, N, topk]` int64 (−1 where a row chose fewer).
    #[allow(clippy::too_many_arguments)]
    fn moba<'py>(
        &self,
        py: Python<'py>,
        q: PyReadonlyArrayDyn<'py, f32>,
        k: PyReadonlyArrayDyn<'py, f32>,
        v: PyReadonlyArrayDyn<'py, f32>,
        block: usize,
        topk: usize,
        opts: Opts,
    ) -> PyResult<MobaOut<'py, f32>> {
        let t = Qkv::new(py, &q, &k, &v)?;
        let gpu = &self.gpu;
        let (out, lists, _) = detached(py, || {
            let spec = opts.spec(t.shape)?;
            longctx::kernels::selection::moba_attention(gpu, &spec, &Moba { block, topk }, t.q, t.k, t.v)
        })?;
        moba_out(py, out.o, out.lse, &lists, &t.q_dims, topk)
    }

    /// MoBA's forward and backward for the incoming gradient dO (no gradient through the
    /// choice): `(O, LSE, dQ, dK, dV, blocks)`.
    #[allow(clippy::too_many_arguments)]
    fn moba_backward<'py>(
        &self,
        py: Python<'py>,
        q: PyReadonlyArrayDyn<'py, f32>,
        k: PyReadonlyArrayDyn<'py, f32>,
        v: PyReadonlyArrayDyn<'py, f32>,
        d_o: PyReadonlyArrayDyn<'py, f32>,
        block: usize,
        topk: usize,
        opts: Opts,
    ) -> PyResult<MobaGrads<'py, f32>> {
        let t = Qkv::new(py, &q, &k, &v)?;
        let ds = t.other(py, "do", &d_o, &t.q_dims)?;
        let gpu = &self.gpu;
        let (out, g, lists, _) = detached(py, || {
            let spec = opts.spec(t.shape)?;
            longctx::kernels::selection::moba_backward(gpu, &spec, &Moba { block, topk }, t.q, t.k, t.v, ds)
        })?;
        moba_grads_out(py, (out.o, out.lse), (g.dq, g.dk, g.dv), &lists, &t, topk)
    }

    /// NSA (native sparse attention): the compressed, selected and window branches on the GPU,
    /// mixed by the gates: `(O, blocks)`, blocks `[.., H, N, top]` int64 (−1 where fewer).
    #[allow(clippy::too_many_arguments)]
    fn nsa<'py>(
        &self,
        py: Python<'py>,
        q: PyReadonlyArrayDyn<'py, f32>,
        k: PyReadonlyArrayDyn<'py, f32>,
        v: PyReadonlyArrayDyn<'py, f32>,
        gates: PyReadonlyArrayDyn<'py, f32>,
        phi: Option<PyReadonlyArrayDyn<'py, f32>>,
        nsa: (usize, usize, usize, usize, usize),
        opts: Opts,
    ) -> PyResult<NsaOut<'py, f32>> {
        let t = Qkv::new(py, &q, &k, &v)?;
        let (nsa, g, p) = nsa_inputs(py, &t, nsa, &gates, phi.as_ref())?;
        let gpu = &self.gpu;
        let out = detached(py, || {
            longctx::kernels::nsa::nsa_attention(gpu, &opts.spec(t.shape)?, &nsa, t.q, t.k, t.v, g, p)
        })?;
        Ok((array(py, out.o, &t.q_dims)?, blocks_out(py, &out.lists, &t.q_dims, nsa.topk)?))
    }

    /// NSA's forward and backward for dO (no gradient through the choice): `(O, dQ, dK, dV,
    /// dgates, dphi, blocks)`.
    #[allow(clippy::too_many_arguments)]
    fn nsa_backward<'py>(
        &self,
        py: Python<'py>,
        q: PyReadonlyArrayDyn<'py, f32>,
        k: PyReadonlyArrayDyn<'py, f32>,
        v: PyReadonlyArrayDyn<'py, f32>,
        d_o: PyReadonlyArrayDyn<'py, f32>,
        gates: PyReadonlyArrayDyn<'py, f32>,
        phi: Option<PyReadonlyArrayDyn<'py, f32>>,
        nsa: (usize, usize, usize, usize, usize),
        opts: Opts,
    ) -> PyResult<NsaGradsOut<'py, f32>> {
        let t = Qkv::new(py, &q, &k, &v)?;
        let ds = t.other(py, "do", &d_o, &t.q_dims)?;
        let (nsa, g, p) = nsa_inputs(py, &t, nsa, &gates, phi.as_ref())?;
        let gpu = &self.gpu;
        let (out, gr) = detached(py, || {
            let spec = opts.spec(t.shape)?;
            longctx::kernels::nsa::nsa_backward(gpu, &spec, &nsa, (t.q, t.k, t.v), g, p, ds)
        })?;
        nsa_grads_out(py, &t, &nsa, out.o, gr, &out.lists)
    }

    /// DSA: the lightning indexer's choice of keys on the GPU, then attention over them:
    /// `(O, LSE, keys)`, keys `[.., N, topk]` int64 ascending (−1 where a row sees fewer).
    #[allow(clippy::too_many_arguments)]
    fn dsa<'py>(
        &self,
        py: Python<'py>,
        q: PyReadonlyArrayDyn<'py, f32>,
        k: PyReadonlyArrayDyn<'py, f32>,
        v: PyReadonlyArrayDyn<'py, f32>,
        index: (PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>),
        topk: usize,
        opts: Opts,
    ) -> PyResult<MobaOut<'py, f32>> {
        let t = Qkv::new(py, &q, &k, &v)?;
        let (dsa, ix) = dsa_inputs(py, &t, topk, &index)?;
        let gpu = &self.gpu;
        let (out, lists, _) = detached(py, || {
            longctx::kernels::dsa::dsa_attention(gpu, &opts.spec(t.shape)?, &dsa, (t.q, t.k, t.v), &ix)
        })?;
        dsa_out(py, (out.o, out.lse), &lists, &t, topk)
    }

    /// DSA's forward and backward for dO (no gradient into the indexer): `(O, LSE, dQ, dK,
    /// dV, keys)`.
    #[allow(clippy::too_many_arguments)]
    fn dsa_backward<'py>(
        &self,
        py: Python<'py>,
        q: PyReadonlyArrayDyn<'py, f32>,
        k: PyReadonlyArrayDyn<'py, f32>,
        v: PyReadonlyArrayDyn<'py, f32>,
        d_o: PyReadonlyArrayDyn<'py, f32>,
        index: (PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>),
        topk: usize,
        opts: Opts,
    ) -> PyResult<MobaGrads<'py, f32>> {
        let t = Qkv::new(py, &q, &k, &v)?;
        let ds = t.other(py, "do", &d_o, &t.q_dims)?;
        let (dsa, ix) = dsa_inputs(py, &t, topk, &index)?;
        let gpu = &self.gpu;
        let (out, g, lists) = detached(py, || {
            longctx::kernels::dsa::dsa_backward(gpu, &opts.spec(t.shape)?, &dsa, (t.q, t.k, t.v), &ix, ds)
        })?;
        let (o, lse, keys) = dsa_out(py, (out.o, out.lse), &lists, &t, topk)?;
        Ok((
            o,
            lse,
            array(py, g.dq, &t.q_dims)?,
            array(py, g.dk, &t.kv_dims)?,
            array(py, g.dv, &t.kv_dims)?,
            keys,
        ))
    }

    /// DSA's indexer warm-up on the GPU: the KL alignment loss of the indexer's distribution
    /// to the dense causal attention's (summed over a batch's sequences) and its gradients:
    /// `(loss, dqI, dkI, dw)` shaped as the indexer's inputs.
    fn dsa_alignment<'py>(
        &self,
        py: Python<'py>,
        q: PyReadonlyArrayDyn<'py, f32>,
        k: PyReadonlyArrayDyn<'py, f32>,
        index: (PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>),
        opts: Opts,
    ) -> PyResult<AlignmentOut<'py, f32>> {
        let t = Qkv::new(py, &q, &k, &k)?;
        // topk does not enter the loss
        let (dsa, ix) = dsa_inputs(py, &t, 1, &index)?;
        let gpu = &self.gpu;
        let a = detached(py, || {
            longctx::kernels::dsa::dsa_alignment(gpu, &opts.spec(t.shape)?, &dsa, (t.q, t.k), &ix)
        })?;
        let (qd, kd, wd) = (index.0.shape().to_vec(), index.1.shape().to_vec(), index.2.shape().to_vec());
        Ok((a.loss, array(py, a.dq, &qd)?, array(py, a.dk, &kd)?, array(py, a.dw, &wd)?))
    }

    /// DSA's sparse-stage alignment on the GPU: the choice and the attention over it (for its
    /// LSE), then the KL of the indexer's distribution to the attention's over each row's
    /// chosen keys (summed over a batch's sequences) and its gradients: `(loss, dqI, dkI, dw,
    /// keys)`.
    fn dsa_sparse_alignment<'py>(
        &self,
        py: Python<'py>,
        q: PyReadonlyArrayDyn<'py, f32>,
        k: PyReadonlyArrayDyn<'py, f32>,
        index: (PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>),
        topk: usize,
        opts: Opts,
    ) -> PyResult<SparseAlignmentOut<'py>> {
        let t = Qkv::new(py, &q, &k, &k)?;
        let (dsa, ix) = dsa_inputs(py, &t, topk, &index)?;
        let gpu = &self.gpu;
        let (a, lists) = detached(py, || {
            longctx::kernels::dsa::dsa_sparse_alignment(gpu, &opts.spec(t.shape)?, &dsa, (t.q, t.k), &ix)
        })?;
        let (qd, kd, wd) = (index.0.shape().to_vec(), index.1.shape().to_vec(), index.2.shape().to_vec());
        let mut rows = t.q_dims[..t.q_dims.len() - 3].to_vec();
        rows.extend([t.shape.n, 1]);
        let keys = blocks_out(py, &lists, &rows, topk)?;
        Ok((a.loss, array(py, a.dq, &qd)?, array(py, a.dk, &kd)?, array(py, a.dw, &wd)?, keys))
    }

    /// C = act(A·B + bias) for A `[M, K]`, B `[K, N]`, bias `[N]`.
    #[pyo3(signature = (a, b, bias=None, activation=None))]
    fn matmul<'py>(
        &self,
        py: Python<'py>,
        a: PyReadonlyArrayDyn<'py, f32>,
        b: PyReadonlyArrayDyn<'py, f32>,
        bias: Option<PyReadonlyArrayDyn<'py, f32>>,
        activation: Option<&str>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (&[m, ka], &[kb, n]) = (a.shape(), b.shape()) else {
            return fail(
                py,
                Error::Shape(format!("matmul: A and B must be 2-D, got {:?} and {:?}", a.shape(), b.shape())),
            );
        };
        if ka != kb {
            return fail(
                py,
                Error::Shape(format!("matmul: A is [{m}, {ka}] and B [{kb}, {n}]: the inner sizes differ")),
            );
        }
        if let Some(bias) = &bias
            && bias.shape() != [n]
        {
            return fail(
                py,
                Error::Shape(format!("matmul: bias has shape {:?}, the call needs [{n}]", bias.shape())),
            );
        }
        let act = match activation {
            None | Some("none") => Activation::None,
            Some("gelu") => Activation::Gelu,
            Some("gelu_erf") => Activation::GeluErf,
            Some(other) => {
                return fail(
                    py,
                    Error::Invalid(format!("activation `{other}`: choose None, 'gelu' or 'gelu_erf'")),
                );
            }
        };
        let (sa, sb) = (slice(py, &a, "a")?, slice(py, &b, "b")?);
        let sbias = match &bias {
            Some(x) => Some(slice(py, x, "bias")?),
            None => None,
        };
        let gpu = &self.gpu;
        // the library checks the values (finite) before it uploads them
        let c = detached(py, || Matmul::new(gpu, m, ka, n, sbias.is_some(), act)?.run(gpu, sa, sb, sbias))?;
        array(py, c, &[m, n])
    }

    /// One benchmark configuration, validated against the oracle then timed: its record as
    /// JSON (the Python layer parses it).
    fn bench_record(
        &self,
        py: Python<'_>,
        shape: (usize, usize, usize, usize, usize, usize),
        kernel: &str,
        reps: usize,
        opts: Opts,
    ) -> PyResult<String> {
        let (batch, heads, kv_heads, n, m, head_dim) = shape;
        let shape = AttnShape { batch, heads, kv_heads, n, m, head_dim };
        let gpu = &self.gpu;
        detached(py, || {
            let spec = opts.spec(shape)?;
            let peak = longctx::kernels::peak::best_reading(gpu)?;
            let mask = spec.describe();
            let record = longctx::measure::bench::run_config(
                gpu,
                kernel_of(kernel)?,
                &spec,
                reps,
                &peak,
                false,
                &mask,
            );
            serde_json::to_string(&record).map_err(|e| Error::Invalid(e.to_string()))
        })
    }

    /// A KV cache with its decoder (one layer unless `layers` says more).
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (heads, kv_heads, head_dim, capacity, window=None, ring=false, alibi=false, scale=None, layers=1, max_step_tokens=1, rope=None, sinusoidal=None))]
    fn kv_cache(
        &self,
        py: Python<'_>,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        window: Option<usize>,
        ring: bool,
        alibi: bool,
        scale: Option<f32>,
        layers: usize,
        max_step_tokens: usize,
        rope: Option<String>,
        sinusoidal: Option<String>,
    ) -> PyResult<KvCache> {
        let gpu = self.gpu.clone();
        let decoder = detached(py, || {
            let positions = positions(rope.as_deref(), sinusoidal.as_deref())?;
            let mut cfg = DecoderConfig::new(heads, kv_heads, head_dim, capacity);
            cfg.window = window;
            cfg.ring = ring;
            cfg.alibi = if alibi { Alibi::Standard } else { Alibi::Off };
            cfg.scale = scale;
            cfg.layers = layers;
            cfg.max_step_tokens = max_step_tokens;
            cfg.positions = positions;
            Decoder::new(&gpu, cfg)
        })?;
        Ok(KvCache { gpu: self.gpu.clone(), decoder: Mutex::new(decoder), heads, kv_heads, head_dim })
    }
}

/// The backends named in `text` (e.g. `vulkan`, `metal,dx12`), or the library's default.
fn backends(py: Python<'_>, text: Option<&str>) -> PyResult<Option<wgpu::Backends>> {
    let Some(text) = text else { return Ok(None) };
    let b = wgpu::Backends::from_comma_list(text);
    if b.is_empty() {
        return fail(
            py,
            Error::Invalid(format!("backend `{text}`: name vulkan, metal, dx12 or gl (comma-separated)")),
        );
    }
    Ok(Some(b))
}

/// A decoder's KV cache: prompts appended, steps decoded.
#[pyclass(frozen, module = "longctx._native")]
struct KvCache {
    gpu: Arc<Gpu>,
    /// Locked only with the GIL released (a step may take a while).
    decoder: Mutex<Decoder>,
    /// The decoder's query heads, kv heads and head dim, for the shape checks.
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl KvCache {
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Gpu, &mut Decoder) -> longctx::Result<T> + Send,
    ) -> PyResult<T> {
        let gpu = &self.gpu;
        let decoder = &self.decoder;
        detached(py, || {
            let mut d = decoder
                .lock()
                .map_err(|_| Error::Invalid("the cache is unusable: an earlier call panicked".into()))?;
            f(gpu, &mut d)
        })
    }

    fn kv<'a>(
        &self,
        py: Python<'_>,
        k: &'a PyReadonlyArrayDyn<'_, f32>,
        v: &'a PyReadonlyArrayDyn<'_, f32>,
    ) -> PyResult<(&'a [f32], &'a [f32], usize)> {
        let (hkv, d) = (self.kv_heads, self.head_dim);
        let (&[h, t, e], true) = (k.shape(), k.shape() == v.shape()) else {
            return fail(
                py,
                Error::Shape(format!(
                    "k and v must both be [Hkv, T, D] = [{hkv}, T, {d}]: got {:?} and {:?}",
                    k.shape(),
                    v.shape()
                )),
            );
        };
        if h != hkv || e != d {
            return fail(
                py,
                Error::Shape(format!("k and v must be [Hkv, T, D] = [{hkv}, T, {d}]: got [{h}, {t}, {e}]")),
            );
        }
        Ok((slice(py, k, "k")?, slice(py, v, "v")?, t))
    }
}

#[pymethods]
impl KvCache {
    /// Appends a prompt's K and V (`[Hkv, T, D]`) to `layer` without attending.
    #[pyo3(signature = (k, v, layer=0))]
    fn append(
        &self,
        py: Python<'_>,
        k: PyReadonlyArrayDyn<'_, f32>,
        v: PyReadonlyArrayDyn<'_, f32>,
        layer: usize,
    ) -> PyResult<()> {
        let (ks, vs, _) = self.kv(py, &k, &v)?;
        self.with(py, |gpu, d| d.prefill(gpu, layer, ks, vs))
    }

    /// One decoding step: appends the new tokens' K and V (`[Hkv, T, D]`) to `layer` and
    /// attends their queries (`[H, T, D]`) to the whole cache; returns O `[H, T, D]`.
    #[pyo3(signature = (q, k, v, layer=0))]
    fn step<'py>(
        &self,
        py: Python<'py>,
        q: PyReadonlyArrayDyn<'py, f32>,
        k: PyReadonlyArrayDyn<'py, f32>,
        v: PyReadonlyArrayDyn<'py, f32>,
        layer: usize,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let (ks, vs, t) = self.kv(py, &k, &v)?;
        let (heads, d) = (self.heads, self.head_dim);
        if q.shape() != [heads, t, d] {
            return fail(
                py,
                Error::Shape(format!("q must be [H, T, D] = [{heads}, {t}, {d}]: got {:?}", q.shape())),
            );
        }
        let qs = slice(py, &q, "q")?;
        // the decoder checks every value (finite) before it appends anything
        let o = self.with(py, |gpu, dec| {
            dec.step(gpu, layer, qs, ks, vs)?;
            Ok(dec.output(gpu)?.o)
        })?;
        array(py, o, &[heads, t, d])
    }

    /// Positions cached in `layer`.
    #[pyo3(signature = (layer=0))]
    fn len(&self, py: Python<'_>, layer: usize) -> PyResult<usize> {
        self.with(py, |_, d| Ok(d.cache().len(layer)))
    }

    /// Device bytes of the cache, all layers.
    fn bytes(&self, py: Python<'_>) -> PyResult<u64> {
        self.with(py, |_, d| Ok(d.cache().bytes()))
    }

    /// The attend kernel the decoder runs and its cache slots per split.
    fn kernel(&self, py: Python<'_>) -> PyResult<(String, usize)> {
        self.with(py, |_, d| Ok((d.kernel().name().to_string(), d.chunk())))
    }
}

/// The float64 oracle: `(O, LSE)` as float64 arrays.
#[pyfunction]
fn reference_attention<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    v: PyReadonlyArrayDyn<'py, f32>,
    opts: Opts,
) -> PyResult<Two<'py, f64>> {
    let t = Qkv::new(py, &q, &k, &v)?;
    let (o, lse) = detached(py, || reference::attention_f64(&opts.spec(t.shape)?, t.q, t.k, t.v))?;
    Ok((array(py, o, &t.q_dims)?, array(py, lse, &lse_dims(&t.q_dims))?))
}

/// The float64 oracle's MoBA: its own choice, then attention over it: `(O, LSE, blocks)`.
#[pyfunction]
fn reference_moba<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    v: PyReadonlyArrayDyn<'py, f32>,
    block: usize,
    topk: usize,
    opts: Opts,
) -> PyResult<MobaOut<'py, f64>> {
    let t = Qkv::new(py, &q, &k, &v)?;
    let (o, lse, lists) = detached(py, || {
        let (spec, moba) = (opts.spec(t.shape)?, Moba { block, topk });
        let lists = longctx::contract::selection::moba_select_f64(&spec, &moba, t.q, t.k)?;
        let (o, lse) = reference::attention_f64(&moba.spec(&spec, &lists)?, t.q, t.k, t.v)?;
        Ok((o, lse, lists))
    })?;
    moba_out(py, o, lse, &lists, &t.q_dims, topk)
}

/// The float64 oracle's MoBA forward and backward: its own choice, then attention and its
/// gradients over it: `(O, LSE, dQ, dK, dV, blocks)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn reference_moba_backward<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    v: PyReadonlyArrayDyn<'py, f32>,
    d_o: PyReadonlyArrayDyn<'py, f32>,
    block: usize,
    topk: usize,
    opts: Opts,
) -> PyResult<MobaGrads<'py, f64>> {
    let t = Qkv::new(py, &q, &k, &v)?;
    let ds = t.other(py, "do", &d_o, &t.q_dims)?;
    let (o, lse, (dq, dk, dv), lists) = detached(py, || {
        let (spec, moba) = (opts.spec(t.shape)?, Moba { block, topk });
        let lists = longctx::contract::selection::moba_select_f64(&spec, &moba, t.q, t.k)?;
        let chosen = moba.spec(&spec, &lists)?;
        let (o, lse) = reference::attention_f64(&chosen, t.q, t.k, t.v)?;
        Ok((o, lse, reference::attention_backward_f64(&chosen, t.q, t.k, t.v, ds)?, lists))
    })?;
    moba_grads_out(py, (o, lse), (dq, dk, dv), &lists, &t, topk)
}

/// The float64 oracle's NSA: its own choice, then the branches and the mix: `(O, blocks)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn reference_nsa<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    v: PyReadonlyArrayDyn<'py, f32>,
    gates: PyReadonlyArrayDyn<'py, f32>,
    phi: Option<PyReadonlyArrayDyn<'py, f32>>,
    nsa: (usize, usize, usize, usize, usize),
    opts: Opts,
) -> PyResult<NsaOut<'py, f64>> {
    let t = Qkv::new(py, &q, &k, &v)?;
    let (nsa, g, p) = nsa_inputs(py, &t, nsa, &gates, phi.as_ref())?;
    let (o, lists) = detached(py, || {
        let spec = opts.spec(t.shape)?;
        let sel = longctx::contract::nsa::nsa_select_f64(&spec, &nsa, t.q, t.k, t.v, p)?;
        let out = longctx::contract::nsa::nsa_forward_f64(&spec, &nsa, t.q, t.k, t.v, g, &sel, &sel.lists)?;
        Ok((out.o, sel.lists))
    })?;
    Ok((array(py, o, &t.q_dims)?, blocks_out(py, &lists, &t.q_dims, nsa.topk)?))
}

/// The float64 oracle's NSA forward and backward on its own choice: `(O, dQ, dK, dV, dgates,
/// dphi, blocks)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn reference_nsa_backward<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    v: PyReadonlyArrayDyn<'py, f32>,
    d_o: PyReadonlyArrayDyn<'py, f32>,
    gates: PyReadonlyArrayDyn<'py, f32>,
    phi: Option<PyReadonlyArrayDyn<'py, f32>>,
    nsa: (usize, usize, usize, usize, usize),
    opts: Opts,
) -> PyResult<NsaGradsOut<'py, f64>> {
    let t = Qkv::new(py, &q, &k, &v)?;
    let ds = t.other(py, "do", &d_o, &t.q_dims)?;
    let (nsa, g, p) = nsa_inputs(py, &t, nsa, &gates, phi.as_ref())?;
    let (o, gr, lists) = detached(py, || {
        use longctx::contract::nsa::{nsa_backward_f64, nsa_forward_f64, nsa_select_f64};
        let spec = opts.spec(t.shape)?;
        let sel = nsa_select_f64(&spec, &nsa, t.q, t.k, t.v, p)?;
        let out = nsa_forward_f64(&spec, &nsa, t.q, t.k, t.v, g, &sel, &sel.lists)?;
        let gr = nsa_backward_f64(&spec, &nsa, (t.q, t.k, t.v), g, p, &sel.lists, ds)?;
        Ok((out.o, gr, sel.lists))
    })?;
    nsa_grads_out(py, &t, &nsa, o, gr, &lists)
}

/// NSA's parameters `(l, d, l′, n, w)` checked, the gates (Q's shape with D replaced by 3)
/// and φ (`[Hkv, l]`, or the mean).
fn nsa_inputs<'b>(
    py: Python<'_>,
    t: &Qkv<'_>,
    (cmp_len, cmp_stride, block, topk, window): (usize, usize, usize, usize, usize),
    gates: &'b PyReadonlyArrayDyn<'_, f32>,
    phi: Option<&'b PyReadonlyArrayDyn<'_, f32>>,
) -> PyResult<NsaInputs<'b>> {
    let nsa = Nsa { cmp_len, cmp_stride, block, topk, window };
    if let Err(e) = nsa.check() {
        return fail(py, e);
    }
    let mut gate_dims = lse_dims(&t.q_dims);
    gate_dims.push(3);
    let g = t.other(py, "gates", gates, &gate_dims)?;
    let p = phi.map(|p| t.other(py, "phi", p, &[t.shape.kv_heads, cmp_len])).transpose()?;
    Ok((nsa, g, p))
}

/// NSA's parameters, gates and φ (or the mean).
type NsaInputs<'b> = (Nsa, &'b [f32], Option<&'b [f32]>);

/// NSA's forward and backward as arrays: O and dQ like Q, dK and dV like K, the gates'
/// gradient like the gates, φ's `[Hkv, l]`, the blocks.
fn nsa_grads_out<'py, T: numpy::Element>(
    py: Python<'py>,
    t: &Qkv<'_>,
    nsa: &Nsa,
    o: Vec<T>,
    NsaGrads { dq, dk, dv, dgates, dphi }: NsaGrads<T>,
    lists: &[u32],
) -> PyResult<NsaGradsOut<'py, T>> {
    let mut gate_dims = lse_dims(&t.q_dims);
    gate_dims.push(3);
    Ok((
        array(py, o, &t.q_dims)?,
        array(py, dq, &t.q_dims)?,
        array(py, dk, &t.kv_dims)?,
        array(py, dv, &t.kv_dims)?,
        array(py, dgates, &gate_dims)?,
        array(py, dphi, &[t.shape.kv_heads, nsa.cmp_len])?,
        blocks_out(py, lists, &t.q_dims, nsa.topk)?,
    ))
}

/// NSA's output and chosen blocks.
type NsaOut<'py, T> = (Bound<'py, PyArrayDyn<T>>, Bound<'py, PyArrayDyn<i64>>);

/// NSA's forward and backward: O, dQ, dK, dV, dgates, dphi and the chosen blocks.
type NsaGradsOut<'py, T> = (
    Bound<'py, PyArrayDyn<T>>,
    Bound<'py, PyArrayDyn<T>>,
    Bound<'py, PyArrayDyn<T>>,
    Bound<'py, PyArrayDyn<T>>,
    Bound<'py, PyArrayDyn<T>>,
    Bound<'py, PyArrayDyn<T>>,
    Bound<'py, PyArrayDyn<i64>>,
);

/// [`moba_out`] with the gradients: dQ shaped like Q, dK and dV like K and V.
fn moba_grads_out<'py, T: numpy::Element>(
    py: Python<'py>,
    (o, lse): (Vec<T>, Vec<T>),
    (dq, dk, dv): (Vec<T>, Vec<T>, Vec<T>),
    lists: &[u32],
    t: &Qkv<'_>,
    topk: usize,
) -> PyResult<MobaGrads<'py, T>> {
    let (o, lse, blocks) = moba_out(py, o, lse, lists, &t.q_dims, topk)?;
    Ok((o, lse, array(py, dq, &t.q_dims)?, array(py, dk, &t.kv_dims)?, array(py, dv, &t.kv_dims)?, blocks))
}

/// MoBA's forward and backward: O, LSE, dQ, dK, dV and the chosen blocks.
type MobaGrads<'py, T> = (
    Bound<'py, PyArrayDyn<T>>,
    Bound<'py, PyArrayDyn<T>>,
    Bound<'py, PyArrayDyn<T>>,
    Bound<'py, PyArrayDyn<T>>,
    Bound<'py, PyArrayDyn<T>>,
    Bound<'py, PyArrayDyn<i64>>,
);

/// MoBA's outputs: O, LSE and the chosen blocks.
type MobaOut<'py, T> = (Bound<'py, PyArrayDyn<T>>, Bound<'py, PyArrayDyn<T>>, Bound<'py, PyArrayDyn<i64>>);

/// O shaped like Q, LSE like Q without D, the index lists like Q with D replaced by `topk`
/// (int64, −1 for NONE).
fn moba_out<'py, T: numpy::Element>(
    py: Python<'py>,
    o: Vec<T>,
    lse: Vec<T>,
    lists: &[u32],
    q_dims: &[usize],
    topk: usize,
) -> PyResult<MobaOut<'py, T>> {
    Ok((array(py, o, q_dims)?, array(py, lse, &lse_dims(q_dims))?, blocks_out(py, lists, q_dims, topk)?))
}

/// Index lists like Q with D replaced by `topk`, int64, −1 for NONE.
fn blocks_out<'py>(
    py: Python<'py>,
    lists: &[u32],
    q_dims: &[usize],
    topk: usize,
) -> PyResult<Bound<'py, PyArrayDyn<i64>>> {
    let blocks: Vec<i64> =
        lists.iter().map(|&b| if b == longctx::contract::selection::NONE { -1 } else { b as i64 }).collect();
    let mut block_dims = lse_dims(q_dims);
    block_dims.push(topk);
    array(py, blocks, &block_dims)
}

/// DSA's indexer inputs (qI `[.., N, HI, DI]`, kI `[.., M, DI]`, w `[.., N, HI]`, the
/// batch dim where Q has one), checked against the call: the parameters and the indexer.
fn dsa_inputs<'b>(
    py: Python<'_>,
    t: &Qkv<'_>,
    topk: usize,
    (qi, ki, w): &'b (PyReadonlyArrayDyn<'_, f32>, PyReadonlyArrayDyn<'_, f32>, PyReadonlyArrayDyn<'_, f32>),
) -> PyResult<(Dsa, Indexer<'b>)> {
    let s = t.shape;
    let lead = &t.q_dims[..t.q_dims.len() - 3];
    let dims = qi.shape();
    let (hi, di) = match dims.strip_prefix(lead) {
        Some(&[n, hi, di]) if n == s.n => (hi, di),
        _ => {
            return fail(
                py,
                Error::Shape(format!(
                    "index_q has shape {dims:?}, the call needs {lead:?} + [N = {}, HI, DI]",
                    s.n
                )),
            );
        }
    };
    let with = |tail: &[usize]| lead.iter().chain(tail).copied().collect::<Vec<_>>();
    let dsa = Dsa { topk, index_heads: hi, index_dim: di };
    let ix = Indexer {
        q: slice(py, qi, "index_q")?,
        k: t.other(py, "index_k", ki, &with(&[s.m, di]))?,
        w: t.other(py, "index_w", w, &with(&[s.n, hi]))?,
    };
    if let Err(e) = dsa.check(&s, &ix) {
        return fail(py, e);
    }
    Ok((dsa, ix))
}

/// O shaped like Q, LSE like Q without D, the keys `[.., N, topk]` (int64, −1 for NONE).
fn dsa_out<'py, T: numpy::Element>(
    py: Python<'py>,
    (o, lse): (Vec<T>, Vec<T>),
    lists: &[u32],
    t: &Qkv<'_>,
    topk: usize,
) -> PyResult<MobaOut<'py, T>> {
    let mut rows = t.q_dims[..t.q_dims.len() - 3].to_vec();
    rows.extend([t.shape.n, 1]);
    Ok((array(py, o, &t.q_dims)?, array(py, lse, &lse_dims(&t.q_dims))?, blocks_out(py, lists, &rows, topk)?))
}

/// The float64 oracle's DSA: its own choice, then attention over it: `(O, LSE, keys)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn reference_dsa<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    v: PyReadonlyArrayDyn<'py, f32>,
    index: (PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>),
    topk: usize,
    opts: Opts,
) -> PyResult<MobaOut<'py, f64>> {
    let t = Qkv::new(py, &q, &k, &v)?;
    let (dsa, ix) = dsa_inputs(py, &t, topk, &index)?;
    let (o, lse, lists) = detached(py, || {
        let spec = opts.spec(t.shape)?;
        let lists = longctx::contract::dsa::dsa_select_f64(&spec, &dsa, &ix)?;
        let (o, lse) = reference::attention_f64(&dsa.spec(&spec, &lists)?, t.q, t.k, t.v)?;
        Ok((o, lse, lists))
    })?;
    dsa_out(py, (o, lse), &lists, &t, topk)
}

/// The float64 oracle's DSA forward and backward on its own choice: `(O, LSE, dQ, dK, dV,
/// keys)`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn reference_dsa_backward<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    v: PyReadonlyArrayDyn<'py, f32>,
    d_o: PyReadonlyArrayDyn<'py, f32>,
    index: (PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>),
    topk: usize,
    opts: Opts,
) -> PyResult<MobaGrads<'py, f64>> {
    let t = Qkv::new(py, &q, &k, &v)?;
    let ds = t.other(py, "do", &d_o, &t.q_dims)?;
    let (dsa, ix) = dsa_inputs(py, &t, topk, &index)?;
    let (o, lse, (dq, dk, dv), lists) = detached(py, || {
        let spec = opts.spec(t.shape)?;
        let lists = longctx::contract::dsa::dsa_select_f64(&spec, &dsa, &ix)?;
        let chosen = dsa.spec(&spec, &lists)?;
        let (o, lse) = reference::attention_f64(&chosen, t.q, t.k, t.v)?;
        Ok((o, lse, reference::attention_backward_f64(&chosen, t.q, t.k, t.v, ds)?, lists))
    })?;
    let (o, lse, keys) = dsa_out(py, (o, lse), &lists, &t, topk)?;
    Ok((o, lse, array(py, dq, &t.q_dims)?, array(py, dk, &t.kv_dims)?, array(py, dv, &t.kv_dims)?, keys))
}

/// The alignment loss and its gradients to qI, kI and w.
type AlignmentOut<'py, T = f64> =
    (f64, Bound<'py, PyArrayDyn<T>>, Bound<'py, PyArrayDyn<T>>, Bound<'py, PyArrayDyn<T>>);

/// The float64 oracle of DSA's indexer warm-up (one sequence): the KL alignment loss of the
/// indexer's distribution to the dense causal attention's and its gradients: `(loss, dqI,
/// dkI, dw)` shaped as the indexer's inputs.
#[pyfunction]
fn reference_dsa_alignment<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    index: (PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>),
    opts: Opts,
) -> PyResult<AlignmentOut<'py>> {
    let t = Qkv::new(py, &q, &k, &k)?;
    // topk does not enter the loss
    let (dsa, ix) = dsa_inputs(py, &t, 1, &index)?;
    let a = detached(py, || {
        longctx::contract::dsa::dsa_alignment_f64(&opts.spec(t.shape)?, &dsa, (t.q, t.k), &ix)
    })?;
    let (qd, kd, wd) = (index.0.shape().to_vec(), index.1.shape().to_vec(), index.2.shape().to_vec());
    Ok((a.loss, array(py, a.dq, &qd)?, array(py, a.dk, &kd)?, array(py, a.dw, &wd)?))
}

/// `(loss, dqI, dkI, dw, keys)` of the sparse-stage alignment on the GPU.
type SparseAlignmentOut<'py> = (
    f64,
    Bound<'py, PyArrayDyn<f32>>,
    Bound<'py, PyArrayDyn<f32>>,
    Bound<'py, PyArrayDyn<f32>>,
    Bound<'py, PyArrayDyn<i64>>,
);

/// The float64 oracle of DSA's sparse-stage alignment (one sequence) on given keys `[N, k]`
/// (−1 for none, e.g. the GPU's): the KL over each row's keys and its gradients, `(loss, dqI,
/// dkI, dw)`.
#[pyfunction]
fn reference_dsa_sparse_alignment<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    keys: PyReadonlyArrayDyn<'py, i64>,
    index: (PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>, PyReadonlyArrayDyn<'py, f32>),
    opts: Opts,
) -> PyResult<AlignmentOut<'py>> {
    let t = Qkv::new(py, &q, &k, &k)?;
    let topk = match keys.shape() {
        &[n, topk] if n == t.shape.n && topk > 0 => topk,
        dims => {
            return fail(
                py,
                Error::Shape(format!("keys has shape {dims:?}, the call needs [N = {}, k]", t.shape.n)),
            );
        }
    };
    let (dsa, ix) = dsa_inputs(py, &t, topk, &index)?;
    let lists: Vec<u32> = match keys.as_slice() {
        Ok(x) => {
            x.iter()
                .map(|&j| {
                    if j < 0 { longctx::contract::selection::NONE } else { j.min(u32::MAX as i64 - 1) as u32 }
                })
                .collect()
        }
        Err(_) => return fail(py, Error::Shape("keys must be contiguous".into())),
    };
    let a = detached(py, || {
        longctx::contract::dsa::dsa_sparse_alignment_f64(&opts.spec(t.shape)?, &dsa, (t.q, t.k), &ix, &lists)
    })?;
    let (qd, kd, wd) = (index.0.shape().to_vec(), index.1.shape().to_vec(), index.2.shape().to_vec());
    Ok((a.loss, array(py, a.dq, &qd)?, array(py, a.dk, &kd)?, array(py, a.dw, &wd)?))
}

/// The float64 oracle's dQ, dK, dV for the incoming gradient dO.
#[pyfunction]
fn reference_backward<'py>(
    py: Python<'py>,
    q: PyReadonlyArrayDyn<'py, f32>,
    k: PyReadonlyArrayDyn<'py, f32>,
    v: PyReadonlyArrayDyn<'py, f32>,
    d_o: PyReadonlyArrayDyn<'py, f32>,
    opts: Opts,
) -> PyResult<Three<'py, f64>> {
    let t = Qkv::new(py, &q, &k, &v)?;
    let ds = t.other(py, "do", &d_o, &t.q_dims)?;
    let (dq, dk, dv) =
        detached(py, || reference::attention_backward_f64(&opts.spec(t.shape)?, t.q, t.k, t.v, ds))?;
    Ok((array(py, dq, &t.q_dims)?, array(py, dk, &t.kv_dims)?, array(py, dv, &t.kv_dims)?))
}

/// The memory plan of a model preset at context `n` (JSON; the Python layer parses it).
#[pyfunction]
#[pyo3(signature = (model, n, batch=1, bytes_per_element=2))]
fn plan_json(
    py: Python<'_>,
    model: &str,
    n: usize,
    batch: usize,
    bytes_per_element: usize,
) -> PyResult<String> {
    let Some(shape) = ModelShape::preset(model) else {
        return fail(
            py,
            Error::Invalid(format!("model `{model}`: choose one of {}", ModelShape::PRESETS.join(", "))),
        );
    };
    detached(py, || {
        let plan = MemoryPlan::new(&shape, n, batch, bytes_per_element)?;
        serde_json::to_string(&plan).map_err(|e| Error::Invalid(e.to_string()))
    })
}

/// The adapters wgpu sees (for `backend`, or the default backends): name, backend, type.
#[pyfunction]
#[pyo3(signature = (backend=None))]
fn list_adapters<'py>(py: Python<'py>, backend: Option<String>) -> PyResult<Bound<'py, PyList>> {
    let options = GpuOptions { backends: backends(py, backend.as_deref())?, ..GpuOptions::from_env() };
    let infos = detached(py, move || Ok(longctx::runtime::list_adapters(&options)))?;
    let out = PyList::empty(py);
    for info in infos {
        let d = PyDict::new(py);
        d.set_item("name", info.name)?;
        d.set_item("backend", format!("{:?}", info.backend))?;
        d.set_item("device_type", format!("{:?}", info.device_type))?;
        d.set_item("driver", format!("{} {}", info.driver, info.driver_info))?;
        out.append(d)?;
    }
    Ok(out)
}

/// The library's version and the commit it was built from.
#[pyfunction]
fn build_info() -> (String, String) {
    (longctx::VERSION.to_string(), longctx::GIT_COMMIT.to_string())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Device>()?;
    m.add_class::<KvCache>()?;
    m.add_function(wrap_pyfunction!(reference_attention, m)?)?;
    m.add_function(wrap_pyfunction!(reference_backward, m)?)?;
    m.add_function(wrap_pyfunction!(reference_moba, m)?)?;
    m.add_function(wrap_pyfunction!(reference_moba_backward, m)?)?;
    m.add_function(wrap_pyfunction!(reference_nsa, m)?)?;
    m.add_function(wrap_pyfunction!(reference_nsa_backward, m)?)?;
    m.add_function(wrap_pyfunction!(reference_dsa, m)?)?;
    m.add_function(wrap_pyfunction!(reference_dsa_backward, m)?)?;
    m.add_function(wrap_pyfunction!(reference_dsa_alignment, m)?)?;
    m.add_function(wrap_pyfunction!(reference_dsa_sparse_alignment, m)?)?;
    m.add_function(wrap_pyfunction!(plan_json, m)?)?;
    m.add_function(wrap_pyfunction!(list_adapters, m)?)?;
    m.add_function(wrap_pyfunction!(build_info, m)?)?;
    Ok(())
}
