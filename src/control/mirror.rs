//! Mirrors the pipeline's stop token into the phase from inside `cancel()`.
//!
//! Polling a `CancellationToken` takes its lock, too dear for every pull of
//! a busy intake, so intake reads the atomic phase instead. A parent token
//! cancelled by the caller must set that phase before its `cancel()`
//! returns, or a busy intake goes on pulling for a while (the periodic
//! check of TheHPXProject/hpx#2661). tokio-util wakes every waiter of a
//! cancelled token synchronously, inside `cancel()` and after releasing the
//! token's locks (`tree_node::cancel` in tokio-util 0.7), so the wait is
//! polled with a waker of our own whose `wake` runs the stop action and
//! then wakes the task that polls it.
//!
//! That tokio-util behaviour is not documented; the test at the bottom of
//! this file fails the day it changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// A wait for the stop token that runs `on_stop` the moment it is cancelled.
pub(crate) struct StopMirror {
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

impl StopMirror {
    /// Watches `token`, registering at once: a cancel from any thread, even
    /// before the watching task first runs, runs `on_stop`.
    pub(crate) fn new(
        token: &CancellationToken,
        on_stop: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        let mirror = Arc::new(Mirror {
            token: token.clone(),
            on_stop: Box::new(on_stop),
            then: Mutex::new(None),
        });
        let mut watch = StopMirror {
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

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    #[test]
    fn a_parent_cancel_runs_the_stop_action_before_it_returns() {
        // The undocumented tokio-util behaviour this module relies on:
        // waiters of a child token are woken inside the parent's `cancel()`.
        let parent = CancellationToken::new();
        let child = parent.child_token();
        let runs = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&runs);
        let _mirror = StopMirror::new(&child, move || {
            counter.fetch_add(1, SeqCst);
        });
        assert_eq!(runs.load(SeqCst), 0);
        parent.cancel();
        assert!(
            runs.load(SeqCst) >= 1,
            "tokio-util no longer wakes a child's waiters inside the parent's \
             cancel(): the stop mirror must be rebuilt"
        );
    }
}
