//! When a certificate is renewed, and how a failing renewal backs off: pure, so the
//! schedule is tested without clocks.

use std::time::Duration;

/// When to renew a certificate valid from `not_before` to `not_after` (unix seconds):
/// at two thirds of its lifetime (as Caddy and certbot do for 90-day certificates), moved
/// earlier by up to 5 % of the lifetime by `jitter` (0..1), so that many nodes started
/// together do not all renew in the same second.
pub fn renew_at(not_before: u64, not_after: u64, jitter: f64) -> u64 {
    let lifetime = not_after.saturating_sub(not_before);
    let base = not_before + lifetime * 2 / 3;
    let spread = (lifetime as f64 * 0.05 * jitter.clamp(0.0, 1.0)) as u64;
    base.saturating_sub(spread).max(not_before)
}

/// The wait before attempt `failures + 1` after `failures` failed ones: doubling from
/// `first`, capped at `cap`, never past the time left (`left`) less a margin to retry
/// once more before the certificate expires.
pub fn backoff(failures: u32, first: Duration, cap: Duration, left: Duration) -> Duration {
    let doubled = first.saturating_mul(1u32 << failures.min(20));
    let wait = doubled.min(cap);
    wait.min(left / 4).max(Duration::from_millis(100))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_comes_at_two_thirds_of_the_lifetime_less_jitter() {
        let day = 86_400;
        assert_eq!(renew_at(0, 90 * day, 0.0), 60 * day);
        let early = renew_at(0, 90 * day, 1.0);
        assert!(
            early < 60 * day && early >= 60 * day - (90 * day) / 20,
            "{early}"
        );
        // A certificate whose times are upside down is renewed at once.
        assert_eq!(renew_at(100, 50, 0.5), 100);
    }

    #[test]
    fn failures_back_off_doubling_up_to_the_cap_and_within_the_time_left() {
        let s = Duration::from_secs;
        let hour = s(3600);
        let far = s(30 * 86_400);
        assert_eq!(backoff(0, s(60), hour, far), s(60));
        assert_eq!(backoff(3, s(60), hour, far), s(480));
        assert_eq!(backoff(30, s(60), hour, far), hour);
        // Close to expiry the waits shrink with the time left.
        assert_eq!(backoff(10, s(60), hour, s(400)), s(100));
        assert_eq!(backoff(10, s(60), hour, s(0)), Duration::from_millis(100));
    }
}
