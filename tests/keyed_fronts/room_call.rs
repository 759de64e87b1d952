//! Keyed `Backpressure` on the call front (`Caller::call`): a full key's
//! room is first come, first served, also when withdrawals free several
//! places at once and when the queue is full too; calls waiting for one key
//! hold no queue slot, so other keys go on. (From a fresh-user trial.)

use super::support::{
    CallRig as Rig, Item, call, call_books, finish_calls as finish, launch_calls, ms, of,
};
use backpressure_pipeline::{Call, IntakeEnd, Rejected};
use tokio::time::sleep;
use tokio_test::task::Spawn;
use tokio_test::{assert_pending, assert_ready_eq};

fn rig(workers: usize, capacity: usize, per_key: usize) -> Rig {
    launch_calls(super::support::config(workers, capacity, per_key))
}

type Waiter = (u32, Spawn<Call<Item, Item>>);

/// Polls the calls not yet queued youngest first (the pipeline runs between
/// rounds, `rounds` times); a call has entered the queue when `produced`
/// moved in its poll. Returns the ids in entry order, the queued calls, and
/// those still waiting.
async fn drive_youngest_first(
    rig: &Rig,
    mut waiters: Vec<Waiter>,
    rounds: usize,
) -> (Vec<u32>, Vec<Waiter>, Vec<Waiter>) {
    let mut entered = Vec::new();
    let mut queued = Vec::new();
    for _ in 0..rounds {
        if waiters.is_empty() {
            break;
        }
        let mut i = waiters.len();
        while i > 0 {
            i -= 1;
            let before = rig.shutdown.stats().produced;
            assert_pending!(waiters[i].1.poll(), "waiter {}", waiters[i].0);
            if rig.shutdown.stats().produced > before {
                let w = waiters.remove(i);
                entered.push(w.0);
                queued.push(w);
                i = waiters.len();
            }
        }
        sleep(ms(1)).await;
    }
    (entered, queued, waiters)
}

/// Polls every call until answered, in the given order each round.
async fn answers(mut calls: Vec<Waiter>) -> Vec<(u32, Result<Item, Rejected<Item>>)> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let mut i = 0;
        while i < calls.len() {
            if let std::task::Poll::Ready(answer) = calls[i].1.poll() {
                out.push((calls.remove(i).0, answer));
            } else {
                i += 1;
            }
        }
        if calls.is_empty() {
            break;
        }
        sleep(ms(1)).await;
    }
    assert!(calls.is_empty(), "calls never answered");
    out
}

fn oks(answers: &[(u32, Result<Item, Rejected<Item>>)]) -> Vec<(u32, Item)> {
    answers
        .iter()
        .map(|(id, a)| (*id, a.clone().expect("answered Ok")))
        .collect()
}

// ===== scenario 1 =====

