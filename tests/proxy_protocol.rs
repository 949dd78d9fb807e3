//! `[listen] proxy_protocol = true`: behind a TCP balancer, each connection starts with a
//! PROXY protocol header, and the client address it carries is the one the proxy uses
//! (forwarding headers, logs, limits). A connection without one is closed unanswered.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::http as h;
use common::proxy_world::{world, Opts, World};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;

fn behind_balancer() -> World {
    world(Opts {
        listen: "proxy_protocol = true".into(),
        extra: "[limits]\nheader_read_timeout = \"500ms\"".into(),
        ..Opts::default()
    })
}

/// Sends `preamble`, then a GET of the origin's echo, on a new connection; the answer.
fn echo_after(w: &World, preamble: &[u8]) -> String {
    echo_at(w.http(), preamble)
}

fn echo_at(addr: std::net::SocketAddr, preamble: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(preamble).unwrap();
    s.write_all(
        b"GET /_origin/echo HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.to_lowercase()
}

fn v2_tcp4(src: [u8; 4], port: u16) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&port.to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h
}

fn refused(w: &World, reason: &str) -> u64 {
    w.metric(&format!(
        "geoedge_proxy_refused_requests_total{{reason=\"{reason}\"}}"
    ))
}

#[test]
fn the_client_address_comes_from_the_proxy_header() {
    let w = behind_balancer();
    let v1 = echo_after(&w, b"PROXY TCP4 192.0.2.7 127.0.0.1 51000 8080\r\n");
    assert!(v1.starts_with("http/1.1 200"), "{v1}");
    assert!(v1.contains("x-forwarded-for: 192.0.2.7\n"), "{v1}");
    let v1_6 = echo_after(&w, b"PROXY TCP6 2001:db8::7 ::1 51000 8080\r\n");
    assert!(v1_6.contains("x-forwarded-for: 2001:db8::7\n"), "{v1_6}");
    let v2 = echo_after(&w, &v2_tcp4([198, 51, 100, 9], 40000));
    assert!(v2.contains("x-forwarded-for: 198.51.100.9\n"), "{v2}");
    // A header in pieces is waited for.
    let mut s = TcpStream::connect(w.http()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PROXY TCP4 203.0.").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b"113.5 127.0.0.1 1 2\r").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(
        b"\nGET /_origin/echo HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut pieces = String::new();
    let _ = s.read_to_string(&mut pieces);
    assert!(
        pieces.contains("x-forwarded-for: 203.0.113.5\n"),
        "{pieces}"
    );
}

#[test]
fn a_balancer_health_check_keeps_the_connection_address() {
    let w = behind_balancer();
    for preamble in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00",
    ] {
        let reply = echo_after(&w, preamble);
        assert!(reply.starts_with("http/1.1 200"), "{reply}");
        assert!(reply.contains("x-forwarded-for: 127.0.0.1\n"), "{reply}");
    }
}

#[test]
fn a_connection_without_a_valid_header_is_closed_unanswered() {
    let w = behind_balancer();
    for (preamble, why) in [
        (&b""[..], "a plain request"),
        (b"PROXY TCP4 999.0.2.7 127.0.0.1 1 2\r\n", "a bad address"),
        (b"PROXY TCP4 192.0.2.7 127.0.0.1 1\r\n", "a missing port"),
    ] {
        let reply = echo_after(&w, preamble);
        assert_eq!(reply, "", "{why}");
    }
    assert_eq!(refused(&w, "proxy_header"), 3);
    // A balancer that connects and never sends its header is cut at the header timeout.
    let mut silent = TcpStream::connect(w.http()).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    assert_eq!(silent.read(&mut buf).unwrap_or(0), 0);
    assert!(started.elapsed() < Duration::from_secs(4));
    assert_eq!(refused(&w, "header_timeout"), 1);
    // Well-formed connections are served throughout.
    let ok = echo_after(&w, b"PROXY TCP4 192.0.2.8 127.0.0.1 1 2\r\n");
    assert!(ok.contains("x-forwarded-for: 192.0.2.8\n"), "{ok}");
}

