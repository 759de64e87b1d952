//! The results side: a bounded buffer from the workers to `results`, in
//! completion order, in input order or latest-only, and its books.
//!
//! # The results law
//!
//! Every result of a completed handler (`processed`) ends exactly once:
//! **delivered** (yielded by `results`) or **discarded** (the consumer was
//! gone, or an abort cut off its hand-over or threw it out of the buffer).
//! So `processed == delivered + discarded` once the results side is
//! *settled*: every sender is gone and no result is left in the buffer
//! (read, whether or not the consumer then polled to the end), the consumer
//! read the end or dropped `results`, or an abort discarded what was left.
//! The supervisor waits for that before it builds the report, so the law
//! holds in every report, and `join` waits only for results that exist.
//!
//! # One lock for the buffer, its wakers and its books
//!
//! An abort must be able to empty the buffer without the consumer's help (a
//! stalled consumer never polls), and a result must not be counted both
//! delivered and discarded. So the buffer, the consumer's waker and the
//! waiting senders live under one mutex shared by the workers, the consumer
//! and an abort, and a result is counted delivered under it. A hand-over is
//! one push and a delivery one pop under that lock, nothing else: tokio's
//! bounded `mpsc` (used here before) also takes a semaphore permit per send
//! and returns it per receive under the semaphore's own mutex, which
//! measured about 490 instructions per result (BENCHMARKS.md).
//!
//! # Invariants
//!
//! * **Bounded.** In unordered mode the buffer holds at most `capacity`
//!   results; in latest-only mode at most one; in ordered mode the reorder
//!   window bounds it (below).
//! * **No lost sender wake-up.** A sender that finds the buffer full
//!   registers in `waiting` and returns `Pending`, under the lock. Every pop
//!   removes the oldest waiting sender and wakes it after unlocking; a woken
//!   sender pushes or registers again. A hand-over dropped after its wake-up
//!   but before it pushed passes the wake-up on ([`Handover`]'s `Drop`). So
//!   while there is room and a sender waits, some waiting sender has a
//!   wake-up coming.
//! * **No lost consumer wake-up.** The consumer registers its waker under
//!   the lock when it finds nothing to take; every change that lets it
//!   progress (a push, the next turn in ordered mode, the last sender's drop,
//!   an abort) takes that waker under the same lock and wakes it after
//!   unlocking.
//! * **Discarding is final.** Once `discarding` is set (under the lock) no
//!   result enters the buffer; every waiting sender is woken, sees it, and
//!   discards its result.
//! * **No user code under the lock.** Results are dropped (their `Drop` is
//!   user code) and the consumer's and senders' wakers woken after
//!   unlocking. Ordered mode's window semaphore wakes the workers waiting
//!   for a turn itself, under the lock: tokio task wakers, never the
//!   consumer's.
//!
//! # Ordered mode
//!
//! Items are numbered as workers take them (densely, in queue order; see
//! `handoff`) and reordered on the consumer's side. A window of `workers +
//! output_capacity` permits bounds how far taking may run ahead of delivery,
//! so the reorder buffer holds at most that many entries: a worker takes a
//! permit before taking an item, and the consumer returns it when that
//! item's turn is delivered or skipped. A hand-over never waits for room.

use std::collections::{BTreeMap, VecDeque};
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use tokio::sync::Semaphore;
use tokio::task::coop;
use tokio_util::sync::CancellationToken;

use crate::books::bump;
use crate::isolate::drop_quietly;
use crate::waitlist::WaitList;

/// What the pipeline, whatever its result type, needs of the results side.
pub(crate) trait ResultBooks: Send + Sync {
    /// Results yielded by `results` so far.
    fn delivered(&self) -> u64;
    /// Results thrown away so far.
    fn discarded(&self) -> u64;
    /// An abort began: stop every hand-over and discard what is buffered.
    fn discard_undelivered(&self);
    /// Cancelled once nothing more will be delivered: every sender is gone
    /// and nothing is buffered, the consumer read the end or is gone, or an
    /// abort discarded the rest.
    fn settled(&self) -> &CancellationToken;
    /// Every worker has exited: discard anything left, so the books are final.
    fn settle(&self);
}

