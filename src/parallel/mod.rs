//! Beyond one device: ring attention (context parallelism). The sequence is sharded over P
//! ranks ([`schedule`]); K/V blocks travel around a ring while each rank attends its queries to
//! the block it holds, merging partial outputs exactly by log-sum-exp ([`ring`]). Ranks talk
//! through a [`transport::Transport`]: threads with a device each in one process
//! ([`transport::InProcess`]), or processes under `mpirun` (feature `mpi`).

#[cfg(feature = "mpi")]
pub mod mpi;
pub mod ring;
pub mod schedule;
pub mod transport;
