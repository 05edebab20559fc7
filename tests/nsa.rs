//! NSA (native sparse attention): the GPU's choice against the f64 oracle's, then each branch
//! and the gated mix against the oracle on the GPU's choice, at odd sizes (N ≠ M, N > M, GQA
//! and MQA, N and M not multiples of the blocks, l′ not a multiple of the stride, M < l, head
//! dims not multiples of 4, a batch, learned φ and random gates); the choice in several passes
//! below an adapter's loop cap; bad parameters and inputs are typed errors.

use crate::common::{gpu, inputs, seed};
use longctx::contract::inputs::seeded;
use longctx::contract::nsa::{Nsa, compare_nsa_selection, nsa_backward_f64, nsa_forward_f64, nsa_select_f64};
use longctx::contract::reference::rel_error;
use longctx::contract::selection::{MAX_TOPK, NONE};
use longctx::kernels::nsa::{NsaAttention, nsa_attention, nsa_backward};
use longctx::kernels::selection::MobaPath;
use longctx::{Alibi, AttnShape, AttnSpec, Error, Window};

const BOUND: f64 = 1e-5;

fn shape(heads: usize, kv_heads: usize, n: usize, m: usize, d: usize) -> AttnShape {
    AttnShape { batch: 1, heads, kv_heads, n, m, head_dim: d }
}

fn nsa(cmp_len: usize, cmp_stride: usize, block: usize, topk: usize, window: usize) -> Nsa {
    Nsa { cmp_len, cmp_stride, block, topk, window }
}

/// (spec, NSA, learned φ?) cases.
fn cases() -> Vec<(AttnSpec, Nsa, bool)> {
    vec![
        // GQA 3/1, rows over several workgroups of the choice (runs of 64, the last partial)
        (AttnSpec::new(shape(3, 1, 150, 190, 8)), nsa(8, 4, 16, 4, 20), false),
        (AttnSpec::new(shape(4, 2, 45, 77, 12)), nsa(6, 3, 8, 3, 10), true),
        // MQA; selection blocks of 5 over a stride of 4 (keys overlap blocks unevenly)
        (AttnSpec::new(shape(2, 1, 70, 70, 16)), nsa(4, 4, 5, 5, 7), true),
        // N > M: rows at negative positions see nothing in any branch
        (AttnSpec::new(shape(2, 2, 40, 30, 8)), nsa(8, 4, 4, 3, 5), false),
        // head dim 6: the selected branch runs flash on the lists' block grid
        (AttnSpec::new(shape(3, 3, 33, 50, 6)), nsa(8, 2, 7, 4, 9), true),
        // M < l: no compressed key at all
        (AttnSpec::new(shape(1, 1, 10, 10, 4)), nsa(16, 8, 4, 3, 3), false),
        // the most blocks a query may choose
        (AttnSpec::new(shape(1, 1, 25, 90, 4)), nsa(4, 2, 2, MAX_TOPK, 4), false),
        // head dim 40: the choice's vec4 lanes (16, zeros past 10) shuffled across subgroups
        (AttnSpec::new(shape(4, 2, 70, 150, 40)), nsa(8, 4, 16, 4, 12), true),
        // a batch of two sequences, each choosing for itself
        (AttnSpec::new(AttnShape { batch: 2, ..shape(2, 1, 30, 44, 8) }), nsa(8, 4, 8, 3, 6), true),
        // RoPE: every branch and the choice on rotated Q and K (the compressed keys from the
        // rotated keys), dQ and dK rotated back; the block-list kernels, flash's grid at D 6,
        // a batch
        (AttnSpec::new(shape(4, 2, 45, 77, 12)).positions(Some(rope())), nsa(6, 3, 8, 3, 10), true),
        (AttnSpec::new(shape(3, 3, 33, 50, 6)).positions(Some(rope())), nsa(8, 2, 7, 4, 9), false),
        (
            AttnSpec::new(AttnShape { batch: 2, ..shape(2, 1, 30, 44, 8) }).positions(Some(rope())),
            nsa(8, 4, 8, 3, 6),
            true,
        ),
    ]
}

