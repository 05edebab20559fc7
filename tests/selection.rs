//! Learned sparse attention (MoBA): the GPU's choice against the f64 oracle's, then the
//! forward and the backward on the chosen blocks against the attention oracle, at odd sizes
//! (N ≠ M, N > M, GQA and MQA, N and M not multiples of the block, head dims not multiples
//! of 4); the tiles no query chose are never visited; bad parameters are typed errors.

use crate::common::{gpu, inputs, seed};
use longctx::contract::positions::Positions;
use longctx::contract::reference::{attention_backward_f64, attention_f64, rel_error};
use longctx::contract::selection::{MAX_TOPK, Moba, NONE, compare_selection, moba_select_f64};
use longctx::kernels::attention::sparse_backward::SparseBackward;
use longctx::kernels::selection::{MobaPath, moba_attention, moba_backward, moba_select};
use longctx::{Alibi, Attention, AttnShape, AttnSpec, Error, Kernel, Window};

const BOUND: f64 = 1e-5;

fn shape(heads: usize, kv_heads: usize, n: usize, m: usize, d: usize) -> AttnShape {
    AttnShape { batch: 1, heads, kv_heads, n, m, head_dim: d }
}

/// (spec, MoBA) cases: GQA, MQA, N > M, k = 1, k = MAX_TOPK, D = 6, rows over several
/// workgroups of the choice (N = 150: runs of 64 rows, the last one partial), a batch.
fn cases() -> Vec<(AttnSpec, Moba)> {
    vec![
        (AttnSpec::new(shape(3, 1, 150, 190, 8)), Moba { block: 16, topk: 3 }),
        (AttnSpec::new(shape(4, 2, 45, 77, 12)), Moba { block: 8, topk: 3 }),
        (AttnSpec::new(shape(2, 1, 70, 70, 16)), Moba { block: 5, topk: 4 }),
        (AttnSpec::new(shape(2, 2, 40, 30, 8)), Moba { block: 4, topk: 2 }),
        (AttnSpec::new(shape(3, 3, 33, 50, 6)), Moba { block: 7, topk: 1 }),
        (AttnSpec::new(shape(1, 1, 25, 90, 4)), Moba { block: 2, topk: MAX_TOPK }),
        (
            AttnSpec::new(shape(4, 2, 37, 64, 8)).alibi(Alibi::Standard).window(Some(Window::new(40, 0))),
            Moba { block: 6, topk: 3 },
        ),
        // a batch of two sequences, each choosing for itself
        (AttnSpec::new(AttnShape { batch: 2, ..shape(2, 1, 30, 44, 8) }), Moba { block: 8, topk: 2 }),
        // RoPE: the gate reads Q and K rotated (the list kernels on encoded copies, dQ and dK
        // rotated back; at D 6, flash's grid encodes them itself); with a batch
        (AttnSpec::new(shape(4, 2, 45, 77, 16)).positions(Some(rope())), Moba { block: 8, topk: 3 }),
        (AttnSpec::new(shape(2, 1, 33, 50, 6)).positions(Some(rope())), Moba { block: 7, topk: 2 }),
        (
            AttnSpec::new(AttnShape { batch: 2, ..shape(2, 2, 30, 44, 8) }).positions(Some(rope())),
            Moba { block: 8, topk: 2 },
        ),
    ]
}

fn rope() -> Positions {
    Positions::rope(10000.0)
}

