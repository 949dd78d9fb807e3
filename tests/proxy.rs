//! `geoedge proxy` end to end: the real binary in front of real `geoedge origin`
//! processes, all on loopback with ports chosen by the kernel.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::http::{self as h, runtime};
use common::proxy_world::{post, tally, until_served_by, world, world_with_weights, Opts};

#[test]
fn round_robin_and_weights_distribute_as_configured() {
    let rt = runtime();
    let w = world(Opts {
        upstream: "balance = \"round_robin\"".into(),
        ..Opts::default()
    });
    rt.block_on(async {
        let mut replies = Vec::new();
        for _ in 0..10 {
            replies.push(h::get(w.http(), "www.example.test", "/").await.unwrap());
        }
        let t = tally(&replies);
        assert_eq!((t["o1"], t["o2"]), (5, 5), "{t:?}");
    });
    let w = world_with_weights(
        Opts {
            upstream: "balance = \"weighted_round_robin\"".into(),
            ..Opts::default()
        },
        &[3, 1],
    );
    rt.block_on(async {
        let mut replies = Vec::new();
        for _ in 0..12 {
            replies.push(h::get(w.http(), "www.example.test", "/").await.unwrap());
        }
        let t = tally(&replies);
        assert_eq!((t["o1"], t["o2"]), (9, 3), "{t:?}");
    });
}

#[test]
fn least_conn_sends_new_requests_away_from_a_slow_origin() {
    let rt = runtime();
    let w = world(Opts::default());
    rt.block_on(async {
        post(w.origins.addrs[0], "/_origin/delay?ms=400").await;
        // Eight clients, five requests each, concurrently: the slow origin holds its
        // requests longer, so least_conn hands most new ones to the fast origin.
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let addr = w.http();
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for _ in 0..5 {
                    out.push(h::get(addr, "www.example.test", "/").await.unwrap());
                }
                out
            }));
        }
        let mut replies = Vec::new();
        for t in tasks {
            replies.extend(t.await.unwrap());
        }
        let t = tally(&replies);
        let slow = t.get("o1").copied().unwrap_or(0);
        let fast = t.get("o2").copied().unwrap_or(0);
        assert_eq!(slow + fast, 40);
        assert!(
            fast >= slow * 3,
            "least_conn should favour the fast origin: {t:?}"
        );
    });
}

#[test]
fn sticky_cookie_pins_a_client_and_moves_it_when_the_origin_dies() {
    let rt = runtime();
    let mut w = world(Opts {
        upstream: "balance = \"round_robin\"\nsticky_cookie = \"edge\"".into(),
        ..Opts::default()
    });
    let (cookie, pinned) = rt.block_on(async {
        let first = h::get(w.http(), "www.example.test", "/").await.unwrap();
        let set = first.header("set-cookie").expect("a sticky cookie is set");
        assert!(set.starts_with("edge="), "{set}");
        assert!(
            !set.contains(&first.origin()),
            "the cookie does not name the origin"
        );
        let cookie = set.split(';').next().unwrap().to_string();
        for _ in 0..6 {
            let r = h::get_with(w.http(), "www.example.test", "/", &[("cookie", &cookie)])
                .await
                .unwrap();
            assert_eq!(r.origin(), first.origin(), "pinned");
            assert!(
                r.header("set-cookie").is_none(),
                "no new cookie while pinned"
            );
        }
        (cookie, first.origin())
    });
    let idx = if pinned == "o1" { 0 } else { 1 };
    w.kill_origin(idx);
    rt.block_on(async {
        let r = h::get_with(w.http(), "www.example.test", "/", &[("cookie", &cookie)])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_ne!(r.origin(), pinned);
        assert!(
            r.header("set-cookie").is_some(),
            "re-pinned to the live origin"
        );
    });
}

