//! Degraded regions and the all-down policies with a real DNS server: a region below
//! `min_healthy` steers away, each `all_down` policy answers as configured, and a
//! geofenced override keeps its clients in their region. Node states are fixed by
//! `initial` (no reports, no probes), so each case is exactly the state it names.

mod common;

use std::net::SocketAddr;

use common::dns::{addresses, udp, Ask};
use common::{build_geo, Proc};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

const ZONE: &str = "$ORIGIN example.test.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n@ IN NS ns1\nns1 IN A 127.0.0.1\n";
/// Frankfurt in the shipped database: eu is nearest, then us.
const FRANKFURT: &str = "192.0.2.0";

/// A DNS server with eu (two nodes) and us (one); `eu` and `us` are the nodes' initial
/// states, `steering` and `eu_extra` extra keys.
fn dns(dir: &std::path::Path, eu: [&str; 2], us: &str, steering: &str, eu_extra: &str) -> Proc {
    build_geo(dir, "");
    std::fs::write(dir.join("zone.txt"), ZONE).unwrap();
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\ncontrol = \"127.0.0.1:0\"\nworkers = 1\n\
         [geoip]\ndatabase = \"geo.mmdb\"\n[steering]\n{steering}\n\
         [[zones]]\norigin = \"example.test.\"\nfile = \"zone.txt\"\n[[zones.steered]]\nname = \"www\"\n\
         [[regions]]\nname = \"eu\"\nlatitude = 50.11\nlongitude = 8.68\n{eu_extra}\n\
         [[regions.nodes]]\nname = \"eu-1\"\nipv4 = \"127.0.0.11\"\ninitial = \"{}\"\n\
         [[regions.nodes]]\nname = \"eu-2\"\nipv4 = \"127.0.0.21\"\ninitial = \"{}\"\n\
         [[regions]]\nname = \"us\"\nlatitude = 39.04\nlongitude = -77.49\n\
         [[regions.nodes]]\nname = \"us-1\"\nipv4 = \"127.0.0.12\"\ninitial = \"{us}\"\n",
        eu[0], eu[1]
    );
    std::fs::write(dir.join("dns.toml"), config).unwrap();
    Proc::start(&["dns", "--config", "dns.toml"], dir, 3)
}

fn ask(server: SocketAddr) -> (ResponseCode, Vec<String>) {
    let m = udp(
        server,
        &Ask::new("www.example.test.", RecordType::A).ecs(FRANKFURT, 24),
    );
    let mut got: Vec<String> = addresses(&m).iter().map(|a| a.to_string()).collect();
    got.sort();
    (m.metadata.response_code, got)
}

fn answer(eu: [&str; 2], us: &str, steering: &str, eu_extra: &str) -> (ResponseCode, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let d = dns(dir.path(), eu, us, steering, eu_extra);
    ask(d.addr("UDP"))
}

#[test]
fn a_region_below_min_healthy_steers_away() {
    let one_of_two = (ResponseCode::NoError, vec!["127.0.0.11".to_string()]);
    assert_eq!(
        answer(["up", "down"], "up", "", ""),
        one_of_two,
        "one up node is enough by default"
    );
    let away = (ResponseCode::NoError, vec!["127.0.0.12".to_string()]);
    assert_eq!(answer(["up", "down"], "up", "", "min_healthy = 2"), away);
    assert_eq!(
        answer(["up", "down"], "up", "", "min_healthy = 0.75"),
        away,
        "0.75 of 2 rounds up to 2"
    );
    assert_eq!(
        answer(["up", "down"], "up", "", "min_healthy = 0.5"),
        one_of_two
    );
}

#[test]
fn every_region_down_answers_by_the_policy() {
    let down = (["down", "down"], "down");
    let (code, open) = answer(down.0, down.1, "", "");
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(
        open,
        ["127.0.0.11", "127.0.0.21"],
        "fail open: the nearest region, unchecked"
    );
    let fallback = answer(
        down.0,
        down.1,
        "all_down = \"fallback\"\nfallback_region = \"us\"",
        "",
    );
    assert_eq!(
        fallback,
        (ResponseCode::NoError, vec!["127.0.0.12".to_string()])
    );
    let servfail = answer(down.0, down.1, "all_down = \"servfail\"", "");
    assert_eq!(servfail.0, ResponseCode::ServFail);
    assert!(servfail.1.is_empty());
}

#[test]
fn a_geofence_keeps_its_clients_in_their_region_while_it_is_down() {
    let fence = "[[steering.overrides]]\ncontinent = \"EU\"\nregions = [\"eu\"]\ngeofence = true";
    let (code, got) = answer(["down", "down"], "up", fence, "");
    assert_eq!(code, ResponseCode::NoError);
    assert_eq!(
        got,
        ["127.0.0.11", "127.0.0.21"],
        "eu's nodes, though down; never us"
    );
    let open = "[[steering.overrides]]\ncontinent = \"EU\"\nregions = [\"eu\"]";
    assert_eq!(
        answer(["down", "down"], "up", open, ""),
        (ResponseCode::NoError, vec!["127.0.0.12".to_string()]),
        "without the fence they leave"
    );
}
