//! The pipeline's phase: running, draining or aborting, and the drain
//! deadline. Read on the hot path with one atomic load, so no task takes a
//! token's lock per item (`CancellationToken::is_cancelled` locks its tree).
//!
//! # Invariants
//!
//! 1. The phase only grows: `RUNNING` → `DRAINING` → `ABORTING`, each step
//!    a `fetch_max` with `Release`; readers load it with `Acquire`, so
//!    what was done before a step (the counts of an abort, see
//!    `control`) is visible to whoever sees the step.
//! 2. The drain deadline is set once, by the first stop request, before
//!    the phase becomes `DRAINING` (a `Release` store before the phase's
//!    `Release` step): a worker that sees `DRAINING` sees the deadline.

use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::sync::{AtomicU8, AtomicU64};

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

/// No deadline yet (or one past the clock's range, which never comes).
const NO_DEADLINE: u64 = u64::MAX;

/// Whether a worker may start an item it took ([`Phase::may_start`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    Go,
    /// An abort has begun.
    Refused,
    /// The drain deadline has passed: the worker must begin the abort.
    RefusedAbort,
}

pub(crate) struct Phase {
    phase: AtomicU8,
    /// Nanoseconds after `epoch`; `NO_DEADLINE` until a stop is requested.
    drain_deadline: AtomicU64,
    epoch: Instant,
    drain_timeout: Duration,
    /// The pipeline's token (a child of the caller's, if one was given):
    /// graceful stop.
    pub(crate) stop: CancellationToken,
    /// Cuts in-flight handlers. Not a child of `stop`: a graceful stop must
    /// not cancel work that still has time to finish.
    pub(crate) kill: CancellationToken,
}

impl Phase {
    pub(crate) fn new(parent: Option<&CancellationToken>, drain_timeout: Duration) -> Phase {
        Phase {
            phase: AtomicU8::new(RUNNING),
            drain_deadline: AtomicU64::new(NO_DEADLINE),
            epoch: Instant::now(),
            drain_timeout,
            stop: parent.map_or_else(CancellationToken::new, CancellationToken::child_token),
            kill: CancellationToken::new(),
        }
    }

    /// Whether intake must stop taking items (a stop was requested).
    #[inline]
    pub(crate) fn is_stopping(&self) -> bool {
        self.phase.load(Acquire) != RUNNING
    }

    /// A stop was requested (by `shutdown()`, or a parent's `cancel()`):
    /// the drain deadline is set, counted from now, then the phase moves to
    /// draining (invariant 2).
    pub(crate) fn drain(&self) {
        if let Some(deadline) = Instant::now().checked_add(self.drain_timeout) {
            let nanos = deadline.duration_since(self.epoch).as_nanos();
            let nanos = u64::try_from(nanos).unwrap_or(NO_DEADLINE);
            // The first request sets it; a later one does not move it.
            let _ = self
                .drain_deadline
                .compare_exchange(NO_DEADLINE, nanos, Release, Relaxed);
        }
        self.phase.fetch_max(DRAINING, Release);
    }

    /// An abort has begun (invariant 1: after its counts).
    pub(crate) fn abort(&self) {
        self.phase.fetch_max(ABORTING, Release);
    }

    /// When the drain deadline passes, once a stop was requested.
    pub(crate) fn drain_deadline(&self) -> Option<Instant> {
        match self.drain_deadline.load(Acquire) {
            NO_DEADLINE => None,
            nanos => self.epoch.checked_add(Duration::from_nanos(nanos)),
        }
    }

    /// Whether a worker may start the item it just took. Not once an abort
    /// has begun, nor once the drain deadline has passed: the worker that
    /// sees that first begins the abort (after handing its own item back,
    /// the oldest). One atomic load while the pipeline runs; a clock read
    /// per item only while it drains.
    #[inline]
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
}
