//! Shedding in a closed loop, every part real: a DNS server; two regions, each a
//! `geoedge proxy` with a capacity (`[node] capacity.max_rps`) reporting its load, in front
//! of a `geoedge origin`; and simulated client networks that resolve the steered name
//! (with their ECS network, re-resolving when the 1 s TTL runs out) and send their
//! requests wherever the answer says. Nothing scripts the load the DNS server sees: it is
//! what the clients it steered bring.
//!
//! 60 networks at 4 requests/s each offer 240 requests/s; eu, first for all of them, can
//! take 120 (utilisation 2.0 unshed). With watermarks 0.5 and 0.9 the loop has one rest
//! point: utilisation u = 2 (1 − s) and share s = (u − 0.5) / 0.4 meet at u = 0.75,
//! s = 0.625. The test checks that the loop reaches it, stays (the share's swing over 4 s
//! after settling is at most 5 points), keeps eu under its high watermark, and lets go
//! when the load falls.

mod common;

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::dns::{addresses, udp, Ask};
use common::http::{self as h, runtime};
use common::proxy_world::start_origins;
use common::{build_geo, Proc};
use hickory_proto::rr::RecordType;

const KEY: &str = "test-report-key-0123456789abcdef";
const ZONE: &str = "$ORIGIN example.test.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 127.0.0.1\n";
const NETWORKS: usize = 60;
/// Each network's requests per second.
const RATE: u64 = 4;

/// A port free on both region addresses: the DNS answer names an address, and clients
/// use one port for the name, whichever region it is.
fn shared_port() -> u16 {
    for _ in 0..50 {
        let a = TcpListener::bind(("127.0.0.11", 0)).unwrap();
        let port = a.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.12", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.11 and 127.0.0.12");
}

fn dns(dir: &std::path::Path) -> Proc {
    build_geo(dir, "");
    std::fs::write(dir.join("zone.txt"), ZONE).unwrap();
    let mut config = String::from(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ncontrol = \"127.0.0.1:0\"\nworkers = 1\n\
         [geoip]\ndatabase = \"geo.mmdb\"\n[health]\nreport_key_file = \"report.key\"\n\
         [[zones]]\norigin = \"example.test.\"\nfile = \"zone.txt\"\n\
         [[zones.steered]]\nname = \"www\"\nttl = 1\n",
    );
    for (name, ip, lat, lon) in [
        ("eu", "127.0.0.11", 50.11, 8.68),
        ("us", "127.0.0.12", 39.04, -77.49),
    ] {
        config.push_str(&format!(
            "[[regions]]\nname = \"{name}\"\nlatitude = {lat}\nlongitude = {lon}\n\
             low_watermark = 0.5\nhigh_watermark = 0.9\n\
             [[regions.nodes]]\nname = \"{name}-1\"\nipv4 = \"{ip}\"\n"
        ));
    }
    std::fs::write(dir.join("dns.toml"), config).unwrap();
    Proc::start(&["dns", "--config", "dns.toml"], dir, 3)
}

fn proxy(
    dir: &std::path::Path,
    region: &str,
    ip: &str,
    port: u16,
    max_rps: u32,
    origin: SocketAddr,
    control: SocketAddr,
) -> Proc {
    let config = format!(
        r#"[node]
name = "{region}-1"
region = "{region}"
workers = 1
[node.capacity]
max_rps = {max_rps}

[listen]
http = ["{ip}:{port}"]
admin = "{ip}:0"

[reports]
dns = ["http://{control}"]
key_file = "report.key"
interval = "250ms"

[[routes]]
hosts = ["www.example.test"]
upstream = "web"

[upstreams.web]
[[upstreams.web.origins]]
name = "{region}-web"
addr = "{origin}"
"#
    );
    let file = format!("{region}.toml");
    std::fs::write(dir.join(&file), config).unwrap();
    Proc::start(&["proxy", "--config", &file], dir, 2)
}

fn metric(control: SocketAddr, series: &str) -> f64 {
    common::metric(control, series).unwrap_or(f64::NAN)
}

/// A client network: its cached answer and when it runs out.
struct Network {
    ecs: String,
    answer: Option<(IpAddr, Instant)>,
}

/// One point of the printed curve.
struct Point {
    at_ms: u128,
    eu_utilisation: f64,
    shed_share: f64,
    /// The share of the last second's requests that went to us.
    to_us: f64,
}

