//! Sparse patterns through flash and naive against the oracle, alone and combined; a
//! property test over random block masks; counters proving that unlisted tiles are skipped.

use crate::common;

use std::sync::Arc;

use crate::common::{check_both, check_kernel, gpu};
use longctx::contract::mask::{BigBird, Mask};
use longctx::{Alibi, Attention, AttnShape, AttnSpec, FlashConfig, Window};
use proptest::prelude::*;

const BOUND: f64 = 1e-5;

fn shape(heads: usize, kv_heads: usize, n: usize, m: usize, d: usize) -> AttnShape {
    AttnShape { batch: 1, heads, kv_heads, n, m, head_dim: d }
}

/// A seeded random block mask `[layers, ceil(N/bs), ceil(M/bs)]` with density `p`.
fn random_block_mask(s: &AttnShape, bs: usize, layers: usize, p: f64, seed: u64) -> Mask {
    let (r, c) = (s.n.div_ceil(bs), s.m.div_ceil(bs));
    let mut x = seed;
    let cells: Vec<f32> = (0..layers * r * c)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (((x >> 33) as f64 / (1u64 << 31) as f64) < p) as u8 as f32
        })
        .collect();
    Mask::block_mask(s, bs, &[layers, r, c], &cells).unwrap()
}

fn segments(m: usize, len: usize) -> Mask {
    Mask::Segments(Arc::new((0..m).map(|p| (p / len) as u32).collect()))
}

fn family(name: &str, specs: Vec<AttnSpec>) {
    let (mut wf, mut wn) = (0f64, 0f64);
    for spec in &specs {
        let (f, n) = check_both(spec, BOUND);
        wf = wf.max(f);
        wn = wn.max(n);
    }
    println!("pattern {name:<22} cases {:>2}  worst rel err  flash {wf:.2e}  naive {wn:.2e}", specs.len());
}

#[test]
fn global_tokens() {
    family(
        "global",
        vec![
            AttnSpec::new(shape(2, 2, 113, 203, 64)).mask(Some(Mask::Global(5))),
            AttnSpec::new(shape(4, 2, 203, 203, 32)).mask(Some(Mask::Global(70))).causal(true),
            AttnSpec::new(shape(2, 1, 64, 64, 80))
                .mask(Some(Mask::Global(1)))
                .window(Some(Window::new(8, 8))),
        ],
    );
}

#[test]
fn bigbird() {
    let bb = |block, seed| BigBird { global: 1, window: 1, random: 2, block, seed };
    family(
        "bigbird",
        vec![
            AttnSpec::new(shape(2, 2, 333, 333, 64)).mask(Some(Mask::bigbird(&bb(16, 1), 333).unwrap())),
            AttnSpec::new(shape(4, 1, 203, 333, 32))
                .mask(Some(Mask::bigbird(&bb(20, 2), 333).unwrap()))
                .causal(true),
            AttnSpec::new(shape(2, 2, 113, 113, 96))
                .mask(Some(Mask::bigbird(&bb(64, 3), 113).unwrap()))
                .alibi(Alibi::Standard),
        ],
    );
}

#[test]
fn explicit_block_masks() {
    let mut specs = Vec::new();
    // block sizes equal to, dividing, and straddling the kernel's tiles; shared and per head
    for (i, (bs, layers)) in [(32, 1), (64, 4), (16, 1), (7, 4), (50, 1)].into_iter().enumerate() {
        let s = shape(4, 2, 113 + 30 * i, 203 - 20 * i, 64);
        specs.push(
            AttnSpec::new(s)
                .mask(Some(random_block_mask(&s, bs, layers, 0.4, i as u64 + 1)))
                .causal(i % 2 == 1),
        );
    }
    family("block mask", specs);
}

#[test]
fn segments_packed_documents() {
    family(
        "segments",
        vec![
            AttnSpec::new(shape(2, 2, 203, 203, 64)).mask(Some(segments(203, 37))).causal(true),
            AttnSpec::new(shape(2, 1, 100, 203, 64)).mask(Some(segments(203, 64))),
            AttnSpec::new(shape(3, 3, 64, 64, 32)).mask(Some(segments(64, 5))).alibi(Alibi::Standard),
        ],
    );
}

