//! `longctx peak`.

use longctx::kernels::peak;

use super::DeviceArgs;

#[derive(clap::Args, Debug)]
pub struct PeakArgs {
    /// Timed repeats of each probe (median).
    #[arg(long, default_value_t = 7, value_parser = super::positive)]
    reps: usize,
    /// Print the cached result without measuring (measures if none is cached).
    #[arg(long)]
    cached: bool,
}

pub fn run(dev: &DeviceArgs, a: &PeakArgs) -> anyhow::Result<()> {
    let gpu = dev.gpu()?;
    // the best reading so far, this one included (a busy machine reads low, never high)
    let p = if a.cached {
        peak::cached_or_measure(&gpu)?
    } else {
        let now = peak::measure(&gpu, a.reps.max(1))?;
        println!(
            "this reading   {:.2} GFLOP/s FMA, {:.2} GB/s copy (median of {})",
            now.fma_gflops,
            now.copy_gbps,
            a.reps.max(1)
        );
        peak::keep_best(&gpu, now)?
    };
    println!("adapter        {}", p.adapter);
    println!("driver         {}", p.driver);
    println!(
        "FMA rate       {:.2} GFLOP/s  (8 independent vec4 FMA chains per invocation, {} steps; FMA = 2 FLOPs)",
        p.fma_gflops,
        peak::ITERS
    );
    println!("copy bandwidth {:.2} GB/s     (32 MiB vec4 copy; read + written bytes)", p.copy_gbps);
    println!("timer          {}; the best of {} readings, the newest {}", p.timer, p.readings, p.measured_at);
    if let Some(path) = peak::cache_path() {
        println!("cached in      {}", path.display());
    }
    Ok(())
}
