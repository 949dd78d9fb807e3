//! Gradual shedding, pure: how much of a busy region's clients DNS sends to the next
//! region that has room, and which clients those are.
//!
//! The law (NS1's Shed Load filter): a region's utilisation (its nodes' reported load over
//! their configured capacity) maps to a share of its clients to move: none at or below
//! `low_watermark`, all at `high_watermark`, linear between.
//!
//! The law is applied to a loop: the answers change the load they are computed from, a
//! resolver cache's TTL later. Fed the utilisation it has itself lowered, the law chases
//! its own tail (shed, the load falls, take back, the load rises) and, with a TTL's delay
//! in the loop, swings for ever. So the share is steered to the law's **rest point**
//! instead: from the load measured under the share that was in force when it was
//! measured (the mean of the shares over the last TTL, as resolvers' caches mix them), the
//! region's demand unshed is known, and the one share where shedding that much leaves the
//! region at the utilisation the law assigns to that share is computed. The demand does
//! not depend on the share, so this target does not chase itself. The utilisation is
//! smoothed over [`SMOOTHING_SECS`] (reports are noisy), and the share moves towards the
//! target by at most [`MAX_STEP`] per step and not at all while the target is within
//! [`DEADBAND`] of it.
//!
//! Which clients move is decided by a stable hash of the client network: a /24 (or /48)
//! is always on the same side of the share, so it goes one way consistently and resolver
//! caches stay coherent, and a rising share only adds networks to those already moved.

use std::collections::VecDeque;
use std::net::IpAddr;

/// The largest change of a region's share per step.
pub const MAX_STEP: f64 = 0.05;
/// Targets this close to the share in force do not move it.
pub const DEADBAND: f64 = 0.02;
/// The time constant of the utilisation's smoothing.
pub const SMOOTHING_SECS: f64 = 1.0;
/// At or above this share the demand cannot be told from the little load left: the law
/// is applied to the utilisation as measured.
const DEMAND_UNKNOWN_ABOVE: f64 = 0.95;
/// The most steps of shares remembered (a TTL of 10 minutes at 4 steps a second).
const MAX_HISTORY: usize = 2_400;

/// A region's watermarks, as utilisation fractions (`low < high`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watermarks {
    pub low: f64,
    pub high: f64,
}

impl Watermarks {
    /// The law: the share of clients to move at `utilisation`.
    pub fn target(&self, utilisation: f64) -> f64 {
        if !utilisation.is_finite() || utilisation <= self.low {
            return 0.0;
        }
        if utilisation >= self.high {
            return 1.0;
        }
        (utilisation - self.low) / (self.high - self.low)
    }

    /// The law's rest point for a region whose unshed utilisation is `demand`: the share
    /// s with s = target(demand × (1 − s)).
    pub fn rest_point(&self, demand: f64) -> f64 {
        if !demand.is_finite() || demand <= self.low {
            return 0.0;
        }
        // Between the watermarks s = (d(1 − s) − low) / (high − low), solved for s; it
        // always leaves d(1 − s) between them.
        ((demand - self.low) / (self.high - self.low + demand)).clamp(0.0, 1.0)
    }
}

/// How the loop around one region behaves: the step length and how long clients keep an
/// answer (the steered names' longest TTL, plus the reports' own lag).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoopTiming {
    pub step_secs: f64,
    pub delay_secs: f64,
}

/// The shedding state of one region.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Shed {
    /// The share in force.
    pub share: f64,
    /// The utilisation, smoothed; None until the first figure.
    smoothed: Option<f64>,
    /// The shares in force over the last loop delay, newest last.
    history: VecDeque<f64>,
}

/// What one step saw and decided, for `/status` and `geoedge geo lookup`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepView {
    pub smoothed: f64,
    /// The share the measured load was under (the mean over the loop delay).
    pub effective: f64,
    /// The region's utilisation unshed, if it can be told.
    pub demand: Option<f64>,
    pub target: f64,
}

impl Shed {
    /// One step: folds in the latest `utilisation` and moves the share towards the rest
    /// point. Returns the share now in force.
    pub fn step(&mut self, marks: Watermarks, utilisation: f64, timing: LoopTiming) -> f64 {
        self.advance(marks, utilisation, timing).0
    }

