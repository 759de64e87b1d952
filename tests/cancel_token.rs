//! A parent `CancellationToken` and the pipeline: cancelling the parent (or
//! an ancestor) is a graceful `shutdown()` that pulls nothing more once
//! `cancel()` has returned (hpx#2661, pravega PR #2264), and the token tree
//! points one way only (tokio#5585, #7728, #6956): no ending of the
//! pipeline, whether natural, `shutdown()`, `abort()` or a drop of both
//! ends, ever cancels the parent, and cancelling it after `join` is inert.
//!
//! Paused time, current-thread, except the multi-thread tests, which bound
//! how far another thread may be past its last check.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use backpressure_pipeline::{
    BoundedFanOut, FanOutConfig, FanOutExt, IntakeEnd, ShedPolicy, ShutdownHandle,
};
use futures::stream::{self, Stream, StreamExt};
use tokio::time::{Instant, sleep, timeout_at};
use tokio_util::sync::CancellationToken;

mod common;
use common::{
    DEADLOCK, Trace, alive_tasks, assert_no_task_alive, counts, drain_and_join_at, drain_sorted,
    endless, gated, ms, never, paced, send, settle, sorted, with_drop_flag, within, work, workers,
};

use ShedPolicy::DropNewest;

// ===== cancelling the parent is a graceful shutdown =====

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

// ===== the token tree points the right way =====

/// W = 4, C = 4, endless input of one item per ms, handler 2 ms, child of a
/// fresh parent token. Returns the parent, the input's pull trace and drop
/// flag, and the pipeline.
fn case_20_pipeline() -> (
    CancellationToken,
    Trace,
    Arc<AtomicBool>,
    BoundedFanOut<u64>,
    ShutdownHandle,
) {
    let parent = CancellationToken::new();
    let (pulls, dropped) = (Trace::default(), Arc::new(AtomicBool::new(false)));
    let input = with_drop_flag(paced(&pulls, |i| Some(ms(i))), &dropped);
    let config = FanOutConfig::new(4, ShedPolicy::DropNewest)
        .capacity(4)
        .cancel_token(parent.clone());
    let (results, handle) = input.bounded_fan_out_with(config, |id| async move {
        sleep(ms(2)).await;
        id
    });
    (parent, pulls, dropped, results, handle)
}

/// Called right after the pipeline's last end was dropped: fences `pulls`,
/// then 10 ms later no task is alive, the input was dropped, the parent is
/// not cancelled and nothing was pulled after the fence.
async fn assert_stopped_sparing_parent(
    baseline: usize,
    parent: &CancellationToken,
    pulls: &Trace,
    dropped: &AtomicBool,
) {
    pulls.fence();
    sleep(ms(10)).await;
    assert_no_task_alive(baseline).await;
    assert!(dropped.load(SeqCst), "the input was not dropped");
    assert!(!parent.is_cancelled(), "the pipeline cancelled its parent");
    pulls.assert_none_after_fence();
}

#[tokio::test(start_paused = true)]
async fn case_20_1_dropping_both_ends_stops_all_and_spares_parent() {
    let baseline = alive_tasks();
    let (parent, pulls, dropped, results, handle) = case_20_pipeline();

    sleep(ms(20)).await;
    drop(results);
    drop(handle);
    assert_stopped_sparing_parent(baseline, &parent, &pulls, &dropped).await;
}

