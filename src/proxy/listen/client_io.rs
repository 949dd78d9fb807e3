//! The client side of a connection: a stream wrapper that feeds the idle timeout, and the
//! timer behind hyper's header timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

use crate::process::clock::coarse_ms;
use crate::proxy::listen::lazy_socket::{LastWrites, Registered, SendFile};

/// Activity of one client connection, for the idle timeout: the last read or write, and
/// requests still waiting for their response head.
#[derive(Default)]
pub struct Activity {
    pub last_ms: AtomicU64,
    pub waiting: AtomicUsize,
}

impl Activity {
    /// Resolves once no request waits for its response and nothing has been read or
    /// written for `idle`, looking every `every`.
    pub async fn idle_for(&self, idle: Duration, every: Duration) {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        loop {
            tokio::time::sleep(every).await;
            let quiet = coarse_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed));
            if self.waiting.load(Ordering::Relaxed) == 0 && quiet >= idle_ms {
                return;
            }
        }
    }
}

/// Resolves when the server asks its connections to stop, or is gone without a word.
pub async fn stop_requested(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// A client stream that notes the time of every successful read and write (for the idle
/// timeout), and holds the first write after each read back until the other ready
/// connections have had their turn.
///
/// Without the hold, a proxy under load answers each connection as soon as it has read
/// it, one write every few microseconds, and a client that drains replies faster than
/// that falls asleep between them: every response then costs a cross-CPU wake-up on both
/// sides (measured with wrk: 0.4–0.8 sleeps of wrk per response through us, 0.035 through
/// HAProxy, whose event loop reads every ready connection before it sends). Yielding once
/// puts the write behind the other tasks the same event woke, so the responses to one
/// batch of requests leave together. With a single connection the task is next in line at
/// once and nothing waits.
///
/// The hold sits above TLS (below it, the record would be written by the flush that
/// follows in the same poll), and only once the socket has joined the event loop: a
/// connection's first exchange is answered at once, so one that closes after it never
/// needs a second poll.
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
    /// A read brought data since the last write; the next write yields first.
    hold_next_write: bool,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            hold_next_write: false,
        }
    }

    /// Pending, with the task woken again, for the first write after a read.
    fn hold_first_write(&mut self, cx: &mut Context<'_>) -> Poll<()>
    where
        S: Registered,
    {
        if std::mem::take(&mut self.hold_next_write) && self.inner.is_registered() {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(())
    }

    fn touch(&self) {
        self.activity.last_ms.store(coarse_ms(), Ordering::Relaxed);
    }

    /// Every kind of write: held if it is the first after a read, and counted as
    /// activity once it moves a byte.
    fn tracked_write(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut S, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>>
    where
        S: Registered,
    {
        std::task::ready!(self.hold_first_write(cx));
        let res = write(&mut self.inner, cx);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        res
    }
}

impl<S: LastWrites> LastWrites for Tracked<S> {
    fn hold_until_shutdown(&mut self) {
        self.inner.hold_until_shutdown();
    }
}

impl<S: SendFile + Registered> SendFile for Tracked<S> {
    fn can_send_file(&self) -> bool {
        self.inner.can_send_file()
    }

    fn poll_write_before_file(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.tracked_write(cx, |s, cx| s.poll_write_before_file(cx, data))
    }

    fn poll_send_file(
        &mut self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        self.tracked_write(cx, |s, cx| s.poll_send_file(cx, file, offset, len))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
            self.hold_next_write = true;
        }
        res
    }
}

impl<S: AsyncWrite + Registered + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.tracked_write(cx, |s, cx| Pin::new(s).poll_write(cx, data))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.tracked_write(cx, |s, cx| Pin::new(s).poll_write_vectored(cx, bufs))
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

/// hyper's HTTP/1 header-read timer, with sleeps that are only checked, never scheduled.
///
/// hyper starts a header timer for every request it reads. With tokio's timer each one
/// was an allocation, a clock read and an insertion into (and removal from) the timer
/// wheel, 4 % of the user time of a keep-alive hit. These sleeps just compare the clock
/// whenever hyper polls them; the task driving the connection is woken at least every
/// `POLL_TICK` of the header timeout (see `server::drive`), which bounds how late a
/// timeout can fire.
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckedTimer;

/// How often, as a fraction of the header timeout, a connection must be polled for its
/// header timer to be accurate to that fraction.
pub const POLL_TICK_DIVISOR: u32 = 4;

/// A deadline on the coarse clock (`coarse_ms`, a few ms of resolution, read without the
/// TSC): hyper polls this on every poll of a connection waiting for a head, and precise
/// clock reads are slow on virtual machines. Seconds-long header timeouts do not notice
/// the resolution.
struct CheckedSleep {
    deadline_ms: u64,
}

impl CheckedSleep {
    fn until(deadline: std::time::Instant) -> Self {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        Self::after(left)
    }

    fn after(duration: std::time::Duration) -> Self {
        let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self {
            deadline_ms: coarse_ms().saturating_add(ms),
        }
    }
}

impl std::future::Future for CheckedSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
        if coarse_ms() >= self.deadline_ms {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl hyper::rt::Sleep for CheckedSleep {}

impl hyper::rt::Timer for CheckedTimer {
    fn sleep(&self, duration: std::time::Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CheckedSleep::after(duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(CheckedSleep::until(deadline))
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, new_deadline: std::time::Instant) {
        // A sleep of ours is replaced in place of a fresh allocation.
        if let Some(ours) = sleep.as_mut().downcast_mut_pin::<CheckedSleep>() {
            *ours.get_mut() = CheckedSleep::until(new_deadline);
        } else {
            *sleep = self.sleep_until(new_deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::CountingWaker;
    use std::task::Waker;

    #[test]
    fn checked_sleeps_compare_the_clock_and_reset_in_place() {
        use hyper::rt::Timer;
        use std::time::{Duration, Instant};
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let timer = CheckedTimer;
        let mut past = timer.sleep_until(Instant::now() - Duration::from_millis(1));
        assert!(past.as_mut().poll(&mut cx).is_ready());
        let mut later = timer.sleep(Duration::from_secs(60));
        assert!(later.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            counter.count(),
            0,
            "nothing is scheduled: the connection's tick polls it"
        );
        let before: *const () = (&*later as *const dyn hyper::rt::Sleep).cast();
        timer.reset(&mut later, Instant::now() - Duration::from_millis(1));
        let after: *const () = (&*later as *const dyn hyper::rt::Sleep).cast();
        assert_eq!(before, after, "reset reuses the allocation");
        assert!(later.as_mut().poll(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn once_registered_the_first_write_after_a_read_yields_once() {
        use crate::proxy::listen::lazy_socket::{Acceptor, LazySocket};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let acceptor =
            Acceptor::new(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let mut client = tokio::net::TcpStream::connect(acceptor.local_addr().unwrap())
            .await
            .unwrap();
        let (socket, _) = acceptor.accept().await.unwrap();
        let mut io: Tracked<LazySocket> = Tracked::new(socket, Arc::new(Activity::default()));
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);

        // The first exchange, before the socket has blocked: answered at once.
        client.write_all(b"one").await.unwrap();
        let mut got = [0u8; 3];
        io.read_exact(&mut got).await.unwrap();
        if !io.inner.is_registered() {
            let direct = Pin::new(&mut io).poll_write(&mut cx, b"1");
            assert!(
                matches!(direct, Poll::Ready(Ok(1))),
                "not held before registering"
            );
        }

        // Waiting for the next request registers the socket; its answer is held once.
        let mut space = [0u8; 8];
        let mut buf = ReadBuf::new(&mut space);
        let _ = Pin::new(&mut io).poll_read(&mut cx, &mut buf);
        let _ = Pin::new(&mut io).poll_read(&mut cx, &mut buf);
        assert!(io.inner.is_registered());
        client.write_all(b"two").await.unwrap();
        io.read_exact(&mut got).await.unwrap();
        let before = counter.count();
        let first = Pin::new(&mut io).poll_write(&mut cx, b"answer");
        assert!(first.is_pending(), "held behind the other ready tasks");
        assert_eq!(counter.count(), before + 1, "and the task is due again");
        let second = Pin::new(&mut io).poll_write(&mut cx, b"answer");
        assert!(matches!(second, Poll::Ready(Ok(6))));
        let third = Pin::new(&mut io).poll_write(&mut cx, b"!");
        assert!(matches!(third, Poll::Ready(Ok(1))), "only the first waits");
    }
}
