//! Builds a City-style MaxMind database from a small text source, so the demo and the
//! tests use a database whose every network is written down in the repository.
//!
//! Source format, one network a line (`#` starts a comment):
//!
//! ```text
//! # network         country continent latitude longitude city
//! 192.0.2.0/24      DE      EU        50.1109  8.6821    Frankfurt am Main
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use mmdb_writer::{IpVersion, Writer};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{file}:{line}: {message}")]
    Source {
        file: String,
        line: usize,
        message: String,
    },
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("cannot write {file}: {message}")]
    Write { file: String, message: String },
}

/// One network of the source.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoEntry {
    pub network: IpNet,
    pub country: String,
    pub continent: String,
    pub latitude: f64,
    pub longitude: f64,
    pub city: String,
}

#[derive(Serialize)]
struct Names<'a> {
    en: &'a str,
}

#[derive(Serialize)]
struct CityOut<'a> {
    city: NamesOut<'a>,
    continent: ContinentOut<'a>,
    country: CountryOut<'a>,
    location: LocationOut,
}

#[derive(Serialize)]
struct NamesOut<'a> {
    names: Names<'a>,
}

#[derive(Serialize)]
struct ContinentOut<'a> {
    code: &'a str,
}

#[derive(Serialize)]
struct CountryOut<'a> {
    iso_code: &'a str,
}

#[derive(Serialize)]
struct LocationOut {
    latitude: f64,
    longitude: f64,
}

pub fn parse_source(file: &str, text: &str) -> Result<Vec<GeoEntry>, BuildError> {
    let mut entries = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let err = |message: String| BuildError::Source {
            file: file.to_string(),
            line: i + 1,
            message,
        };
        let mut fields = line.split_whitespace();
        let mut next = |what: &str| {
            fields.next().ok_or_else(|| {
                err(format!(
                    "missing {what} (network country continent latitude longitude city)"
                ))
            })
        };
        let network: IpNet = next("network")?
            .parse()
            .map_err(|e| err(format!("bad network: {e}")))?;
        let country = next("country")?.to_string();
        let continent = next("continent")?.to_string();
        let latitude: f64 = next("latitude")?
            .parse()
            .map_err(|e| err(format!("bad latitude: {e}")))?;
        let longitude: f64 = next("longitude")?
            .parse()
            .map_err(|e| err(format!("bad longitude: {e}")))?;
        let city = fields.collect::<Vec<_>>().join(" ");
        if network != network.trunc() {
            return Err(err(format!(
                "{network} has host bits set; write {}",
                network.trunc()
            )));
        }
        if country.len() != 2 || continent.len() != 2 {
            return Err(err("country and continent are two-letter codes".into()));
        }
        if !(-90.0..=90.0).contains(&latitude) || !(-180.0..=180.0).contains(&longitude) {
            return Err(err("latitude or longitude out of range".into()));
        }
        entries.push(GeoEntry {
            network,
            country,
            continent,
            latitude,
            longitude,
            city,
        });
    }
    Ok(entries)
}

/// Writes the entries as an IPv6 City database (IPv4 networks sit in the IPv4 subtree).
/// The build time is fixed so the same source always gives the same bytes.
pub fn to_mmdb(entries: &[GeoEntry]) -> Result<Vec<u8>, String> {
    let mut writer = Writer::builder("GeoEdge-Demo-City")
        .ip_version(IpVersion::V6)
        .description(&[("en", "geoedge demo and test GeoIP database")])
        .build_epoch(UNIX_EPOCH + Duration::from_secs(1_767_225_600))
        .build();
    // Insert wider networks first so narrower ones carve into them.
    let mut sorted: Vec<&GeoEntry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.network.prefix_len());
    for e in sorted {
        let record = CityOut {
            city: NamesOut {
                names: Names { en: &e.city },
            },
            continent: ContinentOut { code: &e.continent },
            country: CountryOut {
                iso_code: &e.country,
            },
            location: LocationOut {
                latitude: e.latitude,
                longitude: e.longitude,
            },
        };
        writer
            .insert(e.network, &record)
            .map_err(|err| format!("{}: {err}", e.network))?;
    }
    writer.to_bytes().map_err(|e| e.to_string())
}

