//! `cargo bench`: the kernels at small sizes, so a regression shows the ordinary Rust way.
//! Each iteration submits one attention call and waits for the queue to go idle.

use criterion::{Criterion, criterion_group, criterion_main};
use longctx::{
    Attention, AttnShape, AttnSpec, Backward, DeviceTensors, Gpu, GpuOptions, GradTensors, Kernel, Window,
};

fn kernels(c: &mut Criterion) {
    let gpu = Gpu::new(&GpuOptions::default()).expect("an adapter (apt-get install mesa-vulkan-drivers)");
    let shape = AttnShape::mha(1, 2, 256, 256, 64);
    let specs = [
        ("dense", AttnSpec::new(shape)),
        ("causal", AttnSpec::new(shape).causal(true)),
        ("window64", AttnSpec::new(shape).causal(true).window(Some(Window::new(64, 0)))),
    ];
    let mut group = c.benchmark_group("attention N=256 D=64 H=2");
    group.sample_size(10);
    for (name, spec) in &specs {
        let data = vec![0.01f32; shape.q_len()];
        let io = DeviceTensors::upload(&gpu, spec, &data, &data, &data).unwrap();
        for kernel in [Kernel::Flash, Kernel::Naive] {
            let attn = Attention::new(&gpu, kernel, spec).unwrap();
            group.bench_function(format!("{}/{name}", kernel.name()), |b| {
                b.iter(|| {
                    let mut enc = gpu.device.create_command_encoder(&Default::default());
                    attn.encode(&gpu, &mut enc, &io.buffers()).unwrap();
                    gpu.queue.submit([enc.finish()]);
                    gpu.wait().unwrap();
                })
            });
        }
    }
    group.finish();
}

/// The backward passes (tiled and materialised) on the forward's outputs.
fn backward(c: &mut Criterion) {
    let gpu = Gpu::new(&GpuOptions::default()).expect("an adapter (apt-get install mesa-vulkan-drivers)");
    let shape = AttnShape::mha(1, 2, 256, 256, 64);
    let spec = AttnSpec::new(shape).causal(true);
    let data = vec![0.01f32; shape.q_len()];
    let io = DeviceTensors::upload(&gpu, &spec, &data, &data, &data).unwrap();
    let grads = GradTensors::upload(&gpu, &spec, &data).unwrap();
    let fwd = Attention::new(&gpu, Kernel::Flash, &spec).unwrap();
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    fwd.encode(&gpu, &mut enc, &io.buffers()).unwrap();
    gpu.queue.submit([enc.finish()]);
    let mut group = c.benchmark_group("backward N=256 D=64 H=2 causal");
    group.sample_size(10);
    for (name, bwd) in [("tiled", Backward::new(&gpu, &spec)), ("naive", Backward::naive(&gpu, &spec))] {
        let bwd = bwd.unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                bwd.encode(&gpu, &mut enc, &grads.buffers(&io)).unwrap();
                gpu.queue.submit([enc.finish()]);
                gpu.wait().unwrap();
            })
        });
    }
    group.finish();
}

criterion_group!(benches, kernels, backward);
criterion_main!(benches);
