//! The state one pipeline's tasks share, and the supervisor that joins them.
//!
//! Tasks: one intake (input → queue), `workers` workers (queue → handler →
//! results) and one supervisor, which owns the workers' `JoinSet`, runs the
//! drain deadline and builds the [`Report`]. The two user-facing halves reach
//! the state through the type-erased [`Control`].

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicU8, AtomicU64, AtomicUsize, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::task::Poll;
use std::time::Duration;

use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::books::{Exit, Fate, IntakeCounters, Tally, WorkerCounters};
use crate::config::ItemHook;
use crate::handoff::{HandOff, Producer, Yielder};
use crate::isolate::{catching, drop_quietly, timer_at};
use crate::lease::Shelf;
use crate::output::ResultBooks;
use crate::report::{IntakeEnd, Report, Stats};
use crate::settle::{Outcome, Settle, Stage};
use crate::stop::StopWatch;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

pub(crate) struct Shared<Item> {
    pub(crate) queue: HandOff<Item>,
    /// `RUNNING`, `DRAINING` or `ABORTING`; only ever increases. The intake
    /// reads it once per batch instead of taking the token's lock (PITFALLS 3).
    phase: AtomicU8,
    /// The pipeline's token (a child of the caller's): graceful stop.
    pub(crate) stop: CancellationToken,
    /// Cuts in-flight handlers. Not a child of `stop`: a graceful stop must
    /// not cancel work that still has time to finish.
    pub(crate) kill: CancellationToken,
    pub(crate) intake: IntakeCounters,
    pub(crate) workers: Box<[WorkerCounters]>,
    /// Items accepted but cancelled without reaching a worker: abandoned in
    /// the queue by an abort, or refused by an abandoned queue. Rarely written.
    pub(crate) unqueued_cancelled: AtomicU64,
    /// Live user-facing halves (results stream, shutdown handle).
    ends: AtomicUsize,
    /// The hooks an accepted item may still meet, lent to whoever needs
    /// them and released before the report is published.
    pub(crate) late: Shelf<Late<Item>>,
    /// The results side's books, and its abort switch.
    pub(crate) results: Arc<dyn ResultBooks>,
    /// The final report, published by the supervisor for every controller.
    report: std::sync::OnceLock<Report>,
    /// Cancelled once `report` is published.
    finished: CancellationToken,
    /// The drain deadline, in nanoseconds after `epoch`; `NO_DEADLINE` until
    /// a stop is requested (and for a deadline past the clock's range).
    /// Workers read it before starting an item, so the deadline holds even
    /// while handlers block every runtime thread and the supervisor's timer
    /// cannot run.
    drain_deadline: AtomicU64,
    epoch: Instant,
    drain_timeout: Duration,
    /// The runtime runs every task on one thread (see `handoff::Yielder`).
    pub(crate) yielder: Yielder,
}

const NO_DEADLINE: u64 = u64::MAX;

/// Whether a worker may start an item it took ([`Shared::may_start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    Go,
    /// An abort has begun.
    Refused,
    /// The drain deadline has passed: the worker must begin the abort.
    RefusedAbort,
}

/// The user code an item may meet after it was accepted: settlement of its
/// outcome, and the hand-back of an item a shutdown abandoned.
pub(crate) struct Late<Item> {
    /// Receives accepted items that a shutdown abandoned unprocessed.
    pub(crate) on_cancel: Option<ItemHook<Item>>,
    /// Where every item's outcome goes, if the caller settles.
    pub(crate) settle: Option<Box<dyn Settle<Item>>>,
}

impl<Item> Late<Item> {
    /// Sends `item`'s settlement record, if the caller settles.
    pub(crate) fn settle(&self, item: &Item, outcome: Outcome) {
        if let Some(settle) = &self.settle {
            settle.settle(item, outcome);
        }
    }
}

