//! Large cache hits over plain HTTP go out by `sendfile` from the stored body's sealed
//! file: the bytes must be the stored bytes, the connection must stay in step after them,
//! and a client that reads slowly must get every byte.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::proxy_world::{world as world_with, Opts, World};

const HOST: &str = "www.example.test";
const SIZE: usize = 3_000_000;
const PATH: &str = "/big?cache=max-age%3D60&size=3000000";

/// A proxy whose only origin's answers are cached.
fn world() -> World {
    world_with(Opts {
        names: vec!["o1"],
        extra: format!("[[routes]]\nhosts = [\"{HOST}\"]\nupstream = \"web\"\ncache = true\n"),
        ..Opts::default()
    })
}

/// A client socket with a tiny receive buffer, so the proxy's sends keep finding the
/// socket full and must wait for it.
fn slow_client(addr: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Sends one request and reads its response: the lower-cased head, and a body by its
/// Content-Length (none for HEAD).
fn exchange(s: &mut TcpStream, method: &str, extra: &str) -> (String, Vec<u8>) {
    write!(s, "{method} {PATH} HTTP/1.1\r\nHost: {HOST}\r\n{extra}\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("connection ended inside a head ({other:?})"),
        }
    }
    let head = String::from_utf8(head).unwrap().to_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; if method == "HEAD" { 0 } else { len }];
    s.read_exact(&mut body).unwrap();
    (head, body)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'0' + (i % 10) as u8).collect()
}

fn file_sends(w: &World) -> u64 {
    w.metric("geoedge_proxy_cache_file_sends_total")
}

#[test]
fn large_hits_are_sent_from_the_stored_file_whole_and_in_step() {
    let w = world();
    let mut s = slow_client(w.http());
    let expected = pattern(SIZE);

    let (head, body) = exchange(&mut s, "GET", "");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        body == expected,
        "the miss's body differs from the origin's"
    );
    // A miss that is stored is answered from the stored copy, file and all.
    assert_eq!(file_sends(&w), 1);

    for round in 2..=3u64 {
        let (head, body) = exchange(&mut s, "GET", "");
        assert!(head.contains("cache-status: geoedge; hit"), "{head}");
        assert!(head.contains(&format!("content-length: {SIZE}")), "{head}");
        assert!(
            body == expected,
            "hit {round}'s body differs from the stored one"
        );
        assert_eq!(file_sends(&w), round);
    }

    // Whatever follows on the same connection is read in step: HEAD, a range, a hit.
    let (head, body) = exchange(&mut s, "HEAD", "");
    assert!(head.contains(&format!("content-length: {SIZE}")), "{head}");
    assert!(body.is_empty());
    let (head, body) = exchange(&mut s, "GET", "Range: bytes=1000000-1000009\r\n");
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert_eq!(body, b"0123456789");
    let (_, body) = exchange(&mut s, "GET", "");
    assert!(body == expected);
    assert_eq!(file_sends(&w), 4, "HEAD and ranges write their bytes");
}

#[test]
fn a_connection_that_closes_after_a_large_hit_gets_all_of_it() {
    let w = world();
    let mut s = slow_client(w.http());
    exchange(&mut s, "GET", "");
    let mut s = slow_client(w.http());
    let (head, body) = exchange(&mut s, "GET", "Connection: close\r\n");
    assert!(head.contains("connection: close"), "{head}");
    assert!(body == pattern(SIZE));
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the body"
    );
    assert_eq!(file_sends(&w), 2);
}
