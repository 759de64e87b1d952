//! Capacity and worker count are exact limits: a queue of capacity C holds
//! exactly C items, not one more or one fewer, so the shed counts and ids
//! of each policy are exact (sensorbee#150), and W workers run exactly W
//! handlers at once, never more (tokio#7351, futures-rs#2937).
//!
//! Paused time, current-thread: every count and instant is exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, IntakeEnd, Report, ShedPolicy};
use futures::stream::{self, StreamExt};
use tokio::time::{Instant, sleep};

mod common;
use common::{
    DEADLOCK, Log, Trace, alive_tasks, assert_no_task_alive, drain_and_join_at, item_counts,
    joined, ms, paced, snapshot, sorted, within, workers,
};

// ===== exact shed counts: capacity is not off by one =====

/// W = 1, handler sleeps 1 s; item 0 at t = 0, items 1..=9 back to back at
/// t = 10 ms. Returns outputs, shed ids, the report and when join resolved.
async fn case_08(capacity: usize, policy: ShedPolicy) -> (Vec<u64>, Vec<u64>, Report, Duration) {
    let baseline = alive_tasks();
    let start = Instant::now();
    let pulls = Trace::default();
    let input = paced(&pulls, |i| match i {
        0 => Some(Duration::ZERO),
        1..=9 => Some(ms(10)),
        _ => None,
    });
    let shed: Log<u64> = Arc::default();
    let on_shed = Arc::clone(&shed);
    let config = FanOutConfig::new(1, policy)
        .capacity(capacity)
        .on_shed(move |id| on_shed.lock().unwrap().push(id));
    let (results, handle) = input.bounded_fan_out_with(config, |id| async move {
        sleep(Duration::from_secs(1)).await;
        id
    });
    let (out, report, joined_at) = drain_and_join_at(results, handle, DEADLOCK).await;
    let pulled: Vec<_> = pulls.seen().iter().map(|p| (p.id, p.at - start)).collect();
    let due: Vec<_> = (0..10)
        .map(|i| (i, if i == 0 { Duration::ZERO } else { ms(10) }))
        .collect();
    assert_eq!(pulled, due);
    assert_eq!(workers(&report), (1, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_no_task_alive(baseline).await;
    (out, snapshot(&shed), report, joined_at - start)
}

#[tokio::test(start_paused = true)]
async fn case_08_exact_shed_counts_drop_newest_c3() {
    let (out, shed, report, joined) = case_08(3, ShedPolicy::DropNewest).await;
    assert_eq!(out, [0, 1, 2, 3]);
    assert_eq!(shed, [4, 5, 6, 7, 8, 9]);
    assert_eq!(item_counts(&report), (10, 4, 6, 0, 0));
    assert_eq!(joined, Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn case_08_exact_shed_counts_drop_oldest_c3() {
    let (out, shed, report, joined) = case_08(3, ShedPolicy::DropOldest).await;
    assert_eq!(out, [0, 7, 8, 9]);
    assert_eq!(shed, [1, 2, 3, 4, 5, 6]);
    assert_eq!(item_counts(&report), (10, 4, 6, 0, 0));
    assert_eq!(joined, Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn case_08_exact_shed_counts_drop_newest_c1() {
    let (out, shed, report, joined) = case_08(1, ShedPolicy::DropNewest).await;
    assert_eq!(out, [0, 1]);
    assert_eq!(shed, [2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(item_counts(&report), (10, 2, 8, 0, 0));
    assert_eq!(joined, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn case_08_exact_shed_counts_drop_oldest_c1() {
    let (out, shed, report, joined) = case_08(1, ShedPolicy::DropOldest).await;
    assert_eq!(out, [0, 9]);
    assert_eq!(shed, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(item_counts(&report), (10, 2, 8, 0, 0));
    assert_eq!(joined, Duration::from_secs(2));
}

// ===== the concurrency limit is exactly W =====

/// C = 100, 30 items at once, handler sleeps 50 ms. Returns the largest
/// number of handlers seen running at once and when the last result came.
async fn case_09(workers_n: usize) -> (usize, Duration) {
    let baseline = alive_tasks();
    let start = Instant::now();
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let (now, max) = (Arc::clone(&running), Arc::clone(&max_running));
    let config = FanOutConfig::new(workers_n, ShedPolicy::DropNewest).capacity(100);
    let (mut results, handle) = stream::iter(0..30u64).bounded_fan_out_with(config, move |id| {
        let (now, max) = (Arc::clone(&now), Arc::clone(&max));
        async move {
            max.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
            sleep(ms(50)).await;
            now.fetch_sub(1, SeqCst);
            id
        }
    });
    let mut out = Vec::new();
    let mut last = Duration::ZERO;
    within(DEADLOCK, "drain", async {
        while let Some(id) = results.next().await {
            out.push(id);
            last = start.elapsed();
        }
    })
    .await;
    let report = joined(DEADLOCK, handle).await;
    assert_eq!(sorted(&out), (0..30).collect::<Vec<_>>());
    assert_eq!(item_counts(&report), (30, 30, 0, 0, 0));
    assert_eq!(workers(&report), (workers_n, 0));
    assert_no_task_alive(baseline).await;
    (max_running.load(SeqCst), last)
}

#[tokio::test(start_paused = true)]
async fn case_09_concurrency_limit_is_exactly_w3() {
    assert_eq!(case_09(3).await, (3, ms(500)));
}

#[tokio::test(start_paused = true)]
async fn case_09_concurrency_limit_is_exactly_w1() {
    assert_eq!(case_09(1).await, (1, ms(1500)));
}
