//! Host memory: sizes are checked against what the machine has before anything is allocated,
//! so a problem too large for the host is an error naming the bytes, not an abort.

use crate::error::{Error, Result};

/// Bytes of memory the host can still give (Linux: `MemAvailable` in `/proc/meminfo`);
/// `None` where that cannot be read.
pub(crate) fn available_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuses to allocate `bytes` for `what` when the host has less available.
pub fn check_bytes(what: &str, bytes: u64) -> Result<()> {
    match available_bytes() {
        Some(available) if bytes > available => {
            Err(Error::HostMemory { what: what.to_string(), bytes, available })
        }
        _ => Ok(()),
    }
}
