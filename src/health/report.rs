//! Health reports, proxy -> DNS: the JSON format and its HMAC-SHA256 signature.
//!
//! Why HMAC and not mutual TLS: every node and DNS server already shares config, a key
//! file is one more line of it, a signature over the exact body bytes is checked before
//! anything is parsed, and it works the same over plain HTTP on a private network or
//! through any TLS terminator. Replays are stopped by the sequence number, stale copies
//! by the timestamp window.

use std::net::IpAddr;
use std::path::Path;

use ring::hmac;
use serde::{Deserialize, Serialize};

pub const SIGNATURE_HEADER: &str = "x-geoedge-signature";
pub const REPORT_PATH: &str = "/report";
/// Reports are small; anything bigger is not a report.
pub const MAX_REPORT_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub node: String,
    pub region: String,
    pub addresses: Vec<IpAddr>,
    pub can_serve: bool,
    pub healthy_origins: u32,
    pub total_origins: u32,
    pub in_flight: u64,
    /// In-flight requests per healthy origin: a rough figure for dashboards.
    pub load: f64,
    pub seq: u64,
    /// Sender's wall clock, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Each stream service (`[[streams]]` name) and whether it can take connections.
    /// Absent from nodes without streams, and from nodes older than streams: a report
    /// without it is still accepted.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub services: std::collections::BTreeMap<String, bool>,
    /// The node's load and configured capacity (`[node] capacity`), which DNS sheds by.
    /// Sent only by nodes with a capacity, so reports of nodes without one stay readable
    /// by DNS servers older than shedding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<NodeLoad>,
}

/// A node's load against its capacity.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeLoad {
    /// Requests per second over the last report interval.
    pub rps: f64,
    pub in_flight: u64,
    pub connections: u64,
    /// CPU time over wall time in the last interval (1.0: one core busy).
    pub cpu: f64,
    pub max_rps: Option<f64>,
    pub max_in_flight: Option<u64>,
}

impl NodeLoad {
    /// The larger of the configured ratios; None when no capacity is set.
    pub fn utilisation(&self) -> Option<f64> {
        let rps = self.max_rps.filter(|m| *m > 0.0).map(|m| self.rps / m);
        let in_flight = self
            .max_in_flight
            .filter(|m| *m > 0)
            .map(|m| self.in_flight as f64 / m as f64);
        match (rps, in_flight) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
        .filter(|u| u.is_finite())
    }
}

/// Why a report was refused; also the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("unsigned")]
    Unsigned,
    #[error("bad signature")]
    BadSignature,
    #[error("malformed")]
    Malformed,
    #[error("stale")]
    Stale,
    #[error("replayed")]
    Replayed,
    #[error("unknown node")]
    UnknownNode,
}

impl Rejection {
    pub const ALL: [Rejection; 6] = [
        Rejection::Unsigned,
        Rejection::BadSignature,
        Rejection::Malformed,
        Rejection::Stale,
        Rejection::Replayed,
        Rejection::UnknownNode,
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Unsigned => "unsigned",
            Rejection::BadSignature => "bad_signature",
            Rejection::Malformed => "malformed",
            Rejection::Stale => "stale",
            Rejection::Replayed => "replayed",
            Rejection::UnknownNode => "unknown_node",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read report key {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("report key {path} is too short: use at least 16 bytes (e.g. `head -c 32 /dev/urandom | base64 > {path}`)")]
    Short { path: String },
}

/// The shared secret, from a file (surrounding whitespace ignored).
#[derive(Clone)]
pub struct ReportKey(hmac::Key);

impl std::fmt::Debug for ReportKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReportKey(..)")
    }
}

