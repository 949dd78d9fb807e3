//! HTTP/1.1 requests without a body, or with a small `Content-Length` body that arrives
//! with its head, read and answered without hyper; anything else hands the connection,
//! bytes already read included, to hyper for the rest of its life.
//!
//! Almost every request a GSLB edge sees is a GET with no body on a keep-alive
//! connection, and most of the rest are small API calls. For those, hyper's server
//! machinery (its dispatcher, the boxed service future, its read and write buffers) cost
//! more user CPU per request than our whole forwarding path: 16.4 µs of user CPU per
//! uncached request through hyper, 11.6 here (HAProxy: 12.1).
//! This loop does only what such a request needs: parse the head with `httparse`, hand
//! it to `forward::handle`, write the response with its framing.
//!
//! A body is taken only under one `Content-Length` of plain digits, and only once all of
//! it is in the read buffer (a head and body of up to `READ_BUF` bytes are waited for,
//! under the head's deadline, as HAProxy's `timeout http-request` covers a buffered
//! body). Everything else stays hyper's, unchanged: a larger or later body, a chunked
//! one, `Expect`, `Upgrade`, `CONNECT`, HTTP/1.0, too many or too large headers, and any
//! head `httparse` or the `http` types reject. Such a head is not answered here: the
//! connection goes to hyper with the head still unread, so hyper's parser makes the
//! decision (400, 431, ...) as it always did.
//!
//! Two refusals are made here, as hyper would not make them: a request line that alone
//! runs past the head limit gets 414, and a head whose body could be read two ways
//! (Content-Length with Transfer-Encoding, or several Content-Lengths) gets 400 and a
//! closed connection, where hyper would settle it and forward it. Requests on a
//! connection already handed to hyper are settled by hyper as RFC 9112 §6.1 allows
//! (Transfer-Encoding wins, the connection closes after).
//!
//! A connection that opens with the HTTP/2 preface (prior knowledge, as gRPC clients
//! without TLS speak) goes to hyper's HTTP/2 server instead.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::process::clock::{coarse_ms, http_date};
use crate::proxy::answer::Answer;
use crate::proxy::cached::respond::FileBody;
use crate::proxy::http::forward::{self, ClientConn};
use crate::proxy::http::refused::{self, Refusal};
use crate::proxy::http::request_head::{has_close, READ_BUF};
pub use crate::proxy::http::request_head::{parse, Parsed, RequestLimits, SimpleRequest};
use crate::proxy::listen::client_io::Activity;
use crate::proxy::listen::lazy_socket::{LastWrites, SendFile};
use crate::proxy::upstream::tunnel::TunnelSlot;
use crate::proxy::Shared;

/// Body chunks up to this size are copied behind the head (or chunk size) and sent in
/// one plain write; larger ones go out by `writev` without a copy.
const COPY_MAX: usize = 4096;

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body goes out: HEAD, 1xx, 204, 304.
    None,
    Length(u64),
    Chunked,
}

/// Whether a response to `method` with `status` carries a body (RFC 9110 §6.4.1).
fn carries_body(head_request: bool, status: StatusCode) -> bool {
    !(head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED)
}

/// Writes a response head to `out` and says how its body must be framed.
///
/// The body decides the framing, not the headers it came with: a body of known size
/// gets its `Content-Length`, any other one is chunked; the response's own framing
/// headers are dropped. A response without a body (HEAD, 304) keeps its
/// `Content-Length`, which describes the representation, but never a
/// `Transfer-Encoding`; 1xx and 204 keep neither (RFC 9110 §8.6).
pub fn encode_head<'a>(
    out: &mut Vec<u8>,
    status: StatusCode,
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    body: &impl Body,
    head_request: bool,
    close: bool,
) -> Framing {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let framing = if !carries_body(head_request, status) {
        Framing::None
    } else if body.is_end_stream() {
        Framing::Length(0)
    } else {
        body.size_hint()
            .exact()
            .map_or(Framing::Chunked, Framing::Length)
    };
    let keep_length =
        framing == Framing::None && !status.is_informational() && status != StatusCode::NO_CONTENT;
    let mut has_date = false;
    let mut said_close = false;
    for (name, value) in fields {
        // Names come in any case from an origin, in lower case from a HeaderMap.
        if name.eq_ignore_ascii_case(b"transfer-encoding")
            || (!keep_length && name.eq_ignore_ascii_case(b"content-length"))
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"date") {
            has_date = true;
        } else if name.eq_ignore_ascii_case(b"connection") && has_close(value) {
            said_close = true;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None => {}
    }
    if close && !said_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&http_date());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// How the loop ended.
