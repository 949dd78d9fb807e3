//! The edge cache: RFC 9111 rules (pure), Cache-Control parsing, the byte-bounded store,
//! request coalescing and compression of stored objects. The proxy's request path uses
//! them in `proxy::cached`.

pub mod body_file;
pub mod coalesce;
pub mod compress;
pub mod directives;
pub mod rules;
pub mod store;

/// The primary cache key of a request: scheme, host (lower case) and target. Only GET
/// responses are stored, so the method is implied (HEAD is answered from GET).
pub fn key(scheme: &str, host: &str, path_and_query: &str) -> String {
    let mut k = String::with_capacity(scheme.len() + host.len() + path_and_query.len() + 3);
    k.push_str(scheme);
    k.push_str("://");
    for c in host.chars() {
        k.push(c.to_ascii_lowercase());
    }
    k.push_str(path_and_query);
    k
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_fold_host_case_only() {
        assert_eq!(
            super::key("https", "WWW.Example.test", "/A?b=C"),
            "https://www.example.test/A?b=C"
        );
    }
}
