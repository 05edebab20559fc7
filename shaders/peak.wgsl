// peak.wgsl — probes of what this adapter can attain, the denominators of "% of peak".
//
// fma:  every invocation runs 8 independent vec4 FMA chains for ITERS steps
//       (8 · 4 · 2 · ITERS FLOPs per invocation); the result is stored so nothing is elided.
// copy: dst[i] = src[i] over vec4s — bytes read + bytes written per element, 32.

@group(0) @binding(0) var<storage, read_write> dst: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;

@compute @workgroup_size(64)
fn fma_probe(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let g = gid.x + gid.y * nwg.x * 64u;
    let seed = f32(g % 1024u) * 1e-6;
    var a0 = vec4<f32>(seed, seed + 0.1, seed + 0.2, seed + 0.3);
    var a1 = a0 + 0.01;
    var a2 = a0 + 0.02;
    var a3 = a0 + 0.03;
    var a4 = a0 + 0.04;
    var a5 = a0 + 0.05;
    var a6 = a0 + 0.06;
    var a7 = a0 + 0.07;
    let mul = vec4<f32>(0.9999);
    let add = vec4<f32>(1e-4);
    for (var i = 0u; i < ITERS; i++) {
        a0 = fma(a0, mul, add);
        a1 = fma(a1, mul, add);
        a2 = fma(a2, mul, add);
        a3 = fma(a3, mul, add);
        a4 = fma(a4, mul, add);
        a5 = fma(a5, mul, add);
        a6 = fma(a6, mul, add);
        a7 = fma(a7, mul, add);
    }
    dst[g % arrayLength(&dst)] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;
}

@compute @workgroup_size(64)
fn copy_probe(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    if i < arrayLength(&src) {
        dst[i] = src[i];
    }
}
