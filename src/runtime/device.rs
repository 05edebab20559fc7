//! The GPU runtime: a device (owned by longctx, or borrowed from a host app), buffers,
//! readback, a pipeline cache, and the limit checks that wgpu does not make.

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::runtime::profile::{Profile, driver_of};
use crate::runtime::shader::Caches;
use crate::runtime::tuning::Tuned;

/// How longctx picks an adapter when it creates its own device.
///
/// `GpuOptions::default()` reads nothing from the environment or the disk: the primary
/// backends, the best adapter, the detected profile's presets. [`GpuOptions::from_env`] adds
/// what the `longctx` command reads (`WGPU_BACKEND`, `LONGCTX_ADAPTER`); `tuned` attaches the
/// autotuner's winners cached on disk.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Backends to consider; `None` means the primary backends (Vulkan, Metal, DX12) and GL
    /// only when none of those has an adapter.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name; `None`: any adapter (the best ranked).
    pub adapter: Option<String>,
    /// Limits to request instead of the adapter's own — e.g. lowered ones, to exercise the
    /// engine's chunking on a small budget. Must not exceed the adapter's.
    pub limits: Option<wgpu::Limits>,
    /// A profile name (see [`Profile::all`]) instead of the detected one.
    pub profile: Option<String>,
    /// Attach the autotuner's winners cached on disk for this adapter ([`Tuned::cached`]), as
    /// the `longctx` command does unless told not to. Off by default.
    pub tuned: bool,
}

impl GpuOptions {
    /// The options the environment asks for: backends from `WGPU_BACKEND` (where set and not
    /// empty) and the adapter filter from `LONGCTX_ADAPTER`; the rest as [`Default`].
    pub fn from_env() -> Self {
        Self {
            backends: backends_from_env(),
            adapter: std::env::var("LONGCTX_ADAPTER").ok().filter(|a| !a.trim().is_empty()),
            ..Self::default()
        }
    }
}

/// The optional features longctx uses when the adapter has them.
pub const USEFUL_FEATURES: wgpu::Features = wgpu::Features::SUBGROUP
    .union(wgpu::Features::SHADER_F16)
    .union(wgpu::Features::TIMESTAMP_QUERY)
    .union(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX);

/// A wgpu device and queue plus what longctx knows about them.
///
/// Cheap to clone: wgpu handles and the caches are shared.
#[derive(Clone)]
pub struct Gpu {
    /// The wgpu device (the host's, when borrowed).
    pub device: wgpu::Device,
    /// Its queue.
    pub queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    features: wgpu::Features,
    pub(crate) caches: Caches,
    profile: Profile,
    profile_reason: String,
    tuned: Option<Tuned>,
    coop: Vec<wgpu::CooperativeMatrixProperties>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .finish_non_exhaustive()
    }
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = backends;
    wgpu::Instance::new(desc)
}

/// `WGPU_BACKEND`, where set and not empty (an empty variable counts as unset).
fn backends_from_env() -> Option<wgpu::Backends> {
    std::env::var("WGPU_BACKEND").ok().filter(|v| !v.trim().is_empty())?;
    wgpu::Backends::from_env()
}

/// Adapters of `backends` (in the browser: the one the page's `navigator.gpu` gives).
async fn enumerate(backends: wgpu::Backends) -> Vec<wgpu::Adapter> {
    instance(backends).enumerate_adapters(backends).await
}

/// Adapters of the requested backends; by default primary backends first, GL as fallback
/// (probing GL needlessly prints EGL errors on headless machines).
async fn adapters(options: &GpuOptions) -> Vec<wgpu::Adapter> {
    match options.backends {
        Some(b) => enumerate(b).await,
        None => {
            let primary = enumerate(wgpu::Backends::PRIMARY).await;
            if primary.is_empty() { enumerate(wgpu::Backends::all()).await } else { primary }
        }
    }
}

/// The error a blocking call returns in the browser, where waiting on the GPU would never
/// end: the page's event loop, which completes the work, cannot run while it waits.
#[cfg(target_arch = "wasm32")]
fn would_block(what: &'static str, instead: &'static str) -> Error {
    Error::Unsupported { what, instead }
}

