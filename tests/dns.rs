//! `geoedge dns` end to end: the real binary on loopback, port 0, real packets.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;

use common::dns::{addresses, ecs_scope, tcp, tcp_raw, udp, udp_raw, Ask};
use common::{build_geo, http_get, Proc};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

const ZONE: &str = r#"$ORIGIN example.test.
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 86400 60
@       IN NS  ns1
ns1     IN A   127.0.0.1
static  IN A   192.0.2.80
static  IN AAAA 2001:db8::80
alias   IN CNAME static
a.deep  IN TXT "deep"
"#;

/// Twelve TXT records of about 73 bytes each on the wire: over 512 bytes, under 1232.
fn big_txt() -> String {
    (0..12)
        .map(|i| format!("big IN TXT \"{i:02}-{}\"\n", "x".repeat(57)))
        .collect()
}

struct World {
    _dir: tempfile::TempDir,
    proc: Proc,
}

struct Setup {
    /// (node, initial) pairs to start down.
    down: Vec<&'static str>,
    steering: &'static str,
    geo_extra: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            down: Vec::new(),
            steering: "[steering]\ndefault_order = [\"us\", \"eu\", \"ap\"]\n",
            geo_extra: "",
        }
    }
}

fn config_text(setup: &Setup) -> String {
    let node = |region: &str, n: &str, v4: &str, v6: &str| {
        let initial = if setup.down.contains(&n) {
            "down"
        } else {
            "up"
        };
        format!(
            "[[regions.nodes]]\nname = \"{n}\"\nipv4 = \"{v4}\"\nipv6 = \"{v6}\"\ninitial = \"{initial}\"\n# {region}\n"
        )
    };
    format!(
        r#"[server]
listen = ["127.0.0.1:0"]
control = "127.0.0.1:0"
workers = 1

[geoip]
database = "geo.mmdb"

{steering}

[[zones]]
origin = "example.test."
file = "zone.txt"
[[zones.steered]]
name = "www"
ttl = 30
answers = 2

[[regions]]
name = "eu"
latitude = 50.1109
longitude = 8.6821
{eu1}{eu2}
[[regions]]
name = "us"
latitude = 39.0438
longitude = -77.4874
{us1}
[[regions]]
name = "ap"
latitude = 1.3521
longitude = 103.8198
{ap1}
"#,
        steering = setup.steering,
        eu1 = node("eu", "eu-1", "127.0.0.11", "2001:db8:ffff:11::1"),
        eu2 = node("eu", "eu-2", "127.0.0.21", "2001:db8:ffff:11::2"),
        us1 = node("us", "us-1", "127.0.0.12", "2001:db8:ffff:12::1"),
        ap1 = node("ap", "ap-1", "127.0.0.13", "2001:db8:ffff:13::1"),
    )
}

fn write_world(dir: &Path, setup: &Setup) {
    build_geo(dir, setup.geo_extra);
    std::fs::write(dir.join("zone.txt"), format!("{ZONE}{}", big_txt())).unwrap();
    std::fs::write(dir.join("dns.toml"), config_text(setup)).unwrap();
}

fn world(setup: Setup) -> World {
    let dir = tempfile::tempdir().unwrap();
    write_world(dir.path(), &setup);
    let proc = Proc::start(&["dns", "--config", "dns.toml"], dir.path(), 3);
    World { _dir: dir, proc }
}

