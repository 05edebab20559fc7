// mod_map.wgsl — a block map refined by the user's mask_mod (FlexAttention's
// create_block_mask), on the GPU: one invocation per listed tile counts the (row, key) pairs
// that every rule leaves visible — the call's band and sparse mask as the attention kernels
// test them (tile_visible), ANDed with mask_mod — for batch `job.b`, adding to its count.
// The host then drops tiles counted 0 and keeps FULL only on tiles whose every pair counted.
// Loop iterations per invocation: BR · BC (under llvmpipe's 65535 per loop nest).

struct MapJob {
    entries: u32,  // listed tiles
    b: u32,        // the batch this dispatch evaluates mask_mod for
    groups_x: u32, // workgroups along x (the grid is 2-D past 65535 workgroups)
    pad: u32,
}

@group(0) @binding(1) var<storage, read> block_map: array<u32>;
@group(0) @binding(2) var<uniform> tiles: Tiles;
@group(0) @binding(3) var<storage, read> entry_row: array<u32>; // per tile: map head · n_qtiles + query tile
@group(0) @binding(4) var<storage, read_write> counts: array<u32>;
@group(0) @binding(5) var<uniform> job: MapJob;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let e = (wg.y * job.groups_x + wg.x) * 64u + lid;
    if e >= job.entries {
        return;
    }
    let map_row = entry_row[e];
    let qt = map_row % tiles.n_qtiles;
    // maps are per head when mask_mod reads h; otherwise h = 0 stands for every head
    let h = map_row / tiles.n_qtiles;
    let entry = block_map[tiles.map_rows + e];
    let key0 = (entry & ~FULL) * BC;
    let full = (entry & FULL) != 0u;
    let bits_at = block_map[tiles.mask_base + e];
    var count = 0u;
    for (var r = 0u; r < BR; r++) {
        let row = qt * BR + r;
        if row >= contract.n {
            break;
        }
        let pos = contract.q_offset + i32(row);
        var row_bits = 0xffffffffu;
        if bits_at != NO_BITS {
            row_bits = block_map[tiles.bits_base + bits_at + r];
        }
        for (var c = 0u; c < BC; c++) {
            let key = key0 + c;
            if key >= contract.m {
                break;
            }
            if tile_visible(contract, full, pos, i32(key), row_bits, c) && mask_mod(job.b, h, row, key) {
                count += 1u;
            }
        }
    }
    // past the mods' loop budget the count would be wrong: the host refuses the map
    if mod_overrun || counts[e] == 0xffffffffu {
        counts[e] = 0xffffffffu;
    } else {
        counts[e] += count;
    }
}
