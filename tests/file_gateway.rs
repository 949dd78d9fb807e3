//! The FTP gateway end to end, with real servers and clients: vsftpd as the origin (with
//! TLS and `require_ssl_reuse`), curl and lftp as clients, and raw control connections
//! where a test must do what no polite client does.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::file_servers::{need_daemons, test_file, vsftpd, Daemon};
use common::pki::TestCa;
use common::{need, wait_for, Proc};

/// The gateway: `streams` (TOML of `[[streams]]` and `[upstreams]`) behind a self-signed
/// certificate, with an admin listener; `listeners` stream addresses to wait for.
fn gateway(dir: &Path, streams: &str, listeners: usize) -> Proc {
    let config = format!(
        r#"[node]
name = "files-1"
region = "t"
workers = 1

[listen]
admin = "127.0.0.1:0"

[access_log]
path = "access.log"

[tls]
[[tls.certificates]]
self_signed = ["files.example.test"]

{streams}
"#
    );
    std::fs::write(dir.join("proxy.toml"), config).unwrap();
    Proc::start(&["proxy", "--config", "proxy.toml"], dir, listeners + 1)
}

/// An FTP stream; `stream_extra` lines go in `[[streams]]`, `ftp_extra` in `[streams.ftp]`.
fn ftp_stream(
    name: &str,
    tls: &str,
    upstream: &str,
    stream_extra: &str,
    ftp_extra: &str,
) -> String {
    format!(
        r#"[[streams]]
name = "{name}"
mode = "ftp"
listen = ["127.0.0.1:0"]
upstream = "{upstream}"
{stream_extra}
[streams.ftp]
tls = "{tls}"
passive_ports = "30000-30999"
{ftp_extra}
"#
    )
}

fn upstream(name: &str, protocol: &str, origins: &[(&str, SocketAddr)], extra: &str) -> String {
    let list: Vec<String> = origins
        .iter()
        .map(|(n, a)| format!("{{ name = \"{n}\", addr = \"{a}\" }}"))
        .collect();
    format!(
        "[upstreams.{name}]\nprotocol = \"{protocol}\"\norigins = [{}]\n{extra}\n",
        list.join(", ")
    )
}

/// curl with `args`; Ok(stdout) or Err(stderr), verbose output in both cases appended
/// to `transcript` when given.
fn curl(args: &[&str], transcript: Option<&mut String>) -> Result<Vec<u8>, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-k"])
        .args(args)
        .output()
        .expect("run curl");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    if let Some(t) = transcript {
        t.push_str(&err);
        t.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(err)
    }
}

fn url(scheme: &str, addr: SocketAddr, path: &str) -> String {
    format!("{scheme}://127.0.0.1:{}{path}", addr.port())
}

struct Origin {
    _ca: TestCa,
    ca_file: std::path::PathBuf,
    root: std::path::PathBuf,
    daemon: Daemon,
}

/// vsftpd on `ip` with a certificate for `ftp-origin.test` from a CA of its own.
fn tls_origin(dir: &Path, name: &str, ip: &str, extra: &str) -> Origin {
    let ca = TestCa::new("file servers CA");
    let ca_file = ca.write(dir, &format!("{name}-ca.pem"));
    let cert = ca.server(
        dir,
        &format!("{name}-cert"),
        &["ftp-origin.test"],
        &[],
        false,
    );
    let root = dir.join(format!("{name}-root"));
    let daemon = vsftpd(dir, name, ip, &root, Some(&cert), extra);
    Origin {
        _ca: ca,
        ca_file,
        root,
        daemon,
    }
}

fn tls_settings(name: &str, ca: &Path) -> String {
    format!(
        "[upstreams.{name}.tls]\nca_file = \"{}\"\nserver_name = \"ftp-origin.test\"\n",
        ca.display()
    )
}