impl World {
    fn udp_addr(&self) -> SocketAddr {
        self.proc.addr("UDP")
    }
    fn tcp_addr(&self) -> SocketAddr {
        self.proc.addr("TCP")
    }
    fn udp(&self, ask: &Ask) -> Message {
        udp(self.udp_addr(), ask)
    }
    fn tcp(&self, ask: &Ask) -> Message {
        tcp(self.tcp_addr(), ask)
    }
    fn metrics(&self) -> String {
        http_get(self.proc.addr("HTTP (control)"), "/metrics").1
    }
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

fn sorted(mut v: Vec<IpAddr>) -> Vec<IpAddr> {
    v.sort();
    v
}

const WWW: &str = "www.example.test.";

#[test]
fn each_doc_prefix_gets_its_region_with_scope_over_udp_and_tcp() {
    let w = world(Setup::default());
    // Ashburn ranks the regions as the default order (us, eu, ap) does for addresses the
    // database does not place, so its /24 merges with the empty space around it: /11.
    let cases = [
        ("192.0.2.0", 24, 24, vec!["127.0.0.11", "127.0.0.21"]),
        ("198.51.100.0", 24, 11, vec!["127.0.0.12"]),
        ("203.0.113.0", 24, 24, vec!["127.0.0.13"]),
    ];
    for (addr, prefix, scope, expected) in cases {
        let ask = Ask::new(WWW, RecordType::A).ecs(addr, prefix);
        for (proto, m) in [("udp", w.udp(&ask)), ("tcp", w.tcp(&ask))] {
            assert_eq!(
                m.metadata.response_code,
                ResponseCode::NoError,
                "{addr} {proto}"
            );
            assert!(m.metadata.authoritative, "{addr} {proto}: AA");
            assert!(!m.metadata.recursion_available, "{addr} {proto}: RA");
            assert_eq!(
                sorted(addresses(&m)),
                sorted(ips(&expected)),
                "{addr} {proto}"
            );
            assert_eq!(ecs_scope(&m), Some((prefix, scope)), "{addr} {proto}");
        }
    }
    // IPv6 clients and AAAA answers: a /56 inside a /48 database network gets scope 48.
    let v6 = [
        ("2001:db8:1::", "2001:db8:ffff:11::1"),
        ("2001:db8:2::", "2001:db8:ffff:12::1"),
        ("2001:db8:3::", "2001:db8:ffff:13::1"),
    ];
    for (addr, expected) in v6 {
        let m = w.udp(&Ask::new(WWW, RecordType::AAAA).ecs(addr, 56));
        assert!(
            addresses(&m).contains(&expected.parse().unwrap()),
            "{addr}: {m:?}"
        );
        assert_eq!(ecs_scope(&m), Some((56, 48)), "{addr}");
    }
    // Montreal's /16 has Auckland's /20 carved out of it, so the database network that
    // decides 198.19.0.0 is a /17; a /16 source prefix caps the scope at 16.
    let m = w.udp(&Ask::new(WWW, RecordType::A).ecs("198.19.0.0", 16));
    assert_eq!(addresses(&m), ips(&["127.0.0.12"]));
    assert_eq!(ecs_scope(&m), Some((16, 16)));
    let m = w.udp(&Ask::new(WWW, RecordType::A).ecs("198.19.0.0", 24));
    assert_eq!(ecs_scope(&m), Some((24, 17)));
}

#[test]
fn without_ecs_the_source_address_decides() {
    // Loopback placed in Singapore for this test only.
    let w = world(Setup {
        geo_extra: "127.0.0.0/8 SG AS 1.35 103.82 Loopback-in-Singapore",
        ..Setup::default()
    });
    let m = w.udp(&Ask::new(WWW, RecordType::A));
    assert_eq!(addresses(&m), ips(&["127.0.0.13"]));
    assert_eq!(
        ecs_scope(&m),
        None,
        "no ECS in the query, none in the answer"
    );
    // ECS with source prefix 0: the client opts out, the source decides, scope 0.
    let m = w.udp(&Ask::new(WWW, RecordType::A).ecs("0.0.0.0", 0));
    assert_eq!(addresses(&m), ips(&["127.0.0.13"]));
    assert_eq!(ecs_scope(&m), Some((0, 0)));
}

#[test]
fn nearest_region_for_other_continents_overrides_and_unknown_clients() {
    let w = world(Setup {
        steering: "[steering]\ndefault_order = [\"ap\", \"us\", \"eu\"]\n\
                   [[steering.overrides]]\ncountry = \"JP\"\nregions = [\"eu\"]\n\
                   [[steering.overrides]]\ncidr = \"198.18.6.128/25\"\nregions = [\"ap\"]\n",
        ..Setup::default()
    });
    let first = |addr: &str| {
        let m = w.udp(&Ask::new(WWW, RecordType::A).ecs(addr, 24));
        (addresses(&m), ecs_scope(&m).map(|s| s.1))
    };
    // Sao Paulo is nearest to Ashburn, Sydney to Singapore, London to Frankfurt.
    assert_eq!(first("198.18.1.0").0, ips(&["127.0.0.12"]));
    assert_eq!(first("198.18.2.0").0, ips(&["127.0.0.13"]));
    assert_eq!(
        sorted(first("198.18.5.0").0),
        ips(&["127.0.0.11", "127.0.0.21"])
    );
    // Tokyo would be nearest to Singapore; the country override sends it to eu.
    assert_eq!(
        sorted(first("198.18.4.0").0),
        ips(&["127.0.0.11", "127.0.0.21"])
    );
    // A CIDR override inside San Francisco's /24: the scope narrows to /25 on both sides.
    let m = w.udp(&Ask::new(WWW, RecordType::A).ecs("198.18.6.128", 25));
    assert_eq!(addresses(&m), ips(&["127.0.0.13"]));
    let m2 = w.udp(&Ask::new(WWW, RecordType::A).ecs("198.18.6.0", 25));
    assert_eq!(addresses(&m2), ips(&["127.0.0.12"]));
    assert_eq!(ecs_scope(&m2), Some((25, 25)));
    // Not in the database: default order, first is ap.
    let (answer, scope) = first("8.8.8.0");
    assert_eq!(answer, ips(&["127.0.0.13"]));
    assert!(scope.is_some_and(|s| s <= 24));
}

#[test]
fn nearest_region_down_sends_clients_to_the_next_one() {
    let w = world(Setup {
        down: vec!["eu-1", "eu-2"],
        ..Setup::default()
    });
    // Frankfurt: eu is down; Ashburn (6,500 km) is nearer than Singapore (10,300 km).
    let m = w.udp(&Ask::new(WWW, RecordType::A).ecs("192.0.2.0", 24));
    assert_eq!(addresses(&m), ips(&["127.0.0.12"]));
    assert!(w
        .metrics()
        .contains(r#"geoedge_dns_node_up{node="eu-1",region="eu"} 0"#));
}

#[test]
fn a_down_node_is_left_out_of_its_regions_answer() {
    let w = world(Setup {
        down: vec!["eu-2"],
        ..Setup::default()
    });
    for _ in 0..4 {
        let m = w.udp(&Ask::new(WWW, RecordType::A).ecs("192.0.2.0", 24));
        assert_eq!(addresses(&m), ips(&["127.0.0.11"]));
    }
}

#[test]
fn all_regions_down_fails_open_and_counts_it() {
    let w = world(Setup {
        down: vec!["eu-1", "eu-2", "us-1", "ap-1"],
        ..Setup::default()
    });
    let m = w.udp(&Ask::new(WWW, RecordType::A).ecs("203.0.113.0", 24));
    assert_eq!(
        addresses(&m),
        ips(&["127.0.0.13"]),
        "nearest region as if all were up"
    );
    let metrics = w.metrics();
    assert!(
        metrics.contains("geoedge_dns_fail_open_total 1"),
        "{metrics}"
    );
}

#[test]
fn static_records_negative_answers_and_refusals() {
    let w = world(Setup::default());
    let m = w.udp(&Ask::new("StAtIc.ExAmPlE.tEsT.", RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(addresses(&m), ips(&["192.0.2.80"]));

    let m = w.udp(&Ask::new("alias.example.test.", RecordType::AAAA));
    assert_eq!(m.answers.len(), 2, "CNAME and its in-zone target");
    assert_eq!(addresses(&m), ips(&["2001:db8::80"]));

    let nx = w.udp(&Ask::new("nope.example.test.", RecordType::A));
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative);
    assert_eq!(nx.authorities.len(), 1);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
    assert_eq!(nx.authorities[0].ttl, 60, "negative TTL is the SOA minimum");

    for (name, qtype) in [
        ("static.example.test.", RecordType::MX),
        ("deep.example.test.", RecordType::A),
        (WWW, RecordType::TXT),
    ] {
        let m = w.udp(&Ask::new(name, qtype));
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{name} {qtype}"
        );
        assert!(m.answers.is_empty(), "{name} {qtype}: NODATA");
        assert_eq!(
            m.authorities[0].record_type(),
            RecordType::SOA,
            "{name} {qtype}"
        );
    }

    let refused = w.udp(&Ask::new("www.example.com.", RecordType::A));
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(!refused.metadata.authoritative);
    assert!(refused.answers.is_empty());

    // RFC 8482: ANY gets one RRset, not everything.
    let any = w.udp(&Ask::new("static.example.test.", RecordType::ANY));
    assert_eq!(any.answers.len(), 1);
    let any = w.udp(&Ask::new(WWW, RecordType::ANY).ecs("192.0.2.0", 24));
    assert!(!any.answers.is_empty());
    assert!(any.answers.iter().all(|r| r.record_type() == RecordType::A));
}

#[test]
fn truncated_over_udp_then_complete_over_tcp() {
    let w = world(Setup::default());
    let small = w.udp(&Ask::new("big.example.test.", RecordType::TXT).no_edns());
    assert!(
        small.metadata.truncation,
        "12 x 73-byte TXT does not fit 512 bytes"
    );
    let raw = udp_raw(
        w.udp_addr(),
        &Ask::new("big.example.test.", RecordType::TXT)
            .no_edns()
            .message()
            .to_vec()
            .unwrap(),
    )
    .unwrap();
    assert!(raw.len() <= 512);
    let full = w.tcp(&Ask::new("big.example.test.", RecordType::TXT).no_edns());
    assert!(!full.metadata.truncation);
    assert_eq!(full.answers.len(), 12);
    // With a large enough EDNS buffer, UDP carries it whole.
    let edns = w.udp(&Ask::new("big.example.test.", RecordType::TXT));
    assert!(!edns.metadata.truncation);
    assert_eq!(edns.answers.len(), 12);
}

/// A deterministic byte stream for fuzz-like inputs (xorshift64*).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

fn still_answers(w: &World) {
    let m = w.udp(&Ask::new(WWW, RecordType::A).ecs("198.51.100.0", 24));
    assert_eq!(
        addresses(&m),
        ips(&["127.0.0.12"]),
        "server still answers good queries"
    );
    let m = w.tcp(&Ask::new(WWW, RecordType::A).ecs("198.51.100.0", 24));
    assert_eq!(
        addresses(&m),
        ips(&["127.0.0.12"]),
        "server still answers good queries over TCP"
    );
}

fn rcode_of(raw: &[u8]) -> u8 {
    raw[3] & 0x0f
}

#[test]
fn bad_packets_get_formerr_or_silence_and_the_server_keeps_answering() {
    let w = world(Setup::default());
    let good = Ask::new(WWW, RecordType::A)
        .ecs("192.0.2.0", 24)
        .message()
        .to_vec()
        .unwrap();

    // Random bytes: whatever comes back must be a response with the same id, or nothing.
    for seed in 1..200u64 {
        let len = (seed as usize * 7) % 600 + 1;
        let mut bytes = noise(seed, len);
        if len > 2 {
            bytes[2] &= 0x7f; // a query, not a response, so it is not ignored outright
        }
        if let Some(raw) = udp_raw(w.udp_addr(), &bytes) {
            assert!(raw.len() >= 12);
            assert_eq!(raw[..2], bytes[..2], "reply carries the query id");
        }
    }
    still_answers(&w);

    // Truncated header: too short to answer.
    assert_eq!(udp_raw(w.udp_addr(), &good[..5]), None);
    // Header claims a question that is cut off: FORMERR.
    let cut = udp_raw(w.udp_addr(), &good[..20]).expect("an answer to a cut question");
    assert_eq!(rcode_of(&cut), 1);

    // Zero questions and two questions: FORMERR.
    let mut zero = good[..12].to_vec();
    zero[4] = 0;
    zero[5] = 0;
    zero[10] = 0;
    zero[11] = 0;
    assert_eq!(rcode_of(&udp_raw(w.udp_addr(), &zero).unwrap()), 1);
    let mut two = Ask::new(WWW, RecordType::A).no_edns().message();
    two.add_query(hickory_proto::op::Query::query(
        "static.example.test.".parse().unwrap(),
        RecordType::A,
    ));
    let raw = udp_raw(w.udp_addr(), &two.to_vec().unwrap()).unwrap();
    assert_eq!(rcode_of(&raw), 1);

    // A name of 127 one-letter labels (255 bytes, the maximum) and one past the maximum.
    let long = vec!["a"; 127].join(".") + ".";
    let m = w.udp(&Ask::new(&long, RecordType::A));
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let mut too_long = good[..12].to_vec();
    too_long[10] = 0;
    too_long[11] = 0; // no additional records
    for _ in 0..130 {
        too_long.extend_from_slice(&[1, b'a']);
    }
    too_long.extend_from_slice(&[0, 0, 1, 0, 1]);
    let raw = udp_raw(w.udp_addr(), &too_long).expect("FORMERR for an over-long name");
    assert_eq!(rcode_of(&raw), 1);
    // A compression pointer that points at itself.
    let mut lp = good[..12].to_vec();
    lp[10] = 0;
    lp[11] = 0;
    lp.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    if let Some(raw) = udp_raw(w.udp_addr(), &lp) {
        assert_eq!(rcode_of(&raw), 1);
    }

    // ECS with bits set beyond the source prefix: FORMERR (RFC 7871 §7.1.1).
    // (/24 carries three address bytes, so the stray bit must sit inside them: /23.)
    let m = w.udp(&Ask::new(WWW, RecordType::A).ecs("192.0.3.0", 23));
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // ECS with a source prefix longer than the address: FORMERR.
    let mut m33 = Ask::new(WWW, RecordType::A).message();
    if let Some(edns) = m33.edns.as_mut() {
        edns.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                8,
                vec![0, 1, 33, 0, 192, 0, 2, 0, 0],
            ));
    }
    let raw = udp_raw(w.udp_addr(), &m33.to_vec().unwrap()).expect("answer");
    assert_eq!(rcode_of(&raw), 1);

    // Unknown EDNS options are ignored (RFC 6891 §6.1.2).
    let mut unknown = Ask::new(WWW, RecordType::A).message();
    if let Some(edns) = unknown.edns.as_mut() {
        edns.options_mut()
            .insert(hickory_proto::rr::rdata::opt::EdnsOption::Unknown(
                65001,
                vec![1, 2, 3],
            ));
    }
    let raw = udp_raw(w.udp_addr(), &unknown.to_vec().unwrap()).unwrap();
    let m = Message::from_vec(&raw).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(!addresses(&m).is_empty());

    // EDNS version 1: BADVERS (extended rcode 16).
    let mut v1 = Ask::new(WWW, RecordType::A).message();
    if let Some(edns) = v1.edns.as_mut() {
        edns.set_version(1);
    }
    let raw = udp_raw(w.udp_addr(), &v1.to_vec().unwrap()).unwrap();
    let m = Message::from_vec(&raw).unwrap();
    // 16 is both BADVERS and BADSIG; a decoder without TSIG context may name it either.
    assert_eq!(u16::from(m.metadata.response_code), 16);

    // Garbage over TCP: the connection may close, but the server lives.
    let _ = tcp_raw(w.tcp_addr(), &noise(99, 300));
    still_answers(&w);
}

#[test]
fn metrics_count_queries_by_protocol_type_and_rcode() {
    let w = world(Setup::default());
    w.udp(&Ask::new(WWW, RecordType::A).ecs("192.0.2.0", 24));
    w.tcp(&Ask::new(WWW, RecordType::AAAA));
    w.udp(&Ask::new("nope.example.test.", RecordType::A));
    let text = w.metrics();
    for line in [
        r#"geoedge_dns_queries_total{proto="udp",qtype="A",rcode="NOERROR"} 1"#,
        r#"geoedge_dns_queries_total{proto="tcp",qtype="AAAA",rcode="NOERROR"} 1"#,
        r#"geoedge_dns_queries_total{proto="udp",qtype="A",rcode="NXDOMAIN"} 1"#,
        r#"geoedge_dns_ecs_queries_total{ecs="present"} 1"#,
        r#"geoedge_dns_ecs_queries_total{ecs="absent"} 1"#,
        r#"geoedge_dns_steered_answers_total{region="eu"} 1"#,
        "geoedge_dns_query_duration_seconds_count 3",
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

fn check(dir: &Path, config: &str) -> (bool, String) {
    std::fs::write(dir.join("bad.toml"), config).unwrap();
    let out = Command::new(common::bin())
        .args(["check", "bad.toml"])
        .current_dir(dir)
        .output()
        .expect("run geoedge check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout),
    )
}

#[test]
fn config_errors_name_the_file_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::default();
    write_world(dir.path(), &setup);
    let good = config_text(&setup);
    let (ok, out) = check(dir.path(), &good);
    assert!(ok, "{out}");

    let cases: Vec<(String, &[&str])> = vec![
        (
            good.replace("workers = 1", "workers = 1\nwrokers = 2"),
            &["bad.toml:5", "wrokers"],
        ),
        (
            good.replace("127.0.0.12", "127.0.0.256"),
            &["bad.toml:", "invalid"],
        ),
        (
            good.replace("geo.mmdb", "missing.mmdb"),
            &["geoip.database", "missing.mmdb"],
        ),
        (
            good.replace(
                "name = \"www\"",
                "name = \"www\"\n[[zones.steered]]\nname = \"www.example.test.\"",
            ),
            &["zones[0].steered[1].name", "defined twice"],
        ),
        (
            good.replace("name = \"us-1\"", "name = \"eu-1\""),
            &["defined twice", "eu-1"],
        ),
        (
            good.replace("latitude = 39.0438", "latitude = 139.0"),
            &["regions[1].latitude"],
        ),
        (
            good.replace("default_order = [\"us\"", "default_order = [\"mars\""),
            &["mars"],
        ),
        ("not toml at all [".to_string(), &["bad.toml:1"]),
    ];
    for (config, needles) in cases {
        let (ok, out) = check(dir.path(), &config);
        assert!(!ok, "accepted a bad config: {needles:?}");
        for n in needles {
            assert!(out.contains(n), "error for {needles:?} lacks `{n}`:\n{out}");
        }
    }

    // A zone file record that collides with a steered name is caught by check as well.
    std::fs::write(
        dir.path().join("zone.txt"),
        format!("{ZONE}www IN A 192.0.2.1\n"),
    )
    .unwrap();
    let (ok, out) = check(dir.path(), &good);
    assert!(!ok);
    assert!(out.contains("steered"), "{out}");

    // And `geoedge dns` itself refuses to start on a bad config, exit 1.
    let out = Command::new(common::bin())
        .args(["dns", "--config", "bad.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn query_log_records_steering_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::default();
    write_world(dir.path(), &setup);
    let config =
        config_text(&setup).replace("workers = 1", "workers = 1\nquery_log = \"queries.log\"");
    std::fs::write(dir.path().join("dns.toml"), config).unwrap();
    let proc = Proc::start(&["dns", "--config", "dns.toml"], dir.path(), 3);
    udp(
        proc.addr("UDP"),
        &Ask::new(WWW, RecordType::A).ecs("203.0.113.0", 24),
    );
    let log = dir.path().join("queries.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            assert!(
                line.contains("www.example.test. A NOERROR ecs=203.0.113.0/24/24 region=ap"),
                "{line}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no query log line");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
