//! Keyed `Backpressure` on the call front (`Caller::call`) with settlement
//! and stops: drops at every stage of a call give everything back; every
//! stop answers calls waiting for a credit at once; withdrawals, aborts and
//! drain deadlines answer each call by where it was. (From a fresh-user
//! trial.)

use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::support::{
    CallRig as Rig, Item, call, config, finish_calls as finish, launch_calls as launch, ms, of,
};
use backpressure_pipeline::{
    Call, CancellationToken, FanOutConfig, IntakeEnd, Outcome, Rejected, Settlement, Settlements,
    ShedPolicy, Stage,
};
use futures::{FutureExt, StreamExt};
use tokio::time::{Instant, sleep};
use tokio_test::task::{self, Spawn};
use tokio_test::{assert_pending, assert_ready_eq};

type Answer = Result<Item, Rejected<Item>>;

fn produced(rig: &Rig) -> u64 {
    rig.shutdown.stats().produced
}

/// Polls a call that must enter the queue in this poll.
fn enters(rig: &Rig, c: &mut Spawn<Call<Item, Item>>) {
    let before = produced(rig);
    assert_pending!(c.poll());
    assert_eq!(produced(rig), before + 1, "the call entered the queue");
}

/// Polls a call that must keep waiting, outside the queue.
fn waits(rig: &Rig, c: &mut Spawn<Call<Item, Item>>) {
    let before = produced(rig);
    assert_pending!(c.poll());
    assert_eq!(produced(rig), before, "the call waits outside the queue");
}

fn read_ready(settlements: &mut Settlements<Item>, into: &mut Vec<Settlement<Item>>) -> usize {
    let mut n = 0;
    while let Some(Some(record)) = settlements.next().now_or_never() {
        into.push(record);
        n += 1;
    }
    n
}

/// Polls every call until answered (youngest first each round, 1 ms of
/// pipeline between rounds); an optional settlement stream is read each
/// round. Returns (id, answer) in answer order, and the ids in the order
/// they entered the queue.
async fn answers(
    rig: &Rig,
    mut calls: Vec<(u32, Spawn<Call<Item, Item>>)>,
    mut settle: Option<(&mut Settlements<Item>, &mut Vec<Settlement<Item>>)>,
) -> (Vec<(u32, Answer)>, Vec<u32>) {
    let mut out = Vec::new();
    let mut entered = Vec::new();
    let mut pending_ids: Vec<u32> = Vec::new();
    for _ in 0..300 {
        let mut i = calls.len();
        while i > 0 {
            i -= 1;
            let before = produced(rig);
            let polled = calls[i].1.poll();
            let id = calls[i].0;
            if produced(rig) > before && !pending_ids.contains(&id) {
                entered.push(id);
                pending_ids.push(id);
            }
            if let Poll::Ready(answer) = polled {
                out.push((calls.remove(i).0, answer));
                i = calls.len();
            }
        }
        if let Some((s, into)) = settle.as_mut() {
            read_ready(s, into);
        }
        if calls.is_empty() {
            break;
        }
        sleep(ms(1)).await;
    }
    assert!(
        calls.is_empty(),
        "calls never answered: {:?}",
        calls.iter().map(|c| c.0).collect::<Vec<_>>()
    );
    (out, entered)
}

// ===== first come, first served =====

