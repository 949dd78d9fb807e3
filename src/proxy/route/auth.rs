//! HTTP Basic authentication (RFC 7617) against a users file of password hashes:
//! `name:$argon2id$...` (geoedge hash-password) or `name:$2y$...` (bcrypt, as from
//! `htpasswd -B`). Never plaintext. An unknown user costs the same hash verification as a
//! known one, so response time does not tell which names exist. Verified credentials are
//! remembered for a few minutes by a digest of the header, so a busy client does not pay a
//! deliberately slow hash on every request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64_engine::decode_base64;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("{path}:{line}: {message}")]
    Line {
        path: String,
        line: usize,
        message: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Clone)]
enum Hash {
    Argon2(String),
    Bcrypt(String),
}

pub struct Users {
    users: HashMap<String, Hash>,
    /// Verified against for unknown users, so they take as long as known ones.
    dummy: Hash,
    verified: moka::sync::Cache<[u8; 32], Arc<str>>,
}

/// Why a request was not let in (all answered 401 with the realm).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Malformed,
    BadCredentials,
}

impl Users {
    pub fn load(path: &Path) -> Result<Self, UsersError> {
        let text = std::fs::read_to_string(path).map_err(|source| UsersError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    pub fn parse(file: &str, text: &str) -> Result<Self, UsersError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: &str| UsersError::Line {
                path: file.to_string(),
                line: i + 1,
                message: message.to_string(),
            };
            let (name, hash) = line
                .split_once(':')
                .ok_or_else(|| err("expected name:hash"))?;
            let hash = if hash.starts_with("$argon2") {
                PasswordHash::new(hash).map_err(|_| err("not a valid argon2 hash"))?;
                Hash::Argon2(hash.to_string())
            } else if hash.starts_with("$2a$")
                || hash.starts_with("$2b$")
                || hash.starts_with("$2y$")
            {
                Hash::Bcrypt(hash.to_string())
            } else {
                return Err(err("the password must be an argon2 or bcrypt hash (geoedge hash-password), never plaintext"));
            };
            if name.is_empty() || users.insert(name.to_string(), hash).is_some() {
                return Err(err("empty or repeated user name"));
            }
        }
        Ok(Self {
            users,
            dummy: Hash::Argon2(hash_password("not a real password").unwrap_or_default()),
            verified: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(300))
                .build(),
        })
    }

    /// Checks an Authorization header; returns the user name.
    pub fn check(&self, authorization: Option<&str>) -> Result<Arc<str>, Denied> {
        let header = authorization.ok_or(Denied::Missing)?;
        let digest: [u8; 32] = Sha256::digest(header.as_bytes()).into();
        if let Some(user) = self.verified.get(&digest) {
            return Ok(user);
        }
        let (scheme, token) = header.trim().split_once(' ').ok_or(Denied::Malformed)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(Denied::Malformed);
        }
        let decoded = decode_base64(token.trim()).ok_or(Denied::Malformed)?;
        let decoded = String::from_utf8(decoded).map_err(|_| Denied::Malformed)?;
        let (name, password) = decoded.split_once(':').ok_or(Denied::Malformed)?;
        let (hash, known) = match self.users.get(name) {
            Some(h) => (h, true),
            None => (&self.dummy, false),
        };
        let ok = verify(hash, password) && known;
        if !ok {
            return Err(Denied::BadCredentials);
        }
        let user: Arc<str> = Arc::from(name);
        self.verified.insert(digest, user.clone());
        Ok(user)
    }
}

fn verify(hash: &Hash, password: &str) -> bool {
    match hash {
        Hash::Argon2(h) => PasswordHash::new(h)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false),
        Hash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
    }
}

/// An argon2id hash in PHC format, for the users file.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt_bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt_bytes)
        .map_err(|_| "no system randomness".to_string())?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// `WWW-Authenticate` for a realm.
pub fn challenge(realm: &str) -> String {
    format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")
}

mod base64_engine {
    /// Standard base64 (RFC 4648 §4) with padding, as Basic credentials use.
    pub fn decode_base64(s: &str) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(s.len() * 3 / 4);
        let mut buf = 0u32;
        let mut bits = 0;
        let s = s.trim_end_matches('=');
        for c in s.bytes() {
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ => return None,
            };
            buf = (buf << 6) | u32::from(v);
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((buf >> bits) as u8);
                buf &= (1 << bits) - 1;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, pass: &str) -> String {
        let raw = format!("{user}:{pass}");
        // Minimal encoder for the test only.
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let b = raw.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = (u32::from(chunk[0]) << 16)
                | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
                | u32::from(*chunk.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        format!("Basic {out}")
    }

    fn users() -> Users {
        let alice = hash_password("wonderland").unwrap();
        let bob = bcrypt::hash("builder", 4).unwrap();
        Users::parse("users", &format!("# staff\nalice:{alice}\nbob:{bob}\n")).unwrap()
    }

    #[test]
    fn right_users_pass_with_argon2_and_bcrypt() {
        let u = users();
        assert_eq!(
            u.check(Some(&basic("alice", "wonderland"))).as_deref(),
            Ok("alice")
        );
        assert_eq!(
            u.check(Some(&basic("bob", "builder"))).as_deref(),
            Ok("bob")
        );
        // Cached now, still right.
        assert_eq!(
            u.check(Some(&basic("alice", "wonderland"))).as_deref(),
            Ok("alice")
        );
    }

    #[test]
    fn wrong_unknown_and_malformed_are_denied() {
        let u = users();
        assert_eq!(
            u.check(Some(&basic("alice", "looking-glass"))),
            Err(Denied::BadCredentials)
        );
        assert_eq!(
            u.check(Some(&basic("mallory", "wonderland"))),
            Err(Denied::BadCredentials)
        );
        assert_eq!(u.check(None), Err(Denied::Missing));
        assert_eq!(u.check(Some("Basic !!!")), Err(Denied::Malformed));
        assert_eq!(u.check(Some("Bearer abc")), Err(Denied::Malformed));
        assert_eq!(u.check(Some("Basic")), Err(Denied::Malformed));
        assert_eq!(
            u.check(Some(&format!("Basic {}", "bm9jb2xvbg=="))),
            Err(Denied::Malformed),
            "no colon"
        );
    }

    #[test]
    fn plaintext_passwords_are_refused_in_the_file() {
        let err = Users::parse("users", "carol:secret\n").err().unwrap();
        assert!(err.to_string().contains("users:1"), "{err}");
        assert!(err.to_string().contains("never plaintext"), "{err}");
    }

    #[test]
    fn base64_decoding() {
        assert_eq!(
            decode_base64("YWxpY2U6d29uZGVybGFuZA==").unwrap(),
            b"alice:wonderland"
        );
        assert_eq!(decode_base64("YQ").unwrap(), b"a");
        assert!(decode_base64("a*b").is_none());
    }
}
