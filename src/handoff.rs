//! The bounded MPMC hand-off queue between the intake and the workers.
//!
//! One `Mutex<VecDeque>` holds the items, and with them the workers that
//! wait for one: a worker takes the lock once per item and, finding none,
//! registers its waker under that same lock. A push wakes one registered
//! worker per item it adds, after unlocking. Earlier versions put a tokio
//! `Semaphore` of "ready" permits in front of the lock; it made wake-ups
//! exact too, but cost a second shared atomic (and its waiter lock) per
//! item. BENCHMARKS.md has the measurements.
//!
//! # Invariants
//!
//! * **No lost wake-up.** A worker registers in `idle` only under the lock,
//!   after finding `items` empty and the queue open. Every push that adds
//!   `n` items removes up to `n` registered workers under the same lock and
//!   wakes them after unlocking; `close` and `abandon` wake every one. A
//!   woken worker takes an item or registers again. A worker whose take is
//!   dropped after its wake-up passes it on ([`WaitList::leave`]). So while
//!   an item is queued and a worker is registered, some registered worker
//!   has a wake-up coming.
//! * **Eviction keeps the count.** Under [`ShedPolicy::DropOldest`] a batch
//!   that overflows the queue evicts the oldest queued items and appends the
//!   newest arrivals under the same lock, so an evicted item can never also
//!   be handed to a worker (openclaw#103246). An item leaves `items` exactly
//!   once: taken by a worker, evicted, or abandoned.
//! * **Closing is not emptiness.** After [`HandOff::close`] workers keep
//!   taking until `items` is empty, then see `None`. Closing never discards
//!   an item; only [`HandOff::abandon`] does, and it hands every abandoned
//!   item back to the caller to be counted.
//! * **Room is reserved, never taken back (`Backpressure`).** The stream
//!   intake reserves room under the lock (`reserved`) before it pulls, and
//!   its push turns reservations into items, so `items.len() + reserved <=
//!   capacity`, a push never finds the queue full, and nothing is shed. An
//!   intake that finds no room registers its waker under the lock; the take
//!   that drains the queue to its low-water mark (half the capacity), or
//!   `close` or `abandon`, wakes it. The workers drain to that mark
//!   whatever the intake does, so the wake-up comes. The push front's producers instead
//!   wait in line for `room` permits (tokio's semaphore is FIFO), one
//!   returned per take.
//! * **Take order is numbered.** Each take gets the next sequence number
//!   under the lock, so taken items are numbered densely in queue order;
//!   ordered output reorders by it.
//! * **Stamps follow items.** With a maximum queue age, `stamps` holds one
//!   queue instant per item of `items`, pushed, evicted and taken in step,
//!   so an item's age is read when it is taken; without one it stays empty.
//! * **No user code under the lock.** Shed, rejected and abandoned items are
//!   moved out under the lock and dropped (or given to a hook) by the caller
//!   after it is released, so a panicking `Drop` or hook cannot poison the
//!   mutex; wakers are woken after unlocking too. The lock is taken with
//!   poison recovery anyway.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::coop;
use tokio::time::Instant;

use crate::ShedPolicy;
use crate::waitlist::WaitList;

/// Who pushes into the queue: it decides how `Backpressure` waits for room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Producer {
    /// The intake task, the only pusher: reserves room under the lock.
    Stream,
    /// The push front's producers, any number: wait in line for permits.
    Feeder,
}

pub(crate) struct HandOff<T> {
    /// The maximum queue age, if any: items carry the instant they were
    /// queued, and one that waited longer is expired when taken.
    max_age: Option<Duration>,
    /// Free slots, only for the push front under `Backpressure`.
    room: Option<Semaphore>,
    /// `items.len()`, written under the lock, read without it by the intake
    /// to size its next pull.
    len: AtomicUsize,
    state: Mutex<State<T>>,
    capacity: usize,
    policy: ShedPolicy,
    /// The stream intake reserves room under the lock (`Backpressure`).
    reserves: bool,
    producer: Producer,
    /// Shed items go to the caller (for a hook, settlement, the push
    /// front's hand-back, or a `Drop` that must run unlocked). Otherwise
    /// they are counted and forgotten under the lock: for items without
    /// drop glue, no code runs and nothing moves.
    keep_shed: bool,
}

