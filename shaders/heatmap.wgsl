// heatmap.wgsl — attention probabilities of one head, pooled to screen resolution on the GPU,
// so the N×M matrix is never materialised or read back.
//
// One invocation per output pixel. A pixel covers rows [r0, r1) × keys [c0, c1) of the view;
// it visits at most SAMPLE × SAMPLE (row, key) pairs of that rectangle (every pair when the
// rectangle is that small, else an evenly strided sample) and reduces
// p_ij = exp(s_ij − LSE_i) over the visible ones by max or mean. Visibility is the contract's:
// the band in-kernel, the sparse mask from the flash block map (full tiles, or visibility
// bits for partial ones); keys of tiles absent from the map are masked. LSE comes from a
// flash run over the same spec.

@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read> block_map: array<u32>;
@group(0) @binding(5) var<storage, read> slopes: array<f32>;
@group(0) @binding(6) var<storage, read_write> pixels: array<f32>;

struct View {
    batch: u32,
    head: u32,
    row0: u32,
    row1: u32,
    col0: u32,
    col1: u32,
    width: u32,
    height: u32,
    mean: u32,   // 0: max pooling, 1: mean over the visited visible pairs
    pad0: u32,
    pad1: u32,
    pad2: u32,
}
@group(0) @binding(7) var<uniform> view: View;
// The flash call's first pass: where its block map lists the tiles.
@group(0) @binding(8) var<uniform> tiles: Tiles;


// The index of the first entry of `row` with key tile >= kt (entries are sorted).
fn first_entry(begin: u32, end: u32, kt: u32) -> u32 {
    var lo = begin;
    var hi = end;
    while lo < hi {
        let mid = (lo + hi) / 2u;
        if (block_map[tiles.map_rows + mid] & ~FULL) < kt {
            lo = mid + 1u;
        } else {
            hi = mid;
        }
    }
    return lo;
}

@compute @workgroup_size(8, 8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if gid.x >= view.width || gid.y >= view.height {
        return;
    }
    let rows = view.row1 - view.row0;
    let cols = view.col1 - view.col0;
    let r0 = view.row0 + gid.y * rows / view.height;
    let r1 = max(r0 + 1u, view.row0 + (gid.y + 1u) * rows / view.height);
    let c0 = view.col0 + gid.x * cols / view.width;
    let c1 = max(c0 + 1u, view.col0 + (gid.x + 1u) * cols / view.width);
    let row_step = max(1u, (r1 - r0 + SAMPLE - 1u) / SAMPLE);
    let col_step = max(1u, (c1 - c0 + SAMPLE - 1u) / SAMPLE);

    let h = view.head;
    let b = view.batch;
    let kv_base = (b * contract.kv_heads + h / contract.group) * contract.m * D4;
    var slope = 0.0;
    if contract.alibi != 0u {
        slope = slopes[h];
    }

    var best = 0.0;
    var sum = 0.0;
    var count = 0u;
    for (var i = r0; i < r1; i += row_step) {
        let q_base = ((b * contract.heads + h) * contract.n + i) * D4;
        let row_lse = lse[(b * contract.heads + h) * contract.n + i];
        if row_lse == contract.neg_inf {
            continue; // no visible key in this row
        }
        let pos = contract.q_offset + i32(i);
        let qt = i / BR;
        let map_row = map_head_of(h, tiles.map_heads) * tiles.n_qtiles + qt;
        let list_end = block_map[map_row + 1u];
        var t = first_entry(block_map[map_row], list_end, c0 / BC);
        for (var j = c0; j < c1; j += col_step) {
            // advance to the entry of key j's tile, if listed
            while t < list_end && (block_map[tiles.map_rows + t] & ~FULL) < j / BC {
                t++;
            }
            if t >= list_end || (block_map[tiles.map_rows + t] & ~FULL) != j / BC {
                continue; // tile not listed: masked
            }
            let entry = block_map[tiles.map_rows + t];
            if (entry & FULL) == 0u {
                if !in_band(contract, pos, i32(j)) || (MODS && !mask_mod(b, h, i, j)) {
                    continue;
                }
                let bits_at = block_map[tiles.mask_base + t];
                if bits_at != NO_BITS {
                    let word = block_map[tiles.bits_base + bits_at + (i % BR)];
                    if ((word >> (j % BC)) & 1u) == 0u {
                        continue;
                    }
                }
            }
            var s = 0.0;
            for (var x = 0u; x < D4; x++) {
                s += dot(q[q_base + x], k[kv_base + j * D4 + x]);
            }
            var sc = contract.scale * s + alibi_bias(slope, pos, i32(j));
            if MODS {
                sc = score_mod(sc, b, h, i, j);
            }
            let p = exp(sc - row_lse);
            best = max(best, p);
            sum += p;
            count++;
        }
    }
    var value = best;
    if view.mean != 0u {
        value = select(0.0, sum / f32(count), count > 0u);
    }
    pixels[gid.y * view.width + gid.x] = select(value, mods_nan(), MODS && mod_overrun);
}
