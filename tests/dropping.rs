//! Dropping the ends of a pipeline: dropping `results` alone keeps the
//! work going and counts it processed, dropping the handle alone detaches
//! the pipeline until `results` goes too, and dropping both ends every task
//! and releases the input and every item it held, even on an idle input
//! (async-openai#576, tower PR #581), with 64 senders waiting in line for a
//! one-slot output, and mid-flight on a multi-thread runtime.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use backpressure_pipeline::{
    BoundedFanOut, FanOutConfig, FanOutExt, IntakeEnd, ShedPolicy, ShutdownHandle,
};
use futures::{StreamExt, stream};
use tokio::time::{Instant, sleep, timeout};

mod common;
use common::{
    DEADLOCK, GUARD, alive_tasks, assert_no_task_alive, assert_tasks_back_to, counts, endless,
    item_counts, joined, ms, multi_thread_runtime, settle, with_drop_flag, within, work, workers,
};

use ShedPolicy::{DropNewest, DropOldest};

/// An item that counts its own drops, to show none is leaked.
struct Tracked {
    id: u32,
    drops: Arc<AtomicUsize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.drops.fetch_add(1, SeqCst);
    }
}

// ===== dropping one end =====

#[tokio::test(start_paused = true)]
async fn dropping_results_keeps_processing_and_counts_processed() {
    let start = Instant::now();
    let completed = Arc::new(AtomicUsize::new(0));
    let done = Arc::clone(&completed);
    let config = FanOutConfig::new(2, DropNewest).output_capacity(1);
    let (mut results, handle) =
        futures::stream::iter(0..10u32).bounded_fan_out_with(config, move |id| {
            let done = Arc::clone(&done);
            async move {
                let id = work(id, ms(10)).await;
                done.fetch_add(1, SeqCst);
                id
            }
        });
    assert_eq!(timeout(GUARD, results.next()).await.unwrap(), Some(0));
    drop(results);
    assert!(
        !handle.is_shutting_down(),
        "dropping results alone stops nothing"
    );
    let report = timeout(GUARD, handle.join()).await.unwrap();
    assert_eq!(
        start.elapsed(),
        ms(50),
        "ran at full speed, results discarded"
    );
    assert_eq!(completed.load(SeqCst), 10);
    assert_eq!(counts(&report), (10, 10, 0, 0, 0, 2, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert!(report.is_conserved());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_handle_detaches_the_pipeline() {
    let start = Instant::now();
    let baseline = alive_tasks();
    let (results, handle) =
        futures::stream::iter(0..10u32).bounded_fan_out(2, DropNewest, |id| work(id, ms(10)));
    drop(handle);
    let mut out: Vec<u32> = timeout(GUARD, results.collect()).await.unwrap();
    out.sort_unstable();
    assert_eq!(out, (0..10).collect::<Vec<_>>(), "ran to its natural end");
    assert_eq!(start.elapsed(), ms(50));
    assert_tasks_back_to(baseline, 16).await;
}

// ===== dropping both ends =====

#[tokio::test(start_paused = true)]
async fn dropping_both_halves_ends_every_task_and_releases_everything() {
    let start = Instant::now();
    let baseline = alive_tasks();
    let input_dropped = Arc::new(AtomicBool::new(false));
    let item_drops = Arc::new(AtomicUsize::new(0));
    let drops = Arc::clone(&item_drops);
    let input = with_drop_flag(endless(0..5), &input_dropped).map(move |id| Tracked {
        id,
        drops: Arc::clone(&drops),
    });
    let config = FanOutConfig::new(2, DropNewest).capacity(8);
    let (results, handle) = input.bounded_fan_out_with(config, |item: Tracked| async move {
        std::future::pending::<()>().await;
        item.id
    });
    settle().await;
    let s = handle.stats();
    assert_eq!((s.produced, s.queue_depth, s.in_flight), (5, 3, 2));
    assert_eq!(
        alive_tasks(),
        baseline + 2 + 2,
        "2 workers, intake, supervisor"
    );

    drop(results);
    drop(handle);
    assert_tasks_back_to(baseline, 16).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "promptly: no time passed");
    assert!(input_dropped.load(SeqCst), "the input was dropped");
    assert_eq!(
        item_drops.load(SeqCst),
        5,
        "queued and in-flight items released"
    );
}

// ===== dropped ends do not leave tasks parked on an idle input =====

/// W = 2, C = 4; the input yields 0, 1, 2, then stays pending forever.
fn case_05_pipeline(dropped: &Arc<AtomicBool>) -> (BoundedFanOut<u64>, ShutdownHandle) {
    let input = with_drop_flag(endless(0..3u64), dropped);
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(4);
    input.bounded_fan_out_with(config, |x| async move { x })
}

#[tokio::test(start_paused = true)]
async fn case_05_dropping_both_ends_on_idle_input_ends_every_task() {
    let baseline = alive_tasks();
    let dropped = Arc::new(AtomicBool::new(false));
    let (mut results, handle) = case_05_pipeline(&dropped);
    assert!(within(DEADLOCK, "read", results.next()).await.is_some());
    drop(results);
    drop(handle);

    sleep(ms(10)).await;
    assert_no_task_alive(baseline).await;
    assert!(dropped.load(SeqCst), "the input was not dropped");
}

#[tokio::test(start_paused = true)]
async fn case_05_dropping_results_only_keeps_processing_then_shutdown_joins() {
    let baseline = alive_tasks();
    let dropped = Arc::new(AtomicBool::new(false));
    let (mut results, handle) = case_05_pipeline(&dropped);
    assert!(within(DEADLOCK, "read", results.next()).await.is_some());
    drop(results);

    sleep(ms(10)).await;
    assert_eq!(handle.stats().processed, 3, "processing continues");
    assert!(!dropped.load(SeqCst), "the handle keeps the pipeline alive");

    handle.shutdown();
    let report = joined(DEADLOCK, handle).await;
    assert_eq!(item_counts(&report), (3, 3, 0, 0, 0));
    assert_eq!(workers(&report), (2, 0));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert!(dropped.load(SeqCst), "the input was not dropped");
    assert_no_task_alive(baseline).await;
}

// ===== dropping both ends under parallelism =====

#[test]
fn dropping_both_halves_mid_flight_leaks_nothing_on_multi_thread() {
    let rt = multi_thread_runtime();
    for round in 0..20u32 {
        rt.block_on(async {
            let baseline = alive_tasks();
            let input_dropped = Arc::new(AtomicBool::new(false));
            let (made, item_drops) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let (m, d) = (Arc::clone(&made), Arc::clone(&item_drops));
            let input = with_drop_flag(endless(0..1000), &input_dropped).map(move |id| {
                m.fetch_add(1, SeqCst);
                Tracked {
                    id,
                    drops: Arc::clone(&d),
                }
            });
            let config = FanOutConfig::new(3, DropOldest).capacity(8);
            let (results, handle) =
                input.bounded_fan_out_with(config, |item: Tracked| async move {
                    for _ in 0..3 {
                        tokio::task::yield_now().await;
                    }
                    item.id
                });
            for _ in 0..round % 7 {
                tokio::task::yield_now().await;
            }
            drop(results);
            drop(handle);
            assert_tasks_back_to(baseline, 100_000).await;
            assert!(input_dropped.load(SeqCst), "round {round}: input kept");
            assert_eq!(
                item_drops.load(SeqCst),
                made.load(SeqCst),
                "round {round}: an item was leaked"
            );
        });
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
