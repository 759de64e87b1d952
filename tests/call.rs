//! The call front: every answer and every rejection under its own name,
//! and withdrawal at every stage (not offered, queued, running, answered),
//! with both laws exact.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::task::Poll;

use backpressure_pipeline::{
    Caller, FanOutConfig, IntakeEnd, Outcome, RejectReason, Rejected, Report, Settlement,
    ShedPolicy, ShutdownHandle, Stage, caller,
};
use common::{ms, recorder, snapshot};
use futures::StreamExt;
use tokio::time::{Instant, sleep};
use tokio_test::{assert_pending, task};

/// (produced, processed, delivered, discarded, dropped, expired, cancelled, withdrawn)
fn books(r: &Report) -> (u64, u64, u64, u64, u64, u64, u64, u64) {
    (
        r.produced,
        r.processed,
        r.delivered,
        r.discarded,
        r.dropped,
        r.expired,
        r.cancelled,
        r.withdrawn,
    )
}

/// The end of a test: the last caller goes, and the report comes.
async fn end<Req, Resp>(caller: Caller<Req, Resp>, shutdown: ShutdownHandle) -> Report {
    drop(caller);
    shutdown.join().await
}

async fn slow(x: u32) -> u32 {
    sleep(ms(10)).await;
    x
}

/// Sets its flag when dropped: a handler's future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

fn by_key(records: &[Settlement<u32>]) -> BTreeMap<u32, Outcome> {
    let map: BTreeMap<_, _> = records.iter().map(|r| (r.key, r.outcome)).collect();
    assert_eq!(map.len(), records.len(), "a request settled twice");
    map
}

/// Intake ends `Exhausted` when the last caller goes before a stop, even a
/// stop that comes before the front task has run (a fresh-user trial found
/// `Stopped`); `Stopped` when the stop comes first.
#[tokio::test(start_paused = true)]
async fn the_last_caller_gone_before_a_shutdown_ends_intake_exhausted() {
    for shutdown_first in [false, true] {
        let (caller, shutdown) = caller(FanOutConfig::new(1, ShedPolicy::DropNewest), slow);
        assert_eq!(caller.call(1).await.ok(), Some(1));
        if shutdown_first {
            shutdown.shutdown();
            drop(caller);
        } else {
            drop(caller);
            shutdown.shutdown();
        }
        let report = shutdown.join().await;
        assert_eq!(books(&report), (1, 1, 1, 0, 0, 0, 0, 0));
        let expected = if shutdown_first {
            IntakeEnd::Stopped
        } else {
            IntakeEnd::Exhausted
        };
        assert_eq!(report.intake, expected, "shutdown first: {shutdown_first}");
    }
}

