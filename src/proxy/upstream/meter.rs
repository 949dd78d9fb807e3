//! What the load-aware balancers measure of each origin: bytes moved recently
//! (`least_traffic`) and a peak-sensitive moving average of response latency
//! (`peak_ewma`). The arithmetic is pure and takes the time as an argument; the holders are
//! atomics an origin's state keeps across reloads.
//!
//! Both forget exponentially with a time constant of [`WINDOW_MS`] (10 s, Finagle's
//! default decay time): a byte moved 10 s ago weighs e⁻¹ ≈ 37 % of one moved now, one
//! moved a minute ago 0.25 %. Ten seconds is long enough that one large response does not
//! flip the choice back and forth between origins, and short enough that an origin that
//! has gone quiet gets traffic again well within a health-check interval.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// The time constant τ of both decays, in milliseconds.
pub const WINDOW_MS: u64 = 10_000;
/// Bytes counted are folded into the decayed sum at most this often; between folds they
/// count whole (they are at most this old).
const FOLD_MS: u64 = 100;
/// What `peak_ewma` assumes of an origin it has not measured yet (Linkerd's default RTT):
/// a new origin is neither shunned nor flooded before its first answer.
pub const UNMEASURED_LATENCY_US: f64 = 30_000.0;

/// What a body or pipe tells as bytes pass, without knowing whose meter it feeds.
pub trait CountsTraffic: Sync {
    fn moved(&self, bytes: u64);
}

impl CountsTraffic for Traffic {
    fn moved(&self, bytes: u64) {
        self.add(bytes);
    }
}

/// `value` after `elapsed_ms` of exponential decay with time constant [`WINDOW_MS`].
pub fn decay(value: f64, elapsed_ms: u64) -> f64 {
    if elapsed_ms == 0 {
        return value;
    }
    value * (-(elapsed_ms as f64) / WINDOW_MS as f64).exp()
}

/// One step of a peak-sensitive EWMA: a sample above the average replaces it at once (a
/// slowing origin is avoided at its first slow answer), one below pulls it down by the
/// weight the time since the last sample earns it (Finagle's and Linkerd's rule).
pub fn peak_ewma_step(average: f64, elapsed_ms: u64, sample: f64) -> f64 {
    if sample > average {
        return sample;
    }
    let keep = decay(1.0, elapsed_ms);
    average * keep + sample * (1.0 - keep)
}

/// Bytes moved to and from one origin, as an exponentially decaying sum: "how much
/// traffic recently" in bytes, each byte weighted by e^(−age/τ).
pub struct Traffic {
    total: AtomicU64,
    /// The decayed sum (f64 bits) as of `folded_at`, of the bytes counted up to
    /// `total_folded`.
    decayed: AtomicU64,
    folded_at: AtomicU64,
    total_folded: AtomicU64,
    folding: AtomicBool,
}

impl Traffic {
    pub fn new(now_ms: u64) -> Self {
        Self {
            total: AtomicU64::new(0),
            decayed: AtomicU64::new(0f64.to_bits()),
            folded_at: AtomicU64::new(now_ms),
            total_folded: AtomicU64::new(0),
            folding: AtomicBool::new(false),
        }
    }

    /// Counts bytes moved, either way.
    pub fn add(&self, bytes: u64) {
        self.total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Every byte ever counted, for `/status`.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The decayed sum as of `now_ms`. Readers race a fold harmlessly: at worst a
    /// fold's bytes count whole or not at all for one pick.
    pub fn recent(&self, now_ms: u64) -> f64 {
        let folded_at = self.folded_at.load(Ordering::Relaxed);
        let decayed = f64::from_bits(self.decayed.load(Ordering::Relaxed));
        let fresh = self
            .total
            .load(Ordering::Relaxed)
            .saturating_sub(self.total_folded.load(Ordering::Relaxed));
        decay(decayed, now_ms.saturating_sub(folded_at)) + fresh as f64
    }

    /// Folds the bytes counted since the last fold into the decayed sum, if [`FOLD_MS`]
    /// has passed; whoever calls first does it, the others go on.
    pub fn fold(&self, now_ms: u64) {
        let folded_at = self.folded_at.load(Ordering::Relaxed);
        if now_ms.saturating_sub(folded_at) < FOLD_MS || self.folding.swap(true, Ordering::Acquire)
        {
            return;
        }
        let total = self.total.load(Ordering::Relaxed);
        let fresh = total.saturating_sub(self.total_folded.load(Ordering::Relaxed));
        let decayed = f64::from_bits(self.decayed.load(Ordering::Relaxed));
        let sum = decay(decayed, now_ms.saturating_sub(folded_at)) + fresh as f64;
        self.decayed.store(sum.to_bits(), Ordering::Relaxed);
        self.total_folded.store(total, Ordering::Relaxed);
        self.folded_at.store(now_ms, Ordering::Relaxed);
        self.folding.store(false, Ordering::Release);
    }
}

/// An origin's peak-sensitive EWMA of response latency (time to the response head, or
/// to the connection for streams), in microseconds.
pub struct Latency {
    /// (average µs, when it was last updated, measured at all).
    state: Mutex<(f64, u64, bool)>,
}

impl Latency {
    pub fn new(now_ms: u64) -> Self {
        Self {
            state: Mutex::new((UNMEASURED_LATENCY_US, now_ms, false)),
        }
    }

