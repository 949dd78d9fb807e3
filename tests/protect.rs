//! Protection and live operations end to end: rate limits, Basic auth, address lists,
//! request rules, DNS response rate limiting, reloads under load, GeoIP replacement, and
//! a graceful SIGTERM.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::dns::{addresses, udp, Ask};
use common::http::{self as h, runtime};
use common::{build_geo, http_get, Proc};
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

fn origin(dir: &Path, name: &str) -> (Proc, SocketAddr) {
    let p = Proc::start(
        &["origin", "--listen", "127.0.0.1:0", "--name", name],
        dir,
        1,
    );
    let a = p.addr(&format!("HTTP (origin {name})"));
    (p, a)
}

fn proxy_config(origin: SocketAddr, top: &str, route: &str) -> String {
    format!(
        r#"[node]
name = "p-1"
region = "p"
workers = 1
admin_token_file = "admin.token"
[listen]
http = ["127.0.0.1:0"]
admin = "127.0.0.1:0"
{top}
[[routes]]
hosts = ["www.example.test"]
upstream = "web"
{route}
[upstreams.web]
[[upstreams.web.origins]]
name = "o1"
addr = "{origin}"
"#
    )
}

struct World {
    dir: tempfile::TempDir,
    _origin: Proc,
    origin_addr: SocketAddr,
    proxy: Proc,
}

fn world(top: &str, route: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("admin.token"),
        "admin-token-0123456789abcdef",
    )
    .unwrap();
    let (o, addr) = origin(dir.path(), "o1");
    std::fs::write(
        dir.path().join("proxy.toml"),
        proxy_config(addr, top, route),
    )
    .unwrap();
    let proxy = Proc::start(&["proxy", "--config", "proxy.toml"], dir.path(), 2);
    World {
        dir,
        _origin: o,
        origin_addr: addr,
        proxy,
    }
}

const HOST: &str = "www.example.test";

#[test]
fn a_client_over_its_rate_gets_429_while_another_is_served() {
    let rt = runtime();
    let w = world("[rate_limit]\nper_client = { rps = 1, burst = 5 }", "");
    let http = w.proxy.addr("HTTP");
    rt.block_on(async {
        let mut statuses = Vec::new();
        let mut retry_after = None;
        for _ in 0..10 {
            let r = h::get_from("127.0.0.1".parse().unwrap(), http, HOST, "/", &[])
                .await
                .unwrap();
            if r.status == 429 {
                retry_after = r.header("retry-after");
            }
            statuses.push(r.status);
        }
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            5,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 429).count(),
            5,
            "{statuses:?}"
        );
        let secs: u64 = retry_after.expect("Retry-After on 429").parse().unwrap();
        assert!((1..=2).contains(&secs));
        // Another client address is unaffected.
        for _ in 0..5 {
            let r = h::get_from("127.0.0.2".parse().unwrap(), http, HOST, "/", &[])
                .await
                .unwrap();
            assert_eq!(r.status, 200);
        }
    });
}

#[test]
fn rate_limit_memory_stays_bounded_under_a_flood_of_addresses() {
    let rt = runtime();
    let w = world(
        "[rate_limit]\nper_client = { rps = 100, burst = 100 }\nmax_tracked_clients = 100\n[forwarding]\ntrusted_proxies = [\"127.0.0.0/8\"]",
        "",
    );
    let http = w.proxy.addr("HTTP");
    rt.block_on(async {
        let mut s = h::connect(http).await;
        for i in 0..2000u32 {
            let xff = std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string();
            let r = h::send(
                &mut s,
                h::request("GET", HOST, "/", &[("x-forwarded-for", &xff)], b""),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200);
        }
        let tracked = common::metric(
            w.proxy.addr("HTTP (admin)"),
            "geoedge_proxy_rate_limit_clients",
        )
        .expect("the rate limiter's client gauge");
        assert!(
            tracked > 0.0 && tracked <= 100.0,
            "{tracked} clients remembered"
        );
    });
}

