//! Builds and runs `examples/embed.rs` (a host app lending its device to longctx).

#[path = "../examples/embed.rs"]
mod example;

#[test]
fn embed_example_runs_on_the_hosts_device() {
    example::main();
}
