//! Models built on the kernels: a BERT sentence encoder (feature `bert`), the CoLT5 conditional layer and a
//! small GPT for the train-short-test-long experiment.

#[cfg(feature = "bert")]
pub mod bert;
pub mod colt5;
pub mod generate;
pub mod gpt;
pub mod gpt_gpu;
pub mod tasks;
pub mod training;
