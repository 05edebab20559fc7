//! The GPU runtime: a device (owned by longctx, or borrowed from a host app), buffers,
//! readback, a pipeline cache, and the limit checks that wgpu does not make.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, mpsc};

use wgpu::util::DeviceExt;

use crate::error::{Error, Result};
use crate::kernels::ShaderVariant;
use crate::profile::Profile;

/// How longctx picks an adapter when it creates its own device.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Backends to consider; `None` means wgpu's `WGPU_BACKEND` variable, else the primary
    /// backends (Vulkan, Metal, DX12) and GL only when none of those has an adapter.
    pub backends: Option<wgpu::Backends>,
    /// Case-insensitive substring of the adapter name; `None` reads `LONGCTX_ADAPTER`.
    pub adapter: Option<String>,
    /// Limits to request instead of the adapter's own — e.g. lowered ones, to exercise the
    /// engine's chunking on a small budget. Must not exceed the adapter's.
    pub limits: Option<wgpu::Limits>,
    /// A profile name (see [`crate::profile::Profile::all`]) instead of the detected one.
    pub profile: Option<String>,
    /// Use the autotuner's cached winners for this adapter (see [`crate::tune`]).
    pub tuned: bool,
}

/// The optional features longctx uses when the adapter has them.
pub const USEFUL_FEATURES: wgpu::Features =
    wgpu::Features::SUBGROUP.union(wgpu::Features::SHADER_F16).union(wgpu::Features::TIMESTAMP_QUERY);

