//! The edge cache end to end: the real proxy in front of one real origin that counts what
//! it serves, so "served from cache" is proven by the origin's count, not a header.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::http::{self as h, runtime, Reply};
use common::Proc;
use tokio::io::AsyncReadExt;

const HOST: &str = "www.example.test";
const TOKEN: &str = "purge-token-0123456789abcdef";

struct World {
    _dir: tempfile::TempDir,
    origin: Proc,
    proxy: Proc,
}

fn world(cache_extra: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let origin = Proc::start(
        &["origin", "--listen", "127.0.0.1:0", "--name", "o1"],
        dir.path(),
        1,
    );
    let oaddr = origin.addr("HTTP (origin o1)");
    std::fs::write(dir.path().join("purge.token"), TOKEN).unwrap();
    let config = format!(
        r#"[node]
name = "c-1"
region = "c"
workers = 1
[listen]
http = ["127.0.0.1:0"]
admin = "127.0.0.1:0"
[cache]
purge_token_file = "purge.token"
{cache_extra}
[[routes]]
hosts = ["{HOST}"]
upstream = "web"
cache = true
compress = true
[upstreams.web]
[upstreams.web.passive]
failures = 1000
[[upstreams.web.origins]]
name = "o1"
addr = "{oaddr}"
"#
    );
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let proxy = Proc::start(&["proxy", "--config", "proxy.toml"], dir.path(), 2);
    World {
        _dir: dir,
        origin,
        proxy,
    }
}

impl World {
    fn http(&self) -> SocketAddr {
        self.proxy.addr("HTTP")
    }
    fn origin_addr(&self) -> SocketAddr {
        self.origin.addr("HTTP (origin o1)")
    }
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        h::get_with(self.http(), HOST, path, headers).await.unwrap()
    }
    async fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut s = h::connect(self.http()).await;
        h::send(&mut s, h::request(method, HOST, path, headers, b""))
            .await
            .unwrap()
    }
    /// How many requests for `path` reached the origin.
    async fn count(&self, path: &str) -> u64 {
        let r = h::get(
            self.origin_addr(),
            "origin",
            &format!("/_origin/count?path={path}"),
        )
        .await
        .unwrap();
        r.text().trim().parse().unwrap()
    }
    async fn origin_post(&self, path: &str) {
        let mut s = h::connect(self.origin_addr()).await;
        h::send(&mut s, h::request("POST", "origin", path, &[], b""))
            .await
            .unwrap();
    }
    async fn purge(&self, query: &str) -> Reply {
        let mut s = h::connect(self.proxy.addr("HTTP (admin)")).await;
        let auth = format!("Bearer {TOKEN}");
        h::send(
            &mut s,
            h::request(
                "POST",
                "admin",
                &format!("/cache/purge?{query}"),
                &[("authorization", &auth)],
                b"",
            ),
        )
        .await
        .unwrap()
    }
    async fn metrics(&self) -> String {
        h::get(self.proxy.addr("HTTP (admin)"), "admin", "/metrics")
            .await
            .unwrap()
            .text()
    }
}

fn cache_status(r: &Reply) -> String {
    r.header("cache-status").unwrap_or_default()
}

