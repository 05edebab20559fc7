// embed.wgsl — the ends of a sentence encoder: token embeddings in, sentence vectors out.
//
// gather: x[t, e] = word[id_t, e] + position[pos_t, e] + token_type[0, e] for the rows of a
//         batch laid out [sentences × L] (pads carry id 0 and are masked downstream).
// pool:   mean over the first len_b rows of sentence b's L rows: y[b, e] (mean pooling over
//         real tokens, pads excluded).
// l2_normalize: y[b] / max(‖y[b]‖, 1e-12) (sentence-transformers' Normalize).

struct Shape {
    rows: u32,      // gather: tokens T; pool: sentences; l2_normalize: rows
    d: u32,
    stride: u32,    // pool: rows per sentence (L)
    positions: u32, // gather: offset of the token-type row in `table` (max_pos · d)
}

@group(0) @binding(0) var<uniform> sh: Shape;
// gather: ids [T] then positions [T]; pool: lengths [sentences]
@group(0) @binding(1) var<storage, read> index: array<u32>;
// gather: word embeddings [vocab, d]; pool, l2_normalize: the rows to reduce
@group(0) @binding(2) var<storage, read> src: array<f32>;
// gather: position embeddings [max_pos, d] then token-type row 0 [d]
@group(0) @binding(3) var<storage, read> table: array<f32>;
@group(0) @binding(4) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= sh.rows * sh.d {
        return;
    }
    let t = i / sh.d;
    let e = i % sh.d;
    let id = index[t];
    let pos = index[sh.rows + t];
    dst[i] = src[id * sh.d + e] + table[pos * sh.d + e] + table[sh.positions + e];
}

@compute @workgroup_size(64)
fn pool(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if i >= sh.rows * sh.d {
        return;
    }
    let b = i / sh.d;
    let e = i % sh.d;
    let len = index[b];
    var acc = 0.0;
    for (var r = 0u; r < len; r++) {
        acc += src[(b * sh.stride + r) * sh.d + e];
    }
    dst[i] = acc / f32(max(len, 1u));
}

@compute @workgroup_size(64)
fn l2_normalize(@builtin(global_invocation_id) gid: vec3<u32>) {
    let b = gid.x;
    if b >= sh.rows {
        return;
    }
    var sq = 0.0;
    for (var e = 0u; e < sh.d; e++) {
        let x = src[b * sh.d + e];
        sq += x * x;
    }
    let inv = 1.0 / max(sqrt(sq), 1e-12);
    for (var e = 0u; e < sh.d; e++) {
        dst[b * sh.d + e] = src[b * sh.d + e] * inv;
    }
}