fn rope() -> longctx::contract::positions::Positions {
    longctx::contract::positions::Positions::rope(10000.0)
}

/// Gates in (0, 1) (a sigmoid's range) and, when asked, φ around the mean.
fn gates_and_phi(spec: &AttnSpec, nsa: &Nsa, learned: bool, seed: u64) -> (Vec<f32>, Option<Vec<f32>>) {
    let s = spec.shape;
    let gates = seeded(s.batch * s.heads * s.n * 3, seed ^ 0x6a7e).iter().map(|x| 0.5 + 0.45 * x).collect();
    let l = nsa.cmp_len;
    let phi = learned
        .then(|| seeded(s.kv_heads * l, seed ^ 0xf1).iter().map(|x| (1.0 + 0.5 * x) / l as f32).collect());
    (gates, phi)
}

#[test]
fn nsa_matches_the_oracle_branch_by_branch() {
    let g = gpu();
    let seed = seed();
    let mut ties = 0;
    for (spec, nsa, learned) in cases() {
        let (q, k, v) = inputs(&spec, seed);
        let (gates, phi) = gates_and_phi(&spec, &nsa, learned, seed);
        let ctx = format!("{} {:?} (seed {seed}, LONGCTX_SEED={seed})", nsa.describe(), spec.shape);
        let out = nsa_attention(g, &spec, &nsa, &q, &k, &v, &gates, phi.as_deref()).unwrap();
        ties += check(&ctx, &spec, &nsa, (&q, &k, &v), (&gates, phi.as_deref()), &out);
    }
    eprintln!("NSA choice: rows differing from the oracle only by float32 ties: {ties} (seed {seed})");
}

/// `out` against the oracle: the choice (up to float32 ties; returns the rows that differ by
/// ties), its layout, each branch's O and LSE and the mix.
fn check(
    ctx: &str,
    spec: &AttnSpec,
    nsa: &Nsa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    (gates, phi): (&[f32], Option<&[f32]>),
    out: &longctx::kernels::nsa::NsaOutput,
) -> usize {
    assert_eq!(out.path == MobaPath::Lists, spec.shape.head_dim.is_multiple_of(4), "{ctx}");
    // the choice: the oracle's, up to float32 ties
    let oracle = nsa_select_f64(spec, nsa, q, k, v, phi).unwrap();
    let (diffs, all_ties) = compare_nsa_selection(spec, nsa, &oracle, &out.lists, 1e-5);
    assert!(
        all_ties,
        "{ctx}: the GPU chose differently beyond ties in {} rows, e.g. {:?}",
        diffs.len(),
        diffs.first()
    );
    let ties = diffs.len();
    let n = spec.shape.n;
    for (row, list) in out.lists.chunks_exact(nsa.topk).enumerate() {
        let p = (row % n) as i64 + spec.shape.m as i64 - n as i64;
        if p < 0 {
            assert!(list.iter().all(|&b| b == NONE), "{ctx}: row {row}");
            continue;
        }
        let forced = nsa.forced(p as usize / nsa.block);
        assert_eq!(&list[..forced.len()], &forced[..], "{ctx}: row {row}: the forced blocks first");
        let used = list.iter().take_while(|&&b| b != NONE).count();
        assert!(list[used..].iter().all(|&b| b == NONE), "{ctx}: row {row}: {list:?}");
        let own = p as usize / nsa.block;
        assert_eq!(used, nsa.topk.min(forced.len() + own.saturating_sub(2)), "{ctx}: row {row}: {list:?}");
    }
    // every branch and the mix on the GPU's choice
    let want = nsa_forward_f64(spec, nsa, q, k, v, gates, &oracle, &out.lists).unwrap();
    for (b, name) in ["compressed", "selected", "window"].iter().enumerate() {
        let e = rel_error(&out.branches[b].o, &want.branches[b]);
        assert!(e < BOUND, "{ctx}: {name} branch O error {e:.2e}");
        for (i, (&l, &r)) in out.branches[b].lse.iter().zip(&want.lse[b]).enumerate() {
            if r == f64::NEG_INFINITY {
                assert_eq!(l, f32::NEG_INFINITY, "{ctx}: {name} row {i} sees no key");
            } else {
                assert!(
                    (l as f64 - r).abs() <= 1e-5 * r.abs().max(1.0),
                    "{ctx}: {name} LSE row {i}: {l} vs {r}"
                );
            }
        }
    }
    let e = rel_error(&out.o, &want.o);
    assert!(e < BOUND, "{ctx}: O error {e:.2e}");
    ties
}

