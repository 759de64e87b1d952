//! Models of the keyed queue's wake-ups: a worker waiting while its key's
//! item is in flight elsewhere, and the end of a closed keyed queue.

use std::sync::Arc;

use loom::future::block_on;

use crate::ShedPolicy;
use crate::queue::{HandOff, KeyPlace, Keys, QueueSettings, table};

/// One key, `a`, as a front hands keys over.
fn key_a() -> Keys<char> {
    ['a'].into_iter().collect()
}

/// A keyed `Backpressure` queue of capacity 4, `per_key` items per key,
/// for several producers.
fn backpressure_queue(per_key: usize) -> Arc<HandOff<u32>> {
    Arc::new(HandOff::new(QueueSettings {
        keyed: Some((table::<char>(), per_key)),
        many_producers: true,
        ..QueueSettings::plain(4, ShedPolicy::Backpressure)
    }))
}

/// Pushes `item` of key `'a'` (with the place kept for it, if `granted`);
/// whether it got in.
fn push_a(queue: &HandOff<u32>, item: u32, granted: &mut bool) -> bool {
    let mut batch = vec![item];
    let (mut shed, mut reasons) = (Vec::new(), Vec::new());
    queue.push_keyed(
        &mut batch,
        &mut key_a(),
        granted,
        &mut shed,
        &mut reasons,
        &mut Vec::new(),
        |_, _| {},
    );
    batch.is_empty()
}

/// A closed keyed queue holding `items`, all of key `'a'`.
fn closed_queue(items: &[u32]) -> Arc<HandOff<u32>> {
    let queue = Arc::new(HandOff::new(QueueSettings {
        keyed: Some((table::<char>(), 4)),
        ..QueueSettings::plain(4, ShedPolicy::DropNewest)
    }));
    let mut keys: Keys<char> = items.iter().map(|_| 'a').collect();
    queue.push_keyed(
        &mut items.to_vec(),
        &mut keys,
        &mut false,
        &mut Vec::new(),
        &mut Vec::new(),
        &mut Vec::new(),
        |_, _| {},
    );
    queue.close();
    queue
}

/// Takes one item (`None` at the end) and reports it finished.
fn take_one(queue: &HandOff<u32>) -> Option<u32> {
    let taken = block_on(queue.take())?;
    if let Some(key) = taken.key {
        queue.finished(key);
    }
    Some(taken.item)
}

/// Takes until the end as a worker does, each take reporting the last
/// item's key finished (`take_after`); the items, in the order taken.
fn take_all(queue: &HandOff<u32>) -> Vec<u32> {
    let mut done = None;
    std::iter::from_fn(|| {
        let taken = block_on(queue.take_after(done.take()))?;
        done = taken.key;
        Some(taken.item)
    })
    .collect()
}

/// A worker that waits because its key's item is in flight elsewhere is
/// woken when that item finishes, and takes the key's next item.
///
/// Guard: `HandOff::finished` wakes one idle worker when the key becomes
/// ready. Shown to fail by not waking: the waiting worker parks forever
/// (deadlock).
#[test]
fn loom_a_finished_key_wakes_the_worker_waiting_for_it() {
    loom::model(|| {
        let queue = closed_queue(&[1, 2]);
        let other = super::spawn(&queue, |queue| take_all(&queue));
        // This worker takes one item and stops.
        let mine = take_one(&queue);
        let theirs = other.join().unwrap();
        let mut all: Vec<u32> = mine.into_iter().chain(theirs.iter().copied()).collect();
        all.sort_unstable();
        assert_eq!(all, [1, 2]);
        assert!(theirs.is_sorted(), "a key's items in order: {theirs:?}");
        assert_eq!(queue.keys_tracked(), 0);
    });
}

