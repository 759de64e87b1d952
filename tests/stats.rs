//! What a running pipeline shows of itself: `stats()` is exact at chosen
//! instants (produced, processed, dropped, queue depth, in flight, the
//! high-water mark), and the `Debug` output of the handle, the results and
//! the join future shows the observable state.
//!
//! Paused time, current-thread: every instant is exact.

use backpressure_pipeline::{FanOutConfig, ShedPolicy};
use futures::StreamExt;
use tokio::time::{sleep, timeout};

mod common;
use common::{GUARD, counts, drain_sorted, gated, ms, send, settle};

use ShedPolicy::DropNewest;

// ===== live stats =====

#[tokio::test(start_paused = true)]
async fn stats_are_exact_at_chosen_instants() {
    let config = FanOutConfig::new(2, DropNewest).capacity(4);
    let (tx, results, handle) = gated(config);
    let s = handle.stats();
    let zero = (0, 0, 0, 0, 0, 0, 0, 0);
    let row = |s: backpressure_pipeline::Stats| {
        (
            s.produced,
            s.processed,
            s.dropped,
            s.failed,
            s.cancelled,
            s.queue_depth,
            s.in_flight,
            s.high_water_mark,
        )
    };
    assert_eq!(row(s), zero);

    // t = 0: a burst of 10 into a queue of 4: 0..4 fill it, the 2 workers
    // take 0 and 1, 4 and 5 take their slots, 6..10 meet a full queue.
    send(&tx, 0..10);
    settle().await;
    assert_eq!(row(handle.stats()), (10, 0, 4, 0, 0, 4, 2, 4));

    // t = 100 ms: the first two are done; 2 and 3 are in flight.
    sleep(ms(100)).await;
    settle().await;
    assert_eq!(row(handle.stats()), (10, 2, 4, 0, 0, 2, 2, 4));

    // t = 200 ms: 4 and 5 are in flight.
    sleep(ms(100)).await;
    settle().await;
    assert_eq!(row(handle.stats()), (10, 4, 4, 0, 0, 0, 2, 4));

    // t = 300 ms: idle.
    sleep(ms(100)).await;
    settle().await;
    assert_eq!(row(handle.stats()), (10, 6, 4, 0, 0, 0, 0, 4));

    // Three more: two taken, one queued; the high-water mark stays 4.
    send(&tx, 10..13);
    settle().await;
    assert_eq!(row(handle.stats()), (13, 6, 4, 0, 0, 1, 2, 4));

    handle.shutdown();
    let (out, report) = drain_sorted(results, handle).await;
    assert_eq!(out, [0, 1, 2, 3, 4, 5, 10, 11, 12]);
    assert_eq!(counts(&report), (13, 9, 4, 0, 0, 2, 0));
    drop(tx);
}

/// The oldest queued item's age is known where the queue stamps its items
/// (a `max_queue_age`, here one no item reaches, or the `metrics` feature),
/// and exact; elsewhere it is `None` (the stamps would cost every pipeline
/// instructions per item).
#[tokio::test(start_paused = true)]
async fn oldest_queued_age_is_exact_where_the_queue_stamps() {
    let stamping = FanOutConfig::new(2, DropNewest)
        .capacity(4)
        .max_queue_age(std::time::Duration::from_secs(3600));
    for (config, stamps) in [
        (stamping, true),
        (FanOutConfig::new(2, DropNewest).capacity(4), false),
    ] {
        let stamps = stamps || cfg!(feature = "metrics");
        let age = |at: u64| stamps.then_some(ms(at));
        let (tx, results, handle) = gated(config);
        assert_eq!(handle.stats().oldest_queued_age, None);
        // t = 0: 0 and 1 are taken, 2..6 queued; 4 and 5 still at 100 ms.
        send(&tx, 0..6);
        settle().await;
        assert_eq!(handle.stats().oldest_queued_age, age(0));
        sleep(ms(100)).await;
        settle().await;
        assert_eq!(handle.stats().oldest_queued_age, age(100));
        // t = 200 ms: 4 and 5 taken, nothing queued.
        sleep(ms(100)).await;
        settle().await;
        assert_eq!(handle.stats().oldest_queued_age, None);
        // t = 230 ms: 6, 7 and 8 queued at 200 ms, behind 4 and 5 in flight.
        send(&tx, 6..9);
        settle().await;
        sleep(ms(30)).await;
        assert_eq!(handle.stats().oldest_queued_age, age(30));
        drop(tx);
        let (out, report) = drain_sorted(results, handle).await;
        assert_eq!(out, (0..9).collect::<Vec<_>>());
        assert_eq!((report.processed, report.expired), (9, 0));
    }
}

// ===== Debug =====

#[tokio::test(start_paused = true)]
async fn debug_output_shows_the_observable_state() {
    let config = FanOutConfig::new(1, DropNewest).capacity(4);
    let (tx, mut results, handle) = gated(config);
    assert_eq!(
        format!("{handle:?}"),
        "ShutdownHandle { queue_depth: 0, in_flight: 0, results_waiting: 0, shutting_down: false, finished: false }"
    );
    assert_eq!(
        format!("{results:?}"),
        "BoundedFanOut { waiting_results: 0, terminated: false, shutting_down: false }"
    );

    send(&tx, 0..3);
    settle().await;
    let shown = format!("{handle:?}");
    assert!(shown.contains("queue_depth: 2"), "{shown}");
    assert!(shown.contains("in_flight: 1"), "{shown}");

    sleep(ms(300)).await;
    settle().await;
    assert!(format!("{results:?}").contains("waiting_results: 3"));
    let shown = format!("{handle:?}");
    assert!(shown.contains("results_waiting: 3"), "{shown}");
    handle.shutdown();
    assert!(format!("{handle:?}").contains("shutting_down: true"));
    assert!(format!("{results:?}").contains("shutting_down: true"));

    while results.next().await.is_some() {}
    let shown = format!("{results:?}");
    assert!(shown.contains("terminated: true"), "{shown}");
    while !handle.is_finished() {
        tokio::task::yield_now().await;
    }
    assert!(format!("{handle:?}").contains("finished: true"));

    let join = handle.join();
    let shown = format!("{join:?}");
    assert!(
        shown.starts_with("JoinReport { handle: Some(ShutdownHandle {"),
        "{shown}"
    );
    let report = timeout(GUARD, join).await.unwrap();
    assert_eq!(counts(&report), (3, 3, 0, 0, 0, 1, 0));
    assert!(format!("{report:?}").contains("intake: Stopped"));
    drop(tx);
}
