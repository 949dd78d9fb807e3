//! What an HTTP/1.1 client sees on the wire from `geoedge proxy`: requests without a body,
//! or with a small Content-Length one, are answered by our own loop, the rest of a
//! connection by hyper from the first request that needs it. Raw sockets, so framing is
//! checked byte for byte.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::{self as h, runtime};
use common::proxy_world::{world, Opts};

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// Reads one response: its head, and a body by its Content-Length (none for HEAD).
fn read_response(s: &mut TcpStream, head_request: bool) -> (String, String) {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            other => panic!("connection ended inside a head ({other:?}): {got:?}"),
        }
    }
    let head = String::from_utf8(got).unwrap().to_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map(|v| v.trim().parse::<usize>().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; if head_request { 0 } else { len }];
    s.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

fn closed(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    matches!(s.read_to_end(&mut rest), Ok(0))
}

#[test]
fn pipelined_requests_are_answered_in_order_and_head_gets_no_body() {
    let w = world(Opts::default());
    let mut s = connect(w.http());
    s.write_all(
        b"GET /first HTTP/1.1\r\nHost: www.example.test\r\n\r\n\
          HEAD /second HTTP/1.1\r\nHost: www.example.test\r\n\r\n\
          GET /third HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
    )
    .unwrap();
    let (head, body) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(body.contains("for GET /first"), "{body}");
    let (head, _) = read_response(&mut s, true);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(
        head.contains("content-length: "),
        "HEAD keeps the length of what GET would send: {head}"
    );
    let (head, body) = read_response(&mut s, false);
    assert!(head.contains("date: "), "{head}");
    assert!(
        body.contains("for GET /third"),
        "no HEAD body bytes in between: {body}"
    );
}

#[test]
fn a_chunked_request_hands_the_connection_over_without_losing_a_byte() {
    let w = world(Opts::default());
    let mut s = connect(w.http());
    // A bodiless GET, then a chunked POST, then a GET pipelined behind it: the POST and
    // everything after it are hyper's, read from the bytes we had already taken.
    s.write_all(b"GET /one HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains("for GET /one"), "{body}");
    s.write_all(
        b"POST /two HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n\
          GET /three HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
    )
    .unwrap();
    let (head, body) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains("for POST /two (5 bytes in)"), "{body}");
    let (_, body) = read_response(&mut s, false);
    assert!(body.contains("for GET /three"), "{body}");
}

#[test]
fn small_bodies_are_forwarded_whole_whether_they_come_with_the_head_or_after_it() {
    let w = world(Opts::default());
    let mut s = connect(w.http());
    // Body with its head, and a GET pipelined behind it.
    s.write_all(
        b"POST /one HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 5\r\n\r\nhello\
          GET /two HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
    )
    .unwrap();
    let (head, body) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains("for POST /one (5 bytes in)"), "{body}");
    let (_, body) = read_response(&mut s, false);
    assert!(body.contains("for GET /two"), "{body}");
    // The head, then the body in two later writes (separate segments: no Nagle), which
    // the request waits for whole.
    s.set_nodelay(true).unwrap();
    s.write_all(b"PUT /three HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 6\r\n\r\n")
        .unwrap();
    s.write_all(b"abc").unwrap();
    s.write_all(b"defGET /four HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains("for PUT /three (6 bytes in)"), "{body}");
    let (_, body) = read_response(&mut s, false);
    assert!(body.contains("for GET /four"), "{body}");
}

