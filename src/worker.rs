//! The worker loop: take an item, run the handler in isolation, hand over
//! the result.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::books::{Exit, Fate};
use crate::handoff::Taken;
use crate::isolate::{Quiet, catching, drop_quietly, timer_at};
use crate::output::Sender;
use crate::pipeline::{Shared, Start};

/// How one handler run ended, with its output.
enum Ran<T> {
    Done(T),
    Panicked,
    TimedOut,
    Cancelled,
}

pub(crate) async fn run<Item, F, Fut>(
    shared: Arc<Shared<Item>>,
    slot: usize,
    handler: Arc<F>,
    results: Sender<Fut::Output>,
    timeout: Option<Duration>,
    is_err: Option<fn(&Fut::Output) -> bool>,
) -> Exit
where
    F: Fn(Item) -> Fut,
    Fut: Future,
{
    // The last worker out drops the handler: its `Drop` is user code (CASE-22).
    let handler = Quiet::new(handler);
    let counters = &shared.workers[slot];
    let late = shared.late.lease();
    let settle = late.as_ref().and_then(|late| late.settle.as_deref());
    // One wait on the kill token per worker, not per item: it stays valid
    // until it fires, and the worker exits when it does.
    let mut killed = pin!(shared.kill.cancelled());
    loop {
        if results.is_ordered() {
            results.reserve_turn().await;
        }
        let Some(Taken {
            seq,
            item,
            expired,
            woke_intake,
        }) = shared.queue.take().await
        else {
            return Exit::Joined;
        };
        if expired {
            // Too old to start: shed at the last moment, never handled.
            counters.took();
            counters.ended(Fate::Expired);
            if let Some(settle) = settle {
                settle.settle(&item, Fate::Expired.outcome());
            }
            drop_quietly(item);
            results.deliver(seq, None).await;
            continue;
        }
        let start = shared.may_start();
        if start != Start::Go {
            // Taken just before an abort emptied the queue, or after the
            // drain deadline passed (this worker then begins the abort): the
            // handler has not started, so the item goes back like a queued
            // one. This narrows, but on a multi-thread runtime cannot close,
            // the window in which a handler starts as `abort()` returns.
            shared.cancel_unqueued(std::iter::once(item));
            if start == Start::RefusedAbort {
                shared.abort();
            }
            results.deliver(seq, None).await;
            return Exit::Joined;
        }
        counters.took();
        if woke_intake && shared.yielder.has_lifo_slot() {
            // Let the intake refill before this handler runs (see `Taken`).
            // Counted in flight first: should the task be dropped here, the
            // report still finds the item (cancelled).
            shared.yielder.let_woken_run().await;
        }
        // The handler consumes the item: take its key first.
        let key = settle.map(|settle| settle.key(&item));
        if let Some(None) = key {
            // The key function panicked: the item could never be settled,
            // and a broker would redeliver it to be handled twice. It is
            // not started; it counts `failed` and its place in the
            // settlement stream is kept without a record.
            counters.ended(Fate::Failed);
            if let Some(settle) = settle {
                settle.settle_key(None, Fate::Failed.outcome());
            }
            drop_quietly(item);
            results.deliver(seq, None).await;
            continue;
        }
        let outcome = run_one(&**handler, item, killed.as_mut(), timeout).await;
        let cut_off = matches!(outcome, Ran::Cancelled);
        // Counted before the hand-over: `processed` means the handler
        // completed. The hand-over waits for the consumer until an abort
        // begins; then the result is discarded (and counted so), so
        // `processed == delivered + discarded`.
        let (fate, result) = match outcome {
            Ran::Done(output) => (Fate::Processed, Some(output)),
            Ran::Panicked => (Fate::Failed, None),
            Ran::TimedOut => (Fate::TimedOut, None),
            Ran::Cancelled => (Fate::Cancelled, None),
        };
        if let (Some(output), Some(is_err)) = (&result, is_err) {
            if is_err(output) {
                counters.errored();
            }
        }
        counters.ended(fate);
        if let (Some(settle), Some(key)) = (settle, key) {
            settle.settle_key(key, fate.outcome());
        }
        results.deliver(seq, result).await;
        if cut_off {
            return Exit::Aborted;
        }
    }
}

/// Calls and polls the handler with every panic caught. An abort or the
/// handler timeout cancels it only at a suspension point: a handler that is
/// ready completes.
async fn run_one<Item, F, Fut>(
    handler: &F,
    item: Item,
    mut killed: Pin<&mut impl Future<Output = ()>>,
    timeout: Option<Duration>,
) -> Ran<Fut::Output>
where
    F: Fn(Item) -> Fut,
    Fut: Future,
{
    // Read the clock only when a timeout is set.
    // A timeout past the clock's range never fires.
    let mut deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
    let Some(future) = catching(|| handler(item)) else {
        return Ran::Panicked;
    };
    // In an `Option` so the future (and the item it owns) is dropped in
    // place under `catching`: its `Drop` is user code too.
    let mut future = pin!(Some(future));
    // Armed on the first `Pending`, so an instant handler never touches the timer.
    let mut timer = pin!(None::<Sleep>);
    let outcome = poll_fn(|cx| {
        let Some(running) = future.as_mut().as_pin_mut() else {
            return Poll::Ready(Ran::Panicked);
        };
        match catching(|| running.poll(cx)) {
            Some(Poll::Ready(output)) => return Poll::Ready(Ran::Done(output)),
            None => return Poll::Ready(Ran::Panicked),
            Some(Poll::Pending) => {}
        }
        // Only a pending handler looks at the kill token, so an instant
        // handler never touches the token's lock (PITFALLS 3).
        if killed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ran::Cancelled);
        }
        if let Some(at) = deadline {
            if timer.is_none() {
                // A deadline already reached (a zero timeout) cuts the
                // handler now: a timer would round up to the next tick and
                // let a handler that only yields finish first.
                if Instant::now() >= at {
                    return Poll::Ready(Ran::TimedOut);
                }
                match timer_at(at) {
                    Some(armed) => timer.set(Some(armed)),
                    // No time driver: this handler runs untimed.
                    None => deadline = None,
                }
            }
            if let Some(timer) = timer.as_mut().as_pin_mut() {
                if timer.poll(cx).is_ready() {
                    return Poll::Ready(Ran::TimedOut);
                }
            }
        }
        Poll::Pending
    })
    .await;
    catching(|| future.set(None));
    outcome
}
