//! The `longctx` command line. Parsing and printing live in `cli`; the work in the library.

use std::any::Any;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

mod cli;

/// The exit status of a process that wrote into a closed pipe (128 + SIGPIPE), as shells
/// report it for `longctx mask … | head -1`.
const BROKEN_PIPE: u8 = 141;

/// `print!` panics when stdout cannot be written (a closed pipe, a full disk); the message
/// of such a panic, if `payload` is one.
fn stdout_failure(payload: &(dyn Any + Send)) -> Option<&str> {
    let text = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())?;
    text.starts_with("failed printing to stdout").then_some(text)
}

fn main() -> ExitCode {
    if std::env::var_os("WGPU_BACKEND").is_some_and(|v| v.to_string_lossy().trim().is_empty()) {
        // an empty WGPU_BACKEND counts as unset (wgpu would warn twice and find no backend)
        // SAFETY: first thing in main, before any other thread exists
        unsafe { std::env::remove_var("WGPU_BACKEND") };
    }
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,wgpu_hal=off")).init();
    let args = cli::Cli::parse();
    // output that cannot be written ends quietly (a closed pipe) or with one error line (a
    // full disk), never with a panic's trace
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if stdout_failure(info.payload()).is_none() {
            default_hook(info);
        }
    }));
    match std::panic::catch_unwind(|| cli::run(args)) {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            // a closed or full stderr must not turn the error into a panic
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            ExitCode::FAILURE
        }
        Err(payload) => match stdout_failure(payload.as_ref()) {
            Some(text) if text.contains("Broken pipe") => ExitCode::from(BROKEN_PIPE),
            Some(text) => {
                let _ = writeln!(
                    std::io::stderr(),
                    "error: writing the output to stdout: {}",
                    text.trim_start_matches("failed printing to stdout: ")
                );
                ExitCode::FAILURE
            }
            None => std::panic::resume_unwind(payload),
        },
    }
}
