//! A zone's signing keys: the files of its key directory, read at start and on reload, made
//! by `geoedge dnssec keygen`, and the DS and DNSKEY lines an operator gives the parent.
//!
//! A key file is PKCS#8 under a few `name = value` lines that say what the key is for:
//!
//! ```text
//! ; geoedge DNSSEC key: its private half signs example.test.; keep it secret.
//! zone = example.test.
//! role = csk            ; csk (signs everything), ksk (signs the DNSKEY set), zsk (the rest)
//! state = active        ; active (published and signing) or publish (published only)
//! -----BEGIN PRIVATE KEY-----
//! ...
//! ```
//!
//! `state = publish` is what a rollover needs: a new ZSK is published before it signs, and
//! an old one stays published after it stops, for as long as caches may hold its
//! signatures. Every DNS server of a zone can hold the same files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_proto::dnssec::crypto::{EcdsaSigningKey, Ed25519SigningKey};
use hickory_proto::dnssec::rdata::DNSKEY;
use hickory_proto::dnssec::{Algorithm, DigestType, SigningKey};
use hickory_proto::rr::{LowerName, Name};
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::config::dns::KeyAlgorithm;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Combined signing key: signs the DNSKEY set and every other RRset.
    Csk,
    /// Key signing key: signs the DNSKEY set (and CDS/CDNSKEY); its DS is at the parent.
    Ksk,
    /// Zone signing key: signs everything but the DNSKEY set.
    Zsk,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "csk" => Some(Self::Csk),
            "ksk" => Some(Self::Ksk),
            "zsk" => Some(Self::Zsk),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csk => "csk",
            Self::Ksk => "ksk",
            Self::Zsk => "zsk",
        }
    }

    /// Signs the DNSKEY RRset (and is a secure entry point, flags 257).
    pub fn signs_keys(self) -> bool {
        matches!(self, Self::Csk | Self::Ksk)
    }

    /// Signs the zone's other RRsets.
    pub fn signs_data(self) -> bool {
        matches!(self, Self::Csk | Self::Zsk)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Published in the DNSKEY set and signing.
    Active,
    /// Published only: before it signs (pre-publication) or after (retiring).
    Publish,
}

impl KeyState {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "publish" => Some(Self::Publish),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Publish => "publish",
        }
    }
}

/// One key of a zone, loaded.
pub struct ZoneKey {
    pub path: PathBuf,
    pub role: Role,
    pub state: KeyState,
    pub dnskey: DNSKEY,
    pub tag: u16,
    pub key: Arc<dyn SigningKey>,
}

impl std::fmt::Debug for ZoneKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneKey")
            .field("path", &self.path)
            .field("role", &self.role)
            .field("state", &self.state)
            .field("tag", &self.tag)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path}: {message}")]
    Format { path: String, message: String },
    #[error("zone {zone}: {message} (key directory {dir})")]
    Set {
        zone: String,
        dir: String,
        message: String,
    },
}