/// The decoding stages (`NsaAttention::decode_step`: the compressed branch and the window in
/// splits, the choice spread over blocks, the selected branch reading the lists on the device)
/// against the oracle, for calls of a few rows over longer caches: one row (a decoding step),
/// three and DECODE_ROWS; GQA; M not a multiple of the blocks; windows shorter and longer than
/// the cache; M < l; head dim 6 (the selected branch on flash's grid) and 40; a batch.
#[test]
fn the_decoding_stages_match_the_oracle() {
    use longctx::kernels::nsa::DECODE_ROWS;
    let g = gpu();
    let seed = seed();
    let mut ties = 0;
    let cases = [
        (AttnSpec::new(shape(4, 2, 1, 3001, 8)), nsa(16, 8, 32, 6, 100), false),
        (AttnSpec::new(shape(3, 1, 3, 777, 12)), nsa(8, 4, 16, 5, 1000), true),
        (AttnSpec::new(shape(2, 2, DECODE_ROWS, 1030, 40)), nsa(8, 4, 16, 4, 33), true),
        (AttnSpec::new(shape(2, 1, 1, 500, 6)), nsa(8, 2, 7, 4, 9), false),
        (AttnSpec::new(shape(1, 1, 2, 12, 4)), nsa(16, 8, 4, 3, 3), false),
        (AttnSpec::new(AttnShape { batch: 2, ..shape(2, 1, 1, 901, 8) }), nsa(8, 4, 8, 3, 60), true),
        (AttnSpec::new(shape(4, 2, 1, 1000, 16)).positions(Some(rope())), nsa(16, 8, 32, 6, 100), true),
    ];
    for (spec, nsa, learned) in cases {
        let (q, k, v) = inputs(&spec, seed);
        let (gates, phi) = gates_and_phi(&spec, &nsa, learned, seed);
        let ctx = format!("decoding {} {:?} (seed {seed}, LONGCTX_SEED={seed})", nsa.describe(), spec.shape);
        let call = NsaAttention::new(g, &spec, &nsa).unwrap();
        let t = call.upload(g, &spec, (&q, &k, &v), &gates, phi.as_deref()).unwrap();
        call.compress(g, &t).unwrap();
        let path = call.decode_step(g, &t).unwrap();
        let s = call.spec().shape;
        let lists = g.read(&t.lists, s.heads * s.n * nsa.topk).unwrap();
        let out = call.read(g, &t, lists, path).unwrap();
        ties += check(&ctx, &spec, &nsa, (&q, &k, &v), (&gates, phi.as_deref()), &out);
        // a second step on the same tensors gives the same result (nothing left over)
        call.decode_step(g, &t).unwrap();
        let again: Vec<f32> = g.read(&t.o, out.o.len()).unwrap();
        assert_eq!(again, out.o, "{ctx}: a second step");
    }
    eprintln!(
        "NSA decoding choice: rows differing from the oracle only by float32 ties: {ties} (seed {seed})"
    );
}

