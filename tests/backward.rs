//! The backward kernels (dQ, dK, dV) against the f64 backward oracle, per feature: dense,
//! causal, window, ALiBi, GQA/MQA, N ≠ M, fully masked rows, sparse masks (global, BigBird,
//! per-head block masks, segments), both inner-loop paths and several passes — and the
//! materialised baseline (`Backward::naive`) on the same cases. Gradients are poisoned with
//! NaN before every run; seeds are fresh and printed on failure.

use std::sync::Arc;

use crate::common::{gpu, inputs, random, seed};
use longctx::contract::mask::{BigBird, Mask};
use longctx::contract::reference::{attention_backward_f64, rel_error};
use longctx::kernels::attention::backward::BackwardConfig;
use longctx::{Alibi, AttnShape, AttnSpec, Backward, DeviceTensors, GradTensors, Window};
use rand::{SeedableRng, rngs::StdRng};

const BOUND: f64 = 1e-4;

fn shape(heads: usize, kv_heads: usize, n: usize, m: usize, d: usize) -> AttnShape {
    AttnShape { batch: 1, heads, kv_heads, n, m, head_dim: d }
}

/// Runs flash forward + backward on fresh inputs, compares dQ, dK, dV with the oracle;
/// returns the worst relative error of the three.
fn check(bwd: &Backward) -> [f64; 3] {
    let g = gpu();
    let spec = bwd.spec().clone();
    let seed = seed();
    let (q, k, v) = inputs(&spec, seed);
    let d_o = random(spec.shape.q_len(), &mut StdRng::seed_from_u64(seed ^ 0x5eed));
    let (dq_ref, dk_ref, dv_ref) = attention_backward_f64(&spec, &q, &k, &v, &d_o).unwrap();

    let fwd = longctx::Attention::new(g, longctx::Kernel::Flash, &spec).unwrap();
    let io = DeviceTensors::upload(g, &spec, &q, &k, &v).unwrap();
    let grads = GradTensors::upload(g, &spec, &d_o).unwrap();
    io.poison(g);
    grads.poison(g);
    let mut enc = g.device.create_command_encoder(&Default::default());
    fwd.encode(g, &mut enc, &io.buffers()).unwrap();
    bwd.encode(g, &mut enc, &grads.buffers(&io)).unwrap();
    g.queue.submit([enc.finish()]);
    let out = grads.read(g).unwrap();

    let ctx =
        format!("seed {seed} (replay with LONGCTX_SEED={seed}), config {:?}, spec {spec:?}", bwd.config());
    let errs = [rel_error(&out.dq, &dq_ref), rel_error(&out.dk, &dk_ref), rel_error(&out.dv, &dv_ref)];
    for (name, e, got) in [("dQ", errs[0], &out.dq), ("dK", errs[1], &out.dk), ("dV", errs[2], &out.dv)] {
        assert!(got.iter().all(|x| x.is_finite()), "{name} has non-finite values (unwritten?); {ctx}");
        assert!(e <= BOUND, "{name} relative error {e:.3e} exceeds {BOUND:.0e}; {ctx}");
    }
    errs
}

/// Checks the tiled backward and the materialised baseline on every spec.
fn family(name: &str, specs: Vec<AttnSpec>) {
    let mut worst = [[0f64; 3]; 2];
    for spec in &specs {
        for (k, bwd) in [Backward::new(gpu(), spec), Backward::naive(gpu(), spec)].into_iter().enumerate() {
            let e = check(&bwd.unwrap());
            for i in 0..3 {
                worst[k][i] = worst[k][i].max(e[i]);
            }
        }
    }
    for (k, kind) in ["tiled", "naive"].iter().enumerate() {
        println!(
            "backward {kind} {name:<14} cases {:>2}  worst rel err  dQ {:.2e}  dK {:.2e}  dV {:.2e}",
            specs.len(),
            worst[k][0],
            worst[k][1],
            worst[k][2]
        );
    }
}

