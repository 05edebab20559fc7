//! Attention mods (score_mod / mask_mod in WGSL) in the flash forward, against the oracle
//! evaluating the same rules in Rust; the built-in rules and the same rules as mods give
//! identical results; a mask_mod's block map skips what the built-in mask skips.

use crate::common;

use std::sync::Arc;

use longctx::contract::mask::Mask;
use longctx::contract::mods::{At, Mods, Named, RuleFns};
use longctx::{Alibi, Attention, AttnShape, AttnSpec, DeviceTensors, Kernel, Window};

const BOUND: f64 = 1e-5;

fn shape(b: usize, h: usize, hkv: usize, n: usize, m: usize, d: usize) -> AttnShape {
    AttnShape { batch: b, heads: h, kv_heads: hkv, n, m, head_dim: d }
}

/// O and LSE of `spec` through flash.
fn run(spec: &AttnSpec, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let g = common::gpu();
    let (q, k, v) = common::inputs(spec, seed);
    let attn = Attention::new(g, Kernel::Flash, spec).unwrap();
    let io = DeviceTensors::upload(g, spec, &q, &k, &v).unwrap();
    io.poison(g);
    let mut enc = g.device.create_command_encoder(&Default::default());
    attn.encode(g, &mut enc, &io.buffers()).unwrap();
    g.queue.submit([enc.finish()]);
    let out = io.read(g).unwrap();
    (out.o, out.lse)
}

#[test]
fn named_mods_match_the_oracle() {
    // GQA, N ≠ M both ways (N > M causal leaves rows with no visible key), odd sizes
    let g = common::gpu();
    let seed = common::seed();
    let mut worst = Vec::new();
    // T5: a [4, 32] table; M = 300 reaches every bucket (|kv − p| up to 299)
    let t5: Arc<Vec<f32>> = Arc::new(
        (0..4 * longctx::contract::mods::T5_BUCKETS).map(|i| ((i * 37) % 11) as f32 * 0.2 - 1.0).collect(),
    );
    for text in [
        "causal",
        "window=9",
        "alibi",
        "softcap=2",
        "prefix=11",
        "sinks=3,window=7",
        "dilated=20,dilation=3",
        "t5",
    ] {
        let mut e = 0f64;
        for sh in [shape(2, 4, 2, 77, 300, 64), shape(1, 4, 1, 100, 45, 32)] {
            let mods = match text {
                "t5" => Named::T5(t5.clone()).mods(),
                _ => Named::parse(text, sh.heads).unwrap().mods(),
            };
            let spec = AttnSpec::new(sh).mods(Some(mods));
            let attn = Attention::new(g, Kernel::Flash, &spec).unwrap();
            let err = common::check_kernel(&attn, seed, BOUND);
            e = e.max(err.o).max(err.lse);
        }
        worst.push(format!("{text}: {e:.1e}"));
    }
    // combined with built-in rules: softcap over causal + ALiBi, sinks over a sparse mask
    let softcap = Named::parse("softcap=3", 4).unwrap().mods();
    let spec =
        AttnSpec::new(shape(1, 4, 2, 61, 93, 64)).causal(true).alibi(Alibi::Standard).mods(Some(softcap));
    let e = common::check_kernel(&Attention::new(g, Kernel::Flash, &spec).unwrap(), seed, BOUND);
    worst.push(format!("softcap=3 + causal + alibi: {:.1e}", e.o.max(e.lse)));
    println!("named mods, worst rel err (O, LSE): {}", worst.join("; "));
}

#[test]
fn built_in_rules_and_the_same_rules_as_mods_are_identical() {
    let seed = common::seed();
    let sh = shape(1, 4, 2, 130, 201, 64);
    for (built_in, named) in [
        (AttnSpec::new(sh).causal(true), "causal"),
        (AttnSpec::new(sh).causal(true).window(Some(Window::new(37, 0))), "window=37"),
        (AttnSpec::new(sh).alibi(Alibi::Standard), "alibi"),
    ] {
        let as_mod = AttnSpec::new(sh).mods(Some(Named::parse(named, sh.heads).unwrap().mods()));
        let (a, b) = (run(&built_in, seed), run(&as_mod, seed));
        assert!(a == b, "{named}: built-in and mod differ (seed {seed})");
    }
}

