//! DNSSEC with real validators in the loop: `geoedge dns` signs online, Debian's unbound
//! (a validating resolver with the zone's DS as its trust anchor and a stub zone pointing
//! at us) and delv (bind9-dnsutils) check steered, static, NXDOMAIN and NODATA answers;
//! a tampered or expired signature makes unbound answer SERVFAIL; a ZSK rollover runs
//! under a stream of queries without one failure.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dns::{udp, udp_raw, Ask};
use common::unbound::{sbin, Unbound};
use common::{bin, build_geo, need, wait_for, Proc};
use hickory_proto::dnssec::rdata::{DNSSECRData, RRSIG};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

fn zone_text(ttl: u32) -> String {
    format!(
        "$ORIGIN example.test.\n$TTL {ttl}\n\
@       {ttl} IN SOA ns1 hostmaster 1 3600 600 86400 {ttl}\n\
@       IN NS  ns1\n\
ns1     IN A   127.0.0.1\n\
static  IN A   192.0.2.80\n\
static  IN AAAA 2001:db8::80\n\
a.deep  IN TXT \"deep\"\n"
    ) + &(0..12)
        .map(|i| format!("big IN TXT \"{i:02}-{}\"\n", "x".repeat(57)))
        .collect::<String>()
}

struct Signed {
    dir: tempfile::TempDir,
    dns: Proc,
}

impl Signed {
    /// A DNS server for example.test. signing with the keys in `keys/` (a CSK made at
    /// first start unless the caller put keys there), the zone's TTLs `ttl`.
    fn start(ttl: u32, prepare: impl FnOnce(&Path)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        build_geo(dir.path(), "");
        std::fs::write(dir.path().join("zone.txt"), zone_text(ttl)).unwrap();
        std::fs::write(
            dir.path().join("dns.toml"),
            r#"[server]
listen = ["127.0.0.1:0"]
control = "127.0.0.1:0"
workers = 1
[geoip]
database = "geo.mmdb"
[steering]
default_order = ["eu", "us"]
[[zones]]
origin = "example.test."
file = "zone.txt"
[[zones.steered]]
name = "www"
ttl = 30
[zones.dnssec]
key_dir = "keys"
[[regions]]
name = "eu"
latitude = 50.1
longitude = 8.7
[[regions.nodes]]
name = "eu-1"
ipv4 = "127.0.0.11"
[[regions]]
name = "us"
latitude = 39.0
longitude = -77.5
[[regions.nodes]]
name = "us-1"
ipv4 = "127.0.0.12"
ipv6 = "2001:db8::12"
"#,
        )
        .unwrap();
        prepare(dir.path());
        let dns = Proc::start(&["dns", "--config", "dns.toml"], dir.path(), 3);
        Self { dir, dns }
    }

    fn udp(&self) -> SocketAddr {
        self.dns.addr("UDP")
    }

    /// `geoedge dnssec ds`: the DS lines only.
    fn ds(&self) -> Vec<String> {
        let out = geoedge(
            self.dir.path(),
            &["dnssec", "ds", "example.test", "--config", "dns.toml"],
        );
        out.lines()
            .filter(|l| l.contains(" IN DS "))
            .map(str::to_string)
            .collect()
    }

    fn reload(&self) {
        let pid = self.dns.child.id().to_string();
        let ok = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(ok.success());
    }
}

fn geoedge(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "geoedge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// unbound validating, with `ds` as the zone's trust anchor.
fn validating(upstream: SocketAddr, ds: &[String], extra: &str) -> Unbound {
    let anchors: String = ds
        .iter()
        .map(|l| format!("    trust-anchor: \"{l}\"\n"))
        .collect();
    Unbound::start(
        upstream,
        "validator iterator",
        &format!("    val-log-level: 2\n{anchors}{extra}"),
    )
}

/// Questions to unbound, recursive and with DO.
trait Resolver {
    fn ask(&self, name: &str, qtype: RecordType) -> Message;
    fn ask_patiently(&self, name: &str, qtype: RecordType) -> Message;
}

impl Resolver for Unbound {
    fn ask(&self, name: &str, qtype: RecordType) -> Message {
        udp(self.addr, &Ask::new(name, qtype).recursive().dnssec())
    }

    /// Asks until an answer comes: unbound retries bogus data before it gives SERVFAIL,
    /// which can take longer than one client timeout on a busy machine.
    fn ask_patiently(&self, name: &str, qtype: RecordType) -> Message {
        let bytes = Ask::new(name, qtype)
            .recursive()
            .dnssec()
            .message()
            .to_vec()
            .unwrap();
        wait_for(Duration::from_secs(30), "an answer from unbound", || {
            udp_raw(self.addr, &bytes).map(|raw| Message::from_vec(&raw).unwrap())
        })
    }
}

fn rrsigs(m: &Message) -> Vec<&RRSIG> {
    m.answers
        .iter()
        .chain(&m.authorities)
        .filter_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::RRSIG(s)) => Some(s),
            _ => None,
        })
        .collect()
}

