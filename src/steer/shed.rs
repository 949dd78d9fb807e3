//! Gradual shedding, pure: how much of a busy region's clients DNS sends to the next
//! region that has room, and which clients those are.
//!
//! A region's utilisation (its nodes' reported load over their configured capacity) maps
//! to a target share: none below `low_watermark`, all at `high_watermark`, linear between
//! (NS1's Shed Load filter). The share in force moves towards the target by at most
//! `MAX_STEP` per report interval and not at all while the target is within `DEADBAND`
//! of it: the answers change the load they are computed from, one resolver cache's TTL
//! later, and a share that jumped with every report would swing the region between full
//! and empty. Which clients move is decided by a stable hash of the client network: a
//! /24 (or /48) is always on the same side of the share, so it goes one way
//! consistently and resolver caches stay coherent, and a rising share only adds
//! networks to those already moved.

use std::net::IpAddr;

/// The largest change of a region's share per report interval.
pub const MAX_STEP: f64 = 0.05;
/// Targets this close to the share in force do not move it.
pub const DEADBAND: f64 = 0.02;

/// A region's watermarks, as utilisation fractions (`low < high`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watermarks {
    pub low: f64,
    pub high: f64,
}

impl Watermarks {
    /// The share of clients to move at `utilisation`, before smoothing.
    pub fn target(&self, utilisation: f64) -> f64 {
        if !utilisation.is_finite() || utilisation <= self.low {
            return 0.0;
        }
        if utilisation >= self.high {
            return 1.0;
        }
        (utilisation - self.low) / (self.high - self.low)
    }
}

/// The share in force for one region.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Shed {
    pub share: f64,
}

impl Shed {
    /// One report interval: moves the share towards the target for `utilisation`.
    /// Returns the share now in force.
    pub fn step(&mut self, marks: Watermarks, utilisation: f64) -> f64 {
        let target = marks.target(utilisation);
        let gap = target - self.share;
        // Nothing left to shed or all already shed: reach the end exactly.
        let at_end = target == 0.0 || target == 1.0;
        if gap.abs() > DEADBAND || (at_end && gap != 0.0) {
            self.share += gap.clamp(-MAX_STEP, MAX_STEP);
            self.share = self.share.clamp(0.0, 1.0);
        }
        self.share
    }
}

/// Where a client network falls in [0, 1): the same network always falls in the same
/// place. IPv4 by /24, IPv6 by /48 (the widest prefixes resolvers send in ECS).
pub fn position(client: IpAddr) -> f64 {
    let key: u64 = match client {
        IpAddr::V4(v4) => u64::from(u32::from(v4) >> 8),
        IpAddr::V6(v6) => (u128::from(v6) >> 80) as u64 | 1 << 63,
    };
    // SplitMix64's finaliser: neighbouring networks land far apart.
    let mut z = key.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether `client` is among the `share` of a region's clients sent elsewhere.
pub fn moves(client: IpAddr, share: f64) -> bool {
    share > 0.0 && position(client) < share
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARKS: Watermarks = Watermarks {
        low: 0.7,
        high: 0.9,
    };

    #[test]
    fn the_target_is_none_below_low_all_at_high_and_linear_between() {
        assert_eq!(MARKS.target(0.0), 0.0);
        assert_eq!(MARKS.target(0.7), 0.0);
        assert!((MARKS.target(0.8) - 0.5).abs() < 1e-9);
        assert_eq!(MARKS.target(0.9), 1.0);
        assert_eq!(MARKS.target(3.0), 1.0);
        assert_eq!(MARKS.target(f64::NAN), 0.0);
        let mut last = 0.0;
        for i in 0..=100 {
            let t = MARKS.target(f64::from(i) / 100.0);
            assert!(t >= last, "monotone");
            last = t;
        }
    }

    #[test]
    fn the_share_moves_at_most_a_step_per_interval_and_reaches_the_ends() {
        let mut s = Shed::default();
        let mut seen = Vec::new();
        for _ in 0..30 {
            let before = s.share;
            let now = s.step(MARKS, 2.0);
            assert!(now - before <= MAX_STEP + 1e-12);
            seen.push(now);
        }
        assert_eq!(*seen.last().unwrap(), 1.0, "full shedding reached");
        for _ in 0..30 {
            s.step(MARKS, 0.1);
        }
        assert_eq!(s.share, 0.0, "and back to none");
    }

    #[test]
    fn small_wobbles_of_the_load_do_not_move_the_share() {
        let mut s = Shed { share: 0.5 };
        // Targets 0.49..0.51: inside the deadband.
        for u in [0.798, 0.802, 0.799, 0.801] {
            assert_eq!(s.step(MARKS, u), 0.5);
        }
        assert!(s.step(MARKS, 0.83) > 0.5, "a real change moves it");
    }

    #[test]
    fn a_network_stays_on_its_side_and_the_share_is_what_moves() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let same_24: IpAddr = "192.0.2.200".parse().unwrap();
        assert_eq!(position(a), position(same_24));
        // Rising shares only add networks.
        for share in [0.1, 0.3, 0.6] {
            if moves(a, share) {
                assert!(moves(a, share + 0.1));
            }
        }
        assert!(!moves(a, 0.0));
        assert!(moves(a, 1.0));
        // Over many networks the moved fraction is close to the share.
        let moved = (0..10_000u32)
            .filter(|i| moves(IpAddr::from((0x0a00_0000u32 + (i << 8)).to_be_bytes()), 0.3))
            .count();
        assert!((2_800..3_200).contains(&moved), "{moved} of 10000 at 0.3");
        let v6: IpAddr = "2001:db8:1::1".parse().unwrap();
        let v6_same: IpAddr = "2001:db8:1:ffff::9".parse().unwrap();
        assert_eq!(position(v6), position(v6_same));
    }
}
