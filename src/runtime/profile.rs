//! Per-adapter profiles: presets of kernel configuration for known hardware, as plain data
//! (the kernels read what they need: flash its rows and subgroup width, decode its split
//! size), chosen from the adapter info and overridable (`--profile NAME`). Every preset is checked on every machine:
//! its configurations must fit its hardware's limits and validate with naga
//! (`tests/profiles.rs`), and run on the present adapter where that adapter's limits allow.

/// One preset.
#[derive(Clone, Debug, PartialEq)]
pub struct Profile {
    /// Short name, as given to `--profile`.
    pub name: &'static str,
    /// The hardware the preset is meant for, in words.
    pub hardware: &'static str,
    /// The limits the preset's configurations are sized for (the hardware's, as wgpu sees it).
    pub limits: wgpu::Limits,
    /// Subgroup width for shuffles (0: plain loads — variable or unknown subgroup size).
    pub subgroup: u32,
    /// flash query rows per workgroup at D ≤ 128 (halved per extra invocation per row).
    pub rows: u32,
    /// decode cache slots per split.
    pub decode_chunk: usize,
    /// The adapter's loads cost per lane (CPU adapters: a load is a loop over the SIMD lanes),
    /// so kernels that load less win over kernels that share loads through workgroup memory:
    /// the matmul's register-blocked kernel (where K and N are multiples of 4) instead of the
    /// tiled one, decode's lane-per-split kernel instead of the staged one.
    pub per_lane_loads: bool,
    /// Why, one line per choice.
    pub reasons: &'static [&'static str],
}

fn limits(storage_kib: u32, invocations: u32) -> wgpu::Limits {
    wgpu::Limits {
        max_compute_workgroup_storage_size: storage_kib * 1024,
        max_compute_invocations_per_workgroup: invocations,
        max_compute_workgroup_size_x: invocations,
        ..wgpu::Limits::default()
    }
}

impl Profile {
    /// Every preset, most specific first.
    pub fn all() -> Vec<Profile> {
        vec![
            Profile {
                name: "a100",
                hardware: "NVIDIA A100 (Ampere, 32-wide warps, 48 KiB shared memory per workgroup under Vulkan)",
                limits: limits(48, 1024),
                subgroup: 32,
                rows: 128,
                decode_chunk: 1024,
                per_lane_loads: false,
                reasons: &[
                    "matmul tensor cores: 16×16×16 f16→f32 cooperative matrices (`--tensor-cores f16`), one warp per 32×32 block of C (2×2 accumulators); exact (f32) matmuls use f32-input ones only if the driver lists them (`longctx info` shows the list; NVIDIA's lists f16 and int8 inputs), else the vec4 kernel",
                    "flash tensor cores: f16 Q, K, V on 16×16 f16→f32 cooperative matrices (`Inputs::F16TensorCores`, `bench --tensor-cores f16`), one warp per 32 query rows × 32-key tiles at D ≤ 128 (46.3 KiB of the 48 KiB), 16 × 16 at D = 256; f32 flash keeps the vec4 tiles below (no f32 matrices listed)",
                    "128 invocations = 4 warps per workgroup, one query row each",
                    "Bc = 32 keys at D ≤ 128: K+V tiles of 32 KiB fit the 48 KiB",
                    "warp-wide shuffles replace same-address shared loads",
                    "108 SMs: 1024-slot decode splits keep them busy from 32K tokens",
                ],
            },
            Profile {
                name: "h100",
                hardware: "NVIDIA H100 / H200 (Hopper, 32-wide warps; Vulkan exposes 48 KiB shared memory per workgroup)",
                limits: limits(48, 1024),
                subgroup: 32,
                rows: 128,
                decode_chunk: 1024,
                per_lane_loads: false,
                reasons: &[
                    "matmul tensor cores: 16×16×16 f16→f32 cooperative matrices (`--tensor-cores f16`), one warp per 32×32 block of C (2×2 accumulators); exact (f32) matmuls use f32-input ones only if the driver lists them (`longctx info` shows the list; NVIDIA's lists f16 and int8 inputs), else the vec4 kernel",
                    "flash tensor cores: f16 Q, K, V on 16×16 f16→f32 cooperative matrices (`Inputs::F16TensorCores`, `bench --tensor-cores f16`), one warp per 32 query rows × 32-key tiles at D ≤ 128 (46.3 KiB of the 48 KiB), 16 × 16 at D = 256; f32 flash keeps the vec4 tiles below (no f32 matrices listed)",
                    "128 invocations = 4 warps, as on A100; the 227 KiB of CUDA is not reachable from Vulkan",
                    "Bc = 32 keys at D ≤ 128 (32 KiB of 48 KiB)",
                    "132 SMs: 1024-slot decode splits",
                ],
            },
            Profile {
                name: "nvidia",
                hardware: "other NVIDIA GPUs (32-wide warps, 48 KiB)",
                limits: limits(48, 1024),
                subgroup: 32,
                rows: 64,
                decode_chunk: 512,
                per_lane_loads: false,
                reasons: &[
                    "64 invocations = 2 warps: enough occupancy on smaller parts",
                    "Bc = 32 at D ≤ 128",
                ],
            },
            Profile {
                name: "amd-cdna",
                hardware: "AMD Instinct (CDNA, 64-wide wavefronts, 64 KiB LDS)",
                limits: limits(64, 1024),
                subgroup: 64,
                rows: 128,
                decode_chunk: 1024,
                per_lane_loads: false,
                reasons: &["128 invocations = 2 wave64", "64-wide shuffles", "Bc = 32 at D ≤ 128"],
            },
            Profile {
                name: "amd-rdna",
                hardware: "AMD Radeon (RDNA, wave32 or wave64 chosen by the driver, 64 KiB LDS)",
                limits: limits(64, 1024),
                subgroup: 0,
                rows: 64,
                decode_chunk: 512,
                per_lane_loads: false,
                reasons: &[
                    "the subgroup size varies (32/64): plain shared loads",
                    "64 invocations = 2 wave32",
                ],
            },
            Profile {
                name: "apple",
                hardware: "Apple GPUs (32-wide SIMD groups, 32 KiB threadgroup memory)",
                limits: limits(32, 1024),
                subgroup: 32,
                rows: 64,
                decode_chunk: 512,
                per_lane_loads: false,
                reasons: &[
                    "32 KiB threadgroup memory: Bc = 32 at D ≤ 64, 16 at D = 128",
                    "SIMD-group shuffles",
                ],
            },
            Profile {
                name: "intel",
                hardware: "Intel GPUs (SIMD8–32 chosen by the compiler, 64 KiB SLM)",
                limits: limits(64, 1024),
                subgroup: 0,
                rows: 64,
                decode_chunk: 512,
                per_lane_loads: false,
                reasons: &["the subgroup size varies (8–32): plain shared loads"],
            },
            Profile {
                name: "software",
                hardware: "CPU adapters: Mesa lavapipe/llvmpipe, WARP, SwiftShader (8-wide SIMD lanes, 32 KiB)",
                limits: limits(32, 1024),
                subgroup: 8,
                rows: 64,
                decode_chunk: 512,
                per_lane_loads: true,
                reasons: &[
                    "matmul register-blocked, no workgroup memory: llvmpipe runs every load as a loop over its 8 lanes, so 8 × 8 outputs per invocation from vec4 loads beat staging tiles (1024³: 2.1 → 13 GFLOP/s measured)",
                    "same-address workgroup loads become gathers: 8-wide shuffles instead (3.6 → 13 GFLOP/s measured)",
                    "tile shape barely matters (BR 8…256 within 20 %): 64 rows",
                    "llvmpipe stops loops after 65535 iterations: tile lists run in passes",
                ],
            },
            Self::portable(),
        ]
    }

