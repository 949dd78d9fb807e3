//! Online signing of one zone's RRsets, with every signature made kept for reuse.
//!
//! Steered answers change with health and place, so they cannot be signed ahead of time;
//! but the set of distinct RRsets a name is answered with is small (a region's nodes, or
//! the up ones among them), so each is signed once and its signature served from the cache
//! until a quarter of its validity is left. Reads take no lock: the cache is a map behind
//! an `ArcSwap`, copied and swapped by the rare query that signs.
//!
//! Signatures are backdated an hour (validators' clocks drift) and their expiry is spread
//! by up to a tenth of the validity, so the signatures made together after a start do not
//! all come due in the same second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::dnssec::rdata::{DNSSECRData, SigInput, RRSIG};
use hickory_proto::dnssec::TBS;
use hickory_proto::rr::{Name, RData, Record, RecordType, SerialNumber};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use crate::dns::dnssec::keys::{KeyState, ZoneKey};

/// How many distinct RRsets' signatures are kept per zone. Past this the cache starts
/// again empty: a zone with more distinct answers than this is being probed with names
/// made up to fill it, and those answers are cheap to sign again.
pub const CACHE_ENTRIES: usize = 16_384;
/// How far a signature's inception is backdated.
const BACKDATE_SECS: u32 = 3600;

struct Signed {
    rrsigs: Arc<[Record]>,
    /// Unix seconds after which the signature is made again.
    refresh_at: u32,
}

/// The fast path's name for an RRset: which precomputed name (`name`), the type, and for
/// a steered name the region and which of its nodes are in the answer (bit i: the
/// region's i-th node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WireKey {
    pub name: u32,
    pub qtype: u16,
    pub region: u32,
    pub nodes: u64,
}

/// An RRset's RRSIG records in wire form, each owned by a pointer to the question's name
/// (offset 12), ready to copy after the RRset in an answer.
pub struct WireSigs {
    pub records: Box<[Box<[u8]>]>,
    refresh_at: u32,
}

pub struct ZoneSigner {
    pub zone: Name,
    keys: Vec<ZoneKey>,
    validity: Duration,
    cache: ArcSwap<HashMap<Box<[u8]>, Arc<Signed>>>,
    /// The same signatures in wire form, by the fast path's key: no encoding per query.
    wire: ArcSwap<HashMap<WireKey, Arc<WireSigs>>>,
    /// Serialises the writers that copy and swap the map; readers never take it.
    writer: Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("nothing to sign")]
    Empty,
    #[error("signing {name} {rtype}: {message}")]
    Crypto {
        name: String,
        rtype: RecordType,
        message: String,
    },
}

