use std::time::Duration;

use super::*;
use tokio_test::{assert_pending, assert_ready, task};

fn queue(capacity: usize, policy: ShedPolicy) -> HandOff<u32> {
    HandOff::new(QueueSettings::plain(capacity, policy))
}

fn push(queue: &HandOff<u32>, items: &[u32]) -> Pushed {
    queue.push(&mut items.to_vec(), &mut Vec::new(), |_, _| {})
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
            taken: 0,
            blocked: false
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
fn a_re_polled_waiting_worker_keeps_its_place_in_line() {
    let q = queue(4, ShedPolicy::DropNewest);
    let (mut a, mut b) = (task::spawn(q.take()), task::spawn(q.take()));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    assert_pending!(a.poll()); // polled again without a wake-up
    push(&q, &[1]);
    assert!(a.is_woken() && !b.is_woken(), "a is still first in line");
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
fn backpressure_reserves_room_and_a_take_wakes_the_waiting_producer() {
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
    let taken = assert_ready!(take.poll()).expect("an item");
    assert_eq!((taken.item, taken.woke_producer), (1, false));
    assert!(reserve.is_woken(), "1 queued: at the low-water mark of 2");
    assert_eq!(assert_ready!(reserve.poll()), 1);
    // Unused room goes back: a reservation of 1 returned leaves 1 free.
    q.unreserve(1);
    let mut again = task::spawn(q.reserve(32));
    assert_eq!(assert_ready!(again.poll()), 1);
}

#[test]
fn abandon_wakes_the_producer_waiting_for_room_and_every_worker() {
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
        for keep_shed in [false, true] {
            let q = HandOff::new(QueueSettings {
                keep_shed,
                ..QueueSettings::plain(3, policy)
            });
            let (mut batch, mut shed) = ((0..8).collect::<Vec<u32>>(), Vec::new());
            let mut counted = (0, 0);
            let pushed = q.push(&mut batch, &mut shed, |offered, n| counted = (offered, n));
            assert!(matches!(
                pushed,
                Pushed::Accepted {
                    shed: 5,
                    full: true,
                    ..
                }
            ));
            assert_eq!(counted, (8, 5));
            assert!(batch.is_empty());
            let expect = if keep_shed { 5 } else { 0 };
            assert_eq!(shed.len(), expect, "{policy} keep {keep_shed}");
            let taken: Vec<u32> = std::iter::from_fn(|| q.take_now().map(|t| t.item)).collect();
            assert_eq!(taken, queued, "{policy} keep {keep_shed}");
        }
    }
}

#[test]
fn a_closed_queue_refuses_a_push_and_leaves_the_batch_untouched() {
    let q = queue(2, ShedPolicy::DropNewest);
    push(&q, &[1]);
    q.close();
    let mut batch = vec![2, 3];
    assert_eq!(
        q.push(&mut batch, &mut Vec::new(), |_, _| {}),
        Pushed::Refused
    );
    assert_eq!(batch, [2, 3]);
    assert_eq!(
        q.take_now().map(|t| t.item),
        Some(1),
        "closing is not emptiness"
    );
    assert!(q.take_now().is_none());
}

#[test]
fn a_withdrawn_item_leaves_the_queue_and_frees_its_slot() {
    let q = HandOff::new(QueueSettings {
        many_producers: true,
        ..QueueSettings::plain(2, ShedPolicy::Backpressure)
    });
    for item in [1, 2] {
        assert_eq!(q.room().try_reserve_one(), Ok(()));
        push(&q, &[item]);
    }
    assert_eq!(q.room().try_reserve_one(), Err(NoRoom::Full));
    let mut counted = 0;
    assert_eq!(q.withdraw(|item| *item == 1, || counted += 1), Some(1));
    assert_eq!(
        q.withdraw(|item| *item == 1, || counted += 1),
        None,
        "gone already"
    );
    assert_eq!(counted, 1, "counted once, for the item that left");
    assert_eq!(q.room().try_reserve_one(), Ok(()), "its slot is free");
    assert_eq!(q.take_now().map(|t| (t.seq, t.item)), Some((0, 2)));
    assert_eq!(q.depth(), (0, 2));
}

/// A keyed queue of `capacity` items (no per-key limit beyond it), whose
/// items are `(key, value)` keyed by `key`.
fn keyed_queue(capacity: usize, policy: ShedPolicy, max_age: Option<Duration>) -> HandOff<u32> {
    HandOff::new(QueueSettings {
        max_age,
        many_producers: true,
        keyed: Some((table::<char>(), capacity)),
        ..QueueSettings::plain(capacity, policy)
    })
}

/// Pushes `batch` keyed by `keys` (any key type), with or without a grant;
/// what was not pushed (a full key under `Backpressure`).
fn push_keys<K: 'static>(
    queue: &HandOff<u32>,
    keys: &mut Keys<K>,
    mut batch: Vec<u32>,
    granted: &mut bool,
) -> Vec<u32> {
    queue.push_keyed(
        &mut batch,
        keys,
        granted,
        &mut Vec::new(),
        &mut Vec::new(),
        &mut Vec::new(),
        |_, _| {},
    );
    batch
}

