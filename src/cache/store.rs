//! The byte-bounded store: one entry per URL (primary key) holding its variants (Vary,
//! and our own compressed copies), in a moka cache weighed in bytes.
//!
//! Why moka: it weighs entries (so the bound is in bytes, not objects), evicts by a
//! TinyLFU-admitted LRU that resists one-hit scans, reports evictions (for metrics), and
//! can drop entries by predicate (for prefix purges) without a second index. quick_cache
//! is faster per lookup but has no predicate invalidation; the lookup is not where a
//! cache hit's time goes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use moka::notification::RemovalCause;

use super::body_file::BodyFile;
use super::rules::Freshness;

/// Content codings we produce and keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Coding {
    Identity,
    Gzip,
    Brotli,
}

impl Coding {
    pub fn token(&self) -> &'static str {
        match self {
            Coding::Identity => "identity",
            Coding::Gzip => "gzip",
            Coding::Brotli => "br",
        }
    }
}

/// One stored response.
#[derive(Debug)]
pub struct Variant {
    /// Normalised values of the request headers the response varies on, in the order of
    /// the entry's Vary names.
    pub vary_values: Vec<String>,
    /// The coding of `body` that we applied (Identity for what the origin sent).
    pub coding: Coding,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The sealed file `body` is mapped from, for a large identity body (`body_file`).
    pub file: Option<Arc<BodyFile>>,
    pub freshness: Freshness,
    /// The headers every answer from this variant starts from, made by the proxy on the
    /// first hit (the stored ones plus what it adds), so that a hit copies one map.
    pub served: OnceLock<HeaderMap>,
}

impl Variant {
    fn weight(&self) -> u64 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        // Twice the headers: the served copy holds them again.
        (self.body.len() + 2 * headers + 256) as u64
    }
}

/// Everything stored for one URL.
#[derive(Debug)]
pub struct Entry {
    /// Lower-case request header names the variants vary on.
    pub vary: Vec<String>,
    pub variants: Vec<Arc<Variant>>,
}

impl Entry {
    fn weight(&self) -> u32 {
        let total: u64 = self.variants.iter().map(|v| v.weight()).sum::<u64>() + 128;
        u32::try_from(total).unwrap_or(u32::MAX)
    }
}

/// At most this many variants per URL; a response that varies on something with many
/// values (User-Agent) must not turn one URL into the whole cache.
const MAX_VARIANTS: usize = 32;

pub struct Store {
    cache: moka::sync::Cache<Arc<str>, Arc<Entry>>,
    pub max_object_bytes: u64,
    evictions: Arc<AtomicU64>,
}

