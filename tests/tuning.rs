//! Tuned winners are plain data attached to a `Gpu`, owned or borrowed alike: a device lent
//! by a host application runs the attached winner (checked against the oracle), winners
//! measured elsewhere or that no kernel can run are ignored, never a panic.

use crate::common;

use longctx::kernels::attention::decode::{self, Decoder, DecoderConfig};
use longctx::{Attention, AttnShape, AttnSpec, FlashConfig, Gpu, GpuOptions, Kernel, Tuned};

/// A host application's own device: created with wgpu directly, then lent to longctx.
fn host_gpu() -> Gpu {
    let limits = common::gpu().limits().clone();
    let inst = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(inst.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .expect("GPU tests need an adapter");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        required_limits: limits,
        required_features: adapter.features() & longctx::runtime::USEFUL_FEATURES,
        ..Default::default()
    }))
    .expect("device");
    Gpu::from_wgpu(device, queue, adapter.get_info())
}

#[test]
fn a_borrowed_device_runs_the_attached_winner() {
    let host = host_gpu();
    let d = 64;
    let preset = FlashConfig::for_device(&host, d);
    // a winner unlike the preset, as `longctx tune` would store it
    let wanted = FlashConfig { br: 16, bc: 8, p: 1, sg: 0, pass_tiles: 0, coop: None };
    assert_ne!((preset.br, preset.bc, preset.sg), (wanted.br, wanted.bc, wanted.sg), "pick another winner");
    let mut tuned = Tuned::for_adapter(host.info());
    tuned.insert(FlashConfig::tuning_key(d), wanted.winner());
    tuned.insert(decode::tuning_key(d, 4), vec![256]);
    let gpu = host.with_tuned(Some(tuned));

    let spec =
        AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 1, n: 77, m: 130, head_dim: d }).causal(true);
    let attn = Attention::new(&gpu, Kernel::Flash, &spec).unwrap();
    let used = attn.flash().unwrap().config();
    assert_eq!((used.br, used.bc, used.p, used.sg), (16, 8, 1, 0), "the tuned winner runs: {used:?}");
    let seed = common::seed();
    let e = common::check_kernel_on(&gpu, &attn, seed, 1e-5);
    println!("tuned flash {used:?} vs the oracle: O {:.1e}, LSE {:.1e} (seed {seed})", e.o, e.lse);

    let dec = Decoder::new(&gpu, DecoderConfig::new(4, 1, d, 600)).unwrap();
    assert_eq!(dec.chunk(), 256, "the tuned decode split runs");
}

#[test]
fn winners_from_elsewhere_or_unrunnable_are_ignored() {
    let host = host_gpu();
    let d = 64;
    let preset = FlashConfig::for_device(&host, d);
    // measured on another adapter: refused when attached
    let mut other = Tuned::for_adapter(host.info());
    other.adapter = "some other GPU".into();
    other.insert(FlashConfig::tuning_key(d), vec![16, 8, 1, 0]);
    let gpu = host.clone().with_tuned(Some(other));
    assert!(gpu.tuned().is_none());
    assert_eq!(FlashConfig::for_device(&gpu, d), preset);
    // this adapter, but a zero tile and a wrong arity: each falls back to the preset
    for bad in [vec![0, 8, 1, 0], vec![16, 8], vec![16, 0, 1, 0]] {
        let mut t = Tuned::for_adapter(host.info());
        t.insert(FlashConfig::tuning_key(d), bad.clone());
        t.insert(decode::tuning_key(d, 4), vec![0]);
        let gpu = host.clone().with_tuned(Some(t));
        assert_eq!(FlashConfig::for_device(&gpu, d), preset, "winner {bad:?}");
        let dec = Decoder::new(&gpu, DecoderConfig::new(4, 1, d, 600)).unwrap();
        assert!(dec.chunk() > 0);
    }
}

#[test]
fn default_options_read_neither_the_environment_nor_the_disk() {
    let (d, e) = (GpuOptions::default(), GpuOptions::from_env());
    assert!(!d.tuned && d.adapter.is_none() && d.backends.is_none(), "{d:?}");
    assert!(!e.tuned, "from_env reads variables, not the tuning cache: {e:?}");
}
