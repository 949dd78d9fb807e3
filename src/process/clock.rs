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

/// The current time as an IMF-fixdate (RFC 9110 §5.6.7), for the Date header of the
/// responses we write ourselves: formatted once a second per thread, not per response.
pub fn http_date() -> [u8; HTTP_DATE_LEN] {
    use std::cell::Cell;
    thread_local! {
        static CACHED: Cell<(u64, [u8; HTTP_DATE_LEN])> = const { Cell::new((u64::MAX, [0; HTTP_DATE_LEN])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHED.with(|c| {
        let (at, text) = c.get();
        if at == secs {
            return text;
        }
        let mut fresh = [0; HTTP_DATE_LEN];
        let formatted = httpdate::fmt_http_date(now);
        if formatted.len() == HTTP_DATE_LEN {
            fresh.copy_from_slice(formatted.as_bytes());
        }
        c.set((secs, fresh));
        fresh
    })
}

/// Length of an IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT".
pub const HTTP_DATE_LEN: usize = 29;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_date_is_an_imf_fixdate_of_now() {
        let date = http_date();
        let text = std::str::from_utf8(&date).unwrap();
        let parsed = httpdate::parse_http_date(text).unwrap();
        let skew = std::time::SystemTime::now()
            .duration_since(parsed)
            .unwrap_or_default();
        assert!(skew.as_secs() <= 2, "{text}");
        assert!(text.ends_with(" GMT"), "{text}");
    }
}