impl<Item> Shared<Item> {
    pub(crate) fn new(
        queue: HandOff<Item>,
        workers: usize,
        parent: Option<&CancellationToken>,
        late: Late<Item>,
        results: Arc<dyn ResultBooks>,
        drain_timeout: Duration,
        yielder: Yielder,
    ) -> Self {
        Shared {
            queue,
            phase: AtomicU8::new(RUNNING),
            stop: parent.map_or_else(CancellationToken::new, CancellationToken::child_token),
            kill: CancellationToken::new(),
            intake: IntakeCounters::default(),
            workers: (0..workers).map(|_| WorkerCounters::default()).collect(),
            unqueued_cancelled: AtomicU64::new(0),
            ends: AtomicUsize::new(2),
            late: Shelf::new(late),
            results,
            report: std::sync::OnceLock::new(),
            finished: CancellationToken::new(),
            drain_deadline: AtomicU64::new(NO_DEADLINE),
            epoch: Instant::now(),
            drain_timeout,
            yielder,
        }
    }

    /// Whether intake must stop pulling (shutdown or abort requested).
    pub(crate) fn is_stopping(&self) -> bool {
        self.phase.load(Acquire) != RUNNING
    }

    fn begin_drain(&self) {
        self.mirror_stop();
        self.stop.cancel();
    }

    /// The stop token was cancelled (by us or by a parent): intake stops at
    /// its next pull, and the drain deadline is set, counted from now. Called
    /// from inside the token's `cancel()`.
    pub(crate) fn mirror_stop(&self) {
        if let Some(deadline) = Instant::now().checked_add(self.drain_timeout) {
            let nanos = deadline.duration_since(self.epoch).as_nanos();
            let nanos = u64::try_from(nanos).unwrap_or(NO_DEADLINE);
            // The first request sets it; a later one does not move it.
            let _ = self
                .drain_deadline
                .compare_exchange(NO_DEADLINE, nanos, Release, Relaxed);
        }
        self.phase.fetch_max(DRAINING, Release);
        if self.queue.producer() == Producer::Feeder {
            // Producers push under the queue's lock and a closed queue
            // refuses them, so once the stop returns no offer or send is
            // accepted, even one that was granted room just before (the bug
            // of lalinsky/zio PR #709 and odin-lang/Odin PR #5329: a parked
            // sender admitted after `close()` returned). The
            // stream intake instead checks the phase before every pull, and
            // queues what it pulled before the stop.
            self.queue.close();
        }
    }

    /// When the drain deadline passes, if a stop was requested and the
    /// deadline is within the clock's range.
    fn drain_deadline(&self) -> Option<Instant> {
        match self.drain_deadline.load(Acquire) {
            NO_DEADLINE => None,
            nanos => self.epoch.checked_add(Duration::from_nanos(nanos)),
        }
    }

    /// Whether a worker may start the item it just took. Not once an abort
    /// has begun, nor once the drain deadline has passed: the worker that
    /// sees that first begins the abort itself (after handing its own item
    /// back, the oldest). One atomic load while the pipeline runs; a clock
    /// read per item only while it drains.
    pub(crate) fn may_start(&self) -> Start {
        match self.phase.load(Acquire) {
            RUNNING => Start::Go,
            ABORTING => Start::Refused,
            _ => match self.drain_deadline() {
                Some(deadline) if Instant::now() >= deadline => Start::RefusedAbort,
                _ => Start::Go,
            },
        }
    }

    /// A stop is under way: no more items are handled.
    pub(crate) fn abort(&self) {
        self.begin_abort();
    }

    fn begin_abort(&self) {
        // Abandon (and count) first: once a worker or the intake can see the
        // abort, through the phase or the closed queue, the abandoned items
        // are counted, so a report built right after they exit balances.
        // The release store pairs with the acquire loads of the phase.
        let abandoned = self.queue.abandon(|n| self.count_unqueued(n));
        self.phase.fetch_max(ABORTING, Release);
        self.stop.cancel();
        self.kill.cancel();
        // Workers waiting to hand a result over stop waiting, and what the
        // consumer has not read is discarded: a stalled consumer cannot
        // hold an aborted pipeline.
        self.results.discard_undelivered();
        // After the counts and the signals: user code runs last, unlocked.
        self.hand_back(abandoned);
    }

