//! The `[[streams]]` part of the proxy config: listeners that carry bytes rather than
//! HTTP requests (TCP pass-through, TLS termination, routing by SNI) and the FTP-aware
//! gateway, each in front of an upstream group of a stream protocol.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::upstreams::{OriginProtocol, ProxyVersion, UpstreamConfig};
use super::{ConfigDuration, ConfigError, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStream {
    name: Spanned<String>,
    mode: StreamMode,
    listen: Vec<SocketAddr>,
    upstream: Option<Spanned<String>>,
    /// `tls_passthrough`: SNI name (or `*.suffix`) → upstream.
    #[serde(default)]
    sni: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    proxy_protocol: bool,
    send_proxy: Option<ProxyVersion>,
    #[serde(default = "d_idle_timeout")]
    idle_timeout: ConfigDuration,
    #[serde(default = "d_max_connections")]
    max_connections: usize,
    ftp: Option<RawFtp>,
}

fn d_idle_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}
fn d_max_connections() -> usize {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFtp {
    #[serde(default)]
    tls: FtpTls,
    #[serde(default)]
    require_tls: bool,
    passive_ports: Spanned<String>,
    passive_address: Option<IpAddr>,
    #[serde(default = "d_max_line")]
    max_line: usize,
    #[serde(default = "d_commands_per_second")]
    commands_per_second: u32,
    #[serde(default = "d_login_attempts")]
    login_attempts: u32,
    #[serde(default = "d_data_timeout")]
    data_timeout: ConfigDuration,
}

fn d_max_line() -> usize {
    1024
}
fn d_commands_per_second() -> u32 {
    50
}
fn d_login_attempts() -> u32 {
    3
}
fn d_data_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

/// What a stream listener does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamMode {
    /// Bytes both ways, untouched.
    Tcp,
    /// TLS terminated here with the listener certificates; plain or TLS to the origin.
    Tls,
    /// The client's TLS passed through whole, the upstream chosen by the ClientHello's SNI.
    TlsPassthrough,
    /// The FTP-aware gateway: control connection relayed command by command, passive data
    /// connections proxied through ports of our own.
    Ftp,
}

impl StreamMode {
    pub fn name(self) -> &'static str {
        match self {
            StreamMode::Tcp => "tcp",
            StreamMode::Tls => "tls",
            StreamMode::TlsPassthrough => "tls_passthrough",
            StreamMode::Ftp => "ftp",
        }
    }
}

/// TLS on the client side of an FTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FtpTls {
    /// Plain FTP only; `AUTH TLS` is refused.
    None,
    /// Plain FTP that may upgrade with `AUTH TLS` (RFC 4217).
    #[default]
    Explicit,
    /// TLS from the first byte (the port 990 convention).
    Implicit,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamConfig {
    pub name: String,
    pub mode: StreamMode,
    pub listen: Vec<SocketAddr>,
    /// The upstream (for `tls_passthrough`, the one for names no SNI rule matches).
    pub upstream: Option<String>,
    /// `tls_passthrough` rules, exact names before wildcards, lower case.
    pub sni: Vec<(String, String)>,
    pub proxy_protocol: bool,
    pub send_proxy: Option<ProxyVersion>,
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub ftp: Option<FtpConfig>,
}

impl StreamConfig {
    /// Every upstream this stream may send to.
    pub fn upstreams(&self) -> impl Iterator<Item = &str> {
        self.upstream
            .as_deref()
            .into_iter()
            .chain(self.sni.iter().map(|(_, u)| u.as_str()))
    }

