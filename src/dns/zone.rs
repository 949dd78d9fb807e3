//! One authoritative zone: the static records of an RFC 1035 zone file, indexed for the
//! query path, and the names in it that are steered.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::txt::Parser;

/// What the zone says about one (name, type).
#[derive(Debug)]
pub enum Lookup<'a> {
    /// The records of that type.
    Answer(&'a [Record]),
    /// The name is an alias: its CNAME, and the target's records when the target is in
    /// this zone (one step, as authoritative servers do).
    Alias {
        cname: &'a [Record],
        target: &'a [Record],
    },
    /// A steered name: the handler asks the steering for the records.
    Steered(usize),
    /// The name exists (or has names below it) but has no records of that type.
    NoData,
    NxDomain,
}

#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("zone file {file}: {message}")]
    Parse { file: String, message: String },
    #[error("zone file {file}: {name} is outside zone {origin}")]
    OutOfZone {
        file: String,
        name: String,
        origin: String,
    },
    #[error("zone file {file}: zone {origin} has no SOA record at its apex")]
    NoSoa { file: String, origin: String },
    #[error("zone file {file}: {name} has records but is also a steered name in the config; remove one of them")]
    StaticSteeredOverlap { file: String, name: String },
    #[error("zone file {file}: {name} has a CNAME and other records (RFC 1034 §3.6.2)")]
    CnameAndOther { file: String, name: String },
}

#[derive(Debug)]
pub struct Zone {
    pub origin: LowerName,
    /// The SOA for the answer section (queries for the SOA itself).
    soa: Vec<Record>,
    /// The SOA for the authority section of negative answers, its TTL lowered to the
    /// negative-caching TTL of RFC 2308 §3: min(SOA TTL, SOA MINIMUM).
    negative_soa: Vec<Record>,
    names: HashMap<LowerName, HashMap<RecordType, Vec<Record>>>,
    /// Names with no records of their own but with names below them (RFC 4592 "empty
    /// non-terminals"): NODATA, not NXDOMAIN.
    empty_non_terminals: HashSet<LowerName>,
    steered: HashMap<LowerName, usize>,
    /// Signs answers to queries with the DO bit when the zone has `[zones.dnssec]`.
    pub signer: Option<std::sync::Arc<crate::dns::dnssec::signer::ZoneSigner>>,
}

