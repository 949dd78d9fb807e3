//! Request rate limits (governor's GCRA: requests per second with a burst) per client,
//! per route and globally, and a cap on concurrent connections per client. Per-client
//! buckets live in a moka cache bounded in entries (least-used clients are forgotten
//! first, idle ones after a minute), so a flood of distinct addresses cannot grow memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::proxy::{RateConfig, RateLimitConfig};

pub fn quota(rate: &RateConfig) -> Quota {
    let rps = NonZeroU32::new(rate.rps.max(1)).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(rate.burst.max(rate.rps).max(1)).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rps).allow_burst(burst)
}

/// What the limiter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Over a limit: try again after this long (the Retry-After).
    Limited {
        retry_after: Duration,
        scope: Scope,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Client,
    Route,
    Global,
}

impl Scope {
    pub fn label(&self) -> &'static str {
        match self {
            Scope::Client => "client",
            Scope::Route => "route",
            Scope::Global => "global",
        }
    }
}

pub struct RateLimits {
    per_client: Option<(
        Quota,
        moka::sync::Cache<IpAddr, Arc<DefaultDirectRateLimiter>>,
    )>,
    global: Option<DefaultDirectRateLimiter>,
    per_route: Vec<Option<DefaultDirectRateLimiter>>,
    clock: DefaultClock,
}

/// IPv6 clients are keyed by their /64: one host usually holds a whole /64, and keying
/// by full address would let it rotate addresses past the limit.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

impl RateLimits {
    pub fn new(cfg: &RateLimitConfig, routes: &[Option<RateConfig>]) -> Self {
        Self {
            per_client: cfg.per_client.as_ref().map(|r| {
                let cache = moka::sync::Cache::builder()
                    .max_capacity(cfg.max_tracked_clients as u64)
                    .time_to_idle(Duration::from_secs(60))
                    .build();
                (quota(r), cache)
            }),
            global: cfg.global.as_ref().map(|r| RateLimiter::direct(quota(r))),
            per_route: routes
                .iter()
                .map(|r| r.as_ref().map(|r| RateLimiter::direct(quota(r))))
                .collect(),
            clock: DefaultClock::default(),
        }
    }

    pub fn check(&self, client: IpAddr, route: usize) -> Verdict {
        let now = self.clock.now();
        let limited = |scope, not_until: governor::NotUntil<governor::clock::QuantaInstant>| {
            Verdict::Limited {
                retry_after: not_until.wait_time_from(now),
                scope,
            }
        };
        if let Some((q, buckets)) = &self.per_client {
            let bucket = buckets.get_with(client_key(client), || Arc::new(RateLimiter::direct(*q)));
            if let Err(n) = bucket.check() {
                return limited(Scope::Client, n);
            }
        }
        if let Some(Some(r)) = self.per_route.get(route) {
            if let Err(n) = r.check() {
                return limited(Scope::Route, n);
            }
        }
        if let Some(g) = &self.global {
            if let Err(n) = g.check() {
                return limited(Scope::Global, n);
            }
        }
        Verdict::Allowed
    }

    pub fn tracked_clients(&self) -> u64 {
        self.per_client
            .as_ref()
            .map(|(_, c)| {
                c.run_pending_tasks();
                c.entry_count()
            })
            .unwrap_or(0)
    }
}

/// Concurrent connections per client, capped.
#[derive(Default)]
pub struct ConnectionCounts {
    counts: Mutex<HashMap<IpAddr, u32>>,
}

impl ConnectionCounts {
    /// Counts a new connection; false (and nothing counted) when the client is at `cap`.
    pub fn open(&self, client: IpAddr, cap: u32) -> bool {
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(client_key(client)).or_insert(0);
        if *n >= cap {
            return false;
        }
        *n += 1;
        true
    }

    pub fn close(&self, client: IpAddr) {
        let key = client_key(client);
        let mut m = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&key);
            }
        }
    }

    pub fn clients(&self) -> usize {
        self.counts.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(
        per_client: Option<(u32, u32)>,
        global: Option<(u32, u32)>,
        max: usize,
    ) -> RateLimitConfig {
        RateLimitConfig {
            per_client: per_client.map(|(rps, burst)| RateConfig { rps, burst }),
            global: global.map(|(rps, burst)| RateConfig { rps, burst }),
            max_tracked_clients: max,
            max_connections_per_client: None,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_client_over_its_burst_is_limited_and_another_is_not() {
        let r = RateLimits::new(&cfg(Some((1, 5)), None, 100), &[None]);
        for _ in 0..5 {
            assert_eq!(r.check(ip("192.0.2.1"), 0), Verdict::Allowed);
        }
        match r.check(ip("192.0.2.1"), 0) {
            Verdict::Limited { retry_after, scope } => {
                assert_eq!(scope, Scope::Client);
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(r.check(ip("192.0.2.2"), 0), Verdict::Allowed);
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let r = RateLimits::new(&cfg(Some((1, 2)), None, 100), &[None]);
        assert_eq!(r.check(ip("2001:db8:1:2::1"), 0), Verdict::Allowed);
        assert_eq!(r.check(ip("2001:db8:1:2::2"), 0), Verdict::Allowed);
        assert!(matches!(
            r.check(ip("2001:db8:1:2::3"), 0),
            Verdict::Limited { .. }
        ));
        assert_eq!(r.check(ip("2001:db8:1:3::1"), 0), Verdict::Allowed);
    }

    #[test]
    fn route_and_global_limits_apply_to_everyone() {
        let r = RateLimits::new(
            &cfg(None, Some((1, 3)), 100),
            &[Some(RateConfig { rps: 1, burst: 1 }), None],
        );
        assert_eq!(r.check(ip("192.0.2.1"), 0), Verdict::Allowed);
        assert!(matches!(
            r.check(ip("192.0.2.2"), 0),
            Verdict::Limited {
                scope: Scope::Route,
                ..
            }
        ));
        assert_eq!(r.check(ip("192.0.2.3"), 1), Verdict::Allowed);
        assert_eq!(r.check(ip("192.0.2.4"), 1), Verdict::Allowed);
        assert!(matches!(
            r.check(ip("192.0.2.5"), 1),
            Verdict::Limited {
                scope: Scope::Global,
                ..
            }
        ));
    }

    #[test]
    fn tracked_clients_stay_bounded_under_a_flood_of_addresses() {
        let r = RateLimits::new(&cfg(Some((100, 100)), None, 1000), &[None]);
        for i in 0..50_000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let _ = r.check(IpAddr::V4(a), 0);
        }
        assert!(r.tracked_clients() <= 1000, "{}", r.tracked_clients());
    }

    #[test]
    fn connection_caps_per_client() {
        let c = ConnectionCounts::default();
        assert!(c.open(ip("192.0.2.1"), 2));
        assert!(c.open(ip("192.0.2.1"), 2));
        assert!(!c.open(ip("192.0.2.1"), 2));
        assert!(c.open(ip("192.0.2.9"), 2));
        c.close(ip("192.0.2.1"));
        assert!(c.open(ip("192.0.2.1"), 2));
        c.close(ip("192.0.2.1"));
        c.close(ip("192.0.2.1"));
        c.close(ip("192.0.2.9"));
        assert_eq!(c.clients(), 0, "no entries left behind");
    }
}
