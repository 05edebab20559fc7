//! The Rust side of the Python boundary's overhead (`python/examples/overhead.py` runs this and
//! the same calls through `longctx.Device.attention`, and prints both): one host-to-host
//! attention call — spec, prepare, upload, run, read back, as the Python method makes it — timed
//! per call, median over the repeats.
//!
//! ```sh
//! cargo run --example call_overhead -- 64,256,2048 30   # N values (H = 4, D = 64, causal), repeats
//! ```
//! Prints one line per N: `N <n> us_per_call <median>`.

use longctx::{AttnShape, AttnSpec, Gpu, GpuOptions, Kernel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let sizes: Vec<usize> =
        args.get(1).map_or("64,2048", String::as_str).split(',').map(str::parse).collect::<Result<_, _>>()?;
    let reps: usize = args.get(2).map_or(Ok(20), |s| s.parse())?;
    let gpu = Gpu::new(&GpuOptions { tuned: true, ..GpuOptions::from_env() })?;
    for n in sizes {
        let shape = AttnShape::mha(1, 4, n, n, 64);
        // the values Python's side uses: a fixed ramp, so both runs read the same numbers
        let data: Vec<f32> = (0..shape.q_len()).map(|i| ((i % 97) as f32 - 48.0) / 97.0).collect();
        let call = || -> longctx::Result<f32> {
            let spec = AttnSpec::new(shape).causal(true);
            Ok(longctx::attention(&gpu, Kernel::Flash, &spec, &data, &data, &data)?.o[0])
        };
        call()?; // compiles the pipelines
        let mut times = Vec::with_capacity(reps);
        for _ in 0..reps {
            let start = std::time::Instant::now();
            std::hint::black_box(call()?);
            times.push(start.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(f64::total_cmp);
        println!("N {n} us_per_call {:.1}", times[reps / 2]);
    }
    Ok(())
}
