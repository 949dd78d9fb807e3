//! Tests of `fast_h1.rs`: what it takes and leaves to hyper, and the bytes it writes.

use super::*;
use crate::proxy::body::{empty, full, ProxyBody};
use crate::proxy::http::request_head::HEADER_SLOTS;
use crate::proxy::test_bodies::{unsized_body, Chunks};
use http::{HeaderValue, Response};
use http_body_util::BodyExt;
use tokio::io::AsyncReadExt;

fn limits(headers: usize, head_bytes: usize) -> RequestLimits {
    RequestLimits {
        headers,
        head_bytes,
        body_bytes: 1000,
    }
}

fn parsed(bytes: &[u8]) -> (Parsed, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    (parse(&mut buf, &limits(100, 64 * 1024)), buf)
}

#[test]
fn a_get_without_body_is_ours_and_leaves_the_next_request_in_the_buffer() {
    let wire =
        b"GET /a?b=c HTTP/1.1\r\nHost: Example.test\r\nX-Two: 1\r\nX-Two: 2\r\n\r\nGET /next";
    let (p, rest) = parsed(wire);
    let Parsed::Simple(req, close) = p else {
        panic!("{p:?}")
    };
    assert!(!close);
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri(), "/a?b=c");
    assert_eq!(req.version(), http::Version::HTTP_11);
    assert_eq!(req.headers()["host"], "Example.test");
    let twos: Vec<_> = req.headers().get_all("x-two").iter().collect();
    assert_eq!(twos, ["1", "2"]);
    assert_eq!(&rest[..], b"GET /next");
}

#[test]
fn connection_close_is_noticed_among_other_options() {
    let (p, _) = parsed(b"HEAD / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n");
    assert!(matches!(p, Parsed::Simple(_, true)), "{p:?}");
    let (p, _) = parsed(b"GET / HTTP/1.1\r\nConnection: closed\r\n\r\n");
    assert!(matches!(p, Parsed::Simple(_, false)), "{p:?}");
}

#[test]
fn a_later_minor_version_is_served_as_1_1_and_a_later_major_one_refused() {
    let (p, rest) = parsed(b"GET /v HTTP/1.2\r\nHost: a\r\n\r\nGET /next");
    let Parsed::Simple(req, false) = p else {
        panic!("{p:?}")
    };
    assert_eq!(req.uri(), "/v");
    assert_eq!(req.version(), http::Version::HTTP_11);
    assert_eq!(&rest[..], b"GET /next");
    // Not all of the line is here yet.
    assert!(matches!(parsed(b"GET / HTTP/1.9").0, Parsed::Partial));
    assert!(matches!(parsed(b"GET / HTTP/1.9\r").0, Parsed::Partial));
    // A later major version is refused here (505), once its line is all here.
    for wire in [&b"GET / HTTP/2.0\r\n\r\n"[..], b"GET / HTTP/3.1\n\n"] {
        let (p, _) = parsed(wire);
        assert!(
            matches!(p, Parsed::Refused(Refusal::VersionNotSupported)),
            "{wire:?}: {p:?}"
        );
    }
    assert!(matches!(parsed(b"GET / HTTP/2.0").0, Parsed::Partial));
    // Anything else with an unknown version stays hyper's (400, or HTTP/2's preface).
    for wire in [
        &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..],
        b"GET / HTTP/1.x\r\n\r\n",
        b"GET / HTTPS/1.2\r\n\r\n",
        b"GET / HTTP/1.2 \r\n\r\n",
        b"GET / XYZ",
    ] {
        let (p, rest) = parsed(wire);
        assert!(matches!(p, Parsed::Hyper), "{wire:?}: {p:?}");
        assert_eq!(&rest[..], wire);
    }
}

#[test]
fn an_unfinished_head_asks_for_more() {
    assert!(matches!(
        parsed(b"GET / HTTP/1.1\r\nHost: a").0,
        Parsed::Partial
    ));
    assert!(matches!(parsed(b"GE").0, Parsed::Partial));
}