type PipelineKey = (String, &'static str);

/// A wgpu device and queue plus what longctx knows about them.
///
/// Cheap to clone: wgpu handles and the caches are shared.
#[derive(Clone)]
pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    features: wgpu::Features,
    pipelines: Arc<Mutex<HashMap<PipelineKey, wgpu::ComputePipeline>>>,
    layouts: Arc<Mutex<HashMap<&'static str, wgpu::BindGroupLayout>>>,
    profile: Profile,
    profile_reason: String,
    tuned: Option<crate::tune::Tuned>,
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

/// Adapters of the requested backends; by default primary backends first, GL as fallback
/// (probing GL needlessly prints EGL errors on headless machines).
fn adapters(options: &GpuOptions) -> Vec<wgpu::Adapter> {
    let requested = options.backends.or_else(wgpu::Backends::from_env);
    let enumerate = |b: wgpu::Backends| pollster::block_on(instance(b).enumerate_adapters(b));
    match requested {
        Some(b) => enumerate(b),
        None => {
            let primary = enumerate(wgpu::Backends::PRIMARY);
            if primary.is_empty() { enumerate(wgpu::Backends::all()) } else { primary }
        }
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

/// Every adapter wgpu can see, best first.
pub fn list_adapters(options: &GpuOptions) -> Vec<wgpu::AdapterInfo> {
    let mut infos: Vec<_> = adapters(options).iter().map(|a| a.get_info()).collect();
    infos.sort_by_key(|i| std::cmp::Reverse(adapter_rank(i)));
    infos
}

/// What longctx asks of an adapter: its full limits (or `limits`) and the
/// [`USEFUL_FEATURES`] it has. Host apps creating their own device can use this too.
pub fn device_descriptor(
    adapter: &wgpu::Adapter,
    limits: Option<wgpu::Limits>,
) -> wgpu::DeviceDescriptor<'static> {
    wgpu::DeviceDescriptor {
        label: Some("longctx"),
        required_features: adapter.features() & USEFUL_FEATURES,
        required_limits: limits.unwrap_or_else(|| adapter.limits()),
        ..Default::default()
    }
}

impl Gpu {
    /// Creates a device of its own on the best adapter (see [`GpuOptions`]), with the
    /// adapter's full limits and the [`USEFUL_FEATURES`] it supports.
    pub fn new(options: &GpuOptions) -> Result<Self> {
        let mut adapters = adapters(options);
        let filter = options
            .adapter
            .clone()
            .or_else(|| std::env::var("LONGCTX_ADAPTER").ok())
            .map(|s| s.to_lowercase());
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
                (Some(f), false) => format!(
                    " matching `{f}` (LONGCTX_ADAPTER / --adapter); adapters present: {}",
                    seen.join(", ")
                ),
                _ => String::new(),
            };
            return Err(Error::NoAdapter { detail });
        };
        let (device, queue) =
            pollster::block_on(adapter.request_device(&device_descriptor(&adapter, options.limits.clone())))?;
        let mut gpu = Self::from_wgpu(device, queue, adapter.get_info());
        if options.tuned {
            gpu.tuned = crate::tune::cached(&gpu);
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

    /// The autotuner's winners in use, if any.
    pub fn tuned(&self) -> Option<&crate::tune::Tuned> {
        self.tuned.as_ref()
    }

    /// The profile in force and why it was chosen.
    pub fn profile(&self) -> (&Profile, &str) {
        (&self.profile, &self.profile_reason)
    }

    /// Wraps a host application's device and queue. longctx never assumes it owns them:
    /// it uses only the features and limits the device was created with.
    pub fn from_wgpu(device: wgpu::Device, queue: wgpu::Queue, info: wgpu::AdapterInfo) -> Self {
        let (profile, profile_reason) = Profile::detect(&info);
        Self {
            profile,
            profile_reason,
            tuned: None,
            limits: device.limits(),
            features: device.features(),
            device,
            queue,
            info,
            pipelines: Default::default(),
            layouts: Default::default(),
        }
    }

    pub fn info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The driver and its version in one string: how records and caches name a driver.
    pub fn driver(&self) -> String {
        driver_of(&self.info)
    }
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }
    pub fn features(&self) -> wgpu::Features {
        self.features
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
    pub fn check_workgroup(&self, kernel: &'static str, storage_bytes: u64, invocations: u32) -> Result<()> {
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

    /// Workgroup counts of one dispatch against the device.
    pub fn check_dispatch(&self, kernel: &'static str, groups: [u64; 3]) -> Result<()> {
        let limit = self.limits.max_compute_workgroups_per_dimension as u64;
        match groups.iter().find(|&&g| g > limit) {
            Some(&needed) => Err(Error::Dispatch { kernel, needed, limit }),
            None => Ok(()),
        }
    }

    /// One storage binding of `bytes` against the binding and buffer limits.
    pub fn check_binding(&self, what: &str, bytes: u64) -> Result<()> {
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

    /// A storage buffer holding `data` that kernels bind in ranges: only the buffer-size limit
    /// applies (a kernel that binds it whole checks the binding limit itself).
    pub fn upload_ranged<T: bytemuck::Pod>(&self, what: &str, data: &[T]) -> Result<wgpu::Buffer> {
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
    pub fn storage_ranged(&self, what: &str, bytes: u64) -> Result<wgpu::Buffer> {
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

    /// Copies `len` elements of `buffer` back to the host (blocks until done).
    pub fn read<T: bytemuck::Pod>(&self, buffer: &wgpu::Buffer, len: usize) -> Result<Vec<T>> {
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
        let (tx, rx) = mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.wait()?;
        rx.recv()
            .map_err(|_| Error::Device("readback callback never ran".into()))?
            .map_err(|e| Error::Device(format!("mapping the readback buffer failed: {e}")))?;
        let view = staging.get_mapped_range(..).map_err(|e| Error::Device(format!("readback range: {e}")))?;
        let out = bytemuck::cast_slice::<u8, T>(&view[..bytes as usize]).to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Blocks until all submitted work has finished.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Device(format!("waiting for the queue failed: {e}")))
    }

    // ----- pipelines -----

    /// The bind group layout of a kernel family, created once.
    pub fn layout(
        &self,
        stem: &'static str,
        entries: &[wgpu::BindGroupLayoutEntry],
    ) -> wgpu::BindGroupLayout {
        self.layouts
            .lock()
            .unwrap()
            .entry(stem)
            .or_insert_with(|| {
                self.device
                    .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(stem), entries })
            })
            .clone()
    }

    /// The pipeline of one shader variant, compiled once per (source, entry point).
    /// Compilation errors come back as [`Error::Shader`], not as a panic.
    pub fn pipeline(
        &self,
        variant: &ShaderVariant,
        layout: &wgpu::BindGroupLayout,
    ) -> Result<wgpu::ComputePipeline> {
        let source = variant.source();
        let key = (source.clone(), variant.entry);
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(variant.stem),
            source: wgpu::ShaderSource::Wgsl(source.into()),
        });
        let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(variant.stem),
            bind_group_layouts: &[Some(layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(variant.stem),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(variant.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                // Every kernel writes workgroup memory before reading it; zeroing costs time
                // and breaks some GL drivers.
                zero_initialize_workgroup_memory: false,
                ..Default::default()
            },
            cache: None,
        });
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { name: variant.name(), message: err.to_string() });
        }
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// A bind group in binding order over whole buffers or `(offset, size)` byte ranges.
    pub fn bind_group_ranges(
        &self,
        layout: &wgpu::BindGroupLayout,
        buffers: &[(&wgpu::Buffer, Option<(u64, u64)>)],
    ) -> wgpu::BindGroup {
        let numbered: Vec<_> = buffers.iter().enumerate().map(|(i, &(b, r))| (i as u32, b, r)).collect();
        self.bind_group_at_ranges(layout, &numbered)
    }

    /// A bind group over whole buffers at the given binding numbers.
    pub fn bind_group_at(
        &self,
        layout: &wgpu::BindGroupLayout,
        buffers: &[(u32, &wgpu::Buffer)],
    ) -> wgpu::BindGroup {
        let entries: Vec<_> = buffers
            .iter()
            .map(|(binding, b)| wgpu::BindGroupEntry { binding: *binding, resource: b.as_entire_binding() })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries })
    }

    /// A bind group at the given binding numbers over whole buffers or `(offset, size)` ranges.
    pub fn bind_group_at_ranges(
        &self,
        layout: &wgpu::BindGroupLayout,
        buffers: &[(u32, &wgpu::Buffer, Option<(u64, u64)>)],
    ) -> wgpu::BindGroup {
        let entries: Vec<_> = buffers
            .iter()
            .map(|(binding, b, range)| wgpu::BindGroupEntry {
                binding: *binding,
                resource: match range {
                    None => b.as_entire_binding(),
                    Some((offset, size)) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b,
                        offset: *offset,
                        size: std::num::NonZeroU64::new(*size),
                    }),
                },
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries })
    }

    /// A bind group over whole buffers, in binding order.
    pub fn bind_group(&self, layout: &wgpu::BindGroupLayout, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let entries: Vec<_> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry { binding: i as u32, resource: b.as_entire_binding() })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries })
    }
}

