//! Mirrors the pipeline's stop token into an atomic from inside `cancel()`.
//!
//! Polling a `CancellationToken` takes its lock (PITFALLS 3), too dear for
//! every pull of a busy intake, so intake reads an atomic phase instead. A
//! parent token cancelled by the caller must set that phase before its
//! `cancel()` returns, or a busy intake goes on pulling for a while
//! (CASE-23). tokio-util wakes every waiter of a cancelled token
//! synchronously, inside `cancel()` and after releasing the token's locks
//! (`tree_node::cancel` in tokio-util 0.7), so the wait is polled with a
//! waker of our own whose `wake` sets the phase and then wakes the task that
//! polls it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A wait for the stop token that runs `on_stop` the moment it is cancelled.
pub(crate) struct StopWatch {
    wait: Pin<Box<WaitForCancellationFutureOwned>>,
    mirror: Arc<Mirror>,
    /// Our own waker; the wait is always polled with it, so it stays the one
    /// registered with the token.
    waker: Waker,
    stopped: bool,
}

struct Mirror {
    token: CancellationToken,
    on_stop: Box<dyn Fn() + Send + Sync>,
    /// The task to wake after `on_stop` has run.
    then: Mutex<Option<Waker>>,
}

impl Wake for Mirror {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Runs inside `cancel()`, after the token's locks are released, so
        // looking at the token here cannot deadlock.
        if self.token.is_cancelled() {
            (self.on_stop)();
        }
        let then = self
            .then
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(waker) = then {
            waker.wake();
        }
    }
}

impl StopWatch {
    /// Watches `token`, registering at once: a cancel from any thread, even
    /// before the watching task first runs, sets the mirror.
    pub(crate) fn new(
        token: &CancellationToken,
        on_stop: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        let mirror = Arc::new(Mirror {
            token: token.clone(),
            on_stop: Box::new(on_stop),
            then: Mutex::new(None),
        });
        let mut watch = StopWatch {
            wait: Box::pin(token.clone().cancelled_owned()),
            waker: Waker::from(Arc::clone(&mirror)),
            mirror,
            stopped: false,
        };
        watch.poll_own();
        watch
    }

    /// Ready once the token is cancelled; by then `on_stop` has run.
    pub(crate) fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.stopped {
            *self
                .mirror
                .then
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            self.poll_own();
        }
        if self.stopped {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    fn poll_own(&mut self) {
        let mut own = Context::from_waker(&self.waker);
        if self.wait.as_mut().poll(&mut own).is_ready() {
            (self.mirror.on_stop)();
            self.stopped = true;
        }
    }
}
