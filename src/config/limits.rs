//! `[limits]` of the proxy config: timeouts and sizes that protect the proxy from its
//! clients.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigDuration, ConfigError, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    #[serde(default = "d_header_read_timeout")]
    header_read_timeout: ConfigDuration,
    #[serde(default = "d_idle_timeout")]
    idle_timeout: ConfigDuration,
    #[serde(default = "d_tunnel_idle_timeout")]
    tunnel_idle_timeout: ConfigDuration,
    #[serde(default = "d_max_header_bytes")]
    max_header_bytes: usize,
    #[serde(default = "d_max_headers")]
    max_headers: usize,
    #[serde(default = "d_max_body_bytes")]
    max_body_bytes: u64,
    #[serde(default = "d_max_connections")]
    max_connections: usize,
    #[serde(default = "d_drain_timeout")]
    drain_timeout: ConfigDuration,
    #[serde(default = "d_max_url")]
    max_url_bytes: usize,
    #[serde(default = "d_max_query_params")]
    max_query_params: usize,
}

fn d_max_url() -> usize {
    8192
}
fn d_max_query_params() -> usize {
    256
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: d_header_read_timeout(),
            idle_timeout: d_idle_timeout(),
            tunnel_idle_timeout: d_tunnel_idle_timeout(),
            max_header_bytes: d_max_header_bytes(),
            max_headers: d_max_headers(),
            max_body_bytes: d_max_body_bytes(),
            max_connections: d_max_connections(),
            drain_timeout: d_drain_timeout(),
            max_url_bytes: d_max_url(),
            max_query_params: d_max_query_params(),
        }
    }
}

fn d_header_read_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}
fn d_idle_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}
/// WebSockets often sit quiet for minutes between messages; HAProxy's examples set
/// `timeout tunnel 1h`.
fn d_tunnel_idle_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(3600))
}
fn d_max_header_bytes() -> usize {
    16 * 1024
}
fn d_max_headers() -> usize {
    100
}
fn d_max_body_bytes() -> u64 {
    10 * 1024 * 1024
}
fn d_max_connections() -> usize {
    10_000
}
fn d_drain_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// A WebSocket tunnel with nothing crossing either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    pub drain_timeout: Duration,
    /// Longer request targets get 414.
    pub max_url_bytes: usize,
    /// More query parameters get 400.
    pub max_query_params: usize,
}

pub(super) fn validate(src: &Source, l: RawLimits) -> Result<Limits, ConfigError> {
    if l.max_header_bytes < 1024 {
        return Err(src.error("limits.max_header_bytes", None, "must be at least 1024"));
    }
    if l.max_headers == 0 || l.max_connections == 0 {
        return Err(src.error(
            "limits",
            None,
            "max_headers and max_connections must be at least 1",
        ));
    }
    for (key, d) in [
        ("limits.header_read_timeout", &l.header_read_timeout),
        ("limits.idle_timeout", &l.idle_timeout),
        ("limits.tunnel_idle_timeout", &l.tunnel_idle_timeout),
    ] {
        if d.0.is_zero() {
            return Err(src.error(key, None, "must be longer than 0s"));
        }
    }
    Ok(Limits {
        header_read_timeout: l.header_read_timeout.0,
        idle_timeout: l.idle_timeout.0,
        tunnel_idle_timeout: l.tunnel_idle_timeout.0,
        max_header_bytes: l.max_header_bytes,
        max_headers: l.max_headers,
        max_body_bytes: l.max_body_bytes,
        max_connections: l.max_connections,
        drain_timeout: l.drain_timeout.0,
        max_url_bytes: l.max_url_bytes,
        max_query_params: l.max_query_params,
    })
}
