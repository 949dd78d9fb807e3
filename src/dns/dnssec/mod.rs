//! DNSSEC for our zones, signed online: the keys (`keys`), the signer and its signature
//! cache (`signer`), and compact denial for negative answers (`denial`, pure).
//!
//! A signed zone publishes its keys at the apex (DNSKEY, and CDS/CDNSKEY so a parent that
//! scans for them can follow a KSK change) and, to a query with the DO bit, answers every
//! RRset with its RRSIGs. Zone data and steered answers alike are signed when first
//! asked for and served from the cache after that.

pub mod denial;
pub mod keys;
pub mod signer;

use std::path::Path;

use hickory_proto::dnssec::rdata::{DNSSECRData, CDNSKEY, CDS};
use hickory_proto::dnssec::{DigestType, PublicKey};
use hickory_proto::rr::{Name, RData, Record};

use crate::config::dns::DnssecConfig;
use crate::dns::dnssec::keys::{KeyError, KeyState, Role};
use crate::dns::dnssec::signer::ZoneSigner;

/// A signed zone's signer and the records its keys add to the apex.
pub struct Signing {
    pub signer: ZoneSigner,
    pub apex: Vec<Record>,
}

/// Reads the zone's keys (making a combined signing key first when the directory has
/// none and `generate` is on) and the apex records they give. `ttl` is the TTL of those
/// records (the SOA's).
pub fn load(origin: &Name, cfg: &DnssecConfig, ttl: u32) -> Result<Signing, KeyError> {
    if cfg.generate && !has_keys(&cfg.key_dir) {
        let path = keys::generate(
            origin,
            &cfg.key_dir,
            Role::Csk,
            KeyState::Active,
            cfg.algorithm,
        )?;
        tracing::info!(zone = %origin, key = %path.display(), "made a signing key for the zone (first start): give its DS to the parent, `geoedge dnssec ds`");
    }
    let loaded = keys::load_dir(origin, &cfg.key_dir)?;
    let mut apex = Vec::new();
    for k in &loaded {
        apex.push(Record::from_rdata(
            origin.clone(),
            ttl,
            RData::DNSSEC(DNSSECRData::DNSKEY(k.dnskey.clone())),
        ));
    }
    // CDS/CDNSKEY (RFC 7344) name the keys the parent's DS should point at: the active
    // key-signing ones.
    for k in loaded
        .iter()
        .filter(|k| k.role.signs_keys() && k.state == KeyState::Active)
    {
        let key_error = |e: &dyn std::fmt::Display| KeyError::Format {
            path: k.path.display().to_string(),
            message: format!("digest: {e}"),
        };
        let digest = k
            .dnskey
            .to_digest(origin, DigestType::SHA256)
            .map_err(|e| key_error(&e))?;
        apex.push(Record::from_rdata(
            origin.clone(),
            ttl,
            RData::DNSSEC(DNSSECRData::CDS(CDS::new(
                k.tag,
                Some(k.key.algorithm()),
                DigestType::SHA256,
                digest.as_ref().to_vec(),
            ))),
        ));
        apex.push(Record::from_rdata(
            origin.clone(),
            ttl,
            RData::DNSSEC(DNSSECRData::CDNSKEY(CDNSKEY::with_flags(
                k.dnskey.flags(),
                Some(k.key.algorithm()),
                k.dnskey.public_key().public_bytes().to_vec(),
            ))),
        ));
    }
    Ok(Signing {
        signer: ZoneSigner::new(origin.clone(), loaded, cfg.signature_validity),
        apex,
    })
}

fn has_keys(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.path().extension().is_some_and(|x| x == "key"))
    })
}
