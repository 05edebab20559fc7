//! Measurement above the kernels: the benchmark records, the autotuner, the memory planner.

pub mod bench;
pub mod plan;
pub mod selftest;
pub mod tune;
