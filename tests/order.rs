//! The order of results: completion order by default; `ResultOrder::Input`
//! delivers in input order whatever the completion order, skips what was
//! shed, failed or timed out, holds at most workers + output capacity
//! results, and never blocks workers once `results` is dropped;
//! `ResultOrder::LatestOnly` gives a slow reader the freshest result, never
//! holds a worker, and delivers or discards each result exactly once.
//!
//! Paused time, current-thread: every order and count is exact.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, IntakeEnd, ResultOrder, ShedPolicy};
use futures::{StreamExt, stream};
use tokio::time::{Instant, sleep, timeout};

mod common;
use common::{DEADLOCK, GUARD, finish, joined, ms, timed, within};

// ===== completion order =====

#[tokio::test(start_paused = true)]
async fn unordered_is_the_default_and_yields_completion_order() {
    let (results, shutdown) = futures::stream::iter([30u64, 10, 20]).bounded_fan_out(
        3,
        ShedPolicy::DropNewest,
        |t| async move {
            sleep(ms(t)).await;
            t
        },
    );
    let (out, _) = finish(results, shutdown).await;
    assert_eq!(out, [10, 20, 30]);
}

// ===== input order =====

#[tokio::test(start_paused = true)]
async fn ordered_output_is_in_input_order_whatever_the_completion_order() {
    // Item i takes (10 - i) * 10 ms: completion order is the reverse of input order.
    let config = FanOutConfig::new(4, ShedPolicy::DropNewest).result_order(ResultOrder::Input);
    let (results, shutdown) =
        futures::stream::iter(0..10u64).bounded_fan_out_with(config, |i| async move {
            sleep(ms((10 - i) * 10)).await;
            i
        });
    let (out, report) = finish(results, shutdown).await;
    assert_eq!(out, (0..10).collect::<Vec<_>>());
    assert_eq!((report.processed, report.dropped), (10, 0));
}

