//! The queue stage: the bounded MPMC hand-off between a front and the
//! workers, with the shed policy applied as items are pushed.
//!
//! One `Mutex<VecDeque>` holds the items, and with them the workers that
//! wait for one: a worker takes the lock once per item and, finding none,
//! registers its waker under that same lock ([`WaitList`]). A push wakes one
//! registered worker per item it adds, after unlocking. (An earlier design
//! put a tokio `Semaphore` of "ready" permits in front of the lock: exact
//! too, but a second shared atomic and waiter lock per item;
//! `BENCHMARKS.md` has the measurements.) The queue does not know what
//! feeds it: a front pushes batches (one item, for the push front) and says
//! how it waits for room ([`Room`]).
//!
//! # Invariants
//!
//! 1. **No lost wake-up.** A worker registers in `idle` only under the lock,
//!    after finding `items` empty and the queue open. Every push that adds
//!    `n` items removes up to `n` registered workers under the same lock
//!    and wakes them after unlocking; `close` and `abandon` wake every one.
//!    A woken worker takes an item or registers again; one whose take is
//!    dropped after its wake-up passes it on ([`WaitList::leave`]). So while
//!    an item is queued and a worker is registered, some registered worker
//!    has a wake-up coming.
//! 2. **An item leaves `items` exactly once**: taken by a worker, evicted by
//!    a push under [`ShedPolicy::DropOldest`] (which evicts and appends under
//!    the same lock, so an evicted item can never also be handed to a
//!    worker; openclaw#103246), or abandoned.
//! 3. **Closing is not emptiness.** After [`HandOff::close`] workers keep
//!    taking until `items` is empty, then see `None`. Only
//!    [`HandOff::abandon`] discards items, and it hands each back to the
//!    caller, counted under the lock.
//! 4. **Bounded.** `items.len() + batch.reserved <= capacity` after every
//!    push (see [`room::Batch`] for the reservation).
//! 5. **Take order is numbered.** Each take gets the next sequence number
//!    under the lock, so taken items are numbered densely in queue order
//!    (ordered output reorders by it).
//! 6. **Stamps follow items.** While the queue keeps stamps (`stamped`: a
//!    maximum queue age is set, or the `metrics` feature is on), `stamps`
//!    knows when each item of `items` was queued (one run per push: see
//!    [`Stamps`]), pushed, evicted and taken in step. The instant is read
//!    once per push, before the lock (the lock is held no longer for it),
//!    so an item that waited for the lock is stamped when its push began.
//!    Without stamps nothing of this runs: stamping every push would cost
//!    the hot path 35 instructions per item without shedding and 5 per
//!    item shed (callgrind, `BENCHMARKS.md`).
//! 7. **No foreign code under the lock.** Shed, evicted and abandoned items
//!    are moved out under the lock and dropped (or handed to a hook) by the
//!    caller after it is released; wakers are woken after unlocking.
//!
//! # Lock order
//!
//! The queue's lock is taken alone: nothing else is locked while it is
//! held, and it is never taken under another lock of the crate.

mod keyed;
mod keys;
mod list;
mod room;
mod stamps;
mod waitlist;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::task::coop;
use tokio::time::Instant;

use crate::ShedPolicy;
use crate::export::{Stamp, stamp};
use crate::sync::{AtomicUsize, Mutex, MutexGuard, lock};
use std::sync::atomic::Ordering::Relaxed;

pub(crate) use keyed::{KeyPlace, Keyed};
pub(crate) use keys::{KeyHasher, KeyId, KeyTable, Keys, table};
pub(crate) use room::{NoRoom, Room};
pub(crate) use waitlist::{WaitList, wake};

use room::Batch;
use stamps::Stamps;

