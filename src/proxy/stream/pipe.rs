//! Bytes both ways between a client and an origin: a fixed buffer per direction (nothing
//! is ever buffered whole, so a slow reader slows its writer down), half-close passed on
//! (an end of input on one side becomes a shutdown of the other side's output, while the
//! other direction goes on), and an idle timeout that counts both directions' progress.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_util::io::poll_read_buf;

use crate::process::clock::coarse_ms;
use crate::proxy::upstream::meter::CountsTraffic;

/// Per direction: a connection starts with a small buffer (most carry little: a login, a
/// command) and one whose reads fill it moves to a large one (bulk transfers make few
/// system calls). Buffers are never zeroed; nothing is ever buffered whole.
const SMALL_BUFFER: usize = 16 * 1024;
const LARGE_BUFFER: usize = 128 * 1024;

/// What a pipe carried, and how it ended.
#[derive(Debug)]
pub struct Piped {
    pub client_to_origin: u64,
    pub origin_to_client: u64,
    pub end: PipeEnd,
}

#[derive(Debug)]
pub enum PipeEnd {
    /// Both sides finished sending.
    Closed,
    /// Nothing moved either way for the idle timeout.
    Idle,
    /// A read or write failed (a reset, a TLS error); the side is named.
    Error {
        side: &'static str,
        error: io::Error,
    },
}

impl PipeEnd {
    pub fn result(&self) -> &'static str {
        match self {
            PipeEnd::Closed => "ok",
            PipeEnd::Idle => "idle",
            PipeEnd::Error { .. } => "error",
        }
    }
}

/// How a stream's end is said: a plain TCP socket says it by being closed (its FIN), so
/// the last direction of a pipe to finish skips the shutdown call; TLS must send its
/// close_notify first.
pub trait Ends {
    fn needs_shutdown(&self) -> bool;
}

impl Ends for tokio::net::TcpStream {
    fn needs_shutdown(&self) -> bool {
        false
    }
}

impl<T> Ends for crate::proxy::maybe_tls::MaybeTls<T> {
    fn needs_shutdown(&self) -> bool {
        self.is_tls()
    }
}

impl Ends for tokio::io::DuplexStream {
    fn needs_shutdown(&self) -> bool {
        true
    }
}

struct Direction {
    buf: BytesMut,
    size: usize,
    read_done: bool,
    shut: bool,
    moved: u64,
}

impl Direction {
    fn new() -> Self {
        Self {
            // Allocated on first read: a direction that never carries anything holds none.
            buf: BytesMut::new(),
            size: SMALL_BUFFER,
            read_done: false,
            shut: false,
            moved: 0,
        }
    }

    fn finished(&self) -> bool {
        self.shut
    }

