//! Helpers shared by unit tests.

use http::{HeaderMap, HeaderName, HeaderValue};

/// A header map from (name, value) pairs, repeated names appended in order.
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("test header name"),
            HeaderValue::from_str(v).expect("test header value"),
        );
    }
    h
}
