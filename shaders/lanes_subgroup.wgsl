// lanes_subgroup.wgsl — composed into kernels built with subgroup shuffles (SG > 0).
// The entry point takes its builtins as `Ids`; `lane_of` and `shuffle4` hide whether
// subgroups exist, so a kernel compiles on devices without the SUBGROUP feature.

// The workgroup id is not here: entry points take `@builtin(workgroup_id) wg` on its own,
// since a struct with any per-invocation member is non-uniform as a whole to Tint's
// uniformity analysis (the browser's), which then rejects barriers in loops bounded by it.
struct Ids {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_id) subgroup: u32,
}

fn lane_of(ids: Ids) -> u32 {
    return ids.lane;
}

fn subgroup_of(ids: Ids) -> u32 {
    return ids.subgroup;
}

fn shuffle4(v: vec4<f32>, src_lane: u32) -> vec4<f32> {
    return subgroupShuffle(v, src_lane);
}

fn shuffle1(v: f32, src_lane: u32) -> f32 {
    return subgroupShuffle(v, src_lane);
}

fn shuffle_xor1(v: f32, mask: u32) -> f32 {
    return subgroupShuffleXor(v, mask);
}