/// How a queue is built: sizes, policy, and how its producers wait for room.
pub(crate) struct QueueSettings {
    pub(crate) capacity: usize,
    pub(crate) policy: ShedPolicy,
    /// Items that waited longer are expired when taken.
    pub(crate) max_age: Option<Duration>,
    /// Under `Backpressure`: several producers wait in line (`true`), or
    /// one batching producer reserves under the lock (`false`).
    pub(crate) many_producers: bool,
    /// Shed items go back to the pusher (for a hook, settlement, a
    /// hand-back, or a `Drop` that must run unlocked). Otherwise, for items
    /// without drop glue, they are counted and forgotten in place.
    pub(crate) keep_shed: bool,
    /// Keyed mode (see `keyed`): the key table, and the most items one key
    /// may have queued.
    pub(crate) keyed: Option<(Box<dyn KeyTable>, usize)>,
}

impl QueueSettings {
    /// A queue of `capacity` items under `policy` and nothing more: no
    /// maximum age, one batching producer, shed items counted in place,
    /// unkeyed. The fields say what to change.
    pub(crate) fn plain(capacity: usize, policy: ShedPolicy) -> Self {
        QueueSettings {
            capacity,
            policy,
            max_age: None,
            many_producers: false,
            keep_shed: false,
            keyed: None,
        }
    }
}

pub(crate) struct HandOff<T> {
    max_age: Option<Duration>,
    /// The queue keeps stamps (invariant 6).
    stamped: bool,
    room: Room,
    /// `items.len()`, written under the lock, read without it by a front
    /// sizing its next pull.
    len: AtomicUsize,
    state: Mutex<State<T>>,
    capacity: usize,
    policy: ShedPolicy,
    keep_shed: bool,
    keyed: bool,
}

struct State<T> {
    items: VecDeque<T>,
    /// When each item of `items` was queued (invariant 6).
    stamps: Stamps,
    closed: bool,
    abandoned: bool,
    high_water_mark: usize,
    /// Sequence number of the next take (invariant 5).
    next_take: u64,
    /// Workers waiting for an item (invariant 1).
    idle: WaitList,
    /// The batching producer's room (`Room::Batch` only).
    batch: Batch,
    /// Keyed mode: the items are in the keys' queues, not in `items`.
    keyed: Option<Keyed<T>>,
}

/// What happened to a batch offered with [`HandOff::push`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Every item was queued or shed; kept shed items are in `shed`.
    Accepted {
        /// Items shed.
        shed: usize,
        /// The push woke workers that were waiting for items.
        woke_idle: bool,
        /// The queue is full after this push.
        full: bool,
        /// Items taken by workers so far, read under the lock.
        taken: u64,
        /// Keyed mode under `Backpressure`: the push stopped at an item
        /// whose key is full; it and the rest are left in the batch.
        blocked: bool,
    },
    /// The queue was closed: the batch is left untouched for the caller.
    Refused,
}

/// One item as a worker takes it.
#[derive(Debug)]
pub(crate) struct Taken<T> {
    /// Its place in take order (invariant 5).
    pub(crate) seq: u64,
    pub(crate) item: T,
    /// When it was queued, for the `metrics` feature (zero-sized without
    /// it).
    pub(crate) queued_at: Stamp,
    /// It waited longer than the maximum queue age: it must not be started.
    pub(crate) expired: bool,
    /// This take woke the batching producer waiting for room and left the
    /// queue empty: that wake-up may be stuck behind the taker on its
    /// thread (see `sched`), and nothing else is queued for other workers.
    pub(crate) woke_producer: bool,
    /// Keyed mode: the item's key, in flight until the worker reports it
    /// [`finished`](HandOff::finished).
    pub(crate) key: Option<KeyId>,
}