fn format_error(path: &Path, message: impl Into<String>) -> KeyError {
    KeyError::Format {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn io_error(path: &Path, source: std::io::Error) -> KeyError {
    KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Reads one key file; `zone` is the zone it must belong to.
pub fn load_file(path: &Path, zone: &Name) -> Result<ZoneKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_error(path, e))?;
    let mut file_zone = None;
    let mut role = None;
    let mut state = None;
    for line in text.lines() {
        let line = line.split(';').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("-----BEGIN") {
            break;
        }
        let Some((name, value)) = line.split_once('=') else {
            return Err(format_error(
                path,
                format!("`{line}` is not `name = value`"),
            ));
        };
        let value = value.trim();
        match name.trim() {
            "zone" => file_zone = Some(value.to_string()),
            "role" => {
                role = Some(Role::parse(value).ok_or_else(|| {
                    format_error(path, format!("role `{value}`: use csk, ksk or zsk"))
                })?)
            }
            "state" => {
                state = Some(KeyState::parse(value).ok_or_else(|| {
                    format_error(path, format!("state `{value}`: use active or publish"))
                })?)
            }
            // Written for people; the key itself says which algorithm it is.
            "algorithm" | "tag" => {}
            other => return Err(format_error(path, format!("unknown field `{other}`"))),
        }
    }
    let file_zone = file_zone.ok_or_else(|| format_error(path, "no `zone = ` line"))?;
    let parsed = Name::from_ascii(&file_zone)
        .map_err(|e| format_error(path, format!("zone `{file_zone}`: {e}")))?;
    if LowerName::new(&parsed) != LowerName::new(zone) {
        return Err(format_error(
            path,
            format!("the key is for {file_zone}, not {zone}"),
        ));
    }
    let role = role.ok_or_else(|| format_error(path, "no `role = ` line"))?;
    let state = state.unwrap_or(KeyState::Active);
    let block = pem::parse(text.as_bytes())
        .map_err(|e| format_error(path, format!("no PRIVATE KEY block: {e}")))?;
    if block.tag() != "PRIVATE KEY" {
        return Err(format_error(
            path,
            format!("a {} block; expected PRIVATE KEY (PKCS#8)", block.tag()),
        ));
    }
    let der = PrivatePkcs8KeyDer::from(block.contents().to_vec());
    let key: Arc<dyn SigningKey> =
        if let Ok(k) = EcdsaSigningKey::from_pkcs8(&der, Algorithm::ECDSAP256SHA256) {
            Arc::new(k)
        } else if let Ok(k) = Ed25519SigningKey::from_pkcs8(&der) {
            Arc::new(k)
        } else {
            return Err(format_error(
                path,
                "the key is neither ECDSA P-256 nor Ed25519 (PKCS#8)",
            ));
        };
    let public = key
        .to_public_key()
        .map_err(|e| format_error(path, format!("public key: {e}")))?;
    let dnskey = DNSKEY::new(true, role.signs_keys(), false, public);
    let tag = dnskey
        .calculate_key_tag()
        .map_err(|e| format_error(path, format!("key tag: {e}")))?;
    Ok(ZoneKey {
        path: path.to_path_buf(),
        role,
        state,
        dnskey,
        tag,
        key,
    })
}

/// Every `*.key` file of `dir`, checked as a set: at least one active key signs the
/// DNSKEY set and one signs the rest, and no two keys share a tag (validators look keys up
/// by tag; a collision would make them try both, and some give up).
pub fn load_dir(zone: &Name, dir: &Path) -> Result<Vec<ZoneKey>, KeyError> {
    let set_error = |message: String| KeyError::Set {
        zone: zone.to_string(),
        dir: dir.display().to_string(),
        message,
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "key"))
        .collect();
    paths.sort();
    let mut keys = Vec::new();
    for path in paths {
        keys.push(load_file(&path, zone)?);
    }
    if keys.is_empty() {
        return Err(set_error("no *.key files".into()));
    }
    let active = |f: fn(Role) -> bool| {
        keys.iter()
            .any(|k| k.state == KeyState::Active && f(k.role))
    };
    if !active(Role::signs_keys) {
        return Err(set_error(
            "no active csk or ksk: nothing would sign the DNSKEY set".into(),
        ));
    }
    if !active(Role::signs_data) {
        return Err(set_error(
            "no active csk or zsk: nothing would sign the zone's answers".into(),
        ));
    }
    for (i, k) in keys.iter().enumerate() {
        if let Some(other) = keys[..i].iter().find(|o| o.tag == k.tag) {
            return Err(set_error(format!(
                "{} and {} have the same key tag {}; make another key",
                other.path.display(),
                k.path.display(),
                k.tag
            )));
        }
    }
    Ok(keys)
}

/// Makes a key for `zone` in `dir` (created if missing, private to its owner) and returns
/// its path.
pub fn generate(
    zone: &Name,
    dir: &Path,
    role: Role,
    state: KeyState,
    algorithm: KeyAlgorithm,
) -> Result<PathBuf, KeyError> {
    let der = match algorithm {
        KeyAlgorithm::EcdsaP256 => EcdsaSigningKey::generate_pkcs8(Algorithm::ECDSAP256SHA256),
        KeyAlgorithm::Ed25519 => Ed25519SigningKey::generate_pkcs8(),
    }
    .map_err(|e| format_error(dir, format!("generating a key: {e}")))?;
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
    let block = pem::encode(&pem::Pem::new(
        "PRIVATE KEY",
        der.secret_pkcs8_der().to_vec(),
    ));
    let mut zone_text = zone.to_ascii();
    if !zone_text.ends_with('.') {
        zone_text.push('.');
    }
    let header = |tag: u16| {
        format!(
            "; geoedge DNSSEC key: its private half signs {zone_text}; keep it secret.\n\
             zone = {zone_text}\nrole = {}\nstate = {}\nalgorithm = {}\ntag = {tag}\n",
            role.as_str(),
            state.as_str(),
            algorithm.number(),
        )
    };
    // The tag comes from the public key, known once the file parses: write, read, rename.
    // A scratch name of its own: two starts (or two threads) making a first key at once
    // must not write into one file; each makes a key, and both keys are good.
    let scratch = dir.join(format!(".new-{}.tmp", random_suffix()));
    write_private(&scratch, &format!("{}{block}", header(0)))?;
    let loaded = load_file(&scratch, zone);
    let key = match loaded {
        Ok(k) => k,
        Err(e) => {
            let _ = std::fs::remove_file(&scratch);
            return Err(e);
        }
    };
    let name = format!(
        "K{}+{:03}+{:05}.key",
        zone_text,
        algorithm.number(),
        key.tag
    );
    let path = dir.join(name);
    if path.exists() {
        let _ = std::fs::remove_file(&scratch);
        return Err(format_error(&path, "exists already; run keygen again"));
    }
    write_private(&scratch, &format!("{}{block}", header(key.tag)))?;
    std::fs::rename(&scratch, &path).map_err(|e| io_error(&path, e))?;
    Ok(path)
}

