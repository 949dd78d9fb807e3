//! The stream listeners' metrics, per service (a `[[streams]]` name): connections, bytes,
//! refusals by reason, and the FTP gateway's transfers and data channels.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

use super::register;

pub const STREAM_CONNECTIONS: &str = "geoedge_proxy_stream_connections_total";
pub const STREAM_CONNECTIONS_OPEN: &str = "geoedge_proxy_stream_connections_open";
pub const STREAM_BYTES: &str = "geoedge_proxy_stream_bytes_total";
pub const STREAM_REFUSED: &str = "geoedge_proxy_stream_refused_total";
pub const STREAM_UP: &str = "geoedge_proxy_stream_up";
pub const FTP_TRANSFERS: &str = "geoedge_proxy_ftp_transfers_total";
pub const FTP_DATA_CHANNELS: &str = "geoedge_proxy_ftp_data_channels_total";
pub const FTP_LOGINS: &str = "geoedge_proxy_ftp_logins_total";

/// Why a stream connection, command or data channel was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamRefusal {
    /// `max_connections` of the stream reached.
    Capacity,
    ProxyHeader,
    /// No origin could be reached.
    NoOrigin,
    /// `tls_passthrough`: no ClientHello, or no rule and no default for its name.
    Sni,
    /// The client's TLS handshake failed.
    Tls,
    Idle,
    LineTooLong,
    CommandRate,
    LoginAttempts,
    /// `USER` before `AUTH TLS` where TLS is required.
    TlsRequired,
    /// A data connection from an address other than the control connection's.
    DataSource,
    ActiveMode,
    /// No passive port free in the range.
    NoPassivePort,
}

impl StreamRefusal {
    pub fn label(self) -> &'static str {
        match self {
            StreamRefusal::Capacity => "capacity",
            StreamRefusal::ProxyHeader => "proxy_header",
            StreamRefusal::NoOrigin => "no_origin",
            StreamRefusal::Sni => "sni",
            StreamRefusal::Tls => "tls",
            StreamRefusal::Idle => "idle",
            StreamRefusal::LineTooLong => "line_too_long",
            StreamRefusal::CommandRate => "command_rate",
            StreamRefusal::LoginAttempts => "login_attempts",
            StreamRefusal::TlsRequired => "tls_required",
            StreamRefusal::DataSource => "data_source",
            StreamRefusal::ActiveMode => "active_mode",
            StreamRefusal::NoPassivePort => "no_passive_port",
        }
    }
}

#[derive(Clone)]
pub struct ServiceMetrics {
    pub open: prometheus::IntGauge,
    pub bytes_in: prometheus::IntCounter,
    pub bytes_out: prometheus::IntCounter,
}

pub struct StreamMetrics {
    pub connections: IntCounterVec,
    pub open: IntGaugeVec,
    /// `direction`: `in` is client → origin, `out` origin → client.
    pub bytes: IntCounterVec,
    refused: IntCounterVec,
    pub up: IntGaugeVec,
    /// `result`: `ok` or `failed`.
    pub transfers: IntCounterVec,
    pub data_channels: IntCounterVec,
    /// `result`: `ok` or `failed`.
    pub logins: IntCounterVec,
}

impl StreamMetrics {
    pub fn new(registry: &Registry) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                registry,
                IntGaugeVec::new(Opts::new(name, help), &["service"]).expect("valid"),
            )
        };
        Self {
            connections: counter(
                STREAM_CONNECTIONS,
                "Client connections accepted, by stream",
                &["service"],
            ),
            open: gauge(
                STREAM_CONNECTIONS_OPEN,
                "Client connections open, by stream",
            ),
            bytes: counter(
                STREAM_BYTES,
                "Bytes carried, by stream and direction (in: client to origin)",
                &["direction", "service"],
            ),
            refused: counter(
                STREAM_REFUSED,
                "Connections, commands and data channels refused, by stream and reason",
                &["reason", "service"],
            ),
            up: gauge(
                STREAM_UP,
                "1 when the stream has an origin that takes connections",
            ),
            transfers: counter(
                FTP_TRANSFERS,
                "FTP transfers (listings, downloads, uploads) through the gateway, by result",
                &["result", "service"],
            ),
            data_channels: counter(
                FTP_DATA_CHANNELS,
                "FTP passive data connections proxied",
                &["service"],
            ),
            logins: counter(FTP_LOGINS, "FTP logins, by result", &["result", "service"]),
        }
    }

    /// One service's per-connection handles, resolved once per listener rather than
    /// looked up by label on every connection.
    pub fn service(&self, service: &str) -> ServiceMetrics {
        ServiceMetrics {
            open: self.open.with_label_values(&[service]),
            bytes_in: self.bytes.with_label_values(&["in", service]),
            bytes_out: self.bytes.with_label_values(&["out", service]),
        }
    }

    pub fn refused(&self, service: &str, why: StreamRefusal) {
        self.refused
            .with_label_values(&[why.label(), service])
            .inc();
    }

    /// Bytes moved by one connection or data channel, counted when it ends.
    pub fn moved(&self, service: &str, client_to_origin: u64, origin_to_client: u64) {
        self.bytes
            .with_label_values(&["in", service])
            .inc_by(client_to_origin);
        self.bytes
            .with_label_values(&["out", service])
            .inc_by(origin_to_client);
    }
}
