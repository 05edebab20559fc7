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
//
// Transposed operands (TA, TB): A stored as Aᵀ [K, M] (M a multiple of 4, one dispatch), B
// as Bᵀ [N, K] — the gradients' products x_ᵀ·dy and dy·Wᵀ without a transpose pass. Per step
// the same number of vec4 loads (RM/4 × 4 of Aᵀ, 4 per column vec4 of Bᵀ), transposed in
// registers.

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
        if TA == 0u {
            for (var r = 0u; r < RM; r++) {
                av[r] = a[min(row0 + r, last_row) * k4 - a_shift + kq];
            }
        } else {
            // Aᵀ's rows 4kq .. 4kq + 3, RM/4 vec4 of rows each: a 4 × RM block, transposed
            let m4 = dims.m / 4u;
            for (var q = 0u; q < RM / 4u; q++) {
                let at = kq * 4u * m4 + min(row0 / 4u + q, m4 - 1u);
                let r0 = a[at];
                let r1 = a[at + m4];
                let r2 = a[at + 2u * m4];
                let r3 = a[at + 3u * m4];
                av[4u * q] = vec4<f32>(r0.x, r1.x, r2.x, r3.x);
                av[4u * q + 1u] = vec4<f32>(r0.y, r1.y, r2.y, r3.y);
                av[4u * q + 2u] = vec4<f32>(r0.z, r1.z, r2.z, r3.z);
                av[4u * q + 3u] = vec4<f32>(r0.w, r1.w, r2.w, r3.w);
            }
        }
        let b_at = kq * 4u * n4;
        for (var j = 0u; j < CV; j++) {
            // four rows of B for this column vec4; each accumulator visited once per step
            var b0: vec4<f32>;
            var b1: vec4<f32>;
            var b2: vec4<f32>;
            var b3: vec4<f32>;
            if TB == 0u {
                let at = b_at + min(col0 + j, last_col);
                b0 = b[at];
                b1 = b[at + n4];
                b2 = b[at + 2u * n4];
                b3 = b[at + 3u * n4];
            } else {
                // Bᵀ's rows for the four columns, 4 k each: a 4 × 4 block, transposed
                let at = min(col0 + j, last_col) * 4u * k4 + kq;
                let c0 = b[at];
                let c1 = b[at + k4];
                let c2 = b[at + 2u * k4];
                let c3 = b[at + 3u * k4];
                b0 = vec4<f32>(c0.x, c1.x, c2.x, c3.x);
                b1 = vec4<f32>(c0.y, c1.y, c2.y, c3.y);
                b2 = vec4<f32>(c0.z, c1.z, c2.z, c3.z);
                b3 = vec4<f32>(c0.w, c1.w, c2.w, c3.w);
            }
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
