//! The integration tests, one test binary with a module per kernel family or feature (one
//! binary links the crate once: ~30 binaries used to take most of CI's compile time). Each
//! GPU test runs on a real adapter and fails, never skips, without one (`common::gpu`).
//!
//! `cargo test --features mpi --test suite` runs them all; `cargo test --test suite decode::`
//! one module; `cargo test --test suite -- --list` names every test.

mod common;

mod app;
mod attention;
mod backward;
mod backward_oracle;
mod bert;
mod cli;
mod colt5;
mod decode;
mod dsa;
mod embed;
mod encoder_kernels;
mod f16;
mod fuzz;
mod generate;
mod gpt;
mod io;
mod layers;
mod limits;
mod matmul;
mod mods;
mod nsa;
mod paged;
mod positions;
mod profiles;
mod ring;
mod ring_mpi;
mod route;
mod selection;
mod shaders;
mod sparse;
mod traffic;
mod train;
mod tuning;
