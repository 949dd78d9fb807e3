//! The `[forwarding]` part of the proxy config: which proxies are trusted, which forwarding
//! headers we write, our Via pseudonym, and the origin headers clients never see.

use http::{HeaderValue, Version};
use ipnet::IpNet;
use serde::Deserialize;

use super::{ConfigError, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawForwarding {
    #[serde(default)]
    trusted_proxies: Vec<IpNet>,
    #[serde(default = "d_hide")]
    hide_response_headers: Vec<String>,
    #[serde(default = "d_via")]
    via: String,
    #[serde(default = "d_request_headers")]
    request_headers: Vec<String>,
}

impl Default for RawForwarding {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            hide_response_headers: d_hide(),
            via: d_via(),
            request_headers: d_request_headers(),
        }
    }
}

fn d_request_headers() -> Vec<String> {
    ForwardHeaders::NAMES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn d_hide() -> Vec<String> {
    vec!["server".into(), "x-powered-by".into()]
}
fn d_via() -> String {
    "geoedge".into()
}

#[derive(Debug, Clone)]
pub struct Forwarding {
    pub trusted_proxies: Vec<IpNet>,
    /// Origin response headers not passed to clients.
    pub hide_response_headers: Vec<http::HeaderName>,
    pub via: ViaHop,
    /// Forwarding headers written on requests (and Via on responses).
    pub request_headers: ForwardHeaders,
}

pub(super) fn validate(src: &Source, raw: RawForwarding) -> Result<Forwarding, ConfigError> {
    let mut hide_response_headers = Vec::new();
    for (i, name) in raw.hide_response_headers.iter().enumerate() {
        match http::HeaderName::from_bytes(name.as_bytes()) {
            Ok(n) => hide_response_headers.push(n),
            Err(_) => {
                return Err(src.error(
                    format!("forwarding.hide_response_headers[{i}]"),
                    None,
                    format!("{name:?} is not a header name"),
                ))
            }
        }
    }
    let via = ViaHop::new(&raw.via).map_err(|_| {
        src.error(
            "forwarding.via",
            None,
            "must be a token (letters, digits, - . _ : and no spaces)",
        )
    })?;

    let request_headers = ForwardHeaders::from_names(&raw.request_headers).map_err(|i| {
        src.error(
            format!("forwarding.request_headers[{i}]"),
            None,
            format!(
                "{:?} is not one of {}",
                raw.request_headers[i],
                ForwardHeaders::NAMES.join(", ")
            ),
        )
    })?;

    Ok(Forwarding {
        trusted_proxies: raw.trusted_proxies,
        hide_response_headers,
        via,
        request_headers,
    })
}

/// The forwarding headers written on requests to origins (`forwarding.request_headers`).
/// `via` also covers responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardHeaders {
    pub x_forwarded_for: bool,
    pub x_forwarded_proto: bool,
    pub x_forwarded_host: bool,
    pub forwarded: bool,
    pub via: bool,
}

impl ForwardHeaders {
    pub const NAMES: [&'static str; 5] = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "forwarded",
        "via",
    ];

    pub const ALL: Self = Self {
        x_forwarded_for: true,
        x_forwarded_proto: true,
        x_forwarded_host: true,
        forwarded: true,
        via: true,
    };

    /// From header names (any case); Err(i) names the first entry that is not one of
    /// `NAMES`.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, usize> {
        let mut set = Self {
            x_forwarded_for: false,
            x_forwarded_proto: false,
            x_forwarded_host: false,
            forwarded: false,
            via: false,
        };
        for (i, name) in names.iter().enumerate() {
            let flag = match name.as_ref().to_ascii_lowercase().as_str() {
                "x-forwarded-for" => &mut set.x_forwarded_for,
                "x-forwarded-proto" => &mut set.x_forwarded_proto,
                "x-forwarded-host" => &mut set.x_forwarded_host,
                "forwarded" => &mut set.forwarded,
                "via" => &mut set.via,
                _ => return Err(i),
            };
            *flag = true;
        }
        Ok(set)
    }
}

/// Our hop in Via (RFC 9110 §7.6.3): the pseudonym, with its header values for each
/// protocol version made once, at configuration time.
#[derive(Debug, Clone)]
pub struct ViaHop {
    name: String,
    /// HTTP/0.9, 1.0, 1.1, 2 and 3.
    values: [HeaderValue; 5],
}

impl ViaHop {
    /// Fails when `name` is not a pseudonym or host[:port] (token characters and ':').
    pub fn new(name: &str) -> Result<Self, InvalidVia> {
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:".contains(&b));
        if !valid {
            return Err(InvalidVia);
        }
        let value = |proto: &str| {
            HeaderValue::from_maybe_shared(bytes::Bytes::from(format!("{proto} {name}")))
                .map_err(|_| InvalidVia)
        };
        Ok(Self {
            name: name.to_string(),
            values: [
                value("0.9")?,
                value("1.0")?,
                value("1.1")?,
                value("2")?,
                value("3")?,
            ],
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn value(&self, version: Version) -> &HeaderValue {
        let i = match version {
            Version::HTTP_09 => 0,
            Version::HTTP_10 => 1,
            Version::HTTP_2 => 3,
            Version::HTTP_3 => 4,
            _ => 2,
        };
        &self.values[i]
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a Via pseudonym")]
pub struct InvalidVia;
