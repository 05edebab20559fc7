@group(1) @binding(0) var<storage, read> ids: array<u32>;
@group(1) @binding(1) var<storage, read> bias: array<f32>;
struct Pair { a: u32, b: u32 }

fn same(p: Pair) -> bool {
    return ids[p.a] == ids[p.b];
}

fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {
    let p = i32(q_idx) + i32(N_KV) - i32(N_Q);
    return p >= 0 && same(Pair(u32(p), kv_idx));
}

fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {
    return score + bias[h];
}

fn score_mod_grad(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {
    return 1.0;
}
