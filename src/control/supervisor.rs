//! The supervisor task: joins every worker and the front, runs the drain
//! deadline, waits for the results side to end, and builds the report.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;

use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Sleep;

use super::{Core, StopMirror};
use crate::books::Exit;
use crate::export::Meters;
use crate::isolate::timer_at;
use crate::report::{IntakeEnd, Report};

/// Ends only when no other task of the pipeline is alive, every closure the
/// caller gave has been dropped, and the report is published. With the
/// `metrics` feature it also flushes the books to the recorder, at an
/// interval and once more from the report (see `export`).
pub(crate) async fn supervise<Item: Send + 'static>(
    core: Arc<Core<Item>>,
    mut stop: StopMirror,
    mut workers: JoinSet<Exit>,
    front: JoinHandle<IntakeEnd>,
    mut meters: Meters,
) -> Report {
    let (mut joined, mut aborted) = (0usize, 0usize);
    let mut stop_seen = false;
    let mut workers_done = false;
    let mut ended = pin!(core.results.ended().cancelled());
    let mut deadline: Option<Pin<Box<Sleep>>> = None;
    poll_fn(|cx| {
        loop {
            while meters.poll_due(cx) {
                meters.flush_stats(&core.snapshot(), workers.len());
            }
            if !stop_seen && stop.poll_stopped(cx).is_ready() {
                // Also reached by a cancelled parent token, whose `cancel()`
                // already ran the stop (see `mirror`).
                stop_seen = true;
                core.begin_drain();
                // Set by the request, even if the input had ended. A
                // deadline past the clock's range never comes. (Workers
                // check it too, so it holds while handlers block every
                // runtime thread and this timer cannot run.)
                deadline = core.phase.drain_deadline().and_then(timer_at).map(Box::pin);
            }
            if let Some(timer) = deadline.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    // Dropped once fired: no timer left to wake this loop again.
                    deadline = None;
                    core.begin_abort();
                }
            }
            if workers_done {
                // The drain deadline also bounds the wait for a consumer
                // that does not read: when it fires, the rest is discarded.
                return ended.as_mut().poll(cx);
            }
            match workers.poll_join_next(cx) {
                Poll::Ready(Some(Ok(Exit::Joined))) => joined += 1,
                Poll::Ready(Some(Ok(Exit::Aborted))) => aborted += 1,
                // A worker task that died outside its own panic isolation
                // (a bug, or its runtime shutting down) counts with the ones
                // that were cut off, and nothing is left to a pipeline
                // missing a worker: its item and the queue are cancelled.
                Poll::Ready(Some(Err(_))) => {
                    aborted += 1;
                    core.begin_abort();
                }
                Poll::Ready(None) => workers_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    // No worker is left to send: what a discarding buffer still took in is
    // discarded now, so the results law is final.
    core.results.finish();
    // Workers only finish once the queue is closed, which the front does as
    // it returns (or an abort does, and the front is stopped with it).
    let intake = match front.await {
        Ok(end) => end,
        Err(error) if error.is_panic() => IntakeEnd::InputPanicked,
        Err(_) => IntakeEnd::Stopped,
    };
    let report = core.report(joined, aborted, intake);
    debug_assert!(report.is_conserved(), "books do not balance: {report}");
    crate::trace::finished(&report);
    meters.flush_report(&report);
    // Every closure the caller gave is dropped before anyone sees the
    // report, whatever handles (a controller, the ended results stream, a
    // spare feeder) keep the core alive. The settlement records stream
    // ends with it: every record has been sent by then.
    core.hooks.release().await;
    // Set once, here: `get_or_init` cannot fail.
    core.report.get_or_init(|| report.clone());
    core.finished.cancel();
    report
}
