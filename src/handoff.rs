//! The bounded MPMC hand-off queue between the intake and the workers.
//!
//! # Invariants
//!
//! * **Permits never exceed queued items.** While the queue is open, every
//!   available permit of `ready` stands for one item in `items`. The intake
//!   pushes under the lock and adds the permits *after* unlocking; a worker
//!   takes a permit *before* locking to pop. So at every instant
//!   `ready.available_permits() <= items.len()`, and a worker holding a permit
//!   finds an item when it pops (checked with `debug_assert!` under the lock).
//! * **Eviction keeps the count.** Under [`ShedPolicy::DropOldest`] a batch
//!   that overflows the queue evicts the oldest queued items and appends the
//!   newest arrivals under the same lock, so the length grows by exactly the
//!   permits added afterwards: every evicted item's permit passes to an
//!   arrival, and an evicted item can never also be handed to a worker
//!   (openclaw#103246). An item leaves `items` exactly once: popped by a
//!   worker, evicted, or abandoned.
//! * **Parked workers are counted.** `parked` counts workers waiting in
//!   `take`, so the intake knows when a push woke idle workers and should
//!   yield to them rather than pull (and shed) more.
//! * **Closing is not emptiness.** Tokio's `Semaphore::close` makes `acquire`
//!   fail even while permits remain, so after [`HandOff::close`] workers stop
//!   counting permits and pop directly until `items` is empty. Closing never
//!   discards an item; only [`HandOff::abandon`] does, and it hands every
//!   abandoned item back to the caller to be counted.
//! * **Room is reserved, never taken back (`Backpressure`).** Under
//!   [`ShedPolicy::Backpressure`] the intake first takes one `room` permit
//!   per item (waiting while the queue is full), then pushes; a worker
//!   returns one permit per pop. So `items.len() + room.available_permits()
//!   <= capacity`, a push never finds the queue full, and nothing is shed.
//!   Abandoning closes `room`, so an intake waiting for room wakes and is
//!   refused.
//! * **Take order is numbered.** Each pop gets the next sequence number
//!   under the lock, so taken items are numbered densely in queue order;
//!   ordered output reorders by it.
//! * **Stamps follow items.** With a maximum queue age, `stamps` holds one
//!   queue instant per item of `items`, pushed, evicted and popped in step,
//!   so an item's age is read when it is popped; without one it stays empty.
//! * **No user code under the lock.** Shed, rejected and abandoned items are
//!   moved out under the lock and dropped (or given to a hook) by the caller
//!   after it is released, so a panicking `Drop` or hook cannot poison the
//!   mutex. The lock is taken with poison recovery anyway.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};

use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::ShedPolicy;

pub(crate) struct HandOff<T> {
    /// The maximum queue age, if any: items carry the instant they were
    /// queued, and one that waited longer is expired when taken.
    max_age: Option<Duration>,
    /// One permit per queued item while open (see `# Invariants`).
    ready: Semaphore,
    /// Free slots, only under `Backpressure` (see `# Invariants`).
    room: Semaphore,
    /// Workers parked in `take`, waiting for an item.
    parked: AtomicUsize,
    state: Mutex<State<T>>,
    capacity: usize,
    policy: ShedPolicy,
}

struct State<T> {
    items: VecDeque<T>,
    /// When each item of `items` was queued, in step with it; empty unless
    /// a maximum queue age is set.
    stamps: VecDeque<Instant>,
    closed: bool,
    abandoned: bool,
    high_water_mark: usize,
    /// Sequence number of the next pop.
    next_take: u64,
}

/// Why [`HandOff::reserve_one`] found no room.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Full {
    /// The queue is full (`Backpressure`, not waiting).
    NoRoom,
    /// The queue was abandoned.
    Closed,
}

/// What happened to a batch offered with [`HandOff::push_batch`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Every item was queued or shed; the shed ones are in the `shed` vector.
    /// `woke_idle`: the push handed items to workers that were parked.
    Accepted { woke_idle: bool },
    /// The queue was abandoned or closed: the batch is left untouched for
    /// the caller.
    Refused,
}

