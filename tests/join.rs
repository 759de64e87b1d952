//! What `join` waits for, and what ends it: it resolves as soon as no
//! result is left to hand over (an empty or idle input, the last result
//! read), it waits while a result exists that nobody reads and `results`
//! is not dropped (the documented hazard, as in kube-rs PR #1978), and
//! draining beside it (`tokio::join!`, `join_collect`, `join_for_each`,
//! `select!`) or dropping `results` lets it finish. A `Controller` steers
//! and watches the same end from other tasks without keeping a dropped
//! pipeline alive.
//!
//! Paused time, current-thread: every instant is exact.

use std::pin::pin;
use std::time::Duration;

use backpressure_pipeline::{
    BoundedFanOut, FanOutConfig, FanOutExt, IntakeEnd, Report, ShedPolicy, ShutdownHandle,
};
use futures::{StreamExt, stream};
use tokio::time::{Instant, sleep, timeout};

mod common;
use common::{
    DEADLOCK, GUARD, Trace, alive_tasks, assert_no_task_alive, counts, drain_and_join, endless,
    item_counts, joined, ms, never, paced, settle, sorted, within, work, workers,
};

use ShedPolicy::DropNewest;

// ===== join waits only for results that exist =====

#[tokio::test(start_paused = true)]
async fn join_resolves_on_an_empty_input_without_anyone_touching_results() {
    let (results, shutdown) =
        stream::empty::<u32>().bounded_fan_out(2, ShedPolicy::DropNewest, |x| async move { x });
    let start = Instant::now();
    let report = within(Duration::from_secs(10), "join", shutdown.join()).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!((report.produced, report.workers_joined), (0, 2));
    assert!(report.is_conserved(), "{report}");
    drop(results);
}

#[tokio::test(start_paused = true)]
async fn join_after_a_shutdown_of_an_idle_input_does_not_wait_for_the_drain_deadline() {
    let (results, shutdown) =
        stream::pending::<u32>().bounded_fan_out(2, ShedPolicy::DropNewest, |x| async move { x });
    let start = Instant::now();
    shutdown.shutdown();
    let report = within(GUARD, "join", shutdown.join()).await;
    // Not the 5 s drain deadline: there was never a result to wait for.
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        (report.produced, report.intake, report.aborted),
        (0, IntakeEnd::Stopped, 0)
    );
    drop(results);
}

#[tokio::test(start_paused = true)]
async fn join_resolves_once_the_last_result_was_read_without_polling_to_the_end() {
    let (mut results, shutdown) =
        stream::iter(0..3u32).bounded_fan_out(2, ShedPolicy::DropNewest, |x| async move { x });
    let mut read = Vec::new();
    for _ in 0..3 {
        read.push(results.next().await.expect("a result"));
    }
    let stats = shutdown.stats();
    assert_eq!((stats.delivered, stats.results_waiting), (3, 0));
    let start = Instant::now();
    let report = within(Duration::from_secs(10), "join", shutdown.join()).await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(sorted(&read), [0, 1, 2]);
    assert_eq!(
        (report.processed, report.delivered, report.discarded),
        (3, 3, 0)
    );
    // The stream still ends properly afterwards.
    assert_eq!(results.next().await, None);
}

#[tokio::test(start_paused = true)]
async fn join_still_waits_for_a_result_that_exists_and_is_unread() {
    let (mut results, shutdown) =
        stream::iter(0..3u32).bounded_fan_out(1, ShedPolicy::DropNewest, |x| async move { x });
    assert_eq!(results.next().await, Some(0));
    assert_eq!(results.next().await, Some(1));
    let mut join = shutdown.join();
    // The documented hazard: result 2 waits for the reader.
    assert!(timeout(Duration::from_secs(10), &mut join).await.is_err());
    assert_eq!(results.next().await, Some(2));
    let report = within(GUARD, "join", join).await;
    assert_eq!((report.processed, report.delivered), (3, 3));
}

