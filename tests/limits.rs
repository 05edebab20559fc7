//! Kernels on a device whose limits were lowered on purpose: the engine must split work to
//! fit (or refuse with a typed error naming the numbers), and stay exact.

use crate::common;

use std::sync::OnceLock;

use longctx::{Attention, AttnShape, AttnSpec, Gpu, GpuOptions, Kernel};

/// 1 MiB storage bindings, 16 KiB workgroup memory, 256 invocations.
fn small_gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(|| {
        let limits = wgpu::Limits {
            max_storage_buffer_binding_size: 1 << 20,
            max_compute_workgroup_storage_size: 16 << 10,
            max_compute_invocations_per_workgroup: 256,
            max_compute_workgroup_size_x: 256,
            ..common::gpu().limits().clone()
        };
        Gpu::new(&GpuOptions { limits: Some(limits), ..Default::default() })
            .unwrap_or_else(|e| panic!("GPU tests need an adapter: {e}"))
    })
}

#[test]
fn naive_runs_heads_in_chunks_that_fit_one_binding() {
    let g = small_gpu();
    assert_eq!(g.limits().max_storage_buffer_binding_size, 1 << 20);
    // one head's scores: 300·300·4 = 352 KiB → 2 heads per 1 MiB binding, 8 (b, h) pairs → 4 chunks
    let spec = AttnSpec::new(AttnShape { batch: 2, heads: 4, kv_heads: 2, n: 300, m: 300, head_dim: 32 })
        .causal(true);
    let attn = Attention::new(g, Kernel::Naive, &spec).unwrap();
    let seed = common::seed();
    let err = common::check_kernel_on(g, &attn, seed, 1e-5);
    println!("naive in chunks under a 1 MiB binding limit: rel err {:.2e}", err.o);
    assert!(attn.scratch_bytes() <= (1 << 20) + 4096, "scores buffer {} bytes", attn.scratch_bytes());
}

#[test]
fn one_head_beyond_the_binding_is_a_typed_error() {
    let g = small_gpu();
    let spec = AttnSpec::new(AttnShape::mha(1, 1, 600, 600, 32));
    let err = Attention::new(g, Kernel::Naive, &spec).err().expect("600² scores exceed 1 MiB");
    assert!(
        matches!(err, longctx::Error::BindingTooLarge { bytes: 1_440_000, limit: 1_048_576, .. }),
        "{err}"
    );
}

#[test]
fn flash_picks_tiles_for_small_workgroup_memory() {
    let g = small_gpu();
    for d in [64, 128, 256] {
        let spec = AttnSpec::new(AttnShape::mha(1, 2, 70, 90, d)).causal(true);
        let attn = Attention::new(g, Kernel::Flash, &spec).unwrap();
        common::check_kernel_on(g, &attn, common::seed(), 1e-5);
    }
}

#[test]
fn naive_refuses_rows_longer_than_a_loop_iteration_cap() {
    let g = common::gpu();
    let Some(limit) = g.loop_iteration_limit() else { return };
    let spec = AttnSpec::new(AttnShape::mha(1, 1, 1, limit as usize + 10, 4));
    let err = Attention::new(g, Kernel::Naive, &spec).err().expect("refused");
    assert!(matches!(err, longctx::Error::LoopLimit { .. }), "{err}");
}

#[test]
fn flash_runs_tensors_beyond_one_binding_in_chunks_of_heads() {
    let g = small_gpu();
    let seed = common::seed();
    // Q = 2·6·700·64·4 B = 2.1 MiB, K = 2·3·700·64·4 B = 1.0 MiB > the 1 MiB binding:
    // per batch, kv heads in runs of 2 (with their 2 query heads each) → 4 chunks
    for spec in [
        AttnSpec::new(AttnShape { batch: 2, heads: 6, kv_heads: 3, n: 700, m: 700, head_dim: 64 })
            .causal(true),
        AttnSpec::new(AttnShape { batch: 1, heads: 5, kv_heads: 5, n: 300, m: 1500, head_dim: 128 })
            .window(Some(longctx::Window::new(100, 20)))
            .alibi(longctx::Alibi::Standard),
    ] {
        let attn = Attention::new(g, Kernel::Flash, &spec).unwrap();
        let chunks = attn.flash().unwrap().chunks();
        assert!(chunks > 1, "{chunks} chunk(s)");
        let e = common::check_kernel_on(g, &attn, seed, 1e-5);
        println!("flash beyond a 1 MiB binding: {chunks} chunks, rel err {:.2e}", e.o);
    }
}

