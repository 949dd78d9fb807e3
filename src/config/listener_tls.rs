//! The `[tls]` part of the proxy config: the certificates of the HTTPS listeners (files,
//! or self-signed for trials), each with an optional OCSP response to staple, and the
//! listeners' policy: protocol versions (Mozilla's server-side profiles) and client
//! certificates.

use std::path::PathBuf;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Source};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    #[serde(default)]
    certificates: Vec<RawCertificate>,
    profile: Option<TlsProfile>,
    min_version: Option<Spanned<String>>,
    client_ca: Option<Spanned<PathBuf>>,
    client_auth: Option<ClientAuthMode>,
    client_subject_header: Option<Spanned<String>>,
    client_fingerprint_header: Option<Spanned<String>>,
    /// Where ACME accounts, keys and certificates are kept (default: `acme` beside the
    /// config file).
    acme_storage: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCertificate {
    cert: Option<Spanned<PathBuf>>,
    key: Option<Spanned<PathBuf>>,
    /// A DER OCSP response for `cert`, stapled to handshakes and reloaded when it changes.
    ocsp_file: Option<Spanned<PathBuf>>,
    /// Generate a self-signed certificate for these names at start (demo and tests).
    self_signed: Option<Vec<String>>,
    /// Get (and renew) this certificate from an ACME CA.
    acme: Option<RawAcme>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAcme {
    directory: Spanned<String>,
    names: Vec<String>,
    #[serde(default)]
    contact: Vec<String>,
    #[serde(default)]
    challenge: AcmeChallenge,
    /// Trust this CA for the ACME server's own HTTPS (a test CA such as pebble's).
    directory_ca: Option<Spanned<PathBuf>>,
}

/// How the ACME CA checks that we control a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum AcmeChallenge {
    /// A TXT record under `_acme-challenge.NAME`, served by the DNS servers this node
    /// reports to (they are the name's authoritative servers).
    #[default]
    #[serde(rename = "dns-01")]
    Dns01,
    /// A certificate shown on port 443 to the CA's `acme-tls/1` handshake (a lone node).
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// A certificate got by ACME, and where its files live.
#[derive(Debug, Clone, PartialEq)]
pub struct AcmeCertificate {
    pub names: Vec<String>,
    pub directory: String,
    pub contact: Vec<String>,
    pub challenge: AcmeChallenge,
    pub directory_ca: Option<PathBuf>,
    /// The chain and key as issued (`<storage>/<first name>.crt` and `.key`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The ACME account's credentials, shared by the certificates of one directory.
    pub account: PathBuf,
}

/// Mozilla's server-side TLS recommendations (wiki.mozilla.org/Security/Server_Side_TLS).
/// Both profiles' cipher suites and groups are what rustls offers anyway (AEAD suites
/// with forward secrecy; X25519, P-256, P-384); they differ in the versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsProfile {
    /// TLS 1.3 only.
    Modern,
    /// TLS 1.2 and 1.3.
    Intermediate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V12,
    V13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    /// Clients without a certificate are served (routes may still demand one); a
    /// certificate that does not verify fails the handshake.
    Optional,
    /// The handshake fails without a certificate that verifies.
    Required,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CertificateSource {
    Files {
        cert: PathBuf,
        key: PathBuf,
        ocsp: Option<PathBuf>,
    },
    SelfSigned(Vec<String>),
    Acme(AcmeCertificate),
}

/// Client certificates on the HTTPS listeners (nginx's `ssl_verify_client`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientAuth {
    pub ca_file: PathBuf,
    pub mode: ClientAuthMode,
    /// Request headers that carry the verified certificate's subject and SHA-256
    /// fingerprint to origins; removed from every request first, so a client cannot
    /// claim a certificate it did not present.
    pub subject_header: String,
    pub fingerprint_header: String,
}

/// The listeners' TLS settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    pub certificates: Vec<CertificateSource>,
    pub min_version: TlsVersion,
    pub client_auth: Option<ClientAuth>,
}

impl Default for ListenerTls {
    fn default() -> Self {
        Self {
            certificates: Vec::new(),
            min_version: TlsVersion::V12,
            client_auth: None,
        }
    }
}

