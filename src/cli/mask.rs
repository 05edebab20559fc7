//! `longctx mask`: the block map of a pattern as a character map, its sparsity and FLOPs.

use longctx::contract::blockmap::{BlockMap, FULL};
use longctx::{AttnSpec, FlashConfig};

use super::bench::parse_size;
use super::maskargs::{MaskArgs, shape};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example:
  longctx mask --pattern bigbird --n 4k
  longctx mask --n 16k --causal --window 512,0 --global 4 --block 128
  longctx mask --n 4k --mask-mod documents.wgsl        # a mask_mod's map, built on the GPU")]
pub struct MaskCmdArgs {
    #[command(flatten)]
    mask: MaskArgs,
    /// Query tokens N (k = 1024).
    #[arg(long, default_value = "4k")]
    n: String,
    /// Key tokens M (default = N).
    #[arg(long)]
    m: Option<String>,
    /// Tile size in tokens: B query rows × min(B, 32) keys (default: flash's tiles at --d).
    #[arg(long)]
    block: Option<usize>,
    /// Head dim, for FLOPs and default tiles.
    #[arg(long, default_value_t = 64)]
    d: usize,
    /// Query heads (per-head block masks print head 0).
    #[arg(long, default_value_t = 1)]
    heads: usize,
    /// Most characters per map side (1–1024); groups of tiles share a character.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    width: u16,
}

pub fn run(dev: &super::DeviceArgs, a: &MaskCmdArgs) -> anyhow::Result<()> {
    let n = parse_size(&a.n)?;
    let m = a.m.as_deref().map(parse_size).transpose()?.unwrap_or(n);
    let spec = a.mask.apply(AttnSpec::new(shape(a.heads, a.heads, n, m, a.d)))?;
    let (br, bc) = match a.block {
        Some(b) => (b, b.min(32)),
        None => {
            let c = FlashConfig::for_limits(&wgpu::Limits::default(), a.d);
            (c.br as usize, c.bc as usize)
        }
    };
    // mask_mod is WGSL: the map is refined on the GPU, tile by tile, so it must fit one
    // of the device's bindings (checked as it is built, not after)
    let gpu = match spec.mods.as_ref().filter(|m| m.has_mask_mod()) {
        Some(_) => Some(dev.gpu()?),
        None => None,
    };
    let mut map = match &gpu {
        Some(g) => longctx::kernels::build_map(g, &spec, br, bc)?,
        None => BlockMap::build_within(&spec, br, bc, longctx::kernels::host_budget())?,
    };
    let mut built = String::new();
    if let (Some(mods), Some(gpu)) = (spec.mods.as_ref(), gpu) {
        let (refined, took) = longctx::kernels::mods::refine(&gpu, &spec, mods, &map)?;
        map = refined;
        built = format!("mask_mod evaluated on {} in {:.1} ms\n", gpu.info().name, took.as_secs_f64() * 1e3);
    }
    print!("{}{built}", render(&spec, &map, a.width as usize));
    Ok(())
}

/// The map of head 0 as text, with sparsity and FLOPs.
pub fn render(spec: &AttnSpec, map: &BlockMap, width: usize) -> String {
    let s = spec.shape;
    let (nq, nk) = (map.n_qtiles, map.n_ktiles);
    let (gy, gx) = (nq.div_ceil(width), nk.div_ceil(width));
    // per character of head 0: tiles listed and tiles full — memory proportional to the
    // characters and time to the listed tiles, never to all nq × nk tiles
    let (rows, cols) = (nq.div_ceil(gy), nk.div_ceil(gx));
    let mut listed = vec![0usize; rows * cols];
    let mut full = vec![0usize; rows * cols];
    for qt in 0..nq {
        for &e in map.row(0, qt) {
            let at = (qt / gy) * cols + (e & !FULL) as usize / gx;
            listed[at] += 1;
            full[at] += (e & FULL != 0) as usize;
        }
    }
    let mut out = format!(
        "pattern {}  N={} M={} H={} D={}\ntiles {}×{} → {nq}×{nk} tiles; each character {gy}×{gx} tiles   █ full  ▒ partial  · skipped\n",
        spec.describe(),
        s.n,
        s.m,
        s.heads,
        s.head_dim,
        map.br,
        map.bc
    );
    for cy in 0..rows {
        for cx in 0..cols {
            let tiles = (((cy + 1) * gy).min(nq) - cy * gy) * (((cx + 1) * gx).min(nk) - cx * gx);
            let at = cy * cols + cx;
            out.push(if full[at] == tiles {
                '█'
            } else if listed[at] == 0 {
                '·'
            } else {
                '▒'
            });
        }
        out.push('\n');
    }
    let full = map.entries.iter().filter(|&&e| e & FULL != 0).count();
    let total = map.heads * nq * nk;
    let d = s.head_dim as f64;
    let dense = 4.0 * d * (s.heads * s.n * s.m) as f64;
    let exact = 4.0 * d * map.visible_pairs(s.heads) as f64;
    let heads_factor = if map.heads == 1 { s.heads } else { 1 } as f64;
    let computed = 4.0 * d * (map.visited() * map.br * map.bc) as f64 * heads_factor;
    out.push_str(&format!(
        "sparsity {:.2}% of tiles skipped ({} of {total} visited: {full} full, {} partial)\n",
        100.0 * map.sparsity(),
        map.visited(),
        map.visited() - full
    ));
    out.push_str(&format!(
        "FLOPs (4·D·visible pairs, all heads) {:.3} GFLOP = {:.2}% of dense {:.3} GFLOP; the kernel computes {:.3} GFLOP over the listed tiles\n",
        exact / 1e9,
        100.0 * exact / dense,
        dense / 1e9,
        computed / 1e9
    ));
    out.push_str(&format!("block map {} KiB on the device\n", map.bytes().div_ceil(1024)));
    out
}