#[test]
fn one_kv_head_beyond_the_binding_is_a_typed_error_for_flash() {
    let g = small_gpu();
    // one kv head's K: 5000·64·4 B = 1.2 MiB > 1 MiB
    let spec = AttnSpec::new(AttnShape::mha(1, 1, 4, 5000, 64));
    let err = Attention::new(g, Kernel::Flash, &spec).err().expect("refused");
    assert!(matches!(err, longctx::Error::BindingTooLarge { limit: 1_048_576, .. }), "{err}");
}

#[test]
fn matmul_runs_rows_in_chunks_beyond_one_binding() {
    use longctx::kernels::matmul::{Activation, Matmul, matmul_f64};
    use rand::SeedableRng;
    let g = small_gpu();
    // C = 600·500·4 B = 1.2 MB and A = 600·460·4 B = 1.1 MB exceed the 1 MiB binding
    let (m, k, n) = (600, 460, 500);
    let mut rng = rand::rngs::StdRng::seed_from_u64(common::seed());
    let (a, b, bias) =
        (common::random(m * k, &mut rng), common::random(k * n, &mut rng), common::random(n, &mut rng));
    let mm = Matmul::new(g, m, k, n, true, Activation::Gelu).unwrap();
    assert!(mm.dispatches() > 1, "{} dispatch(es)", mm.dispatches());
    let c = mm.run(g, &a, &b, Some(&bias)).unwrap();
    let err = longctx::contract::reference::rel_error(
        &c,
        &matmul_f64(&a, &b, Some(&bias), m, k, n, Activation::Gelu),
    );
    println!("matmul beyond a 1 MiB binding: {} chunks of rows, rel err {err:.2e}", mm.dispatches());
    assert!(err <= 1e-5, "{err}");
}

#[test]
fn backward_fits_small_workgroup_memory_and_refuses_tensors_beyond_a_binding() {
    let g = small_gpu();
    // 16 KiB of workgroup memory at D = 128: the backward picks smaller tiles and stays exact
    let spec = AttnSpec::new(AttnShape { batch: 1, heads: 2, kv_heads: 1, n: 70, m: 90, head_dim: 128 })
        .causal(true);
    let bwd = longctx::Backward::new(g, &spec).unwrap();
    let c = bwd.config();
    assert!(c.dq_workgroup_bytes(128) <= 16 << 10 && c.dkv_workgroup_bytes(128) <= 16 << 10, "{c:?}");
    let (q, k, v) = common::inputs(&spec, 5);
    let d_o = common::random(spec.shape.q_len(), &mut rand::SeedableRng::seed_from_u64(6));
    let (_, got) = bwd.run(g, &q, &k, &v, &d_o).unwrap();
    let (dq, dk, dv) = longctx::contract::reference::attention_backward_f64(&spec, &q, &k, &v, &d_o).unwrap();
    let err = longctx::contract::reference::rel_error(&got.dq, &dq)
        .max(longctx::contract::reference::rel_error(&got.dk, &dk))
        .max(longctx::contract::reference::rel_error(&got.dv, &dv));
    println!("backward under 16 KiB workgroup memory, tiles {c:?}: rel err {err:.2e}");
    assert!(err < 1e-4);
    // the query rows of one kv head's group beyond the binding: a typed error naming it
    let big = AttnSpec::new(AttnShape { batch: 1, heads: 4, kv_heads: 1, n: 1100, m: 100, head_dim: 64 });
    let err = longctx::Backward::new(g, &big).err().unwrap();
    assert!(matches!(err, longctx::Error::BindingTooLarge { limit: 1048576, .. }), "{err}");
}