    /// The preset sized for WebGPU's default limits: runs anywhere.
    pub fn portable() -> Profile {
        Profile {
            name: "portable",
            hardware: "anything else, sized for the WebGPU default limits (16 KiB, 256 invocations)",
            limits: wgpu::Limits::default(),
            subgroup: 0,
            rows: 64,
            decode_chunk: 512,
            per_lane_loads: false,
            reasons: &["fits every WebGPU device: 16 KiB workgroup memory, 256 invocations, no subgroups"],
        }
    }

    /// The preset called `name`.
    pub(crate) fn by_name(name: &str) -> Option<Profile> {
        Self::all().into_iter().find(|p| p.name == name)
    }

    /// Every preset's name.
    pub fn names() -> Vec<&'static str> {
        Self::all().iter().map(|p| p.name).collect()
    }

    /// The preset for an adapter, and why.
    pub fn detect(info: &wgpu::AdapterInfo) -> (Profile, String) {
        let name = info.name.to_lowercase();
        let pick = |n: &str, why: String| (Self::by_name(n).unwrap_or_else(Self::portable), why);
        match (info.vendor, info.device_type) {
            (_, wgpu::DeviceType::Cpu) => pick("software", format!("device type Cpu ({})", info.name)),
            (0x10de, _) if name.contains("a100") => {
                pick("a100", format!("NVIDIA vendor id and `{}`", info.name))
            }
            (0x10de, _) if name.contains("h100") || name.contains("h200") => {
                pick("h100", format!("NVIDIA vendor id and `{}`", info.name))
            }
            (0x10de, _) => pick("nvidia", "NVIDIA vendor id 0x10de".into()),
            (0x1002, _) if name.contains("instinct") || name.contains(" mi") => {
                pick("amd-cdna", format!("AMD vendor id and `{}`", info.name))
            }
            (0x1002, _) => pick("amd-rdna", "AMD vendor id 0x1002".into()),
            (0x106b, _) => pick("apple", "Apple vendor id 0x106b".into()),
            _ if info.backend == wgpu::Backend::Metal => pick("apple", "Metal backend".into()),
            (0x8086, _) => pick("intel", "Intel vendor id 0x8086".into()),
            _ => pick("portable", format!("no preset for vendor 0x{:04x} `{}`", info.vendor, info.name)),
        }
    }
}

/// `driver driver_info`, trimmed: the driver identity records and caches key on.
pub fn driver_of(info: &wgpu::AdapterInfo) -> String {
    format!("{} {}", info.driver, info.driver_info).trim().to_string()
}
