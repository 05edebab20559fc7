// matmul.wgsl — C = act(A·B + bias) for row-major A [M, K], B [K, N], C [M, N], f32.
//
// Tiled: a workgroup of (TN/4)·(TM/RM) invocations owns a TM × TN tile of C; each invocation
// keeps RM rows × one vec4 of columns in registers. The K dimension streams through
// workgroup memory in TK-deep slabs of A (TM × TK) and B (TK × TN). Any M, K, N ≥ 1: edges
// load zeros and skip stores. `Dims` and the activations are in matmul_common.wgsl, the
// bindings and the epilogue in matmul_scalar.wgsl. The GPU path; CPU adapters run
// matmul_blocked.wgsl where K and N are multiples of 4.
// Device-memory traffic: A read ⌈N/TN⌉ times, B read ⌈M/TM⌉ times, C written once.
// Subgroups (SG > 0, TN = 4·SG): invocation (subgroup s, lane l) owns rows s·RM… and column
// vec4 l; every lane of a subgroup needs the same A values, so lane l loads A at k0 + l and
// the others arrive by shuffle — SG× fewer same-address loads (gathers on software adapters).

const COLS: u32 = TN / 4u;         // invocations across a tile row (one vec4 each)
const ROWS: u32 = TM / RM;         // invocations down a tile
var<workgroup> a_tile: array<f32, TM * TK>;
var<workgroup> b_tile: array<vec4<f32>, TK * COLS>;

@compute @workgroup_size(COLS * ROWS)
fn main(ids: Ids, @builtin(workgroup_id) wg: vec3<u32>) {
    let lid = ids.lid;
    var col4 = lid % COLS;
    var rowg = lid / COLS;
    if SG > 0u {
        col4 = lane_of(ids);
        rowg = subgroup_of(ids);
    }
    let row0 = dims.row_base + wg.y * TM + rowg * RM;
    let col0 = wg.x * TN + col4 * 4u;
    var acc: array<vec4<f32>, RM>;
    for (var r = 0u; r < RM; r++) {
        acc[r] = vec4<f32>(0.0);
    }
    for (var k0 = dims.k_begin; k0 < dims.k_end; k0 += TK) {
        for (var x = lid; x < TM * TK; x += COLS * ROWS) {
            let gr = dims.row_base + wg.y * TM + x / TK;
            let gk = k0 + x % TK;
            var val = 0.0;
            if gr < dims.row_end && gk < dims.k_end {
                val = a[gr * dims.k + gk - dims.a_shift];
            }
            a_tile[x] = val;
        }
        for (var x = lid; x < TK * COLS; x += COLS * ROWS) {
            let gk = k0 + x / COLS;
            let gc = wg.x * TN + (x % COLS) * 4u;
            var val = vec4<f32>(0.0);
            if gk < dims.k_end {
                for (var e = 0u; e < 4u; e++) {
                    if gc + e < dims.n {
                        val[e] = b[gk * dims.n + gc + e];
                    }
                }
            }
            b_tile[x] = val;
        }
        workgroupBarrier();
        if SG > 0u {
            for (var kk0 = 0u; kk0 < TK; kk0 += SG) {
                var av: array<f32, RM>;
                for (var r = 0u; r < RM; r++) {
                    av[r] = a_tile[(rowg * RM + r) * TK + kk0 + col4];
                }
                for (var l = 0u; l < SG; l++) {
                    let bv = b_tile[(kk0 + l) * COLS + col4];
                    for (var r = 0u; r < RM; r++) {
                        acc[r] += shuffle1(av[r], l) * bv;
                    }
                }
            }
        } else {
            for (var kk = 0u; kk < TK; kk++) {
                let bv = b_tile[kk * COLS + col4];
                for (var r = 0u; r < RM; r++) {
                    acc[r] += a_tile[(rowg * RM + r) * TK + kk] * bv;
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < RM; r++) {
        let gr = row0 + r;
        if gr >= dims.row_end {
            continue;
        }
        for (var e = 0u; e < 4u; e++) {
            let gc = col0 + e;
            if gc < dims.n {
                store_c(gr, gc, acc[r][e]);
            }
        }
    }
}
