//! Generation (models/generate.rs) over the paged cache: the logits of every step — prompts
//! packed into one flash pass or fed in chunks, several sequences together — against the f64 oracle's forward of the whole
//! sequence, for each positional scheme; greedy speculative decoding gives exactly the
//! model's own greedy text, whatever the draft.

use crate::common;

use longctx::contract::paged::KvFormat;
use longctx::contract::reference::rel_error;
use longctx::models::generate::{
    CacheLayout, Generator, Sampling, SpecStats, accept_or_resample, argmax, sample, speculate,
};
use longctx::models::gpt::{GptConfig, Params, PosScheme, logits_f64};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn model(pos: PosScheme, seed: u64) -> (GptConfig, Vec<f32>) {
    let c = GptConfig::bytes(16, 2, 2, pos);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut p = Params::init(c, rng.random()).unwrap().data;
    // away from initialisation, so attention is not uniform
    p.iter_mut().for_each(|x| *x += rng.random_range(-0.3f32..0.3));
    (c, p)
}

fn layout(format: KvFormat) -> CacheLayout {
    CacheLayout { format, page: 3, positions: 96, max_seqs: 2, max_step_tokens: 4 }
}

#[test]
fn every_step_s_logits_match_the_oracle_for_each_scheme() {
    let g = common::gpu();
    let seed = common::seed();
    for pos in [PosScheme::None, PosScheme::Sinusoidal, PosScheme::Rope, PosScheme::Alibi] {
        let (c, p) = model(pos, seed);
        let p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let mut model = Generator::new(g, c, p, layout(KvFormat::F32)).unwrap();
        let mut texts: Vec<Vec<u32>> = [&b"in the beginning"[..], b"and god said"]
            .iter()
            .map(|s| s.iter().map(|&b| b as u32).collect())
            .collect();
        let ids = [model.add(), model.add()];
        let mut worst = 0f64;
        let mut last = Vec::new();
        // both prompts in one packed flash pass: the logits after every prompt token
        let views: Vec<(_, &[u32])> = ids.iter().zip(&texts).map(|(&id, t)| (id, &t[..])).collect();
        let prefilled = model.prefill_packed(g, &views).unwrap();
        for (prompt, logits) in texts.iter().zip(&prefilled) {
            let want = logits_f64(&c, &p64, prompt).unwrap();
            assert_eq!(logits.len(), prompt.len());
            for (got, want) in logits.iter().zip(&want) {
                worst = worst.max(rel_error(got, want));
            }
            last.push(argmax(logits.last().unwrap()));
        }
        for _ in 0..3 {
            let steps: Vec<(_, Vec<u32>)> = ids.iter().zip(&last).map(|(&id, &t)| (id, vec![t])).collect();
            let view: Vec<(_, &[u32])> = steps.iter().map(|(id, t)| (*id, &t[..])).collect();
            let out = model.forward(g, &view).unwrap();
            for (s, logits) in out.iter().enumerate() {
                texts[s].push(last[s]);
                let want = logits_f64(&c, &p64, &texts[s]).unwrap();
                worst = worst.max(rel_error(&logits[0], want.last().unwrap()));
                last[s] = argmax(&logits[0]);
            }
        }
        println!("{pos:?}: logits against the oracle, worst rel err {worst:.1e}");
        assert!(worst < 1e-5, "{pos:?}: {worst:.2e} (seed {seed})");
    }
}

#[test]
fn greedy_speculation_gives_the_model_s_own_text() {
    let g = common::gpu();
    let seed = common::seed();
    let (c, p) = model(PosScheme::Alibi, seed);
    let prompt: Vec<u32> = b"let there be".iter().map(|&b| b as u32).collect();
    // the model alone, greedy
    let mut alone = Generator::new(g, c, p.clone(), layout(KvFormat::F32)).unwrap();
    let id = alone.add();
    let mut next = argmax(&alone.prefill(g, id, &prompt, 4).unwrap());
    let mut want = vec![next];
    for _ in 0..11 {
        next = argmax(&alone.forward(g, &[(id, &[next])]).unwrap()[0][0]);
        want.push(next);
    }
    for (name, draft_params, full) in
        [("itself", p.clone(), true), ("another model", model(PosScheme::Alibi, seed ^ 1).1, false)]
    {
        let mut m = Generator::new(g, c, p.clone(), layout(KvFormat::F32)).unwrap();
        let mut d = Generator::new(g, c, draft_params, layout(KvFormat::F32)).unwrap();
        let (mid, did) = (m.add(), d.add());
        let head = &prompt[..prompt.len() - 1];
        m.prefill(g, mid, head, 4).unwrap();
        d.prefill(g, did, head, 4).unwrap();
        let mut last = *prompt.last().unwrap();
        let mut got = Vec::new();
        let mut stats = SpecStats::default();
        let (greedy, mut rng) = (Sampling::greedy(), StdRng::seed_from_u64(seed));
        while got.len() < want.len() {
            let new =
                speculate(g, (&mut m, mid), (&mut d, did), last, (3, &greedy), &mut rng, &mut stats).unwrap();
            last = *new.last().unwrap();
            got.extend(new);
        }
        got.truncate(want.len());
        println!(
            "draft {name}: {} of {} drafts accepted in {} steps",
            stats.accepted, stats.proposed, stats.steps
        );
        assert_eq!(got, want, "draft {name} (seed {seed})");
        if full {
            assert_eq!(stats.accepted, stats.proposed, "a model drafting for itself is always right");
        }
        assert_eq!(m.len(mid).unwrap(), d.len(did).unwrap());
    }
}

