//! EDNS options end to end: DNS cookies (RFC 7873, RFC 9018 server cookies) and NSID
//! (RFC 5001) driven with dig (a client cookie gets a server cookie back, a forged server
//! cookie gets BADCOOKIE and a fresh one, a client without a valid server cookie gets at
//! most `max_nocookie_response` over UDP, `dig +nsid` names the server), and ECS options
//! that break RFC 7871's rules get FORMERR.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::dns::udp_raw;
use common::{build_geo, need, Proc};

const ZONE: &str = "$ORIGIN example.test.\n$TTL 300\n\
@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 127.0.0.1\n\
static IN A 192.0.2.80\n";

fn start(dir: &Path, edns: &str) -> Proc {
    build_geo(dir, "");
    let big: String = (0..12)
        .map(|i| format!("big IN TXT \"{i:02}-{}\"\n", "x".repeat(57)))
        .collect();
    std::fs::write(dir.join("zone.txt"), format!("{ZONE}{big}")).unwrap();
    std::fs::write(
        dir.join("cookie.secret"),
        "00112233445566778899aabbccddeeff\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("dns.toml"),
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\ncontrol = \"127.0.0.1:0\"\n\
[geoip]\ndatabase = \"geo.mmdb\"\n[edns]\n{edns}\n\
[[zones]]\norigin = \"example.test.\"\nfile = \"zone.txt\"\n\
[[regions]]\nname = \"eu\"\nlatitude = 50.1\nlongitude = 8.7\n\
[[regions.nodes]]\nname = \"eu-1\"\nipv4 = \"127.0.0.11\"\n"
        ),
    )
    .unwrap();
    Proc::start(&["dns", "--config", "dns.toml"], dir, 3)
}

fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+tries=1", "+time=2"])
        .args(args)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The `; COOKIE: client+server` value dig prints.
fn cookie_line(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("; COOKIE: "))
        .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
}

#[test]
fn dig_gets_a_server_cookie_and_a_forged_one_gets_badcookie() {
    if !need(&["dig"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), "nsid = \"dns1.test\"");
    let server = dns.addr("UDP");
    let client = "0102030405060708";
    let first = dig(
        server,
        &[&format!("+cookie={client}"), "static.example.test"],
    );
    assert!(first.contains("status: NOERROR"), "{first}");
    let cookie = cookie_line(&first).unwrap_or_else(|| panic!("no cookie: {first}"));
    assert_eq!(
        cookie.len(),
        48,
        "8-byte client + 16-byte server cookie: {cookie}"
    );
    assert!(cookie.to_ascii_lowercase().starts_with(client), "{cookie}");
    assert!(
        first.contains("(good)") || !first.contains("(bad)"),
        "{first}"
    );
    // The cookie we gave back is accepted: dig says "good".
    let again = dig(
        server,
        &[&format!("+cookie={cookie}"), "static.example.test"],
    );
    assert!(again.contains("status: NOERROR"), "{again}");
    assert!(again.contains("(good)"), "{again}");
    // A server cookie we never made: BADCOOKIE over UDP, with a fresh cookie...
    let forged = format!("{client}01000000{}", "ab".repeat(12));
    let bad = dig(
        server,
        &[
            &format!("+cookie={forged}"),
            "+nobadcookie",
            "static.example.test",
        ],
    );
    assert!(bad.contains("status: BADCOOKIE"), "{bad}");
    let fresh = cookie_line(&bad).expect("a fresh cookie with BADCOOKIE");
    assert_ne!(fresh.to_ascii_lowercase(), forged);
    // ...and dig's own retry with it (its default) gets the answer.
    let retried = dig(
        server,
        &[&format!("+cookie={forged}"), "static.example.test"],
    );
    assert!(retried.contains("status: NOERROR"), "{retried}");
    // Over TCP the handshake proves the address: answered, with a fresh cookie.
    let tcp = dig(
        server,
        &[&format!("+cookie={forged}"), "+tcp", "static.example.test"],
    );
    assert!(tcp.contains("status: NOERROR"), "{tcp}");
    // A malformed cookie (9 bytes) is FORMERR.
    let malformed = dig(
        server,
        &["+cookie=010203040506070809", "static.example.test"],
    );
    assert!(malformed.contains("status: FORMERR"), "{malformed}");
    // NSID, only when asked.
    let nsid = dig(server, &["+nsid", "static.example.test"]);
    assert!(
        nsid.contains("NSID: 64 6e 73 31 2e 74 65 73 74 (\"dns1.test\")"),
        "{nsid}"
    );
    assert!(!first.contains("NSID"), "{first}");
}