/// For per_key_capacity 1, 2 and 3: five calls wait for a full key; other
/// keys' calls still fill the queue; every key keeps its order.
#[tokio::test(start_paused = true)]
async fn calls_waiting_for_one_full_key_never_keep_other_keys_out_per_key_1_2_3() {
    for per_key in 1..=3u32 {
        let rig = launch(config(1, per_key as usize + 2, per_key as usize));
        let mut all = Vec::new();
        let mut cx = call(&rig, ('x', 0));
        enters(&rig, &mut cx);
        all.push((0, cx));
        sleep(ms(1)).await;
        for i in 1..=per_key {
            let mut c = call(&rig, ('a', i));
            enters(&rig, &mut c);
            all.push((i, c));
        }
        for i in 11..=15 {
            let mut c = call(&rig, ('a', i));
            waits(&rig, &mut c);
            all.push((i, c));
        }
        let mut cb = call(&rig, ('b', 1));
        let mut cc = call(&rig, ('c', 1));
        let mut cd = call(&rig, ('d', 1));
        enters(&rig, &mut cb);
        enters(&rig, &mut cc);
        waits(&rig, &mut cd); // the queue is full
        let stats = rig.shutdown.stats();
        // x, a, b, c, and d, whose place the waiting call holds.
        assert_eq!(
            (stats.queue_depth, stats.in_flight, stats.keys),
            (per_key as usize + 2, 1, 5)
        );
        all.extend([(101, cb), (102, cc), (103, cd)]);
        rig.gate.add_permits(1);
        let (out, _) = answers(&rig, all, None).await;
        let mut oks: Vec<(u32, Item)> = out
            .into_iter()
            .map(|(id, a)| (id, a.expect("Ok")))
            .collect();
        oks.sort();
        assert_eq!(oks.len(), per_key as usize + 9);
        let (starts, report) = finish(rig).await;
        let mut a: Vec<u32> = (1..=per_key).collect();
        a.extend(11..=15);
        assert_eq!(of(&starts, 'a'), a, "per_key {per_key}");
        assert_eq!(
            (of(&starts, 'b'), of(&starts, 'c'), of(&starts, 'd')),
            (vec![1], vec![1], vec![1])
        );
        let n = u64::from(per_key) + 9;
        assert_eq!(
            (
                report.produced,
                report.processed,
                report.delivered,
                report.cancelled
            ),
            (n, n, n, 0)
        );
        assert!(report.is_conserved(), "{report}");
    }
}

// ===== drops at every stage =====

/// Calls dropped before their first poll, in the key's line, woken with a
/// place kept but not yet run, waiting for a slot while holding the key's
/// place, waiting for a slot without one, queued (withdrawn) and running
/// (withdrawn): afterwards the queue takes exactly `capacity` calls of
/// distinct keys, and a key exactly `per_key_capacity`.
#[tokio::test(start_paused = true)]
async fn calls_dropped_at_every_stage_leave_every_slot_and_place_usable() {
    let rig = launch(config(1, 4, 2));
    drop(rig.caller.call(('a', 9))); // never polled
    let mut done = Vec::new();
    let mut cx = call(&rig, ('x', 0));
    enters(&rig, &mut cx);
    sleep(ms(1)).await; // x0 in flight, gated
    let mut ca1 = call(&rig, ('a', 1));
    let mut ca2 = call(&rig, ('a', 2));
    let mut cb0 = call(&rig, ('b', 0));
    let mut cc0 = call(&rig, ('c', 0));
    for c in [&mut ca1, &mut ca2, &mut cb0, &mut cc0] {
        enters(&rig, c);
    }
    let mut c10 = call(&rig, ('a', 10));
    let mut c11 = call(&rig, ('a', 11));
    let mut c12 = call(&rig, ('a', 12));
    let mut c13 = call(&rig, ('a', 13));
    for c in [&mut c10, &mut c11, &mut c12, &mut c13] {
        waits(&rig, c);
    }
    drop(c10); // in line
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // x0, a1 answered (a place for c11); b0 taken, gated
    assert_ready_eq!(cx.poll(), Ok(('x', 0)));
    assert_ready_eq!(ca1.poll(), Ok(('a', 1)));
    let stats = rig.shutdown.stats();
    assert_eq!(
        (stats.queue_depth, stats.in_flight, stats.processed),
        (2, 1, 2)
    );
    assert_eq!(
        (c11.is_woken(), c12.is_woken(), c13.is_woken()),
        (true, false, false)
    );
    let mut cd1 = call(&rig, ('d', 1));
    let mut ce1 = call(&rig, ('e', 1));
    let mut cf1 = call(&rig, ('f', 1));
    enters(&rig, &mut cd1);
    enters(&rig, &mut ce1);
    waits(&rig, &mut cf1); // the queue is full
    drop(cf1); // waiting for a slot, holding no key place
    drop(c11); // woken with a place kept, never ran
    assert_eq!((c12.is_woken(), c13.is_woken()), (true, false));
    waits(&rig, &mut c12); // holds a's place, waits for a slot
    drop(c12); // holding the key's place, waiting for a slot
    assert!(c13.is_woken(), "c12's place passed on");
    waits(&rig, &mut c13);
    drop(ca2); // queued: withdrawn, its slot to c13
    assert!(c13.is_woken());
    enters(&rig, &mut c13);
    assert_eq!(rig.shutdown.stats().queue_depth, 4, "c0, d1, e1, a13");
    drop(cb0); // running (gated): withdrawn, its handler cancelled
    sleep(ms(1)).await; // the worker moves on: c0 taken, gated
    let stats = rig.shutdown.stats();
    assert_eq!(
        (
            stats.queue_depth,
            stats.in_flight,
            stats.cancelled,
            stats.withdrawn
        ),
        (3, 1, 2, 2)
    );
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // c0, d1, e1, a13 answered
    for (c, item) in [
        (&mut cc0, ('c', 0)),
        (&mut cd1, ('d', 1)),
        (&mut ce1, ('e', 1)),
        (&mut c13, ('a', 13)),
    ] {
        assert_ready_eq!(c.poll(), Ok(item));
        done.push(item);
    }
    let stats = rig.shutdown.stats();
    assert_eq!(
        (
            stats.queue_depth,
            stats.in_flight,
            stats.keys,
            stats.processed,
            stats.produced
        ),
        (0, 0, 0, 6, 8)
    );
    // Exact capacity: 1 in flight, then a key takes 2, the queue 4.
    let mut cz = call(&rig, ('z', 0));
    enters(&rig, &mut cz);
    sleep(ms(1)).await;
    let mut probe: Vec<(u32, Spawn<Call<Item, Item>>)> = Vec::new();
    for (id, item, enter) in [
        (51, ('a', 51), true),
        (52, ('a', 52), true),
        (53, ('a', 53), false),
        (151, ('b', 51), true),
        (251, ('c', 51), true),
        (351, ('d', 51), false),
    ] {
        let mut c = call(&rig, item);
        if enter {
            enters(&rig, &mut c);
        } else {
            waits(&rig, &mut c);
        }
        probe.push((id, c));
    }
    assert_eq!(rig.shutdown.stats().queue_depth, 4);
    rig.gate.add_permits(1);
    probe.push((0, cz));
    let (out, mut entered) = answers(&rig, probe, None).await;
    entered.sort();
    assert_eq!(entered, [53, 351]);
    assert!(out.iter().all(|(_, a)| a.is_ok()));
    let (starts, report) = finish(rig).await;
    assert_eq!(
        of(&starts, 'a'),
        [1, 13, 51, 52, 53],
        "a2 was withdrawn unstarted"
    );
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.delivered,
            report.cancelled,
            report.withdrawn
        ),
        (15, 13, 13, 2, 2)
    );
    assert!(report.is_conserved(), "{report}");
}

