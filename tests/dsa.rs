//! DSA (a lightning indexer's token choice): the GPU's lists against the f64 oracle's, then
//! the attention over them against the oracle on the GPU's lists, at odd sizes (N ≠ M, N > M,
//! GQA and MQA, M past one radix segment, k past M, a head dim the token-list kernel does not
//! run, a batch, exact ties); the selection in several chunks and the attention in several
//! passes below an adapter's loop cap; the backward through flash on the chosen grid; bad
//! inputs are typed errors.

use crate::common::{gpu, inputs, seed};
use longctx::contract::dsa::{
    Dsa, Indexer, compare_dsa_selection, dsa_alignment_f64, dsa_select_f64, dsa_sparse_alignment_f64,
};
use longctx::contract::inputs::seeded;
use longctx::contract::reference::{attention_backward_f64, attention_f64, rel_error};
use longctx::contract::selection::NONE;
use longctx::kernels::dsa::{
    DsaAttention, DsaPath, dsa_alignment_in_passes, dsa_attention, dsa_backward_in_passes,
    dsa_sparse_alignment_in_passes,
};
use longctx::{Alibi, AttnShape, AttnSpec, Error};

const BOUND: f64 = 1e-5;

fn shape(batch: usize, heads: usize, kv_heads: usize, n: usize, m: usize, d: usize) -> AttnShape {
    AttnShape { batch, heads, kv_heads, n, m, head_dim: d }
}

fn dsa(topk: usize, index_heads: usize, index_dim: usize) -> Dsa {
    Dsa { topk, index_heads, index_dim }
}

/// (spec, DSA) cases.
fn cases() -> Vec<(AttnSpec, Dsa)> {
    vec![
        // GQA 3/1, rows over several workgroups (runs of 64, the last partial)
        (AttnSpec::new(shape(1, 3, 1, 150, 190, 8)), dsa(20, 2, 8)),
        // N > M: rows at negative positions choose nothing and see nothing
        (AttnSpec::new(shape(1, 2, 2, 40, 30, 12)), dsa(7, 1, 4)),
        // MQA, M past 256 (several keys per radix segment), indexer head dim 12
        (AttnSpec::new(shape(1, 4, 1, 70, 300, 16)), dsa(50, 3, 12)),
        // head dim 6: flash on the lists' token grid
        (AttnSpec::new(shape(1, 2, 1, 33, 50, 6)), dsa(5, 2, 4)),
        // k past M: every visible key
        (AttnSpec::new(shape(1, 1, 1, 20, 50, 4)), dsa(64, 1, 4)),
        // a batch of two sequences, each choosing for itself
        (AttnSpec::new(shape(2, 2, 1, 33, 60, 8)), dsa(9, 2, 8)),
    ]
}

/// The indexer's inputs for `spec`: random, or (`zero_rows`) every other row's weights zero,
/// so that all its scores tie and it must take its lowest keys.
fn indexer(spec: &AttnSpec, d: &Dsa, seed: u64, zero_rows: bool) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let s = spec.shape;
    let (hi, di) = (d.index_heads, d.index_dim);
    let q = seeded(s.batch * s.n * hi * di, seed ^ 0x1d);
    let k = seeded(s.batch * s.m * di, seed ^ 0x2d);
    let mut w = seeded(s.batch * s.n * hi, seed ^ 0x3d);
    if zero_rows {
        for (row, ws) in w.chunks_exact_mut(hi).enumerate() {
            if row % 2 == 0 {
                ws.fill(0.0);
            }
        }
    }
    (q, k, w)
}

/// Whether `attend` clusters rows on this device by default (not on a CPU adapter).
fn clustered_here(g: &longctx::Gpu) -> bool {
    g.info().device_type != wgpu::DeviceType::Cpu
}

