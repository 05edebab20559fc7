//! Generation (models/generate.rs) over the paged cache: the logits of every step — prompts
//! fed in chunks, several sequences together — against the f64 oracle's forward of the whole
//! sequence, for each positional scheme; greedy speculative decoding gives exactly the
//! model's own greedy text, whatever the draft.

use crate::common;

use longctx::contract::paged::KvFormat;
use longctx::contract::reference::rel_error;
use longctx::models::generate::{CacheLayout, Generator, SpecStats, argmax, speculate};
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
        for (&id, prompt) in ids.iter().zip(&texts) {
            // chunks of 4: the prompts of 16 and 12 tokens end on whole and cut pages of 3
            let logits = model.prefill(g, id, prompt, 4).unwrap();
            let want = logits_f64(&c, &p64, prompt).unwrap();
            worst = worst.max(rel_error(&logits, want.last().unwrap()));
            last.push(argmax(&logits));
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
        while got.len() < want.len() {
            let new = speculate(g, (&mut m, mid), (&mut d, did), last, 3, &mut stats).unwrap();
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