impl Store {
    pub fn new(max_bytes: u64, max_object_bytes: u64) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        let counter = evictions.clone();
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_k: &Arc<str>, v: &Arc<Entry>| v.weight())
            .eviction_listener(move |_k, _v, cause| {
                if matches!(cause, RemovalCause::Size) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
            .support_invalidation_closures()
            .build();
        Self {
            cache,
            max_object_bytes,
            evictions,
        }
    }

    /// The variants of `key` whose Vary values match the request's.
    pub fn lookup(
        &self,
        key: &str,
        request: &HeaderMap,
    ) -> Option<(Arc<Entry>, Vec<Arc<Variant>>)> {
        let entry = self.cache.get(key)?;
        let wanted = vary_values(&entry.vary, request);
        let matching: Vec<Arc<Variant>> = entry
            .variants
            .iter()
            .filter(|v| v.vary_values == wanted)
            .cloned()
            .collect();
        if matching.is_empty() {
            return None;
        }
        Some((entry, matching))
    }

    /// The variant of `key` in `coding` that matches the request's Vary values: what a
    /// hit needs, without collecting the others.
    pub fn variant(&self, key: &str, request: &HeaderMap, coding: Coding) -> Option<Arc<Variant>> {
        let entry = self.cache.get(key)?;
        let wanted = vary_values(&entry.vary, request);
        entry
            .variants
            .iter()
            .find(|v| v.coding == coding && v.vary_values == wanted)
            .cloned()
    }

    /// Stores a variant, replacing one with the same Vary values and coding. A response
    /// whose Vary names differ from the entry's starts a new entry (the origin changed
    /// what it varies on; old variants can no longer be matched correctly).
    pub fn insert(&self, key: &str, vary: Vec<String>, variant: Variant) -> bool {
        if variant.body.len() as u64 > self.max_object_bytes {
            return false;
        }
        let variant = Arc::new(variant);
        let mut variants = Vec::new();
        if let Some(existing) = self.cache.get(key) {
            if existing.vary == vary {
                variants.extend(
                    existing
                        .variants
                        .iter()
                        .filter(|v| {
                            !(v.vary_values == variant.vary_values && v.coding == variant.coding)
                        })
                        .cloned(),
                );
            }
        }
        // A fresh identity response makes our compressed copies of the old one stale.
        if variant.coding == Coding::Identity {
            variants.retain(|v| v.vary_values != variant.vary_values);
        }
        variants.push(variant);
        if variants.len() > MAX_VARIANTS {
            let excess = variants.len() - MAX_VARIANTS;
            variants.drain(..excess);
        }
        self.cache
            .insert(Arc::from(key), Arc::new(Entry { vary, variants }));
        true
    }

    /// Drops a URL with all its variants.
    pub fn purge(&self, key: &str) -> bool {
        self.cache.remove(key).is_some()
    }

    /// Drops every URL whose key starts with one of the prefixes; returns how many were
    /// found (moka removes them in the background, but no lookup sees them again).
    pub fn purge_prefixes(&self, prefixes: Vec<String>) -> u64 {
        let count = self
            .cache
            .iter()
            .filter(|(k, _)| prefixes.iter().any(|p| k.starts_with(p.as_str())))
            .count() as u64;
        let _ = self
            .cache
            .invalidate_entries_if(move |k, _| prefixes.iter().any(|p| k.starts_with(p.as_str())));
        count
    }

    pub fn bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    pub fn objects(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

/// The request's values for the Vary names, normalised where the header's definition
/// allows: Accept-Encoding is reduced to the coding we would choose, since that is the
/// only thing that changes the response; other fields are trimmed and joined.
pub fn vary_values(names: &[String], request: &HeaderMap) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            if name == "accept-encoding" {
                return preferred_coding(request).token().to_string();
            }
            request
                .get_all(name.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect()
}

/// The coding we would send this client: br, then gzip, then identity (q=0 excludes).
pub fn preferred_coding(request: &HeaderMap) -> Coding {
    let mut br = false;
    let mut gzip = false;
    for v in request.get_all(http::header::ACCEPT_ENCODING) {
        let Ok(text) = v.to_str() else { continue };
        for item in text.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let refused = parts.any(|p| {
                let p = p.trim();
                p.strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            if refused {
                continue;
            }
            match coding.as_str() {
                "br" => br = true,
                "gzip" | "x-gzip" => gzip = true,
                "*" => {
                    br = true;
                    gzip = true;
                }
                _ => {}
            }
        }
    }
    if br {
        Coding::Brotli
    } else if gzip {
        Coding::Gzip
    } else {
        Coding::Identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn variant(vary_values: Vec<String>, coding: Coding, size: usize) -> Variant {
        Variant {
            vary_values,
            coding,
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::from(vec![b'x'; size]),
            file: None,
            freshness: Freshness::from_response(StatusCode::OK, &HeaderMap::new(), 0, 0),
            served: OnceLock::new(),
        }
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        crate::test_support::header_map(pairs)
    }

    #[test]
    fn variants_are_matched_by_vary_values() {
        let s = Store::new(1 << 20, 1 << 16);
        let vary = vec!["accept-language".to_string()];
        s.insert(
            "k",
            vary.clone(),
            variant(vec!["en".into()], Coding::Identity, 10),
        );
        s.insert(
            "k",
            vary.clone(),
            variant(vec!["de".into()], Coding::Identity, 20),
        );
        let (_, v) = s.lookup("k", &req(&[("accept-language", "de")])).unwrap();
        assert_eq!(v[0].body.len(), 20);
        assert!(s.lookup("k", &req(&[("accept-language", "fr")])).is_none());
        assert!(s.purge("k"));
        assert!(
            s.lookup("k", &req(&[("accept-language", "en")])).is_none(),
            "all variants gone"
        );
    }

    #[test]
    fn one_variant_is_found_by_coding_and_vary_values() {
        let s = Store::new(1 << 20, 1 << 16);
        let vary = vec!["accept-language".to_string()];
        for (lang, coding, size) in [
            ("en", Coding::Identity, 10),
            ("en", Coding::Gzip, 7),
            ("de", Coding::Identity, 20),
        ] {
            s.insert("k", vary.clone(), variant(vec![lang.into()], coding, size));
        }
        let en = req(&[("accept-language", "en")]);
        let found = |coding| s.variant("k", &en, coding).map(|v| v.body.len());
        assert_eq!(found(Coding::Identity), Some(10));
        assert_eq!(found(Coding::Gzip), Some(7));
        assert_eq!(found(Coding::Brotli), None);
        let de = req(&[("accept-language", "de")]);
        assert_eq!(
            s.variant("k", &de, Coding::Gzip).map(|v| v.body.len()),
            None
        );
        assert!(s.variant("other", &en, Coding::Identity).is_none());
    }

    #[test]
    fn objects_over_the_limit_are_not_stored() {
        let s = Store::new(1 << 20, 100);
        assert!(!s.insert("k", vec![], variant(vec![], Coding::Identity, 101)));
        assert!(s.lookup("k", &HeaderMap::new()).is_none());
    }

    #[test]
    fn the_byte_bound_holds_under_churn() {
        let bound = 200_000;
        let s = Store::new(bound, 50_000);
        for i in 0..500 {
            s.insert(
                &format!("k{i}"),
                vec![],
                variant(vec![], Coding::Identity, 4_000),
            );
        }
        assert!(s.bytes() <= bound, "{} > {bound}", s.bytes());
        assert!(s.objects() < 500);
        assert!(s.evictions() > 0);
    }

    #[test]
    fn prefix_purge_drops_matching_urls_only() {
        let s = Store::new(1 << 20, 1 << 16);
        for k in [
            "https://a.test/img/1",
            "https://a.test/img/2",
            "https://a.test/css/1",
        ] {
            s.insert(k, vec![], variant(vec![], Coding::Identity, 10));
        }
        assert_eq!(s.purge_prefixes(vec!["https://a.test/img/".into()]), 2);
        assert!(s
            .lookup("https://a.test/img/1", &HeaderMap::new())
            .is_none());
        assert!(s
            .lookup("https://a.test/css/1", &HeaderMap::new())
            .is_some());
    }

    #[test]
    fn new_identity_response_drops_old_compressed_copies() {
        let s = Store::new(1 << 20, 1 << 16);
        s.insert("k", vec![], variant(vec![], Coding::Identity, 10));
        s.insert("k", vec![], variant(vec![], Coding::Gzip, 5));
        assert_eq!(s.lookup("k", &HeaderMap::new()).unwrap().1.len(), 2);
        s.insert("k", vec![], variant(vec![], Coding::Identity, 12));
        let (_, v) = s.lookup("k", &HeaderMap::new()).unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].body.len(), 12);
    }

    #[test]
    fn accept_encoding_preference() {
        assert_eq!(
            preferred_coding(&req(&[("accept-encoding", "gzip, deflate, br")])),
            Coding::Brotli
        );
        assert_eq!(
            preferred_coding(&req(&[("accept-encoding", "gzip, br;q=0")])),
            Coding::Gzip
        );
        assert_eq!(
            preferred_coding(&req(&[("accept-encoding", "deflate")])),
            Coding::Identity
        );
        assert_eq!(preferred_coding(&HeaderMap::new()), Coding::Identity);
        assert_eq!(
            vary_values(
                &["accept-encoding".into()],
                &req(&[("accept-encoding", "gzip,  br")])
            ),
            vec!["br"]
        );
    }
}
