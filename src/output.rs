//! The results side: the channel from the workers to `results`, in
//! completion order or in input order, and its books.
//!
//! # The results law
//!
//! Every result of a completed handler (`processed`) ends exactly once:
//! **delivered** (yielded by `results`) or **discarded** (the consumer was
//! gone, or an abort cut off its hand-over or threw it out of the buffer).
//! So `processed == delivered + discarded` once the results side is
//! *settled*: the consumer read the end, dropped `results`, or an abort
//! discarded what was left. The supervisor waits for that before it builds
//! the report, so the law holds in every report.
//!
//! # Why the receiver sits behind a lock
//!
//! An abort must be able to empty the buffer without the consumer's help (a
//! stalled consumer never polls), and a result must not be counted both
//! delivered and discarded. So the channel's receiver lives in [`Outlet`],
//! shared by the consumer and the pipeline: the consumer takes the lock for
//! each poll (uncontended except at an abort), and an abort takes it once to
//! close and empty the channel. A closed tokio channel still accepts a send
//! whose permit was taken before the close, so the supervisor empties it
//! once more after every worker has exited ([`ResultBooks::settle`]).
//!
//! # Ordered mode
//!
//! Items are numbered as workers take them (densely, in queue order; see
//! `handoff`) and reordered on the consumer's side. A window of `workers +
//! output_capacity` permits bounds how far taking may run ahead of delivery,
//! so the reorder buffer holds at most that many results: a worker takes a
//! permit before taking an item, and the consumer returns it when that
//! item's turn is delivered or skipped.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::AcqRel, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};

use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::books::bump;
use crate::isolate::drop_quietly;

/// What the pipeline, whatever its result type, needs of the results side.
pub(crate) trait ResultBooks: Send + Sync {
    /// Results yielded by `results` so far.
    fn delivered(&self) -> u64;
    /// Results thrown away so far.
    fn discarded(&self) -> u64;
    /// An abort began: stop every hand-over and discard what is buffered.
    fn discard_undelivered(&self);
    /// Cancelled once nothing more will be delivered: the consumer read the
    /// end or is gone, or an abort discarded the rest.
    fn settled(&self) -> &CancellationToken;
    /// Every worker has exited: discard what a closed channel still took in,
    /// so the books are final.
    fn settle(&self);
}

/// The state the workers' side and the consumer's side share.
pub(crate) struct Outlet<T> {
    inner: Mutex<Inner<T>>,
    /// Written by the consumer only (under `inner`'s lock).
    delivered: AtomicU64,
    /// Written by workers, the consumer's drop and an abort: rare paths.
    discarded: AtomicU64,
    settled: CancellationToken,
    /// Live senders in latest-only mode, where no channel counts them.
    latest_senders: AtomicUsize,
}

/// How results reach the consumer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A FIFO buffer, in completion order.
    Unordered,
    /// A FIFO buffer, reordered into input order.
    Ordered,
    /// One slot; a newer result replaces an unread one (discarded).
    Latest,
}

struct Inner<T> {
    rx: Rx<T>,
    /// The consumer is gone, or an abort discarded the buffer: the channel is
    /// closed and whatever still arrives is discarded, never delivered.
    discarding: bool,
}

enum Rx<T> {
    Unordered(mpsc::Receiver<T>),
    Ordered {
        rx: mpsc::Receiver<(u64, Option<T>)>,
        window: Arc<Semaphore>,
        /// Sequence number of the next item to deliver or skip.
        next: u64,
        /// Arrived out of turn; `None` marks an item without a result.
        early: BTreeMap<u64, Option<T>>,
    },
    Latest {
        slot: Option<T>,
        waker: Option<Waker>,
        /// Every worker has exited: the stream ends once the slot is empty.
        ended: bool,
    },
}

/// The workers' side.
pub(crate) struct Sender<T> {
    tx: Tx<T>,
    outlet: Arc<Outlet<T>>,
}

enum Tx<T> {
    Unordered(mpsc::Sender<T>),
    Ordered {
        tx: mpsc::Sender<(u64, Option<T>)>,
        window: Arc<Semaphore>,
    },
    Latest,
}

/// The consumer's side, owned by `BoundedFanOut`. Dropping it discards
/// whatever is still buffered.
pub(crate) struct Receiver<T> {
    outlet: Arc<Outlet<T>>,
}

