//! What a stop leaves unprocessed goes back to the caller: `on_cancel`
//! receives every queued item an abort or the drain deadline abandons (a
//! panicking hook is caught and the items stay counted), and `hand_back`
//! returns the unpulled input at the shutdown itself, even while a
//! `Backpressure` intake waits for room.
//!
//! Paused time, current-thread: every count and instant is exact.

use backpressure_pipeline::{FanOutConfig, FanOutExt, IntakeEnd, ShedPolicy};
use futures::{StreamExt, stream};
use tokio::time::{Instant, sleep, timeout};

mod common;
use common::{DEADLOCK, GUARD, finish, ms, recorder, within};

// ===== on_cancel =====

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
    let report = timeout(DEADLOCK, shutdown.join()).await.unwrap();
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
    let report = timeout(DEADLOCK, shutdown.join()).await.unwrap();
    assert_eq!((report.produced, report.cancelled), (3, 3));
}

// ===== the input =====

/// Backpressure with settlement, C=4, one worker at 10 ms, `shutdown()` at
/// 15 ms, when the intake has just refilled the queue (at the low-water mark,
/// 10 ms) and parked for room again. Its wait for room also watches the
/// stop, so it hands the input back at the shutdown itself, not at the next
/// low-water mark (30 ms) as the reviewed design did, nor at the first free
/// slot (20 ms) as bc82dc0 did.
#[tokio::test(start_paused = true)]
async fn backpressure_hands_the_input_back_at_the_shutdown_while_waiting_for_room() {
    let start = Instant::now();
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(4);
    let settled = common::settled(
        stream::iter(0..100u32),
        config,
        |x| *x,
        |x| async move {
            sleep(ms(10)).await;
            x
        },
    );
    let controller = settled.shutdown.controller();
    tokio::spawn(async move {
        sleep(ms(15)).await;
        let stats = controller.stats();
        assert_eq!((stats.produced, stats.queue_depth), (6, 4), "{stats:?}");
        controller.shutdown();
    });
    let input = settled.input;
    let back = tokio::spawn(async move {
        let mut rest = input.await.expect("stopped early");
        (Instant::now() - start, rest.next().await)
    });
    let (out, records, report) = within(GUARD, "settled", async {
        tokio::join!(
            settled.results.collect::<Vec<_>>(),
            settled.settlements.collect::<Vec<_>>(),
            settled.shutdown.join(),
        )
    })
    .await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(out, (0..6).collect::<Vec<_>>());
    assert_eq!(records.len(), 6);
    assert_eq!((report.produced, report.intake), (6, IntakeEnd::Stopped));
    let (at, next) = back.await.unwrap();
    assert_eq!(next, Some(6), "the next item stays the caller's");
    assert_eq!(at, ms(15));
}
