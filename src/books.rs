//! The counters every part of a pipeline writes, and what an item's end at
//! a worker can be. Every module that counts reads its outcomes from here,
//! so a new outcome is one variant of [`Fate`] that the report, the stats
//! and settlement all see. Imports only the public `Outcome` type.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::settle::{Outcome, Stage};

/// How an item that reached a worker ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Its handler completed.
    Processed,
    /// Its handler panicked.
    Failed,
    /// Its handler ran past the handler timeout.
    TimedOut,
    /// It waited in the queue longer than the maximum queue age.
    Expired,
    /// An abort cut its handler off.
    Cancelled,
}

impl Fate {
    const COUNT: usize = 5;

    /// The settlement outcome of an item that ended this way at a worker.
    pub(crate) fn outcome(self) -> Outcome {
        match self {
            Fate::Processed => Outcome::Processed,
            Fate::Failed => Outcome::Failed,
            Fate::TimedOut => Outcome::TimedOut,
            Fate::Expired => Outcome::Expired,
            Fate::Cancelled => Outcome::Cancelled(Stage::InFlight),
        }
    }
}

/// Why a worker stopped: the report's `workers_joined` vs `aborted` split
/// needs the worker's own word for it (PITFALLS 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// The queue was closed and empty, or abandoned while this worker was idle.
    Joined,
    /// An abort cut off this worker's in-flight handler.
    Aborted,
}

/// Adds `n` to a counter that only the calling task writes: a plain
/// load and store, no read-modify-write on the hot path.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed) + n, Relaxed);
}

/// Counters written by the intake task only (PITFALLS 4: one writer per
/// cache line, summed when read). The push front writes them with
/// `fetch_add`, under the queue's lock.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct IntakeCounters {
    pub(crate) produced: AtomicU64,
    pub(crate) dropped: AtomicU64,
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

    /// A taken item ended as `fate`.
    pub(crate) fn ended(&self, fate: Fate) {
        bump(&self.fates[fate as usize], 1);
    }

    /// A processed item's output was an `Err`.
    pub(crate) fn errored(&self) {
        bump(&self.errored, 1);
    }
}

/// The workers' counters, summed.
#[derive(Default, Clone, Copy)]
pub(crate) struct Tally {
    fates: [u64; Fate::COUNT],
    pub(crate) errored: u64,
    /// Items a worker holds whose fate is not decided yet.
    pub(crate) in_flight: usize,
}

impl Tally {
    pub(crate) fn sum(workers: &[WorkerCounters]) -> Tally {
        let mut tally = Tally::default();
        for w in workers {
            // Fates before `taken`: `taken` only grows, so the difference
            // is never negative. It may count items the worker took after
            // the fates were read, so it is capped at the one item a
            // worker can hold.
            let fates = w.fates.each_ref().map(|counter| counter.load(Relaxed));
            let taken = w.taken.load(Relaxed);
            for (sum, n) in tally.fates.iter_mut().zip(fates) {
                *sum += n;
            }
            tally.errored += w.errored.load(Relaxed);
            tally.in_flight += usize::from(taken > fates.iter().sum::<u64>());
        }
        tally
    }

    pub(crate) fn of(&self, fate: Fate) -> u64 {
        self.fates[fate as usize]
    }
}
