//! `geoedge demo` as a new user runs it: the shipped configs and GeoIP database, DNS that
//! steers a Frankfurt client to eu, HTTPS through that node's proxy, and a clean stop.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::dns::{addresses, udp, Ask};
use common::http::{self as h, runtime};
use common::Proc;
use hickory_proto::rr::RecordType;

const WWW: &str = "www.example.test.";

#[test]
fn the_demo_answers_dns_and_proxies_https_end_to_end_then_stops_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let config_dir = root.join("config");
    let mut demo = Proc::start(
        &["demo", "--config-dir", config_dir.to_str().unwrap()],
        dir.path(),
        12,
    );
    let dns = demo.addr("UDP");
    assert_eq!(dns.to_string(), "127.0.0.1:5353");
    // DNS: a Frankfurt client is sent to the eu node once its reports arrive.
    let started = Instant::now();
    let node = loop {
        let m = udp(dns, &Ask::new(WWW, RecordType::A).ecs("192.0.2.0", 24));
        let a = addresses(&m);
        if a == vec!["127.0.0.11".parse::<std::net::IpAddr>().unwrap()] {
            break a[0];
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "demo DNS answered {a:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // HTTPS to the node DNS gave, with SNI, through the proxy to an origin.
    let rt = runtime();
    rt.block_on(async {
        let mut c = h::tls_connect(
            SocketAddr::new(node, 8443),
            "www.example.test",
            &[b"h2", b"http/1.1"],
        )
        .await
        .unwrap();
        let r = c.get("www.example.test", "/hello").await.unwrap();
        assert_eq!(r.status, 200);
        assert!(r.text().starts_with("served by eu-web-"), "{}", r.text());
        // Failover is wired between the regions, nearest first: eu's peers are us, then
        // ap, each checked healthy at its admin /healthz.
        let admin: SocketAddr = "127.0.0.11:9100".parse().unwrap();
        let started = Instant::now();
        loop {
            let status = h::get(admin, "127.0.0.11", "/status").await.unwrap().text();
            let us = status.find("\"failover-us\"");
            let ap = status.find("\"failover-ap\"");
            assert!(
                matches!((us, ap), (Some(u), Some(a)) if u < a),
                "eu's /status lacks failover-us before failover-ap: {status}"
            );
            let v: serde_json::Value = serde_json::from_str(&status).unwrap();
            let healthy = |name: &str| {
                v["upstreams"].as_array().into_iter().flatten().any(|u| {
                    u["name"] == name && u["origins"][0]["healthy"] == serde_json::json!(true)
                })
            };
            if healthy("failover-us") && healthy("failover-ap") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "peers not healthy: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Ctrl-C: everything stops, exit 0.
    let pid = demo.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = demo.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}\n{}", demo.stderr());
}
