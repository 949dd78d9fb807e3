//! An origin's response header fields as they came: the head's bytes and where each
//! field line lies in them.
//!
//! A response proxied to an HTTP/1.1 client keeps almost every field the origin sent, so
//! its lines are passed through as they are, less the ones the proxy removes, instead of
//! being parsed into a `HeaderMap` (a name lookup, a hash insert and a shared slice per
//! field) and encoded again. That was the largest piece of user CPU on an uncached
//! request. A `HeaderMap` is made from the lines only where one is needed: HTTP/2
//! clients, the cache, WebSocket upgrades.
//!
//! Names and values are what `httparse` accepted: token characters, and values without
//! CR, LF or other controls (obsolete line folding is refused), so writing them out
//! again cannot split a response.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// The field lines of one response head.
#[derive(Debug, Clone, Default)]
pub struct HeaderLines {
    head: Bytes,
    /// Name start and end, value start and end, as offsets into `head`.
    spans: Vec<[u32; 4]>,
}

impl HeaderLines {
    /// `spans` must lie within `head` (the parser made them from it).
    pub(super) fn new(head: Bytes, spans: Vec<[u32; 4]>) -> Self {
        debug_assert!(spans
            .iter()
            .all(|s| s[0] <= s[1] && s[2] <= s[3] && s[3] as usize <= head.len()));
        Self { head, spans }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Every field as (name, value), in the order received; names as the origin spelled
    /// them.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.spans.iter().map(|&s| self.field(s))
    }

    /// The values of every field called `name` (lower case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Keeps only the fields whose name `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8]) -> bool) {
        let head = &self.head;
        self.spans
            .retain(|s| keep(&head[s[0] as usize..s[1] as usize]));
    }

    /// Removes every field called `name` (lower case); whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.spans.len();
        self.retain(|n| !n.eq_ignore_ascii_case(name.as_bytes()));
        self.spans.len() != before
    }

    /// The fields as a `HeaderMap`, in order; values share the head's bytes. A field the
    /// http types refuse is left out, with a warning: httparse and they accept the same
    /// characters (origin_wire's tests check that), so none is expected.
    pub fn to_header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.spans.len());
        for &[ns, ne, vs, ve] in &self.spans {
            let name = HeaderName::from_bytes(&self.head[ns as usize..ne as usize]);
            let value = HeaderValue::from_maybe_shared(self.head.slice(vs as usize..ve as usize));
            match (name, value) {
                (Ok(name), Ok(value)) => {
                    map.append(name, value);
                }
                _ => tracing::warn!("origin response field not representable; left out"),
            }
        }
        map
    }

    fn field(&self, [ns, ne, vs, ve]: [u32; 4]) -> (&[u8], &[u8]) {
        (
            &self.head[ns as usize..ne as usize],
            &self.head[vs as usize..ve as usize],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &'static str) -> HeaderLines {
        // "name: value" per line; spans found by hand, as the parser would find them.
        let head = Bytes::from_static(text.as_bytes());
        let mut spans = Vec::new();
        let mut at = 0u32;
        for line in text.split("\r\n") {
            if let Some((n, v)) = line.split_once(": ") {
                let ns = at;
                let vs = ns + n.len() as u32 + 2;
                spans.push([ns, ns + n.len() as u32, vs, vs + v.len() as u32]);
            }
            at += line.len() as u32 + 2;
        }
        HeaderLines::new(head, spans)
    }

    #[test]
    fn fields_are_found_by_name_in_any_case_and_in_order() {
        let l = lines("Set-Cookie: a=1\r\nServer: o\r\nset-cookie: b=2\r\n");
        assert_eq!(l.len(), 3);
        let cookies: Vec<&[u8]> = l.get_all("set-cookie").collect();
        assert_eq!(cookies, [&b"a=1"[..], b"b=2"]);
        assert_eq!(l.get("server"), Some(&b"o"[..]));
        assert!(!l.contains("via"));
        let names: Vec<&[u8]> = l.iter().map(|(n, _)| n).collect();
        assert_eq!(names, [&b"Set-Cookie"[..], b"Server", b"set-cookie"]);
    }

    #[test]
    fn removal_keeps_the_order_of_the_rest() {
        let mut l = lines("A: 1\r\nServer: o\r\nB: 2\r\nSERVER: p\r\nC: 3\r\n");
        assert!(l.remove("server"));
        assert!(!l.remove("server"));
        let kept: Vec<(&[u8], &[u8])> = l.iter().collect();
        assert_eq!(kept, [(&b"A"[..], &b"1"[..]), (b"B", b"2"), (b"C", b"3")]);
    }

    #[test]
    fn a_header_map_holds_every_field_in_order() {
        let l = lines("X-A: 1\r\nx-a: 2\r\nContent-Type: text/plain\r\n");
        let map = l.to_header_map();
        assert_eq!(map.len(), 3);
        let xa: Vec<&str> = map
            .get_all("x-a")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(map["content-type"], "text/plain");
    }
}
