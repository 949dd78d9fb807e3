//! Steering decisions remembered by a receive loop, and the GeoIP records behind them.
//!
//! Most queries come from a few resolvers or client subnets, so most decisions repeat;
//! decoding a GeoIP record is most of the cost of making one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::geo::{GeoDb, GeoError, Location};

/// Where a steered query goes and the ECS scope of the answer: everything in a steered
/// answer that depends on the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub region: usize,
    pub fail_open: bool,
    pub scope: u8,
}

/// Remembers decisions per (deciding address, ECS source prefix), for one receive loop.
/// Most queries come from a few resolvers or client subnets, so most decisions repeat.
/// The cache belongs to one state and one health generation: a reload, a new GeoIP
/// database or any node changing state empties it. Behind it, decoded GeoIP locations
/// are remembered per database record, which outlives health changes.
pub struct DecisionCache {
    /// Holding the state keeps its address from being reused while we compare to it.
    owner: Option<Arc<crate::dns::state::DnsState>>,
    generation: u64,
    slots: Box<[Slot]>,
    locations: LocationCache,
}

#[derive(Clone, Copy)]
struct Slot {
    address: u128,
    /// Family and source prefix; `EMPTY` for an unused slot.
    tag: u16,
    region: u16,
    fail_open: bool,
    scope: u8,
}

const EMPTY: u16 = u16::MAX;
const EMPTY_SLOT: Slot = Slot {
    address: 0,
    tag: EMPTY,
    region: 0,
    fail_open: false,
    scope: 0,
};

impl DecisionCache {
    /// `slots` is rounded up to a power of two; 0 disables caching.
    pub fn new(slots: usize) -> Self {
        let slots = if slots == 0 {
            0
        } else {
            slots.next_power_of_two()
        };
        Self {
            owner: None,
            generation: 0,
            slots: vec![EMPTY_SLOT; slots].into_boxed_slice(),
            locations: LocationCache::default(),
        }
    }

    /// Makes the cache valid for `state` at health `generation`, emptying it if either
    /// changed since the last query.
    pub fn prepare(&mut self, state: &Arc<crate::dns::state::DnsState>, generation: u64) {
        let same = self.owner.as_ref().is_some_and(|o| Arc::ptr_eq(o, state));
        if !same {
            self.locations.clear();
        }
        if !same || self.generation != generation {
            self.slots.fill(EMPTY_SLOT);
            self.owner = Some(state.clone());
            self.generation = generation;
        }
    }

    fn index(&self, address: u128, tag: u16) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let folded = (address as u64) ^ ((address >> 64) as u64) ^ u64::from(tag);
        let hash = folded.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Some((hash >> 32) as usize & (self.slots.len() - 1))
    }

    /// The cached decision, or `decide()`'s (given the location cache), which is then
    /// remembered.
    pub fn get_or(
        &mut self,
        address: IpAddr,
        source_prefix: u8,
        decide: impl FnOnce(&mut LocationCache) -> Option<Decision>,
    ) -> Option<Decision> {
        let (bits, family) = match address {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 0u16),
            IpAddr::V6(a) => (u128::from(a), 1u16),
        };
        let tag = family << 8 | u16::from(source_prefix);
        let Some(i) = self.index(bits, tag) else {
            return decide(&mut self.locations);
        };
        let slot = self.slots[i];
        if slot.tag == tag && slot.address == bits {
            return Some(Decision {
                region: usize::from(slot.region),
                fail_open: slot.fail_open,
                scope: slot.scope,
            });
        }
        let decision = decide(&mut self.locations)?;
        // Region numbers beyond u16 are not remembered (no real config has them).
        if let Ok(region) = u16::try_from(decision.region) {
            self.slots[i] = Slot {
                address: bits,
                tag,
                region,
                fail_open: decision.fail_open,
                scope: decision.scope,
            };
        }
        Some(decision)
    }
}

/// Decoded GeoIP locations by data-section offset. Decoding a record is most of a
/// lookup's cost, and a database has far fewer records than networks.
#[derive(Default)]
pub struct LocationCache {
    locations: HashMap<usize, Option<Location>>,
}

/// Records remembered before the cache starts over (a real City database has a few
/// hundred thousand; the working set of a server is far smaller).
const LOCATIONS_MAX: usize = 65_536;

impl LocationCache {
    fn clear(&mut self) {
        self.locations.clear();
    }

    /// The location of `ip` and the network that decided it, as `GeoDb::lookup` gives.
    pub fn lookup(
        &mut self,
        geo: &GeoDb,
        ip: IpAddr,
    ) -> Result<(Option<Location>, IpNet), GeoError> {
        let (network, offset) = geo.locate(ip)?;
        let Some(offset) = offset else {
            return Ok((None, network));
        };
        if let Some(location) = self.locations.get(&offset) {
            return Ok((*location, network));
        }
        let location = geo.lookup(ip)?.location;
        if self.locations.len() >= LOCATIONS_MAX {
            self.locations.clear();
        }
        self.locations.insert(offset, location);
        Ok((location, network))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_cache_remembers_per_address_and_prefix() {
        let mut cache = DecisionCache::new(64);
        let d = Decision {
            region: 2,
            fail_open: false,
            scope: 24,
        };
        let a: IpAddr = "192.0.2.0".parse().unwrap();
        let mut calls = 0;
        for _ in 0..3 {
            let got = cache.get_or(a, 24, |_| {
                calls += 1;
                Some(d)
            });
            assert_eq!(got, Some(d));
        }
        assert_eq!(calls, 1);
        let other = cache.get_or(a, 20, |_| {
            calls += 1;
            Some(Decision { scope: 20, ..d })
        });
        assert_eq!(other.map(|d| d.scope), Some(20));
        assert_eq!(calls, 2);
        let mut off = DecisionCache::new(0);
        let mut uncached = 0;
        for _ in 0..2 {
            off.get_or(a, 24, |_| {
                uncached += 1;
                Some(d)
            });
        }
        assert_eq!(uncached, 2);
    }

    #[test]
    fn location_cache_agrees_with_the_database() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let geo = GeoDb::open(&root.join("geo/geoedge-demo.mmdb")).expect("demo database");
        let mut cache = LocationCache::default();
        let addresses = [
            "192.0.2.1",
            "192.0.2.200",
            "198.51.100.7",
            "203.0.113.9",
            "2001:db8:1::1",
            "2001:db8:3:ff::1",
            "8.8.8.8",
            "127.0.0.1",
        ];
        for _ in 0..2 {
            for a in addresses {
                let ip: IpAddr = a.parse().unwrap();
                let direct = geo.lookup(ip).expect("lookup");
                let (location, network) = cache.lookup(&geo, ip).expect("cached lookup");
                assert_eq!(location, direct.location, "{a}");
                assert_eq!(network, direct.network, "{a}");
            }
        }
        assert!(!cache.locations.is_empty(), "records were remembered");
        assert!(
            cache.locations.len() < addresses.len(),
            "shared records are decoded once"
        );
    }
}
