//! Keyed `Backpressure` on the push front (`Feeder::send` / `offer`) with
//! settlement and stops: drops at every stage of a send give back its place
//! in line, a place kept for it, its slot and its credit; every stop answers
//! sends waiting for a credit at once; the books and the closures after
//! `join`. (From a fresh-user trial.)

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::support::{
    Item, Rig, config, drive_youngest_first, finish, finish_beside, launch, ms, of, push_books,
    send_on,
};
use backpressure_pipeline::{
    CancellationToken, FanOutConfig, IntakeEnd, Offer, Outcome, Settlement, Settlements,
    ShedPolicy, Stage,
};
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep};
use tokio_test::{assert_pending, assert_ready_eq};

/// Reads every settlement record ready now (each read gives a credit back).
fn read_ready(settlements: &mut Settlements<Item>, into: &mut Vec<Settlement<Item>>) -> usize {
    let mut n = 0;
    while let Some(Some(record)) = settlements.next().now_or_never() {
        into.push(record);
        n += 1;
    }
    n
}

// ===== first come, first served =====

/// per_key_capacity 3, three places free at once, two waiters. The kept
/// place is one at a time; a place nobody waits for is anyone's.
#[tokio::test(start_paused = true)]
async fn offers_never_take_a_kept_place_or_jump_the_line_with_three_places_free() {
    let rig = launch(config(1, 16, 3));
    let f = &rig.feeder;
    assert_eq!(f.offer(('x', 0)), Offer::Queued);
    sleep(ms(1)).await;
    for i in 1..=3 {
        assert_eq!(f.offer(('a', i)), Offer::Queued);
    }
    assert_eq!(f.offer(('a', 4)), Offer::Full(('a', 4)));
    let mut s1 = send_on(f, ('a', 11));
    let mut s2 = send_on(f, ('a', 12));
    assert_pending!(s1.poll());
    assert_pending!(s2.poll());
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // x0, a1..a3 done: three places free
    let stats = rig.shutdown.stats();
    assert_eq!(
        (
            stats.queue_depth,
            stats.in_flight,
            stats.processed,
            stats.keys
        ),
        (0, 0, 4, 1)
    );
    assert_eq!((s1.is_woken(), s2.is_woken()), (true, false));
    assert_eq!(
        f.offer(('a', 98)),
        Offer::Full(('a', 98)),
        "s2 still in line"
    );
    assert_pending!(s2.poll());
    assert_ready_eq!(s1.poll(), Offer::Queued);
    assert!(s2.is_woken(), "s1 in: the next place is s2's");
    // One place kept for s2, one free that nobody waits for.
    assert_eq!(f.offer(('a', 97)), Offer::Queued);
    assert_eq!(f.offer(('a', 96)), Offer::Full(('a', 96)));
    assert_ready_eq!(s2.poll(), Offer::Queued);
    let (starts, out, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [1, 2, 3, 11, 97, 12]);
    assert_eq!(of(&out, 'a'), [1, 2, 3, 11, 97, 12]);
    assert_eq!(push_books(&report), (7, 7, 0));
}