#[test]
fn freshness_by_each_directive() {
    let rt = runtime();
    let w = world("");
    rt.block_on(async {
        let cases = [
            ("/fresh-max-age", "cache=max-age%3D60", 1),
            ("/fresh-s-maxage", "cache=max-age%3D0%2C%20s-maxage%3D60", 1),
            ("/no-store", "cache=max-age%3D60%2C%20no-store", 3),
            ("/private", "cache=max-age%3D60%2C%20private", 3),
            (
                "/expires",
                "h_expires=Fri%2C%2001%20Jan%202100%2000%3A00%3A00%20GMT",
                1,
            ),
            (
                "/expires-past",
                "h_expires=Fri%2C%2001%20Jan%202010%2000%3A00%3A00%20GMT",
                3,
            ),
            ("/no-info", "", 3),
            (
                "/heuristic",
                "h_last-modified=Fri%2C%2001%20Jan%202010%2000%3A00%3A00%20GMT",
                1,
            ),
        ];
        for (path, query, expected) in cases {
            for _ in 0..3 {
                let r = w.get(&format!("{path}?{query}"), &[]).await;
                assert_eq!(r.status, 200, "{path}");
            }
            assert_eq!(w.count(path).await, expected, "{path}: origin requests");
        }
        let r = w.get("/fresh-max-age?cache=max-age%3D60", &[]).await;
        assert!(
            cache_status(&r).starts_with("geoedge; hit"),
            "{}",
            cache_status(&r)
        );
        assert!(r.header("age").is_some());
        let r = w
            .get("/no-store?cache=max-age%3D60%2C%20no-store", &[])
            .await;
        assert!(
            cache_status(&r).contains("detail=no-store"),
            "{}",
            cache_status(&r)
        );
        // no-cache: stored, but every use is revalidated with the origin (304 here).
        for _ in 0..3 {
            let r = w.get("/no-cache?cache=no-cache&h_etag=%22n1%22", &[]).await;
            assert_eq!(r.status, 200);
        }
        assert_eq!(w.count("/no-cache").await, 3);
        let r = w.get("/no-cache?cache=no-cache&h_etag=%22n1%22", &[]).await;
        assert!(
            cache_status(&r).contains("fwd-status=304"),
            "{}",
            cache_status(&r)
        );
    });
}

#[test]
fn request_directives_conditionals_head_and_ranges_from_cache() {
    let rt = runtime();
    let w = world("");
    rt.block_on(async {
        let p = "/r?cache=max-age%3D60&size=100&h_etag=%22r1%22";
        assert_eq!(w.get(p, &[]).await.status, 200);
        // Conditional from cache: 304, no origin request.
        let r = w.get(p, &[("if-none-match", "\"r1\"")]).await;
        assert_eq!(r.status, 304);
        assert_eq!(r.header("etag").as_deref(), Some("\"r1\""));
        // HEAD from the stored GET.
        let r = w.send("HEAD", p, &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length").as_deref(), Some("100"));
        assert!(r.body.is_empty());
        // Ranges.
        let r = w.get(p, &[("range", "bytes=10-19")]).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.text(), "0123456789");
        assert_eq!(
            r.header("content-range").as_deref(),
            Some("bytes 10-19/100")
        );
        let r = w.get(p, &[("range", "bytes=200-")]).await;
        assert_eq!(r.status, 416);
        assert_eq!(
            w.count("/r").await,
            1,
            "all of that from one origin response"
        );
        // no-cache from the client forces a revalidation.
        let r = w.get(p, &[("cache-control", "no-cache")]).await;
        assert_eq!(r.status, 200);
        assert_eq!(w.count("/r").await, 2);
        // A client's max-age below the stored response's age does too (the origin said
        // Age: 30, so the copy is at least 30 s old).
        let aged = "/aged?cache=max-age%3D600&h_age=30";
        w.get(aged, &[]).await;
        w.get(aged, &[("cache-control", "max-age=60")]).await;
        assert_eq!(w.count("/aged").await, 1, "30 s old is fine for max-age=60");
        w.get(aged, &[("cache-control", "max-age=10")]).await;
        assert_eq!(w.count("/aged").await, 2, "but not for max-age=10");
        // only-if-cached: 504 when absent, served when present.
        let r = w
            .get(
                "/absent?cache=max-age%3D60",
                &[("cache-control", "only-if-cached")],
            )
            .await;
        assert_eq!(r.status, 504);
        assert_eq!(w.count("/absent").await, 0);
        let r = w.get(p, &[("cache-control", "only-if-cached")]).await;
        assert_eq!(r.status, 200);
    });
}

