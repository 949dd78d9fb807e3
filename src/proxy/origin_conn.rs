//! One HTTP/1.1 connection to an origin, driven by the request that uses it: the request's
//! own task writes the head (and body), reads the response head, and the response body
//! reads straight from the socket as the client side asks for more.
//!
//! Why not hyper's client: it runs every origin connection as a task of its own and hands
//! the request, the response head and each body chunk across channels, then parses and
//! encodes a second time. On uncached proxying that was about a quarter of our user CPU per
//! request, against HAProxy which does neither. Parsing stays with httparse (response heads,
//! chunk sizes); the framing rules are RFC 9112 §6 and live in `framing`/`keeps_alive`.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::body::{BoxError, ProxyBody};

/// A response head larger than this is refused (nginx's default proxy buffer is 4–8 KiB;
/// HAProxy's whole buffer is 16 KiB).
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
/// A chunk-size line, extensions included, longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Reads ask the kernel for at least this much room, and at most `MAX_READ`.
const MIN_READ: usize = 4096;
const MAX_READ: usize = 64 * 1024;
/// Request body bytes gathered before a write.
const UPLOAD_BATCH: usize = 16 * 1024;

pub struct OriginConn {
    io: TcpStream,
    /// Bytes read from the origin and not yet handed on.
    buf: BytesMut,
    /// The request head (and small body pieces) on their way out; kept for its capacity.
    out: Vec<u8>,
    /// False once the connection's state is unknown or the origin said it will close.
    reusable: bool,
    /// The response timeout, kept from one request to the next: moving a registered
    /// tokio timer's deadline later is an atomic store, where a fresh timer per request is
    /// an insertion into the timer wheel and a removal.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Nothing of a response came back: the connection was closed or reset. On a reused
    /// keep-alive connection this is the origin having closed it while idle.
    #[error("connection closed before any response: {0}")]
    Closed(io::Error),
    #[error("reading the response head: {0}")]
    Io(io::Error),
    #[error("{0}")]
    Malformed(&'static str),
    /// The client's request body failed (too large, cut short) while being forwarded.
    #[error("client request body: {0}")]
    ClientBody(BoxError),
    #[error("no response head within {0:?}")]
    TimedOut(std::time::Duration),
}

impl SendError {
    /// Closed before any response byte: not evidence that the origin is broken if the
    /// connection had been idle in the pool.
    pub fn is_closed(&self) -> bool {
        matches!(self, SendError::Closed(_))
    }
}

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
    headers: &HeaderMap,
) -> Result<Framing, &'static str> {
    if request_method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        // Transfer-Encoding overrides Content-Length; a final coding other than chunked
        // means the body runs to the close.
        let chunked = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| "bad Content-Length")?;
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
pub fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let mut close = version != Version::HTTP_11;
    for value in headers.get_all(CONNECTION) {
        for token in value.to_str().unwrap_or("close").split(',') {
            let token = token.trim();
            if token.eq_ignore_ascii_case("close") {
                return false;
            }
            if token.eq_ignore_ascii_case("keep-alive") {
                close = false;
            }
        }
    }
    !close
}

/// How the request body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upload {
    None,
    /// As-is, after the client's Content-Length.
    Length(u64),
    Chunked,
}