    pub fn observe(&self, sample_us: f64, now_ms: u64) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (average, at, measured) = *state;
        // The assumed value is a placeholder, not a measurement to average with.
        let average = if measured {
            peak_ewma_step(average, now_ms.saturating_sub(at), sample_us)
        } else {
            sample_us
        };
        *state = (average, now_ms.max(at), true);
    }

    /// The average as of `now_ms`: it decays while no sample comes, so an origin avoided
    /// for a slow spell is tried again rather than shunned for ever.
    pub fn current_us(&self, now_ms: u64) -> f64 {
        let (average, at, _) = *self.state.lock().unwrap_or_else(|p| p.into_inner());
        decay(average, now_ms.saturating_sub(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * b.abs().max(1.0)
    }

    #[test]
    fn decay_follows_the_time_constant() {
        assert_eq!(decay(100.0, 0), 100.0);
        assert!(close(decay(100.0, WINDOW_MS), 100.0 / std::f64::consts::E));
        assert!(decay(100.0, 6 * WINDOW_MS) < 0.3);
        // Two steps make one.
        assert!(close(decay(decay(7.0, 1_234), 4_321), decay(7.0, 5_555)));
    }

    #[test]
    fn peak_ewma_jumps_up_and_eases_down() {
        assert_eq!(peak_ewma_step(1_000.0, 5, 50_000.0), 50_000.0);
        let eased = peak_ewma_step(50_000.0, 1_000, 1_000.0);
        assert!(eased < 50_000.0 && eased > 40_000.0, "{eased}");
        // Many quick samples at 1 ms bring it to 1 ms.
        let mut avg = 50_000.0;
        for _ in 0..2_000 {
            avg = peak_ewma_step(avg, 100, 1_000.0);
        }
        assert!(close(avg, 1_000.0) || (avg - 1_000.0).abs() < 1.0, "{avg}");
    }

    #[test]
    fn traffic_counts_fresh_bytes_whole_and_old_ones_decayed() {
        let t = Traffic::new(0);
        t.add(1_000);
        assert_eq!(t.recent(0), 1_000.0);
        t.fold(50); // too soon: nothing folded
        assert_eq!(t.recent(50), 1_000.0);
        t.fold(200);
        assert!(close(t.recent(200), 1_000.0));
        t.add(500);
        assert!(close(
            t.recent(200 + WINDOW_MS),
            1_000.0 / std::f64::consts::E + 500.0
        ));
        t.fold(200 + WINDOW_MS);
        assert!(close(
            t.recent(200 + WINDOW_MS),
            1_000.0 / std::f64::consts::E + 500.0
        ));
        assert_eq!(t.total(), 1_500);
        // A quiet minute forgets nearly everything.
        assert!(t.recent(200 + 9 * WINDOW_MS) < 1.0);
    }

    #[test]
    fn latency_starts_assumed_and_decays_when_quiet() {
        let l = Latency::new(0);
        assert_eq!(l.current_us(0), UNMEASURED_LATENCY_US);
        // The first answer replaces the assumption, even a faster one.
        l.observe(1_000.0, 5);
        assert_eq!(l.current_us(5), 1_000.0);
        l.observe(200_000.0, 10);
        assert_eq!(l.current_us(10), 200_000.0);
        assert!(l.current_us(10 + WINDOW_MS) < 80_000.0);
    }
}
