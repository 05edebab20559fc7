//! Models built on the kernels: a BERT sentence encoder, the CoLT5 conditional layer and a
//! small GPT for the train-short-test-long experiment.

pub mod bert;
pub mod colt5;
pub mod gpt;
pub mod gpt_gpu;
pub mod training;
