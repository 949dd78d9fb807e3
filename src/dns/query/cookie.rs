//! DNS cookies (RFC 7873) with interoperable server cookies (RFC 9018): pure checks and
//! construction, no I/O.
//!
//! A server cookie is version 1, three reserved zero bytes, a 32-bit timestamp and
//! SipHash-2-4 over (client cookie, version, reserved, timestamp, client address) under a
//! 16-byte secret. Every server of a deployment given the same secret makes and accepts
//! the same cookies, so a client may move between them; a second, previous secret is
//! accepted too while a new one is rolled out.

use std::hash::Hasher;
use std::net::IpAddr;

use siphasher::sip::SipHasher24;

/// The EDNS option code of COOKIE.
pub const OPTION_COOKIE: u16 = 10;
const VERSION: u8 = 1;
/// RFC 9018 §4.3: a cookie is good from 5 minutes ahead of our clock to an hour behind it,
/// and a new one is handed out once the one presented is half an hour old.
const MAX_AHEAD_SECS: u32 = 300;
const MAX_AGE_SECS: u32 = 3600;
const REFRESH_AGE_SECS: u32 = 1800;

pub type Secret = [u8; 16];

/// The secrets cookies are made with (`current`) and also accepted with (`previous`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secrets {
    pub current: Secret,
    pub previous: Option<Secret>,
}

/// What a query's COOKIE option says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Not a cookie option RFC 7873 §5.2.2 allows (length not 8 or 16..=40): FORMERR.
    Malformed,
    /// A client cookie alone: the first query, or a client that lost its server cookie.
    ClientOnly { client: [u8; 8] },
    /// A server cookie we made, for this client and address, not expired.
    Valid { client: [u8; 8], refresh: bool },
    /// A server cookie we did not make, made for another address, or expired.
    Invalid { client: [u8; 8] },
}

impl Check {
    pub fn client(&self) -> Option<[u8; 8]> {
        match *self {
            Check::Malformed => None,
            Check::ClientOnly { client }
            | Check::Valid { client, .. }
            | Check::Invalid { client } => Some(client),
        }
    }

    /// The answer may be larger than `max_nocookie_response`.
    pub fn proves_address(&self) -> bool {
        matches!(self, Check::Valid { .. })
    }
}

/// Checks the data of a query's COOKIE option from `ip` at `now` (unix seconds).
pub fn check(data: &[u8], ip: IpAddr, now: u32, secrets: &Secrets) -> Check {
    if data.len() != 8 && !(16..=40).contains(&data.len()) {
        return Check::Malformed;
    }
    let mut client = [0u8; 8];
    client.copy_from_slice(&data[..8]);
    let server = &data[8..];
    if server.is_empty() {
        return Check::ClientOnly { client };
    }
    if server.len() != 16 || server[0] != VERSION || server[1..4] != [0, 0, 0] {
        return Check::Invalid { client };
    }
    let stamp = u32::from_be_bytes([server[4], server[5], server[6], server[7]]);
    // Serial-number arithmetic (RFC 1982), so the check survives the year 2106.
    let age = now.wrapping_sub(stamp);
    let ahead = stamp.wrapping_sub(now);
    let in_window = age <= MAX_AGE_SECS || ahead <= MAX_AHEAD_SECS;
    let ours = std::iter::once(&secrets.current)
        .chain(secrets.previous.as_ref())
        .any(|secret| hash(&client, stamp, ip, secret) == server[8..16]);
    if !(ours && in_window) {
        return Check::Invalid { client };
    }
    Check::Valid {
        client,
        refresh: age <= MAX_AGE_SECS && age > REFRESH_AGE_SECS,
    }
}

/// The COOKIE option data of our answer: the client cookie and a server cookie for it
/// made now with the current secret.
pub fn answer(client: &[u8; 8], ip: IpAddr, now: u32, secret: &Secret) -> [u8; 24] {
    let mut out = [0u8; 24];
    out[..8].copy_from_slice(client);
    out[8] = VERSION;
    out[12..16].copy_from_slice(&now.to_be_bytes());
    out[16..].copy_from_slice(&hash(client, now, ip, secret));
    out
}

fn hash(client: &[u8; 8], stamp: u32, ip: IpAddr, secret: &Secret) -> [u8; 8] {
    let mut h = SipHasher24::new_with_key(secret);
    h.write(client);
    h.write(&[VERSION, 0, 0, 0]);
    h.write(&stamp.to_be_bytes());
    match ip {
        IpAddr::V4(v4) => h.write(&v4.octets()),
        IpAddr::V6(v6) => h.write(&v6.octets()),
    }
    h.finish().to_be_bytes()
}