/// Pushes `items`, with or without a grant; what was not pushed (a full
/// key under `Backpressure`), and whether the grant is still held.
fn push_keyed_with(queue: &HandOff<u32>, items: &[(char, u32)], granted: bool) -> (Vec<u32>, bool) {
    let mut keys: Keys<char> = items.iter().map(|(key, _)| *key).collect();
    let batch: Vec<u32> = items.iter().map(|(_, item)| *item).collect();
    let mut granted = granted;
    let left = push_keys(queue, &mut keys, batch, &mut granted);
    (left, granted)
}

fn push_keyed(queue: &HandOff<u32>, items: &[(char, u32)]) {
    push_keyed_with(queue, items, false);
}

/// A producer waiting for room in key `key`: polls once, registering.
fn wait_for_room(
    queue: &HandOff<u32>,
    key: char,
    ticket: &mut Option<u64>,
    granted: &mut bool,
    waker: &std::task::Waker,
) -> std::task::Poll<bool> {
    let mut keys: Keys<char> = [key].into_iter().collect();
    queue
        .poll_key_place(
            &mut keys,
            ticket,
            granted,
            &mut std::task::Context::from_waker(waker),
        )
        .map(|place| place == KeyPlace::Mine)
}

/// A keyed `Backpressure` queue: capacity 8, two queued items per key.
fn two_per_key() -> HandOff<u32> {
    HandOff::new(QueueSettings {
        keyed: Some((table::<char>(), 2)),
        many_producers: true,
        ..QueueSettings::plain(8, ShedPolicy::Backpressure)
    })
}

#[test]
fn a_full_keys_room_goes_to_its_producers_in_the_order_they_began_waiting() {
    let q = two_per_key();
    push_keyed(&q, &[('a', 1), ('a', 2)]);
    let waker = std::task::Waker::noop();
    // Two producers wait for a's room, first then second.
    let (mut first, mut second) = ((None, false), (None, false));
    assert!(wait_for_room(&q, 'a', &mut first.0, &mut first.1, waker).is_pending());
    assert!(wait_for_room(&q, 'a', &mut second.0, &mut second.1, waker).is_pending());
    // A take frees one place: it is kept for the first waiter, so a fresh
    // push (a producer that never waited) and the second waiter find the
    // key full.
    assert_eq!(q.take_now().map(|t| t.item), Some(1));
    assert_eq!(push_keyed_with(&q, &[('a', 9)], false).0, [9], "no barging");
    assert!(wait_for_room(&q, 'a', &mut second.0, &mut second.1, waker).is_pending());
    let ready = wait_for_room(&q, 'a', &mut first.0, &mut first.1, waker);
    assert_eq!(ready, std::task::Poll::Ready(true));
    assert!(first.1, "the place was kept for it");
    assert_eq!(push_keyed_with(&q, &[('a', 3)], true), (vec![], false));
    assert_eq!(q.depth().0, 2);
}

/// Counts the wake-ups of the wakers it makes.
struct Wakes(std::sync::atomic::AtomicUsize);

