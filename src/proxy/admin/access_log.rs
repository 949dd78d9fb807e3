//! One access-log line per request, in the combined format operators' tools already
//! read (plus host, duration, origin and cache result), or as JSON.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Version};
use hyper::body::Body;

use crate::config::proxy::AccessLogFormat;
use crate::process::logfile::{clf_time, json_str, rfc3339};
use crate::proxy::answer::Answer;
use crate::proxy::http::headers;

/// The origin that answered, left in the response's extensions for the log.
#[derive(Clone)]
pub struct ServedBy(pub Arc<str>);

/// What the log needs of a request, copied before the request is taken apart to be
/// forwarded (and only when there is a log to write).
pub struct LoggedRequest {
    method: String,
    target: String,
    host: String,
    version: &'static str,
    referer: Option<String>,
    user_agent: Option<String>,
}

impl LoggedRequest {
    pub fn of<B>(req: &Request<B>) -> Self {
        let header = |name: http::header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        Self {
            method: req.method().to_string(),
            target: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".into()),
            host: headers::request_host(req.uri(), req.headers())
                .unwrap_or("-")
                .to_string(),
            version: match req.version() {
                Version::HTTP_2 => "HTTP/2.0",
                Version::HTTP_10 => "HTTP/1.0",
                _ => "HTTP/1.1",
            },
            referer: header(http::header::REFERER),
            user_agent: header(http::header::USER_AGENT),
        }
    }

    /// The log line for this request and the response head going out.
    pub fn line(
        &self,
        answer: &Answer,
        client: IpAddr,
        started: Instant,
        format: AccessLogFormat,
    ) -> String {
        let response = &answer.response;
        let cache = answer
            .header("cache-status")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(cache_result);
        let entry = AccessEntry {
            unix_ms: crate::process::clock::unix_ms(),
            client,
            host: &self.host,
            method: &self.method,
            target: &self.target,
            version: self.version,
            status: response.status().as_u16(),
            bytes: response.body().size_hint().exact(),
            duration_ms: started.elapsed().as_secs_f64() * 1000.0,
            origin: response.extensions().get::<ServedBy>().map(|s| &*s.0),
            cache,
            referer: self.referer.as_deref(),
            user_agent: self.user_agent.as_deref(),
        };
        self::format(&entry, format)
    }
}

/// What is known of a request and its answer when the response head goes out. `bytes`
/// is the Content-Length when there is one: a streamed body's size is not known then.
pub struct AccessEntry<'a> {
    pub unix_ms: u64,
    pub client: IpAddr,
    pub host: &'a str,
    pub method: &'a str,
    pub target: &'a str,
    pub version: &'a str,
    pub status: u16,
    pub bytes: Option<u64>,
    pub duration_ms: f64,
    pub origin: Option<&'a str>,
    pub cache: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

fn quoted(v: Option<&str>) -> String {
    match v {
        // Escape what would break the line's fields.
        Some(v) => format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")),
        None => "\"-\"".into(),
    }
}

pub fn format(e: &AccessEntry<'_>, format: AccessLogFormat) -> String {
    match format {
        AccessLogFormat::Combined => format!(
            "{} - - [{}] {} {} {} {} {} {} {:.3} {} {}",
            e.client,
            clf_time(e.unix_ms),
            quoted(Some(&format!("{} {} {}", e.method, e.target, e.version))),
            e.status,
            e.bytes.map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
            quoted(e.referer),
            quoted(e.user_agent),
            e.host,
            e.duration_ms / 1000.0,
            e.origin.unwrap_or("-"),
            e.cache.unwrap_or("-"),
        ),
        AccessLogFormat::Json => format!(
            "{{\"time\":\"{}\",\"client\":\"{}\",\"host\":{},\"method\":{},\"path\":{},\"protocol\":\"{}\",\"status\":{},\"bytes\":{},\"duration_ms\":{:.3},\"upstream\":{},\"cache\":{},\"referer\":{},\"user_agent\":{}}}",
            rfc3339(e.unix_ms),
            e.client,
            json_str(e.host),
            json_str(e.method),
            json_str(e.target),
            e.version,
            e.status,
            e.bytes.map(|b| b.to_string()).unwrap_or_else(|| "null".into()),
            e.duration_ms,
            e.origin.map(json_str).unwrap_or_else(|| "null".into()),
            e.cache.map(json_str).unwrap_or_else(|| "null".into()),
            e.referer.map(json_str).unwrap_or_else(|| "null".into()),
            e.user_agent.map(json_str).unwrap_or_else(|| "null".into()),
        ),
    }
}

/// "hit", "miss", "stale"... from a Cache-Status value, for the log's cache field.
pub fn cache_result(cache_status: &str) -> &'static str {
    if cache_status.contains("stale") {
        "stale"
    } else if cache_status.contains("; hit") {
        "hit"
    } else if cache_status.contains("fwd=method") {
        "bypass"
    } else if cache_status.contains("detail=") && !cache_status.contains("stored") {
        "uncacheable"
    } else {
        "miss"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> AccessEntry<'static> {
        AccessEntry {
            unix_ms: 1_800_000_000_000,
            client: "192.0.2.7".parse().unwrap(),
            host: "www.example.test",
            method: "GET",
            target: "/a?b=\"c\"",
            version: "HTTP/1.1",
            status: 200,
            bytes: Some(1024),
            duration_ms: 1.5,
            origin: Some("eu-web-1"),
            cache: Some("hit"),
            referer: None,
            user_agent: Some("curl/8"),
        }
    }

    #[test]
    fn combined_line() {
        assert_eq!(
            format(&entry(), AccessLogFormat::Combined),
            r#"192.0.2.7 - - [15/Jan/2027:08:00:00 +0000] "GET /a?b=\"c\" HTTP/1.1" 200 1024 "-" "curl/8" www.example.test 0.002 eu-web-1 hit"#
        );
    }

    #[test]
    fn json_line_parses() {
        let line = format(&entry(), AccessLogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["path"], "/a?b=\"c\"");
        assert_eq!(v["referer"], serde_json::Value::Null);
        assert_eq!(v["time"], "2027-01-15T08:00:00.000Z");
    }

    #[test]
    fn cache_results() {
        assert_eq!(cache_result("geoedge; hit; ttl=5"), "hit");
        assert_eq!(
            cache_result("geoedge; fwd=uri-miss; stored; ttl=60"),
            "miss"
        );
        assert_eq!(
            cache_result("geoedge; fwd=stale; fwd-status=304; ttl=9"),
            "stale"
        );
        assert_eq!(
            cache_result("geoedge; fwd=miss; detail=private"),
            "uncacheable"
        );
    }
}
