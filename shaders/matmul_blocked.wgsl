// matmul_blocked.wgsl — C = act(A·B + bias), register-blocked with no workgroup memory: the
// path for adapters whose every memory access is costly per lane (CPU adapters: llvmpipe
// turns each load, of workgroup or storage memory alike, into a loop over its 8 SIMD lanes,
// so a vec4 load costs about what a scalar one does and staging through workgroup memory
// only adds loads and barriers). GPUs keep the tiled kernel (matmul.wgsl).
//
// Each invocation owns RM rows × CV vec4 columns of C (RM·4·CV accumulators) and streams K
// four at a time: per step it loads RM vec4 of A (4 k each) and 4·CV vec4 of B, and does
// 16·RM·CV FMAs — the loads per FMA fall as the block grows, until the accumulators spill.
// A, B, bias and C are bound as vec4 arrays: K and N are multiples of 4, and so are the
// shifts of the bound ranges and the K slices (the host checks). Rows and columns past the
// edges load the last row or column and are not stored.
// Device-memory traffic: A read ⌈N/(4·CV)⌉ times, B read ⌈M/RM⌉ times (through caches).

@group(0) @binding(1) var<storage, read> a: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> c: array<vec4<f32>>;

@compute @workgroup_size(WX, WY)
fn main(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wg: vec3<u32>) {
    let k4 = dims.k / 4u;
    let n4 = dims.n / 4u;
    let row0 = dims.row_base + (wg.y * WY + lid.y) * RM;
    let col0 = (wg.x * WX + lid.x) * CV;
    let a_shift = dims.a_shift / 4u;
    // rows and columns past the edges read the last ones (in bounds) and are not stored
    let last_row = dims.row_end - 1u;
    let last_col = n4 - 1u;
    var acc: array<array<vec4<f32>, CV>, RM>;
    for (var kq = dims.k_begin / 4u; kq < dims.k_end / 4u; kq++) {
        var av: array<vec4<f32>, RM>;
        for (var r = 0u; r < RM; r++) {
            av[r] = a[min(row0 + r, last_row) * k4 - a_shift + kq];
        }
        let b_at = kq * 4u * n4;
        for (var j = 0u; j < CV; j++) {
            // four rows of B for this column vec4; each accumulator visited once per step
            let at = b_at + min(col0 + j, last_col);
            let b0 = b[at];
            let b1 = b[at + n4];
            let b2 = b[at + 2u * n4];
            let b3 = b[at + 3u * n4];
            for (var r = 0u; r < RM; r++) {
                acc[r][j] += av[r].x * b0 + av[r].y * b1 + av[r].z * b2 + av[r].w * b3;
            }
        }
    }
    // fixed trip counts, no `break`: the loops unroll and `acc` stays in registers (a loop
    // that may leave early keeps `acc` in indexed memory for the whole kernel: 1.6× slower)
    let c_shift = dims.c_shift / 4u;
    for (var r = 0u; r < RM; r++) {
        for (var j = 0u; j < CV; j++) {
            let gr = row0 + r;
            let gc = col0 + j;
            if gr < dims.row_end && gc < n4 {
                var val = acc[r][j];
                if dims.has_bias != 0u {
                    val += bias[gc];
                }
                val = vec4<f32>(activate(val.x), activate(val.y), activate(val.z), activate(val.w));
                let at = gr * n4 + gc - c_shift;
                if dims.accumulate != 0u {
                    val += c[at];
                }
                c[at] = val;
            }
        }
    }
}