#[test]
fn a_user_mod_from_a_file_matches_the_same_rule_in_rust() {
    let g = common::gpu();
    let seed = common::seed();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relpos.wgsl");
    // a learned-looking relative bias and a block-diagonal mask with a per-head exception
    std::fs::write(
        &path,
        "fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {\n\
         \x20   let d = f32(i32(q_idx) - i32(kv_idx));\n\
         \x20   return score + 0.25 * sin(0.1 * d) - 0.01 * f32(h);\n\
         }\n\
         fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {\n\
         \x20   return h == 3u || q_idx / 37u == kv_idx / 37u;\n\
         }\n",
    )
    .unwrap();
    let source = std::fs::read_to_string(&path).unwrap();
    let rule = RuleFns {
        score: Some(Box::new(|s, at: At| {
            s + 0.25 * (0.1 * (at.q as f64 - at.kv as f64)).sin() - 0.01 * at.h as f64
        })),
        mask: Some(Box::new(|at: At| at.h == 3 || at.q / 37 == at.kv / 37)),
    };
    let mods = Mods::wgsl(path.to_str().unwrap(), &source).unwrap().with_rule(Arc::new(rule));
    assert_eq!(mods.mask_reads(), (false, true));
    let spec = AttnSpec::new(shape(2, 4, 2, 150, 150, 32)).mods(Some(mods));
    let attn = Attention::new(g, Kernel::Flash, &spec).unwrap();
    let e = common::check_kernel(&attn, seed, BOUND);
    let flash = attn.flash().unwrap();
    println!(
        "user mod from {}: rel err O {:.1e} LSE {:.1e}; block map {} tiles over {} heads, built in {:?}",
        path.display(),
        e.o,
        e.lse,
        flash.block_map().visited(),
        flash.block_map().heads,
        flash.mask_mod_map_time().unwrap()
    );
    assert_eq!(flash.block_map().heads, 4, "mask_mod reads h: one map per head");
}

#[test]
fn a_document_mask_mod_skips_the_tiles_the_built_in_segments_mask_skips() {
    let g = common::gpu();
    let seed = common::seed();
    let n = 300;
    let bounds = [0usize, 41, 97, 170, 171, 260];
    let doc = |i: usize| bounds.iter().filter(|&&b| i >= b).count() as u32 - 1;
    let ids: Vec<u32> = (0..n).map(doc).collect();
    let wgsl_doc: String = bounds[1..].iter().map(|b| format!(" + select(0u, 1u, i >= {b}u)")).collect();
    let source = format!(
        "fn doc(i: u32) -> u32 {{ return 0u{wgsl_doc}; }}\n\
         fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {{ return doc(q_idx) == doc(kv_idx); }}\n"
    );
    let ids2 = ids.clone();
    let rule = RuleFns { score: None, mask: Some(Box::new(move |at: At| ids2[at.q] == ids2[at.kv])) };
    let mods = Mods::wgsl("documents.wgsl", &source).unwrap().with_rule(Arc::new(rule));
    let sh = shape(1, 2, 2, n, n, 64);
    let built_in = AttnSpec::new(sh).mask(Some(Mask::Segments(Arc::new(ids))));
    let as_mod = AttnSpec::new(sh).mods(Some(mods));
    let a = Attention::new(g, Kernel::Flash, &built_in).unwrap();
    let b = Attention::new(g, Kernel::Flash, &as_mod).unwrap();
    let (ma, mb) = (a.flash().unwrap().block_map(), b.flash().unwrap().block_map());
    let full = |m: &longctx::contract::blockmap::BlockMap| {
        m.entries.iter().filter(|&&e| e & longctx::contract::blockmap::FULL != 0).count()
    };
    println!(
        "documents: built-in segments {} tiles ({} full), mask_mod {} tiles ({} full), visible pairs {} / {}",
        ma.visited(),
        full(ma),
        mb.visited(),
        full(mb),
        ma.visible,
        mb.visible
    );
    assert_eq!((ma.visited(), full(ma), ma.visible), (mb.visited(), full(mb), mb.visible));
    common::check_kernel(&b, seed, BOUND);
}

