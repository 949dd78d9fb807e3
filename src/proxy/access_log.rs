//! One access-log line per request, in the combined format operators' tools already
//! read (plus host, duration, origin and cache result), or as JSON.

use std::net::IpAddr;

use crate::config::proxy::AccessLogFormat;
use crate::logfile::{clf_time, json_str, rfc3339};

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