    /// Whether connections are TLS-terminated here (and need the listener certificates).
    pub fn terminates_tls(&self) -> bool {
        match self.mode {
            StreamMode::Tls => true,
            StreamMode::Ftp => self.ftp.as_ref().is_some_and(|f| f.tls != FtpTls::None),
            StreamMode::Tcp | StreamMode::TlsPassthrough => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FtpConfig {
    pub tls: FtpTls,
    /// Refuse `USER` (and so everything past it) on a control connection without TLS.
    pub require_tls: bool,
    pub passive_ports: RangeInclusive<u16>,
    /// The address passive replies name; `None`: the listener's own address.
    pub passive_address: Option<IpAddr>,
    pub max_line: usize,
    pub commands_per_second: u32,
    pub login_attempts: u32,
    /// How long a passive port waits for the client's data connection.
    pub data_timeout: Duration,
}

/// Validates every stream; names are unique, listen addresses are not shared with each
/// other, and each upstream exists and speaks a protocol the mode can use.
pub(super) fn validate(
    src: &Source,
    raw: Vec<RawStream>,
    upstreams: &[UpstreamConfig],
    http_listeners: &[SocketAddr],
) -> Result<Vec<StreamConfig>, ConfigError> {
    let mut names = HashSet::new();
    let mut addrs: HashSet<SocketAddr> = http_listeners.iter().copied().collect();
    let mut streams = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let key = format!("streams[{i}]");
        let name = s.name.get_ref().trim().to_string();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(src.error(
                format!("{key}.name"),
                Some(s.name.span()),
                "a name of letters, digits, `-` and `_` (it labels metrics and reports)",
            ));
        }
        if !names.insert(name.clone()) {
            return Err(src.error(
                format!("{key}.name"),
                Some(s.name.span()),
                format!("another stream is named `{name}`"),
            ));
        }
        if s.listen.is_empty() {
            return Err(src.error(format!("{key}.listen"), None, "give at least one address"));
        }
        for a in &s.listen {
            if a.port() != 0 && !addrs.insert(*a) {
                return Err(src.error(
                    format!("{key}.listen"),
                    None,
                    format!("{a} is already a listener of this proxy"),
                ));
            }
        }
        let upstream = match (&s.upstream, s.mode) {
            (None, StreamMode::TlsPassthrough) if !s.sni.is_empty() => None,
            (None, _) => {
                return Err(src.error(
                    format!("{key}.upstream"),
                    None,
                    "name the upstream the stream sends to",
                ))
            }
            (Some(u), _) => Some(u.clone()),
        };
        if !s.sni.is_empty() && s.mode != StreamMode::TlsPassthrough {
            return Err(src.error(
                format!("{key}.sni"),
                None,
                "SNI rules are for mode = \"tls_passthrough\"",
            ));
        }
        let mut sni = Vec::new();
        for (pattern, target) in &s.sni {
            let p = pattern.trim().trim_end_matches('.').to_ascii_lowercase();
            let bare = p.strip_prefix("*.").unwrap_or(&p);
            if bare.is_empty() || bare.contains('*') {
                return Err(src.error(
                    format!("{key}.sni.\"{pattern}\""),
                    Some(target.span()),
                    "an SNI rule is a name or `*.suffix`",
                ));
            }
            sni.push((p, target.clone()));
        }
        // Exact names first, then wildcards with the longest suffix first.
        sni.sort_by_key(|(p, _)| (p.starts_with("*."), std::cmp::Reverse(p.len())));
        let allowed: &[OriginProtocol] = match s.mode {
            StreamMode::Tcp | StreamMode::Tls => &[OriginProtocol::Tcp, OriginProtocol::Tls],
            StreamMode::TlsPassthrough => &[OriginProtocol::Tcp],
            StreamMode::Ftp => &[OriginProtocol::Ftp, OriginProtocol::Ftps],
        };
        for target in upstream.iter().chain(sni.iter().map(|(_, t)| t)) {
            let Some(u) = upstreams.iter().find(|u| &u.name == target.get_ref()) else {
                return Err(src.error(
                    format!("{key}.upstream"),
                    Some(target.span()),
                    format!("no upstream is named `{}`", target.get_ref()),
                ));
            };
            if !allowed.contains(&u.protocol) {
                let want: Vec<&str> = allowed.iter().map(|p| p.name()).collect();
                return Err(src.error(
                    format!("{key}.upstream"),
                    Some(target.span()),
                    format!(
                        "upstream `{}` speaks {}; a {} stream needs protocol = {}",
                        u.name,
                        u.protocol.name(),
                        s.mode.name(),
                        want.iter()
                            .map(|w| format!("\"{w}\""))
                            .collect::<Vec<_>>()
                            .join(" or ")
                    ),
                ));
            }
        }
        let ftp = match (s.mode, s.ftp) {
            (StreamMode::Ftp, Some(f)) => Some(ftp(src, &key, f)?),
            (StreamMode::Ftp, None) => {
                return Err(src.error(
                    format!("{key}.ftp"),
                    None,
                    "an ftp stream needs [streams.ftp] with at least passive_ports",
                ))
            }
            (_, Some(_)) => {
                return Err(src.error(
                    format!("{key}.ftp"),
                    None,
                    "FTP settings are for mode = \"ftp\"",
                ))
            }
            (_, None) => None,
        };
        if s.max_connections == 0 {
            return Err(src.error(format!("{key}.max_connections"), None, "must be at least 1"));
        }
        if s.idle_timeout.0.is_zero() {
            return Err(src.error(format!("{key}.idle_timeout"), None, "must be more than 0"));
        }
        streams.push(StreamConfig {
            name,
            mode: s.mode,
            listen: s.listen,
            upstream: upstream.map(|u| u.into_inner()),
            sni: sni.into_iter().map(|(p, t)| (p, t.into_inner())).collect(),
            proxy_protocol: s.proxy_protocol,
            send_proxy: s.send_proxy,
            idle_timeout: s.idle_timeout.0,
            max_connections: s.max_connections,
            ftp,
        });
    }
    Ok(streams)
}

fn ftp(src: &Source, key: &str, f: RawFtp) -> Result<FtpConfig, ConfigError> {
    let ports = parse_port_range(f.passive_ports.get_ref()).ok_or_else(|| {
        src.error(
            format!("{key}.ftp.passive_ports"),
            Some(f.passive_ports.span()),
            "a port range as \"30000-30099\" (low-high, 1024 or above)",
        )
    })?;
    if f.require_tls && f.tls == FtpTls::None {
        return Err(src.error(
            format!("{key}.ftp.require_tls"),
            None,
            "needs tls = \"explicit\" or \"implicit\"",
        ));
    }
    if f.max_line < 64 {
        return Err(src.error(format!("{key}.ftp.max_line"), None, "must be at least 64"));
    }
    if f.commands_per_second == 0 || f.login_attempts == 0 {
        return Err(src.error(
            format!("{key}.ftp"),
            None,
            "commands_per_second and login_attempts must be at least 1",
        ));
    }
    Ok(FtpConfig {
        tls: f.tls,
        require_tls: f.require_tls,
        passive_ports: ports,
        passive_address: f.passive_address,
        max_line: f.max_line,
        commands_per_second: f.commands_per_second,
        login_attempts: f.login_attempts,
        data_timeout: f.data_timeout.0,
    })
}

fn parse_port_range(text: &str) -> Option<RangeInclusive<u16>> {
    let (low, high) = text.split_once('-')?;
    let low: u16 = low.trim().parse().ok()?;
    let high: u16 = high.trim().parse().ok()?;
    (1024 <= low && low <= high).then_some(low..=high)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProxyConfig;

    const BASE: &str = r#"
[node]
name = "f-1"
region = "eu"
[listen]
admin = "127.0.0.1:9190"
[upstreams.files]
protocol = "ftp"
origins = [{ name = "a", addr = "127.0.0.1:2100" }]
[upstreams.ssh]
protocol = "tcp"
origins = [{ name = "s", addr = "127.0.0.1:2200" }]
[upstreams.web]
origins = [{ name = "w", addr = "127.0.0.1:8080" }]
"#;

    fn load(streams: &str) -> Result<ProxyConfig, String> {
        let text = format!("{BASE}\n{streams}");
        ProxyConfig::from_source(&Source::from_text("gw.toml", text)).map_err(|e| e.to_string())
    }

    #[test]
    fn a_file_gateway_needs_no_http_listener_or_route() {
        let c = load(
            "[[streams]]\nname = \"sftp\"\nmode = \"tcp\"\nlisten = [\"127.0.0.1:2222\"]\nupstream = \"ssh\"\nsend_proxy = \"v2\"\n\
             [[streams]]\nname = \"ftp\"\nmode = \"ftp\"\nlisten = [\"127.0.0.1:2121\"]\nupstream = \"files\"\n\
             [streams.ftp]\ntls = \"none\"\npassive_ports = \"30000-30099\"\n",
        )
        .unwrap();
        assert_eq!(c.streams.len(), 2);
        assert_eq!(c.streams[0].send_proxy, Some(ProxyVersion::V2));
        let ftp = c.streams[1].ftp.as_ref().unwrap();
        assert_eq!(ftp.passive_ports, 30000..=30099);
        assert_eq!(ftp.login_attempts, 3);
        assert!(!c.streams[1].terminates_tls());
    }

    #[test]
    fn mistakes_name_the_key_and_say_what_would_do() {
        let cases = [
            ("[[streams]]\nname = \"x\"\nmode = \"tcp\"\nlisten = [\"127.0.0.1:1\"]\nupstream = \"web\"\n", "streams[0].upstream", "speaks http1"),
            ("[[streams]]\nname = \"x\"\nmode = \"ftp\"\nlisten = [\"127.0.0.1:1\"]\nupstream = \"ssh\"\n[streams.ftp]\npassive_ports = \"3-4\"\n", "streams[0].upstream", "\"ftp\" or \"ftps\""),
            ("[[streams]]\nname = \"x\"\nmode = \"ftp\"\nlisten = [\"127.0.0.1:1\"]\nupstream = \"files\"\n", "streams[0].ftp", "passive_ports"),
            ("[[streams]]\nname = \"x\"\nmode = \"ftp\"\nlisten = [\"127.0.0.1:1\"]\nupstream = \"files\"\n[streams.ftp]\ntls = \"none\"\npassive_ports = \"30000-3\"\n", "streams[0].ftp.passive_ports", "low-high"),
            ("[[streams]]\nname = \"x\"\nmode = \"ftp\"\nlisten = [\"127.0.0.1:1\"]\nupstream = \"files\"\n[streams.ftp]\npassive_ports = \"30000-30001\"\n", "tls.certificates", "certificate"),
            ("[[streams]]\nname = \"x\"\nmode = \"tcp\"\nlisten = [\"127.0.0.1:9190\"]\nupstream = \"ssh\"\n", "streams[0].listen", "already a listener"),
            ("[[streams]]\nname = \"x y\"\nmode = \"tcp\"\nlisten = [\"127.0.0.1:1\"]\nupstream = \"ssh\"\n", "streams[0].name", "letters"),
            ("[[streams]]\nname = \"x\"\nmode = \"tcp\"\nlisten = [\"127.0.0.1:1\"]\nupstream = \"ssh\"\n[streams.sni]\n\"a.test\" = \"ssh\"\n", "streams[0].sni", "tls_passthrough"),
            ("[[streams]]\nname = \"x\"\nmode = \"tls_passthrough\"\nlisten = [\"127.0.0.1:1\"]\n[streams.sni]\n\"a.*.test\" = \"ssh\"\n", "streams[0].sni", "`*.suffix`"),
            ("[[routes]]\nhosts = [\"a.test\"]\nupstream = \"ssh\"\n[[streams]]\nname = \"x\"\nmode = \"tcp\"\nlisten = [\"127.0.0.1:1\"]\nupstream = \"ssh\"\n", "routes[0].upstream", "a route needs an HTTP upstream"),
        ];
        for (streams, key, says) in cases {
            let err = load(streams).expect_err(streams);
            assert!(err.contains(&format!("key `{key}")), "{err}");
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn port_ranges_are_low_dash_high_above_the_privileged_ports() {
        assert_eq!(parse_port_range("30000-30099"), Some(30000..=30099));
        assert_eq!(parse_port_range(" 2000 - 2000 "), Some(2000..=2000));
        assert_eq!(parse_port_range("30099-30000"), None);
        assert_eq!(parse_port_range("20-21"), None);
        assert_eq!(parse_port_range("30000"), None);
        assert_eq!(parse_port_range("a-b"), None);
    }
}