#[test]
fn unbound_and_delv_validate_steered_static_and_negative_answers() {
    if !need(&[&sbin("unbound"), "delv"]) {
        return;
    }
    let w = Signed::start(300, |_| {});
    // Straight from us: a DO query for the steered name gets its RRSIG (the fast path
    // leaves DO queries of a signed zone to the signing path); without DO, none.
    let signed = udp(
        w.udp(),
        &Ask::new("www.example.test.", RecordType::A).dnssec(),
    );
    assert_eq!(rrsigs(&signed).len(), 1, "{signed:?}");
    assert!(signed.edns.as_ref().unwrap().flags().dnssec_ok);
    let plain = udp(w.udp(), &Ask::new("www.example.test.", RecordType::A));
    assert!(rrsigs(&plain).is_empty(), "{plain:?}");

    let ds = w.ds();
    assert_eq!(ds.len(), 1, "{ds:?}");
    let u = validating(w.udp(), &ds, "");
    for (name, qtype, rcode, answers) in [
        ("www.example.test.", RecordType::A, ResponseCode::NoError, 1),
        // eu, nearest here, has no IPv6 node: NODATA, its NSEC without AAAA.
        (
            "www.example.test.",
            RecordType::AAAA,
            ResponseCode::NoError,
            0,
        ),
        (
            "static.example.test.",
            RecordType::A,
            ResponseCode::NoError,
            1,
        ),
        (
            "example.test.",
            RecordType::DNSKEY,
            ResponseCode::NoError,
            1,
        ),
        // Compact denial: a name that does not exist is NOERROR/NODATA with NXNAME.
        (
            "nope.example.test.",
            RecordType::A,
            ResponseCode::NoError,
            0,
        ),
        (
            "static.example.test.",
            RecordType::MX,
            ResponseCode::NoError,
            0,
        ),
        // An empty non-terminal, and the steered name for a type it has not.
        (
            "deep.example.test.",
            RecordType::TXT,
            ResponseCode::NoError,
            0,
        ),
        (
            "www.example.test.",
            RecordType::TXT,
            ResponseCode::NoError,
            0,
        ),
    ] {
        let m = u.ask(name, qtype);
        assert_eq!(m.metadata.response_code, rcode, "{name} {qtype}: {m:?}");
        assert!(
            m.metadata.authentic_data,
            "{name} {qtype}: unbound did not validate (no AD): {m:?}"
        );
        let got = m
            .answers
            .iter()
            .filter(|r| r.record_type() == qtype)
            .count();
        assert_eq!(got >= 1, answers >= 1, "{name} {qtype}: {m:?}");
    }
    // delv validates on its own, from the same DS.
    let anchor = w.dir.path().join("anchor.conf");
    let f: Vec<&str> = ds[0].split_whitespace().collect();
    std::fs::write(
        &anchor,
        format!(
            "trust-anchors {{ example.test. static-ds {} {} {} \"{}\"; }};\n",
            f[3], f[4], f[5], f[6]
        ),
    )
    .unwrap();
    let port = w.udp().port().to_string();
    for q in [["www.example.test", "A"], ["nope.example.test", "A"]] {
        let out = Command::new("delv")
            .args(["@127.0.0.1", "-p", &port, "-a"])
            .arg(&anchor)
            .args(["+root=example.test", q[0], q[1]])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("fully validated"), "delv {q:?}: {text}");
    }
    println!("unbound: 8 answers validated (AD); delv: 2 fully validated");
}

/// A relay between unbound and us that flips one bit of every RRSIG's signature.
fn tampering_relay(upstream: SocketAddr, stop: Arc<AtomicBool>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65535];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            let Some(answer) = udp_raw(upstream, &buf[..n]) else {
                continue;
            };
            let mut m = Message::from_vec(&answer).unwrap();
            for r in m.answers.iter_mut().chain(m.authorities.iter_mut()) {
                if let RData::DNSSEC(DNSSECRData::RRSIG(s)) = &r.data {
                    let mut sig = s.sig().to_vec();
                    sig[0] ^= 1;
                    r.data =
                        RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(s.input().clone(), sig)));
                }
            }
            let _ = sock.send_to(&m.to_vec().unwrap(), from);
        }
    });
    addr
}

