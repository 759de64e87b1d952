//! Adversarial review of the redesigned hot path (bc82dc0..38802e4): the
//! queue's own wait list for idle workers, the low-water wake-up of the
//! `Backpressure` intake, the results buffer under one lock, the intake's
//! "pull what fits, yield before shedding" and the worker's yield in turn.
//!
//! Deterministic tests run on a paused current-thread runtime with exact
//! values; stress tests run bounded rounds on 2 threads, every wait under a
//! timeout. Tests marked `#[ignore = "BUG: ..."]` fail on the reviewed code.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use backpressure_pipeline::ResultOrder;
use backpressure_pipeline::{
    FanOutConfig, FanOutExt, IntakeEnd, Offer, Outcome, ShedPolicy, ShutdownHandle, Stats,
};
use futures::{StreamExt, stream};
use tokio::time::{Instant, sleep, timeout};

mod common;
use common::{GUARD, ms, paused_runtime, sorted, within};

// ===== helpers =====

/// Wakes itself once and yields: the task goes to the back of the run queue
/// (for a `block_on` future: polled again after the next batch of tasks).
async fn self_wake() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

/// Items in `produced` that a snapshot shows nowhere: not in an outcome,
/// not queued, not in flight. On a current-thread runtime, read from a task
/// while no pipeline task runs, this is exact (the intake holds no pulled
/// item across an await).
fn unaccounted(s: &Stats) -> i64 {
    let outcomes = s.processed + s.dropped + s.failed + s.timed_out + s.expired + s.cancelled;
    s.produced as i64 - outcomes as i64 - s.queue_depth as i64 - s.in_flight as i64
}

/// Drains `results` while joining, under a guard; returns the results, the
/// report and the instant `join` resolved. Checks both laws.
async fn drain<T>(
    results: backpressure_pipeline::BoundedFanOut<T>,
    handle: ShutdownHandle,
) -> (Vec<T>, backpressure_pipeline::Report, Instant) {
    let (out, report, at) = common::drain_and_join_at(results, handle, GUARD).await;
    assert_eq!(report.delivered, out.len() as u64, "{report}");
    (out, report, at)
}

/// Runs `f` on a thread of its own and fails if it does not finish within
/// `limit`: for code that could deadlock on a `std` mutex (a blocked thread
/// ignores tokio timeouts).
fn on_thread_within(limit: Duration, what: &str, f: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    match rx.recv_timeout(limit) {
        Ok(()) => {}
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what}: deadlocked"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    }
}

// ===== the worker's yield in turn (d867c43): an item taken but counted nowhere =====

/// Backpressure, capacity 1, one worker, instant handler: every take wakes
/// the waiting intake and empties the queue, so the worker yields in turn
/// with the item in hand before `counters.took()`. The block_on future looks
/// at the books every ~61 task polls until it sees that window, then returns,
/// and the runtime is dropped with the worker parked there.
fn run_until_an_item_is_counted_nowhere() -> (
    backpressure_pipeline::BoundedFanOut<u32>,
    ShutdownHandle,
    Option<Stats>,
) {
    let rt = paused_runtime();
    let out = rt.block_on(async {
        let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
            .capacity(1)
            .output_capacity(100_000);
        let (results, handle) =
            stream::iter(0..20_000u32).bounded_fan_out_with(config, |x| async move { x });
        let mut seen = None;
        for _ in 0..20_000 {
            self_wake().await;
            let stats = handle.stats();
            if unaccounted(&stats) != 0 {
                seen = Some(stats);
                break;
            }
        }
        (results, handle, seen)
    });
    drop(rt); // every task of the pipeline is dropped where it stands
    out
}

#[test]
fn a_runtime_dropped_while_a_worker_yields_in_turn_still_balances() {
    let (results, handle, seen) = run_until_an_item_is_counted_nowhere();
    // The worker counts the item in flight before it yields: no window.
    assert_eq!(seen, None, "a snapshot showed an item counted nowhere");
    let report = paused_runtime().block_on(async move {
        drop(results);
        handle.join().await
    });
    assert!(
        report.is_conserved(),
        "an item vanished with its worker task: {report}"
    );
}

#[test]
fn a_snapshot_on_one_thread_shows_every_taken_item_queued_or_in_flight() {
    let rt = paused_runtime();
    rt.block_on(async {
        let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
            .capacity(1)
            .output_capacity(100_000);
        let (results, handle) =
            stream::iter(0..5_000u32).bounded_fan_out_with(config, |x| async move { x });
        for _ in 0..5_000 {
            self_wake().await;
            let stats = handle.stats();
            assert_eq!(
                unaccounted(&stats),
                0,
                "an item taken by a worker is neither queued nor in flight: {stats:?}"
            );
        }
        handle.abort();
        drop(results);
        assert!(handle.join().await.is_conserved());
    });
}