/// A results channel of `capacity` undelivered results; in ordered mode the
/// reorder window is `workers + capacity`.
pub(crate) fn channel<T: Send + 'static>(
    capacity: usize,
    mode: Mode,
    workers: usize,
) -> (Sender<T>, Receiver<T>, Arc<dyn ResultBooks>) {
    let (tx, rx) = if mode == Mode::Latest {
        let rx = Rx::Latest {
            slot: None,
            waker: None,
            ended: false,
        };
        (Tx::Latest, rx)
    } else if mode == Mode::Ordered {
        let window = workers.saturating_add(capacity).min(Semaphore::MAX_PERMITS);
        let window = Arc::new(Semaphore::new(window));
        let (tx, rx) = mpsc::channel(capacity);
        let tx = Tx::Ordered {
            tx,
            window: Arc::clone(&window),
        };
        let rx = Rx::Ordered {
            rx,
            window,
            next: 0,
            early: BTreeMap::new(),
        };
        (tx, rx)
    } else {
        let (tx, rx) = mpsc::channel(capacity);
        (Tx::Unordered(tx), Rx::Unordered(rx))
    };
    let outlet = Arc::new(Outlet {
        inner: Mutex::new(Inner {
            rx,
            discarding: false,
        }),
        delivered: AtomicU64::new(0),
        discarded: AtomicU64::new(0),
        settled: CancellationToken::new(),
        latest_senders: AtomicUsize::new(1),
    });
    let sender = Sender {
        tx,
        outlet: Arc::clone(&outlet),
    };
    let receiver = Receiver {
        outlet: Arc::clone(&outlet),
    };
    (sender, receiver, outlet)
}

// ===== impl Outlet =====

impl<T> Outlet<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // No user code runs under this lock; recover from poison anyway.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Closes the channel and discards everything buffered; later arrivals
    /// are discarded too. Result drops (user code) run after unlocking.
    fn discard_all(&self) {
        let buffered = {
            let mut inner = self.lock();
            inner.discarding = true;
            inner.rx.close_and_drain()
        };
        self.discard(buffered);
        self.settled.cancel();
    }

    fn discard(&self, results: Vec<T>) {
        if !results.is_empty() {
            self.discarded.fetch_add(results.len() as u64, Relaxed);
            results.into_iter().for_each(drop_quietly);
        }
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
        let late = {
            let mut inner = self.lock();
            if inner.discarding {
                inner.rx.close_and_drain()
            } else {
                Vec::new()
            }
        };
        self.discard(late);
    }
}

impl<T> Rx<T> {
    /// Closes the channel (pending sends fail and hand their result back)
    /// and takes out every buffered result.
    fn close_and_drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        match self {
            Rx::Unordered(rx) => {
                rx.close();
                while let Ok(result) = rx.try_recv() {
                    out.push(result);
                }
            }
            Rx::Ordered {
                rx, window, early, ..
            } => {
                // Workers must never wait for a turn that no one will deliver.
                window.close();
                rx.close();
                while let Ok((_, result)) = rx.try_recv() {
                    out.extend(result);
                }
                out.extend(std::mem::take(early).into_values().flatten());
            }
            Rx::Latest { slot, .. } => out.extend(slot.take()),
        }
        out
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self {
            Rx::Unordered(rx) => rx.poll_recv(cx),
            Rx::Latest { slot, waker, ended } => match slot.take() {
                Some(result) => Poll::Ready(Some(result)),
                None if *ended => Poll::Ready(None),
                None => {
                    *waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            },
            Rx::Ordered {
                rx,
                window,
                next,
                early,
            } => loop {
                if let Some(turn) = early.remove(next) {
                    *next += 1;
                    window.add_permits(1);
                    match turn {
                        Some(result) => return Poll::Ready(Some(result)),
                        None => continue,
                    }
                }
                match ready!(rx.poll_recv(cx)) {
                    Some((seq, turn)) => {
                        early.insert(seq, turn);
                    }
                    // Every worker has exited. A gap can only be an item whose
                    // worker died outside its panic isolation: skip it.
                    None => match early.pop_first() {
                        Some((seq, turn)) => {
                            *next = seq + 1;
                            if let Some(result) = turn {
                                return Poll::Ready(Some(result));
                            }
                        }
                        None => return Poll::Ready(None),
                    },
                }
            },
        }
    }

