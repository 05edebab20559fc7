// layer.wgsl — the small pieces of a transformer layer around the heavy kernels.
//
// layer_norm: y_i = (x_i − mean_i) / sqrt(var_i + eps) per row of [rows, d] (no affine).
// layer_norm_affine: the same, then γ ⊙ y + β (γ, β from `affine` = [γ (d) | β (d)]).
// to_heads:   [rows, H·D] (token-major, as projections write) → [H, rows, D] (head-major, as
//             the attention kernels read).
// to_tokens:  the inverse.
// copy:       y = x (the residual stream before branches add into it).

struct Shape {
    rows: u32,
    d: u32,      // row width (layer_norm, copy) or head dim D (permutes)
    heads: u32,
    eps: f32,    // layer_norm
}

@group(0) @binding(0) var<uniform> sh: Shape;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read> affine: array<f32>;

// Mean and 1/sqrt(var + eps) of row r.
fn row_stats(r: u32) -> vec2<f32> {
    var mean = 0.0;
    for (var e = 0u; e < sh.d; e++) {
        mean += src[r * sh.d + e];
    }
    mean /= f32(sh.d);
    var var_sum = 0.0;
    for (var e = 0u; e < sh.d; e++) {
        let c = src[r * sh.d + e] - mean;
        var_sum += c * c;
    }
    return vec2<f32>(mean, 1.0 / sqrt(var_sum / f32(sh.d) + sh.eps));
}

@compute @workgroup_size(64)
fn layer_norm(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if r >= sh.rows {
        return;
    }
    let st = row_stats(r);
    for (var e = 0u; e < sh.d; e++) {
        dst[r * sh.d + e] = (src[r * sh.d + e] - st.x) * st.y;
    }
}

@compute @workgroup_size(64)
fn layer_norm_affine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = gid.x;
    if r >= sh.rows {
        return;
    }
    let st = row_stats(r);
    for (var e = 0u; e < sh.d; e++) {
        dst[r * sh.d + e] = (src[r * sh.d + e] - st.x) * st.y * affine[e] + affine[sh.d + e];
    }
}

@compute @workgroup_size(64)
fn to_heads(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if e >= sh.rows * sh.heads * sh.d {
        return;
    }
    // e indexes the destination [H, rows, D]
    let x = e % sh.d;
    let r = (e / sh.d) % sh.rows;
    let h = e / (sh.d * sh.rows);
    dst[e] = src[(r * sh.heads + h) * sh.d + x];
}

@compute @workgroup_size(64)
fn to_tokens(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if e >= sh.rows * sh.heads * sh.d {
        return;
    }
    // e indexes the destination [rows, H·D]
    let x = e % sh.d;
    let h = (e / sh.d) % sh.heads;
    let r = e / (sh.d * sh.heads);
    dst[e] = src[(h * sh.rows + r) * sh.d + x];
}

@compute @workgroup_size(64)
fn copy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if e < sh.rows * sh.d {
        dst[e] = src[e];
    }
}
