//! Edges of the configuration and of the environment: an empty input,
//! extreme durations and sizes (the largest capacities, 4,096 workers), a
//! runtime without a time driver or one torn down under a live pipeline,
//! user `Drop`s that panic where the crate disposes of values or of a user
//! closure (pond#135), and the promptness guarantees of intake (no pull
//! after `shutdown()`, no starvation of a current-thread runtime). Every
//! report stays conserved.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, IntakeEnd, ShedPolicy, ShutdownHandle};
use common::{
    DEADLOCK, GUARD, POLICIES, PlannedPanic, alive_tasks, assert_no_task_alive, drain,
    drain_and_join, drain_and_join_at, endless, item_counts, ms, quiet_planned_panics, sorted,
    within, workers,
};
use futures::{Stream, StreamExt, stream};
use tokio::time::{Instant, sleep};

/// A value whose `Drop` panics, as a user type's may: a result, or a value
/// captured by a user closure.
struct Bomb;

impl Drop for Bomb {
    fn drop(&mut self) {
        std::panic::panic_any(PlannedPanic);
    }
}

#[tokio::test(start_paused = true)]
async fn a_result_whose_drop_panics_after_results_is_dropped_loses_nothing() {
    quiet_planned_panics();
    for ordered in [false, true] {
        let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
            .result_order(common::order(ordered, false));
        let (results, handle) = stream::iter(0..10u32).bounded_fan_out_with(config, |_| async {
            sleep(ms(1)).await;
            Bomb
        });
        drop(results);
        let report = common::within(GUARD, "join", handle.join()).await;
        assert_eq!(item_counts(&report), (10, 10, 0, 0, 0), "ordered {ordered}");
        assert_eq!((report.workers_joined, report.aborted), (2, 0));
    }
}

#[tokio::test(start_paused = true)]
async fn durations_past_the_clocks_range_mean_never() {
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
        .capacity(1)
        .handler_timeout(Duration::MAX)
        .overload_quiet_period(Duration::MAX)
        .drain_timeout(Duration::MAX)
        .on_overload(|_| {});
    let input = stream::iter(0..100u32).then(|i| async move {
        if i % 10 == 0 {
            sleep(ms(1)).await;
        }
        i
    });
    let (results, handle) = input.bounded_fan_out_with(config, |x| async move {
        sleep(ms(5)).await;
        x
    });
    let (_, report) = drain_and_join(results, handle, GUARD).await;
    assert_eq!(report.produced, 100);
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_eq!(
        (report.timed_out, report.cancelled, report.aborted),
        (0, 0, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_huge_capacity_is_a_bound_not_an_allocation() {
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(FanOutConfig::<u32>::MAX_CAPACITY)
        .output_capacity(FanOutConfig::<u32>::MAX_CAPACITY);
    let (results, handle) =
        stream::iter(0..1000u32).bounded_fan_out_with(config, |x| async move { x });
    let (out, report) = drain_and_join(results, handle, GUARD).await;
    assert_eq!(out, (0..1000).collect::<Vec<_>>());
    // The burst fits: the intake queues all of it before its first yield
    // (it yields to woken workers only before pulling into a full queue).
    assert_eq!((report.dropped, report.high_water_mark), (0, 1000));
}

#[test]
#[should_panic(
    expected = "FanOutConfig::capacity: capacity must be at most FanOutConfig::MAX_CAPACITY"
)]
fn a_capacity_above_the_maximum_panics_naming_it() {
    let _ = FanOutConfig::<u32>::new(1, ShedPolicy::Backpressure).capacity(usize::MAX);
}

#[test]
#[should_panic(
    expected = "FanOutConfig::output_capacity: output_capacity must be at most FanOutConfig::MAX_CAPACITY"
)]
fn an_output_capacity_above_the_maximum_panics_naming_it() {
    let _ = FanOutConfig::<u32>::new(1, ShedPolicy::DropNewest).output_capacity(usize::MAX);
}

/// A current-thread runtime built without `enable_time`.
fn runtime_without_time() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

#[test]
#[should_panic(expected = "bounded_fan_out: the Tokio runtime has no time driver; \
                build it with `enable_time()` or `enable_all()`")]
fn without_a_time_driver_the_call_panics_naming_the_fix() {
    runtime_without_time().block_on(async {
        let _ =
            stream::iter(0..10u32).bounded_fan_out(2, ShedPolicy::DropNewest, |x| async move { x });
    });
}