/// With settlement: a call waiting for a credit (its key had room) and a
/// call holding its key's kept place while waiting for a credit, both
/// dropped: the place passes on, and afterwards exactly `settle_capacity`
/// requests can be unsettled again.
#[tokio::test(start_paused = true)]
async fn calls_dropped_while_waiting_for_a_credit_give_back_place_and_credit() {
    let (config, mut settlements) = config(1, 16, 1)
        .settle_capacity(3)
        .settle_by(|item: &Item| *item);
    let rig = launch(config);
    let mut records = Vec::new();
    let mut cx = call(&rig, ('x', 0));
    enters(&rig, &mut cx); // credit 1 of 3
    sleep(ms(1)).await;
    let mut ca1 = call(&rig, ('a', 1));
    enters(&rig, &mut ca1); // credit 2; a is full
    let mut c11 = call(&rig, ('a', 11));
    let mut c12 = call(&rig, ('a', 12));
    waits(&rig, &mut c11);
    waits(&rig, &mut c12);
    let mut cb1 = call(&rig, ('b', 1));
    enters(&rig, &mut cb1); // credit 3
    let mut cc1 = call(&rig, ('c', 1));
    waits(&rig, &mut cc1); // no credit
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // x0, a1, b1 answered, records unread
    assert_ready_eq!(cx.poll(), Ok(('x', 0)));
    assert_ready_eq!(ca1.poll(), Ok(('a', 1)));
    assert_ready_eq!(cb1.poll(), Ok(('b', 1)));
    assert_eq!((c11.is_woken(), c12.is_woken()), (true, false));
    waits(&rig, &mut c11); // a's place kept; waits for a credit
    drop(c11);
    assert!(c12.is_woken(), "c11's place passed on");
    drop(cc1); // waiting for a credit, holding nothing
    waits(&rig, &mut c12);
    assert_eq!(read_ready(&mut settlements, &mut records), 3);
    assert!(c12.is_woken());
    enters(&rig, &mut c12);
    sleep(ms(1)).await;
    assert_ready_eq!(c12.poll(), Ok(('a', 12)));
    assert_eq!(read_ready(&mut settlements, &mut records), 1);
    let stats = rig.shutdown.stats();
    assert_eq!((stats.processed, stats.queue_depth, stats.keys), (4, 0, 0));
    // Exactly 3 credits again: 1 in flight, 2 queued, then the wait.
    let mut cz = call(&rig, ('z', 0));
    enters(&rig, &mut cz);
    sleep(ms(1)).await;
    let mut cp1 = call(&rig, ('p', 1));
    let mut cp2 = call(&rig, ('p', 2));
    let mut cq1 = call(&rig, ('q', 1));
    let mut cr1 = call(&rig, ('r', 1));
    enters(&rig, &mut cp1);
    waits(&rig, &mut cp2); // key p full
    enters(&rig, &mut cq1);
    waits(&rig, &mut cr1); // no credit
    assert_eq!(rig.shutdown.stats().queue_depth, 2);
    rig.gate.add_permits(1);
    let all = vec![(0, cz), (1, cp1), (2, cp2), (3, cq1), (4, cr1)];
    let (out, _) = answers(&rig, all, Some((&mut settlements, &mut records))).await;
    assert!(out.iter().all(|(_, a)| a.is_ok()), "{out:?}");
    let (starts, report) = finish(rig).await;
    records.extend(settlements.collect::<Vec<_>>().await);
    let mut keys: Vec<Item> = records.iter().map(|r| r.key).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            ('a', 1),
            ('a', 12),
            ('b', 1),
            ('p', 1),
            ('p', 2),
            ('q', 1),
            ('r', 1),
            ('x', 0),
            ('z', 0)
        ]
    );
    assert!(records.iter().all(|r| r.outcome == Outcome::Processed));
    assert_eq!(of(&starts, 'a'), [1, 12]);
    assert_eq!(
        (report.produced, report.processed, report.delivered),
        (9, 9, 9)
    );
    assert!(report.is_conserved(), "{report}");
}