#[test]
fn dense_and_causal() {
    family(
        "dense",
        vec![
            AttnSpec::new(shape(2, 2, 113, 113, 64)),
            AttnSpec::new(AttnShape { batch: 2, heads: 1, kv_heads: 1, n: 37, m: 70, head_dim: 32 }),
            AttnSpec::new(shape(1, 1, 1, 1, 4)),
        ],
    );
    family(
        "causal",
        vec![
            AttnSpec::new(shape(2, 2, 203, 203, 64)).causal(true),
            AttnSpec::new(shape(1, 1, 70, 150, 80)).causal(true),
        ],
    );
}

#[test]
fn window_and_alibi() {
    family(
        "window",
        vec![
            AttnSpec::new(shape(2, 2, 203, 203, 64)).window(Some(Window::new(16, 0))),
            AttnSpec::new(shape(1, 1, 100, 130, 36)).window(Some(Window::new(7, 9))).causal(true),
        ],
    );
    family(
        "alibi",
        vec![
            AttnSpec::new(shape(4, 4, 113, 113, 64)).alibi(Alibi::Standard).causal(true),
            AttnSpec::new(shape(3, 3, 60, 90, 32)).alibi(Alibi::Standard),
        ],
    );
}

#[test]
fn grouped_query_heads() {
    family(
        "gqa/mqa",
        vec![
            AttnSpec::new(shape(6, 2, 113, 113, 64)).causal(true),
            AttnSpec::new(shape(8, 1, 70, 203, 32)).alibi(Alibi::Standard),
            AttnSpec::new(AttnShape { batch: 2, heads: 4, kv_heads: 2, n: 50, m: 50, head_dim: 128 }),
        ],
    );
}

#[test]
fn fully_masked_rows_get_zero_gradient() {
    // N > M with causal alignment: the first N − M rows see no key
    let spec = AttnSpec::new(shape(2, 1, 90, 40, 32)).causal(true);
    let e = check(&Backward::new(gpu(), &spec).unwrap());
    let g = gpu();
    let (q, k, v) = inputs(&spec, 3);
    let d_o = vec![1.0; spec.shape.q_len()];
    let (_, grads) = Backward::new(g, &spec).unwrap().run(g, &q, &k, &v, &d_o).unwrap();
    let d = spec.shape.head_dim;
    for h in 0..2 {
        for i in 0..50 {
            let row = (h * 90 + i) * d;
            assert!(grads.dq[row..row + d].iter().all(|&x| x == 0.0), "head {h} row {i}: dQ not 0");
        }
    }
    println!(
        "backward fully masked rows: dQ exactly 0; worst rel err {:.2e}",
        e.iter().cloned().fold(0.0, f64::max)
    );
}

#[test]
fn sparse_masks() {
    let s = shape(2, 1, 203, 203, 64);
    let bb = Mask::bigbird(&BigBird { global: 1, window: 1, random: 2, block: 16, seed: 3 }, 203).unwrap();
    let cells: Vec<f32> = (0..2 * 9 * 9).map(|i| ((i * 7 + i / 5) % 3 == 0) as u8 as f32).collect();
    let blocks = Mask::block_mask(&s, 24, &[2, 9, 9], &cells).unwrap();
    let segments = Mask::Segments(Arc::new((0..203).map(|p| (p / 37) as u32).collect()));
    family(
        "sparse",
        vec![
            AttnSpec::new(s).mask(Some(Mask::Global(5))).causal(true),
            AttnSpec::new(s).mask(Some(bb)),
            AttnSpec::new(s).mask(Some(blocks)).alibi(Alibi::Standard),
            AttnSpec::new(shape(2, 2, 150, 203, 32)).mask(Some(segments)).causal(true),
        ],
    );
}

#[test]
fn inner_loop_paths_and_passes() {
    let g = gpu();
    let spec = AttnSpec::new(shape(4, 2, 150, 170, 64)).causal(true).alibi(Alibi::Standard);
    let d = spec.shape.head_dim;
    let base = BackwardConfig::for_device(g, d);
    let mut configs = vec![
        BackwardConfig { sg: 0, ..base },
        BackwardConfig { br: 16, bc: 8, sg: 0, ..base }.fit_passes(g, d),
        // many passes: every list split into lists of 2 tiles
        BackwardConfig { dq_pass_tiles: 2, dkv_pass_tiles: 2, ..base },
    ];
    if base.sg > 0 {
        configs.push(BackwardConfig { br: 8, bc: 8, sg: base.sg, ..base }.fit_passes(g, d));
    }
    let mut worst = 0f64;
    for c in configs {
        let bwd = Backward::with_config(g, &spec, c).unwrap();
        let e = check(&bwd);
        println!(
            "backward config {c:?} dispatches {:?}: {:.2e} {:.2e} {:.2e}",
            bwd.dispatch_counts(),
            e[0],
            e[1],
            e[2]
        );
        worst = e.iter().cloned().fold(worst, f64::max);
    }
    println!("backward tile configs and passes: worst rel err {worst:.2e}");
}

