// dsa.wgsl — DSA's attention over each row's chosen keys (the lists of dsa_index.wgsl; the rule
// and its oracle: src/contract/dsa.rs). `attend`: one invocation per (query head, row), a
// workgroup per (head, run of 64 rows), every head of a sequence reading the row's one list.
// The row's query sits in D4 private vec4s; each listed key's K and V rows are read as D4
// vec4s (a gather: rows of one workgroup chose different keys) under an online softmax.
// Long lists run in passes over list entries [arg0, arg1) below an adapter's loop cap: the
// running state (unnormalised O, the running max in LSE's slot, the running sum in `run_l`)
// stays in device memory between passes; the last pass normalises and writes LSE (−inf and
// O = 0 for a row with no key). Loops: (arg1 − arg0) · (2·D4 + 2) iterations a pass.

@group(0) @binding(1) var<storage, read> lists: array<u32>;          // [B, N, k]
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;        // [B, H, N, D]
@group(0) @binding(3) var<storage, read> k: array<vec4<f32>>;        // [B, Hkv, M, D]
@group(0) @binding(4) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> o: array<vec4<f32>>;  // [B, H, N, D]
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;      // [B, H, N]
@group(0) @binding(7) var<storage, read_write> run_l: array<f32>;    // [B, H, N]

// a finite "minus infinity" for the running max (exp of it against any score is 0)
const LOW: f32 = -3.0e38;

@compute @workgroup_size(64)
fn attend(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let runs = (params.n + 63u) / 64u;
    let w = wg.y * params.groups_x + wg.x;
    let hf = w / runs;  // b·H + h
    let i = (w % runs) * 64u + lid;
    if hf >= params.batch * params.heads || i >= params.n {
        return;
    }
    let b = hf / params.heads;
    let kvh = b * params.kv_heads + (hf % params.heads) / (params.heads / params.kv_heads);
    let row = hf * params.n + i;
    let list0 = (b * params.n + i) * params.topk;
    var qr: array<vec4<f32>, D4>;
    var acc: array<vec4<f32>, D4>;
    for (var x = 0u; x < D4; x++) {
        qr[x] = q[row * D4 + x] * params.scale;
    }
    var mx = LOW;
    var l = 0.0;
    if params.arg0 > 0u {
        mx = lse[row];
        l = run_l[row];
        for (var x = 0u; x < D4; x++) {
            acc[x] = o[row * D4 + x];
        }
    }
    for (var t = params.arg0; t < params.arg1; t++) {
        let j = lists[list0 + t];
        if j == NONE {
            break; // lists end with their empty entries
        }
        let kv0 = (kvh * params.m + j) * D4;
        var s4 = vec4<f32>(0.0);
        for (var x = 0u; x < D4; x++) {
            s4 += qr[x] * k[kv0 + x];
        }
        let s = s4.x + s4.y + s4.z + s4.w;
        let top = max(mx, s);
        let alpha = exp(mx - top);
        let pj = exp(s - top);
        l = l * alpha + pj;
        for (var x = 0u; x < D4; x++) {
            acc[x] = acc[x] * alpha + pj * v[kv0 + x];
        }
        mx = top;
    }
    if params.last == 0u {
        lse[row] = mx;
        run_l[row] = l;
        for (var x = 0u; x < D4; x++) {
            o[row * D4 + x] = acc[x];
        }
        return;
    }
    if l > 0.0 {
        lse[row] = mx + log(l);
        for (var x = 0u; x < D4; x++) {
            o[row * D4 + x] = acc[x] / l;
        }
    } else {
        lse[row] = bitcast<f32>(0xff800000u);
        for (var x = 0u; x < D4; x++) {
            o[row * D4 + x] = vec4<f32>(0.0);
        }
    }
}
