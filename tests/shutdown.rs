//! Ending a pipeline: natural end, graceful `shutdown`, `abort`, a parent
//! cancellation token, what `join` waits for, and the live `stats`.
//!
//! All on paused, current-thread runtimes: times are exact virtual times.

use std::pin::pin;
use std::time::Duration;

use backpressure_pipeline::{
    BoundedFanOut, FanOutConfig, FanOutExt, IntakeEnd, Report, ShedPolicy, ShutdownHandle,
};
use futures::StreamExt;
use futures::channel::mpsc;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

mod common;
use common::{GUARD, alive_tasks, counts, drain_and_join, endless, ms, send, settle, work};

use ShedPolicy::DropNewest;

/// A handler body that never completes.
async fn never(_: u32) -> u32 {
    std::future::pending().await
}

/// A pipeline on `config` whose input the test feeds by hand (it ends when
/// the sender is dropped) and whose handler takes 100 ms per item.
fn gated(
    config: FanOutConfig<u32>,
) -> (
    mpsc::UnboundedSender<u32>,
    BoundedFanOut<u32>,
    ShutdownHandle,
) {
    let (tx, rx) = mpsc::unbounded();
    let (results, handle) = rx.bounded_fan_out_with(config, |id| work(id, ms(100)));
    (tx, results, handle)
}

/// [`drain_and_join`] under [`GUARD`], the results sorted.
async fn drain_sorted(results: BoundedFanOut<u32>, handle: ShutdownHandle) -> (Vec<u32>, Report) {
    let (mut out, report) = drain_and_join(results, handle, GUARD).await;
    out.sort_unstable();
    (out, report)
}