#[test]
fn the_gpu_chooses_the_blocks_the_oracle_chooses() {
    let g = gpu();
    let seed = seed();
    let mut ties = 0;
    for (spec, moba) in cases() {
        let (q, k, _) = inputs(&spec, seed);
        let want = moba_select_f64(&spec, &moba, &q, &k).unwrap();
        let got = moba_select(g, &spec, &moba, &q, &k).unwrap();
        assert_eq!(got.len(), want.len());
        let (diffs, all_ties) = compare_selection(&spec, &moba, &q, &k, &want, &got, 1e-5);
        assert!(
            all_ties,
            "{moba:?} {:?}: the GPU chose differently beyond float32 ties in {} rows, e.g. {:?} (seed {seed}, LONGCTX_SEED={seed})",
            spec.shape,
            diffs.len(),
            diffs.first()
        );
        ties += diffs.len();
        // own block first, every entry inside the causal past, NONE only at the end
        for (row, list) in got.chunks_exact(moba.topk).enumerate() {
            let p = spec.position(row % spec.shape.n);
            if p < 0 {
                assert!(list.iter().all(|&b| b == NONE));
                continue;
            }
            assert_eq!(list[0] as i64, p / moba.block as i64, "row {row}: own block first");
            let used = list.iter().take_while(|&&b| b != NONE).count();
            assert!(list[used..].iter().all(|&b| b == NONE), "row {row}: {list:?}");
            assert_eq!(used, moba.topk.min(1 + (p as usize / moba.block)), "row {row}: {list:?}");
        }
    }
    eprintln!("MoBA choice: rows differing from the oracle only by float32 ties: {ties} (seed {seed})");
}

#[test]
fn moba_forward_and_backward_match_the_oracle_on_the_chosen_blocks() {
    let g = gpu();
    let seed = seed();
    let mut on_lists = 0;
    for (spec, moba) in cases() {
        let (q, k, v) = inputs(&spec, seed);
        let (out, selected, path) = moba_attention(g, &spec, &moba, &q, &k, &v).unwrap();
        // head dims not a multiple of 4 run flash on the chosen block grid
        assert_eq!(path == MobaPath::Lists, spec.shape.head_dim.is_multiple_of(4), "{:?}", spec.shape);
        on_lists += (path == MobaPath::Lists) as usize;
        let chosen = moba.spec(&spec, &selected).unwrap();
        let (o_ref, lse_ref) = attention_f64(&chosen, &q, &k, &v).unwrap();
        let ctx = format!("{moba:?} {:?} (seed {seed}, LONGCTX_SEED={seed})", spec.shape);
        assert!(out.o.iter().all(|x| x.is_finite()), "{ctx}: non-finite output");
        let e = rel_error(&out.o, &o_ref);
        assert!(e < BOUND, "{ctx}: O error {e:.2e}");
        for (i, (&l, &r)) in out.lse.iter().zip(&lse_ref).enumerate() {
            if r == f64::NEG_INFINITY {
                assert_eq!(l, f32::NEG_INFINITY, "{ctx}: row {i} sees no key");
            } else {
                assert!((l as f64 - r).abs() <= 1e-5 * r.abs().max(1.0), "{ctx}: LSE row {i}: {l} vs {r}");
            }
        }
        // the backward of the same call (no gradient through the choice), on the same path
        let d_o = inputs(&chosen, seed ^ 0x5eed).0;
        let (out_b, grads, selected_b, path_b) = moba_backward(g, &spec, &moba, &q, &k, &v, &d_o).unwrap();
        assert_eq!((&selected_b, path_b), (&selected, path), "{ctx}: the backward's choice and path");
        assert_eq!(out_b.o, out.o, "{ctx}: the backward's forward");
        let (dq, dk, dv) = attention_backward_f64(&chosen, &q, &k, &v, &d_o).unwrap();
        for (name, got, want) in [("dQ", &grads.dq, &dq), ("dK", &grads.dk, &dk), ("dV", &grads.dv, &dv)] {
            let e = rel_error(got, want);
            assert!(e < BOUND, "{ctx}: {name} error {e:.2e}");
        }
    }
    let fours = cases().iter().filter(|(s, _)| s.shape.head_dim.is_multiple_of(4)).count();
    assert_eq!(on_lists, fours, "every case with a head dim a multiple of 4 ran the list kernel");
}

