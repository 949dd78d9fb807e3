//! The HTTPS listeners' policy, with the clients operators test with: `openssl s_client`
//! for protocol versions and OCSP staples (responses made by `openssl ocsp`), curl for
//! HSTS and client certificates.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pki::{Issued, TestCa};
use common::proxy_world::{world, Opts, World};
use common::{need, wait_for};

fn https(w: &World) -> SocketAddr {
    w.proxy.addr("HTTPS")
}

/// `openssl s_client` against `addr` with `args`; its standard output and error together.
fn s_client(addr: SocketAddr, args: &[&str]) -> String {
    let connect = addr.to_string();
    let mut all = vec![
        "s_client",
        "-connect",
        &connect,
        "-servername",
        "www.example.test",
    ];
    all.extend_from_slice(args);
    let out = common::run_with_stdin("openssl", &all, b"");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// curl against the HTTPS listener, Host www.example.test; (status line and headers,
/// body) or the error curl gave.
fn curl(addr: SocketAddr, path: &str, args: &[&str]) -> Result<String, String> {
    let resolve = format!("www.example.test:{}:{}", addr.port(), addr.ip());
    let url = format!("https://www.example.test:{}{path}", addr.port());
    let out = Command::new("curl")
        .args([
            "-sS",
            "-i",
            "--http1.1",
            "--max-time",
            "5",
            "-k",
            "--resolve",
            &resolve,
        ])
        .args(args)
        .arg(&url)
        .output()
        .expect("run curl");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn tls_world(tls: &str, routes: &str) -> World {
    world(Opts {
        https: true,
        extra: format!(
            "[tls]\n{tls}\n[[tls.certificates]]\nself_signed = [\"www.example.test\"]\n{routes}"
        ),
        ..Opts::default()
    })
}

#[test]
fn the_modern_profile_refuses_tls12_and_speaks_tls13() {
    if !need(&["openssl"]) {
        return;
    }
    let modern = tls_world("profile = \"modern\"", "");
    let old = s_client(https(&modern), &["-tls1_2"]);
    assert!(
        old.contains("no peer certificate available"),
        "TLS 1.2 was accepted:\n{old}"
    );
    let new = s_client(https(&modern), &["-tls1_3"]);
    assert!(new.contains("TLSv1.3"), "{new}");
    // The default (intermediate) still takes TLS 1.2 clients.
    let intermediate = tls_world("", "");
    let old = s_client(https(&intermediate), &["-tls1_2"]);
    assert!(
        old.contains("TLSv1.2") && !old.contains("no peer certificate available"),
        "{old}"
    );
}

/// An OCSP response from `openssl ocsp` for `leaf`, signed by the CA itself, saying
/// `status` ("V" valid or "R" revoked), written to `out`.
fn ocsp_response(dir: &Path, ca: &Path, ca_key: &Path, leaf: &Issued, status: char, out: &Path) {
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&leaf.cert)
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&serial.stdout);
    let serial = serial.trim().trim_start_matches("serial=");
    let revoked = if status == 'R' { "240101000000Z" } else { "" };
    let index = dir.join("index.txt");
    std::fs::write(
        &index,
        format!("{status}\t391231235959Z\t{revoked}\t{serial}\tunknown\t/CN=leaf\n"),
    )
    .unwrap();
    let request = dir.join("request.der");
    let made = Command::new("openssl")
        .args(["ocsp", "-no_nonce", "-issuer"])
        .arg(ca)
        .arg("-cert")
        .arg(&leaf.cert)
        .arg("-reqout")
        .arg(&request)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let answered = Command::new("openssl")
        .args(["ocsp", "-ndays", "1", "-index"])
        .arg(&index)
        .arg("-rsigner")
        .arg(ca)
        .arg("-rkey")
        .arg(ca_key)
        .arg("-CA")
        .arg(ca)
        .arg("-reqin")
        .arg(&request)
        .arg("-respout")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        answered.status.success(),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );
}