pub enum Ended<I> {
    /// The connection is done (closed by either side, timed out, or stopped).
    Closed,
    /// hyper takes over the connection; the reader yields the bytes already read first.
    Hyper(Prefixed<I>),
    /// The connection opened with the HTTP/2 preface (prior knowledge, RFC 9113 §3.3, as
    /// gRPC clients without TLS do): hyper's HTTP/2 server takes it, preface unread.
    H2c(Prefixed<I>),
}

/// The HTTP/2 preface up to its blank line: an HTTP/1 parser's view of a complete head.
/// hyper's HTTP/2 server checks the rest.
const H2_PREFACE_HEAD: &[u8] = b"PRI * HTTP/2.0\r\n\r\n";

/// What the loop needs from the connection it serves.
pub struct Serving<'a> {
    pub shared: &'a Arc<Shared>,
    pub conn: ClientConn,
    pub tunnel: &'a TunnelSlot,
    pub activity: &'a Activity,
    pub header_read_timeout: std::time::Duration,
    pub limits: RequestLimits,
    /// Set when the connection should finish the request in hand and close.
    pub stopping: &'a AtomicBool,
}

/// Serves simple requests on `io` until the connection ends or a request needs hyper.
pub async fn serve<I>(mut io: I, s: &Serving<'_>) -> io::Result<Ended<I>>
where
    I: AsyncRead + AsyncWrite + LastWrites + SendFile + Unpin,
{
    let mut buf = BytesMut::with_capacity(READ_BUF);
    let mut out = Vec::with_capacity(512);
    let header_ms = u64::try_from(s.header_read_timeout.as_millis()).unwrap_or(u64::MAX);
    let mut first = true;
    loop {
        // As hyper's header timeout: from the end of the previous response.
        let deadline = coarse_ms().saturating_add(header_ms);
        let (req, asked_close) = loop {
            if first && buf.starts_with(H2_PREFACE_HEAD) {
                return Ok(Ended::H2c(Prefixed::new(buf.freeze(), io)));
            }
            if !buf.is_empty() {
                match parse(&mut buf, &s.limits) {
                    Parsed::Simple(req, close) => break (req, close),
                    // `forward::handle` refuses it (and logs it); the unread body makes
                    // the connection unusable after.
                    Parsed::Ambiguous(req) => break (req, true),
                    Parsed::Hyper => return Ok(Ended::Hyper(Prefixed::new(buf.freeze(), io))),
                    Parsed::Refused(refusal) => return refuse(&mut io, &mut out, s, refusal).await,
                    Parsed::Partial if buf.len() >= s.limits.head_bytes => {
                        if !buf.contains(&b'\n') {
                            // The request line alone is past the limit: its target is
                            // too long, which RFC 9112 §3 answers with 414 (as nginx
                            // does); hyper would say 431 for the head as a whole.
                            return refuse(&mut io, &mut out, s, Refusal::UriTooLong).await;
                        }
                        // hyper answers 431.
                        return Ok(Ended::Hyper(Prefixed::new(buf.freeze(), io)));
                    }
                    Parsed::Partial => {}
                }
            }
            if buf.capacity() - buf.len() < READ_BUF / 4 {
                buf.reserve(READ_BUF);
            }
            let read = poll_fn(|cx| {
                // A stop or an idle close between requests ends the connection; one in
                // the middle of a head waits for the head (or its timeout).
                if buf.is_empty() && s.stopping.load(Ordering::Relaxed) {
                    return Poll::Ready(Ok(0));
                }
                match tokio_util::io::poll_read_buf(Pin::new(&mut io), cx, &mut buf) {
                    Poll::Pending if coarse_ms() >= deadline => Poll::Ready(Ok(0)),
                    polled => polled,
                }
            })
            .await?;
            if read == 0 {
                if !buf.is_empty() && coarse_ms() >= deadline {
                    // Part of a head, then nothing until the deadline: closed without an
                    // answer, as nginx does, and logged as its 408.
                    refused::record(s.shared, s.conn.peer.ip(), Refusal::HeaderTimeout);
                }
                return Ok(Ended::Closed);
            }
        };
        first = false;
        let head_request = req.method() == Method::HEAD;
        s.activity.waiting.fetch_add(1, Ordering::Relaxed);
        let response = forward::handle(s.shared, s.conn.clone(), s.tunnel, req).await;
        s.activity.waiting.fetch_sub(1, Ordering::Relaxed);
        let stopping = s.stopping.load(Ordering::Relaxed);
        let close = closes_after(asked_close, stopping, &response);
        let from_file = if close {
            write_last(&mut io, &mut out, response, head_request).await?
        } else {
            write_response(&mut io, &mut out, response, head_request, false).await?
        };
        if from_file {
            s.shared.metrics.cache_file_sends.inc();
        }
        if close {
            return Ok(Ended::Closed);
        }
    }
}

/// Answers a head refused here, counts and logs it, and closes the connection.
async fn refuse<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    s: &Serving<'_>,
    refusal: Refusal,
) -> io::Result<Ended<I>>
where
    I: AsyncWrite + LastWrites + SendFile + Unpin,
{
    refused::record(s.shared, s.conn.peer.ip(), refusal);
    if let Some(e) = refusal.answer() {
        write_last(io, out, forward::error_response(&e).into(), false).await?;
    }
    Ok(Ended::Closed)
}