#[test]
fn fifty_megabytes_each_way_keep_their_bytes_over_plain_explicit_and_implicit_ftps() {
    if !need(&["curl", "lftp"]) || !need_daemons(&["vsftpd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let o = tls_origin(dir.path(), "a", "127.0.0.2", "");
    let streams = format!(
        "{}{}{}{}{}",
        ftp_stream("ftp", "explicit", "files", "", ""),
        ftp_stream("ftps", "implicit", "files-tls", "", ""),
        upstream("files", "ftp", &[("a", o.daemon.addr)], ""),
        upstream("files-tls", "ftps", &[("a-tls", o.daemon.addr)], ""),
        tls_settings("files-tls", &o.ca_file),
    );
    let gw = gateway(dir.path(), &streams, 2);
    let explicit = gw.addr("stream ftp");
    let implicit = gw.addr("stream ftps");
    let big = test_file(&o.root.join("pub/big.bin"), 50 * 1024 * 1024);
    let upload = dir.path().join("upload.bin");
    std::fs::copy(o.root.join("pub/big.bin"), &upload).unwrap();
    let upload_arg = upload.to_string_lossy().into_owned();

    let modes: [(&str, Vec<&str>, SocketAddr, &str); 3] = [
        ("plain", vec![], explicit, "ftp"),
        ("explicit", vec!["--ssl-reqd"], explicit, "ftp"),
        ("implicit", vec![], implicit, "ftps"),
    ];
    for (mode, extra, addr, scheme) in &modes {
        let mut args = extra.clone();
        let down = url(scheme, *addr, "/pub/big.bin");
        args.push(&down);
        let got = curl(&args, None).unwrap_or_else(|e| panic!("{mode} download: {e}"));
        assert!(
            got == big,
            "{mode}: {} bytes came, not the same 50 MiB",
            got.len()
        );

        let target = url(scheme, *addr, &format!("/pub/up-{mode}.bin"));
        let mut args = extra.clone();
        args.extend(["-T", &upload_arg, &target]);
        curl(&args, None).unwrap_or_else(|e| panic!("{mode} upload: {e}"));
        let stored = std::fs::read(o.root.join(format!("pub/up-{mode}.bin"))).unwrap();
        assert!(
            stored == big,
            "{mode}: the upload stored {} bytes",
            stored.len()
        );
    }

    // lftp, explicit FTPS with private data, both ways.
    let script = format!(
        "set ssl:verify-certificate no; set ftp:ssl-force true; set ftp:ssl-protect-data true; \
         open -u anonymous,x -p {} 127.0.0.1; cd pub; get big.bin -o {}; put {} -o up-lftp.bin; bye",
        explicit.port(),
        dir.path().join("lftp.bin").display(),
        upload.display()
    );
    let out = Command::new("timeout")
        .args(["60", "lftp", "-c", &script])
        .output()
        .expect("run lftp");
    assert!(
        out.status.success(),
        "lftp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(dir.path().join("lftp.bin")).unwrap() == big,
        "lftp download"
    );
    assert!(
        std::fs::read(o.root.join("pub/up-lftp.bin")).unwrap() == big,
        "lftp upload"
    );

    // Six transfers by curl and two by lftp, counted; and logged without a password.
    let admin = gw.addr("HTTP (admin)");
    let ok = |service: &str| {
        common::metric(
            admin,
            &format!("geoedge_proxy_ftp_transfers_total{{result=\"ok\",service=\"{service}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(ok("ftp") + ok("ftps"), 8.0);
    let log = wait_for(Duration::from_secs(5), "the session lines", || {
        let log = std::fs::read_to_string(dir.path().join("access.log")).ok()?;
        (log.matches("ftp_session").count() >= 7).then_some(log)
    });
    assert!(
        log.contains("ftp_transfer")
            && log.contains("command=RETR")
            && log.contains("bytes_out=52428800"),
        "{log}"
    );
    assert!(!log.contains("PASS"), "{log}");
}

#[test]
fn the_origin_stays_hidden_and_a_passive_reply_naming_another_address_is_not_followed() {
    if !need(&["curl"]) || !need_daemons(&["vsftpd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Origin b names a foreign address in its PASV replies: a server behind NAT, or one
    // trying to bounce the gateway elsewhere.
    let a = tls_origin(dir.path(), "a", "127.0.0.2", "");
    let b = tls_origin(dir.path(), "b", "127.0.0.3", "pasv_address=192.0.2.1");
    std::fs::write(a.root.join("pub/hello.txt"), "hello from a\n").unwrap();
    std::fs::write(b.root.join("pub/hello.txt"), "hello from b\n").unwrap();
    let streams = format!(
        "{}{}{}{}{}{}",
        ftp_stream("a", "explicit", "files-a", "", ""),
        ftp_stream("b", "explicit", "files-b", "", ""),
        upstream("files-a", "ftps", &[("a", a.daemon.addr)], ""),
        tls_settings("files-a", &a.ca_file),
        upstream("files-b", "ftps", &[("b", b.daemon.addr)], ""),
        tls_settings("files-b", &b.ca_file),
    );
    let gw = gateway(dir.path(), &streams, 2);
    for (name, want) in [("a", "hello from a\n"), ("b", "hello from b\n")] {
        let addr = gw.addr(&format!("stream {name}"));
        for passive in ["--disable-epsv", "--ftp-pasv"] {
            let mut transcript = String::new();
            let got = curl(
                &[
                    "-v",
                    passive,
                    "--ssl-reqd",
                    &url("ftp", addr, "/pub/hello.txt"),
                ],
                Some(&mut transcript),
            )
            .unwrap_or_else(|e| panic!("{name} {passive}: {e}"));
            assert_eq!(String::from_utf8_lossy(&got), want);
            // Everything the client was told: no origin address (dotted or in a PASV
            // tuple), no foreign one, not the origin's banner or port.
            for leak in [
                "127.0.0.2",
                "127,0,0,2",
                "127.0.0.3",
                "127,0,0,3",
                "192.0.2.1",
                "192,0,2,1",
                "vsFTPd",
            ] {
                assert!(
                    !transcript.contains(leak),
                    "{name} {passive}: `{leak}` reached the client:\n{transcript}"
                );
            }
            let origin_port = if name == "a" {
                a.daemon.addr.port()
            } else {
                b.daemon.addr.port()
            };
            assert!(
                !transcript.contains(&format!(":{origin_port}")),
                "{transcript}"
            );
            let named_port = transcript
                .lines()
                .find_map(|l| {
                    l.strip_prefix("< 227 ")
                        .or_else(|| l.strip_prefix("< 229 "))
                })
                .unwrap_or_else(|| panic!("no passive reply:\n{transcript}"));
            assert!(
                named_port.contains("127,0,0,1,") || named_port.contains("(|||3"),
                "the passive reply names the gateway: {named_port}"
            );
        }
    }
}

/// A raw control connection to the gateway: what curl and lftp would never send.
struct Control {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Control {
    fn connect(addr: SocketAddr) -> Control {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        let mut c = Control { reader, stream };
        let banner = c.reply();
        assert!(banner.starts_with("220 "), "{banner}");
        c
    }

    /// The next reply's last line ("" when the connection closed).
    fn reply(&mut self) -> String {
        loop {
            let mut line = String::new();
            match self.reader.read_line(&mut line) {
                Ok(0) | Err(_) => return String::new(),
                Ok(_) => {}
            }
            let b = line.as_bytes();
            if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
                return line.trim_end().to_string();
            }
        }
    }

    fn send(&mut self, line: &str) -> String {
        write!(self.stream, "{line}\r\n").unwrap();
        self.reply()
    }

    /// Whether the gateway has closed the connection (an end of stream or a reset
    /// within the read timeout, not a timeout).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => true,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

fn epsv_port(reply: &str) -> u16 {
    let inner = reply
        .split("(|||")
        .nth(1)
        .and_then(|r| r.split('|').next())
        .unwrap();
    inner.parse().unwrap()
}

#[test]
fn data_connections_only_from_the_client_and_no_active_mode() {
    if !need_daemons(&["vsftpd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let origin = vsftpd(dir.path(), "plain", "127.0.0.2", &root, None, "");
    std::fs::write(root.join("pub/listed.txt"), "x").unwrap();
    let streams = format!(
        "{}{}",
        ftp_stream("ftp", "none", "files", "", ""),
        upstream("files", "ftp", &[("a", origin.addr)], ""),
    );
    let gw = gateway(dir.path(), &streams, 1);
    let mut c = Control::connect(gw.addr("stream ftp"));
    assert!(c.send("USER anonymous").starts_with("230"));
    assert!(
        c.send("AUTH TLS").starts_with("502"),
        "TLS is not offered on this listener"
    );
    assert!(c.send("PORT 127,0,0,1,4,1").starts_with("502"));
    assert!(c.send("EPRT |1|127.0.0.1|1025|").starts_with("502"));
    assert!(
        c.send("LIST").starts_with("425"),
        "no passive port asked for yet"
    );

    let port = epsv_port(&c.send("EPSV"));
    // A connection from another address is refused, and the port keeps waiting.
    let thief = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    thief
        .bind(&"127.0.0.5:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    thief
        .connect(
            &format!("127.0.0.1:{port}")
                .parse::<SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let mut thief: TcpStream = thief.into();
    thief
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut stolen = Vec::new();
    let _ = thief.read_to_end(&mut stolen);
    assert!(stolen.is_empty(), "the other address got data");
    let admin = gw.addr("HTTP (admin)");
    wait_for(Duration::from_secs(5), "the refusal counted", || {
        common::metric(
            admin,
            "geoedge_proxy_stream_refused_total{reason=\"data_source\",service=\"ftp\"}",
        )
        .filter(|n| *n == 1.0)
    });
    // The client itself still gets its listing.
    let mut data = TcpStream::connect(("127.0.0.1", port)).unwrap();
    data.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(c.send("NLST pub").starts_with("150"));
    let mut listing = String::new();
    data.read_to_string(&mut listing).unwrap();
    assert!(listing.contains("listed.txt"), "{listing}");
    assert!(c.reply().starts_with("226"));
    let active = common::metric(
        admin,
        "geoedge_proxy_stream_refused_total{reason=\"active_mode\",service=\"ftp\"}",
    );
    assert_eq!(active, Some(2.0));
}

#[test]
fn idle_oversized_flooding_and_guessing_clients_are_cut() {
    if !need_daemons(&["vsftpd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let origin = vsftpd(dir.path(), "plain", "127.0.0.2", &root, None, "");
    let streams = format!(
        "{}{}",
        ftp_stream(
            "ftp",
            "explicit",
            "files",
            "idle_timeout = \"1s\"",
            "max_line = 256\ncommands_per_second = 5\nrequire_tls = true",
        ),
        upstream("files", "ftp", &[("a", origin.addr)], ""),
    );
    let gw = gateway(dir.path(), &streams, 1);
    let addr = gw.addr("stream ftp");
    let admin = gw.addr("HTTP (admin)");
    let refused = |reason: &str| {
        common::metric(
            admin,
            &format!("geoedge_proxy_stream_refused_total{{reason=\"{reason}\",service=\"ftp\"}}"),
        )
        .unwrap_or(0.0)
    };

    // Idle: a 421 after a second, then the connection closes.
    let mut idle = Control::connect(addr);
    let started = std::time::Instant::now();
    assert!(idle.reply().starts_with("421"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(idle.closed());

    // A line past max_line.
    let mut long = Control::connect(addr);
    assert!(long
        .send(&format!("NOOP {}", "A".repeat(1000)))
        .starts_with("500"));
    assert!(long.closed());

    // TLS before USER.
    let mut plain = Control::connect(addr);
    assert!(
        plain.send("USER anonymous").starts_with("530"),
        "TLS is required here"
    );

    // A flood of commands: the burst is 10.
    let mut flood = Control::connect(addr);
    let mut burst = String::new();
    for _ in 0..30 {
        burst.push_str("NOOP\r\n");
    }
    flood.stream.write_all(burst.as_bytes()).unwrap();
    let mut last = String::new();
    for _ in 0..30 {
        let r = flood.reply();
        if r.is_empty() {
            break;
        }
        last = r;
    }
    assert!(last.starts_with("421"), "the flood ended with: {last}");

    assert_eq!(refused("idle"), 1.0);
    assert_eq!(refused("line_too_long"), 1.0);
    assert_eq!(refused("tls_required"), 1.0);
    assert_eq!(refused("command_rate"), 1.0);
}

#[test]
fn failed_logins_are_limited_per_client_address() {
    if !need_daemons(&["vsftpd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    // vsftpd serving anonymous users only refuses every other name.
    let origin = vsftpd(dir.path(), "plain", "127.0.0.2", &root, None, "");
    let streams = format!(
        "{}{}",
        ftp_stream("ftp", "explicit", "files", "", "login_attempts = 2"),
        upstream("files", "ftp", &[("a", origin.addr)], ""),
    );
    let gw = gateway(dir.path(), &streams, 1);
    let addr = gw.addr("stream ftp");
    let mut first = Control::connect(addr);
    assert!(first.send("USER mallory").starts_with("530"));
    drop(first);
    let mut second = Control::connect(addr);
    assert!(second.send("USER mallory").starts_with("530"));
    assert!(
        second.reply().starts_with("421"),
        "two failures end the session"
    );
    // A new session from the same address is turned away at once.
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    assert!(line.starts_with("421"), "{line}");
}

#[test]
fn a_killed_origin_sends_the_next_login_to_the_other_and_checks_see_it() {
    if !need(&["curl"]) || !need_daemons(&["vsftpd"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (root_a, root_b) = (dir.path().join("root-a"), dir.path().join("root-b"));
    let mut a = vsftpd(dir.path(), "a", "127.0.0.2", &root_a, None, "");
    let b = vsftpd(dir.path(), "b", "127.0.0.3", &root_b, None, "");
    std::fs::write(root_a.join("pub/who.txt"), "a\n").unwrap();
    std::fs::write(root_b.join("pub/who.txt"), "b\n").unwrap();
    let streams = format!(
        "{}{}",
        ftp_stream("ftp", "none", "files", "", ""),
        upstream(
            "files",
            "ftp",
            &[("a", a.addr), ("b", b.addr)],
            "balance = \"round_robin\"\n[upstreams.files.health_check]\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1\n",
        ),
    );
    let gw = gateway(dir.path(), &streams, 1);
    let addr = gw.addr("stream ftp");
    let admin = gw.addr("HTTP (admin)");
    let who = || {
        curl(&[&url("ftp", addr, "/pub/who.txt")], None)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    let mut seen: Vec<String> = (0..4).map(|_| who().unwrap()).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["a\n", "b\n"], "round robin reaches both");

    a.kill();
    for i in 0..6 {
        assert_eq!(
            who().unwrap_or_else(|e| panic!("login {i} after the kill: {e}")),
            "b\n"
        );
    }
    wait_for(
        Duration::from_secs(5),
        "the banner check marks a down",
        || {
            common::metric(
                admin,
                "geoedge_proxy_upstream_up{origin=\"a\",upstream=\"files\"}",
            )
            .filter(|v| *v == 0.0)
        },
    );
    assert_eq!(
        common::metric(admin, "geoedge_proxy_stream_up{service=\"ftp\"}"),
        Some(1.0)
    );
    let (_, status) = common::http_get(admin, "/status");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["services"][0]["name"], "ftp");
    assert_eq!(status["services"][0]["up"], true);
    assert!(
        status["services"][0]["connections"].as_u64().unwrap() >= 10,
        "{status}"
    );
}
