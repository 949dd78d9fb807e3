//! The dns-01 challenges a DNS server publishes: TXT values per domain, each until it
//! expires or is withdrawn. Bounded, so a leaked key cannot grow it without end.

use std::collections::HashMap;
use std::sync::Mutex;

/// At most this many values at once, over all domains.
pub const MAX_CHALLENGES: usize = 1024;

#[derive(Default)]
pub struct ChallengeTable {
    /// Lower-case domain without the trailing dot -> (value, expiry in unix ms).
    entries: Mutex<HashMap<String, Vec<(String, u64)>>>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("the challenge table is full ({MAX_CHALLENGES} values)")]
    Full,
}

fn key_of(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

impl ChallengeTable {
    /// Adds `value` for `domain` until `expires_ms` (an existing one is extended).
    pub fn publish(
        &self,
        domain: &str,
        value: &str,
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<(), PublishError> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        purge(&mut entries, now_ms);
        let key = key_of(domain);
        if let Some(v) = entries
            .get_mut(&key)
            .and_then(|values| values.iter_mut().find(|(v, _)| v == value))
        {
            v.1 = v.1.max(expires_ms);
            return Ok(());
        }
        let total: usize = entries.values().map(Vec::len).sum();
        if total >= MAX_CHALLENGES {
            return Err(PublishError::Full);
        }
        entries
            .entry(key)
            .or_default()
            .push((value.to_string(), expires_ms));
        Ok(())
    }

    pub fn withdraw(&self, domain: &str, value: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = key_of(domain);
        if let Some(values) = entries.get_mut(&key) {
            values.retain(|(v, _)| v != value);
            if values.is_empty() {
                entries.remove(&key);
            }
        }
    }

    /// The values in force for `domain` (several while a renewal and a new name overlap).
    pub fn values(&self, domain: &str, now_ms: u64) -> Vec<String> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(&key_of(domain))
            .map(|values| {
                values
                    .iter()
                    .filter(|(_, expires)| *expires > now_ms)
                    .map(|(v, _)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether any challenge is published at all: queries skip the table when none is.
    pub fn is_empty(&self) -> bool {
        self.entries.lock().map(|e| e.is_empty()).unwrap_or(true)
    }
}

fn purge(entries: &mut HashMap<String, Vec<(String, u64)>>, now_ms: u64) {
    entries.retain(|_, values| {
        values.retain(|(_, expires)| *expires > now_ms);
        !values.is_empty()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_served_until_they_expire_or_are_withdrawn() {
        let t = ChallengeTable::default();
        t.publish("WWW.example.test.", "a", 1_000, 0).unwrap();
        t.publish("www.example.test", "b", 2_000, 0).unwrap();
        assert_eq!(t.values("www.example.test", 500), vec!["a", "b"]);
        assert_eq!(t.values("www.example.test", 1_500), vec!["b"]);
        t.withdraw("www.example.test", "b");
        assert!(t.values("www.example.test", 1_500).is_empty());
        assert!(t.values("other.test", 0).is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_expired_values_make_room() {
        let t = ChallengeTable::default();
        for i in 0..MAX_CHALLENGES {
            t.publish(&format!("n{i}.test"), "v", 1_000, 0).unwrap();
        }
        assert_eq!(
            t.publish("one-more.test", "v", 1_000, 0),
            Err(PublishError::Full)
        );
        // Publishing the same value again only extends it.
        assert_eq!(t.publish("n1.test", "v", 5_000, 0), Ok(()));
        assert_eq!(t.publish("one-more.test", "v", 9_000, 2_000), Ok(()));
        assert_eq!(t.values("n1.test", 2_000), vec!["v"]);
    }
}
