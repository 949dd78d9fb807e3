//! One HTTP/1.1 connection to an origin, driven by the request that uses it: the request's
//! own task writes the head (and body), reads the response head, and the response body
//! reads straight from the socket as the client side asks for more.
//!
//! Why not hyper's client: it runs every origin connection as a task of its own and hands
//! the request, the response head and each body chunk across channels, then parses and
//! encodes a second time. On uncached proxying that was about a quarter of our user CPU per
//! request, against HAProxy which does neither. Parsing stays with httparse (response heads,
//! chunk sizes); the wire rules (RFC 9112 §6) live in `origin_wire.rs`.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header::UPGRADE;
use http::{Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, Interest};

use crate::proxy::body::{BoxError, ProxyBody};
use crate::proxy::upstream::connect::OriginStream;
use crate::proxy::upstream::origin_wire::{encode_head, framing, keeps_alive, parse_head, Upload};
pub use crate::proxy::upstream::origin_wire::{Framing, ResponseHead};

/// A chunk-size line, extensions included, longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Reads ask the kernel for at least this much room, and at most `MAX_READ`.
const MIN_READ: usize = 4096;
const MAX_READ: usize = 64 * 1024;
/// Request body bytes gathered before a write.
const UPLOAD_BATCH: usize = 16 * 1024;

pub struct OriginConn {
    io: OriginStream,
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
    /// The client a PROXY header on this connection named (`send_proxy`): the connection
    /// carries no one else's requests.
    pub owner: Option<std::net::SocketAddr>,
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
                    let framing = Framing::Empty;
                    return Ok((
                        ResponseHead {
                            status,
                            version,
                            headers,
                            framing,
                        },
                        false,
                    ));
                }
                if status.is_informational() {
                    continue;
                }
                let framing = framing(method, status, &headers).map_err(SendError::Malformed)?;
                let mut keep = keeps_alive(version, &headers) && framing != Framing::Close;
                if matches!(framing, Framing::Chunked | Framing::Close)
                    && headers.remove("content-length")
                {
                    // Transfer-Encoding won (RFC 9112 §6.3): the length must not reach the
                    // client, and an origin that sent both is not trusted with another
                    // request on this connection.
                    keep = false;
                }
                let head = ResponseHead {
                    status,
                    version,
                    headers,
                    framing,
                };
                return Ok((head, keep));
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
    io.flush().await.map_err(SendError::Closed)?;
    out.clear();
    Ok(())
}

/// Sends a request body while reading the response head, so an origin that answers
/// early (a 413, say) is heard. The flag is false when the connection is out of step
/// afterwards (answered before the whole body went out, or the sending broke).
#[allow(clippy::too_many_arguments)]
async fn send_with_body<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    mut rd: R,
    mut wr: W,
    buf: &mut BytesMut,
    out: &mut Vec<u8>,
    head: &http::request::Parts,
    body: ProxyBody,
    framing: Upload,
    upgrading: bool,
) -> (Result<(ResponseHead, bool), SendError>, bool) {
    let reading = read_head(&mut rd, buf, &head.method, upgrading);
    let sending = upload(&mut wr, out, body, framing);
    tokio::pin!(reading, sending);
    tokio::select! {
        biased;
        // Answered before the whole body went out: the origin will not read the rest, and
        // we cannot tell where this connection stands.
        answer = &mut reading => (answer, false),
        sent = &mut sending => match sent {
            Ok(()) => (reading.await, true),
            Err(SendError::ClientBody(e)) => (Err(SendError::ClientBody(e)), true),
            // The origin may have answered and closed; take its answer if so.
            Err(e) => match reading.await {
                Ok(answer) => (Ok(answer), false),
                Err(_) => (Err(e), false),
            },
        },
    }
}

impl OriginConn {
    pub fn new(io: impl Into<OriginStream>) -> Self {
        Self {
            io: io.into(),
            buf: BytesMut::new(),
            out: Vec::new(),
            reusable: true,
            timer: None,
            owner: None,
        }
    }

    /// An idle connection the origin has not closed, as far as the reactor has seen: a
    /// close shows as read-closed readiness, and checking it costs no system call.
    pub fn is_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let ready = std::pin::pin!(self.io.tcp().ready(Interest::READABLE));
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
            // Flushing a TLS stream sends its records; on TCP it is nothing.
            let written = match self.io.write_all(&self.out).await {
                Ok(()) => self.io.flush().await,
                Err(e) => Err(e),
            };
            match written {
                Ok(()) => read_head(&mut self.io, &mut self.buf, &head.method, upgrading).await,
                Err(e) => Err(SendError::Closed(e)),
            }
        } else {
            let in_step = match &mut self.io {
                OriginStream::Plain(tcp) => {
                    let (rd, wr) = tcp.split();
                    let sent = send_with_body(
                        rd,
                        wr,
                        &mut self.buf,
                        &mut self.out,
                        head,
                        body,
                        framing,
                        upgrading,
                    );
                    sent.await
                }
                OriginStream::Tls(tls) => {
                    let (rd, wr) = tokio::io::split(tls.as_mut());
                    let sent = send_with_body(
                        rd,
                        wr,
                        &mut self.buf,
                        &mut self.out,
                        head,
                        body,
                        framing,
                        upgrading,
                    );
                    sent.await
                }
            };
            let (result, in_step) = in_step;
            self.reusable &= in_step;
            result
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
    pub fn into_tunnel(self) -> (OriginStream, Bytes) {
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
