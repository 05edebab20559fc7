// mods_none.wgsl — the identity mods, for kernels built without the user's (MODS = false:
// never called; defined so that every variant compiles). See contract/mods.rs.

fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {
    return score;
}

fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {
    return true;
}

fn score_mod_grad(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {
    return 1.0;
}