/// When the queries of a tile choose alike (here every query prefers block 0: its keys point
/// along the queries' common direction), flash lists far fewer key tiles than causal attention.
#[test]
fn tiles_no_query_chose_are_skipped() {
    let g = gpu();
    let spec = AttnSpec::new(shape(2, 2, 256, 256, 16));
    let moba = Moba { block: 32, topk: 2 };
    let (mut q, mut k, _) = inputs(&spec, seed());
    q.chunks_exact_mut(16).for_each(|row| row[0] = 1.0 + row[0].abs());
    for h in 0..2 {
        k[h * 256 * 16..][..32 * 16].chunks_exact_mut(16).for_each(|row| row[0] = 3.0);
    }
    let selected = moba_select(g, &spec, &moba, &q, &k).unwrap();
    assert!(selected.chunks_exact(2).all(|l| l[0] == 0 || l[1] == 0), "every row reads block 0");
    let chosen = moba.spec(&spec, &selected).unwrap();
    let causal = spec.clone().causal(true);
    let (sparse, dense) = (chosen.visible_pairs(), causal.visible_pairs());
    // each row sees block 0 and its own block's past: at most 64 of up to 256 keys
    assert!(sparse * 2 < dense, "visible pairs {sparse} of causal's {dense}");
    let skipped = |s: &AttnSpec| Attention::new(g, Kernel::Flash, s).unwrap().block_map().unwrap().sparsity();
    let (sparse, dense) = (skipped(&chosen), skipped(&causal));
    assert!(sparse > dense + 0.2, "tiles skipped: {sparse:.2} vs causal's {dense:.2}");
}

/// A block every row chose has a long list of entries: the backward walks it in passes below
/// an adapter's loop cap (lavapipe's: 65 535 iterations per invocation), adding to dK and dV.
#[test]
fn the_backward_walks_a_block_every_row_chose_in_passes() {
    let g = gpu();
    let seed = seed();
    // MQA 8/1: 8 heads × 1100 rows all choose block 0 of the one kv head
    let spec = AttnSpec::new(shape(8, 1, 1100, 1100, 4));
    let moba = Moba { block: 16, topk: 2 };
    let (mut q, mut k, v) = inputs(&spec, seed);
    q.chunks_exact_mut(4).for_each(|row| row[0] = 1.0 + row[0].abs());
    k[..16 * 4].chunks_exact_mut(4).for_each(|row| row[0] = 3.0);
    let d_o = inputs(&spec, seed ^ 0x5eed).0;
    let (_, grads, selected, path) = moba_backward(g, &spec, &moba, &q, &k, &v, &d_o).unwrap();
    assert_eq!(path, MobaPath::Lists);
    assert!(selected.chunks_exact(2).all(|l| l[0] == 0 || l[1] == 0), "every row reads block 0");
    let bwd = SparseBackward::new(g, &spec.clone().causal(true), moba.block, moba.topk).unwrap();
    let (_, dkv_passes) = bwd.passes(g, &selected).unwrap();
    if g.loop_iteration_limit().is_some() {
        assert!(dkv_passes > 1, "block 0's 8800 entries in one pass");
    }
    let (dq, dk, dv) =
        attention_backward_f64(&moba.spec(&spec, &selected).unwrap(), &q, &k, &v, &d_o).unwrap();
    for (name, got, want) in [("dQ", &grads.dq, &dq), ("dK", &grads.dk, &dk), ("dV", &grads.dv, &dv)] {
        let e = rel_error(got, want);
        assert!(
            e < BOUND,
            "{name} error {e:.2e} with {dkv_passes} passes (seed {seed}, LONGCTX_SEED={seed})"
        );
    }
}

