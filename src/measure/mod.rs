//! Measurement above the kernels: the benchmark records, the autotuner, the memory planner,
//! the palette and units every chart uses.

pub mod bench;
pub mod chart;
pub mod plan;
pub mod selftest;
pub mod tune;