/// How results reach the consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A FIFO buffer, in completion order.
    Unordered,
    /// Reordered into input order.
    Ordered,
    /// One slot; a newer result replaces an unread one (discarded).
    Latest,
}

/// The state the workers' side and the consumer's side share.
pub(crate) struct Outlet<T> {
    inner: Mutex<Inner<T>>,
    /// Written by the consumer only (under `inner`'s lock).
    delivered: AtomicU64,
    /// Written by workers, the consumer's drop and an abort: rare paths.
    discarded: AtomicU64,
    settled: CancellationToken,
}

struct Inner<T> {
    buf: Buf<T>,
    /// The consumer's waker while it waits for a result.
    consumer: Option<Waker>,
    /// Unordered mode: senders waiting for room.
    waiting: WaitList,
    /// Live senders; the stream ends once the last is gone and the buffer
    /// is empty.
    senders: usize,
    /// The consumer is gone, or an abort discarded the buffer: whatever
    /// still arrives is discarded, never delivered.
    discarding: bool,
}

enum Buf<T> {
    Fifo {
        results: VecDeque<T>,
        capacity: usize,
    },
    Ordered {
        window: Arc<Semaphore>,
        /// Sequence number of the next item to deliver or skip.
        next: u64,
        /// Arrived, by sequence number; `None` marks an item without a result.
        early: BTreeMap<u64, Option<T>>,
    },
    Latest(Option<T>),
}

/// The workers' side.
pub(crate) struct Sender<T> {
    outlet: Arc<Outlet<T>>,
    /// Ordered mode's reorder window.
    window: Option<Arc<Semaphore>>,
    mode: Mode,
}

/// The consumer's side, owned by `BoundedFanOut`. Dropping it discards
/// whatever is still buffered.
pub(crate) struct Receiver<T> {
    outlet: Arc<Outlet<T>>,
    /// Results to deliver before the next unit of tokio's budget.
    unbudgeted: usize,
}

/// Results the consumer takes per unit of tokio's cooperative budget.
///
/// One stream drains what many workers hand over, so a unit per result (as
/// tokio's own channels take) made it yield every 128 results and fall
/// behind the workers, which then waited for room: −9 % on the 2 µs speedup
/// benchmark against 16 per unit, and no better at 64 (BENCHMARKS.md). The
/// consumer still yields after at most 128 × 16 results in a row.
const RESULTS_PER_BUDGET_UNIT: usize = 16;

/// A results buffer of `capacity` undelivered results; in ordered mode the
/// reorder window is `workers + capacity`.
pub(crate) fn channel<T: Send + 'static>(
    capacity: usize,
    mode: Mode,
    workers: usize,
) -> (Sender<T>, Receiver<T>, Arc<dyn ResultBooks>) {
    let mut window = None;
    let buf = match mode {
        Mode::Unordered => Buf::Fifo {
            // Grows on demand: a huge capacity is a bound, not a reservation.
            results: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
        },
        Mode::Ordered => {
            let permits = workers.saturating_add(capacity).min(Semaphore::MAX_PERMITS);
            let semaphore = Arc::new(Semaphore::new(permits));
            window = Some(Arc::clone(&semaphore));
            Buf::Ordered {
                window: semaphore,
                next: 0,
                early: BTreeMap::new(),
            }
        }
        Mode::Latest => Buf::Latest(None),
    };
    let outlet = Arc::new(Outlet {
        inner: Mutex::new(Inner {
            buf,
            consumer: None,
            waiting: WaitList::default(),
            senders: 1,
            discarding: false,
        }),
        delivered: AtomicU64::new(0),
        discarded: AtomicU64::new(0),
        settled: CancellationToken::new(),
    });
    let sender = Sender {
        outlet: Arc::clone(&outlet),
        window,
        mode,
    };
    let receiver = Receiver {
        outlet: Arc::clone(&outlet),
        unbudgeted: 0,
    };
    (sender, receiver, outlet)
}

fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

// ===== impl Outlet =====

impl<T> Outlet<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // No user code runs under this lock; recover from poison anyway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Discards everything buffered, and everything that arrives later.
    /// Waiting senders and the consumer are woken; result drops (user code)
    /// run after unlocking.
    fn discard_all(&self) {
        let (buffered, senders, consumer) = {
            let mut inner = self.lock();
            inner.discarding = true;
            let waiting = inner.waiting.len();
            let senders = inner.waiting.wake(waiting);
            (self.take_out(&mut inner), senders, inner.consumer.take())
        };
        senders.into_iter().for_each(Waker::wake);
        wake(consumer);
        buffered.into_iter().for_each(drop_quietly);
        self.settled.cancel();
    }

    /// Empties the buffer, counting what it held discarded under the lock:
    /// a result leaves the buffer and is counted in one critical section, so
    /// whoever next takes the lock (the last sender deciding the results
    /// side is done, say) sees it counted. The caller drops the results
    /// after unlocking (their `Drop` is user code).
    fn take_out(&self, inner: &mut Inner<T>) -> Vec<T> {
        let results = inner.buf.drain();
        self.discarded.fetch_add(results.len() as u64, Relaxed);
        results
    }

    fn discard_one(&self, result: T) {
        self.discarded.fetch_add(1, Relaxed);
        drop_quietly(result);
    }
}

impl<T: Send> ResultBooks for Outlet<T> {
    fn delivered(&self) -> u64 {
        self.delivered.load(Relaxed)
    }

    fn discarded(&self) -> u64 {
        self.discarded.load(Relaxed)
    }

    fn discard_undelivered(&self) {
        self.discard_all();
    }

    fn settled(&self) -> &CancellationToken {
        &self.settled
    }

    fn settle(&self) {
        // Nothing enters a discarding buffer; this only makes sure.
        let late = {
            let mut inner = self.lock();
            if inner.discarding {
                self.take_out(&mut inner)
            } else {
                Vec::new()
            }
        };
        late.into_iter().for_each(drop_quietly);
    }
}

impl<T> Buf<T> {
    /// Takes out every buffered result; ordered mode closes its window, so
    /// no worker waits for a turn that no one will deliver.
    fn drain(&mut self) -> Vec<T> {
        match self {
            Buf::Fifo { results, .. } => results.drain(..).collect(),
            Buf::Ordered { window, early, .. } => {
                window.close();
                std::mem::take(early).into_values().flatten().collect()
            }
            Buf::Latest(slot) => slot.take().into_iter().collect(),
        }
    }

    /// Whether no result is held, delivered or not yet in turn. Once every
    /// sender is gone this means nothing is left for the consumer.
    fn holds_no_result(&self) -> bool {
        match self {
            Buf::Fifo { results, .. } => results.is_empty(),
            Buf::Latest(slot) => slot.is_none(),
            Buf::Ordered { early, .. } => early.values().all(Option::is_none),
        }
    }

    fn ready_len(&self) -> usize {
        match self {
            Buf::Fifo { results, .. } => results.len(),
            Buf::Latest(slot) => usize::from(slot.is_some()),
            // Results that arrived out of turn may wait on a slow item: only
            // the in-turn run counts.
            Buf::Ordered { next, early, .. } => early
                .range(*next..)
                .zip(*next..)
                .take_while(|((seq, _), expected)| *seq == expected)
                .filter(|((_, turn), _)| turn.is_some())
                .count(),
        }
    }
}