pub fn build_file(source: &Path, out: &Path) -> Result<usize, BuildError> {
    let text = std::fs::read_to_string(source).map_err(|e| BuildError::Read {
        file: source.display().to_string(),
        source: e,
    })?;
    let entries = parse_source(&source.display().to_string(), &text)?;
    let bytes = to_mmdb(&entries).map_err(|message| BuildError::Write {
        file: out.display().to_string(),
        message,
    })?;
    std::fs::write(out, bytes).map_err(|e| BuildError::Write {
        file: out.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(entries.len())
}

/// Countries and cities of the entries, for tests that want to know what a source holds.
pub fn countries(entries: &[GeoEntry]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for e in entries {
        *out.entry(e.country.clone()).or_insert(0) += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::{Code, GeoDb};

    const SOURCE: &str = "\
# a comment
192.0.2.0/24     DE EU 50.1109 8.6821 Frankfurt am Main
2001:db8:1::/48  DE EU 50.1109 8.6821 Frankfurt am Main
10.0.0.0/8       US NA 39.0 -77.5 Ashburn
10.1.0.0/16      SG AS 1.35 103.82 Singapore
";

    #[test]
    fn parses_fields_and_joins_city_words() {
        let entries = parse_source("s", SOURCE).unwrap();
        assert_eq!(entries.len(), 4);
        assert_eq!(entries[0].city, "Frankfurt am Main");
        assert_eq!(countries(&entries)["DE"], 2);
    }

    #[test]
    fn rejects_bad_lines_with_line_number() {
        let err = parse_source("s", "192.0.2.1/24 DE EU 1 2 X\n").unwrap_err();
        assert!(err.to_string().contains("s:1"), "{err}");
        let err = parse_source("s", "\n192.0.2.0/24 DE EU 91 2 X\n").unwrap_err();
        assert!(err.to_string().contains("s:2"), "{err}");
        let err = parse_source("s", "192.0.2.0/24 DE\n").unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn built_database_reads_back_with_networks() {
        let entries = parse_source("s", SOURCE).unwrap();
        let bytes = to_mmdb(&entries).unwrap();
        let again = to_mmdb(&entries).unwrap();
        assert_eq!(bytes, again, "builds are reproducible");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.mmdb");
        std::fs::write(&path, bytes).unwrap();
        let db = GeoDb::open(&path).unwrap();

        let m = db.lookup("192.0.2.77".parse().unwrap()).unwrap();
        let loc = m.location.unwrap();
        assert_eq!(loc.country, Code::parse("DE"));
        assert_eq!(loc.continent, Code::parse("EU"));
        assert_eq!(m.network.to_string(), "192.0.2.0/24");
        assert_eq!(
            db.city_name("192.0.2.77".parse().unwrap()).as_deref(),
            Some("Frankfurt am Main")
        );

        // The narrower network wins inside the wider one.
        let m = db.lookup("10.1.2.3".parse().unwrap()).unwrap();
        assert_eq!(m.location.unwrap().country, Code::parse("SG"));
        assert_eq!(m.network.prefix_len(), 16);
        let m = db.lookup("10.2.2.3".parse().unwrap()).unwrap();
        assert_eq!(m.location.unwrap().country, Code::parse("US"));

        let m = db.lookup("2001:db8:1::5".parse().unwrap()).unwrap();
        assert_eq!(m.network.to_string(), "2001:db8:1::/48");

        // Not in the database: no location, but a network saying how far that holds.
        let m = db.lookup("8.8.8.8".parse().unwrap()).unwrap();
        assert!(m.location.is_none());
        assert!(m
            .network
            .contains(&"8.8.8.8".parse::<std::net::IpAddr>().unwrap()));
    }
}
