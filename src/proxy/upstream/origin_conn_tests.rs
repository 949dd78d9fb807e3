//! Tests of `origin_conn.rs` against scripted origins on loopback.

use super::*;
use crate::proxy::body::{empty, full};
use crate::proxy::test_bodies::unsized_body;
use crate::proxy::upstream::origin_wire::tests::parts;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::net::TcpStream;

/// Reads one request head (and nothing more) from the origin side.
async fn read_request_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    head
}

/// An origin on loopback that accepts one connection and runs `script` on it; the handle
/// gives what the script returns.
fn scripted<F, Fut, T>(script: F) -> (std::net::SocketAddr, tokio::task::JoinHandle<T>)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let listener = TcpListener::from_std(std_listener).unwrap();
    let task = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        script(s).await
    });
    (addr, task)
}

/// An origin that answers each request on one connection with the next canned reply,
/// then closes; it returns what it was sent, heads and bodies.
async fn origin(
    replies: Vec<&'static [u8]>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
    scripted(|mut s| async move {
        let mut seen = Vec::new();
        for reply in replies {
            seen.push(read_request_head(&mut s).await);
            s.write_all(reply).await.unwrap();
        }
        seen
    })
}

async fn connect(addr: std::net::SocketAddr) -> OriginConn {
    OriginConn::new(TcpStream::connect(addr).await.unwrap())
}

/// A connection to `addr` that has sent `GET /` and read the response head.
async fn get_from(addr: std::net::SocketAddr) -> (OriginConn, ResponseHead) {
    let mut conn = connect(addr).await;
    let head = conn
        .send(&parts("GET", "/", &[]), empty(), true)
        .await
        .unwrap();
    (conn, head)
}

/// The head and body of the answer `reply` gives to `GET /`.
async fn answer_to_get(reply: &'static [u8]) -> (ResponseHead, ResponseBody) {
    let (addr, _task) = origin(vec![reply]).await;
    let (conn, head) = get_from(addr).await;
    let body = conn.into_body(head.framing);
    (head, body)
}

async fn collect(body: &mut ResponseBody) -> Result<Vec<u8>, BoxError> {
    let mut all = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            all.extend_from_slice(&data);
        }
    }
    Ok(all)
}

#[tokio::test]
async fn a_connection_carries_requests_one_after_another() {
    let (addr, task) = origin(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nnop",
    ])
    .await;
    let mut conn = connect(addr).await;
    let get = parts("GET", "/one", &[("host", "o")]);
    let head = conn.send(&get, empty(), true).await.unwrap();
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.headers.get("x-a"), Some(&b"1"[..]));
    assert_eq!(head.framing, Framing::Length(5));
    let mut body = conn.into_body(head.framing);
    assert_eq!(body.size_hint().exact(), Some(5));
    assert_eq!(collect(&mut body).await.unwrap(), b"hello");
    let mut conn = body.take_reusable().expect("reusable after a whole body");

    let head = conn
        .send(&parts("GET", "/two", &[]), empty(), true)
        .await
        .unwrap();
    assert_eq!(head.status, StatusCode::NOT_FOUND);
    let mut body = conn.into_body(head.framing);
    assert_eq!(collect(&mut body).await.unwrap(), b"nop");
    let seen = task.await.unwrap();
    assert!(seen[0].starts_with(b"GET /one HTTP/1.1\r\nhost: o\r\n"));
    assert!(seen[1].starts_with(b"GET /two HTTP/1.1\r\n"));
}

#[tokio::test]
async fn the_response_timeout_is_kept_across_requests_and_fires() {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, _task) = scripted(|mut s| async move {
        read_request_head(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        // The second request is never answered.
        read_request_head(&mut s).await;
        let _ = done_rx.await;
    });
    let limit = Duration::from_millis(200);
    let mut conn = connect(addr).await;
    let head = conn
        .send_within(limit, &parts("GET", "/", &[]), empty(), true)
        .await
        .unwrap();
    let mut conn = conn
        .into_body(head.framing)
        .take_reusable()
        .expect("reusable");
    let started = std::time::Instant::now();
    let err = conn
        .send_within(limit, &parts("GET", "/", &[]), empty(), true)
        .await
        .err()
        .expect("answered");
    assert!(matches!(err, SendError::TimedOut(_)), "{err}");
    assert!(started.elapsed() >= limit, "fired early");
    assert!(!conn.is_reusable());
    let _ = done_tx.send(());
}

