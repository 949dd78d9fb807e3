//! What `fast_h1` takes from the front of its read buffer: a whole request it serves
//! (head, and a small body that came with it), a head it refuses, or one that is hyper's
//! to judge, left untouched. The decisions are in the module doc of `fast_h1`.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;

use crate::proxy::http::refused::Refusal;

/// Header slots on the stack; a head with more goes to hyper, which applies the
/// configured limit.
pub(crate) const HEADER_SLOTS: usize = 100;

/// Read buffer: room for a typical head, grown for larger ones up to the header limit.
pub(crate) const READ_BUF: usize = 8192;
/// A request this loop serves, with its whole body (most often none).
pub type SimpleRequest = Request<Full<Bytes>>;

/// What a buffer holds.
#[derive(Debug)]
// Returned once per request and matched at once: boxing the request would cost an
// allocation each time to save a move.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// A whole request we serve (consumed from the buffer), and whether the client asked
    /// to close after it.
    Simple(SimpleRequest, bool),
    /// A head whose body could be read two ways (Content-Length with Transfer-Encoding,
    /// or several Content-Lengths), taken from the buffer without its body: it is to be
    /// refused with 400 and its connection closed, as its body's end is unknown.
    Ambiguous(SimpleRequest),
    /// Not a whole head yet, or a small body not all here yet.
    Partial,
    /// A head refused here, as hyper would not answer it the same way.
    Refused(Refusal),
    /// A head that is hyper's to judge; the buffer is untouched.
    Hyper,
}

/// Where a header's name and value lie in the head.
type HeaderSpan = [usize; 4];

/// The configured limits a request is held to here; hyper refuses what goes past them.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// Over this many headers: 431.
    pub headers: usize,
    /// A head over this many bytes: 431.
    pub head_bytes: usize,
    /// A declared body over this many bytes: 413, at once, without waiting for it.
    pub body_bytes: u64,
}

/// Parses the request at the start of `buf`.
pub fn parse(buf: &mut BytesMut, limits: &RequestLimits) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; HEADER_SLOTS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(httparse::Error::Version) => {
            return match other_version(buf) {
                OtherVersion::LaterMinor(at) => {
                    buf[at] = b'1';
                    parse(buf, limits)
                }
                OtherVersion::NotYet => Parsed::Partial,
                OtherVersion::Major => Parsed::Refused(Refusal::VersionNotSupported),
                OtherVersion::Unknown => Parsed::Hyper,
            };
        }
        Err(_) => return Parsed::Hyper,
    };
    if req.version != Some(1) || req.headers.len() > limits.headers || len > limits.head_bytes {
        return Parsed::Hyper;
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Parsed::Hyper;
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    if method == Method::CONNECT {
        return Parsed::Hyper;
    }
    let base = buf.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    let path = at(path.as_bytes())..at(path.as_bytes()) + path.len();
    let mut close = false;
    let mut lengths = 0;
    let mut content_length = None;
    let mut transfer_encoding = false;
    let mut switches = false;
    // Not zeroed: only the first `count` are written, and only those are read.
    let mut spans = [const { MaybeUninit::<HeaderSpan>::uninit() }; HEADER_SLOTS];
    let count = req.headers.len();
    for (slot, h) in spans.iter_mut().zip(req.headers.iter()) {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            content_length = plain_length(h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
        } else if name.eq_ignore_ascii_case(b"expect") || name.eq_ignore_ascii_case(b"upgrade") {
            switches = true;
        } else if name.eq_ignore_ascii_case(b"connection") && has_close(h.value) {
            close = true;
        }
        slot.write([at(name), name.len(), at(h.value), h.value.len()]);
    }
    // SAFETY: the loop wrote the first `count` slots (there are as many headers as that,
    // and at most HEADER_SLOTS), and [usize; 4] needs no drop.
    let spans: &[HeaderSpan] =
        unsafe { &*(std::ptr::from_ref(&spans[..count]) as *const [HeaderSpan]) };
    // Refused here rather than left to hyper, which would settle both headers as RFC
    // 9112 §6.1 allows (Transfer-Encoding wins) and forward the request: what the
    // origin or a proxy in front of us made of the same bytes is not known.
    if lengths > 1 || (lengths == 1 && transfer_encoding) {
        let head = buf.split_to(len).freeze();
        return match build(&head, method, path, spans, Bytes::new()) {
            Some(req) => Parsed::Ambiguous(req),
            None => {
                *buf = put_back(&head, &[], buf);
                Parsed::Hyper
            }
        };
    }
    // A body with a transfer coding or a protocol switch is hyper's, as is a length that
    // is not plain digits (hyper refuses it).
    if transfer_encoding || switches || (lengths == 1 && content_length.is_none()) {
        return Parsed::Hyper;
    }
    let body_len = content_length.unwrap_or(0);
    let Some(total) = len.checked_add(body_len) else {
        return Parsed::Hyper;
    };
    if body_len as u64 > limits.body_bytes {
        return Parsed::Hyper;
    }
    if buf.len() < total {
        return if total <= READ_BUF {
            Parsed::Partial
        } else {
            Parsed::Hyper
        };
    }
    let head = buf.split_to(len).freeze();
    let body = buf.split_to(body_len).freeze();
    match build(&head, method, path, spans, body.clone()) {
        Some(req) => Parsed::Simple(req, close),
        None => {
            *buf = put_back(&head, &body, buf);
            Parsed::Hyper
        }
    }
}