/// Joins with a deadlock guard, results already dropped or drained.
async fn join(handle: ShutdownHandle) -> Report {
    let report = timeout(GUARD, handle.join()).await.expect("join hung");
    assert!(report.is_conserved(), "not conserved: {report}");
    report
}

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
    let report = join(handle).await;
    assert_eq!(counts(&report), (4, 4, 0, 0, 0, 2, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
}

// ===== parent cancellation token =====

#[tokio::test(start_paused = true)]
async fn cancelling_the_parent_token_shuts_down_gracefully() {
    let start = Instant::now();
    let parent = CancellationToken::new();
    let config = FanOutConfig::new(2, DropNewest)
        .drain_timeout(Duration::from_secs(1))
        .cancel_token(parent.clone());
    let (tx, results, handle) = gated(config);
    send(&tx, 0..6);
    sleep(ms(10)).await;
    parent.cancel();
    assert!(handle.is_shutting_down());
    let (out, report) = drain_sorted(results, handle).await;
    // A graceful drain, as `shutdown()`: everything accepted is processed.
    assert_eq!(start.elapsed(), ms(300));
    assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    assert_eq!(counts(&report), (6, 6, 0, 0, 0, 2, 0));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_parent_token_stops_pulling_at_once() {
    let parent = CancellationToken::new();
    let config = FanOutConfig::new(2, DropNewest).cancel_token(parent.clone());
    let (tx, results, handle) = gated(config);
    send(&tx, 0..6);
    sleep(ms(10)).await;
    parent.cancel();
    assert!(handle.is_shutting_down());
    // "Exactly like shutdown()": nothing offered after the request is pulled.
    send(&tx, 100..110);
    settle().await;
    assert_eq!(handle.stats().produced, 6, "items pulled after the cancel");
    let (out, report) = drain_sorted(results, handle).await;
    assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    assert_eq!(counts(&report), (6, 6, 0, 0, 0, 2, 0));
    drop(tx);
}

#[tokio::test(start_paused = true)]
async fn cancelling_an_ancestor_token_respects_the_drain_timeout() {
    let start = Instant::now();
    let root = CancellationToken::new();
    let config = FanOutConfig::new(2, DropNewest)
        .drain_timeout(ms(250))
        .cancel_token(root.child_token());
    let (results, handle) = endless(0..3).bounded_fan_out_with(config, never);
    sleep(ms(40)).await;
    root.cancel();
    let (_, report) = drain_sorted(results, handle).await;
    assert_eq!(start.elapsed(), ms(290));
    assert_eq!(counts(&report), (3, 0, 0, 0, 3, 0, 2));
}

#[tokio::test(start_paused = true)]
async fn the_pipeline_never_cancels_the_parent_token() {
    for end in ["natural", "shutdown", "abort", "drop both"] {
        let parent = CancellationToken::new();
        let sibling = parent.child_token();
        let config = FanOutConfig::new(2, DropNewest).cancel_token(parent.clone());
        let input = futures::stream::iter(0..4u32);
        let (results, handle) = input.bounded_fan_out_with(config, |id| work(id, ms(10)));
        match end {
            "natural" => {
                let (_, report) = drain_sorted(results, handle).await;
                assert_eq!(report.intake, IntakeEnd::Exhausted);
            }
            "shutdown" => {
                handle.shutdown();
                drain_sorted(results, handle).await;
            }
            "abort" => {
                handle.abort();
                drain_sorted(results, handle).await;
            }
            _ => {
                drop(results);
                drop(handle);
                sleep(ms(100)).await;
            }
        }
        assert!(!parent.is_cancelled(), "{end}: parent cancelled");
        assert!(!sibling.is_cancelled(), "{end}: sibling cancelled");
    }
}

// ===== what join waits for =====

/// W = 1, output capacity 1, five instant items: the results buffer fills.
fn output_bound() -> (BoundedFanOut<u32>, ShutdownHandle) {
    let config = FanOutConfig::new(1, DropNewest).output_capacity(1);
    futures::stream::iter(0..5u32).bounded_fan_out_with(config, |id| async move { id })
}

#[tokio::test(start_paused = true)]
async fn join_waits_until_results_are_consumed() {
    let start = Instant::now();
    let (results, handle) = output_bound();
    let mut join = pin!(handle.join());
    // Nobody reads: the worker holds its second result; join cannot finish.
    assert!(timeout(Duration::from_secs(1), &mut join).await.is_err());
    let (out, report) = timeout(GUARD, async {
        tokio::join!(results.collect::<Vec<_>>(), join)
    })
    .await
    .unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(out, [0, 1, 2, 3, 4]);
    assert_eq!(counts(&report), (5, 5, 0, 0, 0, 1, 0));
    assert!(report.is_conserved());
}

#[tokio::test(start_paused = true)]
async fn join_waits_until_results_are_dropped() {
    let start = Instant::now();
    let (results, handle) = output_bound();
    let mut join = pin!(handle.join());
    assert!(timeout(Duration::from_secs(1), &mut join).await.is_err());
    drop(results);
    let report = timeout(GUARD, join)
        .await
        .expect("join after results dropped");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // The rest is still processed, the results discarded.
    assert_eq!(counts(&report), (5, 5, 0, 0, 0, 1, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert!(report.is_conserved());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_join_future_is_dropping_the_handle() {
    // While results live: the pipeline runs on to its natural end.
    let (results, handle) =
        futures::stream::iter(0..6u32).bounded_fan_out(2, DropNewest, |id| work(id, ms(10)));
    let mut join = tokio_test::task::spawn(handle.join());
    tokio_test::assert_pending!(join.poll());
    drop(join);
    let mut out: Vec<u32> = timeout(GUARD, results.collect()).await.unwrap();
    out.sort_unstable();
    assert_eq!(out, [0, 1, 2, 3, 4, 5]);

    // With results gone too: the pipeline is aborted and its tasks end.
    // (The first pipeline's supervisor finishes once its end was read.)
    settle().await;
    let baseline = alive_tasks();
    let (results, handle) = endless(0..3).bounded_fan_out(2, DropNewest, never);
    settle().await;
    assert_eq!(handle.stats().in_flight, 2);
    drop(results);
    drop(handle.join());
    settle().await;
    assert_eq!(
        alive_tasks(),
        baseline,
        "tasks left after JoinReport and results were dropped"
    );
}

// ===== live stats =====

#[tokio::test(start_paused = true)]
async fn stats_are_exact_at_chosen_instants() {
    let config = FanOutConfig::new(2, DropNewest).capacity(4);
    let (tx, results, handle) = gated(config);
    let s = handle.stats();
    let zero = (0, 0, 0, 0, 0, 0, 0, 0);
    let row = |s: backpressure_pipeline::Stats| {
        (
            s.produced,
            s.processed,
            s.dropped,
            s.failed,
            s.cancelled,
            s.queue_depth,
            s.in_flight,
            s.high_water_mark,
        )
    };
    assert_eq!(row(s), zero);

    // t = 0: a burst of 10 into a queue of 4: 0..4 fill it, the 2 workers
    // take 0 and 1, 4 and 5 take their slots, 6..10 meet a full queue.
    send(&tx, 0..10);
    settle().await;
    assert_eq!(row(handle.stats()), (10, 0, 4, 0, 0, 4, 2, 4));

    // t = 100 ms: the first two are done; 2 and 3 are in flight.
    sleep(ms(100)).await;
    settle().await;
    assert_eq!(row(handle.stats()), (10, 2, 4, 0, 0, 2, 2, 4));

    // t = 200 ms: 4 and 5 are in flight.
    sleep(ms(100)).await;
    settle().await;
    assert_eq!(row(handle.stats()), (10, 4, 4, 0, 0, 0, 2, 4));

    // t = 300 ms: idle.
    sleep(ms(100)).await;
    settle().await;
    assert_eq!(row(handle.stats()), (10, 6, 4, 0, 0, 0, 0, 4));

    // Three more: two taken, one queued; the high-water mark stays 4.
    send(&tx, 10..13);
    settle().await;
    assert_eq!(row(handle.stats()), (13, 6, 4, 0, 0, 1, 2, 4));

    handle.shutdown();
    let (out, report) = drain_sorted(results, handle).await;
    assert_eq!(out, [0, 1, 2, 3, 4, 5, 10, 11, 12]);
    assert_eq!(counts(&report), (13, 9, 4, 0, 0, 2, 0));
    drop(tx);
}

// ===== Debug =====

#[tokio::test(start_paused = true)]
async fn debug_output_shows_the_observable_state() {
    let config = FanOutConfig::new(1, DropNewest).capacity(4);
    let (tx, mut results, handle) = gated(config);
    assert_eq!(
        format!("{handle:?}"),
        "ShutdownHandle { queue_depth: 0, in_flight: 0, results_waiting: 0, shutting_down: false, finished: false }"
    );
    assert_eq!(
        format!("{results:?}"),
        "BoundedFanOut { waiting_results: 0, terminated: false, shutting_down: false }"
    );

    send(&tx, 0..3);
    settle().await;
    let shown = format!("{handle:?}");
    assert!(shown.contains("queue_depth: 2"), "{shown}");
    assert!(shown.contains("in_flight: 1"), "{shown}");

    sleep(ms(300)).await;
    settle().await;
    assert!(format!("{results:?}").contains("waiting_results: 3"));
    let shown = format!("{handle:?}");
    assert!(shown.contains("results_waiting: 3"), "{shown}");
    handle.shutdown();
    assert!(format!("{handle:?}").contains("shutting_down: true"));
    assert!(format!("{results:?}").contains("shutting_down: true"));

    while results.next().await.is_some() {}
    let shown = format!("{results:?}");
    assert!(shown.contains("terminated: true"), "{shown}");
    while !handle.is_finished() {
        tokio::task::yield_now().await;
    }
    assert!(format!("{handle:?}").contains("finished: true"));

    let join = handle.join();
    let shown = format!("{join:?}");
    assert!(
        shown.starts_with("JoinReport { handle: Some(ShutdownHandle {"),
        "{shown}"
    );
    let report = timeout(GUARD, join).await.unwrap();
    assert_eq!(counts(&report), (3, 3, 0, 0, 0, 1, 0));
    assert!(format!("{report:?}").contains("intake: Stopped"));
    drop(tx);
}

// ===== Controller =====

#[tokio::test(start_paused = true)]
async fn a_join_polled_through_a_timeout_survives_and_a_controller_stops_it() {
    // The exact sequence: `timeout(d, &mut join)`, then `shutdown()`, then
    // `join.await` gives the report.
    let (results, handle) = endless(0..3).bounded_fan_out(2, DropNewest, |id| work(id, ms(10)));
    let controller = handle.controller();
    let mut join = handle.join();
    let start = Instant::now();
    assert!(timeout(ms(500), &mut join).await.is_err(), "endless input");
    assert_eq!(start.elapsed(), ms(500));
    controller.shutdown();
    drop(results);
    let report = timeout(GUARD, join).await.expect("join after the timeout");
    assert_eq!(start.elapsed(), ms(500), "nothing left to drain");
    assert_eq!(counts(&report), (3, 3, 0, 0, 0, 2, 0));
    assert_eq!((report.delivered, report.discarded), (0, 3));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_eq!(controller.finished().await, report);
}

#[tokio::test(start_paused = true)]
async fn controllers_steer_from_other_tasks_and_see_the_same_report() {
    let (results, handle) = endless(0..5).bounded_fan_out(1, DropNewest, |id| work(id, ms(10)));
    let controller = handle.controller();
    let watchers: Vec<_> = (0..3)
        .map(|_| {
            let c = controller.clone();
            tokio::spawn(async move { c.finished().await })
        })
        .collect();
    let stopper = {
        let c = controller.clone();
        tokio::spawn(async move {
            sleep(ms(25)).await;
            assert_eq!(c.stats().processed, 2);
            c.abort();
        })
    };
    let (out, report) = drain_and_join(results, handle, GUARD).await;
    stopper.await.unwrap();
    assert_eq!(out, [0, 1]);
    assert_eq!(counts(&report), (5, 2, 0, 0, 3, 0, 1));
    for watcher in watchers {
        assert_eq!(watcher.await.unwrap(), report);
    }
    assert!(controller.is_finished());
    assert!(format!("{controller:?}").contains("finished: true"));
}

#[tokio::test(start_paused = true)]
async fn a_controller_does_not_keep_a_dropped_pipeline_alive() {
    let baseline = alive_tasks();
    let (results, handle) = endless(0..3).bounded_fan_out(2, DropNewest, never);
    let controller = handle.controller();
    settle().await;
    drop(results);
    drop(handle);
    // Both halves gone: aborted, whatever the controller.
    let report = timeout(GUARD, controller.finished())
        .await
        .expect("aborted");
    assert_eq!(counts(&report), (3, 0, 0, 0, 3, 0, 2));
    settle().await;
    assert_eq!(alive_tasks(), baseline);
}

#[tokio::test(start_paused = true)]
async fn select_over_results_and_the_end_reads_everything_then_reports() {
    let (mut results, handle) =
        futures::stream::iter(0..6u32).bounded_fan_out(2, DropNewest, |id| work(id, ms(10)));
    let mut join = handle.join();
    let mut seen = Vec::new();
    let report = loop {
        tokio::select! {
            Some(id) = results.next() => seen.push(id),
            report = &mut join => break report,
        }
    };
    seen.sort_unstable();
    assert_eq!(seen, [0, 1, 2, 3, 4, 5]);
    assert_eq!((report.delivered, report.discarded), (6, 0));
}