/// The runtime dropped after `k` turns of the `block_on` future (one turn
/// per ~61 task polls), for every `k` below 64 under Backpressure at
/// capacity 1 and 3 (and a few under the shedding policies): every report
/// the crate returns, here the fallback one, must balance. Passes at
/// bc82dc0; fails from d867c43 on, at almost every `k` for capacity 1.
#[test]
fn a_runtime_dropped_at_any_point_still_yields_a_conserved_report() {
    let mut broken = Vec::new();
    let mut runs = 0;
    for (policy, turns) in [
        (ShedPolicy::Backpressure, 64),
        (ShedPolicy::DropNewest, 16),
        (ShedPolicy::DropOldest, 16),
    ] {
        for capacity in [1, 3] {
            for k in 0..turns {
                runs += 1;
                let rt = paused_runtime();
                let (results, handle) = rt.block_on(async {
                    let config = FanOutConfig::new(2, policy)
                        .capacity(capacity)
                        .output_capacity(100_000);
                    let (results, handle) = stream::iter(0..100_000u32)
                        .bounded_fan_out_with(config, |x| async move { x });
                    for _ in 0..k {
                        self_wake().await;
                    }
                    (results, handle)
                });
                drop(rt);
                let report = paused_runtime().block_on(async move {
                    drop(results);
                    handle.join().await
                });
                if !report.is_conserved() {
                    broken.push(format!("{policy} capacity {capacity} k {k}: {report}"));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "{} of {runs} runs unbalanced:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

// ===== Backpressure: the low-water mark (23887da) =====

/// W=1, C=4, 10 ms handlers, `shutdown()` at 15 ms. The intake fills the
/// queue at t=0 (0..=3), is woken at the low-water mark (2 queued) by the
/// take at 10 ms and pulls 4, 5; at 30 ms the queue is back at the mark, the
/// intake wakes, sees the stop and pulls nothing more. 6 items, one worker:
/// join at 60 ms.
#[tokio::test(start_paused = true)]
async fn backpressure_shutdown_while_the_intake_waits_for_the_low_water_mark() {
    let start = Instant::now();
    let pulls = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&pulls);
    let input = stream::iter(0..100u32).map(move |x| {
        log.lock().unwrap().push((x, start.elapsed()));
        x
    });
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(4);
    let (results, handle) = input.bounded_fan_out_with(config, |x| async move {
        sleep(ms(10)).await;
        x
    });
    let controller = handle.controller();
    tokio::spawn(async move {
        sleep(ms(15)).await;
        controller.shutdown();
    });
    let (out, report, at) = drain(results, handle).await;
    assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    assert_eq!(
        *pulls.lock().unwrap(),
        [
            (0, ms(0)),
            (1, ms(0)),
            (2, ms(0)),
            (3, ms(0)),
            (4, ms(10)),
            (5, ms(10))
        ]
    );
    assert_eq!(
        (report.produced, report.processed, report.dropped),
        (6, 6, 0)
    );
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_eq!((report.workers_joined, report.aborted), (1, 0));
    assert_eq!(at - start, ms(60));
}

/// W=2, C=2, handlers that never finish, `shutdown()` at 10 ms with a 50 ms
/// drain: the intake parks for room (full queue, workers stuck), and only the
/// abort at the deadline wakes it. Exact counts, join at 60 ms.
#[tokio::test(start_paused = true)]
async fn backpressure_intake_parked_for_room_is_released_by_the_drain_deadline() {
    let start = Instant::now();
    let config = FanOutConfig::new(2, ShedPolicy::Backpressure)
        .capacity(2)
        .drain_timeout(ms(50));
    let (results, handle) =
        stream::iter(0..100u32).bounded_fan_out_with(config, |_| std::future::pending::<u32>());
    sleep(ms(10)).await;
    let stats = handle.stats();
    assert_eq!(
        (stats.produced, stats.queue_depth, stats.in_flight),
        (4, 2, 2)
    );
    handle.shutdown();
    let (out, report, at) = drain(results, handle).await;
    assert!(out.is_empty());
    assert_eq!(
        (report.produced, report.processed, report.cancelled),
        (4, 0, 4)
    );
    assert_eq!((report.workers_joined, report.aborted), (0, 2));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_eq!(at - start, ms(60));
}

/// Capacity 2 (low-water mark 1), max queue age 150 ms, one worker at 100 ms
/// per item, 6 items: the intake refills at each mark, so items 2 and 5 wait
/// 200 ms and expire; join at 400 ms.
#[tokio::test(start_paused = true)]
async fn backpressure_with_a_maximum_queue_age_expires_exactly_the_late_items() {
    let start = Instant::now();
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
        .capacity(2)
        .max_queue_age(ms(150));
    let (results, handle) = stream::iter(0..6u32).bounded_fan_out_with(config, |x| async move {
        sleep(ms(100)).await;
        x
    });
    let (out, report, at) = drain(results, handle).await;
    assert_eq!(out, [0, 1, 3, 4]);
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.expired,
            report.dropped
        ),
        (6, 4, 2, 0)
    );
    assert_eq!(at - start, ms(400));
}

/// 64 idle workers, capacity 1, 128 ready items, 10 ms handlers: every take
/// wakes the intake, which refills the one slot; the 64 workers all start at
/// t=0, and the next 64 at 10 ms. Nothing is shed, join at 20 ms.
#[tokio::test(start_paused = true)]
async fn backpressure_capacity_1_feeds_64_idle_workers_at_once() {
    let start = Instant::now();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (Arc::clone(&running), Arc::clone(&peak));
    let config = FanOutConfig::new(64, ShedPolicy::Backpressure).capacity(1);
    let (results, handle) = stream::iter(0..128u32).bounded_fan_out_with(config, move |x| {
        let (running, peak) = (Arc::clone(&r), Arc::clone(&p));
        async move {
            let now = running.fetch_add(1, SeqCst) + 1;
            peak.fetch_max(now, SeqCst);
            sleep(ms(10)).await;
            running.fetch_sub(1, SeqCst);
            x
        }
    });
    let (out, report, at) = drain(results, handle).await;
    assert_eq!(sorted(&out), (0..128).collect::<Vec<_>>());
    assert_eq!((report.processed, report.dropped), (128, 0));
    assert_eq!(peak.load(SeqCst), 64);
    assert_eq!(at - start, ms(20));
}

// ===== the intake pulls only what fits, then yields before shedding (d84dbb6, 61e5647) =====

/// 64 idle workers, capacity 1, 128 ready items, 10 ms handlers, shedding
/// policies: one item per pull while there is room, a yield in turn after
/// each push that woke a worker, so all 64 start and one more is queued;
/// the other 63 meet a full queue with every worker busy.
#[tokio::test(start_paused = true)]
async fn a_burst_into_64_idle_workers_and_one_slot_sheds_only_what_cannot_fit() {
    for (policy, kept) in [
        (ShedPolicy::DropNewest, 64u32),
        (ShedPolicy::DropOldest, 127u32),
    ] {
        let start = Instant::now();
        let shed = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&shed);
        let config = FanOutConfig::new(64, policy)
            .capacity(1)
            .on_shed(move |x| log.lock().unwrap().push(x));
        let (results, handle) =
            stream::iter(0..128u32).bounded_fan_out_with(config, |x| async move {
                sleep(ms(10)).await;
                x
            });
        let (out, report, at) = drain(results, handle).await;
        let mut expected: Vec<u32> = (0..64).collect();
        expected.push(kept);
        assert_eq!(sorted(&out), expected, "{policy}");
        assert_eq!((report.processed, report.dropped), (65, 63), "{policy}");
        let mut shed = shed.lock().unwrap().clone();
        shed.sort_unstable();
        let expected_shed: Vec<u32> = (64..128).filter(|x| *x != kept).collect();
        assert_eq!(shed, expected_shed, "{policy}");
        assert_eq!(at - start, ms(20), "{policy}");
    }
}

/// The documented example of `FanOutConfig::capacity`: capacity 4, 4 idle
/// workers, 6 ready items: nothing is shed.
#[tokio::test(start_paused = true)]
async fn the_documented_burst_into_idle_workers_sheds_nothing() {
    for policy in [ShedPolicy::DropNewest, ShedPolicy::DropOldest] {
        let config = FanOutConfig::new(4, policy).capacity(4);
        let (results, handle) =
            stream::iter(0..6u32).bounded_fan_out_with(config, |x| async move {
                sleep(ms(10)).await;
                x
            });
        let (out, report, _) = drain(results, handle).await;
        assert_eq!(sorted(&out), [0, 1, 2, 3, 4, 5], "{policy}");
        assert_eq!((report.processed, report.dropped), (6, 0), "{policy}");
    }
}

/// One worker with an instant handler keeps up with a ready input on one
/// thread, capacity 1: each push wakes it and the intake yields behind it
/// before pulling again, so nothing is ever shed.
#[tokio::test(start_paused = true)]
async fn an_instant_worker_keeps_up_with_a_ready_input_through_one_slot() {
    for policy in [ShedPolicy::DropNewest, ShedPolicy::DropOldest] {
        let config = FanOutConfig::new(1, policy)
            .capacity(1)
            .output_capacity(20_000);
        let (results, handle) =
            stream::iter(0..10_000u32).bounded_fan_out_with(config, |x| async move { x });
        let (out, report, _) = drain(results, handle).await;
        assert_eq!(out, (0..10_000).collect::<Vec<_>>(), "{policy}");
        assert_eq!((report.processed, report.dropped), (10_000, 0), "{policy}");
    }
}

/// Backpressure with settlement, C=4, one worker at 10 ms, `shutdown()` at
/// 15 ms, when the intake has just refilled the queue (at the low-water mark,
/// 10 ms) and parked for room again. Its wait for room also watches the
/// stop, so it hands the input back at the shutdown itself, not at the next
/// low-water mark (30 ms) as the reviewed design did, nor at the first free
/// slot (20 ms) as bc82dc0 did.
#[tokio::test(start_paused = true)]
async fn backpressure_hands_the_input_back_at_the_shutdown_while_waiting_for_room() {
    let start = Instant::now();
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(4);
    let settled = common::settled(
        stream::iter(0..100u32),
        config,
        |x| *x,
        |x| async move {
            sleep(ms(10)).await;
            x
        },
    );
    let controller = settled.shutdown.controller();
    tokio::spawn(async move {
        sleep(ms(15)).await;
        let stats = controller.stats();
        assert_eq!((stats.produced, stats.queue_depth), (6, 4), "{stats:?}");
        controller.shutdown();
    });
    let input = settled.input;
    let back = tokio::spawn(async move {
        let mut rest = input.await.expect("stopped early");
        (Instant::now() - start, rest.next().await)
    });
    let (out, records, report) = within(GUARD, "settled", async {
        tokio::join!(
            settled.results.collect::<Vec<_>>(),
            settled.settlements.collect::<Vec<_>>(),
            settled.shutdown.join(),
        )
    })
    .await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(out, (0..6).collect::<Vec<_>>());
    assert_eq!(records.len(), 6);
    assert_eq!((report.produced, report.intake), (6, IntakeEnd::Stopped));
    let (at, next) = back.await.unwrap();
    assert_eq!(next, Some(6), "the next item stays the caller's");
    assert_eq!(at, ms(15));
}

// ===== the results buffer (08739ca) =====

/// 64 workers, output capacity 1, nobody reads: one result is buffered
/// (the first worker to finish then takes another item), all 64 workers
/// wait in line to hand theirs over, the queue holds one more item and the
/// Backpressure intake waits: `results_waiting` is at its documented
/// maximum, workers + output capacity. An abort discards all 65 results and
/// cancels the queued item; every handler had completed, so all 64 workers
/// count joined.
#[tokio::test(start_paused = true)]
async fn an_abort_releases_63_senders_waiting_in_line_for_a_one_slot_output() {
    let config = FanOutConfig::new(64, ShedPolicy::Backpressure)
        .capacity(1)
        .output_capacity(1);
    let (mut results, handle) =
        stream::iter(0..1_000u32).bounded_fan_out_with(config, |x| async move { x });
    sleep(ms(1)).await;
    let stats = handle.stats();
    assert_eq!(
        (
            stats.produced,
            stats.processed,
            stats.results_waiting,
            stats.queue_depth
        ),
        (66, 65, 65, 1)
    );
    handle.abort();
    assert_eq!(results.next().await, None, "an abort ends the results");
    let report = within(GUARD, "join", handle.join()).await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.delivered,
            report.discarded,
            report.cancelled
        ),
        (66, 65, 0, 65, 1)
    );
    assert_eq!((report.workers_joined, report.aborted), (64, 0));
}