#[test]
fn kernels_without_mods_refuse_them_and_the_oracle_needs_a_rule() {
    let g = common::gpu();
    let mods = Named::Causal.mods();
    let spec = AttnSpec::new(shape(1, 2, 2, 20, 20, 32)).mods(Some(mods));
    let err = Attention::new(g, Kernel::Naive, &spec).err().unwrap();
    assert!(err.to_string().contains("tiled backward"), "{err}");
    assert!(longctx::kernels::attention::backward::Backward::naive(g, &spec).is_err());
    // a score_mod without its gradient: the forward runs, the backward refuses
    let no_grad = Mods::wgsl(
        "s.wgsl",
        "fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 { return 2.0 * score; }",
    )
    .unwrap();
    let spec_ng = AttnSpec::new(shape(1, 2, 2, 20, 20, 32)).mods(Some(no_grad));
    assert!(Attention::new(g, Kernel::Flash, &spec_ng).is_ok());
    let err = longctx::kernels::attention::backward::Backward::new(g, &spec_ng).err().unwrap();
    assert!(err.to_string().contains("score_mod_grad"), "{err}");
    let bare =
        Mods::wgsl("x.wgsl", "fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool { return true; }")
            .unwrap();
    let spec = AttnSpec::new(shape(1, 2, 2, 20, 20, 32)).mods(Some(bare));
    let (q, k, v) = common::inputs(&spec, 1);
    let err = longctx::contract::reference::attention_f64(&spec, &q, &k, &v).unwrap_err();
    assert!(err.to_string().contains("Rust rule"), "{err}");
}

#[test]
fn the_heatmap_draws_the_probabilities_of_mods() {
    // 40 × 40 pixels over N = M = 40: each pixel one (i, j) pair, against the oracle's
    // probabilities under the same rule (sinks + a window as mask_mod, softcap as score_mod)
    use longctx::kernels::heatmap::{HeatView, Heatmap};
    let g = common::gpu();
    let seed = common::seed();
    let mods = Named::parse("sinks=2,window=6", 2).unwrap().mods().and(Named::Softcap(1.5).mods()).unwrap();
    let rule = mods.rule().unwrap().clone();
    let spec = AttnSpec::new(shape(1, 2, 2, 40, 40, 32)).mods(Some(mods));
    let (q, k, v) = common::inputs(&spec, seed);
    let attn = Attention::new(g, Kernel::Flash, &spec).unwrap();
    let io = DeviceTensors::upload(g, &spec, &q, &k, &v).unwrap();
    let mut enc = g.device.create_command_encoder(&Default::default());
    attn.encode(g, &mut enc, &io.buffers()).unwrap();
    g.queue.submit([enc.finish()]);
    let view = HeatView { batch: 0, head: 1, rows: 0..40, cols: 0..40, width: 40, height: 40, mean: false };
    let pixels = Heatmap::new(g, &attn).unwrap().render(g, &attn, &io.buffers(), &view).unwrap();
    let (_, lse) = longctx::contract::reference::attention_f64(&spec, &q, &k, &v).unwrap();
    let (d, scale) = (32, spec.scale_value() as f64);
    let mut worst = 0f64;
    for i in 0..40 {
        for j in 0..40 {
            let at = At { b: 0, h: 1, q: i, kv: j, n: 40, m: 40 };
            let want = if rule.mask(at) {
                let row = 40 + i; // head 1
                let dot: f64 = q[row * d..(row + 1) * d]
                    .iter()
                    .zip(&k[(40 + j) * d..(40 + j + 1) * d])
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum();
                (rule.score(scale * dot, at) - lse[row]).exp()
            } else {
                0.0
            };
            worst = worst.max((pixels[i * 40 + j] as f64 - want).abs());
        }
    }
    println!("heatmap with mods vs oracle probabilities: worst abs err {worst:.2e}");
    assert!(worst < 1e-5, "{worst} (seed {seed})");
}

