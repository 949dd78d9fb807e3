//! The HTTP/1.1 wire rules for talking to an origin, without I/O: how a request head is
//! written and its body announced, how a response head is parsed, and what its framing
//! and keep-alive say (RFC 9112 §6). `origin_conn` drives a connection by them.

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, StatusCode, Version};

use crate::proxy::header_lines::HeaderLines;

/// A response head larger than this is refused (nginx's default proxy buffer is 4–8 KiB;
/// HAProxy's whole buffer is 16 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the origin closes the connection.
    Close,
}

/// Decides the response body's framing, or why the head cannot be trusted.
pub fn framing(
    request_method: &Method,
    status: StatusCode,
    headers: &HeaderLines,
) -> Result<Framing, &'static str> {
    if request_method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if let Some(coding) = headers.get_all("transfer-encoding").last() {
        // Transfer-Encoding overrides Content-Length; a final coding other than chunked
        // means the body runs to the close.
        let chunked = coding
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    let mut length = None;
    for value in headers.get_all("content-length") {
        let text = std::str::from_utf8(value).map_err(|_| "bad Content-Length")?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err("bad Content-Length");
            }
            let n: u64 = part.parse().map_err(|_| "bad Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length values");
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::Close,
    })
}

/// Whether the origin lets the connection carry another request after this response.
pub fn keeps_alive(version: Version, headers: &HeaderLines) -> bool {
    let mut close = version != Version::HTTP_11;
    for value in headers.get_all("connection") {
        for token in value.split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"close") {
                return false;
            }
            if token.eq_ignore_ascii_case(b"keep-alive") {
                close = false;
            }
        }
    }
    !close
}

/// How the request body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upload {
    None,
    /// As-is, after the client's Content-Length.
    Length(u64),
    Chunked,
}

/// Writes the request line and headers. The caller has removed hop-by-hop headers.
///
/// The body sent decides the framing, not the client's headers: a request whose body is
/// not forwarded (a GET on a caching route, a revalidation) must not keep the client's
/// `Content-Length`, or the origin would take that many bytes of the next request on this
/// connection, perhaps another client's, as its body.
pub(crate) fn encode_head(
    out: &mut Vec<u8>,
    head: &http::request::Parts,
    bodyless: bool,
) -> Upload {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
        if name == CONTENT_LENGTH || name == TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let declared = head
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let upload = match (bodyless, declared) {
        (true, _) => {
            // RFC 9110 §8.6: a request whose method expects content says its length.
            if declared.is_some()
                || matches!(head.method, Method::POST | Method::PUT | Method::PATCH)
            {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Upload::None
        }
        (false, Some(n)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
            Upload::Length(n)
        }
        (false, None) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Upload::Chunked
        }
    };
    out.extend_from_slice(b"\r\n");
    upload
}

/// A parsed response head.
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderLines,
    pub framing: Framing,
}

