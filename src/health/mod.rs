//! Node health: the rise/fall state machine (pure) and the table the query path reads
//! without locks.

mod rise_fall;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub use rise_fall::RiseFall;

/// Index of a node in the region table; the health table uses the same numbering.
pub type NodeId = usize;

/// An operator's forced state, which wins over what checks observe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    Up,
    Down,
}

struct NodeSlot {
    /// What the query path reads: the observed state unless an operator forced one.
    effective: AtomicBool,
    state: Mutex<SlotState>,
}

struct SlotState {
    observed: RiseFall,
    forced: Option<Forced>,
}

/// Health of every node. Writers (health checks, reports, the admin) take a per-node
/// mutex; readers on the query path only load an atomic.
pub struct HealthTable {
    nodes: Vec<NodeSlot>,
}

/// A change of a node's effective state, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub node: NodeId,
    pub up: bool,
}

impl HealthTable {
    /// `initial[i]` is node i's state before any observation.
    pub fn new(initial: &[bool], rise: u32, fall: u32) -> Self {
        let nodes = initial
            .iter()
            .map(|&up| NodeSlot {
                effective: AtomicBool::new(up),
                state: Mutex::new(SlotState {
                    observed: RiseFall::new(up, rise, fall),
                    forced: None,
                }),
            })
            .collect();
        Self { nodes }
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

    /// Feeds one check result; returns the transition if the effective state changed.
    pub fn observe(&self, node: NodeId, ok: bool) -> Option<Transition> {
        self.update(node, |s| {
            s.observed.observe(ok);
        })
    }

    /// Forces a node up or down (`None` lifts the override).
    pub fn force(&self, node: NodeId, forced: Option<Forced>) -> Option<Transition> {
        self.update(node, |s| s.forced = forced)
    }

    fn update(&self, node: NodeId, change: impl FnOnce(&mut SlotState)) -> Option<Transition> {
        let slot = self.nodes.get(node)?;
        // A poisoned lock only means a writer panicked mid-update; the state inside is
        // still a valid RiseFall, so keep going with it.
        let mut state = slot.state.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut state);
        let up = match state.forced {
            Some(Forced::Up) => true,
            Some(Forced::Down) => false,
            None => state.observed.is_up(),
        };
        let before = slot.effective.swap(up, Ordering::Relaxed);
        (before != up).then_some(Transition { node, up })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_flip_after_fall_and_rise_counts() {
        let t = HealthTable::new(&[true, true], 2, 3);
        assert_eq!(t.observe(0, false), None);
        assert_eq!(t.observe(0, false), None);
        assert_eq!(t.observe(0, false), Some(Transition { node: 0, up: false }));
        assert!(!t.is_up(0));
        assert!(t.is_up(1), "other nodes are untouched");
        assert_eq!(t.observe(0, true), None);
        assert_eq!(t.observe(0, true), Some(Transition { node: 0, up: true }));
    }

    #[test]
    fn forced_state_wins_until_lifted() {
        let t = HealthTable::new(&[true], 1, 1);
        assert_eq!(
            t.force(0, Some(Forced::Down)),
            Some(Transition { node: 0, up: false })
        );
        assert_eq!(
            t.observe(0, true),
            None,
            "checks cannot override the operator"
        );
        assert!(!t.is_up(0));
        assert_eq!(t.force(0, None), Some(Transition { node: 0, up: true }));
    }

    #[test]
    fn unknown_node_is_down_and_ignored() {
        let t = HealthTable::new(&[true], 1, 1);
        assert!(!t.is_up(7));
        assert_eq!(t.observe(7, true), None);
    }
}
