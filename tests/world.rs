//! The loop closed: a DNS server and three proxy nodes on 127.0.0.11-13 with their
//! origins, all real processes; signed reports, failover and recovery, forged reports.
//! (The demo's own run is `tests/demo.rs`.)

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::dns::{addresses, udp, Ask};
use common::http::{self as h, runtime};
use common::{build_geo, Proc};
use geoedge::health::report::{Report, ReportKey, SIGNATURE_HEADER};
use hickory_proto::rr::RecordType;

const KEY: &str = "test-report-key-0123456789abcdef";
const WWW: &str = "www.example.test.";
const ZONE: &str = "$ORIGIN example.test.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 127.0.0.1\n";

const REGIONS: [(&str, &str, f64, f64); 3] = [
    ("eu", "127.0.0.11", 50.1109, 8.6821),
    ("us", "127.0.0.12", 39.0438, -77.4874),
    ("ap", "127.0.0.13", 1.3521, 103.8198),
];

struct World {
    dir: tempfile::TempDir,
    dns: Proc,
    origins: Vec<Proc>,
    proxies: Vec<Option<Proc>>,
}

fn dns_config(extra_health: &str) -> String {
    let mut c = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ncontrol = \"127.0.0.1:0\"\nworkers = 1\n\n[geoip]\ndatabase = \"geo.mmdb\"\n\n\
         [health]\nreport_key_file = \"report.key\"\nadmin_token_file = \"admin.token\"\n{extra_health}\n\n\
         [[zones]]\norigin = \"example.test.\"\nfile = \"zone.txt\"\n[[zones.steered]]\nname = \"www\"\n"
    );
    for (name, ip, lat, lon) in REGIONS {
        c.push_str(&format!(
            "\n[[regions]]\nname = \"{name}\"\nlatitude = {lat}\nlongitude = {lon}\n[[regions.nodes]]\nname = \"{name}-1\"\nipv4 = \"{ip}\"\n"
        ));
    }
    c
}

fn proxy_config(region: &str, ip: &str, origin: SocketAddr, control: SocketAddr) -> String {
    format!(
        r#"[node]
name = "{region}-1"
region = "{region}"
workers = 1
[listen]
http = ["{ip}:0"]
admin = "{ip}:0"
[reports]
dns = ["http://{control}"]
key_file = "report.key"
[[routes]]
hosts = ["*"]
upstream = "web"
[upstreams.web]
connect_timeout = "300ms"
[[upstreams.web.origins]]
name = "{region}-web-1"
addr = "{origin}"
[upstreams.web.health_check]
interval = "100ms"
timeout = "80ms"
rise = 2
fall = 2
"#
    )
}

/// The DNS server's files for a world: GeoIP database, zone, report key, admin token and
/// the given config.
fn write_dns_files(d: &Path, config: &str) {
    build_geo(d, "");
    std::fs::write(d.join("zone.txt"), ZONE).unwrap();
    std::fs::write(d.join("report.key"), KEY).unwrap();
    std::fs::write(d.join("admin.token"), "test-admin-token-0123456789").unwrap();
    std::fs::write(d.join("dns.toml"), config).unwrap();
}

impl World {
    fn start() -> World {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write_dns_files(d, &dns_config(""));
        let dns = Proc::start(&["dns", "--config", "dns.toml"], d, 3);
        let mut world = World {
            dir,
            dns,
            origins: Vec::new(),
            proxies: Vec::new(),
        };
        for (i, (region, _, _, _)) in REGIONS.iter().enumerate() {
            let name = format!("{region}-web-1");
            let o = Proc::start(
                &["origin", "--listen", "127.0.0.1:0", "--name", &name],
                world.dir.path(),
                1,
            );
            world.origins.push(o);
            world.proxies.push(None);
            world.start_proxy(i);
        }
        world
    }

    fn control(&self) -> SocketAddr {
        self.dns.addr("HTTP (control)")
    }

