//! How a stored variant is answered: the header template made on its first hit, Age and
//! Cache-Status, conditional (304) and range (206/416) answers, HEAD; and the Cache-Status
//! of answers that did not come from the store.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, AGE, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH,
    CONTENT_LOCATION, CONTENT_RANGE, DATE, ETAG, EXPIRES, LAST_MODIFIED, VARY,
};
use http::request::Parts;
use http::{HeaderMap, Method, Response, StatusCode};

use crate::cache::body_file::BodyFile;
use crate::cache::rules::{self, RangeAnswer};
use crate::cache::store::{Coding, Variant};
use crate::proxy::body::{empty, full, ProxyBody};

pub(crate) static CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// Answers a request from a stored variant: 304 for a matching conditional, 206/416
/// for a range, headers only for HEAD, with Age and Cache-Status.
pub(crate) fn respond(
    v: &Variant,
    parts: &Parts,
    now: u64,
    cache_status: &str,
    compress: bool,
) -> Response<ProxyBody> {
    let age = v.freshness.age(now);
    let ttl = v.freshness.ttl(now);
    let mut headers = v.served.get_or_init(|| served_headers(v)).clone();
    // Both are in the template already, so these replace values in place and the copied
    // map never grows.
    headers.insert(AGE, age_value(age));
    headers.insert(CACHE_STATUS.clone(), cache_status_value(cache_status, ttl));
    if compress && !vary_lists(&headers, "accept-encoding") {
        headers.append(VARY, HeaderValue::from_static("Accept-Encoding"));
    }

    if v.status == StatusCode::OK && rules::not_modified(&parts.headers, &headers) {
        let mut resp = Response::new(empty());
        *resp.status_mut() = StatusCode::NOT_MODIFIED;
        // RFC 9110 §15.4.5: what a 304 carries.
        for h in [
            CACHE_CONTROL,
            CONTENT_LOCATION,
            DATE,
            ETAG,
            EXPIRES,
            VARY,
            LAST_MODIFIED,
            AGE,
            CACHE_STATUS.clone(),
        ] {
            for value in headers.get_all(&h) {
                resp.headers_mut().append(h.clone(), value.clone());
            }
        }
        return resp;
    }

    let len = v.body.len() as u64;
    let (status, body) = match (v.status, rules::range(&parts.headers, &headers, len)) {
        (StatusCode::OK, RangeAnswer::Partial(a, b)) => {
            if let Ok(cr) = HeaderValue::from_str(&format!("bytes {a}-{b}/{len}")) {
                headers.insert(CONTENT_RANGE, cr);
            }
            headers.remove(http::header::ACCEPT_RANGES);
            (
                StatusCode::PARTIAL_CONTENT,
                v.body.slice(a as usize..=b as usize),
            )
        }
        (StatusCode::OK, RangeAnswer::Unsatisfiable) => {
            if let Ok(cr) = HeaderValue::from_str(&format!("bytes */{len}")) {
                headers.insert(CONTENT_RANGE, cr);
            }
            headers.remove(http::header::ACCEPT_RANGES);
            (StatusCode::RANGE_NOT_SATISFIABLE, Bytes::new())
        }
        _ => (v.status, v.body.clone()),
    };
    if status != v.status {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let whole = status == v.status && body.len() == v.body.len();
    let body = if parts.method == Method::HEAD {
        empty()
    } else {
        full(body)
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    if let (true, false, Some(file)) = (whole, parts.method == Method::HEAD, &v.file) {
        resp.extensions_mut().insert(FileBody(file.clone()));
    }
    resp
}

/// On a response whose body is a whole stored body with a sealed file: a writer that can
/// may send the file instead of the body's bytes (they are the same bytes).
#[derive(Clone, Debug)]
pub struct FileBody(pub Arc<BodyFile>);

/// The stored headers with what every answer from the variant carries: its coding, a weak
/// validator for a coding we applied, Accept-Ranges, the length, and placeholders for
/// Age and Cache-Status.
fn served_headers(v: &Variant) -> HeaderMap {
    let mut headers = v.headers.clone();
    headers.reserve(6);
    headers.insert(AGE, HeaderValue::from_static("0"));
    headers.insert(CACHE_STATUS.clone(), HeaderValue::from_static("geoedge"));
    if v.coding != Coding::Identity {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(v.coding.token()));
        // Another coding is another representation: a strong validator must not be shared.
        if let Some(etag) = headers.get(ETAG).and_then(|e| e.to_str().ok()) {
            if !etag.starts_with("W/") {
                if let Ok(weak) = HeaderValue::from_str(&format!("W/{etag}")) {
                    headers.insert(ETAG, weak);
                }
            }
        }
    }
    if v.status == StatusCode::OK {
        headers.insert(
            http::header::ACCEPT_RANGES,
            HeaderValue::from_static("bytes"),
        );
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(v.body.len()));
    headers
}

/// Age values below this come from a table instead of a fresh allocation.
const AGE_TABLE: usize = 4096;

fn age_value(age: u64) -> HeaderValue {
    static TABLE: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        // One leaked string holds all the digits; each value borrows a slice of it, so a
        // copy is a pointer copy with no reference count shared between threads.
        let mut digits = String::new();
        let mut ends = Vec::with_capacity(AGE_TABLE);
        for n in 0..AGE_TABLE {
            digits.push_str(&n.to_string());
            ends.push(digits.len());
        }
        let digits: &'static str = Box::leak(digits.into_boxed_str());
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let v = HeaderValue::from_static(&digits[start..end]);
                start = end;
                v
            })
            .collect()
    });
    usize::try_from(age)
        .ok()
        .and_then(|i| table.get(i))
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(age))
}