/// The same line of 63 waiting senders, drained by a consumer that reads one
/// result per ms: each pop lets exactly one sender in, nothing is lost or
/// duplicated, and every one of 300 items arrives.
#[tokio::test(start_paused = true)]
async fn senders_waiting_in_line_are_let_in_one_per_result_read() {
    let config = FanOutConfig::new(64, ShedPolicy::Backpressure)
        .capacity(1)
        .output_capacity(1);
    let (mut results, handle) =
        stream::iter(0..300u32).bounded_fan_out_with(config, |x| async move { x });
    let mut out = Vec::new();
    while let Some(x) = within(GUARD, "next", results.next()).await {
        out.push(x);
        let stats = handle.stats();
        assert!(stats.results_waiting <= 65, "{stats:?}");
        sleep(ms(1)).await;
    }
    let report = within(GUARD, "join", handle.join()).await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(sorted(&out), (0..300).collect::<Vec<_>>());
    assert_eq!(
        (report.processed, report.delivered, report.dropped),
        (300, 300, 0)
    );
}

/// Ordered output, 64 workers, output capacity 1 (window 65), handlers of
/// scattered length, a slow reader: input order exactly, nothing lost, and
/// never more results waiting than the window.
#[tokio::test(start_paused = true)]
async fn ordered_output_with_64_workers_and_a_one_slot_window_keeps_input_order() {
    for policy in [ShedPolicy::Backpressure, ShedPolicy::DropNewest] {
        let config = FanOutConfig::new(64, policy)
            .capacity(8)
            .output_capacity(1)
            .result_order(ResultOrder::Input);
        let (mut results, handle) =
            stream::iter(0..500u32).bounded_fan_out_with(config, |x| async move {
                sleep(ms(u64::from(x * 37 % 17))).await;
                x
            });
        let mut out = Vec::new();
        while let Some(x) = within(GUARD, "next", results.next()).await {
            out.push(x);
            let stats = handle.stats();
            assert!(stats.results_waiting <= 65, "{stats:?}");
            if x % 3 == 0 {
                sleep(ms(1)).await;
            }
        }
        let report = within(GUARD, "join", handle.join()).await;
        assert!(report.is_conserved(), "{report}");
        assert!(
            out.windows(2).all(|w| w[0] < w[1]),
            "{policy}: out of order"
        );
        assert_eq!(out.len() as u64, report.processed);
        if policy == ShedPolicy::Backpressure {
            assert_eq!(out, (0..500).collect::<Vec<_>>());
        }
    }
}

