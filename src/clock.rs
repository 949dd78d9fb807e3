//! Monotonic milliseconds since the process started: cheap to read, cheap to store in an
//! atomic, and never goes backwards (unlike the wall clock).

use std::sync::OnceLock;
use std::time::Instant;

pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Wall-clock milliseconds since the Unix epoch, for timestamps that cross machines.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Monotonic milliseconds at the kernel's tick resolution (a few ms): for the idle-timeout
/// bookkeeping every read and write does, where `now_ms`'s precise clock read per call
/// showed in profiles. Only comparable with itself.
#[cfg(target_os = "linux")]
pub fn coarse_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; CLOCK_MONOTONIC_COARSE always exists
    // on Linux, and the vDSO answers it without a system call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if rc != 0 {
        return now_ms();
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[cfg(not(target_os = "linux"))]
pub fn coarse_ms() -> u64 {
    now_ms()
}
