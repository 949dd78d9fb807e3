//! A future polled only when it has been woken, inside a task that wakes for other reasons.
//!
//! A client connection's task wakes for every read and write, and `tokio::select!` polls
//! every branch on every wake: the idle timer and the stop signal were polled per request
//! for nothing, and polling a registered `watch` receiver takes the channel's mutex. Behind
//! this wrapper they are polled once to register, then only after their own waker fired.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

pub struct PollWhenWoken<F> {
    inner: F,
    /// Made on the first poll: a connection answered and closed on its first poll never
    /// needs one.
    relay: Option<(Arc<Relay>, Waker)>,
    /// The task waker last given to the relay; comparing against it needs no lock.
    task: Option<Waker>,
}

/// The waker `inner` sees: it notes the wake and passes it on to the task.
struct Relay {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Relay {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Ok(task) = self.task.lock() {
            if let Some(w) = task.as_ref() {
                w.wake_by_ref();
            }
        }
    }
}

impl<F> PollWhenWoken<F> {
    pub fn new(inner: F) -> Self {
        Self {
            inner,
            relay: None,
            task: None,
        }
    }
}

impl<F: Future + Unpin> Future for PollWhenWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let (relay, own) = this.relay.get_or_insert_with(|| {
            let relay = Arc::new(Relay {
                woken: AtomicBool::new(true),
                task: Mutex::new(None),
            });
            let own = Waker::from(relay.clone());
            (relay, own)
        });
        if !this.task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            if let Ok(mut task) = relay.task.lock() {
                *task = Some(waker.clone());
            }
            this.task = Some(waker);
        }
        if !relay.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(own))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::CountingWaker;

    /// Pending until `ready` is set; counts its polls and keeps the last waker.
    struct Probe {
        polls: usize,
        ready: bool,
        waker: Option<Waker>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls += 1;
            self.waker = Some(cx.waker().clone());
            if self.ready {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }
    }

    #[test]
    fn the_inner_future_is_polled_first_and_then_only_after_its_own_wake() {
        let task = Arc::new(CountingWaker::default());
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        let mut f = PollWhenWoken::new(Probe {
            polls: 0,
            ready: false,
            waker: None,
        });
        assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        assert_eq!(f.inner.polls, 1, "the first poll registers");
        for _ in 0..5 {
            assert!(Pin::new(&mut f).poll(&mut cx).is_pending());
        }
        assert_eq!(f.inner.polls, 1, "the task's other wakes leave it alone");
        f.inner.ready = true;
        f.inner.waker.take().expect("registered").wake();
        assert_eq!(task.count(), 1, "its wake reaches the task");
        assert!(Pin::new(&mut f).poll(&mut cx).is_ready());
        assert_eq!(f.inner.polls, 2);
    }

    #[test]
    fn a_new_task_waker_is_the_one_woken() {
        let first = Arc::new(CountingWaker::default());
        let second = Arc::new(CountingWaker::default());
        let mut f = PollWhenWoken::new(Probe {
            polls: 0,
            ready: false,
            waker: None,
        });
        let w1 = Waker::from(first.clone());
        assert!(Pin::new(&mut f)
            .poll(&mut Context::from_waker(&w1))
            .is_pending());
        let w2 = Waker::from(second.clone());
        assert!(Pin::new(&mut f)
            .poll(&mut Context::from_waker(&w2))
            .is_pending());
        f.inner.waker.take().expect("registered").wake();
        assert_eq!((first.count(), second.count()), (0, 1));
    }
}
