//! Routing a TLS connection without terminating it (`tls_passthrough`): the server name
//! is read from the ClientHello the client sends first (rustls's `Acceptor` parses it;
//! the bytes themselves go on to the origin untouched), then matched against the
//! stream's rules. nginx's `ssl_preread`, HAProxy's `req.ssl_sni`.

use rustls::server::Acceptor;

/// A ClientHello larger than this is refused rather than buffered further: real ones are
/// under 2 KB, post-quantum key shares included.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Hello {
    /// The ClientHello has not all arrived.
    Incomplete,
    /// A whole ClientHello, with its server name if it sent one (lower case).
    Complete(Option<String>),
    /// Not a TLS ClientHello.
    NotTls(String),
}

/// What the first `bytes` of a connection say about its server name.
pub fn read_hello(bytes: &[u8]) -> Hello {
    let mut acceptor = Acceptor::default();
    let mut rest = bytes;
    while !rest.is_empty() {
        if let Err(e) = acceptor.read_tls(&mut rest) {
            return Hello::NotTls(e.to_string());
        }
    }
    match acceptor.accept() {
        Ok(None) if bytes.len() >= MAX_CLIENT_HELLO => Hello::NotTls(format!(
            "no ClientHello in the first {MAX_CLIENT_HELLO} bytes"
        )),
        Ok(None) => Hello::Incomplete,
        Ok(Some(accepted)) => Hello::Complete(
            accepted
                .client_hello()
                .server_name()
                .map(|n| n.to_ascii_lowercase()),
        ),
        Err((e, _alert)) => Hello::NotTls(e.to_string()),
    }
}

/// The upstream for `name` under `rules` (exact names first, then `*.suffix` wildcards
/// longest first, as config validation sorted them), else `default`.
pub fn route<'a>(
    rules: &'a [(String, String)],
    default: Option<&'a str>,
    name: Option<&str>,
) -> Option<&'a str> {
    let Some(name) = name else {
        return default;
    };
    let name = name.trim_end_matches('.');
    rules
        .iter()
        .find(|(pattern, _)| match pattern.strip_prefix("*.") {
            Some(suffix) => name
                .strip_suffix(suffix)
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            None => pattern == name,
        })
        .map(|(_, upstream)| upstream.as_str())
        .or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The first flight of a real rustls client for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn the_server_name_is_read_from_a_whole_hello_and_waits_for_a_partial_one() {
        let hello = client_hello("Files.Example.Test");
        assert_eq!(
            read_hello(&hello),
            Hello::Complete(Some("files.example.test".into()))
        );
        assert_eq!(read_hello(&hello[..hello.len() / 2]), Hello::Incomplete);
        assert_eq!(read_hello(&hello[..3]), Hello::Incomplete);
        // An IP address is not sent as SNI.
        assert_eq!(
            read_hello(&client_hello("127.0.0.1")),
            Hello::Complete(None)
        );
    }

    #[test]
    fn other_protocols_are_told_apart() {
        assert!(matches!(
            read_hello(b"SSH-2.0-OpenSSH_9.2\r\n"),
            Hello::NotTls(_)
        ));
        assert!(matches!(
            read_hello(b"GET / HTTP/1.1\r\n\r\n"),
            Hello::NotTls(_)
        ));
    }

    #[test]
    fn exact_names_then_wildcards_then_the_default() {
        let rules = vec![
            ("a.example.test".to_string(), "exact".to_string()),
            ("*.deep.example.test".to_string(), "deep".to_string()),
            ("*.example.test".to_string(), "wild".to_string()),
        ];
        assert_eq!(
            route(&rules, Some("def"), Some("a.example.test")),
            Some("exact")
        );
        assert_eq!(
            route(&rules, Some("def"), Some("a.example.test.")),
            Some("exact")
        );
        assert_eq!(
            route(&rules, Some("def"), Some("x.deep.example.test")),
            Some("deep")
        );
        assert_eq!(
            route(&rules, Some("def"), Some("b.example.test")),
            Some("wild")
        );
        assert_eq!(
            route(&rules, Some("def"), Some("example.test")),
            Some("def")
        );
        assert_eq!(
            route(&rules, Some("def"), Some("badexample.test")),
            Some("def")
        );
        assert_eq!(route(&rules, None, Some("other.test")), None);
        assert_eq!(route(&rules, Some("def"), None), Some("def"));
    }
}