// ===== stops =====

#[derive(Clone, Copy, Debug)]
enum Stop {
    Shutdown,
    Abort,
    Parent,
}

/// "Once a stop has begun every call answers `Rejected::Closed`": calls
/// waiting for a settlement credit, one holding its key's kept place.
#[tokio::test(start_paused = true)]
async fn a_stop_answers_closed_to_calls_waiting_for_a_credit() {
    let mut observed = Vec::new();
    for stop in [Stop::Shutdown, Stop::Abort, Stop::Parent] {
        let parent = CancellationToken::new();
        let (config, settlements) = config(1, 16, 1)
            .settle_capacity(3)
            .cancel_token(parent.clone())
            .settle_by(|item: &Item| *item);
        let rig = launch(config);
        let mut cx = call(&rig, ('x', 0));
        enters(&rig, &mut cx);
        sleep(ms(1)).await;
        let mut ca1 = call(&rig, ('a', 1));
        enters(&rig, &mut ca1);
        let mut c11 = call(&rig, ('a', 11));
        waits(&rig, &mut c11);
        let mut cb1 = call(&rig, ('b', 1));
        enters(&rig, &mut cb1); // no credit left
        rig.gate.add_permits(1);
        sleep(ms(1)).await; // x0, a1, b1 answered, unread: c11 granted a's place
        assert!(c11.is_woken());
        waits(&rig, &mut c11); // holds a's place, waits for a credit
        let mut cc1 = call(&rig, ('c', 1));
        waits(&rig, &mut cc1);
        match stop {
            Stop::Shutdown => rig.shutdown.shutdown(),
            Stop::Abort => rig.shutdown.abort(),
            Stop::Parent => parent.cancel(),
        }
        let (p1, p2) = (c11.poll(), cc1.poll());
        let mut late = call(&rig, ('d', 1));
        assert_ready_eq!(late.poll(), Err(Rejected::Closed(('d', 1))));
        for (c, item) in [
            (&mut cx, ('x', 0)),
            (&mut ca1, ('a', 1)),
            (&mut cb1, ('b', 1)),
        ] {
            assert_ready_eq!(c.poll(), Ok(item));
        }
        let Rig {
            caller, shutdown, ..
        } = rig;
        drop(caller);
        let (report, records) = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(shutdown.join(), settlements.collect::<Vec<_>>())
        })
        .await
        .expect("join hung");
        assert_eq!(records.len(), 3, "{stop:?}");
        assert_eq!(
            (report.produced, report.processed, report.cancelled),
            (3, 3, 0),
            "{stop:?}"
        );
        assert_eq!(report.intake, IntakeEnd::Stopped, "{stop:?}");
        assert!(report.is_conserved(), "{report}");
        observed.push((format!("{stop:?}"), p1, p2));
    }
    let expected: Vec<(String, Poll<Answer>, Poll<Answer>)> = ["Shutdown", "Abort", "Parent"]
        .into_iter()
        .map(|stop| {
            (
                stop.to_string(),
                Poll::Ready(Err(Rejected::Closed(('a', 11)))),
                Poll::Ready(Err(Rejected::Closed(('c', 1)))),
            )
        })
        .collect();
    assert_eq!(observed, expected, "polled right after the stop");
}

