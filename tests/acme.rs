//! Certificates by ACME, end to end against pebble (Let's Encrypt's test CA, from
//! Debian), which resolves names through `geoedge dns`: issued by dns-01 (the challenge
//! published by our own DNS server) and by tls-alpn-01, renewed when short-lived while an
//! open connection keeps its certificate, and a failing order survived with back-off.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::http::{self as h, runtime};
use common::pki::TestCa;
use common::proxy_world::start_origins;
use common::{need, wait_for, Proc};

const ZONE: &str = "$ORIGIN example.test.\n$TTL 60\n@ IN SOA ns1 hostmaster 1 3600 600 86400 5\n@ IN NS ns1\nns1 IN A 127.0.0.1\nwww IN A 127.0.0.1\n";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// pebble, stopped on drop.
struct Pebble {
    child: Child,
    directory: String,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// pebble serving its ACME directory over HTTPS with a certificate from `ca`, resolving
/// through `dns`, validating tls-alpn-01 on `tls_port`, issuing certificates valid for
/// `validity_secs`; `nonce_reject` is the share of good nonces it refuses (badNonce).
fn pebble(
    dir: &Path,
    ca: &TestCa,
    dns: SocketAddr,
    tls_port: u16,
    validity_secs: u64,
    nonce_reject: u8,
) -> Pebble {
    let own = ca.server(
        dir,
        "pebble",
        &["localhost"],
        &["127.0.0.1".parse().unwrap()],
        false,
    );
    let listen = format!("127.0.0.1:{}", free_port());
    let config = format!(
        r#"{{"pebble": {{"listenAddress": "{listen}", "managementListenAddress": "127.0.0.1:{}",
"certificate": "{}", "privateKey": "{}", "httpPort": {}, "tlsPort": {tls_port},
"ocspResponderURL": "", "externalAccountBindingRequired": false,
"certificateValidityPeriod": {validity_secs}}}}}"#,
        free_port(),
        own.cert.display(),
        own.key.display(),
        free_port(),
    );
    std::fs::write(dir.join("pebble.json"), config).unwrap();
    let log = std::fs::File::create(dir.join("pebble.log")).unwrap();
    let child = Command::new("pebble")
        .args(["-config", "pebble.json", "-dnsserver", &dns.to_string()])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", nonce_reject.to_string())
        .current_dir(dir)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("start pebble");
    let addr: SocketAddr = listen.parse().unwrap();
    wait_for(Duration::from_secs(10), "pebble to listen", || {
        std::net::TcpStream::connect(addr).ok()
    });
    Pebble {
        child,
        directory: format!("https://{listen}/dir"),
    }
}

/// `geoedge dns` serving example.test, with reports (and so ACME challenges) signed by
/// `report.key` when `signed`.
fn dns(dir: &Path, signed: bool) -> Proc {
    common::build_geo(dir, "");
    std::fs::write(dir.join("zone.txt"), ZONE).unwrap();
    std::fs::write(dir.join("report.key"), "0123456789abcdef0123456789abcdef\n").unwrap();
    let key = if signed {
        "report_key_file = \"report.key\"\nmax_clock_skew = \"30s\""
    } else {
        ""
    };
    let config = format!(
        r#"[server]
listen = ["127.0.0.1:0"]
control = "127.0.0.1:0"
workers = 1

[geoip]
database = "geo.mmdb"

[health]
{key}

[[zones]]
origin = "example.test."
file = "zone.txt"

[[regions]]
name = "t"
latitude = 0.0
longitude = 0.0
[[regions.nodes]]
name = "t-1"
ipv4 = "127.0.0.1"
"#
    );
    std::fs::write(dir.join("dns.toml"), config).unwrap();
    Proc::start(&["dns", "--config", "dns.toml"], dir, 3)
}

/// A proxy getting its certificate from `directory`, and the origin behind it.
fn proxy(
    dir: &Path,
    https_port: u16,
    directory: &str,
    challenge: &str,
    control: SocketAddr,
) -> (Proc, common::proxy_world::Origins) {
    let origins = start_origins(dir, &["o1"]);
    let origin = origins.addrs[0];
    let config = format!(
        r#"[node]
name = "t-1"
region = "t"
workers = 1

[listen]
http = ["127.0.0.1:0"]
https = ["127.0.0.1:{https_port}"]
admin = "127.0.0.1:0"

[tls]
acme_storage = "acme"

[[tls.certificates]]
acme = {{ directory = "{directory}", names = ["www.example.test"], challenge = "{challenge}", directory_ca = "ca.pem", contact = ["mailto:ops@example.test"] }}

[reports]
dns = ["http://{control}"]
key_file = "report.key"

[[routes]]
hosts = ["www.example.test"]
upstream = "web"

[upstreams.web]
[[upstreams.web.origins]]
name = "o1"
addr = "{origin}"
"#
    );
    std::fs::write(dir.join("proxy.toml"), config).unwrap();
    (
        Proc::start(&["proxy", "--config", "proxy.toml"], dir, 3),
        origins,
    )
}

/// The issuer of the certificate a new TLS connection to `addr` is shown.
fn issuer_and_serial(addr: SocketAddr) -> Option<(String, String)> {
    let conn = runtime()
        .block_on(h::tls_connect(addr, "www.example.test", &[b"http/1.1"]))
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&conn.leaf).ok()?;
    Some((cert.issuer().to_string(), cert.raw_serial_as_string()))
}