#[test]
fn connection_close_is_answered_in_kind_and_the_connection_closes() {
    let w = world(Opts::default());
    let mut s = connect(w.http());
    s.write_all(b"GET / HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s, false);
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(body.contains("served by"), "{body}");
    assert!(closed(&mut s), "the proxy closes after the response");
}

/// Segments a socket has received, by the kernel's count.
#[cfg(target_os = "linux")]
fn segments_in(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    // SAFETY: tcp_info is plain old data; the kernel fills at most `len` bytes of it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, and a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::from_mut(&mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    info.tcpi_segs_in
}

#[cfg(target_os = "linux")]
#[test]
fn a_one_request_connection_gets_its_answer_and_the_close_in_one_segment() {
    let w = world(Opts::default());
    // Handshake reply, then the response carrying both the request's ACK and the FIN:
    // two segments, where a separate ACK and a bare FIN would make four. The kernel may
    // still acknowledge on its own if the answer is slower than its 40 ms delayed-ACK
    // timer (a busy test machine), so one connection of a few must show it.
    let mut seen = Vec::new();
    for _ in 0..5 {
        let mut s = connect(w.http());
        s.write_all(b"GET /one HTTP/1.1\r\nHost: www.example.test\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut all = String::new();
        s.read_to_string(&mut all).unwrap();
        assert!(all.contains("for GET /one"), "{all}");
        seen.push(segments_in(&s));
        if seen.last() == Some(&2) {
            return;
        }
    }
    panic!("segments received per connection: {seen:?}");
}

#[test]
fn an_http_1_0_client_gets_keep_alive_when_it_asks_and_a_close_when_not() {
    let w = world(Opts::default());
    let mut s = connect(w.http());
    for path in ["/ten/a", "/ten/b"] {
        s.write_all(
            format!(
                "GET {path} HTTP/1.0\r\nHost: www.example.test\r\nConnection: keep-alive\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let (head, body) = read_response(&mut s, false);
        assert!(head.starts_with("http/1.0 200"), "{head}");
        assert!(head.contains("connection: keep-alive\r\n"), "{head}");
        assert!(body.contains(&format!("for GET {path}")), "{body}");
    }
    let mut s = connect(w.http());
    s.write_all(b"GET /ten/c HTTP/1.0\r\nHost: www.example.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.0 200"), "{head}");
    assert!(body.contains("for GET /ten/c"), "{body}");
    assert!(closed(&mut s), "HTTP/1.0 closes unless asked not to");
}

#[test]
fn a_later_http_1_minor_version_is_answered_as_1_1_on_either_loop() {
    let w = world(Opts::default());
    let mut s = connect(w.http());
    s.write_all(b"GET /twelve/a HTTP/1.2\r\nHost: www.example.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains("for GET /twelve/a"), "{body}");
    // With a chunked body, so hyper reads it: hyper alone would refuse the version.
    s.write_all(b"POST /_origin/echo HTTP/1.3\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains("body-bytes: 3"), "{body}");
}

#[test]
fn options_star_is_answered_by_the_proxy_itself() {
    let w = world(Opts::default());
    let mut s = connect(w.http());
    s.write_all(b"OPTIONS * HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("allow: get, head, post"), "{head}");
    assert!(head.contains("content-length: 0\r\n"), "{head}");
    assert_eq!(body, "");
    // The connection goes on; OPTIONS on a path still goes to the origin.
    s.write_all(b"OPTIONS /x HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.contains("for OPTIONS /x"), "{body}");
}

#[test]
fn a_malformed_head_gets_400_from_hyper_after_a_good_one() {
    let w = world(Opts::default());
    let mut s = connect(w.http());
    s.write_all(b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    s.write_all(b"GET / HTTP/1.1\r\nHost www.example.test\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(closed(&mut s), "no request after a malformed one");
}

#[test]
fn a_request_line_past_the_head_limit_gets_414_and_the_connection_closes() {
    let w = world(Opts::default());
    let mut s = connect(w.http());
    // Far past any max_header_bytes, and no end of line in sight.
    let target = format!("/{}", "a".repeat(70_000));
    let _ = s.write_all(format!("GET {target}").as_bytes());
    let (head, body) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 414"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(body.contains("414"), "{body}");
    assert!(closed(&mut s));
    // A long target whose line ends within the limit is the route's to judge.
    let mut s = connect(w.http());
    s.write_all(
        format!(
            "GET /{} HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
            "a".repeat(2000)
        )
        .as_bytes(),
    )
    .unwrap();
    let (head, _) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
}

#[test]
fn an_unknown_host_and_a_missing_route_are_framed_answers_on_a_live_connection() {
    let w = world(Opts::default());
    let mut s = connect(w.http());
    s.write_all(b"GET / HTTP/1.1\r\nHost: nowhere.invalid\r\n\r\n")
        .unwrap();
    let (head, _) = read_response(&mut s, false);
    assert!(
        head.starts_with("http/1.1 421") || head.starts_with("http/1.1 404"),
        "{head}"
    );
    assert!(head.contains("content-length: "), "{head}");
    s.write_all(b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut s, false);
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(
        body.contains("served by"),
        "the connection stays usable: {body}"
    );
}

fn open_connections(w: &common::proxy_world::World) -> Option<u64> {
    common::metric(w.admin(), "geoedge_proxy_connections_open").map(|v| v as u64)
}

#[test]
fn a_client_that_stops_reading_its_response_is_cut_after_the_idle_timeout() {
    let w = world(Opts {
        extra: "[limits]\nidle_timeout = \"300ms\"".into(),
        ..Opts::default()
    });
    let mut s = connect(w.http());
    // 40 MB: far more than the socket buffers between us hold, so the proxy's write
    // blocks for as long as this client does not read.
    s.write_all(b"GET /big?size=40000000 HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
        .unwrap();
    common::wait_for(Duration::from_secs(10), "the response to start", || {
        (open_connections(&w) == Some(1)).then_some(())
    });
    common::wait_for(
        Duration::from_secs(10),
        "the stalled connection to be closed",
        || (open_connections(&w) == Some(0)).then_some(()),
    );
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.len() < 40_000_000,
        "the response was cut, not finished: {} bytes",
        rest.len()
    );
}

#[test]
fn a_whole_head_over_max_header_bytes_gets_431_however_it_arrives() {
    let w = world(Opts {
        extra: "[limits]\nmax_header_bytes = 4096".into(),
        ..Opts::default()
    });
    // Under the read buffer's size, so it can arrive complete in one read.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: www.example.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(4500)
    );
    for pieces in [1, 3] {
        let mut s = connect(w.http());
        s.set_nodelay(true).unwrap();
        for chunk in big.as_bytes().chunks(big.len().div_ceil(pieces)) {
            s.write_all(chunk).unwrap();
        }
        let (head, _) = read_response(&mut s, false);
        assert!(head.starts_with("http/1.1 431"), "{pieces} pieces: {head}");
    }
}

#[test]
fn requests_refused_before_they_are_read_are_counted_and_logged() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let w = world(Opts {
        extra: format!(
            "[limits]\nheader_read_timeout = \"300ms\"\nmax_header_bytes = 4096\n\n[access_log]\npath = \"{}\"",
            log.display()
        ),
        ..Opts::default()
    });
    // Each is answered (or, for the slow head, closed) and the connection ends.
    let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(5000));
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: www.example.test\r\nX-Big: {}\r\n\r\n",
        "b".repeat(5000)
    );
    let cases: [(&[u8], &str); 5] = [
        (
            b"GET / HTTP/1.1\r\nHost: www.example.test\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 400",
        ),
        (long_target.as_bytes(), "HTTP/1.1 414"),
        (big_head.as_bytes(), "HTTP/1.1 431"),
        (
            b"GET / HTTP/2.0\r\nHost: www.example.test\r\n\r\n",
            "HTTP/1.1 505",
        ),
        (b"GET / HTTP/1.1\r\nHost: www.exa", ""),
    ];
    for (wire, answer) in cases {
        let mut s = TcpStream::connect(w.http()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(wire).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        assert!(reply.starts_with(answer), "{answer:?}: {reply}");
    }
    rt.block_on(async {
        let r = h::get(w.http(), "nobody.test", "/").await.unwrap();
        assert_eq!(r.status, 421);
        let m = h::get(w.admin(), "admin", "/metrics").await.unwrap().text();
        for reason in [
            "malformed",
            "uri_too_long",
            "head_too_large",
            "version",
            "header_timeout",
        ] {
            let series = format!("geoedge_proxy_refused_requests_total{{reason=\"{reason}\"}} 1");
            assert!(m.contains(&series), "{series} in\n{m}");
        }
        let unrouted = r#"geoedge_proxy_requests_total{method="GET",route="-",status="4xx"} 1"#;
        assert!(m.contains(unrouted), "{m}");
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let refused: Vec<&str> = text.lines().filter(|l| l.contains("\"- - -\"")).collect();
        let statuses: Vec<&str> = refused
            .iter()
            .filter_map(|l| l.split("\"- - -\" ").nth(1)?.split(' ').next())
            .collect();
        if statuses.len() >= 5 {
            assert_eq!(statuses, ["400", "414", "431", "505", "408"], "{text}");
            assert!(text.contains("\"GET / HTTP/1.1\" 421"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusals not all logged:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
