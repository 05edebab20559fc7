// flash_bindings.wgsl — the bindings of both flash forward kernels (flash.wgsl and
// flash_coop.wgsl), which a prepared call swaps without changing its bind groups.
//
// Q, K, V are stored as `in4`: vec4<f32>, or vec4<f16> in the f16-storage variant (half the
// bytes; every value is widened to f32 on load).
@group(0) @binding(1) var<storage, read> q: array<in4>;
@group(0) @binding(2) var<storage, read> k: array<in4>;
@group(0) @binding(3) var<storage, read> v: array<in4>;
@group(0) @binding(4) var<storage, read_write> o: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;
@group(0) @binding(6) var<storage, read> block_map: array<u32>;
@group(0) @binding(7) var<storage, read> slopes: array<f32>;
// Instrumentation (COUNT = 1 only): [0] tiles visited, [1] K/V keys loaded, [2] query rows
// loaded, [3] rows written (O and LSE), [4] rows resumed (O and LSE read back between
// passes). Bytes follow on the host: keys·D·4·2, rows·D·4, rows·(D+1)·4, rows·(D+1)·4.
@group(0) @binding(8) var<storage, read_write> counters: array<atomic<u32>>;
@group(0) @binding(9) var<uniform> tiles: Tiles;
