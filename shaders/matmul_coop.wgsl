// matmul_coop.wgsl — C = act(A·B + bias) on cooperative matrices (tensor cores on NVIDIA,
// simdgroup matrices on Apple): the `wgpu_cooperative_matrix` path of matmul.wgsl, same
// bindings and epilogue (matmul_scalar.wgsl), `Dims` (matmul_common.wgsl), any M, K, N ≥ 1.
//
// A workgroup is one subgroup (SGW invocations) and owns a 2S × 2S block of C as 2 × 2
// accumulators `coop_c` (S×S, f32). K streams through workgroup memory in S-deep slabs:
// the subgroup stages A (2S × S) and B (S × 2S) from storage, converting to the
// input type `in1` (f16 on the f16 path: inputs rounded to f16, products accumulated in
// f32), with zeros past the edges, then each accumulator takes one coopMultiplyAdd per
// slab. At the end the accumulators go through workgroup memory so that the epilogue (bias,
// GELU, accumulate, bounds) runs per element as in matmul.wgsl.
// Device-memory traffic: A read ⌈N/2S⌉ times, B read ⌈M/2S⌉ times, C written once.

const S: u32 = COOP_S;
const BM: u32 = 2u * S; // rows of C per workgroup
const BN: u32 = 2u * S; // columns of C per workgroup
var<workgroup> a_s: array<in1, BM * S>;    // [row][k], row-major, stride S
var<workgroup> b_s: array<in1, S * BN>;    // [k][column], row-major, stride BN
var<workgroup> c_s: array<f32, BM * BN>;   // [row][column], row-major, stride BN

@compute @workgroup_size(SGW)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row0 = dims.row_base + wg.y * BM;
    let col0 = wg.x * BN;
    // 2 × 2 accumulators, named rather than indexed (no dynamic indexing of cooperative
    // matrices, which drivers handle unevenly)
    var c00 = coop_c();
    var c01 = coop_c();
    var c10 = coop_c();
    var c11 = coop_c();
    for (var k0 = dims.k_begin; k0 < dims.k_end; k0 += S) {
        for (var x = lid; x < BM * S; x += SGW) {
            let gr = row0 + x / S;
            let gk = k0 + x % S;
            var val = 0.0;
            if gr < dims.row_end && gk < dims.k_end {
                val = a[gr * dims.k + gk - dims.a_shift];
            }
            a_s[x] = in1(val);
        }
        for (var x = lid; x < S * BN; x += SGW) {
            let gk = k0 + x / BN;
            let gc = col0 + x % BN;
            var val = 0.0;
            if gk < dims.k_end && gc < dims.n {
                val = b[gk * dims.n + gc];
            }
            b_s[x] = in1(val);
        }
        workgroupBarrier();
        let a0 = coopLoadT<coop_a>(&a_s[0], S);
        let a1 = coopLoadT<coop_a>(&a_s[S * S], S);
        let b0 = coopLoadT<coop_b>(&b_s[0], BN);
        let b1 = coopLoadT<coop_b>(&b_s[S], BN);
        c00 = coopMultiplyAdd(a0, b0, c00);
        c01 = coopMultiplyAdd(a0, b1, c01);
        c10 = coopMultiplyAdd(a1, b0, c10);
        c11 = coopMultiplyAdd(a1, b1, c11);
        workgroupBarrier();
    }
    coopStoreT(c00, &c_s[0], BN);
    coopStoreT(c01, &c_s[S], BN);
    coopStoreT(c10, &c_s[S * BN], BN);
    coopStoreT(c11, &c_s[S * BN + S], BN);
    workgroupBarrier();
    for (var x = lid; x < BM * BN; x += SGW) {
        let gr = row0 + x / BN;
        let gc = col0 + x % BN;
        if gr < dims.row_end && gc < dims.n {
            store_c(gr, gc, c_s[x]);
        }
    }
}
