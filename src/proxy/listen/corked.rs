//! Writes of an HTTP/2 connection held back until the connection's poll is over, so the
//! responses to all the streams a client sent together leave in one TLS record and one
//! system call.
//!
//! hyper's HTTP/2 server flushes after every stream it accepts, and TLS encrypts and
//! writes on every write: ten requests in one packet were answered with ten records and
//! ten `writev`s (HAProxy and nginx send one). `Corked` keeps what the connection writes
//! in a buffer and treats its flushes as requests; the task driving the connection calls
//! `Uncork::poll_drain` after each poll of it, which sends the lot. Past `HIGH_WATER`
//! buffered bytes a write goes through at once, so a large body still streams with
//! backpressure.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered bytes beyond which writes are passed on without waiting for the poll to end.
const HIGH_WATER: usize = 64 * 1024;

struct Shared<S> {
    io: S,
    buffer: Vec<u8>,
    /// How much of `buffer` has been passed on already.
    written: usize,
    /// The connection asked for a flush since the last drain.
    flush_wanted: bool,
}

impl<S: AsyncWrite + Unpin> Shared<S> {
    /// Passes the buffer on and flushes if asked to; Ready when nothing is left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buffer.len() {
            let n = match Pin::new(&mut self.io).poll_write(cx, &self.buffer[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.written += n;
        }
        self.buffer.clear();
        self.written = 0;
        if self.flush_wanted {
            std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.flush_wanted = false;
        }
        Poll::Ready(Ok(()))
    }
}

/// The connection's side: an IO object whose writes wait for `Uncork`.
pub struct Corked<S> {
    shared: Arc<Mutex<Shared<S>>>,
}

/// The driving task's side.
pub struct Uncork<S> {
    shared: Arc<Mutex<Shared<S>>>,
}

pub fn cork<S>(io: S) -> (Corked<S>, Uncork<S>) {
    let shared = Arc::new(Mutex::new(Shared {
        io,
        buffer: Vec::new(),
        written: 0,
        flush_wanted: false,
    }));
    (
        Corked {
            shared: shared.clone(),
        },
        Uncork { shared },
    )
}

fn lock<S>(shared: &Mutex<Shared<S>>) -> MutexGuard<'_, Shared<S>> {
    // Both sides run on the connection's task; a poisoned lock means that task panicked
    // mid-write, and the bytes in it are as good as any.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl<S: AsyncWrite + Unpin> Uncork<S> {
    /// Sends what the connection wrote. Pending when the socket is full (the task is
    /// woken when it drains); errors surface on the connection's next write as well.
    pub fn poll_drain(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        lock(&self.shared).poll_drain(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Corked<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut lock(&self.shared).io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Corked<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut shared = lock(&self.shared);
        if shared.buffer.len() >= HIGH_WATER {
            std::task::ready!(shared.poll_drain(cx))?;
        }
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        for b in bufs {
            shared.buffer.extend_from_slice(b);
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Done by the driving task once the connection's poll is over.
        lock(&self.shared).flush_wanted = true;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = lock(&self.shared);
        shared.flush_wanted = true;
        std::task::ready!(shared.poll_drain(cx))?;
        Pin::new(&mut shared.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_wait_for_the_drain_and_arrive_in_order() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let (mut corked, uncork) = cork(near);
        corked.write_all(b"one ").await.unwrap();
        corked.write_all(b"two").await.unwrap();
        corked.flush().await.unwrap();
        let mut buf = [0u8; 16];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), far.read(&mut buf)).await;
        assert!(early.is_err(), "nothing is sent before the drain");
        std::future::poll_fn(|cx| uncork.poll_drain(cx))
            .await
            .unwrap();
        let n = far.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"one two");
    }

    #[tokio::test]
    async fn a_full_buffer_writes_through_with_backpressure() {
        // The far side holds 1 KiB: past the high-water mark, writes wait for it.
        let (near, mut far) = tokio::io::duplex(1024);
        let (mut corked, _uncork) = cork(near);
        let total = HIGH_WATER * 3;
        let writer = tokio::spawn(async move {
            let chunk = vec![7u8; 4096];
            let mut sent = 0;
            while sent < total {
                corked.write_all(&chunk).await.unwrap();
                sent += chunk.len();
            }
            corked.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), total);
        assert!(got.iter().all(|b| *b == 7));
    }

    #[tokio::test]
    async fn reads_pass_through() {
        let (near, mut far) = tokio::io::duplex(1024);
        let (mut corked, _uncork) = cork(near);
        far.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        corked.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
    }
}
