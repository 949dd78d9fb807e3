//! `[[streams]]` listeners end to end: SFTP passed through to OpenSSH's sshd, TLS routed
//! by SNI without terminating, TLS terminated in front of a plain origin, the PROXY
//! protocol sent to an origin that expects it, half-close, idle timeouts and the
//! connection cap.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::file_servers::{need_daemons, sshd, test_file};
use common::pki::TestCa;
use common::{need, wait_for, Proc};

fn gateway(dir: &Path, body: &str, listeners: usize) -> Proc {
    let config = format!(
        r#"[node]
name = "streams-1"
region = "t"
workers = 1

[listen]
admin = "127.0.0.1:0"

[tls]
[[tls.certificates]]
self_signed = ["tls.example.test"]

{body}
"#
    );
    std::fs::write(dir.join("proxy.toml"), config).unwrap();
    Proc::start(&["proxy", "--config", "proxy.toml"], dir, listeners + 1)
}

fn refused(p: &Proc, reason: &str, service: &str) -> f64 {
    common::metric(
        p.addr("HTTP (admin)"),
        &format!("geoedge_proxy_stream_refused_total{{reason=\"{reason}\",service=\"{service}\"}}"),
    )
    .unwrap_or(0.0)
}

#[test]
fn sftp_passes_through_to_sshd_with_fifty_megabytes_each_way() {
    if !need(&["sftp", "ssh-keygen"]) || !need_daemons(&["sshd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ssh = sshd(dir.path());
    let gw = gateway(
        dir.path(),
        &format!(
            "[[streams]]\nname = \"sftp\"\nmode = \"tcp\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"ssh\"\n\
             [upstreams.ssh]\nprotocol = \"tcp\"\norigins = [{{ name = \"sshd\", addr = \"{}\" }}]\n",
            ssh.daemon.addr
        ),
        1,
    );
    let addr = gw.addr("stream sftp");
    let data = test_file(&dir.path().join("up.bin"), 50 * 1024 * 1024);
    let batch = dir.path().join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {up} {stored}\nget {stored} {down}\n",
            up = dir.path().join("up.bin").display(),
            stored = dir.path().join("stored.bin").display(),
            down = dir.path().join("down.bin").display(),
        ),
    )
    .unwrap();
    let out = Command::new("timeout")
        .arg("120")
        .arg("sftp")
        .args(["-q", "-b"])
        .arg(&batch)
        .arg("-i")
        .arg(&ssh.client_key)
        .args(["-P", &addr.port().to_string()])
        .args([
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("{}@127.0.0.1", ssh.user))
        .output()
        .expect("run sftp");
    assert!(
        out.status.success(),
        "sftp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(dir.path().join("stored.bin")).unwrap() == data,
        "the upload"
    );
    assert!(
        std::fs::read(dir.path().join("down.bin")).unwrap() == data,
        "the download"
    );
    let admin = gw.addr("HTTP (admin)");
    let bytes_in = common::metric(
        admin,
        "geoedge_proxy_stream_bytes_total{direction=\"in\",service=\"sftp\"}",
    )
    .unwrap();
    assert!(bytes_in > 50.0 * 1024.0 * 1024.0, "{bytes_in}");
}

/// A TLS origin (`geoedge origin`) for `names` with a certificate from `ca`.
fn tls_origin(dir: &Path, ca: &TestCa, name: &str, names: &[&str]) -> (Proc, SocketAddr) {
    let cert = ca.server(dir, name, names, &[], false);
    let (c, k) = (
        cert.cert.to_string_lossy().into_owned(),
        cert.key.to_string_lossy().into_owned(),
    );
    let p = Proc::start(
        &[
            "origin",
            "--listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--tls-cert",
            &c,
            "--tls-key",
            &k,
        ],
        dir,
        1,
    );
    let addr = p.addr(&format!("HTTPS (origin {name})"));
    (p, addr)
}

/// curl over HTTPS to `name` at `addr`; the answering origin's name (`x-origin`).
fn https_origin(addr: SocketAddr, name: &str, ca: Option<&Path>) -> Result<String, String> {
    let resolve = format!("{name}:{}:127.0.0.1", addr.port());
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-i",
        "--http1.1",
        "--max-time",
        "10",
        "--resolve",
        &resolve,
    ]);
    match ca {
        Some(ca) => cmd.arg("--cacert").arg(ca),
        None => cmd.arg("-k"),
    };
    let out = cmd
        .arg(format!("https://{name}:{}/", addr.port()))
        .output()
        .expect("run curl");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("x-origin: "))
        .map(|s| s.trim().to_string())
        .ok_or(text)
}

