//! Certificates by ACME (RFC 8555, with `instant-acme`): one task per `acme`
//! certificate gets it, and renews it at two thirds of its lifetime, by
//! - `dns-01`: the challenge goes over the signed channel of the health reports to every
//!   DNS server this node reports to, and the CA is asked to validate only once each of
//!   them has answered that it serves `_acme-challenge.NAME TXT`;
//! - `tls-alpn-01` (RFC 8737): a challenge certificate shown to the CA's `acme-tls/1`
//!   handshake on the HTTPS listener.
//!
//! A new certificate is written beside the account (key 0600) and the certificate store
//! picks the files up as it does any changed certificate file: new connections get it,
//! open ones keep theirs. A failing renewal keeps serving the current certificate, says
//! why in the log, and tries again after a back-off that doubles up to an hour.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, KeyPair};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;
use tokio::task::JoinHandle;

use crate::acme::challenge::{self, ChallengeMessage, CHALLENGE_PATH};
use crate::acme::renewal;
use crate::config::proxy::{AcmeCertificate, AcmeChallenge, CertificateSource};
use crate::health::report::{ReportKey, SIGNATURE_HEADER};
use crate::process::clock::unix_ms;
use crate::proxy::listen::tls::CertStore;
use crate::proxy::Shared;

/// The first wait after a failure; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How long a published dns-01 record is kept if it is never withdrawn.
const CHALLENGE_TTL_SECS: u32 = 600;
/// How long the CA gets to validate, and to issue.
const CA_PATIENCE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("{0}")]
    Other(String),
}

impl From<String> for AcmeError {
    fn from(s: String) -> Self {
        AcmeError::Other(s)
    }
}

/// Starts a renewal task for each ACME certificate of the store.
pub fn spawn(store: &Arc<CertStore>, shared: &Arc<Shared>) -> Vec<JoinHandle<()>> {
    store
        .sources()
        .into_iter()
        .filter_map(|s| match s {
            CertificateSource::Acme(a) => Some(a),
            _ => None,
        })
        .map(|cert| tokio::spawn(keep_renewed(cert, store.clone(), shared.clone())))
        .collect()
}

async fn keep_renewed(cert: AcmeCertificate, store: Arc<CertStore>, shared: Arc<Shared>) {
    let name = cert.names[0].clone();
    let mut failures = 0u32;
    loop {
        let now = unix_ms() / 1000;
        let validity = stored_validity(&cert.cert);
        // A little randomness per node, so a fleet started together spreads its renewals.
        let jitter = (unix_ms() % 997) as f64 / 997.0;
        let due = validity
            .map(|(from, until)| renewal::renew_at(from, until, jitter))
            .unwrap_or(now);
        if due > now {
            tokio::time::sleep(Duration::from_secs((due - now).min(3600))).await;
            continue;
        }
        match issue(&cert, &store, &shared).await {
            Ok(until) => {
                failures = 0;
                shared.metrics.acme_ok.inc();
                tracing::info!(certificate = %name, valid_until = until, "ACME certificate issued");
            }
            Err(e) => {
                shared.metrics.acme_failed.inc();
                let left = validity
                    .map(|(_, until)| Duration::from_secs(until.saturating_sub(now)))
                    .unwrap_or(Duration::MAX);
                let wait = renewal::backoff(failures, FIRST_BACKOFF, MAX_BACKOFF, left);
                failures = failures.saturating_add(1);
                tracing::warn!(certificate = %name, error = %e, retry_in = ?wait, "ACME renewal failed; the current certificate stays in force");
                store.note_acme_error(&name, e.to_string());
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// The validity of the certificate at `path` (unix seconds), when there is one.
pub fn stored_validity(path: &Path) -> Option<(u64, u64)> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_file(path).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let v = cert.validity();
    Some((
        u64::try_from(v.not_before.timestamp()).unwrap_or(0),
        u64::try_from(v.not_after.timestamp()).unwrap_or(0),
    ))
}

/// One order, from account to stored certificate; the challenges it published are
/// withdrawn whatever the outcome. Returns the new certificate's expiry.
async fn issue(
    cert: &AcmeCertificate,
    store: &CertStore,
    shared: &Shared,
) -> Result<u64, AcmeError> {
    let account = account(cert).await?;
    let identifiers: Vec<Identifier> = cert
        .names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut published: Vec<(String, String)> = Vec::new();
    let mut shown: Vec<String> = Vec::new();
    let outcome = async {
        let kind = match cert.challenge {
            AcmeChallenge::Dns01 => ChallengeType::Dns01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}").into()),
            }
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {kind:?} challenge"))?;
            let Identifier::Dns(domain) = challenge.identifier().identifier.clone() else {
                return Err("the CA asks to prove a name that is not a domain"
                    .to_string()
                    .into());
            };
            let key_authorization = challenge.key_authorization();
            match cert.challenge {
                AcmeChallenge::Dns01 => {
                    let value = key_authorization.dns_value();
                    // Before the CA is told: it may look at once.
                    publish_everywhere(shared, &domain, &value, false).await?;
                    published.push((domain.clone(), value));
                }
                AcmeChallenge::TlsAlpn01 => {
                    store.show_alpn_challenge(
                        &domain,
                        alpn_certificate(&domain, key_authorization.digest().as_ref())?,
                    );
                    shown.push(domain.clone());
                }
            }
            challenge.set_ready().await?;
        }
        let patience = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(CA_PATIENCE);
        let status = order.poll_ready(&patience).await?;
        if status != OrderStatus::Ready {
            return Err(
                format!("the order is {status:?}: {}", why_invalid(&mut order).await).into(),
            );
        }
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = CertificateParams::new(cert.names.clone()).map_err(|e| e.to_string())?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&patience).await?;
        write_private(&cert.key, key.serialize_pem().as_bytes())?;
        write_private(&cert.cert, chain.as_bytes())?;
        stored_validity(&cert.cert)
            .map(|(_, until)| until)
            .ok_or_else(|| AcmeError::Other("the CA sent a chain that does not parse".into()))
    }
    .await;
    for (domain, value) in published {
        if let Err(e) = publish_everywhere(shared, &domain, &value, true).await {
            tracing::debug!(%domain, error = %e, "withdrawing an ACME challenge failed; it expires by itself");
        }
    }
    for domain in shown {
        store.hide_alpn_challenge(&domain);
    }
    if outcome.is_ok() {
        // Take the new files now rather than at the next poll of the files.
        if let Err(e) = store.reload() {
            tracing::warn!(error = %e, "loading the new ACME certificate failed");
        }
    }
    outcome
}

