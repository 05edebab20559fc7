//! How ranks talk: a ring shift (send to the next rank, receive from the previous one) that
//! runs while the rank computes, and a gather at rank 0. Every wait is bounded: a rank that
//! is gone or silent past the timeout is an error naming it, never a hang.

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun`) — also
/// in a build without the `mpi` feature, which then says it cannot join.
pub fn mpi_launched() -> bool {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"].iter().any(|v| std::env::var_os(v).is_some())
}

/// A ring of ranks.
pub trait Transport {
    /// This rank, 0..size.
    fn rank(&self) -> usize;
    /// Ranks in the ring.
    fn size(&self) -> usize;
    /// Sends `send` to the next rank and receives `recv_len` bytes from the previous one
    /// while `work` runs (the transfer overlaps it); returns what arrived and the seconds
    /// spent waiting for it after `work` finished.
    fn shift(
        &mut self,
        send: &[u8],
        recv_len: usize,
        work: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(Vec<u8>, f64)>;
    /// Rank 0 receives every rank's `data` in rank order (its own first); the others `None`.
    fn gather(&mut self, data: &[u8]) -> Result<Option<Vec<Vec<u8>>>>;
}

/// Ranks as threads of one process, each with its own device: channels carry the blocks
/// (host-staged, as over a network).
pub struct InProcess {
    rank: usize,
    size: usize,
    to_next: Sender<Vec<u8>>,
    from_prev: Receiver<Vec<u8>>,
    to_root: Sender<(usize, Vec<u8>)>,
    /// Rank 0's end of the gather.
    at_root: Option<Receiver<(usize, Vec<u8>)>>,
    timeout: Duration,
}

impl InProcess {
    /// A ring of `size` ranks whose every wait gives up after `timeout`.
    pub fn ring(size: usize, timeout: Duration) -> Vec<InProcess> {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..size).map(|_| channel::<Vec<u8>>()).unzip();
        let (to_root, at_root) = channel();
        let mut at_root = Some(at_root);
        // rank r sends on channel r + 1 (its next rank's inbox) and reads its own
        let mut receivers: Vec<Option<Receiver<Vec<u8>>>> = receivers.into_iter().map(Some).collect();
        (0..size)
            .map(|r| InProcess {
                rank: r,
                size,
                to_next: senders[(r + 1) % size].clone(),
                from_prev: receivers[r].take().expect("one inbox per rank"),
                to_root: to_root.clone(),
                at_root: if r == 0 { at_root.take() } else { None },
                timeout,
            })
            .collect()
    }

    fn receive<T>(&self, rx: &Receiver<T>, from: &str, since: Instant) -> Result<T> {
        let left = self.timeout.saturating_sub(since.elapsed());
        rx.recv_timeout(left).map_err(|e| match e {
            RecvTimeoutError::Timeout => Error::Peer {
                rank: self.rank,
                message: format!(
                    "nothing from {from} within {:.1} s (a rank is stuck or failed)",
                    self.timeout.as_secs_f64()
                ),
            },
            RecvTimeoutError::Disconnected => {
                Error::Peer { rank: self.rank, message: format!("{from} is gone (it stopped with an error)") }
            }
        })
    }
}

impl Transport for InProcess {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn shift(
        &mut self,
        send: &[u8],
        recv_len: usize,
        work: &mut dyn FnMut() -> Result<()>,
    ) -> Result<(Vec<u8>, f64)> {
        let next = (self.rank + 1) % self.size;
        self.to_next.send(send.to_vec()).map_err(|_| Error::Peer {
            rank: self.rank,
            message: format!("rank {next} is gone (it stopped with an error)"),
        })?;
        work()?;
        let t0 = Instant::now();
        let prev = (self.rank + self.size - 1) % self.size;
        let got = self.receive(&self.from_prev, &format!("rank {prev}"), t0)?;
        if got.len() != recv_len {
            return Err(Error::Rank {
                rank: self.rank,
                message: format!(
                    "rank {prev} sent {} bytes where {recv_len} were expected (mismatched arguments?)",
                    got.len()
                ),
            });
        }
        Ok((got, t0.elapsed().as_secs_f64()))
    }

    fn gather(&mut self, data: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        let Some(rx) = &self.at_root else {
            self.to_root
                .send((self.rank, data.to_vec()))
                .map_err(|_| Error::Peer { rank: self.rank, message: "rank 0 is gone".into() })?;
            return Ok(None);
        };
        let mut all: Vec<Option<Vec<u8>>> = vec![None; self.size];
        all[0] = Some(data.to_vec());
        let t0 = Instant::now();
        for _ in 1..self.size {
            let (r, bytes) = self.receive(rx, "the other ranks (gather)", t0)?;
            all[r] = Some(bytes);
        }
        Ok(Some(all.into_iter().map(|x| x.unwrap_or_default()).collect()))
    }
}
