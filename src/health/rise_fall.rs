//! Anti-flap: a node goes down after `fall` consecutive failures and comes back after
//! `rise` consecutive successes, so one lost packet never flips an answer.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiseFall {
    up: bool,
    /// Consecutive observations that disagree with the current state.
    streak: u32,
    rise: u32,
    fall: u32,
}

impl RiseFall {
    pub fn new(up: bool, rise: u32, fall: u32) -> Self {
        Self {
            up,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }

    /// Records one check result; returns true when the state changed.
    pub fn observe(&mut self, ok: bool) -> bool {
        if ok == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goes_down_after_fall_failures_in_a_row() {
        let mut h = RiseFall::new(true, 2, 3);
        assert!(!h.observe(false));
        assert!(!h.observe(false));
        assert!(h.observe(false));
        assert!(!h.is_up());
    }

    #[test]
    fn a_success_resets_the_failure_streak() {
        let mut h = RiseFall::new(true, 2, 2);
        assert!(!h.observe(false));
        assert!(!h.observe(true));
        assert!(!h.observe(false));
        assert!(h.is_up());
    }

    #[test]
    fn alternating_results_never_flip() {
        let mut h = RiseFall::new(true, 2, 2);
        for i in 0..100 {
            assert!(!h.observe(i % 2 == 0));
        }
        assert!(h.is_up());
    }

    #[test]
    fn comes_back_after_rise_successes() {
        let mut h = RiseFall::new(false, 3, 1);
        assert!(!h.observe(true));
        assert!(!h.observe(true));
        assert!(h.observe(true));
        assert!(h.is_up());
    }

    #[test]
    fn zero_thresholds_behave_as_one() {
        let mut h = RiseFall::new(true, 0, 0);
        assert!(h.observe(false));
        assert!(h.observe(true));
    }
}