    /// Moves what it can from `from` to `to`; Ready(Err) on a failure (with which side),
    /// Ready(Ok) when this direction is finished, Pending otherwise. `progress` is set when
    /// any byte moved.
    fn poll<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut R,
        to: &mut W,
        names: (&'static str, &'static str),
        progress: &mut bool,
        last: bool,
    ) -> Poll<Result<(), (&'static str, io::Error)>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Ends + Unpin,
    {
        loop {
            if !self.buf.is_empty() {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.buf))
                    .map_err(|e| (names.1, e))?;
                if n == 0 {
                    return Poll::Ready(Err((
                        names.1,
                        io::Error::new(io::ErrorKind::WriteZero, "peer took no bytes"),
                    )));
                }
                self.buf.advance(n);
                self.moved += n as u64;
                *progress = true;
                continue;
            }
            if self.read_done {
                if !self.shut && last && !to.needs_shutdown() {
                    // The other way is done too: closing the socket sends the FIN.
                    self.shut = true;
                }
                if !self.shut {
                    ready!(Pin::new(&mut *to).poll_flush(cx)).map_err(|e| (names.1, e))?;
                    // A peer that already went away cannot be told; that is not an error
                    // of this direction.
                    let _ = ready!(Pin::new(&mut *to).poll_shutdown(cx));
                    self.shut = true;
                }
                return Poll::Ready(Ok(()));
            }
            // Empty here, so this takes back the whole allocation rather than making one.
            self.buf.reserve(self.size);
            let room = self.buf.capacity();
            match poll_read_buf(Pin::new(&mut *from), cx, &mut self.buf) {
                Poll::Ready(Ok(0)) => self.read_done = true,
                Poll::Ready(Ok(n)) => {
                    *progress = true;
                    if n == room {
                        self.size = LARGE_BUFFER;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err((names.0, e))),
                Poll::Pending => {
                    // Flush what was written before waiting for more (TLS buffers records).
                    ready!(Pin::new(&mut *to).poll_flush(cx)).map_err(|e| (names.1, e))?;
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Carries bytes between `client` and `origin` until both have finished sending, one
/// fails, or nothing moves for `idle`; `meter` hears of the bytes as they move (the
/// origin's `least_traffic` count).
pub async fn pipe<C, O>(
    client: &mut C,
    origin: &mut O,
    idle: Duration,
    meter: Option<&dyn CountsTraffic>,
) -> Piped
where
    C: AsyncRead + AsyncWrite + Ends + Unpin,
    O: AsyncRead + AsyncWrite + Ends + Unpin,
{
    pipe_until(client, origin, idle, false, meter).await
}

/// Like `pipe`, but done as soon as the origin has finished sending and all it sent has
/// reached the client: an FTP data connection, which the server's end closes (after a
/// download it has sent everything, after an upload it has read everything), while a
/// client may keep its end open until it has read the transfer's reply.
pub async fn pipe_until_origin_done<C, O>(
    client: &mut C,
    origin: &mut O,
    idle: Duration,
    meter: Option<&dyn CountsTraffic>,
) -> Piped
where
    C: AsyncRead + AsyncWrite + Ends + Unpin,
    O: AsyncRead + AsyncWrite + Ends + Unpin,
{
    pipe_until(client, origin, idle, true, meter).await
}

async fn pipe_until<C, O>(
    client: &mut C,
    origin: &mut O,
    idle: Duration,
    origin_ends: bool,
    meter: Option<&dyn CountsTraffic>,
) -> Piped
where
    C: AsyncRead + AsyncWrite + Ends + Unpin,
    O: AsyncRead + AsyncWrite + Ends + Unpin,
{
    let mut up = Direction::new();
    let mut down = Direction::new();
    // The timer is moved only when it fires early (progress came since it was set), not
    // on every read: moving a registered timer costs more than the read it follows.
    let sleep = tokio::time::sleep(idle);
    tokio::pin!(sleep);
    let idle_ms = idle.as_millis() as u64;
    let mut last_progress = coarse_ms();
    let mut metered = 0u64;
    let end = poll_fn(|cx| {
        let mut progress = false;
        if !up.finished() {
            if let Poll::Ready(Err((side, error))) = up.poll(
                cx,
                client,
                origin,
                ("client", "origin"),
                &mut progress,
                down.finished(),
            ) {
                return Poll::Ready(PipeEnd::Error { side, error });
            }
        }
        if !down.finished() {
            if let Poll::Ready(Err((side, error))) = down.poll(
                cx,
                origin,
                client,
                ("origin", "client"),
                &mut progress,
                up.finished(),
            ) {
                return Poll::Ready(PipeEnd::Error { side, error });
            }
        }
        if (up.finished() || origin_ends) && down.finished() {
            return Poll::Ready(PipeEnd::Closed);
        }
        if progress {
            last_progress = coarse_ms();
            if let Some(meter) = meter {
                let moved = up.moved + down.moved;
                meter.moved(moved - metered);
                metered = moved;
            }
        }
        while sleep.as_mut().poll(cx).is_ready() {
            let quiet = coarse_ms().saturating_sub(last_progress);
            if quiet >= idle_ms {
                return Poll::Ready(PipeEnd::Idle);
            }
            sleep
                .as_mut()
                .reset(Instant::now() + Duration::from_millis(idle_ms - quiet));
        }
        Poll::Pending
    })
    .await;
    if let Some(meter) = meter {
        meter.moved(up.moved + down.moved - metered);
    }
    Piped {
        client_to_origin: up.moved,
        origin_to_client: down.moved,
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn bytes_cross_both_ways_and_a_half_close_is_passed_on() {
        rt().block_on(async {
            let (mut client_far, mut client) = tokio::io::duplex(1024);
            let (mut origin, mut origin_far) = tokio::io::duplex(1024);
            let meter = std::sync::Arc::new(crate::proxy::upstream::meter::Traffic::new(0));
            let counted = meter.clone();
            let piping = tokio::spawn(async move {
                pipe(
                    &mut client,
                    &mut origin,
                    Duration::from_secs(5),
                    Some(&*counted),
                )
                .await
            });
            // More than one buffer's worth, through 1 KiB duplex pipes: backpressure works.
            let big = vec![7u8; 200_000];
            let sent = big.clone();
            let writer = tokio::spawn(async move {
                client_far.write_all(&sent).await.unwrap();
                client_far.shutdown().await.unwrap();
                // The other direction still works after our half-close.
                let mut back = Vec::new();
                client_far.read_to_end(&mut back).await.unwrap();
                back
            });
            let mut got = Vec::new();
            origin_far.read_to_end(&mut got).await.unwrap();
            assert_eq!(got.len(), big.len(), "the client's bytes and then its EOF");
            origin_far
                .write_all(b"reply after the half-close")
                .await
                .unwrap();
            origin_far.shutdown().await.unwrap();
            assert_eq!(writer.await.unwrap(), b"reply after the half-close");
            let piped = piping.await.unwrap();
            assert!(matches!(piped.end, PipeEnd::Closed), "{:?}", piped.end);
            assert_eq!(piped.client_to_origin, 200_000);
            assert_eq!(piped.origin_to_client, 26);
            assert_eq!(
                meter.total(),
                200_026,
                "the origin's traffic meter heard it all"
            );
        });
    }

    #[test]
    fn nothing_moving_for_the_idle_timeout_ends_the_pipe() {
        rt().block_on(async {
            let (_client_far, mut client) = tokio::io::duplex(64);
            let (mut origin, _origin_far) = tokio::io::duplex(64);
            let started = Instant::now();
            let piped = pipe(&mut client, &mut origin, Duration::from_millis(100), None).await;
            assert!(matches!(piped.end, PipeEnd::Idle), "{:?}", piped.end);
            assert!(started.elapsed() >= Duration::from_millis(100));
        });
    }
}
