//! The GPT on the GPU (models/gpt_gpu.rs) against the f64 oracle (models/gpt.rs): the loss of
//! a forward, and every parameter tensor's gradient against central finite differences of
//! the oracle's loss, for each positional scheme, at odd sizes (T = 9, two sequences).

mod common;

use longctx::contract::reference::rel_error;
use longctx::models::gpt::{GptConfig, Params, PosScheme, loss_f64};
use longctx::models::gpt_gpu::GptGpu;
use rand::{Rng, SeedableRng, rngs::StdRng};

const SCHEMES: [PosScheme; 4] = [PosScheme::None, PosScheme::Sinusoidal, PosScheme::Rope, PosScheme::Alibi];

/// GPT-2's initialisation with noise added, so every path carries a gradient well above f32
/// rounding (LayerNorm γ away from 1, biases away from 0, attention away from uniform).
fn params(c: &GptConfig, rng: &mut StdRng) -> Vec<f32> {
    let mut p = Params::init(*c, rng.random()).unwrap().data;
    p.iter_mut().for_each(|x| *x += rng.random_range(-0.25f32..0.25));
    p
}

fn tokens(rng: &mut StdRng, batch: usize, seq: usize) -> Vec<u32> {
    // bytes from a small alphabet, so tokens repeat (the embedding gradient sums rows)
    (0..batch * (seq + 1)).map(|_| b"etaoin shrdlu"[rng.random_range(0..13)] as u32).collect()
}

/// (inputs, targets) of `batch` sequences of `seq + 1` tokens.
fn split(tokens: &[u32], seq: usize) -> (Vec<u32>, Vec<u32>) {
    tokens.chunks_exact(seq + 1).fold((vec![], vec![]), |(mut i, mut t), s| {
        i.extend(&s[..seq]);
        t.extend(&s[1..]);
        (i, t)
    })
}

#[test]
fn the_whole_model_gradient_matches_finite_differences_of_the_oracle() {
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let (batch, seq) = (2, 9);
    for pos in SCHEMES {
        let c = GptConfig::bytes(16, 2, 2, pos);
        let p = params(&c, &mut rng);
        let toks = tokens(&mut rng, batch, seq);
        let (inputs, targets) = split(&toks, seq);
        let model = GptGpu::new(g, c, batch, seq).unwrap();
        model.load(g, &p).unwrap();
        model.set_tokens(g, &inputs, &targets).unwrap();
        let mut enc = g.device.create_command_encoder(&Default::default());
        model.encode_forward(g, &mut enc, 1.0 / (batch * seq) as f32).unwrap();
        model.encode_backward(g, &mut enc).unwrap();
        g.queue.submit([enc.finish()]);
        let losses = model.losses(g).unwrap();
        let grads = model.grads(g).unwrap();

        let p64: Vec<f64> = p.iter().map(|&x| x as f64).collect();
        let want = loss_f64(&c, &p64, &toks, batch).unwrap();
        let got = losses.iter().map(|&x| x as f64).sum::<f64>() / (batch * seq) as f64;
        assert!((got - want).abs() <= 1e-5 * want, "{pos:?} loss {got} vs oracle {want} (seed {seed})");

        // per tensor: up to 12 coordinates, spread over it
        let h = 1e-4;
        let mut worst = 0f64;
        for (name, range) in model.tensor_ranges() {
            let step = (range.len() / 12).max(1);
            let idx: Vec<usize> = range.clone().step_by(step).collect();
            let fd: Vec<f64> = idx
                .iter()
                .map(|&i| {
                    let (mut up, mut down) = (p64.clone(), p64.clone());
                    up[i] += h;
                    down[i] -= h;
                    (loss_f64(&c, &up, &toks, batch).unwrap() - loss_f64(&c, &down, &toks, batch).unwrap())
                        / (2.0 * h)
                })
                .collect();
            let gpu: Vec<f32> = idx.iter().map(|&i| grads[i]).collect();
            let e = rel_error(&gpu, &fd);
            println!("{pos:?} {name:>14}: {} coordinates, rel err {e:.1e}", idx.len());
            assert!(
                e < 1e-4,
                "{pos:?} {name}: gradient rel err {e:.2e} (seed {seed})\n gpu {gpu:?}\n fd {fd:?}"
            );
            worst = worst.max(e);
        }
        println!("{pos:?}: loss {got:.6} (oracle {want:.6}), worst tensor gradient rel err {worst:.1e}");
    }
}

