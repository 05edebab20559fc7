// train.wgsl — the backward passes and the optimiser a small transformer needs beyond matmul
// and attention (kernels/train.rs; issue 20's trainer builds on them). Each has its f64
// oracle in kernels/train.rs.
//
// cross_entropy: per row of logits [rows, V] and a target id, the loss lse − logit[target]
//   and dlogits = (softmax − onehot)·scale; a target ≥ V marks a row that does not count
//   (loss 0, gradient 0). One invocation per row.
// gelu_backward: dx = dy·GELU'(x), GELU's tanh form (as matmul's fused epilogue, ACT = 1).
// layer_norm_backward: dx of y = γ ⊙ (x − μ)/σ + β per row, and the row's (μ, 1/σ) for
//   layer_norm_params, which sums dγ = Σ_rows dy ⊙ x̂ and dβ = Σ_rows dy per column.
// sum_squares: Σ x² of one tensor into norms[slot] (one workgroup; the global gradient norm
//   is the sum of the slots).
// adamw: one AdamW step (decoupled weight decay, bias-corrected moments) on gradients scaled
//   by min(1, max_norm/‖g‖), ‖g‖ from the norm slots — clipping without a host round trip.
// embedding_backward: dE[v] += Σ over tokens t with id v of dx[t] (the gather's gradient),
//   reading the tokens grouped by id.
//
// The model's glue (issue 20's GPT):
// embed: x[t] = E[ids[t]] (+ table[t mod seq] when a position table is given: sinusoidal
//   embeddings added to the tokens).
// gelu: y = GELU(x), the tanh form (the FFN keeps x for the backward).
// column_sum: out[c] = Σ_r x[r, c] (a bias's gradient).
// transpose: [rows, cols] → [cols, rows] (the operands of Xᵀ·dY and dY·Wᵀ).
// split_heads: part p of [B·T, parts·H·D] (the fused QKV projection) → [B, H, T, D].
// merge_heads: [B, H, T, D] → part p of [B·T, parts·H·D] (attention's output; dQ, dK, dV).

struct TrainJob {
    n: u32,             // rows, elements or tokens
    d: u32,             // row width (vocabulary for cross_entropy)
    groups_x: u32,      // workgroups per grid row
    slot: u32,          // sum_squares: the slot written; adamw: slots summed; embedding: V
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    max_norm: f32,      // 0: no clipping
    c1: f32,            // 1 / (1 − β1^t)
    c2: f32,            // 1 / (1 − β2^t)
    scale: f32,         // cross_entropy: the gradient's factor (1 / counted rows)
    seq: u32,           // tokens per sequence T (embed, split/merge)
    heads: u32,         // H (split/merge)
    parts: u32,         // column blocks of the token-major side (split/merge)
    accumulate: u32,    // layer_norm_backward: 1 adds dx into out
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> job: TrainJob;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;
@group(0) @binding(4) var<storage, read_write> out2: array<f32>;
@group(0) @binding(5) var<storage, read_write> out3: array<f32>;
@group(0) @binding(6) var<storage, read> ids: array<u32>;
@group(0) @binding(7) var<storage, read> gamma: array<f32>;

var<workgroup> part: array<f32, 256>;

fn index(wg: vec3<u32>, lid: u32) -> u32 {
    return (wg.y * job.groups_x + wg.x) * 64u + lid;
}

@compute @workgroup_size(64)
fn cross_entropy(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = index(wg, lid);
    if r >= job.n {
        return;
    }
    let t = ids[r];
    let base = r * job.d;
    if t >= job.d {
        for (var v = 0u; v < job.d; v++) {
            out[base + v] = 0.0;
        }
        out2[r] = 0.0;
        return;
    }
    var m = a[base];
    for (var v = 1u; v < job.d; v++) {
        m = max(m, a[base + v]);
    }
    var s = 0.0;
    for (var v = 0u; v < job.d; v++) {
        s += exp(a[base + v] - m);
    }
    let lse = m + log(s);
    out2[r] = lse - a[base + t];
    for (var v = 0u; v < job.d; v++) {
        var p = exp(a[base + v] - lse);
        if v == t {
            p -= 1.0;
        }
        out[base + v] = p * job.scale;
    }
}

@compute @workgroup_size(64)
fn gelu_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if i < job.n {
        out[i] = b[i] * gelu_tanh_grad(a[i]);
    }
}

@compute @workgroup_size(64)
fn layer_norm_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = index(wg, lid);
    if r >= job.n {
        return;
    }
    let base = r * job.d;
    let inv_d = 1.0 / f32(job.d);
    var mean = 0.0;
    for (var e = 0u; e < job.d; e++) {
        mean += a[base + e];
    }
    mean *= inv_d;
    var var_sum = 0.0;
    for (var e = 0u; e < job.d; e++) {
        let c = a[base + e] - mean;
        var_sum += c * c;
    }
    let rstd = 1.0 / sqrt(var_sum * inv_d + job.eps);
    // g = dy ⊙ γ; dx = (g − mean(g) − x̂·mean(g ⊙ x̂)) / σ
    var mean_g = 0.0;
    var mean_gx = 0.0;
    for (var e = 0u; e < job.d; e++) {
        let g = b[base + e] * gamma[e];
        mean_g += g;
        mean_gx += g * (a[base + e] - mean) * rstd;
    }
    mean_g *= inv_d;
    mean_gx *= inv_d;
    for (var e = 0u; e < job.d; e++) {
        let xh = (a[base + e] - mean) * rstd;
        let dx = rstd * (b[base + e] * gamma[e] - mean_g - xh * mean_gx);
        if job.accumulate == 1u {
            out[base + e] += dx;
        } else {
            out[base + e] = dx;
        }
    }
    out2[2u * r] = mean;
    out2[2u * r + 1u] = rstd;
}