#[test]
fn an_origin_killed_mid_stream_costs_no_client_request() {
    let rt = runtime();
    let mut w = world(Opts {
        upstream: "balance = \"round_robin\"".into(),
        ..Opts::default()
    });
    let mut failures = Vec::new();
    let mut served = 0;
    rt.block_on(async {
        // Keep-alive connection and fresh connections alternate, like real clients.
        let mut keep = h::connect(w.http()).await;
        for i in 0..300 {
            if i == 60 {
                w.kill_origin(0);
            }
            let r = if i % 2 == 0 {
                h::send(
                    &mut keep,
                    h::request("GET", "www.example.test", "/", &[], b""),
                )
                .await
            } else {
                h::get(w.http(), "www.example.test", "/").await
            };
            match r {
                Ok(r) if r.status == 200 => served += 1,
                Ok(r) => failures.push(format!("request {i}: status {}", r.status)),
                Err(e) => {
                    failures.push(format!("request {i}: {e}"));
                    keep = h::connect(w.http()).await;
                }
            }
        }
    });
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(served, 300);
}

#[test]
fn active_checks_take_an_origin_out_and_bring_it_back_after_rise() {
    let rt = runtime();
    let w = world(Opts {
        upstream: "balance = \"round_robin\"\n[upstreams.web.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"80ms\"\nrise = 3\nfall = 2"
            .into(),
        ..Opts::default()
    });
    rt.block_on(async {
        post(w.origins.addrs[0], "/_origin/health?status=503").await;
        // Wait until o1 is out: then many requests in a row all go to o2.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut origins = Vec::new();
            for _ in 0..6 {
                origins.push(
                    h::get(w.http(), "www.example.test", "/")
                        .await
                        .unwrap()
                        .origin(),
                );
            }
            if origins.iter().all(|o| o == "o2") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "o1 still gets traffic: {origins:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..10 {
            assert_eq!(
                h::get(w.http(), "www.example.test", "/")
                    .await
                    .unwrap()
                    .origin(),
                "o2"
            );
        }
        post(w.origins.addrs[0], "/_origin/health?status=200").await;
        until_served_by(w.http(), "o1").await;
    });
}

#[test]
fn all_origins_down_gives_a_prompt_clear_error_and_unhealthy_healthz() {
    let rt = runtime();
    let mut w = world(Opts::default());
    w.kill_origin(0);
    w.kill_origin(1);
    rt.block_on(async {
        let started = Instant::now();
        let r = h::get(w.http(), "www.example.test", "/").await.unwrap();
        assert_eq!(r.status, 502, "both were tried: {}", r.text());
        assert!(started.elapsed() < Duration::from_secs(3), "no hang");
        // After repeated failures both are in cool-down: 503 without trying, and the
        // proxy says it cannot serve.
        for _ in 0..6 {
            let _ = h::get(w.http(), "www.example.test", "/").await;
        }
        let r = h::get(w.http(), "www.example.test", "/").await.unwrap();
        assert_eq!(r.status, 503);
        let hz = h::get(w.admin(), "admin", "/healthz").await.unwrap();
        assert_eq!(hz.status, 503, "{}", hz.text());
        assert!(hz.text().contains("no healthy origin"));
    });
}

/// With one origin, the failover finds no other: the client hears why the one failed
/// (502), not that no origin is healthy (503), which is for origins already taken out.
#[test]
fn a_lone_unreachable_origin_gives_502_then_503_once_taken_out() {
    let rt = runtime();
    let mut w = world(Opts {
        names: vec!["o1"],
        ..Opts::default()
    });
    w.kill_origin(0);
    rt.block_on(async {
        for _ in 0..3 {
            let r = h::get(w.http(), "www.example.test", "/").await.unwrap();
            assert_eq!(r.status, 502, "{}", r.text());
        }
        let r = h::get(w.http(), "www.example.test", "/").await.unwrap();
        assert_eq!(r.status, 503, "three failures in a row: cooling down");
    });
}