fn issued_by_pebble(addr: SocketAddr) -> Option<String> {
    issuer_and_serial(addr)
        .filter(|(issuer, _)| issuer.contains("Pebble"))
        .map(|(_, s)| s)
}

#[test]
fn dns01_is_answered_by_our_own_dns_and_renewal_keeps_open_connections() {
    if !need(&["pebble"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let ca = TestCa::new("pebble's web CA");
    ca.write(dir, "ca.pem");
    let dns = dns(dir, true);
    let https = free_port();
    // Certificates of 20 s: renewed at about 13 s. A third of the nonces refused: instant-acme
    // must retry badNonce as RFC 8555 §6.5 asks.
    let ca_server = pebble(dir, &ca, dns.addr("UDP"), https, 20, 30);
    let (p, _origins) = proxy(
        dir,
        https,
        &ca_server.directory,
        "dns-01",
        dns.addr("HTTP (control)"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    let first = wait_for(Duration::from_secs(90), "a certificate from pebble", || {
        issued_by_pebble(addr)
    });
    let log = dns.stderr();
    assert!(log.contains("ACME challenge published"), "{log}");
    // The key is the operator's alone.
    let mode = std::fs::metadata(dir.join("acme/www.example.test.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    // A connection opened now keeps serving after the certificate is renewed.
    let rt = runtime();
    let mut open = rt
        .block_on(h::tls_connect(addr, "www.example.test", &[b"http/1.1"]))
        .unwrap();
    // Requests keep crossing it meanwhile: an idle keep-alive connection would be closed
    // at header_read_timeout whatever its certificate.
    let second = wait_for(Duration::from_secs(90), "a renewed certificate", || {
        let r = rt.block_on(open.get("www.example.test", "/")).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        issued_by_pebble(addr).filter(|s| *s != first)
    });
    assert_ne!(first, second);
    let r = rt.block_on(open.get("www.example.test", "/")).unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let (_, leaf) = x509_parser::parse_x509_certificate(&open.leaf).unwrap();
    assert_eq!(
        leaf.raw_serial_as_string(),
        first,
        "the open connection kept its certificate"
    );
    let admin = p.addr("HTTP (admin)");
    assert!(
        common::metric(admin, "geoedge_proxy_acme_orders_total{result=\"ok\"}").unwrap_or(0.0)
            >= 2.0
    );
    let days = common::metric(
        admin,
        "geoedge_proxy_certificate_expiry_seconds{certificate=\"www.example.test\"}",
    );
    assert!(days.is_some_and(|s| s <= 20.0), "{days:?}");
    let (_, status) = common::http_get(admin, "/status");
    assert!(status.contains("\"source\": \"acme\""), "{status}");
}

#[test]
fn tls_alpn01_is_answered_on_the_https_listener() {
    if !need(&["pebble"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let ca = TestCa::new("pebble's web CA");
    ca.write(dir, "ca.pem");
    let dns = dns(dir, true);
    let https = free_port();
    let ca_server = pebble(dir, &ca, dns.addr("UDP"), https, 3600, 0);
    let _world = proxy(
        dir,
        https,
        &ca_server.directory,
        "tls-alpn-01",
        dns.addr("HTTP (control)"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    wait_for(Duration::from_secs(90), "a certificate from pebble", || {
        issued_by_pebble(addr)
    });
    // No order open: an acme-tls/1 handshake finds no certificate at all.
    let refused = runtime().block_on(h::tls_connect(addr, "www.example.test", &[b"acme-tls/1"]));
    assert!(
        refused.is_err(),
        "an acme-tls/1 handshake was served outside an order"
    );
}

#[test]
fn a_failing_order_keeps_the_current_certificate_says_why_and_backs_off() {
    if !need(&["pebble"]) {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let ca = TestCa::new("pebble's web CA");
    ca.write(dir, "ca.pem");
    // The DNS server has no report key: it refuses to publish challenges.
    let dns = dns(dir, false);
    let https = free_port();
    let ca_server = pebble(dir, &ca, dns.addr("UDP"), https, 3600, 0);
    let (p, _origins) = proxy(
        dir,
        https,
        &ca_server.directory,
        "dns-01",
        dns.addr("HTTP (control)"),
    );
    let admin = p.addr("HTTP (admin)");
    wait_for(Duration::from_secs(30), "two failed orders", || {
        (common::metric(admin, "geoedge_proxy_acme_orders_total{result=\"error\"}").unwrap_or(0.0)
            >= 2.0)
            .then_some(())
    });
    let (_, status) = common::http_get(admin, "/status");
    assert!(
        status.contains("not every DNS server serves the challenge"),
        "{status}"
    );
    // The stand-in certificate still serves.
    let addr: SocketAddr = format!("127.0.0.1:{https}").parse().unwrap();
    let (issuer, _) = issuer_and_serial(addr).expect("the listener still serves");
    assert!(!issuer.contains("Pebble"), "{issuer}");
    let log = p.stderr();
    assert!(log.contains("ACME renewal failed"), "{log}");
    // Back-off: the second attempt came at least FIRST_BACKOFF (2 s) after the first.
    let attempts = log.matches("ACME renewal failed").count();
    assert!(
        attempts < 10,
        "{attempts} attempts in a few seconds: no back-off"
    );
}
