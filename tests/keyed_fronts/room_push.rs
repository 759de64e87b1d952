//! Keyed `Backpressure` on the push front (`Feeder::send` / `offer`): a
//! full key's room is first come, first served, also when several places
//! free at once and when the queue is full too; producers waiting for one
//! key hold no queue slot or credit, so other keys go on, and a dropped
//! `send` gives everything back. (From a fresh-user trial that found the
//! last three broken.)

use std::sync::Arc;
use std::time::Duration;

use super::support::{
    Item, Log, Rig, drive_youngest_first, finish, launch, ms, of, push_books, send_on,
};
use backpressure_pipeline::{FanOutConfig, IntakeEnd, Offer, ShedPolicy};
use tokio::sync::Semaphore;
use tokio::time::sleep;
use tokio_test::{assert_pending, assert_ready_eq};

fn rig(workers: usize, capacity: usize, per_key: usize) -> Rig {
    launch(super::support::config(workers, capacity, per_key))
}

// ===== scenario 1: several places free at once =====

#[tokio::test(start_paused = true)]
async fn two_places_free_at_once_send_waiters_enter_in_line_polled_youngest_first() {
    let rig = rig(1, 16, 2);
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await; // a0 runs, gated
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    assert_eq!(f.offer(('a', 2)), Offer::Queued);
    assert_eq!(f.offer(('a', 3)), Offer::Full(('a', 3)));
    let mut s1 = send_on(f, ('a', 11));
    let mut s2 = send_on(f, ('a', 12));
    let mut s3 = send_on(f, ('a', 13));
    assert_pending!(s1.poll());
    assert_pending!(s2.poll());
    assert_pending!(s3.poll());
    assert_eq!(rig.shutdown.stats().produced, 3);
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // a0 ends; a1 and a2 are taken: both places free
    let stats = rig.shutdown.stats();
    assert_eq!(
        (stats.queue_depth, stats.in_flight, stats.processed),
        (0, 0, 3)
    );
    assert_eq!(
        (s1.is_woken(), s2.is_woken(), s3.is_woken()),
        (true, false, false)
    );
    // A producer that did not wait cannot take a free place.
    assert_eq!(f.offer(('a', 99)), Offer::Full(('a', 99)));
    // Another key is not held up.
    assert_eq!(f.offer(('b', 1)), Offer::Queued);
    assert_pending!(s3.poll());
    assert_pending!(s2.poll());
    assert_ready_eq!(s1.poll(), Offer::Queued);
    assert_eq!((s2.is_woken(), s3.is_woken()), (true, false));
    assert_pending!(s3.poll());
    assert_ready_eq!(s2.poll(), Offer::Queued);
    assert!(!s3.is_woken(), "the key is full again");
    assert_pending!(s3.poll());
    sleep(ms(1)).await;
    assert!(s3.is_woken());
    assert_ready_eq!(s3.poll(), Offer::Queued);
    let (starts, out, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 1, 2, 11, 12, 13]);
    assert_eq!(of(&out, 'a'), [0, 1, 2, 11, 12, 13]);
    assert_eq!(of(&out, 'b'), [1]);
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.delivered,
            report.dropped
        ),
        (7, 7, 7, 0)
    );
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn per_key_three_four_send_waiters_driven_youngest_first_enter_in_order() {
    let rig = rig(1, 16, 3);
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await;
    for i in 1..=3 {
        assert_eq!(f.offer(('a', i)), Offer::Queued);
    }
    let mut waiters: Vec<_> = (11..=14).map(|i| (i, send_on(f, ('a', i)))).collect();
    for (_, w) in &mut waiters {
        assert_pending!(w.poll());
    }
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // three places free at once
    let entered = drive_youngest_first(waiters).await;
    assert_eq!(entered, [11, 12, 13, 14]);
    let (starts, out, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 1, 2, 3, 11, 12, 13, 14]);
    assert_eq!(of(&out, 'a'), [0, 1, 2, 3, 11, 12, 13, 14]);
    assert_eq!(push_books(&report), (8, 8, 0));
}

