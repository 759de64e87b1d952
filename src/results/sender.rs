//! The workers' side of the results buffer.

use std::future::poll_fn;
use std::task::{Context, Poll, ready};

use tokio::sync::Semaphore;
use tokio::task::coop;

use super::{Direct, Inner, Outlet, wake};
use crate::ResultOrder;
use crate::isolate::drop_quietly;
use std::sync::Arc;

/// The workers' side: one clone per worker.
pub(crate) struct Sender<T> {
    outlet: Arc<Outlet<T>>,
    /// Input order's reorder window.
    window: Option<Arc<Semaphore>>,
    order: ResultOrder,
    /// Results go straight to their takers instead of the buffer.
    direct: Option<Direct<T>>,
}

impl<T> Sender<T> {
    pub(super) fn new(
        outlet: Arc<Outlet<T>>,
        window: Option<Arc<Semaphore>>,
        order: ResultOrder,
        direct: Option<Direct<T>>,
    ) -> Self {
        Sender {
            outlet,
            window,
            order,
            direct,
        }
    }

    /// Input order: waits until the item about to be taken fits in the
    /// reorder window. Returns at once in other orders, or once the results
    /// side is discarding (the window is closed).
    pub(crate) async fn reserve_turn(&self) {
        if let Some(window) = &self.window {
            if let Ok(permit) = window.acquire().await {
                permit.forget();
            }
        }
    }

    /// Whether [`reserve_turn`](Self::reserve_turn) can wait: input order
    /// only. Checked first, so other orders do not poll a future per item.
    pub(crate) fn takes_turns(&self) -> bool {
        self.window.is_some()
    }

    /// Hands over the outcome of the item taken as number `seq`; `None` if
    /// it produced no result. In completion order it waits for room while
    /// the consumer lives and no abort has begun; otherwise the result is
    /// discarded and counted so.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future discards its result (counted) and passes on a
    /// wake-up it was given, so no other sender misses room.
    pub(crate) async fn deliver(&self, seq: u64, result: Option<T>) {
        if let Some(direct) = self.direct {
            // Never waits: the taker's slot always has room for its answer.
            if let Some(result) = result {
                self.outlet.hand_over_direct(direct, result);
            }
            return;
        }
        match self.order {
            ResultOrder::Completion => {
                if let Some(result) = result {
                    let mut handover = Handover {
                        outlet: &self.outlet,
                        result: Some(result),
                        ticket: None,
                    };
                    poll_fn(|cx| handover.poll(cx)).await;
                }
            }
            ResultOrder::Input | ResultOrder::LatestOnly => {
                // These never wait; the budget still makes a worker that
                // always finds work yield now and then.
                coop::consume_budget().await;
                drop_quietly(self.put(seq, result));
            }
        }
    }

    /// Input and latest-only order: puts the outcome in place, waking the
    /// consumer if it can progress. Returns what must be dropped, counted
    /// discarded under the lock (a replaced unread result, or this one once
    /// discarding).
    fn put(&self, seq: u64, result: Option<T>) -> Option<T> {
        let (unsent, consumer) = {
            let mut inner = self.outlet.lock();
            let (unsent, progress) = if inner.discarding {
                (result, false)
            } else {
                inner.buf.place(seq, result)
            };
            self.outlet.count_discarded(usize::from(unsent.is_some()));
            let consumer = if progress {
                inner.consumer.take()
            } else {
                None
            };
            (unsent, consumer)
        };
        wake(consumer);
        unsent
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.outlet.lock().senders += 1;
        Sender {
            outlet: Arc::clone(&self.outlet),
            window: self.window.clone(),
            order: self.order,
            direct: self.direct,
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
            // No result exists for the consumer to read: the results side
            // has ended, whether or not it ever polls to the end.
            self.outlet.ended.cancel();
        }
    }
}

/// One completion-order hand-over in progress (invariant 2).
struct Handover<'a, T> {
    outlet: &'a Outlet<T>,
    /// `None` once handed over or discarded.
    result: Option<T>,
    /// Registered in `waiting` under this ticket, or woken from it.
    ticket: Option<u64>,
}

impl<T> Handover<'_, T> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // A task that always finds room still yields now and then.
        let coop = ready!(coop::poll_proceed(cx));
        let Some(result) = self.result.take() else {
            return Poll::Ready(());
        };
        let mut inner = self.outlet.lock();
        if inner.discarding {
            inner.waiting.forget(&mut self.ticket);
            // Counted before the lock goes (invariant 4), dropped after.
            self.outlet.count_discarded(1);
            drop(inner);
            drop_quietly(result);
            return Poll::Ready(());
        }
        let Inner {
            buf,
            consumer,
            waiting,
            ..
        } = &mut *inner;
        let super::Buf::Fifo { results, capacity } = buf else {
            unreachable!("Handover: only completion order waits for room")
        };
        if results.len() < *capacity {
            waiting.forget(&mut self.ticket);
            results.push_back(result);
            debug_assert!(
                results.len() <= *capacity,
                "Outlet: over capacity (invariant 1)"
            );
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
        let unsent = self.result.take();
        if self.ticket.is_some() || unsent.is_some() {
            let next = {
                let mut inner = self.outlet.lock();
                // A result dropped with its hand-over was never delivered
                // (counted under the lock: invariant 4).
                self.outlet.count_discarded(usize::from(unsent.is_some()));
                inner.waiting.leave(self.ticket.take())
            };
            wake(next);
        }
        drop_quietly(unsent);
    }
}