/// The backward on the forward's choice (no gradient through it): dQ, dK, dV, the gates'
/// gradient and φ's against the f64 oracle, every case (a batch's φ gradient summed over its
/// sequences; rows that see no compressed key; M < l, where φ gets none).
#[test]
fn nsa_backward_matches_the_oracle() {
    let g = gpu();
    let seed = seed();
    for (spec, nsa, learned) in cases() {
        let (q, k, v) = inputs(&spec, seed);
        let (gates, phi) = gates_and_phi(&spec, &nsa, learned, seed);
        let d_o = inputs(&spec, seed ^ 0x5eed).0;
        let ctx = format!("{} {:?} (seed {seed}, LONGCTX_SEED={seed})", nsa.describe(), spec.shape);
        let (out, grads) = nsa_backward(g, &spec, &nsa, (&q, &k, &v), &gates, phi.as_deref(), &d_o).unwrap();
        let forward = nsa_attention(g, &spec, &nsa, &q, &k, &v, &gates, phi.as_deref()).unwrap();
        assert_eq!(out.lists, forward.lists, "{ctx}: the backward's choice");
        assert_eq!(out.o, forward.o, "{ctx}: the backward's forward");
        let want =
            nsa_backward_f64(&spec, &nsa, (&q, &k, &v), &gates, phi.as_deref(), &out.lists, &d_o).unwrap();
        for (name, got, want) in [
            ("dQ", &grads.dq, &want.dq),
            ("dK", &grads.dk, &want.dk),
            ("dV", &grads.dv, &want.dv),
            ("dgates", &grads.dgates, &want.dgates),
            ("dphi", &grads.dphi, &want.dphi),
        ] {
            assert_eq!(got.len(), want.len(), "{ctx}: {name}");
            if want.iter().all(|&x| x == 0.0) {
                assert!(got.iter().all(|&x| x == 0.0), "{ctx}: {name} should be zero");
                continue;
            }
            let e = rel_error(got, want);
            assert!(e < BOUND, "{ctx}: {name} error {e:.2e}");
        }
    }
}

/// The oracle's gradients against finite differences of its own forward: φ and the gates
/// (the parameters the GPU path adds beside dQ, dK, dV), on a small case in f64.
#[test]
fn the_oracle_gradients_match_finite_differences() {
    let plain = AttnSpec::new(shape(2, 1, 12, 20, 4));
    // without positions, and with RoPE (every branch reads Q and K rotated; the compressed
    // branch's gradients rotated back)
    for spec in [plain.clone(), plain.positions(Some(longctx::contract::positions::Positions::rope(100.0)))] {
        let nsa = nsa(4, 2, 4, 3, 5);
        let seed = seed();
        let (q, k, v) = inputs(&spec, seed);
        let (gates, phi) = gates_and_phi(&spec, &nsa, true, seed);
        let phi = phi.unwrap();
        let d_o = inputs(&spec, seed ^ 0x5eed).0;
        let sel = nsa_select_f64(&spec, &nsa, &q, &k, &v, Some(&phi)).unwrap();
        let grads =
            nsa_backward_f64(&spec, &nsa, (&q, &k, &v), &gates, Some(&phi), &sel.lists, &d_o).unwrap();
        // the loss L = Σ dO · o on the fixed choice
        let loss = |q: &[f32], k: &[f32], gates: &[f32], phi: &[f32]| -> f64 {
            let sel_p = nsa_select_f64(&spec, &nsa, q, k, &v, Some(phi)).unwrap();
            let out = nsa_forward_f64(&spec, &nsa, q, k, &v, gates, &sel_p, &sel.lists).unwrap();
            out.o.iter().zip(&d_o).map(|(a, &b)| a * b as f64).sum()
        };
        let h = 1e-2f32;
        let ctx = format!("{:?} (seed {seed})", spec.positions);
        let check = |name: &str, analytic: f64, plus: f64, minus: f64| {
            let numeric = (plus - minus) / (2.0 * h as f64);
            assert!(
                (analytic - numeric).abs() <= 2e-3 * (1.0 + numeric.abs()),
                "{name}: {analytic} vs {numeric} {ctx}"
            );
        };
        let nudge = |x: &[f32], t: usize| {
            let (mut up, mut down) = (x.to_vec(), x.to_vec());
            up[t] += h;
            down[t] -= h;
            (up, down)
        };
        for t in [0, 3] {
            let (up, down) = nudge(&phi, t);
            check(
                &format!("dphi[{t}]"),
                grads.dphi[t],
                loss(&q, &k, &gates, &up),
                loss(&q, &k, &gates, &down),
            );
        }
        for t in [5, 31, 70] {
            let (up, down) = nudge(&gates, t);
            check(
                &format!("dgates[{t}]"),
                grads.dgates[t],
                loss(&q, &k, &up, &phi),
                loss(&q, &k, &down, &phi),
            );
        }
        for t in [9, 41, 60] {
            let (up, down) = nudge(&k, t);
            check(
                &format!("dk[{t}]"),
                grads.dk[t],
                loss(&q, &up, &gates, &phi),
                loss(&q, &down, &gates, &phi),
            );
        }
        for t in [2, 38, 90] {
            let (up, down) = nudge(&q, t);
            check(
                &format!("dq[{t}]"),
                grads.dq[t],
                loss(&up, &k, &gates, &phi),
                loss(&down, &k, &gates, &phi),
            );
        }
    }
}

