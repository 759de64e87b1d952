//! The books: every counter of both laws, and the one table of outcomes
//! that the [`Report`](crate::Report), the live [`Stats`](crate::Stats) and
//! settlement all read. A new outcome is one variant of [`Fate`].
//!
//! # Invariants
//!
//! 1. **One writer per counter line.** The intake's counters are written by
//!    the stream intake only (plain load and store), or by push producers
//!    under the queue's lock (`fetch_add`); each worker's by that worker
//!    only. Counters written by several tasks would share a cache line per
//!    item; these are summed when read.
//! 2. **A snapshot never shows more finished than taken.** A worker counts
//!    an item taken before it counts its fate, and stores the fate with
//!    `Release`; [`Books::counts`] loads the fates with `Acquire` before it
//!    loads `taken`, so every fate it sees has its `taken` visible too, and
//!    `taken - fates` is never negative.
//! 3. **Results after outcomes.** A result is delivered or discarded only
//!    after its item was counted processed, and the results side stores
//!    those counts with `Release` (see `results`); they are loaded first,
//!    with `Acquire`, so a snapshot never shows more results than
//!    completions. Items are counted produced before they are queued, and
//!    the queue's lock orders that before any worker takes them: `produced`
//!    is loaded last.
//! 4. **Never more shed than produced.** The intake counts an arrival
//!    produced before (or in the same step as) it counts anything it shed,
//!    both with `Release`; `dropped` is loaded with `Acquire` before
//!    `produced`, so every shed item a snapshot sees was counted produced
//!    too. (Loading `produced` first once showed `dropped` above it: found
//!    by a fresh-user trial.)
//! 5. **Results waiting are never overstated.** A snapshot's results
//!    waiting ([`results_waiting`]) is `processed` less what was delivered
//!    or discarded, loaded again *after* `processed`: every result counted
//!    delivered by then was counted processed before it, so the difference
//!    is at most what waited when `processed` was loaded (never more than
//!    the output buffer and the workers hold). Taken against the counts
//!    loaded before `processed` (invariant 3's order), every result that
//!    finished between the two loads counted as waiting: a new-user trial
//!    saw 548 with a bound of 3.

use crate::sync::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::settle::{Outcome, Stage};

/// How an item that reached a worker ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Its handler completed.
    Processed,
    /// Its handler panicked (or its settlement key could not be taken).
    Failed,
    /// Its handler ran past the handler timeout.
    TimedOut,
    /// It waited in the queue longer than the maximum queue age.
    Expired,
    /// An abort cut its handler off.
    Cancelled,
    /// Its caller went away (a dropped call): not started, or its handler
    /// was cancelled at its next await. Counted `cancelled`.
    Withdrawn,
}

impl Fate {
    const COUNT: usize = 6;

    /// The settlement outcome of an item that ended this way at a worker.
    pub(crate) fn outcome(self) -> Outcome {
        match self {
            Fate::Processed => Outcome::Processed,
            Fate::Failed => Outcome::Failed,
            Fate::TimedOut => Outcome::TimedOut,
            Fate::Expired => Outcome::Expired,
            Fate::Cancelled => Outcome::Cancelled(Stage::InFlight),
            Fate::Withdrawn => Outcome::Cancelled(Stage::Withdrawn),
        }
    }
}

/// Why a worker stopped: `workers_joined` vs `aborted` needs the worker's
/// own word for it (`JoinSet::abort_all` cannot tell an idle worker from
/// one cut off mid-item).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The queue was closed and empty, or abandoned while this worker was idle.
    Joined,
    /// An abort cut off this worker's in-flight handler.
    Aborted,
}

/// Adds `n` to a counter that only the calling task writes: a plain load
/// and store, no read-modify-write on the hot path (invariant 1).
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed) + n, Release);
}

/// Counters of what the front took and shed (invariant 1).
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct IntakeCounters {
    pub(crate) produced: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

impl IntakeCounters {
    /// The single stream intake counts with plain stores.
    pub(crate) fn count_alone(&self, produced: usize, dropped: usize) {
        bump(&self.produced, produced as u64);
        bump(&self.dropped, dropped as u64);
    }

    /// Push producers count under the queue's lock, several at once.
    pub(crate) fn count_shared(&self, produced: usize, dropped: usize) {
        self.produced.fetch_add(produced as u64, Release);
        self.dropped.fetch_add(dropped as u64, Release);
    }
}

/// Counters written by one worker task only.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct WorkerCounters {
    taken: AtomicU64,
    fates: [AtomicU64; Fate::COUNT],
    /// Processed items whose output was an `Err` (when counted at all).
    errored: AtomicU64,
}

impl WorkerCounters {
    /// The worker took an item from the queue.
    pub(crate) fn took(&self) {
        bump(&self.taken, 1);
    }

    /// A taken item ended as `fate` (after `took`: invariant 2).
    pub(crate) fn ended(&self, fate: Fate) {
        bump(&self.fates[fate as usize], 1);
    }

    /// A processed item's output was an `Err`.
    pub(crate) fn errored(&self) {
        bump(&self.errored, 1);
    }
}

