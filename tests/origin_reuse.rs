//! A pooled keep-alive connection to an origin can be closed by the origin just as a
//! request is sent on it (its idle timeout met the request). Such a request must not fail,
//! even when the upstream has a single origin: it goes to that origin again on a new
//! connection. The origin here is a raw socket server, so the race is made to happen.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use common::proxy_world::{proxy_for, Opts};
use common::raw_origin::{raw_origin, RawOrigin};
use common::{http_get, Proc};

/// What the origin does with the second request on a connection.
#[derive(Clone, Copy)]
enum Second {
    /// Answers 408 and closes, as a server timing out an idle connection may.
    RequestTimeout,
    /// Closes without a word, as one whose idle close crossed the request.
    Close,
}

/// Answers the first request on every connection with 200 and its path, keeping the
/// connection open; the second as `second` says.
fn origin(second: Second) -> RawOrigin {
    raw_origin(move |n, path| match (n, second) {
        (0, _) => Some(format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{path}",
            path.len()
        )),
        (_, Second::RequestTimeout) => Some(
            "HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 7\r\n\r\ntimeout"
                .to_string(),
        ),
        (_, Second::Close) => None,
    })
}

fn proxy_to(origin: SocketAddr, dir: &std::path::Path) -> Proc {
    let opts = Opts {
        names: vec!["only"],
        // `http_get` asks for Host `test`.
        extra: "[[routes]]\nhosts = [\"*\"]\nupstream = \"web\"".into(),
        ..Opts::default()
    };
    proxy_for(dir, &opts, &[origin], &[])
}

fn retries(admin: SocketAddr) -> f64 {
    let (_, metrics) = http_get(admin, "/metrics");
    metrics
        .lines()
        .filter(|l| l.starts_with("geoedge_proxy_retries_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn a_stale_connection_costs_no_request(second: Second) {
    let origin = origin(second);
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_to(origin.addr, dir.path());
    let http = proxy.addr("HTTP");

    let (status, body) = http_get(http, "/first");
    assert_eq!((status, body.as_str()), (200, "/first"));
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
    // Sent on the pooled connection, which the origin then refuses to serve.
    let (status, body) = http_get(http, "/second");
    assert_eq!(
        (status, body.as_str()),
        (200, "/second"),
        "{}",
        proxy.stderr()
    );
    assert_eq!(
        origin.connections.load(Ordering::SeqCst),
        2,
        "the request went again on a new connection"
    );
    assert_eq!(retries(proxy.addr("HTTP (admin)")), 1.0);
    // The origin was not marked down for it.
    let (status, body) = http_get(http, "/third");
    assert_eq!((status, body.as_str()), (200, "/third"));
}

#[test]
fn a_408_on_a_pooled_connection_is_retried_on_a_new_one() {
    a_stale_connection_costs_no_request(Second::RequestTimeout);
}

#[test]
fn a_pooled_connection_closed_under_a_request_is_retried_on_a_new_one() {
    a_stale_connection_costs_no_request(Second::Close);
}

#[test]
fn a_post_with_a_body_is_never_sent_twice() {
    use std::io::{Read, Write};
    let origin = origin(Second::Close);
    let dir = tempfile::tempdir().unwrap();
    let proxy = proxy_to(origin.addr, dir.path());
    let http = proxy.addr("HTTP");
    assert_eq!(http_get(http, "/first").0, 200);

    let mut s = std::net::TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(
        b"POST /order HTTP/1.1\r\nhost: t\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    // The body went out with the request: it may have had its effect, so it is not
    // repeated, on this origin or any other.
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
    assert_eq!(origin.connections.load(Ordering::SeqCst), 1);
    assert_eq!(retries(proxy.addr("HTTP (admin)")), 0.0);
}