/// Device-side timing of one compute pass with TIMESTAMP_QUERY: two timestamps, resolved and
/// read back in nanoseconds.
pub struct GpuTimer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    period_ns: f64,
}

impl GpuTimer {
    /// `None` when the device lacks TIMESTAMP_QUERY, and on CPU adapters: there the host
    /// clock is the device's clock, and lavapipe's timestamps were seen to come back 30×
    /// too short on a device created by eframe (while matching the wall clock on one created
    /// by longctx) — so software adapters are timed by the wall clock, and records say so.
    pub fn new(gpu: &Gpu) -> Option<Self> {
        if !gpu.features().contains(wgpu::Features::TIMESTAMP_QUERY)
            || gpu.info().device_type == wgpu::DeviceType::Cpu
        {
            return None;
        }
        let queries = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("longctx timer"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("longctx timer resolve"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(Self { queries, resolve, period_ns: gpu.queue.get_timestamp_period() as f64 })
    }

    /// Timestamp writes for the pass to be timed.
    pub fn writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }

    /// Timestamp write at the start of a pass only (the first of several timed passes).
    pub fn begin(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: None,
        }
    }

    /// Timestamp write at the end of a pass only (the last of several timed passes).
    pub fn end(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: None,
            end_of_pass_write_index: Some(1),
        }
    }

    /// Records the resolve; call after the timed pass, in the same encoder.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        encoder.resolve_query_set(&self.queries, 0..2, &self.resolve, 0);
    }

    /// Milliseconds between the two timestamps of the last submitted run.
    pub fn read_ms(&self, gpu: &Gpu) -> Result<f64> {
        let t: Vec<u64> = gpu.read(&self.resolve, 2)?;
        Ok(t[1].saturating_sub(t[0]) as f64 * self.period_ns / 1e6)
    }
}

/// `driver driver_info`, trimmed: the driver identity records and caches key on.
pub fn driver_of(info: &wgpu::AdapterInfo) -> String {
    format!("{} {}", info.driver, info.driver_info).trim().to_string()
}

/// Layout entry: uniform buffer at `binding` (compute stage).
pub fn uniform_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    buffer_entry(binding, wgpu::BufferBindingType::Uniform)
}

/// Layout entry: storage buffer at `binding` (compute stage).
pub fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    buffer_entry(binding, wgpu::BufferBindingType::Storage { read_only })
}

fn buffer_entry(binding: u32, ty: wgpu::BufferBindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    }
}
