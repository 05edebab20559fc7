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

/// A kernel's group-0 bindings as `number name: Kind`, named as its WGSL names them and in
/// the order its bind groups list their buffers:
/// `bindings![0 contract: Uniform, 1 q: Read, 4 o: ReadWrite]`.
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
        ShaderVariant { shader: self, prelude: prelude.to_vec(), entry, consts, user: None }
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
    /// The user's WGSL, if any (after the snippets, before the kernel).
    pub user: Option<UserSource>,
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
        }
    }

    /// The full WGSL source: constants header, snippets, kernel.
    pub fn source(&self) -> String {
        let mut src = String::new();
        let f16 = self.consts.iter().find(|(n, _)| *n == "F16_U").map(|&(_, v)| v != 0);
        let coop = self.consts.iter().find(|(n, _)| *n == "COOP_S").map(|&(_, v)| v);
        let emulate = self.consts.iter().any(|&(n, v)| n == "COOP_EMULATE_U" && v != 0);
        if f16 == Some(true) {
            src.push_str("enable f16;\n");
        }
        if coop.is_some() && !emulate {
            src.push_str("enable wgpu_cooperative_matrix;\n");
        }
        if let Some(f16) = f16 {
            let t = if f16 { "f16" } else { "f32" };
            src.push_str(&format!("alias in4 = vec4<{t}>;\nalias in1 = {t};\n"));
        }
        if let (Some(s), true) = (coop, emulate) {
            src.push_str(&format!(
                "alias coop_a = array<f32, {0}>;\nalias coop_b = array<f32, {0}>;\nalias coop_c = array<f32, {0}>;\n",
                s * s
            ));
        } else if let Some(s) = coop {
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
        if let Some(u) = &self.user {
            src.push_str(&u.source);
            src.push('\n');
        }
        src.push_str(self.shader.source);
        match coop {
            Some(s) if emulate => emulate_coop(&src, s),
            _ => src,
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

/// The arguments of the call whose `(` is at `open`, split at top-level commas, and the index
/// just past its `)`.
fn call_args(src: &str, open: usize) -> (Vec<&str>, usize) {
    let (mut depth, mut start, mut args) = (0usize, open + 1, Vec::new());
    for (i, ch) in src[open..].char_indices() {
        let at = open + i;
        match ch {
            '(' | '[' => depth += 1,
            ')' | ']' if depth > 1 => depth -= 1,
            ')' => {
                args.push(src[start..at].trim());
                return (args, at + 1);
            }
            ',' if depth == 1 => {
                args.push(src[start..at].trim());
                start = at + 1;
            }
            _ => {}
        }
    }
    (args, src.len())
}

/// `&name[index]` → (`name`, `index`).
fn element_pointer(arg: &str) -> Option<(&str, &str)> {
    let inner = arg.strip_prefix('&')?.strip_suffix(']')?;
    let (name, index) = inner.split_once('[')?;
    Some((name.trim(), index))
}

/// The cooperative-matrix operations of `src` rewritten into plain WGSL over S×S arrays (one
/// whole copy per invocation, f32 arithmetic, products summed in k order): the same kernel,
/// runnable on any adapter, slowly. Every invocation computes and stores the whole matrix
/// (the same values); a store is fenced by barriers on both sides, so that no invocation
/// overwrites a matrix another has yet to load (a real subgroup does each operation at once). `COOP_EMULATE_U` selects it; the engine uses it to run
/// its tensor-core kernels on adapters without the feature (the software adapter in CI),
/// which checks their indexing, layouts and control flow against the oracle. Loads and
/// stores address workgroup or storage arrays as `&name[index]`, as the kernels write them.
fn emulate_coop(src: &str, s: u32) -> String {
    let mut out = String::with_capacity(src.len());
    let (mut loads, mut stores) = (Vec::<String>::new(), Vec::<String>::new());
    let mut rest = src;
    while let Some(at) = rest.find("coop") {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        let op = ["coopLoadT<", "coopLoad<", "coopStoreT(", "coopStore(", "coopMultiplyAdd("]
            .into_iter()
            .find(|op| tail.starts_with(op));
        let Some(op) = op else {
            out.push_str("coop");
            rest = &tail[4..];
            continue;
        };
        let open = match op.ends_with('<') {
            true => tail.find('(').unwrap_or(tail.len() - 1),
            false => op.len() - 1,
        };
        let (args, end) = call_args(tail, open);
        let row_major = op.contains('T');
        let call = match (op, args.as_slice()) {
            ("coopMultiplyAdd(", [a, b, c]) => format!("emu_mma({a}, {b}, {c})"),
            (_, [ptr, stride]) if op.starts_with("coopLoad") => match element_pointer(ptr) {
                Some((name, index)) => {
                    if !loads.iter().any(|l| l == name) {
                        loads.push(name.to_string());
                    }
                    format!("emu_load_{name}({index}, {stride}, {row_major})")
                }
                None => tail[..end].to_string(),
            },
            (_, [value, ptr, stride]) => match element_pointer(ptr) {
                Some((name, index)) => {
                    if !stores.iter().any(|l| l == name) {
                        stores.push(name.to_string());
                    }
                    format!("emu_store_{name}({value}, {index}, {stride}, {row_major})")
                }
                None => tail[..end].to_string(),
            },
            _ => tail[..end].to_string(),
        };
        out.push_str(&call);
        rest = &tail[end..];
    }
    out.push_str(rest);
    let ss = s * s;
    let offset = "select(j * stride + i, i * stride + j, row_major)";
    for name in &loads {
        out.push_str(&format!(
            "\nfn emu_load_{name}(at: u32, stride: u32, row_major: bool) -> array<f32, {ss}> {{\n    var m: array<f32, {ss}>;\n    for (var i = 0u; i < {s}u; i++) {{\n        for (var j = 0u; j < {s}u; j++) {{\n            m[i * {s}u + j] = f32({name}[at + {offset}]);\n        }}\n    }}\n    return m;\n}}\n"
        ));
    }
    for name in &stores {
        out.push_str(&format!(
            "\nfn emu_store_{name}(m: array<f32, {ss}>, at: u32, stride: u32, row_major: bool) {{\n    var v = m;\n    workgroupBarrier();\n    for (var i = 0u; i < {s}u; i++) {{\n        for (var j = 0u; j < {s}u; j++) {{\n            {name}[at + {offset}] = v[i * {s}u + j];\n        }}\n    }}\n    workgroupBarrier();\n}}\n"
        ));
    }
    out.push_str(&format!(
        "\nfn emu_mma(a: array<f32, {ss}>, b: array<f32, {ss}>, c: array<f32, {ss}>) -> array<f32, {ss}> {{\n    var x = a;\n    var y = b;\n    var r = c;\n    for (var i = 0u; i < {s}u; i++) {{\n        for (var j = 0u; j < {s}u; j++) {{\n            var acc = r[i * {s}u + j];\n            for (var k = 0u; k < {s}u; k++) {{\n                acc += x[i * {s}u + k] * y[k * {s}u + j];\n            }}\n            r[i * {s}u + j] = acc;\n        }}\n    }}\n    return r;\n}}\n"
    ));
    out
}

/// A compiled variant: its pipeline and the layout its bind groups use.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The compute pipeline.
    pub pipeline: wgpu::ComputePipeline,
    /// The bind-group layout of the variant's bindings.
    pub layout: wgpu::BindGroupLayout,
    bindings: &'static [Slot],
    /// Bind group 1's layout: the user's buffers, when the variant's WGSL declares any.
    pub user_layout: Option<wgpu::BindGroupLayout>,
}

impl Compiled {
    /// A bind group over whole buffers, listed in the order the shader declares its bindings.
    pub fn bind(&self, gpu: &Gpu, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let ranged: Vec<_> = buffers.iter().map(|&b| (b, None)).collect();
        self.bind_ranges(gpu, &ranged)
    }

    /// [`Compiled::bind`] over whole buffers or `(offset, size)` byte ranges.
    pub(crate) fn bind_ranges(
        &self,
        gpu: &Gpu,
        buffers: &[(&wgpu::Buffer, Option<(u64, u64)>)],
    ) -> wgpu::BindGroup {
        debug_assert_eq!(buffers.len(), self.bindings.len(), "one buffer per declared binding");
        debug_assert_eq!(self.aliased(buffers), None, "a writable binding aliases another binding");
        let entries: Vec<_> = buffers
            .iter()
            .zip(self.bindings)
            .map(|((b, range), slot)| wgpu::BindGroupEntry {
                binding: slot.binding,
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

    /// The first two bindings of one buffer where one is writable and the ranges overlap:
    /// WebGPU refuses such a bind group ("writable storage buffer binding aliasing"), native
    /// wgpu does not check, so the debug builds that run the tests do.
    fn aliased(&self, buffers: &[(&wgpu::Buffer, Option<(u64, u64)>)]) -> Option<(u32, u32)> {
        let span = |(b, r): &(&wgpu::Buffer, Option<(u64, u64)>)| r.map_or(0..b.size(), |(o, n)| o..o + n);
        for (i, (a, slot_a)) in buffers.iter().zip(self.bindings).enumerate() {
            for (b, slot_b) in buffers.iter().zip(self.bindings).skip(i + 1) {
                let writes = slot_a.kind == Binding::ReadWrite || slot_b.kind == Binding::ReadWrite;
                let (sa, sb) = (span(a), span(b));
                if writes && a.0 == b.0 && sa.start < sb.end && sb.start < sa.end {
                    return Some((slot_a.binding, slot_b.binding));
                }
            }
        }
        None
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
        let compiled = Compiled { pipeline, layout, bindings: variant.shader.bindings, user_layout };
        self.caches.pipelines.lock().unwrap_or_else(PoisonError::into_inner).insert(key, compiled.clone());
        Ok(compiled)
    }
}