/// Runs `f` on each sequence's call alone (its own spec, lists and slices of Q, K, V and a
/// Q-shaped extra) and concatenates the results: the kernels fold a batch into heads, the
/// oracle here does not.
fn per_sequence<const R: usize>(
    spec: &AttnSpec,
    d: &Dsa,
    (q, k, v, extra): (&[f32], &[f32], &[f32], &[f32]),
    lists: &[u32],
    f: impl Fn(&AttnSpec, [&[f32]; 4]) -> [Vec<f64>; R],
) -> [Vec<f64>; R] {
    let s = spec.shape;
    let one = AttnSpec { shape: AttnShape { batch: 1, ..s }, ..spec.clone() };
    let mut all: [Vec<f64>; R] = std::array::from_fn(|_| Vec::new());
    for b in 0..s.batch {
        let (ql, kl) = (s.heads * s.n * s.head_dim, s.kv_heads * s.m * s.head_dim);
        let chosen = d.spec(&one, &lists[b * s.n * d.topk..][..s.n * d.topk]).unwrap();
        let extra = if extra.is_empty() { extra } else { &extra[b * ql..][..ql] };
        let parts = f(&chosen, [&q[b * ql..][..ql], &k[b * kl..][..kl], &v[b * kl..][..kl], extra]);
        all.iter_mut().zip(parts).for_each(|(acc, part)| acc.extend(part));
    }
    all
}

/// The oracle's O and LSE on `lists`, sequence by sequence (the token grid is per sequence).
fn oracle(
    spec: &AttnSpec,
    d: &Dsa,
    (q, k, v): (&[f32], &[f32], &[f32]),
    lists: &[u32],
) -> (Vec<f64>, Vec<f64>) {
    let [o, lse] = per_sequence(spec, d, (q, k, v, &[]), lists, |chosen, [q, k, v, _]| {
        let (o, lse) = attention_f64(chosen, q, k, v).unwrap();
        [o, lse]
    });
    (o, lse)
}

/// The GPU's lists: the oracle's up to float32 ties, ascending, NONE after exactly
/// min(k, p + 1) keys, none past the row's position.
fn check_lists(spec: &AttnSpec, d: &Dsa, ix: &Indexer, lists: &[u32], ctx: &str) -> usize {
    let want = dsa_select_f64(spec, d, ix).unwrap();
    let (diffs, all_ties) = compare_dsa_selection(spec, d, ix, &want, lists, 1e-5);
    assert!(
        all_ties,
        "{ctx}: the GPU chose differently beyond ties in {} rows, e.g. {:?}",
        diffs.len(),
        diffs.first()
    );
    let s = spec.shape;
    for (row, list) in lists.chunks_exact(d.topk).enumerate() {
        let p = (row % s.n) as i64 + s.m as i64 - s.n as i64;
        let used = list.iter().take_while(|&&j| j != NONE).count();
        assert_eq!(used as i64, (p + 1).clamp(0, d.topk as i64), "{ctx}: row {row}: {list:?}");
        assert!(list[used..].iter().all(|&j| j == NONE), "{ctx}: row {row}: {list:?}");
        assert!(list[..used].windows(2).all(|w| w[0] < w[1]), "{ctx}: row {row} not ascending: {list:?}");
        assert!(list[..used].iter().all(|&j| (j as i64) <= p), "{ctx}: row {row} past its position");
    }
    diffs.len()
}

