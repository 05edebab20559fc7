// softmax_tile.wgsl — a row's step over one staged key tile, shared by flash, decode and the
// block-list kernel (composed after common.wgsl and the lane helpers; the kernel declares
// `k_tile` and `v_tile`, BC keys of D4 vec4 lanes in workgroup memory, and the constants DP4,
// D4P, SG, SG_GUARD and LANE_GUARD): the scores (`tile_score`), then the online softmax
// (`softmax_tile`).

// One row's score q · k against key `c` of the K tile: over this invocation's vec4 lanes
// lane0 .. lane0 + DP4 (partial when a row spans invocations), or with subgroups (SG > 0) over
// the row's D4P lanes, lane `lane` loading vec4 j·SG + lane of the key and the others arriving
// by shuffle.
fn tile_score(qr: ptr<function, array<vec4<f32>, D4P>>, c: u32, lane0: u32, lane: u32) -> f32 {
    var sc = 0.0;
    if SG > 0u {
        for (var j = 0u; j < D4P; j += SG) {
            let kl = k_tile[c * D4 + select(j + lane, lane_at(j, lane), SG_GUARD)];
            for (var l = 0u; l < SG; l++) {
                sc += dot((*qr)[j + l], shuffle4(kl, l));
            }
        }
    } else {
        for (var x = 0u; x < DP4; x++) {
            if !LANE_GUARD || lane0 + x < D4 {
                sc += dot((*qr)[x], k_tile[c * D4 + lane0 + x]);
            }
        }
    }
    return sc;
}
//
// One row's BC scores `s` against the tile's keys (MASKED where hidden), whose largest is
// `tile_max`, folded into the row's running max `m`, sum `l` and weighted sum of V `acc`: this
// invocation's vec4 lanes lane0 .. lane0 + DP4 of V, or with subgroups (SG > 0) the lanes
// shuffled from the row's SG invocations. The tile's sums are taken on their own and then
// added to the running ones: two short sums instead of one over every key (with one query over
// 128K keys the error falls 6×, below numpy's float32 error). A fully masked tile leaves the
// row unchanged: corr = 1 and every weight 0.
fn softmax_tile(
    s: ptr<function, array<f32, BC>>,
    tile_max: f32,
    m: ptr<function, f32>,
    l: ptr<function, f32>,
    acc: ptr<function, array<vec4<f32>, D4P>>,
    lane0: u32,
    lane: u32,
) {
    let step = softmax_rescale(*m, tile_max);
    let m_new = step.x;
    let corr = step.y;
    // zeroed by hand each tile: SwiftShader under Chromium (Tint) was seen to keep the
    // previous tile's values in a loop-scoped `var` that WGSL zero-initialises
    var tile_acc: array<vec4<f32>, D4P>;
    for (var x = 0u; x < D4P; x++) {
        tile_acc[x] = vec4<f32>(0.0);
    }
    var tile_l = 0.0;
    for (var c = 0u; c < BC; c++) {
        let p = softmax_weight((*s)[c], m_new);
        tile_l += p;
        if SG > 0u {
            for (var j = 0u; j < D4P; j += SG) {
                let vl = v_tile[c * D4 + select(j + lane, lane_at(j, lane), SG_GUARD)];
                for (var t = 0u; t < SG; t++) {
                    tile_acc[j + t] += p * shuffle4(vl, t);
                }
            }
        } else {
            for (var x = 0u; x < DP4; x++) {
                if !LANE_GUARD || lane0 + x < D4 {
                    tile_acc[x] += p * v_tile[c * D4 + lane0 + x];
                }
            }
        }
    }
    *l = *l * corr + tile_l;
    for (var x = 0u; x < D4P; x++) {
        (*acc)[x] = (*acc)[x] * corr + tile_acc[x];
    }
    *m = m_new;
}
