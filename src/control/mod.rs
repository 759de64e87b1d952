//! The control stage: how a pipeline stops, who may stop it, and the final
//! report.
//!
//! * [`Phase`] (`phase`): running, draining or aborting, and the drain
//!   deadline, read on the hot path with one atomic load.
//! * [`StopMirror`] (`mirror`): sets the phase from inside a parent token's
//!   `cancel()`.
//! * [`Shelf`] (`lease`): the user closures reached after an item was
//!   accepted ([`Hooks`]), lent while the pipeline runs and dropped before
//!   the report is published.
//! * `supervisor`: joins every task, runs the drain deadline, builds the
//!   report.
//! * The handles: [`ShutdownHandle`] and its [`JoinReport`] future
//!   (`handle`), and [`Controller`] (`controller`).
//!
//! [`Core`] holds a pipeline's shared state, one field per stage; each task
//! gets the parts it uses, and a [`Stopper`] for the two things any task may
//! have to do to the whole pipeline (begin an abort, cancel an item it
//! cannot queue or start).
//!
//! # The order of an abort
//!
//! Abandon the queue and count what it held (under the queue's lock), then
//! publish the phase (`Release`), then cancel the tokens, then discard
//! undelivered results, and only then run user code (hand the abandoned
//! items to `on_cancel`, settle them). Once a worker or the intake can see
//! the abort (the phase, or the abandoned queue) the abandoned items are
//! counted, so a report built as soon as they exit balances.

mod controller;
mod handle;
mod lease;
mod mirror;
mod phase;
mod supervisor;

use std::sync::OnceLock;
use std::sync::atomic::Ordering::AcqRel;

use tokio_util::sync::CancellationToken;

use crate::books::{Books, results_waiting};
use crate::config::{ItemHook, Keying};
use crate::front::OverloadHook;
use crate::isolate::{catching, drop_quietly};
use crate::queue::HandOff;
use crate::report::{IntakeEnd, Report, Stats};
use crate::results::ResultBooks;
use crate::settle::{Outcome, PendingKey, Record, Stage};
use crate::sync::AtomicUsize;
use std::sync::Arc;

pub use controller::Controller;
pub use handle::{JoinReport, ShutdownHandle};
pub(crate) use lease::{Lease, Shelf};
pub(crate) use mirror::StopMirror;
pub(crate) use phase::{Phase, Start};
pub(crate) use supervisor::supervise;

/// The user code an item may meet after it was taken from the input,
/// besides the handler (which the workers own).
pub(crate) struct Hooks<Item> {
    /// Receives shed items the front does not hand back.
    pub(crate) on_shed: Option<ItemHook<Item>>,
    /// Receives accepted items that a shutdown abandoned unprocessed.
    pub(crate) on_cancel: Option<ItemHook<Item>>,
    /// Where every item's outcome goes, if the caller settles.
    pub(crate) recorder: Option<Arc<dyn Record<Item>>>,
    /// Receives the start and end of every overload episode.
    pub(crate) on_overload: Option<OverloadHook>,
    /// Keyed pipelines: the caller's key function.
    pub(crate) keying: Option<Arc<dyn Keying<Item>>>,
}

impl<Item> Drop for Hooks<Item> {
    fn drop(&mut self) {
        // Each closure's `Drop` is user code and may panic: one at a time,
        // or a second panic while the first unwinds would abort.
        drop_quietly(self.on_shed.take());
        drop_quietly(self.on_cancel.take());
        drop_quietly(self.recorder.take());
        drop_quietly(self.on_overload.take());
        drop_quietly(self.keying.take());
    }
}

impl<Item> Hooks<Item> {
    /// Sends `item`'s settlement record, if the caller settles.
    pub(crate) fn record(&self, item: &Item, outcome: Outcome) {
        if let Some(recorder) = &self.recorder {
            recorder.record(item, outcome);
        }
    }
}

/// One pipeline's shared state.
pub(crate) struct Core<Item> {
    pub(crate) queue: Arc<HandOff<Item>>,
    pub(crate) phase: Arc<Phase>,
    pub(crate) books: Arc<Books>,
    pub(crate) hooks: Shelf<Hooks<Item>>,
    pub(crate) results: Arc<dyn ResultBooks>,
    /// The front's producers push under the queue's lock: closing the queue
    /// inside the stop refuses every push once the stop has returned (the
    /// stream intake instead checks the phase before each pull).
    close_at_stop: bool,
    /// Live user-facing halves (results stream, shutdown handle).
    ends: AtomicUsize,
    /// The final report, published by the supervisor for every controller.
    report: OnceLock<Report>,
    /// Cancelled once `report` is published.
    finished: CancellationToken,
}