#[test]
fn backward_runs_tensors_beyond_one_binding_in_chunks_of_heads() {
    let g = small_gpu();
    // Q, dO, dQ: 2·6·900·64·4 B = 2.6 MiB > 1 MiB: chunks of 2 kv heads (of 3) with their
    // query heads, per batch: 4 chunks, one splitting a batch
    let spec = AttnSpec::new(AttnShape { batch: 2, heads: 6, kv_heads: 3, n: 900, m: 950, head_dim: 64 })
        .causal(true)
        .alibi(longctx::Alibi::Standard);
    let bwd = longctx::Backward::new(g, &spec).unwrap();
    let seed = common::seed();
    let (q, k, v) = common::inputs(&spec, seed);
    let d_o = common::random(spec.shape.q_len(), &mut rand::SeedableRng::seed_from_u64(seed + 1));
    let grads = longctx::GradTensors::upload(g, &spec, &d_o).unwrap();
    let fwd = Attention::new(g, Kernel::Flash, &spec).unwrap();
    assert_eq!(fwd.flash().unwrap().chunks(), 4);
    let io = longctx::DeviceTensors::upload(g, &spec, &q, &k, &v).unwrap();
    grads.poison(g);
    let mut enc = g.device.create_command_encoder(&Default::default());
    fwd.encode(g, &mut enc, &io.buffers()).unwrap();
    bwd.encode(g, &mut enc, &grads.buffers(&io)).unwrap();
    g.queue.submit([enc.finish()]);
    let got = grads.read(g).unwrap();
    let (dq, dk, dv) = longctx::contract::reference::attention_backward_f64(&spec, &q, &k, &v, &d_o).unwrap();
    let e = [
        longctx::contract::reference::rel_error(&got.dq, &dq),
        longctx::contract::reference::rel_error(&got.dk, &dk),
        longctx::contract::reference::rel_error(&got.dv, &dv),
    ];
    println!(
        "backward in {} chunks under a 1 MiB binding limit: dQ {:.2e} dK {:.2e} dV {:.2e} (seed {seed})",
        fwd.flash().unwrap().chunks(),
        e[0],
        e[1],
        e[2]
    );
    assert!(e.iter().all(|&x| x < 1e-4), "{e:?} (seed {seed})");
}

#[test]
fn moba_runs_its_partials_in_passes_that_fit_one_binding_forward_and_backward() {
    use longctx::contract::reference::{attention_backward_f64, attention_f64, rel_error};
    use longctx::contract::selection::Moba;
    use longctx::kernels::attention::sparse_backward::SparseBackward;
    use longctx::kernels::selection::{MobaPath, moba_attention, moba_backward};
    let g = small_gpu();
    let seed = common::seed();
    // partials: 2·900·5 slots of 64 floats = 2.2 MiB > the 1 MiB binding → 3 passes of rows
    let spec = AttnSpec::new(AttnShape { batch: 1, heads: 2, kv_heads: 1, n: 900, m: 1000, head_dim: 64 });
    let moba = Moba { block: 48, topk: 5 };
    let (q, k, v) = common::inputs(&spec, seed);
    let (out, selected, path) = moba_attention(g, &spec, &moba, &q, &k, &v).unwrap();
    assert_eq!(path, MobaPath::Lists);
    let (o_ref, lse_ref) = attention_f64(&moba.spec(&spec, &selected).unwrap(), &q, &k, &v).unwrap();
    let e = rel_error(&out.o, &o_ref);
    assert!(e < 1e-5, "O error {e:.2e} (seed {seed}, LONGCTX_SEED={seed})");
    let lse = out.lse.iter().zip(&lse_ref).map(|(&l, &r)| (l as f64 - r).abs()).fold(0.0, f64::max);
    assert!(lse < 1e-4, "LSE error {lse:.2e} (seed {seed}, LONGCTX_SEED={seed})");
    // the backward's partials of dQ likewise
    let d_o = common::inputs(&spec, seed ^ 0x5eed).0;
    let (_, grads, selected_b, path) = moba_backward(g, &spec, &moba, &q, &k, &v, &d_o).unwrap();
    assert_eq!((path, &selected_b), (MobaPath::Lists, &selected));
    let bwd = SparseBackward::new(g, &spec.clone().causal(true), moba.block, moba.topk).unwrap();
    assert_eq!(bwd.passes(g, &selected).unwrap().0, 3, "passes of rows for dQ's partials");
    let (dq, dk, dv) =
        attention_backward_f64(&moba.spec(&spec, &selected).unwrap(), &q, &k, &v, &d_o).unwrap();
    for (name, got, want) in [("dQ", &grads.dq, &dq), ("dK", &grads.dk, &dk), ("dV", &grads.dv, &dv)] {
        let e = rel_error(got, want);
        assert!(e < 1e-5, "{name} error {e:.2e} (seed {seed}, LONGCTX_SEED={seed})");
    }
}