#[tokio::test(start_paused = true)]
async fn ordered_output_skips_shed_failed_and_timed_out_items() {
    // One worker, two slots: 0 is taken at once; of the burst 1, 2, 3 at
    // t=1 ms, 1 and 2 are queued and 3 is shed. Item 1 panics, item 9 times out.
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(2)
        .result_order(ResultOrder::Input);
    let (results, shutdown) = timed(vec![(0, 0), (1, 1), (2, 1), (3, 1), (9, 50), (10, 60)])
        .bounded_fan_out_with(config.handler_timeout(ms(20)), |i| async move {
            assert_ne!(i, 1, "item 1 fails");
            if i == 9 {
                sleep(ms(100)).await; // times out
            }
            sleep(ms(5)).await;
            i
        });
    let (out, report) = finish(results, shutdown).await;
    assert_eq!(out, [0, 2, 10]);
    assert_eq!(report.produced, 6);
    assert_eq!(
        (
            report.processed,
            report.failed,
            report.timed_out,
            report.dropped
        ),
        (3, 1, 1, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn ordered_reorder_memory_is_bounded_by_workers_plus_output_capacity() {
    // Item 0 is slow (1 s); every other item is instant. With W=2 and K=3 at
    // most W + K = 5 items may be taken before item 0 is delivered.
    let taken = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&taken);
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
        .capacity(100)
        .output_capacity(3)
        .result_order(ResultOrder::Input);
    let (mut results, shutdown) =
        futures::stream::iter(0..20u64).bounded_fan_out_with(config, move |i| {
            log.lock().unwrap().push((i, Instant::now()));
            async move {
                if i == 0 {
                    sleep(ms(1000)).await;
                }
                i
            }
        });
    let start = Instant::now();
    // While item 0 is in flight, keep polling: nothing may come out.
    assert!(timeout(ms(500), results.next()).await.is_err());
    assert_eq!(taken.lock().unwrap().len(), 5, "window is W + K");
    assert_eq!(shutdown.stats().in_flight, 1);
    let (out, report) = finish(results, shutdown).await;
    assert_eq!(out, (0..20).collect::<Vec<_>>());
    assert_eq!(report.processed, 20);
    // The sixth item was taken only once item 0 was delivered, at t = 1 s.
    assert_eq!(taken.lock().unwrap()[5].1 - start, ms(1000));
}

#[tokio::test(start_paused = true)]
async fn ordered_results_dropped_does_not_block_workers() {
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
        .output_capacity(1)
        .result_order(ResultOrder::Input);
    let (results, shutdown) =
        futures::stream::iter(0..50u64).bounded_fan_out_with(config, |i| async move { i });
    drop(results);
    let report = timeout(DEADLOCK, shutdown.join()).await.expect("join hung");
    assert_eq!((report.produced, report.processed), (50, 50));
    assert!(report.is_conserved());
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
        let report = joined(GUARD, handle).await;
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
    let report = joined(GUARD, handle).await;
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

// ===== latest only =====

#[tokio::test(start_paused = true)]
async fn latest_only_gives_a_slow_reader_the_freshest_result_and_counts_the_rest() {
    let start = Instant::now();
    // Item i is ready at 2i ms and takes 1 ms: its result exists from 2i + 1 ms.
    let input = futures::stream::iter(0..50u64).then(move |i| async move {
        tokio::time::sleep_until(start + ms(2 * i)).await;
        i
    });
    let config = FanOutConfig::new(1, ShedPolicy::DropOldest).result_order(ResultOrder::LatestOnly);
    let (mut results, shutdown) = input.bounded_fan_out_with(config, |i| async move {
        sleep(ms(1)).await;
        i
    });
    // A reader that looks every 20 ms (at 20k ms + 0.5 ms).
    let mut read = Vec::new();
    for k in 1..=5u64 {
        tokio::time::sleep_until(start + ms(20 * k) + Duration::from_micros(500)).await;
        read.push(results.next().await.expect("a result is waiting"));
    }
    assert_eq!(
        read,
        [9, 19, 29, 39, 49],
        "always the newest finished result"
    );
    assert_eq!(results.next().await, None);
    let report = shutdown.join().await;
    assert_eq!(
        (report.processed, report.delivered, report.discarded),
        (50, 5, 45)
    );
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn latest_only_never_holds_a_worker_and_an_abort_discards_the_slot() {
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).result_order(ResultOrder::LatestOnly);
    let (results, shutdown) =
        futures::stream::iter(0..100u64).bounded_fan_out_with(config, |i| async move { i });
    // Nobody reads: workers still finish everything (no buffer to fill).
    sleep(ms(1)).await;
    let stats = shutdown.stats();
    assert_eq!((stats.processed, stats.results_waiting), (100, 1));
    assert_eq!(stats.discarded, 99);
    shutdown.abort();
    let report = shutdown.join().await;
    assert_eq!((report.delivered, report.discarded), (0, 100));
    drop(results);
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
    let report = joined(GUARD, handle).await;
    assert_eq!((report.produced, report.processed), (1_000, 1_000));
    assert_eq!(report.delivered, out.len() as u64);
    let mut unique = out.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), out.len(), "a result delivered twice");
}

/// In input order, items without a result give their places in the
/// reorder window back as their turn comes, without the reader: `join`
/// waits only for results that exist, so a held but unread `results` with
/// nothing in it does not stop the workers (a fresh-user trial found `join`
/// hanging once `workers + output_capacity` timed-out items filled the
/// window).
#[tokio::test(start_paused = true)]
async fn items_without_results_never_fill_the_input_order_window() {
    let start = Instant::now();
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
        .output_capacity(1)
        .result_order(ResultOrder::Input)
        .handler_timeout(ms(5));
    let (results, shutdown) = stream::iter(0..10u32).bounded_fan_out_with(config, |x| async move {
        sleep(ms(1_000)).await;
        x
    });
    // `results` is held, never polled.
    let report = within(GUARD, "join", shutdown.join()).await;
    assert_eq!(
        start.elapsed(),
        ms(50),
        "ten 5 ms timeouts, one after another"
    );
    assert_eq!(
        (report.produced, report.timed_out, report.processed),
        (10, 10, 0)
    );
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert!(report.is_conserved(), "{report}");
    drop(results);
}