    fn start_proxy(&mut self, i: usize) {
        let (region, ip, _, _) = REGIONS[i];
        let origin = self.origins[i].addr(&format!("HTTP (origin {region}-web-1)"));
        let file = format!("proxy-{region}.toml");
        std::fs::write(
            self.dir.path().join(&file),
            proxy_config(region, ip, origin, self.control()),
        )
        .unwrap();
        self.proxies[i] = Some(Proc::start(
            &["proxy", "--config", &file],
            self.dir.path(),
            2,
        ));
    }

    fn kill_proxy(&mut self, i: usize) {
        if let Some(mut p) = self.proxies[i].take() {
            // SIGKILL: no goodbye, the reports just stop.
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    fn answer(&self, subnet: &str) -> Vec<String> {
        let m = udp(
            self.dns.addr("UDP"),
            &Ask::new(WWW, RecordType::A).ecs(subnet, 24),
        );
        addresses(&m).iter().map(|a| a.to_string()).collect()
    }

    /// Polls until `subnet` is answered with `ip`; returns how long that took.
    fn wait_answer(&self, subnet: &str, ip: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if self.answer(subnet) == vec![ip.to_string()] {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "{subnet} not answered with {ip} within {limit:?}: {:?}\n{}",
                self.answer(subnet),
                self.status()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn status(&self) -> String {
        common::http_get(self.control(), "/status?format=text").1
    }

    fn metrics(&self) -> String {
        common::http_get(self.control(), "/metrics").1
    }
}

#[test]
fn failover_and_recovery_follow_node_and_origin_health() {
    let mut w = World::start();
    // Every region's prefix gets its own region once reports flow.
    w.wait_answer("192.0.2.0", "127.0.0.11", Duration::from_secs(5));
    w.wait_answer("198.51.100.0", "127.0.0.12", Duration::from_secs(5));
    w.wait_answer("203.0.113.0", "127.0.0.13", Duration::from_secs(5));

    // Kill the eu node: eu clients go to the next nearest region (us).
    w.kill_proxy(0);
    let away = w.wait_answer("192.0.2.0", "127.0.0.12", Duration::from_secs(5));
    // Bring it back: eu clients return.
    w.start_proxy(0);
    let back = w.wait_answer("192.0.2.0", "127.0.0.11", Duration::from_secs(5));
    println!("failover: steered away {away:?} after SIGKILL, back {back:?} after restart");
    assert!(
        w.status().contains("eu       eu-1         up"),
        "{}",
        w.status()
    );

    // Kill the origin behind us: the us node stays up but reports it cannot serve, and
    // DNS moves us clients away (Ashburn's next nearest is Frankfurt).
    let _ = w.origins[1].child.kill();
    let _ = w.origins[1].child.wait();
    let moved = w.wait_answer("198.51.100.0", "127.0.0.11", Duration::from_secs(5));
    println!("us origins dead: us clients moved after {moved:?}");
    let status = w.status();
    assert!(status.contains("node cannot serve"), "{status}");
    let proxy = w.proxies[1].as_ref().unwrap();
    let hz = common::http_get(proxy.addr("HTTP (admin)"), "/healthz");
    assert_eq!(hz.0, 503, "the us proxy itself says it cannot serve");

    let metrics = w.metrics();
    assert!(metrics.contains("geoedge_dns_reports_total"), "{metrics}");
    assert!(
        metrics.contains(r#"geoedge_dns_region_up{region="us"} 0"#),
        "{metrics}"
    );
}

fn signed_post(w: &World, body: &[u8], signature: Option<String>) -> u16 {
    let rt = runtime();
    rt.block_on(async {
        let mut headers = vec![("content-type", "application/json".to_string())];
        if let Some(s) = signature {
            headers.push((SIGNATURE_HEADER, s));
        }
        let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut s = h::connect(w.control()).await;
        h::send(&mut s, h::request("POST", "dns", "/report", &hs, body))
            .await
            .unwrap()
            .status
    })
}

fn report(node: &str, region: &str, can_serve: bool, seq: u64, ts: u64) -> Vec<u8> {
    serde_json::to_vec(&Report {
        node: node.into(),
        region: region.into(),
        addresses: vec![],
        can_serve,
        healthy_origins: 0,
        total_origins: 1,
        in_flight: 0,
        load: 0.0,
        seq,
        timestamp_ms: ts,
        services: Default::default(),
        capacity: None,
    })
    .unwrap()
}

#[test]
fn forged_replayed_stale_and_unknown_reports_change_nothing() {
    let w = World::start();
    w.wait_answer("192.0.2.0", "127.0.0.11", Duration::from_secs(5));
    let key = ReportKey::from_secret(KEY.as_bytes());
    let forger = ReportKey::from_secret(b"not-the-real-key-at-all");
    let now = geoedge::process::clock::unix_ms();
    // Far in the future, so no real report from the node can beat it.
    let seq = u64::MAX / 2;

    let body = report("eu-1", "eu", false, seq, now);
    assert_eq!(signed_post(&w, &body, None), 401, "unsigned");
    assert_eq!(
        signed_post(&w, &body, Some(forger.sign(&body))),
        401,
        "forged"
    );
    let stale = report("eu-1", "eu", false, seq, now - 60_000);
    assert_eq!(
        signed_post(&w, &stale, Some(key.sign(&stale))),
        401,
        "stale"
    );
    let unknown = report("mars-1", "eu", false, seq, now);
    assert_eq!(
        signed_post(&w, &unknown, Some(key.sign(&unknown))),
        401,
        "unknown node"
    );
    let wrong_region = report("eu-1", "ap", false, seq, now);
    assert_eq!(
        signed_post(&w, &wrong_region, Some(key.sign(&wrong_region))),
        401,
        "node in another region"
    );
    let old_seq = report("eu-1", "eu", false, 1, now);
    assert_eq!(
        signed_post(&w, &old_seq, Some(key.sign(&old_seq))),
        401,
        "replayed sequence"
    );
    assert_eq!(
        signed_post(&w, b"{}", Some(key.sign(b"{}"))),
        401,
        "malformed"
    );

    // None of that moved eu clients.
    for _ in 0..5 {
        assert_eq!(w.answer("192.0.2.0"), vec!["127.0.0.11".to_string()]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = w.metrics();
    for reason in [
        "unsigned",
        "bad_signature",
        "stale",
        "unknown_node",
        "replayed",
        "malformed",
    ] {
        assert!(
            m.contains(&format!(
                "geoedge_dns_reports_rejected_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted:\n{m}"
        );
    }

    // A genuine, signed, fresh report is accepted; sent twice, the copy is a replay.
    let genuine = report("eu-1", "eu", true, seq, now);
    assert_eq!(signed_post(&w, &genuine, Some(key.sign(&genuine))), 204);
    assert_eq!(signed_post(&w, &genuine, Some(key.sign(&genuine))), 401);
}

#[test]
fn flapping_verdicts_do_not_flip_answers() {
    let w = World::start();
    w.wait_answer("192.0.2.0", "127.0.0.11", Duration::from_secs(5));
    let key = ReportKey::from_secret(KEY.as_bytes());
    let mut seq = u64::MAX / 2;
    // Alternate "cannot serve" and "can serve" faster than fall (2): never two bad in a row.
    for i in 0..20 {
        seq += 1;
        let body = report(
            "eu-1",
            "eu",
            i % 2 == 1,
            seq,
            geoedge::process::clock::unix_ms(),
        );
        assert_eq!(signed_post(&w, &body, Some(key.sign(&body))), 204);
        assert_eq!(
            w.answer("192.0.2.0"),
            vec!["127.0.0.11".to_string()],
            "flipped at report {i}"
        );
    }
}

#[test]
fn operator_override_moves_a_region_and_expires() {
    let w = World::start();
    w.wait_answer("203.0.113.0", "127.0.0.13", Duration::from_secs(5));
    let out = std::process::Command::new(common::bin())
        .args([
            "force",
            "--dns",
            &w.control().to_string(),
            "--token-file",
            "admin.token",
            "--region",
            "ap",
            "down",
            "--for",
            "1s",
        ])
        .current_dir(w.dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Singapore's next nearest is Frankfurt.
    w.wait_answer("203.0.113.0", "127.0.0.11", Duration::from_secs(2));
    // The override expires and ap answers again.
    w.wait_answer("203.0.113.0", "127.0.0.13", Duration::from_secs(5));
    // A wrong token is refused.
    std::fs::write(w.dir.path().join("bad.token"), "wrong-token-wrong-token").unwrap();
    let out = std::process::Command::new(common::bin())
        .args([
            "force",
            "--dns",
            &w.control().to_string(),
            "--token-file",
            "bad.token",
            "--node",
            "ap-1",
            "down",
        ])
        .current_dir(w.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    // `geoedge status` prints the table.
    let out = std::process::Command::new(common::bin())
        .args(["status", "--dns", &w.control().to_string()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("ap-1") && table.contains("REASON"),
        "{table}"
    );
}

#[test]
fn dynamic_nodes_join_by_signed_report_where_the_region_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = dns_config("").replacen(
        "name = \"eu\"\n",
        "name = \"eu\"\ndynamic_nodes = true\n",
        1,
    );
    write_dns_files(d, &config);
    let dns = Proc::start(&["dns", "--config", "dns.toml"], d, 3);
    let w = World {
        dir,
        dns,
        origins: Vec::new(),
        proxies: Vec::new(),
    };
    let key = ReportKey::from_secret(KEY.as_bytes());
    let now = geoedge::process::clock::unix_ms();
    let mut joined = serde_json::from_slice::<Report>(&report("eu-9", "eu", true, 1, now)).unwrap();
    joined.addresses = vec!["127.0.0.19".parse().unwrap()];
    let body = serde_json::to_vec(&joined).unwrap();
    assert_eq!(
        signed_post(&w, &body, Some(key.sign(&body))),
        204,
        "a new node in a dynamic region"
    );
    // Frankfurt clients now get the eu nodes, the new one among them, while it reports.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seq = 1;
    loop {
        seq += 1;
        let mut again = joined.clone();
        again.seq = seq;
        again.timestamp_ms = geoedge::process::clock::unix_ms();
        let body = serde_json::to_vec(&again).unwrap();
        assert_eq!(signed_post(&w, &body, Some(key.sign(&body))), 204);
        let m = udp(
            w.dns.addr("UDP"),
            &Ask::new(WWW, RecordType::A).ecs("192.0.2.0", 24),
        );
        if addresses(&m).contains(&"127.0.0.19".parse().unwrap()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dynamic node never answered: {:?}",
            addresses(&m)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(w.status().contains("eu-9"), "{}", w.status());
    // A region without dynamic_nodes refuses strangers.
    let mut stranger = joined.clone();
    stranger.node = "us-9".into();
    stranger.region = "us".into();
    let body = serde_json::to_vec(&stranger).unwrap();
    assert_eq!(signed_post(&w, &body, Some(key.sign(&body))), 401);
    // A report without an address cannot join.
    let mut nowhere = joined.clone();
    nowhere.node = "eu-10".into();
    nowhere.addresses.clear();
    let body = serde_json::to_vec(&nowhere).unwrap();
    assert_eq!(signed_post(&w, &body, Some(key.sign(&body))), 401);
}

#[test]
fn a_restarted_dns_server_rebuilds_health_from_reports_within_a_second() {
    // Fixed ports, so the proxies' reports reach the restarted server.
    let (dns_port, control_port) = (common::free_dual_port(), common::free_dual_port());
    let mut w = World::start();
    let config = dns_config("")
        .replace(
            "listen = [\"127.0.0.1:0\"]",
            &format!("listen = [\"127.0.0.1:{dns_port}\"]"),
        )
        .replace(
            "control = \"127.0.0.1:0\"",
            &format!("control = \"127.0.0.1:{control_port}\""),
        );
    std::fs::write(w.dir.path().join("dns-fixed.toml"), &config).unwrap();
    let fixed = Proc::start(&["dns", "--config", "dns-fixed.toml"], w.dir.path(), 3);
    // Point every proxy at the fixed-port server.
    let old_dns = std::mem::replace(&mut w.dns, fixed);
    drop(old_dns);
    for i in 0..3 {
        w.kill_proxy(i);
        w.start_proxy(i);
    }
    let answer = |subnet: &str| {
        let m = udp(
            format!("127.0.0.1:{dns_port}").parse().unwrap(),
            &Ask::new(WWW, RecordType::A).ecs(subnet, 24),
        );
        addresses(&m)
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
    };
    // Take us down through its origin, so its state is something reports must rebuild.
    let _ = w.origins[1].child.kill();
    let _ = w.origins[1].child.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while answer("198.51.100.0") != vec!["127.0.0.11".to_string()] {
        assert!(Instant::now() < deadline, "us never went down");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Restart the DNS server: its health is rebuilt from the next reports.
    let _ = w.dns.child.kill();
    let _ = w.dns.child.wait();
    let restarted = Instant::now();
    w.dns = Proc::start(&["dns", "--config", "dns-fixed.toml"], w.dir.path(), 3);
    loop {
        let status = w.status();
        let rebuilt = status.contains("us       us-1         DOWN  node cannot serve")
            && status.contains("eu       eu-1         up    healthy");
        if rebuilt && answer("198.51.100.0") == vec!["127.0.0.11".to_string()] {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "health not rebuilt:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "DNS restart: health rebuilt from reports after {:?}",
        restarted.elapsed()
    );
}

/// A TCP origin that accepts (and drops) connections until `stop` is set, then closes
/// its port.
fn tcp_origin(stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    addr
}

#[test]
fn a_steered_name_that_needs_a_service_goes_only_where_that_service_is_up() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = dns_config("").replacen(
        "name = \"www\"\n",
        "name = \"www\"\n[[zones.steered]]\nname = \"files\"\nservices = [\"sftp\"]\n",
        1,
    );
    write_dns_files(d, &config);
    let dns = Proc::start(&["dns", "--config", "dns.toml"], d, 3);
    let control = dns.addr("HTTP (control)");
    let mut keep = Vec::new();
    let mut stops = Vec::new();
    for (region, ip, _, _) in REGIONS.iter().take(2) {
        let web = Proc::start(
            &[
                "origin",
                "--listen",
                "127.0.0.1:0",
                "--name",
                &format!("{region}-web-1"),
            ],
            d,
            1,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let ssh = tcp_origin(stop.clone());
        let mut config = proxy_config(
            region,
            ip,
            web.addr(&format!("HTTP (origin {region}-web-1)")),
            control,
        );
        config = config.replace(
            "key_file = \"report.key\"",
            "key_file = \"report.key\"\ninterval = \"50ms\"",
        );
        config.push_str(&format!(
            "\n[[streams]]\nname = \"sftp\"\nmode = \"tcp\"\nlisten = [\"{ip}:0\"]\nupstream = \"ssh\"\n\
             [upstreams.ssh]\nprotocol = \"tcp\"\norigins = [{{ name = \"{region}-ssh\", addr = \"{ssh}\" }}]\n\
             [upstreams.ssh.health_check]\ninterval = \"50ms\"\ntimeout = \"50ms\"\nrise = 1\nfall = 1\n"
        ));
        let file = format!("proxy-{region}.toml");
        std::fs::write(d.join(&file), config).unwrap();
        keep.push(web);
        keep.push(Proc::start(&["proxy", "--config", &file], d, 3));
        stops.push(stop);
    }
    let ask = |name: &str| -> Vec<String> {
        let m = udp(
            dns.addr("UDP"),
            &Ask::new(name, RecordType::A).ecs("192.0.2.0", 24),
        );
        addresses(&m).iter().map(|a| a.to_string()).collect()
    };
    let wait = |name: &str, ip: &str| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while ask(name) != vec![ip.to_string()] {
            assert!(
                Instant::now() < deadline,
                "{name} not answered with {ip}: {:?}",
                ask(name)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    // Frankfurt's clients get eu for both names while its sftp origin is up.
    wait("files.example.test.", "127.0.0.11");
    wait(WWW, "127.0.0.11");
    // eu's sftp origin goes away: eu reports the service down; only the name that needs
    // it moves.
    stops[0].store(true, Ordering::Relaxed);
    wait("files.example.test.", "127.0.0.12");
    assert_eq!(
        ask(WWW),
        vec!["127.0.0.11".to_string()],
        "www needs no service"
    );
    drop(keep);
}
