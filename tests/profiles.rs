//! Every preset on every machine: its configurations fit its hardware's limits and validate
//! with naga, detection picks the right one, and each runs (adapted to the present adapter)
//! against the oracle.

use crate::common;

use longctx::{Alibi, Attention, AttnShape, AttnSpec, Gpu, GpuOptions, Kernel};
use longctx::{FlashConfig, Profile};

#[test]
fn every_preset_fits_its_hardware_and_validates() {
    let mut checked = 0;
    for p in Profile::all() {
        let l = &p.limits;
        for d in (4..=256).step_by(4) {
            let c = FlashConfig::for_profile(&p, d);
            assert!(
                c.workgroup_bytes(d) <= l.max_compute_workgroup_storage_size as u64,
                "{}: D={d} {c:?} needs {} B",
                p.name,
                c.workgroup_bytes(d)
            );
            assert!(c.invocations() <= l.max_compute_invocations_per_workgroup, "{}: D={d} {c:?}", p.name);
            for count in [false, true] {
                c.variant(d, count).validate().unwrap_or_else(|e| panic!("{}: {e}", p.name));
            }
            checked += 1;
        }
    }
    println!("{checked} preset configurations fit their limits and validate");
}

fn info(name: &str, vendor: u32, ty: wgpu::DeviceType) -> wgpu::AdapterInfo {
    wgpu::AdapterInfo {
        name: name.into(),
        vendor,
        device: 0,
        device_type: ty,
        device_pci_bus_id: String::new(),
        driver: String::new(),
        driver_info: String::new(),
        backend: wgpu::Backend::Vulkan,
        subgroup_min_size: 32,
        subgroup_max_size: 32,
        transient_saves_memory: None,
        limit_bucket: None,
    }
}

#[test]
fn detection_picks_the_preset() {
    use wgpu::DeviceType::*;
    for (name, vendor, ty, want) in [
        ("NVIDIA A100-SXM4-80GB", 0x10de, DiscreteGpu, "a100"),
        ("NVIDIA H200", 0x10de, DiscreteGpu, "h100"),
        ("NVIDIA GeForce RTX 4090", 0x10de, DiscreteGpu, "nvidia"),
        ("AMD Instinct MI300X", 0x1002, DiscreteGpu, "amd-cdna"),
        ("AMD Radeon RX 7900 XTX", 0x1002, DiscreteGpu, "amd-rdna"),
        ("Apple M2", 0x106b, IntegratedGpu, "apple"),
        ("Intel(R) Arc(tm) A770", 0x8086, DiscreteGpu, "intel"),
        ("llvmpipe (LLVM 15.0.6, 256 bits)", 0x10005, Cpu, "software"),
        ("Some Future GPU", 0x1234, DiscreteGpu, "portable"),
    ] {
        assert_eq!(Profile::detect(&info(name, vendor, ty)).0.name, want, "{name}");
    }
}

#[test]
fn every_preset_runs_on_this_adapter_against_the_oracle() {
    let base = common::gpu().clone();
    let seed = common::seed();
    for name in Profile::names() {
        let g: Gpu = base.clone().with_profile(name).unwrap();
        assert_eq!(g.profile().0.name, name);
        for d in [64, 128] {
            let spec =
                AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 2, n: 90, m: 150, head_dim: d })
                    .causal(true)
                    .alibi(Alibi::Standard);
            let attn = Attention::new(&g, Kernel::Flash, &spec).unwrap();
            common::check_kernel_on(&g, &attn, seed, 1e-5);
        }
    }
    assert!(Gpu::new(&GpuOptions { profile: Some("nope".into()), ..Default::default() }).is_err());
}