#[test]
fn an_ocsp_response_is_stapled_and_a_new_file_is_stapled_next() {
    if !need(&["openssl"]) {
        return;
    }
    let files = tempfile::tempdir().unwrap();
    let d = files.path();
    let ca = TestCa::new("staple CA");
    let ca_pem = ca.write(d, "ca.pem");
    let ca_key = ca.write_key(d, "ca.key");
    let leaf = ca.server(d, "www", &["www.example.test"], &[], false);
    let staple = d.join("www.ocsp");
    ocsp_response(d, &ca_pem, &ca_key, &leaf, 'V', &staple);
    let w = world(Opts {
        https: true,
        extra: format!(
            "[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\nocsp_file = \"{}\"\n",
            leaf.cert.display(),
            leaf.key.display(),
            staple.display()
        ),
        ..Opts::default()
    });
    let shown = s_client(https(&w), &["-status"]);
    assert!(
        shown.contains("OCSP Response Status: successful"),
        "{shown}"
    );
    assert!(shown.contains("Cert Status: good"), "{shown}");
    // A new response replaces the file (write beside, rename over, as a fetcher would).
    let next = d.join("www.ocsp.new");
    ocsp_response(d, &ca_pem, &ca_key, &leaf, 'R', &next);
    std::fs::rename(&next, &staple).unwrap();
    wait_for(
        Duration::from_secs(10),
        "the new OCSP response stapled",
        || {
            s_client(https(&w), &["-status"])
                .contains("Cert Status: revoked")
                .then_some(())
        },
    );
}

#[test]
fn hsts_goes_on_https_answers_only() {
    if !need(&["curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let origins = common::proxy_world::start_origins(dir.path(), &["o1"]);
    let config = format!(
        r#"[node]
name = "t-1"
region = "t"
workers = 1

[listen]
http = ["127.0.0.1:0"]
https = ["127.0.0.1:0"]
admin = "127.0.0.1:0"

[[tls.certificates]]
self_signed = ["www.example.test"]

[[routes]]
hosts = ["www.example.test"]
upstream = "web"
hsts = "max-age=31536000; includeSubDomains"

[upstreams.web]
[[upstreams.web.origins]]
name = "o1"
addr = "{}"
"#,
        origins.addrs[0]
    );
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let p = common::Proc::start(&["proxy", "--config", "proxy.toml"], dir.path(), 3);
    let secure = curl(p.addr("HTTPS"), "/", &[])
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        secure.contains("strict-transport-security: max-age=31536000; includesubdomains"),
        "{secure}"
    );
    let h2 = curl(p.addr("HTTPS"), "/", &["--http2"])
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        h2.starts_with("http/2") && h2.contains("strict-transport-security"),
        "{h2}"
    );
    let plain = Command::new("curl")
        .args(["-sS", "-i", "-H", "Host: www.example.test"])
        .arg(format!("http://{}/", p.addr("HTTP")))
        .output()
        .unwrap();
    let plain = String::from_utf8_lossy(&plain.stdout).to_ascii_lowercase();
    assert!(plain.starts_with("http/1.1 200"), "{plain}");
    assert!(
        !plain.contains("strict-transport-security"),
        "HSTS over plain HTTP:\n{plain}"
    );
}

#[test]
fn client_certificates_are_required_or_optional_and_reach_the_origin_as_headers() {
    if !need(&["curl"]) {
        return;
    }
    let files = tempfile::tempdir().unwrap();
    let d = files.path();
    let clients = TestCa::new("clients CA");
    let stranger = TestCa::new("other CA");
    let ca = clients.write(d, "clients.pem");
    let alice = clients.client(d, "alice", "alice");
    let mallory = stranger.client(d, "mallory", "mallory");
    let files_of = |i: &Issued| [i.cert.display().to_string(), i.key.display().to_string()];
    let (m_cert, m_key) = files_of(&mallory).into();
    let (a_cert, a_key) = files_of(&alice).into();
    let as_mallory = ["--cert", m_cert.as_str(), "--key", m_key.as_str()];
    let as_alice = ["--cert", a_cert.as_str(), "--key", a_key.as_str()];

    // Required: no certificate, or one from another CA, fails the handshake.
    let required = tls_world(&format!("client_ca = \"{}\"", ca.display()), "");
    assert!(
        curl(https(&required), "/", &[]).is_err(),
        "served without a certificate"
    );
    assert!(
        curl(https(&required), "/", &as_mallory).is_err(),
        "served a stranger's certificate"
    );
    let echo = curl(https(&required), "/_origin/echo", &as_alice).unwrap();
    assert!(echo.contains("x-client-cert-subject: CN=alice"), "{echo}");
    let fingerprint = echo
        .lines()
        .find_map(|l| l.strip_prefix("x-client-cert-sha256: "))
        .unwrap_or_else(|| panic!("no fingerprint header:\n{echo}"));
    assert_eq!(fingerprint.trim().len(), 64, "{fingerprint}");

    // Optional: served without one, but a claim the client makes itself is removed.
    let optional = tls_world(
        &format!(
            "client_ca = \"{}\"\nclient_auth = \"optional\"",
            ca.display()
        ),
        "",
    );
    let echo = curl(
        https(&optional),
        "/_origin/echo",
        &["-H", "x-client-cert-subject: CN=admin"],
    )
    .unwrap();
    assert!(echo.starts_with("HTTP/1.1 200"), "{echo}");
    assert!(
        !echo.contains("CN=admin"),
        "a forged subject reached the origin:\n{echo}"
    );
    let echo = curl(https(&optional), "/_origin/echo", &as_alice).unwrap();
    assert!(echo.contains("x-client-cert-subject: CN=alice"), "{echo}");
}