impl<T> Inner<T> {
    /// The consumer's next result, registering its waker if there is none.
    /// Also returns a waiting sender to wake, once a pop made room.
    fn take_next(&mut self, cx: &mut Context<'_>) -> (Poll<Option<T>>, Option<Waker>) {
        let Inner {
            buf,
            consumer,
            waiting,
            senders,
            ..
        } = self;
        let next = match buf {
            Buf::Fifo { results, .. } => match results.pop_front() {
                Some(result) => {
                    let sender = waiting.wake_one();
                    return (Poll::Ready(Some(result)), sender);
                }
                None => None,
            },
            Buf::Latest(slot) => slot.take(),
            Buf::Ordered {
                window,
                next,
                early,
            } => loop {
                if let Some(turn) = early.remove(next) {
                    *next += 1;
                    window.add_permits(1);
                    match turn {
                        Some(result) => break Some(result),
                        None => continue,
                    }
                }
                if *senders > 0 {
                    break None;
                }
                // Every worker has exited. A gap can only be an item whose
                // worker died outside its panic isolation: skip it.
                match early.pop_first() {
                    Some((seq, turn)) => {
                        *next = seq + 1;
                        if turn.is_some() {
                            break turn;
                        }
                    }
                    None => break None,
                }
            },
        };
        if next.is_some() {
            return (Poll::Ready(next), None);
        }
        if *senders == 0 {
            return (Poll::Ready(None), None);
        }
        match consumer {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => *consumer = Some(cx.waker().clone()),
        }
        (Poll::Pending, None)
    }
}

// ===== impl Sender =====

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.outlet.lock().senders += 1;
        Sender {
            outlet: Arc::clone(&self.outlet),
            window: self.window.clone(),
            mode: self.mode,
        }
    }
}

impl<T> Sender<T> {
    pub(crate) fn is_ordered(&self) -> bool {
        self.window.is_some()
    }

    /// Ordered mode: waits until the item about to be taken fits in the
    /// reorder window. Returns at once if the results side is closed.
    pub(crate) async fn reserve_turn(&self) {
        if let Some(window) = &self.window {
            if let Ok(permit) = window.acquire().await {
                permit.forget();
            }
        }
    }

    /// Hands over the outcome of the item taken as number `seq`; `None` if
    /// it produced no result. In unordered mode it waits for room while the
    /// consumer lives and no abort has begun; otherwise the result is
    /// discarded and counted so.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future discards its result (counted) and passes on a
    /// wake-up it was given, so no other sender misses room.
    pub(crate) async fn deliver(&self, seq: u64, result: Option<T>) {
        match self.mode {
            Mode::Unordered => {
                if let Some(result) = result {
                    let mut handover = Handover {
                        outlet: &self.outlet,
                        result: Some(result),
                        ticket: None,
                    };
                    poll_fn(|cx| handover.poll(cx)).await;
                }
            }
            Mode::Ordered | Mode::Latest => {
                // These never wait; the budget still makes a worker that
                // always finds work yield now and then (PITFALLS 8).
                coop::consume_budget().await;
                // Counted discarded under the lock; dropped unlocked.
                drop_quietly(self.put(seq, result));
            }
        }
    }

    /// Ordered and latest-only modes: puts the outcome in place, waking the
    /// consumer if it can progress; returns what must be dropped, already
    /// counted discarded (a replaced unread result, or this one once
    /// discarding).
    fn put(&self, seq: u64, result: Option<T>) -> Option<T> {
        let (unsent, consumer) = {
            let mut inner = self.outlet.lock();
            let (unsent, consumer) = if inner.discarding {
                (result, None)
            } else {
                let Inner { buf, consumer, .. } = &mut *inner;
                Self::place(buf, consumer, seq, result)
            };
            if unsent.is_some() {
                self.outlet.discarded.fetch_add(1, Relaxed);
            }
            (unsent, consumer)
        };
        wake(consumer);
        unsent
    }

