//! One node's health as the DNS server sees it, pure: fresh reports that say the node can
//! serve, an agreeing probe (where configured), rise/fall against flapping, and an
//! operator's override with an optional expiry. Time is passed in, never read.

use super::RiseFall;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    Up,
    Down,
}

/// Why a node is in the state it is in; logged on every change and shown in `/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No reports are expected (reports off): the configured initial state.
    Configured,
    /// Reports expected, none yet, still within the start-up grace period.
    Starting,
    Healthy,
    /// The last report is older than `stale_after` (or there never was one).
    ReportsStale,
    /// The node reports it cannot serve (no healthy origin).
    CannotServe,
    ProbeFailed,
    Forced(Forced),
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::Configured => "configured",
            Reason::Starting => "starting",
            Reason::Healthy => "healthy",
            Reason::ReportsStale => "reports stale",
            Reason::CannotServe => "node cannot serve",
            Reason::ProbeFailed => "probe failed",
            Reason::Forced(Forced::Up) => "forced up",
            Reason::Forced(Forced::Down) => "forced down",
        }
    }
}

/// What the latest report said beyond "can serve", for `/status` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ReportFigures {
    pub healthy_origins: u32,
    pub total_origins: u32,
    pub in_flight: u64,
    pub load: f64,
    /// Load over configured capacity, from nodes that report a capacity.
    pub utilisation: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct NodeHealth {
    /// Whether this node must report to be up.
    expects_reports: bool,
    initial_up: bool,
    /// Until this time (ms) a node without reports keeps its initial state, so a DNS
    /// server restart does not take every node down before the first reports arrive.
    grace_until: u64,
    last_report_at: Option<u64>,
    last_seq: Option<u64>,
    pub figures: ReportFigures,
    report_verdict: RiseFall,
    probe_verdict: Option<RiseFall>,
    forced: Option<(Forced, Option<u64>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportError {
    /// Sequence number not above the last accepted one.
    Replayed,
}

impl NodeHealth {
    pub fn new(
        initial_up: bool,
        expects_reports: bool,
        probed: bool,
        rise: u32,
        fall: u32,
        now: u64,
        grace: u64,
    ) -> Self {
        Self {
            expects_reports,
            initial_up,
            grace_until: now + grace,
            last_report_at: None,
            last_seq: None,
            figures: ReportFigures::default(),
            report_verdict: RiseFall::new(initial_up, rise, fall),
            probe_verdict: probed.then(|| RiseFall::new(initial_up, rise, fall)),
            forced: None,
        }
    }

    pub fn record_report(
        &mut self,
        seq: u64,
        can_serve: bool,
        figures: ReportFigures,
        now: u64,
    ) -> Result<(), ReportError> {
        if self.last_seq.is_some_and(|last| seq <= last) {
            return Err(ReportError::Replayed);
        }
        self.last_seq = Some(seq);
        // The first report after silence decides at once: a node that was stale comes
        // back when it says it can serve; rise counts protect against flapping verdicts,
        // not against a node that was simply unreachable.
        if self.last_report_at.is_none() {
            self.report_verdict = RiseFall::new(
                can_serve,
                self.report_verdict_rise(),
                self.report_verdict_fall(),
            );
        } else {
            self.report_verdict.observe(can_serve);
        }
        self.last_report_at = Some(now);
        self.figures = figures;
        Ok(())
    }

    fn report_verdict_rise(&self) -> u32 {
        self.report_verdict.rise()
    }

    fn report_verdict_fall(&self) -> u32 {
        self.report_verdict.fall()
    }

    pub fn record_probe(&mut self, ok: bool) {
        if let Some(p) = &mut self.probe_verdict {
            p.observe(ok);
        }
    }

    pub fn force(&mut self, forced: Option<Forced>, until: Option<u64>) {
        self.forced = forced.map(|f| (f, until));
    }

    pub fn forced(&self) -> Option<(Forced, Option<u64>)> {
        self.forced
    }

    pub fn report_age(&self, now: u64) -> Option<u64> {
        self.last_report_at.map(|t| now.saturating_sub(t))
    }

    /// The node's state and why, at time `now`.
    pub fn evaluate(&mut self, now: u64, stale_after: u64) -> (bool, Reason) {
        if let Some((f, until)) = self.forced {
            if until.is_some_and(|u| now >= u) {
                self.forced = None;
            } else {
                return (f == Forced::Up, Reason::Forced(f));
            }
        }
        if self.expects_reports {
            match self.last_report_at {
                None if now < self.grace_until => return (self.initial_up, Reason::Starting),
                None => return (false, Reason::ReportsStale),
                Some(t) if now.saturating_sub(t) > stale_after => {
                    // Forget the stream: when reports resume, the first one decides.
                    self.last_report_at = None;
                    self.grace_until = 0;
                    return (false, Reason::ReportsStale);
                }
                Some(_) => {
                    if !self.report_verdict.is_up() {
                        return (false, Reason::CannotServe);
                    }
                }
            }
        }
        if let Some(p) = &self.probe_verdict {
            if !p.is_up() {
                return (false, Reason::ProbeFailed);
            }
        }
        if self.expects_reports || self.probe_verdict.is_some() {
            (true, Reason::Healthy)
        } else {
            (self.initial_up, Reason::Configured)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: u64 = 750;

    fn reported(now: u64) -> NodeHealth {
        NodeHealth::new(true, true, false, 2, 2, now, 1000)
    }

    #[test]
    fn fresh_reports_that_can_serve_keep_a_node_up() {
        let mut n = reported(0);
        n.record_report(1, true, ReportFigures::default(), 100)
            .unwrap();
        assert_eq!(n.evaluate(200, STALE), (true, Reason::Healthy));
    }

    #[test]
    fn silence_beyond_stale_after_takes_it_down_at_once() {
        let mut n = reported(0);
        n.record_report(1, true, ReportFigures::default(), 100)
            .unwrap();
        assert!(n.evaluate(100 + STALE, STALE).0);
        assert_eq!(
            n.evaluate(101 + STALE, STALE),
            (false, Reason::ReportsStale)
        );
        // The first report after silence brings it back without waiting for rise.
        n.record_report(2, true, ReportFigures::default(), 5000)
            .unwrap();
        assert_eq!(n.evaluate(5001, STALE), (true, Reason::Healthy));
    }

    #[test]
    fn start_up_grace_keeps_the_initial_state_until_reports_arrive() {
        let mut n = reported(0);
        assert_eq!(n.evaluate(500, STALE), (true, Reason::Starting));
        assert_eq!(n.evaluate(1500, STALE), (false, Reason::ReportsStale));
    }

    #[test]
    fn cannot_serve_needs_fall_reports_and_recovery_needs_rise() {
        let mut n = reported(0);
        let f = ReportFigures::default();
        n.record_report(1, true, f, 0).unwrap();
        n.record_report(2, false, f, 10).unwrap();
        assert!(n.evaluate(11, STALE).0, "one bad report is not enough");
        n.record_report(3, false, f, 20).unwrap();
        assert_eq!(n.evaluate(21, STALE), (false, Reason::CannotServe));
        n.record_report(4, true, f, 30).unwrap();
        assert!(!n.evaluate(31, STALE).0);
        n.record_report(5, true, f, 40).unwrap();
        assert!(n.evaluate(41, STALE).0);
    }

    #[test]
    fn flapping_faster_than_rise_and_fall_never_flips() {
        let mut n = reported(0);
        let f = ReportFigures::default();
        n.record_report(1, true, f, 0).unwrap();
        for i in 2..100u64 {
            n.record_report(i, i % 2 == 0, f, i * 10).unwrap();
            assert!(n.evaluate(i * 10, STALE).0, "flipped at report {i}");
        }
    }

    #[test]
    fn replayed_sequence_numbers_are_rejected_and_change_nothing() {
        let mut n = reported(0);
        let f = ReportFigures::default();
        n.record_report(10, true, f, 0).unwrap();
        assert_eq!(n.record_report(10, false, f, 5), Err(ReportError::Replayed));
        assert_eq!(n.record_report(3, false, f, 5), Err(ReportError::Replayed));
        assert_eq!(
            n.report_age(6),
            Some(6),
            "a replay does not refresh the node"
        );
    }

    #[test]
    fn probe_must_agree() {
        let mut n = NodeHealth::new(true, true, true, 1, 1, 0, 0);
        n.record_report(1, true, ReportFigures::default(), 0)
            .unwrap();
        n.record_probe(false);
        assert_eq!(n.evaluate(1, STALE), (false, Reason::ProbeFailed));
        n.record_probe(true);
        assert_eq!(n.evaluate(2, STALE), (true, Reason::Healthy));
    }

    #[test]
    fn forced_state_wins_and_expires() {
        let mut n = reported(0);
        n.record_report(1, true, ReportFigures::default(), 0)
            .unwrap();
        n.force(Some(Forced::Down), Some(100));
        assert_eq!(n.evaluate(50, STALE), (false, Reason::Forced(Forced::Down)));
        n.record_report(2, true, ReportFigures::default(), 90)
            .unwrap();
        assert_eq!(n.evaluate(100, STALE), (true, Reason::Healthy));
        assert_eq!(n.forced(), None);
    }

    #[test]
    fn without_reports_or_probes_the_configured_state_holds() {
        let mut n = NodeHealth::new(false, false, false, 2, 2, 0, 0);
        assert_eq!(n.evaluate(10_000, STALE), (false, Reason::Configured));
    }
}
