//! Shared integration-test support: start the real binary on port 0, learn its sockets
//! from its "listening" lines, and talk DNS to it.
#![allow(dead_code)]

pub mod dns;
pub mod file_servers;
pub mod http;
pub mod pki;
pub mod proxy_world;
pub mod raw_origin;
pub mod unbound;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// The binary under test: this build's, or the one `GEOEDGE_BIN` names, so that the
/// production build (`scripts/pgo-build.sh`) goes through the same tests as the one
/// cargo made for them.
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("GEOEDGE_BIN") {
        // Absolute, because the tests start it in their own working directories.
        Some(path) => {
            std::fs::canonicalize(&path).unwrap_or_else(|e| panic!("GEOEDGE_BIN={path:?}: {e}"))
        }
        None => PathBuf::from(env!("CARGO_BIN_EXE_geoedge")),
    })
}

/// A running geoedge process, killed on drop.
pub struct Proc {
    pub child: Child,
    /// "UDP" / "TCP" / "HTTP (control)" ... -> addresses, in the order printed.
    pub sockets: HashMap<String, Vec<SocketAddr>>,
    pub stderr_path: PathBuf,
}

impl Proc {
    /// Starts `geoedge ARGS` and waits until it has printed `expect` listening lines.
    pub fn start(args: &[&str], dir: &Path, expect: usize) -> Proc {
        let stderr_path = dir.join(format!("stderr-{}.log", args.join("_").replace('/', "_")));
        let stderr = std::fs::File::create(&stderr_path).expect("create stderr log");
        let mut child = Command::new(bin())
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .env("RUST_LOG", "info")
            .spawn()
            .expect("start geoedge");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep draining after the test stops listening, so the child never writes
            // into a closed pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut sockets: HashMap<String, Vec<SocketAddr>> = HashMap::new();
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen < expect {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    panic!(
                        "geoedge {args:?} did not print {expect} listening lines; stderr:\n{err}"
                    );
                }
            };
            if let Some(rest) = line.strip_prefix("listening for ") {
                if let Some((kind, addr)) = rest.rsplit_once(" on ") {
                    let addr: SocketAddr = addr.parse().expect("listening line has an address");
                    sockets.entry(kind.to_string()).or_default().push(addr);
                    seen += 1;
                }
            }
        }
        Proc {
            child,
            sockets,
            stderr_path,
        }
    }

    pub fn addr(&self, kind: &str) -> SocketAddr {
        self.sockets
            .get(kind)
            .and_then(|v| v.first().copied())
            .unwrap_or_else(|| panic!("no {kind} socket in {:?}", self.sockets))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first, so the process cleans up (the demo removes its temporary files);
        // SIGKILL if it has not exited shortly after.
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port the kernel just gave out that is free for both UDP and TCP (a DNS
/// server binds both), let go for the server to take.
#[allow(dead_code)]
pub fn free_dual_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
        let port = udp.local_addr().expect("local address").port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Whether `tool` can be run (is installed and on PATH).
pub fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}

/// Runs a program with `input` on its standard input; returns its output.
pub fn run_with_stdin(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[&str],
    input: &[u8],
) -> std::process::Output {
    use std::io::Write;
    let program = program.as_ref();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", program.to_string_lossy()));
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input)
        .expect("write stdin");
    child.wait_with_output().expect("wait for the program")
}

/// Polls `probe` until it returns Some, or panics after `limit`.
pub fn wait_for<T>(limit: Duration, what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of one series on `admin`'s `/metrics`, named as the text format writes it
/// (`name` or `name{label="value"}`); None when the page has no such series.
pub fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let (_, text) = http_get(admin, "/metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A plain HTTP/1.1 GET over a fresh connection; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return (0, format!("connecting to {addr} failed: {e}")),
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    // A failed read (a reset while the server reloads) is status 0: pollers try again,
    // and any assertion on the status says what happened.
    if let Err(e) = s.read_to_string(&mut buf) {
        return (0, format!("reading the response failed: {e}"));
    }
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The shipped GeoIP source plus extra lines, built into `dir/geo.mmdb`.
pub fn build_geo(dir: &Path, extra: &str) -> PathBuf {
    let shipped =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("geo/world.txt"))
            .expect("read geo/world.txt");
    let text = format!("{shipped}\n{extra}\n");
    let entries = geoedge::geo::build::parse_source("test", &text).expect("parse geo source");
    let bytes = geoedge::geo::build::to_mmdb(&entries).expect("build mmdb");
    let path = dir.join("geo.mmdb");
    std::fs::write(&path, bytes).expect("write mmdb");
    path
}

/// Whether the real tools a test drives are installed. In CI a missing one fails the
/// test (`.ci/run` must install it); elsewhere the test is skipped with a line saying so.
pub fn need(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install {missing:?} (.ci/run)"
    );
    eprintln!("skipped: {missing:?} not installed");
    false
}