/// Ordered output: the consumer drops `results` while workers wait for the
/// window (a reader that stopped): the window closes, the rest is
/// discarded, and the pipeline drains to its natural end.
#[tokio::test(start_paused = true)]
async fn ordered_output_dropped_while_workers_wait_for_the_window() {
    let config = FanOutConfig::new(4, ShedPolicy::Backpressure)
        .capacity(2)
        .output_capacity(1)
        .result_order(ResultOrder::Input);
    let (mut results, handle) =
        stream::iter(0..50u32).bounded_fan_out_with(config, |x| async move {
            sleep(ms(1)).await;
            x
        });
    assert_eq!(results.next().await, Some(0));
    sleep(ms(20)).await; // the window (4 + 1) is used up again
    let stats = handle.stats();
    // Item 0 was delivered and gave its turn back: seqs 0..=5 taken.
    assert_eq!(
        (stats.processed, stats.delivered, stats.results_waiting),
        (6, 1, 5),
        "{stats:?}"
    );
    drop(results);
    let report = within(GUARD, "join", handle.join()).await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.delivered,
            report.discarded
        ),
        (50, 50, 1, 49)
    );
    assert_eq!(report.intake, IntakeEnd::Exhausted);
}

/// Latest-only, 64 workers: a result is either the one the reader gets or
/// discarded, never both.
#[tokio::test(start_paused = true)]
async fn latest_only_with_64_workers_delivers_or_discards_each_result_once() {
    let config = FanOutConfig::new(64, ShedPolicy::Backpressure)
        .capacity(1)
        .result_order(ResultOrder::LatestOnly);
    let (mut results, handle) =
        stream::iter(0..1_000u32).bounded_fan_out_with(config, |x| async move {
            sleep(ms(u64::from(x % 5))).await;
            x
        });
    let mut out = Vec::new();
    while let Some(x) = within(GUARD, "next", results.next()).await {
        out.push(x);
        sleep(ms(3)).await;
    }
    let report = within(GUARD, "join", handle.join()).await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!((report.produced, report.processed), (1_000, 1_000));
    assert_eq!(report.delivered, out.len() as u64);
    let mut unique = out.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), out.len(), "a result delivered twice");
}

// ===== extreme sizes =====

/// The largest capacities (`MAX_CAPACITY`, the semaphore limit) in every
/// mode that builds a semaphore or a window from them: no panic at the call
/// or when permits come back, and the run is exact.
#[tokio::test(start_paused = true)]
async fn the_largest_capacities_work_in_every_mode() {
    let max = FanOutConfig::<u32>::MAX_CAPACITY;
    for (policy, ordered, latest) in [
        (ShedPolicy::Backpressure, true, false),
        (ShedPolicy::Backpressure, false, true),
        (ShedPolicy::DropOldest, true, false),
        (ShedPolicy::Backpressure, false, false),
    ] {
        let config = FanOutConfig::new(3, policy)
            .capacity(max)
            .output_capacity(max)
            .result_order(common::order(ordered, latest));
        let (results, handle) =
            stream::iter(0..300u32).bounded_fan_out_with(config, |x| async move {
                sleep(ms(u64::from(x % 3))).await;
                x
            });
        let (out, report, _) = drain(results, handle).await;
        assert_eq!(report.processed, 300, "{policy}");
        if ordered {
            assert_eq!(out, (0..300).collect::<Vec<_>>());
        }
    }
    let config = FanOutConfig::new(3, ShedPolicy::Backpressure).capacity(max);
    let (feeder, results, handle) =
        backpressure_pipeline::feeder(config, |x: u32| async move { x });
    for x in 0..300 {
        assert!(feeder.send(x).await.is_queued());
    }
    drop(feeder);
    let (out, report, _) = drain(results, handle).await;
    assert_eq!((out.len(), report.processed), (300, 300));
}