/// Workers may wait on a closed keyed queue while items sit behind a key in
/// flight; the take that empties it wakes them all to see the end. Every
/// worker here reports its key finished with its next take.
///
/// Guards: in `HandOff::try_take_keyed`, a take that leaves a closed queue
/// empty wakes every idle worker; and a take reports the key it is given
/// finished before it looks for an item. Shown to fail without either: a
/// worker parks forever (deadlock).
#[test]
fn loom_the_take_that_empties_a_closed_keyed_queue_wakes_every_waiter() {
    loom::model(|| {
        let queue = closed_queue(&[1, 2]);
        let second = super::spawn(&queue, |queue| take_all(&queue));
        let third = super::spawn(&queue, |queue| take_all(&queue));
        let mine = take_all(&queue);
        let mut all: Vec<u32> = mine;
        all.extend(second.join().unwrap());
        all.extend(third.join().unwrap());
        all.sort_unstable();
        assert_eq!(all, [1, 2]);
    });
}

/// A withdrawal (a caller that went away) that empties a closed keyed
/// queue wakes the workers waiting behind a key in flight, to see the end,
/// as the take that empties it does.
///
/// Guard: `HandOff::withdraw` wakes every idle worker when it empties a
/// closed keyed queue. Shown to fail by not waking them: the waiting worker
/// parks forever (deadlock; the key's `finished` wakes nobody, as the key
/// has nothing left).
#[test]
fn loom_a_withdrawal_that_empties_a_closed_keyed_queue_ends_the_waiting_worker() {
    loom::model(|| {
        let queue = closed_queue(&[1, 2]);
        let Some(first) = block_on(queue.take()) else {
            panic!("the key's first item");
        };
        let waiting = super::spawn(&queue, |queue| block_on(queue.take()).map(|t| t.item));
        // 2 waits behind 1, in flight: only the withdrawal can have it.
        let withdrawn = queue.withdraw(|item| *item == 2, || {});
        if let Some(key) = first.key {
            queue.finished(key);
        }
        assert_eq!((withdrawn, waiting.join().unwrap()), (Some(2), None));
        assert_eq!(queue.keys_tracked(), 0);
    });
}

/// Invariant 5 of `keyed`: a take that frees a full key's place wakes the
/// producer waiting for it (the place kept for it), whether that producer
/// is registering or already registered, and its push then gets in.
///
/// Guard: `Keyed::room_freed` wakes one waiter per free place. Shown to
/// fail by waking none: the producer parks forever (deadlock).
#[test]
fn loom_a_take_gives_a_full_keys_place_to_the_producer_waiting_for_it() {
    loom::model(|| {
        let queue = backpressure_queue(1);
        assert!(push_a(&queue, 1, &mut false), "a is empty");
        let producer = super::spawn(&queue, move |queue| {
            let (mut keys, mut granted) = (key_a(), false);
            assert!(block_on(queue.key_place(&mut keys, &mut granted)) == KeyPlace::Mine);
            push_a(&queue, 2, &mut granted)
        });
        assert_eq!(block_on(queue.take()).map(|t| t.item), Some(1));
        assert!(producer.join().unwrap(), "the waiting producer got in");
        assert_eq!(queue.depth().0, 1);
    });
}

/// Invariant 5 of `keyed`, one grant at a time: two places of a full key
/// free before either waiting producer runs; the first place is kept for
/// one of them, and its push passes the second to the other, so both get
/// in, whatever the interleaving.
///
/// Guard: a grant holder's push wakes the next in line
/// (`Keyed::place` sets `passed`). Shown to fail by not passing it on:
/// the second producer parks forever (deadlock).
#[test]
fn loom_a_grant_holders_push_passes_the_next_place_on() {
    loom::model(|| {
        let queue = backpressure_queue(2);
        let mut granted = false;
        assert!(push_a(&queue, 1, &mut granted) && push_a(&queue, 2, &mut granted));
        let producers: Vec<_> = [10, 11]
            .into_iter()
            .map(|item| {
                super::spawn(&queue, move |queue| {
                    // As a front does: a push that finds the key full again
                    // (a place it saw free, not kept for it, went to the
                    // other producer) waits again.
                    let (mut keys, mut granted) = (key_a(), false);
                    while block_on(queue.key_place(&mut keys, &mut granted)) == KeyPlace::Mine {
                        if push_a(&queue, item, &mut granted) {
                            return true;
                        }
                    }
                    false
                })
            })
            .collect();
        assert_eq!(take_one(&queue), Some(1));
        assert_eq!(take_one(&queue), Some(2));
        for producer in producers {
            assert!(producer.join().unwrap(), "each waiting producer got in");
        }
        assert_eq!(queue.depth().0, 2);
    });
}