#[test]
fn head_dims_that_are_not_a_multiple_of_4() {
    // run on zero-padded copies; dQ, dK, dV come back in the caller's shape
    let specs = [1, 2, 3, 5, 7, 13, 30, 63, 127, 255]
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let spec = AttnSpec::new(AttnShape { batch: 2, heads: 2, kv_heads: 1, n: 9, m: 14, head_dim: d });
            if i % 2 == 0 { spec.causal(true) } else { spec.alibi(Alibi::Standard) }
        })
        .collect();
    family("odd head dims", specs);
}

#[test]
fn bad_input_is_a_typed_error() {
    let g = gpu();
    let spec = AttnSpec::new(shape(2, 1, 10, 10, 8));
    let err = GradTensors::upload(g, &spec, &[0.0; 7]).err().unwrap();
    assert!(err.to_string().contains("dO has 7 values"), "{err}");
    let mut d_o = vec![0.0; spec.shape.q_len()];
    d_o[3] = f32::NAN;
    let err = GradTensors::upload(g, &spec, &d_o).err().unwrap();
    assert!(err.to_string().contains("index 3"), "{err}");
    let err = Backward::new(g, &AttnSpec::new(shape(2, 1, 10, 10, 260))).err().unwrap();
    assert!(err.to_string().contains("at most 256"), "{err}");
    let c = BackwardConfig { br: 8, bc: 64, sg: 0, dq_pass_tiles: 0, dkv_pass_tiles: 0 };
    assert!(Backward::with_config(g, &spec, c).is_err());
}

#[test]
fn long_lists_split_below_the_loop_cap() {
    // 2100 keys = 66 key tiles of 32 per row (and 66 query tiles per column): more than one
    // pass fits under lavapipe's loop cap, so both kernels resume from device memory
    let spec = AttnSpec::new(shape(1, 1, 2100, 2100, 64));
    let bwd = Backward::new(gpu(), &spec).unwrap();
    let e = check(&bwd);
    println!(
        "backward long lists (N = M = 2100), dispatches {:?}: dQ {:.2e}  dK {:.2e}  dV {:.2e}",
        bwd.dispatch_counts(),
        e[0],
        e[1],
        e[2]
    );
}

#[test]
fn naive_backward_materialises_what_the_tiled_one_does_not() {
    let g = gpu();
    let spec = AttnSpec::new(shape(4, 2, 300, 300, 64)).causal(true);
    let tiled = Backward::new(g, &spec).unwrap();
    let naive = Backward::naive(g, &spec).unwrap();
    assert!(naive.is_naive() && naive.block_map().is_none() && naive.traffic().is_none());
    // P / dS for all 4 heads: 4·300·300·4 bytes; the tiled one keeps (LSE, Δ) and maps only
    assert!(naive.scratch_bytes() >= 4 * 300 * 300 * 4);
    assert!(tiled.scratch_bytes() < 64 * 1024, "{}", tiled.scratch_bytes());
    println!(
        "scratch at N = 300, H = 4: tiled {} B, naive {} B",
        tiled.scratch_bytes(),
        naive.scratch_bytes()
    );
    // rows beyond the adapter's loop cap are refused by the baseline, never run wrong
    if let Some(limit) = g.loop_iteration_limit() {
        let m = (limit as usize / 17) + 10;
        let err = Backward::naive(g, &AttnSpec::new(shape(1, 1, 4, m, 64))).err().unwrap();
        assert!(matches!(err, longctx::Error::LoopLimit { .. }), "{err}");
    }
}
