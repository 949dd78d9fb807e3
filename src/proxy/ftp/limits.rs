//! The FTP gateway's limits, as pure state: commands per second on one control
//! connection (a token bucket), and failed logins per client address across sessions (a
//! client that reconnects after each refusal still runs out).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Commands allowed per second on one control connection, with a burst of twice that.
pub struct CommandRate {
    per_second: f64,
    tokens: f64,
    last_ms: u64,
}

impl CommandRate {
    pub fn new(per_second: u32, now_ms: u64) -> Self {
        Self {
            per_second: f64::from(per_second),
            tokens: f64::from(per_second) * 2.0,
            last_ms: now_ms,
        }
    }

    /// Takes a token for one command; false when the client is over its rate.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = now_ms;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second * 2.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How long a client's failed logins are remembered.
pub const LOGIN_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Clients remembered at most; past this the oldest entries go first.
const MAX_CLIENTS: usize = 65_536;

/// Failed logins per client address within `LOGIN_WINDOW_MS`.
#[derive(Default)]
pub struct LoginLedger {
    clients: Mutex<HashMap<IpAddr, (u32, u64)>>,
}

impl LoginLedger {
    /// Failures counted for `client` now (0 once its window has passed).
    pub fn failures(&self, client: IpAddr, now_ms: u64) -> u32 {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        match clients.get(&client) {
            Some(&(n, since)) if now_ms.saturating_sub(since) < LOGIN_WINDOW_MS => n,
            _ => 0,
        }
    }

    /// Counts a failed login; returns the count within the window.
    pub fn fail(&self, client: IpAddr, now_ms: u64) -> u32 {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_CLIENTS {
            clients.retain(|_, (_, since)| now_ms.saturating_sub(*since) < LOGIN_WINDOW_MS);
            if clients.len() >= MAX_CLIENTS {
                // Still full of live entries: forget the lot rather than grow.
                clients.clear();
            }
        }
        let entry = clients.entry(client).or_insert((0, now_ms));
        if now_ms.saturating_sub(entry.1) >= LOGIN_WINDOW_MS {
            *entry = (0, now_ms);
        }
        entry.0 += 1;
        entry.0
    }

    /// A good login clears the client's count.
    pub fn succeed(&self, client: IpAddr) {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_twice_the_rate_then_the_rate() {
        let mut r = CommandRate::new(5, 0);
        assert_eq!((0..10).filter(|_| r.allow(0)).count(), 10);
        assert!(!r.allow(0));
        // 200 ms later one more token has come.
        assert!(r.allow(200));
        assert!(!r.allow(200));
        // A long pause fills the bucket only to its burst.
        assert_eq!((0..20).filter(|_| r.allow(60_000)).count(), 10);
    }

    #[test]
    fn failed_logins_add_up_per_client_within_the_window() {
        let l = LoginLedger::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(l.fail(a, 0), 1);
        assert_eq!(l.fail(a, 1000), 2);
        assert_eq!(l.failures(a, 2000), 2);
        assert_eq!(l.failures(b, 2000), 0);
        assert_eq!(l.failures(a, LOGIN_WINDOW_MS + 1), 0);
        assert_eq!(l.fail(a, LOGIN_WINDOW_MS + 1), 1);
        l.succeed(a);
        assert_eq!(l.failures(a, LOGIN_WINDOW_MS + 2), 0);
    }
}