#[test]
fn the_backward_runs_named_mods_against_the_oracle() {
    // dQ, dK, dV through score_mod (and its gradient) and mask_mod, GQA, N ≠ M, fully masked rows
    use longctx::contract::reference::{attention_backward_f64, rel_error};
    let g = common::gpu();
    let seed = common::seed();
    let mut worst = Vec::new();
    for (text, sh) in [
        ("softcap=1.5", shape(1, 4, 2, 61, 90, 32)),
        ("alibi", shape(2, 2, 1, 45, 45, 64)),
        ("sinks=3,window=9", shape(1, 4, 2, 100, 45, 32)),
        ("dilated=20,dilation=3", shape(1, 2, 2, 70, 70, 32)),
        ("t5", shape(1, 2, 1, 60, 200, 32)),
    ] {
        let mods = match text {
            "t5" => Named::T5(Arc::new((0..2 * 32).map(|i| (i % 7) as f32 * 0.3 - 1.0).collect())).mods(),
            _ => Named::parse(text, sh.heads).unwrap().mods(),
        };
        let spec = AttnSpec::new(sh).mods(Some(mods));
        let (q, k, v) = common::inputs(&spec, seed);
        let d_o = common::random(sh.batch * sh.heads * sh.n * sh.head_dim, &mut {
            use rand::SeedableRng;
            rand::rngs::StdRng::seed_from_u64(seed + 1)
        });
        let bwd = longctx::kernels::attention::backward::Backward::new(g, &spec).unwrap();
        let (_, got) = bwd.run(g, &q, &k, &v, &d_o).unwrap();
        let (dq, dk, dv) = attention_backward_f64(&spec, &q, &k, &v, &d_o).unwrap();
        let e = [rel_error(&got.dq, &dq), rel_error(&got.dk, &dk), rel_error(&got.dv, &dv)];
        assert!(e.iter().all(|&x| x <= BOUND), "{text}: dQ, dK, dV {e:?} (seed {seed})");
        worst.push(format!("{text}: {:.1e}", e.iter().cloned().fold(0.0, f64::max)));
    }
    println!("backward with mods, worst of dQ, dK, dV: {}", worst.join("; "));
}

#[test]
fn mods_read_buffers_given_by_name() {
    // a per-head bias table (f32) and document ids (u32) from buffers, against the same rule
    let g = common::gpu();
    let seed = common::seed();
    let n = 120;
    let ids: Vec<u32> = (0..n as u32).map(|i| i / 50).collect();
    let bias = [0.5f64, -0.25, 1.0, 0.0];
    let source = "@group(1) @binding(0) var<storage, read> head_bias: array<f32>;\n\
                  @group(1) @binding(3) var<storage, read> doc: array<u32>;\n\
                  fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 { return score + head_bias[h]; }\n\
                  fn score_mod_grad(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 { return 1.0; }\n\
                  fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool { return doc[q_idx] == doc[kv_idx]; }\n";
    let mods = Mods::wgsl("buffers.wgsl", source).unwrap();
    assert_eq!(mods.buffers().len(), 2);
    // a buffer left without values, and values that do not fit its type, are errors
    let spec = AttnSpec::new(shape(1, 4, 2, n, n, 32)).mods(Some(mods.clone()));
    let err = Attention::new(g, Kernel::Flash, &spec).err().unwrap();
    assert!(err.to_string().contains("no values were given"), "{err}");
    assert!(mods.clone().with_buffer("doc", &[1.5]).is_err());
    assert!(mods.clone().with_buffer("nope", &[1.0]).is_err());
    let ids2 = ids.clone();
    let rule = RuleFns {
        score: Some(Box::new(move |s, at: At| s + bias[at.h] as f32 as f64)),
        mask: Some(Box::new(move |at: At| ids2[at.q] == ids2[at.kv])),
    };
    let mods = mods
        .with_buffer("head_bias", &bias)
        .unwrap()
        .with_buffer("doc", &ids.iter().map(|&x| x as f64).collect::<Vec<_>>())
        .unwrap()
        .with_rule(Arc::new(rule));
    let spec = AttnSpec::new(shape(1, 4, 2, n, n, 32)).causal(true).mods(Some(mods));
    let attn = Attention::new(g, Kernel::Flash, &spec).unwrap();
    let e = common::check_kernel(&attn, seed, BOUND);
    // the backward reads them too
    let (q, k, v) = common::inputs(&spec, seed);
    let d_o = common::random(4 * n * 32, &mut {
        use rand::SeedableRng;
        rand::rngs::StdRng::seed_from_u64(seed + 2)
    });
    let (_, got) = longctx::kernels::attention::backward::Backward::new(g, &spec)
        .unwrap()
        .run(g, &q, &k, &v, &d_o)
        .unwrap();
    let (dq, _, _) = longctx::contract::reference::attention_backward_f64(&spec, &q, &k, &v, &d_o).unwrap();
    let edq = longctx::contract::reference::rel_error(&got.dq, &dq);
    assert!(edq <= BOUND, "dQ {edq:.2e} (seed {seed})");
    println!("mods with buffers: O {:.1e}, LSE {:.1e}, dQ {edq:.1e}", e.o, e.lse);
    // the named document mod reads its ids from a buffer and skips what segments skip
    let sh = shape(1, 2, 2, n, n, 64);
    let named = Named::Documents(Arc::new(ids.clone())).mods();
    let a = Attention::new(g, Kernel::Flash, &AttnSpec::new(sh).mask(Some(Mask::Segments(Arc::new(ids)))))
        .unwrap();
    let b = Attention::new(g, Kernel::Flash, &AttnSpec::new(sh).mods(Some(named))).unwrap();
    assert_eq!(a.flash().unwrap().block_map().visited(), b.flash().unwrap().block_map().visited());
    common::check_kernel(&b, seed, BOUND);
}

