//! Response rate limiting (RRL) for UDP: answers per second per client network (a /24
//! or /56 by default). Over the limit, most answers are dropped and every `slip`-th is
//! sent truncated instead, so a real client behind a spoofed flood retries over TCP and
//! still gets through, while the flood's victim gets almost nothing reflected at it.
//! TCP is never limited here: a TCP client's address is proven by the handshake.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

pub use crate::config::dns::RrlConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Send,
    Drop,
    /// Send a truncated answer (header and question, TC set) instead.
    Slip,
}

struct NetworkState {
    limiter: DefaultDirectRateLimiter,
    limited: AtomicU32,
}

pub struct Rrl {
    config: RrlConfig,
    quota: Quota,
    networks: moka::sync::Cache<IpNet, Arc<NetworkState>>,
}

impl Rrl {
    pub fn new(config: RrlConfig) -> Self {
        let rps = NonZeroU32::new(config.responses_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rps).allow_burst(rps);
        let networks = moka::sync::Cache::builder()
            .max_capacity(config.max_tracked_networks.max(1))
            .time_to_idle(Duration::from_secs(30))
            .build();
        Self {
            config,
            quota,
            networks,
        }
    }

    pub fn network(&self, ip: IpAddr) -> IpNet {
        let prefix = match ip {
            IpAddr::V4(_) => self.config.ipv4_prefix.min(32),
            IpAddr::V6(_) => self.config.ipv6_prefix.min(128),
        };
        IpNet::new(ip, prefix)
            .map(|n| n.trunc())
            .unwrap_or_else(|_| IpNet::from(ip))
    }

    pub fn check(&self, src: IpAddr) -> Action {
        let quota = self.quota;
        let state = self.networks.get_with(self.network(src), || {
            Arc::new(NetworkState {
                limiter: RateLimiter::direct(quota),
                limited: AtomicU32::new(0),
            })
        });
        if state.limiter.check().is_ok() {
            return Action::Send;
        }
        let n = state.limited.fetch_add(1, Ordering::Relaxed);
        if self.config.slip > 0 && n.is_multiple_of(self.config.slip) {
            Action::Slip
        } else {
            Action::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrl(rps: u32, slip: u32) -> Rrl {
        Rrl::new(RrlConfig {
            responses_per_second: rps,
            slip,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            max_tracked_networks: 1000,
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_from_one_network_is_limited_with_slip_and_others_are_not() {
        let r = rrl(10, 2);
        let mut counts = [0usize; 3];
        for i in 0..100u8 {
            // Different hosts of one /24 share the budget.
            match r.check(IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, i))) {
                Action::Send => counts[0] += 1,
                Action::Drop => counts[1] += 1,
                Action::Slip => counts[2] += 1,
            }
        }
        assert_eq!(counts[0], 10, "{counts:?}");
        assert_eq!(
            counts[2], 45,
            "every second limited answer slips: {counts:?}"
        );
        assert_eq!(counts[1], 45, "{counts:?}");
        for _ in 0..10 {
            assert_eq!(
                r.check(ip("203.0.113.5")),
                Action::Send,
                "another network is unaffected"
            );
        }
    }

    #[test]
    fn no_slip_means_drop_only_and_ipv6_groups_by_56() {
        let r = rrl(2, 0);
        assert_eq!(r.check(ip("2001:db8:0:1::1")), Action::Send);
        assert_eq!(r.check(ip("2001:db8:0:2::1")), Action::Send, "same /56");
        assert_eq!(r.check(ip("2001:db8:0:3::1")), Action::Drop);
        assert_eq!(
            r.check(ip("2001:db8:0:100::1")),
            Action::Send,
            "another /56"
        );
        assert_eq!(
            r.network(ip("2001:db8:0:3::1")).to_string(),
            "2001:db8::/56"
        );
    }
}
