//! Upstreams with `protocol = "h2c"`: HTTP/2 without TLS to the origins, for gRPC
//! services and other HTTP/2-only origins. The real proxy in front of real
//! `geoedge origin` processes (which speak HTTP/2 by prior knowledge too).

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::http::{self as h, runtime, TlsSender};
use common::proxy_world::{post, proxy_for, until_served_by, world, Opts, World};
use http::{Request, Version};
use http_body_util::Full;

fn h2c_world(upstream: &str) -> World {
    world(Opts {
        upstream: format!("protocol = \"h2c\"\n{upstream}"),
        https: true,
        extra: "[[tls.certificates]]\nself_signed = [\"www.example.test\"]\n".into(),
        ..Opts::default()
    })
}

/// gRPC-style unary calls, all at once on one HTTP/2 connection: a POST of one framed
/// message each; the replies in the order of `urls`.
async fn grpc_calls(
    sender: &hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    urls: impl Iterator<Item = String>,
) -> Vec<h::Reply> {
    let mut calls = Vec::new();
    for url in urls {
        let mut s = sender.clone();
        calls.push(tokio::spawn(async move {
            let req = Request::post(url)
                .version(Version::HTTP_2)
                .header("content-type", "application/grpc")
                .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
                .unwrap();
            s.ready().await.map_err(|e| e.to_string())?;
            let resp = s.send_request(req).await.map_err(|e| e.to_string())?;
            h::collect(resp).await
        }));
    }
    let mut replies = Vec::new();
    for call in calls {
        replies.push(call.await.unwrap().unwrap());
    }
    replies
}

