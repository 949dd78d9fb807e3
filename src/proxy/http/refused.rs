//! Requests refused before they could be read as requests: a head that does not parse
//! (400), one over the size limits (431, 414), an HTTP version we do not speak (505), a
//! head that did not arrive within `header_read_timeout` (408, nothing sent, as nginx),
//! a missing or broken PROXY protocol header where one is expected (nothing sent).
//! No handler sees them, so they are counted and logged here: nginx and HAProxy both log
//! such refusals, and a client's "400" must show up somewhere an operator looks.

use std::net::IpAddr;

use crate::metrics::REFUSAL_REASONS;
use crate::proxy::error::ProxyError;
use crate::proxy::Shared;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    HeadTooLarge,
    UriTooLong,
    VersionNotSupported,
    HeaderTimeout,
    /// A connection to a `proxy_protocol` listener that did not start with a valid
    /// PROXY header (nothing sent, as nginx and HAProxy).
    ProxyHeader,
}

impl Refusal {
    /// The refusal hyper answered when it ended a connection with `e`, if it was one.
    pub fn of_hyper(e: &hyper::Error) -> Option<Self> {
        if e.is_parse_too_large() {
            // hyper tells the two apart only in its message (its answers: 414, 431).
            Some(if e.to_string().contains("URI too long") {
                Refusal::UriTooLong
            } else {
                Refusal::HeadTooLarge
            })
        } else if e.is_parse() && !e.is_parse_version_h2() && !e.is_parse_status() {
            // An HTTP/2 preface on an HTTP/1 connection gets no answer from hyper; a
            // bad status is a response's fault, never a request's.
            Some(Refusal::Malformed)
        } else {
            None
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Refusal::Malformed => 400,
            Refusal::HeadTooLarge => 431,
            Refusal::UriTooLong => 414,
            Refusal::VersionNotSupported => 505,
            Refusal::HeaderTimeout => 408,
            Refusal::ProxyHeader => 400,
        }
    }

    /// The `reason` label of `geoedge_proxy_refused_requests_total`.
    pub fn label(self) -> &'static str {
        REFUSAL_REASONS[self as usize]
    }

    /// The answer we write ourselves, for the refusals made before hyper sees a head.
    pub fn answer(self) -> Option<ProxyError> {
        match self {
            Refusal::UriTooLong => Some(ProxyError::UriTooLong),
            Refusal::VersionNotSupported => Some(ProxyError::VersionNotSupported),
            _ => None,
        }
    }
}

/// Counts a refusal, and writes its access-log line: the request is unknown, so its
/// request line, host and sizes are `-`.
pub fn record(shared: &Shared, client: IpAddr, refusal: Refusal) {
    shared.metrics.refused[refusal as usize].inc();
    tracing::debug!(%client, reason = refusal.label(), status = refusal.status(), "request refused");
    if let Some((log, format)) = &shared.access_log {
        let entry = crate::proxy::admin::access_log::AccessEntry {
            unix_ms: crate::process::clock::unix_ms(),
            client,
            host: "-",
            method: "-",
            target: "-",
            version: "-",
            status: refusal.status(),
            bytes: None,
            duration_ms: 0.0,
            origin: None,
            cache: None,
            referer: None,
            user_agent: None,
        };
        log.write(crate::proxy::admin::access_log::format(&entry, *format));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_statuses_line_up() {
        let all = [
            Refusal::Malformed,
            Refusal::HeadTooLarge,
            Refusal::UriTooLong,
            Refusal::VersionNotSupported,
            Refusal::HeaderTimeout,
            Refusal::ProxyHeader,
        ];
        assert_eq!(all.len(), REFUSAL_REASONS.len());
        let labels: Vec<_> = all.iter().map(|r| r.label()).collect();
        assert_eq!(
            labels,
            [
                "malformed",
                "head_too_large",
                "uri_too_long",
                "version",
                "header_timeout",
                "proxy_header"
            ]
        );
        let statuses: Vec<_> = all.iter().map(|r| r.status()).collect();
        assert_eq!(statuses, [400, 431, 414, 505, 408, 400]);
        for r in all {
            if let Some(e) = r.answer() {
                assert_eq!(e.status().as_u16(), r.status(), "{r:?}");
            }
        }
    }
}
