// mods_none.wgsl — the identity mods, for kernels built without the user's (MODS = false:
// never called; defined so that every variant compiles). See contract/mods.rs.
//
// N_Q and N_KV as a kernel whose sizes change per dispatch (decode) sees them: private
// variables it sets before calling the mods (Mods::kernel_source_per_dispatch).
var<private> N_Q: u32;
var<private> N_KV: u32;
// Set when the user's mods ran past their loop budget (contract/mods.rs counts their loops)
// or their score_mod returned NaN or +inf (`mod_bad_score` too); a kernel then writes
// `mods_nan()`, never a plausible number. The identity never sets them.
var<private> mod_overrun: bool;
var<private> mod_bad_score: bool;

// NaN with the reason in its payload (1: loop budget, 2: score), read back by the host.
fn mods_nan() -> f32 {
    return bitcast<f32>(select(0x7fc00001u, 0x7fc00002u, mod_bad_score));
}

fn score_mod(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {
    return score;
}

fn mask_mod(b: u32, h: u32, q_idx: u32, kv_idx: u32) -> bool {
    return true;
}

fn score_mod_grad(score: f32, b: u32, h: u32, q_idx: u32, kv_idx: u32) -> f32 {
    return 1.0;
}