/// Writes the request line and headers. The caller has removed hop-by-hop headers, so the
/// framing header here is the only one.
fn encode_head(out: &mut Vec<u8>, head: &http::request::Parts, bodyless: bool) -> Upload {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &head.headers {
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
            if declared.is_none()
                && matches!(head.method, Method::POST | Method::PUT | Method::PATCH)
            {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Upload::None
        }
        (false, Some(n)) => Upload::Length(n),
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
    pub parts: http::response::Parts,
    pub framing: Framing,
}

/// Parses one response head off the front of `buf`; None until it is complete.
fn parse_head(
    buf: &mut BytesMut,
) -> Result<Option<(StatusCode, Version, HeaderMap)>, &'static str> {
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
    // Header values become slices of the head's bytes, not copies: remember where each
    // lies (offsets fit in u32: the head is at most MAX_HEAD_BYTES), then freeze the head.
    let base = buf.as_ptr() as usize;
    let offset = |p: *const u8| (p as usize - base) as u32;
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = response.headers.len();
    for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
        let name = offset(h.name.as_ptr());
        let value = offset(h.value.as_ptr());
        *span = (
            name,
            name + h.name.len() as u32,
            value,
            value + h.value.len() as u32,
        );
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(ns, ne, vs, ve) in &spans[..count] {
        let (ns, ne, vs, ve) = (ns as usize, ne as usize, vs as usize, ve as usize);
        let name = HeaderName::from_bytes(&head[ns..ne]).map_err(|_| "bad header name")?;
        let value =
            HeaderValue::from_maybe_shared(head.slice(vs..ve)).map_err(|_| "bad header value")?;
        headers.append(name, value);
    }
    Ok(Some((status, version, headers)))
}

/// Reads what the socket has into `buf`; Ok(0) is the end of the stream. Through
/// `AsyncRead`, not `try_read`: tokio then takes a short read as proof the socket is drained
/// and does not try again, which saves a read returning EAGAIN per response.
fn poll_fill<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(want.clamp(MIN_READ, MAX_READ));
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Reads response heads until a final one, skipping 1xx interim responses.
async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    method: &Method,
) -> Result<(ResponseHead, bool), SendError> {
    let mut received = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            if let Some((status, version, headers)) =
                parse_head(buf).map_err(SendError::Malformed)?
            {
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    // We never forward Upgrade, so no origin may switch.
                    return Err(SendError::Malformed("unrequested 101 Switching Protocols"));
                }
                if status.is_informational() {
                    continue;
                }
                let framing = framing(method, status, &headers).map_err(SendError::Malformed)?;
                let keep = keeps_alive(version, &headers) && framing != Framing::Close;
                let (mut parts, ()) = http::Response::new(()).into_parts();
                parts.status = status;
                parts.version = version;
                parts.headers = headers;
                return Ok((ResponseHead { parts, framing }, keep));
            }
        }
        let n = poll_fn(|cx| poll_fill(io, buf, cx, MIN_READ))
            .await
            .map_err(|e| {
                if received {
                    SendError::Io(e)
                } else {
                    SendError::Closed(e)
                }
            })?;
        if n == 0 {
            let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "origin closed the connection");
            return Err(if received {
                SendError::Io(eof)
            } else {
                SendError::Closed(eof)
            });
        }
        received = true;
    }
}

/// Sends the request body in the framing `encode_head` announced.
async fn upload<W: AsyncWrite + Unpin>(
    io: &mut W,
    out: &mut Vec<u8>,
    mut body: ProxyBody,
    framing: Upload,
) -> Result<(), SendError> {
    let mut sent = 0u64;
    loop {
        let frame = match body.frame().await {
            None => break,
            Some(frame) => frame.map_err(SendError::ClientBody)?,
        };
        // Trailers are not forwarded (nginx does not either).
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if let Upload::Length(n) = framing {
            if sent > n {
                return Err(SendError::ClientBody(
                    "request body longer than its Content-Length".into(),
                ));
            }
        }
        if framing == Upload::Chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if out.len() + data.len() <= UPLOAD_BATCH {
            out.extend_from_slice(&data);
        } else {
            io.write_all(out).await.map_err(SendError::Closed)?;
            out.clear();
            io.write_all(&data).await.map_err(SendError::Closed)?;
        }
        if framing == Upload::Chunked {
            out.extend_from_slice(b"\r\n");
        }
        if out.len() >= UPLOAD_BATCH || body.is_end_stream() {
            io.write_all(out).await.map_err(SendError::Closed)?;
            out.clear();
        }
    }
    if let Upload::Length(n) = framing {
        if sent != n {
            return Err(SendError::ClientBody(
                "request body shorter than its Content-Length".into(),
            ));
        }
    }
    if framing == Upload::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    io.write_all(out).await.map_err(SendError::Closed)?;
    out.clear();
    Ok(())
}

