//! A FIFO list of parked tasks, kept under the lock of the state they wait
//! on (the queue's idle workers, the results buffer's waiting senders).
//!
//! Registering and waking happen under that one lock, so a task that finds
//! nothing to do and registers cannot miss the change that would have let
//! it proceed: that change is made under the same lock and takes the waker.
//! Wakers are returned, never called here, so the caller wakes them after
//! unlocking (no foreign code under the lock).
//!
//! # A waiter's life
//!
//! 1. It finds nothing to do and [`register`](WaitList::register)s: it gets
//!    a ticket and a place at the back of the line.
//! 2. Polled again while still registered (a spurious wake-up, or tokio's
//!    budget ran out), it registers again and keeps its place: the waker is
//!    refreshed in its slot, in O(1).
//! 3. A change it waits for [`wake`](WaitList::wake)s it: its entry leaves
//!    the list, and the caller wakes the waker after unlocking.
//! 4. It proceeds and [`forget`](WaitList::forget)s its ticket (removing its
//!    entry if it proceeded without being woken), or it is dropped and
//!    [`leave`](WaitList::leave)s: if it had been woken and not used the
//!    wake-up, the wake-up passes to the next waiter (as tokio's `Notify`
//!    does for a dropped `Notified`), so dropping a waiting future never
//!    strands the others.
//!
//! # Invariants
//!
//! 1. Tickets are handed out in increasing order; `slots[i]` belongs to
//!    ticket `base + i`, so a ticket finds its slot in O(1).
//! 2. A slot is `Some` exactly while its waiter is registered (between
//!    steps 1 and 3 or 4); `live` counts those slots.
//! 3. The front slot, if any, is `Some`: empty slots left by waiters that
//!    went out of turn are popped as soon as they reach the front, so
//!    the list never holds more than the live waiters plus the tickets
//!    handed out since the oldest of them registered.

use std::collections::VecDeque;
use std::task::Waker;

/// Wakes `waker`, if there is one (after unlocking).
#[inline]
pub(crate) fn wake(waker: Option<Waker>) {
    if let Some(waker) = waker {
        waker.wake();
    }
}

#[derive(Debug, Default)]
pub(crate) struct WaitList {
    slots: VecDeque<Option<Waker>>,
    /// The ticket of `slots[0]`.
    base: u64,
    /// Slots that hold a waker (invariant 2).
    live: usize,
}

impl WaitList {
    fn slot(&mut self, ticket: u64) -> Option<&mut Option<Waker>> {
        let index = usize::try_from(ticket.checked_sub(self.base)?).ok()?;
        self.slots.get_mut(index)
    }

    /// Invariant 3: empty slots at the front go.
    fn trim(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
        debug_assert!(
            self.live <= self.slots.len() && (self.live == 0) == self.slots.is_empty(),
            "WaitList: {} live waiters in {} slots (invariants 2 and 3)",
            self.live,
            self.slots.len()
        );
    }

    /// Registers `waker` under `ticket`: refreshed in its place if the
    /// ticket is still registered, else at the back of the line with a new
    /// ticket.
    pub(crate) fn register(&mut self, ticket: &mut Option<u64>, waker: &Waker) {
        if let Some(Some(registered)) = ticket.and_then(|t| self.slot(t)) {
            if !registered.will_wake(waker) {
                registered.clone_from(waker);
            }
            return;
        }
        *ticket = Some(self.base + self.slots.len() as u64);
        self.slots.push_back(Some(waker.clone()));
        self.live += 1;
    }

    /// Whether `ticket` is registered and not yet woken.
    pub(crate) fn is_registered(&self, ticket: Option<u64>) -> bool {
        let Some(index) = ticket.and_then(|t| t.checked_sub(self.base)) else {
            return false;
        };
        usize::try_from(index)
            .ok()
            .and_then(|i| self.slots.get(i))
            .is_some_and(Option::is_some)
    }

    /// Removes the entry of `ticket` if it is still registered; true if it
    /// was.
    fn remove(&mut self, ticket: u64) -> bool {
        let removed = self.slot(ticket).and_then(Option::take).is_some();
        if removed {
            self.live -= 1;
            self.trim();
        }
        removed
    }