/// For per_key_capacity 1, 2 and 3: five senders wait for a full key in a
/// queue that other keys then fill; the others go in, nobody is lost,
/// every key keeps its order.
#[tokio::test(start_paused = true)]
async fn waiters_for_one_full_key_never_keep_other_keys_out_per_key_1_2_3() {
    for per_key in 1..=3u32 {
        let rig = launch(config(1, per_key as usize + 2, per_key as usize));
        let f = &rig.feeder;
        assert_eq!(f.offer(('x', 0)), Offer::Queued);
        sleep(ms(1)).await;
        for i in 1..=per_key {
            assert_eq!(f.offer(('a', i)), Offer::Queued);
        }
        assert_eq!(f.offer(('a', 99)), Offer::Full(('a', 99)));
        let mut waiters: Vec<_> = (11..=15).map(|i| (i, send_on(f, ('a', i)))).collect();
        for (_, w) in &mut waiters {
            assert_pending!(w.poll());
        }
        // The queue has 2 free slots: the waiters for a hold none of them.
        assert_eq!(f.offer(('b', 1)), Offer::Queued, "per_key {per_key}");
        let mut c = send_on(f, ('c', 1));
        assert_ready_eq!(c.poll(), Offer::Queued);
        assert_eq!(f.offer(('d', 1)), Offer::Full(('d', 1)));
        let mut d = send_on(f, ('d', 1));
        assert_pending!(d.poll());
        let stats = rig.shutdown.stats();
        // x, a, b, c, and d, whose place the waiting send holds.
        assert_eq!(
            (stats.queue_depth, stats.in_flight, stats.keys),
            (per_key as usize + 2, 1, 5)
        );
        rig.gate.add_permits(1);
        waiters.push((100, d));
        let entered = drive_youngest_first(waiters).await;
        let a_entered: Vec<u32> = entered.iter().copied().filter(|i| *i < 100).collect();
        assert_eq!(a_entered, [11, 12, 13, 14, 15], "per_key {per_key}");
        let (starts, out, report) = finish(rig).await;
        let mut a: Vec<u32> = (1..=per_key).collect();
        a.extend(11..=15);
        assert_eq!(of(&starts, 'a'), a);
        assert_eq!(of(&out, 'a'), a);
        assert_eq!(
            (of(&out, 'b'), of(&out, 'c'), of(&out, 'd')),
            (vec![1], vec![1], vec![1])
        );
        assert_eq!(
            (
                report.produced,
                report.processed,
                report.dropped,
                report.cancelled
            ),
            (u64::from(per_key) + 9, u64::from(per_key) + 9, 0, 0)
        );
        assert!(report.is_conserved(), "{report}");
    }
}

// ===== drops at every stage =====

/// Sends dropped before their first poll, in the key's line, woken with a
/// place kept but not yet run, and waiting for a queue slot while holding
/// the key's place: afterwards the queue takes exactly `capacity` items of
/// distinct keys, and a key exactly `per_key_capacity`.
#[tokio::test(start_paused = true)]
async fn sends_dropped_at_every_stage_leave_every_slot_and_place_usable() {
    let rig = launch(config(1, 4, 2));
    let f = &rig.feeder;
    drop(f.send(('a', 9))); // never polled
    assert_eq!(f.offer(('x', 0)), Offer::Queued);
    sleep(ms(1)).await; // x0 in flight, gated
    for item in [('a', 1), ('a', 2), ('b', 0), ('c', 0)] {
        assert_eq!(f.offer(item), Offer::Queued);
    }
    assert_eq!(f.offer(('a', 3)), Offer::Full(('a', 3)));
    let mut s10 = send_on(f, ('a', 10));
    let mut s11 = send_on(f, ('a', 11));
    let mut s12 = send_on(f, ('a', 12));
    let mut s13 = send_on(f, ('a', 13));
    for s in [&mut s10, &mut s11, &mut s12, &mut s13] {
        assert_pending!(s.poll());
    }
    drop(s10); // in line
    let stats = rig.shutdown.stats();
    assert_eq!((stats.queue_depth, stats.in_flight, stats.keys), (4, 1, 4));
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // x0 ends; a1 taken and done (a place for s11); b0 taken, gated
    let stats = rig.shutdown.stats();
    assert_eq!(
        (stats.queue_depth, stats.in_flight, stats.processed),
        (2, 1, 2)
    );
    assert_eq!(
        (s11.is_woken(), s12.is_woken(), s13.is_woken()),
        (true, false, false)
    );
    assert_eq!(f.offer(('d', 1)), Offer::Queued);
    assert_eq!(f.offer(('e', 1)), Offer::Queued);
    assert_eq!(
        f.offer(('f', 1)),
        Offer::Full(('f', 1)),
        "the queue is full"
    );
    assert_eq!(
        f.offer(('a', 98)),
        Offer::Full(('a', 98)),
        "a's place is kept for s11"
    );
    drop(s11); // woken with a place kept, never ran
    assert_eq!((s12.is_woken(), s13.is_woken()), (true, false));
    assert_pending!(s12.poll()); // holds a's place, waits for a queue slot
    assert_eq!(
        f.offer(('a', 97)),
        Offer::Full(('a', 97)),
        "a's place is kept for s12"
    );
    drop(s12); // holding the key's place, waiting for a slot
    assert!(s13.is_woken(), "s12's place passed on");
    assert_pending!(s13.poll());
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // b0 ends; c0 taken, gated: a slot for s13
    assert_ready_eq!(s13.poll(), Offer::Queued);
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // c0 ends; a2, d1, e1, a13 done
    let stats = rig.shutdown.stats();
    assert_eq!(
        (
            stats.queue_depth,
            stats.in_flight,
            stats.keys,
            stats.processed,
            stats.produced
        ),
        (0, 0, 0, 8, 8)
    );
    // Exact capacity: 1 in flight, then a key takes 2, the queue 4.
    assert_eq!(f.offer(('z', 0)), Offer::Queued);
    sleep(ms(1)).await;
    let offers: Vec<Offer<Item>> = [
        ('a', 51),
        ('a', 52),
        ('a', 53),
        ('b', 51),
        ('c', 51),
        ('d', 51),
    ]
    .into_iter()
    .map(|item| f.offer(item))
    .collect();
    assert_eq!(
        offers,
        [
            Offer::Queued,
            Offer::Queued,
            Offer::Full(('a', 53)),
            Offer::Queued,
            Offer::Queued,
            Offer::Full(('d', 51)),
        ]
    );
    assert_eq!(rig.shutdown.stats().queue_depth, 4);
    rig.gate.add_permits(1);
    let (starts, out, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [1, 2, 13, 51, 52]);
    assert_eq!(of(&out, 'a'), [1, 2, 13, 51, 52]);
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.delivered,
            report.cancelled
        ),
        (13, 13, 13, 0)
    );
    assert!(report.is_conserved(), "{report}");
}