/// An abort with calls in every state: running (Aborted), queued (Closed
/// with the request, counted cancelled), in line, granted and waiting for
/// a slot (Closed, uncounted). Settlement outcomes match.
#[tokio::test(start_paused = true)]
async fn an_abort_answers_every_call_by_where_it_was_and_settles_each_once() {
    let (config, settlements) = config(1, 3, 1)
        .settle_capacity(32)
        .settle_by(|item: &Item| *item);
    let rig = launch(config);
    let mut ca0 = call(&rig, ('a', 0));
    enters(&rig, &mut ca0);
    sleep(ms(1)).await; // a0 running, gated
    let mut ca1 = call(&rig, ('a', 1));
    let mut cb1 = call(&rig, ('b', 1));
    let mut cc1 = call(&rig, ('c', 1));
    enters(&rig, &mut ca1);
    enters(&rig, &mut cb1);
    enters(&rig, &mut cc1); // the queue (3) is full
    let mut c11 = call(&rig, ('a', 11)); // in a's line
    let mut cd1 = call(&rig, ('d', 1)); // waits for a slot
    waits(&rig, &mut c11);
    waits(&rig, &mut cd1);
    rig.shutdown.abort();
    // The queued and waiting calls are answered inside the abort; the
    // running one once its worker has run.
    let quick: Vec<Poll<Answer>> = [&mut ca1, &mut cb1, &mut cc1, &mut c11, &mut cd1]
        .into_iter()
        .map(|c| c.poll())
        .collect();
    assert_eq!(
        quick.iter().filter(|p| p.is_ready()).count(),
        5,
        "{quick:?}"
    );
    sleep(ms(1)).await;
    let got: Vec<Poll<Answer>> = std::iter::once(ca0.poll()).chain(quick).collect();
    assert_eq!(
        got,
        [
            Poll::Ready(Err(Rejected::Aborted)),
            Poll::Ready(Err(Rejected::Closed(('a', 1)))),
            Poll::Ready(Err(Rejected::Closed(('b', 1)))),
            Poll::Ready(Err(Rejected::Closed(('c', 1)))),
            Poll::Ready(Err(Rejected::Closed(('a', 11)))),
            Poll::Ready(Err(Rejected::Closed(('d', 1)))),
        ]
    );
    let Rig {
        caller, shutdown, ..
    } = rig;
    drop(caller);
    let (report, mut records) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(shutdown.join(), settlements.collect::<Vec<_>>())
    })
    .await
    .expect("join hung");
    records.sort_by_key(|r| r.key);
    let got: Vec<(Item, Outcome)> = records.iter().map(|r| (r.key, r.outcome)).collect();
    assert_eq!(
        got,
        [
            (('a', 0), Outcome::Cancelled(Stage::InFlight)),
            (('a', 1), Outcome::Cancelled(Stage::Queued)),
            (('b', 1), Outcome::Cancelled(Stage::Queued)),
            (('c', 1), Outcome::Cancelled(Stage::Queued)),
        ]
    );
    assert_eq!(
        (
            report.produced,
            report.cancelled,
            report.withdrawn,
            report.aborted,
            report.processed
        ),
        (4, 4, 0, 1, 0)
    );
    assert!(report.is_conserved(), "{report}");
}