/// What the CA said about the authorizations that failed.
async fn why_invalid(order: &mut instant_acme::Order) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(problem) = &c.error {
                reasons.push(format!(
                    "{}: {}",
                    authz.identifier(),
                    problem.detail.as_deref().unwrap_or("failed")
                ));
            }
        }
    }
    if reasons.is_empty() {
        "the CA gave no reason".into()
    } else {
        reasons.join("; ")
    }
}

/// The account of `cert`'s directory: from its stored credentials, or made and stored.
async fn account(cert: &AcmeCertificate) -> Result<Account, AcmeError> {
    let builder = || match &cert.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    if let Ok(text) = std::fs::read(&cert.account) {
        if let Ok(credentials) = serde_json::from_slice::<AccountCredentials>(&text) {
            return Ok(builder()?.from_credentials(credentials).await?);
        }
        tracing::warn!(path = %cert.account.display(), "ACME account file unreadable; making a new account");
    }
    let contact: Vec<&str> = cert.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            cert.directory.clone(),
            None,
        )
        .await?;
    let stored = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
    write_private(&cert.account, &stored)?;
    Ok(account)
}

/// Writes beside `path` and renames over it, 0600 from the start: a reader sees the old
/// file or the new one, never half of one, and never a key readable by others.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| AcmeError::Other(format!("writing {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// The RFC 8737 challenge certificate: self-signed for `domain`, with the key
/// authorization's digest in the critical acmeIdentifier extension.
fn alpn_certificate(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let key = KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = CertificateParams::new(vec![domain.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let signing = any_supported_type(&der).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// Publishes (or withdraws) a dns-01 value on every DNS server this node reports to;
/// an error unless every one of them said yes.
async fn publish_everywhere(
    shared: &Shared,
    domain: &str,
    value: &str,
    remove: bool,
) -> Result<(), AcmeError> {
    let state = shared.state.load_full();
    let reports = state
        .config
        .reports
        .as_ref()
        .ok_or_else(|| "dns-01 needs [reports]: the DNS servers to publish on".to_string())?;
    let key = ReportKey::from_file(&reports.key_file).map_err(|e| e.to_string())?;
    let message = ChallengeMessage {
        node: state.config.node.clone(),
        domain: domain.to_string(),
        value: value.to_string(),
        ttl_secs: CHALLENGE_TTL_SECS,
        remove,
        timestamp_ms: unix_ms(),
    };
    let (body, signature) = challenge::seal(&key, &message);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let mut refusals = Vec::new();
    for base in &reports.dns {
        let sent = client
            .post(format!("{base}{CHALLENGE_PATH}"))
            .header(SIGNATURE_HEADER, signature.as_str())
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status().is_success() => {}
            Ok(resp) => {
                let status = resp.status().as_u16();
                let text = resp.text().await.unwrap_or_default();
                refusals.push(format!("{base}: {status} {}", text.trim()));
            }
            Err(e) => refusals.push(format!("{base}: {e}")),
        }
    }
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(AcmeError::Other(format!(
            "not every DNS server serves the challenge for {domain}: {}",
            refusals.join("; ")
        )))
    }
}
