//! GeoIP: the database (open, look up) and where a client is.

pub mod build;
pub mod distance;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

pub use distance::great_circle_km;

#[derive(Debug, thiserror::Error)]
pub enum GeoError {
    #[error("cannot open GeoIP database {path}: {source}")]
    Open {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
    #[error("GeoIP database {path} is not a City-style database (type {kind})")]
    WrongKind { path: PathBuf, kind: String },
    #[error("GeoIP lookup of {ip} failed: {source}")]
    Lookup {
        ip: IpAddr,
        source: maxminddb::MaxMindDbError,
    },
    #[error("reading the networks of GeoIP database {path}: {source}")]
    Walk {
        path: PathBuf,
        source: maxminddb::MaxMindDbError,
    },
}

/// A two-letter code (ISO 3166 country, or continent), stored inline so a lookup on the
/// query path allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Code([u8; 2]);

impl Code {
    pub fn parse(text: &str) -> Option<Self> {
        match text.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Self([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where GeoIP places a client. Every field is optional because real databases have
/// networks with a country but no coordinates, or a continent only.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Location {
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub country: Option<Code>,
    pub continent: Option<Code>,
}

impl Location {
    pub fn coordinates(&self) -> Option<(f64, f64)> {
        Some((self.latitude?, self.longitude?))
    }
}

/// The result of one lookup: the location (if any) and the database network that decided
/// it, whose prefix length is the ECS scope of an answer that depends on it.
#[derive(Debug, Clone, PartialEq)]
pub struct GeoMatch {
    pub location: Option<Location>,
    pub network: IpNet,
}

// Only the fields steering needs; serde skips the rest (names in many languages, postal
// codes...) without allocating them.
#[derive(Deserialize)]
struct CityRecord<'a> {
    #[serde(default)]
    location: Option<LocationRecord>,
    #[serde(borrow, default)]
    country: Option<CodeRecord<'a>>,
    #[serde(borrow, default)]
    continent: Option<CodeRecord<'a>>,
}

#[derive(Deserialize)]
struct LocationRecord {
    latitude: Option<f64>,
    longitude: Option<f64>,
}

#[derive(Deserialize)]
struct CodeRecord<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
    #[serde(borrow, default)]
    code: Option<&'a str>,
}

#[derive(Deserialize)]
struct CityNameRecord<'a> {
    #[serde(borrow, default)]
    city: Option<NamesRecord<'a>>,
}

#[derive(Deserialize)]
struct NamesRecord<'a> {
    #[serde(borrow, default)]
    names: std::collections::BTreeMap<&'a str, &'a str>,
}

fn location_of(r: CityRecord<'_>) -> Location {
    let (latitude, longitude) = r
        .location
        .map(|l| (l.latitude, l.longitude))
        .unwrap_or((None, None));
    Location {
        latitude,
        longitude,
        country: r.country.and_then(|c| c.iso_code).and_then(Code::parse),
        continent: r.continent.and_then(|c| c.code).and_then(Code::parse),
    }
}

/// An open GeoIP database, read whole into memory so lookups never touch the disk.
pub struct GeoDb {
    path: PathBuf,
    reader: maxminddb::Reader<Vec<u8>>,
}