/// shutdown with a drain_timeout of 10 ms: line waiters answered Closed at
/// once; at the deadline the running call is Aborted and the queued ones
/// Closed with their requests.
#[tokio::test(start_paused = true)]
async fn a_drain_timeout_answers_running_aborted_and_queued_closed() {
    let rig = launch(config(1, 4, 1).drain_timeout(ms(10)));
    let mut ca0 = call(&rig, ('a', 0));
    enters(&rig, &mut ca0);
    sleep(ms(1)).await;
    let mut ca1 = call(&rig, ('a', 1));
    let mut cb0 = call(&rig, ('b', 0));
    enters(&rig, &mut ca1);
    enters(&rig, &mut cb0);
    let mut c11 = call(&rig, ('a', 11));
    waits(&rig, &mut c11);
    let t0 = Instant::now();
    rig.shutdown.shutdown();
    assert_ready_eq!(c11.poll(), Err(Rejected::Closed(('a', 11))));
    assert_pending!(ca0.poll());
    sleep(ms(9)).await;
    assert_pending!(ca0.poll(), "still draining at 9 ms");
    sleep(ms(2)).await;
    let got: Vec<Poll<Answer>> = [&mut ca0, &mut ca1, &mut cb0]
        .into_iter()
        .map(|c| c.poll())
        .collect();
    assert_eq!(
        got,
        [
            Poll::Ready(Err(Rejected::Aborted)),
            Poll::Ready(Err(Rejected::Closed(('a', 1)))),
            Poll::Ready(Err(Rejected::Closed(('b', 0)))),
        ]
    );
    let (starts, report) = finish(rig).await;
    assert_eq!(starts, [('a', 0)]);
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.cancelled,
            report.aborted,
            report.withdrawn
        ),
        (3, 0, 3, 1, 0)
    );
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert!(report.is_conserved(), "{report}");
    assert_eq!(t0.elapsed(), ms(11));
}

/// A parent token's `cancel()` refuses a call woken with a kept place that
/// has not run yet, and the rest of the line, at once.
#[tokio::test(start_paused = true)]
async fn a_parent_cancel_refuses_a_granted_call_and_its_line_at_once() {
    let parent = CancellationToken::new();
    let rig = launch(config(1, 16, 1).cancel_token(parent.clone()));
    let mut cx = call(&rig, ('x', 0));
    enters(&rig, &mut cx);
    sleep(ms(1)).await;
    let mut ca1 = call(&rig, ('a', 1));
    enters(&rig, &mut ca1);
    let mut c11 = call(&rig, ('a', 11));
    let mut c12 = call(&rig, ('a', 12));
    waits(&rig, &mut c11);
    waits(&rig, &mut c12);
    rig.gate.add_permits(1);
    sleep(ms(1)).await;
    assert_eq!((c11.is_woken(), c12.is_woken()), (true, false));
    parent.cancel();
    assert!(rig.caller.is_closed());
    assert_ready_eq!(c12.poll(), Err(Rejected::Closed(('a', 12))));
    assert_ready_eq!(c11.poll(), Err(Rejected::Closed(('a', 11))));
    assert_ready_eq!(cx.poll(), Ok(('x', 0)));
    assert_ready_eq!(ca1.poll(), Ok(('a', 1)));
    assert_eq!(rig.shutdown.stats().keys, 0);
    let (starts, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [1]);
    assert_eq!(
        (report.produced, report.processed, report.delivered),
        (2, 2, 2)
    );
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert!(report.is_conserved(), "{report}");
}

