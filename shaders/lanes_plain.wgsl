// lanes_plain.wgsl — the no-subgroup twin of lanes_subgroup.wgsl (SG = 0): same names, no
// subgroup builtins, so the kernel validates without the SUBGROUP feature. Never called
// with SG = 0 except `lane_of`.

// The workgroup id is not here: entry points take `@builtin(workgroup_id) wg` on its own,
// since a struct with any per-invocation member is non-uniform as a whole to Tint's
// uniformity analysis (the browser's), which then rejects barriers in loops bounded by it.
struct Ids {
    @builtin(local_invocation_index) lid: u32,
}

fn lane_of(ids: Ids) -> u32 {
    return 0u;
}

fn subgroup_of(ids: Ids) -> u32 {
    return 0u;
}

fn shuffle4(v: vec4<f32>, src_lane: u32) -> vec4<f32> {
    return v;
}

fn shuffle1(v: f32, src_lane: u32) -> f32 {
    return v;
}

fn shuffle_xor1(v: f32, mask: u32) -> f32 {
    return v;
}