#[test]
fn a_region_past_its_high_watermark_sheds_to_a_rest_point_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("report.key"), KEY).unwrap();
    let d = dns(dir.path());
    let (server, control) = (d.addr("UDP"), d.addr("HTTP (control)"));
    let origins = start_origins(dir.path(), &["eu-web", "us-web"]);
    let port = shared_port();
    let _eu = proxy(
        dir.path(),
        "eu",
        "127.0.0.11",
        port,
        120,
        origins.addrs[0],
        control,
    );
    let _us = proxy(
        dir.path(),
        "us",
        "127.0.0.12",
        port,
        2000,
        origins.addrs[1],
        control,
    );
    common::wait_for(Duration::from_secs(10), "both regions' load known", || {
        let eu = metric(control, "geoedge_dns_region_utilisation{region=\"eu\"}");
        let us = metric(control, "geoedge_dns_region_utilisation{region=\"us\"}");
        (eu.is_finite() && us.is_finite()).then_some(())
    });

    let mut networks: Vec<Network> = (0..NETWORKS)
        .map(|i| Network {
            ecs: format!("10.9.{i}.0"),
            answer: None,
        })
        .collect();
    let rt = runtime();
    let started = Instant::now();
    let mut curve: Vec<Point> = Vec::new();
    let mut recent: Vec<(Instant, bool)> = Vec::new();
    let mut failures = 0usize;
    // Runs the clients for `secs` with the first `active` networks sending, sampling the
    // curve every 500 ms. Bounded: at most secs × active × RATE requests.
    let mut drive = |secs: u64, active: usize, curve: &mut Vec<Point>| {
        let until = Instant::now() + Duration::from_secs(secs);
        let slot = Duration::from_millis(1000 / RATE / 10);
        let mut turn = 0usize;
        let mut next_sample = Instant::now();
        while Instant::now() < until {
            let tick = Instant::now();
            // A tenth of the networks per slot: the load arrives evenly, not in bursts.
            let due: Vec<usize> = (0..active).filter(|i| i % 10 == turn % 10).collect();
            turn += 1;
            let mut targets = Vec::new();
            for &i in &due {
                let n = &mut networks[i];
                let fresh = n.answer.filter(|(_, until)| *until > Instant::now());
                let ip = match fresh {
                    Some((ip, _)) => ip,
                    None => {
                        let m = udp(
                            server,
                            &Ask::new("www.example.test.", RecordType::A).ecs(&n.ecs, 24),
                        );
                        let ip = *addresses(&m).first().expect("an address");
                        n.answer = Some((ip, Instant::now() + Duration::from_secs(1)));
                        ip
                    }
                };
                targets.push(SocketAddr::new(ip, port));
            }
            let results = rt.block_on(async {
                let mut tasks = Vec::new();
                for t in targets {
                    tasks.push(tokio::spawn(async move {
                        let ok = h::get(t, "www.example.test", "/")
                            .await
                            .is_ok_and(|r| r.status == 200);
                        (t.ip(), ok)
                    }));
                }
                let mut out = Vec::new();
                for t in tasks {
                    out.push(t.await.unwrap());
                }
                out
            });
            for (ip, ok) in results {
                if !ok {
                    failures += 1;
                }
                recent.push((Instant::now(), ip.to_string() == "127.0.0.12"));
            }
            if Instant::now() >= next_sample {
                next_sample += Duration::from_millis(500);
                recent.retain(|(at, _)| at.elapsed() < Duration::from_secs(1));
                let to_us =
                    recent.iter().filter(|(_, us)| *us).count() as f64 / recent.len().max(1) as f64;
                curve.push(Point {
                    at_ms: started.elapsed().as_millis(),
                    eu_utilisation: metric(
                        control,
                        "geoedge_dns_region_utilisation{region=\"eu\"}",
                    ),
                    shed_share: metric(control, "geoedge_dns_region_shed_share{region=\"eu\"}"),
                    to_us,
                });
            }
            if let Some(left) = slot.checked_sub(tick.elapsed()) {
                std::thread::sleep(left);
            }
        }
    };

    // Full load for 16 s: the share climbs (5 points per 250 ms at most, and a TTL behind)
    // to the rest point.
    drive(16, NETWORKS, &mut curve);
    let loaded = curve.len();
    // Load falls to a fifth: eu's utilisation, unshed, would be 0.4, under its low watermark.
    drive(8, NETWORKS / 5, &mut curve);

    println!("   ms  eu-util  shed-share  to-us");
    for p in &curve {
        println!(
            "{:>5}  {:>7.2}  {:>10.3}  {:>5.2}",
            p.at_ms, p.eu_utilisation, p.shed_share, p.to_us
        );
    }
    assert_eq!(failures, 0, "every request was served");

    // Settled: the last 4 s of the loaded phase (8 samples).
    let settled = &curve[loaded - 8..loaded];
    let shares: Vec<f64> = settled.iter().map(|p| p.shed_share).collect();
    let swing = shares.iter().cloned().fold(f64::MIN, f64::max)
        - shares.iter().cloned().fold(f64::MAX, f64::min);
    let mean_share = shares.iter().sum::<f64>() / shares.len() as f64;
    println!("settled: share {mean_share:.3} (swing {swing:.3})");
    assert!(
        swing <= 0.05,
        "the share still swings by {swing:.3}: {shares:?}"
    );
    assert!(
        (0.45..=0.8).contains(&mean_share),
        "the share settles near the rest point 0.625, not at {mean_share:.3}"
    );
    for p in settled {
        assert!(
            p.eu_utilisation < 0.9,
            "eu at {:.2} at {} ms, over its high watermark after settling",
            p.eu_utilisation,
            p.at_ms
        );
        assert!(
            p.to_us > 0.3,
            "the clients follow the answers: {:.2} to us",
            p.to_us
        );
    }
    // Within a bounded number of intervals: under the high watermark by 10 s (40 of the
    // DNS server's 250 ms steps).
    let first_under = curve
        .iter()
        .position(|p| p.shed_share > 0.3 && p.eu_utilisation < 0.9)
        .map(|i| curve[i].at_ms);
    assert!(
        first_under.is_some_and(|ms| ms < 10_000),
        "eu came under its high watermark at {first_under:?} ms"
    );
    // Recovered: the share gone, the clients back in eu.
    let last = curve.last().unwrap();
    assert!(
        last.shed_share < 0.05,
        "share {:.3} after the load fell",
        last.shed_share
    );
    assert!(last.to_us < 0.1, "{:.2} still sent to us", last.to_us);
}