    fn count_unqueued(&self, n: usize) {
        self.unqueued_cancelled.fetch_add(n as u64, Relaxed);
    }

    /// Counts accepted items that will never reach a handler as cancelled,
    /// and hands them to `on_cancel` (or drops them).
    pub(crate) fn cancel_unqueued(&self, items: impl ExactSizeIterator<Item = Item>) {
        self.count_unqueued(items.len());
        self.hand_back(items);
    }

    fn hand_back(&self, items: impl IntoIterator<Item = Item>) {
        let mut items = items.into_iter().peekable();
        if items.peek().is_none() {
            return; // no lease for nothing: a late abort keeps no hook alive
        }
        // Released only once every worker is gone, which needs this queue
        // empty: a lease is always there while items are handed back.
        let late = self.late.lease();
        for item in items {
            let Some(late) = &late else {
                drop_quietly(item);
                continue;
            };
            late.settle(&item, Outcome::Cancelled(Stage::Queued));
            match &late.on_cancel {
                Some(hook) => {
                    catching(|| hook(item));
                }
                None => drop_quietly(item),
            }
        }
    }

    fn snapshot(&self) -> Stats {
        // The results side first: a result is delivered or discarded only
        // after its item was counted processed, so reading `processed` last
        // keeps a live snapshot from showing more results than completions.
        let (delivered, discarded) = (self.results.delivered(), self.results.discarded());
        let tally = Tally::sum(&self.workers);
        let (queue_depth, high_water_mark) = self.queue.depth();
        let processed = tally.of(Fate::Processed);
        Stats {
            produced: self.intake.produced.load(Relaxed),
            processed,
            delivered,
            discarded,
            results_waiting: processed.saturating_sub(delivered + discarded),
            dropped: self.intake.dropped.load(Relaxed),
            errored: tally.errored,
            failed: tally.of(Fate::Failed),
            timed_out: tally.of(Fate::TimedOut),
            expired: tally.of(Fate::Expired),
            cancelled: tally.of(Fate::Cancelled) + self.unqueued_cancelled.load(Relaxed),
            queue_depth,
            in_flight: tally.in_flight,
            high_water_mark,
        }
    }

    /// The final report, once no worker runs. An item still counted in
    /// flight then belonged to a worker task that was dropped or died
    /// outside its panic isolation: it is cancelled.
    fn report(&self, workers_joined: usize, aborted: usize, intake: IntakeEnd) -> Report {
        let stats = self.snapshot();
        Report {
            produced: stats.produced,
            processed: stats.processed,
            delivered: stats.delivered,
            discarded: stats.discarded,
            dropped: stats.dropped,
            errored: stats.errored,
            failed: stats.failed,
            timed_out: stats.timed_out,
            expired: stats.expired,
            cancelled: stats.cancelled + stats.in_flight as u64,
            workers: self.workers.len(),
            workers_joined,
            aborted,
            intake,
            high_water_mark: stats.high_water_mark,
        }
    }
}

/// What the user-facing halves may do to a pipeline, whatever its item type.
pub(crate) trait Control: Send + Sync {
    fn shutdown(&self);
    fn abort(&self);
    fn stats(&self) -> Stats;
    fn is_shutting_down(&self) -> bool;
    /// One half was dropped; the last one out aborts (PITFALLS 9).
    fn release_end(&self);
    /// A best-effort report when the supervisor itself did not finish
    /// (its runtime shut down): every worker counts as aborted.
    fn fallback_report(&self) -> Report;
    /// Cancelled once the pipeline has finished and [`Control::report`] is set.
    fn finished(&self) -> &CancellationToken;
    /// The final report, once the pipeline has finished.
    fn final_report(&self) -> Option<Report>;
}

