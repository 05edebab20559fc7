//! The f64 backward oracle against finite differences of the forward oracle, on tiny shapes
//! with every feature (causal, window, ALiBi, GQA, N ≠ M, a fully masked row).

use longctx::contract::reference::{attention_backward_f64, attention_f64};
use longctx::{Alibi, AttnShape, AttnSpec, Window};
use rand::{Rng, SeedableRng, rngs::StdRng};

/// L = Σ O ⊙ dO.
fn loss(spec: &AttnSpec, q: &[f32], k: &[f32], v: &[f32], d_o: &[f32]) -> f64 {
    let (o, _) = attention_f64(spec, q, k, v).unwrap();
    o.iter().zip(d_o).map(|(a, &b)| a * b as f64).sum()
}

#[test]
fn oracle_gradients_match_finite_differences() {
    let mut rng = StdRng::seed_from_u64(11);
    for spec in [
        AttnSpec::new(AttnShape { batch: 1, heads: 2, kv_heads: 1, n: 3, m: 5, head_dim: 4 })
            .causal(true)
            .alibi(Alibi::Standard),
        AttnSpec::new(AttnShape { batch: 2, heads: 2, kv_heads: 2, n: 4, m: 4, head_dim: 4 })
            .window(Some(Window::new(1, 1))),
        // N > M: the first row sees no key (zero gradient)
        AttnSpec::new(AttnShape { batch: 1, heads: 1, kv_heads: 1, n: 4, m: 3, head_dim: 4 }).causal(true),
    ] {
        let s = spec.shape;
        let mut r = |len: usize| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<f32>>();
        let (q, k, v, d_o) = (r(s.q_len()), r(s.kv_len()), r(s.kv_len()), r(s.q_len()));
        let (dq, dk, dv) = attention_backward_f64(&spec, &q, &k, &v, &d_o).unwrap();
        let h = 1.0 / 1024.0;
        let mut worst = 0f64;
        for (which, grad) in [(0, &dq), (1, &dk), (2, &dv)] {
            for idx in 0..grad.len() {
                let mut plus = [q.clone(), k.clone(), v.clone()];
                let mut minus = plus.clone();
                plus[which][idx] += h;
                minus[which][idx] -= h;
                let num = (loss(&spec, &plus[0], &plus[1], &plus[2], &d_o)
                    - loss(&spec, &minus[0], &minus[1], &minus[2], &d_o))
                    / (2.0 * h as f64);
                let err = (num - grad[idx]).abs() / (1.0 + grad[idx].abs());
                worst = worst.max(err);
                assert!(
                    err < 1e-4,
                    "tensor {which} index {idx}: finite difference {num} vs oracle {}; {spec:?}",
                    grad[idx]
                );
            }
        }
        println!("backward oracle vs finite differences: worst {worst:.1e} ({:?})", s);
    }
}
