//! Models built on the kernels: a BERT sentence encoder and the CoLT5 conditional layer.

pub mod bert;
pub mod colt5;