#[tokio::test(start_paused = true)]
async fn three_queued_calls_withdrawn_together_let_waiters_in_in_line_youngest_polled_first() {
    let rig = rig(1, 16, 3);
    let mut c0 = call(&rig, ('a', 0));
    assert_pending!(c0.poll());
    sleep(ms(1)).await; // a0 runs, gated
    let mut queued: Vec<_> = (1..=3).map(|i| call(&rig, ('a', i))).collect();
    for q in &mut queued {
        assert_pending!(q.poll());
    }
    let mut waiters: Vec<Waiter> = (11..=13).map(|i| (i, call(&rig, ('a', i)))).collect();
    for (_, w) in &mut waiters {
        assert_pending!(w.poll());
    }
    let stats = rig.shutdown.stats();
    assert_eq!((stats.produced, stats.queue_depth), (4, 3));
    drop(queued); // three places free at once
    let stats = rig.shutdown.stats();
    assert_eq!((stats.queue_depth, stats.cancelled), (0, 3));
    let woken: Vec<bool> = waiters.iter().map(|(_, w)| w.is_woken()).collect();
    assert_eq!(woken, [true, false, false], "one place kept at a time");
    // A call that did not wait cannot take a place.
    let mut fresh = call(&rig, ('a', 99));
    assert_pending!(fresh.poll());
    assert_eq!(rig.shutdown.stats().produced, 4, "the fresh call waits");
    waiters.push((99, fresh));
    let (entered, queued, left) = drive_youngest_first(&rig, waiters, 5).await;
    assert_eq!(entered, [11, 12, 13], "the key holds 3");
    assert_eq!(left.len(), 1);
    rig.gate.add_permits(1);
    let (late, queued_late, left) = drive_youngest_first(&rig, left, 20).await;
    assert_eq!(late, [99]);
    assert!(left.is_empty());
    assert_ready_eq!(c0.poll(), Ok(('a', 0)));
    let mut all = queued;
    all.extend(queued_late);
    let got = answers(all).await;
    assert_eq!(
        oks(&got),
        [
            (11, ('a', 11)),
            (12, ('a', 12)),
            (13, ('a', 13)),
            (99, ('a', 99))
        ]
    );
    let (starts, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 11, 12, 13, 99]);
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.delivered,
            report.cancelled,
            report.withdrawn
        ),
        (8, 5, 5, 3, 3)
    );
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn workers_freeing_two_places_let_call_waiters_in_in_line() {
    let rig = rig(1, 16, 2);
    let mut c0 = call(&rig, ('a', 0));
    assert_pending!(c0.poll());
    sleep(ms(1)).await;
    let mut queued: Vec<Waiter> = (1..=2).map(|i| (i, call(&rig, ('a', i)))).collect();
    for (_, q) in &mut queued {
        assert_pending!(q.poll());
    }
    let mut waiters: Vec<Waiter> = (11..=14).map(|i| (i, call(&rig, ('a', i)))).collect();
    for (_, w) in &mut waiters {
        assert_pending!(w.poll());
    }
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // a0 ends, a1 and a2 run and end: two places free
    assert_eq!(rig.shutdown.stats().processed, 3);
    let (entered, queued_w, left) = drive_youngest_first(&rig, waiters, 30).await;
    assert_eq!(entered, [11, 12, 13, 14]);
    assert!(left.is_empty());
    assert_ready_eq!(c0.poll(), Ok(('a', 0)));
    queued.extend(queued_w);
    let got = answers(queued).await;
    let ids: Vec<u32> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [1, 2, 11, 12, 13, 14]);
    let (starts, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 1, 2, 11, 12, 13, 14]);
    assert_eq!(
        (report.produced, report.processed, report.delivered),
        (7, 7, 7)
    );
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn withdrawals_on_two_keys_at_once_keep_each_keys_line() {
    let rig = rig(2, 32, 2);
    let mut c0 = call(&rig, ('a', 0));
    let mut d0 = call(&rig, ('b', 0));
    assert_pending!(c0.poll());
    assert_pending!(d0.poll());
    sleep(ms(1)).await;
    let mut queued: Vec<_> = [('a', 1), ('b', 1), ('a', 2), ('b', 2)]
        .into_iter()
        .map(|i| call(&rig, i))
        .collect();
    for q in &mut queued {
        assert_pending!(q.poll());
    }
    let mut waiters = Vec::new();
    for i in 11..=13 {
        waiters.push((i, call(&rig, ('a', i))));
        waiters.push((100 + i, call(&rig, ('b', i))));
    }
    for (_, w) in &mut waiters {
        assert_pending!(w.poll());
    }
    drop(queued);
    let (entered, queued, left) = drive_youngest_first(&rig, waiters, 5).await;
    let a: Vec<u32> = entered.iter().copied().filter(|i| *i < 100).collect();
    let b: Vec<u32> = entered.iter().copied().filter(|i| *i > 100).collect();
    assert_eq!((a, b), (vec![11, 12], vec![111, 112]));
    rig.gate.add_permits(2);
    let (late, queued_late, left) = drive_youngest_first(&rig, left, 20).await;
    let mut late_sorted = late.clone();
    late_sorted.sort();
    assert_eq!(late_sorted, [13, 113]);
    assert!(left.is_empty());
    assert_ready_eq!(c0.poll(), Ok(('a', 0)));
    assert_ready_eq!(d0.poll(), Ok(('b', 0)));
    let mut all = queued;
    all.extend(queued_late);
    assert_eq!(answers(all).await.len(), 6);
    let (starts, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 11, 12, 13]);
    assert_eq!(of(&starts, 'b'), [0, 11, 12, 13]);
    assert_eq!(call_books(&report), (12, 8, 4, 4));
}

// ===== scenario 2 =====