#[test]
fn without_a_time_driver_nothing_is_spawned_and_the_input_is_dropped() {
    // The refusal comes before any task is spawned: the runtime is left as
    // it was, and the input (moved into the call) is dropped by the unwind.
    let runtime = runtime_without_time();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&dropped);
    let outcome = runtime.block_on(async move {
        let input = stream::iter(0..10u32).chain(DropFlag(flag));
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = input.bounded_fan_out(2, ShedPolicy::DropNewest, |x| async move { x });
        }))
    });
    assert!(outcome.is_err(), "the call must panic");
    assert!(dropped.load(SeqCst), "the input was not dropped");
    assert_eq!(runtime.metrics().num_alive_tasks(), 0, "a task was spawned");
}

/// An empty stream that records its own drop.
struct DropFlag(Arc<AtomicBool>);

impl Stream for DropFlag {
    type Item = u32;
    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<u32>> {
        std::task::Poll::Ready(None)
    }
}

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

#[test]
fn a_runtime_torn_down_under_a_live_pipeline_still_yields_a_conserved_report() {
    let first = common::paused_runtime();
    let handle: ShutdownHandle = first.block_on(async {
        let config = FanOutConfig::new(4, ShedPolicy::DropNewest).capacity(8);
        let (results, handle) = stream::iter(0..100u32)
            .chain(stream::pending())
            .bounded_fan_out_with(config, |_| std::future::pending::<()>());
        tokio::task::yield_now().await;
        std::mem::forget(results); // keep the pipeline alive past its runtime
        handle
    });
    drop(first); // every task of the pipeline is dropped mid-flight
    let report = common::paused_runtime().block_on(handle.join());
    // Whatever was queued or in flight when the tasks were dropped is
    // cancelled; nothing completed, nothing is unaccounted for.
    assert!(report.is_conserved(), "{report}");
    // At least a full queue was pulled before the runtime went down.
    assert!(report.produced >= 8, "{report}");
    assert_eq!(report.processed, 0);
    assert_eq!(report.cancelled, report.produced - report.dropped);
    assert_eq!((report.workers_joined, report.aborted), (0, 4));
}

/// An input whose `Drop` panics, once it has ended.
struct PanicsOnDrop<S>(S);

impl<S: Stream + Unpin> Stream for PanicsOnDrop<S> {
    type Item = S::Item;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        self.0.poll_next_unpin(cx)
    }
}

impl<S> Drop for PanicsOnDrop<S> {
    fn drop(&mut self) {
        std::panic::panic_any(PlannedPanic);
    }
}

#[tokio::test(start_paused = true)]
async fn an_input_whose_drop_panics_after_it_ended_still_reports_exhausted() {
    quiet_planned_panics();
    let (results, handle) = PanicsOnDrop(stream::iter(0..5u32)).bounded_fan_out(
        1,
        ShedPolicy::DropNewest,
        |x| async move { x },
    );
    let (out, report) = drain_and_join(results, handle, GUARD).await;
    assert_eq!(out, [0, 1, 2, 3, 4]);
    assert_eq!(report.intake, IntakeEnd::Exhausted);
}

#[tokio::test(start_paused = true)]
async fn shutdown_called_while_intake_pulls_a_batch_stops_the_very_next_pull() {
    // The input itself requests the shutdown as it yields item 5, in the
    // middle of a batch of ready items: item 5 is the last one pulled.
    let slot: Arc<OnceLock<ShutdownHandle>> = Arc::new(OnceLock::new());
    let from_input = Arc::clone(&slot);
    let input = stream::iter(0..100u32).inspect(move |&i| {
        if i == 5 {
            from_input.get().expect("handle set").shutdown();
        }
    });
    let (results, handle) = input.bounded_fan_out(1, ShedPolicy::DropNewest, |x| async move { x });
    assert!(slot.set(handle).is_ok());
    let out = common::within(GUARD, "drain", results.collect::<Vec<_>>()).await;
    let handle = Arc::into_inner(slot)
        .and_then(OnceLock::into_inner)
        .expect("sole owner");
    let report = common::within(GUARD, "join", handle.join()).await;
    assert_eq!(report.produced, 6);
    assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    assert_eq!(report.intake, IntakeEnd::Stopped);
}

