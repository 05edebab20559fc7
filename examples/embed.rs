//! Embedding longctx in a wgpu application that owns its device.
//!
//! The host creates the instance, adapter, device and queue as any wgpu app does (here with
//! the WebGPU default limits, smaller than the adapter's), owns the Q/K/V/O/LSE buffers, and
//! records longctx's attention into its own command encoder. longctx only borrows.
//!
//! Run: `cargo run --example embed`

use longctx::contract::reference::{attention_f64, rel_error};
use longctx::{Attention, AttnBuffers, AttnShape, AttnSpec, Gpu, Kernel};
use wgpu::util::DeviceExt;

pub fn main() {
    // --- the host application's own device ---
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .expect("no adapter (on headless Linux: apt-get install mesa-vulkan-drivers)");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("host device"),
        required_limits: wgpu::Limits::default(),
        ..Default::default()
    }))
    .expect("device");

    // --- the host's data in the host's buffers ---
    let shape = AttnShape { batch: 1, heads: 8, kv_heads: 2, n: 77, m: 130, head_dim: 64 };
    let spec = AttnSpec::new(shape).causal(true);
    let wave = |len: usize, f: f32| (0..len).map(|i| (i as f32 * f).sin()).collect::<Vec<f32>>();
    let (q, k, v) = (wave(shape.q_len(), 0.37), wave(shape.kv_len(), 0.11), wave(shape.kv_len(), 0.05));
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let init = |data: &[f32]| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents: bytemuck::cast_slice(data),
            usage,
        })
    };
    let empty = |len: usize| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (len * 4) as u64,
            usage,
            mapped_at_creation: false,
        })
    };
    let (q_buf, k_buf, v_buf) = (init(&q), init(&k), init(&v));
    let (o_buf, lse_buf) = (empty(shape.q_len()), empty(shape.lse_len()));

    // --- longctx borrows the device (with the winners `longctx tune` cached for this
    // adapter, if any) and records into the host's encoder ---
    let gpu = Gpu::from_wgpu(device.clone(), queue.clone(), adapter.get_info()).with_cached_tuning();
    let attn = Attention::new(&gpu, Kernel::Flash, &spec).expect("prepare attention");
    let mut encoder = device.create_command_encoder(&Default::default());
    attn.encode(
        &gpu,
        &mut encoder,
        &AttnBuffers { q: &q_buf, k: &k_buf, v: &v_buf, o: &o_buf, lse: &lse_buf },
    )
    .expect("encode attention");
    queue.submit([encoder.finish()]);

    // --- the host reads its output and checks it ---
    let o: Vec<f32> = gpu.read(&o_buf, shape.q_len()).expect("readback");
    let (o_ref, _) = attention_f64(&spec, &q, &k, &v).expect("oracle");
    let err = rel_error(&o, &o_ref);
    println!("embedded flash attention on the host's device: rel err vs oracle {err:.2e}");
    assert!(err <= 1e-5, "embedded result differs from the oracle: {err}");
}