#[test]
fn odd_framing_protocol_switches_and_anything_odd_go_to_hyper_untouched() {
    let cases: [&[u8]; 17] = [
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\nabc",
        b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"CONNECT example.test:443 HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n folded: x\r\n\r\n",
        // A body larger than the read buffer streams, through hyper.
        b"POST / HTTP/1.1\r\nContent-Length: 9000\r\n\r\nabc",
        // One over the body limit gets hyper's 413 at once, not a wait for its bytes.
        b"POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\nabc",
    ];
    for wire in cases {
        let (p, rest) = parsed(wire);
        assert!(
            matches!(p, Parsed::Hyper),
            "{:?}: {p:?}",
            String::from_utf8_lossy(wire)
        );
        assert_eq!(&rest[..], wire, "the buffer is left as it was");
    }
}

#[test]
fn a_body_that_could_be_read_two_ways_is_taken_without_it_to_be_refused() {
    let cases: [&[u8]; 5] = [
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc",
        // Framing is judged before the expectation: hyper would answer 100 and read on.
        b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    ];
    for wire in cases {
        let (p, rest) = parsed(wire);
        let Parsed::Ambiguous(req) = p else {
            panic!("{:?}: {p:?}", String::from_utf8_lossy(wire))
        };
        assert!(
            forward::check_framing(&req).is_err(),
            "{:?} would be forwarded",
            String::from_utf8_lossy(wire)
        );
        assert_eq!(req.body().size_hint().exact(), Some(0), "no body is taken");
        let head_len = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(&rest[..], &wire[head_len..], "only the head is taken");
    }
}

#[tokio::test]
async fn a_small_body_that_came_with_its_head_is_ours_and_ends_where_its_length_says() {
    let wire = b"POST /api HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /next";
    let (p, rest) = parsed(wire);
    let Parsed::Simple(req, false) = p else {
        panic!("{p:?}")
    };
    assert_eq!(req.method(), Method::POST);
    assert_eq!(req.headers()["content-length"], "5");
    assert_eq!(req.body().size_hint().exact(), Some(5));
    let body = req.into_body().collect().await.map(|b| b.to_bytes());
    assert_eq!(body.ok().as_deref(), Some(&b"hello"[..]));
    assert_eq!(&rest[..], b"GET /next");

    let (p, rest) = parsed(b"GET / HTTP/1.1\r\ncontent-length: 000\r\n\r\n");
    let Parsed::Simple(req, _) = p else {
        panic!("{p:?}")
    };
    assert!(req.body().is_end_stream(), "a zero length is no body");
    assert!(rest.is_empty());
}

#[test]
fn a_small_body_not_all_here_is_waited_for_and_the_buffer_kept() {
    let wire = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel";
    let (p, rest) = parsed(wire);
    assert!(matches!(p, Parsed::Partial), "{p:?}");
    assert_eq!(&rest[..], wire);
    let mut buf = rest;
    buf.extend_from_slice(b"lo");
    assert!(matches!(
        parse(&mut buf, &limits(100, 64 * 1024)),
        Parsed::Simple(..)
    ));
    assert!(buf.is_empty());
}

#[test]
fn a_head_the_http_types_reject_is_put_back_whole_for_hyper() {
    // httparse takes a target of any length; `Uri` none over 64 KiB.
    let wire = format!(
        "GET /{} HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        "a".repeat(70_000)
    );
    let wire = wire.as_bytes();
    let (p, rest) = parsed(wire);
    assert!(matches!(p, Parsed::Hyper), "{p:?}");
    assert_eq!(&rest[..], wire);
    // httparse takes `<` in a target, `Uri` does not; the body goes back too.
    let wire =
        b"POST /a<b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n";
    let (p, rest) = parsed(wire);
    assert!(matches!(p, Parsed::Hyper), "{p:?}");
    assert_eq!(&rest[..], wire);
}

