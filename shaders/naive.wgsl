// naive.wgsl — textbook attention, the baseline FlashAttention is measured against.
//
// Three passes over a materialised score matrix S [heads of this chunk, N, M] in device
// memory (the host runs chunks of (batch, head) pairs whose scores fit one binding):
//   scores:  S = scale·Q·Kᵀ + bias, masked entries set to MASKED      (one invocation per s_ij)
//   softmax: row max, sum, LSE; S overwritten with P = softmax(S)       (one invocation per row)
//   pv:      O = P·V                                                     (one invocation per 4 lanes of o_i)
// Device-memory traffic, counted per invocation (no cache reuse assumed), in f32 words:
//   scores:  2·D per visible pair (a q row, a k row) read; 1 per pair written
//   softmax: 3·M read, M + 1 written per row (a fully masked row: M read, M + 1 written)
//   pv:      5·M read (M of P, 4·M of V), 4 written per invocation
// i.e. Θ(N·M·D) reads and Θ(N·M) score traffic per head — against flash's Θ(N·M·D/BR).
// A sparse mask arrives as N×M visibility bits computed on the CPU; no tile is skipped.

@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> o: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<storage, read_write> s: array<f32>;
// aux: ALiBi slopes (f32 bits, one per head) from word 0; visibility bits of a sparse mask
// from word bits_base: bit j%32 of word [(mask_head·N + i)·bits_stride + j/32]
// (bits_stride = 0: no sparse mask).
@group(0) @binding(7) var<storage, read> aux: array<u32>;
// Instrumentation (COUNT = 1 only): 64-bit (lo, hi) words read, then words written.
@group(0) @binding(8) var<storage, read_write> counters: array<atomic<u32>>;

// One dispatch's chunk of (batch, head) pairs and where its mask bits are.
struct Chunk {
    bh_base: u32,     // first (batch·H + head) of this chunk
    map_heads: u32,   // mask rows per head (1: shared by all heads)
    bits_base: u32,   // offset of the visibility bits in `aux`
    bits_stride: u32, // u32 words per query row of the bits (0: no sparse mask)
}
@group(0) @binding(9) var<uniform> chunk: Chunk;

fn count(slot: u32, words: u32) {
    if COUNT != 0u {
        let old = atomicAdd(&counters[2u * slot], words);
        if old > 0xffffffffu - words {
            atomicAdd(&counters[2u * slot + 1u], 1u);
        }
    }
}

fn mask_allows(h: u32, i: u32, j: u32) -> bool {
    if chunk.bits_stride == 0u {
        return true;
    }
    let word = aux[chunk.bits_base + (map_head_of(h, chunk.map_heads) * contract.n + i) * chunk.bits_stride + j / 32u];
    return ((word >> (j % 32u)) & 1u) != 0u;
}

@compute @workgroup_size(8, 8)
fn scores(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let i = gid.y;
    let bh = chunk.bh_base + gid.z;
    if i >= contract.n || j >= contract.m {
        return;
    }
    let b = bh / contract.heads;
    let h = bh % contract.heads;
    let kvh = h / contract.group;
    let q_base = (bh * contract.n + i) * D4;
    let k_base = ((b * contract.kv_heads + kvh) * contract.m + j) * D4;
    let pos = contract.q_offset + i32(i);
    var sc = MASKED;
    if in_band(contract, pos, i32(j)) && mask_allows(h, i, j) {
        var dot_qk = 0.0;
        for (var x = 0u; x < D4; x++) {
            dot_qk += dot(q[q_base + x], k[k_base + x]);
        }
        sc = contract.scale * dot_qk;
        if contract.alibi != 0u {
            sc += alibi_bias(bitcast<f32>(aux[h]), pos, i32(j));
        }
        count(0u, 8u * D4);
    }
    s[(gid.z * contract.n + i) * contract.m + j] = sc;
    count(1u, 1u);
}

@compute @workgroup_size(64)
fn softmax(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    let bh = chunk.bh_base + gid.y;
    if i >= contract.n {
        return;
    }
    let base = (gid.y * contract.n + i) * contract.m;
    var mx = MASKED;
    for (var j = 0u; j < contract.m; j++) {
        mx = max(mx, s[base + j]);
    }
    if mx == MASKED {
        for (var j = 0u; j < contract.m; j++) {
            s[base + j] = 0.0;
        }
        lse[bh * contract.n + i] = contract.neg_inf;
        count(0u, contract.m);
        count(1u, contract.m + 1u);
        return;
    }
    // sums in blocks of SUM_BLOCK keys, then the blocks' sums: two short sums instead of
    // one over every key (the error of one sum grows with its length)
    var sum = 0.0;
    var part = 0.0;
    for (var j = 0u; j < contract.m; j++) {
        part += exp(s[base + j] - mx);
        if j % SUM_BLOCK == SUM_BLOCK - 1u {
            sum += part;
            part = 0.0;
        }
    }
    sum += part;
    let inv = 1.0 / sum;
    for (var j = 0u; j < contract.m; j++) {
        s[base + j] = exp(s[base + j] - mx) * inv;
    }
    lse[bh * contract.n + i] = mx + log(sum);
    count(0u, 3u * contract.m);
    count(1u, contract.m + 1u);
}

const SUM_BLOCK: u32 = 32u;

@compute @workgroup_size(64)
fn pv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let idx = gid.x;
    let bh = chunk.bh_base + gid.y;
    if idx >= contract.n * D4 {
        return;
    }
    let i = idx / D4;
    let x = idx % D4;
    let b = bh / contract.heads;
    let kvh = (bh % contract.heads) / contract.group;
    let p_base = (gid.y * contract.n + i) * contract.m;
    let v_base = (b * contract.kv_heads + kvh) * contract.m * D4 + x;
    var acc = vec4<f32>(0.0);
    var part = vec4<f32>(0.0);
    for (var j = 0u; j < contract.m; j++) {
        part += s[p_base + j] * v[v_base + j * D4];
        if j % SUM_BLOCK == SUM_BLOCK - 1u {
            acc += part;
            part = vec4<f32>(0.0);
        }
    }
    acc += part;
    o[bh * contract.n * D4 + idx] = acc;
    count(0u, 5u * contract.m);
    count(1u, 4u);
}