    fn ready_len(&self) -> usize {
        match self {
            Rx::Unordered(rx) => rx.len(),
            Rx::Latest { slot, .. } => usize::from(slot.is_some()),
            // Results queued out of turn may wait on a slow item: only the
            // in-turn run counts.
            Rx::Ordered { next, early, .. } => early
                .range(*next..)
                .zip(*next..)
                .take_while(|((seq, _), expected)| *seq == expected)
                .filter(|((_, turn), _)| turn.is_some())
                .count(),
        }
    }
}

// ===== impl Sender =====

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        let tx = match &self.tx {
            Tx::Unordered(tx) => Tx::Unordered(tx.clone()),
            Tx::Ordered { tx, window } => Tx::Ordered {
                tx: tx.clone(),
                window: Arc::clone(window),
            },
            Tx::Latest => {
                self.outlet.latest_senders.fetch_add(1, Relaxed);
                Tx::Latest
            }
        };
        Sender {
            tx,
            outlet: Arc::clone(&self.outlet),
        }
    }
}

impl<T> Sender<T> {
    pub(crate) fn is_ordered(&self) -> bool {
        matches!(self.tx, Tx::Ordered { .. })
    }

    /// Ordered mode: waits until the item about to be taken fits in the
    /// reorder window. Returns at once if the results side is closed.
    pub(crate) async fn reserve_turn(&self) {
        if let Tx::Ordered { window, .. } = &self.tx {
            if let Ok(permit) = window.acquire().await {
                permit.forget();
            }
        }
    }

    /// Hands over the outcome of the item taken as number `seq`; `None` if
    /// it produced no result. Waits for room while the consumer lives and no
    /// abort has begun; otherwise the result is discarded and counted so.
    pub(crate) async fn deliver(&self, seq: u64, result: Option<T>) {
        // A send error means the channel was closed (consumer gone, or an
        // abort). The result comes back in the error; its `Drop` is user code.
        let unsent = match &self.tx {
            Tx::Unordered(tx) => match result {
                Some(result) => tx.send(result).await.err().map(|e| e.0),
                None => None,
            },
            Tx::Ordered { tx, .. } => tx.send((seq, result)).await.err().and_then(|e| e.0.1),
            // Never waits: a newer result replaces an unread one.
            Tx::Latest => result.and_then(|result| self.put_latest(result)),
        };
        if let Some(unsent) = unsent {
            self.outlet.discard(vec![unsent]);
        }
    }
}

impl<T> Sender<T> {
    /// Latest-only: puts `result` in the slot, waking the consumer; returns
    /// what must be discarded (the replaced result, or this one after an
    /// abort).
    fn put_latest(&self, result: T) -> Option<T> {
        let (unread, waker) = {
            let mut inner = self.outlet.lock();
            if inner.discarding {
                return Some(result);
            }
            match &mut inner.rx {
                Rx::Latest { slot, waker, .. } => (slot.replace(result), waker.take()),
                _ => (None, None),
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        unread
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        // A channel knows when its last sender is gone; the slot is told.
        if matches!(self.tx, Tx::Latest) && self.outlet.latest_senders.fetch_sub(1, AcqRel) == 1 {
            let waker = {
                let mut inner = self.outlet.lock();
                match &mut inner.rx {
                    Rx::Latest { ended, waker, .. } => {
                        *ended = true;
                        waker.take()
                    }
                    _ => None,
                }
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }
}

// ===== impl Receiver =====

impl<T> Receiver<T> {
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let outlet = &*self.outlet;
        let mut inner = outlet.lock();
        if inner.discarding {
            // An abort emptied the channel: the stream ends, and anything a
            // closed channel still took in is discarded, never delivered.
            let late = inner.rx.close_and_drain();
            drop(inner);
            outlet.discard(late);
            return Poll::Ready(None);
        }
        let next = inner.rx.poll_recv(cx);
        match &next {
            // Counted under the lock, so an abort cannot discard it too.
            Poll::Ready(Some(_)) => bump(&outlet.delivered, 1),
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
            inner.rx.ready_len()
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.outlet.discard_all();
    }
}