/// Every counter of a pipeline.
pub(crate) struct Books {
    pub(crate) intake: IntakeCounters,
    workers: Box<[WorkerCounters]>,
    /// Items accepted but cancelled without reaching a worker: abandoned in
    /// the queue by an abort, refused by a closed queue after they were
    /// pulled, or taken but not started once a stop had begun.
    unqueued_cancelled: AtomicU64,
    /// Items that failed before they were queued: their key function
    /// panicked (keyed pipelines).
    unqueued_failed: AtomicU64,
    /// Items their caller withdrew from the queue (a part of `cancelled`,
    /// counted under the queue's lock).
    withdrawn_queued: AtomicU64,
}

/// The counters summed at one moment: what a `Report` and `Stats` show.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) produced: u64,
    pub(crate) processed: u64,
    pub(crate) delivered: u64,
    pub(crate) discarded: u64,
    pub(crate) dropped: u64,
    pub(crate) errored: u64,
    pub(crate) failed: u64,
    pub(crate) timed_out: u64,
    pub(crate) expired: u64,
    pub(crate) cancelled: u64,
    /// Items withdrawn by their caller, queued or running (a part of
    /// `cancelled`).
    pub(crate) withdrawn: u64,
    /// Items a worker holds whose fate is not decided yet.
    pub(crate) in_flight: usize,
    /// Items workers have taken (invariant 2: never fewer than finished).
    pub(crate) taken: u64,
}

/// What the results side has counted (invariant 3).
pub(crate) trait ResultCounts {
    /// Results delivered so far, loaded with `Acquire`.
    fn delivered(&self) -> u64;
    /// Results discarded so far, loaded with `Acquire`.
    fn discarded(&self) -> u64;
}

/// Results finished and not yet delivered or discarded, from a snapshot's
/// `counts` (invariant 5).
pub(crate) fn results_waiting(counts: &Counts, results: &dyn ResultCounts) -> u64 {
    // Loaded after `counts` loaded `processed`.
    let taken = results.delivered() + results.discarded();
    counts.processed.saturating_sub(taken)
}

impl Books {
    pub(crate) fn new(workers: usize) -> Books {
        Books {
            intake: IntakeCounters::default(),
            workers: (0..workers).map(|_| WorkerCounters::default()).collect(),
            unqueued_cancelled: AtomicU64::new(0),
            unqueued_failed: AtomicU64::new(0),
            withdrawn_queued: AtomicU64::new(0),
        }
    }

    pub(crate) fn worker(&self, slot: usize) -> &WorkerCounters {
        &self.workers[slot]
    }

    pub(crate) fn workers(&self) -> usize {
        self.workers.len()
    }

    /// `n` accepted items will never reach a handler.
    pub(crate) fn cancel_unqueued(&self, n: usize) {
        self.unqueued_cancelled.fetch_add(n as u64, Release);
    }

    /// `n` taken items failed before they could be queued.
    pub(crate) fn fail_unqueued(&self, n: usize) {
        self.unqueued_failed.fetch_add(n as u64, Release);
    }

    /// A queued item was withdrawn by its caller (under the queue's lock).
    pub(crate) fn withdraw_queued(&self) {
        self.withdrawn_queued.fetch_add(1, Release);
    }

    /// Sums every counter, in the order invariants 2 and 3 need.
    pub(crate) fn counts(&self, results: &dyn ResultCounts) -> Counts {
        let (delivered, discarded) = (results.delivered(), results.discarded());
        let withdrawn_queued = self.withdrawn_queued.load(Acquire);
        let mut fates = [0u64; Fate::COUNT];
        let (mut errored, mut in_flight, mut taken_all) = (0, 0, 0);
        for worker in &self.workers {
            let ended = worker.fates.each_ref().map(|fate| fate.load(Acquire));
            let taken = worker.taken.load(Acquire);
            debug_assert!(
                taken >= ended.iter().sum::<u64>(),
                "Books: more finished than taken (invariant 2)"
            );
            for (sum, n) in fates.iter_mut().zip(ended) {
                *sum += n;
            }
            errored += worker.errored.load(Acquire);
            taken_all += taken;
            // A worker holds at most one item: the difference is 0 or 1
            // (more only for a `taken` stored after the fates were read).
            in_flight += usize::from(taken > ended.iter().sum::<u64>());
        }
        let of = |fate: Fate| fates[fate as usize];
        // Invariants 3 and 4: what was shed, then what was produced, last.
        let dropped = self.intake.dropped.load(Acquire);
        let produced = self.intake.produced.load(Acquire);
        debug_assert!(
            dropped <= produced,
            "Books: more shed than produced (invariant 4)"
        );
        Counts {
            processed: of(Fate::Processed),
            delivered,
            discarded,
            errored,
            failed: of(Fate::Failed) + self.unqueued_failed.load(Acquire),
            timed_out: of(Fate::TimedOut),
            expired: of(Fate::Expired),
            cancelled: of(Fate::Cancelled)
                + of(Fate::Withdrawn)
                + self.unqueued_cancelled.load(Acquire)
                + withdrawn_queued,
            withdrawn: of(Fate::Withdrawn) + withdrawn_queued,
            in_flight,
            taken: taken_all,
            produced,
            dropped,
        }
    }
}
