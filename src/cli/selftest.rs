//! `longctx selftest`: every kernel and feature against the f64 oracle on this adapter.

use std::time::Instant;

use anyhow::bail;
use longctx::measure::selftest;

use super::DeviceArgs;

pub fn run(dev: &DeviceArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let gpu = dev.gpu()?;
    let info = gpu.info();
    println!(
        "adapter {} ({:?}, {}); profile {}",
        info.name,
        info.backend,
        gpu.driver(),
        gpu.profile().0.name
    );
    if gpu.cooperative_matrices().is_empty() {
        println!("cooperative matrices: none on this adapter (their checks do not apply)");
    }
    let outcomes = selftest::run(&gpu, |o| {
        let err = o.rel_err.map_or("—".to_string(), |e| format!("{e:.1e}"));
        match &o.failure {
            None => println!("ok    {:<78} rel err {err:>8}  {:>6.0} ms", o.name, o.ms),
            Some(why) => println!("FAIL  {:<78} rel err {err:>8}  {:>6.0} ms  {why}", o.name, o.ms),
        }
    });
    let failed = outcomes.iter().filter(|o| !o.passed()).count();
    println!(
        "{} checks, {} passed, {failed} failed (bound {:.0e}) in {:.1} s",
        outcomes.len(),
        outcomes.len() - failed,
        selftest::BOUND,
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        bail!("{failed} of {} checks failed against the f64 oracle", outcomes.len());
    }
    Ok(())
}