pub(super) fn validate(src: &Source, raw: RawTls) -> Result<ListenerTls, ConfigError> {
    let storage = src.resolve(
        raw.acme_storage
            .as_deref()
            .unwrap_or(std::path::Path::new("acme")),
    );
    let mut certificates = Vec::new();
    for (i, c) in raw.certificates.into_iter().enumerate() {
        let key = format!("tls.certificates[{i}]");
        if let Some(acme) = c.acme {
            if c.cert.is_some()
                || c.key.is_some()
                || c.self_signed.is_some()
                || c.ocsp_file.is_some()
            {
                return Err(src.error(
                    key,
                    None,
                    "an `acme` certificate has no `cert`, `key`, `ocsp_file` or `self_signed`",
                ));
            }
            certificates.push(CertificateSource::Acme(acme_certificate(
                src, &key, acme, &storage,
            )?));
            continue;
        }
        let source = match (c.cert, c.key, c.self_signed) {
            (Some(cert), Some(keyfile), None) => {
                let ocsp = match &c.ocsp_file {
                    Some(p) => Some(src.existing_file(&format!("{key}.ocsp_file"), p)?),
                    None => None,
                };
                CertificateSource::Files {
                    cert: src.existing_file(&format!("{key}.cert"), &cert)?,
                    key: src.existing_file(&format!("{key}.key"), &keyfile)?,
                    ocsp,
                }
            }
            (None, None, Some(names)) if !names.is_empty() && c.ocsp_file.is_none() => {
                CertificateSource::SelfSigned(names)
            }
            _ => {
                return Err(src.error(
                    key,
                    None,
                    "a certificate is either `cert` + `key` files (with an optional `ocsp_file`) or `self_signed = [names]`",
                ))
            }
        };
        certificates.push(source);
    }
    let min_version = match (raw.profile, &raw.min_version) {
        (None, None) | (Some(TlsProfile::Intermediate), None) => TlsVersion::V12,
        (Some(TlsProfile::Modern), None) => TlsVersion::V13,
        (profile, Some(v)) => {
            let version = match v.get_ref().as_str() {
                "1.2" => TlsVersion::V12,
                "1.3" => TlsVersion::V13,
                other => {
                    return Err(src.error(
                        "tls.min_version",
                        Some(v.span()),
                        format!(
                            "`{other}` is not a TLS version geoedge speaks: \"1.2\" or \"1.3\""
                        ),
                    ))
                }
            };
            if profile == Some(TlsProfile::Modern) && version == TlsVersion::V12 {
                return Err(src.error(
                    "tls.min_version",
                    Some(v.span()),
                    "profile = \"modern\" is TLS 1.3 only; drop min_version or the profile",
                ));
            }
            version
        }
    };
    let client_auth = match raw.client_ca {
        None => {
            if raw.client_auth.is_some()
                || raw.client_subject_header.is_some()
                || raw.client_fingerprint_header.is_some()
            {
                return Err(src.error(
                    "tls.client_ca",
                    None,
                    "client certificate settings need client_ca, the CAs that sign them",
                ));
            }
            None
        }
        Some(ca) => {
            let ca_file = src.existing_file("tls.client_ca", &ca)?;
            let certs = CertificateDer::pem_file_iter(&ca_file)
                .and_then(|c| c.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    src.error(
                        "tls.client_ca",
                        Some(ca.span()),
                        format!("{}: {e}", ca_file.display()),
                    )
                })?;
            if certs.is_empty() {
                return Err(src.error(
                    "tls.client_ca",
                    Some(ca.span()),
                    format!("{} holds no PEM certificate", ca_file.display()),
                ));
            }
            Some(ClientAuth {
                ca_file,
                mode: raw.client_auth.unwrap_or(ClientAuthMode::Required),
                subject_header: header_name(
                    src,
                    "tls.client_subject_header",
                    raw.client_subject_header,
                    "x-client-cert-subject",
                )?,
                fingerprint_header: header_name(
                    src,
                    "tls.client_fingerprint_header",
                    raw.client_fingerprint_header,
                    "x-client-cert-sha256",
                )?,
            })
        }
    };
    Ok(ListenerTls {
        certificates,
        min_version,
        client_auth,
    })
}

