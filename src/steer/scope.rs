//! The widest ECS scope an answer can carry: the largest aligned network around the client
//! over which every address ranks the regions the same way. A resolver may then cache one
//! answer for the whole network instead of one per GeoIP network, and because the whole
//! ranking (not only the first region) is the same across it, the answer stays right
//! whatever the regions' health does. Pure: built from the database's networks in address
//! order, each with an id of its ranking, once per config or database.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::geo::Location;
use crate::steer::{RegionId, RegionTable};

/// What makes two addresses rank alike: the country/continent override that applies (a
/// geofencing one answers differently when its region is down) and the region order.
/// CIDR overrides are not in it: they split networks at their own edges, and the answer
/// scope is narrowed to them where they overlap (see `dns::query::ecs`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ranking {
    pub rule: Option<usize>,
    pub order: Vec<RegionId>,
}

impl RegionTable {
    /// The ranking of a client at `location` (or without one), ignoring CIDR overrides.
    pub fn ranking(&self, location: Option<&Location>) -> Ranking {
        let rule = self.location_override(location);
        let coords = location.and_then(Location::coordinates);
        let mut keyed: Vec<(RegionId, (u8, f64))> = (0..self.regions.len())
            .map(|r| {
                let k = self.rank_key(r, rule, coords);
                (r, (k.0, k.1))
            })
            .collect();
        keyed.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap_or(std::cmp::Ordering::Equal));
        Ranking {
            rule,
            order: keyed.into_iter().map(|(r, _)| r).collect(),
        }
    }
}

/// Gives each distinct ranking a small number.
#[derive(Default)]
pub struct Rankings {
    ids: HashMap<Ranking, u32>,
}

impl Rankings {
    pub fn id(&mut self, ranking: Ranking) -> u32 {
        let next = self.ids.len() as u32;
        *self.ids.entry(ranking).or_insert(next)
    }
}

/// Merged networks of one address family, sorted: (first address, prefix length).
#[derive(Debug, Default, Clone)]
pub struct ScopeMap {
    v4: Vec<(u128, u8)>,
    v6: Vec<(u128, u8)>,
}

/// One network of the database with its ranking id, as the builder is fed them.
#[derive(Debug, Clone, Copy)]
struct Block {
    start: u128,
    /// Prefix length within the family (0..=32 or 0..=128).
    len: u8,
    id: u32,
}

fn bits(v6: bool) -> u8 {
    if v6 {
        128
    } else {
        32
    }
}

fn to_int(ip: IpAddr) -> (bool, u128) {
    match ip {
        IpAddr::V4(v4) => (false, u128::from(u32::from(v4))),
        IpAddr::V6(v6) => (true, u128::from(v6)),
    }
}

fn size(len: u8, v6: bool) -> u128 {
    let shift = bits(v6) - len;
    if shift >= 128 {
        u128::MAX
    } else {
        1u128 << shift
    }
}

/// Builds the merged map of one family from its networks in address order.
pub struct Builder {
    v6: bool,
    stack: Vec<Block>,
}

impl Builder {
    pub fn new(v6: bool) -> Self {
        Self {
            v6,
            stack: Vec::new(),
        }
    }

    /// Adds the next network (after every earlier one, in address order). Networks need
    /// not touch: a gap (an address the database does not cover) never merges.
    pub fn push(&mut self, net: IpNet, id: u32) {
        let (v6, start) = to_int(net.network());
        if v6 != self.v6 {
            return;
        }
        let mut block = Block {
            start,
            len: net.prefix_len(),
            id,
        };
        // Merge with the sibling on the stack while both halves of the parent rank alike.
        while let Some(top) = self.stack.last().copied() {
            let sibling = block.len > 0
                && top.len == block.len
                && top.id == block.id
                && top.start.checked_add(size(top.len, self.v6)) == Some(block.start)
                && top.start % size(top.len - 1, self.v6) == 0;
            if !sibling {
                break;
            }
            self.stack.pop();
            block = Block {
                start: top.start,
                len: top.len - 1,
                id: block.id,
            };
        }
        // A block that did not merge stays: only the top of the stack can meet its
        // sibling later, and a block below it whose sibling is mixed never merges.
        self.stack.push(block);
    }

