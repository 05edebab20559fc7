//! Inputs for measurements and checks, made one way everywhere: benchmarks, the tuner, the
//! probes' callers, decode and CoLT5 timing.

use rand::{Rng, SeedableRng, rngs::StdRng};

use crate::contract::spec::AttnSpec;

/// `len` values in `[-0.5, 0.5)` from a multiplicative hash of the index and `salt`:
/// identical on every run and cheap at any size (no RNG state).
pub fn hashed(len: usize, salt: u32) -> Vec<f32> {
    hashed_range(0..len, salt)
}

/// Elements `range` of [`hashed`]`(…, salt)`: a slice of the same tensor made without the
/// rest (a ring rank's shard).
pub(crate) fn hashed_range(range: std::ops::Range<usize>, salt: u32) -> Vec<f32> {
    range
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ salt) >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
        .collect()
}

/// Q, K and V for `spec`, uniform in `[-1, 1)` from one RNG seeded with `seed` (drawn in
/// that order), so a record can be reproduced from its seed.
pub fn seeded_qkv(spec: &AttnSpec, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let s = spec.shape;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut draw = |len: usize| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
    let q = draw(s.q_len());
    let k = draw(s.kv_len());
    let v = draw(s.kv_len());
    (q, k, v)
}

/// `len` values uniform in `[-1, 1)` from an RNG seeded with `seed`.
pub fn seeded(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}