impl OriginConn {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            out: Vec::new(),
            reusable: true,
            timer: None,
        }
    }

    /// An idle connection the origin has not closed, as far as the reactor has seen: a
    /// close shows as read-closed readiness, and checking it costs no system call.
    pub fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let ready = std::pin::pin!(self.io.ready(Interest::READABLE));
        match ready.poll(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Ok(r)) => !(r.is_read_closed() || r.is_error()),
            Poll::Ready(Err(_)) => false,
        }
    }

    pub fn is_reusable(&self) -> bool {
        self.reusable && self.buf.is_empty()
    }

    /// `send` within `timeout`; the connection is not reusable after a timeout.
    pub async fn send_within(
        &mut self,
        timeout: std::time::Duration,
        head: &http::request::Parts,
        body: ProxyBody,
        bodyless: bool,
    ) -> Result<ResponseHead, SendError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut timer = match self.timer.take() {
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        let result = tokio::select! {
            biased;
            sent = self.send(head, body, bodyless) => sent,
            () = timer.as_mut() => {
                self.reusable = false;
                Err(SendError::TimedOut(timeout))
            }
        };
        self.timer = Some(timer);
        result
    }

    /// Sends one request and reads its response head. A request body is sent while the
    /// response is awaited, so an origin that answers early (a 413, say) is heard.
    pub async fn send(
        &mut self,
        head: &http::request::Parts,
        body: ProxyBody,
        bodyless: bool,
    ) -> Result<ResponseHead, SendError> {
        if !self.buf.is_empty() {
            // Bytes nobody asked for: the connection is out of step.
            self.reusable = false;
            return Err(SendError::Malformed(
                "unsolicited bytes on an idle connection",
            ));
        }
        self.out.clear();
        let framing = encode_head(&mut self.out, head, bodyless);
        let result = if framing == Upload::None {
            match self.io.write_all(&self.out).await {
                Ok(()) => read_head(&mut self.io, &mut self.buf, &head.method).await,
                Err(e) => Err(SendError::Closed(e)),
            }
        } else {
            let (mut rd, mut wr) = self.io.split();
            let reading = read_head(&mut rd, &mut self.buf, &head.method);
            let sending = upload(&mut wr, &mut self.out, body, framing);
            tokio::pin!(reading, sending);
            tokio::select! {
                biased;
                answer = &mut reading => {
                    // Answered before the whole body went out: the origin will not read
                    // the rest, and we cannot tell where this connection stands.
                    self.reusable = false;
                    answer
                }
                sent = &mut sending => match sent {
                    Ok(()) => reading.await,
                    Err(SendError::ClientBody(e)) => Err(SendError::ClientBody(e)),
                    Err(e) => {
                        // The origin may have answered and closed; take its answer if so.
                        self.reusable = false;
                        match reading.await {
                            Ok(answer) => Ok(answer),
                            Err(_) => Err(e),
                        }
                    }
                },
            }
        };
        match result {
            Ok((head, keep)) => {
                self.reusable &= keep;
                Ok(head)
            }
            Err(e) => {
                self.reusable = false;
                Err(e)
            }
        }
    }

    /// The response body that follows a head from `send`.
    pub fn into_body(self, framing: Framing) -> ResponseBody {
        let state = match framing {
            Framing::Empty => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::ChunkSize,
            Framing::Close => BodyState::UntilClose,
        };
        ResponseBody {
            conn: Some(self),
            state,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Length(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    /// Trailer bytes seen so far.
    Trailers(usize),
    UntilClose,
    Done,
}

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the response body: {0}")]
    Io(#[from] io::Error),
    #[error("origin closed the connection {0} bytes before the end of the body")]
    Truncated(u64),
    #[error("origin closed the connection inside a chunked body")]
    TruncatedChunks,
    #[error("bad chunked body: {0}")]
    BadChunk(&'static str),
}

/// A response body read from the origin as it is asked for.
pub struct ResponseBody {
    /// None after an error.
    conn: Option<OriginConn>,
    state: BodyState,
}

impl ResponseBody {
    /// After the body ended cleanly, the connection if it can carry another request.
    pub fn take_reusable(&mut self) -> Option<OriginConn> {
        if self.state != BodyState::Done {
            return None;
        }
        self.conn.take().filter(OriginConn::is_reusable)
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        Poll::Ready(Some(Err(Box::new(e))))
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if this.state == BodyState::Done {
                return Poll::Ready(None);
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.buf;
            match this.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(left) | BodyState::ChunkData(left) => {
                    if buf.is_empty() {
                        let want = usize::try_from(left).unwrap_or(MAX_READ);
                        match ready!(poll_fill(&mut conn.io, buf, cx, want)) {
                            Ok(0) => {
                                let e = match this.state {
                                    BodyState::Length(_) => BodyError::Truncated(left),
                                    _ => BodyError::TruncatedChunks,
                                };
                                return this.fail(e);
                            }
                            Ok(_) => continue,
                            Err(e) => return this.fail(e.into()),
                        }
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    this.state = match (this.state, left) {
                        (BodyState::Length(_), 0) => BodyState::Done,
                        (BodyState::Length(_), n) => BodyState::Length(n),
                        (_, 0) => BodyState::ChunkEnd,
                        (_, n) => BodyState::ChunkData(n),
                    };
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::UntilClose => {
                    if buf.is_empty() {
                        match ready!(poll_fill(&mut conn.io, buf, cx, MAX_READ)) {
                            Ok(0) => {
                                conn.reusable = false;
                                this.state = BodyState::Done;
                                return Poll::Ready(None);
                            }
                            Ok(_) => {}
                            Err(e) => return this.fail(e.into()),
                        }
                    }
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyState::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        buf.advance(used);
                        this.state = if size == 0 {
                            BodyState::Trailers(0)
                        } else {
                            BodyState::ChunkData(size)
                        };
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                        return this.fail(BodyError::BadChunk("chunk-size line too long"));
                    }
                    Ok(httparse::Status::Partial) => {
                        match ready!(poll_fill(&mut conn.io, buf, cx, MIN_READ)) {
                            Ok(0) => return this.fail(BodyError::TruncatedChunks),
                            Ok(_) => {}
                            Err(e) => return this.fail(e.into()),
                        }
                    }
                    Err(_) => return this.fail(BodyError::BadChunk("bad chunk size")),
                },
                BodyState::ChunkEnd => {
                    if buf.len() >= 2 {
                        if &buf[..2] != b"\r\n" {
                            return this
                                .fail(BodyError::BadChunk("chunk data not followed by CRLF"));
                        }
                        buf.advance(2);
                        this.state = BodyState::ChunkSize;
                        continue;
                    }
                    match ready!(poll_fill(&mut conn.io, buf, cx, MIN_READ)) {
                        Ok(0) => return this.fail(BodyError::TruncatedChunks),
                        Ok(_) => {}
                        Err(e) => return this.fail(e.into()),
                    }
                }
                BodyState::Trailers(seen) => {
                    // Trailer fields are read and dropped, as nginx does by default.
                    if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                        buf.advance(end + 2);
                        this.state = if end == 0 {
                            BodyState::Done
                        } else if seen + end + 2 > MAX_TRAILER_BYTES {
                            return this.fail(BodyError::BadChunk("trailer section too large"));
                        } else {
                            BodyState::Trailers(seen + end + 2)
                        };
                        continue;
                    }
                    if seen + buf.len() > MAX_TRAILER_BYTES {
                        return this.fail(BodyError::BadChunk("trailer section too large"));
                    }
                    match ready!(poll_fill(&mut conn.io, buf, cx, MIN_READ)) {
                        Ok(0) => return this.fail(BodyError::TruncatedChunks),
                        Ok(_) => {}
                        Err(e) => return this.fail(e.into()),
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state == BodyState::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Length(n) => SizeHint::with_exact(n),
            BodyState::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::body::{empty, full};
    use std::collections::VecDeque;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
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
        assert_eq!(framing(&get, ok, &HeaderMap::new()), Ok(Framing::Close));
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
        assert!(keeps_alive(Version::HTTP_11, &HeaderMap::new()));
        assert!(!keeps_alive(
            Version::HTTP_11,
            &headers(&[("connection", "Close")])
        ));
        assert!(!keeps_alive(
            Version::HTTP_11,
            &headers(&[("connection", "keep-alive, close")])
        ));
        assert!(!keeps_alive(Version::HTTP_10, &HeaderMap::new()));
        assert!(keeps_alive(
            Version::HTTP_10,
            &headers(&[("connection", "Keep-Alive")])
        ));
    }

    fn parts(method: &str, target: &str, pairs: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(target);
        for (k, v) in pairs {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
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

    /// A body of the given frames, as a client that streams without a length would send.
    struct Frames(VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn frames(parts: &[&'static [u8]]) -> ProxyBody {
        Frames(parts.iter().map(|p| Bytes::from_static(p)).collect()).boxed_unsync()
    }

    /// Reads one request head (and nothing more) from the origin side.
    async fn read_request_head(s: &mut TcpStream) -> Vec<u8> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
        head
    }

    /// An origin that answers each request on one connection with the next canned reply,
    /// then closes; it returns what it was sent, heads and bodies.
    async fn origin(
        replies: Vec<&'static [u8]>,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for reply in replies {
                seen.push(read_request_head(&mut s).await);
                s.write_all(reply).await.unwrap();
            }
            seen
        });
        (addr, task)
    }

    async fn connect(addr: std::net::SocketAddr) -> OriginConn {
        OriginConn::new(TcpStream::connect(addr).await.unwrap())
    }

    async fn collect(body: &mut ResponseBody) -> Result<Vec<u8>, BoxError> {
        let mut all = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                all.extend_from_slice(&data);
            }
        }
        Ok(all)
    }

    #[tokio::test]
    async fn a_connection_carries_requests_one_after_another() {
        let (addr, task) = origin(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 3\r\n\r\nnop",
        ])
        .await;
        let mut conn = connect(addr).await;
        let get = parts("GET", "/one", &[("host", "o")]);
        let head = conn.send(&get, empty(), true).await.unwrap();
        assert_eq!(head.parts.status, StatusCode::OK);
        assert_eq!(head.parts.headers["x-a"], "1");
        assert_eq!(head.framing, Framing::Length(5));
        let mut body = conn.into_body(head.framing);
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(collect(&mut body).await.unwrap(), b"hello");
        let mut conn = body.take_reusable().expect("reusable after a whole body");

        let head = conn
            .send(&parts("GET", "/two", &[]), empty(), true)
            .await
            .unwrap();
        assert_eq!(head.parts.status, StatusCode::NOT_FOUND);
        let mut body = conn.into_body(head.framing);
        assert_eq!(collect(&mut body).await.unwrap(), b"nop");
        let seen = task.await.unwrap();
        assert!(seen[0].starts_with(b"GET /one HTTP/1.1\r\nhost: o\r\n"));
        assert!(seen[1].starts_with(b"GET /two HTTP/1.1\r\n"));
    }

    #[tokio::test]
    async fn the_response_timeout_is_kept_across_requests_and_fires() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_request_head(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            // The second request is never answered.
            read_request_head(&mut s).await;
            let _ = done_rx.await;
        });
        let limit = Duration::from_millis(200);
        let mut conn = connect(addr).await;
        let head = conn
            .send_within(limit, &parts("GET", "/", &[]), empty(), true)
            .await
            .unwrap();
        let mut conn = conn
            .into_body(head.framing)
            .take_reusable()
            .expect("reusable");
        let started = std::time::Instant::now();
        let err = conn
            .send_within(limit, &parts("GET", "/", &[]), empty(), true)
            .await
            .err()
            .expect("answered");
        assert!(matches!(err, SendError::TimedOut(_)), "{err}");
        assert!(started.elapsed() >= limit, "fired early");
        assert!(!conn.is_reusable());
        let _ = done_tx.send(());
    }

    #[tokio::test]
    async fn chunked_bodies_are_decoded_and_trailers_dropped() {
        let (addr, _task) = origin(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n",
        ])
        .await;
        let mut conn = connect(addr).await;
        let head = conn
            .send(&parts("GET", "/", &[]), empty(), true)
            .await
            .unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        let mut body = conn.into_body(head.framing);
        assert_eq!(collect(&mut body).await.unwrap(), b"hello world");
        assert!(body.is_end_stream());
        assert!(body.take_reusable().is_some());
    }

    #[tokio::test]
    async fn a_body_without_length_runs_to_the_close_and_ends_the_connection() {
        let (addr, _task) = origin(vec![b"HTTP/1.1 200 OK\r\n\r\nuntil the end"]).await;
        let mut conn = connect(addr).await;
        let head = conn
            .send(&parts("GET", "/", &[]), empty(), true)
            .await
            .unwrap();
        assert_eq!(head.framing, Framing::Close);
        let mut body = conn.into_body(head.framing);
        assert_eq!(collect(&mut body).await.unwrap(), b"until the end");
        assert!(body.take_reusable().is_none());
    }

    #[tokio::test]
    async fn interim_responses_are_skipped() {
        let (addr, _task) = origin(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        let mut conn = connect(addr).await;
        let head = conn
            .send(&parts("GET", "/", &[]), empty(), true)
            .await
            .unwrap();
        assert_eq!(head.parts.status, StatusCode::CREATED);
        assert!(!head.parts.headers.contains_key("link"));
        let mut body = conn.into_body(head.framing);
        assert_eq!(collect(&mut body).await.unwrap(), b"ok");
    }

    #[tokio::test]
    async fn a_head_response_has_no_body_whatever_its_length() {
        let (addr, _task) = origin(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let mut conn = connect(addr).await;
        let head = conn
            .send(&parts("HEAD", "/", &[]), empty(), true)
            .await
            .unwrap();
        assert_eq!(head.parts.headers["content-length"], "1000");
        let mut body = conn.into_body(head.framing);
        assert!(body.is_end_stream());
        let mut conn = body.take_reusable().expect("reusable");
        let head = conn
            .send(&parts("GET", "/", &[]), empty(), true)
            .await
            .unwrap();
        assert_eq!(head.framing, Framing::Empty);
    }

    #[tokio::test]
    async fn broken_responses_are_errors_not_guesses() {
        let cases: [(&'static [u8], &str); 4] = [
            (b"HTTP/1.1 2000 OK\r\n\r\n", "malformed"),
            (b"NOT HTTP\r\n\r\n", "malformed"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting",
            ),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
        ];
        for (reply, what) in cases {
            let (addr, _task) = origin(vec![reply]).await;
            let mut conn = connect(addr).await;
            let err = conn
                .send(&parts("GET", "/", &[]), empty(), true)
                .await
                .err()
                .unwrap_or_else(|| panic!("{what}: accepted"));
            assert!(matches!(err, SendError::Malformed(_)), "{what}: {err}");
            assert!(!conn.is_reusable());
        }
    }

    #[tokio::test]
    async fn a_head_past_the_limit_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_request_head(&mut s).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
            let line = format!("x-filler: {}\r\n", "a".repeat(1000));
            for _ in 0..100 {
                if s.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let mut conn = connect(addr).await;
        let err = conn
            .send(&parts("GET", "/", &[]), empty(), true)
            .await
            .err()
            .expect("accepted");
        assert!(err.to_string().contains("too large"), "{err}");
    }

    #[tokio::test]
    async fn cut_short_bodies_are_errors() {
        let cases: [&'static [u8]; 3] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ];
        for reply in cases {
            // The origin's task ends after the reply, which closes the connection.
            let (addr, task) = origin(vec![reply]).await;
            let mut conn = connect(addr).await;
            let head = conn
                .send(&parts("GET", "/", &[]), empty(), true)
                .await
                .unwrap();
            task.await.unwrap();
            let mut body = conn.into_body(head.framing);
            assert!(collect(&mut body).await.is_err());
            assert!(body.take_reusable().is_none());
        }
    }

    #[tokio::test]
    async fn a_closed_idle_connection_is_noticed_and_a_request_on_it_is_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_request_head(&mut s).await;
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await
                .unwrap();
            let _ = close_rx.await;
        });
        let mut conn = connect(addr).await;
        let head = conn
            .send(&parts("GET", "/", &[]), empty(), true)
            .await
            .unwrap();
        let mut body = conn.into_body(head.framing);
        let conn = body.take_reusable().expect("reusable");
        assert!(conn.is_open());
        let _ = close_tx.send(());
        task.await.unwrap(); // the origin has closed its end
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while conn.is_open() {
            assert!(tokio::time::Instant::now() < deadline, "close never seen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut conn = conn;
        let err = conn
            .send(&parts("GET", "/", &[]), empty(), true)
            .await
            .err()
            .expect("answered on a closed connection");
        assert!(err.is_closed(), "{err}");
    }

    #[tokio::test]
    async fn bodies_go_out_with_their_length_or_chunked() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            for (end, reply) in [
                (
                    &b"abc"[..],
                    &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
                ),
                (
                    &b"0\r\n\r\n"[..],
                    &b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"[..],
                ),
            ] {
                let mut seen = read_request_head(&mut s).await;
                let mut byte = [0u8; 1];
                while !seen.ends_with(end) {
                    assert_eq!(s.read(&mut byte).await.unwrap(), 1);
                    seen.push(byte[0]);
                }
                got.push(seen);
                s.write_all(reply).await.unwrap();
            }
            got
        });
        let mut conn = connect(addr).await;
        let put = parts("PUT", "/", &[("content-length", "3")]);
        let head = conn.send(&put, full("abc"), false).await.unwrap();
        let mut conn = conn
            .into_body(head.framing)
            .take_reusable()
            .expect("reusable");
        let post = parts("POST", "/", &[]);
        let head = conn
            .send(&post, frames(&[b"hello", b"", b" world"]), false)
            .await
            .unwrap();
        assert_eq!(head.parts.status, StatusCode::OK);
        let got = task.await.unwrap();
        assert!(got[0].ends_with(b"content-length: 3\r\n\r\nabc"));
        assert!(got[1].ends_with(
            b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        ));
    }

    #[tokio::test]
    async fn a_body_longer_than_announced_is_the_clients_fault() {
        let (addr, _task) = origin(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]).await;
        let mut conn = connect(addr).await;
        let put = parts("PUT", "/", &[("content-length", "2")]);
        let err = conn
            .send(&put, frames(&[b"abc"]), false)
            .await
            .err()
            .expect("sent");
        assert!(matches!(err, SendError::ClientBody(_)), "{err}");
        assert!(!conn.is_reusable());
    }

    /// A client body that never ends (bounded at 64 MiB).
    struct Endless(usize);

    impl Body for Endless {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if self.0 == 0 {
                return Poll::Ready(None);
            }
            self.0 -= 1;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 64 * 1024])))))
        }
    }

    #[tokio::test]
    async fn an_answer_before_the_body_is_sent_is_heard() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            read_request_head(&mut s).await;
            s.write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nbig!")
                .await
                .unwrap();
            // Keep the connection open without reading until the test is done: the
            // answer must come through while our writes are blocked.
            let _ = done_rx.await;
        });
        let mut conn = connect(addr).await;
        let post = parts("POST", "/upload", &[]);
        let head = tokio::time::timeout(
            Duration::from_secs(10),
            conn.send(&post, Endless(1024).boxed_unsync(), false),
        )
        .await
        .expect("hung on a blocked upload")
        .unwrap();
        assert_eq!(head.parts.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!conn.is_reusable());
        let mut body = conn.into_body(head.framing);
        assert_eq!(collect(&mut body).await.unwrap(), b"big!");
        assert!(body.take_reusable().is_none());
        let _ = done_tx.send(());
    }
}
