//! The files we ship are what the docs say they are.

use std::path::Path;

use geoedge::geo::{build, Code, GeoDb};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn shipped_database_is_the_build_of_its_source() {
    let text = std::fs::read_to_string(root().join("geo/world.txt")).unwrap();
    let entries = build::parse_source("geo/world.txt", &text).unwrap();
    let built = build::to_mmdb(&entries).unwrap();
    let shipped = std::fs::read(root().join("geo/geoedge-demo.mmdb")).unwrap();
    assert!(
        built == shipped,
        "geo/geoedge-demo.mmdb is stale: run `geoedge geo build geo/world.txt geo/geoedge-demo.mmdb`"
    );
}

#[test]
fn shipped_database_maps_the_documented_networks() {
    let db = GeoDb::open(&root().join("geo/geoedge-demo.mmdb")).unwrap();
    let cases = [
        ("192.0.2.1", "DE", "EU"),
        ("2001:db8:1::1", "DE", "EU"),
        ("198.51.100.1", "US", "NA"),
        ("2001:db8:2::1", "US", "NA"),
        ("203.0.113.1", "SG", "AS"),
        ("2001:db8:3::1", "SG", "AS"),
        ("198.18.1.1", "BR", "SA"),
        ("198.18.2.1", "AU", "OC"),
        ("198.18.3.1", "ZA", "AF"),
        ("198.18.9.1", "AQ", "AN"),
    ];
    for (ip, country, continent) in cases {
        let m = db.lookup(ip.parse().unwrap()).unwrap();
        let loc = m.location.unwrap_or_else(|| panic!("{ip} has no location"));
        assert_eq!(loc.country, Code::parse(country), "{ip}");
        assert_eq!(loc.continent, Code::parse(continent), "{ip}");
        assert!(loc.coordinates().is_some(), "{ip}");
    }
}

#[test]
fn shipped_dns_config_is_valid() {
    let cfg = geoedge::config::DnsConfig::load(&root().join("config/dns.toml")).unwrap();
    geoedge::dns::DnsState::build(&cfg).unwrap();
    assert_eq!(cfg.regions.len(), 3);
    assert_eq!(cfg.listen[0].to_string(), "127.0.0.1:5353");
}

#[test]
fn shipped_file_gateway_config_is_what_its_comments_say() {
    use geoedge::config::proxy::{FtpTls, StreamMode};
    let cfg = geoedge::config::ProxyConfig::load(&root().join("config/file-gateway.toml")).unwrap();
    let listen = |name: &str| {
        let s = cfg.streams.iter().find(|s| s.name == name).unwrap();
        (
            s.mode,
            s.listen[0].to_string(),
            s.ftp.as_ref().map(|f| f.tls),
        )
    };
    assert_eq!(
        listen("ftp"),
        (
            StreamMode::Ftp,
            "127.0.0.1:2121".into(),
            Some(FtpTls::Explicit)
        )
    );
    assert_eq!(
        listen("ftps"),
        (
            StreamMode::Ftp,
            "127.0.0.1:2990".into(),
            Some(FtpTls::Implicit)
        )
    );
    assert_eq!(
        listen("sftp"),
        (StreamMode::Tcp, "127.0.0.1:2222".into(), None)
    );
    let ftp = cfg.streams[0].ftp.as_ref().unwrap();
    assert_eq!(ftp.passive_ports, 30000..=30099);
    let origin = |u: &str| {
        cfg.upstreams.iter().find(|x| x.name == u).unwrap().origins[0]
            .addr
            .to_string()
    };
    assert_eq!(origin("ftp-servers"), "127.0.0.1:2100");
    assert_eq!(origin("ssh-servers"), "127.0.0.1:2200");
    assert_eq!(cfg.admin.unwrap().to_string(), "127.0.0.1:9190");
}
