//! The `[forwarding]` part of the proxy config: which proxies are trusted, which forwarding
//! headers we write, our Via pseudonym, and the origin headers clients never see.

use ipnet::IpNet;
use serde::Deserialize;

use super::{ConfigError, Source};
use crate::proxy::headers::{ForwardHeaders, ViaHop};

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