#[tokio::test(start_paused = true)]
async fn two_keys_at_once_each_keys_waiters_enter_in_their_own_line() {
    let rig = rig(2, 32, 2);
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    assert_eq!(f.offer(('b', 0)), Offer::Queued);
    sleep(ms(1)).await; // both gated in flight
    for i in 1..=2 {
        assert_eq!(f.offer(('a', i)), Offer::Queued);
        assert_eq!(f.offer(('b', i)), Offer::Queued);
    }
    // Interleaved waiters on both keys.
    let mut waiters = Vec::new();
    for i in 11..=13 {
        waiters.push((i, send_on(f, ('a', i))));
        waiters.push((100 + i, send_on(f, ('b', i))));
    }
    for (_, w) in &mut waiters {
        assert_pending!(w.poll());
    }
    rig.gate.add_permits(2);
    sleep(ms(1)).await;
    let entered = drive_youngest_first(waiters).await;
    let a: Vec<u32> = entered.iter().copied().filter(|i| *i < 100).collect();
    let b: Vec<u32> = entered.iter().copied().filter(|i| *i > 100).collect();
    assert_eq!(a, [11, 12, 13]);
    assert_eq!(b, [111, 112, 113]);
    let (starts, out, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 1, 2, 11, 12, 13]);
    assert_eq!(of(&starts, 'b'), [0, 1, 2, 11, 12, 13]);
    assert_eq!(of(&out, 'a'), [0, 1, 2, 11, 12, 13]);
    assert_eq!(of(&out, 'b'), [0, 1, 2, 11, 12, 13]);
    assert_eq!(push_books(&report), (12, 12, 0));
}

// ===== scenario 2: waiters dropped at every stage =====

#[tokio::test(start_paused = true)]
async fn a_woken_sender_dropped_before_it_ran_passes_its_place_and_one_in_line_leaves_none() {
    let rig = rig(1, 16, 2);
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    assert_eq!(f.offer(('a', 2)), Offer::Queued);
    let mut s1 = send_on(f, ('a', 11));
    let mut s2 = send_on(f, ('a', 12));
    let mut s3 = send_on(f, ('a', 13));
    let mut s4 = send_on(f, ('a', 14));
    for s in [&mut s1, &mut s2, &mut s3, &mut s4] {
        assert_pending!(s.poll());
    }
    // s2 leaves while still in line (never woken): nothing owed.
    drop(s2);
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // two places free
    assert!(s1.is_woken());
    assert!(!s3.is_woken());
    // s1 was woken with a place and dropped before it ran: s3 gets it.
    drop(s1);
    assert!(s3.is_woken());
    assert!(!s4.is_woken());
    assert_pending!(s4.poll());
    assert_ready_eq!(s3.poll(), Offer::Queued);
    assert!(s4.is_woken());
    assert_ready_eq!(s4.poll(), Offer::Queued);
    let (starts, out, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 1, 2, 13, 14]);
    assert_eq!(of(&out, 'a'), [0, 1, 2, 13, 14]);
    assert_eq!(push_books(&report), (5, 5, 0));
}