#[tokio::test]
async fn chunked_bodies_are_decoded_and_trailers_dropped() {
    let (head, mut body) = answer_to_get(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n").await;
    assert_eq!(head.framing, Framing::Chunked);
    assert_eq!(collect(&mut body).await.unwrap(), b"hello world");
    assert!(body.is_end_stream());
    assert!(body.take_reusable().is_some());
}

#[tokio::test]
async fn with_both_framings_chunked_wins_and_the_length_is_dropped() {
    let (head, mut body) = answer_to_get(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
    assert_eq!(head.framing, Framing::Chunked);
    assert!(!head.headers.contains("content-length"));
    assert_eq!(collect(&mut body).await.unwrap(), b"hello");
    assert!(
        body.take_reusable().is_none(),
        "not trusted with another request"
    );
}

#[tokio::test]
async fn a_body_without_length_runs_to_the_close_and_ends_the_connection() {
    let (head, mut body) = answer_to_get(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
    assert_eq!(head.framing, Framing::Close);
    assert_eq!(collect(&mut body).await.unwrap(), b"until the end");
    assert!(body.take_reusable().is_none());
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let (head, mut body) = answer_to_get(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok").await;
    assert_eq!(head.status, StatusCode::CREATED);
    assert!(!head.headers.contains("link"));
    assert_eq!(collect(&mut body).await.unwrap(), b"ok");
}

#[tokio::test]
async fn a_head_response_has_no_body_whatever_its_length() {
    let (addr, _task) = origin(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ])
    .await;
    let mut conn = connect(addr).await;
    let head = conn
        .send(&parts("HEAD", "/", &[]), empty(), true)
        .await
        .unwrap();
    assert_eq!(head.headers.get("content-length"), Some(&b"1000"[..]));
    let mut body = conn.into_body(head.framing);
    assert!(body.is_end_stream());
    let mut conn = body.take_reusable().expect("reusable");
    let head = conn
        .send(&parts("GET", "/", &[]), empty(), true)
        .await
        .unwrap();
    assert_eq!(head.framing, Framing::Empty);
}

#[tokio::test]
async fn broken_responses_are_errors_not_guesses() {
    let cases: [(&'static [u8], &str); 4] = [
        (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed"),
        (b"NOT HTTP\r\n\r\n", "malformed"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "conflicting",
        ),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
    ];
    for (reply, what) in cases {
        let (addr, _task) = origin(vec![reply]).await;
        let mut conn = connect(addr).await;
        let err = conn
            .send(&parts("GET", "/", &[]), empty(), true)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: accepted"));
        assert!(matches!(err, SendError::Malformed(_)), "{what}: {err}");
        assert!(!conn.is_reusable());
    }
}

#[tokio::test]
async fn a_requested_101_hands_over_the_socket_and_the_bytes_after_the_head() {
    let (addr, _task) = origin(vec![
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nearly",
    ])
    .await;
    let mut conn = connect(addr).await;
    let asking = parts(
        "GET",
        "/",
        &[("connection", "upgrade"), ("upgrade", "websocket")],
    );
    let head = conn.send(&asking, empty(), true).await.unwrap();
    assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(head.headers.get("upgrade"), Some(&b"websocket"[..]));
    assert!(
        !conn.is_reusable(),
        "an upgraded connection is never pooled"
    );
    let (mut socket, mut early) = conn.into_tunnel();
    // The head and "early" may have come in one read or two.
    while early.len() < 5 {
        let mut more = [0u8; 16];
        let n = socket.read(&mut more).await.unwrap();
        assert!(n > 0, "origin closed before its early bytes");
        early = [&early[..], &more[..n]].concat().into();
    }
    assert_eq!(&early[..], b"early");
}

#[tokio::test]
async fn a_head_past_the_limit_is_refused() {
    let (addr, _task) = scripted(|mut s| async move {
        read_request_head(&mut s).await;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let line = format!("x-filler: {}\r\n", "a".repeat(1000));
        for _ in 0..100 {
            if s.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let mut conn = connect(addr).await;
    let err = conn
        .send(&parts("GET", "/", &[]), empty(), true)
        .await
        .err()
        .expect("accepted");
    assert!(err.to_string().contains("too large"), "{err}");
}

#[tokio::test]
async fn cut_short_bodies_are_errors() {
    let cases: [&'static [u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for reply in cases {
        // The origin's task ends after the reply, which closes the connection.
        let (addr, task) = origin(vec![reply]).await;
        let mut conn = connect(addr).await;
        let head = conn
            .send(&parts("GET", "/", &[]), empty(), true)
            .await
            .unwrap();
        task.await.unwrap();
        let mut body = conn.into_body(head.framing);
        assert!(collect(&mut body).await.is_err());
        assert!(body.take_reusable().is_none());
    }
}

#[tokio::test]
async fn a_closed_idle_connection_is_noticed_and_a_request_on_it_is_closed() {
    let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, task) = scripted(|mut s| async move {
        read_request_head(&mut s).await;
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
        let _ = close_rx.await;
    });
    let (conn, head) = get_from(addr).await;
    let mut body = conn.into_body(head.framing);
    let conn = body.take_reusable().expect("reusable");
    assert!(conn.is_open());
    let _ = close_tx.send(());
    task.await.unwrap(); // the origin has closed its end
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while conn.is_open() {
        assert!(tokio::time::Instant::now() < deadline, "close never seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut conn = conn;
    let err = conn
        .send(&parts("GET", "/", &[]), empty(), true)
        .await
        .err()
        .expect("answered on a closed connection");
    assert!(err.is_closed(), "{err}");
}

#[tokio::test]
async fn bodies_go_out_with_their_length_or_chunked() {
    let (addr, task) = scripted(|mut s| async move {
        let mut got = Vec::new();
        for (end, reply) in [
            (
                &b"abc"[..],
                &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
            ),
            (
                &b"0\r\n\r\n"[..],
                &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
            ),
        ] {
            let mut seen = read_request_head(&mut s).await;
            let mut byte = [0u8; 1];
            while !seen.ends_with(end) {
                assert_eq!(s.read(&mut byte).await.unwrap(), 1);
                seen.push(byte[0]);
            }
            got.push(seen);
            s.write_all(reply).await.unwrap();
        }
        got
    });
    let mut conn = connect(addr).await;
    let put = parts("PUT", "/", &[("content-length", "3")]);
    let head = conn.send(&put, full("abc"), false).await.unwrap();
    let mut conn = conn
        .into_body(head.framing)
        .take_reusable()
        .expect("reusable");
    let post = parts("POST", "/", &[]);
    let head = conn
        .send(&post, unsized_body(&[b"hello", b"", b" world"]), false)
        .await
        .unwrap();
    assert_eq!(head.status, StatusCode::OK);
    let got = task.await.unwrap();
    assert!(got[0].ends_with(b"content-length: 3\r\n\r\nabc"));
    assert!(got[1]
        .ends_with(b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"));
}

#[tokio::test]
async fn a_body_longer_than_announced_is_the_clients_fault() {
    let (addr, _task) = origin(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
    let mut conn = connect(addr).await;
    let put = parts("PUT", "/", &[("content-length", "2")]);
    let err = conn
        .send(&put, unsized_body(&[b"abc"]), false)
        .await
        .err()
        .expect("sent");
    assert!(matches!(err, SendError::ClientBody(_)), "{err}");
    assert!(!conn.is_reusable());
}

/// 64 KiB of a client body that does not end before the socket blocks (64 MiB in all).
static BLOCK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

#[tokio::test]
async fn an_answer_before_the_body_is_sent_is_heard() {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, _task) = scripted(|mut s| async move {
        read_request_head(&mut s).await;
        s.write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nbig!")
            .await
            .unwrap();
        // Keep the connection open without reading until the test is done: the
        // answer must come through while our writes are blocked.
        let _ = done_rx.await;
    });
    let mut conn = connect(addr).await;
    let post = parts("POST", "/upload", &[]);
    let head = tokio::time::timeout(
        Duration::from_secs(10),
        conn.send(&post, unsized_body(&[&BLOCK[..]; 1024]), false),
    )
    .await
    .expect("hung on a blocked upload")
    .unwrap();
    assert_eq!(head.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(!conn.is_reusable());
    let mut body = conn.into_body(head.framing);
    assert_eq!(collect(&mut body).await.unwrap(), b"big!");
    assert!(body.take_reusable().is_none());
    let _ = done_tx.send(());
}

#[tokio::test]
async fn damaged_responses_end_in_a_body_or_an_error_never_a_hang() {
    let seeds: [&[u8]; 3] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;e=1\r\nhello\r\n3\r\nabc\r\n0\r\nX-T: t\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nServer: o\r\n\r\nuntil the close",
    ];
    let mut m = crate::test_support::Mutator::new(0x1405_7b7e_f767_814f);
    let (mut bodies, mut errors) = (0, 0);
    for i in 0..600 {
        let reply: &'static [u8] = Box::leak(m.mutate(seeds[i % seeds.len()]).into_boxed_slice());
        // The origin's task ends after the reply, which closes the connection: every
        // case has an end, and reaching it is the test.
        let (addr, _task) = origin(vec![reply]).await;
        let mut conn = connect(addr).await;
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            let head = conn.send(&parts("GET", "/", &[]), empty(), true).await?;
            let framing = head.framing;
            let mut body = conn.into_body(framing);
            let bytes = collect(&mut body).await.map_err(SendError::ClientBody)?;
            Ok::<_, SendError>((framing, bytes))
        })
        .await
        .unwrap_or_else(|_| panic!("no end to {:?}", String::from_utf8_lossy(reply)));
        match outcome {
            Ok((framing, bytes)) => {
                bodies += 1;
                if let Framing::Length(n) = framing {
                    assert_eq!(bytes.len() as u64, n, "{reply:?}");
                }
            }
            Err(_) => errors += 1,
        }
    }
    assert!(
        bodies > 100 && errors > 50,
        "{bodies} bodies, {errors} errors"
    );
}