#[test]
fn forwarding_headers_hop_by_hop_and_origin_masking() {
    let rt = runtime();
    let w = world(Opts::default());
    rt.block_on(async {
        let r = h::get_with(
            w.http(),
            "www.example.test",
            "/_origin/echo",
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=6.6.6.6"),
                ("connection", "x-drop-me"),
                ("x-drop-me", "1"),
                ("x-keep", "2"),
            ],
        )
        .await
        .unwrap();
        let echo = r.text().to_lowercase();
        assert!(echo.contains("x-forwarded-for: 127.0.0.1\n"), "{echo}");
        assert!(
            !echo.contains("6.6.6.6"),
            "untrusted forwarding headers dropped: {echo}"
        );
        assert!(echo.contains("x-forwarded-proto: http\n"), "{echo}");
        assert!(
            echo.contains("x-forwarded-host: www.example.test\n"),
            "{echo}"
        );
        assert!(
            echo.contains("forwarded: for=127.0.0.1;proto=http;host=www.example.test\n"),
            "{echo}"
        );
        assert!(echo.contains("via: 1.1 geoedge\n"), "{echo}");
        assert!(
            !echo.contains("x-drop-me"),
            "Connection-named header removed: {echo}"
        );
        assert!(echo.contains("x-keep: 2"), "{echo}");
        assert!(r.header("server").is_none(), "origin Server hidden");
        assert!(
            r.header("x-powered-by").is_none(),
            "origin X-Powered-By hidden"
        );
        assert_eq!(r.header("via").as_deref(), Some("1.1 geoedge"));

        let r = h::get(w.http(), "nope.other.test", "/").await.unwrap();
        assert_eq!(r.status, 421);
    });
}

#[test]
fn trusted_proxies_may_extend_forwarding_headers() {
    let rt = runtime();
    let w = world(Opts {
        extra: "[forwarding]\ntrusted_proxies = [\"127.0.0.0/8\"]".into(),
        ..Opts::default()
    });
    rt.block_on(async {
        let r = h::get_with(
            w.http(),
            "www.example.test",
            "/_origin/echo",
            &[
                ("x-forwarded-for", "198.51.100.7"),
                ("x-forwarded-proto", "https"),
            ],
        )
        .await
        .unwrap();
        let echo = r.text().to_lowercase();
        assert!(
            echo.contains("x-forwarded-for: 198.51.100.7, 127.0.0.1\n"),
            "{echo}"
        );
        assert!(echo.contains("x-forwarded-proto: https\n"), "{echo}");
    });
}

fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn limits_and_smuggling_attempts_are_refused_while_others_are_served() {
    let rt = runtime();
    let w = world(Opts {
        extra: "[limits]\nheader_read_timeout = \"400ms\"\nmax_header_bytes = 4096\nmax_body_bytes = 1000".into(),
        ..Opts::default()
    });
    // Slow headers: a client that never finishes its head is cut off.
    let mut slow = TcpStream::connect(w.http()).unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: www.example.test\r\nX-Slow: ")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let n = slow.read(&mut buf).unwrap_or(0);
    let reply = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        n == 0 || reply.starts_with("HTTP/1.1 408"),
        "slow client got: {reply}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut after the header timeout"
    );

    // A drip on a kept-alive connection: after one answered request, the next head comes
    // a byte every 50 ms. The timeout runs from the start of the head, not the last byte.
    let mut drip = TcpStream::connect(w.http()).unwrap();
    drip.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    drip.write_all(b"GET /_origin/name HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
        .unwrap();
    let n = drip.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "first request answered"
    );
    let started = Instant::now();
    let mut cut = false;
    for byte in b"GET / HTTP/1.1\r\nHost: www.example.test\r\nX-Drip: ".repeat(4) {
        if drip.write_all(&[byte]).is_err() || started.elapsed() > Duration::from_secs(4) {
            cut = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cut, "a dripping head is cut off");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut near the header timeout, not the idle timeout: {:?}",
        started.elapsed()
    );

    let big = format!(
        "GET / HTTP/1.1\r\nHost: www.example.test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(8000)
    );
    assert!(raw_exchange(w.http(), big.as_bytes()).starts_with("HTTP/1.1 431"));
    let many: String = (0..120).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: www.example.test\r\n{many}\r\n");
    assert!(
        raw_exchange(w.http(), many.as_bytes()).starts_with("HTTP/1.1 431"),
        "more headers than the limit (100)"
    );

    let body = b"POST / HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 5000\r\n\r\n";
    assert!(raw_exchange(w.http(), body).starts_with("HTTP/1.1 413"));

    // A body that could be read two ways is refused before anything is forwarded, and
    // the connection closes: where its body ends is not known.
    let ambiguous: [&[u8]; 3] = [
        b"POST /smuggled HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /smuggled HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"POST /smuggled HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
    ];
    for wire in ambiguous {
        let mut s = TcpStream::connect(w.http()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        // A second request rides behind it: it must not be answered.
        s.write_all(
            &[
                wire,
                b"GET /smuggled HTTP/1.1\r\nHost: www.example.test\r\n\r\n",
            ]
            .concat(),
        )
        .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        let reply = reply.to_lowercase();
        assert!(reply.starts_with("http/1.1 400"), "{reply}");
        assert!(reply.contains("ambiguous message framing"), "{reply}");
        assert!(reply.contains("connection: close"), "{reply}");
        assert_eq!(reply.matches("http/1.1 ").count(), 1, "one answer: {reply}");
    }
    rt.block_on(async {
        let seen = || async {
            let mut n = 0;
            for origin in &w.origins.addrs {
                let r = h::get(*origin, "o", "/_origin/count?path=/smuggled")
                    .await
                    .unwrap();
                n += r.text().trim().parse::<u32>().unwrap();
            }
            n
        };
        assert_eq!(seen().await, 0, "an origin saw a refused request");
        // The count would show one that got through.
        h::get(w.http(), "www.example.test", "/smuggled")
            .await
            .unwrap();
        assert_eq!(seen().await, 1);
    });
    // On a connection hyper already serves (a chunked body moved it there), hyper settles
    // both headers as RFC 9112 §6.1 allows: Transfer-Encoding wins, Content-Length is
    // dropped, and the connection closes after the answer.
    let mut s = TcpStream::connect(w.http()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"POST /_origin/echo HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .unwrap();
    s.write_all(b"POST /_origin/echo HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        .unwrap();
    let mut echoed = String::new();
    let _ = s.read_to_string(&mut echoed);
    let echoed = echoed.to_lowercase();
    assert_eq!(echoed.matches("http/1.1 200").count(), 2, "{echoed}");
    assert!(echoed.contains("body-bytes: 3"), "{echoed}");
    assert!(echoed.contains("body-bytes: 0"), "{echoed}");
    assert!(!echoed.contains("content-length: 40"), "{echoed}");
    let double = b"POST / HTTP/1.1\r\nHost: www.example.test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd";
    assert!(raw_exchange(w.http(), double).starts_with("HTTP/1.1 400"));
    let bad_chunk = b"POST / HTTP/1.1\r\nHost: www.example.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n";
    let reply = raw_exchange(w.http(), bad_chunk);
    assert!(
        reply.is_empty() || reply.starts_with("HTTP/1.1 400") || reply.starts_with("HTTP/1.1 502"),
        "{reply}"
    );

    // A streamed body over the limit is refused too.
    rt.block_on(async {
        let mut s = h::connect(w.http()).await;
        let r = h::send(
            &mut s,
            h::request("POST", "www.example.test", "/", &[], &[b'x'; 900]),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "under the limit passes");
        let r = h::get(w.http(), "www.example.test", "/").await.unwrap();
        assert_eq!(r.status, 200, "other clients are served throughout");
    });
}

#[test]
fn metrics_count_requests_and_origin_state() {
    let rt = runtime();
    let w = world(Opts::default());
    rt.block_on(async {
        for _ in 0..3 {
            h::get(w.http(), "www.example.test", "/").await.unwrap();
        }
        h::get(w.http(), "nobody.test", "/").await.unwrap();
        let m = h::get(w.admin(), "admin", "/metrics").await.unwrap().text();
        assert!(
            m.contains(r#"geoedge_proxy_requests_total{method="GET",route="www.example.test/",status="2xx"} 3"#),
            "{m}"
        );
        assert!(m.contains(r#"geoedge_proxy_upstream_up{origin="o1",upstream="web"} 1"#), "{m}");
        assert!(m.contains("geoedge_proxy_connections_total{listener=\"http\"} 4"), "{m}");
        // Three requests, each on a new client connection, reuse pooled origin ones.
        let opened = w.metric(r#"geoedge_proxy_upstream_connections_opened_total{upstream="web"}"#);
        assert!((1..=2).contains(&opened), "{opened} origin connections for 2 origins");
        assert!(
            m.contains(r#"geoedge_proxy_upstream_errors_total{kind="bad_response",upstream="web"} 0"#),
            "every error kind is there from the start: {m}"
        );
        assert_eq!(h::get(w.admin(), "admin", "/healthz").await.unwrap().status, 200);
    });
}

#[test]
fn bad_proxy_configs_are_refused_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = "[node]\nname = \"n\"\nregion = \"r\"\n[listen]\nhttp = [\"127.0.0.1:0\"]\n[[routes]]\nhosts = [\"a\"]\nupstream = \"web\"\n[upstreams.web]\n[[upstreams.web.origins]]\nname = \"o\"\naddr = \"127.0.0.1:1\"\n";
    let cases = [
        (
            base.replace("upstream = \"web\"", "upstream = \"nope\""),
            "routes[0].upstream",
        ),
        (
            base.replace("127.0.0.1:1", "127.0.0.1:99999"),
            "proxy.toml:",
        ),
        (
            base.replace("[listen]", "[listen]\nhttps = [\"127.0.0.1:0\"]"),
            "tls.certificates",
        ),
        (
            base.to_string() + "[upstreams.web.health_check]\ninterval = \"1ms\"\n",
            "interval",
        ),
        (
            base.replace("name = \"n\"", "name = \"n\"\nmystery = 1"),
            "mystery",
        ),
        (
            base.replace("[upstreams.web]", "[upstreams.web]\nprotocol = \"h3\""),
            "proxy.toml:10: unknown variant `h3`, expected one of `http1`, `h2c`, `https`, `h2`, `tcp`, `tls`, `ftp`, `ftps`",
        ),
    ];
    for (text, needle) in cases {
        std::fs::write(dir.path().join("proxy.toml"), text).unwrap();
        let out = std::process::Command::new(common::bin())
            .args(["check", "proxy.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{needle}");
        assert!(err.contains(needle), "error lacks {needle}: {err}");
    }
}

#[test]
fn shipped_region_configs_are_valid() {
    for r in ["eu", "us", "ap"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("config/region-{r}.toml"));
        let out = std::process::Command::new(common::bin())
            .arg("check")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{r}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn access_log_lines_in_combined_and_json() {
    let rt = runtime();
    for (format, check) in [
        ("combined", "\"GET /logged?x=1 HTTP/1.1\" 200"),
        ("json", "\"path\":\"/logged?x=1\""),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        let w = world(Opts {
            extra: format!(
                "[access_log]\npath = \"{}\"\nformat = \"{format}\"",
                log.display()
            ),
            ..Opts::default()
        });
        rt.block_on(async {
            let r = h::get_with(
                w.http(),
                "www.example.test",
                "/logged?x=1",
                &[("user-agent", "test-agent")],
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200);
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        let line = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains("logged")) {
                break l.to_string();
            }
            assert!(Instant::now() < deadline, "no access log line in {format}");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(line.contains(check), "{format}: {line}");
        assert!(line.contains("test-agent"), "{line}");
        assert!(line.contains("127.0.0.1"), "{line}");
        assert!(
            line.contains("o1") || line.contains("o2"),
            "the origin that served: {line}"
        );
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["status"], 200);
        }
        // Rotation: move the file away, SIGHUP, and new lines go to a new file.
        std::fs::rename(&log, dir.path().join("access.log.1")).unwrap();
        let pid = w.proxy.child.id().to_string();
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            rt.block_on(async {
                let _ = h::get(w.http(), "www.example.test", "/after-rotate").await;
            });
            if std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("after-rotate")
            {
                break;
            }
            assert!(Instant::now() < deadline, "log not reopened after SIGHUP");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
