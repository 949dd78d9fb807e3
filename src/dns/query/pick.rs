//! Which of a region's nodes an answer names: the up ones, at most `answers`, rotated
//! so that successive queries spread over them.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::health::NodeId;

/// The rotation shared by every query of a handler.
#[derive(Debug, Default)]
pub struct Rotation(AtomicUsize);

impl Rotation {
    /// The nodes of the chosen region to answer with: the up ones (all of them when
    /// failing open, or when the region is up through nodes of the other family only,
    /// rather than an empty answer), at most `answers`, rotated so that successive
    /// queries spread over them. Allocates nothing.
    pub fn pick<'s, T>(
        &self,
        candidates: &'s [(NodeId, T)],
        health: &'s crate::health::HealthTable,
        fail_open: bool,
        answers: usize,
        services: u64,
    ) -> impl Iterator<Item = &'s (NodeId, T)> + 's {
        let usable = move |node: NodeId| fail_open || health.is_up_for(node, services);
        let mut count = candidates.iter().filter(|(n, _)| usable(*n)).count();
        let every = count == 0;
        if every {
            count = candidates.len();
        }
        let (start, take) = if count > answers {
            let start = self.0.fetch_add(1, Ordering::Relaxed) % count;
            (start, answers)
        } else {
            (0, count)
        };
        candidates
            .iter()
            .filter(move |(n, _)| every || usable(*n))
            .cycle()
            .skip(start)
            .take(take)
    }
}