#[test]
fn tls_passthrough_routes_by_sni_and_the_client_sees_the_origins_certificate() {
    if !need(&["curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("origins CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (_a, a) = tls_origin(dir.path(), &ca, "alpha", &["a.example.test"]);
    let (_b, b) = tls_origin(
        dir.path(),
        &ca,
        "beta",
        &["b.example.test", "x.wild.example.test", "other.test"],
    );
    let gw = gateway(
        dir.path(),
        &format!(
            "[[streams]]\nname = \"sni\"\nmode = \"tls_passthrough\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"b\"\n\
             [streams.sni]\n\"a.example.test\" = \"a\"\n\"*.wild.example.test\" = \"b\"\n\
             [upstreams.a]\nprotocol = \"tcp\"\norigins = [{{ name = \"alpha\", addr = \"{a}\" }}]\n\
             [upstreams.b]\nprotocol = \"tcp\"\norigins = [{{ name = \"beta\", addr = \"{b}\" }}]\n"
        ),
        1,
    );
    let addr = gw.addr("stream sni");
    // Verified against the origins' CA: the TLS is theirs, end to end.
    assert_eq!(
        https_origin(addr, "a.example.test", Some(&ca_file)).unwrap(),
        "alpha"
    );
    assert_eq!(
        https_origin(addr, "x.wild.example.test", Some(&ca_file)).unwrap(),
        "beta"
    );
    assert_eq!(
        https_origin(addr, "other.test", Some(&ca_file)).unwrap(),
        "beta",
        "the default"
    );
    // Something that is not TLS is refused and counted.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n")
        .unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
    wait_for(Duration::from_secs(5), "the refusal counted", || {
        (refused(&gw, "sni", "sni") == 1.0).then_some(())
    });
}

#[test]
fn tls_is_terminated_in_front_of_a_plain_origin() {
    if !need(&["curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let origins = common::proxy_world::start_origins(dir.path(), &["plain"]);
    let gw = gateway(
        dir.path(),
        &format!(
            "[[streams]]\nname = \"tls\"\nmode = \"tls\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"web\"\n\
             [upstreams.web]\nprotocol = \"tcp\"\norigins = [{{ name = \"plain\", addr = \"{}\" }}]\n",
            origins.addrs[0]
        ),
        1,
    );
    assert_eq!(
        https_origin(gw.addr("stream tls"), "tls.example.test", None).unwrap(),
        "plain"
    );
}

#[test]
fn tls_is_terminated_and_made_again_to_a_tls_origin_that_is_verified() {
    if !need(&["curl"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("origins CA");
    let ca_file = ca.write(dir.path(), "ca.pem");
    let (_o, o) = tls_origin(dir.path(), &ca, "secure", &["origin.internal.test"]);
    let gw = gateway(
        dir.path(),
        &format!(
            "[[streams]]\nname = \"tls\"\nmode = \"tls\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"inside\"\n\
             [upstreams.inside]\nprotocol = \"tls\"\norigins = [{{ name = \"secure\", addr = \"{o}\" }}]\n\
             [upstreams.inside.tls]\nca_file = \"{}\"\nserver_name = \"origin.internal.test\"\n",
            ca_file.display()
        ),
        1,
    );
    // The client sees our certificate (-k); the origin's is checked by us against its CA.
    let answered = https_origin(gw.addr("stream tls"), "tls.example.test", None);
    assert_eq!(answered.unwrap(), "secure");
}

/// An HTTP/1.1 origin that wants a PROXY header first on each connection: answers every
/// request with the client its connection's header named, keep-alive; counts connections.
fn http_origin_behind_proxy_protocol() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { break };
            count.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut header = String::new();
                if reader.read_line(&mut header).is_err() || !header.starts_with("PROXY TCP4 ") {
                    return;
                }
                let fields: Vec<&str> = header.split_whitespace().collect();
                let body = format!("{}:{}\n", fields[2], fields[4]);
                loop {
                    // The request head, to its blank line.
                    loop {
                        let mut line = String::new();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(answer.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[test]
fn an_http_upstream_with_send_proxy_keeps_each_clients_origin_connection_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, connections) = http_origin_behind_proxy_protocol();
    let config = format!(
        "[node]\nname = \"pp-1\"\nregion = \"t\"\nworkers = 1\n\
         [listen]\nhttp = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\n\
         [[routes]]\nhosts = [\"*\"]\nupstream = \"web\"\n\
         [upstreams.web]\nsend_proxy = \"v1\"\norigins = [{{ name = \"o\", addr = \"{origin}\" }}]\n"
    );
    std::fs::write(dir.path().join("proxy.toml"), config).unwrap();
    let proxy = Proc::start(&["proxy", "--config", "proxy.toml"], dir.path(), 2);
    let http = proxy.addr("HTTP");
    // Two clients, two requests each on their own keep-alive connection.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(http).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let me = c.local_addr().unwrap();
        let mut reader = BufReader::new(c.try_clone().unwrap());
        for _ in 0..2 {
            c.write_all(b"GET / HTTP/1.1\r\nHost: www.example.test\r\n\r\n")
                .unwrap();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length: ") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0u8; length];
            reader.read_exact(&mut body).unwrap();
            let named = String::from_utf8(body).unwrap();
            assert_eq!(named.trim(), me.to_string(), "the origin saw this client");
        }
        seen.push(me);
    }
    assert_ne!(seen[0], seen[1]);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "one origin connection per client, reused for its second request"
    );
}

/// An origin that expects a PROXY header: reads it, then echoes what follows until the
/// client half-closes, then answers once more.
fn proxy_protocol_origin() -> (SocketAddr, std::thread::JoinHandle<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut header = String::new();
        reader.read_line(&mut header).unwrap();
        let mut body = Vec::new();
        reader.read_to_end(&mut body).unwrap();
        let mut s = s;
        // The client's half-close arrived; this direction still works.
        s.write_all(b"after your FIN").unwrap();
        (header, body)
    });
    (addr, handle)
}

#[test]
fn the_proxy_header_reaches_the_origin_and_half_close_is_passed_on() {
    let dir = tempfile::tempdir().unwrap();
    let (origin, seen) = proxy_protocol_origin();
    let gw = gateway(
        dir.path(),
        &format!(
            "[[streams]]\nname = \"pp\"\nmode = \"tcp\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"o\"\nsend_proxy = \"v1\"\n\
             [upstreams.o]\nprotocol = \"tcp\"\norigins = [{{ name = \"o\", addr = \"{origin}\" }}]\n"
        ),
        1,
    );
    let addr = gw.addr("stream pp");
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let me = c.local_addr().unwrap();
    c.write_all(b"hello origin").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "after your FIN");
    let (header, body) = seen.join().unwrap();
    assert_eq!(
        header,
        format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {}\r\n",
            me.port(),
            addr.port()
        )
    );
    assert_eq!(body, b"hello origin");
}

#[test]
fn idle_connections_are_closed_and_the_cap_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    // An origin that accepts and never speaks.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = silent.local_addr().unwrap();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept() {
            held.push(s);
            if held.len() > 8 {
                break;
            }
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let gw = gateway(
        dir.path(),
        &format!(
            "[[streams]]\nname = \"quiet\"\nmode = \"tcp\"\nlisten = [\"127.0.0.1:0\"]\nupstream = \"o\"\n\
             idle_timeout = \"300ms\"\nmax_connections = 1\n\
             [upstreams.o]\nprotocol = \"tcp\"\norigins = [{{ name = \"o\", addr = \"{origin}\" }}]\n"
        ),
        1,
    );
    let addr = gw.addr("stream quiet");
    let mut first = TcpStream::connect(addr).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    wait_for(Duration::from_secs(5), "the first connection open", || {
        common::metric(
            gw.addr("HTTP (admin)"),
            "geoedge_proxy_stream_connections_open{service=\"quiet\"}",
        )
        .filter(|n| *n == 1.0)
    });
    // The second is over the cap: closed at once.
    let mut second = TcpStream::connect(addr).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!(second.read(&mut buf), Ok(0) | Err(_)));
    // The first is closed once idle.
    let started = std::time::Instant::now();
    assert!(matches!(first.read(&mut buf), Ok(0)));
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(refused(&gw, "capacity", "quiet"), 1.0);
    wait_for(Duration::from_secs(5), "the idle cut counted", || {
        (refused(&gw, "idle", "quiet") == 1.0).then_some(())
    });
}