fn random_suffix() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 8];
    // Without randomness the process id still keeps processes apart.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return std::process::id().to_string();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn write_private(path: &Path, text: &str) -> Result<(), KeyError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| io_error(path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error(path, e))
}

/// The lines an operator gives the parent zone (or a validating resolver as its trust
/// anchor): the DS (SHA-256) of every key that signs the DNSKEY set, then its DNSKEY.
pub fn parent_lines(zone: &Name, keys: &[ZoneKey]) -> Result<Vec<String>, KeyError> {
    let mut owner = zone.to_ascii();
    if !owner.ends_with('.') {
        owner.push('.');
    }
    let mut lines = Vec::new();
    for k in keys.iter().filter(|k| k.role.signs_keys()) {
        let digest = k
            .dnskey
            .to_digest(zone, DigestType::SHA256)
            .map_err(|e| format_error(&k.path, format!("digest: {e}")))?;
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        lines.push(format!(
            "{owner} IN DS {} {} 2 {hex}",
            k.tag,
            u8::from(k.key.algorithm())
        ));
    }
    for k in keys {
        lines.push(format!("{owner} IN DNSKEY {}", k.dnskey));
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn zone() -> Name {
        Name::from_str("example.test.").unwrap()
    }

    #[test]
    fn a_generated_key_loads_back_with_its_role_state_and_tag() {
        let dir = tempfile::tempdir().unwrap();
        let path = generate(
            &zone(),
            dir.path(),
            Role::Ksk,
            KeyState::Publish,
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
        let key = load_file(&path, &zone()).unwrap();
        assert_eq!((key.role, key.state), (Role::Ksk, KeyState::Publish));
        assert_eq!(key.dnskey.flags(), 257, "a KSK is a secure entry point");
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(name, format!("Kexample.test.+013+{:05}.key", key.tag));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "private key readable by others: {mode:o}");
        }
        let z = load_file(
            &generate(
                &zone(),
                dir.path(),
                Role::Zsk,
                KeyState::Active,
                KeyAlgorithm::Ed25519,
            )
            .unwrap(),
            &zone(),
        )
        .unwrap();
        assert_eq!(z.dnskey.flags(), 256);
        // A published KSK signs nothing: the set has no active key for the DNSKEY set.
        let err = load_dir(&zone(), dir.path()).unwrap_err().to_string();
        assert!(err.contains("no active csk or ksk"), "{err}");
    }

    #[test]
    fn the_ds_line_is_the_sha256_of_the_dnskey() {
        let dir = tempfile::tempdir().unwrap();
        generate(
            &zone(),
            dir.path(),
            Role::Csk,
            KeyState::Active,
            KeyAlgorithm::EcdsaP256,
        )
        .unwrap();
        let keys = load_dir(&zone(), dir.path()).unwrap();
        let lines = parent_lines(&zone(), &keys).unwrap();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let ds: Vec<&str> = lines[0].split_whitespace().collect();
        assert_eq!(
            ds[..4],
            ["example.test.", "IN", "DS", &keys[0].tag.to_string()]
        );
        assert_eq!(ds[4..6], ["13", "2"]);
        let digest = keys[0]
            .dnskey
            .to_digest(&zone(), DigestType::SHA256)
            .unwrap();
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(ds[6], hex);
        assert!(lines[1].starts_with("example.test. IN DNSKEY 257 3 13 "));
    }

    #[test]
    fn broken_key_files_name_the_file_and_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("zone = example.test.\nrole = boss\n", "role `boss`"),
            ("zone = example.test.\nstate = asleep\nrole = csk\n", "state `asleep`"),
            ("role = csk\n", "no `zone = ` line"),
            ("zone = other.test.\nrole = csk\n", "not example.test."),
            ("zone = example.test.\nrole = csk\n", "no PRIVATE KEY block"),
            (
                "zone = example.test.\nrole = csk\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "neither ECDSA P-256 nor Ed25519",
            ),
            ("zone = example.test.\nrole = csk\ncolour = blue\n", "unknown field"),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("k{i}.key"));
            std::fs::write(&path, text).unwrap();
            let err = load_file(&path, &zone()).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(err.contains(&format!("k{i}.key")), "{err}");
        }
    }
}
