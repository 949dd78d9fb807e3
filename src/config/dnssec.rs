//! `[zones.dnssec]` of the DNS config: where a zone's signing keys live and how long the
//! signatures made with them are valid.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigDuration, ConfigError, Source};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDnssec {
    key_dir: Spanned<PathBuf>,
    #[serde(default = "d_generate")]
    generate: bool,
    #[serde(default = "d_algorithm")]
    algorithm: Spanned<String>,
    #[serde(default = "d_validity")]
    signature_validity: Spanned<ConfigDuration>,
}

fn d_generate() -> bool {
    true
}
fn d_algorithm() -> Spanned<String> {
    Spanned::new(0..0, "ecdsap256sha256".into())
}
fn d_validity() -> Spanned<ConfigDuration> {
    Spanned::new(0..0, ConfigDuration(Duration::from_secs(14 * 86_400)))
}

/// The algorithms `geoedge dnssec keygen` makes and the signer signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// ECDSA P-256 with SHA-256, algorithm 13 (RFC 6605): what validators expect.
    EcdsaP256,
    /// Ed25519, algorithm 15 (RFC 8080): smaller signatures, faster to make.
    Ed25519,
}

impl KeyAlgorithm {
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "ecdsap256sha256" | "13" | "p256" => Some(Self::EcdsaP256),
            "ed25519" | "15" => Some(Self::Ed25519),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Self::EcdsaP256 => 13,
            Self::Ed25519 => 15,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DnssecConfig {
    /// The zone's key files (`*.key`), shared by every DNS server of the zone.
    pub key_dir: PathBuf,
    /// Make a combined signing key when `key_dir` holds none (first start).
    pub generate: bool,
    /// The algorithm of a generated key.
    pub algorithm: KeyAlgorithm,
    /// How long a signature is valid; each is made again when a quarter is left.
    pub signature_validity: Duration,
}

pub(super) fn validate(
    src: &Source,
    key: &str,
    raw: RawDnssec,
) -> Result<DnssecConfig, ConfigError> {
    let algorithm = KeyAlgorithm::parse(raw.algorithm.get_ref()).ok_or_else(|| {
        src.error(
            format!("{key}.algorithm"),
            Some(raw.algorithm.span()),
            format!(
                "`{}` is not an algorithm we sign with: use ecdsap256sha256 or ed25519",
                raw.algorithm.get_ref()
            ),
        )
    })?;
    let validity = raw.signature_validity.get_ref().0;
    // Validators allow for clock skew of minutes, caches hold answers for the TTL: a
    // validity under a day leaves no room for either once refreshes come every quarter.
    if validity < Duration::from_secs(86_400) || validity > Duration::from_secs(90 * 86_400) {
        return Err(src.error(
            format!("{key}.signature_validity"),
            Some(raw.signature_validity.span()),
            "must be between 1d and 90d",
        ));
    }
    let key_dir = src.resolve(raw.key_dir.get_ref());
    if !raw.generate && !key_dir.is_dir() {
        return Err(src.error(
            format!("{key}.key_dir"),
            Some(raw.key_dir.span()),
            format!(
                "{} is not a directory (and generate = false)",
                key_dir.display()
            ),
        ));
    }
    Ok(DnssecConfig {
        key_dir,
        generate: raw.generate,
        algorithm,
        signature_validity: validity,
    })
}
