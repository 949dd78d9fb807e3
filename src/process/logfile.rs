//! Line logs (the proxy's access log, the DNS query log) written off the request path:
//! requests hand a finished line to a bounded channel and never wait; one task writes,
//! flushes, and reopens the file on SIGHUP or SIGUSR1 so logrotate can move it away.
//! When the channel is full the line is dropped and counted, rather than slowing traffic.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

const QUEUE: usize = 16_384;

pub struct LogFile {
    tx: mpsc::Sender<String>,
    pub dropped: Arc<AtomicU64>,
}

/// `-` means standard output.
pub fn open(path: PathBuf) -> std::io::Result<LogFile> {
    let writer = Writer::open(&path)?;
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(write_loop(path, writer, rx));
    Ok(LogFile {
        tx,
        dropped: Arc::new(AtomicU64::new(0)),
    })
}

impl LogFile {
    pub fn write(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

enum Writer {
    Stdout,
    File(std::io::BufWriter<std::fs::File>),
}

impl Writer {
    fn open(path: &PathBuf) -> std::io::Result<Self> {
        if path.as_os_str() == "-" {
            return Ok(Writer::Stdout);
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Writer::File(std::io::BufWriter::with_capacity(
            64 * 1024,
            file,
        )))
    }

    fn write_line(&mut self, line: &str) {
        let _ = match self {
            Writer::Stdout => writeln!(std::io::stdout().lock(), "{line}"),
            Writer::File(f) => writeln!(f, "{line}"),
        };
    }

    fn flush(&mut self) {
        let _ = match self {
            Writer::Stdout => std::io::stdout().flush(),
            Writer::File(f) => f.flush(),
        };
    }
}

async fn write_loop(path: PathBuf, mut writer: Writer, mut rx: mpsc::Receiver<String>) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    #[cfg(unix)]
    let mut usr1 =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()).ok();
    let mut flush = tokio::time::interval(Duration::from_millis(200));
    loop {
        #[cfg(unix)]
        let reopen = async {
            match (hup.as_mut(), usr1.as_mut()) {
                (Some(h), Some(u)) => {
                    tokio::select! {
                        _ = h.recv() => {},
                        _ = u.recv() => {},
                    }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let reopen = std::future::pending::<()>();
        tokio::select! {
            line = rx.recv() => match line {
                Some(line) => writer.write_line(&line),
                None => {
                    writer.flush();
                    return;
                }
            },
            _ = flush.tick() => writer.flush(),
            _ = reopen => {
                writer.flush();
                match Writer::open(&path) {
                    Ok(w) => {
                        writer = w;
                        tracing::info!(path = %path.display(), "log file reopened");
                    }
                    Err(e) => tracing::error!(path = %path.display(), error = %e, "cannot reopen log file; still writing the old one"),
                }
            }
        }
    }
}

/// `2026-11-27T04:57:00.123Z` from milliseconds since the Unix epoch.
pub fn rfc3339(unix_ms: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(unix_ms / 1000);
    format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{:03}Z",
        unix_ms % 1000
    )
}

/// `27/Nov/2026:04:57:00 +0000`, the Common Log Format's time, in UTC.
pub fn clf_time(unix_ms: u64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d, h, mi, s) = civil(unix_ms / 1000);
    format!(
        "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000",
        MONTHS[(mo - 1) as usize]
    )
}

/// Seconds since the epoch to (year, month, day, hour, minute, second), UTC, by Howard
/// Hinnant's days-from-civil algorithm run backwards.
fn civil(secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        ((rem % 3600) / 60) as u32,
        (rem % 60) as u32,
    )
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_format_in_utc() {
        assert_eq!(rfc3339(1_800_000_000_123), "2027-01-15T08:00:00.123Z");
        assert_eq!(clf_time(1_800_000_000_000), "15/Jan/2027:08:00:00 +0000");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }

    #[tokio::test]
    async fn lines_reach_the_file_and_survive_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let log = open(path.clone()).unwrap();
        log.write("one".into());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&path).unwrap_or_default() != "one\n" {
            assert!(std::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