#[test]
fn a_client_without_a_valid_server_cookie_gets_at_most_the_configured_size_over_udp() {
    if !need(&["dig"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), "max_nocookie_response = 512");
    let server = dns.addr("UDP");
    // 12 TXT records of ~73 bytes: more than 512.
    let plain = dig(
        server,
        &[
            "+ignore",
            "+nocookie",
            "+bufsize=1232",
            "big.example.test",
            "TXT",
        ],
    );
    assert!(plain.contains(" tc "), "no cookie: truncated\n{plain}");
    let client_only = dig(
        server,
        &[
            "+ignore",
            "+cookie",
            "+bufsize=1232",
            "big.example.test",
            "TXT",
        ],
    );
    assert!(
        client_only.contains(" tc "),
        "client cookie only: truncated\n{client_only}"
    );
    let cookie = cookie_line(&client_only).expect("a server cookie");
    let proven = dig(
        server,
        &[
            "+ignore",
            &format!("+cookie={cookie}"),
            "+bufsize=1232",
            "big.example.test",
            "TXT",
        ],
    );
    assert!(
        !proven.contains(" tc "),
        "a valid server cookie: whole\n{proven}"
    );
    assert!(proven.contains("ANSWER: 12"), "{proven}");
}

/// A query for static.example.test A with one OPT carrying `option` (code, data).
fn query_with_option(code: u16, data: &[u8]) -> Vec<u8> {
    let mut p = vec![0x12, 0x34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    p.extend_from_slice(b"\x06static\x07example\x04test\x00\x00\x01\x00\x01");
    p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    p.extend_from_slice(&((data.len() + 4) as u16).to_be_bytes());
    p.extend_from_slice(&code.to_be_bytes());
    p.extend_from_slice(&(data.len() as u16).to_be_bytes());
    p.extend_from_slice(data);
    p
}

#[test]
fn ecs_options_that_break_rfc_7871_are_formerr() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path(), "");
    let server = dns.addr("UDP");
    let rcode = |data: &[u8]| {
        let answer = udp_raw(server, &query_with_option(8, data)).expect("an answer");
        answer[3] & 0x0f
    };
    // A /24 with 3 address octets: fine.
    assert_eq!(rcode(&[0, 1, 24, 0, 192, 0, 2]), 0);
    for (what, data) in [
        (
            "4 octets for a /24 (RFC 7871 §6)",
            &[0, 1, 24, 0, 192, 0, 2, 0][..],
        ),
        ("2 octets for a /24", &[0, 1, 24, 0, 192, 0]),
        ("a scope in a query", &[0, 1, 24, 8, 192, 0, 2]),
        ("bits past the source prefix", &[0, 1, 23, 0, 192, 0, 3]),
        ("a /33 for IPv4", &[0, 1, 33, 0, 192, 0, 2, 0, 0]),
        ("an unknown family", &[0, 9, 24, 0, 192, 0, 2]),
        ("no address family at all", &[0]),
    ] {
        assert_eq!(rcode(data), 1, "{what}: FORMERR");
    }
    // The server still answers afterwards.
    assert_eq!(rcode(&[0, 1, 24, 0, 198, 51, 100]), 0);
}