    /// The waiter proceeds: its entry goes if it is still there (it went
    /// without being woken), and its ticket is spent.
    pub(crate) fn forget(&mut self, ticket: &mut Option<u64>) {
        if let Some(t) = ticket.take() {
            self.remove(t);
        }
    }

    /// The waiter holding `ticket` was dropped: if it had been woken and not
    /// used the wake-up, the next waiter's waker, to be woken in its place.
    pub(crate) fn leave(&mut self, ticket: Option<u64>) -> Option<Waker> {
        match ticket {
            Some(t) if !self.remove(t) => self.wake_one(),
            _ => None, // never registered, or never woken: nothing owed
        }
    }

    /// The oldest waiter's waker, removing its entry.
    #[inline]
    pub(crate) fn wake_one(&mut self) -> Option<Waker> {
        if self.live == 0 {
            return None; // the common case on a busy path: nobody waits
        }
        let waker = self.slots.pop_front()??;
        self.base += 1;
        self.live -= 1;
        self.trim();
        Some(waker)
    }

    /// The wakers of the `n` oldest waiters (all if fewer), removing them.
    pub(crate) fn wake(&mut self, n: usize) -> Vec<Waker> {
        let n = n.min(self.live);
        let mut woken = Vec::with_capacity(n);
        woken.extend(std::iter::from_fn(|| self.wake_one()).take(n));
        woken
    }

    /// Whether nobody waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// Every waiter's waker, removing them all.
    pub(crate) fn wake_all(&mut self) -> Vec<Waker> {
        self.wake(self.live)
    }

    /// Registered waiters.
    #[cfg(all(test, not(loom)))]
    pub(crate) fn len(&self) -> usize {
        debug_assert_eq!(
            self.live,
            self.slots.iter().filter(|s| s.is_some()).count(),
            "WaitList: live count out of step (invariant 2)"
        );
        self.live
    }
}

#[cfg(all(test, not(loom)))]
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

    fn woken(count: &Count) -> usize {
        count.0.load(SeqCst)
    }

    #[test]
    fn wakes_in_arrival_order_and_a_re_registered_waiter_keeps_its_place() {
        let mut list = WaitList::default();
        let ((a, wa), (b, wb)) = (waker(), waker());
        let (mut ta, mut tb) = (None, None);
        list.register(&mut ta, &wa);
        list.register(&mut tb, &wb);
        list.register(&mut ta, &wa); // polled again: same place, same ticket
        assert_eq!((ta, tb, list.len()), (Some(0), Some(1), 2));
        wake(list.wake_one());
        assert_eq!((woken(&a), woken(&b)), (1, 0), "a is still first");
        list.wake(5).into_iter().for_each(Waker::wake);
        assert_eq!((woken(&a), woken(&b), list.len()), (1, 1, 0));
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
        assert!(list.leave(tb).is_none());
        // `a` is woken, then dropped unused: `c` gets the wake-up.
        drop(list.wake_one());
        wake(list.leave(ta));
        assert_eq!((woken(&b), woken(&c)), (0, 1));
        assert_eq!(list.len(), 0);
        assert!(list.slots.is_empty(), "invariant 3: no empty slot left");
    }

    #[test]
    fn a_waiter_that_proceeds_unwoken_leaves_no_trace_and_is_not_owed() {
        let mut list = WaitList::default();
        let ((a, wa), (b, wb)) = (waker(), waker());
        let (mut ta, mut tb) = (None, None);
        list.register(&mut ta, &wa);
        list.register(&mut tb, &wb);
        list.forget(&mut tb); // b found work on its own
        assert_eq!((tb, list.len()), (None, 1));
        assert!(list.is_registered(ta));
        list.wake(2).into_iter().for_each(Waker::wake);
        assert_eq!((woken(&a), woken(&b)), (1, 0));
        // Registering again after being woken goes to the back.
        list.register(&mut ta, &wa);
        assert_eq!(ta, Some(2));
    }
}
