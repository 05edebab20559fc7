//! The browser test's cases natively (same seed, same timing), for scripts/browser-test's
//! browser / native ratios: `native SEED REPEATS` prints the report as JSON.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(seed), Some(repeats)) =
        (args.first().and_then(|s| s.parse().ok()), args.get(1).and_then(|s| s.parse().ok()))
    else {
        eprintln!("usage: native SEED REPEATS");
        std::process::exit(2);
    };
    match pollster::block_on(longctx_web::run_all(seed, repeats)) {
        Ok(report) => println!("{}", serde_json::to_string(&report).expect("a report serialises")),
        Err(e) => {
            eprintln!("native run failed: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {}
