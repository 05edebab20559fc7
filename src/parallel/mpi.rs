//! The ring over MPI (feature `mpi`; Open MPI or MPICH through rsmpi): one process per rank
//! under `mpirun`. A shift posts a non-blocking send to the next rank and a non-blocking
//! receive from the previous one, runs the rank's computation, then polls both with a
//! deadline — MPI has no timed wait, and a rank must not hang on a neighbour that died.

use std::time::{Duration, Instant};

use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use crate::error::{Error, Result};
use crate::parallel::transport::Transport;

/// This process's rank in `MPI_COMM_WORLD`.
pub struct Mpi {
    _universe: mpi::environment::Universe,
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    timeout: Duration,
}

impl Mpi {
    /// Initialises MPI (once per process); every wait gives up after `timeout`.
    pub fn init(timeout: Duration) -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| {
            Error::Invalid("MPI could not be initialised (already initialised in this process?)".into())
        })?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Self { _universe: universe, world, rank, size, timeout })
    }

    /// Reports `e` on one line of stderr (one write, so the ranks' lines do not interleave;
    /// prefixed with this rank unless it names it already) and ends every rank of the job
    /// (`MPI_Abort` with `code`), so that no other rank waits for this one.
    pub fn fail(&self, e: &dyn std::fmt::Display, code: i32) -> ! {
        let e = e.to_string();
        let r = self.rank;
        let line = if e.starts_with(&format!("rank {r}:")) {
            format!("error: {e}\n")
        } else {
            format!("error: rank {r}: {e}\n")
        };
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
        self.world.abort(code)
    }

    fn late(&self, what: &str) -> Error {
        Error::Peer {
            rank: self.rank,
            message: format!(
                "{what} did not complete within {:.1} s (a rank is stuck or failed)",
                self.timeout.as_secs_f64()
            ),
        }
    }
}

/// Polls the requests (`Option`s, taken as they complete) until all are done; past
/// `$mpi.timeout` reports `$what` and ends the job (pending requests cannot be abandoned).
macro_rules! complete {
    ($mpi:expr, $what:expr, $($req:ident),+) => {{
        let t0 = Instant::now();
        loop {
            let mut pending = false;
            $(
                if let Some(r) = $req.take() {
                    $req = r.test().err();
                    pending |= $req.is_some();
                }
            )+
            if !pending {
                break;
            }
            if t0.elapsed() > $mpi.timeout {
                $mpi.fail(&$mpi.late($what), 3);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        t0.elapsed().as_secs_f64()
    }};
}

impl Transport for Mpi {
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
        let next = ((self.rank + 1) % self.size) as i32;
        let prev = ((self.rank + self.size - 1) % self.size) as i32;
        let mut buf = vec![0u8; recv_len];
        let this = &*self;
        let (worked, waited) = mpi::request::scope(|scope| {
            let mut sreq = Some(this.world.process_at_rank(next).immediate_send(scope, send));
            let mut rreq = Some(this.world.process_at_rank(prev).immediate_receive_into(scope, &mut buf[..]));
            let worked = work();
            let waited = complete!(this, &format!("the ring shift with ranks {prev} and {next}"), sreq, rreq);
            (worked, waited)
        });
        worked?;
        Ok((buf, waited))
    }

    fn gather(&mut self, data: &[u8]) -> Result<Option<Vec<Vec<u8>>>> {
        // each rank's length, then its bytes, to rank 0
        let this = &*self;
        let len = (data.len() as u64).to_le_bytes();
        if self.rank != 0 {
            let root = this.world.process_at_rank(0);
            mpi::request::scope(|scope| {
                let mut a = Some(root.immediate_send(scope, &len[..]));
                let mut b = Some(root.immediate_send(scope, data));
                let _ = complete!(this, "sending this rank's results to rank 0", a, b);
            });
            return Ok(None);
        }
        let mut all = vec![data.to_vec()];
        for r in 1..self.size {
            let from = this.world.process_at_rank(r as i32);
            let mut n = [0u8; 8];
            mpi::request::scope(|scope| {
                let mut a = Some(from.immediate_receive_into(scope, &mut n[..]));
                let _ = complete!(this, &format!("the results of rank {r}"), a);
            });
            let mut bytes = vec![0u8; u64::from_le_bytes(n) as usize];
            mpi::request::scope(|scope| {
                let mut b = Some(from.immediate_receive_into(scope, &mut bytes[..]));
                let _ = complete!(this, &format!("the results of rank {r}"), b);
            });
            all.push(bytes);
        }
        Ok(Some(all))
    }
}