#[test]
fn an_always_ready_input_does_not_starve_a_current_thread_runtime() {
    // Workers are busy forever, so intake never yields for them: only its
    // cooperative budget lets the test's 20 ms timer fire. Real time: paused
    // time would never advance while intake is busy. A watchdog thread turns
    // a starved runtime into a failure instead of a hang.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let fired = Arc::new(AtomicBool::new(false));
    let pulled = Arc::new(AtomicU64::new(0));
    let (fired2, pulled2) = (Arc::clone(&fired), Arc::clone(&pulled));
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let input = stream::repeat(1u8).inspect(move |_| {
                pulled2.fetch_add(1, SeqCst);
            });
            let (results, handle) =
                input.bounded_fan_out(2, ShedPolicy::DropOldest, |_| std::future::pending::<()>());
            sleep(ms(20)).await;
            fired2.store(true, SeqCst);
            handle.abort();
            drop(results);
            let report = handle.join().await;
            assert!(report.is_conserved(), "{report}");
        });
        let _ = done_tx.send(());
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(60)).is_ok();
    assert!(
        finished && fired.load(SeqCst),
        "the timer never fired: intake starved the runtime"
    );
    assert!(pulled.load(SeqCst) > 0);
}

// ===== an empty input =====

#[tokio::test(start_paused = true)]
async fn case_02_empty_input_ends_at_once() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(2);
    let (mut results, handle) =
        stream::empty::<u64>().bounded_fan_out_with(config, |x| async move { x });
    assert_eq!(within(DEADLOCK, "results", results.next()).await, None);
    assert_eq!(start.elapsed(), Duration::ZERO, "results end at once");

    let (out, report, joined_at) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert!(out.is_empty());
    assert_eq!(joined_at, start);
    assert_eq!(item_counts(&report), (0, 0, 0, 0, 0));
    assert_eq!(workers(&report), (2, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_no_task_alive(baseline).await;
}

// ===== a user closure whose `Drop` panics =====

#[tokio::test(start_paused = true)]
async fn case_22a_a_handler_closure_whose_drop_panics_is_not_an_aborted_worker() {
    common::quiet_planned_panics();
    let baseline = alive_tasks();
    let bomb = Bomb;
    let (results, handle) =
        stream::iter(0..4u64).bounded_fan_out(2, ShedPolicy::DropNewest, move |id| {
            let _captured = &bomb;
            async move { id }
        });
    let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert_eq!(sorted(&out), [0, 1, 2, 3]);
    assert_eq!(item_counts(&report), (4, 4, 0, 0, 0));
    assert_eq!(workers(&report), (2, 0), "{report}");
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_22b_an_on_shed_closure_whose_drop_panics_is_not_an_input_panic() {
    common::quiet_planned_panics();
    let bomb = Bomb;
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(1)
        .on_shed(move |_: u64| {
            let _captured = &bomb;
        });
    // A busy worker, so that the burst is shed: it takes 0, 1 waits in the
    // one slot, and 2 and 3 meet a full queue while the worker sleeps.
    let (results, handle) = stream::iter(0..4u64).bounded_fan_out_with(config, |id| async move {
        sleep(ms(1)).await;
        id
    });
    let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert_eq!(out, [0, 1]);
    assert_eq!(item_counts(&report), (4, 2, 2, 0, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted, "{report}");
}

#[tokio::test(start_paused = true)]
async fn case_22_on_cancel_and_on_overload_closures_whose_drop_panics_break_nothing() {
    common::quiet_planned_panics();
    let (cancel_bomb, overload_bomb) = (Bomb, Bomb);
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(1)
        .on_cancel(move |_: u64| {
            let _captured = &cancel_bomb;
        })
        .on_overload(move |_| {
            let _captured = &overload_bomb;
        });
    let (results, handle) =
        endless(0..4u64).bounded_fan_out_with(config, |_| std::future::pending::<()>());
    sleep(ms(1)).await;
    handle.abort();
    // Dropping `results` last drops the state that owns `on_cancel`.
    let report = within(DEADLOCK, "join", handle.join()).await;
    drop(results);
    // 0 in flight and 1 queued are cancelled; 2 and 3 met a full queue.
    assert_eq!(item_counts(&report), (4, 0, 2, 0, 2));
    assert_eq!(workers(&report), (0, 1));
    assert_eq!(report.intake, IntakeEnd::Stopped);
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
    for policy in POLICIES {
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