#[test]
fn a_tampered_or_expired_signature_makes_unbound_answer_servfail() {
    if !need(&[&sbin("unbound")]) {
        return;
    }
    let w = Signed::start(300, |_| {});
    let ds = w.ds();
    let stop = Arc::new(AtomicBool::new(false));
    let relay = tampering_relay(w.udp(), stop.clone());
    let tampered = validating(relay, &ds, "");
    let m = tampered.ask_patiently("www.example.test.", RecordType::A);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{m:?}");
    stop.store(true, Ordering::Relaxed);
    // Validating as if it were 2040: every signature has expired.
    let late = validating(w.udp(), &ds, "    val-override-date: \"20400101000000\"\n");
    for name in ["www.example.test.", "static.example.test."] {
        let m = late.ask_patiently(name, RecordType::A);
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::ServFail,
            "{name}: {m:?}"
        );
    }
    // The same server, today: fine.
    let today = validating(w.udp(), &ds, "");
    let m = today.ask("www.example.test.", RecordType::A);
    assert!(m.metadata.authentic_data, "{m:?}");
}

fn keygen(dir: &Path, role: &str, state: &str) -> PathBuf {
    let out = geoedge(
        dir,
        &[
            "dnssec",
            "keygen",
            "example.test",
            "--dir",
            "keys",
            "--role",
            role,
            "--state",
            state,
        ],
    );
    dir.join(out.trim())
}