/// The buffer as it was before `head` and `body` were taken from its front: a request
/// put back for hyper, as it is still the first thing on the wire.
fn put_back(head: &[u8], body: &[u8], rest: &[u8]) -> BytesMut {
    let mut whole = BytesMut::with_capacity(head.len() + body.len() + rest.len());
    whole.extend_from_slice(head);
    whole.extend_from_slice(body);
    whole.extend_from_slice(rest);
    whole
}

/// What a request line whose version httparse refused says.
enum OtherVersion {
    /// HTTP/1.2 to HTTP/1.9, which RFC 9112 §2.3 says to serve as the highest 1.x we
    /// implement (nginx and HAProxy do); httparse knows only 1.0 and 1.1. The index of
    /// the minor digit.
    LaterMinor(usize),
    /// HTTP/2.0 to HTTP/9.9 in an HTTP/1 request line: 505 (RFC 9110 §15.6.6), as nginx
    /// answers. Not the HTTP/2 preface (`PRI * HTTP/2.0`): as a connection's first bytes
    /// `fast_h1::serve` hands it to hyper's HTTP/2 server, anywhere else to hyper's HTTP/1.
    Major,
    /// The line is not all here yet.
    NotYet,
    Unknown,
}

fn other_version(buf: &[u8]) -> OtherVersion {
    let end = buf.iter().position(|&b| b == b'\n');
    let line = &buf[..end.unwrap_or(buf.len())];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(version) = line.len().checked_sub(9) else {
        return OtherVersion::Unknown;
    };
    let known = match &line[version..] {
        [b' ', b'H', b'T', b'T', b'P', b'/', b'1', b'.', b'2'..=b'9'] => {
            OtherVersion::LaterMinor(version + 8)
        }
        [b' ', b'H', b'T', b'T', b'P', b'/', b'2'..=b'9', b'.', b'0'..=b'9']
            if !line.starts_with(b"PRI ") =>
        {
            OtherVersion::Major
        }
        _ => return OtherVersion::Unknown,
    };
    if end.is_some() {
        known
    } else {
        OtherVersion::NotYet
    }
}

/// A Content-Length value we take without a second opinion: plain ASCII digits that fit
/// a `usize` (httparse has trimmed the surrounding whitespace).
fn plain_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

fn build(
    head: &Bytes,
    method: Method,
    path: std::ops::Range<usize>,
    spans: &[HeaderSpan],
    body: Bytes,
) -> Option<SimpleRequest> {
    let uri = Uri::from_maybe_shared(head.slice(path)).ok()?;
    let mut headers = HeaderMap::with_capacity(spans.len());
    for &[name, name_len, value, value_len] in spans {
        let name = HeaderName::from_bytes(&head[name..name + name_len]).ok()?;
        let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len)).ok()?;
        headers.append(name, value);
    }
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Some(req)
}

pub(crate) fn has_close(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}