#[test]
fn dsa_matches_the_oracle() {
    let g = gpu();
    let seed = seed();
    let mut ties = 0;
    for (spec, d) in cases() {
        for zero_rows in [false, true] {
            let (q, k, v) = inputs(&spec, seed);
            let (qi, ki, wi) = indexer(&spec, &d, seed, zero_rows);
            let ix = Indexer { q: &qi, k: &ki, w: &wi };
            let ctx = format!(
                "{} {:?} tied rows {zero_rows} (seed {seed}, LONGCTX_SEED={seed})",
                d.describe(),
                spec.shape
            );
            let (out, lists, path) = dsa_attention(g, &spec, &d, (&q, &k, &v), &ix).unwrap();
            assert_eq!(path == DsaPath::Lists, spec.shape.head_dim % 4 == 0, "{ctx}");
            if path == DsaPath::Lists {
                // the other layout of `attend` (a row over a subgroup's lanes, or one lane)
                let other = DsaAttention::with_layout(g, &spec, &d, !clustered_here(g)).unwrap();
                let t = other.upload(g, (&q, &k, &v), &ix).unwrap();
                other.run(g, &t).unwrap();
                let (o2, lists2) = other.read(g, &t).unwrap();
                assert_eq!(lists2, lists, "{ctx}: lists of the other layout");
                let e = rel_error(&o2.o, &out.o.iter().map(|&x| x as f64).collect::<Vec<_>>());
                assert!(e < 1e-6, "{ctx}: the other layout's O differs by {e:.2e}");
                assert_eq!(
                    o2.lse.iter().map(|x| x.is_finite()).collect::<Vec<_>>(),
                    out.lse.iter().map(|x| x.is_finite()).collect::<Vec<_>>(),
                    "{ctx}: the other layout's empty rows"
                );
            }
            let differ = check_lists(&spec, &d, &ix, &lists, &ctx);
            if zero_rows {
                // rows whose scores all tie take their lowest keys, exactly as the oracle
                let want = dsa_select_f64(&spec, &d, &ix).unwrap();
                for (row, (a, b)) in want.chunks_exact(d.topk).zip(lists.chunks_exact(d.topk)).enumerate() {
                    if row % 2 == 0 {
                        assert_eq!(a, b, "{ctx}: tied row {row}");
                    }
                }
            }
            ties += differ;
            let (o, lse) = oracle(&spec, &d, (&q, &k, &v), &lists);
            let e = rel_error(&out.o, &o);
            assert!(e < BOUND, "{ctx}: O error {e:.2e}");
            for (i, (&l, &r)) in out.lse.iter().zip(&lse).enumerate() {
                if r == f64::NEG_INFINITY {
                    assert_eq!(l, f32::NEG_INFINITY, "{ctx}: row {i} sees no key");
                } else {
                    assert!(
                        (l as f64 - r).abs() <= 1e-5 * r.abs().max(1.0),
                        "{ctx}: LSE row {i}: {l} vs {r}"
                    );
                }
            }
        }
    }
    eprintln!("DSA choice: rows differing from the oracle only by float32 ties: {ties} (seed {seed})");
}

/// The selection in chunks of 7 rows (the last partial, chunks crossing sequences) and, on an
/// adapter with a loop cap, the attention in passes over the lists: the same lists and
/// output as one chunk.
#[test]
fn the_selection_runs_in_chunks_and_the_attention_in_passes_and_windows() {
    let g = gpu();
    let seed = seed();
    // head dim 256 and k 601: past one pass of lavapipe's loop cap; a list of 2404 bytes, so
    // windows of the lists start off the binding alignment
    let spec = AttnSpec::new(shape(2, 1, 1, 20, 700, 256));
    let d = dsa(601, 2, 8);
    let (q, k, v) = inputs(&spec, seed);
    let (qi, ki, wi) = indexer(&spec, &d, seed, false);
    let ix = Indexer { q: &qi, k: &ki, w: &wi };
    let ctx = format!("(seed {seed}, LONGCTX_SEED={seed})");
    let whole = DsaAttention::new(g, &spec, &d).unwrap();
    let chunked = DsaAttention::new(g, &spec, &d).unwrap().with_chunk_rows(7);
    // the lists bound 7 rows at a time, as a call past one binding does (both stages)
    let windowed = DsaAttention::new(g, &spec, &d).unwrap().with_list_rows(7);
    if g.loop_iteration_limit().is_some() {
        assert!(whole.attend_passes() >= 2, "{ctx}: {} passes", whole.attend_passes());
    }
    let run = |call: &DsaAttention| {
        let t = call.upload(g, (&q, &k, &v), &ix).unwrap();
        call.run(g, &t).unwrap();
        call.read(g, &t).unwrap()
    };
    let (a, lists_a) = run(&whole);
    let (b, lists_b) = run(&chunked);
    assert_eq!(lists_a, lists_b, "{ctx}: lists by chunk");
    assert_eq!(a.o, b.o, "{ctx}: O by chunk");
    let (w, lists_w) = run(&windowed);
    assert_eq!(lists_a, lists_w, "{ctx}: lists by window");
    assert_eq!((&a.o, &a.lse), (&w.o, &w.lse), "{ctx}: O and LSE by window");
    check_lists(&spec, &d, &ix, &lists_a, &ctx);
    let (o, _) = oracle(&spec, &d, (&q, &k, &v), &lists_a);
    let e = rel_error(&a.o, &o);
    assert!(e < BOUND, "{ctx}: O error {e:.2e}");
}

