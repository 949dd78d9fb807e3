//! `[edns]` of the DNS config: what the server says about itself in EDNS options (NSID)
//! and how it answers DNS cookies.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::{ConfigError, Source};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEdns {
    nsid: Option<Spanned<String>>,
    cookie_secret_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    max_nocookie_response: u16,
}

#[derive(Debug, Clone, Default)]
pub struct EdnsConfig {
    /// The NSID (RFC 5001) sent to queries that ask for it; none when unset.
    pub nsid: Option<Vec<u8>>,
    /// Secrets for server cookies shared by every server of the deployment; a random
    /// secret of this process's own when unset.
    pub cookie_secret_file: Option<PathBuf>,
    /// UDP answers to a client without a valid server cookie are truncated above this
    /// many bytes (0: no limit): the most a spoofed source can be sent.
    pub max_nocookie_response: u16,
}

pub(super) fn validate(src: &Source, raw: RawEdns) -> Result<EdnsConfig, ConfigError> {
    let nsid = match raw.nsid {
        None => None,
        Some(n) => {
            let text = n.get_ref();
            // RFC 5001 allows any bytes; `hex:` spells those that are not text.
            let bytes = match text.strip_prefix("hex:") {
                Some(hex) => decode_hex(hex).ok_or_else(|| {
                    src.error(
                        "edns.nsid",
                        Some(n.span()),
                        "`hex:` needs pairs of hex digits",
                    )
                })?,
                None => text.as_bytes().to_vec(),
            };
            if bytes.is_empty() || bytes.len() > 128 {
                return Err(src.error("edns.nsid", Some(n.span()), "must be 1 to 128 bytes"));
            }
            Some(bytes)
        }
    };
    let cookie_secret_file = match &raw.cookie_secret_file {
        None => None,
        Some(p) => Some(src.existing_file("edns.cookie_secret_file", p)?),
    };
    if raw.max_nocookie_response != 0 && raw.max_nocookie_response < 512 {
        return Err(src.error(
            "edns.max_nocookie_response",
            None,
            "0 (no limit) or at least 512: smaller answers than that are not worth truncating",
        ));
    }
    Ok(EdnsConfig {
        nsid,
        cookie_secret_file,
        max_nocookie_response: raw.max_nocookie_response,
    })
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
