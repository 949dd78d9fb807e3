//! Failover at the proxy: two regions (127.0.0.2 "eu" and 127.0.0.3 "us"), each a real
//! `geoedge proxy` in front of its own `geoedge origin` processes, each naming the other
//! as its `[failover]` peer. Clients keep coming to eu (as a resolver holding an old DNS
//! answer would send them) while eu's origins are killed.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::http::{self as h, runtime};
use common::proxy_world::{start_origins, Origins};
use common::Proc;

fn free_port(ip: &str) -> SocketAddr {
    // Bound and let go at once: the proxies need each other's addresses in their configs
    // before either starts.
    TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap()
}

struct Region {
    name: &'static str,
    http: SocketAddr,
    admin: SocketAddr,
    origins: Origins,
}

struct TwoRegions {
    _dir: tempfile::TempDir,
    eu: Region,
    us: Region,
    eu_proxy: Proc,
    us_proxy: Proc,
}

fn config(me: &Region, peer: &Region, names: &[&str]) -> String {
    let origins: String = names
        .iter()
        .zip(&me.origins.addrs)
        .map(|(n, a)| format!("[[upstreams.web.origins]]\nname = \"{n}\"\naddr = \"{a}\"\n"))
        .collect();
    format!(
        r#"[node]
name = "{region}-1"
region = "{region}"
workers = 1

[listen]
http = ["{http}"]
admin = "{admin}"

[failover]
key_file = "failover.key"
check_interval = "100ms"
[[failover.peers]]
region = "{peer}"
addr = "{peer_http}"
health = "{peer_admin}"

[[routes]]
hosts = ["www.example.test"]
upstream = "web"

[upstreams.web]
connect_timeout = "300ms"
response_timeout = "5s"
[upstreams.web.health_check]
interval = "100ms"
timeout = "80ms"
rise = 1
fall = 1
{origins}
"#,
        region = me.name,
        http = me.http,
        admin = me.admin,
        peer = peer.name,
        peer_http = peer.http,
        peer_admin = peer.admin,
    )
}

fn two_regions() -> TwoRegions {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("failover.key"),
        "a secret every region's proxy holds\n",
    )
    .unwrap();
    let eu = Region {
        name: "eu",
        http: free_port("127.0.0.2"),
        admin: free_port("127.0.0.2"),
        origins: start_origins(dir.path(), &["e1", "e2"]),
    };
    let us = Region {
        name: "us",
        http: free_port("127.0.0.3"),
        admin: free_port("127.0.0.3"),
        origins: start_origins(dir.path(), &["u1"]),
    };
    std::fs::write(dir.path().join("eu.toml"), config(&eu, &us, &["e1", "e2"])).unwrap();
    std::fs::write(dir.path().join("us.toml"), config(&us, &eu, &["u1"])).unwrap();
    // us first: eu's first check of its peer then finds it listening.
    let us_proxy = Proc::start(&["proxy", "--config", "us.toml"], dir.path(), 2);
    let eu_proxy = Proc::start(&["proxy", "--config", "eu.toml"], dir.path(), 2);
    TwoRegions {
        _dir: dir,
        eu,
        us,
        eu_proxy,
        us_proxy,
    }
}