/// A score_mod that loops `40 + (kv_idx & 1)` times per score, the same rule in Rust.
fn looping_score_mod(per_score: u32) -> Mods {
    let wgsl = format!(
        "fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {{
    var s = score;
    for (var i = 0u; i < {per_score}u + (kv_idx & 1u); i++) {{
        s = s * 0.5 + 0.5 * score;
    }}
    return s;
}}"
    );
    // s stays `score` (a fixed point of the loop), whatever the trip count
    Mods::wgsl("looping.wgsl", &wgsl)
        .unwrap()
        .with_rule(Arc::new(RuleFns { score: Some(Box::new(|s, _| s)), mask: None }))
}

#[test]
fn mods_whose_loops_fit_the_budget_match_the_oracle() {
    // a few loop steps per score at a size where kernel and mods together stay under
    // llvmpipe's cap: the same numbers as the rule, the loops counted but never cut
    let g = common::gpu();
    let seed = common::seed();
    let spec = AttnSpec::new(shape(1, 2, 1, 37, 90, 16)).causal(true).mods(Some(looping_score_mod(3)));
    let e = common::check_kernel(&Attention::new(g, Kernel::Flash, &spec).unwrap(), seed, BOUND);
    assert!(e.o <= BOUND, "O rel err {:.2e} (seed {seed})", e.o);
}