/// With settlement: a send waiting for a credit (its key had room) and a
/// send holding its key's kept place while it waits for a credit, both
/// dropped: the place passes on, and afterwards exactly `settle_capacity`
/// items can be unsettled again.
#[tokio::test(start_paused = true)]
async fn sends_dropped_while_waiting_for_a_credit_give_back_place_and_credit() {
    let (config, mut settlements) = config(1, 16, 1)
        .settle_capacity(3)
        .settle_by(|item: &Item| *item);
    let rig = launch(config);
    let f = &rig.feeder;
    let mut records = Vec::new();
    assert_eq!(f.offer(('x', 0)), Offer::Queued); // credit 1 of 3
    sleep(ms(1)).await;
    assert_eq!(f.offer(('a', 1)), Offer::Queued); // credit 2; a is full
    let mut s1 = send_on(f, ('a', 11));
    let mut s2 = send_on(f, ('a', 12));
    assert_pending!(s1.poll());
    assert_pending!(s2.poll());
    assert_eq!(f.offer(('b', 1)), Offer::Queued); // credit 3
    let mut s3 = send_on(f, ('c', 1));
    assert_pending!(s3.poll()); // key c has room; no credit
    assert_eq!(f.offer(('d', 1)), Offer::Full(('d', 1)), "no credit");
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // x0, a1, b1 done; their records unread: no credit
    let stats = rig.shutdown.stats();
    // Keys a and c are tracked: a has waiters, c a place s3 holds while it
    // waits for a credit.
    assert_eq!((stats.processed, stats.queue_depth, stats.keys), (3, 0, 2));
    assert_eq!((s1.is_woken(), s2.is_woken()), (true, false));
    assert_pending!(s1.poll()); // a's place kept; waits for a credit
    assert_eq!(f.offer(('a', 98)), Offer::Full(('a', 98)));
    drop(s1); // holding the kept place, waiting for a credit
    assert!(s2.is_woken(), "s1's place passed on");
    drop(s3); // waiting for a credit, holding nothing
    assert_pending!(s2.poll()); // a's place kept; waits for a credit
    assert_eq!(read_ready(&mut settlements, &mut records), 3);
    assert!(s2.is_woken());
    assert_ready_eq!(s2.poll(), Offer::Queued);
    sleep(ms(1)).await; // a12 done
    assert_eq!(read_ready(&mut settlements, &mut records), 1);
    let stats = rig.shutdown.stats();
    assert_eq!((stats.processed, stats.queue_depth, stats.keys), (4, 0, 0));
    // Exactly 3 credits again: 1 in flight, 2 queued, then Full.
    assert_eq!(f.offer(('z', 0)), Offer::Queued);
    sleep(ms(1)).await;
    let offers: Vec<Offer<Item>> = [('p', 1), ('p', 2), ('q', 1), ('r', 1)]
        .into_iter()
        .map(|item| f.offer(item))
        .collect();
    assert_eq!(
        offers,
        [
            Offer::Queued,
            Offer::Full(('p', 2)),
            Offer::Queued,
            Offer::Full(('r', 1))
        ]
    );
    rig.gate.add_permits(1);
    let (starts, out, report, rest) = finish_beside(rig, settlements.collect::<Vec<_>>()).await;
    records.extend(rest);
    let mut keys: Vec<Item> = records.iter().map(|r| r.key).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ('a', 1),
            ('a', 12),
            ('b', 1),
            ('p', 1),
            ('q', 1),
            ('x', 0),
            ('z', 0)
        ]
    );
    assert!(records.iter().all(|r| r.outcome == Outcome::Processed));
    assert_eq!(of(&starts, 'a'), [1, 12]);
    assert_eq!(out.len(), 7);
    assert_eq!((report.produced, report.processed), (7, 7));
    assert!(report.is_conserved(), "{report}");
}