/// Writes a connection's last response and closes its sending side; the response and
/// the FIN leave in one segment. True when the body went out from a file.
async fn write_last<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    response: Answer,
    head_request: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + LastWrites + SendFile + Unpin,
{
    io.hold_until_shutdown();
    let from_file = write_response(io, out, response, head_request, true).await?;
    let _ = io.shutdown().await;
    Ok(from_file)
}

/// Whether the connection closes after this response: the client asked, the server is
/// stopping, or the response says so (as hyper does, whoever wrote it).
fn closes_after(asked: bool, stopping: bool, response: &Answer) -> bool {
    asked
        || stopping
        || response
            .fields()
            .any(|(n, v)| n.eq_ignore_ascii_case(b"connection") && has_close(v))
}

/// Writes one response whole; true when its body went out from a stored body's file. An
/// error (the client went away, the body failed or did not match its length) leaves the
/// connection unusable: the caller closes it.
async fn write_response<I>(
    io: &mut I,
    out: &mut Vec<u8>,
    mut answer: Answer,
    head_request: bool,
    close: bool,
) -> io::Result<bool>
where
    I: AsyncWrite + SendFile + Unpin,
{
    let status = answer.response.status();
    out.clear();
    let framing = encode_head(
        out,
        status,
        answer.fields(),
        answer.response.body(),
        head_request,
        close,
    );
    let file = answer.response.extensions_mut().remove::<FileBody>();
    let mut body = answer.response.into_body();
    let mut left = match framing {
        Framing::None => {
            write_all(io, &mut [IoSlice::new(out)]).await?;
            io.flush().await?;
            return Ok(false);
        }
        Framing::Length(n) => {
            if let Some(FileBody(file)) = file {
                if file.len() as u64 == n && io.can_send_file() {
                    send_file(io, out, file.file(), file.len()).await?;
                    io.flush().await?;
                    return Ok(true);
                }
            }
            Some(n)
        }
        Framing::Chunked => None,
    };
    // `out` holds what goes before the next body bytes: at first the head, which so
    // leaves with the first bytes of the body, in one write.
    let mut head_sent = false;
    loop {
        let frame = if left == Some(0) && body.is_end_stream() {
            None
        } else {
            poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
        };
        if std::mem::replace(&mut head_sent, true) {
            out.clear();
        }
        let data = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                // Trailers are not forwarded.
                Err(_) => {
                    head_sent = false;
                    continue;
                }
            },
            Some(Err(e)) => return Err(io::Error::other(format!("response body: {e}"))),
            None => {
                if left.is_some_and(|n| n > 0) {
                    return Err(io::Error::other("response body ended short of its length"));
                }
                if left.is_none() {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
                write_all(io, &mut [IoSlice::new(out)]).await?;
                io.flush().await?;
                return Ok(false);
            }
        };
        if data.is_empty() {
            head_sent = false;
            continue;
        }
        let mut size = [0; 18];
        let suffix: &[u8] = match left.as_mut() {
            Some(n) => {
                *n = n
                    .checked_sub(data.len() as u64)
                    .ok_or_else(|| io::Error::other("response body longer than its length"))?;
                b""
            }
            None => {
                out.extend_from_slice(chunk_prefix(&mut size, data.len()));
                b"\r\n"
            }
        };
        if data.len() <= COPY_MAX {
            // One buffer and a plain send: writev's way through the VFS costs more than
            // copying a few KiB (about 1 % of a proxied request's CPU).
            out.extend_from_slice(&data);
            out.extend_from_slice(suffix);
            write_all(io, &mut [IoSlice::new(out)]).await?;
        } else {
            let mut bufs = [IoSlice::new(out), IoSlice::new(&data), IoSlice::new(suffix)];
            write_all(io, &mut bufs).await?;
        }
        // What was written reaches the client before waiting for more (TLS buffers).
        io.flush().await?;
    }
}