#[test]
fn heads_over_either_limit_go_to_hyper() {
    let mut wire = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..5 {
        wire.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    wire.extend_from_slice(b"\r\n");
    let mut buf = BytesMut::from(&wire[..]);
    assert!(matches!(parse(&mut buf, &limits(4, 1024)), Parsed::Hyper));
    assert!(matches!(
        parse(&mut buf, &limits(5, wire.len() - 1)),
        Parsed::Hyper
    ));
    assert_eq!(&buf[..], &wire[..], "left for hyper");
    assert!(matches!(
        parse(&mut buf, &limits(5, wire.len())),
        Parsed::Simple(..)
    ));
    let mut many = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..HEADER_SLOTS + 1 {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    let mut buf = BytesMut::from(&many[..]);
    assert!(matches!(
        parse(&mut buf, &limits(1000, 1 << 20)),
        Parsed::Hyper
    ));
}

fn head_of(
    status: u16,
    headers: &[(&str, &str)],
    body: &ProxyBody,
    head_request: bool,
    close: bool,
) -> (String, Framing) {
    let fields = headers.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()));
    let mut out = Vec::new();
    let status = StatusCode::from_u16(status).unwrap();
    let framing = encode_head(&mut out, status, fields, body, head_request, close);
    (String::from_utf8(out).unwrap(), framing)
}

#[test]
fn the_body_decides_the_framing_and_stale_framing_headers_are_dropped() {
    let date = ("date", "Sun, 06 Nov 1994 08:49:37 GMT");
    // Names come in lower case from a HeaderMap, in any case from an origin's lines
    // (which go out as they came); the rules must see them either way.
    for [cl, te, dt] in [
        ["content-length", "transfer-encoding", "date"],
        ["Content-Length", "TRANSFER-ENCODING", "Date"],
    ] {
        let (head, framing) = head_of(
            200,
            &[(cl, "999"), (te, "chunked"), (dt, date.1)],
            &full("hello"),
            false,
            false,
        );
        assert_eq!(framing, Framing::Length(5));
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 200 OK\r\n{dt}: {}\r\ncontent-length: 5\r\n\r\n",
                date.1
            )
        );
    }
    let (head, framing) = head_of(404, &[date], &empty(), false, true);
    assert_eq!(framing, Framing::Length(0));
    assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
    assert!(
        head.contains("content-length: 0\r\nconnection: close\r\n"),
        "{head}"
    );
    let (head, framing) = head_of(200, &[date], &unsized_body(&[b"a"]), false, false);
    assert_eq!(framing, Framing::Chunked);
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
}

#[test]
fn responses_without_a_body_keep_or_drop_content_length_as_rfc_9110_says() {
    let cl = [("content-length", "1234"), ("transfer-encoding", "chunked")];
    for (status, head_request, keeps) in [
        (200, true, true),
        (304, false, true),
        (204, false, false),
        (103, false, false),
    ] {
        let (head, framing) = head_of(status, &cl, &empty(), head_request, false);
        assert_eq!(framing, Framing::None, "{status}");
        assert_eq!(head.contains("content-length: 1234"), keeps, "{head}");
        assert!(!head.contains("transfer-encoding"), "{head}");
    }
}

#[test]
fn a_date_is_added_only_when_missing_and_close_is_said_once() {
    let (head, _) = head_of(200, &[("connection", "close")], &empty(), false, true);
    assert_eq!(head.matches("date: ").count(), 1, "{head}");
    assert_eq!(head.matches("connection: close").count(), 1, "{head}");
}

fn answer_with(passed: &'static str, ours: &[(&'static str, &'static str)]) -> Answer {
    let mut wire = BytesMut::from(format!("HTTP/1.1 200 OK\r\n{passed}\r\n").as_str());
    let (_, _, passed) = crate::proxy::upstream::origin_wire::parse_head(&mut wire)
        .unwrap()
        .unwrap();
    let mut response = http::Response::new(empty());
    for (k, v) in ours {
        response
            .headers_mut()
            .append(*k, HeaderValue::from_static(v));
    }
    Answer { response, passed }
}

#[test]
fn the_connection_closes_when_client_server_or_response_says_so() {
    let quiet = answer_with("X-A: 1\r\n", &[]);
    assert!(!closes_after(false, false, &quiet));
    assert!(closes_after(true, false, &quiet));
    assert!(closes_after(false, true, &quiet));
    assert!(closes_after(
        false,
        false,
        &answer_with("", &[("connection", "Close")])
    ));
    assert!(closes_after(
        false,
        false,
        &answer_with("Connection: close\r\n", &[])
    ));
}

