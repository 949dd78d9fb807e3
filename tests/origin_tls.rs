//! TLS to origins, end to end: `geoedge proxy` in front of `geoedge origin` processes that
//! speak HTTPS with certificates from a test CA, over HTTP/1.1 and h2, verified or
//! refused, with and without a client certificate, and health-checked over the same TLS.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use common::http::{self as h, runtime};
use common::pki::{Issued, TestCa};
use common::{wait_for, Proc};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A `geoedge origin` speaking HTTPS with `cert`, demanding a client certificate from
/// `client_ca` when given.
fn https_origin(
    dir: &Path,
    name: &str,
    cert: &Issued,
    client_ca: Option<&Path>,
) -> (Proc, SocketAddr) {
    let cert_path = cert.cert.to_string_lossy().into_owned();
    let key_path = cert.key.to_string_lossy().into_owned();
    let mut args = vec![
        "origin",
        "--listen",
        "127.0.0.1:0",
        "--name",
        name,
        "--tls-cert",
        &cert_path,
        "--tls-key",
        &key_path,
    ];
    let ca;
    if let Some(path) = client_ca {
        ca = path.to_string_lossy().into_owned();
        args.extend(["--client-ca", ca.as_str()]);
    }
    let p = Proc::start(&args, dir, 1);
    let addr = p.addr(&format!("HTTPS (origin {name})"));
    (p, addr)
}

/// A proxy whose upstream `web` speaks `protocol` to `origins` with the `[upstreams.web.tls]`
/// keys `tls`.
fn proxy(
    dir: &Path,
    protocol: &str,
    tls: &str,
    origins: &[(&str, SocketAddr)],
    extra: &str,
) -> Proc {
    let origin_lines: String = origins
        .iter()
        .map(|(n, a)| format!("[[upstreams.web.origins]]\nname = \"{n}\"\naddr = \"{a}\"\n"))
        .collect();
    let config = format!(
        r#"[node]
name = "t-1"
region = "t"
workers = 1

[listen]
http = ["127.0.0.1:0"]
admin = "127.0.0.1:0"

[[routes]]
hosts = ["www.example.test"]
upstream = "web"

[upstreams.web]
protocol = "{protocol}"
connect_timeout = "1s"
response_timeout = "5s"
{extra}
{origin_lines}
[upstreams.web.tls]
{tls}
"#
    );
    std::fs::write(dir.join("proxy.toml"), config).unwrap();
    Proc::start(&["proxy", "--config", "proxy.toml"], dir, 2)
}

fn metric(p: &Proc, series: &str) -> f64 {
    common::metric(p.addr("HTTP (admin)"), series).unwrap_or(0.0)
}

#[test]
fn https_origins_are_proxied_over_pooled_http11_and_checked_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("origins CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let cert = ca.server(dir.path(), "origin", &["origin.test"], &[], false);
    let (_o1, a1) = https_origin(dir.path(), "o1", &cert, None);
    let (_o2, a2) = https_origin(dir.path(), "o2", &cert, None);
    let tls = format!(
        "ca_file = \"{}\"\nserver_name = \"origin.test\"",
        ca_file.display()
    );
    let checks = "[upstreams.web.health_check]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"90ms\"\nrise = 1\nfall = 1\n";
    let p = proxy(dir.path(), "https", &tls, &[("o1", a1), ("o2", a2)], checks);
    let rt = runtime();
    rt.block_on(async {
        let mut served = std::collections::HashSet::new();
        for _ in 0..20 {
            let r = h::get(p.addr("HTTP"), "www.example.test", "/_origin/echo")
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            // The origin saw HTTP/1.1 over TLS, the request's own Host.
            assert!(
                r.text().starts_with("GET /_origin/echo HTTP/1.1"),
                "{}",
                r.text()
            );
            served.insert(r.origin());
        }
        assert_eq!(served.len(), 2, "both origins serve: {served:?}");
    });
    // Keep-alive over TLS: twenty requests one after another need one connection per
    // origin, not one each.
    let opened = metric(
        &p,
        "geoedge_proxy_upstream_connections_opened_total{upstream=\"web\"}",
    );
    assert!(
        (1.0..=4.0).contains(&opened),
        "{opened} connections for 20 requests"
    );
    // The checks pass over TLS: a check made in the clear would fail the handshake.
    for o in ["o1", "o2"] {
        let up = format!("geoedge_proxy_upstream_up{{origin=\"{o}\",upstream=\"web\"}}");
        wait_for(
            Duration::from_secs(5),
            "origins checked up over TLS",
            || (metric(&p, &up) == 1.0).then_some(()),
        );
    }
    assert_eq!(
        metric(
            &p,
            "geoedge_proxy_upstream_errors_total{kind=\"tls\",upstream=\"web\"}"
        ),
        0.0
    );
}