impl<Item: Send + 'static> Control for Shared<Item> {
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
        self.is_stopping() || self.stop.is_cancelled()
    }

    fn release_end(&self) {
        if self.ends.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.begin_abort();
        }
    }

    fn fallback_report(&self) -> Report {
        // The supervisor's runtime dropped the pipeline's tasks: whatever was
        // queued or in flight is cancelled, and a result dropped with its
        // worker task was never delivered.
        self.begin_abort();
        let mut report = self.report(0, self.workers.len(), IntakeEnd::Stopped);
        report.discarded = report.processed.saturating_sub(report.delivered);
        if let Some(late) = self.late.lease() {
            if let Some(settle) = &late.settle {
                // Items lost with their tasks have no record: end when drained.
                settle.finish(None);
            }
        }
        self.late.release_now();
        report
    }

    fn finished(&self) -> &CancellationToken {
        &self.finished
    }

    fn final_report(&self) -> Option<Report> {
        self.report.get().cloned()
    }
}

/// Joins every worker and the intake, running the drain deadline, waits
/// for the results side to settle, and returns the final report. Ends only
/// when no other task of the pipeline is alive.
pub(crate) async fn supervise<Item: Send + 'static>(
    shared: Arc<Shared<Item>>,
    mut stop: StopWatch,
    mut workers: JoinSet<Exit>,
    intake: JoinHandle<IntakeEnd>,
) -> Report {
    let (mut joined, mut aborted) = (0usize, 0usize);
    let mut stop_seen = false;
    let mut workers_done = false;
    let mut settled = pin!(shared.results.settled().cancelled());
    let mut deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    poll_fn(|cx| {
        loop {
            if !stop_seen && stop.poll_stopped(cx).is_ready() {
                // Also reached by a cancelled parent token, whose `cancel()`
                // already set the phase (see `stop`).
                stop_seen = true;
                shared.begin_drain();
                // Set by the request (`mirror_stop`), even if the input had
                // ended. A deadline past the clock's range never comes.
                deadline = shared.drain_deadline().and_then(timer_at).map(Box::pin);
            }
            if let Some(timer) = deadline.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    // Dropped once fired: no timer left to wake this loop again.
                    deadline = None;
                    shared.begin_abort();
                }
            }
            if workers_done {
                // The drain deadline also bounds the wait for a consumer
                // that does not read: when it fires, the rest is discarded.
                return settled.as_mut().poll(cx);
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
                    shared.begin_abort();
                }
                Poll::Ready(None) => workers_done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    // No worker is left to send: what a closed channel still took in is
    // discarded now, so the results law is final.
    shared.results.settle();
    // Workers only finish once the queue is closed, which the intake does
    // as it returns (or an abort does, and the intake is stopped with it).
    let intake_end = match intake.await {
        Ok(end) => end,
        Err(error) if error.is_panic() => IntakeEnd::InputPanicked,
        Err(_) => IntakeEnd::Stopped,
    };
    let report = shared.report(joined, aborted, intake_end);
    debug_assert_eq!(
        report.processed,
        report.delivered + report.discarded,
        "results law broken: {report}"
    );
    crate::trace::finished(&report);
    if let Some(late) = shared.late.lease() {
        if let Some(settle) = &late.settle {
            settle.finish(Some(report.produced));
        }
    }
    // Every closure the caller gave is dropped before anyone sees the
    // report, whatever handles (a controller, the ended results stream, a
    // spare feeder) keep this state alive.
    shared.late.release().await;
    // Set once, here: `get_or_init` cannot fail.
    shared.report.get_or_init(|| report.clone());
    shared.finished.cancel();
    report
}

/// One user-facing half's claim on the pipeline. Dropping the last one
/// aborts the pipeline, so no task outlives both halves.
pub(crate) struct End(pub(crate) Arc<dyn Control>);

impl Drop for End {
    fn drop(&mut self) {
        self.0.release_end();
    }
}
