//! What a node tells the DNS servers: where its reports go and how often (`[reports]`),
//! and the capacity its load is measured against (`[node] capacity`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigDuration, ConfigError, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReports {
    dns: Vec<String>,
    key_file: Spanned<PathBuf>,
    interval: Option<ConfigDuration>,
    #[serde(default)]
    addresses: Vec<std::net::IpAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCapacity {
    max_rps: Option<f64>,
    max_in_flight: Option<u64>,
}

/// A node's capacity: requests per second and/or requests in flight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Capacity {
    pub max_rps: Option<f64>,
    pub max_in_flight: Option<u64>,
}

/// Where and how often this node reports its health.
#[derive(Debug, Clone)]
pub struct ReportsConfig {
    /// Base URLs of every DNS server's control listener, e.g. `http://10.0.0.53:9153`.
    pub dns: Vec<String>,
    pub key_file: PathBuf,
    pub interval: Duration,
    pub addresses: Vec<std::net::IpAddr>,
}

pub(super) fn validate(src: &Source, r: RawReports) -> Result<ReportsConfig, ConfigError> {
    if r.dns.is_empty() {
        return Err(src.error(
            "reports.dns",
            None,
            "list at least one DNS server control URL",
        ));
    }
    for (i, url) in r.dns.iter().enumerate() {
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.parse::<http::Uri>().is_err()
        {
            return Err(src.error(
                format!("reports.dns[{i}]"),
                None,
                format!("`{url}` is not an http:// or https:// URL"),
            ));
        }
    }
    let key_file = src.resolve(r.key_file.get_ref());
    if !key_file.is_file() {
        return Err(src.error(
            "reports.key_file",
            Some(r.key_file.span()),
            format!("{} does not exist", key_file.display()),
        ));
    }
    let interval = r
        .interval
        .map(|d| d.0)
        .unwrap_or(Duration::from_millis(250));
    if interval < Duration::from_millis(10) {
        return Err(src.error("reports.interval", None, "must be at least 10ms"));
    }
    Ok(ReportsConfig {
        dns: r
            .dns
            .iter()
            .map(|u| u.trim_end_matches('/').to_string())
            .collect(),
        key_file,
        interval,
        addresses: r.addresses,
    })
}

pub(super) fn capacity(src: &Source, c: RawCapacity) -> Result<Capacity, ConfigError> {
    let rps_ok = c.max_rps.is_none_or(|r| r.is_finite() && r > 0.0);
    let in_flight_ok = c.max_in_flight.is_none_or(|n| n > 0);
    if (c.max_rps.is_none() && c.max_in_flight.is_none()) || !rps_ok || !in_flight_ok {
        return Err(src.error(
            "node.capacity",
            None,
            "give max_rps and/or max_in_flight, each above 0",
        ));
    }
    Ok(Capacity {
        max_rps: c.max_rps,
        max_in_flight: c.max_in_flight,
    })
}