#[test]
fn http1_clients_reach_an_h2c_origin_with_the_request_intact() {
    let rt = runtime();
    let w = h2c_world("");
    rt.block_on(async {
        let r = h::get_with(
            w.http(),
            "www.example.test",
            "/_origin/echo?q=1",
            &[("x-custom", "kept"), ("te", "gzip"), ("connection", "te")],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let echo = r.text();
        assert!(
            echo.starts_with("GET http://www.example.test/_origin/echo?q=1 HTTP/2.0\n"),
            "the origin was asked over HTTP/2, Host in :authority: {echo}"
        );
        assert!(!echo.contains("\nhost:"), "{echo}");
        assert!(echo.contains("\nte: trailers\n"), "{echo}");
        assert!(echo.contains("\nx-custom: kept\n"), "{echo}");
        assert!(echo.contains("\nx-forwarded-for: 127.0.0.1\n"), "{echo}");
        assert!(echo.contains("\nvia: 1.1 "), "{echo}");
        assert!(!r.headers.contains_key("server"), "the origin stays masked");
        assert!(
            r.header("via").is_some_and(|v| v.starts_with("2 ")),
            "{:?}",
            r.headers
        );

        // A body streams up, and the connection carries requests one after another.
        let body = vec![b'x'; 300_000];
        let mut keep = h::connect(w.http()).await;
        for _ in 0..3 {
            let r = h::send(
                &mut keep,
                h::request("POST", "www.example.test", "/_origin/echo", &[], &body),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200);
            assert!(r.text().contains("body-bytes: 300000\n"), "{}", r.text());
        }
    });
}

/// gRPC's status travels in trailers: an HTTP/2 client gets the origin's.
#[test]
fn trailers_reach_http2_clients() {
    let rt = runtime();
    let w = h2c_world("");
    let https = w.proxy.addr("HTTPS");
    rt.block_on(async {
        let c = h::tls_connect(https, "www.example.test", &[b"h2"])
            .await
            .unwrap();
        let TlsSender::H2(sender) = c.sender else {
            panic!("h2 was not negotiated");
        };
        // Several streams at once over the client's one connection and the origins'.
        let urls = (0..8).map(|i| {
            format!(
                "https://www.example.test/pkg.Echo/Call?t_grpc-status=0&t_grpc-message=call%20{i}"
            )
        });
        for (i, r) in grpc_calls(&sender, urls).await.into_iter().enumerate() {
            assert_eq!(r.status, 200);
            let trailers = r.trailers.expect("trailers");
            assert_eq!(trailers["grpc-status"], "0");
            assert_eq!(trailers["grpc-message"], format!("call {i}").as_str());
        }
        // The eight calls at once shared one connection per origin: those arriving while
        // it was being opened waited for it.
        let opened = w.metric(r#"geoedge_proxy_upstream_connections_opened_total{upstream="web"}"#);
        assert!(
            (1..=2).contains(&opened),
            "{opened} origin connections for 2 origins"
        );
        // An HTTP/1.1 client gets the same answer without them.
        let r = h::get(w.http(), "www.example.test", "/x?t_grpc-status=0")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(r.trailers.is_none());
    });
}

#[test]
fn an_h2c_origin_killed_mid_stream_costs_no_client_request() {
    let rt = runtime();
    let mut w = h2c_world("balance = \"round_robin\"");
    let mut failures = Vec::new();
    rt.block_on(async {
        let mut keep = h::connect(w.http()).await;
        for i in 0..200 {
            if i == 50 {
                w.kill_origin(0);
            }
            let r = h::send(
                &mut keep,
                h::request("GET", "www.example.test", "/", &[], b""),
            )
            .await;
            match r {
                Ok(r) if r.status == 200 => {
                    if i > 50 {
                        assert_eq!(r.origin(), "o2", "request {i}");
                    }
                }
                Ok(r) => failures.push(format!("request {i}: status {}", r.status)),
                Err(e) => {
                    failures.push(format!("request {i}: {e}"));
                    keep = h::connect(w.http()).await;
                }
            }
        }
    });
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn active_checks_and_passive_errors_work_over_h2c() {
    let rt = runtime();
    let w = h2c_world(
        "balance = \"round_robin\"\n[upstreams.web.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nrise = 2\nfall = 2\n[upstreams.web.passive]\nfailures = 3\ncooldown = \"30s\"",
    );
    let up = |o: &str| format!("geoedge_proxy_upstream_up{{origin=\"{o}\",upstream=\"web\"}}");
    let errors_5xx = r#"geoedge_proxy_upstream_errors_total{kind="5xx",upstream="web"}"#;
    rt.block_on(async {
        // The checks pass over HTTP/2 (`geoedge origin` answers either way;
        // `checks_and_traffic_reach_an_http2_only_origin` holds one that does not).
        common::wait_for(Duration::from_secs(5), "both origins up", || {
            (w.metric(&up("o1")) == 1 && w.metric(&up("o2")) == 1).then_some(())
        });
        post(w.origins.addrs[0], "/_origin/health?status=503").await;
        common::wait_for(Duration::from_secs(5), "o1 down by its checks", || {
            (w.metric(&up("o1")) == 0).then_some(())
        });
        for _ in 0..6 {
            let r = h::get(w.http(), "www.example.test", "/").await.unwrap();
            assert_eq!(r.origin(), "o2");
        }
        post(w.origins.addrs[0], "/_origin/health?status=200").await;
        until_served_by(w.http(), "o1").await;
        assert_eq!(w.metric(errors_5xx), 0, "health checks are not traffic");

        // Passive: three 5xx in a row from o2 take it out for the cool-down.
        post(w.origins.addrs[1], "/_origin/status?code=500").await;
        let mut from_o2 = 0;
        while from_o2 < 3 {
            let r = h::get(w.http(), "www.example.test", "/").await.unwrap();
            if r.origin() == "o2" {
                assert_eq!(r.status, 500);
                from_o2 += 1;
            }
        }
        assert_eq!(w.metric(errors_5xx), 3);
        for _ in 0..6 {
            let r = h::get(w.http(), "www.example.test", "/").await.unwrap();
            assert_eq!((r.status, r.origin().as_str()), (200, "o1"));
        }
    });
}

#[test]
fn a_websocket_upgrade_to_an_h2c_upstream_is_refused_clearly() {
    let rt = runtime();
    let w = h2c_world("");
    rt.block_on(async {
        let r = h::get_with(
            w.http(),
            "www.example.test",
            "/_origin/upgrade",
            &[("connection", "upgrade"), ("upgrade", "websocket")],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 502, "{}", r.text());
        // Plain requests still go through.
        let r = h::get(w.http(), "www.example.test", "/").await.unwrap();
        assert_eq!(r.status, 200);
    });
}

/// An origin that speaks only HTTP/2 by prior knowledge, as gRPC servers do; it counts
/// the health checks it answers.
fn h2_only_origin(rt: &tokio::runtime::Runtime) -> (SocketAddr, Arc<AtomicUsize>) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let checks = Arc::new(AtomicUsize::new(0));
    let seen = checks.clone();
    rt.spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                if req.uri().path() == "/healthz" {
                    seen.fetch_add(1, Ordering::SeqCst);
                }
                let resp = http::Response::builder()
                    .header("x-origin", "h2only")
                    .body(Full::new(Bytes::from_static(b"h2 only\n")))
                    .unwrap();
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, checks)
}

#[test]
fn checks_and_traffic_reach_an_http2_only_origin() {
    // A multi-thread runtime: the origin keeps serving while the test blocks on checks.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (addr, checks) = h2_only_origin(&rt);
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        names: vec!["h2only"],
        upstream: "protocol = \"h2c\"\n[upstreams.web.health_check]\ninterval = \"100ms\"\ntimeout = \"80ms\"\nfall = 1".into(),
        ..Opts::default()
    };
    let proxy = proxy_for(dir.path(), &opts, &[addr], &[]);
    let admin = proxy.addr("HTTP (admin)");
    common::wait_for(Duration::from_secs(5), "three checks answered", || {
        (checks.load(Ordering::SeqCst) >= 3).then_some(())
    });
    let up = common::metric(
        admin,
        r#"geoedge_proxy_upstream_up{origin="h2only",upstream="web"}"#,
    );
    assert_eq!(up, Some(1.0), "the checks passed");
    let r = rt
        .block_on(h::get(proxy.addr("HTTP"), "www.example.test", "/"))
        .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "h2 only\n"));
    assert_eq!(r.origin(), "h2only");
}