fn hash(password: &str) -> String {
    let out = common::run_with_stdin(
        common::bin(),
        &["hash-password"],
        format!("{password}\n").as_bytes(),
    );
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn basic_auth_lets_the_right_user_in_and_nobody_else() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, format!("alice:{}\n", hash("wonderland"))).unwrap();
    let w = world(
        "",
        &format!(
            "auth = {{ realm = \"staff\", users_file = \"{}\" }}",
            users.display()
        ),
    );
    let http = w.proxy.addr("HTTP");
    rt.block_on(async {
        // alice:wonderland
        let ok = h::get_with(
            http,
            HOST,
            "/_origin/echo",
            &[("authorization", "Basic YWxpY2U6d29uZGVybGFuZA==")],
        )
        .await
        .unwrap();
        assert_eq!(ok.status, 200);
        assert!(
            !ok.text().to_lowercase().contains("authorization"),
            "credentials not forwarded: {}",
            ok.text()
        );
        for header in [
            Some("Basic YWxpY2U6d3Jvbmc="),         // alice:wrong
            Some("Basic bWFsbG9yeTp3b25kZXJsYW5k"), // mallory:wonderland
            Some("Basic %%%"),
            Some("Digest abc"),
            None,
        ] {
            let hs: Vec<(&str, &str)> = header
                .map(|v| vec![("authorization", v)])
                .unwrap_or_default();
            let r = h::get_with(http, HOST, "/", &hs).await.unwrap();
            assert_eq!(r.status, 401, "{header:?}");
            assert_eq!(
                r.header("www-authenticate").as_deref(),
                Some("Basic realm=\"staff\", charset=\"UTF-8\"")
            );
        }
    });
}