/// The blocking form of an `_async` call: on native, `work` is driven to completion here (the
/// GPU futures of this crate wait on the queue when first polled); in the browser, where
/// waiting would never end, `work` is dropped unpolled and [`Error::Unsupported`] names
/// `what` and the call to await `instead`.
pub fn block_on<T>(
    what: &'static str,
    instead: &'static str,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (what, instead);
        pollster::block_on(work)
    }
    #[cfg(target_arch = "wasm32")]
    {
        drop(work);
        Err(would_block(what, instead))
    }
}

/// Higher is preferred: real GPUs first, then Vulkan/Metal/DX12 over GL.
fn adapter_rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let ty = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 1,
        wgpu::DeviceType::Other => 0,
    };
    let backend = match info.backend {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 2,
        wgpu::Backend::Gl => 1,
        _ => 0,
    };
    (ty, backend)
}

/// Every adapter wgpu can see, best first. Blocks: in the browser it lists none (use
/// [`list_adapters_async`]).
pub fn list_adapters(options: &GpuOptions) -> Vec<wgpu::AdapterInfo> {
    #[cfg(not(target_arch = "wasm32"))]
    return pollster::block_on(list_adapters_async(options));
    #[cfg(target_arch = "wasm32")]
    {
        let _ = options;
        Vec::new()
    }
}

/// Every adapter wgpu can see, best first, without blocking (the browser's way).
pub async fn list_adapters_async(options: &GpuOptions) -> Vec<wgpu::AdapterInfo> {
    let mut infos: Vec<_> = adapters(options).await.iter().map(|a| a.get_info()).collect();
    infos.sort_by_key(|i| std::cmp::Reverse(adapter_rank(i)));
    infos
}

/// What longctx asks of an adapter: its full limits (or `limits`) and the
/// [`USEFUL_FEATURES`] it has. Host apps creating their own device can use this too.
pub fn device_descriptor(
    adapter: &wgpu::Adapter,
    limits: Option<wgpu::Limits>,
) -> wgpu::DeviceDescriptor<'static> {
    let required_features = adapter.features() & USEFUL_FEATURES;
    let experimental_features = if required_features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX)
    {
        // SAFETY: the one experimental feature longctx asks for is cooperative matrices, used
        // only by matmul_coop.wgsl's variants (naga-validated and written as SPIR-V in CI),
        // chosen only from configurations the adapter reports, and checked against the f64
        // oracle by `longctx selftest` and the tests wherever an adapter has them.
        unsafe { wgpu::ExperimentalFeatures::enabled() }
    } else {
        wgpu::ExperimentalFeatures::disabled()
    };
    wgpu::DeviceDescriptor {
        label: Some("longctx"),
        required_features,
        experimental_features,
        required_limits: limits.unwrap_or_else(|| adapter.limits()),
        ..Default::default()
    }
}

impl Gpu {
    /// Creates a device of its own on the best adapter (see [`GpuOptions`]), with the
    /// adapter's full limits and the [`USEFUL_FEATURES`] it supports. Blocks; in the browser
    /// it returns [`Error::Unsupported`] (use [`Gpu::new_async`]).
    pub fn new(options: &GpuOptions) -> Result<Self> {
        #[cfg(not(target_arch = "wasm32"))]
        return pollster::block_on(Self::new_async(options));
        #[cfg(target_arch = "wasm32")]
        {
            let _ = options;
            Err(would_block("Gpu::new", "await Gpu::new_async"))
        }
    }

