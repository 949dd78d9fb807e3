//! WebSocket tunnels through `geoedge proxy`: the real binary in front of `geoedge origin`
//! processes, whose `/_origin/upgrade` switches protocols and echoes bytes.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::proxy_world::{self, Opts, World};
use common::{metric, wait_for};

fn world(names: &[&'static str], limits: &str) -> World {
    proxy_world::world(Opts {
        names: names.to_vec(),
        extra: format!("[limits]\n{limits}\n"),
        ..Opts::default()
    })
}

fn tls_world() -> World {
    proxy_world::world(Opts {
        names: vec!["o1"],
        https: true,
        extra: "[[tls.certificates]]\nself_signed = [\"www.example.test\"]\n".into(),
        ..Opts::default()
    })
}

const IN_FLIGHT_O1: &str = r#"geoedge_proxy_upstream_in_flight{origin="o1",upstream="web"}"#;

/// Sends an upgrade request (and `early` bytes right behind it) and reads the response
/// head; returns the stream, the head, and whatever came after the head.
fn open(addr: SocketAddr, upgrade: &str, early: &[u8]) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut req = format!(
        "GET /_origin/upgrade HTTP/1.1\r\nHost: www.example.test\r\n\
         Connection: Upgrade\r\nUpgrade: {upgrade}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(early);
    s.write_all(&req).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).expect("read the response head");
        assert!(n > 0, "closed before a response head: {got:?}");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    (s, head, got[end..].to_vec())
}

fn read_exactly(s: &mut TcpStream, mut have: Vec<u8>, want: usize) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    while have.len() < want {
        let n = s.read(&mut buf).expect("read tunnel bytes");
        assert!(n > 0, "tunnel closed after {have:?}");
        have.extend_from_slice(&buf[..n]);
    }
    have
}

#[test]
fn a_websocket_crosses_the_proxy_both_ways_and_counts_while_open() {
    let w = world(&["o1"], "");
    let admin = w.proxy.addr("HTTP (admin)");
    let (mut s, head, rest) = open(w.proxy.addr("HTTP"), "websocket", b"early");
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket\r\n"), "{head}");
    assert!(head.contains("connection: upgrade\r\n"), "{head}");
    assert!(head.contains("x-origin: o1\r\n"), "{head}");
    assert!(!head.contains("server:"), "the origin stays masked: {head}");
    // Bytes the client sent with its request head, then bytes sent later, echoed.
    assert_eq!(read_exactly(&mut s, rest, 5), b"early");
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&big).unwrap();
    assert_eq!(read_exactly(&mut s, Vec::new(), big.len()), big);

    wait_for(Duration::from_secs(5), "tunnels_open 1", || {
        (metric(admin, "geoedge_proxy_tunnels_open") == Some(1.0)).then_some(())
    });
    assert_eq!(
        metric(admin, IN_FLIGHT_O1),
        Some(1.0),
        "a tunnel is in flight at its origin"
    );
    drop(s);
    wait_for(Duration::from_secs(5), "the tunnel to close", || {
        (metric(admin, "geoedge_proxy_tunnels_open") == Some(0.0)
            && metric(admin, IN_FLIGHT_O1) == Some(0.0))
        .then_some(())
    });
}

#[test]
fn least_conn_spreads_tunnels_and_the_connection_cap_counts_them() {
    let w = world(&["o1", "o2"], "max_connections = 2");
    let addr = w.proxy.addr("HTTP");
    let (a, head_a, _) = open(addr, "websocket", b"");
    let (b, head_b, _) = open(addr, "websocket", b"");
    let origin = |head: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix("x-origin: "))
            .map(str::to_string)
    };
    assert!(head_a.starts_with("http/1.1 101") && head_b.starts_with("http/1.1 101"));
    assert_ne!(
        origin(&head_a),
        origin(&head_b),
        "the second tunnel goes to the origin without one"
    );
    // Both connection slots are held by tunnels: a third connection waits in the
    // kernel's queue until one closes.
    let mut c = TcpStream::connect(addr).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        c.read(&mut buf).is_err(),
        "served while two tunnels held both slots"
    );
    drop(a);
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = String::new();
    c.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    drop(b);
}

#[test]
fn an_idle_tunnel_closes_and_other_protocols_are_not_forwarded() {
    let w = world(&["o1"], "tunnel_idle_timeout = \"300ms\"");
    let addr = w.proxy.addr("HTTP");
    let (mut s, head, _) = open(addr, "websocket", b"");
    assert!(head.starts_with("http/1.1 101"), "{head}");
    s.write_all(b"ping").unwrap();
    assert_eq!(read_exactly(&mut s, Vec::new(), 4), b"ping");
    let quiet = Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).expect("a close, not a timeout"), 0);
    assert!(
        quiet.elapsed() >= Duration::from_millis(250),
        "closed before the idle timeout: {:?}",
        quiet.elapsed()
    );

    // h2c would let a client talk HTTP/2 to the origin past the proxy's rules: the
    // origin sees no Upgrade and says so with 426.
    let (_, head, _) = open(addr, "h2c", b"");
    assert!(head.starts_with("http/1.1 426"), "{head}");
    let (_, head, _) = open(addr, "websocket", b"");
    assert!(
        head.starts_with("http/1.1 101"),
        "still tunnels websockets: {head}"
    );
}

#[test]
fn an_origin_that_refuses_the_upgrade_is_an_ordinary_answer() {
    let w = world(&["o1"], "");
    let addr = w.proxy.addr("HTTP");
    // A plain path on the origin ignores Upgrade and answers 200 with a body: the client
    // gets that answer, and its connection stays HTTP.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /plain?size=10 HTTP/1.1\r\nHost: www.example.test\r\n\
          Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n\
          GET /plain?size=3 HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert_eq!(reply.matches("HTTP/1.1 200").count(), 2, "{reply}");
    assert!(!reply.contains("101"), "{reply}");
}

#[test]
fn a_websocket_over_tls_crosses_the_proxy() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = tls_world();
    let addr = w.proxy.addr("HTTPS");
    common::http::runtime().block_on(async {
        let config = common::http::tls_client_config(&[b"http/1.1"], rustls::DEFAULT_VERSIONS);
        let connector = tokio_rustls::TlsConnector::from(config);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("www.example.test").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(
            b"GET /_origin/upgrade HTTP/1.1\r\nHost: www.example.test\r\n\
              Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let mut asked = false;
        while !got.ends_with(b"secure") {
            if !asked && got.ends_with(b"\r\n\r\n") {
                assert!(got.starts_with(b"HTTP/1.1 101"), "{got:?}");
                tls.write_all(b"secure").await.unwrap();
                asked = true;
            }
            let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf));
            let n = read.await.expect("read within 5 s").unwrap();
            assert!(n > 0, "closed: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(asked, "echo before the head ended: {got:?}");
    });
}
