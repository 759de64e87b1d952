//! The features beyond the anchors: ordered output, hand-back at shutdown,
//! the overload alarm, the per-item timeout and the `Backpressure` policy.
//! Paused time, current-thread: every count, order and instant is exact.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::ResultOrder;
use backpressure_pipeline::{
    BoundedFanOut, FanOutConfig, FanOutExt, OverloadEvent, Report, ShedPolicy, ShutdownHandle,
};
use futures::{Stream, StreamExt};
use tokio::time::{Instant, sleep, timeout};

mod common;
use common::{drain_and_join_at, ms};

const LIMIT: Duration = Duration::from_secs(60);

/// Drains `results` and joins under [`LIMIT`], failing fast on a deadlock;
/// checks the law.
async fn finish<T>(results: BoundedFanOut<T>, shutdown: ShutdownHandle) -> (Vec<T>, Report) {
    let (out, report, _) = drain_and_join_at(results, shutdown, LIMIT).await;
    (out, report)
}

/// Items `(id, at_ms)` yielded at the given virtual times.
fn paced(items: Vec<(u64, u64)>) -> impl Stream<Item = u64> + Send + 'static {
    let start = Instant::now();
    futures::stream::iter(items).then(move |(id, at)| async move {
        tokio::time::sleep_until(start + ms(at)).await;
        id
    })
}

fn recorder<T: Send + 'static>() -> (Arc<Mutex<Vec<T>>>, impl Fn(T) + Send + Sync + 'static) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    (log, move |x| sink.lock().unwrap().push(x))
}

// ===== ordered output =====

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
    let (results, shutdown) = paced(vec![(0, 0), (1, 1), (2, 1), (3, 1), (9, 50), (10, 60)])
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
    let report = timeout(LIMIT, shutdown.join()).await.expect("join hung");
    assert_eq!((report.produced, report.processed), (50, 50));
    assert!(report.is_conserved());
}

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

// ===== hand-back at shutdown =====

#[tokio::test(start_paused = true)]
async fn on_cancel_hands_back_every_queued_item_on_abort() {
    let (returned, hook) = recorder();
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
        .capacity(8)
        .on_cancel(hook);
    let (results, shutdown) = futures::stream::iter(0..6u64)
        .bounded_fan_out_with(config, |_| std::future::pending::<()>());
    sleep(ms(1)).await;
    assert_eq!(shutdown.stats().in_flight, 2);
    shutdown.abort();
    assert_eq!(*returned.lock().unwrap(), [2, 3, 4, 5]);
    drop(results);
    let report = timeout(LIMIT, shutdown.join()).await.unwrap();
    assert_eq!((report.cancelled, report.aborted), (6, 2));
    assert!(report.is_conserved());
}

