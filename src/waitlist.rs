//! A FIFO list of parked tasks, kept under the lock of the state they wait
//! on (the queue's idle workers, the results buffer's waiting senders).
//!
//! Registering and waking happen under that one lock, so a task that finds
//! nothing to do and registers cannot miss the change that would have let
//! it proceed: that change is made under the same lock and takes the waker.
//! Wakers are returned, never called here, so the caller wakes them after
//! unlocking.
//!
//! A waiter holds a ticket while registered. Being woken removes its entry;
//! a waiter that is dropped after its wake-up but before it used it passes
//! the wake-up on ([`WaitList::leave`]), so dropping a waiting future never
//! strands the others.

use std::collections::VecDeque;
use std::task::Waker;

#[derive(Default)]
pub(crate) struct WaitList {
    waiting: VecDeque<(u64, Waker)>,
    next_ticket: u64,
}

impl WaitList {
    /// Registers `waker`, or refreshes it if `ticket` is still registered.
    pub(crate) fn register(&mut self, ticket: &mut Option<u64>, waker: &Waker) {
        if let Some(t) = *ticket {
            if let Some((_, registered)) = self.waiting.iter_mut().find(|(id, _)| *id == t) {
                if !registered.will_wake(waker) {
                    registered.clone_from(waker);
                }
                return;
            }
        }
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.waiting.push_back((t, waker.clone()));
        *ticket = Some(t);
    }

    /// The waiter with `ticket` is done waiting (it is being polled, or it
    /// proceeded): drops its entry if it is still there.
    pub(crate) fn forget(&mut self, ticket: Option<u64>) {
        if let Some(t) = ticket {
            self.waiting.retain(|(id, _)| *id != t);
        }
    }

    /// The waiter with `ticket` was dropped: if it had been woken and not
    /// used the wake-up, the next waiter's waker, to be woken in its place.
    pub(crate) fn leave(&mut self, ticket: u64) -> Option<Waker> {
        let before = self.waiting.len();
        self.waiting.retain(|(id, _)| *id != ticket);
        if self.waiting.len() < before {
            None // never woken: nothing to pass on
        } else {
            self.wake_one()
        }
    }

    /// The oldest waiter's waker, removing it.
    pub(crate) fn wake_one(&mut self) -> Option<Waker> {
        self.waiting.pop_front().map(|(_, waker)| waker)
    }

    /// The wakers of the `n` oldest waiters (all if fewer), removing them.
    pub(crate) fn wake(&mut self, n: usize) -> Vec<Waker> {
        let n = n.min(self.waiting.len());
        self.waiting.drain(..n).map(|(_, waker)| waker).collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        (Arc::clone(&count), Waker::from(count))
    }

    #[test]
    fn wakes_in_arrival_order_and_refreshes_in_place() {
        let mut list = WaitList::default();
        let ((a, wa), (b, wb)) = (waker(), waker());
        let (mut ta, mut tb) = (None, None);
        list.register(&mut ta, &wa);
        list.register(&mut tb, &wb);
        list.register(&mut ta, &wa); // polled again: same place
        assert_eq!(list.len(), 2);
        if let Some(waker) = list.wake_one() {
            waker.wake();
        }
        assert_eq!((a.0.load(SeqCst), b.0.load(SeqCst)), (1, 0));
        list.wake(5).into_iter().for_each(Waker::wake);
        assert_eq!((a.0.load(SeqCst), b.0.load(SeqCst)), (1, 1));
        assert_eq!(list.len(), 0);
    }

    #[test]
    fn a_dropped_waiter_passes_on_only_a_wake_up_it_received() {
        let mut list = WaitList::default();
        let ((_, wa), (b, wb), (c, wc)) = (waker(), waker(), waker());
        let (mut ta, mut tb, mut tc) = (None, None, None);
        list.register(&mut ta, &wa);
        list.register(&mut tb, &wb);
        list.register(&mut tc, &wc);
        // `b` leaves before any wake-up: nothing is owed.
        assert!(list.leave(tb.unwrap()).is_none());
        // `a` is woken, then dropped unused: `c` gets the wake-up.
        drop(list.wake_one());
        if let Some(next) = list.leave(ta.unwrap()) {
            next.wake();
        }
        assert_eq!((b.0.load(SeqCst), c.0.load(SeqCst)), (0, 1));
        assert_eq!(list.len(), 0);
    }
}