/// Invariant 5 of `keyed`: a producer that is given a full key's place and
/// then gives up (a `send` or call dropped while it waits for a queue
/// slot, holding the place) passes the place on to the next in line.
///
/// Guard: `Keyed::leave_room` gives a lapsed grant to the next waiter
/// (`grant_next`). Shown to fail by letting it lapse: the second producer
/// parks forever (deadlock).
#[test]
fn loom_a_producer_that_gives_up_its_kept_place_passes_it_on() {
    loom::model(|| {
        let queue = backpressure_queue(1);
        assert!(push_a(&queue, 1, &mut false), "a is empty");
        // Gives up as soon as it has room (a kept place, or none).
        let quitter = super::spawn(&queue, move |queue| {
            let (mut keys, mut granted) = (key_a(), false);
            assert!(block_on(queue.key_place(&mut keys, &mut granted)) == KeyPlace::Mine);
            queue.leave_key_room(&keys, None, granted);
        });
        let stayer = super::spawn(&queue, move |queue| {
            let (mut keys, mut granted) = (key_a(), false);
            while block_on(queue.key_place(&mut keys, &mut granted)) == KeyPlace::Mine {
                if push_a(&queue, 2, &mut granted) {
                    return true;
                }
            }
            false
        });
        assert_eq!(take_one(&queue), Some(1));
        assert!(stayer.join().unwrap(), "the producer that stayed got in");
        // If the quitter came second, it waits for the place 2 holds.
        assert_eq!(take_one(&queue), Some(2));
        quitter.join().unwrap();
        assert_eq!(queue.depth().0, 0);
    });
}

/// Invariant 5 of `keyed`, places taken before a queue slot: two
/// producers of a key nothing tracks take places the way a `send` does
/// (the first at once, interning the key; the second in line behind it),
/// and the first one's push passes the next place on, whatever the
/// interleaving.
///
/// Guard: `Keyed::take_place` registers a producer that finds a place
/// kept for another (`granted`), rather than letting it push. Shown to
/// fail by granting it a place of its own: both hold places at once and
/// the debug assertion on the grant count fires, or the key takes more
/// than one place.
#[test]
fn loom_places_taken_before_a_slot_go_one_at_a_time_in_line() {
    loom::model(|| {
        let queue = backpressure_queue(2);
        let producers: Vec<_> = [10, 11]
            .into_iter()
            .map(|item| {
                super::spawn(&queue, move |queue| {
                    let (mut keys, mut granted) = (key_a(), false);
                    assert!(block_on(queue.key_place(&mut keys, &mut granted)) == KeyPlace::Mine);
                    assert!(granted, "a place of its own");
                    let mut batch = vec![item];
                    let (mut shed, mut reasons) = (Vec::new(), Vec::new());
                    queue.push_keyed(
                        &mut batch,
                        &mut keys,
                        &mut granted,
                        &mut shed,
                        &mut reasons,
                        &mut Vec::new(),
                        |_, _| {},
                    );
                    batch.is_empty()
                })
            })
            .collect();
        for producer in producers {
            assert!(producer.join().unwrap(), "each producer got in");
        }
        assert_eq!(queue.depth().0, 2);
        assert_eq!(take_one(&queue).map(|_| ()), Some(()));
    });
}