#[tokio::test]
async fn passed_fields_go_out_first_then_ours() {
    let answer = answer_with(
        "Content-Type: text/plain\r\nSet-Cookie: a=1\r\n",
        &[("via", "1.1 edge"), ("set-cookie", "lb=o1")],
    );
    let (res, wire) = written(answer, false).await;
    res.unwrap();
    let fields: Vec<&str> = wire.lines().skip(1).take(4).collect();
    assert_eq!(
        fields,
        [
            "Content-Type: text/plain",
            "Set-Cookie: a=1",
            "via: 1.1 edge",
            "set-cookie: lb=o1"
        ]
    );
}

#[test]
fn chunk_sizes_are_lowercase_hex() {
    let mut b = [0; 18];
    assert_eq!(chunk_prefix(&mut b, 0), b"0\r\n");
    assert_eq!(chunk_prefix(&mut b, 255), b"ff\r\n");
    assert_eq!(chunk_prefix(&mut b, 4096), b"1000\r\n");
    assert_eq!(chunk_prefix(&mut b, usize::MAX), b"ffffffffffffffff\r\n");
}

async fn written(response: impl Into<Answer>, head_request: bool) -> (io::Result<()>, String) {
    let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
    let mut out = Vec::new();
    let res = write_response(&mut ours, &mut out, response.into(), head_request, false).await;
    drop(ours);
    let mut wire = Vec::new();
    theirs.read_to_end(&mut wire).await.unwrap();
    // The duplex stream cannot send files: every body goes out as bytes.
    (
        res.map(|from_file| assert!(!from_file)),
        String::from_utf8(wire).unwrap(),
    )
}

#[tokio::test]
async fn bodies_go_out_whole_with_their_framing() {
    let (res, wire) = written(Response::new(full("hello")), false).await;
    res.unwrap();
    assert!(wire.starts_with("HTTP/1.1 200 OK\r\n"), "{wire}");
    assert!(wire.contains("content-length: 5\r\n"), "{wire}");
    assert!(wire.ends_with("\r\n\r\nhello"), "{wire}");

    let (res, wire) = written(Response::new(unsized_body(&[b"ab", b"", b"cde"])), false).await;
    res.unwrap();
    assert!(
        wire.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
        "{wire}"
    );

    // Past COPY_MAX the body is written from its own buffer, not copied.
    let big = "x".repeat(COPY_MAX * 3);
    let (res, wire) = written(Response::new(full(big.clone())), false).await;
    res.unwrap();
    assert!(
        wire.contains(&format!("content-length: {}\r\n", big.len())),
        "{wire}"
    );
    assert!(wire.ends_with(&format!("\r\n\r\n{big}")));
    let leaked: &'static str = big.leak();
    let (res, wire) = written(
        Response::new(unsized_body(&[b"ab", leaked.as_bytes()])),
        false,
    )
    .await;
    res.unwrap();
    assert!(
        wire.ends_with(&format!("\r\n\r\n2\r\nab\r\n3000\r\n{leaked}\r\n0\r\n\r\n")),
        "{}",
        &wire[..200]
    );

    let (res, wire) = written(Response::new(full("hello")), true).await;
    res.unwrap();
    assert!(
        wire.ends_with("\r\n\r\n"),
        "a HEAD answer has no body: {wire}"
    );
    assert!(!wire.contains("hello"), "{wire}");
}

#[tokio::test]
async fn a_body_that_breaks_its_length_is_an_error_not_a_misframed_stream() {
    for (claimed, sent) in [(10, "short"), (2, "too long")] {
        let body = Chunks::new(&[sent.as_bytes()], Some(claimed));
        let (res, wire) = written(Response::new(body.boxed_unsync()), false).await;
        assert!(res.is_err(), "{claimed} {sent}: {wire}");
        assert!(
            !wire.contains("too long"),
            "no bytes past the length: {wire}"
        );
    }
}

#[tokio::test]
async fn prefixed_reads_the_saved_bytes_first() {
    let (mut a, b) = tokio::io::duplex(64);
    a.write_all(b" world").await.unwrap();
    drop(a);
    let mut p = Prefixed::new(Bytes::from_static(b"hello"), b);
    let mut got = String::new();
    p.read_to_string(&mut got).await.unwrap();
    assert_eq!(got, "hello world");
}

