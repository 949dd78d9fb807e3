//! Helpers shared by unit tests.

use http::{HeaderMap, HeaderName, HeaderValue};

/// A header map from (name, value) pairs, repeated names appended in order.
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("test header name"),
            HeaderValue::from_str(v).expect("test header value"),
        );
    }
    h
}

/// A waker that counts its wake-ups, for checking what a poll scheduled.
#[derive(Default)]
pub struct CountingWaker(std::sync::atomic::AtomicUsize);

impl CountingWaker {
    pub fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::task::Wake for CountingWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Deterministic damage to wire bytes, for checking that parsers refuse or defer what
/// they cannot take and never panic: a fixed-seed xorshift, so a failure replays.
pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }

    /// `seed` with one to four changes: bytes replaced, inserted, removed, cut off, or a
    /// stretch repeated. Inserted bytes favour those that matter to HTTP framing.
    pub fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        const TELLING: &[u8] = b"\r\n :;,\t\0\x7f\xff0123456789abcdefABCDEF-+";
        let mut out = seed.to_vec();
        for _ in 0..=self.below(4) {
            let at = self.below(out.len() + 1);
            let byte = if self.below(3) == 0 {
                self.below(256) as u8
            } else {
                TELLING[self.below(TELLING.len())]
            };
            match self.below(5) {
                0 if at < out.len() => out[at] = byte,
                1 => out.insert(at, byte),
                2 if at < out.len() => {
                    out.remove(at);
                }
                3 => out.truncate(at),
                _ => {
                    let end = (at + 1 + self.below(16)).min(out.len());
                    let stretch = out[at.min(end)..end].to_vec();
                    out.splice(at..at, stretch);
                }
            }
        }
        out
    }
}
