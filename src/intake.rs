//! The intake task: pulls the input as fast as it yields and queues or sheds.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::time::{Instant, Sleep};

use crate::ShedPolicy;
use crate::books::bump;
use crate::config::ItemHook;
use crate::handoff::{HandOff, Pushed};
use crate::isolate::{Quiet, catching, drop_quietly, timer_at};
use crate::overload::Episodes;
use crate::pipeline::Shared;
use crate::report::IntakeEnd;
use crate::settle::{self, Outcome, ShedReason};

/// Most items pulled before they are queued under one lock. Bounds the items
/// held outside the queue, and amortises the lock and `add_permits` call.
pub(crate) const BATCH: usize = 32;

enum Step {
    /// The batch is full, or the input is pending with items in hand.
    More,
    /// The input is idle and an overload episode's quiet period may be over.
    Quiet,
    /// Intake is over; the batch still holds what was pulled before.
    End(IntakeEnd),
}

/// Closes the queue when the intake ends in any way, including a panic
/// or an abort of this task, so workers always drain and exit.
pub(crate) struct CloseOnDrop<'a, Item>(pub(crate) &'a HandOff<Item>);

impl<Item> Drop for CloseOnDrop<'_, Item> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The `finish` of a pipeline that does not hand its input back: nothing
/// to do, `run` drops the input itself.
pub(crate) fn keep_nothing<S>(_: Pin<&mut Option<S>>, _: IntakeEnd) {}

pub(crate) async fn run<S>(
    input: S,
    shared: Arc<Shared<S::Item>>,
    on_shed: Option<ItemHook<S::Item>>,
    mut episodes: Episodes,
    // May take the input out to hand it back (see `settle::InputBack`).
    finish: impl FnOnce(Pin<&mut Option<S>>, IntakeEnd),
) -> IntakeEnd
where
    S: Stream,
{
    let _close = CloseOnDrop(&shared.queue);
    let late = shared.late.lease();
    let settle = late.as_ref().and_then(|late| late.settle.as_deref());
    // The hook's `Drop` is user code too (CASE-22).
    let on_shed = Quiet::new(on_shed);
    // In an `Option` so that it is dropped under `catching` (its `Drop` is
    // user code) before the guard above tells the workers intake is over.
    let mut input = pin!(Some(input));
    let mut stop = pin!(shared.stop.cancelled());
    // Fires when an overload episode may have gone quiet while the input idles.
    let mut quiet = pin!(None::<Sleep>);
    let mut timers = true;
    let mut batch = Vec::with_capacity(BATCH);
    let mut shed = Vec::new();
    // Items taken by workers at the last yield before shedding.
    let mut last_yield = u64::MAX;
    let end = loop {
        // `Backpressure` waits for room before it pulls; the others never
        // wait. A stop ends the wait at once (the reservation is cancel
        // safe): otherwise the intake would notice it only at the queue's
        // low-water mark.
        let limit = {
            let mut room = pin!(shared.queue.reserve(BATCH));
            poll_fn(|cx| match room.as_mut().poll(cx) {
                Poll::Ready(n) => Poll::Ready(n),
                Poll::Pending if stop.as_mut().poll(cx).is_ready() => Poll::Ready(0),
                Poll::Pending => Poll::Pending,
            })
            .await
        };
        if limit == 0 {
            break IntakeEnd::Stopped; // stopped or abandoned while waiting for room
        }
        // With settlement, one credit per item pulled (see `settle`).
        let limit = match settle {
            None => limit,
            Some(settle) => match settle::reserve(settle.credits(), limit, stop.as_mut()).await {
                Some(credits) => {
                    shared.queue.unreserve(limit - credits);
                    credits
                }
                None => {
                    shared.queue.unreserve(limit);
                    break IntakeEnd::Stopped;
                }
            },
        };
        let Some(mut stream) = input.as_mut().as_pin_mut() else {
            break IntakeEnd::Exhausted; // unreachable: dropped only below
        };
        let mut wakeups = Wakeups {
            stop: stop.as_mut(),
            quiet: quiet.as_mut(),
        };
        let step = poll_fn(|cx| {
            gather(
                cx,
                &shared,
                stream.as_mut(),
                &mut batch,
                limit,
                &mut wakeups,
            )
        })
        .await;
        shared.queue.unreserve(limit - batch.len());
        if let Some(settle) = settle {
            settle.credits().add_permits(limit - batch.len());
        }
        bump(&shared.intake.produced, batch.len() as u64);
        // Shed items come back in `shed` only if a hook, settlement or their
        // `Drop` needs them; the count always comes back.
        let (shed_now, woke_idle, full, taken) =
            match shared.queue.push_batch(&mut batch, &mut shed) {
                Pushed::Accepted {
                    shed,
                    woke_idle,
                    full,
                    taken,
                } => (shed, woke_idle, full, taken),
                Pushed::Refused => {
                    // Aborted between pull and push: accepted, then cancelled.
                    shared.cancel_unqueued(batch.drain(..));
                    (0, false, false, 0)
                }
            };
        if shed_now > 0 {
            bump(&shared.intake.dropped, shed_now as u64);
            let reason = match shared.queue.policy() {
                ShedPolicy::DropOldest => ShedReason::Evicted,
                _ => ShedReason::QueueFull,
            };
            if let Some(settle) = settle {
                for item in &shed {
                    settle.settle(item, Outcome::Dropped(reason));
                }
            }
            dispose(&mut shed, (*on_shed).as_deref());
        }
        episodes.record(shed_now);
        if let Step::Quiet = step {
            episodes.end_if_quiet(Instant::now());
        }
        arm(
            quiet.as_mut(),
            &episodes,
            matches!(step, Step::Quiet),
            &mut timers,
        );
        if let Step::End(end) = step {
            break end;
        }
        // Before pulling into a full queue (which sheds), give the workers
        // this push woke, or that made progress since the last such yield,
        // a turn: their wake-ups land in this thread's run queue (tokio's
        // LIFO slot cannot be stolen), so they run only once this task
        // yields. Workers stuck in slow handlers make no progress, and then
        // the intake sheds in bulk without yielding. `Backpressure` waits
        // for room instead.
        let before_shedding = full
            && shared.queue.policy() != ShedPolicy::Backpressure
            && (woke_idle || taken != last_yield);
        if before_shedding {
            last_yield = taken;
            if woke_idle {
                // Behind the workers it woke, not after them: a deferred
                // yield ran the intake only once they had drained the queue
                // and parked again, a lock-step that left the other thread
                // idle (goodput vs async-channel 1.01–1.03× deferred,
                // 1.11–1.64× in turn; BENCHMARKS.md).
                shared.yielder.let_woken_run().await;
            } else {
                // Busy workers: wait until this thread has nothing else to
                // run (tokio's deferred yield), rather than spin against a
                // queue they are still draining.
                tokio::task::yield_now().await;
            }
        } else {
            // An always-ready input never returns `Pending`; without this a
            // current-thread runtime would run nothing else (PITFALLS 8).
            tokio::task::coop::consume_budget().await;
        }
    };
    finish(input.as_mut(), end);
    // Whatever `finish` left is dropped quietly, before the queue is closed.
    catching(|| input.set(None));
    episodes.finish();
    end
}