impl<T> HandOff<T> {
    pub(crate) fn new(settings: QueueSettings) -> Self {
        let QueueSettings {
            capacity,
            policy,
            max_age,
            many_producers,
            keep_shed,
            keyed,
        } = settings;
        debug_assert!(capacity > 0, "HandOff: capacity must be at least 1");
        let is_keyed = keyed.is_some();
        let room = match (policy, many_producers) {
            (ShedPolicy::Backpressure, true) => Room::fifo(capacity),
            (ShedPolicy::Backpressure, false) => Room::Batch,
            _ => Room::Shed,
        };
        HandOff {
            max_age,
            // Expiry needs the stamps, and so do the `metrics` feature's
            // queue-wait histogram and oldest-age gauge.
            stamped: max_age.is_some() || cfg!(feature = "metrics"),
            room,
            len: AtomicUsize::new(0),
            state: Mutex::new(State {
                // Grows on demand: a huge capacity is a bound, not a reservation.
                items: VecDeque::with_capacity(capacity.min(1024)),
                stamps: Stamps::default(),
                closed: false,
                abandoned: false,
                high_water_mark: 0,
                next_take: 0,
                idle: WaitList::default(),
                batch: Batch::default(),
                keyed: keyed.map(|(table, per_key)| Keyed::new(table, per_key, policy)),
            }),
            capacity,
            policy,
            keep_shed: keep_shed || std::mem::needs_drop::<T>(),
            keyed: is_keyed,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        lock(&self.state)
    }

    pub(crate) fn policy(&self) -> ShedPolicy {
        self.policy
    }

    /// Whether the queue is keyed (fixed when it is built).
    pub(crate) fn is_keyed(&self) -> bool {
        self.keyed
    }

    // ===== pushing =====

    /// Queues `batch` in order under one lock, shedding by policy, and
    /// calls `count(offered, shed)` under that lock once it is accepted (so
    /// a worker that sees the queue closed, after taking the lock, finds
    /// every accepted item counted). Kept shed items are appended to `shed`
    /// for the caller to dispose of outside the lock; `batch` is empty
    /// afterwards. A closed queue refuses the batch and leaves it untouched.
    pub(crate) fn push(
        &self,
        batch: &mut Vec<T>,
        shed: &mut Vec<T>,
        count: impl FnOnce(usize, usize),
    ) -> Pushed {
        // One clock read per push, outside the lock (invariant 6).
        let now = (self.stamped && !batch.is_empty()).then(Instant::now);
        let (woken, pushed) = {
            let mut state = self.lock();
            if state.closed {
                return Pushed::Refused;
            }
            let (offered, shed_before) = (batch.len(), shed.len());
            let before = state.items.len();
            if let Room::Batch = self.room {
                // The reservation becomes items (invariant 4).
                state.batch.reserved -= offered.min(state.batch.reserved);
            }
            let overflow = self.shed_into(&mut state, batch, shed);
            if let Some(now) = now {
                // The batch's items were queued together: one run.
                let unstamped = state.items.len() - state.stamps.len();
                state.stamps.push(now, unstamped);
            }
            let len = state.items.len();
            debug_assert!(
                len + state.batch.reserved <= self.capacity,
                "HandOff: over capacity (invariant 4)"
            );
            debug_assert!(!self.keep_shed || shed.len() - shed_before == overflow);
            debug_assert!(
                !self.stamped || state.stamps.len() == len,
                "HandOff: stamps out of step with items (invariant 6)"
            );
            self.len.store(len, Relaxed);
            state.high_water_mark = state.high_water_mark.max(len);
            count(offered, overflow);
            // An evicting push adds no item, but the queue was not empty:
            // nobody waits then (invariant 1).
            let woken = state.idle.wake(len - before);
            let pushed = Pushed::Accepted {
                shed: overflow,
                woke_idle: !woken.is_empty(),
                full: len == self.capacity,
                taken: state.next_take,
                blocked: false,
            };
            (woken, pushed)
        };
        woken.into_iter().for_each(Waker::wake);
        pushed
    }

    /// Moves `batch` into the queue by policy; returns how many were shed.
    ///
    /// In bulk, with the same outcome as offering the items one by one: what
    /// fits is queued; past that, DropNewest sheds the arrivals in order,
    /// and DropOldest evicts the oldest queued items first, then the oldest
    /// arrivals, so the newest `capacity` stay.
    #[inline]
    fn shed_into(&self, state: &mut State<T>, batch: &mut Vec<T>, shed: &mut Vec<T>) -> usize {
        let (offered, before) = (batch.len(), state.items.len());
        let free = self.capacity - before;
        let overflow = offered.saturating_sub(free);
        match self.policy {
            ShedPolicy::DropNewest | ShedPolicy::Backpressure => {
                debug_assert!(
                    self.policy != ShedPolicy::Backpressure || overflow == 0,
                    "HandOff: Backpressure push without room"
                );
                if self.keep_shed {
                    shed.extend(batch.drain(free.min(offered)..));
                } else {
                    batch.truncate(free);
                }
                state.items.extend(batch.drain(..));
            }
            ShedPolicy::DropOldest => {
                let evicted = overflow.min(before);
                let arrivals = overflow - evicted;
                if self.keep_shed {
                    shed.extend(state.items.drain(..evicted));
                    shed.extend(batch.drain(..arrivals));
                } else {
                    state.items.drain(..evicted);
                }
                if self.stamped {
                    state.stamps.leave(evicted);
                }
                // With `keep_shed` the first `arrivals` are gone already.
                let skip = if self.keep_shed { 0 } else { arrivals };
                state.items.extend(batch.drain(skip..));
                batch.clear();
            }
        }
        overflow
    }

    // ===== room =====

    /// How many items a producer that never waits for room should pull now,
    /// at most `max`: no more than fits while the queue has room (so a
    /// batch that wakes idle workers sheds nothing they could have taken),
    /// and `max` when it is full (to shed in bulk).
    pub(crate) fn pull_size(&self, max: usize) -> usize {
        let room = self.capacity - self.len.load(Relaxed);
        if room == 0 { max } else { room.min(max) }
    }

    /// The batching producer's reservation (`Room::Batch`): waits until at
    /// least one slot is free and reserves every free slot it returns, up to
    /// `max`; 0 once the queue is closed. Under other rooms it is
    /// [`pull_size`](Self::pull_size) and never waits.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: room is reserved only when the future completes.
    pub(crate) async fn reserve(&self, max: usize) -> usize {
        if !matches!(self.room, Room::Batch) {
            return self.pull_size(max);
        }
        poll_fn(|cx| {
            let mut state = self.lock();
            if state.closed {
                return Poll::Ready(0);
            }
            let free = self.capacity - state.queued() - state.batch.reserved;
            if free == 0 {
                // Invariant 2 of `room::Batch`.
                state.batch.waiter = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = free.min(max);
            state.batch.reserved += n;
            // A waker left from an earlier wait would wake it for nothing.
            state.batch.waiter = None;
            Poll::Ready(n)
        })
        .await
    }

    /// Returns `n` reserved but unused slots (`Room::Batch`).
    pub(crate) fn unreserve(&self, n: usize) {
        if matches!(self.room, Room::Batch) && n > 0 {
            let mut state = self.lock();
            state.batch.reserved -= n.min(state.batch.reserved);
        }
    }

    /// The room of a queue whose producers wait in line (`Room::Fifo`).
    pub(crate) fn room(&self) -> &Room {
        &self.room
    }

    // ===== taking =====

    /// Waits for an item and takes it; `None` once the queue is closed and
    /// empty, or abandoned.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an item is taken only when the future completes, and a
    /// wake-up it received is passed on.
    #[cfg(any(test, loom))]
    pub(crate) async fn take(&self) -> Option<Taken<T>> {
        self.take_after(None).await
    }

    /// [`take`](Self::take) by a worker whose last item, of key
    /// `finished`, is done (keyed mode): the key is reported finished
    /// under the lock of the take itself, one lock per item instead of
    /// two. No other worker needs waking for it: if the key becomes ready,
    /// this worker takes it or the key ahead of it.
    ///
    /// # Cancel safety
    ///
    /// As [`take`](Self::take); dropped unpolled, it still reports the key
    /// finished.
    pub(crate) async fn take_after(&self, finished: Option<KeyId>) -> Option<Taken<T>> {
        let mut waiter = Waiter {
            queue: self,
            ticket: None,
            finished,
        };
        poll_fn(|cx| waiter.poll_take(cx)).await
    }

    /// [`take`](Self::take) without waiting: `None` if nothing is queued.
    pub(crate) fn take_now(&self) -> Option<Taken<T>> {
        let mut ticket = None;
        let mut cx = Context::from_waker(Waker::noop());
        match self.try_take(&mut cx, &mut ticket, &mut None) {
            Poll::Ready(taken) => taken,
            Poll::Pending => {
                self.lock().idle.forget(&mut ticket);
                None
            }
        }
    }

    /// One attempt of [`take`](Self::take), registering under `ticket` to
    /// wait (keeping its place if it is still registered).
    /// `finished`: see [`take_after`](Self::take_after).
    fn try_take(
        &self,
        cx: &mut Context<'_>,
        ticket: &mut Option<u64>,
        finished: &mut Option<KeyId>,
    ) -> Poll<Option<Taken<T>>> {
        let (taken, producer) = {
            let mut state = self.lock();
            if state.abandoned {
                state.idle.forget(ticket);
                drop(state);
                if let Some(key) = finished.take() {
                    self.finished(key);
                }
                return Poll::Ready(None);
            }
            if state.keyed.is_some() {
                return self.try_take_keyed(state, cx, ticket, finished.take());
            }
            let Some(item) = state.items.pop_front() else {
                if state.closed {
                    state.idle.forget(ticket);
                    return Poll::Ready(None);
                }
                state.idle.register(ticket, cx.waker());
                return Poll::Pending;
            };
            state.idle.forget(ticket);
            self.len.store(state.items.len(), Relaxed);
            let queued_at = if self.stamped {
                let queued_at = state.stamps.oldest();
                state.stamps.leave(1);
                queued_at
            } else {
                None
            };
            let expired = match (self.max_age, queued_at) {
                (Some(max_age), Some(queued_at)) => queued_at.elapsed() > max_age,
                _ => false,
            };
            debug_assert!(
                !self.stamped || state.stamps.len() == state.items.len(),
                "HandOff: stamps out of step with items (invariant 6)"
            );
            // Invariant 5: numbered under the lock, densely.
            let seq = state.next_take;
            state.next_take += 1;
            let queued = state.items.len();
            let producer = state.batch.on_take(queued, self.capacity);
            let woke_producer = producer.is_some() && queued == 0;
            let taken = Taken {
                seq,
                item,
                queued_at: stamp(queued_at),
                expired,
                woke_producer,
                key: None,
            };
            (taken, producer)
        };
        wake(producer);
        self.room.freed_one();
        Poll::Ready(Some(taken))
    }

    /// Takes the oldest queued item that `is_it` picks out of the queue, if
    /// one is still queued: a producer withdrawing what it pushed (a caller
    /// that went away). Its slot is freed as a take frees one. `count` runs
    /// under the lock once the item is out, as `abandon`'s does: a worker
    /// that then finds the queue closed and empty, exits, and lets the
    /// report be built, finds the withdrawn item counted (invariant 2).
    /// `is_it` and `count` run under the lock: crate code only, never user
    /// code. O(queued items).
    pub(crate) fn withdraw(&self, is_it: impl Fn(&T) -> bool, count: impl FnOnce()) -> Option<T> {
        let (item, producer, woken, forgotten) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let (item, woken, forgotten) = match &mut state.keyed {
                Some(keyed) => {
                    let (item, next) = keyed.withdraw(is_it)?;
                    let mut woken: Vec<_> = next.into_iter().collect();
                    if state.closed && keyed.total() == 0 {
                        // Workers waiting for a key in flight must see the
                        // end, as after the last take (keyed mode).
                        woken.extend(state.idle.wake_all());
                    }
                    (item, woken, keyed.take_forgotten())
                }
                None => {
                    let at = state.items.iter().position(is_it)?;
                    let item = state.items.remove(at)?;
                    if self.stamped {
                        state.stamps.remove(at);
                    }
                    (item, Vec::new(), None)
                }
            };
            let queued = state.queued();
            self.len.store(queued, Relaxed);
            debug_assert!(
                !self.stamped || state.keyed.is_some() || state.stamps.len() == queued,
                "HandOff: stamps out of step with items (invariant 6)"
            );
            count();
            let producer = state.batch.on_take(queued, self.capacity);
            (item, producer, woken, forgotten)
        };
        wake(producer);
        keyed::wake_and_drop(woken, forgotten);
        self.room.freed_one();
        Some(item)
    }

    // ===== ending =====

    /// No more pushes; workers drain what is queued, then see `None`
    /// (invariant 3). Producers waiting for room are refused.
    pub(crate) fn close(&self) {
        let (idle, producer, forgotten) = {
            let mut state = self.lock();
            state.closed = true;
            let mut idle = state.idle.wake_all();
            let mut forgotten = None;
            if let Some(keyed) = &mut state.keyed {
                // Producers waiting for a key's room are refused too.
                idle.extend(keyed.wake_room_all());
                forgotten = keyed.take_forgotten();
            }
            (idle, state.batch.waiter.take(), forgotten)
        };
        idle.into_iter().chain(producer).for_each(Waker::wake);
        keyed::drop_forgotten(forgotten);
        self.room.close();
    }

    /// Closes the queue and returns every queued item. `count` receives
    /// their number under the lock, before any worker can see the queue
    /// abandoned, exit and let the report be built without them.
    pub(crate) fn abandon(&self, count: impl FnOnce(usize)) -> Vec<T> {
        let (items, idle, producer, forgotten) = {
            let mut state = self.lock();
            state.closed = true;
            state.abandoned = true;
            state.stamps.clear();
            let mut items: Vec<T> = state.items.drain(..).collect();
            let mut idle = state.idle.wake_all();
            let mut forgotten = None;
            if let Some(keyed) = &mut state.keyed {
                let (queued, waiting) = keyed.drain();
                items.extend(queued);
                idle.extend(waiting);
                forgotten = keyed.take_forgotten();
            }
            self.len.store(0, Relaxed);
            count(items.len());
            (items, idle, state.batch.waiter.take(), forgotten)
        };
        idle.into_iter().chain(producer).for_each(Waker::wake);
        keyed::drop_forgotten(forgotten);
        self.room.close();
        items
    }

    /// Whether the queue refuses pushes.
    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Items queued now and the most ever queued at once.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let state = self.lock();
        (state.queued(), state.high_water_mark)
    }