/// After `join`: the handler, key function and settlement key have been
/// dropped and no spawned task is alive, while a spare caller, a
/// controller and the ended settlements stream are still held.
#[tokio::test(start_paused = true)]
async fn after_join_every_closure_is_dropped_and_no_task_is_alive() {
    let (h, k, s) = (Arc::new(()), Arc::new(()), Arc::new(()));
    let (kk, ss, hh) = (Arc::clone(&k), Arc::clone(&s), Arc::clone(&h));
    let (config, mut settlements) = FanOutConfig::new(2, ShedPolicy::Backpressure)
        .capacity(4)
        .key_by(move |item: &Item| {
            let _ = &kk;
            item.0
        })
        .per_key_capacity(1)
        .settle_capacity(8)
        .settle_by(move |item: &Item| {
            let _ = &ss;
            *item
        });
    let (caller, shutdown) = backpressure_pipeline::caller(config, move |item: Item| {
        let _h = Arc::clone(&hh);
        async move {
            tokio::task::yield_now().await;
            item
        }
    });
    let spare = caller.clone();
    let controller = shutdown.controller();
    let mut c1 = task::spawn(caller.call(('a', 1)));
    let mut c2 = task::spawn(caller.call(('b', 2)));
    let mut c3 = task::spawn(caller.call(('a', 3)));
    assert_pending!(c1.poll());
    assert_pending!(c2.poll());
    assert_pending!(c3.poll()); // in a's line
    shutdown.shutdown();
    assert_ready_eq!(c3.poll(), Err(Rejected::Closed(('a', 3))));
    drop(caller);
    let (report, records) = tokio::time::timeout(Duration::from_secs(30), async {
        let (r, recs, a1, a2) = tokio::join!(
            shutdown.join(),
            (&mut settlements).collect::<Vec<_>>(),
            c1,
            c2
        );
        assert_eq!((a1, a2), (Ok(('a', 1)), Ok(('b', 2))));
        (r, recs)
    })
    .await
    .expect("join hung");
    assert_eq!(records.len(), 2);
    assert_eq!(
        (report.produced, report.processed, report.delivered),
        (2, 2, 2)
    );
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
    let mut late = task::spawn(spare.call(('b', 1)));
    assert_ready_eq!(late.poll(), Err(Rejected::Closed(('b', 1))));
    assert_eq!(controller.stats().produced, 2);
}

/// Queued and running calls withdrawn (dropped) with settlement: their
/// `Cancelled(Withdrawn)` records, once read, give the credits back; the
/// key's place passes to the call waiting in line.
#[tokio::test(start_paused = true)]
async fn withdrawn_calls_give_their_credit_back_once_their_records_are_read() {
    let (config, mut settlements) = config(1, 16, 1)
        .settle_capacity(3)
        .settle_by(|item: &Item| *item);
    let rig = launch(config);
    let mut records = Vec::new();
    let mut cx = call(&rig, ('x', 0));
    enters(&rig, &mut cx);
    sleep(ms(1)).await; // x0 running, gated
    let mut ca1 = call(&rig, ('a', 1));
    let mut cb1 = call(&rig, ('b', 1));
    enters(&rig, &mut ca1);
    enters(&rig, &mut cb1); // 3 credits taken
    let mut c11 = call(&rig, ('a', 11));
    waits(&rig, &mut c11); // in a's line
    drop(ca1); // queued: withdrawn; a's place to c11
    assert!(c11.is_woken());
    waits(&rig, &mut c11); // a's place kept, no credit yet
    drop(cx); // running: withdrawn, handler cancelled at its await
    sleep(ms(1)).await; // the worker moves on: b1 answered
    assert_ready_eq!(cb1.poll(), Ok(('b', 1)));
    let stats = rig.shutdown.stats();
    assert_eq!(
        (
            stats.cancelled,
            stats.withdrawn,
            stats.processed,
            stats.in_flight
        ),
        (2, 2, 1, 0)
    );
    assert_eq!(read_ready(&mut settlements, &mut records), 3);
    enters(&rig, &mut c11);
    sleep(ms(1)).await;
    assert_ready_eq!(c11.poll(), Ok(('a', 11)));
    assert_eq!(read_ready(&mut settlements, &mut records), 1);
    // All 3 credits free: one running, two queued, the fourth waits.
    let mut cz = call(&rig, ('z', 0));
    enters(&rig, &mut cz);
    sleep(ms(1)).await;
    let mut cp = call(&rig, ('p', 1));
    let mut cq = call(&rig, ('q', 1));
    let mut cr = call(&rig, ('r', 1));
    enters(&rig, &mut cp);
    enters(&rig, &mut cq);
    waits(&rig, &mut cr);
    rig.gate.add_permits(1);
    let (out, _) = answers(
        &rig,
        vec![(0, cz), (1, cp), (2, cq), (3, cr)],
        Some((&mut settlements, &mut records)),
    )
    .await;
    assert!(out.iter().all(|(_, a)| a.is_ok()), "{out:?}");
    let (_, report) = finish(rig).await;
    records.extend(settlements.collect::<Vec<_>>().await);
    records.sort_by_key(|r| r.key);
    let got: Vec<(Item, Outcome)> = records.iter().map(|r| (r.key, r.outcome)).collect();
    assert_eq!(
        got,
        [
            (('a', 1), Outcome::Cancelled(Stage::Withdrawn)),
            (('a', 11), Outcome::Processed),
            (('b', 1), Outcome::Processed),
            (('p', 1), Outcome::Processed),
            (('q', 1), Outcome::Processed),
            (('r', 1), Outcome::Processed),
            (('x', 0), Outcome::Cancelled(Stage::Withdrawn)),
            (('z', 0), Outcome::Processed),
        ]
    );
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.cancelled,
            report.withdrawn,
            report.delivered
        ),
        (8, 6, 2, 2, 6)
    );
    assert!(report.is_conserved(), "{report}");
}

