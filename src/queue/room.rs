//! Room under [`ShedPolicy::Backpressure`](crate::ShedPolicy::Backpressure):
//! how a producer waits for a free slot instead of shedding.
//!
//! Two disciplines, chosen by whoever builds the queue, for two shapes of
//! producer:
//!
//! * [`Room::Batch`]: one producer that pulls in batches (a stream's intake)
//!   reserves every free slot under the queue's lock before it pulls, and
//!   waits, registered under that lock, until the queue has drained to a
//!   low-water mark: one wake-up per half a queue instead of one per slot.
//!   Its state ([`Batch`]) lives in the queue's locked state.
//! * [`Room::Fifo`]: any number of producers (pushing one item each) wait in
//!   line for a slot each, on a tokio [`Semaphore`] whose permits are the
//!   free slots: FIFO and fair, a slot handed to the first in line as soon
//!   as a worker frees it. Its waiting is tokio's, proved by tokio's own
//!   loom models, and is left out of this crate's.
//!
//! Under the shedding policies ([`Room::Shed`]) nobody waits for room.

use std::task::Waker;

use tokio::sync::Semaphore;

use std::sync::Arc;

pub(crate) enum Room {
    /// The policy sheds; nobody waits for room.
    Shed,
    /// One batching producer reserves room under the queue's lock.
    Batch,
    /// Producers wait in line on a semaphore of free slots.
    Fifo(Arc<Semaphore>),
}

/// Why a reservation of one slot failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoRoom {
    /// The queue is full (`Backpressure`, not waiting).
    Full,
    /// The queue was closed.
    Closed,
}

/// The batching producer's room, kept under the queue's lock.
///
/// # Invariants
///
/// 1. `items.len() + reserved <= capacity` (the queue checks it): a push
///    turns reservations into items, so it never finds the queue full and
///    nothing is shed.
/// 2. The producer registers in `waiter` only under the lock, after finding
///    no free slot. The take that drains the queue to the low-water mark
///    (or `close`, or `abandon`) takes that waker under the same lock, so
///    the wake-up cannot be lost; the workers drain to that mark whatever
///    the producer does, so it comes.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// Slots reserved and not yet filled.
    pub(crate) reserved: usize,
    /// The producer, waiting for room.
    pub(crate) waiter: Option<Waker>,
}

/// Queued items (plus reserved slots) at or below which a take wakes the
/// waiting batch producer: half the capacity. Waking it at the first free
/// slot made it pull one item per wake-up; at half, it refills half the
/// queue per wake-up while the workers still have the other half to take,
/// as Netty's `WriteBufferWaterMark` keeps its low mark at half the high
/// one.
pub(crate) fn low_water(capacity: usize) -> usize {
    capacity / 2
}

impl Batch {
    /// After a take: the waiter's waker if the queue has drained to the
    /// low-water mark.
    pub(crate) fn on_take(&mut self, queued: usize, capacity: usize) -> Option<Waker> {
        if self.waiter.is_some() && queued + self.reserved <= low_water(capacity) {
            self.waiter.take()
        } else {
            None
        }
    }
}

impl Room {
    /// A fresh semaphore-backed room of `capacity` free slots.
    pub(crate) fn fifo(capacity: usize) -> Room {
        Room::Fifo(Arc::new(Semaphore::new(capacity)))
    }

    /// One slot for one producer, without waiting.
    pub(crate) fn try_reserve_one(&self) -> Result<(), NoRoom> {
        let Room::Fifo(slots) = self else {
            return Ok(());
        };
        match slots.try_acquire() {
            Ok(permit) => {
                permit.forget();
                Ok(())
            }
            Err(tokio::sync::TryAcquireError::Closed) => Err(NoRoom::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(NoRoom::Full),
        }
    }

    /// One slot for one producer, waiting in line for it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a slot is taken only once the wait completes; dropped
    /// earlier, the place in line is given up.
    pub(crate) async fn reserve_one(&self) -> Result<(), NoRoom> {
        let Room::Fifo(slots) = self else {
            return Ok(());
        };
        match slots.acquire().await {
            Ok(permit) => {
                permit.forget();
                Ok(())
            }
            Err(_) => Err(NoRoom::Closed),
        }
    }

    /// The semaphore, for a producer that polls for room (the `Sink`).
    pub(crate) fn semaphore(&self) -> Option<&Arc<Semaphore>> {
        match self {
            Room::Fifo(slots) => Some(slots),
            _ => None,
        }
    }

    /// A worker took an item: its slot is free.
    pub(crate) fn freed_one(&self) {
        if let Room::Fifo(slots) = self {
            slots.add_permits(1);
        }
    }

    /// The queue closed: waiting producers are refused.
    pub(crate) fn close(&self) {
        if let Room::Fifo(slots) = self {
            slots.close();
        }
    }
}
