//! How a task gives the tasks it woke a turn, by runtime flavor.
//!
//! On a multi-thread runtime a task woken by another task on the same
//! thread goes into that thread's LIFO slot, which no other thread can
//! steal, and then to its local run queue; waking itself puts the waker
//! behind them (`yield_in_turn`) and tells an idle thread there is work to
//! steal. `tokio::task::yield_now` instead defers the task until its thread
//! finds nothing else to run, which made the intake and the workers take
//! turns in lock-step while the other thread idled (goodput against the
//! async-channel fan-out 1.01–1.03× deferred, 1.11–1.64× in turn;
//! `BENCHMARKS.md`).
//!
//! On a current-thread runtime there is no LIFO slot and no thief, and the
//! self-wake costs fairness instead: a task that keeps waking itself keeps
//! the run queue from ever emptying, so every task that yields with
//! `yield_now` (and the `block_on` future, often the consumer) runs only
//! when the scheduler next polls its driver, every 61 ticks (tokio's
//! `event_interval`). A heartbeat beside a 100,000-item burst beat 49
//! times, and the unread results made the intake shed 98 %; with the
//! deferred yield it beats 6,251 times and nothing is shed (`BENCHMARKS.md`,
//! "Fairness on one thread"). So one thread yields with `yield_now`, and
//! only there.

use std::future::poll_fn;
use std::task::Poll;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Yielder {
    /// A multi-thread runtime: yield in turn.
    InTurn,
    /// A current-thread runtime: yield until the thread is idle.
    Deferred,
}

impl Yielder {
    pub(crate) fn for_runtime(runtime: &tokio::runtime::Handle) -> Yielder {
        match runtime.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => Yielder::Deferred,
            _ => Yielder::InTurn,
        }
    }

    /// Lets the tasks this one woke run before it goes on.
    pub(crate) async fn let_woken_run(self) {
        match self {
            Yielder::InTurn => yield_in_turn().await,
            Yielder::Deferred => tokio::task::yield_now().await,
        }
    }

    /// Whether a wake-up this task gave can be stuck behind it (in the
    /// thread's LIFO slot) until it yields.
    pub(crate) fn has_lifo_slot(self) -> bool {
        self == Yielder::InTurn
    }
}

/// Lets every task already queued on this thread run once, then resumes.
///
/// Waking itself puts the task at the back of the thread's run queue, as
/// tokio does for any task woken while it runs, and tells an idle thread
/// there is work to steal.
async fn yield_in_turn() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}