#[test]
fn vary_variants_are_kept_apart_and_purged_together() {
    let rt = runtime();
    let w = world("");
    rt.block_on(async {
        let p = "/v?cache=max-age%3D60&h_vary=accept-language";
        for lang in ["en", "de", "en", "de", "en"] {
            let r = w.get(p, &[("accept-language", lang)]).await;
            assert_eq!(r.status, 200);
        }
        assert_eq!(w.count("/v").await, 2, "one origin request per variant");
        let r = w
            .purge(&format!(
                "url=http%3A%2F%2F{HOST}%2Fv%3Fcache%3Dmax-age%253D60%26h_vary%3Daccept-language"
            ))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        for lang in ["en", "de"] {
            w.get(p, &[("accept-language", lang)]).await;
        }
        assert_eq!(w.count("/v").await, 4, "purge dropped every variant");
        // Prefix purge.
        w.get("/img/1?cache=max-age%3D60", &[]).await;
        w.get("/img/2?cache=max-age%3D60", &[]).await;
        w.get("/css/1?cache=max-age%3D60", &[]).await;
        let r = w.purge(&format!("prefix={HOST}/img/")).await;
        assert!(r.text().contains("purged 2"), "{}", r.text());
        w.get("/img/1?cache=max-age%3D60", &[]).await;
        w.get("/css/1?cache=max-age%3D60", &[]).await;
        assert_eq!(w.count("/img/1").await, 2);
        assert_eq!(w.count("/css/1").await, 1);
        // Purging needs the token.
        let mut s = h::connect(w.proxy.addr("HTTP (admin)")).await;
        let r = h::send(
            &mut s,
            h::request("POST", "admin", "/cache/purge?prefix=x/", &[], b""),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 401);
        // Vary: * is never stored.
        for _ in 0..2 {
            w.get("/star?cache=max-age%3D60&h_vary=%2A", &[]).await;
        }
        assert_eq!(w.count("/star").await, 2);
    });
}

#[test]
fn revalidation_304_updates_stored_headers_and_keeps_the_body() {
    let rt = runtime();
    let w = world("");
    rt.block_on(async {
        let p = "/rv?cache=max-age%3D0&h_etag=%22e1%22&size=64";
        let first = w.get(p, &[]).await;
        assert_eq!(first.header("x-origin-seq").as_deref(), Some("1"));
        let second = w.get(p, &[]).await;
        assert_eq!(second.status, 200);
        assert!(
            cache_status(&second).contains("fwd=stale; fwd-status=304"),
            "{}",
            cache_status(&second)
        );
        assert_eq!(
            second.header("x-origin-seq").as_deref(),
            Some("2"),
            "headers from the 304"
        );
        assert_eq!(second.body, first.body, "body from the cache");
        assert_eq!(w.count("/rv").await, 2);
        assert!(w
            .metrics()
            .await
            .contains(r#"geoedge_proxy_cache_revalidations_total{result="not_modified"} 1"#));
    });
}

#[test]
fn stale_while_revalidate_serves_stale_with_exactly_one_background_refresh() {
    let rt = runtime();
    let w = world("");
    rt.block_on(async {
        let p = "/swr?cache=max-age%3D0%2C%20stale-while-revalidate%3D60&h_etag=%22s1%22";
        w.get(p, &[]).await;
        assert_eq!(w.count("/swr").await, 1);
        // A slow origin: the refresh takes a while, and everyone meanwhile gets the stale copy.
        w.origin_post("/_origin/delay?ms=500").await;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let addr = w.http();
            tasks.push(tokio::spawn(
                async move { h::get(addr, HOST, p).await.unwrap() },
            ));
        }
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200);
            assert!(
                cache_status(&r).contains("stale-while-revalidate"),
                "{}",
                cache_status(&r)
            );
        }
        assert!(
            started.elapsed() < Duration::from_millis(450),
            "served without waiting for the origin"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while w.count("/swr").await < 2 {
            assert!(
                Instant::now() < deadline,
                "the background refresh never reached the origin"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the refresh finish, then count: exactly one refresh for ten stale hits.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(w.count("/swr").await, 2);
    });
}

#[test]
fn stale_if_error_covers_a_failing_origin() {
    let rt = runtime();
    let w = world("");
    rt.block_on(async {
        let p = "/sie?cache=max-age%3D0%2C%20stale-if-error%3D60&h_etag=%22x1%22";
        let first = w.get(p, &[]).await;
        w.origin_post("/_origin/status?code=500").await;
        let r = w.get(p, &[]).await;
        assert_eq!(r.status, 200, "stale copy instead of the origin's 500");
        assert!(
            cache_status(&r).contains("stale-if-error"),
            "{}",
            cache_status(&r)
        );
        assert_eq!(r.body, first.body);
        // Without stale-if-error the 500 goes through.
        w.origin_post("/_origin/status?code=0").await;
        let q = "/nosie?cache=max-age%3D0&h_etag=%22y1%22";
        w.get(q, &[]).await;
        w.origin_post("/_origin/status?code=500").await;
        assert_eq!(w.get(q, &[]).await.status, 500);
    });
}

#[test]
fn a_hundred_concurrent_misses_make_one_origin_request() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let w = world("");
    rt.block_on(async {
        let p = "/herd?cache=max-age%3D60&delay_ms=300&size=2000";
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let addr = w.http();
            tasks.push(tokio::spawn(async move { h::get(addr, HOST, p).await }));
        }
        let mut bodies = Vec::new();
        for t in tasks {
            let r = t.await.unwrap().unwrap();
            assert_eq!(r.status, 200);
            bodies.push(r.body);
        }
        assert!(bodies.iter().all(|b| b.len() == 2000));
        assert_eq!(w.count("/herd").await, 1);
        let m = w.metrics().await;
        assert!(
            m.contains("geoedge_proxy_cache_coalesced_waiters_total 99"),
            "{m}"
        );
        // An uncacheable answer releases the waiters to the origin.
        let q = "/herd-private?cache=private&delay_ms=200";
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let addr = w.http();
            tasks.push(tokio::spawn(async move { h::get(addr, HOST, q).await }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().status, 200);
        }
        assert_eq!(w.count("/herd-private").await, 5);
    });
}