/// A batch folds into heads (`Moba::fold`): each sequence chooses, attends and gets its
/// gradients as in a call of its own (GQA, ALiBi's slopes per head of each sequence).
#[test]
fn each_sequence_of_a_batch_chooses_for_itself() {
    let g = gpu();
    let seed = seed();
    let (batch, one) = (3, shape(4, 2, 41, 59, 8));
    let spec = AttnSpec::new(AttnShape { batch, ..one }).alibi(Alibi::Standard);
    let moba = Moba { block: 6, topk: 3 };
    let (q, k, v) = inputs(&spec, seed);
    let d_o = inputs(&spec, seed ^ 0x5eed).0;
    let (out, grads, lists, path) = moba_backward(g, &spec, &moba, &q, &k, &v, &d_o).unwrap();
    assert_eq!(path, MobaPath::Lists);
    let single = AttnSpec::new(one).alibi(Alibi::Standard);
    let (qn, kn) = (one.q_len(), one.kv_len());
    let ctx = format!("seed {seed}, LONGCTX_SEED={seed}");
    for b in 0..batch {
        let (qb, kb, vb) = (&q[b * qn..][..qn], &k[b * kn..][..kn], &v[b * kn..][..kn]);
        let (ob, gb, lb, _) = moba_backward(g, &single, &moba, qb, kb, vb, &d_o[b * qn..][..qn]).unwrap();
        let rows = one.heads * one.n * moba.topk;
        assert_eq!(&lists[b * rows..][..rows], &lb[..], "sequence {b}: the choice ({ctx})");
        let close = |got: &[f32], want: &[f32]| {
            rel_error(got, &want.iter().map(|&x| x as f64).collect::<Vec<_>>()) < 1e-6
        };
        assert!(close(&out.o[b * qn..][..qn], &ob.o), "sequence {b}: O ({ctx})");
        assert!(close(&grads.dq[b * qn..][..qn], &gb.dq), "sequence {b}: dQ ({ctx})");
        assert!(close(&grads.dk[b * kn..][..kn], &gb.dk), "sequence {b}: dK ({ctx})");
        assert!(close(&grads.dv[b * kn..][..kn], &gb.dv), "sequence {b}: dV ({ctx})");
    }
}

#[test]
fn bad_moba_calls_are_typed_errors() {
    let g = gpu();
    let spec = AttnSpec::new(shape(2, 1, 20, 30, 8));
    let (q, k, _) = inputs(&spec, 1);
    let run = |s: &AttnSpec, m: Moba, q: &[f32], k: &[f32]| moba_select(g, s, &m, q, k).unwrap_err();
    assert!(matches!(run(&spec, Moba { block: 0, topk: 2 }, &q, &k), Error::Invalid(_)));
    assert!(matches!(run(&spec, Moba { block: 4, topk: 0 }, &q, &k), Error::OutOfRange { .. }));
    // a batch folds into heads, which a sparse mask's head index does not allow
    let bigbird = longctx::contract::mask::BigBird { global: 1, window: 1, random: 1, block: 4, seed: 5 };
    let two = AttnSpec::new(AttnShape { batch: 2, ..spec.shape })
        .mask(Some(longctx::contract::mask::Mask::bigbird(&bigbird, 30).unwrap()));
    let (q2, k2, _) = inputs(&two, 1);
    assert!(matches!(run(&two, Moba { block: 4, topk: 2 }, &q2, &k2), Error::Invalid(_)));
    // the stages that read Q and K as given refuse a call that still encodes positions
    let rope = spec.clone().positions(Some(rope()));
    let (qb, kb) = (g.upload("q", &q).unwrap(), g.upload("k", &k).unwrap());
    let moba = Moba { block: 4, topk: 2 };
    match longctx::kernels::selection::block_means_on(g, &rope, &moba, &kb) {
        Err(Error::Invalid(why)) => assert!(why.contains("encoded"), "{why}"),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
    drop(qb);
    assert!(matches!(run(&spec, Moba { block: 4, topk: 2 }, &q[1..], &k), Error::Length { .. }));
    // an adapter with a loop cap: too many blocks per query is refused before dispatching
    if let Some(cap) = g.loop_iteration_limit() {
        let m = (cap as usize / 8) * 2;
        let long = AttnSpec::new(shape(1, 1, 1, m, 8));
        let (q, k, _) = inputs(&long, 1);
        match run(&long, Moba { block: 1, topk: 2 }, &q, &k) {
            Error::LoopLimit { needed, limit, .. } => assert!(needed > limit),
            other => panic!("expected a loop-cap error, got {other}"),
        }
    }
}