#[test]
fn the_header_comes_before_the_tls_handshake() {
    let certs = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["www.example.test".to_string()]).unwrap();
    std::fs::write(certs.path().join("www.crt"), cert.cert.pem()).unwrap();
    std::fs::write(
        certs.path().join("www.key"),
        cert.signing_key.serialize_pem(),
    )
    .unwrap();
    let d = certs.path().display();
    let w = world(Opts {
        listen: "proxy_protocol = true".into(),
        extra: format!("[[tls.certificates]]\ncert = \"{d}/www.crt\"\nkey = \"{d}/www.key\"\n"),
        https: true,
        ..Opts::default()
    });
    let rt = h::runtime();
    let reply = rt.block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(w.proxy.addr("HTTPS"))
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut tcp, b"PROXY TCP4 192.0.2.9 127.0.0.1 1 2\r\n")
            .await
            .unwrap();
        let config = h::tls_client_config(&[b"http/1.1"], rustls::DEFAULT_VERSIONS);
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("www.example.test").unwrap(), tcp)
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = h::request("GET", "www.example.test", "/_origin/echo", &[], b"");
        let resp = sender.send_request(req).await.unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).to_lowercase()
    });
    assert!(reply.contains("x-forwarded-for: 192.0.2.9\n"), "{reply}");
    assert!(reply.contains("x-forwarded-proto: https\n"), "{reply}");
}

#[test]
fn the_per_client_connection_cap_counts_the_address_in_the_header() {
    let w = world(Opts {
        listen: "proxy_protocol = true".into(),
        extra: "[rate_limit]\nmax_connections_per_client = 1".into(),
        ..Opts::default()
    });
    // One connection from 192.0.2.7, kept open after an answered request.
    let mut held = TcpStream::connect(w.http()).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    held.write_all(b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\r\nGET /_origin/name HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    let n = held.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // A second from the same client is over its cap; one from another client is not,
    // though both come from the same balancer address.
    let same = echo_after(&w, b"PROXY TCP4 192.0.2.7 127.0.0.1 3 2\r\n");
    assert_eq!(same, "", "over the cap");
    let other = echo_after(&w, b"PROXY TCP4 192.0.2.8 127.0.0.1 3 2\r\n");
    assert!(other.contains("x-forwarded-for: 192.0.2.8\n"), "{other}");
}

#[test]
fn a_listed_listener_expects_the_header_and_the_others_do_not() {
    // As nginx's `listen ... proxy_protocol` on one of two listeners: the balancer's
    // connections arrive on one address, clients that come straight in on another.
    let w = world(Opts {
        http: vec!["127.0.0.1:0", "127.0.0.2:0"],
        listen: "proxy_protocol = [\"127.0.0.2:0\"]".into(),
        ..Opts::default()
    });
    let http = &w.proxy.sockets["HTTP"];
    let on = |ip: &str| *http.iter().find(|a| a.ip().to_string() == ip).unwrap();
    let (direct, balanced) = (on("127.0.0.1"), on("127.0.0.2"));

    let plain = echo_at(direct, b"");
    assert!(plain.starts_with("http/1.1 200"), "{plain}");
    assert!(plain.contains("x-forwarded-for: 127.0.0.1\n"), "{plain}");
    // On the direct listener a PROXY line is no header but a bad request line.
    let claimed = echo_at(direct, b"PROXY TCP4 192.0.2.7 127.0.0.1 1 2\r\n");
    assert!(claimed.starts_with("http/1.1 400"), "{claimed}");

    let behind = echo_at(balanced, b"PROXY TCP4 192.0.2.7 127.0.0.2 1 2\r\n");
    assert!(behind.contains("x-forwarded-for: 192.0.2.7\n"), "{behind}");
    assert_eq!(
        echo_at(balanced, b""),
        "",
        "no header on the balanced listener"
    );
}