/// dQ, dK, dV on the forward's lists (no gradient into the indexer) against the oracle.
#[test]
fn dsa_backward_matches_the_oracle() {
    let g = gpu();
    let seed = seed();
    // passes: whole, then forced short (several passes each side), then one entry a pass
    for ((spec, d), passes) in cases().into_iter().zip([usize::MAX, 3, 1].into_iter().cycle()) {
        let (q, k, v) = inputs(&spec, seed);
        let d_o = inputs(&spec, seed ^ 0x5eed).0;
        let (qi, ki, wi) = indexer(&spec, &d, seed, false);
        let ix = Indexer { q: &qi, k: &ki, w: &wi };
        let ctx =
            format!("{} {:?} passes {passes} (seed {seed}, LONGCTX_SEED={seed})", d.describe(), spec.shape);
        let (out, grads, lists, path) =
            dsa_backward_in_passes(g, &spec, &d, (&q, &k, &v), &ix, &d_o, passes).unwrap();
        let want_path = if spec.shape.head_dim.is_multiple_of(4) { DsaPath::Lists } else { DsaPath::Grid };
        assert_eq!(path, want_path, "{ctx}");
        let (forward, forward_lists, _) = dsa_attention(g, &spec, &d, (&q, &k, &v), &ix).unwrap();
        assert_eq!(lists, forward_lists, "{ctx}: the backward's choice");
        let e = rel_error(&out.o, &forward.o.iter().map(|&x| x as f64).collect::<Vec<_>>());
        assert!(e < BOUND, "{ctx}: the backward's forward {e:.2e}");
        let [dq, dk, dv] = per_sequence(&spec, &d, (&q, &k, &v, &d_o), &lists, |chosen, [q, k, v, d_o]| {
            let (dq, dk, dv) = attention_backward_f64(chosen, q, k, v, d_o).unwrap();
            [dq, dk, dv]
        });
        for (name, got, want) in [("dQ", &grads.dq, &dq), ("dK", &grads.dk, &dk), ("dV", &grads.dv, &dv)] {
            let e = rel_error(got, want);
            assert!(e < BOUND, "{ctx}: {name} error {e:.2e}");
        }
    }
}