#[test]
fn a_packed_prefill_refuses_what_it_cannot_start_before_anything_changes() {
    let g = common::gpu();
    let (c, p) = model(PosScheme::Rope, common::seed());
    let small =
        CacheLayout { format: KvFormat::Int8, page: 3, positions: 12, max_seqs: 2, max_step_tokens: 4 };
    let mut m = Generator::new(g, c, p, small).unwrap();
    let (a, b) = (m.add(), m.add());
    let long: Vec<u32> = (0..10).collect();
    // 4 + 3 pages asked of 4: refused, nothing written
    let err = m.prefill_packed(g, &[(a, &long), (b, &long[..7])]).unwrap_err();
    assert!(err.to_string().contains("pages"), "{err}");
    assert_eq!((m.len(a).unwrap(), m.len(b).unwrap(), m.cache().usage().used), (0, 0, 0));
    for bad in [vec![(a, &long[..0])], vec![(a, &long[..2]), (a, &long[..2])], vec![(a, &[300u32][..])]] {
        assert!(m.prefill_packed(g, &bad).is_err(), "{bad:?}");
        assert_eq!(m.cache().usage().used, 0);
    }
    m.prefill_packed(g, &[(a, &long[..5])]).unwrap();
    assert_eq!(m.len(a).unwrap(), 5);
    // a sequence holding tokens continues through forward, not a packed prefill
    let err = m.prefill_packed(g, &[(a, &long[..2])]).unwrap_err();
    assert!(err.to_string().contains("already holds 5"), "{err}");
}

/// Speculative sampling's rule keeps the model's distribution: tokens drafted from q and
/// passed through `accept_or_resample` against p come out distributed as p (host only).
#[test]
fn speculative_sampling_s_rule_gives_the_model_s_distribution() {
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let n = 200_000;
    for case in 0..4 {
        let mut dist = |zeros: usize| -> Vec<f64> {
            let mut x: Vec<f64> = (0..6).map(|_| rng.random_range(0.0..1.0)).collect();
            // some tokens one side gives no probability (a nucleus cut)
            x.iter_mut().take(zeros).for_each(|v| *v = 0.0);
            let s: f64 = x.iter().sum();
            x.iter().map(|v| v / s).collect()
        };
        let (p, mut q) = (dist(case % 2), dist(0));
        q.reverse();
        let mut counts = [0usize; 6];
        let mut kept = 0;
        for _ in 0..n {
            let x = sample(&q, &mut rng);
            let (t, ok) = accept_or_resample(&p, &q, x, &mut rng);
            counts[t as usize] += 1;
            kept += ok as usize;
        }
        let tv: f64 =
            counts.iter().zip(&p).map(|(&c, &pi)| (c as f64 / n as f64 - pi).abs()).sum::<f64>() / 2.0;
        // acceptance is Σ min(p, q)
        let want_kept: f64 = p.iter().zip(&q).map(|(a, b)| a.min(*b)).sum();
        let got_kept = kept as f64 / n as f64;
        println!("case {case}: total variation {tv:.4}, kept {got_kept:.3} (Σ min(p, q) = {want_kept:.3})");
        assert!(tv < 0.006, "case {case}: output is not p (TV {tv:.4}, seed {seed})");
        assert!((got_kept - want_kept).abs() < 0.006, "case {case}: kept {got_kept} (seed {seed})");
    }
    // drafting from the model itself keeps every token; greedy distributions keep a match only
    let p = [0.1, 0.6, 0.3];
    assert_eq!(accept_or_resample(&p, &p, 2, &mut rng), (2, true));
    let (one, other) = ([0.0, 1.0, 0.0], [1.0, 0.0, 0.0]);
    assert_eq!(accept_or_resample(&one, &other, 0, &mut rng), (1, false));
    assert_eq!(accept_or_resample(&one, &one, 1, &mut rng), (1, true));
}

