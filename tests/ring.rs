//! Ring attention across devices in one process (one thread and one wgpu device per rank):
//! forward and backward equal the f64 oracle of the whole call for P = 2, 3, 4 — causal
//! (zigzag), window, ALiBi, RoPE, GQA/MQA, N not divisible by P, N ≠ M — and failures are
//! errors, not hangs.

use crate::common;

use std::sync::OnceLock;
use std::time::Duration;

use std::sync::Arc;

use longctx::contract::mask::{BigBird, Mask};
use longctx::contract::positions::Positions;
use longctx::contract::reference::{attention_backward_f64, attention_f64, rel_error};
use longctx::parallel::ring::{self, ring_attention, ring_backward};
use longctx::parallel::schedule::{RingSchedule, Sharding};
use longctx::{Alibi, AttnShape, AttnSpec, Gpu, GpuOptions, Window};
use rand::SeedableRng;

const BOUND: f64 = 1e-5;
const TIMEOUT: Duration = Duration::from_secs(120);

/// Four devices on this machine's adapter, one per rank.
fn gpus() -> &'static [Gpu] {
    static GPUS: OnceLock<Vec<Gpu>> = OnceLock::new();
    GPUS.get_or_init(|| {
        (0..4).map(|_| Gpu::new(&GpuOptions::from_env()).expect("GPU tests need an adapter")).collect()
    })
}

fn shape(b: usize, h: usize, hkv: usize, n: usize, m: usize, d: usize) -> AttnShape {
    AttnShape { batch: b, heads: h, kv_heads: hkv, n, m, head_dim: d }
}

fn problems() -> Vec<(&'static str, AttnSpec)> {
    vec![
        ("causal (zigzag) GQA", AttnSpec::new(shape(1, 4, 2, 101, 101, 32)).causal(true)),
        (
            "causal+alibi N≠M MQA",
            AttnSpec::new(shape(2, 2, 1, 53, 90, 32)).causal(true).alibi(Alibi::Standard),
        ),
        ("window(9,4)", AttnSpec::new(shape(1, 2, 2, 77, 77, 32)).window(Some(Window::new(9, 4)))),
        (
            "causal+rope D=36",
            AttnSpec::new(shape(1, 2, 2, 66, 66, 36)).causal(true).positions(Some(Positions::rope(10000.0))),
        ),
        ("dense N<M", AttnSpec::new(shape(1, 2, 1, 30, 61, 32))),
        (
            "segments+causal",
            AttnSpec::new(shape(1, 2, 2, 90, 90, 32))
                .causal(true)
                .mask(Some(Mask::Segments(Arc::new((0..90u32).map(|j| j / 23).collect())))),
        ),
        (
            "bigbird N≠M",
            AttnSpec::new(shape(1, 2, 1, 70, 96, 32)).mask(Some(
                Mask::bigbird(&BigBird { global: 1, window: 1, random: 1, block: 16, seed: 5 }, 96).unwrap(),
            )),
        ),
    ]
}

#[test]
fn forward_equals_the_oracle_for_2_3_4_ranks() {
    let seed = common::seed();
    let mut rows = Vec::new();
    for (name, spec) in problems() {
        let (q, k, v) = common::inputs(&spec, seed);
        let (o_ref, lse_ref) = attention_f64(&spec, &q, &k, &v).unwrap();
        let mut errs = Vec::new();
        for p in [2, 3, 4] {
            let plan = ring::schedule(&spec, p).unwrap();
            let (out, ranks) = ring_attention(&gpus()[..p], &plan, &q, &k, &v, TIMEOUT).unwrap();
            let finite: (Vec<f32>, Vec<f64>) =
                out.lse.iter().zip(&lse_ref).filter(|(_, r)| r.is_finite()).map(|(&a, &b)| (a, b)).unzip();
            let e = rel_error(&out.o, &o_ref).max(rel_error(&finite.0, &finite.1));
            assert!(e <= BOUND, "{name}, P = {p} ({:?}): rel err {e:.2e} (seed {seed})", plan.sharding);
            assert_eq!(ranks.len(), p);
            errs.push(format!("P={p} {e:.1e}"));
        }
        rows.push(format!("{name}: {}", errs.join(", ")));
    }
    println!("ring forward vs oracle:\n  {}", rows.join("\n  "));
}

