//! The GPT on the GPU (models/gpt_gpu.rs) against the f64 oracle (models/gpt.rs): the loss of
//! a forward, and every parameter tensor's gradient against central finite differences of
//! the oracle's loss, for each positional scheme, at odd sizes (T = 9, two sequences).

use crate::common;

use longctx::models::gpt::{GptConfig, Params, PosScheme, inputs_and_targets};
use longctx::models::gpt_gpu::{GptGpu, gradient_check, gradient_check_on};
use rand::{Rng, SeedableRng, rngs::StdRng};

const SCHEMES: [PosScheme; 4] = [PosScheme::None, PosScheme::Sinusoidal, PosScheme::Rope, PosScheme::Alibi];

fn tokens(rng: &mut StdRng, batch: usize, seq: usize) -> Vec<u32> {
    // bytes from a small alphabet, so tokens repeat (the embedding gradient sums rows)
    (0..batch * (seq + 1)).map(|_| b"etaoin shrdlu"[rng.random_range(0..13)] as u32).collect()
}

#[test]
fn the_whole_model_gradient_matches_finite_differences_of_the_oracle() {
    let g = common::gpu();
    let seed = common::seed();
    for pos in SCHEMES {
        // two blocks, two heads of 8, two sequences of 9 tokens: 12 coordinates per tensor
        let c = GptConfig::bytes(16, 2, 2, pos);
        let check = gradient_check(g, c, 2, 9, seed, 12).unwrap();
        for (name, n, e) in &check.tensors {
            println!("{pos:?} {name:>14}: {n} coordinates, rel err {e:.1e}");
        }
        let (got, want) = check.loss;
        println!("{pos:?}: loss {got:.6} (oracle {want:.6}), worst rel err {:.1e}", check.worst());
        assert_eq!(check.tensors.len(), 1 + 2 * 10 + 1, "every tensor checked");
        assert!(check.worst() < 1e-4, "{pos:?}: {check:?} (seed {seed})");
    }
}

/// Evaluation-time choices through the whole model: RoPE rescaled (YaRN, NTK-aware) and a
/// window with sinks (StreamingLLM) — the loss and every gradient against finite differences
/// of the oracle, which applies the same rules in f64; each changes the loss.
#[test]
fn rope_scaling_and_a_window_with_sinks_match_the_oracle_through_the_model() {
    use longctx::contract::positions::RopeScaling;
    use longctx::models::gpt::SinkWindow;
    let g = common::gpu();
    let seed = common::seed();
    let plain = GptConfig::bytes(16, 2, 2, PosScheme::Rope);
    let base = gradient_check(g, plain, 2, 9, seed, 6).unwrap().loss.1;
    for c in [
        GptConfig { rope_scaling: RopeScaling::Yarn { factor: 4.0, original: 4 }, ..plain },
        GptConfig { rope_scaling: RopeScaling::Ntk { factor: 8.0 }, ..plain },
        GptConfig { window: Some(SinkWindow { window: 2, sinks: 2 }), ..plain },
        GptConfig { window: Some(SinkWindow { window: 3, sinks: 0 }), pos: PosScheme::Alibi, ..plain },
    ] {
        let check = gradient_check(g, c, 2, 9, seed, 6).unwrap();
        let (got, want) = check.loss;
        println!(
            "{} {:?}: loss {got:.6} (oracle {want:.6}; plain RoPE {base:.6}), worst rel err {:.1e}",
            c.rope_scaling.name(),
            c.window,
            check.worst()
        );
        assert!(check.worst() < 1e-4, "{c:?}: {check:?} (seed {seed})");
        if c.pos == PosScheme::Rope {
            assert!((want - base).abs() > 1e-6, "{c:?} changes nothing (seed {seed})");
        }
    }
    // what cannot run is refused
    let bad = GptConfig {
        rope_scaling: RopeScaling::Pi { factor: 2.0 },
        ..GptConfig::bytes(16, 2, 2, PosScheme::Alibi)
    };
    assert!(bad.validate().is_err());
    let moba = GptConfig {
        attn: longctx::models::gpt::AttnKind::Moba { block: 4, topk: 2 },
        window: Some(SinkWindow { window: 2, sinks: 1 }),
        ..plain
    };
    assert!(moba.validate().is_err());
    assert_eq!(SinkWindow::parse("64+4").unwrap(), SinkWindow { window: 64, sinks: 4 });
    assert!(SinkWindow::parse("64+x").is_err());
}

/// The model with MoBA in its blocks (the choice on each layer's Q and K — rotated, with RoPE —
/// the block-list kernels forward and backward): its gradient against finite differences of
/// the oracle, which makes the same choice in f64; the choice changes the loss (it is not
/// dense attention).
#[test]
fn the_moba_model_gradient_matches_finite_differences_of_the_oracle() {
    use longctx::models::gpt::AttnKind;
    let g = common::gpu();
    let seed = common::seed();
    for pos in [PosScheme::None, PosScheme::Alibi, PosScheme::Rope] {
        // 17 tokens in blocks of 4: a row reads its own block and the best one of up to 4
        let dense = GptConfig::bytes(16, 2, 2, pos);
        let c = GptConfig { attn: AttnKind::Moba { block: 4, topk: 2 }, ..dense };
        // every token once, as for DSA: with repeats two blocks of the same letters score
        // within f32 rounding of each other and the GPU chose apart from the oracle (seed
        // 11398725897803578300 under ALiBi: loss 5.720410 against 5.720379)
        let letters: Vec<u8> = (0..=255).collect();
        let check = gradient_check_on(g, c, (2, 17), seed, 12, &letters).unwrap();
        let (got, want) = check.loss;
        println!("MoBA {pos:?}: loss {got:.6} (oracle {want:.6}), worst rel err {:.1e}", check.worst());
        assert_eq!(check.tensors.len(), 1 + 2 * 10 + 1, "every tensor checked");
        assert!(check.worst() < 1e-4, "MoBA {pos:?}: {check:?} (seed {seed})");
        // at initialisation attention is nearly uniform, so the choice moves the loss little
        // (2e-4 to 1e-2 relative over 9 seeds), yet far above the f64 oracle's rounding (1e-15)
        let full = gradient_check_on(g, dense, (2, 17), seed, 1, &letters).unwrap().loss.1;
        println!("MoBA {pos:?}: loss {want:.6} against dense {full:.6}");
        assert!(
            (full - want).abs() > 1e-6 * want,
            "MoBA {pos:?}: loss {want} against dense {full} (seed {seed})"
        );
    }
}

