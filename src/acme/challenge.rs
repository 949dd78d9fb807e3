//! The message that publishes (or withdraws) one dns-01 challenge, signed with the
//! report key like a health report, and stamped so a copy cannot be replayed later.

use serde::{Deserialize, Serialize};

use crate::health::report::{Rejection, ReportKey};

pub const CHALLENGE_PATH: &str = "/acme/challenge";
pub const MAX_CHALLENGE_BYTES: usize = 4 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeMessage {
    /// The node that asks, for the log.
    pub node: String,
    /// The domain being validated (`www.example.test`); the record is
    /// `_acme-challenge.` in front of it.
    pub domain: String,
    /// The TXT value: base64url(SHA-256(key authorization)).
    pub value: String,
    /// How long the DNS server keeps the record if it is not withdrawn.
    pub ttl_secs: u32,
    /// Withdraw this value instead of publishing it.
    #[serde(default)]
    pub remove: bool,
    pub timestamp_ms: u64,
}

/// The body and its signature header value.
pub fn seal(key: &ReportKey, message: &ChallengeMessage) -> (Vec<u8>, String) {
    let body = serde_json::to_vec(message).unwrap_or_default();
    let signature = key.sign(&body);
    (body, signature)
}

/// Verifies, then parses: nothing unauthenticated is parsed. A message stamped further
/// than `max_skew_ms` from now is stale (a replayed copy, or a clock gone wrong).
pub fn open(
    key: &ReportKey,
    body: &[u8],
    signature: Option<&str>,
    now_unix_ms: u64,
    max_skew_ms: u64,
) -> Result<ChallengeMessage, Rejection> {
    key.verify(body, signature)?;
    let message: ChallengeMessage =
        serde_json::from_slice(body).map_err(|_| Rejection::Malformed)?;
    if now_unix_ms.abs_diff(message.timestamp_ms) > max_skew_ms {
        return Err(Rejection::Stale);
    }
    let value_ok = !message.value.is_empty()
        && message.value.len() <= 128
        && message
            .value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !value_ok || message.domain.is_empty() || message.domain.len() > 253 {
        return Err(Rejection::Malformed);
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(ts: u64) -> ChallengeMessage {
        ChallengeMessage {
            node: "eu-1".into(),
            domain: "www.example.test".into(),
            value: "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0".into(),
            ttl_secs: 300,
            remove: false,
            timestamp_ms: ts,
        }
    }

    #[test]
    fn a_sealed_message_opens_and_nothing_else_does() {
        let key = ReportKey::from_secret(b"0123456789abcdef0123");
        let (body, sig) = seal(&key, &message(1_000));
        assert_eq!(
            open(&key, &body, Some(&sig), 1_500, 5_000),
            Ok(message(1_000))
        );
        let other = ReportKey::from_secret(b"another key of 16+ bytes");
        let (_, forged) = seal(&other, &message(1_000));
        assert_eq!(
            open(&key, &body, Some(&forged), 1_500, 5_000),
            Err(Rejection::BadSignature)
        );
        assert_eq!(
            open(&key, &body, None, 1_500, 5_000),
            Err(Rejection::Unsigned)
        );
        assert_eq!(
            open(&key, &body, Some(&sig), 60_000, 5_000),
            Err(Rejection::Stale)
        );
        let mut bad = message(1_000);
        bad.value = "has spaces; and \"quotes\"".into();
        let (body, sig) = seal(&key, &bad);
        assert_eq!(
            open(&key, &body, Some(&sig), 1_000, 5_000),
            Err(Rejection::Malformed)
        );
        let junk = b"{not json";
        assert_eq!(
            open(&key, junk, Some(&key.sign(junk)), 1_000, 5_000),
            Err(Rejection::Malformed)
        );
    }
}
