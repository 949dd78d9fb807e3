//! Gradual shedding with a real DNS server: nodes report their load against their
//! capacity in signed reports; a region between its watermarks sends a share of its
//! client networks to the next region, the share moving a step per report interval, and
//! takes them back when the load falls.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dns::{addresses, udp, Ask};
use common::http::{self as h, runtime};
use common::{build_geo, Proc};
use geoedge::health::report::{NodeLoad, Report, ReportKey, SIGNATURE_HEADER};
use hickory_proto::rr::RecordType;

const KEY: &str = "test-report-key-0123456789abcdef";
const ZONE: &str = "$ORIGIN example.test.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 127.0.0.1\n";

fn dns(dir: &std::path::Path) -> Proc {
    build_geo(dir, "");
    std::fs::write(dir.join("zone.txt"), ZONE).unwrap();
    std::fs::write(dir.join("report.key"), KEY).unwrap();
    let mut config = String::from(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ncontrol = \"127.0.0.1:0\"\nworkers = 1\n\
         [geoip]\ndatabase = \"geo.mmdb\"\n[health]\nreport_key_file = \"report.key\"\n\
         [[zones]]\norigin = \"example.test.\"\nfile = \"zone.txt\"\n[[zones.steered]]\nname = \"www\"\nttl = 1\n",
    );
    for (name, ip, lat, lon, marks) in [
        (
            "eu",
            "127.0.0.11",
            50.11,
            8.68,
            "low_watermark = 0.5\nhigh_watermark = 0.9\n",
        ),
        (
            "us",
            "127.0.0.12",
            39.04,
            -77.49,
            "low_watermark = 0.5\nhigh_watermark = 0.9\n",
        ),
    ] {
        config.push_str(&format!(
            "[[regions]]\nname = \"{name}\"\nlatitude = {lat}\nlongitude = {lon}\n{marks}\
             [[regions.nodes]]\nname = \"{name}-1\"\nipv4 = \"{ip}\"\n"
        ));
    }
    std::fs::write(dir.join("dns.toml"), config).unwrap();
    Proc::start(&["dns", "--config", "dns.toml"], dir, 3)
}

