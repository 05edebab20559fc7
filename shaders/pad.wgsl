// pad.wgsl — copies rows of `from` floats into rows of `to` floats: zeros fill the tail when
// to > from (padding), the tail is dropped when to < from (unpadding). How the attention
// kernels, which load vec4 lanes, run head dims that are not a multiple of 4: the caller's
// tensors keep their shape, the kernel runs on padded copies (zeros in Q and K leave every
// score unchanged, zeros in V give output columns that are dropped).
//
// One invocation per output float; the grid is 2-D so that long tensors stay within the
// 65535-workgroup limit per dimension. Device-memory traffic: rows·from·4 read (at most),
// rows·to·4 written.

struct Repack {
    rows: u32,
    src_width: u32,
    dst_width: u32,
    groups_x: u32, // workgroups per grid row
}

@group(0) @binding(0) var<uniform> shape: Repack;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = (wg.y * shape.groups_x + wg.x) * 64u + lid;
    if i >= shape.rows * shape.dst_width {
        return;
    }
    let row = i / shape.dst_width;
    let col = i % shape.dst_width;
    var value = 0.0;
    if col < shape.src_width {
        value = src[row * shape.src_width + col];
    }
    dst[i] = value;
}
