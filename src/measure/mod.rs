//! Measurement above the kernels, as a library service the CLI, the visualiser and the
//! browser share: validate-then-time records (`bench`: attention and backward; `decode`;
//! `matmul`; learned sparse attention against dense: `sparse`), the suites and the budget ladder (`suite`), the autotuner (`tune`), the memory
//! planner (`plan`), the self-test (`selftest`), and the palette and units every chart uses
//! (`chart`).

pub mod bench;
pub mod chart;
pub mod decode;
pub mod matmul;
pub mod paged;
pub mod plan;
pub mod ring;
pub mod route;
pub mod selftest;
pub mod sparse;
pub mod suite;
pub mod tune;