/// Sampled speculation with the model as its own draft: p = q up to f32 rounding, so every
/// draft is kept (the rule's distribution is checked on the host above); both caches stay
/// in step.
#[test]
fn sampled_speculation_with_the_model_as_draft_keeps_every_draft() {
    let g = common::gpu();
    let seed = common::seed();
    let (c, p) = model(PosScheme::Rope, seed);
    let prompt: Vec<u32> = b"and the earth".iter().map(|&b| b as u32).collect();
    let mut m = Generator::new(g, c, p.clone(), layout(KvFormat::F32)).unwrap();
    let mut d = Generator::new(g, c, p, layout(KvFormat::F32)).unwrap();
    let (mid, did) = (m.add(), d.add());
    let head = &prompt[..prompt.len() - 1];
    m.prefill_packed(g, &[(mid, head)]).unwrap();
    d.prefill_packed(g, &[(did, head)]).unwrap();
    let sampling = Sampling { temperature: 0.8, top_p: 0.95 };
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut last, mut stats, mut total) = (*prompt.last().unwrap(), SpecStats::default(), 0);
    for _ in 0..4 {
        let new =
            speculate(g, (&mut m, mid), (&mut d, did), last, (3, &sampling), &mut rng, &mut stats).unwrap();
        last = *new.last().unwrap();
        total += new.len();
        assert_eq!(m.len(mid).unwrap(), d.len(did).unwrap());
    }
    println!("sampled, draft itself: {} of {} kept, {total} tokens", stats.accepted, stats.proposed);
    // the same model's p and q agree to f32 rounding: a draft is dropped only when p(x) < q(x)
    // by rounding and the uniform draw lands in that sliver
    assert!(stats.accepted + 1 >= stats.proposed, "{stats:?} (seed {seed})");
    assert_eq!(total, stats.accepted + stats.steps);
}

/// A tree of drafts from the same model (its two likeliest next tokens, each followed by
/// its greedy chain) verified in one step: every token's logits equal the oracle's after the
/// prompt and the path to it; keeping one path and feeding it again continues exactly.
#[test]
fn a_drafted_tree_verified_in_one_step_matches_the_oracle_on_every_path() {
    use longctx::contract::paged::Tree;
    let g = common::gpu();
    let seed = common::seed();
    for pos in [PosScheme::Alibi, PosScheme::Rope, PosScheme::Sinusoidal] {
        let (c, p) = model(pos, seed);
        let p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let oracle = |t: &[u32]| logits_f64(&c, &p64, t).unwrap().pop().unwrap();
        let mut m = Generator::new(g, c, p, layout(KvFormat::F32)).unwrap();
        let id = m.add();
        let prompt: Vec<u32> = b"in the begin".iter().map(|&b| b as u32).collect();
        m.prefill_packed(g, &[(id, &prompt[..prompt.len() - 1])]).unwrap();
        // the draft, from the model's oracle: two roots, each with a greedy chain of 2
        let after = oracle(&prompt);
        let mut order: Vec<u32> = (0..c.vocab as u32).collect();
        order.sort_by(|&a, &b| after[b as usize].total_cmp(&after[a as usize]));
        let mut tokens = vec![*prompt.last().unwrap()];
        let mut parents = vec![None];
        for &root in &order[..2] {
            let mut path = [prompt.clone(), vec![root]].concat();
            tokens.push(root);
            parents.push(Some(0));
            for _ in 0..2 {
                let next = argmax(&oracle(&path).iter().map(|&x| x as f32).collect::<Vec<_>>());
                parents.push(Some(tokens.len() - 1));
                tokens.push(next);
                path.push(next);
            }
        }
        let tree = Tree::new(parents.clone()).unwrap();
        let base = m.len(id).unwrap();
        let logits = m.verify(g, &[(id, &tokens, tree.clone())]).unwrap().remove(0);
        let mut worst = 0f64;
        for (u, got) in logits.iter().enumerate() {
            // the path to u: the cached head, then u's ancestors and u
            let mut path = vec![u];
            while let Some(p) = parents[*path.last().unwrap()] {
                path.push(p);
            }
            let text: Vec<u32> = prompt[..prompt.len() - 1]
                .iter()
                .copied()
                .chain(path.iter().rev().map(|&i| tokens[i]))
                .collect();
            worst = worst.max(rel_error(got, &oracle(&text)));
        }
        println!("{pos:?}: a tree of {} drafts, worst rel err {worst:.1e}", tokens.len());
        assert!(worst < 1e-5, "{pos:?}: {worst:.2e} (seed {seed})");
        // keep the second root's branch: drop the tree, feed that path, continue
        m.truncate(id, base).unwrap();
        let kept = [tokens[0], tokens[4], tokens[5]];
        let out = m.forward(g, &[(id, &kept)]).unwrap().remove(0);
        let text = [&prompt[..prompt.len() - 1], &kept[..]].concat();
        let e = rel_error(out.last().unwrap(), &oracle(&text));
        assert!(e < 1e-5, "{pos:?}: after keeping a path {e:.2e} (seed {seed})");
    }
}
