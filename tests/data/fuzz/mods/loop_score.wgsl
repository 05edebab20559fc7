// a score_mod with a loop and a helper
fn bump(x: f32, k: u32) -> f32 {
    var s = x;
    for (var i = 0u; i < k; i++) {
        s = s + 0.01 * f32(i);
    }
    return s;
}

fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {
    return bump(score, (q_idx + kv_idx) % 5u);
}