// ===== stops =====

#[derive(Clone, Copy, Debug)]
enum Stop {
    Shutdown,
    Abort,
    Parent,
}

/// "Once a stop (a shutdown, an abort, a cancelled parent token) has
/// returned, every `send` answers `Offer::Closed`, also one that was
/// waiting for room": here the sends wait for a settlement credit, one of
/// them holding its key's kept place.
#[tokio::test(start_paused = true)]
async fn a_stop_answers_closed_to_sends_waiting_for_a_credit() {
    let mut observed = Vec::new();
    for stop in [Stop::Shutdown, Stop::Abort, Stop::Parent] {
        let parent = CancellationToken::new();
        let (config, settlements) = config(1, 16, 1)
            .settle_capacity(3)
            .cancel_token(parent.clone())
            .settle_by(|item: &Item| *item);
        let rig = launch(config);
        let f = &rig.feeder;
        assert_eq!(f.offer(('x', 0)), Offer::Queued);
        sleep(ms(1)).await;
        assert_eq!(f.offer(('a', 1)), Offer::Queued);
        let mut s1 = send_on(f, ('a', 11));
        assert_pending!(s1.poll());
        assert_eq!(f.offer(('b', 1)), Offer::Queued); // no credit left
        rig.gate.add_permits(1);
        sleep(ms(1)).await; // x0, a1, b1 done, unread: s1 granted a's place
        assert!(s1.is_woken());
        assert_pending!(s1.poll()); // holds a's place, waits for a credit
        let mut s2 = send_on(f, ('c', 1));
        assert_pending!(s2.poll()); // waits for a credit
        match stop {
            Stop::Shutdown => rig.shutdown.shutdown(),
            Stop::Abort => rig.shutdown.abort(),
            Stop::Parent => parent.cancel(),
        }
        let offered = f.offer(('d', 1));
        let (p1, p2) = (s1.poll(), s2.poll());
        let (_, _, report, records) = finish_beside(rig, settlements.collect::<Vec<_>>()).await;
        assert_eq!(records.len(), 3, "{stop:?}");
        assert_eq!(
            (report.produced, report.processed, report.cancelled),
            (3, 3, 0),
            "{stop:?}"
        );
        assert_eq!(report.intake, IntakeEnd::Stopped, "{stop:?}");
        assert!(report.is_conserved(), "{report}");
        assert_eq!(offered, Offer::Closed(('d', 1)), "{stop:?}");
        observed.push((format!("{stop:?}"), p1, p2));
    }
    let expected: Vec<_> = ["Shutdown", "Abort", "Parent"]
        .into_iter()
        .map(|stop| {
            (
                stop.to_string(),
                Poll::Ready(Offer::Closed(('a', 11))),
                Poll::Ready(Offer::Closed(('c', 1))),
            )
        })
        .collect();
    assert_eq!(observed, expected, "polled right after the stop");
}

