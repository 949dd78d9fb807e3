//! An origin's response fields on their way to the client. To an HTTP/1.1 client they
//! are passed through as the origin wrote them, less what the proxy removes; to an
//! HTTP/2 client they arrive as a header map. Both must lose and gain the same fields.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::http as h;
use common::proxy_world::{proxy_for, Opts};
use common::raw_origin::raw_origin;
use common::Proc;

/// A head with every kind of field: hop-by-hop ones, one named in Connection, a hidden
/// one, a Via from an earlier hop, repeated fields, and names in mixed case.
const ORIGIN_ANSWER: &str = "HTTP/1.1 200 OK\r\n\
    Server: secret-origin/1.0\r\n\
    Connection: keep-alive, X-Hop\r\n\
    Keep-Alive: timeout=5\r\n\
    X-Hop: 1\r\n\
    Set-Cookie: a=1\r\n\
    Via: 1.0 upstream-cache\r\n\
    X-Case: KeepMe\r\n\
    Set-Cookie: b=2\r\n\
    Content-Length: 2\r\n\
    \r\n\
    ok";

fn proxy(dir: &Path, origin: std::net::SocketAddr) -> Proc {
    let c = rcgen::generate_simple_self_signed(vec!["www.example.test".to_string()]).unwrap();
    std::fs::write(dir.join("www.crt"), c.cert.pem()).unwrap();
    std::fs::write(dir.join("www.key"), c.signing_key.serialize_pem()).unwrap();
    let d = dir.display();
    let opts = Opts {
        names: vec!["raw"],
        https: true,
        extra: format!("[[tls.certificates]]\ncert = \"{d}/www.crt\"\nkey = \"{d}/www.key\"\n"),
        ..Opts::default()
    };
    proxy_for(dir, &opts, &[origin], &[])
}

#[test]
fn http1_clients_get_the_origins_lines_less_hop_by_hop_and_hidden_ones() {
    let origin = raw_origin(|_, _| Some(ORIGIN_ANSWER.to_string()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy(dir.path(), origin.addr);

    let mut s = TcpStream::connect(proxy.addr("HTTP")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /x HTTP/1.1\r\nhost: www.example.test\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut wire = String::new();
    s.read_to_string(&mut wire).unwrap();
    let (head, body) = wire.split_once("\r\n\r\n").expect("a whole head");
    assert_eq!(body, "ok");
    let lines: Vec<&str> = head.lines().collect();
    assert_eq!(lines[0], "HTTP/1.1 200 OK");
    // The origin's fields that go on, in its order and its spelling; then ours.
    let passed: Vec<&str> = lines[1..5].to_vec();
    assert_eq!(
        passed,
        [
            "Set-Cookie: a=1",
            "Via: 1.0 upstream-cache",
            "X-Case: KeepMe",
            "Set-Cookie: b=2"
        ],
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    for gone in ["server:", "keep-alive", "x-hop", "connection: keep-alive"] {
        assert!(!lower.contains(gone), "{gone} passed: {head}");
    }
    assert!(lines.contains(&"via: 1.1 geoedge"), "{head}");
    assert_eq!(lower.matches("content-length: 2\r\n").count(), 1, "{head}");
    assert!(lower.contains("connection: close"), "{head}");
    assert!(lower.contains("date: "), "{head}");
}

#[test]
fn http2_clients_get_the_same_fields_as_a_header_map() {
    let origin = raw_origin(|_, _| Some(ORIGIN_ANSWER.to_string()));
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy(dir.path(), origin.addr);
    let reply = h::runtime().block_on(async {
        let mut c = h::tls_connect(proxy.addr("HTTPS"), "www.example.test", &[b"h2"])
            .await
            .unwrap();
        c.get("www.example.test", "/x").await.unwrap()
    });
    assert_eq!(reply.version, http::Version::HTTP_2);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok");
    let all = |name: &str| -> Vec<String> {
        reply
            .headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(all("set-cookie"), ["a=1", "b=2"]);
    // Our hop follows the earlier one (RFC 9110 §7.6.3).
    assert_eq!(all("via"), ["1.0 upstream-cache", "1.1 geoedge"]);
    assert_eq!(all("x-case"), ["KeepMe"]);
    for gone in ["server", "keep-alive", "x-hop", "connection"] {
        assert!(all(gone).is_empty(), "{gone} passed: {:?}", reply.headers);
    }
}