/// Reads a secrets file: one or two lines of 32 hex digits, the current secret first and
/// then the previous one (accepted, never used to make cookies).
pub fn parse_secrets(text: &str) -> Result<Secrets, String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let mut next = |which: &str| -> Result<Option<Secret>, String> {
        let Some(line) = lines.next() else {
            return Ok(None);
        };
        if line.len() != 32 || !line.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the {which} secret must be 32 hex digits (16 bytes), e.g. from `head -c 16 /dev/urandom | xxd -p`"
            ));
        }
        let mut secret = [0u8; 16];
        for (i, byte) in secret.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&line[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Some(secret))
    };
    let current = next("current")?.ok_or("no secret in the file")?;
    let previous = next("previous")?;
    if lines.next().is_some() {
        return Err("at most two secrets: the current one, then the previous one".into());
    }
    Ok(Secrets { current, previous })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 53));
    const NOW: u32 = 1_800_000_000;

    fn secrets() -> Secrets {
        Secrets {
            current: [7; 16],
            previous: None,
        }
    }

    #[test]
    fn a_cookie_we_made_is_valid_for_its_client_and_address_only() {
        let s = secrets();
        let client = [1, 2, 3, 4, 5, 6, 7, 8];
        let data = answer(&client, IP, NOW, &s.current);
        assert_eq!(
            check(&data, IP, NOW + 10, &s),
            Check::Valid {
                client,
                refresh: false
            }
        );
        let other_ip: IpAddr = "192.0.2.54".parse().unwrap();
        assert_eq!(check(&data, other_ip, NOW, &s), Check::Invalid { client });
        let mut forged = data;
        forged[23] ^= 1;
        assert_eq!(check(&forged, IP, NOW, &s), Check::Invalid { client });
        let mut other_client = data;
        other_client[0] ^= 1;
        assert!(matches!(
            check(&other_client, IP, NOW, &s),
            Check::Invalid { .. }
        ));
    }

    #[test]
    fn cookies_age_out_and_are_refreshed_after_half_an_hour() {
        let s = secrets();
        let client = [9; 8];
        let data = answer(&client, IP, NOW, &s.current);
        assert_eq!(
            check(&data, IP, NOW + 1801, &s),
            Check::Valid {
                client,
                refresh: true
            }
        );
        assert_eq!(check(&data, IP, NOW + 3601, &s), Check::Invalid { client });
        // From a clock up to five minutes ahead of ours.
        assert!(check(&data, IP, NOW - 300, &s).proves_address());
        assert!(!check(&data, IP, NOW - 301, &s).proves_address());
    }

    #[test]
    fn the_previous_secret_is_accepted_while_a_new_one_rolls_out() {
        let old = secrets();
        let client = [3; 8];
        let data = answer(&client, IP, NOW, &old.current);
        let rolled = Secrets {
            current: [8; 16],
            previous: Some(old.current),
        };
        assert!(check(&data, IP, NOW, &rolled).proves_address());
        let gone = Secrets {
            current: [8; 16],
            previous: None,
        };
        assert!(!check(&data, IP, NOW, &gone).proves_address());
    }

    #[test]
    fn option_lengths_follow_rfc_7873() {
        let s = secrets();
        assert_eq!(
            check(&[1; 8], IP, NOW, &s),
            Check::ClientOnly { client: [1; 8] }
        );
        for len in [0, 1, 7, 9, 15, 41, 64] {
            assert_eq!(check(&vec![1; len], IP, NOW, &s), Check::Malformed, "{len}");
        }
        // A well-formed server cookie that is not one of ours (another length/version).
        for len in [16, 24, 40] {
            assert!(matches!(
                check(&vec![1; len], IP, NOW, &s),
                Check::Invalid { .. }
            ));
        }
    }

    #[test]
    fn the_server_cookie_has_the_rfc_9018_layout() {
        let data = answer(&[0xAA; 8], IP, 0x0102_0304, &[0; 16]);
        assert_eq!(data[8..16], [1, 0, 0, 0, 1, 2, 3, 4]);
    }

    #[test]
    fn secrets_files_are_one_or_two_hex_lines() {
        let one = parse_secrets("00112233445566778899aabbccddeeff\n").unwrap();
        assert_eq!(one.current[0], 0x00);
        assert_eq!(one.current[15], 0xff);
        assert!(one.previous.is_none());
        let two = parse_secrets(
            "# rotated 2026-12-01\nffffffffffffffffffffffffffffffff\n00000000000000000000000000000000\n",
        )
        .unwrap();
        assert_eq!(two.previous, Some([0; 16]));
        assert!(parse_secrets("").is_err());
        assert!(parse_secrets("abc\n").is_err());
        assert!(parse_secrets(&"00112233445566778899aabbccddeeff\n".repeat(3)).is_err());
    }
}