/// A parent token's `cancel()` refuses a sender woken with a kept place
/// that has not run yet, and everyone in line, at once.
#[tokio::test(start_paused = true)]
async fn a_parent_cancel_refuses_a_granted_sender_and_its_line_at_once() {
    let parent = CancellationToken::new();
    let rig = launch(config(1, 16, 1).cancel_token(parent.clone()));
    let f = &rig.feeder;
    assert_eq!(f.offer(('x', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    let mut s1 = send_on(f, ('a', 11));
    let mut s2 = send_on(f, ('a', 12));
    assert_pending!(s1.poll());
    assert_pending!(s2.poll());
    rig.gate.add_permits(1);
    sleep(ms(1)).await;
    assert_eq!((s1.is_woken(), s2.is_woken()), (true, false));
    parent.cancel();
    assert!(f.is_closed());
    assert_eq!(f.offer(('b', 1)), Offer::Closed(('b', 1)));
    assert_ready_eq!(s2.poll(), Offer::Closed(('a', 12)));
    assert_ready_eq!(s1.poll(), Offer::Closed(('a', 11)));
    assert_eq!(rig.shutdown.stats().keys, 0);
    let (starts, out, report) = finish(rig).await;
    assert_eq!((of(&starts, 'a'), of(&out, 'a')), (vec![1], vec![1]));
    assert_eq!((report.produced, report.processed), (2, 2));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert!(report.is_conserved(), "{report}");
}

/// shutdown with a drain_timeout of 10 ms: waiters are refused at once; a
/// handler that never finishes is cut off at the deadline and the queued
/// items are cancelled.
#[tokio::test(start_paused = true)]
async fn a_drain_timeout_cuts_the_stop_short_and_keeps_the_books() {
    let rig = launch(config(1, 4, 1).drain_timeout(ms(10)));
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    assert_eq!(f.offer(('b', 0)), Offer::Queued);
    let mut s1 = send_on(f, ('a', 11));
    assert_pending!(s1.poll());
    let t0 = Instant::now();
    rig.shutdown.shutdown();
    assert_ready_eq!(s1.poll(), Offer::Closed(('a', 11)));
    assert_eq!(f.offer(('c', 1)), Offer::Closed(('c', 1)));
    let (starts, out, report) = finish(rig).await;
    let took = t0.elapsed();
    assert_eq!(starts, [('a', 0)]);
    assert!(out.is_empty());
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.cancelled,
            report.aborted,
            report.workers_joined
        ),
        (3, 0, 3, 1, 0)
    );
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert!(report.is_conserved(), "{report}");
    assert_eq!(took, ms(10));
}

/// Dropping the results and then the handle aborts the pipeline: waiting
/// sends are refused, and the controller gets the report.
#[tokio::test(start_paused = true)]
async fn dropping_both_ends_aborts_and_refuses_waiting_sends() {
    let Rig {
        feeder,
        results,
        shutdown,
        starts,
        ..
    } = launch(config(1, 4, 1));
    let controller = shutdown.controller();
    assert_eq!(feeder.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(feeder.offer(('a', 1)), Offer::Queued);
    let mut s1 = send_on(&feeder, ('a', 11));
    let mut s2 = send_on(&feeder, ('b', 1));
    assert_pending!(s1.poll());
    assert_ready_eq!(s2.poll(), Offer::Queued);
    drop(results);
    assert!(!feeder.is_closed(), "results dropped: processing goes on");
    drop(shutdown);
    assert!(feeder.is_closed(), "both ends dropped: aborted");
    assert_ready_eq!(s1.poll(), Offer::Closed(('a', 11)));
    assert_eq!(feeder.offer(('c', 1)), Offer::Closed(('c', 1)));
    let report = tokio::time::timeout(Duration::from_secs(30), controller.finished())
        .await
        .expect("finished hung");
    assert_eq!(starts.lock().unwrap().clone(), [('a', 0)]);
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.cancelled,
            report.aborted
        ),
        (3, 0, 3, 1)
    );
    assert!(report.is_conserved(), "{report}");
}