impl<T> HandOff<T> {
    pub(crate) fn new(capacity: usize, policy: ShedPolicy, max_age: Option<Duration>) -> Self {
        debug_assert!(capacity > 0, "HandOff: capacity must be at least 1");
        HandOff {
            max_age,
            ready: Semaphore::new(0),
            parked: AtomicUsize::new(0),
            room: Semaphore::new(if policy == ShedPolicy::Backpressure {
                capacity
            } else {
                0
            }),
            state: Mutex::new(State {
                // Grows on demand: a huge capacity is a bound, not a reservation.
                items: VecDeque::with_capacity(capacity.min(1024)),
                stamps: VecDeque::new(),
                closed: false,
                abandoned: false,
                high_water_mark: 0,
                next_take: 0,
            }),
            capacity,
            policy,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `batch` in order under one lock, shedding by policy into `shed`.
    ///
    /// On `Accepted`, `batch` is empty afterwards. Shed items are appended to
    /// `shed` for the caller to count and dispose of outside the lock.
    pub(crate) fn push_batch(&self, batch: &mut Vec<T>, shed: &mut Vec<T>) -> Pushed {
        self.push_counted(batch, shed, |_, _| {})
    }

    /// [`push_batch`](Self::push_batch), calling `count(offered, shed)`
    /// under the lock once the batch is accepted. The push front counts
    /// there: a worker can only see the queue closed (and let the report be
    /// built) after taking the lock, so no accepted item can be missing from
    /// the counts. A closed queue refuses pushes (the push front closes it
    /// at a stop, while producers may still be offering).
    pub(crate) fn push_counted(
        &self,
        batch: &mut Vec<T>,
        shed: &mut Vec<T>,
        count: impl FnOnce(usize, usize),
    ) -> Pushed {
        let added = {
            let mut state = self.lock();
            if state.abandoned || state.closed {
                return Pushed::Refused;
            }
            let (offered, shed_before) = (batch.len(), shed.len());
            let before = state.items.len();
            // In bulk, with the same outcome as offering the items one by
            // one: what fits is queued; past that, DropNewest sheds the
            // arrivals in order, and DropOldest evicts the oldest queued items
            // first, then the oldest arrivals, so the newest `capacity` stay.
            let free = self.capacity - before;
            match self.policy {
                ShedPolicy::DropNewest | ShedPolicy::Backpressure => {
                    debug_assert!(
                        self.policy != ShedPolicy::Backpressure || batch.len() <= free,
                        "HandOff: Backpressure push without room"
                    );
                    if batch.len() > free {
                        shed.extend(batch.drain(free..));
                    }
                    state.items.extend(batch.drain(..));
                }
                ShedPolicy::DropOldest => {
                    let overflow = batch.len().saturating_sub(free);
                    let evicted = overflow.min(before);
                    shed.extend(state.items.drain(..evicted));
                    if self.max_age.is_some() {
                        state.stamps.drain(..evicted);
                    }
                    shed.extend(batch.drain(..overflow - evicted));
                    state.items.extend(batch.drain(..));
                }
            }
            if self.max_age.is_some() {
                // One clock read per batch: its items were queued together.
                let now = Instant::now();
                let unstamped = state.items.len() - state.stamps.len();
                state.stamps.extend(std::iter::repeat_n(now, unstamped));
            }
            let len = state.items.len();
            debug_assert!(len <= self.capacity, "HandOff: queue over capacity");
            state.high_water_mark = state.high_water_mark.max(len);
            count(offered, shed.len() - shed_before);
            debug_assert!(
                self.ready.available_permits() <= before,
                "HandOff: more permits ({}) than queued items ({before})",
                self.ready.available_permits()
            );
            len - before
        };
        // Under `Backpressure` the intake waits for room anyway, which lets
        // the workers run; a yield per batch on top only costs.
        let woke_idle =
            added > 0 && self.policy != ShedPolicy::Backpressure && self.parked.load(Relaxed) > 0;
        if added > 0 {
            self.ready.add_permits(added);
        }
        Pushed::Accepted { woke_idle }
    }

    /// Waits for an item and takes it; `None` once the queue is closed and
    /// empty, or abandoned. The flag says the item waited longer than the
    /// maximum queue age: the worker must not start it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a permit is forgotten only together with a pop.
    pub(crate) async fn take(&self) -> Option<(u64, T, bool)> {
        loop {
            // Fast path first: a busy queue rarely needs to park the worker.
            let permit = match self.ready.try_acquire() {
                Ok(permit) => Ok(permit),
                Err(tokio::sync::TryAcquireError::Closed) => return self.pop(),
                Err(tokio::sync::TryAcquireError::NoPermits) => {
                    let _parked = Parked::new(&self.parked);
                    self.ready.acquire().await
                }
            };
            match permit {
                Ok(permit) => {
                    permit.forget();
                    if let Some(item) = self.pop() {
                        return Some(item);
                    }
                    // Only reachable after close: another worker drained our
                    // item without a permit. Go round and see the close.
                }
                // Closed: permits no longer mean anything; drain directly.
                Err(_) => return self.pop(),
            }
        }
    }

    fn pop(&self) -> Option<(u64, T, bool)> {
        let taken = {
            let mut state = self.lock();
            if state.abandoned {
                return None;
            }
            let item = state.items.pop_front();
            let expired = match (self.max_age, state.stamps.pop_front()) {
                (Some(max_age), Some(queued_at)) => queued_at.elapsed() > max_age,
                _ => false,
            };
            debug_assert!(
                item.is_some() || state.closed,
                "HandOff: a permit was granted for an empty open queue"
            );
            let seq = state.next_take;
            state.next_take += u64::from(item.is_some());
            item.map(|item| (seq, item, expired))
        };
        if taken.is_some() && self.policy == ShedPolicy::Backpressure {
            self.room.add_permits(1);
        }
        taken
    }

    /// How many items the intake may pull now, at most `max`.
    ///
    /// Under `Backpressure` this waits until at least one slot is free and
    /// reserves every free slot it returns (0 once the queue is abandoned),
    /// so intake never pulls an item it cannot queue; the unused part goes
    /// back with [`HandOff::unreserve`]. Other policies never wait.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe under `Backpressure`: a reservation would be lost.
    /// The intake awaits it to completion.
    pub(crate) async fn reserve(&self, max: usize) -> usize {
        if self.policy != ShedPolicy::Backpressure {
            return max;
        }
        match self.room.acquire().await {
            Ok(first) => first.forget(),
            Err(_) => return 0,
        }
        // Only the intake takes room, so what is available stays available.
        let more = self.room.available_permits().min(max.saturating_sub(1));
        if let Ok(permits) = self
            .room
            .try_acquire_many(u32::try_from(more).unwrap_or(u32::MAX))
        {
            permits.forget();
            return 1 + more;
        }
        1
    }

    /// Reserves one slot for one producer of the push front, without
    /// waiting. Only `Backpressure` reserves; other policies always succeed.
    pub(crate) fn try_reserve_one(&self) -> Result<(), Full> {
        if self.policy != ShedPolicy::Backpressure {
            return Ok(());
        }
        match self.room.try_acquire() {
            Ok(permit) => {
                permit.forget();
                Ok(())
            }
            Err(tokio::sync::TryAcquireError::Closed) => Err(Full::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(Full::NoRoom),
        }
    }

    /// [`try_reserve_one`](Self::try_reserve_one), waiting for room under
    /// `Backpressure` (producers wait in line, fairly: tokio's semaphore is
    /// FIFO). `Err` once the queue is closed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a permit is forgotten only once acquired.
    pub(crate) async fn reserve_one(&self) -> Result<(), Full> {
        if self.policy != ShedPolicy::Backpressure {
            return Ok(());
        }
        match self.room.acquire().await {
            Ok(permit) => {
                permit.forget();
                Ok(())
            }
            Err(_) => Err(Full::Closed),
        }
    }

    pub(crate) fn policy(&self) -> ShedPolicy {
        self.policy
    }

    /// Returns `n` reserved but unused slots (under `Backpressure`).
    pub(crate) fn unreserve(&self, n: usize) {
        if self.policy == ShedPolicy::Backpressure && n > 0 {
            self.room.add_permits(n);
        }
    }

    /// No more pushes; workers drain what is queued, then see `None`.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.close();
        // Producers of the push front waiting for room are refused too.
        self.room.close();
    }

    /// Closes the queue and returns every queued item; later pushes are
    /// refused. `count` receives the number abandoned under the lock, before
    /// any worker can see the queue abandoned, exit and let the report be
    /// built without them.
    pub(crate) fn abandon(&self, count: impl FnOnce(usize)) -> Vec<T> {
        let items: Vec<T> = {
            let mut state = self.lock();
            state.closed = true;
            state.abandoned = true;
            state.stamps.clear();
            let items: Vec<T> = state.items.drain(..).collect();
            count(items.len());
            items
        };
        self.ready.close();
        self.room.close();
        items
    }

    /// Current number of queued items and the largest number ever queued.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let state = self.lock();
        (state.items.len(), state.high_water_mark)
    }
}

/// Counts a worker as parked for as long as it waits (also if its `take`
/// future is dropped mid-wait).
struct Parked<'a>(&'a AtomicUsize);

impl<'a> Parked<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Relaxed);
        Parked(count)
    }
}

impl Drop for Parked<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}