@compute @workgroup_size(64)
fn layer_norm_params(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = index(wg, lid);
    if c >= job.d {
        return;
    }
    var dg = 0.0;
    var db = 0.0;
    for (var r = 0u; r < job.n; r++) {
        let dy = b[r * job.d + c];
        let xh = (a[r * job.d + c] - gamma[2u * r]) * gamma[2u * r + 1u];
        dg += dy * xh;
        db += dy;
    }
    out[c] = dg;
    out[job.d + c] = db;
}

@compute @workgroup_size(256)
fn sum_squares(@builtin(local_invocation_index) lid: u32) {
    var acc = 0.0;
    for (var i = lid; i < job.n; i += 256u) {
        acc += a[i] * a[i];
    }
    part[lid] = acc;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if lid < w {
            part[lid] += part[lid + w];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[job.slot] = part[0];
    }
}

@compute @workgroup_size(64)
fn adamw(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if i >= job.n {
        return;
    }
    var total = 0.0;
    for (var s = 0u; s < job.slot; s++) {
        total += b[s];
    }
    let norm = sqrt(total);
    var clip = 1.0;
    if job.max_norm > 0.0 && norm > job.max_norm {
        clip = job.max_norm / norm;
    }
    let g = a[i] * clip;
    let m = job.beta1 * out2[i] + (1.0 - job.beta1) * g;
    let v = job.beta2 * out3[i] + (1.0 - job.beta2) * g * g;
    var p = out[i];
    p -= job.lr * job.weight_decay * p;
    p -= job.lr * (m * job.c1) / (sqrt(v * job.c2) + job.eps);
    out[i] = p;
    out2[i] = m;
    out3[i] = v;
}

@compute @workgroup_size(64)
fn embedding_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // `ids` holds the tokens grouped by id (train::tokens_by_id): job.slot + 1 offsets, then
    // positions ordered by id
    let id = index(wg, lid);
    let v = id / job.d;
    let c = id % job.d;
    if v >= job.slot {
        return;
    }
    var acc = 0.0;
    for (var i = ids[v]; i < ids[v + 1u]; i++) {
        acc += a[ids[job.slot + 1u + i] * job.d + c];
    }
    out[v * job.d + c] += acc;
}

@compute @workgroup_size(64)
fn embed(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if i >= job.n * job.d {
        return;
    }
    let t = i / job.d;
    let c = i % job.d;
    var x = a[ids[t] * job.d + c];
    if job.parts == 1u {
        x += b[(t % job.seq) * job.d + c];
    }
    out[i] = x;
}

@compute @workgroup_size(64)
fn gelu(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if i < job.n {
        out[i] = gelu_tanh(a[i]);
    }
}

@compute @workgroup_size(64)
fn sigmoid(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if i < job.n {
        // exp(−x) overflows to +inf for x < −88: 1/(1 + inf) = 0, the limit
        out[i] = 1.0 / (1.0 + exp(-a[i]));
    }
}

/// dx = dy·y·(1 − y) from the sigmoid's output y (`a`) and dy (`b`).
@compute @workgroup_size(64)
fn sigmoid_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if i < job.n {
        out[i] = b[i] * a[i] * (1.0 - a[i]);
    }
}

@compute @workgroup_size(64)
fn column_sum(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = index(wg, lid);
    if c >= job.d {
        return;
    }
    var acc = 0.0;
    for (var r = 0u; r < job.n; r++) {
        acc += a[r * job.d + c];
    }
    out[c] = acc;
}

@compute @workgroup_size(64)
fn transpose(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    // i indexes the destination [cols, rows]: consecutive lanes write consecutive addresses
    let i = index(wg, lid);
    if i >= job.n * job.d {
        return;
    }
    let r = i % job.n;
    let c = i / job.n;
    out[i] = a[r * job.d + c];
}

// Element i of a head-major [B, H, T, D] tensor and its place in the token-major
// [B·T, parts·H·D] one, part job.slot.
fn token_major(i: u32) -> u32 {
    let x = i % job.d;
    let t = (i / job.d) % job.seq;
    let h = (i / (job.d * job.seq)) % job.heads;
    let bt = i / (job.d * job.seq * job.heads);
    let width = job.parts * job.heads * job.d;
    return (bt * job.seq + t) * width + (job.slot * job.heads + h) * job.d + x;
}

@compute @workgroup_size(64)
fn split_heads(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if i < job.n {
        out[i] = a[token_major(i)];
    }
}

@compute @workgroup_size(64)
fn merge_heads(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, lid);
    if i < job.n {
        out[token_major(i)] = a[i];
    }
}