    fn finish(self) -> Vec<(u128, u8)> {
        // In address order already: blocks came in order and merges keep it.
        self.stack.into_iter().map(|b| (b.start, b.len)).collect()
    }
}

impl ScopeMap {
    pub fn new(v4: Builder, v6: Builder) -> Self {
        Self {
            v4: v4.finish(),
            v6: v6.finish(),
        }
    }

    /// The prefix length of the merged network holding `ip`; `None` where the database
    /// has no network for it.
    pub fn scope(&self, ip: IpAddr) -> Option<u8> {
        let (v6, n) = to_int(ip);
        let list = if v6 { &self.v6 } else { &self.v4 };
        let i = list
            .partition_point(|&(start, _)| start <= n)
            .checked_sub(1)?;
        let (start, len) = list[i];
        (n - start < size(len, v6) || len == 0).then_some(len)
    }

    /// Merged networks of each family, for the metrics.
    pub fn counts(&self) -> (usize, usize) {
        (self.v4.len(), self.v6.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: for an address, the widest aligned prefix all of whose addresses
    /// have the same id (in a small IPv4 space given as an id per /28 of 10.0.0.0/24).
    fn widest(ids: &[u32; 16], i: usize) -> u8 {
        let mut len = 28u8;
        while len > 24 {
            let parent = len - 1;
            let span = 1usize << (28 - parent);
            let first = i / span * span;
            if ids[first..first + span].iter().all(|&x| x == ids[i]) {
                len = parent;
            } else {
                break;
            }
        }
        len
    }

    fn map_of(ids: &[u32; 16]) -> ScopeMap {
        let mut b4 = Builder::new(false);
        for (i, id) in ids.iter().enumerate() {
            let net: IpNet = format!("10.0.0.{}/28", i * 16).parse().unwrap();
            b4.push(net, *id);
        }
        ScopeMap::new(b4, Builder::new(true))
    }

    #[test]
    fn every_scope_is_the_widest_prefix_with_one_ranking_by_brute_force() {
        // A small xorshift, so the cases are the same every run.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            let mut ids = [0u32; 16];
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let kinds = 1 + (x % 3) as u32;
            for (i, id) in ids.iter_mut().enumerate() {
                *id = ((x >> (i * 3)) as u32) % kinds;
            }
            let map = map_of(&ids);
            for i in 0..16 {
                let ip: IpAddr = format!("10.0.0.{}", i * 16 + 5).parse().unwrap();
                // Merging stops at the /24 here: outside it is not in the map.
                let got = map.scope(ip).unwrap().max(24);
                assert_eq!(got, widest(&ids, i), "ids {ids:?}, block {i}");
            }
        }
    }

    #[test]
    fn gaps_never_merge_and_are_not_covered() {
        let mut b4 = Builder::new(false);
        b4.push("10.0.0.0/25".parse().unwrap(), 1);
        // 10.0.0.128/25 is missing: 10.0.0.0/25 stays a /25.
        b4.push("10.0.1.0/25".parse().unwrap(), 1);
        b4.push("10.0.1.128/25".parse().unwrap(), 1);
        let map = ScopeMap::new(b4, Builder::new(true));
        assert_eq!(map.scope("10.0.0.5".parse().unwrap()), Some(25));
        assert_eq!(map.scope("10.0.0.200".parse().unwrap()), None);
        assert_eq!(map.scope("10.0.1.200".parse().unwrap()), Some(24));
    }

    #[test]
    fn a_whole_family_of_one_ranking_is_scope_zero() {
        let mut b6 = Builder::new(true);
        b6.push("::/1".parse().unwrap(), 3);
        b6.push("8000::/1".parse().unwrap(), 3);
        let map = ScopeMap::new(Builder::new(false), b6);
        assert_eq!(map.scope("2001:db8::1".parse().unwrap()), Some(0));
    }
}