/// Posts a signed report for each (node, region) every 100 ms until `stop`. `load[i]` is
/// the node's demand (per mille of `max_in_flight = 1000`): what it would carry unshed. Its
/// report says the demand less the share its region sheds (where it `follows`), as if the moved clients had
/// gone (at once: the resolver caches of `tests/closed_loop.rs` are not simulated here).
fn reporter(
    control: SocketAddr,
    nodes: Vec<(&'static str, &'static str, bool)>,
    load: Arc<Vec<AtomicU64>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let key = ReportKey::from_secret(KEY.as_bytes());
        let rt = runtime();
        let mut seq = 1u64;
        while !stop.load(Ordering::Relaxed) {
            for (i, (node, region, follows)) in nodes.iter().enumerate() {
                seq += 1;
                let shed = common::metric(
                    control,
                    &format!("geoedge_dns_region_shed_share{{region=\"{region}\"}}"),
                )
                .unwrap_or(0.0)
                    * f64::from(u8::from(*follows));
                let in_flight = (load[i].load(Ordering::Relaxed) as f64 * (1.0 - shed)) as u64;
                let report = Report {
                    node: node.to_string(),
                    region: region.to_string(),
                    addresses: vec![],
                    can_serve: true,
                    healthy_origins: 1,
                    total_origins: 1,
                    in_flight,
                    load: 0.0,
                    seq,
                    timestamp_ms: geoedge::process::clock::unix_ms(),
                    services: Default::default(),
                    capacity: Some(NodeLoad {
                        rps: 0.0,
                        in_flight,
                        connections: 0,
                        cpu: 0.0,
                        max_rps: None,
                        max_in_flight: Some(1000),
                    }),
                };
                let body = serde_json::to_vec(&report).unwrap();
                let signature = key.sign(&body);
                rt.block_on(async {
                    let mut s = h::connect(control).await;
                    let headers = [
                        ("content-type", "application/json"),
                        (SIGNATURE_HEADER, signature.as_str()),
                    ];
                    let r = h::send(
                        &mut s,
                        h::request("POST", "dns", "/report", &headers, &body),
                    )
                    .await;
                    assert_eq!(r.unwrap().status, 204);
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// The share of 400 client networks (not in the GeoIP database: the default order puts
/// eu first) answered with us.
fn moved_share(server: SocketAddr) -> f64 {
    let mut moved = 0;
    for i in 0..400u32 {
        let net = format!("10.{}.{}.0", i / 256, i % 256);
        let m = udp(
            server,
            &Ask::new("www.example.test.", RecordType::A).ecs(&net, 24),
        );
        let got: Vec<String> = addresses(&m).iter().map(|a| a.to_string()).collect();
        match got.as_slice() {
            [ip] if ip == "127.0.0.12" => moved += 1,
            [ip] if ip == "127.0.0.11" => {}
            other => panic!("{net}: {other:?}"),
        }
    }
    f64::from(moved) / 400.0
}

fn metric(control: SocketAddr, series: &str) -> f64 {
    common::metric(control, series).unwrap_or(f64::NAN)
}

#[test]
fn a_busy_region_sheds_a_stable_share_of_its_networks_and_takes_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dns(dir.path());
    let (server, control) = (d.addr("UDP"), d.addr("HTTP (control)"));
    let load = Arc::new(vec![AtomicU64::new(100), AtomicU64::new(100)]);
    let stop = Arc::new(AtomicBool::new(false));
    let posting = reporter(
        control,
        // us's load stays as set, whatever it sheds: below, it is made to look full.
        vec![("eu-1", "eu", true), ("us-1", "us", false)],
        load.clone(),
        stop.clone(),
    );
    common::wait_for(Duration::from_secs(5), "eu's utilisation known", || {
        (metric(control, "geoedge_dns_region_utilisation{region=\"eu\"}") == 0.1).then_some(())
    });
    assert_eq!(
        moved_share(server),
        0.0,
        "below the low watermark nobody moves"
    );

    // eu's demand at 1.4: shedding half of its networks leaves it at 0.7, halfway between
    // its watermarks, where the law sheds half: the rest point. The share climbs there a
    // bounded step per interval rather than jumping.
    load[0].store(1400, Ordering::Relaxed);
    let started = Instant::now();
    let mut curve = Vec::new();
    let settled = loop {
        let share = metric(control, "geoedge_dns_region_shed_share{region=\"eu\"}");
        curve.push((started.elapsed().as_millis(), share));
        if (share - 0.5).abs() <= 0.04 {
            break share;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "share never settled: {curve:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    println!("eu shed share over time (ms, share): {curve:?}");
    assert!(
        curve.len() >= 5,
        "the share climbed in steps, not at once: {curve:?}"
    );
    let first = moved_share(server);
    assert!(
        (first - settled).abs() < 0.1,
        "{first} of the networks moved at share {settled}"
    );
    // Stable: the same networks again.
    assert_eq!(
        moved_share(server),
        first,
        "the same networks, the same answers"
    );
    assert!(metric(control, "geoedge_dns_shed_moved_total{region=\"eu\"}") > 0.0);
    // `geoedge geo lookup --live` tells each network the answer the server gives it, and
    // why: shed from eu, or eu as the nearest.
    let mut explained_shed = 0;
    for i in 0..12u32 {
        let net = format!("10.0.{i}.1");
        let m = udp(
            server,
            &Ask::new("www.example.test.", RecordType::A).ecs(&net, 24),
        );
        let answered = addresses(&m)[0].to_string();
        let out = std::process::Command::new(common::bin())
            .args(["geo", "lookup", "--config", "dns.toml", "--live"])
            .arg(control.to_string())
            .arg(&net)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = text
            .lines()
            .find(|l| l.trim().starts_with("answer:"))
            .unwrap_or("");
        if answered == "127.0.0.12" {
            assert!(said.contains("answer: us, shed from eu"), "{net}: {text}");
            explained_shed += 1;
        } else {
            assert!(said.contains("answer: eu"), "{net}: {text}");
        }
    }
    assert!(
        explained_shed > 0,
        "some of the twelve networks are shed at share 0.5"
    );

    // us full as well: nobody is sent to a region past its high watermark.
    load[1].store(950, Ordering::Relaxed);
    common::wait_for(Duration::from_secs(5), "us seen full", || {
        (metric(control, "geoedge_dns_region_utilisation{region=\"us\"}") == 0.95).then_some(())
    });
    // (us's own clients would spill to eu now; these networks are eu's.)
    assert_eq!(
        moved_share(server),
        0.0,
        "no region with room: the nearest order stands"
    );
    assert!(metric(control, "geoedge_dns_shed_all_full_total") > 0.0);

    // The load falls: the share comes back to nothing.
    load[0].store(100, Ordering::Relaxed);
    load[1].store(100, Ordering::Relaxed);
    common::wait_for(Duration::from_secs(10), "the share back at 0", || {
        (metric(control, "geoedge_dns_region_shed_share{region=\"eu\"}") == 0.0).then_some(())
    });
    assert_eq!(moved_share(server), 0.0);
    stop.store(true, Ordering::Relaxed);
    posting.join().unwrap();
}
