//! Ending a pipeline: the natural end; a graceful `shutdown` that drains
//! queued and in-flight work within its deadline and classifies what the
//! deadline cut off (tokio#4534); an `abort` that ends at once; stops that
//! are idempotent; and a shutdown at any instant that keeps the books
//! (kanal#50, Xline#339) and never throws a finished result away (madara
//! PR #1221).
//!
//! All on paused, current-thread runtimes: times are exact virtual times.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, IntakeEnd, ShedPolicy, ShutdownHandle};
use futures::stream::{self, StreamExt};
use tokio::time::{Instant, sleep, sleep_until, timeout};

mod common;
use common::{
    DEADLOCK, GUARD, Log, Trace, alive_tasks, assert_no_task_alive, counts, drain_and_join_at,
    drain_sorted, endless, gated, item_counts, joined, ms, never, paced, send, settle, snapshot,
    sorted, within, work, workers,
};

use ShedPolicy::DropNewest;

// ===== natural end =====

#[tokio::test(start_paused = true)]
async fn natural_end_ends_results_and_joins_clean() {
    let start = Instant::now();
    let (mut results, handle) =
        futures::stream::iter(0..10u32).bounded_fan_out(2, DropNewest, |id| async move {
            work(id * 2, ms(10)).await
        });
    let mut out = Vec::new();
    let drain = async {
        while let Some(v) = results.next().await {
            out.push(v);
        }
        start.elapsed()
    };
    let (ended_at, report) = timeout(GUARD, async { tokio::join!(drain, handle.join()) })
        .await
        .unwrap();
    // 10 items, 2 at a time, 10 ms each.
    assert_eq!(ended_at, ms(50));
    assert_eq!(start.elapsed(), ms(50));
    out.sort_unstable();
    assert_eq!(out, (0..10).map(|x| x * 2).collect::<Vec<_>>());
    assert_eq!(results.next().await, None, "stays ended");

    assert_eq!(counts(&report), (10, 10, 0, 0, 0, 2, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert!(report.is_conserved());
    assert_eq!(report.clone(), report);
    assert_eq!(
        report.to_string(),
        "items: produced 10, processed 10, dropped 0, failed 0, timed out 0, cancelled 0; \
         results: delivered 10, discarded 0; workers: 2 joined, 0 cut off; \
         high-water mark 10; input exhausted"
    );
}

// ===== graceful shutdown =====

#[tokio::test(start_paused = true)]
async fn shutdown_drains_queued_and_in_flight_work_and_stops_pulling() {
    let start = Instant::now();
    let config = FanOutConfig::new(2, DropNewest)
        .capacity(8)
        .drain_timeout(Duration::from_secs(1));
    let (tx, results, handle) = gated(config);
    send(&tx, 0..6);
    sleep(ms(10)).await;
    let s = handle.stats();
    assert_eq!((s.produced, s.queue_depth, s.in_flight), (6, 4, 2));

    assert!(!handle.is_shutting_down());
    handle.shutdown();
    assert!(handle.is_shutting_down());
    // Offered after the request: never pulled.
    send(&tx, 100..110);
    settle().await;
    assert_eq!(handle.stats().produced, 6);

    let (out, report) = drain_sorted(results, handle).await;
    // 2 in flight finish at 100 ms, then 2 queued at 200 ms, the last 2 at 300 ms.
    assert_eq!(start.elapsed(), ms(300));
    assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    assert_eq!(counts(&report), (6, 6, 0, 0, 0, 2, 0));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn drain_deadline_counts_from_the_request_even_after_the_input_ended() {
    let start = Instant::now();
    let config = FanOutConfig::new(2, DropNewest).drain_timeout(ms(100));
    // The input is exhausted at t = 0; the work takes 300 ms.
    let (results, handle) =
        futures::stream::iter(0..6u32).bounded_fan_out_with(config, |id| work(id, ms(100)));
    sleep(ms(150)).await;
    handle.shutdown();
    let (out, report) = drain_sorted(results, handle).await;
    // Deadline 150 + 100 = 250 ms: 4 done (at 100 and 200 ms), 2 cut in flight.
    assert_eq!(start.elapsed(), ms(250));
    assert_eq!(out, [0, 1, 2, 3]);
    assert_eq!(counts(&report), (6, 4, 0, 0, 2, 0, 2));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
}

#[tokio::test(start_paused = true)]
async fn drain_timeout_aborts_queued_and_in_flight_leftovers() {
    let start = Instant::now();
    let config = FanOutConfig::new(2, DropNewest).drain_timeout(ms(150));
    let (results, handle) = endless(0..6).bounded_fan_out_with(config, |id| work(id, ms(100)));
    sleep(ms(10)).await;
    handle.shutdown();
    let (out, report) = drain_sorted(results, handle).await;
    // Deadline 160 ms: 2 done at 100 ms, 2 in flight and 2 queued are cut.
    assert_eq!(start.elapsed(), ms(160));
    assert_eq!(out, [0, 1]);
    assert_eq!(counts(&report), (6, 2, 0, 0, 4, 0, 2));
    assert_eq!(report.intake, IntakeEnd::Stopped);
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_never_completes_cannot_hang_shutdown() {
    let start = Instant::now();
    let config = FanOutConfig::new(2, DropNewest).drain_timeout(Duration::from_secs(1));
    let (results, handle) = endless(0..5).bounded_fan_out_with(config, never);
    settle().await;
    handle.shutdown();
    let (_, report) = drain_sorted(results, handle).await;
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // 2 cut in flight, 3 still queued: all cancelled.
    assert_eq!(counts(&report), (5, 0, 0, 0, 5, 0, 2));
}

#[tokio::test(start_paused = true)]
async fn the_default_drain_timeout_is_5_seconds() {
    assert_eq!(
        FanOutConfig::<u32>::DEFAULT_DRAIN_TIMEOUT,
        Duration::from_secs(5)
    );
    let start = Instant::now();
    let (results, handle) = endless(0..1).bounded_fan_out(1, DropNewest, never);
    settle().await;
    handle.shutdown();
    let (_, report) = drain_sorted(results, handle).await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(counts(&report), (1, 0, 0, 0, 1, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_zero_drain_timeout_aborts_at_once() {
    let start = Instant::now();
    let config = FanOutConfig::new(2, DropNewest).drain_timeout(Duration::ZERO);
    let (results, handle) = endless(0..3).bounded_fan_out_with(config, never);
    settle().await;
    handle.shutdown();
    let (_, report) = drain_sorted(results, handle).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(counts(&report), (3, 0, 0, 0, 3, 0, 2));
}

// ===== abort =====

#[tokio::test(start_paused = true)]
async fn abort_cancels_the_queue_and_cuts_in_flight_work() {
    let start = Instant::now();
    let config = FanOutConfig::new(3, DropNewest).capacity(8);
    let (results, handle) = endless(0..6).bounded_fan_out_with(config, |id| work(id, ms(100)));
    sleep(ms(10)).await;
    let s = handle.stats();
    assert_eq!((s.queue_depth, s.in_flight), (3, 3));

    handle.abort();
    assert!(handle.is_shutting_down());
    // The queue is abandoned by the call itself.
    let s = handle.stats();
    assert_eq!((s.queue_depth, s.cancelled), (0, 3));

    let (out, report) = drain_sorted(results, handle).await;
    assert_eq!(start.elapsed(), ms(10), "no waiting for the handlers");
    assert!(out.is_empty());
    assert_eq!(counts(&report), (6, 0, 0, 0, 6, 0, 3));
    assert_eq!(report.intake, IntakeEnd::Stopped);
}

#[tokio::test(start_paused = true)]
async fn abort_counts_idle_workers_as_joined() {
    let (results, handle) = endless(0..2).bounded_fan_out(3, DropNewest, never);
    settle().await;
    handle.abort();
    let (_, report) = drain_sorted(results, handle).await;
    assert_eq!(counts(&report), (2, 0, 0, 0, 2, 1, 2));
}

#[tokio::test(start_paused = true)]
async fn abort_during_a_drain_ends_it_now() {
    let start = Instant::now();
    let config = FanOutConfig::new(1, DropNewest).drain_timeout(Duration::from_secs(1));
    let (results, handle) = endless(0..3).bounded_fan_out_with(config, never);
    settle().await;
    handle.shutdown();
    sleep(ms(10)).await;
    handle.abort();
    let (_, report) = drain_sorted(results, handle).await;
    assert_eq!(start.elapsed(), ms(10));
    assert_eq!(counts(&report), (3, 0, 0, 0, 3, 0, 1));
}

// ===== idempotence =====

#[tokio::test(start_paused = true)]
async fn a_second_shutdown_does_not_restart_the_deadline() {
    let start = Instant::now();
    let config = FanOutConfig::new(1, DropNewest).drain_timeout(ms(100));
    let (results, handle) = endless(0..1).bounded_fan_out_with(config, never);
    settle().await;
    handle.shutdown();
    sleep(ms(50)).await;
    handle.shutdown();
    handle.shutdown();
    let (_, report) = drain_sorted(results, handle).await;
    assert_eq!(start.elapsed(), ms(100));
    assert_eq!(counts(&report), (1, 0, 0, 0, 1, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn repeated_aborts_count_each_item_once() {
    let config = FanOutConfig::new(1, DropNewest).capacity(4);
    let (results, handle) = endless(0..4).bounded_fan_out_with(config, never);
    settle().await;
    handle.abort();
    handle.abort();
    handle.shutdown(); // after an abort: no effect
    handle.abort();
    assert_eq!(handle.stats().cancelled, 3, "the 3 queued, once");
    let (_, report) = drain_sorted(results, handle).await;
    assert_eq!(counts(&report), (4, 0, 0, 0, 4, 0, 1));
}

#[tokio::test(start_paused = true)]
async fn shutdown_and_abort_after_the_end_change_nothing() {
    let (results, handle) =
        futures::stream::iter(0..4u32).bounded_fan_out(2, DropNewest, |id| work(id, ms(10)));
    let out: Vec<u32> = timeout(GUARD, results.collect()).await.unwrap();
    assert_eq!(out.len(), 4);
    while !handle.is_finished() {
        tokio::task::yield_now().await;
    }
    handle.shutdown();
    handle.abort();
    let report = joined(GUARD, handle).await;
    assert_eq!(counts(&report), (4, 4, 0, 0, 0, 2, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
}

// ===== the drain deadline classifies stuck handlers =====

#[tokio::test(start_paused = true)]
async fn case_10_drain_timeout_classifies_stuck_handlers() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let pulls = Trace::default();
    // The case as written: six items ready at once. The intake queues the
    // four that fit and yields to the workers it woke before pulling into
    // a full queue, so all six reach a worker or a slot and none is shed.
    let input = paced(&pulls, |i| (i < 6).then_some(Duration::ZERO));
    let config = FanOutConfig::new(4, ShedPolicy::DropNewest)
        .capacity(4)
        .drain_timeout(ms(50));
    let (results, handle) = input.bounded_fan_out_with(config, |id| async move {
        if id < 2 {
            std::future::pending::<()>().await;
        }
        sleep(ms(10)).await;
        id
    });

    sleep(ms(100)).await;
    handle.shutdown();
    let (out, report, joined_at) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert_eq!(
        joined_at - start,
        ms(150),
        "shutdown at 100 ms + 50 ms drain"
    );
    assert_eq!(sorted(&out), [2, 3, 4, 5]);
    assert_eq!(item_counts(&report), (6, 4, 0, 0, 2));
    assert_eq!(workers(&report), (2, 2));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_no_task_alive(baseline).await;
}

// ===== shutdown at any instant keeps the books =====

fn assert_unique(ids: &[u64], what: &str) {
    let set: BTreeSet<_> = ids.iter().collect();
    assert_eq!(set.len(), ids.len(), "{what}: an id appears twice: {ids:?}");
}

#[tokio::test(start_paused = true)]
async fn case_19_shutdown_at_every_instant_keeps_the_books() {
    for t in 0..=40u64 {
        let baseline = alive_tasks();
        let start = Instant::now();
        let pulls = Trace::default();
        // Two items per ms for 32 ms: ids 2k and 2k + 1 at t = k ms.
        let input = paced(&pulls, |i| (i < 64).then(|| ms(i / 2)));
        let started: Log<u64> = Arc::default();
        let log = Arc::clone(&started);
        let config = FanOutConfig::new(4, ShedPolicy::DropNewest).capacity(8);
        let (results, handle) = input.bounded_fan_out_with(config, move |id| {
            log.lock().unwrap().push(id);
            async move {
                sleep(ms(3)).await;
                id
            }
        });

        sleep_until(start + ms(t)).await;
        handle.shutdown();
        pulls.fence();
        let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;

        let started = snapshot(&started);
        assert_unique(&started, &format!("T={t}: handler-started ids"));
        assert_eq!(out.len() as u64, report.processed, "T={t}: received");
        assert_eq!(sorted(&out), sorted(&started), "T={t}: started == received");
        assert_eq!(report.produced, pulls.count(), "T={t}: produced == pulled");
        pulls.assert_none_after_fence();
        pulls.assert_none_after(start + ms(t + 1));
        // 3 ms handlers drain long before the 5 s default deadline.
        assert_eq!((report.failed, report.cancelled), (0, 0), "T={t}");
        assert_eq!(workers(&report), (4, 0), "T={t}");
        match t {
            0..=30 => assert_eq!(report.intake, IntakeEnd::Stopped, "T={t}"),
            31 => {}
            _ => assert_eq!(report.intake, IntakeEnd::Exhausted, "T={t}"),
        }
        assert_no_task_alive(baseline).await;
    }
}

// ===== a finished result is never thrown away at shutdown =====

#[tokio::test(start_paused = true)]
async fn case_21a_shutdown_mid_stream_delivers_every_finished_result() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let pulls = Trace::default();
    let input = paced(&pulls, |i| Some(ms(i)));
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(4);
    let (results, handle) = input.bounded_fan_out_with(config, |id| async move { id });

    // The consumer drains throughout; the shutdown comes at t = 100 ms.
    let (out, report) = within(DEADLOCK, "drain + shutdown + join", async {
        tokio::join!(results.collect::<Vec<_>>(), async {
            sleep_until(start + ms(100)).await;
            handle.shutdown();
            pulls.fence();
            handle.join().await
        })
    })
    .await;
    assert!(report.is_conserved(), "not conserved: {report}");
    assert!(
        report.produced == 100 || report.produced == 101,
        "produced {}",
        report.produced
    );
    pulls.assert_none_after_fence();
    assert_eq!(report.produced, pulls.count());
    assert_eq!(out.len() as u64, report.processed, "received == processed");
    assert!(out.iter().copied().eq(0..report.produced), "{out:?}");
    // Instant handlers keep up with one item per ms: nothing shed or cut off.
    let produced = report.produced;
    assert_eq!(item_counts(&report), (produced, produced, 0, 0, 0));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_no_task_alive(baseline).await;
}

/// W = 1, one item whose handler sleeps exactly 100 ms; at t = 100 ms the
/// pipeline is stopped by `stop`. 50 runs.
async fn case_21b(stop: fn(&ShutdownHandle), delivered: bool) {
    // [stopped before completion, stopped after completion]
    let mut finished_first = [0; 2];
    for run in 0..50 {
        let baseline = alive_tasks();
        let start = Instant::now();
        let (results, handle) =
            stream::iter([7u64]).bounded_fan_out(1, ShedPolicy::DropNewest, |id| async move {
                sleep(ms(100)).await;
                id
            });
        sleep_until(start + ms(100)).await;
        // Both orders within the same instant: stop before the worker has
        // seen its timer fire (even runs), or just after (odd runs).
        if run % 2 == 1 {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
        finished_first[usize::from(handle.stats().processed == 1)] += 1;
        stop(&handle);
        let (out, report, joined_at) = drain_and_join_at(results, handle, DEADLOCK).await;
        if delivered {
            assert_eq!(out, [7], "run {run}: the finished result was thrown away");
            assert_eq!((report.delivered, report.discarded), (1, 0), "run {run}");
        } else {
            assert_eq!(out, [], "run {run}: a result was delivered after abort()");
            assert_eq!((report.delivered, report.discarded), (0, 1), "run {run}");
        }
        assert_eq!(item_counts(&report), (1, 1, 0, 0, 0), "run {run}");
        assert_eq!(workers(&report), (1, 0), "run {run}");
        assert_eq!(joined_at - start, ms(100), "run {run}");
        assert_no_task_alive(baseline).await;
    }
    assert_eq!(finished_first, [25, 25], "both orders were exercised");
}

#[tokio::test(start_paused = true)]
async fn case_21b_result_finishing_at_shutdown_is_always_delivered() {
    case_21b(ShutdownHandle::shutdown, true).await;
}

/// The same race through `abort`: a handler that is ready when cancelled
/// still completes and counts `processed` in every run, but an abort stops
/// every hand-over, so its unread result is discarded, and counted so.
#[tokio::test(start_paused = true)]
async fn case_21b_result_finishing_at_abort_is_processed_and_discarded() {
    case_21b(ShutdownHandle::abort, false).await;
}
