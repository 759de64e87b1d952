//! The results stage: a bounded buffer from the workers to the results
//! stream, in completion order, in input order or latest-only, and its
//! books.
//!
//! # The results law
//!
//! Every result of a completed handler (`processed`) ends exactly once:
//! **delivered** (yielded by the results stream) or **discarded** (the
//! consumer was gone, an abort cut off its hand-over or threw it out of the
//! buffer, or a newer one replaced it in latest-only order). So `processed
//! == delivered + discarded` once the results side has *ended*: every
//! sender is gone and no result is left in the buffer (read, whether or not
//! the consumer then polled to the end), the consumer dropped the stream or
//! read its end, or an abort discarded what was left. The supervisor waits
//! for that before it builds the report, so the law holds in every report,
//! and `join` waits only for results that exist.
//!
//! # One lock for the buffer, its wakers and its books
//!
//! An abort must be able to empty the buffer without the consumer's help (a
//! stalled consumer never polls), and a result must not be counted both
//! delivered and discarded. So the buffer, the consumer's waker and the
//! waiting senders live under one mutex shared by the workers, the consumer
//! and an abort. A hand-over is one push and a delivery one pop under that
//! lock (tokio's bounded `mpsc`, used here before, also took a semaphore
//! permit per send under the semaphore's own mutex: about 490 instructions
//! per result, `BENCHMARKS.md`).
//!
//! # Invariants
//!
//! 1. **Bounded.** Completion order holds at most `capacity` results,
//!    latest-only at most one; in input order the reorder window bounds the
//!    buffer (see `buffer`).
//! 2. **No lost sender wake-up.** A sender that finds the buffer full
//!    registers in `waiting` and returns `Pending`, under the lock. Every
//!    pop removes the oldest waiting sender and wakes it after unlocking; a
//!    woken sender pushes or registers again. A hand-over dropped after its
//!    wake-up but before it pushed passes the wake-up on.
//! 3. **No lost consumer wake-up.** The consumer registers its waker under
//!    the lock when it finds nothing to take; every change that lets it
//!    progress (a push, the next turn in input order, the last sender's
//!    drop, an abort) takes that waker under the same lock and wakes it
//!    after unlocking.
//! 4. **Counted where it moves.** A result is counted delivered or
//!    discarded in the critical section that takes it out of the buffer (or
//!    refuses it), with `Release`, so whoever next takes the lock, or loads
//!    the count with `Acquire`, sees it counted: the last sender deciding
//!    the results side has ended, or a snapshot (see `books`). Handed over
//!    directly (the call front), a result never enters the buffer: the
//!    sender counts it with `fetch_add` and `Release` as the hand-over
//!    returns, before it drops its sender; the buffer stays empty, so the
//!    consumer never writes `delivered` there.
//! 5. **Discarding is final.** Once `discarding` is set (under the lock) no
//!    result enters the buffer; every waiting sender is woken, sees it, and
//!    discards its result.
//! 6. **No foreign code under the lock.** Results are dropped (their `Drop`
//!    is user code) and wakers woken after unlocking. The input-order
//!    window's semaphore wakes workers waiting for a turn itself, under the
//!    lock: tokio task wakers, never the consumer's.
//!
//! # Lock order
//!
//! The outlet's lock is taken alone, except that the input-order window's
//! semaphore lock is taken under it (`add_permits` and `close`); nothing
//! takes the outlet's lock under the semaphore's.

mod buffer;
mod receiver;
mod sender;
mod stream;

use std::task::Waker;

use tokio_util::sync::CancellationToken;

use crate::ResultOrder;
use crate::books::{ResultCounts, bump};
use crate::isolate::drop_quietly;
use crate::queue::{WaitList, wake};
use crate::sync::{AtomicU64, Mutex, MutexGuard, lock};
use std::sync::Arc;
use std::sync::atomic::Ordering::{Acquire, Release};

use buffer::Buf;
pub(crate) use receiver::Receiver;
pub(crate) use sender::Sender;
pub use stream::BoundedFanOut;

/// What the rest of the pipeline, whatever the result type, needs of the
/// results side.
pub(crate) trait ResultBooks: ResultCounts + Send + Sync {
    /// An abort began: stop every hand-over and discard what is buffered.
    fn discard_undelivered(&self);
    /// Cancelled once the results side has ended (see `# The results law`).
    fn ended(&self) -> &CancellationToken;
    /// Every worker has exited: discard anything a discarding buffer still
    /// holds, so the books are final.
    fn finish(&self);
}

