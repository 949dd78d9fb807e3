//! The training load of `scripts/pgo-build.sh` (the production build) run against this
//! build's binary: every step must be served without an error, or the profile would
//! optimise error paths. The two release builds around it are too slow for the tests.
//!
//! Needs wrk, h2load (nghttp2-client), dnsperf and openssl; `.ci/run` installs them.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::have;

const STEPS: &[&str] = &[
    "uncached 1 KiB",
    "cache misses",
    "cached 1 KiB",
    "cached 100 KiB",
    "compressed",
    "new connection per request",
    "POST",
    "HTTPS keep-alive",
    "HTTPS resumed",
    "HTTP/2 over TLS",
    "HTTP/2 over TLS, uncached",
    "HTTP/2 prior knowledge",
    "full TLS handshakes",
    "DNS over UDP",
    "DNS with ECS",
    "DNS over TCP",
];

#[test]
fn every_training_step_is_served_by_the_demo() {
    let tools = ["wrk", "h2load", "dnsperf", "openssl", "curl"];
    let missing: Vec<_> = tools.iter().filter(|t| !have(t)).collect();
    assert!(
        missing.is_empty() || std::env::var_os("CI").is_none(),
        "CI must install {missing:?} (.ci/run)"
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(root.join("scripts/pgo-build.sh"))
        .arg("--train")
        .arg(common::bin())
        .env("PGO_STEP_SECONDS", "1")
        .output()
        .expect("running scripts/pgo-build.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !missing.is_empty() {
        // Without its tools the script must say which one and how to get it.
        assert!(!out.status.success(), "ran without {missing:?}: {stdout}");
        assert!(
            stderr.contains("is missing (Debian: apt-get install"),
            "{stderr}"
        );
        eprintln!("{missing:?} not installed: checked only that the script says so");
        return;
    }
    assert!(out.status.success(), "training failed:\n{stdout}\n{stderr}");
    for step in STEPS {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{step}:")))
            .unwrap_or_else(|| panic!("no line for step {step:?} in:\n{stdout}"));
        let count: u64 = line
            .rsplit(':')
            .next()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no count in {line:?}"));
        assert!(count > 0, "{line}");
    }
}