impl GeoDb {
    pub fn open(path: &Path) -> Result<Self, GeoError> {
        let reader = maxminddb::Reader::open_readfile(path).map_err(|source| GeoError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let kind = reader.metadata().database_type.clone();
        // City, Enterprise and our own demo databases carry coordinates; Country-only
        // databases would leave every client without a location, which is a config mistake.
        if kind.contains("Country") && !kind.contains("City") {
            return Err(GeoError::WrongKind {
                path: path.to_path_buf(),
                kind,
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    pub fn lookup(&self, ip: IpAddr) -> Result<GeoMatch, GeoError> {
        let (result, network) = self.walk(ip)?;
        self.decode(ip, network, &result)
    }

    /// The network `ip` falls in and where its record is in the data section (`None`
    /// when the database has no record for it): a walk of the search tree, without
    /// decoding. Many networks share one record, so the offset is a good key for
    /// remembering decoded locations.
    pub fn locate(&self, ip: IpAddr) -> Result<(IpNet, Option<usize>), GeoError> {
        let (result, network) = self.walk(ip)?;
        Ok((network, result.offset()))
    }

    fn walk(&self, ip: IpAddr) -> Result<(maxminddb::LookupResult<'_, Vec<u8>>, IpNet), GeoError> {
        let err = |source| GeoError::Lookup { ip, source };
        let result = self.reader.lookup(ip).map_err(err)?;
        let network = result.network().map_err(err)?;
        let network = IpNet::new(network.ip(), network.prefix()).unwrap_or(match ip {
            IpAddr::V4(_) => IpNet::V4(Default::default()),
            IpAddr::V6(_) => IpNet::V6(Default::default()),
        });
        Ok((result, network))
    }

    fn decode(
        &self,
        ip: IpAddr,
        network: IpNet,
        result: &maxminddb::LookupResult<'_, Vec<u8>>,
    ) -> Result<GeoMatch, GeoError> {
        let err = |source| GeoError::Lookup { ip, source };
        let record: Option<CityRecord<'_>> = result.decode().map_err(err)?;
        Ok(GeoMatch {
            location: record.map(location_of),
            network,
        })
    }

    /// Every network of one family in address order, with its location (`None` where
    /// the database has a network without data), for merging scopes. Records are decoded
    /// once each, however many networks share them.
    pub fn for_each_network(
        &self,
        v6: bool,
        mut f: impl FnMut(IpNet, Option<&Location>),
    ) -> Result<(), GeoError> {
        let err = |source| GeoError::Walk {
            path: self.path.clone(),
            source,
        };
        let ipv6_db = self.reader.metadata().ip_version == 6;
        if v6 && !ipv6_db {
            return Ok(());
        }
        let all = if v6 {
            ipnetwork::IpNetwork::V6(ipnetwork::Ipv6Network::from(
                std::net::Ipv6Addr::UNSPECIFIED,
            ))
        } else {
            ipnetwork::IpNetwork::V4(ipnetwork::Ipv4Network::from(
                std::net::Ipv4Addr::UNSPECIFIED,
            ))
        };
        // `from` gives a host network (/32, /128); the whole family is prefix 0.
        let all = ipnetwork::IpNetwork::new(all.ip(), 0).map_err(|_| {
            err(maxminddb::MaxMindDbError::invalid_input(
                "the whole address family",
            ))
        })?;
        let options = maxminddb::WithinOptions::default().include_networks_without_data();
        let mut decoded: std::collections::HashMap<usize, Option<Location>> =
            std::collections::HashMap::new();
        for item in self.reader.within(all, options).map_err(err)? {
            let item = item.map_err(err)?;
            let net = item.network().map_err(err)?;
            let Ok(net) = IpNet::new(net.ip(), net.prefix()) else {
                continue;
            };
            // An IPv6 walk also passes the IPv4 tree under ::/96 (given as IPv4
            // networks): the IPv4 walk has those.
            let embedded_v4 = match net.addr() {
                IpAddr::V4(_) => true,
                IpAddr::V6(a) => net.prefix_len() >= 96 && a.segments()[..6] == [0; 6],
            };
            if v6 && embedded_v4 {
                continue;
            }
            let location = match item.offset() {
                None => None,
                Some(offset) => match decoded.entry(offset) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut().as_ref(),
                    std::collections::hash_map::Entry::Vacant(e) => {
                        let record: Option<CityRecord<'_>> = item.decode().map_err(err)?;
                        e.insert(record.map(location_of)).as_ref()
                    }
                },
            };
            f(net, location);
        }
        Ok(())
    }

    /// The English city name, for operators' tools; not used on the query path.
    pub fn city_name(&self, ip: IpAddr) -> Option<String> {
        let result = self.reader.lookup(ip).ok()?;
        let record: CityNameRecord<'_> = result.decode().ok()??;
        record.city?.names.get("en").map(|s| s.to_string())
    }
}