/// Control for the test above: the same run with the shutdown handle kept
/// and joined reports `Exhausted`.
#[tokio::test(start_paused = true)]
async fn waiting_calls_outlive_the_caller_with_the_handle_kept_intake_exhausted() {
    let rig = launch(config(1, 16, 1));
    let mut cx = call(&rig, ('x', 0));
    enters(&rig, &mut cx);
    sleep(ms(1)).await;
    let mut c11 = call(&rig, ('a', 11));
    enters(&rig, &mut c11);
    let Rig {
        caller,
        shutdown,
        gate,
        ..
    } = rig;
    drop(caller);
    gate.add_permits(1);
    sleep(ms(1)).await;
    assert_ready_eq!(cx.poll(), Ok(('x', 0)));
    assert_ready_eq!(c11.poll(), Ok(('a', 11)));
    drop((cx, c11));
    let report = tokio::time::timeout(Duration::from_secs(30), shutdown.join())
        .await
        .expect("join hung");
    assert_eq!(
        (report.produced, report.processed, report.delivered),
        (2, 2, 2)
    );
    assert_eq!(report.intake, IntakeEnd::Exhausted, "{report:?}");
}

/// c2 began to wait (for a queue slot, its key having room) before c3 began
/// to wait (in the key's line). "waiters enter in the order they began to
/// wait": a's requests should start 1, 2, 3.
#[tokio::test(start_paused = true)]
async fn a_call_that_began_waiting_first_enters_its_key_first_even_after_a_slot_wait() {
    let rig = launch(config(1, 2, 1));
    let mut cx = call(&rig, ('x', 0));
    enters(&rig, &mut cx);
    sleep(ms(1)).await;
    let mut cb = call(&rig, ('b', 0));
    let mut cc = call(&rig, ('c', 0));
    enters(&rig, &mut cb);
    enters(&rig, &mut cc); // the queue (2) is full
    let mut c1 = call(&rig, ('a', 1));
    let mut c2 = call(&rig, ('a', 2));
    waits(&rig, &mut c1);
    waits(&rig, &mut c2);
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // x0 answered, b0 taken (gated): a slot for c1
    enters(&rig, &mut c1);
    let mut c3 = call(&rig, ('a', 3));
    waits(&rig, &mut c3); // finds a full: in a's line
    waits(&rig, &mut c2);
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // b0 answered, c0 taken (gated): a slot for c2
    waits(&rig, &mut c2); // its key is full
    rig.gate.add_permits(1);
    let all = vec![(0, cx), (100, cb), (101, cc), (1, c1), (2, c2), (3, c3)];
    let (out, entered) = answers(&rig, all, None).await;
    assert!(out.iter().all(|(_, a)| a.is_ok()));
    let (starts, report) = finish(rig).await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(
        (report.produced, report.processed, report.delivered),
        (6, 6, 6)
    );
    assert_eq!(
        (entered, of(&starts, 'a')),
        (vec![2, 3], vec![1, 2, 3]),
        "entry order (after the slot wait), start order of key a"
    );
}
