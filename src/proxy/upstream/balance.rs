//! Choosing an origin, pure: given each origin's in-flight count, weight, health and
//! measured load, which one gets the next request. No I/O; the random source, counters and
//! measurements (`meter`) come from outside.

use crate::config::proxy::Balance;

/// What the balancer knows of one origin at the moment of choosing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub in_flight: usize,
    pub weight: u32,
    /// Healthy and not excluded (e.g. the origin a retry is moving away from).
    pub eligible: bool,
    /// Bytes moved recently (decayed), filled in for `least_traffic` only.
    pub traffic: u64,
    /// Latency EWMA in microseconds, filled in for `peak_ewma` only.
    pub latency_us: u64,
}

impl Candidate {
    pub const NONE: Candidate = Candidate {
        in_flight: 0,
        weight: 1,
        eligible: false,
        traffic: 0,
        latency_us: 0,
    };
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
        Balance::LeastConn => least_by(candidates, random, |c| (load(c), 0)),
        // In-flight breaks ties of traffic, so a burst on an idle proxy still spreads.
        Balance::LeastTraffic => {
            least_by(candidates, random, |c| (per_weight(c.traffic, c), load(c)))
        }
        Balance::PeakEwma => two_choices(candidates, random),
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

/// The eligible candidate with the least `key`: for `least_conn` in-flight requests
/// relative to weight ((in_flight + 1) / weight, as HAProxy does, so a weight-2 origin
/// takes twice the concurrency). Ties are broken at random by reservoir sampling, so equal
/// origins share load evenly instead of the first one taking every request on an idle
/// proxy.
fn least_by<K: Ord>(
    candidates: &[Candidate],
    random: u64,
    key: impl Fn(&Candidate) -> K,
) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut ties = 0u64;
    let mut rng = random | 1;
    for (i, c) in candidates.iter().enumerate() {
        if !c.eligible {
            continue;
        }
        let ordering = match best {
            None => std::cmp::Ordering::Less,
            Some(b) => key(c).cmp(&key(&candidates[b])),
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
    per_weight(c.in_flight as u64 + 1, c)
}

fn per_weight(amount: u64, c: &Candidate) -> u128 {
    u128::from(amount) * 1_000_000_000 / u128::from(c.weight.max(1))
}

/// Power of two choices (Mitzenmacher): two distinct eligible origins at random, the one
/// with the lower cost wins, cost = latency × (in-flight + 1) / weight. Two rather than
/// all: the best origin by a stale measure is not stampeded by every request at once.
fn two_choices(candidates: &[Candidate], random: u64) -> Option<usize> {
    let eligible = candidates.iter().filter(|c| c.eligible).count();
    let nth = |n: usize| {
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.eligible)
            .nth(n)
            .map(|(i, _)| i)
    };
    match eligible {
        0 => None,
        1 => nth(0),
        n => {
            let first = (random % n as u64) as usize;
            let second = (first + 1 + ((random >> 32) % (n as u64 - 1)) as usize) % n;
            let (a, b) = (nth(first)?, nth(second)?);
            let cost = |c: &Candidate| {
                u128::from(c.latency_us.max(1)) * (c.in_flight as u128 + 1) * 1_000
                    / u128::from(c.weight.max(1))
            };
            Some(if cost(&candidates[b]) < cost(&candidates[a]) {
                b
            } else {
                a
            })
        }
    }
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
            ..Candidate::NONE
        }
    }

    fn spread(balance: Balance, cands: &[Candidate], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; cands.len()];
        let mut r = 0x9e37_79b9_7f4a_7c15u64;
        for t in 0..picks {
            r = xorshift(r);
            counts[pick(balance, cands, &[], t, r).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn least_traffic_prefers_the_origin_that_moved_least_for_its_weight() {
        let t = |traffic, weight| Candidate {
            traffic,
            ..c(0, weight, true)
        };
        let cands = [t(9_000_000, 1), t(1_000_000, 1), t(5_000_000, 1)];
        assert_eq!(spread(Balance::LeastTraffic, &cands, 100), vec![0, 100, 0]);
        // 4 MB over weight 5 is less than 1 MB over weight 1.
        let cands = [t(1_000_000, 1), t(4_000_000, 5)];
        assert_eq!(spread(Balance::LeastTraffic, &cands, 100), vec![0, 100]);
        // Equal traffic: the fewer in flight wins, and full ties spread.
        let cands = [
            Candidate {
                in_flight: 3,
                ..t(0, 1)
            },
            t(0, 1),
        ];
        assert_eq!(spread(Balance::LeastTraffic, &cands, 100), vec![0, 100]);
        let counts = spread(Balance::LeastTraffic, &[t(0, 1), t(0, 1)], 1_000);
        assert!(counts.iter().all(|&n| n > 350), "{counts:?}");
    }

    #[test]
    fn least_traffic_under_a_scripted_load_evens_out_the_bytes() {
        // Each pick moves 1 MB to the chosen origin; one origin starts 20 MB ahead. The
        // two behind take all 30 MB, evenly, and the busy one nothing.
        let mut moved = [20_000_000u64, 0, 0];
        let mut r = 7u64;
        for t in 0..30 {
            let cands: Vec<_> = moved
                .iter()
                .map(|&m| Candidate {
                    traffic: m,
                    ..c(0, 1, true)
                })
                .collect();
            r = xorshift(r);
            let i = pick(Balance::LeastTraffic, &cands, &[], t, r).unwrap();
            moved[i] += 1_000_000;
        }
        assert_eq!(
            moved[0], 20_000_000,
            "the busy origin got nothing: {moved:?}"
        );
        assert!(moved[1].abs_diff(moved[2]) <= 1_000_000, "{moved:?}");
    }

    #[test]
    fn peak_ewma_sends_most_to_the_fast_origin_but_not_all() {
        let l = |latency_us, in_flight| Candidate {
            latency_us,
            ..c(in_flight, 1, true)
        };
        // A 1 ms origin against two 50 ms ones, all idle: it wins whenever drawn, which
        // with two choices of three is two picks in three.
        let counts = spread(
            Balance::PeakEwma,
            &[l(50_000, 0), l(1_000, 0), l(50_000, 0)],
            3_000,
        );
        assert!(counts[1] > 1_800 && counts[1] < 2_200, "{counts:?}");
        // Busy enough, the fast origin costs more than a slow idle one.
        let counts = spread(Balance::PeakEwma, &[l(50_000, 0), l(1_000, 60)], 100);
        assert_eq!(counts, vec![100, 0]);
        // The two choices are distinct: with two eligible origins, the cheaper always wins.
        let counts = spread(
            Balance::PeakEwma,
            &[l(2_000, 0), l(1_000, 0), c(0, 1, false)],
            100,
        );
        assert_eq!(counts, vec![0, 100, 0]);
        // One eligible origin is the answer.
        let counts = spread(Balance::PeakEwma, &[c(0, 1, false), l(9_000, 9)], 10);
        assert_eq!(counts, vec![0, 10]);
    }

    #[test]
    fn peak_ewma_under_a_scripted_slowdown_moves_traffic_away() {
        use crate::proxy::upstream::meter::Latency;
        // Two origins at 2 ms; at t = 1 s the first turns 100 ms slow. Within a few of its
        // slow answers it gets only the picks where it is drawn against itself (never,
        // with two), i.e. nothing while the other is not busier by 50×.
        let lat = [Latency::new(0), Latency::new(0)];
        let mut r = 11u64;
        let mut late_picks = [0; 2];
        for step in 0..400u64 {
            let now = step * 5;
            let cands: Vec<_> = lat
                .iter()
                .map(|m| Candidate {
                    latency_us: m.current_us(now) as u64,
                    ..c(0, 1, true)
                })
                .collect();
            r = xorshift(r);
            let i = pick(Balance::PeakEwma, &cands, &[], step as usize, r).unwrap();
            let slow = i == 0 && now >= 1_000;
            lat[i].observe(if slow { 100_000.0 } else { 2_000.0 }, now);
            if now >= 1_100 {
                late_picks[i] += 1;
            }
        }
        assert_eq!(late_picks[0], 0, "{late_picks:?}");
        assert!(late_picks[1] > 150, "{late_picks:?}");
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
            Balance::LeastTraffic,
            Balance::PeakEwma,
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
