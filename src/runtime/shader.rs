//! Shader assembly and the pipeline and layout caches.
//!
//! A kernel family declares its [`Shader`] once — stem (the `.wgsl` file), source, bindings
//! in order — and builds [`ShaderVariant`]s of it: an entry point, the shared [`Snippet`]s
//! it needs, and the compile-time constants of a generated `const` header. The source is
//! composed one way only: header, snippets, kernel file. [`Gpu::compile`] returns the
//! variant's pipeline and bind-group layout, compiling each variant once per device (cached
//! by the variant, not its source text) and creating each layout once (cached by its
//! bindings).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};
use crate::runtime::Gpu;

/// A WGSL snippet shared by several kernels, placed between the constants and the kernel.
#[derive(Clone, Copy, Debug)]
pub struct Snippet {
    /// Names the snippet in cache keys and messages.
    pub name: &'static str,
    /// The WGSL text.
    pub source: &'static str,
}

/// How a kernel binds one buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Binding {
    /// `var<uniform>`.
    Uniform,
    /// `var<storage, read>`.
    Read,
    /// `var<storage, read_write>`.
    ReadWrite,
}

/// Bindings numbered 0, 1, 2… in order: `numbered([Uniform, Read, ReadWrite])`.
pub const fn numbered<const N: usize>(kinds: [Binding; N]) -> [(u32, Binding); N] {
    let mut out = [(0, Binding::Uniform); N];
    let mut i = 0;
    while i < N {
        out[i] = (i as u32, kinds[i]);
        i += 1;
    }
    out
}

/// A kernel family's shader, declared once.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    /// The `.wgsl` file's stem.
    pub stem: &'static str,
    /// The kernel's own WGSL.
    pub source: &'static str,
    /// Its bindings in group 0: (binding number, kind), in the order bind groups list
    /// their buffers.
    pub bindings: &'static [(u32, Binding)],
}

impl Shader {
    /// One entry point with the given snippets and constants.
    pub fn variant(
        self,
        entry: &'static str,
        prelude: &[Snippet],
        consts: Vec<(&'static str, u32)>,
    ) -> ShaderVariant {
        ShaderVariant { shader: self, prelude: prelude.to_vec(), entry, consts }
    }
}

/// One compilable variant of a kernel.
///
/// Constants named `NAME_U` become booleans `NAME`; `F16_U` also selects the storage types
/// `in4` and `in1` (`vec4<f16>` and `f16` with `enable f16;`, else f32). `COOP_S` (8 or 16)
/// enables `wgpu_cooperative_matrix` and declares `coop_a`, `coop_b` (S×S, storage type)
/// and `coop_c` (S×S, f32).
#[derive(Clone, Debug)]
pub struct ShaderVariant {
    /// The kernel family's shader.
    pub shader: Shader,
    /// Shared snippets placed after the constants, in order.
    pub prelude: Vec<Snippet>,
    /// The entry point.
    pub entry: &'static str,
    /// Creation-time constants, in header order.
    pub consts: Vec<(&'static str, u32)>,
}

/// What identifies a compiled variant: everything but the source text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct VariantKey {
    stem: &'static str,
    entry: &'static str,
    prelude: Vec<&'static str>,
    consts: Vec<(&'static str, u32)>,
    bindings: &'static [(u32, Binding)],
}

impl ShaderVariant {
    fn key(&self) -> VariantKey {
        VariantKey {
            stem: self.shader.stem,
            entry: self.entry,
            prelude: self.prelude.iter().map(|s| s.name).collect(),
            consts: self.consts.clone(),
            bindings: self.shader.bindings,
        }
    }

    /// The full WGSL source: constants header, snippets, kernel.
    pub fn source(&self) -> String {
        let mut src = String::new();
        let f16 = self.consts.iter().find(|(n, _)| *n == "F16_U").map(|&(_, v)| v != 0);
        let coop = self.consts.iter().find(|(n, _)| *n == "COOP_S").map(|&(_, v)| v);
        if f16 == Some(true) {
            src.push_str("enable f16;\n");
        }
        if coop.is_some() {
            src.push_str("enable wgpu_cooperative_matrix;\n");
        }
        if let Some(f16) = f16 {
            let t = if f16 { "f16" } else { "f32" };
            src.push_str(&format!("alias in4 = vec4<{t}>;\nalias in1 = {t};\n"));
        }
        if let Some(s) = coop {
            // the cooperative-matrix types of this variant: inputs (A, B) of the storage type,
            // accumulator (C) f32
            let t = if f16 == Some(true) { "f16" } else { "f32" };
            src.push_str(&format!(
                "alias coop_a = coop_mat{s}x{s}<{t}, A>;\nalias coop_b = coop_mat{s}x{s}<{t}, B>;\nalias coop_c = coop_mat{s}x{s}<f32, C>;\n"
            ));
        }
        for (name, value) in &self.consts {
            match name.strip_suffix("_U") {
                Some(flag) => src.push_str(&format!("const {flag}: bool = {};\n", *value != 0)),
                None => src.push_str(&format!("const {name}: u32 = {value}u;\n")),
            }
        }
        for snippet in &self.prelude {
            src.push_str(snippet.source);
        }
        src.push_str(self.shader.source);
        src
    }