struct State<T> {
    items: VecDeque<T>,
    /// When each item of `items` was queued, in step with it; empty unless
    /// a maximum queue age is set.
    stamps: VecDeque<Instant>,
    closed: bool,
    abandoned: bool,
    high_water_mark: usize,
    /// Sequence number of the next take.
    next_take: u64,
    /// Workers waiting for an item.
    idle: WaitList,
    /// Room the stream intake reserved and has not filled yet.
    reserved: usize,
    /// The stream intake, waiting for room.
    intake: Option<Waker>,
}

/// Why [`HandOff::try_reserve_one`] found no room.
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
    Accepted {
        /// Items shed (appended to `shed` if the queue keeps them).
        shed: usize,
        /// The push woke workers that were waiting for items.
        woke_idle: bool,
        /// The queue is full after this push.
        full: bool,
        /// Items taken by workers so far, read under the lock.
        taken: u64,
    },
    /// The queue was abandoned or closed: the batch is left untouched for
    /// the caller.
    Refused,
}

/// One item as a worker takes it.
#[derive(Debug)]
pub(crate) struct Taken<T> {
    /// Its place in take order.
    pub(crate) seq: u64,
    pub(crate) item: T,
    /// It waited longer than the maximum queue age: it must not be started.
    pub(crate) expired: bool,
    /// This take woke the intake waiting for room (`Backpressure`) and left
    /// the queue empty. The wake-up landed in this thread's LIFO slot,
    /// which no other thread can steal: the worker should [`yield_in_turn`]
    /// before its handler, or the intake (and every idle worker) waits for
    /// that handler to finish. With a capacity of 1 and 4 workers on 8 µs
    /// handlers that serialised the pipeline onto one thread (0.48× of
    /// async-channel; 1.14× with the yield). With items left, the other
    /// workers keep taking and the intake runs soon enough.
    pub(crate) woke_intake: bool,
}

/// How a task gives tasks it woke a turn, by runtime flavor.
///
/// On a multi-thread runtime a task woken by another task on the same
/// thread goes into that thread's LIFO slot, which no other thread can
/// steal, and then to its local run queue; waking itself puts the waker
/// behind them (`yield_in_turn`) and tells an idle thread there is work to
/// steal. `tokio::task::yield_now` instead defers the task until its thread
/// finds nothing else to run, which there made the intake and the workers
/// take turns in lock-step while the other thread idled.
///
/// On a current-thread runtime there is no LIFO slot and no thief, and the
/// self-wake costs fairness instead: a task that keeps waking itself keeps
/// the run queue from ever emptying, so every task that yields with
/// `yield_now` (and the `block_on` future, often the consumer) runs only
/// when the scheduler next polls its driver, every 61 ticks (tokio's
/// `event_interval`). A heartbeat beside a 100,000-item burst beat 49 times
/// and the unread results made the intake shed 98 %; with the deferred
/// yield it beats like any other task (BENCHMARKS.md, "Fairness on one
/// thread"). So one thread yields with `yield_now`, and only there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Yielder {
    /// A multi-thread runtime: yield in turn.
    InTurn,
    /// A current-thread runtime: yield until the thread is idle.
    Deferred,
}

impl Yielder {
    pub(crate) fn for_runtime(runtime: &tokio::runtime::Handle) -> Yielder {
        match runtime.runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => Yielder::Deferred,
            _ => Yielder::InTurn,
        }
    }

    /// Lets the tasks this one woke run before it goes on.
    pub(crate) async fn let_woken_run(self) {
        match self {
            Yielder::InTurn => yield_in_turn().await,
            Yielder::Deferred => tokio::task::yield_now().await,
        }
    }

    /// Whether a wake-up this task gave can be stuck behind it (in the
    /// thread's LIFO slot) until it yields.
    pub(crate) fn has_lifo_slot(self) -> bool {
        self == Yielder::InTurn
    }
}

