//! The worker loop: take an item, run the handler in isolation, hand over
//! the result.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::mpsc;

use crate::isolate::catching;
use crate::pipeline::{Shared, bump};

/// Why a worker stopped: the report's `workers_joined` vs `aborted` split
/// needs the worker's own word for it (PITFALLS 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The queue was closed and empty, or abandoned while this worker was idle.
    Joined,
    /// An abort cut off this worker's in-flight handler.
    Aborted,
}

enum Outcome<T> {
    Done(T),
    Panicked,
    Cancelled,
}

pub(crate) async fn run<Item, F, Fut>(
    shared: Arc<Shared<Item>>,
    slot: usize,
    handler: Arc<F>,
    results: mpsc::Sender<Fut::Output>,
) -> Exit
where
    F: Fn(Item) -> Fut,
    Fut: Future,
{
    let counters = &shared.workers[slot];
    while let Some(item) = shared.queue.take().await {
        bump(&counters.taken, 1);
        match run_one(&*handler, item, &shared).await {
            Outcome::Done(output) => {
                // Counted before the hand-over: `processed` means the handler
                // completed. The send is never cut off by an abort, so a
                // consumer that drains receives exactly `processed` results;
                // an error only means `results` was dropped.
                bump(&counters.processed, 1);
                let _ = results.send(output).await;
            }
            Outcome::Panicked => bump(&counters.failed, 1),
            Outcome::Cancelled => {
                bump(&counters.cancelled, 1);
                return Exit::Aborted;
            }
        }
    }
    Exit::Joined
}

/// Calls and polls the handler with every panic caught; an abort cancels it
/// only at a suspension point, never a handler that is ready.
async fn run_one<Item, F, Fut>(
    handler: &F,
    item: Item,
    shared: &Shared<Item>,
) -> Outcome<Fut::Output>
where
    F: Fn(Item) -> Fut,
    Fut: Future,
{
    let Some(future) = catching(|| handler(item)) else {
        return Outcome::Panicked;
    };
    // In an `Option` so the future (and the item it owns) is dropped in
    // place under `catching`: its `Drop` is user code too.
    let mut future = pin!(Some(future));
    let mut killed = pin!(shared.kill.cancelled());
    let outcome = poll_fn(|cx| {
        let Some(running) = future.as_mut().as_pin_mut() else {
            return Poll::Ready(Outcome::Panicked);
        };
        match catching(|| running.poll(cx)) {
            Some(Poll::Ready(output)) => Poll::Ready(Outcome::Done(output)),
            None => Poll::Ready(Outcome::Panicked),
            // Only a pending handler looks at the kill token, so an instant
            // handler never touches the token's lock (PITFALLS 3).
            Some(Poll::Pending) => match killed.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Outcome::Cancelled),
                Poll::Pending => Poll::Pending,
            },
        }
    })
    .await;
    catching(|| future.set(None));
    outcome
}
