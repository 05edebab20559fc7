//! Positional encodings (RoPE half-split and interleaved, sinusoidal) in flash, the
//! materialised kernel, the backward and the decoder, against the oracle applying them in
//! f64: GQA, N ≠ M both ways (N > M puts the first queries at negative positions), head dims
//! that are padded, offsets far from 0.

use crate::common;

use longctx::contract::positions::{Positions, RopeScaling};
use longctx::contract::reference::{attention_backward_f64, rel_error};
use longctx::kernels::attention::backward::Backward;
use longctx::{Alibi, Attention, AttnShape, AttnSpec, DeviceTensors, Inputs, Kernel};
use rand::SeedableRng;

const BOUND: f64 = 1e-5;

fn shape(b: usize, h: usize, hkv: usize, n: usize, m: usize, d: usize) -> AttnShape {
    AttnShape { batch: b, heads: h, kv_heads: hkv, n, m, head_dim: d }
}

fn encodings() -> Vec<(&'static str, Positions)> {
    vec![
        ("rope half", Positions::rope(10000.0)),
        ("rope interleaved", Positions::rope_interleaved(500000.0)),
        ("rope offset 100000", Positions::rope(10000.0).offset(100_000)),
        ("sinusoidal", Positions::sinusoidal()),
        (
            "rope yarn:4 (L 64)",
            Positions::rope(10000.0).scaled(RopeScaling::Yarn { factor: 4.0, original: 64 }),
        ),
        ("rope ntk:8", Positions::rope(10000.0).scaled(RopeScaling::Ntk { factor: 8.0 })),
    ]
}

#[test]
fn forward_kernels_match_the_oracle() {
    let g = common::gpu();
    let seed = common::seed();
    let mut worst = Vec::new();
    for (name, p) in encodings() {
        let mut e = 0f64;
        for (sh, causal) in [
            (shape(2, 4, 2, 77, 130, 64), true),
            (shape(1, 4, 1, 90, 40, 38), true), // D = 38: padded to 40 and encoded in place
            (shape(1, 2, 2, 33, 70, 32), false),
        ] {
            let spec = AttnSpec::new(sh).causal(causal).alibi(Alibi::Standard).positions(Some(p));
            for kernel in [Kernel::Flash, Kernel::Naive] {
                let err = common::check_kernel(&Attention::new(g, kernel, &spec).unwrap(), seed, BOUND);
                e = e.max(err.o).max(err.lse);
            }
        }
        worst.push(format!("{name}: {e:.1e}"));
    }
    println!("positions forward (flash, naive), worst rel err: {}", worst.join("; "));
}

#[test]
fn the_encoding_changes_the_answer_and_leaves_the_inputs_alone() {
    // without the pass the outputs differ (the test can fail), and a second run on the same
    // device tensors gives the same answer (Q and K were copied, not encoded in place)
    let g = common::gpu();
    let seed = common::seed();
    let sh = shape(1, 2, 2, 40, 60, 32);
    let plain = AttnSpec::new(sh).causal(true);
    let rope = plain.clone().positions(Some(Positions::rope(10000.0)));
    let (q, k, v) = common::inputs(&plain, seed);
    let io = DeviceTensors::upload(g, &plain, &q, &k, &v).unwrap();
    let a = Attention::new(g, Kernel::Flash, &plain).unwrap().run_on(g, &io).unwrap();
    let attn = Attention::new(g, Kernel::Flash, &rope).unwrap();
    let b1 = attn.run_on(g, &io).unwrap();
    let b2 = attn.run_on(g, &io).unwrap();
    assert_eq!(b1.o, b2.o);
    let diff = rel_error(&a.o, &b1.o.iter().map(|&x| x as f64).collect::<Vec<_>>());
    assert!(diff > 1e-2, "RoPE left the output unchanged ({diff:.1e})");
    let q_after: Vec<f32> = g.read(&io.q, q.len()).unwrap();
    assert_eq!(q_after, q);
}

#[test]
fn backward_matches_the_oracle() {
    let g = common::gpu();
    let seed = common::seed();
    let mut worst = Vec::new();
    for (name, p) in encodings() {
        let mut e = 0f64;
        for sh in [shape(1, 4, 2, 61, 90, 32), shape(1, 2, 1, 50, 30, 38)] {
            let spec = AttnSpec::new(sh).causal(true).alibi(Alibi::Standard).positions(Some(p));
            let (q, k, v) = common::inputs(&spec, seed);
            let d_o = common::random(
                sh.batch * sh.heads * sh.n * sh.head_dim,
                &mut rand::rngs::StdRng::seed_from_u64(seed + 1),
            );
            let (dq, dk, dv) = attention_backward_f64(&spec, &q, &k, &v, &d_o).unwrap();
            for bwd in [Backward::new(g, &spec).unwrap(), Backward::naive(g, &spec).unwrap()] {
                let (_, got) = bwd.run(g, &q, &k, &v, &d_o).unwrap();
                let errs = [rel_error(&got.dq, &dq), rel_error(&got.dk, &dk), rel_error(&got.dv, &dv)];
                assert!(
                    errs.iter().all(|&x| x <= BOUND),
                    "{name} {sh:?} naive={}: dQ, dK, dV {errs:?} (seed {seed})",
                    bwd.is_naive()
                );
                e = errs.iter().fold(e, |a, &b| a.max(b));
            }
        }
        worst.push(format!("{name}: {e:.1e}"));
    }
    println!("positions backward (tiled, materialised), worst of dQ, dK, dV: {}", worst.join("; "));
}

#[test]
fn what_cannot_run_an_encoding_says_so() {
    let g = common::gpu();
    // RoPE rotates pairs: an odd head dim is a typed error naming it
    let odd = AttnSpec::new(shape(1, 2, 2, 16, 16, 37)).positions(Some(Positions::rope(10000.0)));
    let err = Attention::new(g, Kernel::Flash, &odd).err().unwrap();
    assert!(matches!(err, longctx::Error::HeadDim { head_dim: 37, .. }), "{err}");
    // the f16-input variants read Q and K as stored
    let spec = AttnSpec::new(shape(1, 2, 2, 16, 16, 32)).positions(Some(Positions::sinusoidal()));
    let err = Attention::builder(&spec).inputs(Inputs::F16).build(g).err().unwrap();
    assert!(err.to_string().contains("positional encodings run on f32"), "{err}");
    // the heatmap reads Q and K as given
    let attn = Attention::new(g, Kernel::Flash, &spec).unwrap();
    let err = longctx::kernels::heatmap::Heatmap::new(g, &attn).err().unwrap();
    assert!(err.to_string().contains("heatmap"), "{err}");
}