#[test]
fn damaged_requests_are_taken_whole_or_left_whole_for_hyper() {
    let seeds: [&[u8]; 8] = [
        b"POST /a<b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
        b"GET /a?b=c HTTP/1.1\r\nHost: example.test\r\nX-Two: 1\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhelloGET /n HTTP/1.1\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n",
        b"PUT /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nContent-Type: a/b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"GET http://h/abs HTTP/1.1\r\nHost: h\r\nCookie: a=1; b=2\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    ];
    let mut m = crate::test_support::Mutator::new(0x9e37_79b9_7f4a_7c15);
    let (mut simple, mut ambiguous, mut other) = (0, 0, 0);
    for i in 0..20_000 {
        let wire = m.mutate(seeds[i % seeds.len()]);
        let limits = RequestLimits {
            headers: 1 + m.below(8),
            head_bytes: 16 + m.below(128),
            body_bytes: m.below(8) as u64,
        };
        let mut buf = BytesMut::from(&wire[..]);
        match parse(&mut buf, &limits) {
            Parsed::Simple(req, _) => {
                simple += 1;
                // What was taken is a prefix; the rest stays for the next request.
                let taken = wire.len() - buf.len();
                assert!(taken > 0, "{wire:?}");
                assert_eq!(&wire[taken..], &buf[..], "{wire:?}");
                let declared = req
                    .headers()
                    .get(http::header::CONTENT_LENGTH)
                    .map_or(0, |v| v.to_str().unwrap().parse::<usize>().unwrap());
                assert!(declared as u64 <= limits.body_bytes, "{wire:?}");
                assert_eq!(req.body().size_hint().exact(), Some(declared as u64));
            }
            Parsed::Ambiguous(req) => {
                ambiguous += 1;
                assert!(forward::check_framing(&req).is_err(), "{wire:?}");
                assert!(buf.len() < wire.len() && wire.ends_with(&buf), "{wire:?}");
            }
            Parsed::Refused(refusal) => {
                assert_eq!(refusal, Refusal::VersionNotSupported, "{wire:?}");
                assert_eq!(&buf[..], &wire[..], "{wire:?}");
            }
            Parsed::Partial | Parsed::Hyper => {
                other += 1;
                assert_eq!(buf.len(), wire.len(), "hyper must see every byte");
                // The one change allowed: a later HTTP/1 minor version read as 1.1.
                let changed: Vec<usize> = (0..buf.len()).filter(|&i| buf[i] != wire[i]).collect();
                if let [at] = changed[..] {
                    assert!(wire[..at].ends_with(b" HTTP/1."), "{wire:?}");
                    assert!(wire[at].is_ascii_digit() && buf[at] == b'1', "{wire:?}");
                } else {
                    assert!(changed.is_empty(), "hyper must see every byte: {wire:?}");
                }
            }
        }
    }
    // Every outcome was exercised, not just refusals.
    assert!(
        simple > 1000 && other > 1000 && ambiguous > 10,
        "{simple} taken, {ambiguous} to refuse, {other} not"
    );
}

impl crate::proxy::listen::lazy_socket::SendFile for tokio::io::DuplexStream {}

#[tokio::test]
async fn a_stored_file_body_goes_out_as_bytes_where_files_cannot_be_sent() {
    // As over TLS: the response's file is ignored and its body written.
    let data = vec![b'z'; crate::cache::body_file::MIN_FILE_BYTES];
    let (mapped, file) = crate::cache::body_file::BodyFile::store(&data).expect("a sealed file");
    let mut resp = http::Response::new(crate::proxy::body::full(mapped));
    resp.extensions_mut()
        .insert(crate::proxy::cached::respond::FileBody(file));
    let (res, wire) = written(resp, false).await;
    res.unwrap();
    let (head, body) = wire.split_once("\r\n\r\n").unwrap();
    assert!(
        head.contains(&format!("content-length: {}", data.len())),
        "{head}"
    );
    assert_eq!(body.as_bytes(), &data[..]);
}
