//! `geoedge proxy` over TLS end to end: SNI and ALPN, certificate reloads under open
//! connections, session resumption, and concurrent HTTP/2 streams.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::http::{self as h, runtime};
use common::proxy_world::{world, Opts, World};

fn write_cert(dir: &Path, name: &str, hosts: &[&str]) -> Vec<u8> {
    let c =
        rcgen::generate_simple_self_signed(hosts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    let tmp_cert = dir.join(format!("{name}.crt.tmp"));
    let tmp_key = dir.join(format!("{name}.key.tmp"));
    std::fs::write(&tmp_cert, c.cert.pem()).unwrap();
    std::fs::write(&tmp_key, c.signing_key.serialize_pem()).unwrap();
    // Rename into place so the proxy never reads a half-written file.
    std::fs::rename(&tmp_key, dir.join(format!("{name}.key"))).unwrap();
    std::fs::rename(&tmp_cert, dir.join(format!("{name}.crt"))).unwrap();
    c.cert.der().to_vec()
}

#[test]
fn tls_sni_alpn_and_certificate_reload_without_dropping_connections() {
    let rt = runtime();
    let certs = tempfile::tempdir().unwrap();
    let www = write_cert(certs.path(), "www", &["www.example.test"]);
    let api = write_cert(certs.path(), "api", &["api.example.test"]);
    let d = certs.path().display();
    let w = world(Opts {
        https: true,
        extra: format!(
            "[[tls.certificates]]\ncert = \"{d}/www.crt\"\nkey = \"{d}/www.key\"\n[[tls.certificates]]\ncert = \"{d}/api.crt\"\nkey = \"{d}/api.key\"\n"
        ),
        ..Opts::default()
    });
    let https = w.proxy.addr("HTTPS");
    rt.block_on(async {
        let mut c = h::tls_connect(https, "www.example.test", &[b"h2", b"http/1.1"])
            .await
            .unwrap();
        assert_eq!(c.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(c.leaf, www);
        let r = c.get("www.example.test", "/").await.unwrap();
        assert_eq!((r.status, r.version), (200, http::Version::HTTP_2));

        let c = h::tls_connect(https, "api.example.test", &[b"http/1.1"])
            .await
            .unwrap();
        assert_eq!(c.alpn.as_deref(), Some(&b"http/1.1"[..]));
        assert_eq!(c.leaf, api);

        let c = h::tls_connect(https, "unknown.test", &[]).await.unwrap();
        assert_eq!(
            c.leaf, www,
            "unknown SNI gets the default (first) certificate"
        );

        // Keep a connection open across the reload.
        let mut open = h::tls_connect(https, "www.example.test", &[b"http/1.1"])
            .await
            .unwrap();
        assert_eq!(open.get("www.example.test", "/").await.unwrap().status, 200);
        let renewed = write_cert(certs.path(), "www", &["www.example.test"]);
        assert_ne!(renewed, www);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = h::tls_connect(https, "www.example.test", &[])
                .await
                .unwrap();
            if c.leaf == renewed {
                break;
            }
            assert!(Instant::now() < deadline, "new certificate never served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let r = open.get("www.example.test", "/").await.unwrap();
        assert_eq!(r.status, 200, "the open connection kept working");

        // A broken file: the last good certificate stays.
        std::fs::write(certs.path().join("www.crt"), "garbage").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = h::get(w.admin(), "admin", "/metrics").await.unwrap().text();
            if m.contains("geoedge_proxy_certificate_reloads_total{result=\"error\"}") {
                break;
            }
            assert!(Instant::now() < deadline, "broken certificate not noticed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let c = h::tls_connect(https, "www.example.test", &[])
            .await
            .unwrap();
        assert_eq!(c.leaf, renewed);

        // Plain HTTP still answers on the same proxy.
        assert_eq!(
            h::get(w.http(), "www.example.test", "/")
                .await
                .unwrap()
                .status,
            200
        );
    });
    let _ = &w.dir;
}

/// A world whose proxy serves HTTPS with one certificate, for www.example.test; the
/// directory holding it goes with the second value.
fn tls_world() -> (World, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    write_cert(certs.path(), "www", &["www.example.test"]);
    let d = certs.path().display();
    let w = world(Opts {
        https: true,
        extra: format!("[[tls.certificates]]\ncert = \"{d}/www.crt\"\nkey = \"{d}/www.key\"\n"),
        ..Opts::default()
    });
    (w, certs)
}

#[test]
fn tls_sessions_resume_with_tickets_and_with_the_tls12_cache() {
    let rt = runtime();
    let (w, _certs) = tls_world();
    let https = w.proxy.addr("HTTPS");
    rt.block_on(async {
        for (versions, what) in [
            (&[&rustls::version::TLS13][..], "TLS 1.3 ticket"),
            (&[&rustls::version::TLS12][..], "TLS 1.2 session"),
        ] {
            let config = h::tls_client_config(&[b"http/1.1"], versions);
            let mut first = h::tls_connect_with(https, "www.example.test", config.clone())
                .await
                .unwrap();
            assert!(!first.resumed, "{what}: nothing to resume yet");
            // Reading a response also reads the tickets sent after the handshake.
            assert_eq!(
                first.get("www.example.test", "/").await.unwrap().status,
                200
            );
            for _ in 0..3 {
                let mut again = h::tls_connect_with(https, "www.example.test", config.clone())
                    .await
                    .unwrap();
                assert!(again.resumed, "{what}: not resumed");
                assert_eq!(
                    again.get("www.example.test", "/").await.unwrap().status,
                    200
                );
            }
        }
    });
    // Two full handshakes, six resumed.
    assert_eq!(
        w.metric("geoedge_proxy_tls_handshakes_total{result=\"ok\"}"),
        8
    );
    assert_eq!(w.metric("geoedge_proxy_tls_resumed_total"), 6);
    let _ = &w.dir;
}

/// A client that sends an IP address as SNI (openssl, and some load tools, do) gets the
/// default certificate, and does not get a line into the proxy's log: rustls warns about
/// it on every handshake, which would let any client write the log.
#[test]
fn client_triggered_tls_warnings_stay_out_of_the_log() {
    if !common::have("openssl") {
        assert!(std::env::var_os("CI").is_none(), "CI must install openssl");
        eprintln!("openssl not installed: skipped");
        return;
    }
    let (w, _certs) = tls_world();
    let https = w.proxy.addr("HTTPS");
    for _ in 0..3 {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-brief", "-connect", &https.to_string()])
            .args(["-servername", &https.ip().to_string()])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run openssl s_client");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("CONNECTION ESTABLISHED"), "{said}");
    }
    assert_eq!(
        w.metric("geoedge_proxy_tls_handshakes_total{result=\"ok\"}"),
        3
    );
    let log = std::fs::read_to_string(&w.proxy.stderr_path).unwrap();
    assert!(!log.contains("SNI"), "{log}");
}

/// Streams sent together on one HTTP/2 connection: some answered at once by the proxy
/// (unknown host), some waiting on a slow origin, some with bodies larger than the
/// proxy's write buffer. Every one completes, whole, on the same connection.
#[test]
fn concurrent_http2_streams_of_every_kind_complete_whole() {
    let rt = runtime();
    let (w, _certs) = tls_world();
    let https = w.proxy.addr("HTTPS");
    rt.block_on(async {
        let c = h::tls_connect(https, "www.example.test", &[b"h2"])
            .await
            .unwrap();
        let h::TlsSender::H2(sender) = c.sender else {
            panic!("h2 was negotiated");
        };
        // A lone small answer must leave too, with nothing after it to push it out.
        let mut first = sender.clone();
        let lone = h::h2_get(&mut first, "nowhere.test", "/");
        let r = tokio::time::timeout(Duration::from_secs(10), lone)
            .await
            .expect("a lone answer is sent")
            .unwrap();
        assert_eq!(r.status, 421);
        let mut tasks = Vec::new();
        for i in 0..60 {
            let mut sender = sender.clone();
            tasks.push(tokio::spawn(async move {
                let (host, path, status, len) = match i % 3 {
                    0 => ("nowhere.test", "/".to_string(), 421, None),
                    1 => (
                        "www.example.test",
                        format!("/slow?delay_ms=30&n={i}"),
                        200,
                        None,
                    ),
                    _ => (
                        "www.example.test",
                        format!("/big?size=200000&n={i}"),
                        200,
                        Some(200_000),
                    ),
                };
                let r = h::h2_get(&mut sender, host, &path).await.unwrap();
                assert_eq!(r.status, status, "{host}{path}");
                if let Some(len) = len {
                    assert_eq!(r.body.len(), len, "{path} arrives whole");
                }
            }));
        }
        let all = async {
            for t in tasks {
                t.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .expect("every stream completes");
    });
}
