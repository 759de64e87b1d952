//! The intake task: pulls the input as fast as it yields and queues or sheds.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};

use futures_core::Stream;

use crate::config::ItemHook;
use crate::handoff::{HandOff, Pushed};
use crate::isolate::{catching, drop_quietly};
use crate::pipeline::{Shared, bump};
use crate::report::IntakeEnd;

/// Most items pulled before they are queued under one lock. Bounds the items
/// held outside the queue, and amortises the lock and `add_permits` call.
pub(crate) const BATCH: usize = 32;

enum Step {
    /// The batch is full, or the input is pending with items in hand.
    More,
    /// Intake is over; the batch still holds what was pulled before.
    End(IntakeEnd),
}

/// Closes the queue when the intake ends in any way, including a panic
/// or an abort of this task, so workers always drain and exit.
struct CloseOnDrop<'a, Item>(&'a HandOff<Item>);

impl<Item> Drop for CloseOnDrop<'_, Item> {
    fn drop(&mut self) {
        self.0.close();
    }
}

pub(crate) async fn run<S>(
    input: S,
    shared: Arc<Shared<S::Item>>,
    on_shed: Option<ItemHook<S::Item>>,
) -> IntakeEnd
where
    S: Stream,
{
    let _close = CloseOnDrop(&shared.queue);
    // Declared after the guard, so dropped before it: the input is released
    // before the workers learn that intake is over.
    let mut input = pin!(input);
    let mut stop = pin!(shared.stop.cancelled());
    let mut batch = Vec::with_capacity(BATCH);
    let mut shed = Vec::new();
    loop {
        let step =
            poll_fn(|cx| gather(cx, &shared, input.as_mut(), &mut batch, stop.as_mut())).await;
        bump(&shared.intake.produced, batch.len() as u64);
        if shared.queue.push_batch(&mut batch, &mut shed) == Pushed::Refused {
            // Aborted between pull and push: accepted, then cancelled.
            shared
                .unqueued_cancelled
                .fetch_add(batch.len() as u64, Relaxed);
            batch.drain(..).for_each(drop_quietly);
        }
        if !shed.is_empty() {
            bump(&shared.intake.dropped, shed.len() as u64);
            for item in shed.drain(..) {
                match &on_shed {
                    Some(hook) => {
                        catching(|| hook(item));
                    }
                    None => drop_quietly(item),
                }
            }
        }
        if let Step::End(end) = step {
            return end;
        }
        // An always-ready input never returns `Pending`; without this a
        // current-thread runtime would run nothing else (PITFALLS 8).
        tokio::task::coop::consume_budget().await;
    }
}

/// Pulls up to [`BATCH`] ready items. Stops at the first `Pending` once it
/// holds items, so nothing waits in hand while the input is idle.
fn gather<S: Stream>(
    cx: &mut Context<'_>,
    shared: &Shared<S::Item>,
    mut input: Pin<&mut S>,
    batch: &mut Vec<S::Item>,
    stop: Pin<&mut impl Future<Output = ()>>,
) -> Poll<Step> {
    while batch.len() < BATCH {
        // Checked before every pull (one relaxed load): no item is taken
        // after `shutdown()` or `abort()` has returned.
        if shared.is_stopping() {
            return Poll::Ready(Step::End(IntakeEnd::Stopped));
        }
        match catching(|| input.as_mut().poll_next(cx)) {
            Some(Poll::Ready(Some(item))) => batch.push(item),
            Some(Poll::Ready(None)) => return Poll::Ready(Step::End(IntakeEnd::Exhausted)),
            None => return Poll::Ready(Step::End(IntakeEnd::InputPanicked)),
            Some(Poll::Pending) if !batch.is_empty() => return Poll::Ready(Step::More),
            Some(Poll::Pending) => {
                // Only an idle intake registers for the token's wake-up; a
                // busy one sees the phase above (PITFALLS 3).
                return match stop.poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Step::End(IntakeEnd::Stopped)),
                    Poll::Pending => Poll::Pending,
                };
            }
        }
    }
    Poll::Ready(Step::More)
}