/// 4,096 workers on a queue of 1 under each policy: every parked worker is
/// woken in turn, nothing is lost, every worker joins.
#[tokio::test(start_paused = true)]
async fn four_thousand_workers_on_a_one_slot_queue() {
    for policy in [
        ShedPolicy::Backpressure,
        ShedPolicy::DropNewest,
        ShedPolicy::DropOldest,
    ] {
        let start = Instant::now();
        let config = FanOutConfig::new(4_096, policy).capacity(1);
        let (results, handle) =
            stream::iter(0..8_192u32).bounded_fan_out_with(config, |x| async move {
                sleep(ms(10)).await;
                x
            });
        let (out, report, at) = drain(results, handle).await;
        assert_eq!(report.workers_joined, 4_096, "{policy}");
        match policy {
            ShedPolicy::Backpressure => {
                assert_eq!(sorted(&out), (0..8_192).collect::<Vec<_>>());
                assert_eq!(at - start, ms(20));
            }
            // All 4,096 start at once and one more is queued.
            _ => assert_eq!(
                (report.processed, report.dropped),
                (4_097, 4_095),
                "{policy}"
            ),
        }
    }
}

// ===== re-entrancy: user code that calls back into the pipeline =====

/// A result whose `Drop` calls back into the pipeline.
struct CallsBack(Arc<Mutex<Option<backpressure_pipeline::Controller>>>);

impl Drop for CallsBack {
    fn drop(&mut self) {
        // Cloned out first: the slot's lock is not held across the calls.
        let controller = self.0.lock().unwrap().clone();
        if let Some(controller) = controller {
            let _ = controller.stats();
            controller.abort();
        }
    }
}

/// Results discarded from the buffer (drop of `results`), from a waiting
/// sender and by an abort run user `Drop` code that takes the queue's and
/// the outlet's locks again (`stats()`, `abort()`), and the `on_cancel` hook
/// calls `abort()` from inside an abort: no deadlock, the books balance.
#[test]
fn discarded_results_whose_drop_calls_back_into_the_pipeline_do_not_deadlock() {
    on_thread_within(Duration::from_secs(20), "re-entrant drop", || {
        paused_runtime().block_on(async {
            let slot = Arc::new(Mutex::new(None::<backpressure_pipeline::Controller>));
            let s = Arc::clone(&slot);
            let config = FanOutConfig::new(8, ShedPolicy::Backpressure)
                .capacity(2)
                .output_capacity(2)
                .on_cancel({
                    let s = Arc::clone(&slot);
                    move |_: u32| {
                        let controller = s.lock().unwrap().clone();
                        if let Some(c) = controller {
                            let _ = c.stats();
                            c.abort();
                        }
                    }
                });
            let (results, handle) =
                stream::iter(0..100u32).bounded_fan_out_with(config, move |_| {
                    let s = Arc::clone(&s);
                    async move { CallsBack(s) }
                });
            *slot.lock().unwrap() = Some(handle.controller());
            sleep(ms(1)).await;
            drop(results); // discards 2 buffered + wakes 6 waiting senders
            let report = within(GUARD, "join", handle.join()).await;
            assert!(report.is_conserved(), "{report}");
            assert_eq!(report.delivered, 0);
            slot.lock().unwrap().take();
        });
    });
}

/// A handler and an `on_shed` hook that read `stats()` (queue lock) and a
/// handler that calls `shutdown()` of its own pipeline: no deadlock.
#[test]
fn hooks_and_handlers_that_read_the_books_do_not_deadlock() {
    on_thread_within(Duration::from_secs(20), "re-entrant hooks", || {
        paused_runtime().block_on(async {
            let slot: Arc<Mutex<Option<backpressure_pipeline::Controller>>> =
                Arc::new(Mutex::new(None));
            let (h, s) = (Arc::clone(&slot), Arc::clone(&slot));
            let config = FanOutConfig::new(2, ShedPolicy::DropOldest)
                .capacity(1)
                .on_shed(move |_: u32| {
                    let controller = s.lock().unwrap().clone();
                    if let Some(c) = controller {
                        let _ = c.stats();
                    }
                });
            let (results, handle) =
                stream::iter(0..200u32).bounded_fan_out_with(config, move |x| {
                    let h = Arc::clone(&h);
                    async move {
                        let controller = h.lock().unwrap().clone();
                        if let Some(c) = controller {
                            let _ = c.stats();
                            if x == 150 {
                                c.shutdown();
                            }
                        }
                        tokio::task::yield_now().await;
                        x
                    }
                });
            *slot.lock().unwrap() = Some(handle.controller());
            let (_, report, _) = drain(results, handle).await;
            assert_eq!(report.produced, report.processed + report.dropped);
            slot.lock().unwrap().take();
        });
    });
}

// ===== the push front =====

