//! `longctx info`.

use longctx::runtime::{USEFUL_FEATURES, list_adapters};
use longctx::{FlashConfig, Gpu};

use super::DeviceArgs;

#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// List every adapter wgpu can see, best first, instead of describing the chosen one.
    #[arg(long)]
    all: bool,
    /// Print the table of kernel-configuration presets (no adapter needed).
    #[arg(long)]
    profiles: bool,
}

pub fn run(dev: &DeviceArgs, args: &InfoArgs) -> anyhow::Result<()> {
    if args.profiles {
        print!("{}", profiles_table());
        return Ok(());
    }
    if args.all {
        // every backend unless --backend narrows it (a device is created on the primary ones)
        let mut options = dev.options()?;
        options.backends.get_or_insert(wgpu::Backends::all());
        let adapters = list_adapters(&options);
        if adapters.is_empty() {
            anyhow::bail!(longctx::Error::NoAdapter { detail: String::new() });
        }
        for a in adapters {
            let note = if a.backend == wgpu::Backend::Gl { "  (not supported: GL)" } else { "" };
            println!(
                "{:<40} {:?} {:?} ({} {}){note}",
                a.name, a.backend, a.device_type, a.driver, a.driver_info
            );
        }
        return Ok(());
    }
    let gpu = dev.gpu()?;
    print!("{}", describe(&gpu));
    Ok(())
}

/// The adapter, features and limits as text.
pub fn describe(gpu: &Gpu) -> String {
    let i = gpu.info();
    let l = gpu.limits();
    let f = gpu.features();
    let yes = |feat: wgpu::Features| if f.contains(feat) { "yes" } else { "no" };
    let kib = |b: u64| format!("{} KiB", b / 1024);
    let mib = |b: u64| format!("{} MiB", b / (1024 * 1024));
    let mut s = String::new();
    let mut line = |k: &str, v: String| s.push_str(&format!("{k:<34} {v}\n"));
    line("adapter", i.name.clone());
    let (profile, why) = gpu.profile();
    line("profile", format!("{} — {why}", profile.name));
    line("backend", format!("{:?}", i.backend));
    line("device type", format!("{:?}", i.device_type));
    line("driver", longctx::runtime::driver_of(i));
    line("vendor / device id", format!("0x{:04x} / 0x{:04x}", i.vendor, i.device));
    line("subgroup size", format!("{}..={}", i.subgroup_min_size, i.subgroup_max_size));
    line("feature SUBGROUP", yes(wgpu::Features::SUBGROUP).into());
    line("feature SHADER_F16", yes(wgpu::Features::SHADER_F16).into());
    line("feature TIMESTAMP_QUERY", yes(wgpu::Features::TIMESTAMP_QUERY).into());
    line(
        "feature EXPERIMENTAL_COOPERATIVE_MATRIX",
        yes(wgpu::Features::EXPERIMENTAL_COOPERATIVE_MATRIX).into(),
    );
    let coop = gpu.cooperative_matrices();
    line(
        "cooperative matrices (M×N×K A/B→C)",
        if coop.is_empty() {
            "none (matmul runs its vec4 kernel)".into()
        } else {
            coop.iter()
                .map(|p| format!("{}×{}×{} {:?}→{:?}", p.m_size, p.n_size, p.k_size, p.ab_type, p.cr_type))
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    debug_assert!(USEFUL_FEATURES.contains(wgpu::Features::SUBGROUP));
    line("workgroup storage", kib(l.max_compute_workgroup_storage_size as u64));
    line("invocations per workgroup", l.max_compute_invocations_per_workgroup.to_string());
    line(
        "workgroup size x / y / z",
        format!(
            "{} / {} / {}",
            l.max_compute_workgroup_size_x, l.max_compute_workgroup_size_y, l.max_compute_workgroup_size_z
        ),
    );
    line("workgroups per dimension", l.max_compute_workgroups_per_dimension.to_string());
    line("storage binding size", mib(l.max_storage_buffer_binding_size));
    line("buffer size", mib(l.max_buffer_size));
    line("storage buffers per stage", l.max_storage_buffers_per_shader_stage.to_string());
    for d in [64, 128, 256] {
        let c = FlashConfig::for_device(gpu, d);
        line(
            &format!("flash tiles at D = {d}"),
            format!(
                "BR {} rows × BC {} keys, {} invocation(s)/row, {} B workgroup memory",
                c.br,
                c.bc,
                c.p,
                c.workgroup_bytes(d)
            ),
        );
        if let Some(tc) = FlashConfig::tensor_cores(gpu, d, true) {
            line(
                &format!("flash tensor cores at D = {d}"),
                format!(
                    "f16 {0}×{0} matrices, BR {1} × BC {2}, one subgroup of {3}, {4} B workgroup memory",
                    tc.coop.map_or(0, |c| c.size),
                    tc.br,
                    tc.bc,
                    tc.invocations(),
                    tc.workgroup_bytes(d)
                ),
            );
        }
    }
    s
}

/// The presets as a table: hardware, limits they are sized for, flash tiles, decode splits,
/// and the reasons.
pub fn profiles_table() -> String {
    use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
    use longctx::Profile;
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "profile",
        "hardware",
        "wg memory / invocations",
        "subgroup",
        "flash BR×BC at D 64 / 128 / 256",
        "decode slots/split",
        "why",
    ]);
    for p in Profile::all() {
        let tiles: Vec<String> = [64, 128, 256]
            .iter()
            .map(|&d| {
                let c = FlashConfig::for_profile(&p, d);
                format!(
                    "{}×{}{}",
                    c.br,
                    c.bc,
                    if c.p > 1 { format!(" ({} inv/row)", c.p) } else { String::new() }
                )
            })
            .collect();
        t.add_row([
            p.name.to_string(),
            p.hardware.to_string(),
            format!(
                "{} KiB / {}",
                p.limits.max_compute_workgroup_storage_size / 1024,
                p.limits.max_compute_invocations_per_workgroup
            ),
            if p.subgroup > 0 { p.subgroup.to_string() } else { "—".into() },
            tiles.join(" / "),
            p.decode_chunk.to_string(),
            p.reasons.join("; "),
        ]);
    }
    format!("{t}\n")
}