impl std::fmt::Debug for ZoneSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneSigner")
            .field("zone", &self.zone)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl ZoneSigner {
    pub fn new(zone: Name, keys: Vec<ZoneKey>, validity: Duration) -> Self {
        Self {
            zone,
            keys,
            validity,
            cache: ArcSwap::from_pointee(HashMap::new()),
            wire: ArcSwap::from_pointee(HashMap::new()),
            writer: Mutex::new(()),
        }
    }

    pub fn keys(&self) -> &[ZoneKey] {
        &self.keys
    }

    /// Entries in the signature cache now.
    pub fn cached(&self) -> usize {
        self.cache.load().len()
    }

    /// The RRSIGs of one RRset (records of one owner, type and class), made at `now`
    /// (unix seconds) or taken from the cache; and whether they came from the cache.
    pub fn sign(&self, rrset: &[&Record], now: u32) -> Result<(Arc<[Record]>, bool), SignError> {
        let first = rrset.first().ok_or(SignError::Empty)?;
        let key = cache_key(rrset);
        if let Some(hit) = self.cache.load().get(&key) {
            if now < hit.refresh_at {
                return Ok((hit.rrsigs.clone(), true));
            }
        }
        let (rrsigs, expires) = self.make(first, rrset, now, &key)?;
        let refresh_at = expires.saturating_sub((self.validity.as_secs() / 4) as u32);
        let signed = Arc::new(Signed {
            rrsigs: rrsigs.clone(),
            refresh_at,
        });
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.cache.load_full();
        let mut next = if current.len() >= CACHE_ENTRIES {
            HashMap::new()
        } else {
            (*current).clone()
        };
        next.insert(key, signed);
        self.cache.store(Arc::new(next));
        Ok((rrsigs, false))
    }

    /// The RRSIGs of the RRset the fast path knows as `key`, in wire form; `rrset` gives
    /// its records when they must be signed (or found in the record cache). Also says
    /// whether they came from the cache.
    pub fn wire_sigs(
        &self,
        key: WireKey,
        now: u32,
        rrset: impl FnOnce() -> Vec<Record>,
    ) -> Result<(Arc<WireSigs>, bool), SignError> {
        if let Some(hit) = self.wire.load().get(&key) {
            if now < hit.refresh_at {
                return Ok((hit.clone(), true));
            }
        }
        let records = rrset();
        let refs: Vec<&Record> = records.iter().collect();
        let (rrsigs, _) = self.sign(&refs, now)?;
        let mut wire = Vec::with_capacity(rrsigs.len());
        let mut refresh_at = u32::MAX;
        for r in rrsigs.iter() {
            let RData::DNSSEC(DNSSECRData::RRSIG(sig)) = &r.data else {
                continue;
            };
            let expires = sig.input().sig_expiration.get();
            refresh_at =
                refresh_at.min(expires.saturating_sub((self.validity.as_secs() / 4) as u32));
            wire.push(wire_rrsig(r).map_err(|message| SignError::Crypto {
                name: r.name.to_string(),
                rtype: RecordType::RRSIG,
                message,
            })?);
        }
        let sigs = Arc::new(WireSigs {
            records: wire.into_boxed_slice(),
            refresh_at,
        });
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.wire.load_full();
        let mut next = if current.len() >= CACHE_ENTRIES {
            HashMap::new()
        } else {
            (*current).clone()
        };
        next.insert(key, sigs.clone());
        self.wire.store(Arc::new(next));
        Ok((sigs, false))
    }

    fn make(
        &self,
        first: &Record,
        rrset: &[&Record],
        now: u32,
        cache_key: &[u8],
    ) -> Result<(Arc<[Record]>, u32), SignError> {
        let rtype = first.record_type();
        let signs_keys = matches!(
            rtype,
            RecordType::DNSKEY | RecordType::CDS | RecordType::CDNSKEY
        );
        let validity = self.validity.as_secs() as u32;
        // Spread expiries by a value the RRset's bytes fix, so two servers with the same
        // keys make the same choice and a restart does not move every expiry.
        let spread = (validity / 10).max(1);
        let jitter = fnv(cache_key) % spread;
        let inception = now.saturating_sub(BACKDATE_SECS);
        let expiration = now.saturating_add(validity - jitter);
        let mut out = Vec::new();
        for k in self.keys.iter().filter(|k| {
            k.state == KeyState::Active
                && if signs_keys {
                    k.role.signs_keys()
                } else {
                    k.role.signs_data()
                }
        }) {
            let input = SigInput {
                type_covered: rtype,
                algorithm: k.key.algorithm(),
                num_labels: first.name.num_labels(),
                original_ttl: first.ttl,
                sig_expiration: SerialNumber::new(expiration),
                sig_inception: SerialNumber::new(inception),
                key_tag: k.tag,
                signer_name: self.zone.clone(),
            };
            let crypto = |message: String| SignError::Crypto {
                name: first.name.to_string(),
                rtype,
                message,
            };
            let tbs = TBS::from_input(&first.name, first.dns_class, &input, rrset.iter().copied())
                .map_err(|e| crypto(e.to_string()))?;
            let sig = k.key.sign(&tbs).map_err(|e| crypto(e.to_string()))?;
            let rrsig = RRSIG::from_sig(input, sig);
            out.push(Record::from_rdata(
                first.name.clone(),
                first.ttl,
                RData::DNSSEC(DNSSECRData::RRSIG(rrsig)),
            ));
        }
        Ok((out.into(), expiration))
    }
}

/// An RRSIG record as it appears after its RRset in an answer to a question for the
/// RRset's name: owner a pointer to the question (offset 12), the RDATA uncompressed (the
/// signer's name is never compressed, RFC 4034 §3.1.7).
fn wire_rrsig(record: &Record) -> Result<Box<[u8]>, String> {
    let mut rdata = Vec::with_capacity(96);
    {
        let mut e = BinEncoder::new(&mut rdata);
        e.set_name_encoding(NameEncoding::Uncompressed);
        record.data.emit(&mut e).map_err(|e| e.to_string())?;
    }
    let len = u16::try_from(rdata.len()).map_err(|_| "RRSIG too long".to_string())?;
    let mut out = Vec::with_capacity(12 + rdata.len());
    out.extend_from_slice(&[0xC0, 0x0C]);
    out.extend_from_slice(&u16::from(RecordType::RRSIG).to_be_bytes());
    out.extend_from_slice(&u16::from(record.dns_class).to_be_bytes());
    out.extend_from_slice(&record.ttl.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&rdata);
    Ok(out.into_boxed_slice())
}