/// Backpressure push front, W=1, C=1: a `send` that gives up its place in
/// line (dropped by a timeout) takes no room with it: the next `send` is let
/// in by the next take.
#[tokio::test(start_paused = true)]
async fn a_cancelled_send_gives_up_its_place_without_taking_room() {
    let start = Instant::now();
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
    let (feeder, results, handle) = backpressure_pipeline::feeder(config, |x: u32| async move {
        sleep(ms(100)).await;
        x
    });
    assert!(feeder.send(0).await.is_queued());
    tokio::task::yield_now().await; // the worker takes 0
    assert!(feeder.send(1).await.is_queued());
    assert!(
        timeout(ms(10), feeder.send(2)).await.is_err(),
        "no room until 100 ms"
    );
    let third = within(GUARD, "send", feeder.send(3)).await;
    assert!(third.is_queued());
    assert_eq!(start.elapsed(), ms(100));
    assert_eq!(feeder.offer(4), Offer::Full(4));
    drop(feeder);
    let (out, report, at) = drain(results, handle).await;
    assert_eq!(out, [0, 1, 3]);
    assert_eq!(
        (report.produced, report.processed, report.dropped),
        (3, 3, 0)
    );
    assert_eq!(at - start, ms(300));
}

/// Push front, 64 workers, capacity 1, every policy, 4 producer tasks of
/// 2,000 items each on 2 threads: every offered item is queued or handed
/// back exactly once, the handed-back ones are never handled, and the report
/// agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_front_with_64_workers_counts_every_offer_once() {
    for policy in [
        ShedPolicy::Backpressure,
        ShedPolicy::DropNewest,
        ShedPolicy::DropOldest,
    ] {
        const PER: u64 = 2_000;
        let handled: Arc<Vec<AtomicU64>> =
            Arc::new((0..4 * PER).map(|_| AtomicU64::new(0)).collect());
        let h = Arc::clone(&handled);
        let config = FanOutConfig::new(64, policy).capacity(1).output_capacity(1);
        let (feeder, mut results, handle) = backpressure_pipeline::feeder(config, move |x: u64| {
            h[x as usize].fetch_add(1, SeqCst);
            async move {
                if x % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                x
            }
        });
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let feeder = feeder.clone();
                tokio::spawn(async move {
                    let mut back = Vec::new();
                    for i in 0..PER {
                        let id = p * PER + i;
                        let offer = if i % 2 == 0 {
                            feeder.send(id).await
                        } else {
                            feeder.offer(id)
                        };
                        match offer {
                            Offer::Queued => {}
                            Offer::Full(x) => {
                                // Not accepted: offer it again, waiting.
                                match feeder.send(x).await {
                                    Offer::Queued => {}
                                    other => panic!("{other:?}"),
                                }
                            }
                            other => back.push(other.into_item().unwrap()),
                        }
                    }
                    back
                })
            })
            .collect();
        drop(feeder);
        let run = async {
            let mut out = Vec::new();
            while let Some(x) = results.next().await {
                out.push(x);
            }
            let mut back = Vec::new();
            for p in producers {
                back.extend(p.await.unwrap());
            }
            (out, back, handle.join().await)
        };
        let (mut out, back, report) = timeout(Duration::from_secs(30), run)
            .await
            .expect("push front hung");
        assert!(report.is_conserved(), "{policy}: {report}");
        assert_eq!(report.produced, 4 * PER, "{policy}: {report}");
        assert_eq!(report.dropped, back.len() as u64, "{policy}");
        assert_eq!(report.processed, out.len() as u64, "{policy}");
        if policy == ShedPolicy::Backpressure {
            assert!(back.is_empty());
        }
        out.sort_unstable();
        assert!(
            out.windows(2).all(|w| w[0] < w[1]),
            "{policy}: a result twice"
        );
        for x in &back {
            assert_eq!(
                handled[*x as usize].load(SeqCst),
                0,
                "{policy}: {x} handed back and handled"
            );
        }
        for x in &out {
            assert_eq!(handled[*x as usize].load(SeqCst), 1, "{policy}: {x}");
        }
        assert_eq!(out.len() + back.len(), (4 * PER) as usize, "{policy}");
    }
}

// ===== settlement with the new intake =====

/// Backpressure with settlement and a small credit budget (below capacity +
/// workers): one record per item, every one processed, none shed.
#[tokio::test(start_paused = true)]
async fn backpressure_settled_with_few_credits_settles_every_item_once() {
    let config = FanOutConfig::new(4, ShedPolicy::Backpressure)
        .capacity(4)
        .settle_capacity(3);
    let settled = common::settled(
        stream::iter(0..200u32),
        config,
        |x| *x,
        |x| async move {
            sleep(ms(u64::from(x % 3))).await;
            x
        },
    );
    let (out, records, report) = within(GUARD, "settled", async {
        tokio::join!(
            settled.results.collect::<Vec<_>>(),
            settled.settlements.collect::<Vec<_>>(),
            settled.shutdown.join(),
        )
    })
    .await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(sorted(&out), (0..200).collect::<Vec<_>>());
    let mut keys: Vec<u32> = records.iter().map(|r| r.key).collect();
    keys.sort_unstable();
    assert_eq!(keys, (0..200).collect::<Vec<_>>());
    assert!(records.iter().all(|r| r.outcome == Outcome::Processed));
    assert!(settled.input.await.is_none());
}

// ===== multi-thread stress =====

#[derive(Clone, Copy, Debug)]
struct Round {
    policy: ShedPolicy,
    workers: usize,
    capacity: usize,
    output: usize,
    ordered: bool,
    latest: bool,
    max_age: Option<Duration>,
    /// Abort after this many results.
    abort_after: Option<usize>,
    /// Graceful shutdown after this many results.
    shutdown_after: Option<usize>,
    /// Fed by a producer task through a small channel (the intake parks on
    /// its input, holding its reservation), instead of a ready iterator.
    channel: bool,
}