/// After `join` returns, every closure given (handler, key function,
/// settlement key) has been dropped and no task the pipeline spawned is
/// alive, though a spare feeder, a controller and the ended settlements
/// stream are still held.
#[tokio::test(start_paused = true)]
async fn after_join_every_closure_is_dropped_and_no_task_is_alive() {
    let (h, k, s) = (Arc::new(()), Arc::new(()), Arc::new(()));
    let (kk, ss) = (Arc::clone(&k), Arc::clone(&s));
    let (config, mut settlements) = FanOutConfig::new(2, ShedPolicy::Backpressure)
        .capacity(4)
        .key_by(move |item: &Item| {
            let _ = &kk;
            item.0
        })
        .per_key_capacity(2)
        .settle_capacity(8)
        .settle_by(move |item: &Item| {
            let _ = &ss;
            *item
        });
    let gate = Arc::new(Semaphore::new(0));
    let (open, hh) = (Arc::clone(&gate), Arc::clone(&h));
    let (feeder, results, shutdown) = backpressure_pipeline::feeder(config, move |item: Item| {
        let (open, _h) = (Arc::clone(&open), Arc::clone(&hh));
        async move {
            if item.1 == 0 {
                open.acquire().await.unwrap().forget();
            }
            item
        }
    });
    let spare = feeder.clone();
    let controller = shutdown.controller();
    assert_eq!(feeder.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(feeder.offer(('a', 1)), Offer::Queued);
    assert_eq!(feeder.offer(('a', 2)), Offer::Queued);
    let mut s1 = send_on(&feeder, ('a', 11));
    assert_pending!(s1.poll());
    shutdown.shutdown();
    assert_ready_eq!(s1.poll(), Offer::Closed(('a', 11)));
    drop(s1);
    gate.add_permits(1);
    drop(feeder);
    let ((out, report), records) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(
            shutdown.join_collect(results),
            (&mut settlements).collect::<Vec<_>>()
        )
    })
    .await
    .expect("join hung");
    assert_eq!(out, [('a', 0), ('a', 1), ('a', 2)]);
    assert_eq!(records.len(), 3);
    assert_eq!((report.produced, report.processed), (3, 3));
    assert!(report.is_conserved(), "{report}");
    assert_eq!(
        (
            Arc::strong_count(&h),
            Arc::strong_count(&k),
            Arc::strong_count(&s)
        ),
        (1, 1, 1),
        "handler, key function, settlement key"
    );
    assert_eq!(
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        0
    );
    assert_eq!(spare.offer(('b', 1)), Offer::Closed(('b', 1)));
    assert_eq!(controller.stats().produced, 3);
}

/// A cancelled stop while records are in: settled outcomes match the
/// report's counters, one record per item, after an abort with items
/// queued and in flight and waiters on two keys.
#[tokio::test(start_paused = true)]
async fn an_abort_with_waiters_on_two_keys_settles_every_item_once() {
    let (config, settlements) = config(2, 4, 1)
        .settle_capacity(16)
        .settle_by(|item: &Item| *item);
    let rig = launch(config);
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    assert_eq!(f.offer(('b', 0)), Offer::Queued);
    sleep(ms(1)).await; // both in flight, gated
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    assert_eq!(f.offer(('b', 1)), Offer::Queued);
    let mut s1 = send_on(f, ('a', 11));
    let mut s2 = send_on(f, ('b', 11));
    let mut s3 = send_on(f, ('c', 11));
    assert_pending!(s1.poll());
    assert_pending!(s2.poll());
    assert_ready_eq!(s3.poll(), Offer::Queued);
    rig.shutdown.abort();
    assert_ready_eq!(s1.poll(), Offer::Closed(('a', 11)));
    assert_ready_eq!(s2.poll(), Offer::Closed(('b', 11)));
    let (_, out, report, mut records) = finish_beside(rig, settlements.collect::<Vec<_>>()).await;
    records.sort_by_key(|r| r.key);
    let got: Vec<(Item, Outcome)> = records.iter().map(|r| (r.key, r.outcome)).collect();
    assert_eq!(
        got,
        [
            (('a', 0), Outcome::Cancelled(Stage::InFlight)),
            (('a', 1), Outcome::Cancelled(Stage::Queued)),
            (('b', 0), Outcome::Cancelled(Stage::InFlight)),
            (('b', 1), Outcome::Cancelled(Stage::Queued)),
            (('c', 11), Outcome::Cancelled(Stage::Queued)),
        ]
    );
    assert!(out.is_empty());
    assert_eq!(
        (report.produced, report.cancelled, report.aborted),
        (5, 5, 2)
    );
    assert!(report.is_conserved(), "{report}");
}