#[test]
fn request_rules_and_address_lists_block_what_they_should_and_nothing_else() {
    let rt = runtime();
    let w = world(
        r#"[limits]
max_url_bytes = 200
max_query_params = 5
[[rules]]
name = "admin-closed"
action = "deny"
path_prefix = "/admin"
[[rules]]
name = "scanners"
action = "deny"
status = 418
header = "user-agent"
header_regex = "(?i)sqlmap"
[[rules]]
name = "sqli"
action = "deny"
query_regex = "(?i)union.+select"
[[rules]]
name = "tag-api"
action = "tag"
path_prefix = "/api"
"#,
        "deny = [\"127.0.0.9/32\"]",
    );
    let http = w.proxy.addr("HTTP");
    rt.block_on(async {
        let get = |path: &'static str, hs: Vec<(&'static str, &'static str)>| async move {
            h::get_with(http, HOST, path, &hs).await.unwrap().status
        };
        assert_eq!(get("/admin/users", vec![]).await, 403);
        assert_eq!(get("/", vec![("user-agent", "sqlmap/1.7")]).await, 418);
        assert_eq!(get("/search?q=1%20UNION%20SELECT%20pw", vec![]).await, 403);
        assert_eq!(get("/api/things", vec![]).await, 200, "tag only counts");
        assert_eq!(get("/", vec![("user-agent", "curl/8")]).await, 200);
        assert_eq!(get("/search?q=union", vec![]).await, 200);
        assert_eq!(get("/administrate", vec![]).await, 403, "prefix");
        assert_eq!(
            get("/?a=1&b=2&c=3&d=4&e=5&f=6", vec![]).await,
            400,
            "too many parameters"
        );
        let long: &'static str = Box::leak(format!("/{}", "x".repeat(300)).into_boxed_str());
        assert_eq!(get(long, vec![]).await, 414);
        let denied = h::get_from("127.0.0.9".parse().unwrap(), http, HOST, "/", &[])
            .await
            .unwrap();
        assert_eq!(denied.status, 403, "denied network");
        let m = h::get(w.proxy.addr("HTTP (admin)"), "admin", "/metrics")
            .await
            .unwrap()
            .text();
        assert!(
            m.contains(r#"geoedge_proxy_rule_matches_total{action="deny",rule="admin-closed"} 2"#),
            "{m}"
        );
        assert!(
            m.contains(r#"geoedge_proxy_rule_matches_total{action="tag",rule="tag-api"} 1"#),
            "{m}"
        );
        assert!(m.contains("geoedge_proxy_access_denied_total 1"), "{m}");
    });
}

#[test]
fn a_reload_under_steady_load_loses_no_request_and_a_bad_config_changes_nothing() {
    let rt = runtime();
    let w = world("", "");
    let http = w.proxy.addr("HTTP");
    let config_path = w.dir.path().join("proxy.toml");
    let good = std::fs::read_to_string(&config_path).unwrap();
    let pid = w.proxy.child.id().to_string();
    let mut failures = Vec::new();
    rt.block_on(async {
        let mut keep = h::connect(http).await;
        for i in 0..400 {
            if i == 100 {
                // A good change: another route, a different balancer.
                let changed = good.replace("[upstreams.web]", "[[routes]]\nhosts = [\"api.example.test\"]\nupstream = \"web\"\n[upstreams.web]\nbalance = \"round_robin\"");
                std::fs::write(&config_path, changed).unwrap();
                Command::new("kill").args(["-HUP", &pid]).status().unwrap();
            }
            if i == 250 {
                std::fs::write(&config_path, good.replace("upstream = \"web\"", "upstream = \"missing\"")).unwrap();
                Command::new("kill").args(["-HUP", &pid]).status().unwrap();
            }
            let r = if i % 2 == 0 {
                h::send(&mut keep, h::request("GET", HOST, "/", &[], b"")).await
            } else {
                h::get(http, HOST, "/").await
            };
            match r {
                Ok(r) if r.status == 200 => {}
                other => failures.push(format!("{i}: {other:?}")),
            }
        }
        // The good reload took effect (api.example.test routes now) and the bad one did not
        // replace it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = h::get(w.proxy.addr("HTTP (admin)"), "admin", "/metrics").await.unwrap().text();
            if m.contains(r#"geoedge_proxy_config_reloads_total{result="error"} 1"#) {
                assert!(m.contains(r#"geoedge_proxy_config_reloads_total{result="ok"} 1"#), "{m}");
                break;
            }
            assert!(Instant::now() < deadline, "reloads not counted: {m}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(h::get(http, "api.example.test", "/").await.unwrap().status, 200);
        // The admin endpoint reloads too, with the token; the bad file is still there.
        let mut s = h::connect(w.proxy.addr("HTTP (admin)")).await;
        let r = h::send(
            &mut s,
            h::request("POST", "admin", "/admin/reload", &[("authorization", "Bearer admin-token-0123456789abcdef")], b""),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 422, "{}", r.text());
        assert!(r.text().contains("missing"), "{}", r.text());
    });
    assert!(failures.is_empty(), "{failures:?}");
    assert!(w
        .proxy
        .stderr()
        .contains("previous configuration stays in force"));
}

#[test]
fn sigterm_lets_a_long_download_finish_then_exits_cleanly() {
    let rt = runtime();
    let mut w = world("[limits]\ndrain_timeout = \"10s\"", "");
    let http = w.proxy.addr("HTTP");
    let pid = w.proxy.child.id().to_string();
    rt.block_on(async {
        let download =
            tokio::spawn(
                async move { h::get(http, HOST, "/slow?delay_ms=1500&size=200000").await },
            );
        tokio::time::sleep(Duration::from_millis(300)).await;
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let r = download.await.unwrap().expect("the download finished");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 200_000);
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = w.proxy.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "proxy did not exit after draining"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let _ = w.origin_addr;
}

const ZONE: &str = "$ORIGIN example.test.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 127.0.0.1\n";

fn dns_config(extra: &str, default_order: &str) -> String {
    let mut c = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ncontrol = \"127.0.0.1:0\"\nworkers = 1\n[geoip]\ndatabase = \"geo.mmdb\"\n{extra}\n[steering]\ndefault_order = {default_order}\n[[zones]]\norigin = \"example.test.\"\nfile = \"zone.txt\"\n[[zones.steered]]\nname = \"www\"\n"
    );
    for (name, ip, lat, lon) in [
        ("eu", "127.0.0.11", 50.1, 8.7),
        ("us", "127.0.0.12", 39.0, -77.5),
        ("ap", "127.0.0.13", 1.35, 103.8),
    ] {
        c.push_str(&format!("[[regions]]\nname = \"{name}\"\nlatitude = {lat}\nlongitude = {lon}\n[[regions.nodes]]\nname = \"{name}-1\"\nipv4 = \"{ip}\"\n"));
    }
    c
}

#[test]
fn rrl_limits_a_burst_from_one_network_with_slip_and_spares_another() {
    let dir = tempfile::tempdir().unwrap();
    build_geo(dir.path(), "");
    std::fs::write(dir.path().join("zone.txt"), ZONE).unwrap();
    std::fs::write(
        dir.path().join("dns.toml"),
        dns_config(
            "[rrl]\nresponses_per_second = 5\nslip = 2",
            "[\"us\", \"eu\", \"ap\"]",
        ),
    )
    .unwrap();
    let dns = Proc::start(&["dns", "--config", "dns.toml"], dir.path(), 3);
    let server = dns.addr("UDP");
    let query = Ask::new("www.example.test.", RecordType::A)
        .message()
        .to_vec()
        .unwrap();
    let burst = |local: &str| {
        let sock = UdpSocket::bind(format!("{local}:0")).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        for _ in 0..40 {
            sock.send_to(&query, server).unwrap();
        }
        let (mut full, mut truncated) = (0, 0);
        let mut buf = [0u8; 4096];
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            let m = Message::from_vec(&buf[..n]).unwrap();
            if m.metadata.truncation {
                truncated += 1;
            } else {
                full += 1;
            }
        }
        (full, truncated)
    };
    let (full, truncated) = burst("127.0.0.1");
    assert_eq!(full, 5, "answers within the rate");
    assert!(
        (16..=18).contains(&truncated),
        "every second limited answer slips: {truncated}"
    );
    let (full, _) = burst("127.0.1.1");
    assert_eq!(full, 5, "another /24 has its own budget");
    // TCP is not limited: the slipped client retries there.
    let m = common::dns::tcp(
        dns.addr("TCP"),
        &Ask::new("www.example.test.", RecordType::A),
    );
    assert_eq!(addresses(&m).len(), 1);
}

#[test]
fn dns_reload_and_geoip_replacement_under_load_lose_no_query() {
    let dir = tempfile::tempdir().unwrap();
    build_geo(dir.path(), "");
    std::fs::write(dir.path().join("zone.txt"), ZONE).unwrap();
    std::fs::write(
        dir.path().join("dns.toml"),
        dns_config("", "[\"us\", \"eu\", \"ap\"]"),
    )
    .unwrap();
    let dns = Proc::start(&["dns", "--config", "dns.toml"], dir.path(), 3);
    let server = dns.addr("UDP");
    let pid = dns.child.id().to_string();
    let unknown = || {
        addresses(&udp(
            server,
            &Ask::new("www.example.test.", RecordType::A).ecs("8.8.8.0", 24),
        ))
    };
    let sao_paulo = || {
        addresses(&udp(
            server,
            &Ask::new("www.example.test.", RecordType::A).ecs("198.18.1.0", 24),
        ))
    };
    let ip = |s: &str| -> Vec<IpAddr> { vec![s.parse().unwrap()] };
    assert_eq!(unknown(), ip("127.0.0.12"));
    let mut answered = 0;
    for i in 0..300 {
        if i == 50 {
            std::fs::write(
                dir.path().join("dns.toml"),
                dns_config("", "[\"ap\", \"eu\", \"us\"]"),
            )
            .unwrap();
            Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        }
        if i == 150 {
            std::fs::write(dir.path().join("dns.toml"), "this is not toml [").unwrap();
            Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        }
        if i == 200 {
            // Sao Paulo moves to Sydney in a new database, written beside and renamed in.
            let tmp = dir.path().join("geo-new");
            std::fs::create_dir_all(&tmp).unwrap();
            build_geo(&tmp, "198.18.1.0/24 AU OC -33.87 151.21 Sydney-now");
            std::fs::rename(tmp.join("geo.mmdb"), dir.path().join("geo.mmdb")).unwrap();
        }
        if !unknown().is_empty() {
            answered += 1;
        }
    }
    assert_eq!(answered, 300, "every query answered through both reloads");
    assert_eq!(
        unknown(),
        ip("127.0.0.13"),
        "the good reload's default order"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while sao_paulo() != ip("127.0.0.13") {
        assert!(
            Instant::now() < deadline,
            "new GeoIP database not picked up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let m = http_get(dns.addr("HTTP (control)"), "/metrics").1;
    assert!(
        m.contains(r#"geoedge_dns_config_reloads_total{result="error"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"geoedge_dns_config_reloads_total{result="ok"} 1"#),
        "{m}"
    );
}

#[test]
fn connections_per_client_are_capped() {
    let rt = runtime();
    let w = world("[rate_limit]\nmax_connections_per_client = 2", "");
    let http = w.proxy.addr("HTTP");
    rt.block_on(async {
        let mut a = h::connect(http).await;
        let mut b = h::connect(http).await;
        assert_eq!(
            h::send(&mut a, h::request("GET", HOST, "/", &[], b""))
                .await
                .unwrap()
                .status,
            200
        );
        assert_eq!(
            h::send(&mut b, h::request("GET", HOST, "/", &[], b""))
                .await
                .unwrap()
                .status,
            200
        );
        // The third connection from the same address is closed at once.
        let third = h::get(http, HOST, "/").await;
        assert!(third.is_err(), "{third:?}");
        // Another address still gets in, and the first client again once one closes.
        let other = h::get_from("127.0.0.2".parse().unwrap(), http, HOST, "/", &[])
            .await
            .unwrap();
        assert_eq!(other.status, 200);
        drop(a);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if h::get(http, HOST, "/").await.is_ok_and(|r| r.status == 200) {
                break;
            }
            assert!(Instant::now() < deadline, "slot never freed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(b);
    });
}

#[test]
fn dns_tcp_connections_are_capped_and_idle_ones_closed() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    build_geo(dir.path(), "");
    std::fs::write(dir.path().join("zone.txt"), ZONE).unwrap();
    let config = dns_config("", "[\"us\", \"eu\", \"ap\"]").replace(
        "workers = 1",
        "workers = 1\nmax_tcp_connections = 2\ntcp_idle_timeout = \"500ms\"",
    );
    std::fs::write(dir.path().join("dns.toml"), config).unwrap();
    let dns = Proc::start(&["dns", "--config", "dns.toml"], dir.path(), 3);
    let tcp = dns.addr("TCP");
    // Two idle connections fill the slots; a third is closed at once.
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(tcp).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut third = std::net::TcpStream::connect(tcp).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let query = Ask::new("www.example.test.", RecordType::A)
        .message()
        .to_vec()
        .unwrap();
    let _ = third.write_all(&(query.len() as u16).to_be_bytes());
    let _ = third.write_all(&query);
    let mut buf = [0u8; 2];
    assert!(
        matches!(third.read(&mut buf), Ok(0) | Err(_)),
        "third connection is closed, not answered"
    );
    // The idle ones are closed after the idle timeout, freeing the slots.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if std::panic::catch_unwind(|| {
            common::dns::tcp(tcp, &Ask::new("www.example.test.", RecordType::A))
        })
        .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots never freed by the idle timeout"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(held);
    let m = http_get(dns.addr("HTTP (control)"), "/metrics").1;
    assert!(
        !m.contains("geoedge_dns_tcp_connections_refused_total 0"),
        "{m}"
    );
}