/// Lets every task already queued on this thread run once, then resumes.
///
/// Waking itself puts the task at the back of the thread's run queue, as
/// tokio does for any task woken while it runs, and tells an idle thread
/// there is work to steal. `tokio::task::yield_now` instead defers the task
/// until the thread finds no other work at all, stealing included.
async fn yield_in_turn() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Queued items at or below which a take wakes the stream intake waiting for
/// room under `Backpressure`: half the capacity. Waking it at the first free
/// slot made it pull one item per wake-up; at half, it refills half the
/// queue per wake-up while the workers still have the other half to take.
fn low_water(capacity: usize) -> usize {
    capacity / 2
}

fn wake_all(wakers: impl IntoIterator<Item = Waker>) {
    wakers.into_iter().for_each(Waker::wake);
}

impl<T> HandOff<T> {
    pub(crate) fn new(
        capacity: usize,
        policy: ShedPolicy,
        max_age: Option<Duration>,
        producer: Producer,
        keep_shed: bool,
    ) -> Self {
        debug_assert!(capacity > 0, "HandOff: capacity must be at least 1");
        let backpressure = policy == ShedPolicy::Backpressure;
        HandOff {
            max_age,
            room: (backpressure && producer == Producer::Feeder).then(|| Semaphore::new(capacity)),
            len: AtomicUsize::new(0),
            state: Mutex::new(State {
                // Grows on demand: a huge capacity is a bound, not a reservation.
                items: VecDeque::with_capacity(capacity.min(1024)),
                stamps: VecDeque::new(),
                closed: false,
                abandoned: false,
                high_water_mark: 0,
                next_take: 0,
                idle: WaitList::default(),
                reserved: 0,
                intake: None,
            }),
            capacity,
            policy,
            producer,
            reserves: backpressure && producer == Producer::Stream,
            keep_shed: keep_shed || producer == Producer::Feeder || std::mem::needs_drop::<T>(),
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
        let (woken, pushed) = {
            let mut state = self.lock();
            if state.abandoned || state.closed {
                return Pushed::Refused;
            }
            let (offered, shed_before) = (batch.len(), shed.len());
            let before = state.items.len();
            if self.reserves {
                // The reservation becomes items (see `# Invariants`).
                state.reserved -= offered.min(state.reserved);
            }
            // In bulk, with the same outcome as offering the items one by
            // one: what fits is queued; past that, DropNewest sheds the
            // arrivals in order, and DropOldest evicts the oldest queued items
            // first, then the oldest arrivals, so the newest `capacity` stay.
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
                    if self.max_age.is_some() {
                        state.stamps.drain(..evicted);
                    }
                    // With `keep_shed` the first `arrivals` are gone already.
                    let skip = if self.keep_shed { 0 } else { arrivals };
                    state.items.extend(batch.drain(skip..));
                    batch.clear();
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
            self.len.store(len, Relaxed);
            state.high_water_mark = state.high_water_mark.max(len);
            debug_assert!(!self.keep_shed || shed.len() - shed_before == overflow);
            count(offered, overflow);
            // An evicting push adds no item, but the queue was not empty:
            // nobody waits then.
            let woken = state.idle.wake(len - before);
            let pushed = Pushed::Accepted {
                shed: overflow,
                woke_idle: !woken.is_empty(),
                full: len == self.capacity,
                taken: state.next_take,
            };
            (woken, pushed)
        };
        wake_all(woken);
        pushed
    }

    /// Waits for an item and takes it; `None` once the queue is closed and
    /// empty, or abandoned.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an item is taken only when the future completes, and a
    /// wake-up it received is passed on.
    pub(crate) async fn take(&self) -> Option<Taken<T>> {
        let mut waiter = Waiter {
            queue: self,
            ticket: None,
        };
        poll_fn(|cx| waiter.poll_take(cx)).await
    }

    /// [`take`](Self::take) without waiting: `None` if nothing is queued.
    /// For the lock-hold microbenchmark ([`crate::QueueProbe`]).
    pub(crate) fn take_now(&self) -> Option<Taken<T>> {
        let mut ticket = None;
        match self.try_take(&mut Context::from_waker(Waker::noop()), &mut ticket) {
            Poll::Ready(taken) => taken,
            Poll::Pending => {
                self.lock().idle.forget(ticket);
                None
            }
        }
    }

    /// One attempt of [`take`](Self::take), registering `ticket` to wait.
    fn try_take(&self, cx: &mut Context<'_>, ticket: &mut Option<u64>) -> Poll<Option<Taken<T>>> {
        let (taken, intake) = {
            let mut state = self.lock();
            state.idle.forget(ticket.take());
            if state.abandoned {
                return Poll::Ready(None);
            }
            let Some(item) = state.items.pop_front() else {
                if state.closed {
                    return Poll::Ready(None);
                }
                state.idle.register(ticket, cx.waker());
                return Poll::Pending;
            };
            self.len.store(state.items.len(), Relaxed);
            let expired = match (self.max_age, state.stamps.pop_front()) {
                (Some(max_age), Some(queued_at)) => queued_at.elapsed() > max_age,
                _ => false,
            };
            let seq = state.next_take;
            state.next_take += 1;
            // The intake waits only on a full queue; it is woken once the
            // queue has drained to its low-water mark (see `low_water`).
            let intake = if state.intake.is_some()
                && state.items.len() + state.reserved <= low_water(self.capacity)
            {
                state.intake.take()
            } else {
                None
            };
            // Only urgent when nothing is left for the other workers.
            let woke_intake = intake.is_some() && state.items.is_empty();
            (
                Taken {
                    seq,
                    item,
                    expired,
                    woke_intake,
                },
                intake,
            )
        };
        if let Some(intake) = intake {
            intake.wake();
        }
        if let Some(room) = &self.room {
            room.add_permits(1);
        }
        Poll::Ready(Some(taken))
    }

    /// How many items the stream intake may pull now, at most `max`.
    ///
    /// Under `Backpressure` this waits until at least one slot is free and
    /// reserves every free slot it returns (0 once the queue is closed), so
    /// intake never pulls an item it cannot queue; the unused part goes back
    /// with [`HandOff::unreserve`].
    ///
    /// Other policies never wait. While the queue has free room they pull
    /// no more than fits, so a batch that wakes idle workers sheds nothing
    /// they could have taken; with no room they pull `max` and shed in bulk.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: room is reserved only when the future completes.
    pub(crate) async fn reserve(&self, max: usize) -> usize {
        if !self.reserves {
            let room = self.capacity - self.len.load(Relaxed);
            return if room == 0 { max } else { room.min(max) };
        }
        poll_fn(|cx| {
            let mut state = self.lock();
            if state.closed {
                return Poll::Ready(0);
            }
            let free = self.capacity - state.items.len() - state.reserved;
            if free == 0 {
                state.intake = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = free.min(max);
            state.reserved += n;
            // A waker left from an earlier wait would wake it for nothing.
            state.intake = None;
            Poll::Ready(n)
        })
        .await
    }

    /// Returns `n` reserved but unused slots (stream intake, `Backpressure`).
    pub(crate) fn unreserve(&self, n: usize) {
        if self.reserves && n > 0 {
            let mut state = self.lock();
            state.reserved -= n.min(state.reserved);
        }
    }

    /// Reserves one slot for one producer of the push front, without
    /// waiting. Only `Backpressure` reserves; other policies always succeed.
    pub(crate) fn try_reserve_one(&self) -> Result<(), Full> {
        let Some(room) = &self.room else {
            return Ok(());
        };
        match room.try_acquire() {
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
        let Some(room) = &self.room else {
            return Ok(());
        };
        match room.acquire().await {
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

    /// Who pushes into this queue.
    pub(crate) fn producer(&self) -> Producer {
        self.producer
    }

    /// No more pushes; workers drain what is queued, then see `None`.
    pub(crate) fn close(&self) {
        let (idle, intake) = {
            let mut state = self.lock();
            state.closed = true;
            let waiting = state.idle.len();
            (state.idle.wake(waiting), state.intake.take())
        };
        wake_all(idle.into_iter().chain(intake));
        // Producers of the push front waiting for room are refused too.
        if let Some(room) = &self.room {
            room.close();
        }
    }

    /// Closes the queue and returns every queued item; later pushes are
    /// refused. `count` receives the number abandoned under the lock, before
    /// any worker can see the queue abandoned, exit and let the report be
    /// built without them.
    pub(crate) fn abandon(&self, count: impl FnOnce(usize)) -> Vec<T> {
        let (items, idle, intake) = {
            let mut state = self.lock();
            state.closed = true;
            state.abandoned = true;
            state.stamps.clear();
            let items: Vec<T> = state.items.drain(..).collect();
            self.len.store(0, Relaxed);
            count(items.len());
            let waiting = state.idle.len();
            (items, state.idle.wake(waiting), state.intake.take())
        };
        wake_all(idle.into_iter().chain(intake));
        if let Some(room) = &self.room {
            room.close();
        }
        items
    }

    /// Current number of queued items and the largest number ever queued.
    pub(crate) fn depth(&self) -> (usize, usize) {
        let state = self.lock();
        (state.items.len(), state.high_water_mark)
    }
}

/// A worker's [`HandOff::take`] in progress.
struct Waiter<'a, T> {
    queue: &'a HandOff<T>,
    /// Registered in `idle` under this ticket, or woken from it.
    ticket: Option<u64>,
}

impl<T> Waiter<'_, T> {
    fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Option<Taken<T>>> {
        // A worker that always finds an item still yields now and then
        // (PITFALLS 8): one unit of tokio's budget per item taken.
        let coop = ready!(coop::poll_proceed(cx));
        let taken = ready!(self.queue.try_take(cx, &mut self.ticket));
        coop.made_progress();
        Poll::Ready(taken)
    }
}

impl<T> Drop for Waiter<'_, T> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            let next = self.queue.lock().idle.leave(ticket);
            if let Some(next) = next {
                next.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::{assert_pending, assert_ready, task};

    fn queue(capacity: usize, policy: ShedPolicy) -> HandOff<u32> {
        HandOff::new(capacity, policy, None, Producer::Stream, false)
    }

    fn push(queue: &HandOff<u32>, items: &[u32]) -> Pushed {
        queue.push_batch(&mut items.to_vec(), &mut Vec::new())
    }

    #[test]
    fn a_push_wakes_one_waiting_worker_per_item_oldest_first() {
        let q = queue(4, ShedPolicy::DropNewest);
        let (mut a, mut b, mut c) = (
            task::spawn(q.take()),
            task::spawn(q.take()),
            task::spawn(q.take()),
        );
        assert_pending!(a.poll());
        assert_pending!(b.poll());
        assert_pending!(c.poll());
        let pushed = push(&q, &[7, 8]);
        assert_eq!(
            pushed,
            Pushed::Accepted {
                shed: 0,
                woke_idle: true,
                full: false,
                taken: 0
            }
        );
        assert!(a.is_woken() && b.is_woken() && !c.is_woken());
        assert_eq!(
            assert_ready!(a.poll()).map(|t| (t.seq, t.item)),
            Some((0, 7))
        );
        assert_eq!(
            assert_ready!(b.poll()).map(|t| (t.seq, t.item)),
            Some((1, 8))
        );
        assert_pending!(c.poll());
        q.close();
        assert!(c.is_woken());
        assert!(assert_ready!(c.poll()).is_none());
    }

    #[test]
    fn a_take_dropped_after_its_wake_up_passes_it_on() {
        let q = queue(4, ShedPolicy::DropNewest);
        let (mut a, mut b) = (task::spawn(q.take()), task::spawn(q.take()));
        assert_pending!(a.poll());
        assert_pending!(b.poll());
        push(&q, &[1]);
        assert!(a.is_woken() && !b.is_woken());
        drop(a); // woken, never used the wake-up
        assert!(b.is_woken(), "the wake-up was lost with the dropped take");
        assert_eq!(assert_ready!(b.poll()).map(|t| t.item), Some(1));
    }

    #[test]
    fn a_take_dropped_before_any_wake_up_leaves_no_trace() {
        let q = queue(4, ShedPolicy::DropNewest);
        let (mut a, mut b) = (task::spawn(q.take()), task::spawn(q.take()));
        assert_pending!(a.poll());
        assert_pending!(b.poll());
        drop(a);
        assert!(!b.is_woken());
        push(&q, &[1]);
        assert!(b.is_woken(), "the push went to the dropped take");
        assert_eq!(assert_ready!(b.poll()).map(|t| t.item), Some(1));
    }

    #[test]
    fn backpressure_reserves_room_and_a_take_wakes_the_waiting_intake() {
        let q = queue(2, ShedPolicy::Backpressure);
        let mut reserve = task::spawn(q.reserve(32));
        assert_eq!(assert_ready!(reserve.poll()), 2);
        drop(reserve);
        assert!(matches!(
            push(&q, &[1, 2]),
            Pushed::Accepted { full: true, .. }
        ));
        let mut reserve = task::spawn(q.reserve(32));
        assert_pending!(reserve.poll());
        let mut take = task::spawn(q.take());
        assert_eq!(assert_ready!(take.poll()).map(|t| t.item), Some(1));
        assert!(reserve.is_woken());
        assert_eq!(assert_ready!(reserve.poll()), 1);
        // Unused room goes back: a reservation of 1 returned leaves 1 free.
        q.unreserve(1);
        let mut again = task::spawn(q.reserve(32));
        assert_eq!(assert_ready!(again.poll()), 1);
    }

    #[test]
    fn abandon_wakes_the_intake_waiting_for_room_and_every_worker() {
        let q = queue(1, ShedPolicy::Backpressure);
        let mut first = task::spawn(q.reserve(1));
        assert_eq!(assert_ready!(first.poll()), 1);
        drop(first);
        push(&q, &[5]);
        let mut reserve = task::spawn(q.reserve(1));
        assert_pending!(reserve.poll());
        assert_eq!(q.abandon(|n| assert_eq!(n, 1)), [5]);
        assert!(reserve.is_woken());
        assert_eq!(assert_ready!(reserve.poll()), 0, "refused once abandoned");
        let mut take = task::spawn(q.take());
        assert!(assert_ready!(take.poll()).is_none());
    }

    #[test]
    fn shed_items_nobody_needs_are_counted_in_place_and_the_newest_stay() {
        for (policy, queued) in [
            (ShedPolicy::DropNewest, [0, 1, 2]),
            (ShedPolicy::DropOldest, [5, 6, 7]),
        ] {
            for keep in [false, true] {
                let q = HandOff::new(3, policy, None, Producer::Stream, keep);
                let (mut batch, mut shed) = ((0..8).collect::<Vec<u32>>(), Vec::new());
                let pushed = q.push_batch(&mut batch, &mut shed);
                assert!(matches!(
                    pushed,
                    Pushed::Accepted {
                        shed: 5,
                        full: true,
                        ..
                    }
                ));
                assert!(batch.is_empty());
                assert_eq!(shed.len(), if keep { 5 } else { 0 }, "{policy} keep {keep}");
                let taken: Vec<u32> = std::iter::from_fn(|| q.take_now().map(|t| t.item)).collect();
                assert_eq!(taken, queued, "{policy} keep {keep}");
            }
        }
    }
}