/// `geoedge; <status>; ttl=<seconds>` (RFC 9211), written on the stack.
fn cache_status_value(cache_status: &str, ttl: i64) -> HeaderValue {
    use std::io::Write as _;
    let mut buf = [0u8; 128];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let value = match write!(cursor, "geoedge; {cache_status}; ttl={ttl}") {
        Ok(()) => {
            let n = cursor.position() as usize;
            HeaderValue::from_bytes(&buf[..n])
        }
        Err(_) => HeaderValue::from_str(&format!("geoedge; {cache_status}; ttl={ttl}")),
    };
    value.unwrap_or_else(|_| HeaderValue::from_static("geoedge"))
}

fn vary_lists(headers: &HeaderMap, name: &str) -> bool {
    headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|n| n.trim().eq_ignore_ascii_case(name) || n.trim() == "*")
}

/// An origin response sent on as it is (not stored), marked with Cache-Status; a HEAD
/// gets the headers of the GET we made.
pub(crate) fn pass_through(
    mut resp: Response<ProxyBody>,
    parts: &Parts,
    cache_status: &str,
) -> Response<ProxyBody> {
    if let Ok(cs) = HeaderValue::from_str(&format!("geoedge; {cache_status}")) {
        resp.headers_mut().insert(CACHE_STATUS.clone(), cs);
    }
    if parts.method == Method::HEAD {
        let (head, _) = resp.into_parts();
        return Response::from_parts(head, empty());
    }
    resp
}

pub(crate) fn gateway_timeout() -> Response<ProxyBody> {
    let mut resp = Response::new(full(Bytes::from_static(
        b"504 Gateway Timeout: not in cache (only-if-cached)\n",
    )));
    *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
    resp.headers_mut().insert(
        CACHE_STATUS.clone(),
        HeaderValue::from_static("geoedge; fwd=miss; detail=only-if-cached"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::rules::Freshness;

    #[test]
    fn age_values_from_the_table_and_beyond_it() {
        for age in [0u64, 1, 9, 10, 60, 999, 4095, 4096, 86_400, u64::MAX] {
            assert_eq!(age_value(age), age.to_string().as_str(), "age {age}");
        }
    }

    #[test]
    fn cache_status_values_short_and_long() {
        assert_eq!(cache_status_value("hit", 57), "geoedge; hit; ttl=57");
        assert_eq!(
            cache_status_value("fwd=stale; fwd-status=304", -3),
            "geoedge; fwd=stale; fwd-status=304; ttl=-3"
        );
        let long = format!("fwd=miss; detail={}", "x".repeat(200));
        assert_eq!(
            cache_status_value(&long, 1),
            format!("geoedge; {long}; ttl=1").as_str()
        );
    }

    #[test]
    fn hits_copy_the_template_and_partial_answers_adjust_it() {
        let mut stored = HeaderMap::new();
        stored.insert(ETAG, HeaderValue::from_static("\"v1\""));
        stored.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
        let v = Variant {
            vary_values: Vec::new(),
            coding: Coding::Gzip,
            status: StatusCode::OK,
            headers: stored,
            body: Bytes::from_static(b"0123456789"),
            file: None,
            freshness: Freshness::from_response(StatusCode::OK, &HeaderMap::new(), 100, 100),
            served: std::sync::OnceLock::new(),
        };
        let get = http::Request::get("/").body(()).unwrap().into_parts().0;
        let full = respond(&v, &get, 105, "hit", false);
        let h = full.headers();
        assert_eq!(full.status(), StatusCode::OK);
        assert_eq!(h[AGE], "5");
        assert!(h[&CACHE_STATUS]
            .to_str()
            .unwrap()
            .starts_with("geoedge; hit; ttl="));
        assert_eq!(h[CONTENT_LENGTH], "10");
        assert_eq!(h[CONTENT_ENCODING], "gzip");
        assert_eq!(h[ETAG], "W/\"v1\"");
        assert_eq!(h[http::header::ACCEPT_RANGES], "bytes");
        assert_eq!(h.get_all(AGE).iter().count(), 1);

        let ranged = http::Request::get("/")
            .header(http::header::RANGE, "bytes=2-4")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let part = respond(&v, &ranged, 107, "hit", false);
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(part.headers()[CONTENT_LENGTH], "3");
        assert_eq!(part.headers()[CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(part.headers()[AGE], "7");
        assert!(part.headers().get(http::header::ACCEPT_RANGES).is_none());

        // The template is not changed by what one answer did.
        let again = respond(&v, &get, 105, "hit", true);
        assert_eq!(again.headers()[CONTENT_LENGTH], "10");
        assert_eq!(again.headers()[VARY], "Accept-Encoding");
        assert!(v.served.get().unwrap().get(VARY).is_none());
    }

    #[test]
    fn vary_lists_matches_names_case_insensitively() {
        let mut h = HeaderMap::new();
        h.insert(VARY, HeaderValue::from_static("Origin, Accept-Encoding"));
        assert!(vary_lists(&h, "accept-encoding"));
        assert!(!vary_lists(&h, "cookie"));
    }
}