#[test]
fn combinations() {
    let s = shape(4, 2, 203, 203, 64);
    let bb = Mask::bigbird(&BigBird { global: 1, window: 0, random: 1, block: 16, seed: 5 }, 203).unwrap();
    family(
        "combinations",
        vec![
            // Longformer: window OR global tokens, causal on top
            AttnSpec::new(s).mask(Some(Mask::Window(Window::new(16, 16)).or(Mask::Global(3)))).causal(true),
            // segments AND a per-head block mask AND window
            AttnSpec::new(s)
                .mask(Some(segments(203, 50).and(random_block_mask(&s, 24, 4, 0.6, 9))))
                .window(Some(Window::new(40, 10))),
            // bigbird OR segments, ALiBi, N ≠ M
            AttnSpec::new(shape(4, 4, 150, 203, 32))
                .mask(Some(bb.or(segments(203, 30))))
                .alibi(Alibi::Standard),
        ],
    );
}

#[test]
fn fully_masked_rows_are_zero_with_lse_minus_inf() {
    // Global(0) | nothing: an empty block mask hides every row; a block mask with empty rows too.
    let s = shape(2, 2, 70, 70, 32);
    let cells: Vec<f32> = (0..3 * 3).map(|x| (x / 3 != 1) as u8 as f32).collect(); // middle block row empty
    let m = Mask::block_mask(&s, 32, &[1, 3, 3], &cells).unwrap();
    family("fully masked rows", vec![AttnSpec::new(s).mask(Some(m))]);
}

#[test]
fn flash_visits_only_listed_tiles() {
    let g = gpu();
    let s = shape(2, 2, 500, 500, 64);
    let config = FlashConfig { br: 32, bc: 16, p: 1, sg: 0, pass_tiles: 0, coop: None }.fit_passes(g, 64);
    for (name, spec) in [
        ("dense", AttnSpec::new(s)),
        ("causal", AttnSpec::new(s).causal(true)),
        ("window 64", AttnSpec::new(s).window(Some(Window::new(64, 0))).causal(true)),
        ("block mask", AttnSpec::new(s).mask(Some(random_block_mask(&s, 32, 1, 0.3, 3)))),
    ] {
        let attn = Attention::builder(&spec).tiles(config).instrumented(true).build(g).unwrap();
        check_kernel(&attn, common::seed(), BOUND);
        let counted = attn.flash_counters(g).unwrap().unwrap();
        let map = attn.block_map().unwrap();
        let listed_per_head = map.visited() as u64;
        assert_eq!(counted.tiles, listed_per_head * 2, "{name}: tiles loaded vs listed");
        let listed_keys: u64 = map
            .entries
            .iter()
            .map(|&e| {
                ((e & !longctx::contract::blockmap::FULL) as u64 * 16 + 16).min(500)
                    - (e & !longctx::contract::blockmap::FULL) as u64 * 16
            })
            .sum();
        assert_eq!(counted.keys, listed_keys * 2, "{name}: keys loaded");
        assert_eq!(counted.rows_read, 1000);
        let all = (500usize.div_ceil(32) * 500usize.div_ceil(16)) as f64;
        println!(
            "{name:<10} tiles loaded {} of {} ({:.1}% skipped)",
            counted.tiles,
            2.0 * all,
            100.0 * map.sparsity()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn random_block_mask_matches_oracle(n in 1usize..150, m in 1usize..150, bs in 1usize..40, density in 0.0f64..1.0, seed: u64, per_head: bool, causal: bool) {
        let s = shape(2, 1, n, m, 32);
        let mask = random_block_mask(&s, bs, if per_head { 2 } else { 1 }, density, seed);
        let spec = AttnSpec::new(s).mask(Some(mask)).causal(causal);
        let flash = Attention::new(gpu(), longctx::Kernel::Flash, &spec).unwrap();
        check_kernel(&flash, seed, BOUND);
    }
}