/// Hands shed items to the `on_shed` hook, or drops them; unlocked, every
/// call isolated (both are user code).
fn dispose<Item>(shed: &mut Vec<Item>, on_shed: Option<&(dyn Fn(Item) + Send + Sync)>) {
    match on_shed {
        Some(hook) => shed.drain(..).for_each(|item| {
            catching(|| hook(item));
        }),
        // Items without drop glue run no user code: clear in one go.
        None if !std::mem::needs_drop::<Item>() => shed.clear(),
        None => shed.drain(..).for_each(drop_quietly),
    }
}

/// Keeps the quiet timer armed exactly while an overload episode is open.
/// Without a time driver (`timers` turns false) an episode ends only at a
/// batch that sheds nothing, or when intake stops.
fn arm(mut quiet: Pin<&mut Option<Sleep>>, episodes: &Episodes, fired: bool, timers: &mut bool) {
    match (episodes.quiet_deadline(), quiet.as_mut().as_pin_mut()) {
        (None, Some(_)) => quiet.set(None),
        (Some(deadline), None) if *timers => match timer_at(deadline) {
            Some(timer) => quiet.set(Some(timer)),
            None => *timers = false,
        },
        // A fired timer stays ready: move it to the episode's new deadline.
        (Some(deadline), Some(timer)) if fired => timer.reset(deadline),
        _ => {}
    }
}

/// What else may wake an intake whose input is idle.
struct Wakeups<'a, F> {
    /// The pipeline's token (`shutdown()`, a cancelled parent, an abort).
    stop: Pin<&'a mut F>,
    /// An overload episode's quiet period.
    quiet: Pin<&'a mut Option<Sleep>>,
}

/// Pulls up to `limit` ready items. Stops at the first `Pending` once it
/// holds items, so nothing waits in hand while the input is idle.
fn gather<S: Stream, F: Future<Output = ()>>(
    cx: &mut Context<'_>,
    shared: &Shared<S::Item>,
    mut input: Pin<&mut S>,
    batch: &mut Vec<S::Item>,
    limit: usize,
    wakeups: &mut Wakeups<'_, F>,
) -> Poll<Step> {
    while batch.len() < limit {
        // Checked before every pull (one atomic load): no item is taken after
        // `shutdown()`, `abort()` or a parent token's `cancel()` has returned
        // (the phase mirrors the token from inside `cancel()`; see `stop`).
        if shared.is_stopping() {
            return Poll::Ready(Step::End(IntakeEnd::Stopped));
        }
        match catching(|| input.as_mut().poll_next(cx)) {
            Some(Poll::Ready(Some(item))) => batch.push(item),
            Some(Poll::Ready(None)) => return Poll::Ready(Step::End(IntakeEnd::Exhausted)),
            None => return Poll::Ready(Step::End(IntakeEnd::InputPanicked)),
            Some(Poll::Pending) if !batch.is_empty() => return Poll::Ready(Step::More),
            Some(Poll::Pending) => {
                // Idle: register for the token's wake-up (polling the token
                // takes its lock, PITFALLS 3: only here, never per item).
                if wakeups.stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Step::End(IntakeEnd::Stopped));
                }
                if let Some(timer) = wakeups.quiet.as_mut().as_pin_mut() {
                    if timer.poll(cx).is_ready() {
                        return Poll::Ready(Step::Quiet);
                    }
                }
                return Poll::Pending;
            }
        }
    }
    Poll::Ready(Step::More)
}