#[tokio::test(start_paused = true)]
async fn on_cancel_hands_back_what_the_drain_timeout_abandons() {
    // W=1, items 0..4 at t=0; each takes 100 ms. Shutdown at 150 ms with a
    // 100 ms drain: item 0 done (100), item 1 done (200), item 2 in flight
    // at 250 is cut off, item 3 is still queued and handed back.
    let (returned, hook) = recorder();
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .drain_timeout(ms(100))
        .on_cancel(hook);
    let (results, shutdown) =
        futures::stream::iter(0..4u64).bounded_fan_out_with(config, |i| async move {
            sleep(ms(100)).await;
            i
        });
    let start = Instant::now();
    sleep(ms(150)).await;
    shutdown.shutdown();
    let (out, report) = finish(results, shutdown).await;
    assert_eq!(start.elapsed(), ms(250));
    assert_eq!(out, [0, 1]);
    assert_eq!(*returned.lock().unwrap(), [3]);
    assert_eq!(
        (report.processed, report.cancelled, report.aborted),
        (2, 2, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn on_cancel_panic_is_caught_and_items_stay_counted() {
    let config =
        FanOutConfig::new(1, ShedPolicy::DropNewest).on_cancel(|_item: u64| panic!("hook panics"));
    let (results, shutdown) = futures::stream::iter(0..3u64)
        .bounded_fan_out_with(config, |_| std::future::pending::<()>());
    sleep(ms(1)).await;
    shutdown.abort();
    drop(results);
    let report = timeout(LIMIT, shutdown.join()).await.unwrap();
    assert_eq!((report.produced, report.cancelled), (3, 3));
}

// ===== overload alarm =====

#[tokio::test(start_paused = true)]
async fn overload_alarm_fires_once_per_episode_with_count_and_duration() {
    // W=1 busy for the whole run, C=1. Burst A: items at t=10..=14 ms (item
    // 10 queued, 4 shed over 11..=14 ms). Quiet 100 ms. Burst B at t=500..=502.
    let (events, hook) = recorder();
    let stamps = Arc::new(Mutex::new(Vec::new()));
    let stamp_log = Arc::clone(&stamps);
    let start = Instant::now();
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(1)
        .overload_quiet_period(ms(100))
        .on_overload(move |event| {
            stamp_log.lock().unwrap().push(Instant::now() - start);
            hook(event)
        });
    let mut items = vec![(0, 0)];
    items.extend((10..=14).map(|t| (t, t)));
    items.extend((500..=502).map(|t| (t, t)));
    let (results, shutdown) = paced(items).bounded_fan_out_with(config, |i| async move {
        sleep(ms(10_000)).await;
        i
    });
    let (_, report) = finish(results, shutdown).await;
    assert_eq!(report.dropped, 4 + 3);
    assert_eq!(
        *events.lock().unwrap(),
        [
            OverloadEvent::Started,
            OverloadEvent::Ended {
                shed: 4,
                duration: ms(3)
            },
            OverloadEvent::Started,
            OverloadEvent::Ended {
                shed: 3,
                duration: ms(2)
            },
        ]
    );
    // Started at the first shed; ended a quiet period after the last one
    // (the first episode), or when intake ended (the second).
    assert_eq!(*stamps.lock().unwrap(), [ms(11), ms(114), ms(500), ms(502)]);
}

#[tokio::test(start_paused = true)]
async fn overload_alarm_stays_silent_without_shedding() {
    let (events, hook) = recorder::<OverloadEvent>();
    let config = FanOutConfig::new(2, ShedPolicy::DropOldest).on_overload(hook);
    let (results, shutdown) =
        futures::stream::iter(0..10u64).bounded_fan_out_with(config, |i| async move { i });
    let (_, report) = finish(results, shutdown).await;
    assert_eq!(report.dropped, 0);
    assert!(events.lock().unwrap().is_empty());
}

// ===== per-item timeout =====

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

// ===== Backpressure =====

#[tokio::test(start_paused = true)]
async fn backpressure_never_sheds_and_throttles_the_input() {
    // W=1, C=2, handler 10 ms, 10 ready items: intake waits for room.
    let pulls = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&pulls);
    let start = Instant::now();
    let input = futures::stream::iter(0..10u64).inspect(move |_| {
        log.lock().unwrap().push(Instant::now() - start);
    });
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(2);
    let (results, shutdown) = input.bounded_fan_out_with(config, |i| async move {
        sleep(ms(10)).await;
        i
    });
    let (out, report) = finish(results, shutdown).await;
    assert_eq!(out, (0..10).collect::<Vec<_>>());
    assert_eq!((report.processed, report.dropped), (10, 0));
    assert_eq!(start.elapsed(), ms(100));
    // 0, 1, 2 fit at once (one taken, two queued); then one pull per completion.
    let pulls = pulls.lock().unwrap();
    assert_eq!(pulls[..3], [ms(0), ms(0), ms(0)]);
    assert_eq!(
        pulls[3..],
        [ms(10), ms(20), ms(30), ms(40), ms(50), ms(60), ms(70)]
    );
}

#[tokio::test(start_paused = true)]
async fn backpressure_shutdown_and_abort_keep_the_books() {
    let (returned, hook) = recorder();
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
        .capacity(2)
        .on_cancel(hook);
    let (results, shutdown) = futures::stream::iter(0..100u64)
        .bounded_fan_out_with(config, |_| std::future::pending::<()>());
    sleep(ms(5)).await;
    // One in flight, two queued; intake waits for room without pulling.
    let stats = shutdown.stats();
    assert_eq!(
        (stats.in_flight, stats.queue_depth, stats.produced),
        (1, 2, 3)
    );
    shutdown.abort();
    drop(results);
    let report = timeout(LIMIT, shutdown.join()).await.unwrap();
    assert_eq!(
        (report.produced, report.cancelled, report.dropped),
        (3, 3, 0)
    );
    assert_eq!(*returned.lock().unwrap(), [1, 2]);
    assert!(report.is_conserved());
}

#[test]
fn backpressure_displays_its_name() {
    assert_eq!(ShedPolicy::Backpressure.to_string(), "Backpressure");
}

// ===== latest-only output =====

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
