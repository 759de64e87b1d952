//! The stream front: one intake task pulls the input as fast as it yields,
//! and queues or sheds.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::time::{Instant, Sleep};

use super::keys::{Keyer, fail_unkeyed};
use super::shed::{Disposal, Why, after_shed, reason};
use super::{CloseOnDrop, FrontParts};
use crate::ShedPolicy;
use crate::isolate::{catching, timer_at};
use crate::queue::{KeyPlace, Pushed};
use crate::report::IntakeEnd;

/// Most items pulled before they are queued under one lock (documented on
/// the config, where users read it).
const BATCH: usize = crate::FanOutConfig::<(), crate::Plain>::MAX_INTAKE_BATCH;

enum Step {
    /// The batch is full, or the input is pending with items in hand.
    More,
    /// The input is idle and an overload episode's quiet period may be over.
    Quiet,
    /// Intake is over; the batch still holds what was pulled before.
    End(IntakeEnd),
}

/// The intake task. Ends when the input ends, panics, or a stop is
/// requested; the queue is closed as it returns (or is dropped).
pub(crate) async fn run<S: Stream>(input: S, front: FrontParts<S::Item>) -> IntakeEnd {
    let FrontParts {
        queue,
        phase,
        books,
        stopper,
        credits,
        overload,
        yielder,
        ..
    } = &front;
    let _close = CloseOnDrop(queue);
    let hooks = stopper.hooks();
    let hooks = hooks.as_deref();
    let on_overload = hooks.and_then(|hooks| hooks.on_overload.as_ref());
    // In an `Option` so that it is dropped under `catching` (its `Drop` is
    // user code) before the guard above tells the workers intake is over.
    let mut input = pin!(Some(input));
    let mut stop = pin!(phase.stop.cancelled());
    // Fires when an overload episode may have gone quiet while the input idles.
    let mut quiet = pin!(None::<Sleep>);
    let mut timers = true;
    let mut batch = Vec::with_capacity(BATCH);
    let mut shed = Vec::new();
    let reason = reason(queue.policy());
    // Keyed pipelines: the batch's keys, taken outside every lock.
    let keying = hooks.and_then(|hooks| hooks.keying.as_deref());
    let mut keyer = keying.map(Keyer::new);
    let mut unkeyed = Vec::new();
    // Items taken by workers at the last yield before shedding.
    let mut last_yield = u64::MAX;
    let end = loop {
        // `Backpressure` waits for room before it pulls; the others never
        // wait. A stop ends the wait at once (the reservation is cancel
        // safe): otherwise the intake would notice it only at the queue's
        // low-water mark.
        let limit = {
            let mut room = pin!(queue.reserve(BATCH));
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
        let limit = match credits {
            None => limit,
            Some(credits) => {
                // Nothing is pulled, so nothing is shed, while intake waits
                // for credits: an open overload episode's quiet period may
                // pass meanwhile (a new-user trial found the episode never
                // ended while the settlements went unread).
                let mut credit = pin!(credits.take_batch(limit, stop.as_mut()));
                let granted = poll_fn(|cx| {
                    loop {
                        if let Poll::Ready(granted) = credit.as_mut().poll(cx) {
                            return Poll::Ready(granted);
                        }
                        match quiet.as_mut().as_pin_mut().map(|timer| timer.poll(cx)) {
                            Some(Poll::Ready(())) => {
                                tend(quiet.as_mut(), overload, on_overload, true, &mut timers);
                            }
                            _ => return Poll::Pending,
                        }
                    }
                })
                .await;
                let Some(granted) = granted else {
                    queue.unreserve(limit);
                    break IntakeEnd::Stopped;
                };
                queue.unreserve(limit - granted);
                granted
            }
        };
        let Some(mut stream) = input.as_mut().as_pin_mut() else {
            break IntakeEnd::Exhausted; // unreachable: dropped only below
        };
        let mut wakeups = Wakeups {
            stop: stop.as_mut(),
            quiet: quiet.as_mut(),
        };
        let step =
            poll_fn(|cx| gather(cx, phase, stream.as_mut(), &mut batch, limit, &mut wakeups)).await;
        queue.unreserve(limit - batch.len());
        if let Some(credits) = credits {
            credits.unused(limit - batch.len());
        }
        if let (Some(keying), Some(keyer)) = (keying, keyer.as_mut()) {
            keyer.key(keying, &mut batch, &mut unkeyed);
            // Their room was reserved with the batch's and is never filled
            // (`Backpressure`): kept, it would leak a slot per panic until
            // the intake waited forever for a low-water mark the workers
            // cannot reach (a new-user trial found the stall).
            queue.unreserve(unkeyed.len());
            fail_unkeyed(&front, hooks, &mut unkeyed);
        }
        // Shed items come back in `shed` only if a hook, settlement or their
        // `Drop` needs them; the count always comes back.
        let pushed = loop {
            let count = |offered, shed| books.intake.count_alone(offered, shed);
            let Some(keyer) = keyer.as_mut() else {
                break queue.push(&mut batch, &mut shed, count);
            };
            let pushed = keyer.push(&front, &mut batch, &mut shed, &mut unkeyed, count);
            // Items whose key's `Eq` panicked: their reserved slots went
            // back with the push; failed as when the key function panics.
            fail_unkeyed(&front, hooks, &mut unkeyed);
            let Pushed::Accepted { blocked: true, .. } = pushed else {
                break pushed;
            };
            // Still holding a place: the push stopped at the very item it
            // was kept for (a later item's key may well be full: that one
            // waits below).
            if let (true, Some(keying)) = (keyer.holds_place(), keying) {
                // Unreachable while invariant 5 of `queue/keyed.rs` holds
                // (the place was kept for it); should it break, the place
                // goes back and the batch is keyed afresh (its key
                // function's second run, on this path only), rather than
                // spin on a place that never lets it in.
                debug_assert!(false, "a push with a kept place found its key full");
                keyer.release_and_rekey(queue, keying, &mut batch, &mut unkeyed);
                queue.unreserve(unkeyed.len());
                fail_unkeyed(&front, hooks, &mut unkeyed);
                continue;
            }
            // Keyed, under `Backpressure`: a key is full; wait for its
            // room (or the stop), then push the rest.
            let room = {
                let (keys, granted) = keyer.waiting();
                let mut room = pin!(queue.key_place(keys, granted));
                poll_fn(|cx| match room.as_mut().poll(cx) {
                    Poll::Ready(room) => Poll::Ready(room),
                    Poll::Pending if stop.as_mut().poll(cx).is_ready() => {
                        Poll::Ready(KeyPlace::Closed)
                    }
                    Poll::Pending => Poll::Pending,
                })
                .await
            };
            if room == KeyPlace::Unkeyed {
                // The blocked item's key's `Eq` panicked (the key is gone):
                // it fails, its slot goes back, and the rest is pushed.
                if !batch.is_empty() {
                    unkeyed.push(batch.remove(0));
                    queue.unreserve(1);
                    fail_unkeyed(&front, hooks, &mut unkeyed);
                }
                continue;
            }
            if room == KeyPlace::Closed {
                queue.unreserve(batch.len());
                if let Some(keying) = keying {
                    keyer.clear(keying);
                }
                break Pushed::Refused;
            }
        };
        let (shed_now, woke_idle, full, taken) = match pushed {
            Pushed::Accepted {
                shed,
                woke_idle,
                full,
                taken,
                ..
            } => (shed, woke_idle, full, taken),
            Pushed::Refused => {
                // Stopped between pull and push: accepted, then cancelled.
                books.intake.count_alone(batch.len(), 0);
                stopper.cancel_unqueued(std::mem::take(&mut batch));
                (0, false, false, 0)
            }
        };
        let why = match &keyer {
            Some(keyer) => Why::Each(&keyer.reasons),
            None => Why::All(reason),
        };
        // This task also ends the episode at the end of intake: recorded
        // here, in order, no shed is missed (invariant 1 of `overload`).
        overload.record(shed_now);
        after_shed(hooks, &mut shed, shed_now, why, Disposal::Hook);
        let fired = matches!(step, Step::Quiet);
        tend(quiet.as_mut(), overload, on_overload, fired, &mut timers);
        if let Step::End(end) = step {
            break end;
        }
        // Before pulling into a full queue (which sheds), give the workers
        // this push woke, or that made progress since the last such yield,
        // a turn. Workers stuck in slow handlers make no progress, and then
        // the intake sheds in bulk without yielding. `Backpressure` waits
        // for room instead.
        let before_shedding = full
            && queue.policy() != ShedPolicy::Backpressure
            && (woke_idle || taken != last_yield);
        if before_shedding {
            last_yield = taken;
            if woke_idle {
                // Behind the workers it woke, not after them (see `sched`).
                yielder.let_woken_run().await;
            } else {
                // Busy workers: wait until this thread has nothing else to
                // run (tokio's deferred yield), rather than spin against a
                // queue they are still draining.
                tokio::task::yield_now().await;
            }
        } else {
            // An always-ready input never returns `Pending` (`stream::iter`
            // takes no part in tokio's budget); without this a
            // current-thread runtime would run nothing else.
            tokio::task::coop::consume_budget().await;
        }
    };
    // The input goes first, quietly (a `HandBack` sends it back here).
    catching(|| input.set(None));
    overload.finish();
    overload.emit(on_overload);
    end
}

/// Tends the overload episode: ends it if its quiet period `fired` with
/// nothing shed, emits what it decided, and keeps the quiet timer armed
/// exactly while an episode is open. Without a time driver (`timers` turns
/// false) an episode ends only at a batch that sheds nothing, or when
/// intake stops.
fn tend(
    mut quiet: Pin<&mut Option<Sleep>>,
    overload: &super::Overload,
    on_overload: Option<&super::OverloadHook>,
    fired: bool,
    timers: &mut bool,
) {
    if fired {
        overload.end_if_quiet(Instant::now());
    }
    overload.emit(on_overload);
    match (overload.quiet_deadline(), quiet.as_mut().as_pin_mut()) {
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
    phase: &crate::control::Phase,
    mut input: Pin<&mut S>,
    batch: &mut Vec<S::Item>,
    limit: usize,
    wakeups: &mut Wakeups<'_, F>,
) -> Poll<Step> {
    while batch.len() < limit {
        // Checked before every pull (one atomic load): no item is taken after
        // `shutdown()`, `abort()` or a parent token's `cancel()` has returned
        // (the phase mirrors the token from inside `cancel()`; see `control`).
        if phase.is_stopping() {
            return Poll::Ready(Step::End(IntakeEnd::Stopped));
        }
        match catching(|| input.as_mut().poll_next(cx)) {
            Some(Poll::Ready(Some(item))) => batch.push(item),
            Some(Poll::Ready(None)) => return Poll::Ready(Step::End(IntakeEnd::Exhausted)),
            None => return Poll::Ready(Step::End(IntakeEnd::InputPanicked)),
            Some(Poll::Pending) if !batch.is_empty() => return Poll::Ready(Step::More),
            Some(Poll::Pending) => {
                // Idle: register for the token's wake-up (polling the token
                // takes its lock: only here, never per item).
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
