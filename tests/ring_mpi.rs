//! Ring attention over MPI: `longctx ring` under `mpirun -np P` (P = 2, 3, 4, oversubscribed
//! on this machine's cores), forward rows and every gradient checked against the f64 oracle
//! by the ranks themselves (the command fails above 1e-5), and the failures a user meets —
//! more ranks than the problem has rows, ranks given different arguments — as errors on the
//! ranks, with a bounded exit. Built only with `--features mpi` (CI installs Open MPI).
#![cfg(feature = "mpi")]

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn mpirun(groups: &[(usize, &[&str])]) -> Output {
    let mut cmd = Command::new("mpirun");
    // unbound: Open MPI pins two or fewer processes to one core each, which starves a
    // software adapter's threads
    cmd.args(["--oversubscribe", "--allow-run-as-root", "--bind-to", "none"]);
    for (i, (np, args)) in groups.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args(["-np", &np.to_string(), env!("CARGO_BIN_EXE_longctx"), "ring"]).args(*args);
    }
    cmd.output().expect("mpirun runs (CI installs Open MPI)")
}

#[test]
fn forward_and_backward_equal_the_oracle_for_2_3_4_processes() {
    let problems: [(&str, &[&str]); 3] = [
        (
            "causal (zigzag) + alibi, GQA, N = 101 ≠ M = 130",
            &[
                "--n",
                "101",
                "--m",
                "130",
                "--heads",
                "4",
                "--kv-heads",
                "2",
                "--d",
                "32",
                "--causal",
                "--alibi",
            ],
        ),
        (
            "window(9,4), MQA",
            &["--n", "77", "--heads", "2", "--kv-heads", "1", "--d", "32", "--window", "9,4"],
        ),
        (
            "bigbird (a block mask at global positions)",
            &[
                "--n",
                "96",
                "--heads",
                "2",
                "--d",
                "32",
                "--bigbird",
                "global=1,window=1,random=1,block=16,seed=3",
            ],
        ),
    ];
    for (name, args) in problems {
        for p in [2, 3, 4] {
            let args: Vec<&str> =
                args.iter().copied().chain(["--backward", "--check-rows", "8", "--no-single"]).collect();
            let out = mpirun(&[(p, &args)]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{name}, P = {p}: {}\n{stdout}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains(&format!("P = {p} over {p} MPI processes")), "{stdout}");
            println!("{name}, P = {p}:\n{stdout}");
        }
    }
}

#[test]
fn bad_rank_counts_and_mismatched_arguments_end_with_errors() {
    let t0 = Instant::now();
    let out = mpirun(&[(4, &["--n", "6", "--heads", "2", "--d", "32", "--causal"])]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("at least one row per chunk"), "{stderr}");
    let a: &[&str] = &["--n", "256", "--heads", "2", "--d", "32"];
    let b: &[&str] = &["--n", "512", "--heads", "2", "--d", "32"];
    let out = mpirun(&[(2, a), (2, b)]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("different problems"), "{stderr}");
    assert!(t0.elapsed() < Duration::from_secs(120), "took {:?}", t0.elapsed());
}
