//! Every shader variant the engine can produce passes naga's parser and validator, for the
//! present device and for limit sets of devices that are not present; every variant's
//! bindings as Rust declares them agree with its WGSL (naga's reflection); every compute
//! shader file belongs to a registered family.

use crate::common;

use longctx::FlashConfig;
use longctx::kernels::Family;
use longctx::runtime::{Binding, Shader, ShaderVariant, Slot};

/// Every variant of every family for `limits`.
fn all_variants(limits: &wgpu::Limits) -> Vec<ShaderVariant> {
    Family::ALL.iter().flat_map(|f| f.variants(limits)).collect()
}

/// Where `variant`'s declared bindings (Rust) and its WGSL disagree, one line each: a slot
/// whose number, name or access differs from the WGSL variable in group 0, a slot the WGSL
/// does not declare, a group-0 variable the entry point uses that Rust does not declare.
fn binding_mismatches(variant: &ShaderVariant) -> Vec<String> {
    let (module, info) = parsed(variant, &variant.source());
    reflected_mismatches(variant, &module, &info)
}

/// `source` (`variant`'s) parsed and validated by naga, for reflection.
fn parsed(variant: &ShaderVariant, source: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let module = naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{}: {e}", variant.name()));
    let info =
        naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::all())
            .validate(&module)
            .unwrap_or_else(|e| panic!("{}: {e:?}", variant.name()));
    (module, info)
}

/// [`binding_mismatches`] on a module already parsed and validated.
fn reflected_mismatches(
    variant: &ShaderVariant,
    module: &naga::Module,
    info: &naga::valid::ModuleInfo,
) -> Vec<String> {
    let entry =
        module.entry_points.iter().position(|e| e.name == variant.entry).expect("the entry point exists");
    let uses = info.get_entry_point(entry);
    let at = format!("{}:{}", variant.shader.stem, variant.entry);
    let describe = |space: naga::AddressSpace| match space {
        naga::AddressSpace::Uniform => "uniform".to_string(),
        naga::AddressSpace::Storage { access } if access.contains(naga::StorageAccess::STORE) => {
            "storage read_write".to_string()
        }
        naga::AddressSpace::Storage { .. } => "storage read".to_string(),
        other => format!("{other:?}"),
    };
    let kind = |b: Binding| match b {
        Binding::Uniform => "uniform",
        Binding::Read => "storage read",
        Binding::ReadWrite => "storage read_write",
    };
    let globals: Vec<_> = module
        .global_variables
        .iter()
        .filter_map(|(h, g)| Some((h, g, g.binding.as_ref()?)))
        .filter(|(_, _, b)| b.group == 0)
        .collect();
    let mut out = Vec::new();
    for slot in variant.shader.bindings {
        match globals.iter().find(|(_, _, b)| b.binding == slot.binding) {
            None => out.push(format!(
                "{at} binding {} '{}': Rust says {}, the WGSL declares nothing there",
                slot.binding,
                slot.name,
                kind(slot.kind)
            )),
            Some((_, g, _)) => {
                let name = g.name.as_deref().unwrap_or("?");
                if name != slot.name || describe(g.space) != kind(slot.kind) {
                    out.push(format!(
                        "{at} binding {} '{}': Rust says {}, WGSL says '{name}' {}",
                        slot.binding,
                        slot.name,
                        kind(slot.kind),
                        describe(g.space)
                    ));
                }
            }
        }
    }
    for (h, g, b) in &globals {
        let declared = variant.shader.bindings.iter().any(|s: &Slot| s.binding == b.binding);
        if !uses[*h].is_empty() && !declared {
            out.push(format!(
                "{at} binding {} '{}': WGSL uses {}, Rust does not declare it",
                b.binding,
                g.name.as_deref().unwrap_or("?"),
                describe(g.space)
            ));
        }
    }
    out
}