/// An HTTP/1.1-only origin put in an `h2c` upstream by mistake: the client gets a prompt
/// 502, not a hang, and the origin is counted as failing.
#[test]
fn an_http1_only_origin_in_an_h2c_upstream_gets_a_prompt_502() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        // What nginx answers to the HTTP/2 preface on an HTTP/1.1 port.
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let opts = Opts {
        names: vec!["h1only"],
        upstream: "protocol = \"h2c\"".into(),
        ..Opts::default()
    };
    let proxy = proxy_for(dir.path(), &opts, &[addr], &[]);
    let rt = runtime();
    let started = std::time::Instant::now();
    let r = rt
        .block_on(h::get(proxy.addr("HTTP"), "www.example.test", "/"))
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the 5 s response timeout was not what ended it"
    );
    let reset = common::metric(
        proxy.addr("HTTP (admin)"),
        r#"geoedge_proxy_upstream_errors_total{kind="reset",upstream="web"}"#,
    );
    assert_eq!(reset, Some(1.0));
}

/// gRPC without TLS end to end: a client speaking HTTP/2 by prior knowledge to the plain
/// listener, streams multiplexed on its one connection, trailers back.
#[test]
fn http2_by_prior_knowledge_on_the_plain_listener() {
    use hyper::client::conn::http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let rt = runtime();
    let w = h2c_world("");
    rt.block_on(async {
        let stream = tokio::net::TcpStream::connect(w.http()).await.unwrap();
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let urls =
            (0..6).map(|i| format!("http://www.example.test/_origin/echo?t_grpc-status={i}"));
        for (i, r) in grpc_calls(&sender, urls).await.into_iter().enumerate() {
            assert_eq!((r.status, r.version), (200, Version::HTTP_2));
            let echo = r.text();
            assert!(echo.contains(" HTTP/2.0\n"), "{echo}");
            assert!(echo.contains("\nx-forwarded-proto: http\n"), "{echo}");
            assert!(echo.contains("body-bytes: 10\n"), "{echo}");
            let trailers = r.trailers.expect("trailers");
            assert_eq!(trailers["grpc-status"], i.to_string().as_str());
        }
    });
    // The same listener still speaks HTTP/1.1.
    let r = rt
        .block_on(h::get(w.http(), "www.example.test", "/"))
        .unwrap();
    assert_eq!((r.status, r.version), (200, Version::HTTP_11));
}

/// A stream with no response headers within `response_timeout` gets 504; the origin's
/// connection, shared by other streams, goes on serving them.
#[test]
fn a_slow_h2c_stream_times_out_alone() {
    let rt = runtime();
    let w = h2c_world("");
    rt.block_on(async {
        let http = w.http();
        let slow = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let r = h::get(http, "www.example.test", "/slow?delay_ms=8000").await;
            (r, started.elapsed())
        });
        // Meanwhile, others are answered on the same origin connections.
        for _ in 0..5 {
            let r = h::get(http, "www.example.test", "/").await.unwrap();
            assert_eq!(r.status, 200);
        }
        let (r, took) = slow.await.unwrap();
        let r = r.unwrap();
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(
            took < Duration::from_secs(7),
            "the 5 s response timeout: {took:?}"
        );
        let r = h::get(http, "www.example.test", "/").await.unwrap();
        assert_eq!(r.status, 200);
    });
    assert_eq!(
        w.metric(r#"geoedge_proxy_upstream_errors_total{kind="timeout",upstream="web"}"#),
        1
    );
}