fn set_state(path: &Path, state: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    let text = text
        .lines()
        .map(|l| {
            if l.starts_with("state = ") {
                format!("state = {state}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    std::fs::write(path, text).unwrap();
}

fn key_tag(path: &Path) -> u16 {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("tag = "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_zsk_rollover_under_queries_never_fails_validation() {
    if !need(&[&sbin("unbound")]) {
        return;
    }
    // TTLs of 1 s so each step's wait (a TTL after the change reached unbound) is short.
    let mut zsk1 = PathBuf::new();
    let w = Signed::start(1, |dir| {
        keygen(dir, "ksk", "active");
        zsk1 = keygen(dir, "zsk", "active");
    });
    let ds = w.ds();
    assert_eq!(ds.len(), 1, "one KSK, one DS: {ds:?}");
    let u = Arc::new(validating(w.udp(), &ds, ""));
    let stop = Arc::new(AtomicBool::new(false));
    let (asked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (u, stop, asked, failed) = (u.clone(), stop.clone(), asked.clone(), failed.clone());
        std::thread::spawn(move || {
            let names = [
                "www.example.test.",
                "static.example.test.",
                "nope.example.test.",
            ];
            let started = Instant::now();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(60) {
                let m = u.ask(names[i % names.len()], RecordType::A);
                asked.fetch_add(1, Ordering::Relaxed);
                if m.metadata.response_code != ResponseCode::NoError || !m.metadata.authentic_data {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let dnskey_tags = |u: &Unbound| -> Vec<u16> {
        let m = u.ask("example.test.", RecordType::DNSKEY);
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::DNSSEC(DNSSECRData::DNSKEY(k)) => k.calculate_key_tag().ok(),
                _ => None,
            })
            .collect()
    };
    let answer_tag = |u: &Unbound| -> Option<u16> {
        let m = u.ask("static.example.test.", RecordType::A);
        rrsigs(&m).first().map(|s| s.input().key_tag)
    };
    let settle = || std::thread::sleep(Duration::from_millis(2500)); // > 2 TTLs
    let tag1 = key_tag(&zsk1);
    // 1. Pre-publish the new ZSK: in the DNSKEY set, signing nothing.
    let zsk2 = keygen(w.dir.path(), "zsk", "publish");
    let tag2 = key_tag(&zsk2);
    w.reload();
    wait_for(Duration::from_secs(10), "the new ZSK published", || {
        dnskey_tags(&u).contains(&tag2).then_some(())
    });
    settle();
    // 2. Switch: the new key signs, the old one stays published.
    set_state(&zsk2, "active");
    set_state(&zsk1, "publish");
    w.reload();
    wait_for(
        Duration::from_secs(10),
        "answers signed by the new ZSK",
        || (answer_tag(&u) == Some(tag2)).then_some(()),
    );
    settle();
    // 3. Withdraw the old key.
    std::fs::remove_file(&zsk1).unwrap();
    w.reload();
    wait_for(Duration::from_secs(10), "the old ZSK withdrawn", || {
        (!dnskey_tags(&u).contains(&tag1)).then_some(())
    });
    settle();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    // A key set that cannot sign is refused on reload; the running keys keep signing.
    std::fs::write(
        w.dir.path().join("keys/broken.key"),
        "zone = example.test.\n",
    )
    .unwrap();
    w.reload();
    let control = w.dns.addr("HTTP (control)");
    wait_for(Duration::from_secs(5), "the reload refused", || {
        common::metric(
            control,
            r#"geoedge_dns_config_reloads_total{result="error"}"#,
        )
        .filter(|v| *v >= 1.0)
    });
    let direct = udp(
        w.udp(),
        &Ask::new("static.example.test.", RecordType::A).dnssec(),
    );
    assert_eq!(rrsigs(&direct)[0].input().key_tag, tag2, "{direct:?}");
    let (asked, failed) = (
        asked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    println!("ZSK rollover {tag1} -> {tag2}: {asked} validated queries, {failed} failed");
    assert!(asked > 100, "{asked}");
    assert_eq!(failed, 0, "{failed} of {asked} queries failed validation");
}

#[test]
fn keys_that_cannot_sign_the_zone_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    // A key of another zone.
    geoedge(
        dir.path(),
        &["dnssec", "keygen", "other.test", "--dir", "keys"],
    );
    build_geo(dir.path(), "");
    std::fs::write(dir.path().join("zone.txt"), zone_text(300)).unwrap();
    std::fs::write(
        dir.path().join("dns.toml"),
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[geoip]\ndatabase = \"geo.mmdb\"\n\
[[zones]]\norigin = \"example.test.\"\nfile = \"zone.txt\"\n\
[zones.dnssec]\nkey_dir = \"keys\"\n\
[[regions]]\nname = \"eu\"\nlatitude = 50.1\nlongitude = 8.7\n\
[[regions.nodes]]\nname = \"eu-1\"\nipv4 = \"127.0.0.11\"\n",
    )
    .unwrap();
    let run = || {
        let out = Command::new(bin())
            .args(["dns", "--config", "dns.toml"])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let err = run();
    assert!(err.contains("not example.test."), "{err}");
    // Only a ZSK: nothing signs the DNSKEY set.
    for e in std::fs::read_dir(dir.path().join("keys")).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    keygen(dir.path(), "zsk", "active");
    let err = run();
    assert!(err.contains("no active csk or ksk"), "{err}");
    // A key file that is not one.
    std::fs::write(
        dir.path().join("keys/broken.key"),
        "zone = example.test.\nrole = csk\n",
    )
    .unwrap();
    let err = run();
    assert!(err.contains("broken.key"), "{err}");
}

#[test]
fn a_missing_name_is_nodata_with_nxname_unless_the_client_sets_co() {
    let w = Signed::start(300, |_| {});
    let ask = Ask::new("nope.example.test.", RecordType::A).dnssec();
    let m = udp(w.udp(), &ask);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    let nsec = m
        .authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::DNSSEC(DNSSECRData::NSEC(n)) => Some(n),
            _ => None,
        })
        .expect("an NSEC");
    let types: Vec<u16> = nsec.type_bit_maps().map(u16::from).collect();
    assert_eq!(types, vec![46, 47, 128], "RRSIG, NSEC, NXNAME");
    // SOA and NSEC, each with its RRSIG.
    assert_eq!(rrsigs(&m).len(), 2, "{m:?}");
    // The CO flag (RFC 9824 §4): NXDOMAIN, and CO echoed.
    let mut query = ask.message();
    query.edns.as_mut().unwrap().flags_mut().z = 0x4000;
    let raw = udp_raw(w.udp(), &query.to_vec().unwrap()).unwrap();
    let m = Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(m.edns.as_ref().unwrap().flags().z & 0x4000, 0x4000);
    // Without DO: the plain NXDOMAIN, nothing signed.
    let m = udp(w.udp(), &Ask::new("nope.example.test.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(rrsigs(&m).is_empty());
}

#[test]
fn a_do_query_with_a_small_buffer_is_truncated_and_tcp_has_it_whole() {
    let w = Signed::start(300, |_| {});
    let ask = Ask::new("big.example.test.", RecordType::TXT)
        .dnssec()
        .payload(512);
    let m = udp(w.udp(), &ask);
    assert!(m.metadata.truncation, "{m:?}");
    let whole = common::dns::tcp(w.dns.addr("TCP"), &ask);
    assert!(!whole.metadata.truncation);
    assert_eq!(rrsigs(&whole).len(), 1, "{whole:?}");
    assert_eq!(
        whole
            .answers
            .iter()
            .filter(|r| r.record_type() == RecordType::TXT)
            .count(),
        12
    );
}