impl ReportKey {
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let secret = text.trim_ascii();
        if secret.len() < 16 {
            return Err(KeyError::Short {
                path: path.display().to_string(),
            });
        }
        Ok(Self::from_secret(secret))
    }

    pub fn from_secret(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// The signature header value for a body: `sha256=<hex>`.
    pub fn sign(&self, body: &[u8]) -> String {
        let tag = hmac::sign(&self.0, body);
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256=");
        for b in tag.as_ref() {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Checks a signature header in constant time.
    pub fn verify(&self, body: &[u8], header: Option<&str>) -> Result<(), Rejection> {
        let header = header.ok_or(Rejection::Unsigned)?;
        let hex = header
            .strip_prefix("sha256=")
            .ok_or(Rejection::BadSignature)?;
        let tag = decode_hex(hex).ok_or(Rejection::BadSignature)?;
        hmac::verify(&self.0, body, &tag).map_err(|_| Rejection::BadSignature)
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Verifies and parses a report body. Signature first: nothing unauthenticated is parsed.
pub fn open(
    key: &ReportKey,
    body: &[u8],
    signature: Option<&str>,
    now_unix_ms: u64,
    max_skew_ms: u64,
) -> Result<Report, Rejection> {
    key.verify(body, signature)?;
    let report: Report = serde_json::from_slice(body).map_err(|_| Rejection::Malformed)?;
    if now_unix_ms.abs_diff(report.timestamp_ms) > max_skew_ms {
        return Err(Rejection::Stale);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ts: u64) -> Report {
        Report {
            node: "eu-1".into(),
            region: "eu".into(),
            addresses: vec!["127.0.0.11".parse().unwrap()],
            can_serve: true,
            healthy_origins: 2,
            total_origins: 2,
            in_flight: 3,
            load: 1.5,
            seq: 7,
            timestamp_ms: ts,
            services: Default::default(),
            capacity: None,
        }
    }

    #[test]
    fn utilisation_is_the_larger_configured_ratio() {
        let l = NodeLoad {
            rps: 500.0,
            in_flight: 30,
            max_rps: Some(1000.0),
            max_in_flight: Some(40),
            ..Default::default()
        };
        assert_eq!(l.utilisation(), Some(0.75));
        let only_rps = NodeLoad {
            max_in_flight: None,
            ..l.clone()
        };
        assert_eq!(only_rps.utilisation(), Some(0.5));
        let none = NodeLoad {
            max_rps: None,
            max_in_flight: None,
            ..l
        };
        assert_eq!(none.utilisation(), None);
    }

    #[test]
    fn services_are_sent_only_by_nodes_with_streams_and_old_reports_still_open() {
        let plain = serde_json::to_string(&report(1)).unwrap();
        assert!(!plain.contains("services"), "{plain}");
        // What a node from before stream services sends.
        let old = r#"{"node":"eu-1","region":"eu","addresses":[],"can_serve":true,"healthy_origins":1,"total_origins":1,"in_flight":0,"load":0.0,"seq":1,"timestamp_ms":1}"#;
        let parsed: Report = serde_json::from_str(old).unwrap();
        assert!(parsed.services.is_empty());
        let mut with = report(1);
        with.services.insert("ftps".into(), true);
        let text = serde_json::to_string(&with).unwrap();
        assert!(text.contains(r#""services":{"ftps":true}"#), "{text}");
    }

    #[test]
    fn signed_report_opens() {
        let key = ReportKey::from_secret(b"0123456789abcdef0123");
        let body = serde_json::to_vec(&report(1_000_000)).unwrap();
        let sig = key.sign(&body);
        assert_eq!(
            open(&key, &body, Some(&sig), 1_000_500, 5_000),
            Ok(report(1_000_000))
        );
    }

    #[test]
    fn forged_unsigned_tampered_and_stale_are_rejected() {
        let key = ReportKey::from_secret(b"0123456789abcdef0123");
        let other = ReportKey::from_secret(b"another key of 16+ bytes");
        let body = serde_json::to_vec(&report(1_000_000)).unwrap();
        assert_eq!(
            open(&key, &body, None, 1_000_000, 5_000),
            Err(Rejection::Unsigned)
        );
        assert_eq!(
            open(&key, &body, Some(&other.sign(&body)), 1_000_000, 5_000),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            open(&key, &body, Some("sha256=zz"), 1_000_000, 5_000),
            Err(Rejection::BadSignature)
        );
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert_eq!(
            open(&key, &tampered, Some(&key.sign(&body)), 1_000_000, 5_000),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            open(&key, &body, Some(&key.sign(&body)), 1_010_000, 5_000),
            Err(Rejection::Stale)
        );
        let junk = b"{not json";
        assert_eq!(
            open(&key, junk, Some(&key.sign(junk)), 0, 5_000),
            Err(Rejection::Malformed)
        );
    }

    #[test]
    fn short_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "short\n").unwrap();
        assert!(matches!(
            ReportKey::from_file(&p),
            Err(KeyError::Short { .. })
        ));
        std::fs::write(&p, "  a-long-enough-secret-value \n").unwrap();
        assert!(ReportKey::from_file(&p).is_ok());
    }
}