impl<Item> Core<Item> {
    pub(crate) fn new(
        queue: Arc<HandOff<Item>>,
        phase: Arc<Phase>,
        books: Arc<Books>,
        hooks: Hooks<Item>,
        results: Arc<dyn ResultBooks>,
        close_at_stop: bool,
    ) -> Self {
        Core {
            queue,
            phase,
            books,
            hooks: Shelf::new(hooks),
            results,
            close_at_stop,
            ends: AtomicUsize::new(2),
            report: OnceLock::new(),
            finished: CancellationToken::new(),
        }
    }

    /// A stop was requested (by us or a parent token): intake stops taking
    /// items, and the drain deadline starts. Called from inside the token's
    /// `cancel()` too, so it holds once a parent's `cancel()` returns.
    pub(crate) fn on_stop(&self) {
        self.phase.drain();
        if self.close_at_stop {
            // A producer granted room just as the stop came is refused too
            // (the bug of lalinsky/zio PR #709 and odin-lang/Odin PR #5329:
            // a parked sender admitted after `close()` returned).
            self.queue.close();
        }
    }

    fn begin_drain(&self) {
        self.on_stop();
        self.phase.stop.cancel();
    }

    /// Stops everything now, in the order the module docs give.
    pub(crate) fn begin_abort(&self) {
        // The hooks first: once the queue is abandoned the workers exit and
        // the supervisor may release the hooks; a lease taken before that
        // holds them until the abandoned items are handed back and settled.
        let hooks = self.hooks.lease();
        let abandoned = self.queue.abandon(|n| self.books.cancel_unqueued(n));
        self.phase.abort();
        self.phase.stop.cancel();
        self.phase.kill.cancel();
        // Workers waiting to hand a result over stop waiting, and what the
        // consumer has not read is discarded: a stalled consumer cannot hold
        // an aborted pipeline.
        self.results.discard_undelivered();
        hand_back(hooks.as_deref(), abandoned, Stage::Queued);
    }

    /// Counts accepted items that will never reach a handler as cancelled,
    /// and hands them to `on_cancel` (or drops them).
    /// Called by a task that holds a lease of the hooks (a worker, the
    /// intake), so they cannot have been released.
    pub(crate) fn cancel_unqueued(&self, items: Vec<Item>) {
        self.books.cancel_unqueued(items.len());
        let hooks = self.hooks.lease();
        hand_back(hooks.as_deref(), items, Stage::Queued);
    }

    fn snapshot(&self) -> Stats {
        let counts = self.books.counts(&*self.results);
        let (queue_depth, high_water_mark) = self.queue.depth();
        let results_waiting = results_waiting(&counts, &*self.results);
        let oldest_queued_age = self.queue.oldest_stamp().map(|at| at.elapsed());
        Stats::from_counts(
            counts,
            results_waiting,
            queue_depth,
            counts.in_flight,
            high_water_mark,
            oldest_queued_age,
            self.queue.keys_tracked(),
        )
    }

    /// The final report, once no worker runs. An item still counted in
    /// flight then belonged to a worker task that was dropped or died
    /// outside its panic isolation: it is cancelled.
    fn report(&self, workers_joined: usize, aborted: usize, intake: IntakeEnd) -> Report {
        let mut counts = self.books.counts(&*self.results);
        counts.cancelled += counts.in_flight as u64;
        let (_, high_water_mark) = self.queue.depth();
        Report::from_counts(
            counts,
            self.books.workers(),
            workers_joined,
            aborted,
            intake,
            high_water_mark,
        )
    }
}

/// Hands accepted items that will never reach a handler back: settled
/// `Cancelled(stage)`, then given to `on_cancel` (or dropped). `None`
/// hooks: the pipeline has finished, and there is nothing to hand back.
fn hand_back<Item>(hooks: Option<&Hooks<Item>>, items: Vec<Item>, stage: Stage) {
    let Some(hooks) = hooks else {
        debug_assert!(items.is_empty(), "hooks released with items to hand back");
        items.into_iter().for_each(drop_quietly);
        return;
    };
    for item in items {
        hooks.record(&item, Outcome::Cancelled(stage));
        match &hooks.on_cancel {
            Some(hook) => {
                catching(|| hook(item));
            }
            None => drop_quietly(item),
        }
    }
}

/// What a task may do to the whole pipeline: begin an abort, or cancel
/// items it can neither queue nor start.
pub(crate) struct Stopper<Item>(Arc<Core<Item>>);

impl<Item> Stopper<Item> {
    pub(crate) fn new(core: &Arc<Core<Item>>) -> Self {
        Stopper(Arc::clone(core))
    }