#[test]
fn backward_equals_the_oracle_for_2_3_4_ranks() {
    let seed = common::seed();
    let mut rows = Vec::new();
    for (name, spec) in problems().into_iter().filter(|(n, _)| !n.starts_with("dense")) {
        let (q, k, v) = common::inputs(&spec, seed);
        let d_o = common::random(spec.shape.q_len(), &mut rand::rngs::StdRng::seed_from_u64(seed + 1));
        let (dq, dk, dv) = attention_backward_f64(&spec, &q, &k, &v, &d_o).unwrap();
        let mut errs = Vec::new();
        for p in [2, 3, 4] {
            let plan = ring::schedule(&spec, p).unwrap();
            let (_, g) = ring_backward(&gpus()[..p], &plan, &q, &k, &v, &d_o, TIMEOUT).unwrap();
            let e = [rel_error(&g.dq, &dq), rel_error(&g.dk, &dk), rel_error(&g.dv, &dv)];
            assert!(e.iter().all(|&x| x <= BOUND), "{name}, P = {p}: dQ, dK, dV {e:?} (seed {seed})");
            errs.push(format!("P={p} {:.1e}", e.iter().cloned().fold(0.0, f64::max)));
        }
        rows.push(format!("{name}: {}", errs.join(", ")));
    }
    println!("ring backward vs oracle (worst of dQ, dK, dV):\n  {}", rows.join("\n  "));
}

#[test]
fn zigzag_evens_the_work_and_bad_plans_are_errors() {
    let spec = AttnSpec::new(shape(1, 1, 1, 4096, 4096, 32)).causal(true);
    let pairs = |s: Sharding| -> Vec<u64> {
        let plan = RingSchedule::new(&spec, 4, s).unwrap();
        (0..4).map(|r| plan.rank_pairs(r)).collect()
    };
    let (z, c) = (pairs(Sharding::Zigzag), pairs(Sharding::Contiguous));
    println!("visible pairs per rank, causal N = 4096, P = 4: zigzag {z:?}, contiguous {c:?}");
    assert!(z.iter().max().unwrap() - z.iter().min().unwrap() <= z[0] / 100);
    // more ranks than rows, a mask the ring does not carry, devices ≠ ranks
    let small = AttnSpec::new(shape(1, 1, 1, 5, 5, 32)).causal(true);
    let err = ring::schedule(&small, 3).err().unwrap().to_string();
    assert!(err.contains("at least one row per chunk"), "{err}");
    let plan = ring::schedule(&AttnSpec::new(shape(1, 1, 1, 8, 8, 32)), 2).unwrap();
    let x = vec![0.5f32; 8 * 32];
    let err = ring_attention(&gpus()[..3], &plan, &x, &x, &x, TIMEOUT).err().unwrap().to_string();
    assert!(err.contains("given 3 devices"), "{err}");
}

#[test]
fn a_failing_rank_or_mismatched_arguments_end_every_rank_with_an_error() {
    use longctx::parallel::ring::{Shard, forward, in_process};
    let spec = AttnSpec::new(shape(1, 2, 2, 40, 40, 32)).causal(true);
    let (q, k, v) = common::inputs(&spec, 7);
    let plan = ring::schedule(&spec, 4).unwrap();
    // rank 2 was given another problem: every rank says so
    let other = ring::schedule(&AttnSpec::new(shape(1, 2, 2, 40, 40, 32)), 4).unwrap();
    let results = in_process(&gpus()[..4], Duration::from_secs(30), |gpu, t| {
        let p = if t.rank() == 2 { &other } else { &plan };
        let shard = Shard::of(p, t.rank(), &q, &k, &v);
        forward(gpu, t, p, &shard)
    });
    for (r, res) in results.iter().enumerate() {
        let err = res.as_ref().err().unwrap_or_else(|| panic!("rank {r} succeeded")).to_string();
        assert!(err.contains("different problems"), "rank {r}: {err}");
    }
    // rank 1 dies before its first step: the others end with an error naming a rank, in
    // bounded time
    let t0 = std::time::Instant::now();
    let results = in_process(&gpus()[..4], Duration::from_secs(5), |gpu, t| {
        if t.rank() == 1 {
            return Err(longctx::Error::Rank { rank: 1, message: "simulated failure".into() });
        }
        let shard = Shard::of(&plan, t.rank(), &q, &k, &v);
        forward(gpu, t, &plan, &shard)
    });
    let messages: Vec<String> =
        results.iter().map(|r| r.as_ref().expect_err("every rank fails").to_string()).collect();
    println!("one rank failing, what each rank reports:\n  {}", messages.join("\n  "));
    assert!(messages.iter().enumerate().all(|(r, m)| m.contains(&format!("rank {r}"))), "{messages:?}");
    assert!(t0.elapsed() < Duration::from_secs(30), "took {:?}", t0.elapsed());
}
