//! Shedding at run time: each region's utilisation (the mean over its up nodes of what
//! their reports say), the share of its clients in force (`steer::shed` decides how it
//! moves), and counters. The query path reads shares with one atomic load; the ticker
//! steps them once per `SHED_INTERVAL`.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::config::DnsConfig;
use crate::health::HealthTable;
use crate::steer::shed::{LoopTiming, Shed, StepView, Watermarks};
use crate::steer::{RegionId, RegionTable};

/// How often shares move: the proxies' default report interval, so one step follows
/// one fresh report from every node.
pub const SHED_INTERVAL: Duration = Duration::from_millis(250);

const SHARE_SCALE: f64 = 1_000_000.0;
const UNKNOWN: u32 = u32::MAX;

pub struct ShedTable {
    marks: Vec<Option<Watermarks>>,
    names: Vec<String>,
    /// Share × `SHARE_SCALE`, per region.
    shares: Vec<AtomicU32>,
    /// Utilisation × `SHARE_SCALE` (`UNKNOWN` when no up node reports one), per region.
    utilisation: Vec<AtomicU32>,
    steps: Mutex<Vec<Shed>>,
    /// What the last step of each region saw, for `/status`.
    views: Mutex<Vec<Option<StepView>>>,
    timing: LoopTiming,
    /// Decisions that moved a client away from its region, per region it left.
    pub moved: Vec<AtomicU64>,
    /// Decisions that would have moved a client but found every other region full.
    pub all_full: AtomicU64,
}

impl ShedTable {
    pub fn new(cfg: &DnsConfig) -> Self {
        let n = cfg.regions.len();
        Self {
            marks: cfg
                .regions
                .iter()
                .map(|r| r.watermarks.map(|(low, high)| Watermarks { low, high }))
                .collect(),
            names: cfg.regions.iter().map(|r| r.name.clone()).collect(),
            shares: (0..n).map(|_| AtomicU32::new(0)).collect(),
            utilisation: (0..n).map(|_| AtomicU32::new(UNKNOWN)).collect(),
            steps: Mutex::new(vec![Shed::default(); n]),
            views: Mutex::new(vec![None; n]),
            timing: loop_timing(cfg),
            moved: (0..n).map(|_| AtomicU64::new(0)).collect(),
            all_full: AtomicU64::new(0),
        }
    }

    /// Whether any region sheds at all (the query path skips everything otherwise).
    pub fn enabled(&self) -> bool {
        self.marks.iter().any(Option::is_some)
    }

    #[inline]
    pub fn share(&self, region: RegionId) -> f64 {
        self.shares
            .get(region)
            .map(|s| f64::from(s.load(Ordering::Relaxed)) / SHARE_SCALE)
            .unwrap_or(0.0)
    }

    pub fn utilisation(&self, region: RegionId) -> Option<f64> {
        let u = self.utilisation.get(region)?.load(Ordering::Relaxed);
        (u != UNKNOWN).then(|| f64::from(u) / SHARE_SCALE)
    }

    /// A region may take spilled clients: it has no watermarks, reports no load, or is
    /// below its high watermark.
    pub fn has_room(&self, region: RegionId) -> bool {
        match (
            self.marks.get(region).copied().flatten(),
            self.utilisation(region),
        ) {
            (Some(m), Some(u)) => u < m.high,
            _ => true,
        }
    }

    /// One interval: region utilisations from the nodes' latest reports, then one step of
    /// every share. Returns whether any share changed (remembered decisions are stale).
    pub fn step(&self, table: &RegionTable, health: &HealthTable) -> bool {
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = false;
        for (r, region) in table.regions.iter().enumerate() {
            let reported: Vec<f64> = region
                .nodes
                .clone()
                .filter(|&n| health.is_up(n))
                .filter_map(|n| health.utilisation(n))
                .collect();
            let utilisation = (!reported.is_empty())
                .then(|| reported.iter().sum::<f64>() / reported.len() as f64);
            let had_room = self.has_room(r);
            if let Some(slot) = self.utilisation.get(r) {
                let stored = utilisation
                    .map(|u| (u * SHARE_SCALE).clamp(0.0, f64::from(UNKNOWN - 1)) as u32)
                    .unwrap_or(UNKNOWN);
                slot.store(stored, Ordering::Relaxed);
            }
            // A region that filled up (or made room) changes where others' clients spill.
            changed |= had_room != self.has_room(r);
            let (Some(marks), Some(step), Some(slot)) = (
                self.marks.get(r).copied().flatten(),
                steps.get_mut(r),
                self.shares.get(r),
            ) else {
                continue;
            };
            // No figures (no node reports a capacity, or none is up): nothing to shed by.
            let (share, view) = step.advance(marks, utilisation.unwrap_or(0.0), self.timing);
            if let Some(v) = self
                .views
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(r)
            {
                *v = Some(view);
            }
            let scaled = (share * SHARE_SCALE) as u32;
            if slot.swap(scaled, Ordering::Relaxed) != scaled {
                changed = true;
            }
        }
        changed
    }

    /// Keeps the previous table's shares for regions of the same name (a reload).
    pub fn carry_over(&self, previous: &ShedTable) {
        self.all_full
            .store(previous.all_full.load(Ordering::Relaxed), Ordering::Relaxed);
        let old = previous.steps.lock().unwrap_or_else(|p| p.into_inner());
        let mut steps = self.steps.lock().unwrap_or_else(|p| p.into_inner());
        for (r, name) in self.names.iter().enumerate() {
            if let Some(p) = previous.names.iter().position(|n| n == name) {
                steps[r] = old[p].clone();
                self.shares[r].store(
                    previous.shares[p].load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                self.utilisation[r].store(
                    previous.utilisation[p].load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                self.moved[r].store(previous.moved[p].load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// What the last step of `region` saw: smoothed utilisation, the share its load was
    /// measured under, the demand unshed and the rest point aimed at.
    pub fn view(&self, region: RegionId) -> Option<StepView> {
        self.views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(region)
            .copied()
            .flatten()
    }

    pub fn timing(&self) -> LoopTiming {
        self.timing
    }

    /// Where `region`'s utilisation stands against its watermarks.
    pub fn watermark_state(&self, region: RegionId) -> &'static str {
        let Some(marks) = self.marks.get(region).copied().flatten() else {
            return "none";
        };
        match self.utilisation(region) {
            None => "unknown",
            Some(u) if u <= marks.low => "below_low",
            Some(u) if u < marks.high => "between",
            Some(_) => "above_high",
        }
    }

    pub fn watermarks(&self, region: RegionId) -> Option<Watermarks> {
        self.marks.get(region).copied().flatten()
    }
}

/// How long a client keeps an answer: the steered names' longest TTL, plus two steps for
/// the reports' lag (a report covers the interval before it, and is read a step later).
fn loop_timing(cfg: &DnsConfig) -> LoopTiming {
    let ttl = cfg
        .zones
        .iter()
        .flat_map(|z| &z.steered)
        .map(|s| s.ttl)
        .max()
        .unwrap_or(0);
    let step_secs = SHED_INTERVAL.as_secs_f64();
    LoopTiming {
        step_secs,
        delay_secs: f64::from(ttl) + 2.0 * step_secs,
    }
}