#[tokio::test(start_paused = true)]
async fn calls_dropped_in_line_and_after_their_grant_pass_places_on_exactly() {
    let rig = rig(1, 16, 2);
    let mut c0 = call(&rig, ('a', 0));
    assert_pending!(c0.poll());
    sleep(ms(1)).await;
    let mut queued: Vec<_> = (1..=2).map(|i| call(&rig, ('a', i))).collect();
    for q in &mut queued {
        assert_pending!(q.poll());
    }
    let mut w1 = call(&rig, ('a', 11));
    let mut w2 = call(&rig, ('a', 12));
    let mut w3 = call(&rig, ('a', 13));
    let mut w4 = call(&rig, ('a', 14));
    for w in [&mut w1, &mut w2, &mut w3, &mut w4] {
        assert_pending!(w.poll());
    }
    drop(w2); // in line, never woken
    drop(queued); // two places free
    assert_eq!(
        (w1.is_woken(), w3.is_woken(), w4.is_woken()),
        (true, false, false)
    );
    drop(w1); // woken, dropped before it ran: its place goes to w3
    assert_eq!((w3.is_woken(), w4.is_woken()), (true, false));
    let before = rig.shutdown.stats().produced;
    assert_pending!(w4.poll());
    assert_eq!(rig.shutdown.stats().produced, before, "w4 waits behind w3");
    assert_pending!(w3.poll());
    assert!(w4.is_woken());
    assert_pending!(w4.poll());
    assert_eq!(rig.shutdown.stats().produced, before + 2);
    rig.gate.add_permits(1);
    sleep(ms(1)).await;
    assert_ready_eq!(c0.poll(), Ok(('a', 0)));
    assert_ready_eq!(w3.poll(), Ok(('a', 13)));
    assert_ready_eq!(w4.poll(), Ok(('a', 14)));
    let (starts, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 13, 14]);
    assert_eq!(call_books(&report), (5, 3, 2, 2));
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_a_call_holds_a_grant_answers_closed_with_the_request() {
    let rig = rig(1, 16, 2);
    let mut c0 = call(&rig, ('a', 0));
    assert_pending!(c0.poll());
    sleep(ms(1)).await;
    let mut queued: Vec<_> = (1..=2).map(|i| call(&rig, ('a', i))).collect();
    for q in &mut queued {
        assert_pending!(q.poll());
    }
    let mut w1 = call(&rig, ('a', 11));
    let mut w2 = call(&rig, ('a', 12));
    assert_pending!(w1.poll());
    assert_pending!(w2.poll());
    drop(queued.remove(0)); // one place: w1's
    assert!(w1.is_woken());
    rig.shutdown.shutdown();
    assert!(rig.caller.is_closed());
    assert_ready_eq!(w2.poll(), Err(Rejected::Closed(('a', 12))));
    assert_ready_eq!(w1.poll(), Err(Rejected::Closed(('a', 11))));
    let mut late = call(&rig, ('a', 21));
    assert_ready_eq!(late.poll(), Err(Rejected::Closed(('a', 21))));
    rig.gate.add_permits(1);
    sleep(ms(1)).await;
    assert_ready_eq!(c0.poll(), Ok(('a', 0)));
    assert_ready_eq!(queued[0].poll(), Ok(('a', 2)));
    let (starts, report) = finish(rig).await;
    assert_eq!(of(&starts, 'a'), [0, 2]);
    assert_eq!(call_books(&report), (3, 2, 1, 1));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn abort_with_calls_waiting_and_granted_on_two_keys_returns_and_keeps_the_books() {
    let rig = rig(2, 16, 1);
    let mut c0 = call(&rig, ('a', 0));
    let mut d0 = call(&rig, ('b', 0));
    assert_pending!(c0.poll());
    assert_pending!(d0.poll());
    sleep(ms(1)).await;
    let mut qa = call(&rig, ('a', 1));
    let mut qb = call(&rig, ('b', 1));
    assert_pending!(qa.poll());
    assert_pending!(qb.poll());
    let mut wa = call(&rig, ('a', 11));
    let mut wb = call(&rig, ('b', 11));
    assert_pending!(wa.poll());
    assert_pending!(wb.poll());
    drop(qb); // wb granted, not yet run
    assert!(wb.is_woken());
    rig.shutdown.abort();
    assert_ready_eq!(wa.poll(), Err(Rejected::Closed(('a', 11))));
    assert_ready_eq!(wb.poll(), Err(Rejected::Closed(('b', 11))));
    let (starts, report) = finish(rig).await;
    assert_eq!(starts.len(), 2);
    let qa_answer = qa.poll();
    let c0_answer = c0.poll();
    assert!(qa_answer.is_ready() && c0_answer.is_ready());
    assert_eq!(call_books(&report), (4, 0, 4, 1));
}

// ===== the global room beside the key's room =====

#[tokio::test(start_paused = true)]
async fn calls_that_find_a_full_key_in_a_full_queue_enter_first_come_first_served() {
    let rig = rig(1, 2, 2);
    let mut c0 = call(&rig, ('a', 0));
    assert_pending!(c0.poll());
    sleep(ms(1)).await;
    let mut queued: Vec<Waiter> = (1..=2).map(|i| (i, call(&rig, ('a', i)))).collect();
    for (_, q) in &mut queued {
        assert_pending!(q.poll());
    }
    let mut waiters: Vec<Waiter> = (11..=12).map(|i| (i, call(&rig, ('a', i)))).collect();
    for (_, w) in &mut waiters {
        assert_pending!(w.poll());
    }
    assert_eq!(rig.shutdown.stats().produced, 3);
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // a1 and a2 taken: two places free
    let (entered, _queued, left) = drive_youngest_first(&rig, waiters, 20).await;
    assert!(left.is_empty());
    drop(_queued);
    drop(queued);
    drop(c0);
    let (starts, report) = finish(rig).await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(
        (entered, of(&starts, 'a')),
        (vec![11, 12], vec![0, 1, 2, 11, 12])
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_waiting_for_its_key_gives_its_queue_slot_back() {
    let rig = rig(1, 2, 1);
    let mut c0 = call(&rig, ('a', 0));
    assert_pending!(c0.poll());
    sleep(ms(1)).await;
    let mut q1 = call(&rig, ('a', 1));
    assert_pending!(q1.poll());
    let mut w = call(&rig, ('a', 11));
    assert_pending!(w.poll());
    drop(w);
    rig.gate.add_permits(1);
    sleep(ms(1)).await;
    assert_ready_eq!(c0.poll(), Ok(('a', 0)));
    assert_ready_eq!(q1.poll(), Ok(('a', 1)));
    let mut g = call(&rig, ('c', 0));
    assert_pending!(g.poll());
    sleep(ms(1)).await; // c0 runs, gated
    let mut x = call(&rig, ('x', 1));
    let mut y = call(&rig, ('y', 1));
    assert_pending!(x.poll());
    assert_pending!(y.poll());
    assert_eq!(rig.shutdown.stats().queue_depth, 2, "both queued");
    rig.gate.add_permits(1);
    sleep(ms(1)).await;
    assert_ready_eq!(g.poll(), Ok(('c', 0)));
    assert_ready_eq!(x.poll(), Ok(('x', 1)));
    assert_ready_eq!(y.poll(), Ok(('y', 1)));
    let (_, report) = finish(rig).await;
    assert_eq!((report.produced, report.processed), (5, 5));
    assert!(report.is_conserved(), "{report}");
}

/// A hot key's calls waiting for its room must not keep a quiet key's call
/// out of a queue that has room.
#[tokio::test(start_paused = true)]
async fn calls_waiting_on_a_full_key_do_not_fill_the_queue_for_other_keys() {
    let rig = rig(2, 4, 1);
    let mut c0 = call(&rig, ('a', 0));
    assert_pending!(c0.poll());
    sleep(ms(1)).await; // a0 runs, gated; the second worker idles
    let mut q1 = call(&rig, ('a', 1));
    assert_pending!(q1.poll());
    let mut waiting: Vec<_> = (11..=13).map(|i| call(&rig, ('a', i))).collect();
    for w in &mut waiting {
        assert_pending!(w.poll());
    }
    assert_eq!(rig.shutdown.stats().queue_depth, 1, "1 of 4 queued");
    let mut b = call(&rig, ('b', 1));
    let first = b.poll();
    sleep(ms(1)).await;
    let answer = b.poll();
    drop(waiting);
    rig.gate.add_permits(1);
    sleep(ms(1)).await;
    let _ = (c0.poll(), q1.poll());
    let (_, report) = finish(rig).await;
    assert!(report.is_conserved(), "{report}");
    assert!(first.is_pending());
    assert_eq!(
        answer,
        std::task::Poll::Ready(Ok(('b', 1))),
        "b answered within 1 ms"
    );
}