    /// Puts `result` in its place in an ordered or latest-only buffer.
    /// Returns what it replaced and the consumer to wake.
    fn place(
        buf: &mut Buf<T>,
        consumer: &mut Option<Waker>,
        seq: u64,
        result: Option<T>,
    ) -> (Option<T>, Option<Waker>) {
        match buf {
            Buf::Ordered { next, early, .. } => {
                early.insert(seq, result);
                (None, if seq == *next { consumer.take() } else { None })
            }
            Buf::Latest(slot) => match result {
                Some(result) => (slot.replace(result), consumer.take()),
                None => (None, None),
            },
            Buf::Fifo { .. } => (result, None), // unreachable: unordered hands over
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let (consumer, nothing_left) = {
            let mut inner = self.outlet.lock();
            inner.senders -= 1;
            if inner.senders == 0 {
                (inner.consumer.take(), inner.buf.holds_no_result())
            } else {
                (None, false)
            }
        };
        wake(consumer);
        if nothing_left {
            // No result exists for the consumer to read: the results side is
            // done whether or not it ever polls to the end.
            self.outlet.settled.cancel();
        }
    }
}

/// One unordered hand-over in progress (see `# Invariants`).
struct Handover<'a, T> {
    outlet: &'a Outlet<T>,
    /// `None` once handed over or discarded.
    result: Option<T>,
    /// Registered in `waiting` under this ticket, or woken from it.
    ticket: Option<u64>,
}

impl<T> Handover<'_, T> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // A task that always finds room still yields now and then (PITFALLS 8).
        let coop = ready!(coop::poll_proceed(cx));
        let Some(result) = self.result.take() else {
            return Poll::Ready(());
        };
        let mut inner = self.outlet.lock();
        // Woken (the entry is gone) or polled again while registered.
        inner.waiting.forget(self.ticket.take());
        if inner.discarding {
            drop(inner);
            self.outlet.discard_one(result);
            return Poll::Ready(());
        }
        let Inner {
            buf,
            consumer,
            waiting,
            ..
        } = &mut *inner;
        let Buf::Fifo { results, capacity } = buf else {
            unreachable!("Handover: only unordered mode waits for room")
        };
        if results.len() < *capacity {
            results.push_back(result);
            let consumer = consumer.take();
            drop(inner);
            wake(consumer);
            coop.made_progress();
            return Poll::Ready(());
        }
        waiting.register(&mut self.ticket, cx.waker());
        self.result = Some(result);
        Poll::Pending
    }
}

impl<T> Drop for Handover<'_, T> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            let next = self.outlet.lock().waiting.leave(ticket);
            wake(next);
        }
        // A result dropped with its hand-over was never delivered.
        if let Some(result) = self.result.take() {
            self.outlet.discard_one(result);
        }
    }
}

// ===== impl Receiver =====