#[test]
fn every_variant_binds_what_its_wgsl_declares() {
    let limits = common::gpu().limits().clone();
    let mut count = 0;
    let mut bad = Vec::new();
    // one parse and validation per distinct source; each variant's entry point reflected
    let mut modules: std::collections::HashMap<String, (naga::Module, naga::valid::ModuleInfo)> =
        Default::default();
    for family in Family::ALL {
        for v in family.variants(&limits) {
            let (module, info) = modules.entry(v.source()).or_insert_with_key(|source| parsed(&v, source));
            bad.extend(reflected_mismatches(&v, module, info));
            count += 1;
        }
    }
    bad.dedup();
    assert!(bad.is_empty(), "{} mismatches:\n{}", bad.len(), bad.join("\n"));
    println!("{count} variants: bindings agree with the WGSL");
}

#[test]
fn a_binding_that_disagrees_with_the_wgsl_is_named() {
    // pad.wgsl's `src` is `var<storage, read>`; declaring it read_write, and forgetting `dst`,
    // must be caught with the binding's number, name and both sides' access
    const BAD: Shader = Shader {
        stem: "pad",
        source: include_str!("../shaders/pad.wgsl"),
        bindings: &[
            Slot { binding: 0, name: "shape", kind: Binding::Uniform },
            Slot { binding: 1, name: "src", kind: Binding::ReadWrite },
        ],
    };
    let bad = binding_mismatches(&BAD.variant("main", &[], vec![]));
    assert_eq!(
        bad,
        [
            "pad:main binding 1 'src': Rust says storage read_write, WGSL says 'src' storage read",
            "pad:main binding 2 'dst': WGSL uses storage read_write, Rust does not declare it",
        ],
        "{bad:#?}"
    );
}

#[test]
fn every_compute_shader_belongs_to_a_registered_family() {
    let stems: std::collections::BTreeSet<&str> =
        all_variants(&wgpu::Limits::default()).iter().map(|v| v.shader.stem).collect();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    let mut files = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        if path.extension().is_some_and(|e| e == "wgsl") && text.contains("@compute") {
            let stem = path.file_stem().unwrap().to_str().unwrap().to_string();
            assert!(
                stems.contains(stem.as_str()),
                "shaders/{stem}.wgsl has a compute entry point but no family in kernels::Family builds it"
            );
            files += 1;
        }
    }
    assert!(files >= 15, "{files} compute shaders found in {dir}");
}

/// No shader spells an infinity or a NaN as a constant: naga folds `bitcast<f32>(0xff800000u)`
/// into −inf and accepts it, but a browser's compiler (Tint) rejects any constant expression
/// whose value f32 cannot represent — the shader fails to build there (the DSA routing map
/// in the browser test found one). Pass −inf in a uniform (`neg_inf`) instead.
#[test]
fn no_shader_spells_an_infinity_as_a_constant() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/shaders");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("").to_lowercase().replace(' ', "");
            for bits in
                ["bitcast<f32>(0x7f8", "bitcast<f32>(0xff8", "bitcast<f32>(0x7fc", "bitcast<f32>(0xffc"]
            {
                assert!(
                    !code.contains(bits),
                    "{}:{}: a constant infinity or NaN: {line}",
                    path.display(),
                    n + 1
                );
            }
        }
    }
}

fn limit_sets() -> Vec<(&'static str, wgpu::Limits)> {
    let lavapipe = wgpu::Limits {
        max_compute_workgroup_storage_size: 32 * 1024,
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        ..wgpu::Limits::default()
    };
    let a100_vulkan = wgpu::Limits {
        max_compute_workgroup_storage_size: 48 * 1024,
        max_compute_invocations_per_workgroup: 1024,
        max_compute_workgroup_size_x: 1024,
        ..wgpu::Limits::default()
    };
    vec![
        ("webgpu-default", wgpu::Limits::default()),
        ("downlevel", wgpu::Limits::downlevel_defaults()),
        ("lavapipe", lavapipe),
        ("a100-vulkan", a100_vulkan),
        ("present device", common::gpu().limits().clone()),
    ]
}

