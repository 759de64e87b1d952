//! Models of the queue: its idle workers' wait list, closing, abandoning,
//! and the batch producer's room under `Backpressure`.

use std::collections::BTreeSet;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Waker};

use loom::future::block_on;
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use super::spawn;
use crate::ShedPolicy;
use crate::queue::{HandOff, Pushed, QueueSettings};

fn queue(capacity: usize, policy: ShedPolicy) -> Arc<HandOff<u32>> {
    Arc::new(HandOff::new(QueueSettings::plain(capacity, policy)))
}

fn push(queue: &HandOff<u32>, items: &[u32]) -> Pushed {
    queue.push(&mut items.to_vec(), &mut Vec::new(), |_, _| {})
}

/// Invariant 1 of `queue`: a push cannot miss a worker that is registering.
///
/// Guard: the push wakes one registered worker per item it adds
/// (`state.idle.wake(len - before)` in `HandOff::push`). Shown to fail by
/// waking nobody there: loom reports a deadlock (the taker parks forever).
#[test]
fn loom_a_push_wakes_a_worker_that_is_registering() {
    loom::model(|| {
        let q = queue(2, ShedPolicy::DropNewest);
        let taker = spawn(&q, |q| block_on(q.take()).map(|t| (t.seq, t.item)));
        assert!(matches!(push(&q, &[7]), Pushed::Accepted { shed: 0, .. }));
        assert_eq!(taker.join().unwrap(), Some((0, 7)));
    });
}

/// Invariant 1 of `queue` (and step 4 of `WaitList`): a worker woken for an
/// item whose take is dropped before it runs passes the wake-up on.
///
/// Guard: `Waiter::drop` calls `WaitList::leave`, which wakes the next
/// waiter if the dropped one had been woken. Shown to fail by dropping the
/// ticket without `leave`: when the push wakes the first registered take
/// and it is then dropped, the other parks forever (deadlock).
#[test]
fn loom_a_woken_take_that_is_dropped_passes_its_wake_up_on() {
    loom::model(|| {
        let q = queue(2, ShedPolicy::DropNewest);
        // This take registers, may be woken, and is dropped unused.
        let dropped = spawn(&q, |q| {
            let mut take = pin!(q.take());
            let polled = take.as_mut().poll(&mut Context::from_waker(Waker::noop()));
            // If it already got the item, the other take must not.
            polled.map(|taken| taken.map(|t| t.item))
        });
        let waiting = spawn(&q, |q| block_on(q.take()).map(|t| t.item));
        push(&q, &[1]);
        let first = dropped.join().unwrap();
        if first.is_ready() {
            assert_eq!(first, std::task::Poll::Ready(Some(1)));
            q.close();
            assert_eq!(waiting.join().unwrap(), None);
        } else {
            assert_eq!(waiting.join().unwrap(), Some(1));
        }
    });
}

/// Invariant 3 of `queue`: closing wakes every registered worker, and a
/// closed, empty queue answers `None`.
///
/// Guard: `close` wakes the whole wait list under the lock it sets `closed`
/// under. Shown to fail by not waking it: deadlock.
#[test]
fn loom_close_wakes_a_worker_that_is_registering() {
    loom::model(|| {
        let q = queue(1, ShedPolicy::DropNewest);
        let taker = spawn(&q, |q| block_on(q.take()).map(|t| t.item));
        q.close();
        assert_eq!(taker.join().unwrap(), None);
        assert_eq!(push(&q, &[1]), Pushed::Refused);
    });
}

/// Invariant 2 of `queue`: against a concurrent push and take, an abandon
/// hands back what it took out, and every item ends exactly once: taken,
/// abandoned, or refused (left with the pusher).
///
/// Guard: the abandon drains and counts under the lock, and sets `closed`
/// there so a later push is refused. Shown to fail by counting after
/// unlocking (`count(items.len())` moved below the lock): the count a
/// taker's `None` was built on missed items (the assertion on `counted`
/// fails).
#[test]
fn loom_abandon_push_and_take_end_every_item_exactly_once() {
    loom::model(|| {
        let q = queue(2, ShedPolicy::DropNewest);
        let counted = Arc::new(AtomicUsize::new(usize::MAX));
        let pusher = spawn(&q, |q| {
            let mut batch = vec![1, 2];
            match q.push(&mut batch, &mut Vec::new(), |_, _| {}) {
                Pushed::Refused => batch,
                Pushed::Accepted { .. } => Vec::new(),
            }
        });
        let counted_seen = Arc::clone(&counted);
        let taker = spawn(&q, move |q| {
            let taken = block_on(q.take()).map(|t| t.item);
            if taken.is_none() {
                // Abandoned: its count is already there.
                assert_ne!(counted_seen.load(SeqCst), usize::MAX);
            }
            taken
        });
        let abandoned = q.abandon(|n| counted.store(n, SeqCst));
        assert_eq!(counted.load(SeqCst), abandoned.len());
        let refused = pusher.join().unwrap();
        let taken = taker.join().unwrap();
        let mut all: Vec<u32> = abandoned.into_iter().chain(refused).chain(taken).collect();
        all.sort_unstable();
        assert_eq!(all, [1, 2], "every item ends exactly once");
        assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 2);
    });
}

/// `room::Batch` invariants 1 and 2: a batch producer waiting for room is
/// woken by the take that drains the queue to the low-water mark, and never
/// reserves past the capacity.
///
/// Guard: `Batch::on_take` hands the waiter's waker to the take once
/// `queued + reserved <= low_water(capacity)`. Shown to fail by never
/// waking it there: deadlock.
#[test]
fn loom_a_take_at_the_low_water_mark_wakes_the_producer_waiting_for_room() {
    loom::model(|| {
        let q = queue(2, ShedPolicy::Backpressure);
        assert_eq!(block_on(q.reserve(2)), 2);
        push(&q, &[1, 2]);
        let taker = spawn(&q, |q| {
            let first = q.take_now().map(|t| t.item);
            let second = q.take_now().map(|t| t.item);
            (first, second)
        });
        // Full: this waits until a take brings the queue to 1 (half of 2).
        let room = block_on(q.reserve(2));
        let (first, second) = taker.join().unwrap();
        assert_eq!(first, Some(1));
        let taken = 1 + usize::from(second.is_some());
        assert!(
            room >= 1 && room <= taken,
            "reserved {room} of {taken} freed"
        );
        q.unreserve(room);
    });
}