/// The state the workers' side and the consumer's side share.
pub(crate) struct Outlet<T> {
    inner: Mutex<Inner<T>>,
    /// Written by the consumer only, under the lock (invariant 4).
    delivered: AtomicU64,
    /// Written under the lock, or by a sender about a result that never
    /// entered the buffer, before that sender's last lock (invariant 4).
    discarded: AtomicU64,
    ended: CancellationToken,
}

struct Inner<T> {
    buf: Buf<T>,
    /// The consumer's waker while it waits for a result (invariant 3).
    consumer: Option<Waker>,
    /// Completion order: senders waiting for room (invariant 2).
    waiting: WaitList,
    /// Live senders; the stream ends once the last is gone and the buffer
    /// is empty.
    senders: usize,
    /// The consumer is gone, or an abort discarded the buffer: whatever
    /// still arrives is discarded, never delivered (invariant 5).
    discarding: bool,
}

/// Hands a result straight to whoever waits for it (the call front's
/// answers): `None` when it was taken, the result back when its taker is
/// gone (it is then discarded).
pub(crate) type Direct<T> = fn(T) -> Option<T>;

/// A results buffer of `capacity` undelivered results, in `order`; in
/// input order the reorder window is `workers + capacity`. With `direct`,
/// results bypass the buffer and go to their own takers.
pub(crate) fn channel<T: Send + 'static>(
    capacity: usize,
    order: ResultOrder,
    workers: usize,
    direct: Option<Direct<T>>,
) -> (Sender<T>, Receiver<T>, Arc<dyn ResultBooks>) {
    let (buf, window) = Buf::new(capacity, order, workers);
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
        ended: CancellationToken::new(),
    });
    let sender = Sender::new(Arc::clone(&outlet), window, order, direct);
    let receiver = Receiver::new(Arc::clone(&outlet));
    (sender, receiver, outlet)
}

impl<T> Outlet<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        lock(&self.inner)
    }

    /// Discards everything buffered and everything that arrives later
    /// (invariant 5). Waiting senders and the consumer are woken; result
    /// drops (user code) run after unlocking.
    fn discard_all(&self) {
        let (buffered, senders, consumer) = {
            let mut inner = self.lock();
            inner.discarding = true;
            let senders = inner.waiting.wake_all();
            (self.take_out(&mut inner), senders, inner.consumer.take())
        };
        senders.into_iter().for_each(Waker::wake);
        wake(consumer);
        buffered.into_iter().for_each(drop_quietly);
        self.ended.cancel();
    }

    /// Empties the buffer, counting what it held discarded under the lock
    /// (invariant 4). The caller drops the results after unlocking.
    fn take_out(&self, inner: &mut Inner<T>) -> Vec<T> {
        let results = inner.buf.drain();
        self.count_discarded(results.len());
        results
    }

    fn count_discarded(&self, n: usize) {
        if n > 0 {
            self.discarded.fetch_add(n as u64, Release);
        }
    }

    /// The consumer took a result, under the lock (invariant 4).
    fn count_delivered(&self) {
        bump(&self.delivered, 1);
    }

    /// Hands `result` to its own taker; counted delivered or, if the taker
    /// is gone, discarded and dropped (invariant 4, direct hand-over).
    fn hand_over_direct(&self, direct: Direct<T>, result: T) {
        match direct(result) {
            None => {
                self.delivered.fetch_add(1, Release);
            }
            Some(unsent) => {
                self.count_discarded(1);
                drop_quietly(unsent);
            }
        }
    }
}

impl<T> ResultCounts for Outlet<T> {
    fn delivered(&self) -> u64 {
        self.delivered.load(Acquire)
    }

    fn discarded(&self) -> u64 {
        self.discarded.load(Acquire)
    }
}

impl<T: Send> ResultBooks for Outlet<T> {
    fn discard_undelivered(&self) {
        self.discard_all();
    }

    fn ended(&self) -> &CancellationToken {
        &self.ended
    }

    fn finish(&self) {
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

#[cfg(all(test, not(loom)))]
mod tests;