impl<T> Receiver<T> {
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // An always-ready buffer must not starve the consumer's runtime:
        // one unit of tokio's budget per `RESULTS_PER_BUDGET_UNIT` results.
        let coop = if self.unbudgeted == 0 {
            Some(ready!(coop::poll_proceed(cx)))
        } else {
            None
        };
        let outlet = &*self.outlet;
        let mut inner = outlet.lock();
        if inner.discarding {
            // An abort emptied the buffer: the stream ends.
            let late = outlet.take_out(&mut inner);
            drop(inner);
            late.into_iter().for_each(drop_quietly);
            return Poll::Ready(None);
        }
        let (next, sender) = inner.take_next(cx);
        // The last result was taken and no sender is left: nothing more
        // exists to deliver, so `join` need not wait for the `None`.
        let mut took_last = false;
        if let Poll::Ready(Some(_)) = next {
            // Counted under the lock, so an abort cannot discard it too.
            bump(&outlet.delivered, 1);
            took_last = inner.senders == 0 && inner.buf.holds_no_result();
        }
        drop(inner);
        if took_last {
            outlet.settled.cancel();
        }
        wake(sender);
        match next {
            Poll::Ready(Some(_)) => match coop {
                Some(coop) => {
                    coop.made_progress();
                    self.unbudgeted = RESULTS_PER_BUDGET_UNIT - 1;
                }
                None => self.unbudgeted -= 1,
            },
            Poll::Ready(None) => outlet.settled.cancel(),
            Poll::Pending => {}
        }
        next
    }

    /// Results that the next polls will return without waiting (a lower
    /// bound for `size_hint`).
    pub(crate) fn ready_len(&self) -> usize {
        let inner = self.outlet.lock();
        if inner.discarding {
            0
        } else {
            inner.buf.ready_len()
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.outlet.discard_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_test::{assert_pending, assert_ready, task};

    fn recv<T>(rx: &mut Receiver<T>) -> Option<T> {
        let mut next = task::spawn(poll_fn(|cx| rx.poll_recv(cx)));
        assert_ready!(next.poll())
    }

    /// A one-slot buffer holding 10, and two senders waiting in line with 11
    /// (`a`, first) and 12 (`b`).
    fn two_waiting<'a>(
        tx: &'a Sender<u32>,
        tx2: &'a Sender<u32>,
    ) -> (
        task::Spawn<impl Future<Output = ()> + 'a>,
        task::Spawn<impl Future<Output = ()> + 'a>,
    ) {
        assert_ready!(task::spawn(tx.deliver(0, Some(10))).poll());
        let (mut a, mut b) = (
            task::spawn(tx.deliver(1, Some(11))),
            task::spawn(tx2.deliver(2, Some(12))),
        );
        assert_pending!(a.poll());
        assert_pending!(b.poll());
        (a, b)
    }

    #[test]
    fn senders_wait_in_line_for_room_and_are_woken_one_per_result_taken() {
        let (tx, mut rx, books) = channel::<u32>(1, Mode::Unordered, 2);
        let tx2 = tx.clone();
        let (mut a, mut b) = two_waiting(&tx, &tx2);
        assert_eq!(recv(&mut rx), Some(10));
        assert!(a.is_woken() && !b.is_woken());
        assert_ready!(a.poll());
        assert_pending!(b.poll());
        assert_eq!(recv(&mut rx), Some(11));
        assert_ready!(b.poll());
        assert_eq!(recv(&mut rx), Some(12));
        assert_eq!((books.delivered(), books.discarded()), (3, 0));
    }

    #[test]
    fn a_hand_over_dropped_after_its_wake_up_passes_it_on_and_discards_its_result() {
        let (tx, mut rx, books) = channel::<u32>(1, Mode::Unordered, 2);
        let tx2 = tx.clone();
        let (a, mut b) = two_waiting(&tx, &tx2);
        assert_eq!(recv(&mut rx), Some(10));
        assert!(a.is_woken() && !b.is_woken());
        drop(a); // woken, never pushed
        assert!(
            b.is_woken(),
            "the wake-up was lost with the dropped hand-over"
        );
        assert_eq!(books.discarded(), 1, "its result is discarded, counted");
        assert_ready!(b.poll());
        assert_eq!(recv(&mut rx), Some(12));
    }

    #[test]
    fn an_abort_wakes_waiting_senders_and_the_consumer_and_discards_everything() {
        let (tx, mut rx, books) = channel::<u32>(1, Mode::Unordered, 1);
        assert_ready!(task::spawn(tx.deliver(0, Some(10))).poll());
        let mut waiting = task::spawn(tx.deliver(1, Some(11)));
        assert_pending!(waiting.poll());
        books.discard_undelivered();
        assert!(waiting.is_woken());
        assert_ready!(waiting.poll());
        assert_eq!(recv(&mut rx), None);
        assert_eq!((books.delivered(), books.discarded()), (0, 2));
        assert!(books.settled().is_cancelled());
    }

    #[test]
    fn the_last_sender_gone_ends_the_stream_after_the_buffer() {
        let (tx, mut rx, _) = channel::<u32>(4, Mode::Unordered, 2);
        let tx2 = tx.clone();
        assert_ready!(task::spawn(tx.deliver(0, Some(1))).poll());
        drop(tx);
        let mut next = task::spawn(poll_fn(|cx| rx.poll_recv(cx)));
        assert_eq!(assert_ready!(next.poll()), Some(1));
        assert_pending!(next.poll());
        drop(tx2);
        assert!(next.is_woken());
        assert_eq!(assert_ready!(next.poll()), None);
    }
}
