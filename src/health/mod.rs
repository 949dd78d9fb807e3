//! Node health: the pure state machines (rise/fall, a node's verdict from reports, probes
//! and overrides), the signed report format, and the table the query path reads without
//! locks.

mod node;
pub mod report;
mod rise_fall;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

pub use node::{Forced, NodeHealth, Reason, ReportError, ReportFigures};
pub use rise_fall::RiseFall;

/// Index of a node in the region table; the health table uses the same numbering.
pub type NodeId = usize;

/// How nodes are judged.
#[derive(Debug, Clone, Copy)]
pub struct HealthSettings {
    pub rise: u32,
    pub fall: u32,
    /// Nodes must send reports to be up.
    pub expects_reports: bool,
    pub stale_after_ms: u64,
}

struct NodeSlot {
    /// What the query path reads.
    effective: AtomicBool,
    /// Bit i set: the node's last report did not say service i (of the DNS state's
    /// service list) is up. Unknown services read as up until a report says otherwise.
    services_down: AtomicU64,
    state: Mutex<SlotState>,
}

struct SlotState {
    health: NodeHealth,
    reason: Reason,
}

/// A change of a node's effective state, logged once with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub node: NodeId,
    pub up: bool,
    pub reason: Reason,
}

/// What `/status` shows of a node.
#[derive(Debug, Clone, Copy)]
pub struct NodeStatus {
    pub up: bool,
    pub reason: Reason,
    pub report_age_ms: Option<u64>,
    pub figures: ReportFigures,
    pub forced: Option<(Forced, Option<u64>)>,
}

/// Health of every node. Writers (reports, probes, the admin, the ticker) take a
/// per-node mutex; the query path only loads an atomic.
pub struct HealthTable {
    nodes: Vec<NodeSlot>,
    settings: HealthSettings,
    /// Bumped on every change of a node's effective state, so readers that remember
    /// decisions (the DNS decision cache) know when to forget them.
    generation: AtomicU64,
}

impl HealthTable {
    /// `nodes[i]` = (initial state, probed) of node i. `now` starts the start-up grace
    /// period: nodes that must report keep their initial state for `stale_after`.
    pub fn new(nodes: &[(bool, bool)], settings: HealthSettings, now: u64) -> Self {
        let nodes = nodes
            .iter()
            .map(|&(initial, probed)| {
                let mut health = NodeHealth::new(
                    initial,
                    settings.expects_reports,
                    probed,
                    settings.rise,
                    settings.fall,
                    now,
                    settings.stale_after_ms,
                );
                let (up, reason) = health.evaluate(now, settings.stale_after_ms);
                NodeSlot {
                    effective: AtomicBool::new(up),
                    services_down: AtomicU64::new(0),
                    state: Mutex::new(SlotState { health, reason }),
                }
            })
            .collect();
        Self {
            nodes,
            settings,
            generation: AtomicU64::new(0),
        }
    }

