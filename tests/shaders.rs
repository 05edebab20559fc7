//! Every shader variant the engine can produce passes naga's parser and validator, for the
//! present device and for limit sets of devices that are not present.

mod common;

use longctx::FlashConfig;
use longctx::kernels::all_variants;

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
    let mut count = 0;
    for (name, limits) in limit_sets() {
        for v in all_variants(&limits) {
            v.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            count += 1;
        }
    }
    println!("{count} shader variants validated");
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
    let err = longctx::Attention::flash_with(gpu, &spec, huge, false).err().expect("must fail");
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
    let flash = longctx::kernels::flash::coop_variants();
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