/// The same stop as above on an unkeyed `Backpressure` pipeline (to see
/// whether the keyed path is to blame): a send waiting for a credit.
#[tokio::test(start_paused = true)]
async fn an_unkeyed_send_waiting_for_a_credit_after_a_shutdown() {
    let (config, settlements) = FanOutConfig::new(1, ShedPolicy::Backpressure)
        .capacity(16)
        .settle_capacity(2)
        .settle_by(|item: &Item| *item);
    let rig = launch(config);
    let f = &rig.feeder;
    assert_eq!(f.offer(('x', 0)), Offer::Queued);
    assert_eq!(f.offer(('y', 1)), Offer::Queued);
    let mut s1 = send_on(f, ('z', 1));
    assert_pending!(s1.poll()); // no credit
    rig.shutdown.shutdown();
    let p1 = s1.poll();
    rig.gate.add_permits(1);
    let (_, _, report, records) = finish_beside(rig, settlements.collect::<Vec<_>>()).await;
    assert_eq!(
        (records.len(), report.produced, report.processed),
        (2, 2, 2)
    );
    assert!(report.is_conserved(), "{report}");
    assert_eq!(
        p1,
        Poll::Ready(Offer::Closed(('z', 1))),
        "polled right after the shutdown"
    );
}

/// Offers and sends refused or dropped for a full key, many times over,
/// with settlement: none of them keeps a credit or a slot.
#[tokio::test(start_paused = true)]
async fn refused_offers_and_bounced_sends_for_a_full_key_keep_no_credit_or_slot() {
    // "`key` is called once per item as it enters the queue": counted.
    let keyed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&keyed);
    let (config, mut settlements) = FanOutConfig::new(1, ShedPolicy::Backpressure)
        .capacity(3)
        .key_by(move |item: &Item| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            item.0
        })
        .per_key_capacity(1)
        .settle_capacity(4)
        .settle_by(|item: &Item| *item);
    let rig = launch(config);
    let f = &rig.feeder;
    let mut records = Vec::new();
    assert_eq!(f.offer(('x', 0)), Offer::Queued); // credit 1, in flight
    sleep(ms(1)).await;
    assert_eq!(f.offer(('a', 1)), Offer::Queued); // credit 2, slot 1
    for i in 2..12 {
        assert_eq!(f.offer(('a', i)), Offer::Full(('a', i)));
        let mut s = send_on(f, ('a', 100 + i));
        assert_pending!(s.poll());
        drop(s);
    }
    let offers: Vec<Offer<Item>> = [('b', 1), ('c', 1), ('d', 1)]
        .into_iter()
        .map(|i| f.offer(i))
        .collect();
    // Credits: 4 - 2 = 2 left; slots: 3 - 1 = 2 left.
    assert_eq!(
        offers,
        [Offer::Queued, Offer::Queued, Offer::Full(('d', 1))]
    );
    let stats = rig.shutdown.stats();
    assert_eq!((stats.queue_depth, stats.keys), (3, 4));
    rig.gate.add_permits(1);
    sleep(ms(1)).await;
    assert_eq!(read_ready(&mut settlements, &mut records), 4);
    // Everything settled: 4 credits, 3 slots.
    assert_eq!(f.offer(('z', 0)), Offer::Queued);
    sleep(ms(1)).await;
    let offers: Vec<Offer<Item>> = [('p', 1), ('q', 1), ('r', 1), ('s', 1)]
        .into_iter()
        .map(|i| f.offer(i))
        .collect();
    assert_eq!(
        offers,
        [
            Offer::Queued,
            Offer::Queued,
            Offer::Queued,
            Offer::Full(('s', 1))
        ]
    );
    rig.gate.add_permits(1);
    let (_, out, report, rest) = finish_beside(rig, settlements.collect::<Vec<_>>()).await;
    assert_eq!(records.len() + rest.len(), 8);
    assert_eq!(out.len(), 8);
    // Once per offer or send that got past the slot and credit check
    // (30 offers and sends; d1 and s1 were refused for the queue before
    // being keyed): never twice for one item, not even a bounced send.
    assert_eq!(keyed.load(std::sync::atomic::Ordering::SeqCst), 28);
    assert_eq!(push_books(&report), (8, 8, 0));
}

