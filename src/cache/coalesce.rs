//! Request coalescing: concurrent misses for one key make one origin request. The first
//! comes back as the leader and fetches; the others wait (bounded) for its outcome, then
//! read the cache, or go to the origin themselves if the response was not stored.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response is in the cache now.
    Stored,
    /// It was not stored (uncacheable, too big, failed): fetch for yourself.
    NotStored,
}

type Waiters = Mutex<HashMap<Arc<str>, watch::Receiver<Option<Outcome>>>>;

#[derive(Default)]
pub struct Coalescer {
    inflight: Arc<Waiters>,
}

pub enum Role {
    Leader(Leader),
    Follower(watch::Receiver<Option<Outcome>>),
}

/// The one request that fetches. Dropping it without `finish` (the client went away, a
/// panic) releases the followers with `NotStored`, so nobody waits for a fetch that will
/// never end.
pub struct Leader {
    key: Arc<str>,
    tx: watch::Sender<Option<Outcome>>,
    inflight: Arc<Waiters>,
    done: bool,
}

impl Leader {
    pub fn finish(mut self, outcome: Outcome) {
        self.release(outcome);
    }

    fn release(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        let _ = self.tx.send(Some(outcome));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.release(Outcome::NotStored);
    }
}

impl Coalescer {
    pub fn join(&self, key: &str) -> Role {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(key) {
            return Role::Follower(rx.clone());
        }
        let key: Arc<str> = Arc::from(key);
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx);
        Role::Leader(Leader {
            key,
            tx,
            inflight: self.inflight.clone(),
            done: false,
        })
    }

    /// Whether someone is fetching this key now (used to keep background refreshes to
    /// one at a time).
    pub fn busy(&self, key: &str) -> bool {
        self.inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key)
    }
}

/// Waits for the leader's outcome, at most `limit`; a timeout counts as NotStored.
pub async fn wait(mut rx: watch::Receiver<Option<Outcome>>, limit: Duration) -> Outcome {
    let waited = tokio::time::timeout(limit, async {
        loop {
            if let Some(outcome) = *rx.borrow() {
                return outcome;
            }
            if rx.changed().await.is_err() {
                return Outcome::NotStored;
            }
        }
    })
    .await;
    waited.unwrap_or(Outcome::NotStored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leader_many_followers() {
        let c = Coalescer::default();
        let Role::Leader(leader) = c.join("k") else {
            panic!("first is the leader")
        };
        let followers: Vec<_> = (0..10)
            .map(|_| match c.join("k") {
                Role::Follower(rx) => tokio::spawn(wait(rx, Duration::from_secs(5))),
                Role::Leader(_) => panic!("only one leader"),
            })
            .collect();
        leader.finish(Outcome::Stored);
        for f in followers {
            assert_eq!(f.await.unwrap(), Outcome::Stored);
        }
        assert!(
            matches!(c.join("k"), Role::Leader(_)),
            "the key is free again"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers() {
        let c = Coalescer::default();
        let leader = c.join("k");
        let Role::Follower(rx) = c.join("k") else {
            panic!()
        };
        drop(leader);
        assert_eq!(wait(rx, Duration::from_secs(5)).await, Outcome::NotStored);
        assert!(!c.busy("k"));
    }

    #[tokio::test]
    async fn followers_give_up_after_the_limit() {
        let c = Coalescer::default();
        let _leader = c.join("k");
        let Role::Follower(rx) = c.join("k") else {
            panic!()
        };
        assert_eq!(
            wait(rx, Duration::from_millis(20)).await,
            Outcome::NotStored
        );
    }
}