/// Parses one response head off the front of `buf`; None until it is complete.
pub(crate) fn parse_head(
    buf: &mut BytesMut,
) -> Result<Option<(StatusCode, Version, HeaderLines)>, &'static str> {
    // Uninitialised slots: zeroing 128 of them per response showed in profiles.
    let mut slots =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut slots,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Err("response head too large")
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
        Err(_) => return Err("malformed response head"),
    };
    if len > MAX_HEAD_BYTES {
        return Err("response head too large");
    }
    let status = response
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or("bad status code")?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // The fields stay in the head's bytes: remember where each lies (offsets fit in u32:
    // the head is at most MAX_HEAD_BYTES), then freeze the head.
    let base = buf.as_ptr() as usize;
    let offset = |p: *const u8| (p as usize - base) as u32;
    let spans = response
        .headers
        .iter()
        .map(|h| {
            let name = offset(h.name.as_ptr());
            let value = offset(h.value.as_ptr());
            [
                name,
                name + h.name.len() as u32,
                value,
                value + h.value.len() as u32,
            ]
        })
        .collect();
    let head = buf.split_to(len).freeze();
    Ok(Some((status, version, HeaderLines::new(head, spans))))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request head, for these tests and `origin_conn`'s.
    pub(in crate::proxy) fn parts(
        method: &str,
        target: &str,
        pairs: &[(&str, &str)],
    ) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(target);
        for (k, v) in pairs {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderLines {
        let mut wire = String::from("HTTP/1.1 200 OK\r\n");
        for (k, v) in pairs {
            wire.push_str(&format!("{k}: {v}\r\n"));
        }
        wire.push_str("\r\n");
        let (_, _, lines) = parse_head(&mut BytesMut::from(wire.as_str()))
            .unwrap()
            .unwrap();
        lines
    }

    #[test]
    fn framing_follows_rfc_9112_section_6_3() {
        let ok = StatusCode::OK;
        let get = Method::GET;
        let cl = headers(&[("content-length", "10")]);
        assert_eq!(framing(&Method::HEAD, ok, &cl), Ok(Framing::Empty));
        assert_eq!(
            framing(&get, StatusCode::NO_CONTENT, &cl),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(&get, StatusCode::NOT_MODIFIED, &cl),
            Ok(Framing::Empty)
        );
        assert_eq!(framing(&get, ok, &cl), Ok(Framing::Length(10)));
        assert_eq!(
            framing(&get, ok, &headers(&[("content-length", "0")])),
            Ok(Framing::Empty)
        );
        // Transfer-Encoding wins over Content-Length.
        let both = headers(&[("content-length", "10"), ("transfer-encoding", "chunked")]);
        assert_eq!(framing(&get, ok, &both), Ok(Framing::Chunked));
        let gzip_last = headers(&[("transfer-encoding", "chunked, gzip")]);
        assert_eq!(framing(&get, ok, &gzip_last), Ok(Framing::Close));
        assert_eq!(framing(&get, ok, &headers(&[])), Ok(Framing::Close));
        // Repeated equal values are one length; different ones are not to be trusted.
        let same = headers(&[("content-length", "7, 7"), ("content-length", "7")]);
        assert_eq!(framing(&get, ok, &same), Ok(Framing::Length(7)));
        let differ = headers(&[("content-length", "7"), ("content-length", "8")]);
        assert!(framing(&get, ok, &differ).is_err());
        for bad in ["-1", "+5", "0x10", "", "1 2", "99999999999999999999999"] {
            let h = headers(&[("content-length", bad)]);
            assert!(framing(&get, ok, &h).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn keep_alive_by_version_and_connection_tokens() {
        assert!(keeps_alive(Version::HTTP_11, &headers(&[])));
        assert!(!keeps_alive(
            Version::HTTP_11,
            &headers(&[("connection", "Close")])
        ));
        assert!(!keeps_alive(
            Version::HTTP_11,
            &headers(&[("connection", "keep-alive, close")])
        ));
        assert!(!keeps_alive(Version::HTTP_10, &headers(&[])));
        assert!(keeps_alive(
            Version::HTTP_10,
            &headers(&[("connection", "Keep-Alive")])
        ));
    }

    #[test]
    fn request_heads_announce_their_body() {
        let mut out = Vec::new();
        let up = encode_head(&mut out, &parts("GET", "/a?b=c", &[("host", "x")]), true);
        assert_eq!(up, Upload::None);
        assert_eq!(out, b"GET /a?b=c HTTP/1.1\r\nhost: x\r\n\r\n");

        out.clear();
        encode_head(&mut out, &parts("POST", "/", &[]), true);
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n");

        out.clear();
        let up = encode_head(
            &mut out,
            &parts("PUT", "/", &[("content-length", "3")]),
            false,
        );
        assert_eq!(up, Upload::Length(3));

        out.clear();
        let up = encode_head(&mut out, &parts("POST", "/", &[]), false);
        assert_eq!(up, Upload::Chunked);
        assert!(out.ends_with(b"transfer-encoding: chunked\r\n\r\n"));
    }

    #[test]
    fn a_request_sent_without_its_body_does_not_keep_the_clients_length() {
        // A GET with a body on a caching route goes to the origin without it: a kept
        // `Content-Length: 5` would make the origin read the next request's first 5 bytes.
        let mut out = Vec::new();
        let get = parts("GET", "/", &[("content-length", "5"), ("host", "x")]);
        assert_eq!(encode_head(&mut out, &get, true), Upload::None);
        assert_eq!(
            out,
            b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
        );

        out.clear();
        let up = encode_head(
            &mut out,
            &parts("PUT", "/", &[("content-length", "3"), ("x-a", "b")]),
            false,
        );
        assert_eq!(up, Upload::Length(3));
        assert_eq!(
            out,
            b"PUT / HTTP/1.1\r\nx-a: b\r\ncontent-length: 3\r\n\r\n"
        );
    }

    #[test]
    fn damaged_response_heads_are_refused_or_taken_exactly() {
        let seeds: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: o\r\n\r\nhello",
            b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n",
        ];
        let mut m = crate::test_support::Mutator::new(0x2545_f491_4f6c_dd1d);
        let (mut taken, mut refused) = (0, 0);
        for i in 0..20_000 {
            let wire = m.mutate(seeds[i % seeds.len()]);
            let mut buf = BytesMut::from(&wire[..]);
            match parse_head(&mut buf) {
                Ok(Some((status, _, headers))) => {
                    taken += 1;
                    let used = wire.len() - buf.len();
                    assert!(used > 0, "{wire:?}");
                    assert_eq!(&wire[used..], &buf[..], "{wire:?}");
                    for method in [Method::GET, Method::HEAD] {
                        let _ = framing(&method, status, &headers);
                    }
                    let _ = keeps_alive(Version::HTTP_11, &headers);
                    // What httparse takes, the http types take: a head passed through
                    // can always become a HeaderMap for HTTP/2 or the cache.
                    let map = headers.to_header_map();
                    assert_eq!(map.len(), headers.len(), "{wire:?}");
                }
                Ok(None) => assert_eq!(&buf[..], &wire[..], "nothing taken"),
                Err(_) => refused += 1,
            }
        }
        assert!(
            taken > 1000 && refused > 100,
            "{taken} taken, {refused} refused"
        );
    }
}