    /// As `step`, with what it saw.
    pub fn advance(
        &mut self,
        marks: Watermarks,
        utilisation: f64,
        timing: LoopTiming,
    ) -> (f64, StepView) {
        let utilisation = if utilisation.is_finite() {
            utilisation.max(0.0)
        } else {
            0.0
        };
        let keep = (-timing.step_secs / SMOOTHING_SECS).exp();
        let smoothed = match self.smoothed {
            Some(old) => old * keep + utilisation * (1.0 - keep),
            None => utilisation,
        };
        self.smoothed = Some(smoothed);
        let effective = if self.history.is_empty() {
            self.share
        } else {
            self.history.iter().sum::<f64>() / self.history.len() as f64
        };
        let demand = (effective < DEMAND_UNKNOWN_ABOVE).then(|| smoothed / (1.0 - effective));
        let target = match demand {
            Some(d) => marks.rest_point(d),
            None => marks.target(smoothed),
        };
        let gap = target - self.share;
        // Nothing left to shed or all already shed: reach the end exactly.
        let at_end = target == 0.0 || target == 1.0;
        if gap.abs() > DEADBAND || (at_end && gap != 0.0) {
            self.share = (self.share + gap.clamp(-MAX_STEP, MAX_STEP)).clamp(0.0, 1.0);
        }
        let steps = ((timing.delay_secs / timing.step_secs.max(1e-3)).ceil() as usize)
            .clamp(1, MAX_HISTORY);
        self.history.push_back(self.share);
        while self.history.len() > steps {
            self.history.pop_front();
        }
        (
            self.share,
            StepView {
                smoothed,
                effective,
                demand,
                target,
            },
        )
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
    fn the_law_is_none_below_low_all_at_high_and_linear_between() {
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

    const TIMING: LoopTiming = LoopTiming {
        step_secs: 0.25,
        delay_secs: 1.5,
    };

    #[test]
    fn the_rest_point_is_where_the_law_and_the_load_meet() {
        let m = Watermarks {
            low: 0.5,
            high: 0.9,
        };
        assert_eq!(m.rest_point(0.4), 0.0);
        assert_eq!(m.rest_point(0.5), 0.0);
        for demand in [0.6, 0.9, 1.4, 2.0, 5.0, 50.0] {
            let s = m.rest_point(demand);
            let u = demand * (1.0 - s);
            assert!(
                (m.target(u) - s).abs() < 1e-9,
                "demand {demand}: s {s}, u {u}"
            );
            assert!(u < m.high, "a region at rest is under its high watermark");
        }
        assert!((m.rest_point(2.0) - 0.625).abs() < 1e-9);
        // Monotone in the demand.
        let mut last = 0.0;
        for i in 0..200 {
            let s = m.rest_point(f64::from(i) / 40.0);
            assert!(s >= last);
            last = s;
        }
    }

    #[test]
    fn the_share_moves_at_most_a_step_per_interval_and_reaches_the_ends() {
        let mut s = Shed::default();
        let mut seen = Vec::new();
        for _ in 0..60 {
            let before = s.share;
            // Open loop: the load does not answer the shedding, as if every other region
            // were full. The demand seems ever larger: everything goes.
            let now = s.step(MARKS, 2.0, TIMING);
            assert!(now - before <= MAX_STEP + 1e-12);
            seen.push(now);
        }
        assert_eq!(*seen.last().unwrap(), 1.0, "full shedding reached");
        for _ in 0..60 {
            s.step(MARKS, 0.1, TIMING);
        }
        assert_eq!(s.share, 0.0, "and back to none");
    }

    #[test]
    fn small_wobbles_of_the_load_do_not_move_the_share() {
        let m = Watermarks {
            low: 0.5,
            high: 0.9,
        };
        let mut s = Shed::default();
        // Settle at demand 2.0 with the loop closed (load = demand × (1 − effective)).
        let mut load = 2.0;
        for _ in 0..200 {
            let share = s.step(m, load, TIMING);
            load = 2.0 * (1.0 - share);
        }
        let rest = s.share;
        assert!((rest - 0.625).abs() < 0.05, "{rest}");
        // ±3 % noise on the load: the share stays put.
        for (i, wobble) in [1.03, 0.97, 1.02, 0.98, 1.03, 0.97]
            .iter()
            .cycle()
            .take(40)
            .enumerate()
        {
            let share = s.step(m, 2.0 * (1.0 - s.share) * wobble, TIMING);
            assert!(
                (share - rest).abs() <= DEADBAND + MAX_STEP,
                "step {i}: {share} vs {rest}"
            );
        }
    }

    /// A closed loop with the delay of a resolver cache: clients follow the share in force
    /// `delay` steps ago (the mean over that window). The share settles without swinging
    /// and the region ends under its high watermark, from mild to heavy overloads.
    #[test]
    fn a_delayed_closed_loop_settles_at_the_rest_point_without_oscillating() {
        let m = Watermarks {
            low: 0.5,
            high: 0.9,
        };
        for demand in [1.0, 2.0, 4.0] {
            for delay_steps in [2usize, 6, 40] {
                let timing = LoopTiming {
                    step_secs: 0.25,
                    delay_secs: delay_steps as f64 * 0.25,
                };
                let mut s = Shed::default();
                let mut applied: VecDeque<f64> = VecDeque::from(vec![0.0; delay_steps]);
                let mut shares = Vec::new();
                for _ in 0..(60 + 20 * delay_steps) {
                    let effective = applied.iter().sum::<f64>() / applied.len() as f64;
                    let share = s.step(m, demand * (1.0 - effective), timing);
                    applied.push_back(share);
                    applied.pop_front();
                    shares.push(share);
                }
                let tail = &shares[shares.len() - 40..];
                let swing = tail.iter().cloned().fold(f64::MIN, f64::max)
                    - tail.iter().cloned().fold(f64::MAX, f64::min);
                let rest = m.rest_point(demand);
                assert!(
                    swing <= 0.05,
                    "demand {demand}, delay {delay_steps}: swing {swing}"
                );
                assert!(
                    (tail[39] - rest).abs() <= 0.05,
                    "demand {demand}, delay {delay_steps}: {} vs rest {rest}",
                    tail[39]
                );
                assert!(demand * (1.0 - tail[39]) < m.high + 0.05);
            }
        }
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
