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
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
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

/// Writes the request line and headers. The caller has removed hop-by-hop headers.
///
/// The body sent decides the framing, not the client's headers: a request whose body is
/// not forwarded (a GET on a caching route, a revalidation) must not keep the client's
/// `Content-Length`, or the origin would take that many bytes of the next request on this
/// connection, perhaps another client's, as its body.
fn encode_head(out: &mut Vec<u8>, head: &http::request::Parts, bodyless: bool) -> Upload {
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
    // Uninitialised too: zeroing all 128 spans (2 KiB) per response showed in profiles.
    let mut spans = [const { std::mem::MaybeUninit::<[u32; 4]>::uninit() }; MAX_HEADERS];
    let count = response.headers.len();
    for (span, h) in spans.iter_mut().zip(response.headers.iter()) {
        let name = offset(h.name.as_ptr());
        let value = offset(h.value.as_ptr());
        span.write([
            name,
            name + h.name.len() as u32,
            value,
            value + h.value.len() as u32,
        ]);
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for span in &spans[..count] {
        // SAFETY: httparse parsed `count` headers into as many of the MAX_HEADERS slots,
        // and the loop above wrote a span for each of them.
        let [ns, ne, vs, ve] = unsafe { span.assume_init() }.map(|o| o as usize);
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

/// Reads response heads until a final one, skipping 1xx interim responses; a 101 is
/// final when the request asked to upgrade (`upgrading`), and refused otherwise.
async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    method: &Method,
    upgrading: bool,
) -> Result<(ResponseHead, bool), SendError> {
    let mut received = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            if let Some((status, version, mut headers)) =
                parse_head(buf).map_err(SendError::Malformed)?
            {
                if status == StatusCode::SWITCHING_PROTOCOLS {
                    if !upgrading {
                        return Err(SendError::Malformed("unrequested 101 Switching Protocols"));
                    }
                    // What follows is the upgraded protocol, not HTTP: never pooled again.
                    let (mut parts, ()) = http::Response::new(()).into_parts();
                    parts.status = status;
                    parts.version = version;
                    parts.headers = headers;
                    let framing = Framing::Empty;
                    return Ok((ResponseHead { parts, framing }, false));
                }
                if status.is_informational() {
                    continue;
                }
                let framing = framing(method, status, &headers).map_err(SendError::Malformed)?;
                let mut keep = keeps_alive(version, &headers) && framing != Framing::Close;
                if matches!(framing, Framing::Chunked | Framing::Close)
                    && headers.remove(CONTENT_LENGTH).is_some()
                {
                    // Transfer-Encoding won (RFC 9112 §6.3): the length must not reach the
                    // client, and an origin that sent both is not trusted with another
                    // request on this connection.
                    keep = false;
                }
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
        // Upgrade survives hop-by-hop removal only where the proxy means to tunnel.
        let upgrading = head.headers.contains_key(UPGRADE);
        let result = if framing == Upload::None {
            match self.io.write_all(&self.out).await {
                Ok(()) => read_head(&mut self.io, &mut self.buf, &head.method, upgrading).await,
                Err(e) => Err(SendError::Closed(e)),
            }
        } else {
            let (mut rd, mut wr) = self.io.split();
            let reading = read_head(&mut rd, &mut self.buf, &head.method, upgrading);
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

    /// After a 101: the socket, and what the origin sent past the head, which belongs to
    /// the upgraded protocol.
    pub fn into_tunnel(self) -> (TcpStream, Bytes) {
        (self.io, self.buf.freeze())
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
#[path = "origin_conn_tests.rs"]
mod tests;
