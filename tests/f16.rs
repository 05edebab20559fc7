//! The f16-storage flash variant: error within 2× that of an f16-rounded CPU reference.

use crate::common;

use longctx::contract::reference::{attention_f64, rel_error};
use longctx::{Alibi, Attention, AttnShape, AttnSpec, DeviceTensors, Inputs};

fn round16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
}

#[test]
fn f16_storage_error_is_within_twice_the_f16_rounding_error() {
    // with SHADER_F16 the f16 kernel; without it the fallback (rounded values, f32 kernel):
    // the same bounds hold either way
    let g = common::gpu();
    let seed = common::seed();
    let mut worst = (0f64, 0f64);
    for spec in [
        AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 2, n: 113, m: 203, head_dim: 64 })
            .causal(true),
        AttnSpec::new(AttnShape { batch: 2, heads: 3, kv_heads: 3, n: 77, m: 77, head_dim: 128 })
            .alibi(Alibi::Standard),
        AttnSpec::new(AttnShape { batch: 1, heads: 2, kv_heads: 1, n: 300, m: 300, head_dim: 32 })
            .window(Some(longctx::Window::new(40, 0))),
    ] {
        let (q, k, v) = common::inputs(&spec, seed);
        let (exact, _) = attention_f64(&spec, &q, &k, &v).unwrap();
        let (rounded, _) = attention_f64(&spec, &round16(&q), &round16(&k), &round16(&v)).unwrap();
        let ref_err = rel_error(&rounded.iter().map(|&x| x as f32).collect::<Vec<_>>(), &exact);
        let attn = Attention::builder(&spec).inputs(Inputs::F16).build(g).unwrap();
        let io = DeviceTensors::upload_f16(g, &spec, &q, &k, &v).unwrap();
        io.poison(g);
        let mut enc = g.device.create_command_encoder(&Default::default());
        attn.encode(g, &mut enc, &io.buffers()).unwrap();
        g.queue.submit([enc.finish()]);
        let out = io.read(g).unwrap();
        let err = rel_error(&out.o, &exact);
        let err_vs_rounded = rel_error(&out.o, &rounded);
        assert!(err <= 2.0 * ref_err, "f16 kernel {err:.2e} vs 2 × reference {ref_err:.2e} (seed {seed})");
        assert!(err_vs_rounded <= 1e-5, "vs the rounded-input oracle {err_vs_rounded:.2e} (seed {seed})");
        worst = (worst.0.max(err), worst.1.max(ref_err));
    }
    println!(
        "f16 storage: worst rel err {:.2e} against f32 inputs; f16-rounded CPU reference {:.2e}",
        worst.0, worst.1
    );
}

#[test]
fn without_shader_f16_the_f16_api_falls_back_to_f32_storage() {
    // a device created without optional features
    let g = longctx::Gpu::new(&longctx::GpuOptions::default()).unwrap();
    let plain = {
        let limits = g.limits().clone();
        let inst = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter =
            pollster::block_on(inst.request_adapter(&wgpu::RequestAdapterOptions::default())).unwrap();
        let (device, queue) = pollster::block_on(
            adapter.request_device(&wgpu::DeviceDescriptor { required_limits: limits, ..Default::default() }),
        )
        .unwrap();
        longctx::Gpu::from_wgpu(device, queue, adapter.get_info())
    };
    assert!(!plain.features().contains(wgpu::Features::SHADER_F16));
    let spec = AttnSpec::new(AttnShape::mha(1, 2, 50, 70, 64)).causal(true);
    let (q, k, v) = common::inputs(&spec, 5);
    let attn = Attention::builder(&spec).inputs(Inputs::F16).build(&plain).unwrap();
    assert!(!attn.flash().unwrap().is_f16());
    let io = DeviceTensors::upload_f16(&plain, &spec, &q, &k, &v).unwrap();
    let mut enc = plain.device.create_command_encoder(&Default::default());
    attn.encode(&plain, &mut enc, &io.buffers()).unwrap();
    plain.queue.submit([enc.finish()]);
    let out = io.read(&plain).unwrap();
    let (rounded, _) = attention_f64(&spec, &round16(&q), &round16(&k), &round16(&v)).unwrap();
    assert!(rel_error(&out.o, &rounded) <= 1e-5);
}

#[test]
fn tensor_core_flash_matches_the_oracle_where_the_adapter_has_them() {
    // Cooperative matrices (EXPERIMENTAL_COOPERATIVE_MATRIX): f16 ones through
    // Inputs::F16TensorCores (P rounded to f16 too: 5e-3, as the f16 matmul), f32 ones
    // through the default flash path (exact: 1e-5), at sizes that are not multiples of the
    // tiles, head dims that are not multiples of the matrix side, masks, ALiBi, GQA. The
    // software adapter has none: there the test checks that the engine says so (the default
    // path is the vec4 kernel, asking for tensor cores a typed error); tests/shaders.rs
    // validates every variant with naga and writes it as SPIR-V.
    use longctx::FlashConfig;
    let g = common::gpu();
    let seed = common::seed();
    let specs = [
        AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 2, n: 113, m: 203, head_dim: 64 })
            .causal(true),
        AttnSpec::new(AttnShape { batch: 2, heads: 3, kv_heads: 1, n: 77, m: 50, head_dim: 40 })
            .alibi(Alibi::Standard),
        AttnSpec::new(AttnShape { batch: 1, heads: 2, kv_heads: 2, n: 300, m: 300, head_dim: 128 })
            .window(Some(longctx::Window::new(40, 0))),
    ];
    let f16 = FlashConfig::tensor_cores(g, 64, true);
    let f32 = FlashConfig::tensor_cores(g, 64, false);
    if f16.is_none() && f32.is_none() {
        assert_eq!(FlashConfig::for_device(g, 64).coop, None);
        let err = Attention::builder(&specs[0])
            .inputs(Inputs::F16TensorCores)
            .build(g)
            .err()
            .expect("no cooperative matrices here");
        assert!(matches!(err, longctx::Error::Config { .. }), "{err}");
        println!("{}: no cooperative matrices ({err})", g.info().name);
        return;
    }
    let mut ran = 0;
    for spec in &specs {
        let (q, k, v) = common::inputs(spec, seed);
        let (exact, _) = attention_f64(spec, &q, &k, &v).unwrap();
        if f16.is_some() {
            let attn = Attention::builder(spec).inputs(Inputs::F16TensorCores).build(g).unwrap();
            assert!(attn.flash().unwrap().config().coop.is_some());
            let io = DeviceTensors::upload_f16(g, spec, &q, &k, &v).unwrap();
            io.poison(g);
            let mut enc = g.device.create_command_encoder(&Default::default());
            attn.encode(g, &mut enc, &io.buffers()).unwrap();
            g.queue.submit([enc.finish()]);
            let err = rel_error(&io.read(g).unwrap().o, &exact);
            assert!(err <= 5e-3, "f16 tensor cores {spec:?}: {err:.2e} > 5e-3 (seed {seed})");
            println!("f16 tensor cores: rel err {err:.2e}");
            ran += 1;
        }
        if f32.is_some() {
            let attn = Attention::new(g, longctx::Kernel::Flash, spec).unwrap();
            assert!(attn.flash().unwrap().config().coop.is_some());
            let e = common::check_kernel(&attn, seed, 1e-5);
            println!("f32 tensor cores: rel err {:.2e}", e.o);
            ran += 1;
        }
    }
    assert!(ran >= 3);
}