/// The GPT with NSA in every block: the compressed, selected and window branches mixed by the
/// learned gates (the GPU's choice, its stages forward and backward, the gates' projection
/// through the sigmoid) against finite differences of the f64 oracle's loss, with each
/// scheme NSA takes; ALiBi is refused with a typed error before anything runs.
#[test]
fn the_nsa_model_gradient_matches_finite_differences_of_the_oracle() {
    use longctx::models::gpt::AttnKind;
    let g = common::gpu();
    let seed = common::seed();
    // 17 tokens: 7 compressed keys (4 wide, stride 2), 5 selection blocks of 4 — the last
    // rows choose 1 of 2 candidates beside their forced 3 — and a window of 3
    let attn = AttnKind::parse("nsa:cmp=4/2,slc=4,top=4,win=3").unwrap();
    for pos in [PosScheme::None, PosScheme::Sinusoidal, PosScheme::Rope] {
        let c = GptConfig { attn, ..GptConfig::bytes(16, 2, 2, pos) };
        let check = gradient_check(g, c, 2, 17, seed, 12).unwrap();
        let (got, want) = check.loss;
        println!("NSA {pos:?}: loss {got:.6} (oracle {want:.6}), worst rel err {:.1e}", check.worst());
        // the blocks' tensors, the final LayerNorm, the embedding and two gate tensors a block
        assert_eq!(check.tensors.len(), 1 + 2 * 10 + 1 + 2 * 2, "every tensor checked");
        assert!(check.tensors.iter().any(|t| t.0.ends_with("w_gate")), "{check:?}");
        assert!(check.worst() < 1e-4, "NSA {pos:?}: {check:?} (seed {seed})");
    }
    let alibi = GptConfig { attn, ..GptConfig::bytes(16, 2, 2, PosScheme::Alibi) };
    let err = GptGpu::new(g, alibi, 1, 17).err().expect("NSA with ALiBi is refused").to_string();
    assert!(err.contains("ALiBi"), "{err}");
}

/// The GPT with DSA in every block: the indexer's projections (qI, kI, w from LN1's output),
/// the GPU's choice and the attention over it, flash's backward on the chosen grid, and the
/// indexer's gradients from the warm-up alignment (detached from the model) — the model's
/// tensors against finite differences of the f64 oracle's next-token loss, the indexer's
/// against those of its alignment objective, with each scheme DSA takes.
#[test]
fn the_dsa_model_gradient_matches_finite_differences_of_the_oracle() {
    use longctx::models::gpt::AttnKind;
    let g = common::gpu();
    let seed = common::seed();
    // 17 tokens, each row reading its 5 best keys of up to 17 by an indexer of 2 heads of 4
    let attn = AttnKind::parse("dsa:topk=3,heads=4,dim=4").unwrap();
    for pos in [PosScheme::None, PosScheme::Sinusoidal, PosScheme::Rope] {
        let c = GptConfig { attn, ..GptConfig::bytes(16, 2, 2, pos) };
        // every token once: no two rows alike, so no near-ties at the choice's boundary (with
        // repeats, RoPE's rows of one token differ slightly after a block and a boundary tie
        // within f32 rounding made the GPU choose apart from the oracle)
        let letters: Vec<u8> = (0..=255).collect();
        let check = gradient_check_on(g, c, (2, 17), seed, 12, &letters).unwrap();
        let (got, want) = check.loss;
        println!(
            "DSA {pos:?}: loss {got:.6} (oracle {want:.6}), worst rel err {:.1e}, {} coordinates at kinks",
            check.worst(),
            check.kinks
        );
        // the blocks' tensors, the final LayerNorm, the embedding and six indexer tensors a block
        assert_eq!(check.tensors.len(), 1 + 2 * 10 + 1 + 2 * 6, "every tensor checked");
        assert!(check.tensors.iter().any(|t| t.0.ends_with("index.w_k")), "{check:?}");
        assert!(check.worst() < 1e-4, "DSA {pos:?}: {check:?} (seed {seed})");
        // a choice that flips within the step, or a ReLU, leaves a few coordinates unchecked
        let checked: usize = check.tensors.iter().map(|t| t.1).sum();
        assert!(check.kinks * 10 <= checked, "DSA {pos:?}: {check:?} (seed {seed})");
    }
    let alibi = GptConfig { attn, ..GptConfig::bytes(16, 2, 2, PosScheme::Alibi) };
    let err = GptGpu::new(g, alibi, 1, 17).err().expect("DSA with ALiBi is refused").to_string();
    assert!(err.contains("ALiBi"), "{err}");
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
    let (inputs, targets) = inputs_and_targets(&tokens(&mut rng, batch, seq), seq);
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
        tasks: Default::default(),
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