/// Sends `head`, then the first `len` bytes of `file` by `sendfile`: the kernel takes the
/// pages of a stored body's sealed file, where a write would copy the body into the
/// socket. The head waits for the file's first pages, to leave in one segment with them.
async fn send_file<I: SendFile>(
    io: &mut I,
    mut head: &[u8],
    file: &std::fs::File,
    len: usize,
) -> io::Result<()> {
    while !head.is_empty() {
        let n = poll_fn(|cx| io.poll_write_before_file(cx, head)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        head = &head[n..];
    }
    let mut sent = 0;
    while sent < len {
        let n = poll_fn(|cx| io.poll_send_file(cx, file, sent as u64, len - sent)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        sent += n;
    }
    Ok(())
}

/// "SIZE\r\n" for a chunk of `len` bytes, in hex.
fn chunk_prefix(buf: &mut [u8; 18], len: usize) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = 16;
    let mut n = len;
    loop {
        i -= 1;
        buf[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    buf[16] = b'\r';
    buf[17] = b'\n';
    &buf[i..]
}

/// Writes every byte of `bufs`, in as few writes as the socket allows: a plain write
/// when one buffer is left, a vectored one otherwise.
async fn write_all<I: AsyncWrite + Unpin>(
    io: &mut I,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = match &*bufs {
            [one] => poll_fn(|cx| Pin::new(&mut *io).poll_write(cx, one)).await?,
            _ => poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, bufs)).await?,
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

/// A stream whose first reads return bytes read before hyper took it over.
pub struct Prefixed<I> {
    prefix: Bytes,
    inner: I,
}

impl<I> Prefixed<I> {
    pub fn new(prefix: Bytes, inner: I) -> Self {
        Self { prefix, inner }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "fast_h1_tests.rs"]
mod tests;