    /// [`Gpu::new`] without blocking: how the browser creates a device (the adapter's
    /// limits are requested and checked as on any other adapter).
    pub async fn new_async(options: &GpuOptions) -> Result<Self> {
        let mut adapters = adapters(options).await;
        let filter = options.adapter.as_ref().map(|s| s.to_lowercase());
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?})", i.name, i.backend)
            })
            .collect();
        if let Some(f) = &filter {
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(f));
        }
        adapters.sort_by_key(|a| std::cmp::Reverse(adapter_rank(&a.get_info())));
        let Some(adapter) = adapters.into_iter().next() else {
            let detail = match (&filter, seen.is_empty()) {
                (Some(f), false) => {
                    format!(" whose name contains `{f}`; adapters present: {}", seen.join(", "))
                }
                _ => match options.backends {
                    // restricted to backends that have none: say which, and what the others have
                    Some(b) if b != wgpu::Backends::all() => {
                        let others: Vec<String> = enumerate(wgpu::Backends::all())
                            .await
                            .iter()
                            .map(|a| format!("{} ({:?})", a.get_info().name, a.get_info().backend))
                            .collect();
                        format!(
                            " on the requested backends ({b:?}); adapters on all backends: {}",
                            if others.is_empty() { "none".to_string() } else { others.join(", ") }
                        )
                    }
                    _ => String::new(),
                },
            };
            return Err(Error::NoAdapter { detail });
        };
        if adapter.get_info().backend == wgpu::Backend::Gl {
            return Err(Error::UnsupportedBackend {
                adapter: format!("{} (Gl)", adapter.get_info().name),
                reason: "wgpu's GLSL translation rejects the kernels' identifiers (`gl_` prefixes) and its errors escape validation scopes; use a Vulkan, Metal or DX12 adapter (--backend vulkan)",
            });
        }
        let (device, queue) =
            adapter.request_device(&device_descriptor(&adapter, options.limits.clone())).await?;
        let mut gpu = Self::from_wgpu(device, queue, adapter.get_info())
            .with_cooperative_matrices(adapter.cooperative_matrix_properties());
        if options.tuned {
            gpu = gpu.with_cached_tuning();
        }
        match &options.profile {
            Some(name) => gpu.with_profile(name),
            None => Ok(gpu),
        }
    }

    /// This device with the named profile instead of the detected one.
    pub fn with_profile(mut self, name: &str) -> Result<Self> {
        self.profile = Profile::by_name(name).ok_or_else(|| {
            Error::Invalid(format!("unknown profile `{name}`; choose from {}", Profile::names().join(", ")))
        })?;
        self.profile_reason = "chosen with --profile".into();
        Ok(self)
    }

    /// This device using `tuned` winners (`None`: the profile's presets). Winners measured
    /// on another adapter, driver or build are refused with a warning.
    pub fn with_tuned(mut self, tuned: Option<Tuned>) -> Self {
        self.tuned = tuned.filter(|t| {
            let ok = t.matches(&self.info);
            if !ok {
                log::warn!(
                    "ignoring tuned winners measured on `{}` ({}, {}, longctx {}): this is `{}`",
                    t.adapter,
                    t.driver,
                    t.backend,
                    t.version,
                    self.info.name
                );
            }
            ok
        });
        self
    }

    /// This device using the winners `longctx tune` cached for its adapter, if any: what the
    /// CLI does by default, and what an embedder calls after [`Gpu::from_wgpu`].
    pub fn with_cached_tuning(self) -> Self {
        let cached = Tuned::cached(&self.info);
        self.with_tuned(cached)
    }

    /// The autotuner's winners in use, if any.
    pub fn tuned(&self) -> Option<&Tuned> {
        self.tuned.as_ref()
    }

    /// The profile in force and why it was chosen.
    pub fn profile(&self) -> (&Profile, &str) {
        (&self.profile, &self.profile_reason)
    }

    /// Wraps a host application's device and queue. longctx never assumes it owns them:
    /// it uses only the features and limits the device was created with. The profile is
    /// detected from `info`; attach tuned winners with [`Gpu::with_cached_tuning`].
    pub fn from_wgpu(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        let (profile, profile_reason) = Profile::detect(&info);
        Self {
            profile,
            profile_reason,
            tuned: None,
            coop: Vec::new(),
            limits: device.limits(),
            features: device.features(),
            device,
            queue,
            info,
            caches: Caches::default(),
        }
    }

    /// This device with the adapter's cooperative-matrix configurations
    /// (`Adapter::cooperative_matrix_properties`), which a device does not report: how a host
    /// application that created its device with `EXPERIMENTAL_COOPERATIVE_MATRIX` lets the
    /// kernels use them. Ignored when the device lacks the feature.
    pub(crate) fn with_cooperative_matrices(mut self, props: Vec<wgpu::CooperativeMatrixProperties>) -> Self {
        if self.features.contains(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX) {
            self.coop = props;
        }
        self
    }

    /// The cooperative-matrix configurations the kernels may use (empty: none; the software
    /// adapter has none).
    pub fn cooperative_matrices(&self) -> &[wgpu::CooperativeMatrixProperties] {
        &self.coop
    }

    /// The adapter's name, vendor, device type, backend and driver.
    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The driver and its version in one string: how records and caches name a driver.
    pub fn driver(&self) -> String {
        driver_of(&self.info)
    }
    /// The limits the device was created with.
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }
    /// The features the device was created with.
    pub fn features(&self) -> wgpu::Features {
        self.features
    }

    /// The subgroup width when the device has SUBGROUP and one fixed width (kernels shuffle
    /// only at a width they can rely on).
    pub(crate) fn fixed_subgroup(&self) -> Option<u32> {
        let i = &self.info;
        (self.features.contains(wgpu::Features::SUBGROUP) && i.subgroup_min_size == i.subgroup_max_size)
            .then_some(i.subgroup_min_size)
    }

    /// The most loop iterations one invocation may run in one loop nest, where the adapter has
    /// such a cap: Mesa's llvmpipe/lavapipe (gallivm's `LP_MAX_TGSI_LOOP_ITERATIONS`, 65535)
    /// silently leaves a loop nest after that many iterations, giving wrong results, so
    /// kernels split long loops into passes below it.
    pub fn loop_iteration_limit(&self) -> Option<u64> {
        let i = &self.info;
        (i.driver.contains("llvmpipe") || i.name.contains("llvmpipe")).then_some(65_535)
    }

    // ----- limit checks (wgpu 30 does not check workgroup memory) -----

    /// Workgroup memory and invocation count of one kernel variant against the device.
    pub(crate) fn check_workgroup(
        &self,
        kernel: &'static str,
        storage_bytes: u64,
        invocations: u32,
    ) -> Result<()> {
        let l = &self.limits;
        if storage_bytes > l.max_compute_workgroup_storage_size as u64 {
            return Err(Error::WorkgroupMemory {
                kernel,
                needed: storage_bytes,
                limit: l.max_compute_workgroup_storage_size as u64,
            });
        }
        let inv_limit = l.max_compute_invocations_per_workgroup.min(l.max_compute_workgroup_size_x);
        if invocations > inv_limit {
            return Err(Error::Invocations { kernel, needed: invocations, limit: inv_limit });
        }
        Ok(())
    }

    /// `workgroups` (at least one) laid out as a 2-D grid whose rows are as long as the
    /// device allows, checked: the kernel indexes workgroup `wg.y · groups_x + wg.x` with
    /// `groups_x` = the grid's x and skips those past its count.
    pub fn grid(&self, kernel: &'static str, workgroups: u64) -> Result<[u32; 3]> {
        let groups = workgroups.max(1);
        let gx = groups.min(self.limits.max_compute_workgroups_per_dimension as u64);
        let gy = groups.div_ceil(gx);
        self.check_dispatch(kernel, [gx, gy, 1])?;
        Ok([gx as u32, gy as u32, 1])
    }

    /// Workgroup counts of one dispatch against the device.
    pub(crate) fn check_dispatch(&self, kernel: &'static str, groups: [u64; 3]) -> Result<()> {
        let limit = self.limits.max_compute_workgroups_per_dimension as u64;
        match groups.iter().find(|&&g| g > limit) {
            Some(&needed) => Err(Error::Dispatch { kernel, needed, limit }),
            None => Ok(()),
        }
    }

    /// One storage binding of `bytes` against the binding and buffer limits.
    pub(crate) fn check_binding(&self, what: &str, bytes: u64) -> Result<()> {
        let l = &self.limits;
        if bytes > l.max_buffer_size {
            return Err(Error::BufferTooLarge { what: what.into(), bytes, limit: l.max_buffer_size });
        }
        if bytes > l.max_storage_buffer_binding_size {
            return Err(Error::BindingTooLarge {
                what: what.into(),
                bytes,
                limit: l.max_storage_buffer_binding_size,
            });
        }
        Ok(())
    }

    // ----- buffers -----

    /// A storage buffer holding `data` (at least 4 bytes, so empty tables still bind).
    pub fn upload<T: bytemuck::Pod>(&self, what: &str, data: &[T]) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.check_binding(what, bytes.len() as u64)?;
        let padded;
        let contents = if bytes.len() < 4 {
            padded = [0u8; 4];
            &padded[..]
        } else {
            bytes
        };
        Ok(self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(what),
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        }))
    }

    /// A storage buffer of `floats` f32 NaNs (at least one): an output poisoned before a run.
    pub(crate) fn poisoned(&self, what: &str, floats: usize) -> Result<wgpu::Buffer> {
        self.upload(what, &vec![f32::NAN; floats.max(1)])
    }

    /// A storage buffer holding `data` that kernels bind in ranges: only the buffer-size limit
    /// applies (a kernel that binds it whole checks the binding limit itself).
    pub(crate) fn upload_ranged<T: bytemuck::Pod>(&self, what: &str, data: &[T]) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let limit = self.limits.max_buffer_size;
        if bytes.len() as u64 > limit {
            return Err(Error::BufferTooLarge { what: what.into(), bytes: bytes.len() as u64, limit });
        }
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: (bytes.len() as u64).max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.queue.write_buffer(&buf, 0, bytes);
        Ok(buf)
    }

    /// An uninitialised buffer that kernels bind in ranges (buffer-size limit only).
    pub(crate) fn storage_ranged(&self, what: &str, bytes: u64) -> Result<wgpu::Buffer> {
        let limit = self.limits.max_buffer_size;
        if bytes > limit {
            return Err(Error::BufferTooLarge { what: what.into(), bytes, limit });
        }
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// An uninitialised storage buffer of `bytes` bytes.
    pub fn storage(&self, what: &str, bytes: u64) -> Result<wgpu::Buffer> {
        self.check_binding(what, bytes)?;
        Ok(self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(what),
            size: bytes.max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        }))
    }

    /// A uniform buffer holding one value.
    pub fn uniform<T: bytemuck::Pod>(&self, what: &str, value: &T) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(what),
            contents: bytemuck::bytes_of(value),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
    }

    /// Copies `len` elements of `buffer` back to the host (blocks until done). In the
    /// browser it returns [`Error::Unsupported`]: use [`Gpu::read_async`].
    pub fn read<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<T>> {
        block_on("Gpu::read", "await Gpu::read_async", self.read_async(buffer, len))
    }

    /// Copies `len` elements of `buffer` back to the host without blocking the browser: the
    /// copy is submitted and the mapping awaited (on native the queue is waited on first, so
    /// the future is ready when first polled).
    pub async fn read_async<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<T>> {
        let bytes = (len * size_of::<T>()) as u64;
        if bytes == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("longctx readback"),
            size: bytes.next_multiple_of(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes.next_multiple_of(4));
        self.queue.submit([enc.finish()]);
        let (tx, rx) = futures_channel::oneshot::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        // native: the callback runs inside a poll; in the browser, once the event loop runs
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()?;
        rx.await
            .map_err(|_| Error::Device("readback callback never ran".into()))?
            .map_err(|e| Error::Device(format!("mapping the readback buffer failed: {e}")))?;
        let view = staging.get_mapped_range(..).map_err(|e| Error::Device(format!("readback range: {e}")))?;
        let out = bytemuck::cast_slice::<u8, T>(&view[..bytes as usize]).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Resolves once all work submitted so far has finished, without blocking the browser
    /// (on native the queue is waited on first, so it is ready when first polled).
    pub async fn wait_async(&self) -> Result<()> {
        let (tx, rx) = futures_channel::oneshot::channel();
        self.queue.on_submitted_work_done(move || {
            let _ = tx.send(());
        });
        #[cfg(not(target_arch = "wasm32"))]
        self.wait()?;
        rx.await.map_err(|_| Error::Device("the queue's work-done callback never ran".into()))
    }

    /// Blocks until all submitted work has finished. In the browser it returns
    /// [`Error::Unsupported`] (there, await [`Gpu::read_async`], which completes after the
    /// work before it).
    pub fn wait(&self) -> Result<()> {
        #[cfg(target_arch = "wasm32")]
        return Err(would_block(
            "Gpu::wait",
            "await Gpu::read_async, which completes after the work before it",
        ));
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Device(format!("waiting for the queue failed: {e}")))
    }
}
