//! The consumer's side of the results buffer.

use std::task::{Context, Poll, ready};

use tokio::task::coop;

use super::{Outlet, wake};
use crate::isolate::drop_quietly;
use std::sync::Arc;

/// Results the consumer takes per unit of tokio's cooperative budget.
///
/// One stream drains what many workers hand over, so a unit per result (as
/// tokio's own channels take) made it yield every 128 results and fall
/// behind the workers, which then waited for room: −9 % on the 2 µs speedup
/// benchmark against 16 per unit, and no better at 64 (`BENCHMARKS.md`).
/// The consumer still yields after at most 128 × 16 results in a row.
const RESULTS_PER_BUDGET_UNIT: usize = 16;

/// The consumer's side, owned by the results stream. Dropping it discards
/// whatever is still buffered.
pub(crate) struct Receiver<T> {
    outlet: Arc<Outlet<T>>,
    /// Results to deliver before the next unit of tokio's budget.
    unbudgeted: usize,
}

impl<T> Receiver<T> {
    pub(super) fn new(outlet: Arc<Outlet<T>>) -> Self {
        Receiver {
            outlet,
            unbudgeted: 0,
        }
    }

    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        // An always-ready buffer must not starve the consumer's runtime.
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
        let senders = inner.senders;
        let (next, sender) = {
            let inner = &mut *inner;
            inner.buf.next(senders, &mut inner.waiting)
        };
        let next = match next {
            Some(result) => {
                outlet.count_delivered();
                Poll::Ready(Some(result))
            }
            None if senders == 0 => Poll::Ready(None),
            None => {
                // Invariant 3: registered under the lock.
                match &mut inner.consumer {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    consumer => *consumer = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        };
        // The last result taken with no sender left: nothing more exists to
        // deliver, so `join` need not wait for the `None`.
        let ended = senders == 0 && inner.buf.holds_no_result();
        drop(inner);
        wake(sender);
        if ended {
            outlet.ended.cancel();
        }
        if let Poll::Ready(Some(_)) = next {
            match coop {
                Some(coop) => {
                    coop.made_progress();
                    self.unbudgeted = RESULTS_PER_BUDGET_UNIT - 1;
                }
                None => self.unbudgeted -= 1,
            }
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