#[tokio::test(start_paused = true)]
async fn join_collect_and_join_for_each_drain_and_join_in_one_call() {
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).output_capacity(1);
    let (results, shutdown) =
        stream::iter(0..50u32).bounded_fan_out_with(config, |x| async move { x * 2 });
    let (out, report) = within(GUARD, "join_collect", shutdown.join_collect(results)).await;
    assert_eq!(sorted(&out), (0..50).map(|x| x * 2).collect::<Vec<_>>());
    assert_eq!((report.processed, report.delivered), (50, 50));

    let (results, shutdown) =
        stream::iter(0..50u64).bounded_fan_out(3, ShedPolicy::Backpressure, |x| async move {
            sleep(ms(1)).await;
            x
        });
    let mut seen = Vec::new();
    let report = within(
        GUARD,
        "join_for_each",
        shutdown.join_for_each(results, |x| seen.push(x)),
    )
    .await;
    assert_eq!(sorted(&seen), (0..50).collect::<Vec<_>>());
    assert_eq!(report.delivered, 50);
    assert!(report.is_conserved(), "{report}");
}

// ===== join waits while results are neither read nor dropped =====

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

/// W = 2, C = 2, DropNewest; 10 items, one every 10 ms; handler 5 ms. The
/// output holds K = 1 result: the crate documents that `join` waits once
/// that buffer is full and nobody reads or drops `results` (SPEC: "a
/// consumer that neither reads nor drops `results` holds the workers"), so
/// K = 1 makes the hazard appear within 10 items.
fn case_04_pipeline(pulls: &Trace) -> (BoundedFanOut<u64>, ShutdownHandle) {
    let input = paced(pulls, |i| (i < 10).then(|| ms(10 * i)));
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
        .capacity(2)
        .output_capacity(1);
    input.bounded_fan_out_with(config, |x| async move {
        sleep(ms(5)).await;
        x
    })
}

/// Reads the first three results: 0, 1 and 2, in order.
async fn read_first_three(results: &mut BoundedFanOut<u64>) {
    for expected in 0..3 {
        assert_eq!(
            within(DEADLOCK, "read", results.next()).await,
            Some(expected)
        );
    }
}

/// The documented hazard: `join` waits while `results` is neither read nor
/// dropped. Then the same `JoinReport` future, beside a drain, completes; returns
/// the drained results and the (conserved) report.
async fn join_waits_then_completes_beside_a_drain(
    results: BoundedFanOut<u64>,
    handle: ShutdownHandle,
) -> (Vec<u64>, Report) {
    let mut join = handle.join();
    assert!(
        timeout(Duration::from_secs(1), &mut join).await.is_err(),
        "documented hazard: join waits while results are neither read nor dropped"
    );
    let (out, report) = within(DEADLOCK, "drain + join", async {
        tokio::join!(results.collect::<Vec<_>>(), join)
    })
    .await;
    assert!(report.is_conserved(), "{report}");
    (out, report)
}

#[tokio::test(start_paused = true)]
async fn case_04a_join_with_unpolled_results_waits_then_join_macro_completes() {
    let baseline = alive_tasks();
    let pulls = Trace::default();
    let (results, handle) = case_04_pipeline(&pulls);

    let (out, report) = join_waits_then_completes_beside_a_drain(results, handle).await;
    // K + W finished results and C queued items; the rest was shed.
    assert_eq!(sorted(&out), [0, 1, 2, 3, 4]);
    assert_eq!(item_counts(&report), (10, 5, 5, 0, 0));
    assert_eq!(workers(&report), (2, 0));
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_04b_join_after_partial_read_waits_then_join_macro_completes() {
    let baseline = alive_tasks();
    let pulls = Trace::default();
    let (mut results, handle) = case_04_pipeline(&pulls);
    read_first_three(&mut results).await;

    let (out, report) = join_waits_then_completes_beside_a_drain(results, handle).await;
    assert_eq!(sorted(&out), [3, 4, 5, 6, 7]);
    assert_eq!(item_counts(&report), (10, 8, 2, 0, 0));
    assert_eq!(workers(&report), (2, 0));
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_04c_join_after_dropping_results_returns() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let pulls = Trace::default();
    let (mut results, handle) = case_04_pipeline(&pulls);
    read_first_three(&mut results).await;
    drop(results);

    let report = joined(DEADLOCK, handle).await;
    // Processing went on with results discarded; nothing had to be shed.
    assert_eq!(item_counts(&report), (10, 10, 0, 0, 0));
    assert_eq!(workers(&report), (2, 0));
    assert_eq!(start.elapsed(), ms(95), "last item at 90 ms + 5 ms");
    assert_no_task_alive(baseline).await;
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