#[test]
fn unsafe_methods_invalidate_the_target_and_location() {
    let rt = runtime();
    let w = world("");
    rt.block_on(async {
        w.get("/inv?cache=max-age%3D60", &[]).await;
        w.get("/other?cache=max-age%3D60", &[]).await;
        w.get("/inv?cache=max-age%3D60", &[]).await;
        assert_eq!(w.count("/inv").await, 1);
        let r = w.send("POST", "/inv?cache=max-age%3D60", &[]).await;
        assert_eq!(r.status, 200);
        assert!(cache_status(&r).contains("fwd=method"));
        w.get("/inv?cache=max-age%3D60", &[]).await;
        assert_eq!(w.count("/inv").await, 3, "POST, then a miss");
        // Location on the same host is invalidated too.
        w.send(
            "POST",
            "/poster?h_location=%2Fother%3Fcache%3Dmax-age%253D60",
            &[],
        )
        .await;
        w.get("/other?cache=max-age%3D60", &[]).await;
        assert_eq!(w.count("/other").await, 2, "Location invalidated too");
        // A failed unsafe request invalidates nothing.
        w.get("/keep?cache=max-age%3D60", &[]).await;
        w.send("DELETE", "/keep?cache=max-age%3D60&status=500", &[])
            .await;
        w.get("/keep?cache=max-age%3D60", &[]).await;
        assert_eq!(w.count("/keep").await, 2);
    });
}

#[test]
fn a_get_with_a_body_does_not_put_the_origin_connection_out_of_step() {
    let rt = runtime();
    let w = world("");
    rt.block_on(async {
        // A GET on a caching route goes to the origin without its body. Had the client's
        // Content-Length gone along, the origin would read the start of the next request
        // on that connection (another client's) as the missing body.
        for i in 0..3 {
            let mut s = h::connect(w.http()).await;
            let path = format!("/bodied/{i}");
            let r = h::send(&mut s, h::request("GET", HOST, &path, &[], b"hello"))
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(r.text().contains(&path), "{}", r.text());
            let path = format!("/next/{i}");
            let r = w.get(&path, &[]).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(r.text().contains(&path), "{}", r.text());
        }
    });
}