/// The indexer's alignment loss and its gradients on the GPU against the f64 oracle, per
/// sequence of a batch, for the warm-up (every visible key, the dense LSE) and the sparse
/// stage (each row's listed keys, the sparse attention's LSE, the GPU's lists): odd sizes,
/// N ≠ M and N > M (rows that see nothing), GQA and MQA, and the passes below a loop cap
/// forced short (several passes each side, one key a pass).
#[test]
fn the_alignment_loss_and_its_gradient_match_the_oracle() {
    let g = gpu();
    let seed = seed();
    let cases = [
        (AttnSpec::new(shape(1, 4, 2, 37, 53, 8)), dsa(5, 2, 8), usize::MAX),
        (AttnSpec::new(shape(2, 3, 1, 29, 29, 12)), dsa(5, 3, 4), 7),
        (AttnSpec::new(shape(1, 2, 2, 20, 13, 4)), dsa(3, 1, 12), 1),
    ];
    for ((spec, d, passes), sparse) in cases.iter().flat_map(|c| [(c.clone(), false), (c.clone(), true)]) {
        let s = spec.shape;
        let (q, k, _) = inputs(&spec, seed);
        let (qi, ki, wi) = indexer(&spec, &d, seed, false);
        let ix = Indexer { q: &qi, k: &ki, w: &wi };
        let (got, lists) = if sparse {
            dsa_sparse_alignment_in_passes(g, &spec, &d, (&q, &k), &ix, passes).unwrap()
        } else {
            (dsa_alignment_in_passes(g, &spec, &d, (&q, &k), &ix, passes).unwrap(), Vec::new())
        };
        // the oracle one sequence at a time
        let one = AttnSpec { shape: AttnShape { batch: 1, ..s }, ..spec.clone() };
        let (mut loss, mut dq, mut dk, mut dw) = (0.0, Vec::new(), Vec::new(), Vec::new());
        let at = |x: &[f32], b: usize, per: usize| x[b * per..][..per].to_vec();
        for b in 0..s.batch {
            let (qb, kb) = (at(&q, b, s.q_len() / s.batch), at(&k, b, s.kv_len() / s.batch));
            let (qib, kib, wib) = (
                at(&qi, b, qi.len() / s.batch),
                at(&ki, b, ki.len() / s.batch),
                at(&wi, b, wi.len() / s.batch),
            );
            let ixb = Indexer { q: &qib, k: &kib, w: &wib };
            let want = if sparse {
                let lb = &lists[b * s.n * d.topk..][..s.n * d.topk];
                dsa_sparse_alignment_f64(&one, &d, (&qb, &kb), &ixb, lb).unwrap()
            } else {
                dsa_alignment_f64(&one, &d, (&qb, &kb), &ixb).unwrap()
            };
            loss += want.loss;
            dq.extend(want.dq);
            dk.extend(want.dk);
            dw.extend(want.dw);
        }
        let errs = [rel_error(&got.dq, &dq), rel_error(&got.dk, &dk), rel_error(&got.dw, &dw)];
        let loss_err = (got.loss - loss).abs() / loss.abs().max(1e-30);
        let [eq, ek, ew] = errs;
        let stage = if sparse { "sparse" } else { "warm-up" };
        println!(
            "{stage} {s:?} {d:?} passes {passes}: loss {:.6} (oracle {loss:.6}, rel {loss_err:.1e}); dqI {eq:.1e}, dkI {ek:.1e}, dw {ew:.1e}",
            got.loss
        );
        assert!(loss > 0.0, "a loss that cannot vanish on random inputs");
        assert!(
            loss_err <= BOUND && errs.iter().all(|&e| e <= BOUND),
            "{stage} {s:?}: loss {loss_err:.1e}, dqI {eq:.1e}, dkI {ek:.1e}, dw {ew:.1e} (seed {seed})"
        );
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let g = gpu();
    let spec = AttnSpec::new(shape(1, 2, 1, 10, 12, 8));
    let d = dsa(4, 2, 8);
    let (q, k, v) = inputs(&spec, 1);
    let (qi, ki, wi) = indexer(&spec, &d, 1, false);
    let ok = Indexer { q: &qi, k: &ki, w: &wi };
    let run =
        |spec: &AttnSpec, d: &Dsa, ix: &Indexer| dsa_attention(g, spec, d, (&q, &k, &v), ix).map(|_| ());
    assert!(run(&spec, &d, &ok).is_ok());
    // the indexer's lengths, values, parameters and head dim
    assert!(matches!(run(&spec, &d, &Indexer { w: &wi[1..], ..ok }), Err(Error::Length { .. })));
    let mut nan = qi.clone();
    nan[3] = f32::NAN;
    assert!(matches!(run(&spec, &d, &Indexer { q: &nan, ..ok }), Err(Error::Invalid(_))));
    assert!(run(&spec, &dsa(0, 2, 8), &ok).is_err());
    let odd = dsa(4, 1, 6);
    let (qi6, ki6, wi6) = indexer(&spec, &odd, 1, false);
    let e = run(&spec, &odd, &Indexer { q: &qi6, k: &ki6, w: &wi6 }).unwrap_err();
    assert!(e.to_string().contains("multiple of 4"), "{e}");
    // what the kernels do not run
    let e = run(&spec.clone().alibi(Alibi::Standard), &d, &ok).unwrap_err();
    assert!(e.to_string().contains("ALiBi"), "{e}");
    assert!(Dsa::parse("topk=8,heads=2").is_ok_and(|x| x == dsa(8, 2, 16)));
    for bad in ["", "heads=2", "topk=0", "topk=4,topk=5", "topk=x", "top=4"] {
        assert!(Dsa::parse(bad).is_err(), "{bad}");
    }
}
