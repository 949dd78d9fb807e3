//! Choosing an origin, pure: given each origin's in-flight count, weight and health, which
//! one gets the next request. No I/O; the random source and counters come from outside.

use crate::config::proxy::Balance;

/// What the balancer knows of one origin at the moment of choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub in_flight: usize,
    pub weight: u32,
    /// Healthy and not excluded (e.g. the origin a retry is moving away from).
    pub eligible: bool,
}

/// A smooth weighted round-robin schedule (the interleaving nginx uses): for weights
/// 5, 1, 1 it yields a a b a c a a rather than a a a a a b c. Computed once per config, so
/// the request path only indexes it.
pub fn weighted_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

/// Picks an origin. `turn` is a per-upstream counter (incremented by the caller for every
/// pick), `random` a fresh random number; `schedule` is the weighted schedule.
pub fn pick(
    balance: Balance,
    candidates: &[Candidate],
    schedule: &[usize],
    turn: usize,
    random: u64,
) -> Option<usize> {
    if candidates.is_empty() {
        return None;
    }
    match balance {
        Balance::LeastConn => least_conn(candidates, random),
        Balance::RoundRobin => {
            let n = candidates.len();
            (0..n)
                .map(|k| (turn + k) % n)
                .find(|&i| candidates[i].eligible)
        }
        Balance::WeightedRoundRobin => {
            if schedule.is_empty() {
                return None;
            }
            let n = schedule.len();
            (0..n)
                .map(|k| schedule[(turn + k) % n])
                .find(|&i| candidates.get(i).is_some_and(|c| c.eligible))
        }
    }
}

/// Fewest in-flight requests relative to weight ((in_flight + 1) / weight, as HAProxy
/// does, so a weight-2 origin takes twice the concurrency). Ties are broken at random by
/// reservoir sampling, so equal origins share load evenly instead of the first one taking
/// every request on an idle proxy.
fn least_conn(candidates: &[Candidate], random: u64) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut ties = 0u64;
    let mut rng = random | 1;
    for (i, c) in candidates.iter().enumerate() {
        if !c.eligible {
            continue;
        }
        let ordering = match best {
            None => std::cmp::Ordering::Less,
            Some(b) => load(c).cmp(&load(&candidates[b])),
        };
        match ordering {
            std::cmp::Ordering::Less => {
                best = Some(i);
                ties = 1;
            }
            std::cmp::Ordering::Equal => {
                ties += 1;
                rng = xorshift(rng);
                if rng.is_multiple_of(ties) {
                    best = Some(i);
                }
            }
            std::cmp::Ordering::Greater => {}
        }
    }
    best
}

/// Load as a fraction compared exactly: (in_flight + 1) / weight, scaled to a common
/// denominator large enough for weights up to 1000.
fn load(c: &Candidate) -> u128 {
    let weight = u128::from(c.weight.max(1));
    (c.in_flight as u128 + 1) * 1_000_000_000 / weight
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// A sticky-session cookie value for an origin: a short hash of its name, so the cookie
/// does not reveal the origin's name or address.
pub fn sticky_value(origin_name: &str) -> String {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in origin_name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(in_flight: usize, weight: u32, eligible: bool) -> Candidate {
        Candidate {
            in_flight,
            weight,
            eligible,
        }
    }

    #[test]
    fn least_conn_prefers_the_least_busy() {
        let cands = [c(5, 1, true), c(1, 1, true), c(3, 1, true)];
        for r in 0..50 {
            assert_eq!(pick(Balance::LeastConn, &cands, &[], 0, r), Some(1));
        }
    }

    #[test]
    fn least_conn_skips_ineligible_and_respects_weight() {
        let cands = [c(0, 1, false), c(4, 1, true), c(6, 3, true)];
        // (4+1)/1 = 5 vs (6+1)/3 = 2.33: the heavier origin wins.
        assert_eq!(pick(Balance::LeastConn, &cands, &[], 0, 7), Some(2));
    }

    #[test]
    fn least_conn_ties_spread_over_all_tied_origins() {
        let cands = [c(0, 1, true), c(0, 1, true), c(0, 1, true)];
        let mut counts = [0; 3];
        let mut r = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..3000 {
            r = xorshift(r);
            counts[pick(Balance::LeastConn, &cands, &[], 0, r).unwrap()] += 1;
        }
        for n in counts {
            assert!(n > 700, "{counts:?}");
        }
    }

    #[test]
    fn round_robin_cycles_and_skips_down_origins() {
        let cands = [c(0, 1, true), c(0, 1, false), c(0, 1, true)];
        let picks: Vec<_> = (0..4)
            .map(|t| pick(Balance::RoundRobin, &cands, &[], t, 0).unwrap())
            .collect();
        assert_eq!(picks, vec![0, 2, 2, 0]);
    }

    #[test]
    fn weighted_schedule_is_smooth_and_proportional() {
        let s = weighted_schedule(&[5, 1, 1]);
        assert_eq!(s, vec![0, 0, 1, 0, 2, 0, 0]);
        let s = weighted_schedule(&[3, 1]);
        assert_eq!(s.iter().filter(|&&i| i == 0).count(), 3);
    }

    #[test]
    fn weighted_round_robin_follows_the_schedule() {
        let cands = [c(0, 3, true), c(0, 1, true)];
        let schedule = weighted_schedule(&[3, 1]);
        let picks: Vec<_> = (0..8)
            .map(|t| pick(Balance::WeightedRoundRobin, &cands, &schedule, t, 0).unwrap())
            .collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 6);
        assert_eq!(picks.iter().filter(|&&i| i == 1).count(), 2);
    }

    #[test]
    fn nothing_eligible_means_no_pick() {
        let cands = [c(0, 1, false), c(0, 1, false)];
        for b in [
            Balance::LeastConn,
            Balance::RoundRobin,
            Balance::WeightedRoundRobin,
        ] {
            assert_eq!(
                pick(b, &cands, &weighted_schedule(&[1, 1]), 0, 1),
                None,
                "{b:?}"
            );
        }
    }

    #[test]
    fn sticky_values_are_stable_and_distinct() {
        assert_eq!(sticky_value("eu-web-1"), sticky_value("eu-web-1"));
        assert_ne!(sticky_value("eu-web-1"), sticky_value("eu-web-2"));
        assert_eq!(sticky_value("x").len(), 16);
    }
}