/// 70 000 compressed keys make the choice's key loop longer than lavapipe's loop cap (65 535
/// iterations) allows in one dispatch: it runs in passes over the blocks, the running top blocks
/// kept in memory between them (in one pass the loop stops early and the choice is wrong).
#[test]
fn the_choice_runs_in_passes_below_the_loop_cap() {
    let g = gpu();
    let seed = seed();
    let spec = AttnSpec::new(shape(4, 1, 8, 70_000, 32));
    let nsa = nsa(2, 1, 2, 6, 4);
    let call = NsaAttention::new(g, &spec, &nsa).unwrap();
    let passes = call.score_passes(g).unwrap();
    if g.loop_iteration_limit().is_some() {
        assert!(passes >= 3, "{passes} passes");
    }
    let (q, k, v) = inputs(&spec, seed);
    let (gates, _) = gates_and_phi(&spec, &nsa, false, seed);
    let out = nsa_attention(g, &spec, &nsa, &q, &k, &v, &gates, None).unwrap();
    let oracle = nsa_select_f64(&spec, &nsa, &q, &k, &v, None).unwrap();
    let (diffs, all_ties) = compare_nsa_selection(&spec, &nsa, &oracle, &out.lists, 1e-5);
    assert!(all_ties, "{passes} passes: {} rows differ, e.g. {:?} (seed {seed})", diffs.len(), diffs.first());
    let want = nsa_forward_f64(&spec, &nsa, &q, &k, &v, &gates, &oracle, &out.lists).unwrap();
    let e = rel_error(&out.o, &want.o);
    assert!(e < BOUND, "O error {e:.2e} (seed {seed})");
}

#[test]
fn bad_parameters_and_inputs_are_typed_errors() {
    let g = gpu();
    let spec = AttnSpec::new(shape(2, 1, 20, 20, 8));
    let good = nsa(4, 2, 4, 3, 4);
    let (q, k, v) = inputs(&spec, 1);
    let (gates, _) = gates_and_phi(&spec, &good, false, 1);
    let run = |spec: &AttnSpec, nsa: &Nsa, gates: &[f32], phi: Option<&[f32]>| {
        nsa_attention(g, spec, nsa, &q, &k, &v, gates, phi).map(drop)
    };
    assert!(matches!(run(&spec, &nsa(4, 2, 4, 2, 4), &gates, None), Err(Error::OutOfRange { .. })));
    assert!(matches!(run(&spec, &nsa(4, 5, 4, 3, 4), &gates, None), Err(Error::Invalid(_))));
    assert!(matches!(run(&spec, &nsa(4, 2, 4, 3, 0), &gates, None), Err(Error::Invalid(_))));
    assert!(matches!(run(&spec, &good, &gates[1..], None), Err(Error::Length { .. })));
    assert!(matches!(run(&spec, &good, &gates, Some(&[0.25; 3])), Err(Error::Length { .. })));
    assert!(matches!(run(&spec, &good, &gates, Some(&[f32::NAN; 4])), Err(Error::Invalid(_))));
    let mut nan_gates = gates.clone();
    nan_gates[7] = f32::INFINITY;
    assert!(matches!(run(&spec, &good, &nan_gates, None), Err(Error::Invalid(_))));
    for other in [spec.clone().alibi(Alibi::Standard), spec.clone().window(Some(Window::new(3, 0)))] {
        assert!(matches!(run(&other, &good, &gates, None), Err(Error::Invalid(_))), "{}", other.describe());
    }
}