#[test]
fn mods_whose_loops_run_out_are_an_error_not_a_number() {
    // llvmpipe leaves a loop nest after 65 535 iterations, the mods' counted in: at M = 4096
    // a score_mod looping 40 times per score once returned O wrong in every row, exit 0.
    // Now the passes leave the mods half the cap, and what does not fit is refused.
    let g = common::gpu();
    let seed = common::seed();
    let spec = AttnSpec::new(shape(1, 1, 1, 16, 4096, 16)).mods(Some(looping_score_mod(40)));
    let (q, k, v) = common::inputs(&spec, seed);
    match Attention::new(g, Kernel::Flash, &spec).unwrap().run(g, &q, &k, &v) {
        Ok(out) => {
            let (exact, _) = longctx::contract::reference::attention_f64(&spec, &q, &k, &v).unwrap();
            let e = longctx::contract::reference::rel_error(&out.o, &exact);
            assert!(e <= BOUND, "40 steps per score at M = 4096: O rel err {e:.2e} (seed {seed})");
            println!("40 steps per score at M = 4096: right (rel err {e:.2e})");
        }
        Err(e) => {
            assert!(matches!(e, longctx::Error::ModSteps { kernel: "flash", .. }), "{e}");
            println!("40 steps per score at M = 4096: {e}");
        }
    }
    // far more than one invocation may spend: always refused
    let spec = AttnSpec::new(shape(1, 1, 1, 16, 300, 16)).mods(Some(looping_score_mod(5000)));
    let (q, k, v) = common::inputs(&spec, seed);
    let attn = Attention::new(g, Kernel::Flash, &spec).unwrap();
    let Err(err) = attn.run(g, &q, &k, &v) else { panic!("the mods' loops run past their budget") };
    assert!(matches!(err, longctx::Error::ModSteps { kernel: "flash", .. }), "{err}");
    println!("{err}");
    // a mod that never ends: refused as well, not a hang and not plain attention
    let endless = Mods::wgsl(
        "endless.wgsl",
        "fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {
    var s = score;
    var i = 0u;
    loop {
        if kv_idx > 4000000000u { break; }
        i++;
        s += f32(i & 1u) * 0.0;
    }
    return s;
}",
    )
    .unwrap();
    let spec = AttnSpec::new(shape(1, 1, 1, 5, 9, 8)).mods(Some(endless));
    let (q, k, v) = common::inputs(&spec, seed);
    let Err(err) = Attention::new(g, Kernel::Flash, &spec).unwrap().run(g, &q, &k, &v) else {
        panic!("refused")
    };
    assert!(matches!(err, longctx::Error::ModSteps { .. }), "{err}");
}

#[test]
fn a_looping_mask_mod_that_runs_out_refines_no_map() {
    // `mask --mask-mod` with an always-true mask_mod looping past llvmpipe's cap once
    // reported 72 % of dense instead of 100 %: the refined map is refused instead (64 × 32
    // pairs per invocation, 41 steps each, past what the cap leaves)
    let g = common::gpu();
    let mask = Mods::wgsl(
        "looping_mask.wgsl",
        "fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {
    var x = q_idx;
    for (var i = 0u; i < 40u + (kv_idx & 1u); i++) {
        x = x ^ i;
    }
    return x == x;
}",
    )
    .unwrap();
    let spec = AttnSpec::new(shape(1, 1, 1, 2048, 2048, 16)).mods(Some(mask.clone()));
    let map = longctx::contract::blockmap::BlockMap::build(&spec, 64, 32).unwrap();
    let Err(err) = longctx::kernels::mods::refine(g, &spec, &mask, &map) else { panic!("refused") };
    assert!(matches!(err, longctx::Error::ModSteps { kernel: "mod_map", .. }), "{err}");
}

#[test]
fn a_score_mod_returning_nan_or_plus_inf_is_an_error_and_minus_inf_masks() {
    // once: NaN scores silently masked their keys (all NaN: O = 0, exit 0), and +inf blamed
    // --scale; −inf is how a score_mod masks a key and must keep working
    let g = common::gpu();
    let seed = common::seed();
    let spec_with = |body: &str| {
        let m = Mods::wgsl(
            "bad_score.wgsl",
            &format!(
                "fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {{\n{body}\n}}"
            ),
        )
        .unwrap();
        AttnSpec::new(shape(1, 2, 1, 21, 40, 16)).mods(Some(m))
    };
    for (what, body) in [
        ("NaN", "    if kv_idx == 7u { return sqrt(score - score - 1.0); }\n    return score;"),
        ("+inf", "    if kv_idx == 7u { return bitcast<f32>(0x7f800000u); }\n    return score;"),
    ] {
        let spec = spec_with(body);
        let (q, k, v) = common::inputs(&spec, seed);
        let Err(err) = Attention::new(g, Kernel::Flash, &spec).unwrap().run(g, &q, &k, &v) else {
            panic!("a score_mod returning {what} must fail")
        };
        assert!(matches!(err, longctx::Error::ModScore { kernel: "flash", .. }), "{what}: {err}");
    }
    // −inf masks key 7 (odd ones, with the rule beside it)
    let m = Mods::wgsl(
        "mask_by_score.wgsl",
        "fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {\n    if kv_idx % 7u == 3u { return bitcast<f32>(0xff800000u); }\n    return score;\n}",
    )
    .unwrap()
    .with_rule(Arc::new(RuleFns {
        score: Some(Box::new(|s, at: At| if at.kv % 7 == 3 { f64::NEG_INFINITY } else { s })),
        mask: None,
    }));
    let spec = AttnSpec::new(shape(1, 2, 1, 21, 40, 16)).mods(Some(m));
    let e = common::check_kernel(&Attention::new(g, Kernel::Flash, &spec).unwrap(), seed, BOUND);
    assert!(e.o <= BOUND, "−inf scores: O rel err {:.2e} (seed {seed})", e.o);
}