    /// When the oldest queued item was queued, if one is queued and the
    /// queue keeps stamps (invariant 6).
    pub(crate) fn oldest_stamp(&self) -> Option<Instant> {
        if !self.stamped {
            // A keyed queue keeps a time per item for its own use; it is
            // reported only as the unkeyed queue's stamps are.
            return None;
        }
        let mut state = self.lock();
        match &state.keyed {
            Some(keyed) => keyed.oldest_stamp(),
            None => state.stamps.oldest(),
        }
    }

    /// Keys tracked now (keyed mode; 0 otherwise).
    pub(crate) fn keys_tracked(&self) -> usize {
        self.lock().keyed.as_ref().map_or(0, Keyed::keys)
    }
}

impl<T> State<T> {
    /// Items queued now, in either mode.
    fn queued(&self) -> usize {
        self.keyed.as_ref().map_or(self.items.len(), Keyed::total)
    }
}

/// A worker's [`HandOff::take`] in progress.
struct Waiter<'a, T> {
    queue: &'a HandOff<T>,
    /// Registered in `idle` under this ticket, or woken from it.
    ticket: Option<u64>,
    /// Keyed: the key of this worker's last item, until reported finished.
    finished: Option<KeyId>,
}

impl<T> Waiter<'_, T> {
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Taken<T>>> {
        // A worker that always finds an item still yields now and then: one
        // unit of tokio's budget per item taken.
        let Poll::Ready(coop) = coop::poll_proceed(cx) else {
            // Out of budget: the key must not wait for this worker's turn.
            if let Some(key) = self.finished.take() {
                self.queue.finished(key);
            }
            return Poll::Pending;
        };
        let taken = ready!(
            self.queue
                .try_take(cx, &mut self.ticket, &mut self.finished)
        );
        coop.made_progress();
        Poll::Ready(taken)
    }
}

impl<T> Drop for Waiter<'_, T> {
    fn drop(&mut self) {
        if let Some(key) = self.finished.take() {
            self.queue.finished(key);
        }
        // Invariant 1: a wake-up given to a dropped take passes on.
        if self.ticket.is_some() {
            let next = self.queue.lock().idle.leave(self.ticket.take());
            wake(next);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
