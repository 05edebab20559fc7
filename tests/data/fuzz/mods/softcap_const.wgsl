const CAP: f32 = 20.0;
var<private> slopes: array<f32, 4> = array<f32, 4>(0.5, 0.25, 0.125, 0.0625);

fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {
    let d = f32(abs(i32(q_idx) - i32(kv_idx)));
    return CAP * tanh((score - slopes[h % 4u] * d) / CAP);
}