    /// `stem:entry[NAME=value,…]`, for messages.
    pub fn name(&self) -> String {
        let consts: Vec<String> = self.consts.iter().map(|(n, v)| format!("{n}={v}")).collect();
        format!("{}:{}[{}]", self.shader.stem, self.entry, consts.join(","))
    }

    /// Parses and validates the source with naga (what wgpu does at pipeline creation).
    pub fn validate(&self) -> Result<()> {
        let err = |message: String| Error::Shader { name: self.name(), message };
        let source = self.source();
        let module = naga::front::wgsl::parse_str(&source).map_err(|e| err(e.emit_to_string(&source)))?;
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .map_err(|e| err(e.emit_to_string(&source)))?;
        if !module.entry_points.iter().any(|ep| ep.name == self.entry) {
            return Err(err(format!("no entry point `{}`", self.entry)));
        }
        Ok(())
    }
}

/// A compiled variant: its pipeline and the layout its bind groups use.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The compute pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// The bind-group layout of the variant's bindings.
    pub layout: wgpu::BindGroupLayout,
    bindings: &'static [(u32, Binding)],
}

impl Compiled {
    /// A bind group over whole buffers, listed in the order the shader declares its bindings.
    pub fn bind(&self, gpu: &Gpu, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let ranged: Vec<_> = buffers.iter().map(|&b| (b, None)).collect();
        self.bind_ranges(gpu, &ranged)
    }

    /// [`Compiled::bind`] over whole buffers or `(offset, size)` byte ranges.
    pub fn bind_ranges(&self, gpu: &Gpu, buffers: &[(&wgpu::Buffer, Option<(u64, u64)>)]) -> wgpu::BindGroup {
        debug_assert_eq!(buffers.len(), self.bindings.len(), "one buffer per declared binding");
        let entries: Vec<_> = buffers
            .iter()
            .zip(self.bindings)
            .map(|((b, range), &(binding, _))| wgpu::BindGroupEntry {
                binding,
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
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.layout,
            entries: &entries,
        })
    }

    /// Records one dispatch of this pipeline with `bind` into `pass`.
    pub fn dispatch(&self, pass: &mut wgpu::ComputePass, bind: &wgpu::BindGroup, groups: [u32; 3]) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind, &[]);
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }
}

/// Per-device caches of compiled variants and layouts (shared by clones of a [`Gpu`]).
#[derive(Clone, Default)]
pub(crate) struct Caches {
    pipelines: Shared<VariantKey, Compiled>,
    layouts: Shared<Vec<(u32, Binding)>, wgpu::BindGroupLayout>,
}

/// A map shared by every clone of a [`Gpu`].
type Shared<K, V> = Arc<Mutex<HashMap<K, V>>>;

fn entry(binding: u32, kind: Binding) -> wgpu::BindGroupLayoutEntry {
    let ty = match kind {
        Binding::Uniform => wgpu::BufferBindingType::Uniform,
        Binding::Read => wgpu::BufferBindingType::Storage { read_only: true },
        Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
    };
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer { ty, has_dynamic_offset: false, min_binding_size: None },
        count: None,
    }
}

impl Gpu {
    /// The bind-group layout of `bindings`, created once per device.
    fn layout(&self, bindings: &[(u32, Binding)]) -> wgpu::BindGroupLayout {
        let mut layouts = self.caches.layouts.lock().unwrap_or_else(PoisonError::into_inner);
        layouts
            .entry(bindings.to_vec())
            .or_insert_with(|| {
                let entries: Vec<_> = bindings.iter().map(|&(n, b)| entry(n, b)).collect();
                self.device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: None,
                    entries: &entries,
                })
            })
            .clone()
    }

    /// The pipeline and layout of one variant, compiled once per device. Compilation errors
    /// come back as [`Error::Shader`], not as a panic.
    pub fn compile(&self, variant: &ShaderVariant) -> Result<Compiled> {
        let key = variant.key();
        if let Some(c) = self.caches.pipelines.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return Ok(c.clone());
        }
        let layout = self.layout(variant.shader.bindings);
        let label = Some(variant.shader.stem);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label,
            source: wgpu::ShaderSource::Wgsl(variant.source().into()),
        });
        let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label,
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label,
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
        let compiled = Compiled { pipeline, layout, bindings: variant.shader.bindings };
        self.caches.pipelines.lock().unwrap_or_else(PoisonError::into_inner).insert(key, compiled.clone());
        Ok(compiled)
    }
}