#[test]
fn a_route_can_demand_a_certificate_on_an_optional_listener() {
    if !need(&["curl"]) {
        return;
    }
    let files = tempfile::tempdir().unwrap();
    let d = files.path();
    let clients = TestCa::new("clients CA");
    let ca = clients.write(d, "clients.pem");
    let bob = clients.client(d, "bob", "bob");
    let w = world(Opts {
        https: true,
        extra: format!(
            "[tls]\nclient_ca = \"{}\"\nclient_auth = \"optional\"\n[[tls.certificates]]\nself_signed = [\"www.example.test\"]\n\n[[routes]]\nhosts = [\"www.example.test\"]\npath_prefix = \"/admin\"\nupstream = \"web\"\nrequire_client_cert = true\n",
            ca.display()
        ),
        ..Opts::default()
    });
    let refused = curl(https(&w), "/admin/x", &[]).unwrap();
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let open = curl(https(&w), "/other", &[]).unwrap();
    assert!(open.starts_with("HTTP/1.1 200"), "{open}");
    let cert = bob.cert.display().to_string();
    let key = bob.key.display().to_string();
    let allowed = curl(https(&w), "/admin/x", &["--cert", &cert, "--key", &key]).unwrap();
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
}

/// A reload whose TLS settings are broken (a client CA file that is not there) keeps the
/// policy in force and says why; a good one then changes it for new handshakes.
#[test]
fn a_reload_that_breaks_tls_settings_keeps_the_old_policy() {
    if !need(&["openssl"]) {
        return;
    }
    let w = tls_world("profile = \"modern\"", "");
    let config_path = w.dir.path().join("proxy.toml");
    let good = std::fs::read_to_string(&config_path).unwrap();
    let pid = w.proxy.child.id().to_string();
    let hup = || {
        let ok = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(ok.success());
    };
    let broken = good.replace(
        "profile = \"modern\"",
        "profile = \"intermediate\"\nclient_ca = \"no-such-ca.pem\"\nclient_auth = \"optional\"",
    );
    std::fs::write(&config_path, broken).unwrap();
    hup();
    wait_for(Duration::from_secs(5), "the bad reload counted", || {
        assert!(
            common::http_get(w.admin(), "/healthz").0 != 0 || w.proxy.stderr().is_empty(),
            "the admin listener is gone; the proxy said:\n{}",
            w.proxy.stderr()
        );
        common::metric(
            w.admin(),
            "geoedge_proxy_config_reloads_total{result=\"error\"}",
        )
        .filter(|n| *n >= 1.0)
    });
    let why = w.proxy.stderr();
    assert!(
        why.contains("no-such-ca.pem"),
        "the log names the file:\n{why}"
    );
    let old = s_client(https(&w), &["-tls1_2"]);
    assert!(
        old.contains("no peer certificate available"),
        "the broken reload replaced the modern profile:\n{old}"
    );

    std::fs::write(&config_path, good.replace("\"modern\"", "\"intermediate\"")).unwrap();
    hup();
    wait_for(Duration::from_secs(5), "the good reload counted", || {
        common::metric(
            w.admin(),
            "geoedge_proxy_config_reloads_total{result=\"ok\"}",
        )
        .filter(|n| *n >= 1.0)
    });
    let now = s_client(https(&w), &["-tls1_2"]);
    assert!(
        now.contains("TLSv1.2") && !now.contains("no peer certificate available"),
        "the good reload did not take: {now}"
    );
}