impl std::task::Wake for Wakes {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn counting_waker() -> (std::sync::Arc<Wakes>, std::task::Waker) {
    let wakes = std::sync::Arc::new(Wakes(std::sync::atomic::AtomicUsize::new(0)));
    (std::sync::Arc::clone(&wakes), wakes.into())
}

fn woken(wakes: &Wakes) -> usize {
    wakes.0.load(std::sync::atomic::Ordering::SeqCst)
}

#[test]
fn places_freed_together_go_to_their_waiters_one_at_a_time_in_line_order() {
    let q = two_per_key();
    push_keyed(&q, &[('a', 1), ('a', 2)]);
    // Three producers wait for a's room, in this order.
    let mut waiters: Vec<_> = (0..3).map(|_| (counting_waker(), None, false)).collect();
    for ((_, waker), ticket, granted) in &mut waiters {
        assert!(wait_for_room(&q, 'a', ticket, granted, waker).is_pending());
    }
    let wakes = |waiters: &[((std::sync::Arc<Wakes>, _), _, _)]| -> Vec<usize> {
        waiters.iter().map(|((w, _), _, _)| woken(w)).collect()
    };
    // Two places free before anyone runs (a take, its key finished, and
    // a second take): only the first waiter holds a grant.
    let first = q.take_now().expect("1");
    q.finished(first.key.expect("keyed"));
    let second = q.take_now().expect("2");
    assert_eq!(second.item, 2);
    assert_eq!(wakes(&waiters), [1, 0, 0], "one grant at a time");
    // The youngest runs first: it is still in line.
    let ((_, waker), ticket, granted) = &mut waiters[2];
    assert!(wait_for_room(&q, 'a', ticket, granted, waker).is_pending());
    let ((_, waker), ticket, granted) = &mut waiters[1];
    assert!(wait_for_room(&q, 'a', ticket, granted, waker).is_pending());
    // The first pushes with its grant, which passes the free place on.
    let ((_, waker), ticket, granted) = &mut waiters[0];
    assert_eq!(
        wait_for_room(&q, 'a', ticket, granted, waker),
        std::task::Poll::Ready(true)
    );
    assert_eq!(push_keyed_with(&q, &[('a', 10)], true), (vec![], false));
    assert_eq!(wakes(&waiters), [1, 1, 0], "the second is next");
    let ((_, waker), ticket, granted) = &mut waiters[2];
    assert!(wait_for_room(&q, 'a', ticket, granted, waker).is_pending());
    let ((_, waker), ticket, granted) = &mut waiters[1];
    assert_eq!(
        wait_for_room(&q, 'a', ticket, granted, waker),
        std::task::Poll::Ready(true)
    );
    assert_eq!(push_keyed_with(&q, &[('a', 11)], true), (vec![], false));
    // The key is full again: the third waits on, with no grant out.
    assert_eq!(wakes(&waiters), [1, 1, 0]);
    assert_eq!(q.depth().0, 2);
    q.finished(second.key.expect("keyed"));
    let order: Vec<u32> = std::iter::from_fn(|| {
        let taken = q.take_now()?;
        q.finished(taken.key.expect("keyed"));
        Some(taken.item)
    })
    .collect();
    assert_eq!(
        order,
        [10, 11],
        "the key's items in the order their producers waited"
    );
    assert_eq!(wakes(&waiters), [1, 1, 1]);
}

#[test]
fn a_waiter_dropped_with_its_place_passes_it_on_and_the_last_lets_it_lapse() {
    let q = two_per_key();
    push_keyed(&q, &[('a', 1), ('a', 2)]);
    let waker = std::task::Waker::noop();
    let keys: Keys<char> = ['a'].into_iter().collect();
    let (mut first, mut second) = ((None, false), (None, false));
    assert!(wait_for_room(&q, 'a', &mut first.0, &mut first.1, waker).is_pending());
    assert!(wait_for_room(&q, 'a', &mut second.0, &mut second.1, waker).is_pending());
    assert_eq!(q.take_now().map(|t| t.item), Some(1)); // the first is woken
    q.leave_key_room(&keys, first.0, false); // and dropped before it ran
    let ready = wait_for_room(&q, 'a', &mut second.0, &mut second.1, waker);
    assert_eq!(ready, std::task::Poll::Ready(true), "the place passed on");
    assert!(second.1);
    // The second gives up too, holding the grant: nobody waits, so the
    // place lapses and a fresh push gets it.
    q.leave_key_room(&keys, None, true);
    assert_eq!(push_keyed_with(&q, &[('a', 9)], false).0, Vec::<u32>::new());
    assert_eq!(q.depth().0, 2);
}

#[test]
fn a_withdrawn_keyed_item_leaves_its_key_and_an_emptied_key_is_forgotten() {
    let q = keyed_queue(4, ShedPolicy::DropNewest, None);
    push_keyed(&q, &[('a', 1), ('a', 2), ('b', 3)]);
    assert_eq!((q.keys_tracked(), q.depth()), (2, (3, 3)));
    let mut counted = 0;
    assert_eq!(q.withdraw(|item| *item == 3, || counted += 1), Some(3));
    assert_eq!((q.keys_tracked(), q.depth()), (1, (2, 3)), "b had only 3");
    assert_eq!(q.withdraw(|item| *item == 1, || counted += 1), Some(1));
    assert_eq!(q.withdraw(|item| *item == 3, || counted += 1), None);
    assert_eq!(counted, 2);
    let taken = q.take_now().expect("a's next item");
    assert_eq!(taken.item, 2);
    assert!(
        q.take_now().is_none(),
        "a is in flight, nothing else queued"
    );
}

#[test]
fn withdrawing_the_last_item_of_a_closed_keyed_queue_wakes_the_waiting_workers() {
    let q = keyed_queue(4, ShedPolicy::DropNewest, None);
    push_keyed(&q, &[('a', 1), ('a', 2)]);
    q.close();
    let first = q.take_now().expect("a's first item");
    // A second worker waits: a's next item sits behind the one in flight.
    let mut waiting = task::spawn(q.take());
    assert_pending!(waiting.poll());
    assert_eq!(q.withdraw(|item| *item == 2, || {}), Some(2));
    assert!(waiting.is_woken(), "the queue is closed and empty: the end");
    assert!(assert_ready!(waiting.poll()).is_none());
    q.finished(first.key.expect("keyed"));
    assert_eq!(q.keys_tracked(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_item_withdrawn_from_the_middle_keeps_the_others_stamps() {
    let ms = Duration::from_millis;
    let q = HandOff::new(QueueSettings {
        max_age: Some(ms(10)),
        many_producers: true,
        ..QueueSettings::plain(4, ShedPolicy::DropNewest)
    });
    for item in [1, 2, 3] {
        if item > 1 {
            tokio::time::advance(ms(5)).await;
        }
        push(&q, &[item]);
    }
    // Queued at 0, 5 and 10 ms; now 10 ms. 2 leaves from the middle.
    assert_eq!(q.withdraw(|item| *item == 2, || {}), Some(2));
    tokio::time::advance(ms(3)).await;
    let take = |q: &HandOff<u32>| q.take_now().map(|t| (t.item, t.expired));
    // 13 ms: 1 is 13 ms old (had 2's stamp gone with it, 8 ms).
    assert_eq!(take(&q), Some((1, true)));
    tokio::time::advance(ms(3)).await;
    // 16 ms: 3 is 6 ms old (had it taken 2's stamp, 11 ms).
    assert_eq!(take(&q), Some((3, false)));
}

/// A key's `Eq` that panics while a producer takes a place in it: caught
/// under the lock, the wait ends `Unkeyed` with nothing taken, and the key
/// goes with its item, dropped once, after unlocking (a review found it
/// dropped by the unwinding under the lock).
#[test]
fn a_panicking_eq_while_taking_a_place_drops_the_key_after_unlocking() {
    use std::hash::Hasher;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    use std::sync::{Arc, OnceLock};
    static PANIC: AtomicBool = AtomicBool::new(false);
    static DROPPED: AtomicUsize = AtomicUsize::new(0);
    static UNDER_LOCK: AtomicUsize = AtomicUsize::new(0);
    static QUEUE: OnceLock<Arc<HandOff<u32>>> = OnceLock::new();
    /// Every key hashes alike, so each lookup compares.
    struct Touchy(u32);
    impl std::hash::Hash for Touchy {
        fn hash<H: Hasher>(&self, _: &mut H) {}
    }
    impl PartialEq for Touchy {
        fn eq(&self, other: &Self) -> bool {
            assert!(!PANIC.load(Relaxed), "Eq panics");
            self.0 == other.0
        }
    }
    impl Eq for Touchy {}
    impl Drop for Touchy {
        fn drop(&mut self) {
            DROPPED.fetch_add(1, Relaxed);
            if QUEUE.get().is_some_and(|q| q.state.try_lock().is_err()) {
                UNDER_LOCK.fetch_add(1, Relaxed);
            }
        }
    }
    let q = QUEUE.get_or_init(|| {
        Arc::new(HandOff::new(QueueSettings {
            keyed: Some((table::<Touchy>(), 2)),
            many_producers: true,
            ..QueueSettings::plain(8, ShedPolicy::Backpressure)
        }))
    });
    let mut keys: Keys<Touchy> = [Touchy(1)].into_iter().collect();
    assert_eq!(
        push_keys(q, &mut keys, vec![10], &mut false),
        Vec::<u32>::new()
    );
    let mut other: Keys<Touchy> = [Touchy(2)].into_iter().collect();
    PANIC.store(true, Relaxed);
    let (mut ticket, mut granted) = (None, false);
    let waker = std::task::Waker::noop();
    let polled = q.poll_key_place(
        &mut other,
        &mut ticket,
        &mut granted,
        &mut std::task::Context::from_waker(waker),
    );
    PANIC.store(false, Relaxed);
    assert_eq!(polled, std::task::Poll::Ready(KeyPlace::Unkeyed));
    assert_eq!(ticket, None, "nothing registered");
    assert!(!granted);
    assert_eq!(other.queue.len(), 0, "the key went with its item");
    assert_eq!(
        (DROPPED.load(Relaxed), UNDER_LOCK.load(Relaxed)),
        (1, 0),
        "dropped once, after unlocking"
    );
}

/// A producer that waited in a key's line keeps the id it found there
/// (`Keys::at`): its re-polls, and the push it makes with its place, run
/// the key's `Eq` no more, and the push lets the key go.
#[test]
fn a_producer_that_waited_pushes_by_the_id_it_found_comparing_no_more() {
    use std::hash::Hasher;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    static COMPARED: AtomicUsize = AtomicUsize::new(0);
    struct Counted(char);
    impl std::hash::Hash for Counted {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }
    impl PartialEq for Counted {
        fn eq(&self, other: &Self) -> bool {
            COMPARED.fetch_add(1, Relaxed);
            self.0 == other.0
        }
    }
    impl Eq for Counted {}
    let q: HandOff<u32> = HandOff::new(QueueSettings {
        keyed: Some((table::<Counted>(), 1)),
        many_producers: true,
        ..QueueSettings::plain(8, ShedPolicy::Backpressure)
    });
    let push = |keys: &mut Keys<Counted>, item: u32, granted: &mut bool| {
        push_keys(&q, keys, vec![item], granted)
    };
    let mut first: Keys<Counted> = [Counted('a')].into_iter().collect();
    assert_eq!(push(&mut first, 1, &mut false), Vec::<u32>::new());
    // A second producer of a: the key is full, it waits in line.
    let mut keys: Keys<Counted> = [Counted('a')].into_iter().collect();
    let (mut ticket, mut granted) = (None, false);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let poll = |keys: &mut Keys<Counted>, ticket: &mut _, granted: &mut _, cx: &mut _| {
        q.poll_key_place(keys, ticket, granted, cx)
    };
    COMPARED.store(0, Relaxed);
    assert!(poll(&mut keys, &mut ticket, &mut granted, &mut cx).is_pending());
    assert_eq!(
        COMPARED.load(Relaxed),
        1,
        "one lookup, at the start of the wait"
    );
    assert!(poll(&mut keys, &mut ticket, &mut granted, &mut cx).is_pending());
    // The worker takes 1 and finishes it: the place goes to the waiter.
    let taken = q.take_now().expect("1 is queued");
    q.finished(taken.key.expect("keyed"));
    assert_eq!(
        poll(&mut keys, &mut ticket, &mut granted, &mut cx),
        std::task::Poll::Ready(KeyPlace::Mine)
    );
    assert_eq!(push(&mut keys, 2, &mut granted), Vec::<u32>::new());
    assert_eq!(
        COMPARED.load(Relaxed),
        1,
        "the re-polls and the push compared nothing"
    );
    assert!(keys.queue.is_empty(), "the push let the key go");
    assert_eq!(q.take_now().map(|t| t.item), Some(2));
}