impl Zone {
    /// Loads a zone file. `steered` lists the steered names of this zone, each with the
    /// index the handler knows it by.
    pub fn load(origin: &Name, file: &Path, steered: &[(Name, usize)]) -> Result<Self, ZoneError> {
        let file_name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| ZoneError::Parse {
            file: file_name.clone(),
            message: e.to_string(),
        })?;
        Self::parse(origin, &file_name, &text, Some(file), steered)
    }

    pub fn parse(
        origin: &Name,
        file_name: &str,
        text: &str,
        path: Option<&Path>,
        steered: &[(Name, usize)],
    ) -> Result<Self, ZoneError> {
        let (_, sets) = Parser::new(text, path.map(Path::to_path_buf), Some(origin.clone()))
            .parse()
            .map_err(|e| ZoneError::Parse {
                file: file_name.to_string(),
                message: e.to_string(),
            })?;
        let origin_lower = LowerName::new(origin);
        let mut names: HashMap<LowerName, HashMap<RecordType, Vec<Record>>> = HashMap::new();
        for (key, set) in sets {
            if !origin_lower.zone_of(&key.name) {
                return Err(ZoneError::OutOfZone {
                    file: file_name.to_string(),
                    name: key.name.to_string(),
                    origin: origin.to_string(),
                });
            }
            let records: Vec<Record> = set.records_without_rrsigs().cloned().collect();
            names
                .entry(key.name.clone())
                .or_default()
                .entry(key.record_type)
                .or_default()
                .extend(records);
        }

        let soa: Vec<Record> = names
            .get(&origin_lower)
            .and_then(|types| types.get(&RecordType::SOA))
            .cloned()
            .unwrap_or_default();
        let Some(soa_record) = soa.first() else {
            return Err(ZoneError::NoSoa {
                file: file_name.to_string(),
                origin: origin.to_string(),
            });
        };
        let mut negative = soa_record.clone();
        if let RData::SOA(s) = &soa_record.data {
            negative.ttl = soa_record.ttl.min(s.minimum);
        }

        for (name, types) in &names {
            if types.contains_key(&RecordType::CNAME) && types.len() > 1 {
                return Err(ZoneError::CnameAndOther {
                    file: file_name.to_string(),
                    name: name.to_string(),
                });
            }
        }

        let mut steered_map = HashMap::new();
        for (name, index) in steered {
            let lower = LowerName::new(name);
            if names.contains_key(&lower) {
                return Err(ZoneError::StaticSteeredOverlap {
                    file: file_name.to_string(),
                    name: name.to_string(),
                });
            }
            steered_map.insert(lower, *index);
        }

        let mut empty_non_terminals = HashSet::new();
        for name in names.keys().chain(steered_map.keys()) {
            let mut parent = name.base_name();
            while origin_lower.zone_of(&parent) && parent != origin_lower {
                if !names.contains_key(&parent) {
                    empty_non_terminals.insert(parent.clone());
                }
                parent = parent.base_name();
            }
        }

        Ok(Self {
            origin: origin_lower,
            soa,
            negative_soa: vec![negative],
            names,
            empty_non_terminals,
            steered: steered_map,
            signer: None,
        })
    }

    /// Makes the zone signed: `signing`'s keys sign its answers, its records (DNSKEY,
    /// CDS, CDNSKEY) join the apex, replacing any the zone file had.
    pub fn sign_with(&mut self, signing: crate::dns::dnssec::Signing) {
        let apex = self.names.entry(self.origin.clone()).or_default();
        for t in [RecordType::DNSKEY, RecordType::CDS, RecordType::CDNSKEY] {
            apex.remove(&t);
        }
        for r in signing.apex {
            apex.entry(r.record_type()).or_default().push(r);
        }
        self.signer = Some(std::sync::Arc::new(signing.signer));
    }

    /// The types a name of the zone has (steered names: A and AAAA), `None` when it does
    /// not exist; an empty non-terminal has none.
    pub fn types_at(&self, name: &LowerName) -> Option<Vec<RecordType>> {
        if self.steered.contains_key(name) {
            return Some(vec![RecordType::A, RecordType::AAAA]);
        }
        match self.names.get(name) {
            Some(types) => Some(types.keys().copied().collect()),
            None => self.empty_non_terminals.contains(name).then(Vec::new),
        }
    }

    /// The SOA to put in the authority section of NXDOMAIN and NODATA answers.
    pub fn negative_soa(&self) -> &[Record] {
        &self.negative_soa
    }

    pub fn soa(&self) -> &[Record] {
        &self.soa
    }

    /// Every name that owns records or is steered (for precomputing answers).
    pub fn owner_names(&self) -> impl Iterator<Item = &LowerName> {
        self.names.keys().chain(self.steered.keys())
    }

    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Lookup<'_> {
        if let Some(&index) = self.steered.get(name) {
            return Lookup::Steered(index);
        }
        let Some(types) = self.names.get(name) else {
            return if self.empty_non_terminals.contains(name) {
                Lookup::NoData
            } else {
                Lookup::NxDomain
            };
        };
        if let Some(cname) = types.get(&RecordType::CNAME) {
            if qtype == RecordType::CNAME {
                return Lookup::Answer(cname);
            }
            let target = cname
                .first()
                .and_then(|r| match &r.data {
                    RData::CNAME(c) => Some(LowerName::new(&c.0)),
                    _ => None,
                })
                .and_then(|t| self.names.get(&t))
                .and_then(|types| match qtype {
                    RecordType::ANY => types.values().next(),
                    _ => types.get(&qtype),
                })
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            return Lookup::Alias { cname, target };
        }
        if qtype == RecordType::ANY {
            // RFC 8482: answer ANY with one RRset rather than everything the name has.
            let preferred = [RecordType::A, RecordType::AAAA, RecordType::SOA];
            let set = preferred
                .iter()
                .find_map(|t| types.get(t))
                .or_else(|| types.values().next());
            return match set {
                Some(records) => Lookup::Answer(records),
                None => Lookup::NoData,
            };
        }
        match types.get(&qtype) {
            Some(records) if !records.is_empty() => Lookup::Answer(records),
            _ => Lookup::NoData,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    const ZONE: &str = "\
$ORIGIN example.test.
$TTL 300
@       IN SOA ns1 hostmaster 1 3600 600 86400 60
@       IN NS  ns1
ns1     IN A   127.0.0.1
static  IN A   192.0.2.10
static  IN AAAA 2001:db8::10
alias   IN CNAME static
a.b.deep IN TXT \"deep\"
";

    fn zone() -> Zone {
        let origin = Name::from_str("example.test.").unwrap();
        let steered = [(Name::from_str("www.example.test.").unwrap(), 0)];
        Zone::parse(&origin, "t.zone", ZONE, None, &steered).unwrap()
    }

    fn name(s: &str) -> LowerName {
        LowerName::new(&Name::from_str(s).unwrap())
    }

    #[test]
    fn answers_static_records_case_insensitively() {
        let z = zone();
        match z.lookup(&name("STATIC.Example.TEST."), RecordType::A) {
            Lookup::Answer(r) => assert_eq!(r.len(), 1),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nodata_for_missing_type_and_empty_non_terminal() {
        let z = zone();
        assert!(matches!(
            z.lookup(&name("static.example.test."), RecordType::MX),
            Lookup::NoData
        ));
        assert!(matches!(
            z.lookup(&name("b.deep.example.test."), RecordType::A),
            Lookup::NoData
        ));
        assert!(matches!(
            z.lookup(&name("nope.example.test."), RecordType::A),
            Lookup::NxDomain
        ));
    }

    #[test]
    fn cname_is_followed_inside_the_zone() {
        let z = zone();
        match z.lookup(&name("alias.example.test."), RecordType::AAAA) {
            Lookup::Alias { cname, target } => {
                assert_eq!(cname.len(), 1);
                assert_eq!(target.len(), 1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn steered_names_are_handed_back() {
        let z = zone();
        assert!(matches!(
            z.lookup(&name("www.example.test."), RecordType::A),
            Lookup::Steered(0)
        ));
    }

    #[test]
    fn negative_ttl_is_soa_minimum() {
        let z = zone();
        assert_eq!(z.negative_soa()[0].ttl, 60);
    }

    #[test]
    fn any_gets_one_rrset() {
        let z = zone();
        match z.lookup(&name("static.example.test."), RecordType::ANY) {
            Lookup::Answer(r) => assert!(r.iter().all(|r| r.record_type() == RecordType::A)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn zone_errors_are_reported() {
        let origin = Name::from_str("example.test.").unwrap();
        let no_soa = "$ORIGIN example.test.\n$TTL 60\nx IN A 192.0.2.1\n";
        assert!(matches!(
            Zone::parse(&origin, "t", no_soa, None, &[]),
            Err(ZoneError::NoSoa { .. })
        ));
        let overlap = [(Name::from_str("static.example.test.").unwrap(), 0)];
        assert!(matches!(
            Zone::parse(&origin, "t", ZONE, None, &overlap),
            Err(ZoneError::StaticSteeredOverlap { .. })
        ));
        let garbage = "@ IN SOA what\n";
        assert!(matches!(
            Zone::parse(&origin, "t", garbage, None, &[]),
            Err(ZoneError::Parse { .. })
        ));
        let outside = format!("{ZONE}other.test. IN A 192.0.2.1\n");
        assert!(matches!(
            Zone::parse(&origin, "t", &outside, None, &[]),
            Err(ZoneError::OutOfZone { .. })
        ));
    }
}
