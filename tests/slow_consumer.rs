//! A consumer that reads slowly, or not at all, never holds the work up:
//! handlers finish while `results` goes unpolled (the stall of
//! futures-rs#2387), a lock shared between handlers and consumer does not
//! deadlock, a worker blocked on a full output does not wedge intake
//! (moraine#215, tokio#7709), and shedding behind a slow reader never ends
//! the output early or loses count (shredstream-proxy PR #68, mdk#606).
//!
//! Paused time, current-thread: every count and instant is exact; every
//! report is conserved and no task outlives its pipeline.

use std::sync::Arc;
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, IntakeEnd, ShedPolicy, Stats};
use futures::channel::mpsc;
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, sleep_until};

mod common;
use common::{
    DEADLOCK, GUARD, Log, Trace, alive_tasks, assert_no_task_alive, counts, drain_and_join,
    drain_and_join_at, item_counts, joined, ms, paced, send, settle, snapshot, sorted, within,
    workers,
};

use ShedPolicy::DropNewest;

// ===== work moves while the consumer is not polling =====

#[tokio::test(start_paused = true)]
async fn case_01a_workers_finish_while_consumer_does_not_poll() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let done: Log<(u64, Duration)> = Arc::default();
    let log = Arc::clone(&done);
    let config = FanOutConfig::new(4, ShedPolicy::DropNewest).capacity(8);
    let (mut results, handle) = stream::iter(0..8u64).bounded_fan_out_with(config, move |id| {
        let log = Arc::clone(&log);
        async move {
            sleep(ms(100)).await;
            log.lock().unwrap().push((id, start.elapsed()));
            id
        }
    });

    let first = within(DEADLOCK, "first result", results.next())
        .await
        .expect("a first result");
    assert_eq!(start.elapsed(), ms(100));
    assert!(
        first < 4,
        "the first result is one of the first four: {first}"
    );

    // One second without polling `results`: the other handlers still run.
    sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.stats().processed, 8, "work stalled while unpolled");
    let finished = sorted(&snapshot(&done));
    let expected: Vec<_> = (0..8u64)
        .map(|id| (id, if id < 4 { ms(100) } else { ms(200) }))
        .collect();
    assert_eq!(finished, expected, "completion times");

    let (rest, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    let mut all = rest;
    all.push(first);
    assert_eq!(sorted(&all), (0..8).collect::<Vec<_>>());
    assert_eq!(item_counts(&report), (8, 8, 0, 0, 0));
    assert_eq!(workers(&report), (4, 0));
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_01b_lock_shared_with_the_consumer_does_not_deadlock() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let lock = Arc::new(Semaphore::new(1));
    let shared = Arc::clone(&lock);
    let config = FanOutConfig::new(4, ShedPolicy::DropNewest).capacity(8);
    let (mut results, handle) = stream::iter(0..8u64).bounded_fan_out_with(config, move |id| {
        let lock = Arc::clone(&shared);
        async move {
            let _held = lock.acquire().await.unwrap();
            sleep(ms(10)).await;
            id
        }
    });

    let mut consumed = Vec::new();
    let consume = async {
        while let Some(id) = results.next().await {
            // The consumer holds the same lock while it does not poll.
            let _held = lock.acquire().await.unwrap();
            sleep(ms(10)).await;
            consumed.push(id);
        }
    };
    within(Duration::from_secs(1), "consumer", consume).await;
    let finished = start.elapsed();
    assert_eq!(sorted(&consumed), (0..8).collect::<Vec<_>>());
    // 16 critical sections of 10 ms on one lock that never idles while
    // someone waits for it: exactly 160 ms, well before 1 s.
    assert_eq!(finished, ms(160));

    let (rest, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert!(rest.is_empty());
    assert_eq!(item_counts(&report), (8, 8, 0, 0, 0));
    assert_no_task_alive(baseline).await;
}

// ===== a worker blocked on a full output does not wedge intake =====

#[tokio::test(start_paused = true)]
async fn case_03_blocked_output_does_not_wedge_intake() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let pulls = Trace::default();
    // Item i is ready at t = i + 1 ms: one per ms for 20 ms.
    let input = paced(&pulls, |i| (i < 20).then(|| ms(i + 1)));
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
        .capacity(2)
        .output_capacity(1);
    let (results, handle) = input.bounded_fan_out_with(config, |x| async move { x });

    sleep_until(start + Duration::from_secs(1)).await;
    let taken: Vec<_> = pulls.seen().iter().map(|p| (p.id, p.at - start)).collect();
    let due: Vec<_> = (0..20).map(|i| (i, ms(i + 1))).collect();
    assert_eq!(taken, due, "every item pulled when it was ready, by 20 ms");
    // Nobody polled `results`: K = 1 result waits, both workers hold a
    // finished result they cannot hand over, C = 2 items are queued, and the
    // other 15 were shed; intake was never held up.
    let stats = handle.stats();
    assert_eq!(
        (stats.produced, stats.processed, stats.dropped),
        (20, 3, 15)
    );
    assert_eq!(stats.queue_depth, 2);

    let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert!(report.processed >= 2);
    assert_eq!(out.len() as u64, report.processed, "received == processed");
    assert_eq!(sorted(&out), [0, 1, 2, 3, 4]);
    assert_eq!(item_counts(&report), (20, 5, 15, 0, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn the_input_is_driven_while_nobody_reads_results() {
    let (tx, rx) = mpsc::unbounded::<u32>();
    let config = FanOutConfig::new(1, DropNewest)
        .capacity(4)
        .output_capacity(1);
    let (results, handle) = rx.bounded_fan_out_with(config, |id| async move { id });
    let row = |s: Stats| {
        (
            s.produced,
            s.processed,
            s.dropped,
            s.queue_depth,
            s.in_flight,
        )
    };

    send(&tx, 0..10);
    settle().await;
    // 0..=3 filled the queue; the worker handed 0 over and holds 1 (output
    // full). 4 and 5 took the freed slots, and the intake, finding the
    // queue full and the worker stuck, pulled 6..=9 in full and shed them.
    assert_eq!(row(handle.stats()), (10, 2, 4, 4, 0));

    send(&tx, 10..20);
    settle().await;
    // Still pulled in full, all shed: the queue is full.
    assert_eq!(row(handle.stats()), (20, 2, 14, 4, 0));
    drop(tx);

    let (out, report) = drain_and_join(results, handle, GUARD).await;
    assert_eq!(out, [0, 1, 2, 3, 4, 5], "FIFO with one worker");
    assert_eq!(counts(&report), (20, 6, 14, 0, 0, 1, 0));
}

// ===== shedding never ends the output early or loses count =====

/// W = 1, C = 1, DropOldest, handler 1 ms, consumer sleeps 5 ms per result.
async fn case_13(input: impl Stream<Item = u64> + Send + 'static) -> Vec<u64> {
    let baseline = alive_tasks();
    let config = FanOutConfig::new(1, ShedPolicy::DropOldest).capacity(1);
    let (mut results, handle) = input.bounded_fan_out_with(config, |id| async move {
        sleep(ms(1)).await;
        id
    });

    let mut out = Vec::new();
    within(DEADLOCK, "drain", async {
        while let Some(id) = results.next().await {
            out.push(id);
            sleep(ms(5)).await;
        }
    })
    .await;
    // The output ended only once the input was exhausted and the worker idle.
    let stats = handle.stats();
    assert_eq!(stats.produced, 1000);
    assert_eq!((stats.queue_depth, stats.in_flight), (0, 0));

    let report = joined(DEADLOCK, handle).await;
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_eq!(
        out.last(),
        Some(&999),
        "the freshest item is always delivered"
    );
    assert!(
        out.windows(2).all(|w| w[0] < w[1]),
        "FIFO, no id twice: {out:?}"
    );
    assert_eq!(out.len() as u64, report.processed, "received == processed");
    assert_eq!(report.dropped, 1000 - report.processed);
    assert_eq!((report.failed, report.cancelled), (0, 0));
    assert_no_task_alive(baseline).await;
    out
}

#[tokio::test(start_paused = true)]
async fn case_13_shedding_never_ends_output_early() {
    // The case's input: one ready burst. While the queue has room the
    // intake pulls no more than fits: it queues 0, and before pulling into a
    // full queue it yields to the worker it woke, which takes 0. It queues
    // 1, yields again, and finds the worker busy (1 ms): the rest of the
    // burst goes through the one slot, so DropOldest leaves only 999.
    let out = case_13(stream::iter(0..1000u64)).await;
    assert_eq!(out, [0, 999]);
}

/// The same kind with shedding, delivery and a full output interleaved:
/// two items per ms for 500 ms against a worker that handles one per ms.
#[tokio::test(start_paused = true)]
async fn case_13_shedding_never_ends_output_early_paced_input() {
    let pulls = Trace::default();
    let out = case_13(paced(&pulls, |i| (i < 1000).then(|| ms(i / 2)))).await;
    assert!(
        out.len() > 64,
        "the output buffer filled: {} results",
        out.len()
    );
}
