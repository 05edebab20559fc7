//! The paged decoder (kernels/attention/paged.rs) against the f64 oracle
//! (contract/paged.rs): sequences of different lengths in one step, trees of drafted tokens,
//! GQA, ALiBi, odd head dims and page sizes, every KV format (against the oracle on what the
//! cache holds, read back and decoded), forks sharing pages, windows with sinks freeing
//! pages, and a full pool refused before anything changes.

use crate::common;

use longctx::Alibi;
use longctx::contract::paged::{KvFormat, SeqStep, Tree, step_f64};
use longctx::contract::reference::rel_error;
use longctx::kernels::attention::decode::DecodeKernel;
use longctx::kernels::attention::paged::{PagedConfig, PagedDecoder, SeqId};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Poisons the decoder's outputs, so a row the kernels skip shows as NaN.
fn poison(g: &longctx::Gpu, dec: &PagedDecoder) {
    let (o, lse) = dec.outputs();
    for b in [o, lse] {
        g.queue.write_buffer(b, 0, bytemuck::cast_slice(&vec![f32::NAN; b.size() as usize / 4]));
    }
}

/// Runs one step of `steps` on layer 0 with fresh random Q, K, V and checks every sequence's
/// rows against the oracle over what its cache holds; returns the worst O error.
fn step_and_check(
    g: &longctx::Gpu,
    dec: &mut PagedDecoder,
    steps: &[(SeqId, Tree)],
    rng: &mut StdRng,
    seed: u64,
) -> f64 {
    let cfg = dec.config().clone();
    let (h, hkv, d) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
    dec.begin(g, steps).unwrap();
    let tokens = dec.step_tokens();
    let q = random(rng, tokens * h * d);
    let k = random(rng, tokens * hkv * d);
    let v = random(rng, tokens * hkv * d);
    poison(g, dec);
    dec.attend(g, 0, &q, &k, &v).unwrap();
    let out = dec.output(g).unwrap();
    let rule = cfg.rule();
    let mut worst = 0f64;
    let mut t0 = 0;
    for (id, tree) in steps {
        let (keys, values) = dec.read_cache(g, 0, *id).unwrap();
        let t = tree.len();
        let queries = &q[t0 * h * d..(t0 + t) * h * d];
        let (o, lse) = step_f64(&rule, &SeqStep { keys: &keys, values: &values, queries, tree });
        let got = &out.o[t0 * h * d..(t0 + t) * h * d];
        let e = rel_error(got, &o);
        let got_lse = &out.lse[t0 * h..(t0 + t) * h];
        for (a, b) in got_lse.iter().zip(&lse) {
            assert!(
                (*a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{:?}/{:?} seq {id:?}: LSE {a} against {b} (seed {seed})",
                cfg.k_format,
                cfg.v_format
            );
        }
        assert!(
            e < 1e-5,
            "{:?}/{:?} seq {id:?} ({t} tokens): O rel err {e:.2e} (seed {seed})",
            cfg.k_format,
            cfg.v_format
        );
        // the new tokens' K and V in the cache are what the format's rule stores (the host's
        // encoding, up to one code where a value falls on a rounding tie)
        let len = keys.len() / (hkv * d);
        for (f, cached, given) in [(cfg.k_format, &keys, &k), (cfg.v_format, &values, &v)] {
            let stored = cfg.stored_dim();
            for r in 0..t * hkv {
                let mut row = given[(t0 * hkv + r) * d..][..d].to_vec();
                row.resize(stored, 0.0);
                let (w, sc) = f.encode_row(&row);
                let want = f.decode_row(&w, &sc);
                let got = &cached[((len - t) * hkv + r) * d..][..d];
                let code = match f {
                    KvFormat::F32 => 0.0,
                    KvFormat::Int8 => f32::from_bits(sc[0]) / 127.0,
                    KvFormat::Int4 => {
                        sc.iter().map(|&s| half::f16::from_bits(s as u16).to_f32()).fold(0.0, f32::max)
                    }
                };
                let off = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
                assert!(
                    off <= 2 && worst <= code * 1.001,
                    "{f:?} row {r}: {off} values off, by up to {worst} (code {code}; seed {seed})"
                );
            }
        }
        worst = worst.max(e);
        t0 += t;
    }
    worst
}

#[test]
fn a_batch_of_sequences_and_trees_matches_the_oracle_in_every_format() {
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let cases = [
        (KvFormat::F32, KvFormat::F32),
        (KvFormat::Int8, KvFormat::Int8),
        (KvFormat::Int4, KvFormat::Int4),
        (KvFormat::Int8, KvFormat::Int4),
    ];
    for ((kf, vf), kernel) in
        cases.into_iter().flat_map(|c| [(c, DecodeKernel::Lanes), (c, DecodeKernel::Staged)])
    {
        // GQA 3/1, D 20 (stored 20, 32 or 32 wide), pages of 5 slots, ALiBi
        let mut cfg = PagedConfig::new(6, 2, 20, 40);
        cfg.page = 5;
        cfg.k_format = kf;
        cfg.v_format = vf;
        cfg.alibi = Alibi::Standard;
        cfg.max_tokens = 12;
        cfg.kernel = kernel;
        // the staged kernel's profile split holds these caches whole: splits of 12 slots
        // (past a tile's end, and tiles cut short) exercise its merge
        cfg.chunk = if kernel == DecodeKernel::Staged { 12 } else { 0 };
        let mut dec = PagedDecoder::new(g, cfg).unwrap();
        let ids: Vec<SeqId> = (0..3).map(|_| dec.add()).collect();
        // prompts of 0, 13 and 37 slots
        for (&id, n) in ids.iter().zip([0usize, 13, 37]).skip(1) {
            let (k, v) = (random(&mut rng, n * 2 * 20), random(&mut rng, n * 2 * 20));
            dec.prefill(g, id, &[(&k, &v)]).unwrap();
        }
        let tree = Tree::new(vec![None, Some(0), Some(0), Some(1), None, Some(4)]).unwrap();
        let steps = vec![(ids[0], Tree::chain(1)), (ids[1], tree), (ids[2], Tree::chain(3))];
        let e1 = step_and_check(g, &mut dec, &steps, &mut rng, seed);
        // the next step reads what the first one stored
        let steps: Vec<(SeqId, Tree)> = ids.iter().map(|&id| (id, Tree::chain(1))).collect();
        let e2 = step_and_check(g, &mut dec, &steps, &mut rng, seed);
        println!("{kf:?}/{vf:?} {kernel:?}: O rel err {e1:.1e}, then {e2:.1e}; splits {:?}", dec.splits());
        assert_eq!(dec.len(ids[2]).unwrap(), 37 + 3 + 1);
    }
}

#[test]
fn forks_share_pages_until_one_writes() {
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cfg = PagedConfig::new(4, 4, 16, 12);
    cfg.page = 8;
    cfg.kernel = DecodeKernel::Staged;
    let mut dec = PagedDecoder::new(g, cfg).unwrap();
    let a = dec.add();
    let (k, v) = (random(&mut rng, 21 * 4 * 16), random(&mut rng, 21 * 4 * 16));
    dec.prefill(g, a, &[(&k, &v)]).unwrap();
    let b = dec.fork(a).unwrap();
    let u = dec.usage();
    assert_eq!((u.used, u.shared, u.seqs), (3, 3, 2), "{u:?}");
    // both write into the shared third page: one gets a copy, the full pages stay shared
    step_and_check(g, &mut dec, &[(a, Tree::chain(2)), (b, Tree::chain(1))], &mut rng, seed);
    let u = dec.usage();
    assert_eq!((u.used, u.shared), (4, 2), "{u:?}");
    assert_eq!(dec.table(a).unwrap()[..2], dec.table(b).unwrap()[..2]);
    assert_ne!(dec.table(a).unwrap()[2], dec.table(b).unwrap()[2]);
    // the prompt each sees is still the prompt
    for id in [a, b] {
        let (keys, _) = dec.read_cache(g, 0, id).unwrap();
        assert_eq!(&keys[..k.len()], &k[..], "seed {seed}");
    }
    dec.release(a).unwrap();
    let u = dec.usage();
    assert_eq!((u.used, u.shared, u.seqs), (3, 0, 1), "{u:?}");
    dec.release(b).unwrap();
    assert_eq!(dec.usage().used, 0);
}

#[test]
fn a_window_with_sinks_frees_the_pages_behind_it() {
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut cfg = PagedConfig::new(2, 1, 8, 16);
    cfg.page = 4;
    cfg.window = Some(9);
    cfg.sinks = 2;
    let mut dec = PagedDecoder::new(g, cfg).unwrap();
    let id = dec.add();
    let (k, v) = (random(&mut rng, 30 * 8), random(&mut rng, 30 * 8));
    dec.prefill(g, id, &[(&k, &v)]).unwrap();
    assert_eq!(dec.usage().used, 8);
    // slots below 30 − 9 = 21 are hidden, pages 1..5 of them hold no sink
    step_and_check(g, &mut dec, &[(id, Tree::chain(2))], &mut rng, seed);
    let table = dec.table(id).unwrap().to_vec();
    assert_eq!(table.iter().filter(|&&p| p == u32::MAX).count(), 4, "{table:?}");
    assert_eq!(dec.usage().used, 4, "{table:?}");
    // the freed pages come back for the next sequence
    let other = dec.add();
    let (k, v) = (random(&mut rng, 40 * 8), random(&mut rng, 40 * 8));
    dec.prefill(g, other, &[(&k, &v)]).unwrap();
    step_and_check(g, &mut dec, &[(id, Tree::chain(1)), (other, Tree::chain(1))], &mut rng, seed);
}

#[test]
fn a_full_pool_or_a_bad_step_is_a_typed_error_and_changes_nothing() {
    let g = common::gpu();
    let mut cfg = PagedConfig::new(2, 2, 8, 3);
    cfg.page = 4;
    cfg.max_tokens = 8;
    let mut dec = PagedDecoder::new(g, cfg).unwrap();
    let a = dec.add();
    let kv = vec![0.5f32; 10 * 2 * 8];
    dec.prefill(g, a, &[(&kv, &kv)]).unwrap();
    let b = dec.add();
    let before = (dec.usage(), dec.len(a).unwrap(), dec.len(b).unwrap());
    // a needs no page for 2 tokens, b needs 2 of the 0 left... after a's: 1 free page
    let err = dec.begin(g, &[(a, Tree::chain(2)), (b, Tree::chain(5))]).unwrap_err().to_string();
    assert!(err.contains("KV pages") && err.contains('2'), "{err}");
    assert_eq!(before, (dec.usage(), dec.len(a).unwrap(), dec.len(b).unwrap()));
    let err = dec.begin(g, &[(a, Tree::chain(1)), (a, Tree::chain(1))]).unwrap_err().to_string();
    assert!(err.contains("twice"), "{err}");
    let err = dec.begin(g, &[(b, Tree::chain(9))]).unwrap_err().to_string();
    assert!(err.contains("max_tokens"), "{err}");
    let err = dec.attend(g, 0, &[0.0], &[0.0], &[0.0]).unwrap_err().to_string();
    assert!(err.contains("begin"), "{err}");
    assert_eq!(before, (dec.usage(), dec.len(a).unwrap(), dec.len(b).unwrap()));
    // a pool past one binding is refused before anything is allocated
    let mut huge = PagedConfig::new(32, 32, 128, 1 << 20);
    huge.page = 64;
    let err = PagedDecoder::new(g, huge).err().expect("too big").to_string();
    assert!(err.contains("K pool"), "{err}");
}

#[test]
fn a_packed_prefill_matches_each_sequence_alone() {
    use longctx::kernels::attention::packed::{Packed, packed_attention, packed_f64};
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    // lengths that start and end inside flash's tiles, one of a single token; GQA 3/1, ALiBi
    for (lens, d, alibi) in [
        (vec![13, 1, 37, 6, 70], 20, Alibi::Standard),
        (vec![5, 33], 16, Alibi::Off),
        (vec![9], 8, Alibi::Standard),
    ] {
        let p = Packed { lens: lens.clone(), heads: 6, kv_heads: 2, head_dim: d, alibi };
        let t = p.tokens().unwrap();
        let q = random(&mut rng, t * 6 * d);
        let k = random(&mut rng, t * 2 * d);
        let v = random(&mut rng, t * 2 * d);
        let out = packed_attention(g, &p, &q, &k, &v).unwrap();
        let (o, lse) = packed_f64(&p, &q, &k, &v).unwrap();
        let e = rel_error(&out.o, &o);
        let e_lse = rel_error(&out.lse, &lse);
        println!("packed {lens:?} D {d}: O rel err {e:.1e}, LSE {e_lse:.1e}");
        assert!(e < 1e-5 && e_lse < 1e-5, "packed {lens:?}: O {e:.2e}, LSE {e_lse:.2e} (seed {seed})");
    }
    // a sequence of no tokens, and inputs of the wrong length, are typed errors
    let bad = Packed { lens: vec![3, 0], heads: 2, kv_heads: 2, head_dim: 8, alibi: Alibi::Off };
    assert!(packed_attention(g, &bad, &[0.0; 48], &[0.0; 48], &[0.0; 48]).is_err());
    let p = Packed { lens: vec![3], ..bad };
    let err = packed_attention(g, &p, &[0.0; 48], &[0.0; 47], &[0.0; 48]).unwrap_err();
    assert!(err.to_string().contains("packed K"), "{err}");
}
