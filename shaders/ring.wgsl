// ring.wgsl — ring attention's merges on a rank's device (dist/ring.rs).
//
// `merge`: a rank's running output of one query chunk and the partial output of one more key
// block, merged exactly by log-sum-exp (as decode.wgsl's combine): l = log(e^a + e^b),
// O ← O·e^(a−l) + O'·e^(b−l). A partial with no visible key (LSE −inf) changes nothing; a
// running output with none yet takes the partial whole. One invocation per row.
// `add`: acc += x, the gradients summed over key blocks (dQ) or query chunks (dK, dV).
// Traffic: merge reads both outputs and LSEs and writes the running ones; add reads both
// and writes acc.

struct MergeJob {
    len: u32,       // rows (merge) or floats (add)
    d: u32,         // floats per row (merge)
    groups_x: u32,  // workgroups per grid row
    neg_inf: f32,
}

@group(0) @binding(0) var<uniform> job: MergeJob;
@group(0) @binding(1) var<storage, read_write> acc: array<f32>;       // running O, or the sum
@group(0) @binding(2) var<storage, read_write> acc_lse: array<f32>;
@group(0) @binding(3) var<storage, read> part: array<f32>;            // partial O, or the addend
@group(0) @binding(4) var<storage, read> part_lse: array<f32>;

fn index(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * job.groups_x + wg.x) * 64u + lid;
}

@compute @workgroup_size(64)
fn merge(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = index(wg, lid);
    if row >= job.len {
        return;
    }
    let a = acc_lse[row];
    let b = part_lse[row];
    if b == job.neg_inf {
        return;
    }
    var wa = 0.0;
    var wb = 1.0;
    var l = b;
    if a != job.neg_inf {
        let m = max(a, b);
        l = m + log(exp(a - m) + exp(b - m));
        wa = exp(a - l);
        wb = exp(b - l);
    }
    for (var x = 0u; x < job.d; x++) {
        let i = row * job.d + x;
        acc[i] = acc[i] * wa + part[i] * wb;
    }
    acc_lse[row] = l;
}

@compute @workgroup_size(64)
fn add(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if i < job.len {
        acc[i] += part[i];
    }
}