#[tokio::test(start_paused = true)]
async fn the_last_waiter_dropped_with_its_place_lets_it_lapse_to_a_fresh_offer() {
    let rig = rig(1, 16, 1);
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    let mut s1 = send_on(f, ('a', 11));
    assert_pending!(s1.poll());
    rig.gate.add_permits(1);
    sleep(ms(1)).await;
    assert!(s1.is_woken());
    assert_eq!(f.offer(('a', 98)), Offer::Full(('a', 98)), "kept for s1");
    let stats = rig.shutdown.stats();
    assert_eq!(
        (stats.queue_depth, stats.in_flight, stats.keys),
        (0, 0, 1),
        "a kept for s1"
    );
    drop(s1);
    assert_eq!(
        rig.shutdown.stats().keys,
        0,
        "the grant lapsed: a is forgotten"
    );
    assert_eq!(f.offer(('a', 99)), Offer::Queued, "the place lapsed");
    let (starts, out, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 1, 99]);
    assert_eq!(of(&out, 'a'), [0, 1, 99]);
    assert_eq!((report.produced, report.processed), (3, 3));
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_a_sender_holds_a_place_answers_every_waiter_closed() {
    let rig = rig(1, 16, 2);
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    assert_eq!(f.offer(('b', 0)), Offer::Queued);
    sleep(ms(1)).await; // a0 runs; b0 queued behind the one worker
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    assert_eq!(f.offer(('a', 2)), Offer::Queued);
    assert_eq!(f.offer(('b', 1)), Offer::Queued);
    let mut s1 = send_on(f, ('a', 11));
    let mut s2 = send_on(f, ('a', 12));
    let mut t1 = send_on(f, ('b', 11));
    assert_pending!(s1.poll());
    assert_pending!(s2.poll());
    assert_pending!(t1.poll());
    rig.gate.add_permits(1);
    // a0 ends and the worker takes b0 (round robin), gated: a has 2
    // queued, b has 1: nothing frees in a. Give it 1 ms.
    sleep(ms(1)).await;
    let stats = rig.shutdown.stats();
    assert_eq!(
        (stats.produced, stats.queue_depth, stats.in_flight),
        (5, 3, 1)
    );
    rig.shutdown.shutdown();
    assert_ready_eq!(s2.poll(), Offer::Closed(('a', 12)));
    assert_ready_eq!(s1.poll(), Offer::Closed(('a', 11)));
    assert_ready_eq!(t1.poll(), Offer::Closed(('b', 11)));
    assert_eq!(f.offer(('c', 1)), Offer::Closed(('c', 1)));
    rig.gate.add_permits(1);
    let (starts, out, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 1, 2]);
    assert_eq!(of(&out, 'a'), [0, 1, 2]);
    assert_eq!(of(&out, 'b'), [0, 1]);
    assert_eq!(
        (report.produced, report.processed, report.cancelled),
        (5, 5, 0)
    );
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_after_a_grant_before_the_holder_ran_answers_it_closed() {
    let rig = rig(1, 16, 2);
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    assert_eq!(f.offer(('a', 2)), Offer::Queued);
    let mut s1 = send_on(f, ('a', 11));
    let mut s2 = send_on(f, ('a', 12));
    assert_pending!(s1.poll());
    assert_pending!(s2.poll());
    rig.gate.add_permits(1);
    sleep(ms(1)).await;
    assert!(s1.is_woken());
    let controller = rig.shutdown.controller();
    controller.shutdown();
    assert_eq!(controller.stats().produced, 3);
    assert!(f.is_closed());
    assert_ready_eq!(s1.poll(), Offer::Closed(('a', 11)));
    assert_ready_eq!(s2.poll(), Offer::Closed(('a', 12)));
    let (starts, out, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 1, 2]);
    assert_eq!(of(&out, 'a'), [0, 1, 2]);
    assert_eq!(
        (report.produced, report.processed, report.cancelled),
        (3, 3, 0)
    );
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn abort_while_senders_wait_on_two_keys_cancels_the_queue_and_refuses_them() {
    let rig = rig(2, 16, 1);
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    assert_eq!(f.offer(('b', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    assert_eq!(f.offer(('b', 1)), Offer::Queued);
    let mut s = send_on(f, ('a', 11));
    let mut t = send_on(f, ('b', 11));
    assert_pending!(s.poll());
    assert_pending!(t.poll());
    rig.shutdown.abort();
    assert_ready_eq!(t.poll(), Offer::Closed(('b', 11)));
    assert_ready_eq!(s.poll(), Offer::Closed(('a', 11)));
    let (starts, out, report) = finish(rig).await;
    assert_eq!(starts.len(), 2);
    assert!(out.is_empty());
    assert_eq!(
        (report.produced, report.processed, report.cancelled),
        (4, 0, 4)
    );
    assert_eq!(report.aborted + report.workers_joined, 2);
    assert!(report.is_conserved(), "{report}");
}

// ===== the global room beside the key's room =====

/// Two producers find key `a` full (it holds `per_key_capacity` items, which
/// here is also the whole queue). They began to wait in the order s1, s2;
/// both places free at once; s2 is polled first.
#[tokio::test(start_paused = true)]
async fn senders_that_find_a_full_key_in_a_full_queue_enter_first_come_first_served() {
    let rig = rig(1, 2, 2);
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    assert_eq!(f.offer(('a', 2)), Offer::Queued);
    let mut s1 = send_on(f, ('a', 11));
    let mut s2 = send_on(f, ('a', 12));
    assert_pending!(s1.poll());
    assert_pending!(s2.poll());
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // a1 and a2 are taken: two places free
    let entered = drive_youngest_first(vec![(11, s1), (12, s2)]).await;
    let (starts, out, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 1, 2, 11, 12], "start order");
    assert_eq!(of(&out, 'a'), [0, 1, 2, 11, 12], "result order");
    assert_eq!(entered, [11, 12], "entry order");
    assert!(report.is_conserved(), "{report}");
}

/// A hot key's producers waiting for its room must not keep a quiet key out
/// of a queue that has room.
#[tokio::test(start_paused = true)]
async fn senders_waiting_on_a_full_key_do_not_fill_the_queue_for_other_keys() {
    let rig = rig(2, 4, 1);
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await; // a0 runs, gated; the second worker idles
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    let mut waiting: Vec<_> = (11..=13).map(|i| send_on(f, ('a', i))).collect();
    for w in &mut waiting {
        assert_pending!(w.poll());
    }
    let stats = rig.shutdown.stats();
    assert_eq!(
        (stats.queue_depth, stats.in_flight),
        (1, 1),
        "1 of 4 queued"
    );
    // Key b is empty and the queue holds 1 item of 4.
    let offered = f.offer(('b', 1));
    let b_queued = offered == Offer::Queued;
    let mut late = send_on(f, ('c', 2));
    let polled = late.poll();
    sleep(ms(1)).await;
    let started = rig.starts.lock().unwrap().clone();
    drop(waiting);
    drop(late);
    rig.gate.add_permits(1);
    let (_, _, report) = finish(rig).await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(
        (offered, polled, of(&started, 'b'), of(&started, 'c')),
        (
            Offer::Queued,
            std::task::Poll::Ready(Offer::Queued),
            vec![1],
            vec![2]
        ),
        "offer(b1) queued: {b_queued}"
    );
}

// ===== cancel safety of `send` =====

/// `send`'s cancel safety: "Nothing else is lost: the place in line is
/// given up". A send dropped while it waits for its key's room must give
/// its slot of the queue back. (Control: the same run without the send.)
#[tokio::test(start_paused = true)]
async fn a_send_dropped_while_waiting_for_its_key_gives_its_queue_slot_back() {
    for with_dropped_send in [false, true] {
        let rig = rig(1, 2, 1);
        let f = &rig.feeder;
        assert_eq!(f.offer(('a', 0)), Offer::Queued);
        sleep(ms(1)).await; // a0 runs, gated
        assert_eq!(f.offer(('a', 1)), Offer::Queued); // key a is full; 1 of 2 queued
        if with_dropped_send {
            let mut s = send_on(f, ('a', 11));
            assert_pending!(s.poll());
            drop(s); // gives up
        }
        rig.gate.add_permits(1);
        sleep(ms(1)).await; // a0 and a1 done: the pipeline is empty
        let stats = rig.shutdown.stats();
        assert_eq!(
            (stats.queue_depth, stats.in_flight, stats.processed),
            (0, 0, 2)
        );
        // A gated item of another key occupies the worker; then two offers
        // into an empty queue of capacity 2.
        assert_eq!(f.offer(('c', 0)), Offer::Queued);
        sleep(ms(1)).await;
        let first = f.offer(('x', 1));
        let depth = rig.shutdown.stats().queue_depth;
        let second = f.offer(('y', 1));
        rig.gate.add_permits(1);
        let (_, _, report) = finish(rig).await;
        assert!(report.is_conserved(), "{report}");
        assert_eq!(
            (first, depth, second),
            (Offer::Queued, 1, Offer::Queued),
            "with a dropped send: {with_dropped_send}"
        );
    }
}

/// `send`'s cancel safety: "a credit it held goes back". With settlement, a
/// send dropped while it waits for its key's room must give its settlement
/// credit back.
#[tokio::test(start_paused = true)]
async fn a_send_dropped_while_waiting_for_its_key_gives_its_settlement_credit_back() {
    for with_dropped_send in [false, true] {
        credit_run(with_dropped_send).await;
    }
}

async fn credit_run(with_dropped_send: bool) {
    let starts: Log = Arc::default();
    let gate = Arc::new(Semaphore::new(0));
    let (config, settlements) = FanOutConfig::new(1, ShedPolicy::Backpressure)
        .capacity(16)
        .key_by(|item: &Item| item.0)
        .per_key_capacity(1)
        .settle_capacity(3)
        .settle_by(|item: &Item| *item);
    let (log, open) = (Arc::clone(&starts), Arc::clone(&gate));
    let (feeder, results, shutdown) = backpressure_pipeline::feeder(config, move |item: Item| {
        let (log, open) = (Arc::clone(&log), Arc::clone(&open));
        async move {
            log.lock().unwrap().push(item);
            if item.1 == 0 {
                open.acquire().await.unwrap().forget();
            }
            item
        }
    });
    use futures::StreamExt;
    let settler = tokio::spawn(settlements.collect::<Vec<_>>());
    let reader = tokio::spawn(results.collect::<Vec<_>>());
    assert_eq!(feeder.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await; // a0 runs, gated: 1 unsettled
    assert_eq!(feeder.offer(('a', 1)), Offer::Queued); // 2 unsettled; a is full
    if with_dropped_send {
        let mut s = send_on(&feeder, ('a', 11));
        assert_pending!(s.poll()); // holds the 3rd credit, waits for a's room
        drop(s);
    }
    rig_release(&gate).await; // a0 and a1 settle: nothing unsettled
    assert_eq!(shutdown.stats().processed, 2);
    assert_eq!(feeder.offer(('c', 0)), Offer::Queued); // gated in flight: 1 unsettled
    sleep(ms(1)).await;
    let first = feeder.offer(('x', 1));
    let second = feeder.offer(('y', 1));
    gate.add_permits(1);
    drop(feeder);
    let report = tokio::time::timeout(Duration::from_secs(30), shutdown.join())
        .await
        .expect("join hung");
    let _ = reader.await.unwrap();
    let records = settler.await.unwrap();
    assert!(report.is_conserved(), "{report}");
    assert_eq!(records.len() as u64, report.produced);
    assert_eq!(
        (first, second),
        (Offer::Queued, Offer::Queued),
        "3 credits, 1 unsettled; with a dropped send: {with_dropped_send}"
    );
}

async fn rig_release(gate: &Semaphore) {
    gate.add_permits(1);
    sleep(ms(1)).await;
}

/// Dropping every handle but the waiting senders' own clones: they still
/// get in, in line, and intake then ends `Exhausted`.
#[tokio::test(start_paused = true)]
async fn waiting_senders_keep_intake_open_and_get_in_after_the_main_handle_is_dropped() {
    let Rig {
        feeder,
        results,
        shutdown,
        starts,
        gate,
    } = rig(1, 16, 1);
    assert_eq!(feeder.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(feeder.offer(('a', 1)), Offer::Queued);
    let mut s1 = send_on(&feeder, ('a', 11));
    let mut s2 = send_on(&feeder, ('a', 12));
    assert_pending!(s1.poll());
    assert_pending!(s2.poll());
    drop(feeder);
    assert!(!shutdown.is_shutting_down());
    gate.add_permits(1);
    sleep(ms(1)).await;
    let entered = drive_youngest_first(vec![(11, s1), (12, s2)]).await;
    assert_eq!(entered, [11, 12]);
    let (out, report) =
        tokio::time::timeout(Duration::from_secs(30), shutdown.join_collect(results))
            .await
            .expect("join hung");
    assert_eq!(of(&starts.lock().unwrap(), 'a'), [0, 1, 11, 12]);
    assert_eq!(of(&out, 'a'), [0, 1, 11, 12]);
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_eq!((report.produced, report.processed), (4, 4));
    assert!(report.is_conserved(), "{report}");
}

/// Seven keyed `send`s dropped while they wait for their key leave a queue
/// of capacity 8 that still takes seven items of other keys (each dropped
/// send kept a slot before the fix).
#[tokio::test(start_paused = true)]
async fn seven_dropped_keyed_sends_leave_a_queue_of_capacity_8_that_takes_seven_more() {
    let rig = rig(1, 8, 1);
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    for i in 11..18 {
        let mut s = send_on(f, ('a', i));
        assert_pending!(s.poll());
        drop(s);
    }
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // everything done: the queue is empty
    assert_eq!(f.offer(('c', 0)), Offer::Queued);
    sleep(ms(1)).await; // c0 in flight, gated
    let offers: Vec<Offer<Item>> = (1..=7u8)
        .map(|i| f.offer((char::from(b'p' + i), 1)))
        .collect();
    let queued = offers.iter().filter(|o| o.is_queued()).count();
    let depth = rig.shutdown.stats().queue_depth;
    rig.gate.add_permits(1);
    let (_, _, report) = finish(rig).await;
    assert!(report.is_conserved(), "{report}");
    // Seven keys, one item each: all 7 fit.
    assert_eq!((queued, depth), (7, 7));
}
