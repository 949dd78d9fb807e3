//! Failover between regions, pure: the hop mark a forwarding proxy puts on a request and
//! a peer checks, and which peer gets a request this region cannot serve. No I/O; the key,
//! the clock and the peers' health come from outside.
//!
//! The mark is `REGION; t=UNIX_SECONDS; sig=HEX`, the HMAC-SHA256 (the deployment's report
//! key, which every node holds) of the region and time. A peer that verifies it knows the
//! request came from another region's proxy: it never forwards it again (at most one
//! hop, so two regions that are both down cannot bounce a request between them), and it
//! trusts the forwarding headers that proxy wrote. A mark older than [`MAX_SKEW_SECS`] (or
//! as far in the future) is refused, which bounds the replay of one seen on the wire.

use crate::health::report::ReportKey;

/// `[failover]` at run time: the key, this region, and each peer region with the index of
/// its upstream in the state's list, nearest first.
pub struct Peers {
    pub key: ReportKey,
    pub region: String,
    pub peers: Vec<(String, usize)>,
}

/// How far the sender's clock may be from ours, either way.
pub const MAX_SKEW_SECS: u64 = 300;

/// A verified mark: the region whose proxy forwarded the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub from: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopRejection {
    #[error("malformed failover mark")]
    Malformed,
    #[error("failover mark too old or from the future")]
    Stale,
    #[error("failover mark signed with another key")]
    BadSignature,
}

fn signed_text(region: &str, secs: u64) -> String {
    format!("geoedge-failover\n{region}\n{secs}")
}

/// The mark for a request forwarded from `region` at `now_secs`.
pub fn mark(key: &ReportKey, region: &str, now_secs: u64) -> String {
    let sig = key.sign(signed_text(region, now_secs).as_bytes());
    let hex = sig.strip_prefix("sha256=").unwrap_or(&sig);
    format!("{region}; t={now_secs}; sig={hex}")
}

/// Checks a mark as received at `now_secs`.
pub fn verify(key: &ReportKey, value: &[u8], now_secs: u64) -> Result<Hop, HopRejection> {
    let text = std::str::from_utf8(value).map_err(|_| HopRejection::Malformed)?;
    let mut parts = text.split(';').map(str::trim);
    let region = parts.next().filter(|r| is_region_name(r));
    let secs = parts
        .next()
        .and_then(|p| p.strip_prefix("t="))
        .and_then(|t| t.parse::<u64>().ok());
    let sig = parts.next().and_then(|p| p.strip_prefix("sig="));
    let (Some(region), Some(secs), Some(sig), None) = (region, secs, sig, parts.next()) else {
        return Err(HopRejection::Malformed);
    };
    if now_secs.abs_diff(secs) > MAX_SKEW_SECS {
        return Err(HopRejection::Stale);
    }
    key.verify(
        signed_text(region, secs).as_bytes(),
        Some(&format!("sha256={sig}")),
    )
    .map_err(|_| HopRejection::BadSignature)?;
    Ok(Hop {
        from: region.to_string(),
    })
}

fn is_region_name(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 64
        && r.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Why a request this region cannot serve was not forwarded, or where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// To the peer at this index of the configured order.
    To(usize),
    /// It already came from another region: one hop only.
    AlreadyForwarded,
    /// Every peer is down (or there are none).
    NoPeerUp,
}

/// The first healthy peer in the configured order (nearest first), unless the request is
/// itself a hop. `tried` are peers this request already failed to reach.
pub fn choose_peer(healthy: &[bool], tried: &[usize], is_hop: bool) -> Forward {
    if is_hop {
        return Forward::AlreadyForwarded;
    }
    healthy
        .iter()
        .enumerate()
        .find(|&(i, &up)| up && !tried.contains(&i))
        .map(|(i, _)| Forward::To(i))
        .unwrap_or(Forward::NoPeerUp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ReportKey {
        ReportKey::from_secret(b"a shared secret of the deployment")
    }

    #[test]
    fn a_mark_verifies_within_the_skew_and_names_its_region() {
        let m = mark(&key(), "eu", 1_000_000);
        assert!(m.starts_with("eu; t=1000000; sig="), "{m}");
        let hop = verify(&key(), m.as_bytes(), 1_000_100).unwrap();
        assert_eq!(hop.from, "eu");
        assert_eq!(verify(&key(), m.as_bytes(), 999_800).unwrap().from, "eu");
    }

    #[test]
    fn forged_stale_and_malformed_marks_are_refused() {
        let m = mark(&key(), "eu", 1_000_000);
        let other = ReportKey::from_secret(b"somebody else's secret, long enough");
        assert_eq!(
            verify(&other, m.as_bytes(), 1_000_000),
            Err(HopRejection::BadSignature)
        );
        assert_eq!(
            verify(&key(), m.as_bytes(), 1_000_000 + MAX_SKEW_SECS + 1),
            Err(HopRejection::Stale)
        );
        // The region is signed: changing it breaks the signature.
        let renamed = m.replacen("eu", "us", 1);
        assert_eq!(
            verify(&key(), renamed.as_bytes(), 1_000_000),
            Err(HopRejection::BadSignature)
        );
        for bad in [
            "",
            "eu",
            "eu; t=1000000",
            "eu; t=x; sig=00",
            "eu; t=1000000; sig=zz",
            "e u; t=1000000; sig=00",
            "eu; t=1000000; sig=00; extra",
        ] {
            let got = verify(&key(), bad.as_bytes(), 1_000_000);
            assert!(got.is_err(), "{bad:?} gave {got:?}");
        }
        assert_eq!(verify(&key(), b"\xff\xfe", 0), Err(HopRejection::Malformed));
    }

    #[test]
    fn the_nearest_healthy_untried_peer_gets_it_and_a_hop_goes_nowhere() {
        assert_eq!(choose_peer(&[true, true], &[], false), Forward::To(0));
        assert_eq!(choose_peer(&[false, true], &[], false), Forward::To(1));
        assert_eq!(choose_peer(&[true, true], &[0], false), Forward::To(1));
        assert_eq!(choose_peer(&[false, false], &[], false), Forward::NoPeerUp);
        assert_eq!(choose_peer(&[], &[], false), Forward::NoPeerUp);
        assert_eq!(
            choose_peer(&[true, true], &[], true),
            Forward::AlreadyForwarded
        );
    }
}