/// One round over a ready input of `ids` items on the current (2-thread)
/// runtime; checks both laws, unique results, handled ⊆ pulled, shed and
/// handled disjoint.
async fn stress_round(round: Round, ids: u32) {
    let handled: Arc<Vec<AtomicU64>> = Arc::new((0..ids).map(|_| AtomicU64::new(0)).collect());
    let shed: Arc<Vec<AtomicU64>> = Arc::new((0..ids).map(|_| AtomicU64::new(0)).collect());
    let sh = Arc::clone(&shed);
    let mut config = FanOutConfig::new(round.workers, round.policy)
        .capacity(round.capacity)
        .output_capacity(round.output)
        .result_order(common::order(round.ordered, round.latest))
        .on_shed(move |x: u32| {
            sh[x as usize].fetch_add(1, SeqCst);
        });
    if let Some(age) = round.max_age {
        config = config.max_queue_age(age);
    }
    let h = Arc::clone(&handled);
    let (tx, rx) = async_channel::bounded(8);
    let producer = tokio::spawn(async move {
        if round.channel {
            for id in 0..ids {
                if tx.send(id).await.is_err() {
                    break;
                }
                if id % 3 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    let input: std::pin::Pin<Box<dyn futures::Stream<Item = u32> + Send>> = if round.channel {
        Box::pin(rx)
    } else {
        Box::pin(stream::iter(0..ids))
    };
    let (mut results, handle) = input.bounded_fan_out_with(config, move |x| {
        h[x as usize].fetch_add(1, SeqCst);
        async move {
            for _ in 0..x % 3 {
                tokio::task::yield_now().await;
            }
            x
        }
    });
    let run = async {
        let mut out = Vec::new();
        while let Some(x) = results.next().await {
            out.push(x);
            if round.abort_after == Some(out.len()) {
                handle.abort();
            }
            if round.shutdown_after == Some(out.len()) {
                handle.shutdown();
            }
        }
        (out, handle.join().await)
    };
    let (out, report) = match timeout(Duration::from_secs(20), run).await {
        Ok(done) => done,
        Err(_) => panic!("round hung: {round:?}"),
    };
    timeout(Duration::from_secs(20), producer)
        .await
        .expect("producer hung")
        .expect("producer panicked");
    assert!(report.is_conserved(), "{round:?}: {report}");
    assert_eq!(report.delivered, out.len() as u64, "{round:?}: {report}");
    if round.ordered {
        assert!(
            out.windows(2).all(|w| w[0] < w[1]),
            "{round:?}: out of order"
        );
    }
    let mut unique = out.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), out.len(), "{round:?}: a result twice");
    let mut handled_n = 0;
    for id in 0..ids as usize {
        let (h, s) = (handled[id].load(SeqCst), shed[id].load(SeqCst));
        assert!(h + s <= 1, "{round:?}: id {id} handled {h}, shed {s}");
        handled_n += h;
    }
    for x in &out {
        assert_eq!(handled[*x as usize].load(SeqCst), 1, "{round:?}: {x}");
    }
    assert_eq!(
        report.dropped,
        shed.iter().map(|s| s.load(SeqCst)).sum::<u64>()
    );
    assert_eq!(
        handled_n,
        report.processed + report.failed + report.timed_out + (report.aborted as u64),
        "{round:?}: {report}"
    );
    if round.abort_after.is_none() {
        // The default drain timeout (5 s) leaves time for everything.
        assert_eq!((report.cancelled, report.aborted), (0, 0), "{round:?}");
        if round.policy == ShedPolicy::Backpressure {
            assert_eq!(report.dropped, 0, "{round:?}");
        }
        if !round.latest {
            assert_eq!(report.discarded, 0, "{round:?}: {report}");
        }
    }
    if round.abort_after.is_none() && round.shutdown_after.is_none() {
        assert_eq!(report.produced, u64::from(ids), "{round:?}: {report}");
        assert_eq!((report.cancelled, report.aborted), (0, 0), "{round:?}");
        if round.policy == ShedPolicy::Backpressure {
            assert_eq!(report.dropped, 0, "{round:?}");
        }
        if !round.latest {
            assert_eq!(report.discarded, 0, "{round:?}: {report}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_64_workers_one_slot_queue_and_output_every_policy() {
    for (i, policy) in [
        ShedPolicy::Backpressure,
        ShedPolicy::DropNewest,
        ShedPolicy::DropOldest,
    ]
    .into_iter()
    .cycle()
    .take(9)
    .enumerate()
    {
        let round = Round {
            policy,
            workers: 64,
            capacity: [1, 2, 3][i / 3],
            output: 1,
            ordered: false,
            latest: false,
            max_age: None,
            abort_after: None,
            shutdown_after: None,
            channel: i % 2 == 1,
        };
        stress_round(round, 20_000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_ordered_and_latest_only_with_many_workers() {
    for i in 0..8 {
        let policy = [ShedPolicy::Backpressure, ShedPolicy::DropOldest][i % 2];
        let round = Round {
            policy,
            workers: [64, 3][i / 2 % 2],
            capacity: [1, 5][i / 4],
            output: 1,
            ordered: i % 4 < 2,
            latest: i % 4 >= 2,
            max_age: None,
            abort_after: None,
            shutdown_after: None,
            channel: i % 3 == 0,
        };
        stress_round(round, 10_000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_aborts_with_64_workers_in_every_output_mode() {
    for i in 0..24 {
        let policy = [
            ShedPolicy::Backpressure,
            ShedPolicy::DropNewest,
            ShedPolicy::DropOldest,
        ][i % 3];
        let round = Round {
            policy,
            workers: [64, 2][i % 2],
            capacity: 1 + i % 4,
            output: 1,
            ordered: i % 4 == 1,
            latest: i % 4 == 2,
            max_age: None,
            abort_after: Some(1 + 37 * i % 200),
            shutdown_after: None,
            channel: i % 5 < 2,
        };
        stress_round(round, 5_000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_a_tiny_maximum_queue_age_with_every_policy() {
    for i in 0..6 {
        let policy = [
            ShedPolicy::Backpressure,
            ShedPolicy::DropNewest,
            ShedPolicy::DropOldest,
        ][i % 3];
        let round = Round {
            policy,
            workers: [64, 1][i / 3],
            capacity: 4,
            output: 2,
            ordered: i == 1,
            latest: false,
            max_age: Some(Duration::from_micros(20)),
            abort_after: None,
            shutdown_after: None,
            channel: i % 2 == 0,
        };
        stress_round(round, 10_000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_graceful_shutdowns_with_64_workers_lose_nothing() {
    for i in 0..18 {
        let policy = [
            ShedPolicy::Backpressure,
            ShedPolicy::DropNewest,
            ShedPolicy::DropOldest,
        ][i % 3];
        let round = Round {
            policy,
            workers: [64, 4][i / 3 % 2],
            capacity: [1, 2, 9][i / 6],
            output: 1,
            ordered: i % 4 == 1,
            latest: i % 4 == 2,
            max_age: None,
            abort_after: None,
            shutdown_after: Some(1 + 53 * i % 300),
            channel: i % 2 == 0,
        };
        stress_round(round, 5_000).await;
    }
}

/// A parent token cancelled from another task while the Backpressure intake
/// is parked for room (64 workers, one-slot queue and output, a reader that
/// moves to a new task, so a new waker, every 7 results): a graceful stop
/// that loses nothing, on 2 threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_cancel_and_a_wandering_reader_under_backpressure() {
    for round in 0..10u64 {
        let parent = backpressure_pipeline::CancellationToken::new();
        let config = FanOutConfig::new(64, ShedPolicy::Backpressure)
            .capacity(1 + (round as usize % 3))
            .output_capacity(1)
            .result_order(common::order(round % 2 == 1, false))
            .cancel_token(parent.clone());
        let (mut results, handle) =
            stream::iter(0..u64::MAX).bounded_fan_out_with(config, |x| async move {
                if x % 5 == 0 {
                    tokio::task::yield_now().await;
                }
                x
            });
        let canceller = tokio::spawn(async move {
            sleep(Duration::from_micros(200 + 300 * round)).await;
            parent.cancel();
        });
        let run = async {
            let mut out = Vec::new();
            loop {
                let (back, chunk, ended) = tokio::spawn(async move {
                    let mut chunk = Vec::new();
                    while chunk.len() < 7 {
                        match results.next().await {
                            Some(x) => chunk.push(x),
                            None => return (results, chunk, true),
                        }
                    }
                    (results, chunk, false)
                })
                .await
                .unwrap();
                results = back;
                out.extend(chunk);
                if ended {
                    break;
                }
            }
            (out, handle.join().await)
        };
        let (out, report) = timeout(Duration::from_secs(20), run)
            .await
            .expect("a parked intake or reader was never woken");
        canceller.await.unwrap();
        assert!(report.is_conserved(), "{report}");
        assert_eq!(report.intake, IntakeEnd::Stopped);
        assert_eq!(
            (report.dropped, report.cancelled, report.discarded),
            (0, 0, 0),
            "{report}"
        );
        assert_eq!(out.len() as u64, report.produced);
        if round % 2 == 1 {
            assert_eq!(out, (0..report.produced).collect::<Vec<_>>());
        }
    }
}

/// The reader on a plain thread (`futures::executor`, no tokio budget, a
/// non-tokio waker) while 64 workers hand over through a one-slot buffer on
/// a 2-thread runtime: every result arrives, in order when ordered.
#[test]
fn a_reader_outside_tokio_is_woken_for_every_result() {
    let rt = common::multi_thread_runtime();
    for ordered in [false, true] {
        let (results, handle) = rt.block_on(async {
            let config = FanOutConfig::new(64, ShedPolicy::Backpressure)
                .capacity(2)
                .output_capacity(1)
                .result_order(common::order(ordered, false));
            stream::iter(0..20_000u32).bounded_fan_out_with(config, |x| async move {
                if x % 7 == 0 {
                    tokio::task::yield_now().await;
                }
                x
            })
        });
        let reader = std::thread::spawn(move || {
            futures::executor::block_on_stream(results).collect::<Vec<_>>()
        });
        let report = rt.block_on(async {
            timeout(Duration::from_secs(20), handle.join())
                .await
                .expect("join hung: a reader outside tokio was not woken")
        });
        let out = reader.join().unwrap();
        assert!(report.is_conserved(), "{report}");
        assert_eq!(report.delivered, 20_000);
        if ordered {
            assert_eq!(out, (0..20_000).collect::<Vec<_>>());
        } else {
            assert_eq!(sorted(&out), (0..20_000).collect::<Vec<_>>());
        }
    }
}

/// Dropping both halves mid-flight with 64 workers waiting in line for a
/// one-slot output and the Backpressure intake parked: every task ends and
/// the input is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_both_halves_with_senders_in_line_releases_everything() {
    for capacity in [1, 2, 7] {
        let dropped = Arc::new(AtomicBool::new(false));
        let input = common::with_drop_flag(stream::iter(0..u32::MAX), &dropped);
        let config = FanOutConfig::new(64, ShedPolicy::Backpressure)
            .capacity(capacity)
            .output_capacity(1);
        let (mut results, handle) = input.bounded_fan_out_with(config, |x| async move { x });
        for _ in 0..10 {
            timeout(Duration::from_secs(5), results.next())
                .await
                .expect("results stalled")
                .expect("ended early");
        }
        let controller = handle.controller();
        drop(results);
        drop(handle);
        timeout(Duration::from_secs(10), async {
            while !controller.is_finished() || !dropped.load(SeqCst) {
                sleep(ms(1)).await;
            }
        })
        .await
        .expect("pipeline outlived both halves");
    }
}