#[test]
fn named_mods_compose_forward_and_backward() {
    // once: `--mod alibi --mod softcap=30` was refused ("combine them in one file") and
    // `--mod documents=… --mod t5=…` panicked on two tables at binding 0
    use longctx::contract::reference::{attention_backward_f64, rel_error};
    let g = common::gpu();
    let seed = common::seed();
    let sh = shape(1, 4, 2, 53, 90, 32);
    let t5: Arc<Vec<f32>> = Arc::new((0..4 * 32).map(|i| ((i * 13) % 9) as f32 * 0.25 - 1.0).collect());
    let docs: Arc<Vec<u32>> = Arc::new((0..sh.m as u32).map(|i| i / 31).collect());
    let composed = [
        vec![Named::Alibi(4), Named::Softcap(2.0), Named::Window(40)],
        vec![Named::Documents(docs), Named::T5(t5), Named::Causal],
        vec![Named::Causal, Named::Sinks { sinks: 3, window: 9 }, Named::Alibi(4), Named::Alibi(4)],
    ];
    for list in composed {
        let spec = AttnSpec::new(sh).mods(Some(Named::compose(&list).unwrap()));
        let e = common::check_kernel(&Attention::new(g, Kernel::Flash, &spec).unwrap(), seed, BOUND);
        assert!(e.o.max(e.lse) <= BOUND, "{list:?}: {e:?} (seed {seed})");
        // the backward: the chained score's gradient (softcap after ALiBi) and ANDed masks
        let (q, k, v) = common::inputs(&spec, seed);
        let d_o = common::random(sh.batch * sh.heads * sh.n * sh.head_dim, &mut {
            use rand::SeedableRng;
            rand::rngs::StdRng::seed_from_u64(seed + 1)
        });
        let bwd = longctx::kernels::attention::backward::Backward::new(g, &spec).unwrap();
        let (_, got) = bwd.run(g, &q, &k, &v, &d_o).unwrap();
        let (dq, dk, dv) = attention_backward_f64(&spec, &q, &k, &v, &d_o).unwrap();
        let e = [rel_error(&got.dq, &dq), rel_error(&got.dk, &dk), rel_error(&got.dv, &dv)];
        assert!(e.iter().all(|&x| x <= BOUND), "{list:?}: dQ, dK, dV {e:?} (seed {seed})");
    }
}

#[test]
fn a_mod_may_use_the_names_a_kernel_uses() {
    // once: a mod declaring `BR`, `tile_visible` or a struct `Contract` compiled alone and
    // then failed inside the kernel at the engine's line numbers; its names are its own now
    let g = common::gpu();
    let seed = common::seed();
    let m = Mods::wgsl(
        "names.wgsl",
        "const BR: f32 = 0.5;\n\
         struct Contract { scale: f32 }\n\
         fn tile_visible(x: f32) -> f32 { let c = Contract(BR); return x * c.scale; }\n\
         fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 { return tile_visible(score); }\n",
    )
    .unwrap()
    .with_rule(Arc::new(RuleFns { score: Some(Box::new(|s, _| s * 0.5)), mask: None }));
    let spec = AttnSpec::new(shape(1, 2, 1, 37, 70, 32)).causal(true).mods(Some(m));
    let e = common::check_kernel(&Attention::new(g, Kernel::Flash, &spec).unwrap(), seed, BOUND);
    assert!(e.o.max(e.lse) <= BOUND, "{e:?} (seed {seed})");
}