/// The consequence of the above for a producer task: shut down, then wait
/// for the producer (whose `send` should now answer `Closed`) before
/// reading the settlements.
#[tokio::test(start_paused = true)]
async fn a_producer_awaited_after_shutdown_finishes_before_settlements_are_read() {
    let (config, settlements) = config(1, 16, 1)
        .settle_capacity(2)
        .settle_by(|item: &Item| *item);
    let rig = launch(config);
    assert_eq!(rig.feeder.offer(('x', 0)), Offer::Queued);
    assert_eq!(rig.feeder.offer(('y', 1)), Offer::Queued);
    let producer = {
        let feeder = rig.feeder.clone();
        tokio::spawn(async move { feeder.send(('z', 1)).await })
    };
    sleep(ms(1)).await; // the producer waits for a credit
    rig.shutdown.shutdown();
    rig.gate.add_permits(1);
    let waited = tokio::time::timeout(Duration::from_secs(1), producer).await;
    let (_, _, report, records) = finish_beside(rig, settlements.collect::<Vec<_>>()).await;
    assert_eq!(
        (records.len(), report.produced, report.processed),
        (2, 2, 2)
    );
    assert_eq!(
        waited
            .map(|joined| joined.unwrap())
            .map_err(|_| "still waiting after 1 s"),
        Ok(Offer::Closed(('z', 1)))
    );
}

/// A shutdown, then an abort while it drains: queued items are cancelled,
/// the running one cut off, waiting sends refused, once each.
#[tokio::test(start_paused = true)]
async fn an_abort_during_a_drain_cancels_what_is_left_once() {
    let rig = launch(config(1, 8, 2));
    let f = &rig.feeder;
    assert_eq!(f.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await;
    for item in [('a', 1), ('a', 2), ('b', 1), ('b', 0)] {
        assert_eq!(f.offer(item), Offer::Queued);
    }
    let mut s1 = send_on(f, ('a', 11));
    assert_pending!(s1.poll());
    rig.shutdown.shutdown();
    assert_ready_eq!(s1.poll(), Offer::Closed(('a', 11)));
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // a0 ends; round robin: b1, a1, then b0 (gated); a2 waits
    let stats = rig.shutdown.stats();
    assert_eq!(
        (stats.processed, stats.queue_depth, stats.in_flight),
        (3, 1, 1)
    );
    rig.shutdown.abort();
    let (starts, out, report) = finish(rig).await;
    assert_eq!(
        (of(&starts, 'a'), of(&starts, 'b')),
        (vec![0, 1], vec![1, 0])
    );
    assert!(out.is_empty(), "the abort discards results nobody read yet");
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.cancelled,
            report.aborted,
            report.discarded
        ),
        (5, 3, 2, 1, 3)
    );
    assert!(report.is_conserved(), "{report}");
}

/// s2 began to wait (for a queue slot, its key having room) before s3 began
/// to wait (in the key's line, the key being full by then). The docs:
/// "waiters enter in the order they began to wait"; a's items should start
/// 1, 2, 3.
#[tokio::test(start_paused = true)]
async fn a_sender_that_began_waiting_first_enters_its_key_first_even_after_a_slot_wait() {
    let rig = launch(config(1, 2, 1));
    let f = &rig.feeder;
    assert_eq!(f.offer(('x', 0)), Offer::Queued);
    sleep(ms(1)).await; // x0 in flight, gated
    assert_eq!(f.offer(('b', 0)), Offer::Queued);
    assert_eq!(f.offer(('c', 0)), Offer::Queued); // the queue (2) is full
    let mut s1 = send_on(f, ('a', 1));
    let mut s2 = send_on(f, ('a', 2));
    assert_pending!(s1.poll()); // key a has room: waits for a queue slot
    assert_pending!(s2.poll());
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // x0 ends, b0 taken (gated): one slot, s1's
    assert_ready_eq!(s1.poll(), Offer::Queued); // key a is full now
    let mut s3 = send_on(f, ('a', 3));
    assert_pending!(s3.poll()); // finds a full: in a's line
    assert_pending!(s2.poll());
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // b0 ends, c0 taken (gated): a slot, s2's
    assert_pending!(s2.poll()); // its key is full: it waits
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // c0 ends, a1 taken: a's place frees
    let entered = drive_youngest_first(vec![(2, s2), (3, s3)]).await;
    let (starts, out, report) = finish(rig).await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!((report.produced, report.processed), (6, 6));
    assert_eq!(
        (entered, of(&starts, 'a'), of(&out, 'a')),
        (vec![2, 3], vec![1, 2, 3], vec![1, 2, 3]),
        "entry order, start order, result order of key a"
    );
}