fn kill_all(origins: &mut Origins) {
    for p in &mut origins.procs {
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

fn metric(admin: SocketAddr, series: &str) -> u64 {
    common::metric(admin, series).unwrap_or(0.0) as u64
}

fn healthz(admin: SocketAddr) -> u16 {
    common::http_get(admin, "/healthz").0
}

#[test]
fn killing_every_origin_of_a_region_costs_no_client_request() {
    let mut w = two_regions();
    let rt = runtime();
    let http = w.eu.http;
    let (mut before, mut after) = (Vec::new(), Vec::new());
    rt.block_on(async {
        // A steady stream of GETs to eu, one at a time, bounded in count and time.
        let deadline = Instant::now() + Duration::from_secs(30);
        for _ in 0..30 {
            before.push(h::get(http, "www.example.test", "/").await.unwrap());
        }
        kill_all(&mut w.eu.origins);
        while after.len() < 200 && Instant::now() < deadline {
            after.push(h::get(http, "www.example.test", "/").await.unwrap());
        }
    });
    let failed: Vec<_> = before
        .iter()
        .chain(&after)
        .filter(|r| r.status != 200)
        .map(|r| (r.status, r.text()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed client requests, first: {:?}; eu log:\n{}",
        failed.len(),
        failed.first(),
        w.eu_proxy.stderr()
    );
    assert!(before.iter().all(|r| r.origin().starts_with('e')));
    assert!(
        after.iter().all(|r| r.origin() == "u1"),
        "after the kill only us can answer"
    );
    println!(
        "{} GETs before the kill, {} after: all 200, the latter from us",
        before.len(),
        after.len()
    );

    rt.block_on(async {
        // Any method: nothing reached a local origin, so a POST and its body go whole.
        let mut s = h::connect(http).await;
        let post = h::send(
            &mut s,
            h::request("POST", "www.example.test", "/upload", &[], &[b'x'; 5000]),
        )
        .await
        .unwrap();
        assert_eq!(post.status, 200, "{}", post.text());
        assert!(post.text().contains("(5000 bytes in)"), "{}", post.text());
        assert_eq!(post.origin(), "u1");

        // The peer's origin sees the client, not the hop mark.
        let echo = h::get(http, "www.example.test", "/_origin/echo")
            .await
            .unwrap();
        let head = echo.text().to_ascii_lowercase();
        assert!(head.contains("x-forwarded-for: 127.0.0.1"), "{head}");
        assert!(!head.contains("geoedge-failover"), "{head}");

        // A mark a client forged is not a hop: the request is served as any client's
        // (here: forwarded, since eu has no origin), and counted nowhere as received.
        let mut s = h::connect(http).await;
        let forged = h::send(
            &mut s,
            h::request(
                "GET",
                "www.example.test",
                "/",
                &[("geoedge-failover", "us; t=1; sig=00")],
                b"",
            ),
        )
        .await
        .unwrap();
        assert_eq!((forged.status, forged.origin()), (200, "u1".to_string()));
    });

    let forwarded = metric(
        w.eu.admin,
        r#"geoedge_proxy_failover_total{peer="us",result="forwarded"}"#,
    );
    let received = metric(
        w.us.admin,
        r#"geoedge_proxy_failover_received_total{from="eu"}"#,
    );
    assert!(
        forwarded as usize >= after.len() + 3,
        "forwarded {forwarded}"
    );
    assert_eq!(
        received, forwarded,
        "every forwarded request arrived marked"
    );
    assert_eq!(
        metric(
            w.eu.admin,
            r#"geoedge_proxy_failover_received_total{from="us"}"#
        ),
        0,
        "the forged mark was not taken"
    );
    // eu tells DNS it cannot serve, so resolvers move its clients to us directly.
    common::wait_for(Duration::from_secs(5), "eu's /healthz to fail", || {
        (healthz(w.eu.admin) == 503).then_some(())
    });
    assert_eq!(healthz(w.us.admin), 200);
    drop(w.eu_proxy);
    drop(w.us_proxy);
}

#[test]
fn with_both_regions_down_a_request_gets_503_with_a_reason_and_never_loops() {
    let mut w = two_regions();
    let rt = runtime();
    kill_all(&mut w.eu.origins);
    kill_all(&mut w.us.origins);
    let mut answers = Vec::new();
    rt.block_on(async {
        // At once (the peers' checks have not noticed yet: eu forwards, us refuses the
        // hop), and once both /healthz say so (eu finds no peer up).
        answers.push(h::get(w.eu.http, "www.example.test", "/").await.unwrap());
        answers.push(h::get(w.us.http, "www.example.test", "/").await.unwrap());
    });
    common::wait_for(Duration::from_secs(5), "both /healthz to fail", || {
        (healthz(w.eu.admin) == 503 && healthz(w.us.admin) == 503).then_some(())
    });
    rt.block_on(async {
        answers.push(h::get(w.eu.http, "www.example.test", "/").await.unwrap());
        let mut s = h::connect(w.eu.http).await;
        answers.push(
            h::send(
                &mut s,
                h::request("POST", "www.example.test", "/", &[], b"data"),
            )
            .await
            .unwrap(),
        );
    });
    for a in &answers {
        assert_eq!(a.status, 503, "{}", a.text());
        assert!(a.text().contains("no healthy origin"), "{}", a.text());
    }
    // Four client requests; each crossed between the regions at most once.
    let crossings: u64 = [
        (
            w.eu.admin,
            r#"geoedge_proxy_failover_total{peer="us",result="forwarded"}"#,
        ),
        (
            w.us.admin,
            r#"geoedge_proxy_failover_total{peer="eu",result="forwarded"}"#,
        ),
        (
            w.eu.admin,
            r#"geoedge_proxy_failover_total{peer="us",result="peer_failed"}"#,
        ),
        (
            w.us.admin,
            r#"geoedge_proxy_failover_total{peer="eu",result="peer_failed"}"#,
        ),
    ]
    .iter()
    .map(|(admin, series)| metric(*admin, series))
    .sum();
    let refused = metric(
        w.eu.admin,
        r#"geoedge_proxy_failover_total{peer="us",result="hop_refused"}"#,
    ) + metric(
        w.us.admin,
        r#"geoedge_proxy_failover_total{peer="eu",result="hop_refused"}"#,
    );
    assert!(crossings <= 4, "crossings {crossings}");
    assert!(
        refused <= crossings,
        "refused {refused}, crossings {crossings}"
    );
    println!("4 requests with both regions down: all 503 with a reason; {crossings} crossings, {refused} hops refused");
}