    pub(crate) fn abort(&self) {
        self.0.begin_abort();
    }

    pub(crate) fn cancel_unqueued(&self, items: Vec<Item>) {
        self.0.cancel_unqueued(items);
    }

    /// Hands back an item a worker took, counted, and then may not start
    /// (an abort began, or the drain deadline passed): settled
    /// `Cancelled(Queued)` under `key` (its settlement key, which the worker
    /// took already), as its handler never started, and handed to
    /// `on_cancel`. The worker counts it `cancelled`.
    pub(crate) fn hand_back_taken(&self, item: Item, key: Option<PendingKey>) {
        let hooks = self.0.hooks.lease();
        let Some(hooks) = hooks.as_deref() else {
            drop_quietly(item);
            return;
        };
        if let Some(recorder) = &hooks.recorder {
            recorder.record_key(key, Outcome::Cancelled(Stage::Queued));
        }
        match &hooks.on_cancel {
            Some(hook) => {
                catching(|| hook(item));
            }
            None => drop_quietly(item),
        }
    }

    /// Takes the queued item `is_it` picks out, if it is still queued: its
    /// producer withdraws it (a caller that went away). Counted `cancelled`
    /// (withdrawn) under the queue's lock, settled `Cancelled(Withdrawn)`,
    /// handed to `on_cancel`. Whether it was still queued.
    pub(crate) fn withdraw(&self, is_it: impl Fn(&Item) -> bool) -> bool {
        let core = &self.0;
        // The hooks first, as an abort takes them: once the item is out the
        // queue may drain and the supervisor release the hooks; this lease
        // holds them until the item is settled and handed back.
        let hooks = core.hooks.lease();
        let Some(item) = core.queue.withdraw(is_it, || core.books.withdraw_queued()) else {
            return false;
        };
        hand_back(hooks.as_deref(), vec![item], Stage::Withdrawn);
        true
    }

    /// The hooks, lent for as long as the caller holds the lease.
    pub(crate) fn hooks(&self) -> Option<Lease<'_, Hooks<Item>>> {
        self.0.hooks.lease()
    }
}

/// What the user-facing halves may do to a pipeline, whatever its item type.
pub(crate) trait Control: Send + Sync {
    fn shutdown(&self);
    fn abort(&self);
    fn stats(&self) -> Stats;
    fn is_shutting_down(&self) -> bool;
    /// One half was dropped; the last one out aborts, so no task outlives
    /// both halves.
    fn release_end(&self);
    /// A best-effort report when the supervisor itself did not finish
    /// (its runtime shut down): every worker counts as aborted.
    fn fallback_report(&self) -> Report;
    /// Cancelled once the pipeline has finished and its report is set.
    fn finished(&self) -> &CancellationToken;
    /// The final report, once the pipeline has finished.
    fn final_report(&self) -> Option<Report>;
}

impl<Item: Send + 'static> Control for Core<Item> {
    fn shutdown(&self) {
        self.begin_drain();
    }

    fn abort(&self) {
        self.begin_abort();
    }

    fn stats(&self) -> Stats {
        self.snapshot()
    }

    fn is_shutting_down(&self) -> bool {
        self.phase.is_stopping() || self.phase.stop.is_cancelled()
    }

    fn release_end(&self) {
        if self.ends.fetch_sub(1, AcqRel) == 1 {
            self.begin_abort();
        }
    }

    fn fallback_report(&self) -> Report {
        // The supervisor's runtime dropped the pipeline's tasks: whatever was
        // queued or in flight is cancelled, and a result dropped with its
        // worker task was never delivered.
        self.begin_abort();
        let mut report = self.report(0, self.books.workers(), IntakeEnd::Stopped);
        report.discarded = report.processed.saturating_sub(report.delivered);
        // Items lost with their tasks have no settlement record; the
        // records stream ends once the last lease is back.
        self.hooks.release_now();
        report
    }

    fn finished(&self) -> &CancellationToken {
        &self.finished
    }

    fn final_report(&self) -> Option<Report> {
        self.report.get().cloned()
    }
}

/// One user-facing half's claim on the pipeline. Dropping the last one
/// aborts the pipeline.
pub(crate) struct End(Arc<dyn Control>);

impl End {
    pub(crate) fn new(control: Arc<dyn Control>) -> Self {
        End(control)
    }

    pub(crate) fn control(&self) -> &Arc<dyn Control> {
        &self.0
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.0.is_shutting_down()
    }
}

impl Drop for End {
    fn drop(&mut self) {
        self.0.release_end();
    }
}
