//! The worker stage: take an item, run the handler in isolation, hand over
//! the result.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use crate::books::{Books, Exit, Fate, WorkerCounters};
use crate::config::HandlerKind;
use crate::control::{Hooks, Phase, Start, Stopper};
use crate::export::ItemMeters;
use crate::isolate::{Quiet, catching, drop_quietly, timer_at};
use crate::queue::{HandOff, KeyId, Taken};
use crate::results::Sender;
use crate::sched::Yielder;
use crate::settle::PendingKey;

/// What one worker needs of the pipeline.
pub(crate) struct WorkerParts<Item, O> {
    pub(crate) queue: Arc<HandOff<Item>>,
    pub(crate) phase: Arc<Phase>,
    pub(crate) books: Arc<Books>,
    /// This worker's counters in `books`.
    pub(crate) slot: usize,
    /// To abort at the drain deadline, hand back an unstarted item, and
    /// lend the settlement recorder.
    pub(crate) stopper: Stopper<Item>,
    pub(crate) results: Sender<O>,
    pub(crate) timeout: Option<Duration>,
    /// What an output says about its item (an `Err` of a fallible
    /// handler, a withdrawn call); `None`: a plain completion.
    pub(crate) verdict: Option<fn(&O) -> Verdict>,
    pub(crate) yielder: Yielder,
    /// Its items' timings (the `metrics` feature; zero-sized without it).
    pub(crate) meters: ItemMeters,
}

/// What a completed handler's output says about its item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Processed.
    Ok,
    /// Processed, and counted `errored` (a fallible handler's `Err`).
    Err,
    /// Not processed: its caller went away and the handler stopped for it
    /// (counted `cancelled`, settled `Cancelled(Withdrawn)`).
    Withdrawn,
}

impl Verdict {
    /// The verdict of a handler of kind `Kind` on `output`.
    pub(crate) fn of<O, Kind: HandlerKind<O>>(output: &O) -> Verdict {
        match Kind::IS_ERR {
            Some(is_err) if is_err(output) => Verdict::Err,
            _ => Verdict::Ok,
        }
    }
}

/// How one handler run ended, with its output.
enum Ran<T> {
    Done(T),
    Panicked,
    TimedOut,
    Cancelled,
}

