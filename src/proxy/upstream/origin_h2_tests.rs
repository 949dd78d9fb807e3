use super::*;
use http::Method;
use std::sync::Arc;

fn parts(uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = Request::builder().method(Method::POST).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(()).unwrap().into_parts().0
}

#[test]
fn the_target_moves_into_pseudo_headers_and_te_says_trailers() {
    let p = parts(
        "/pkg.Svc/Call?x=1",
        &[
            ("host", "api.example.test"),
            ("content-type", "application/grpc"),
            ("x-forwarded-for", "192.0.2.7"),
        ],
    );
    let origin = Authority::from_static("127.0.0.1:9001");
    let req = request(&p, crate::proxy::body::empty(), &origin, false).unwrap();
    assert_eq!(req.method(), Method::POST);
    assert_eq!(req.version(), Version::HTTP_2);
    assert_eq!(req.uri(), "http://api.example.test/pkg.Svc/Call?x=1");
    assert!(req.headers().get(HOST).is_none(), "Host goes to :authority");
    assert_eq!(req.headers()[TE], "trailers");
    assert_eq!(req.headers()["content-type"], "application/grpc");
    assert_eq!(req.headers()["x-forwarded-for"], "192.0.2.7");
}

#[test]
fn without_a_usable_host_the_origin_is_the_authority() {
    let origin = Authority::from_static("127.0.0.1:9001");
    for headers in [&[][..], &[("host", "bad host")][..]] {
        let req = request(
            &parts("/", headers),
            crate::proxy::body::empty(),
            &origin,
            false,
        )
        .unwrap();
        assert_eq!(req.uri(), "http://127.0.0.1:9001/");
    }
}

#[test]
fn response_fields_become_lines_in_order() {
    let mut map = HeaderMap::new();
    map.append("content-type", HeaderValue::from_static("application/grpc"));
    map.append("set-cookie", HeaderValue::from_static("a=1"));
    map.append("set-cookie", HeaderValue::from_static("b=2"));
    map.append("server", HeaderValue::from_static("hidden"));
    let mut lines = header_lines(&map);
    assert_eq!(lines.len(), 4);
    assert_eq!(lines.get("content-type"), Some(&b"application/grpc"[..]));
    let cookies: Vec<&[u8]> = lines.get_all("set-cookie").collect();
    assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
    assert!(lines.remove("server"));
    assert_eq!(lines.to_header_map().len(), 3);
    assert!(header_lines(&HeaderMap::new()).is_empty());
}

/// A request the origin refused with REFUSED_STREAM never ran there: it may be sent
/// again. One it reset with another code may have.
#[tokio::test]
async fn a_refused_stream_is_told_from_other_resets() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let mut conn = h2::server::handshake(stream).await.unwrap();
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            let reason = if req.uri().path() == "/refuse" {
                h2::Reason::REFUSED_STREAM
            } else {
                h2::Reason::INTERNAL_ERROR
            };
            respond.send_reset(reason);
        }
    });
    let session = H2Session::default();
    let (mut sender, reused) = session
        .sender(addr, Duration::from_secs(2), None)
        .await
        .unwrap();
    assert!(!reused);
    let origin = Authority::from_static("127.0.0.1:1");
    for (path, safe) in [("/refuse", true), ("/other", false)] {
        let req = request(
            &parts(path, &[]),
            crate::proxy::body::empty(),
            &origin,
            false,
        )
        .unwrap();
        let e = sender.send_request(req).await.unwrap_err();
        assert_eq!(never_processed(&e), safe, "{path}: {e:?}");
    }
    // The connection is shared: the next request reuses it.
    let (_, reused) = session
        .sender(addr, Duration::from_secs(2), None)
        .await
        .unwrap();
    assert!(reused);
}

#[tokio::test]
async fn a_closed_connection_is_replaced() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Handshake, then close at once with a GOAWAY.
            let mut conn = h2::server::handshake(stream).await.unwrap();
            conn.graceful_shutdown();
            let _ = std::future::poll_fn(|cx| conn.poll_closed(cx)).await;
        }
    });
    let session = H2Session::default();
    let (first, _) = session
        .sender(addr, Duration::from_secs(2), None)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !first.is_closed() {
        assert!(std::time::Instant::now() < deadline, "close never seen");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (second, reused) = session
        .sender(addr, Duration::from_secs(2), None)
        .await
        .unwrap();
    assert!(!reused, "a closed connection is not handed out");
    drop(second);
    while accepted.load(std::sync::atomic::Ordering::SeqCst) < 2 {
        assert!(std::time::Instant::now() < deadline, "no second connection");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_connect_error_says_where() {
    // Nothing listens on a port just released.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let session = H2Session::default();
    let e = session
        .sender(addr, Duration::from_secs(2), None)
        .await
        .expect_err("no origin there");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}