#[test]
fn h2_origins_get_http2_agreed_by_alpn() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("origins CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    // No name: the origin's address is what its certificate must carry.
    let cert = ca.server(dir.path(), "origin", &[], &[LOOPBACK], false);
    let (_o1, a1) = https_origin(dir.path(), "o1", &cert, None);
    let tls = format!("ca_file = \"{}\"", ca_file.display());
    let p = proxy(dir.path(), "h2", &tls, &[("o1", a1)], "");
    runtime().block_on(async {
        for _ in 0..3 {
            let r = h::get(p.addr("HTTP"), "www.example.test", "/_origin/echo")
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(
                r.text()
                    .starts_with("GET https://www.example.test/_origin/echo HTTP/2.0"),
                "{}",
                r.text()
            );
        }
    });
    // One multiplexed connection carries them all.
    assert_eq!(
        metric(
            &p,
            "geoedge_proxy_upstream_connections_opened_total{upstream=\"web\"}"
        ),
        1.0
    );
}

#[test]
fn a_certificate_for_another_name_is_refused_and_the_request_goes_to_another_origin() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("origins CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let wrong = ca.server(dir.path(), "wrong", &["elsewhere.test"], &[], false);
    let right = ca.server(dir.path(), "right", &["origin.test"], &[], false);
    let (_bad, bad) = https_origin(dir.path(), "bad", &wrong, None);
    let (_good, good) = https_origin(dir.path(), "good", &right, None);
    let tls = format!(
        "ca_file = \"{}\"\nserver_name = \"origin.test\"",
        ca_file.display()
    );
    // No active checks: the refusal is met by requests, and the retry rule moves them.
    let p = proxy(
        dir.path(),
        "https",
        &tls,
        &[("bad", bad), ("good", good)],
        "balance = \"round_robin\"",
    );
    runtime().block_on(async {
        for _ in 0..6 {
            let r = h::get(p.addr("HTTP"), "www.example.test", "/")
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            assert_eq!(r.origin(), "good");
        }
    });
    assert!(
        metric(
            &p,
            "geoedge_proxy_upstream_errors_total{kind=\"tls\",upstream=\"web\"}"
        ) >= 1.0
    );
    assert!(metric(&p, "geoedge_proxy_retries_total{upstream=\"web\"}") >= 1.0);
    let log = p.stderr();
    assert!(log.contains("TLS handshake with origin failed"), "{log}");
    assert!(log.contains("certificate not valid for name"), "{log}");
}

#[test]
fn unknown_authorities_and_expired_certificates_are_refused_with_why() {
    let dir = tempfile::tempdir().unwrap();
    let trusted = TestCa::new("trusted CA");
    let stranger = TestCa::new("unknown CA");
    let ca_file = trusted.write(dir.path(), "ca.pem");
    let unknown = stranger.server(dir.path(), "unknown", &["origin.test"], &[], false);
    let expired = trusted.server(dir.path(), "expired", &["origin.test"], &[], true);
    let tls = format!(
        "ca_file = \"{}\"\nserver_name = \"origin.test\"",
        ca_file.display()
    );
    for (cert, why) in [
        (&unknown, "UnknownIssuer"),
        (&expired, "certificate expired"),
    ] {
        let (_o, addr) = https_origin(dir.path(), "o1", cert, None);
        let p = proxy(dir.path(), "https", &tls, &[("o1", addr)], "");
        runtime().block_on(async {
            let r = h::get(p.addr("HTTP"), "www.example.test", "/")
                .await
                .unwrap();
            assert_eq!(r.status, 502, "{why}: {}", r.text());
        });
        let log = p.stderr();
        assert!(log.contains(why), "{why} not in the log: {log}");
    }
}

#[test]
fn an_mtls_origin_serves_only_a_proxy_that_presents_its_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("origins CA");
    let clients = TestCa::new("clients CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let clients_file = clients.write(dir.path(), "clients.pem");
    let cert = ca.server(dir.path(), "origin", &["origin.test"], &[], false);
    let ours = clients.client(dir.path(), "edge", "edge-1");
    let (_o, addr) = https_origin(dir.path(), "o1", &cert, Some(&clients_file));
    let base = format!(
        "ca_file = \"{}\"\nserver_name = \"origin.test\"",
        ca_file.display()
    );
    let without = proxy(dir.path(), "https", &base, &[("o1", addr)], "");
    runtime().block_on(async {
        let r = h::get(without.addr("HTTP"), "www.example.test", "/")
            .await
            .unwrap();
        assert_eq!(
            r.status,
            502,
            "served without a client certificate: {}",
            r.text()
        );
    });
    drop(without);
    let with = format!(
        "{base}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        ours.cert.display(),
        ours.key.display()
    );
    let p = proxy(dir.path(), "https", &with, &[("o1", addr)], "");
    runtime().block_on(async {
        let r = h::get(p.addr("HTTP"), "www.example.test", "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.origin(), "o1");
    });
}

#[test]
fn skipping_verification_works_and_is_loud() {
    let dir = tempfile::tempdir().unwrap();
    let stranger = TestCa::new("unknown CA");
    let cert = stranger.server(dir.path(), "origin", &["origin.test"], &[], false);
    let (_o, addr) = https_origin(dir.path(), "o1", &cert, None);
    let p = proxy(
        dir.path(),
        "https",
        "insecure_skip_verify = true",
        &[("o1", addr)],
        "",
    );
    runtime().block_on(async {
        let r = h::get(p.addr("HTTP"), "www.example.test", "/")
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    });
    assert_eq!(
        metric(
            &p,
            "geoedge_proxy_upstream_tls_unverified{upstream=\"web\"}"
        ),
        1.0
    );
    let log = p.stderr();
    assert!(log.contains("does NOT verify"), "{log}");
}
