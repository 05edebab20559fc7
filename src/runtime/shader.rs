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

/// One binding of a kernel in group 0: its number, its name in the WGSL and how it is bound.
/// Declared with the kernels' `bindings!` macro; the naga reflection test
/// (`tests/shaders.rs`) checks every family's slots against the WGSL of every variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Slot {
    /// `@binding(n)` in group 0.
    pub binding: u32,
    /// The WGSL variable's name.
    pub name: &'static str,
    /// `var<uniform>`, `var<storage, read>` or `var<storage, read_write>`.
    pub kind: Binding,
}

/// A list of [`Slot`]s as `number name: Kind`, named as the WGSL names them:
/// `bindings![0 contract: Uniform, 1 q: Read, 4 o: ReadWrite]`. For kernels whose entry
/// points each bind a subset of their family's [`bind_group!`] struct.
macro_rules! bindings {
    ($($n:literal $name:ident: $kind:ident),* $(,)?) => {
        &[$($crate::runtime::shader::Slot {
            binding: $n,
            name: stringify!($name),
            kind: $crate::runtime::shader::Binding::$kind,
        }),*]
    };
}
pub(crate) use bindings;

/// A kernel's group-0 bindings as a struct with one field per binding, named as its WGSL
/// names them: `bind_group! { pub(crate) struct PadBinds { 0 shape: Uniform, 1 src: Read,
/// 2 dst: ReadWrite } }` gives `PadBinds<'a> { shape: Bound<'a>, src: Bound<'a>, dst:
/// Bound<'a> }` and its [`BindGroupFields::SLOTS`]. A bind group is built from the struct by
/// field ([`Compiled::bind`]), so no call site lists buffers by position; the naga reflection
/// test (`tests/shaders.rs`) checks the slots against the WGSL of every variant.
macro_rules! bind_group {
    ($(#[$meta:meta])* $vis:vis struct $name:ident {
        $($(#[$field_meta:meta])* $n:literal $field:ident: $kind:ident),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug)]
        $vis struct $name<'a> {
            $($(#[$field_meta])* pub(crate) $field: $crate::runtime::shader::Bound<'a>),*
        }

        impl $crate::runtime::shader::BindGroupFields for $name<'_> {
            const SLOTS: &'static [$crate::runtime::shader::Slot] =
                $crate::runtime::shader::bindings![$($n $field: $kind),*];

            fn bound(&self) -> Vec<$crate::runtime::shader::Bound<'_>> {
                vec![$(self.$field),*]
            }
        }
    };
}
pub(crate) use bind_group;

/// One buffer bound to a slot: the whole buffer or a byte range of it.
#[derive(Clone, Copy, Debug)]
pub struct Bound<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// `(offset, size)` in bytes; `None` binds the whole buffer.
    pub range: Option<(u64, u64)>,
}

impl<'a> Bound<'a> {
    /// `buffer`'s byte range `(offset, size)`, or the whole buffer for `None`.
    pub fn range(buffer: &'a wgpu::Buffer, range: Option<(u64, u64)>) -> Self {
        Self { buffer, range }
    }

    /// The bytes this binding covers.
    fn span(&self) -> std::ops::Range<u64> {
        self.range.map_or(0..self.buffer.size(), |(o, n)| o..o + n)
    }
}

impl<'a> From<&'a wgpu::Buffer> for Bound<'a> {
    fn from(buffer: &'a wgpu::Buffer) -> Self {
        Self { buffer, range: None }
    }
}

/// A struct of named bindings (the kernels declare theirs with the crate's `bind_group!` macro).
pub trait BindGroupFields {
    /// The bindings, in field order.
    const SLOTS: &'static [Slot];
    /// The bound buffers, in field order.
    fn bound(&self) -> Vec<Bound<'_>>;
}