#[tokio::test(start_paused = true)]
async fn answers_count_processed_and_delivered() {
    let (caller, shutdown) = caller(FanOutConfig::new(2, ShedPolicy::DropNewest), slow);
    let answers = futures::future::join_all((0..4).map(|x| caller.call(x))).await;
    let answers: Vec<_> = answers.into_iter().map(Result::ok).collect();
    assert_eq!(answers, [Some(0), Some(1), Some(2), Some(3)]);
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (4, 4, 4, 0, 0, 0, 0, 0));
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_shed_call_hands_its_request_back_and_never_waits() {
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(2);
    let (caller, shutdown) = caller(config, slow);
    let start = Instant::now();
    // Offered in one poll, before the worker runs: 0 and 1 fill the queue.
    let (a, b, c) = tokio::join!(caller.call(0), caller.call(1), caller.call(2));
    assert_eq!((a.ok(), b.ok()), (Some(0), Some(1)));
    let shed = c.unwrap_err();
    assert_eq!(shed.reason(), RejectReason::Shed);
    assert_eq!(shed.into_request(), Some(2));
    assert_eq!(start.elapsed(), ms(20), "two served one after the other");
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (3, 2, 2, 0, 1, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn an_evicted_call_gets_its_request_back() {
    let config = FanOutConfig::new(1, ShedPolicy::DropOldest).capacity(1);
    let (caller, shutdown) = caller(config, slow);
    let (a, b) = tokio::join!(caller.call(0), caller.call(1));
    assert!(matches!(a, Err(Rejected::Evicted(0))), "{a:?}");
    assert_eq!(b.ok(), Some(1));
    assert_eq!(
        books(&end(caller, shutdown).await),
        (2, 1, 1, 0, 1, 0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn timed_out_failed_and_expired_calls_say_so() {
    common::quiet_planned_panics();
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .handler_timeout(ms(15))
        .max_queue_age(ms(25));
    let (caller, shutdown) = caller(config, |ms_: u64| async move {
        if ms_ == 0 {
            common::planned_panic();
        }
        sleep(ms(ms_)).await;
        ms_
    });
    // One worker, in order: 0 fails at once, 20 times out at 15 ms, 10
    // answers at 25 ms, and 5 has waited 25 ms: not past its age, served
    // at 30 ms; 7 has waited 30 ms: expired.
    let calls = [0, 20, 10, 5, 7].map(|x| tokio::spawn(caller.call(x)));
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    assert!(matches!(answers[0], Err(Rejected::Failed)));
    assert!(matches!(answers[1], Err(Rejected::TimedOut)));
    assert_eq!(answers[2].as_ref().ok(), Some(&10));
    assert_eq!(answers[3].as_ref().ok(), Some(&5));
    assert!(matches!(answers[4], Err(Rejected::Expired(7))));
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (5, 2, 2, 0, 0, 1, 0, 0));
    assert_eq!((report.failed, report.timed_out), (1, 1));
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn an_abort_cuts_off_the_running_call_and_hands_the_queued_one_back() {
    let (cancelled, on_cancel) = recorder::<u32>();
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest).on_cancel(on_cancel);
    let (caller, shutdown) = caller(config, |_: u32| std::future::pending::<u32>());
    let running = tokio::spawn(caller.call(1));
    let queued = tokio::spawn(caller.call(2));
    sleep(ms(1)).await;
    shutdown.abort();
    assert!(matches!(running.await.unwrap(), Err(Rejected::Aborted)));
    assert!(matches!(queued.await.unwrap(), Err(Rejected::Closed(2))));
    assert!(
        snapshot(&cancelled).is_empty(),
        "its caller got it back instead"
    );
    // Refused at the call: not counted.
    assert!(matches!(caller.call(3).await, Err(Rejected::Closed(3))));
    assert!(caller.is_closed());
    let report = shutdown.join().await;
    assert_eq!(books(&report), (2, 0, 0, 0, 0, 0, 2, 0));
    assert_eq!(report.aborted, 1);
    assert!(report.is_conserved(), "{report}");
}

// ===== withdrawal, stage by stage =====

#[tokio::test(start_paused = true)]
async fn a_call_dropped_before_it_was_offered_counts_nothing() {
    let (caller, shutdown) = caller(FanOutConfig::new(1, ShedPolicy::DropNewest), slow);
    drop(caller.call(1)); // never polled
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (0, 0, 0, 0, 0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_withdrawn_queued_call_leaves_the_queue_and_its_slot_goes_to_the_next_caller() {
    let (cancelled, on_cancel) = recorder::<u32>();
    let (config, settlements) = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(1)
        .on_cancel(on_cancel)
        .settle_by(|x: &u32| *x);
    let records = tokio::spawn(settlements.collect::<Vec<_>>());
    let (caller, shutdown) = caller(config, slow);
    let first = tokio::spawn(caller.call(1));
    sleep(ms(1)).await; // the worker runs 1
    let mut second = task::spawn(caller.call(2));
    assert_pending!(second.poll()); // queued
    assert_eq!(shutdown.stats().queue_depth, 1);
    drop(second);
    assert_eq!(shutdown.stats().queue_depth, 0, "taken out at once");
    assert_eq!(snapshot(&cancelled), [2]);
    // Its slot is free: the next call is queued, not shed.
    let third = caller.call(3).await;
    assert_eq!(third.ok(), Some(3));
    assert_eq!(first.await.unwrap().ok(), Some(1));
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (3, 2, 2, 0, 0, 0, 1, 1));
    assert!(report.is_conserved(), "{report}");
    let settled = by_key(&records.await.unwrap());
    assert_eq!(settled[&2], Outcome::Cancelled(Stage::Withdrawn));
    assert_eq!(
        (settled[&1], settled[&3]),
        (Outcome::Processed, Outcome::Processed)
    );
}

#[tokio::test(start_paused = true)]
async fn a_withdrawn_running_call_is_cancelled_at_its_next_await_and_frees_its_worker() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&dropped);
    let (config, settlements) =
        FanOutConfig::new(1, ShedPolicy::DropNewest).settle_by(|x: &u32| *x);
    let records = tokio::spawn(settlements.collect::<Vec<_>>());
    let (caller, shutdown) = caller(config, move |x: u32| {
        let guard = (x == 1).then(|| DropFlag(Arc::clone(&flag)));
        async move {
            let _guard = guard;
            sleep(ms(100)).await;
            x
        }
    });
    let mut first = task::spawn(caller.call(1));
    assert_pending!(first.poll());
    let second = tokio::spawn(caller.call(2));
    sleep(ms(10)).await;
    assert_eq!(
        (shutdown.stats().in_flight, shutdown.stats().queue_depth),
        (1, 1)
    );
    let withdrawn_at = Instant::now();
    drop(first);
    assert!(
        !dropped.load(SeqCst),
        "cancelled at its next await, not here"
    );
    tokio::task::yield_now().await;
    assert!(dropped.load(SeqCst), "the worker dropped the handler");
    // The worker went straight on to 2: 100 ms from the withdrawal.
    assert_eq!(second.await.unwrap().ok(), Some(2));
    assert_eq!(withdrawn_at.elapsed(), ms(100));
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (2, 1, 1, 0, 0, 0, 1, 1));
    assert_eq!((report.workers_joined, report.aborted), (1, 0));
    assert!(report.is_conserved(), "{report}");
    let settled = by_key(&records.await.unwrap());
    assert_eq!(settled[&1], Outcome::Cancelled(Stage::Withdrawn));
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_after_its_answer_counts_delivered() {
    let (caller, shutdown) = caller(FanOutConfig::new(1, ShedPolicy::DropNewest), slow);
    let mut call = task::spawn(caller.call(1));
    assert_pending!(call.poll());
    sleep(ms(20)).await; // answered at 10 ms
    assert!(call.is_woken(), "the answer woke the caller");
    drop(call); // never read
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (1, 1, 1, 0, 0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_call_waiting_for_room_under_backpressure_gives_up_its_place_when_dropped() {
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
    let (caller, shutdown) = caller(config, slow);
    let first = tokio::spawn(caller.call(1));
    sleep(ms(1)).await; // 1 runs
    let second = tokio::spawn(caller.call(2)); // queued
    let mut third = task::spawn(caller.call(3));
    sleep(ms(1)).await;
    assert_pending!(third.poll()); // waits for room
    assert_eq!(shutdown.stats().produced, 2);
    drop(third);
    // Its place went to the next in line, which gets the slot 2 frees.
    let fourth = caller.call(4).await;
    assert_eq!(fourth.ok(), Some(4));
    assert_eq!(first.await.unwrap().ok(), Some(1));
    assert_eq!(second.await.unwrap().ok(), Some(2));
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (3, 3, 3, 0, 0, 0, 0, 0));
}

// ===== keyed calls =====

/// When each call of `calls` was answered, in ms since `start`, with its answer.
async fn answered_at(
    start: Instant,
    calls: impl IntoIterator<Item = backpressure_pipeline::Call<u32, u32>>,
) -> Vec<(u64, Result<u32, RejectReason>)> {
    let timed = calls.into_iter().map(|call| async move {
        let answer = call.await.map_err(|rejected| rejected.reason());
        (start.elapsed().as_millis() as u64, answer)
    });
    futures::future::join_all(timed).await
}

#[tokio::test(start_paused = true)]
async fn keyed_calls_run_one_at_a_time_per_key_in_their_order() {
    // Two keys, four requests each, four workers: each key's requests run
    // one after another, the two keys side by side.
    let config = FanOutConfig::new(4, ShedPolicy::Backpressure).key_by(|x: &u32| x % 2);
    let (caller, shutdown) = caller(config, slow);
    let start = Instant::now();
    let answers = answered_at(start, (0..8).map(|x| caller.call(x))).await;
    let expected: Vec<_> = (0..8).map(|x| (u64::from(x / 2 + 1) * 10, Ok(x))).collect();
    assert_eq!(answers, expected);
    assert_eq!(shutdown.stats().keys, 0, "no key tracked once idle");
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (8, 8, 8, 0, 0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_full_call_key_sheds_within_itself_under_each_policy() {
    for (policy, kept) in [
        (ShedPolicy::DropNewest, [1, 2, 3, 4]),
        (ShedPolicy::DropOldest, [6, 7, 8, 9]),
    ] {
        let config = FanOutConfig::new(1, policy)
            .key_by(|x: &u32| x % 2)
            .per_key_capacity(2);
        let (caller, shutdown) = caller(config, slow);
        let first = tokio::spawn(caller.call(0));
        sleep(ms(1)).await; // 0 runs
        let calls = (1..10).map(|x| caller.call(x));
        let answers = answered_at(Instant::now(), calls).await;
        let served: Vec<u32> = answers.iter().filter_map(|(_, a)| a.ok()).collect();
        assert_eq!(served, kept, "{policy:?}");
        let overload = match policy {
            ShedPolicy::DropNewest => RejectReason::Shed,
            _ => RejectReason::Evicted, // superseded by the key's newer request
        };
        let rejected = answers.iter().filter(|(_, a)| *a == Err(overload)).count();
        assert_eq!(rejected, 5, "{policy:?}");
        assert_eq!(first.await.unwrap().ok(), Some(0));
        let report = end(caller, shutdown).await;
        assert_eq!(books(&report), (10, 5, 5, 0, 5, 0, 0, 0), "{policy:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_withdrawn_keyed_call_leaves_its_key_and_an_emptied_key_is_forgotten() {
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest).key_by(|x: &u32| x % 2);
    let (caller, shutdown) = caller(config, slow);
    let first = tokio::spawn(caller.call(0));
    sleep(ms(1)).await; // 0 runs
    let mut second = task::spawn(caller.call(1));
    assert_pending!(second.poll()); // queued in key 1
    assert_eq!(
        (shutdown.stats().keys, shutdown.stats().queue_depth),
        (2, 1)
    );
    drop(second);
    assert_eq!(
        (shutdown.stats().keys, shutdown.stats().queue_depth),
        (1, 0)
    );
    assert_eq!(first.await.unwrap().ok(), Some(0));
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (2, 1, 1, 0, 0, 0, 1, 1));
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_keyed_call_waits_for_room_in_its_key_and_gives_its_place_up_when_dropped() {
    let config = FanOutConfig::new(2, ShedPolicy::Backpressure)
        .capacity(4)
        .key_by(|x: &u32| x % 2)
        .per_key_capacity(1);
    let (caller, shutdown) = caller(config, slow);
    let first = tokio::spawn(caller.call(0));
    sleep(ms(1)).await; // 0 runs
    let second = tokio::spawn(caller.call(2)); // queued: key 0 is full
    sleep(ms(1)).await;
    let mut third = task::spawn(caller.call(4));
    assert_pending!(third.poll()); // waits for room in key 0
    assert_eq!(shutdown.stats().produced, 2);
    // Another key is not held up by it.
    assert_eq!(caller.call(1).await.ok(), Some(1));
    drop(third);
    let start = Instant::now();
    let fourth = answered_at(start, [caller.call(6)]).await;
    // 1 was answered at 12 ms; 0 ended at 10, 2 runs to 20 and 6, queued
    // at once (2 left the key at 10), to 30.
    assert_eq!(fourth, [(18, Ok(6))]);
    assert_eq!(first.await.unwrap().ok(), Some(0));
    assert_eq!(second.await.unwrap().ok(), Some(2));
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (4, 4, 4, 0, 0, 0, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_call_whose_key_function_panics_gets_its_request_back_uncounted() {
    common::quiet_planned_panics();
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest).key_by(|x: &u32| {
        if *x == 13 {
            common::planned_panic();
        }
        x % 2
    });
    let (caller, shutdown) = caller(config, slow);
    let rejected = caller.call(13).await.unwrap_err();
    assert!(matches!(rejected, Rejected::Unkeyed(13)), "{rejected:?}");
    assert_eq!(caller.call(1).await.ok(), Some(1));
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (1, 1, 1, 0, 0, 0, 0, 0));
    assert_eq!(report.failed, 0);
}

#[tokio::test(start_paused = true)]
async fn an_expired_call_answers_its_waiting_caller_with_the_request() {
    let (cancelled, on_cancel) = recorder::<u32>();
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .max_queue_age(ms(5))
        .on_cancel(on_cancel);
    let (caller, shutdown) = caller(config, slow);
    let mut served = task::spawn(caller.call(1));
    let mut expiring = task::spawn(caller.call(2));
    assert_pending!(served.poll());
    assert_pending!(expiring.poll());
    sleep(ms(20)).await; // 2 expired at 10 ms, when the worker took it
    let answer = expiring.poll();
    assert!(
        matches!(answer, Poll::Ready(Err(Rejected::Expired(2)))),
        "{answer:?}"
    );
    assert!(matches!(served.poll(), Poll::Ready(Ok(1))));
    let report = end(caller, shutdown).await;
    assert_eq!(books(&report), (2, 1, 1, 0, 0, 1, 0, 0));
    assert!(snapshot(&cancelled).is_empty(), "its caller still waited");
}

// ===== calls dropped at random points: both laws, and the callers' own counts =====

mod property {
    use super::*;
    use proptest::prelude::*;
    use tokio::task::JoinSet;

    #[derive(Debug, Clone)]
    struct Case {
        workers: usize,
        capacity: usize,
        policy: ShedPolicy,
        max_age_ms: Option<u64>,
        timeout_ms: Option<u64>,
        /// Per call: (work in ms, ms after which its caller gives up, ms
        /// before it calls).
        calls: Vec<(u64, Option<u64>, u64)>,
        /// Stop after this many ms: (abort?, when).
        stop: Option<(bool, u64)>,
    }

    fn cases() -> impl Strategy<Value = Case> {
        (
            1usize..4,
            1usize..4,
            common::any_policy(),
            proptest::option::of(1u64..6),
            proptest::option::of(2u64..8),
            proptest::collection::vec((0u64..6, proptest::option::of(0u64..12), 0u64..4), 1..24),
            proptest::option::weighted(0.2, (any::<bool>(), 0u64..10)),
        )
            .prop_map(
                |(workers, capacity, policy, max_age_ms, timeout_ms, calls, stop)| Case {
                    workers,
                    capacity,
                    policy,
                    max_age_ms,
                    timeout_ms,
                    calls,
                    stop,
                },
            )
    }

    /// What one caller saw: its answer's reason (`Ok` as `None`), or that
    /// it gave up.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    enum Seen {
        Answered,
        Rejected(u8),
        GaveUp,
    }

    fn reason_code(reason: RejectReason) -> u8 {
        match reason {
            RejectReason::Shed | RejectReason::Evicted => 0,
            RejectReason::Expired => 1,
            RejectReason::TimedOut => 2,
            RejectReason::Failed => 3,
            RejectReason::Closed => 4,
            _ => 5, // aborted
        }
    }

    async fn run_case(case: Case) -> Result<(), TestCaseError> {
        let mut config = FanOutConfig::new(case.workers, case.policy).capacity(case.capacity);
        if let Some(age) = case.max_age_ms {
            config = config.max_queue_age(ms(age));
        }
        if let Some(timeout) = case.timeout_ms {
            config = config.handler_timeout(ms(timeout));
        }
        let (config, settlements) = config.settle_by(|(id, _): &(u32, u64)| *id);
        let records = tokio::spawn(settlements.collect::<Vec<_>>());
        let (caller, shutdown) = caller(config, |(id, work): (u32, u64)| async move {
            if work == 5 {
                common::planned_panic();
            }
            sleep(ms(work)).await;
            id
        });
        let mut clients = JoinSet::new();
        for (id, &(work, give_up, delay)) in case.calls.iter().enumerate() {
            let caller = caller.clone();
            clients.spawn(async move {
                sleep(ms(delay)).await;
                let call = caller.call((id as u32, work));
                let answer = match give_up {
                    None => Some(call.await),
                    // Biased to the call: a caller that gives up never had
                    // its answer waiting (current-thread: nothing answers
                    // between that poll and the drop).
                    Some(after) => tokio::select! {
                        biased;
                        answer = call => Some(answer),
                        () = sleep(ms(after)) => None,
                    },
                };
                match answer {
                    Some(Ok(got)) => {
                        assert_eq!(got, id as u32, "an answer for another call");
                        Seen::Answered
                    }
                    Some(Err(rejected)) => Seen::Rejected(reason_code(rejected.reason())),
                    None => Seen::GaveUp,
                }
            });
        }
        drop(caller);
        if let Some((abort, at)) = case.stop {
            let controller = shutdown.controller();
            tokio::spawn(async move {
                sleep(ms(at)).await;
                if abort {
                    controller.abort()
                } else {
                    controller.shutdown()
                }
            });
        }
        let mut seen = BTreeMap::<Seen, u64>::new();
        while let Some(client) = clients.join_next().await {
            *seen.entry(client.expect("client")).or_default() += 1;
        }
        let report = shutdown.join().await;
        let records = records.await.expect("settlements");
        let count = |s: Seen| seen.get(&s).copied().unwrap_or(0);
        let calls = case.calls.len() as u64;
        prop_assert!(report.is_conserved(), "{}", report);
        // The callers' counts, outcome by outcome.
        prop_assert_eq!(count(Seen::Answered), report.delivered, "{}", report);
        prop_assert_eq!(count(Seen::Rejected(0)), report.dropped);
        prop_assert_eq!(count(Seen::Rejected(1)), report.expired);
        prop_assert_eq!(count(Seen::Rejected(2)), report.timed_out);
        prop_assert_eq!(count(Seen::Rejected(3)), report.failed);
        // Closed (abandoned or refused), cut off, or gone: cancelled (with
        // the withdrawn), discarded, or never offered (refused at the call,
        // or given up while waiting for room).
        prop_assert_eq!(
            count(Seen::Rejected(4)) + count(Seen::Rejected(5)) + count(Seen::GaveUp),
            report.cancelled + report.discarded + (calls - report.produced),
            "{}",
            report
        );
        prop_assert!(report.withdrawn <= count(Seen::GaveUp));
        if case.stop.is_none() {
            prop_assert_eq!(count(Seen::Rejected(4)) + count(Seen::Rejected(5)), 0);
            prop_assert_eq!(report.cancelled, report.withdrawn);
        }
        if case.policy != ShedPolicy::Backpressure && case.stop.is_none() {
            prop_assert_eq!(report.produced, calls, "every call offered at once");
            prop_assert_eq!(count(Seen::GaveUp), report.withdrawn + report.discarded);
        }
        // Settlement agrees: one record per call taken, withdrawn ones so named.
        prop_assert_eq!(records.len() as u64, report.produced);
        let withdrawn = records
            .iter()
            .filter(|r| r.outcome == Outcome::Cancelled(Stage::Withdrawn))
            .count();
        prop_assert_eq!(withdrawn as u64, report.withdrawn);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
        #[test]
        fn calls_dropped_at_random_points_keep_both_laws_and_the_callers_counts(case in cases()) {
            common::quiet_planned_panics();
            common::paused_runtime().block_on(run_case(case))?;
        }
    }
}

// ===== on a multi-thread runtime =====

/// Many callers on many threads, giving up at random: every call counted
/// once, both laws exact, and no caller got an answer that was not counted
/// delivered. Bounded: 20 rounds of 200 calls.
#[test]
fn callers_giving_up_on_a_multi_thread_runtime_keep_the_books_exact() {
    common::with_deadlock_guard(common::DEADLOCK, || {
        let runtime = common::multi_thread_runtime();
        for round in 0..20u64 {
            let policy = common::POLICIES[round as usize % 3];
            let config = FanOutConfig::new(3, policy).capacity(4);
            let (caller, shutdown) = runtime.block_on(async {
                caller(config, |x: u64| async move {
                    if x % 3 == 0 {
                        tokio::task::yield_now().await;
                    }
                    x
                })
            });
            let seen = runtime.block_on(async move {
                let mut clients = tokio::task::JoinSet::new();
                for x in 0..200u64 {
                    let call = caller.call(x);
                    clients.spawn(async move {
                        let answer = if (x + round) % 4 == 0 {
                            // Gives up after one poll, wherever the call is.
                            let mut call = std::pin::pin!(call);
                            match futures::poll!(call.as_mut()) {
                                Poll::Ready(answer) => answer,
                                Poll::Pending => return 2,
                            }
                        } else {
                            call.await
                        };
                        usize::from(answer.is_err())
                    });
                }
                drop(caller);
                let mut seen = [0u64; 3]; // answered, rejected, gave up
                while let Some(done) = clients.join_next().await {
                    seen[done.expect("client")] += 1;
                }
                seen
            });
            let report = runtime.block_on(shutdown.join());
            let [answered, rejected, gave_up] = seen;
            assert!(report.is_conserved(), "{report}");
            assert_eq!(answered + rejected + gave_up, 200);
            // Nothing but withdrawals cancels here (no stop).
            assert_eq!(report.cancelled, report.withdrawn, "{report}");
            // A caller that gave up may have left just after its answer was
            // stored (counted delivered or dropped, never read): on this
            // runtime a worker or a pusher on another thread can answer
            // between its last poll and its drop. What callers read, the
            // books counted.
            assert!(answered <= report.delivered, "{report}");
            assert!(rejected <= report.dropped, "{report}");
        }
    });
}