    /// Changes whenever any node's effective state changes.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Copies what `old` knows of nodes into this table: `mapping` pairs a node id here
    /// with its id there (same node, renumbered by a config change).
    pub fn carry_over(&self, old: &HealthTable, mapping: &[(NodeId, NodeId)]) {
        for &(new_id, old_id) in mapping {
            let (Some(new), Some(prev)) = (self.nodes.get(new_id), old.nodes.get(old_id)) else {
                continue;
            };
            let copied = {
                let prev_state = prev.state.lock().unwrap_or_else(|p| p.into_inner());
                SlotState {
                    health: prev_state.health.clone(),
                    reason: prev_state.reason,
                }
            };
            let mut state = new.state.lock().unwrap_or_else(|p| p.into_inner());
            *state = copied;
            new.effective
                .store(prev.effective.load(Ordering::Relaxed), Ordering::Relaxed);
            new.services_down.store(
                prev.services_down.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn settings(&self) -> HealthSettings {
        self.settings
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether the query path should answer with this node. Unknown ids read as down.
    #[inline]
    pub fn is_up(&self, node: NodeId) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| n.effective.load(Ordering::Relaxed))
    }

    /// Whether the node is up and every service in `services` (a mask over the DNS
    /// state's service list) was up in its last report.
    #[inline]
    pub fn is_up_for(&self, node: NodeId, services: u64) -> bool {
        self.nodes.get(node).is_some_and(|n| {
            n.effective.load(Ordering::Relaxed)
                && (services == 0 || n.services_down.load(Ordering::Relaxed) & services == 0)
        })
    }

    /// The utilisation the node's latest report gave, if it reports a capacity.
    pub fn utilisation(&self, node: NodeId) -> Option<f64> {
        let slot = self.nodes.get(node)?;
        let state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        state.health.figures.utilisation
    }

    /// Makes readers that remember decisions forget them (shedding moved).
    pub fn invalidate_decisions(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Records which services a node's report says are down; true when that changed
    /// (and remembered decisions were dropped).
    pub fn record_services(&self, node: NodeId, down: u64) -> bool {
        let Some(slot) = self.nodes.get(node) else {
            return false;
        };
        let changed = slot.services_down.swap(down, Ordering::Relaxed) != down;
        if changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        changed
    }

    pub fn record_report(
        &self,
        node: NodeId,
        seq: u64,
        can_serve: bool,
        figures: ReportFigures,
        now: u64,
    ) -> Result<Option<Transition>, ReportError> {
        let mut result = Ok(());
        let t = self.update(node, now, |h| {
            result = h.record_report(seq, can_serve, figures, now)
        });
        result.map(|()| t)
    }

    pub fn record_probe(&self, node: NodeId, ok: bool, now: u64) -> Option<Transition> {
        self.update(node, now, |h| h.record_probe(ok))
    }

    /// Forces a node up or down until `until` (ms, `None` = until lifted); `None` lifts it.
    pub fn force(
        &self,
        node: NodeId,
        forced: Option<Forced>,
        until: Option<u64>,
        now: u64,
    ) -> Option<Transition> {
        self.update(node, now, |h| h.force(forced, until))
    }

    /// Re-evaluates every node (staleness and expiries need time to pass, not events).
    pub fn tick(&self, now: u64) -> Vec<Transition> {
        (0..self.nodes.len())
            .filter_map(|n| self.update(n, now, |_| {}))
            .collect()
    }

    pub fn status(&self, node: NodeId, now: u64) -> Option<NodeStatus> {
        let slot = self.nodes.get(node)?;
        let state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        Some(NodeStatus {
            up: slot.effective.load(Ordering::Relaxed),
            reason: state.reason,
            report_age_ms: state.health.report_age(now),
            figures: state.health.figures,
            forced: state.health.forced(),
        })
    }

    fn update(
        &self,
        node: NodeId,
        now: u64,
        change: impl FnOnce(&mut NodeHealth),
    ) -> Option<Transition> {
        let slot = self.nodes.get(node)?;
        // A poisoned lock only means a writer panicked mid-update; the state inside is
        // still valid, so keep going with it.
        let mut state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut state.health);
        let (up, reason) = state.health.evaluate(now, self.settings.stale_after_ms);
        state.reason = reason;
        let before = slot.effective.swap(up, Ordering::Relaxed);
        if before != up {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        (before != up).then_some(Transition { node, up, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(expects_reports: bool) -> HealthSettings {
        HealthSettings {
            rise: 2,
            fall: 2,
            expects_reports,
            stale_after_ms: 750,
        }
    }

    #[test]
    fn configured_state_without_reports() {
        let t = HealthTable::new(&[(true, false), (false, false)], settings(false), 0);
        assert!(t.is_up(0));
        assert!(!t.is_up(1));
        assert!(t.tick(100_000).is_empty());
    }

    #[test]
    fn stale_node_transitions_once_with_reason() {
        let t = HealthTable::new(&[(true, false)], settings(true), 0);
        let f = ReportFigures::default();
        assert_eq!(t.record_report(0, 1, true, f, 100), Ok(None));
        assert!(t.tick(800).is_empty());
        let changes = t.tick(900);
        assert_eq!(
            changes,
            vec![Transition {
                node: 0,
                up: false,
                reason: Reason::ReportsStale
            }]
        );
        assert!(t.tick(1000).is_empty(), "logged once");
        let back = t.record_report(0, 2, true, f, 1100).unwrap();
        assert_eq!(
            back,
            Some(Transition {
                node: 0,
                up: true,
                reason: Reason::Healthy
            })
        );
    }

    #[test]
    fn forced_down_then_lifted() {
        let t = HealthTable::new(&[(true, false)], settings(false), 0);
        assert!(t.force(0, Some(Forced::Down), None, 0).is_some());
        assert!(!t.is_up(0));
        assert_eq!(t.status(0, 0).unwrap().reason, Reason::Forced(Forced::Down));
        assert!(t.force(0, None, None, 1).is_some());
        assert!(t.is_up(0));
    }

    #[test]
    fn carry_over_copies_state_to_renumbered_nodes() {
        let old = HealthTable::new(&[(true, false), (true, false)], settings(true), 0);
        old.record_report(1, 5, true, ReportFigures::default(), 100)
            .unwrap();
        let _ = old.tick(5000); // node 0 never reported: stale; node 1 too by now
        old.record_report(1, 6, true, ReportFigures::default(), 5000)
            .unwrap();
        assert!(!old.is_up(0));
        assert!(old.is_up(1));
        let new = HealthTable::new(
            &[(true, false), (true, false), (true, false)],
            settings(true),
            5000,
        );
        new.carry_over(&old, &[(2, 1), (0, 0)]);
        assert!(new.is_up(2), "node 1 moved to 2 with its state");
        assert!(!new.is_up(0));
        assert_eq!(
            new.record_report(2, 6, true, ReportFigures::default(), 5001),
            Err(ReportError::Replayed),
            "sequence numbers came along"
        );
    }

    #[test]
    fn unknown_node_is_down_and_ignored() {
        let t = HealthTable::new(&[(true, false)], settings(false), 0);
        assert!(!t.is_up(7));
        assert_eq!(t.record_probe(7, true, 0), None);
    }

    #[test]
    fn a_node_serves_a_name_only_with_the_services_it_needs_up() {
        let t = HealthTable::new(&[(true, false), (true, false)], settings(false), 0);
        // Nothing reported yet: unknown services read as up.
        assert!(t.is_up_for(0, 0b11));
        let before = t.generation();
        assert!(t.record_services(0, 0b10));
        assert!(t.generation() > before, "remembered decisions are dropped");
        assert!(!t.record_services(0, 0b10), "no change, no new generation");
        assert!(t.is_up_for(0, 0b01));
        assert!(!t.is_up_for(0, 0b10));
        assert!(!t.is_up_for(0, 0b11));
        assert!(t.is_up_for(0, 0), "names that need nothing");
        assert!(t.is_up_for(1, 0b10));
        assert!(!t.is_up_for(7, 0), "unknown nodes are down");
    }
}