/// A kernel's creation-time constants as a struct whose field names are the WGSL names, so a
/// family spells each name once: `header_consts! { pub(crate) struct FlashConsts { D4, BR } }`
/// gives `FlashConsts { D4: u32, BR: u32 }` and `header()`, the `(name, value)` list a
/// [`ShaderVariant`] takes (names ending `_U` become booleans in WGSL, see [`ShaderVariant`]).
macro_rules! header_consts {
    ($(#[$meta:meta])* $vis:vis struct $name:ident { $($(#[$field_meta:meta])* $field:ident),* $(,)? }) => {
        $(#[$meta])*
        #[allow(non_snake_case)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        $vis struct $name {
            $($(#[$field_meta])* pub(crate) $field: u32),*
        }

        impl $name {
            /// The constants of the WGSL header, in declaration order.
            pub(crate) fn header(&self) -> Vec<(&'static str, u32)> {
                vec![$((stringify!($field), self.$field)),*]
            }
        }
    };
}
pub(crate) use header_consts;

/// A kernel family's shader, declared once.
#[derive(Clone, Copy, Debug)]
pub struct Shader {
    /// The `.wgsl` file's stem.
    pub stem: &'static str,
    /// The kernel's own WGSL.
    pub source: &'static str,
    /// Its bindings in group 0, in the order bind groups list their buffers.
    pub bindings: &'static [Slot],
}

impl Shader {
    /// One entry point with the given snippets and constants.
    pub fn variant(
        self,
        entry: &'static str,
        prelude: &[Snippet],
        consts: Vec<(&'static str, u32)>,
    ) -> ShaderVariant {
        ShaderVariant { shader: self, prelude: prelude.to_vec(), entry, consts, user: None, lowering: None }
    }
}

/// WGSL from outside the engine (a user's attention mods), placed after the snippets.
#[derive(Clone, Debug)]
pub struct UserSource {
    /// For messages: the user's file or the named mods.
    pub name: String,
    /// The text.
    pub source: std::sync::Arc<str>,
    /// A hash of the text, which keys the pipeline cache.
    pub hash: u64,
    /// The read-only storage buffers it declares in bind group 1, by binding number.
    pub bindings: Vec<u32>,
}

/// A kernel family's rewrite of its composed source, applied last (after the header, the
/// snippets, the user's WGSL and the kernel): what the kernels need beyond plain WGSL, such
/// as their storage types or an extension emulated where the device lacks it. The runtime
/// knows none of it; it names the rewrite in cache keys.
#[derive(Clone, Copy, Debug)]
pub struct Lowering {
    /// Names the rewrite in cache keys.
    pub name: &'static str,
    /// The composed source and the variant's constants → the source compiled.
    pub apply: fn(String, &[(&'static str, u32)]) -> String,
}

/// One compilable variant of a kernel. Constants named `NAME_U` become booleans `NAME`.
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
    /// The user's WGSL, if any (after the snippets, before the kernel).
    pub user: Option<UserSource>,
    /// The family's rewrite of the composed source, if any.
    pub lowering: Option<Lowering>,
}

/// What identifies a compiled variant: everything but the source text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct VariantKey {
    stem: &'static str,
    entry: &'static str,
    prelude: Vec<&'static str>,
    consts: Vec<(&'static str, u32)>,
    bindings: &'static [Slot],
    user: Option<u64>,
    lowering: Option<&'static str>,
}

impl ShaderVariant {
    fn key(&self) -> VariantKey {
        VariantKey {
            stem: self.shader.stem,
            entry: self.entry,
            prelude: self.prelude.iter().map(|s| s.name).collect(),
            consts: self.consts.clone(),
            bindings: self.shader.bindings,
            user: self.user.as_ref().map(|u| u.hash),
            lowering: self.lowering.map(|l| l.name),
        }
    }

    /// The full WGSL source: constants header, snippets, kernel.
    pub fn source(&self) -> String {
        let mut src = String::new();
        for (name, value) in &self.consts {
            match name.strip_suffix("_U") {
                Some(flag) => src.push_str(&format!("const {flag}: bool = {};\n", *value != 0)),
                None => src.push_str(&format!("const {name}: u32 = {value}u;\n")),
            }
        }
        for snippet in &self.prelude {
            src.push_str(snippet.source);
        }
        if let Some(u) = &self.user {
            src.push_str(&u.source);
            src.push('\n');
        }
        src.push_str(self.shader.source);
        match self.lowering {
            Some(lowering) => (lowering.apply)(src, &self.consts),
            None => src,
        }
    }

    /// `stem:entry[NAME=value,…]`, for messages (and `+ mods` with the user's WGSL).
    pub fn name(&self) -> String {
        let consts: Vec<String> = self.consts.iter().map(|(n, v)| format!("{n}={v}")).collect();
        let user = self.user.as_ref().map_or(String::new(), |u| format!(" with {}", u.name));
        format!("{}:{}[{}]{user}", self.shader.stem, self.entry, consts.join(","))
    }

    /// This variant with the user's WGSL `source` (named `name` in messages), which reads
    /// the read-only storage buffers `bindings` of bind group 1.
    pub(crate) fn with_user(mut self, name: &str, source: String, bindings: Vec<u32>) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut h);
        self.user =
            Some(UserSource { name: name.to_string(), hash: h.finish(), source: source.into(), bindings });
        self
    }

    /// This variant with its source rewritten by `lowering` after composition.
    pub fn lowered(mut self, lowering: Lowering) -> Self {
        self.lowering = Some(lowering);
        self
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
    bindings: &'static [Slot],
    /// The variant's name, for messages.
    name: Arc<str>,
    /// Bind group 1's layout: the user's buffers, when the variant's WGSL declares any.
    pub user_layout: Option<wgpu::BindGroupLayout>,
}

impl Compiled {
    /// A bind group over the fields of `fields` that this variant binds: every slot of the
    /// variant by number, from a struct that declares the same slot (name and access).
    ///
    /// # Panics
    /// When the variant binds a slot the struct does not declare identically, or when a
    /// writable binding overlaps another binding of the same buffer (WebGPU refuses such a
    /// bind group, native wgpu does not check): both are bugs of the kernel's Rust, which the
    /// test suite's runs of every family catch.
    pub fn bind<F: BindGroupFields>(&self, gpu: &Gpu, fields: &F) -> wgpu::BindGroup {
        let bound = fields.bound();
        let chosen: Vec<(Slot, Bound)> = self
            .bindings
            .iter()
            .map(|slot| match F::SLOTS.iter().position(|s| s.binding == slot.binding) {
                Some(i) if F::SLOTS[i] == *slot => (*slot, bound[i]),
                found => panic!(
                    "{}: the variant binds {slot:?}; its bind-group struct declares {:?}",
                    self.name,
                    found.map(|i| F::SLOTS[i])
                ),
            })
            .collect();
        if let Some((a, b)) = aliased(&chosen) {
            panic!("{}: writable binding {a} overlaps binding {b} of the same buffer", self.name);
        }
        let entries: Vec<_> = chosen
            .iter()
            .map(|(slot, b)| wgpu::BindGroupEntry {
                binding: slot.binding,
                resource: match b.range {
                    None => b.buffer.as_entire_binding(),
                    Some((offset, size)) => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                        buffer: b.buffer,
                        offset,
                        size: std::num::NonZeroU64::new(size),
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
        self.dispatch_with(pass, bind, None, groups);
    }

    /// [`Compiled::dispatch`] with the user's buffers as bind group 1 (see
    /// [`Compiled::bind_user`]).
    pub(crate) fn dispatch_with(
        &self,
        pass: &mut wgpu::ComputePass,
        bind: &wgpu::BindGroup,
        user: Option<&wgpu::BindGroup>,
        groups: [u32; 3],
    ) {
        pass.set_pipeline(&self.pipeline);
        pass.set_bind_group(0, bind, &[]);
        if let Some(user) = user {
            pass.set_bind_group(1, user, &[]);
        }
        pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
    }

    /// Bind group 1 over the user's buffers `(binding, buffer)`; `None` when the variant
    /// declares none.
    pub fn bind_user(&self, gpu: &Gpu, buffers: &[(u32, &wgpu::Buffer)]) -> Option<wgpu::BindGroup> {
        let layout = self.user_layout.as_ref()?;
        let entries: Vec<_> = buffers
            .iter()
            .map(|&(binding, b)| wgpu::BindGroupEntry { binding, resource: b.as_entire_binding() })
            .collect();
        Some(gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("user buffers"),
            layout,
            entries: &entries,
        }))
    }
}

/// The first two bindings of one buffer where one is writable and the ranges overlap.
fn aliased(bound: &[(Slot, Bound)]) -> Option<(u32, u32)> {
    for (i, (slot_a, a)) in bound.iter().enumerate() {
        for (slot_b, b) in &bound[i + 1..] {
            let writes = slot_a.kind == Binding::ReadWrite || slot_b.kind == Binding::ReadWrite;
            let (sa, sb) = (a.span(), b.span());
            if writes && a.buffer == b.buffer && sa.start < sb.end && sb.start < sa.end {
                return Some((slot_a.binding, slot_b.binding));
            }
        }
    }
    None
}

impl Gpu {
    /// The user's group-1 buffers of `variant` against the device, before wgpu sees them
    /// (which would abort the process): binding numbers below the device's bindings per group,
    /// and with the kernel's own, no more storage buffers than one shader stage may have.
    fn check_user_bindings(&self, variant: &ShaderVariant) -> Result<()> {
        let Some(user) = &variant.user else { return Ok(()) };
        let l = self.limits();
        if let Some(&b) = user.bindings.iter().find(|&&b| b >= l.max_bindings_per_bind_group) {
            return Err(Error::OutOfRange {
                what: format!("the group-1 binding number of {}", user.name),
                value: b as u64,
                min: 0,
                max: l.max_bindings_per_bind_group as u64 - 1,
            });
        }
        let own = variant.shader.bindings.iter().filter(|s| s.kind != Binding::Uniform).count();
        let total = own + user.bindings.len();
        if total > l.max_storage_buffers_per_shader_stage as usize {
            return Err(Error::OutOfRange {
                what: format!(
                    "storage buffers of {} with the {own} of kernel {} (buffers the mods may declare: {})",
                    user.name,
                    variant.shader.stem,
                    (l.max_storage_buffers_per_shader_stage as usize).saturating_sub(own)
                ),
                value: total as u64,
                min: 0,
                max: l.max_storage_buffers_per_shader_stage as u64,
            });
        }
        Ok(())
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
        self.check_user_bindings(variant)?;
        let layout =
            self.layout(&variant.shader.bindings.iter().map(|s| (s.binding, s.kind)).collect::<Vec<_>>());
        let user_layout = variant
            .user
            .as_ref()
            .filter(|u| !u.bindings.is_empty())
            .map(|u| self.layout(&u.bindings.iter().map(|&b| (b, Binding::Read)).collect::<Vec<_>>()));
        // The browser reports a rejected shader only once its event loop runs, and compile
        // cannot wait for that: naga checks the WGSL first, as wgpu does on native.
        #[cfg(target_arch = "wasm32")]
        variant.validate()?;
        let label = Some(variant.shader.stem);
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self.device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label,
            source: wgpu::ShaderSource::Wgsl(variant.source().into()),
        });
        let pl = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label,
            bind_group_layouts: &[Some(&layout), user_layout.as_ref()][..1 + user_layout.is_some() as usize],
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
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(err) = pollster::block_on(scope.pop()) {
            return Err(Error::Shader { name: variant.name(), message: err.to_string() });
        }
        #[cfg(target_arch = "wasm32")]
        {
            // what the browser's own compiler still rejects is logged when the scope pops
            let (name, pop) = (variant.name(), scope.pop());
            wasm_bindgen_futures::spawn_local(async move {
                if let Some(err) = pop.await {
                    log::error!("{}", Error::Shader { name, message: err.to_string() });
                }
            });
        }
        let compiled = Compiled {
            pipeline,
            layout,
            bindings: variant.shader.bindings,
            name: variant.name().into(),
            user_layout,
        };
        self.caches.pipelines.lock().unwrap_or_else(PoisonError::into_inner).insert(key, compiled.clone());
        Ok(compiled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::GpuOptions;

    bind_group! {
        struct CopyBinds { 0 len: Uniform, 1 src: Read, 2 dst: ReadWrite }
    }
    bind_group! {
        struct SwappedBinds { 0 len: Uniform, 1 src: ReadWrite, 2 dst: Read }
    }
    const COPY: Shader = Shader {
        stem: "copy",
        source: "@group(0) @binding(0) var<uniform> len: vec4<u32>;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@compute @workgroup_size(1) fn main() { dst[0] = src[0] + f32(len.x); }",
        bindings: CopyBinds::SLOTS,
    };

    fn setup() -> (Gpu, Compiled, [wgpu::Buffer; 3]) {
        let gpu = Gpu::new(&GpuOptions::default()).expect("a wgpu adapter (tests need one)");
        let kernel = gpu.compile(&COPY.variant("main", &[], vec![])).unwrap();
        let len = gpu.uniform("len", &[1u32; 4]);
        let (a, b) = (gpu.storage("a", 64).unwrap(), gpu.storage("b", 64).unwrap());
        (gpu, kernel, [len, a, b])
    }

    #[test]
    fn a_bind_group_is_built_by_field() {
        let (gpu, kernel, [len, a, b]) = setup();
        kernel.bind(&gpu, &CopyBinds { len: (&len).into(), src: (&a).into(), dst: (&b).into() });
        // two halves of one buffer do not overlap
        let (lo, hi) = (Bound::range(&a, Some((0, 32))), Bound::range(&a, Some((32, 32))));
        kernel.bind(&gpu, &CopyBinds { len: (&len).into(), src: lo, dst: hi });
    }

    #[test]
    #[should_panic(expected = "writable binding 1 overlaps binding 2 of the same buffer")]
    fn one_buffer_bound_writable_twice_is_caught_before_webgpu_refuses_it() {
        // The router once bound its scratch buffer as both `rows` and `out` (read_write):
        // lavapipe ran it, Chromium's WebGPU rejected the bind group ("writable storage buffer
        // binding aliasing") and every command buffer after it.
        let (gpu, kernel, [len, a, _]) = setup();
        kernel.bind(&gpu, &CopyBinds { len: (&len).into(), src: (&a).into(), dst: (&a).into() });
    }

    #[test]
    #[should_panic(
        expected = "its bind-group struct declares Some(Slot { binding: 1, name: \"src\", kind: ReadWrite })"
    )]
    fn a_struct_that_disagrees_with_the_variant_is_named() {
        let (gpu, kernel, [len, a, b]) = setup();
        kernel.bind(&gpu, &SwappedBinds { len: (&len).into(), src: (&a).into(), dst: (&b).into() });
    }
}