fn acme_certificate(
    src: &Source,
    key: &str,
    raw: RawAcme,
    storage: &std::path::Path,
) -> Result<AcmeCertificate, ConfigError> {
    let directory = raw.directory.get_ref();
    if !directory.starts_with("https://") || directory.parse::<http::Uri>().is_err() {
        return Err(src.error(
            format!("{key}.acme.directory"),
            Some(raw.directory.span()),
            "the ACME directory is an https:// URL",
        ));
    }
    if raw.names.is_empty() {
        return Err(src.error(
            format!("{key}.acme.names"),
            None,
            "name at least one domain",
        ));
    }
    let mut names = Vec::new();
    for (j, name) in raw.names.iter().enumerate() {
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let bare = lower.strip_prefix("*.").unwrap_or(&lower);
        let wildcard = bare.len() != lower.len();
        let valid = !bare.is_empty()
            && bare.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid || (wildcard && raw.challenge == AcmeChallenge::TlsAlpn01) {
            return Err(src.error(
                format!("{key}.acme.names[{j}]"),
                None,
                format!("`{name}` is not a domain name this challenge can prove (wildcards need dns-01)"),
            ));
        }
        names.push(lower);
    }
    for (j, c) in raw.contact.iter().enumerate() {
        if !c.starts_with("mailto:") {
            return Err(src.error(
                format!("{key}.acme.contact[{j}]"),
                None,
                "contacts are mailto: URLs",
            ));
        }
    }
    let directory_ca = match &raw.directory_ca {
        Some(p) => Some(src.existing_file(&format!("{key}.acme.directory_ca"), p)?),
        None => None,
    };
    let file_stem = names[0].replace('*', "_wildcard");
    let account_stem: String = directory
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok(AcmeCertificate {
        cert: storage.join(format!("{file_stem}.crt")),
        key: storage.join(format!("{file_stem}.key")),
        account: storage.join(format!("account-{account_stem}.json")),
        names,
        directory: directory.clone(),
        contact: raw.contact,
        challenge: raw.challenge,
        directory_ca,
    })
}

fn header_name(
    src: &Source,
    key: &str,
    written: Option<Spanned<String>>,
    default: &str,
) -> Result<String, ConfigError> {
    let Some(name) = written else {
        return Ok(default.to_string());
    };
    let lower = name.get_ref().to_ascii_lowercase();
    match http::HeaderName::from_bytes(lower.as_bytes()) {
        Ok(_) => Ok(lower),
        Err(_) => Err(src.error(
            key,
            Some(name.span()),
            format!("`{}` is not a header name", name.get_ref()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(tls: &str) -> Result<ListenerTls, ConfigError> {
        let text = format!("[tls]\n{tls}\n");
        let src = Source::from_text("/tmp/region.toml", text);
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            tls: RawTls,
        }
        let doc: Doc = src.parse()?;
        validate(&src, doc.tls)
    }

    #[test]
    fn profiles_and_min_version_set_the_lowest_version() {
        assert_eq!(load("").unwrap().min_version, TlsVersion::V12);
        assert_eq!(
            load("profile = \"modern\"").unwrap().min_version,
            TlsVersion::V13
        );
        assert_eq!(
            load("profile = \"intermediate\"").unwrap().min_version,
            TlsVersion::V12
        );
        assert_eq!(
            load("min_version = \"1.3\"").unwrap().min_version,
            TlsVersion::V13
        );
        let err = load("min_version = \"1.1\"").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("tls.min_version"));
        assert!(err.line.is_some());
        let err = load("profile = \"modern\"\nmin_version = \"1.2\"").unwrap_err();
        assert!(err.to_string().contains("TLS 1.3 only"), "{err}");
        assert!(load("profile = \"old\"").is_err());
    }

    #[test]
    fn client_certificates_need_their_ca_and_good_header_names() {
        let err = load("client_auth = \"optional\"").unwrap_err();
        assert_eq!(err.key.as_deref(), Some("tls.client_ca"));
        let err = load("client_ca = \"/nonexistent/ca.pem\"").unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let issued = rcgen::generate_simple_self_signed(vec!["ca.test".to_string()]).unwrap();
        std::fs::write(&ca, issued.cert.pem()).unwrap();
        let auth = load(&format!("client_ca = \"{}\"", ca.display()))
            .unwrap()
            .client_auth
            .unwrap();
        assert_eq!(auth.mode, ClientAuthMode::Required);
        assert_eq!(auth.subject_header, "x-client-cert-subject");
        let err = load(&format!(
            "client_ca = \"{}\"\nclient_subject_header = \"bad header\"",
            ca.display()
        ))
        .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("tls.client_subject_header"));
    }

    #[test]
    fn an_ocsp_file_goes_with_certificate_files_only() {
        let err = load("[[tls.certificates]]\nself_signed = [\"a.test\"]\nocsp_file = \"x.der\"")
            .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("tls.certificates[0]"));
    }
}