pub(crate) async fn run<Item, F, Fut>(
    parts: WorkerParts<Item, Fut::Output>,
    handler: Arc<F>,
) -> Exit
where
    F: Fn(Item) -> Fut,
    Fut: Future,
{
    let WorkerParts {
        queue,
        phase,
        books,
        slot,
        stopper,
        results,
        timeout,
        verdict,
        yielder,
        meters,
    } = parts;
    // The last worker out drops the handler: its `Drop` is user code.
    let handler = Quiet::new(handler);
    let counters = books.worker(slot);
    let hooks = stopper.hooks();
    let hooks = hooks.as_deref();
    // One wait on the kill token per worker, not per item: it stays valid
    // until it fires, and the worker exits when it does.
    let mut killed = pin!(phase.kill.cancelled());
    // Keyed: the key of the last item, once its result is handed over:
    // reported finished with the next take, under one lock.
    let mut done = KeyGuard {
        queue: &queue,
        key: None,
    };
    loop {
        if results.takes_turns() {
            // The turn may be long coming: the key must not wait for it.
            if let Some(key) = done.key.take() {
                queue.finished(key);
            }
            results.reserve_turn().await;
        }
        let Some(Taken {
            seq,
            item,
            queued_at,
            expired,
            woke_producer,
            key,
        }) = queue.take_after(done.key.take()).await
        else {
            return Exit::Joined;
        };
        // Keyed: every way out of this iteration reports the key's item
        // finished, so the key's next item may start.
        let in_flight = KeyGuard { queue: &queue, key };
        if expired {
            // Too old to start: shed at the last moment, never handled.
            counters.took();
            unstarted(counters, hooks, item, Fate::Expired, None);
            results.deliver(seq, None).await;
            continue;
        }
        // Counted in flight before the yield below: should the task be
        // dropped there, the report still finds the item (cancelled).
        counters.took();
        if woke_producer && yielder.has_lifo_slot() {
            // Let the producer refill before this handler runs (see
            // `Taken`).
            yielder.let_woken_run().await;
        }
        // The handler consumes the item: take its settlement key first (user
        // code, before the last check below: a key function may stop the
        // pipeline too).
        let recorder = hooks.and_then(|hooks| hooks.recorder.as_deref());
        let key = recorder.map(|recorder| recorder.key(&item));
        if let Some(None) = key {
            // The key function panicked: no record can exist without a key,
            // and a broker would redeliver the item to be handled twice. It
            // is not started, and counts `failed`.
            unstarted(counters, hooks, item, Fate::Failed, Some(None));
            results.deliver(seq, None).await;
            continue;
        }
        // The last check, after the yield above and the key function, which
        // both let other code run: an `abort()` that returned, or the drain
        // deadline passed, meanwhile is seen here (fresh-user trials found
        // the handler called after both).
        let start = phase.may_start();
        if start != Start::Go {
            // Taken just before an abort emptied the queue, or after the
            // drain deadline passed (this worker then begins the abort): the
            // handler has not started, so the item goes back like a queued
            // one. This narrows, but on a multi-thread runtime cannot close,
            // the window in which a handler starts as `abort()` returns.
            counters.ended(Fate::Cancelled);
            stopper.hand_back_taken(item, key.flatten());
            if start == Start::RefusedAbort {
                stopper.abort();
            }
            results.deliver(seq, None).await;
            return Exit::Joined;
        }
        let started = meters.start(queued_at);
        let outcome = run_one(&**handler, item, killed.as_mut(), timeout).await;
        let cut_off = matches!(outcome, Ran::Cancelled);
        // Counted before the hand-over: `processed` means the handler
        // completed. The hand-over waits for the consumer until an abort
        // begins; then the result is discarded (and counted so).
        let (fate, result) = match outcome {
            Ran::Done(output) => match verdict.map_or(Verdict::Ok, |verdict| verdict(&output)) {
                Verdict::Ok => (Fate::Processed, Some(output)),
                Verdict::Err => {
                    counters.errored();
                    (Fate::Processed, Some(output))
                }
                Verdict::Withdrawn => {
                    drop_quietly(output);
                    (Fate::Withdrawn, None)
                }
            },
            Ran::Panicked => (Fate::Failed, None),
            Ran::TimedOut => (Fate::TimedOut, None),
            Ran::Cancelled => (Fate::Cancelled, None),
        };
        counters.ended(fate);
        meters.ran(started, fate);
        if let (Some(recorder), Some(key)) = (recorder, key) {
            recorder.record_key(key, fate.outcome());
        }
        if in_flight.key.is_none() {
            drop(in_flight);
            results.deliver(seq, result).await;
        } else {
            // Keyed: the key stays in flight until its result is handed
            // over, so the key's next item cannot start, finish and hand
            // over first (a hand-over can wait: for room, or for tokio's
            // budget); it is then reported finished with the next take,
            // under one lock.
            results.deliver(seq, result).await;
            done = in_flight;
        }
        if cut_off {
            return Exit::Aborted;
        }
    }
}

/// Reports a keyed item finished when dropped.
struct KeyGuard<'a, T> {
    queue: &'a HandOff<T>,
    key: Option<KeyId>,
}

impl<T> Drop for KeyGuard<'_, T> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.queue.finished(key);
        }
    }
}

/// An item taken but never started ends as `fate`: counted, settled (by
/// its key if it was taken: `Some(None)` when the key function panicked),
/// and dropped.
fn unstarted<Item>(
    counters: &WorkerCounters,
    hooks: Option<&Hooks<Item>>,
    item: Item,
    fate: Fate,
    key: Option<Option<PendingKey>>,
) {
    counters.ended(fate);
    if let Some(recorder) = hooks.and_then(|hooks| hooks.recorder.as_deref()) {
        match key {
            Some(key) => recorder.record_key(key, fate.outcome()),
            None => recorder.record(&item, fate.outcome()),
        }
    }
    drop_quietly(item);
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
        // handler never touches the token's lock.
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