#[test]
fn every_variant_validates_with_naga() {
    // naga validates a whole module, every entry point in it: a source text is validated once
    // (many variants share one: a family's entry points, limit sets that pick the same tiles),
    // each further variant of it only needs its entry point to exist
    let mut entries_of: std::collections::HashMap<String, Vec<String>> = Default::default();
    let (mut count, mut validated) = (0, 0);
    for (name, limits) in limit_sets() {
        for v in all_variants(&limits) {
            count += 1;
            let source = v.source();
            if !entries_of.contains_key(&source) {
                v.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
                let module = naga::front::wgsl::parse_str(&source).expect("validated above");
                entries_of
                    .insert(source.clone(), module.entry_points.iter().map(|e| e.name.clone()).collect());
                validated += 1;
            }
            assert!(
                entries_of[&source].iter().any(|e| e == v.entry),
                "{name}: {}: no entry point `{}`",
                v.name(),
                v.entry
            );
        }
    }
    println!("{count} shader variants: {validated} distinct modules validated");
}

#[test]
fn default_tiles_fit_their_limits() {
    for (name, limits) in limit_sets() {
        for d in (4..=256).step_by(4) {
            let c = FlashConfig::for_limits(&limits, d);
            assert!(
                c.workgroup_bytes(d) <= limits.max_compute_workgroup_storage_size as u64,
                "{name}: D={d} {c:?} needs {} bytes",
                c.workgroup_bytes(d)
            );
            assert!(c.invocations() <= limits.max_compute_invocations_per_workgroup, "{name}: D={d} {c:?}");
        }
    }
}

#[test]
fn oversized_workgroup_memory_is_a_typed_error() {
    // wgpu 30 does not check var<workgroup> against the limit; the engine must.
    let gpu = common::gpu();
    let spec = longctx::AttnSpec::new(longctx::AttnShape::mha(1, 1, 8, 8, 256));
    let huge = FlashConfig { br: 256, bc: 32, p: 2, sg: 0, pass_tiles: 0, coop: None }.fit_passes(gpu, 256);
    let err = longctx::Attention::builder(&spec).tiles(huge).build(gpu).err().expect("must fail");
    let msg = err.to_string();
    assert!(matches!(err, longctx::Error::WorkgroupMemory { .. }), "{msg}");
    assert!(msg.contains(&huge.workgroup_bytes(256).to_string()), "{msg}");
}

#[test]
fn cooperative_matrix_variants_validate_and_compile_to_spirv() {
    // Every variant the tensor-core paths can choose (matmul: S = 8 and 16, f16 and f32
    // inputs, subgroups of 32 and 64, every activation; flash: the same, large and small
    // tiles, head dims 4…256, counting or not): naga's validator, then its SPIR-V writer
    // (what wgpu's Vulkan backend runs), since no adapter here has the feature.
    let matmul = longctx::kernels::matmul::coop_variants();
    let flash = longctx::kernels::attention::flash::coop_variants();
    assert_eq!((matmul.len(), flash.len()), (24, 96));
    let variants: Vec<_> = matmul.into_iter().chain(flash).collect();
    for v in &variants {
        v.validate().unwrap_or_else(|e| panic!("{e}"));
        let source = v.source();
        assert!(source.starts_with("enable f16;") || source.starts_with("enable wgpu_cooperative_matrix;"));
        let module = naga::front::wgsl::parse_str(&source).unwrap();
        let info = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap();
        let options = naga::back::spv::Options { lang_version: (1, 6), ..Default::default() };
        let words = naga::back::spv::write_vec(&module, &info, &options, None)
            .unwrap_or_else(|e| panic!("{}: SPIR-V: {e}", v.name()));
        assert!(words.len() > 100, "{}: {} SPIR-V words", v.name(), words.len());
    }
    println!("{} cooperative-matrix variants validated and written as SPIR-V", variants.len());
}
