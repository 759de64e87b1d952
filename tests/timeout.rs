//! Time limits per item: `handler_timeout` cuts off a handler still
//! pending at its deadline and counts it timed out (a handler ready exactly
//! at its deadline completes; a zero timeout times out every handler pending
//! on its first poll), and `max_queue_age` expires exactly the items that
//! waited longer in the queue.
//!
//! Paused time, current-thread: every count and instant is exact.

use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
use futures::stream;
use tokio::time::{Instant, sleep};

mod common;
use common::{drain, finish, ms};

// ===== handler timeout =====

#[tokio::test(start_paused = true)]
async fn handler_timeout_cancels_slow_handlers_and_counts_them() {
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).handler_timeout(ms(50));
    let (results, shutdown) = futures::stream::iter([10u64, 60, 49, 50, 200]).bounded_fan_out_with(
        config,
        |t| async move {
            sleep(ms(t)).await;
            t
        },
    );
    let start = Instant::now();
    let (mut out, report) = finish(results, shutdown).await;
    out.sort();
    // Worker 1: 10 (0-10 ms), 49 (10-59), 200 (59-109: timed out).
    // Worker 2: 60 (0-50: timed out), 50 (50-100: ready exactly at its
    // deadline, and a ready handler completes).
    assert_eq!(out, [10, 49, 50]);
    assert_eq!(
        (report.processed, report.timed_out, report.cancelled),
        (3, 2, 0)
    );
    assert_eq!(start.elapsed(), ms(109));
}

#[tokio::test(start_paused = true)]
async fn a_zero_handler_timeout_times_out_every_handler_pending_on_its_first_poll() {
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).handler_timeout(Duration::ZERO);
    let (results, shutdown) =
        futures::stream::iter(0..10u64).bounded_fan_out_with(config, |x| async move {
            if x % 2 == 0 {
                // Pending once, without any timer: still past a zero deadline.
                tokio::task::yield_now().await;
            }
            x
        });
    let (mut out, report) = finish(results, shutdown).await;
    out.sort();
    // Odd ids are ready on their first poll and complete; even ones time out.
    assert_eq!(out, [1, 3, 5, 7, 9]);
    assert_eq!((report.processed, report.timed_out), (5, 5));
    assert!(report.is_conserved());
}

// ===== maximum queue age =====

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
