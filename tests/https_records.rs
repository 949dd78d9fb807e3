//! Steered HTTPS records (RFC 9460): a steered name with `https` answers HTTPS queries
//! with the chosen region's addresses as hints, signed like the rest (delv validates it),
//! and its NODATA proof lists HTTPS among the name's types.

mod common;

use std::net::IpAddr;
use std::process::Command;

use common::dns::{addresses, udp, Ask};
use common::{bin, build_geo, need, Proc};
use hickory_proto::rr::rdata::svcb::SvcParamValue;
use hickory_proto::rr::{RData, RecordType};

fn start(dir: &std::path::Path) -> Proc {
    build_geo(dir, "");
    std::fs::write(
        dir.join("zone.txt"),
        "$ORIGIN example.test.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n\
@ IN NS ns1\nns1 IN A 127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("dns.toml"),
        "[server]\nlisten = [\"127.0.0.1:0\"]\ncontrol = \"127.0.0.1:0\"\n\
[geoip]\ndatabase = \"geo.mmdb\"\n[steering]\ndefault_order = [\"us\", \"eu\"]\n\
[[zones]]\norigin = \"example.test.\"\nfile = \"zone.txt\"\n\
[[zones.steered]]\nname = \"www\"\nttl = 30\n\
https = { alpn = [\"h2\", \"http/1.1\"], port = 8443 }\n\
[zones.dnssec]\nkey_dir = \"keys\"\n\
[[regions]]\nname = \"eu\"\nlatitude = 50.1\nlongitude = 8.7\n\
[[regions.nodes]]\nname = \"eu-1\"\nipv4 = \"127.0.0.11\"\nipv6 = \"2001:db8:ffff:11::1\"\n\
[[regions]]\nname = \"us\"\nlatitude = 39.0\nlongitude = -77.5\n\
[[regions.nodes]]\nname = \"us-1\"\nipv4 = \"127.0.0.12\"\n",
    )
    .unwrap();
    Proc::start(&["dns", "--config", "dns.toml"], dir, 3)
}

#[test]
fn a_steered_https_record_names_the_chosen_regions_addresses_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let dns = start(dir.path());
    let server = dns.addr("UDP");
    for (client, v4, v6) in [
        ("192.0.2.0", "127.0.0.11", Some("2001:db8:ffff:11::1")),
        ("198.51.100.0", "127.0.0.12", None),
    ] {
        let m = udp(
            server,
            &Ask::new("www.example.test.", RecordType::HTTPS).ecs(client, 24),
        );
        let https = m
            .answers
            .iter()
            .find_map(|r| match &r.data {
                RData::HTTPS(h) => Some(h),
                _ => None,
            })
            .unwrap_or_else(|| panic!("{client}: no HTTPS record: {m:?}"));
        assert_eq!(https.0.svc_priority, 1, "ServiceMode");
        assert!(https.0.target_name.is_root());
        let mut alpn = None;
        let mut port = None;
        let mut hint4 = Vec::new();
        let mut hint6 = Vec::new();
        for (_, value) in &https.0.svc_params {
            match value {
                SvcParamValue::Alpn(a) => alpn = Some(a.0.clone()),
                SvcParamValue::Port(p) => port = Some(*p),
                SvcParamValue::Ipv4Hint(h) => hint4 = h.0.iter().map(|a| IpAddr::V4(a.0)).collect(),
                SvcParamValue::Ipv6Hint(h) => hint6 = h.0.iter().map(|a| IpAddr::V6(a.0)).collect(),
                _ => {}
            }
        }
        assert_eq!(alpn, Some(vec!["h2".to_string(), "http/1.1".to_string()]));
        assert_eq!(port, Some(8443));
        // The hints are what A and AAAA give the same client.
        let a = udp(
            server,
            &Ask::new("www.example.test.", RecordType::A).ecs(client, 24),
        );
        assert_eq!(hint4, addresses(&a));
        assert_eq!(hint4, vec![v4.parse::<IpAddr>().unwrap()]);
        assert_eq!(
            hint6,
            v6.map(|v| v.parse::<IpAddr>().unwrap())
                .into_iter()
                .collect::<Vec<_>>()
        );
    }
    // NODATA for another type: the NSEC lists HTTPS with A and AAAA.
    let m = udp(
        server,
        &Ask::new("www.example.test.", RecordType::MX).dnssec(),
    );
    let types: Vec<RecordType> = m
        .authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::DNSSEC(hickory_proto::dnssec::rdata::DNSSECRData::NSEC(n)) => {
                Some(n.type_bit_maps().collect())
            }
            _ => None,
        })
        .expect("an NSEC");
    assert!(types.contains(&RecordType::HTTPS), "{types:?}");
    // Signed, and a validator agrees.
    if !need(&["delv"]) {
        return;
    }
    let out = Command::new(bin())
        .args(["dnssec", "ds", "example.test", "--config", "dns.toml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let ds = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains(" IN DS "))
        .unwrap()
        .to_string();
    let f: Vec<&str> = ds.split_whitespace().collect();
    let anchor = dir.path().join("anchor.conf");
    std::fs::write(
        &anchor,
        format!(
            "trust-anchors {{ example.test. static-ds {} {} {} \"{}\"; }};\n",
            f[3], f[4], f[5], f[6]
        ),
    )
    .unwrap();
    let out = Command::new("delv")
        .args(["@127.0.0.1", "-p", &server.port().to_string(), "-a"])
        .arg(&anchor)
        .args(["+root=example.test", "www.example.test", "HTTPS"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("fully validated"), "{text}");
    assert!(text.contains("alpn=\"h2,http/1.1\""), "{text}");
}
