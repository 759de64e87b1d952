//! `ShedPolicy::Backpressure`: nothing is ever shed; the intake waits for
//! room and is woken at a low-water mark (half the queue), so a one-slot
//! queue still feeds 64 idle workers at once; a shutdown, an abort or the
//! drain deadline releases an intake parked for room and keeps the books;
//! with settlement and few credits every item is settled once.
//!
//! Paused time, current-thread: every count, pull and instant is exact.

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use backpressure_pipeline::{FanOutConfig, FanOutExt, IntakeEnd, Outcome, ShedPolicy};
use futures::{StreamExt, stream};
use tokio::time::{Instant, sleep, timeout};

mod common;
use common::{DEADLOCK, GUARD, drain, finish, ms, recorder, sorted, within};

// ===== the intake waits for room =====

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

/// 64 idle workers, capacity 1, 128 ready items, 10 ms handlers: every take
/// wakes the intake, which refills the one slot; the 64 workers all start at
/// t=0, and the next 64 at 10 ms. Nothing is shed, join at 20 ms.
#[tokio::test(start_paused = true)]
async fn backpressure_capacity_1_feeds_64_idle_workers_at_once() {
    let start = Instant::now();
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (r, p) = (Arc::clone(&running), Arc::clone(&peak));
    let config = FanOutConfig::new(64, ShedPolicy::Backpressure).capacity(1);
    let (results, handle) = stream::iter(0..128u32).bounded_fan_out_with(config, move |x| {
        let (running, peak) = (Arc::clone(&r), Arc::clone(&p));
        async move {
            let now = running.fetch_add(1, SeqCst) + 1;
            peak.fetch_max(now, SeqCst);
            sleep(ms(10)).await;
            running.fetch_sub(1, SeqCst);
            x
        }
    });
    let (out, report, at) = drain(results, handle).await;
    assert_eq!(sorted(&out), (0..128).collect::<Vec<_>>());
    assert_eq!((report.processed, report.dropped), (128, 0));
    assert_eq!(peak.load(SeqCst), 64);
    assert_eq!(at - start, ms(20));
}

// ===== stops release a waiting intake =====

/// W=1, C=4, 10 ms handlers, `shutdown()` at 15 ms. The intake fills the
/// queue at t=0 (0..=3), is woken at the low-water mark (2 queued) by the
/// take at 10 ms and pulls 4, 5; at 30 ms the queue is back at the mark, the
/// intake wakes, sees the stop and pulls nothing more. 6 items, one worker:
/// join at 60 ms.
#[tokio::test(start_paused = true)]
async fn backpressure_shutdown_while_the_intake_waits_for_the_low_water_mark() {
    let start = Instant::now();
    let pulls = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&pulls);
    let input = stream::iter(0..100u32).map(move |x| {
        log.lock().unwrap().push((x, start.elapsed()));
        x
    });
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(4);
    let (results, handle) = input.bounded_fan_out_with(config, |x| async move {
        sleep(ms(10)).await;
        x
    });
    let controller = handle.controller();
    tokio::spawn(async move {
        sleep(ms(15)).await;
        controller.shutdown();
    });
    let (out, report, at) = drain(results, handle).await;
    assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    assert_eq!(
        *pulls.lock().unwrap(),
        [
            (0, ms(0)),
            (1, ms(0)),
            (2, ms(0)),
            (3, ms(0)),
            (4, ms(10)),
            (5, ms(10))
        ]
    );
    assert_eq!(
        (report.produced, report.processed, report.dropped),
        (6, 6, 0)
    );
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_eq!((report.workers_joined, report.aborted), (1, 0));
    assert_eq!(at - start, ms(60));
}

/// W=2, C=2, handlers that never finish, `shutdown()` at 10 ms with a 50 ms
/// drain: the intake parks for room (full queue, workers stuck), and only the
/// abort at the deadline wakes it. Exact counts, join at 60 ms.
#[tokio::test(start_paused = true)]
async fn backpressure_intake_parked_for_room_is_released_by_the_drain_deadline() {
    let start = Instant::now();
    let config = FanOutConfig::new(2, ShedPolicy::Backpressure)
        .capacity(2)
        .drain_timeout(ms(50));
    let (results, handle) =
        stream::iter(0..100u32).bounded_fan_out_with(config, |_| std::future::pending::<u32>());
    sleep(ms(10)).await;
    let stats = handle.stats();
    assert_eq!(
        (stats.produced, stats.queue_depth, stats.in_flight),
        (4, 2, 2)
    );
    handle.shutdown();
    let (out, report, at) = drain(results, handle).await;
    assert!(out.is_empty());
    assert_eq!(
        (report.produced, report.processed, report.cancelled),
        (4, 0, 4)
    );
    assert_eq!((report.workers_joined, report.aborted), (0, 2));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_eq!(at - start, ms(60));
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
    let report = timeout(DEADLOCK, shutdown.join()).await.unwrap();
    assert_eq!(
        (report.produced, report.cancelled, report.dropped),
        (3, 3, 0)
    );
    assert_eq!(*returned.lock().unwrap(), [1, 2]);
    assert!(report.is_conserved());
}

// ===== settlement =====

/// Backpressure with settlement and a small credit budget (below capacity +
/// workers): one record per item, every one processed, none shed.
#[tokio::test(start_paused = true)]
async fn backpressure_settled_with_few_credits_settles_every_item_once() {
    let config = FanOutConfig::new(4, ShedPolicy::Backpressure)
        .capacity(4)
        .settle_capacity(3);
    let settled = common::settled(
        stream::iter(0..200u32),
        config,
        |x| *x,
        |x| async move {
            sleep(ms(u64::from(x % 3))).await;
            x
        },
    );
    let (out, records, report) = within(GUARD, "settled", async {
        tokio::join!(
            settled.results.collect::<Vec<_>>(),
            settled.settlements.collect::<Vec<_>>(),
            settled.shutdown.join(),
        )
    })
    .await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(sorted(&out), (0..200).collect::<Vec<_>>());
    let mut keys: Vec<u32> = records.iter().map(|r| r.key).collect();
    keys.sort_unstable();
    assert_eq!(keys, (0..200).collect::<Vec<_>>());
    assert!(records.iter().all(|r| r.outcome == Outcome::Processed));
    assert!(settled.input.await.is_none());
}

// ===== the type =====

#[test]
fn backpressure_displays_its_name() {
    assert_eq!(ShedPolicy::Backpressure.to_string(), "Backpressure");
}