#[tokio::test(start_paused = true)]
async fn case_20_2_cancelling_parent_shuts_pipeline_down() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let (parent, pulls, dropped, results, handle) = case_20_pipeline();

    sleep(ms(20)).await;
    parent.cancel();
    assert!(handle.is_shutting_down());
    let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_eq!(out.len() as u64, report.processed, "received == processed");
    assert_eq!(report.produced, pulls.count());
    assert!(
        report.produced >= 20,
        "items 0..20 were due before the cancel"
    );
    pulls.assert_none_after(start + ms(21));
    assert_eq!((report.failed, report.cancelled), (0, 0));
    assert_eq!(workers(&report), (4, 0));
    assert!(dropped.load(SeqCst));
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_20_3_shutdown_leaves_parent_uncancelled() {
    let baseline = alive_tasks();
    let (parent, pulls, _, results, handle) = case_20_pipeline();

    sleep(ms(20)).await;
    handle.shutdown();
    pulls.fence();
    assert!(handle.is_shutting_down());
    let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert!(!parent.is_cancelled(), "shutdown cancelled the parent");
    pulls.assert_none_after_fence();
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_eq!(out.len() as u64, report.processed);
    assert_eq!(workers(&report), (4, 0));
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_20_4_cancelling_parent_after_join_is_inert() {
    let baseline = alive_tasks();
    let (parent, pulls, _, results, handle) = case_20_pipeline();

    sleep(ms(20)).await;
    handle.shutdown();
    let (_, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert_no_task_alive(baseline).await;
    let pulled = pulls.count();
    assert_eq!(report.produced, pulled);

    parent.cancel();
    sleep(ms(10)).await;
    assert!(parent.is_cancelled());
    assert_eq!(pulls.count(), pulled, "no pull after the pipeline finished");
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_20_5_dropping_only_the_handle_detaches() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let (parent, pulls, dropped, mut results, handle) = case_20_pipeline();

    sleep(ms(20)).await;
    drop(handle);
    // The pipeline runs on while `results` lives (SPEC: like a JoinHandle).
    let mut out = Vec::new();
    while let Ok(next) = timeout_at(start + ms(50), results.next()).await {
        out.push(next.expect("results ended while the pipeline was detached"));
    }
    assert!(!dropped.load(SeqCst), "detached pipeline dropped its input");
    assert!(
        pulls
            .seen()
            .iter()
            .any(|p| p.id == 49 && p.at == start + ms(49)),
        "intake goes on after the handle is dropped"
    );
    // Item i is done at i + 2 ms: every item due by 47 ms was received.
    assert!(sorted(&out).starts_with(&(0..=47).collect::<Vec<_>>()));
    assert!(!parent.is_cancelled());

    drop(results);
    assert_stopped_sparing_parent(baseline, &parent, &pulls, &dropped).await;
}

/// The paused counterpart of (6): the same claim, deterministic.
#[tokio::test(start_paused = true)]
async fn case_20_6_no_handler_starts_once_abort_returns_current_thread() {
    let baseline = alive_tasks();
    let parent = CancellationToken::new();
    let (pulls, dropped) = (Trace::default(), Arc::new(AtomicBool::new(false)));
    let starts = Trace::default();
    let input = with_drop_flag(paced(&pulls, |i| Some(ms(i))), &dropped);
    let config = FanOutConfig::new(4, ShedPolicy::DropNewest)
        .capacity(4)
        .cancel_token(parent.clone());
    let log = starts.clone();
    let (results, handle) = input.bounded_fan_out_with(config, move |id| {
        log.record(id);
        async move {
            sleep(ms(2)).await;
            id
        }
    });

    sleep(ms(20)).await;
    // The workers keep up: nothing is queued, so every item the abort
    // cancels had started.
    assert_eq!(handle.stats().queue_depth, 0);
    handle.abort();
    starts.fence();
    pulls.fence();
    let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    starts.assert_none_after_fence();
    pulls.assert_none_after_fence();
    assert!(!parent.is_cancelled(), "abort cancelled the parent");
    // The consumer read nothing before the abort: every result is discarded.
    assert_eq!(out.len() as u64, report.delivered);
    assert_eq!((report.delivered, report.discarded), (0, report.processed));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_eq!(
        report.processed + report.cancelled,
        starts.count(),
        "every started handler completed or was cut off"
    );
    assert_no_task_alive(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_20_6_no_handler_starts_once_abort_returns_multi_thread() {
    // Real time: the 1 item/ms pacing of the paused cases would be a real
    // sleep here, so the input is an endless ready stream instead.
    for run in 0..20 {
        let parent = CancellationToken::new();
        let started = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&started);
        let config = FanOutConfig::new(4, ShedPolicy::DropOldest)
            .capacity(4)
            .cancel_token(parent.clone());
        let (results, handle) = stream::iter(0u64..).bounded_fan_out_with(config, move |id| {
            counter.fetch_add(1, SeqCst);
            async move {
                tokio::task::yield_now().await;
                id
            }
        });
        let consumer = tokio::spawn(results.collect::<Vec<_>>());
        let mut spins = 0u64;
        while started.load(SeqCst) < 100 {
            spins += 1;
            assert!(spins < 50_000_000, "run {run}: the pipeline never got busy");
            tokio::task::yield_now().await;
        }

        handle.abort();
        let at_abort = started.load(SeqCst);
        let report = within(DEADLOCK, "join", handle.join()).await;
        let out = within(DEADLOCK, "consumer", consumer).await.unwrap();
        // Per the documented guarantee of `abort()`: no item is taken after
        // it returns, and a worker that took one just before hands it back
        // unstarted; only a worker already past that last check (a window
        // of a few instructions on another thread) may still call its
        // handler, so at most one start per worker. A strict "no start" is
        // not reachable without making `abort()` wait for user code.
        let late = started.load(SeqCst) - at_abort;
        assert!(
            late <= 4,
            "run {run}: {late} handlers started after abort()"
        );
        assert!(report.is_conserved(), "run {run}: {report}");
        assert_eq!(out.len() as u64, report.delivered, "run {run}");
        assert!(report.processed <= at_abort, "run {run}");
        assert_eq!(report.intake, IntakeEnd::Stopped, "run {run}");
        assert_eq!(report.workers_joined + report.aborted, 4, "run {run}");
        assert!(
            !parent.is_cancelled(),
            "run {run}: abort cancelled the parent"
        );
    }
}

// ===== no pull once the parent's `cancel()` has returned =====

/// An endless input of ready ids that counts its pulls.
fn counted(pulls: &Arc<AtomicU64>) -> impl Stream<Item = u64> + Send + 'static {
    let pulls = Arc::clone(pulls);
    stream::repeat(()).map(move |()| pulls.fetch_add(1, SeqCst))
}

#[tokio::test(start_paused = true)]
async fn case_23a_no_pull_after_the_parents_cancel_returns_at_any_phase() {
    for k in 0..=8u64 {
        let parent = CancellationToken::new();
        let pulls = Arc::new(AtomicU64::new(0));
        let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
            .capacity(1)
            .cancel_token(parent.clone());
        let (results, handle) = counted(&pulls).bounded_fan_out_with(config, |id| async move {
            sleep(ms(1)).await;
            id
        });
        // A controller task cancels the parent at phase k of the intake's
        // rhythm (one pull per handler, 1 ms each).
        let (token, seen) = (parent.clone(), Arc::clone(&pulls));
        let controller = tokio::spawn(async move {
            sleep(ms(20 + k)).await;
            for _ in 0..k {
                tokio::task::yield_now().await;
            }
            token.cancel();
            seen.load(SeqCst)
        });
        let at_cancel = within(DEADLOCK, "controller", controller).await.unwrap();
        let (_, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
        assert_eq!(
            pulls.load(SeqCst) - at_cancel,
            0,
            "phase {k}: pulled after the parent's cancel() returned"
        );
        assert_eq!(report.produced, at_cancel, "phase {k}");
        assert_eq!(report.intake, IntakeEnd::Stopped);
        assert_eq!(report.dropped, 0, "Backpressure sheds nothing");
    }
}

#[test]
fn case_23b_at_most_one_pull_after_the_parents_cancel_returns_on_multi_thread() {
    let rt = common::multi_thread_runtime();
    rt.block_on(async {
        for trial in 0..50 {
            let parent = CancellationToken::new();
            let pulls = Arc::new(AtomicU64::new(0));
            let config = FanOutConfig::new(1, ShedPolicy::DropOldest)
                .capacity(4)
                .cancel_token(parent.clone());
            // One busy worker; intake runs flat out, shedding.
            let (results, handle) = counted(&pulls).bounded_fan_out_with(config, |id| async move {
                sleep(ms(1)).await;
                id
            });
            let mut spins = 0u64;
            while pulls.load(SeqCst) < 2_000 + trial * 100 {
                spins += 1;
                assert!(spins < 50_000_000, "trial {trial}: intake never ran");
                tokio::task::yield_now().await;
            }
            parent.cancel();
            let at_cancel = pulls.load(SeqCst);
            let (_, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
            let late = pulls.load(SeqCst) - at_cancel;
            assert!(
                late <= 1,
                "trial {trial}: {late} pulls after cancel() returned"
            );
            assert!(report.is_conserved(), "trial {trial}: {report}");
            assert_eq!(report.intake, IntakeEnd::Stopped);
        }
    });
}
