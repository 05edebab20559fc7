//! Incremental decoding against the oracle: every step equals one causal attention over the
//! whole sequence so far, for MHA/GQA/MQA, ALiBi, windows, rings and any split count.

use crate::common;

use crate::common::{gpu, random};
use longctx::contract::reference::{attention_f64, rel_error};
use longctx::kernels::attention::decode::{DecodeKernel, Decoder, DecoderConfig};
use longctx::{Alibi, Error};
use rand::{SeedableRng, rngs::StdRng};

const BOUND: f64 = 1e-5;

/// Host history of K and V, `[Hkv, len, D]`, grown as tokens arrive.
struct History {
    hkv: usize,
    d: usize,
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl History {
    fn new(hkv: usize, d: usize) -> Self {
        Self { hkv, d, k: vec![Vec::new(); hkv], v: vec![Vec::new(); hkv] }
    }
    fn push(&mut self, k: &[f32], v: &[f32], t: usize) {
        for h in 0..self.hkv {
            self.k[h].extend_from_slice(&k[h * t * self.d..(h + 1) * t * self.d]);
            self.v[h].extend_from_slice(&v[h * t * self.d..(h + 1) * t * self.d]);
        }
    }
    fn flat(&self) -> (Vec<f32>, Vec<f32>) {
        (self.k.concat(), self.v.concat())
    }
}

/// Both attend kernels, whatever the adapter's profile prefers.
const KERNELS: [DecodeKernel; 2] = [DecodeKernel::Staged, DecodeKernel::Lanes];

/// Prefills `prompt` tokens, then decodes `steps` steps of `t` tokens; checks each step, with
/// each attend kernel.
fn run(cfg: DecoderConfig, prompt: usize, steps: usize, t: usize, seed: u64) -> f64 {
    KERNELS
        .into_iter()
        .map(|kernel| run_kernel(DecoderConfig { kernel, ..cfg.clone() }, prompt, steps, t, seed))
        .fold(0.0, f64::max)
}

fn run_kernel(cfg: DecoderConfig, prompt: usize, steps: usize, t: usize, seed: u64) -> f64 {
    let g = gpu();
    let (h, hkv, d) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut dec = Decoder::new(g, cfg).unwrap();
    let mut hist = History::new(hkv, d);
    let (k, v) = (random(hkv * prompt * d, &mut rng), random(hkv * prompt * d, &mut rng));
    dec.prefill(g, 0, &k, &v).unwrap();
    hist.push(&k, &v, prompt);
    let mut worst = 0f64;
    for step in 0..steps {
        let q = random(h * t * d, &mut rng);
        let (k, v) = (random(hkv * t * d, &mut rng), random(hkv * t * d, &mut rng));
        dec.step(g, 0, &q, &k, &v).unwrap();
        hist.push(&k, &v, t);
        let out = dec.output(g).unwrap();
        let spec = dec.equivalent_spec(0);
        let (kf, vf) = hist.flat();
        let (o_ref, lse_ref) = attention_f64(&spec, &q, &kf, &vf).unwrap();
        let err = rel_error(&out.o, &o_ref).max(rel_error(&out.lse, &lse_ref));
        assert!(
            err <= BOUND,
            "step {step}: rel err {err:.2e} (seed {seed}, {:?}, {} splits, spec {spec:?})",
            dec.kernel(),
            dec.splits()
        );
        worst = worst.max(err);
    }
    worst
}

#[test]
fn mha_gqa_mqa_step_by_step_equal_full_attention() {
    let seed = common::seed();
    let mut worst = 0f64;
    for hkv in [8, 2, 1] {
        for subgroups in [true, false] {
            let mut cfg = DecoderConfig::new(8, hkv, 64, 300);
            cfg.subgroups = subgroups;
            worst = worst.max(run(cfg, 117, 5, 1, seed));
        }
    }
    println!("decode MHA/GQA/MQA: worst rel err {worst:.2e}");
}

#[test]
fn alibi_window_and_multi_token_steps() {
    let seed = common::seed();
    let mut cfg = DecoderConfig::new(6, 3, 36, 400); // D = 36: 9 vec4 lanes, not a multiple of 8
    cfg.alibi = Alibi::Standard;
    cfg.window = Some(50);
    cfg.max_step_tokens = 3;
    let e1 = run(cfg.clone(), 201, 4, 3, seed);
    cfg.window = None;
    let e2 = run(cfg, 33, 3, 2, seed);
    println!("decode ALiBi + window, multi-token: worst rel err {:.2e}", e1.max(e2));
}

#[test]
fn any_split_count_gives_the_same_answer() {
    let seed = common::seed();
    let mut splits_seen = Vec::new();
    for (chunk, kernel) in [100_000, 261, 76, 8].into_iter().flat_map(|c| KERNELS.map(|k| (c, k))) {
        let mut cfg = DecoderConfig::new(4, 2, 64, 600);
        cfg.chunk = chunk;
        cfg.kernel = kernel;
        let g = gpu();
        let mut dec = Decoder::new(g, cfg.clone()).unwrap();
        let mut rng = StdRng::seed_from_u64(seed);
        let (k, v) = (random(2 * 520 * 64, &mut rng), random(2 * 520 * 64, &mut rng));
        dec.prefill(g, 0, &k, &v).unwrap();
        let q = random(4 * 64, &mut rng);
        let (kn, vn) = (random(2 * 64, &mut rng), random(2 * 64, &mut rng));
        dec.step(g, 0, &q, &kn, &vn).unwrap();
        splits_seen.push(dec.splits());
        let out = dec.output(g).unwrap();
        let mut hist = History::new(2, 64);
        hist.push(&k, &v, 520);
        hist.push(&kn, &vn, 1);
        let (kf, vf) = hist.flat();
        let (o_ref, _) = attention_f64(&dec.equivalent_spec(0), &q, &kf, &vf).unwrap();
        let err = rel_error(&out.o, &o_ref);
        assert!(err <= BOUND, "{kernel:?}, chunk {chunk} ({} splits): {err:.2e} (seed {seed})", dec.splits());
    }
    println!("split counts exercised: {splits_seen:?}");
    assert!(
        splits_seen.contains(&1)
            && splits_seen.contains(&2)
            && splits_seen.contains(&7)
            && splits_seen.iter().any(|&s| s >= 50)
    );
}

#[test]
fn head_dims_that_are_not_a_multiple_of_4() {
    // the cache and the kernels run D padded to a multiple of 4; the caller's rows and the
    // output keep D
    let seed = common::seed();
    let mut worst = 0f64;
    for (d, hkv) in [(1, 2), (3, 1), (6, 4), (37, 2), (127, 1), (255, 4)] {
        let mut cfg = DecoderConfig::new(4, hkv, d, 80);
        cfg.max_step_tokens = 2;
        cfg.alibi = if d % 2 == 1 { Alibi::Standard } else { Alibi::Off };
        worst = worst.max(run(cfg, 23, 3, 2, seed));
    }
    println!("decode odd head dims: worst rel err {worst:.2e}");
}

#[test]
fn ring_buffer_equals_the_window_mask() {
    let seed = common::seed();
    let mut cfg = DecoderConfig::new(4, 1, 32, 65); // window 64 + 1 new token
    cfg.window = Some(64);
    cfg.ring = true;
    // prompt longer than the ring: only the last 65 positions survive, positions absolute
    let err = run(cfg.clone(), 150, 90, 1, seed);
    cfg.alibi = Alibi::Standard;
    let err2 = run(cfg, 20, 70, 1, seed);
    println!("ring vs window mask: worst rel err {:.2e}", err.max(err2));
}

#[test]
fn overflow_and_bad_shapes_are_typed_errors() {
    let g = gpu();
    let mut dec = Decoder::new(g, DecoderConfig::new(2, 1, 32, 10)).unwrap();
    dec.prefill(g, 0, &vec![0.1; 9 * 32], &vec![0.1; 9 * 32]).unwrap();
    dec.step(g, 0, &vec![0.1; 2 * 32], &[0.1; 32], &[0.1; 32]).unwrap();
    let err = dec.step(g, 0, &vec![0.1; 2 * 32], &[0.1; 32], &[0.1; 32]).unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
    assert!(matches!(
        dec.step(g, 0, &[0.1; 5], &[0.1; 32], &[0.1; 32]),
        Err(Error::Length { got: 5, expected: 64, .. })
    ));
    assert!(matches!(Decoder::new(g, DecoderConfig::new(6, 4, 32, 10)), Err(Error::HeadGroups { .. })));
    let mut ring = DecoderConfig::new(2, 1, 32, 10);
    ring.ring = true;
    assert!(Decoder::new(g, ring).is_err(), "ring without a window");
}

#[test]
fn traffic_model_equals_counters_and_mqa_reads_a_fraction() {
    let g = gpu();
    let mut per_variant = Vec::new();
    for (kernel, hkv) in KERNELS.into_iter().flat_map(|k| [8, 2, 1].map(|h| (k, h))) {
        let mut cfg = DecoderConfig::new(8, hkv, 64, 700);
        cfg.instrumented = true;
        cfg.chunk = 128;
        cfg.kernel = kernel;
        let mut dec = Decoder::new(g, cfg).unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        dec.prefill(g, 0, &random(hkv * 600 * 64, &mut rng), &random(hkv * 600 * 64, &mut rng)).unwrap();
        dec.step(g, 0, &random(8 * 64, &mut rng), &random(hkv * 64, &mut rng), &random(hkv * 64, &mut rng))
            .unwrap();
        let counted = dec.counted_traffic(g).unwrap().unwrap();
        assert_eq!(dec.step_traffic(), counted, "{kernel:?}, kv heads {hkv}");
        per_variant.push(counted.read);
    }
    println!(
        "bytes read per step, 8 query heads (MHA, GQA(2), MQA): staged {:?}, lanes {:?}",
        &per_variant[..3],
        &per_variant[3..]
    );
    // the staged kernel reads a slot once per kv head, the lanes kernel once per query row
    assert!(per_variant[2] * 4 < per_variant[0], "MQA reads far less than MHA");
    assert!(per_variant[3..].iter().all(|&r| r.abs_diff(per_variant[3]) * 50 < r), "{per_variant:?}");
}

#[test]
fn the_profile_picks_the_lanes_kernel_for_few_rows_on_cpu_adapters() {
    let g = gpu();
    let lanes = g.profile().0.per_lane_loads;
    for (heads, kv_heads, tokens) in [(8, 8, 1), (8, 4, 1), (8, 8, 3), (8, 2, 1), (8, 1, 1)] {
        let mut cfg = DecoderConfig::new(heads, kv_heads, 32, 16);
        cfg.max_step_tokens = tokens;
        let few_rows = heads / kv_heads * tokens < 4;
        let expected = if lanes && few_rows { DecodeKernel::Lanes } else { DecodeKernel::Staged };
        assert_eq!(
            Decoder::new(g, cfg).unwrap().kernel(),
            expected,
            "{heads}/{kv_heads} heads, {tokens} tokens"
        );
    }
}

#[test]
fn mods_step_by_step_equal_full_attention_with_the_same_mods() {
    // each step's queries are the last rows of the full problem: named mods (bottom-right
    // aligned, a buffer of document ids over every position, a T5 table) under GQA and
    // multi-token steps, and a user module from text
    use longctx::contract::mods::{Mods, Named, T5_BUCKETS};
    use std::sync::Arc;
    let seed = common::seed();
    let (prompt, steps, t) = (57, 3, 2);
    let positions = prompt + steps * t;
    let docs: Vec<u32> = (0..positions as u32).map(|p| p / 23).collect();
    let t5: Arc<Vec<f32>> =
        Arc::new((0..4 * T5_BUCKETS).map(|i| ((i * 37) % 11) as f32 * 0.2 - 1.0).collect());
    let mut worst = Vec::new();
    for (name, mods) in [
        ("softcap=2", Named::parse("softcap=2", 4).unwrap().mods()),
        ("sinks=3,window=7", Named::parse("sinks=3,window=7", 4).unwrap().mods()),
        ("dilated=20,dilation=3", Named::parse("dilated=20,dilation=3", 4).unwrap().mods()),
        ("documents", Named::Documents(Arc::new(docs)).mods()),
        ("t5", Named::T5(t5.clone()).mods()),
    ] {
        let mut cfg = DecoderConfig::new(4, 2, 36, 80);
        cfg.alibi = Alibi::Standard;
        cfg.max_step_tokens = t;
        cfg.mods = Some(mods);
        let e = run(cfg, prompt, steps, t, seed);
        worst.push(format!("{name}: {e:.1e}"));
    }
    println!("decode with mods, worst rel err (O, LSE): {}", worst.join("; "));

    // N_Q and N_KV change per step: a module that uses them in a const is refused with its
    // file and line, and the hint
    let bad = Mods::wgsl(
        "late.wgsl",
        "const LAST: u32 = N_KV - 1u;\nfn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool { return kv_idx < LAST; }\n",
    )
    .unwrap();
    let mut cfg = DecoderConfig::new(4, 2, 32, 80);
    cfg.mods = Some(bad);
    let err = Decoder::new(gpu(), cfg).err().unwrap().to_string();
    assert!(err.contains("late.wgsl:1") && err.contains("per step"), "{err}");
}

#[test]
fn positions_step_by_step_equal_full_attention() {
    // K encoded once as it enters the cache (linear and ring), Q each step, at absolute
    // positions plus the offset
    use longctx::contract::positions::Positions;
    let seed = common::seed();
    let mut worst = Vec::new();
    for (name, p) in [
        ("rope half", Positions::rope(10000.0)),
        ("rope interleaved offset 5000", Positions::rope_interleaved(10000.0).offset(5000)),
        ("sinusoidal", Positions::sinusoidal()),
    ] {
        let mut cfg = DecoderConfig::new(4, 2, 38, 90);
        cfg.alibi = Alibi::Standard;
        cfg.max_step_tokens = 2;
        cfg.positions = Some(p);
        let e1 = run(cfg.clone(), 61, 3, 2, seed);
        // a ring of 24 slots under a window of 20: prefill longer than the ring, then wraps
        cfg.window = Some(20);
        cfg.ring = true;
        cfg.capacity = 24;
        let e2 = run(cfg, 61, 5, 2, seed);
        worst.push(format!("{name}: {:.1e}", e1.max(e2)));
    }
    println!("decode with positions, worst rel err (O, LSE): {}", worst.join("; "));
}