#[test]
fn training_steps_on_a_fixed_batch_lower_the_loss() {
    use longctx::kernels::train::AdamW;
    let g = common::gpu();
    let seed = common::seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let (batch, seq) = (2, 13);
    let c = GptConfig::bytes(16, 2, 1, PosScheme::Alibi);
    let model = GptGpu::new(g, c, batch, seq).unwrap();
    model.load(g, &Params::init(c, 7).unwrap().data).unwrap();
    let (inputs, targets) = split(&tokens(&mut rng, batch, seq), seq);
    model.set_tokens(g, &inputs, &targets).unwrap();
    let mut losses = Vec::new();
    for step in 1..=12 {
        let mut enc = g.device.create_command_encoder(&Default::default());
        model.encode_forward(g, &mut enc, 1.0 / (batch * seq) as f32).unwrap();
        model.encode_backward(g, &mut enc).unwrap();
        model.encode_step(g, &mut enc, &AdamW { lr: 1e-2, step, ..AdamW::default() }).unwrap();
        g.queue.submit([enc.finish()]);
        losses.push(model.losses(g).unwrap().iter().sum::<f32>() / (batch * seq) as f32);
    }
    println!("losses {losses:?}");
    assert!(losses.iter().all(|l| l.is_finite()));
    // from about ln 256 = 5.55 on a 13-letter alphabet the loss falls fast
    assert!(losses[11] < losses[0] - 1.0, "loss {} → {} (seed {seed})", losses[0], losses[11]);
    assert!(model.grad_norm(g).unwrap() > 0.0);
}

#[test]
fn a_resumed_run_matches_an_uninterrupted_one_and_checkpoints_round_trip() {
    use longctx::models::training::{Checkpoint, Corpus, TrainConfig, train};
    let g = common::gpu();
    let dir = tempfile::tempdir().unwrap();
    let text: Vec<u8> = b"In the beginning God created the heaven and the earth.\n".repeat(40);
    let corpus = Corpus::split(text).unwrap();
    let config = TrainConfig {
        model: GptConfig::bytes(16, 2, 1, PosScheme::Rope),
        batch: 2,
        seq: 11,
        steps: 6,
        lr: 3e-3,
        warmup: 2,
        min_lr_ratio: 0.1,
        weight_decay: 0.1,
        max_norm: 1.0,
        betas: (0.9, 0.95),
        seed: 5,
        checkpoint_every: 3,
        log_every: 1,
        corpus_sha256: corpus.sha256.clone(),
    };
    let (straight, resumed) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
    let all = train(g, &corpus, &config, None, 6, &straight, |_| {}).unwrap();
    assert_eq!((all.step, all.log.len()), (6, 6));
    // interrupted after step 4 (its last checkpoint: step 3), resumed from the file
    let mut seen = Vec::new();
    train(g, &corpus, &config, None, 4, &resumed, |r| seen.push(r.step)).unwrap();
    assert_eq!(seen, [1, 2, 3, 4]);
    let mut at = Checkpoint::load(&resumed).unwrap();
    assert_eq!(at.step, 4, "stopping writes a checkpoint");
    // as if the process had died before step 4's checkpoint: resume from step 3's state
    let three = dir.path().join("three.safetensors");
    train(g, &corpus, &config, None, 3, &three, |_| {}).unwrap();
    at = Checkpoint::load(&three).unwrap();
    assert_eq!(at.step, 3);
    let end = train(g, &corpus, &config, Some(at), 6, &resumed, |_| {}).unwrap();
    assert_eq!(end.params, all.params, "resuming loses nothing and changes nothing");
    assert_eq!(end.log.iter().map(|r| r.step).collect::<Vec<_>>(), [1, 2, 3, 4, 5, 6]);
    let loaded = Checkpoint::load(&straight).unwrap();
    assert_eq!(loaded.params, all.params);
    assert_eq!(loaded.moments, all.moments);
    assert_eq!(loaded.config, config);
    assert_eq!(loaded.log.len(), 6);
    // a checkpoint of another run is refused
    let other = TrainConfig { lr: 1e-3, ..config.clone() };
    let e = train(g, &corpus, &other, Some(loaded), 6, &resumed, |_| {}).unwrap_err();
    assert!(e.to_string().contains("differs"), "{e}");
}