#[test]
fn authorization_and_set_cookie_never_leak_between_users() {
    let rt = runtime();
    let w = world("");
    rt.block_on(async {
        let p = "/auth?cache=max-age%3D60";
        w.get(p, &[("authorization", "Basic YWxpY2U6c2VjcmV0")])
            .await;
        w.get(p, &[("authorization", "Basic Ym9iOnNlY3JldA==")])
            .await;
        assert_eq!(
            w.count("/auth").await,
            2,
            "responses to authorized requests are not shared"
        );
        let q = "/auth-public?cache=max-age%3D60%2C%20public";
        w.get(q, &[("authorization", "Basic YWxpY2U6c2VjcmV0")])
            .await;
        w.get(q, &[("authorization", "Basic Ym9iOnNlY3JldA==")])
            .await;
        assert_eq!(w.count("/auth-public").await, 1, "public allows it");

        let c = "/cookie?cache=max-age%3D60&h_set-cookie=session%3Dalice";
        let alice = w.get(c, &[]).await;
        assert_eq!(alice.header("set-cookie").as_deref(), Some("session=alice"));
        let bob = w.get(c, &[]).await;
        assert_eq!(w.count("/cookie").await, 2, "never served from cache");
        assert!(
            cache_status(&bob).contains("set-cookie"),
            "{}",
            cache_status(&bob)
        );
    });
}

async fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    async_compression::tokio::bufread::GzipDecoder::new(b)
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

async fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    async_compression::tokio::bufread::BrotliDecoder::new(b)
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

#[test]
fn compression_is_negotiated_cached_and_skipped_where_it_must_be() {
    let rt = runtime();
    let w = world("");
    rt.block_on(async {
        let p = "/text?cache=max-age%3D60&size=5000&h_content-type=text%2Fplain&h_etag=%22t1%22";
        let plain = w.get(p, &[]).await;
        assert_eq!(plain.body.len(), 5000);
        assert!(plain.header("content-encoding").is_none());
        assert!(plain
            .header("vary")
            .unwrap_or_default()
            .to_lowercase()
            .contains("accept-encoding"));
        let gz = w.get(p, &[("accept-encoding", "gzip")]).await;
        assert_eq!(gz.header("content-encoding").as_deref(), Some("gzip"));
        assert!(gz.body.len() < 1000);
        assert_eq!(gunzip(&gz.body).await, plain.body.to_vec());
        assert_eq!(
            gz.header("etag").as_deref(),
            Some("W/\"t1\""),
            "compressed copies get weak validators"
        );
        let br = w.get(p, &[("accept-encoding", "gzip, br")]).await;
        assert_eq!(br.header("content-encoding").as_deref(), Some("br"));
        assert_eq!(unbrotli(&br.body).await, plain.body.to_vec());
        let br2 = w.get(p, &[("accept-encoding", "br")]).await;
        assert_eq!(br2.body, br.body);
        assert_eq!(
            w.count("/text").await,
            1,
            "one origin response, compressed copies cached"
        );
        // Not for images, no-transform, or small bodies.
        for q in [
            "/img?cache=max-age%3D60&size=5000&h_content-type=image%2Fpng",
            "/nt?cache=max-age%3D60%2C%20no-transform&size=5000&h_content-type=text%2Fplain",
            "/small?cache=max-age%3D60&size=100&h_content-type=text%2Fplain",
        ] {
            let r = w.get(q, &[("accept-encoding", "gzip, br")]).await;
            assert!(r.header("content-encoding").is_none(), "{q}");
        }
    });
}

#[test]
fn the_byte_bound_holds_under_churn() {
    let rt = runtime();
    let w = world("max_bytes = 200000\nmax_object_bytes = 50000");
    rt.block_on(async {
        for i in 0..300 {
            let r = w
                .get(&format!("/churn/{i}?cache=max-age%3D60&size=4000"), &[])
                .await;
            assert_eq!(r.status, 200);
        }
        let m = w.metrics().await;
        let bytes: u64 = m
            .lines()
            .find(|l| l.starts_with("geoedge_proxy_cache_bytes "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(bytes <= 200_000, "cache holds {bytes} bytes");
        assert!(bytes > 100_000, "and is actually used: {bytes}");
        let evictions: u64 = m
            .lines()
            .find(|l| l.starts_with("geoedge_proxy_cache_evictions_total "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(evictions > 0, "{m}");
        // Objects over the per-object limit stream through uncached.
        for _ in 0..2 {
            let r = w.get("/big?cache=max-age%3D60&size=60000", &[]).await;
            assert_eq!(r.body.len(), 60000);
            assert!(
                cache_status(&r).contains("too-large"),
                "{}",
                cache_status(&r)
            );
        }
        assert_eq!(w.count("/big").await, 2);
    });
}