/// The RRset as the cache knows it: owner (lower case), type, class, TTL and the sorted
/// RDATA, so the same set in any order is one entry.
fn cache_key(rrset: &[&Record]) -> Box<[u8]> {
    let mut rdatas: Vec<Vec<u8>> = rrset
        .iter()
        .map(|r| {
            let mut buf = Vec::new();
            let mut e = BinEncoder::new(&mut buf);
            e.set_canonical_form(true);
            // A record whose RDATA does not encode is signed as its own entry.
            let _ = r.data.emit(&mut e);
            buf
        })
        .collect();
    rdatas.sort();
    let first = rrset[0];
    let mut key = Vec::with_capacity(64);
    {
        let mut e = BinEncoder::new(&mut key);
        let mut lower = e.with_name_encoding(NameEncoding::UncompressedLowercase);
        let _ = first.name.emit(&mut lower);
    }
    key.extend_from_slice(&u16::from(first.record_type()).to_be_bytes());
    key.extend_from_slice(&u16::from(first.dns_class).to_be_bytes());
    key.extend_from_slice(&first.ttl.to_be_bytes());
    for r in rdatas {
        key.extend_from_slice(&(r.len() as u16).to_be_bytes());
        key.extend_from_slice(&r);
    }
    key.into_boxed_slice()
}

fn fnv(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::dns::KeyAlgorithm;
    use crate::dns::dnssec::keys::{self, Role};
    use hickory_proto::dnssec::Verifier;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::DNSClass;
    use std::str::FromStr;

    fn signer(algorithm: KeyAlgorithm) -> (ZoneSigner, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let zone = Name::from_str("example.test.").unwrap();
        keys::generate(&zone, dir.path(), Role::Csk, KeyState::Active, algorithm).unwrap();
        let loaded = keys::load_dir(&zone, dir.path()).unwrap();
        let validity = Duration::from_secs(14 * 86_400);
        (ZoneSigner::new(zone, loaded, validity), dir)
    }

    fn a(ip: [u8; 4]) -> Record {
        let name = Name::from_str("www.example.test.").unwrap();
        Record::from_rdata(name, 30, RData::A(A::from(std::net::Ipv4Addr::from(ip))))
    }

    #[test]
    fn signatures_verify_with_the_published_key_for_both_algorithms() {
        for algorithm in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
            let (s, _dir) = signer(algorithm);
            let set = [a([127, 0, 0, 11]), a([127, 0, 0, 21])];
            let refs: Vec<&Record> = set.iter().collect();
            let (sigs, hit) = s.sign(&refs, 1_800_000_000).unwrap();
            assert!(!hit);
            assert_eq!(sigs.len(), 1);
            let rrsig = match &sigs[0].data {
                RData::DNSSEC(DNSSECRData::RRSIG(r)) => r,
                other => panic!("{other:?}"),
            };
            let input = rrsig.input();
            assert_eq!(input.sig_inception.get(), 1_800_000_000 - BACKDATE_SECS);
            let validity = 14 * 86_400;
            let expires = input.sig_expiration.get() - 1_800_000_000;
            assert!(expires <= validity && expires > validity - validity / 10);
            s.keys()[0]
                .dnskey
                .verify_rrsig(&set[0].name, DNSClass::IN, rrsig, set.iter())
                .unwrap();
            // Tampered data does not verify.
            let other = [a([127, 0, 0, 11]), a([127, 0, 0, 99])];
            assert!(s.keys()[0]
                .dnskey
                .verify_rrsig(&set[0].name, DNSClass::IN, rrsig, other.iter())
                .is_err());
        }
    }

    #[test]
    fn the_same_rrset_in_any_order_is_signed_once_until_its_refresh_time() {
        let (s, _dir) = signer(KeyAlgorithm::EcdsaP256);
        let (x, y) = (a([127, 0, 0, 11]), a([127, 0, 0, 21]));
        let now = 1_800_000_000;
        let (first, hit) = s.sign(&[&x, &y], now).unwrap();
        assert!(!hit);
        let (again, hit) = s.sign(&[&y, &x], now + 60).unwrap();
        assert!(hit, "another order of the same set is the same entry");
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(s.cached(), 1);
        // A quarter of the validity before expiry, it is made again.
        let late = now + 11 * 86_400;
        let (renewed, hit) = s.sign(&[&x, &y], late).unwrap();
        assert!(!hit);
        let RData::DNSSEC(DNSSECRData::RRSIG(rrsig)) = &renewed[0].data else {
            panic!("not an RRSIG: {:?}", renewed[0]);
        };
        assert_eq!(rrsig.input().sig_inception.get(), late - BACKDATE_SECS);
        // Another TTL is another RRset.
        let mut z = x.clone();
        z.ttl = 60;
        assert!(!s.sign(&[&z, &y], late).unwrap().1);
    }

    #[test]
    fn the_cache_is_bounded() {
        let (s, _dir) = signer(KeyAlgorithm::Ed25519);
        for i in 0..(CACHE_ENTRIES as u32 + 10) {
            let r = a(i.to_be_bytes());
            s.sign(&[&r], 1_800_000_000).unwrap();
        }
        assert!(s.cached() <= CACHE_ENTRIES, "{}", s.cached());
    }
}
