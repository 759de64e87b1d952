//! `ShedPolicy`: which items a full queue keeps and which it sheds, exactly;
//! the `on_shed` hook; capacity; an intake that never waits for room; and
//! an item evicted by `DropOldest` is never also processed
//! (openclaw#103246).
//!
//! Scenarios run on paused, current-thread runtimes (the eviction test runs
//! bounded rounds on 2 threads). Every worker is made busy
//! (its handler sleeps [`BUSY`]) before a burst is sent, so nothing leaves the
//! queue while the burst arrives and the kept and shed ids follow from the
//! policy alone, whatever the intake's batching.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{
    FanOutConfig, FanOutExt, IntakeEnd, Report, ShedPolicy, ShutdownHandle, Stats,
};
use futures::channel::mpsc;
use futures::stream;
use tokio::time::{Instant, sleep};

mod common;
use common::{
    DEADLOCK, GUARD, Log, drain_and_join, drain_and_join_at, item_counts, log, paused_runtime,
    send, settle, snapshot, sorted, with_deadlock_guard,
};

use ShedPolicy::{DropNewest, DropOldest};

/// How long a handler keeps its worker busy.
const BUSY: Duration = Duration::from_secs(1);

/// A handler that keeps its worker busy for [`BUSY`], then returns `id`.
async fn keep_busy(id: u32) -> u32 {
    sleep(BUSY).await;
    id
}

/// What one overload run observed.
struct Outcome {
    /// Ids in the order workers called the handler with them.
    handled: Vec<u32>,
    /// Ids in the order `on_shed` received them.
    shed: Vec<u32>,
    /// Snapshot right after the burst was taken in.
    after_burst: Stats,
    report: Report,
}

/// `workers` busy workers, then a burst of `burst` ids sent at once.
/// Ids `0..workers` are the ones that occupy the workers; the burst follows.
async fn overload(
    policy: ShedPolicy,
    workers: usize,
    capacity: Option<usize>,
    burst: u32,
) -> Outcome {
    let (tx, rx) = mpsc::unbounded::<u32>();
    let (handled, shed) = (log(), log());
    let hook = Arc::clone(&shed);
    let mut config =
        FanOutConfig::new(workers, policy).on_shed(move |id: u32| hook.lock().unwrap().push(id));
    if let Some(capacity) = capacity {
        config = config.capacity(capacity);
    }
    let record = Arc::clone(&handled);
    let (results, handle) = rx.bounded_fan_out_with(config, move |id: u32| {
        record.lock().unwrap().push(id);
        keep_busy(id)
    });

    let busy = workers as u32;
    send(&tx, 0..busy);
    settle().await;
    assert_eq!(
        handle.stats().in_flight,
        workers,
        "workers busy before the burst"
    );
    send(&tx, busy..busy + burst);
    settle().await;
    let after_burst = handle.stats();
    drop(tx);

    let (out, report) = drain_and_join(results, handle, GUARD).await;
    let handled = snapshot(&handled);
    let shed = snapshot(&shed);

    // Every id was either handled or shed, never both, never twice.
    let mut all: Vec<u32> = handled.iter().chain(&shed).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..busy + burst).collect::<Vec<_>>(), "handled ∪ shed");
    assert_eq!(
        sorted(&out),
        sorted(&handled),
        "results are the handled ids"
    );
    assert_eq!(
        shed.len() as u64,
        report.dropped,
        "one on_shed call per drop"
    );
    assert_eq!(
        (
            report.produced,
            report.failed,
            report.cancelled,
            report.aborted
        ),
        (u64::from(busy + burst), 0, 0, 0)
    );
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    Outcome {
        handled,
        shed,
        after_burst,
        report,
    }
}

fn ids(range: std::ops::RangeInclusive<u32>) -> Vec<u32> {
    range.collect()
}

// ===== which items are kept =====

#[tokio::test(start_paused = true)]
async fn drop_newest_keeps_the_backlog_in_order_and_sheds_arrivals() {
    let run = overload(DropNewest, 1, Some(3), 10).await;
    assert_eq!(
        run.handled,
        [0, 1, 2, 3],
        "backlog processed in arrival order"
    );
    assert_eq!(run.shed, ids(4..=10), "arrivals shed, in order");
    assert_eq!((run.report.processed, run.report.dropped), (4, 7));
    let s = run.after_burst;
    assert_eq!(
        (s.produced, s.dropped, s.queue_depth, s.in_flight),
        (11, 7, 3, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn drop_oldest_evicts_the_head_and_keeps_the_freshest() {
    let run = overload(DropOldest, 1, Some(3), 10).await;
    assert_eq!(run.handled, [0, 8, 9, 10], "the freshest three survive");
    assert_eq!(run.shed, ids(1..=7), "evicted oldest first");
    assert_eq!((run.report.processed, run.report.dropped), (4, 7));
    let s = run.after_burst;
    assert_eq!(
        (s.produced, s.dropped, s.queue_depth, s.in_flight),
        (11, 7, 3, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn capacity_one_keeps_a_single_item() {
    let newest = overload(DropNewest, 1, Some(1), 5).await;
    assert_eq!((newest.handled, newest.shed), (vec![0, 1], ids(2..=5)));
    let oldest = overload(DropOldest, 1, Some(1), 5).await;
    assert_eq!((oldest.handled, oldest.shed), (vec![0, 5], ids(1..=4)));
}

#[tokio::test(start_paused = true)]
async fn bursts_larger_than_an_intake_batch_shed_exactly() {
    // 100 ids cross several intake batches; two busy workers hold ids 0 and 1.
    let newest = overload(DropNewest, 2, Some(5), 100).await;
    assert_eq!(sorted(&newest.handled), ids(0..=6));
    assert_eq!(newest.shed, ids(7..=101));
    assert_eq!((newest.report.processed, newest.report.dropped), (7, 95));

    let oldest = overload(DropOldest, 2, Some(5), 100).await;
    assert_eq!(sorted(&oldest.handled), [0, 1, 97, 98, 99, 100, 101]);
    assert_eq!(oldest.shed, ids(2..=96));
    assert_eq!((oldest.report.processed, oldest.report.dropped), (7, 95));
}

// ===== capacity =====

#[tokio::test(start_paused = true)]
async fn capacity_is_exact_not_off_by_one() {
    for capacity in [1usize, 2, 7] {
        let c = capacity as u32;
        for policy in [DropNewest, DropOldest] {
            // Exactly `capacity` arrivals fit.
            let full = overload(policy, 1, Some(capacity), c).await;
            assert!(
                full.shed.is_empty(),
                "{policy} C={capacity}: {:?}",
                full.shed
            );
            assert_eq!(full.after_burst.queue_depth, capacity);
            assert_eq!(full.after_burst.high_water_mark, capacity);
            assert_eq!(full.report.processed, u64::from(c) + 1);

            // One more is one shed.
            let over = overload(policy, 1, Some(capacity), c + 1).await;
            let expected_shed = match policy {
                DropNewest => c + 1, // the last arrival
                _ => 1,              // the first queued
            };
            assert_eq!(over.shed, [expected_shed], "{policy} C={capacity}");
            assert_eq!(over.after_burst.queue_depth, capacity);
            assert_eq!(over.after_burst.high_water_mark, capacity);
            assert_eq!(
                (over.report.processed, over.report.dropped),
                (u64::from(c) + 1, 1)
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn default_capacity_is_64() {
    assert_eq!(FanOutConfig::<u32>::DEFAULT_CAPACITY, 64);
    let newest = overload(DropNewest, 1, None, 100).await;
    assert_eq!(newest.after_burst.queue_depth, 64);
    assert_eq!(newest.handled, ids(0..=64));
    assert_eq!(newest.shed, ids(65..=100));
    let oldest = overload(DropOldest, 1, None, 100).await;
    assert_eq!(oldest.handled[1..], ids(37..=100)[..]);
    assert_eq!(oldest.shed, ids(1..=36));
}

#[tokio::test(start_paused = true)]
async fn a_taken_item_frees_its_slot() {
    for policy in [DropNewest, DropOldest] {
        let (tx, rx) = mpsc::unbounded::<u32>();
        let shed = log();
        let hook = Arc::clone(&shed);
        let config = FanOutConfig::new(1, policy)
            .capacity(2)
            .on_shed(move |id: u32| hook.lock().unwrap().push(id));
        let (results, handle) = rx.bounded_fan_out_with(config, keep_busy);
        tx.unbounded_send(0).unwrap();
        settle().await;
        send(&tx, [1, 2]);
        settle().await;
        assert_eq!(
            (handle.stats().queue_depth, handle.stats().in_flight),
            (2, 1)
        );

        // 0 finishes at t = 1 s and the worker takes 1: exactly one slot frees.
        sleep(BUSY).await;
        settle().await;
        let s = handle.stats();
        assert_eq!(
            (s.processed, s.queue_depth, s.in_flight),
            (1, 1, 1),
            "{policy}"
        );
        send(&tx, [3, 4]);
        settle().await;
        assert_eq!(handle.stats().queue_depth, 2);
        drop(tx);

        let (out, report) = drain_and_join(results, handle, GUARD).await;
        let (kept, dropped) = match policy {
            DropNewest => (vec![0, 1, 2, 3], vec![4]),
            _ => (vec![0, 1, 3, 4], vec![2]),
        };
        assert_eq!(out, kept, "{policy}");
        assert_eq!(snapshot(&shed), dropped, "{policy}");
        assert_eq!(
            (report.produced, report.processed, report.dropped),
            (5, 4, 1)
        );
    }
}

// ===== the on_shed hook =====

#[test]
fn on_shed_runs_outside_the_queue_lock() {
    with_deadlock_guard(Duration::from_secs(20), || {
        let rt = paused_runtime();
        rt.block_on(async {
            // The hook reads `stats()`, which takes the queue's lock: if the
            // hook ran under that lock, this would deadlock.
            let slot: Arc<Mutex<Option<ShutdownHandle>>> = Arc::new(Mutex::new(None));
            let seen: Log<(u32, usize)> = log();
            let (hook_slot, hook_seen) = (Arc::clone(&slot), Arc::clone(&seen));
            let (tx, rx) = mpsc::unbounded::<u32>();
            let config = FanOutConfig::new(1, DropOldest)
                .capacity(2)
                .on_shed(move |id: u32| {
                    let guard = hook_slot.lock().unwrap();
                    let handle = guard.as_ref().expect("handle installed before any shed");
                    hook_seen
                        .lock()
                        .unwrap()
                        .push((id, handle.stats().queue_depth));
                });
            let (results, handle) = rx.bounded_fan_out_with(config, keep_busy);
            *slot.lock().unwrap() = Some(handle);
            tx.unbounded_send(0).unwrap();
            settle().await;
            send(&tx, 1..=6);
            drop(tx);
            settle().await;
            let handle = slot.lock().unwrap().take().unwrap();
            let (out, report) = drain_and_join(results, handle, GUARD).await;
            assert_eq!(out, [0, 5, 6]);
            // Each call saw a full queue: it ran after the push, unlocked.
            assert_eq!(snapshot(&seen), [(1, 2), (2, 2), (3, 2), (4, 2)]);
            assert_eq!((report.processed, report.dropped), (3, 4));
        });
    });
}

#[tokio::test(start_paused = true)]
async fn a_panicking_on_shed_is_caught_and_intake_goes_on() {
    let calls = log();
    let hook = Arc::clone(&calls);
    let (tx, rx) = mpsc::unbounded::<u32>();
    let config = FanOutConfig::new(1, DropNewest)
        .capacity(1)
        .on_shed(move |id: u32| {
            hook.lock().unwrap().push(id);
            panic!("on_shed panics on {id}");
        });
    let (results, handle) = rx.bounded_fan_out_with(config, keep_busy);
    tx.unbounded_send(0).unwrap();
    settle().await;
    send(&tx, 1..=4);
    settle().await;
    // Intake survived the panics: later items are still taken and queued.
    // Sent while item 1 runs and the queue is empty: 5 is queued, 6 shed,
    // whichever task runs first at that instant (no idle worker to race).
    sleep(BUSY + BUSY / 2).await;
    send(&tx, 5..=6);
    drop(tx);
    let (out, report) = drain_and_join(results, handle, GUARD).await;
    assert_eq!(snapshot(&calls), [2, 3, 4, 6]);
    assert_eq!(out, [0, 1, 5]);
    assert_eq!(
        (report.produced, report.processed, report.dropped),
        (7, 3, 4)
    );
    assert_eq!(report.intake, IntakeEnd::Exhausted);
}

// ===== intake never waits for room =====

#[tokio::test(start_paused = true)]
async fn intake_never_blocks_on_a_full_queue() {
    for policy in [DropNewest, DropOldest] {
        let start = Instant::now();
        let pulls = log();
        let record = Arc::clone(&pulls);
        // One item per millisecond, at t = 1..=20 ms.
        let input = futures::stream::unfold(0u32, move |id| {
            let record = Arc::clone(&record);
            async move {
                if id == 20 {
                    return None;
                }
                sleep(Duration::from_millis(1)).await;
                record.lock().unwrap().push(start.elapsed());
                Some((id, id + 1))
            }
        });
        let config = FanOutConfig::new(1, policy).capacity(2);
        let (results, handle) = input.bounded_fan_out_with(config, keep_busy);
        sleep(Duration::from_millis(21)).await;
        let expected: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        assert_eq!(
            snapshot(&pulls),
            expected,
            "{policy}: pulled at the input's pace"
        );
        let s = handle.stats();
        assert_eq!(
            (s.produced, s.dropped, s.queue_depth),
            (20, 17, 2),
            "{policy}"
        );

        let (out, report) = drain_and_join(results, handle, GUARD).await;
        let kept = match policy {
            DropNewest => [0, 1, 2],
            _ => [0, 18, 19],
        };
        assert_eq!(out, kept, "{policy}");
        assert_eq!((report.processed, report.dropped), (3, 17));
        // Item 0 at 1 ms, then one per second.
        assert_eq!(start.elapsed(), Duration::from_millis(3001));
    }
}

// ===== an evicted item is never also processed =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_07_evicted_items_are_never_processed_multi_thread() {
    const N: usize = 10_000;
    for run in 0..20 {
        let handled: Arc<Vec<AtomicU8>> = Arc::new((0..N).map(|_| AtomicU8::new(0)).collect());
        let shed: Arc<Vec<AtomicU8>> = Arc::new((0..N).map(|_| AtomicU8::new(0)).collect());
        let on_shed = Arc::clone(&shed);
        let config = FanOutConfig::new(4, ShedPolicy::DropOldest)
            .capacity(4)
            .on_shed(move |id: usize| {
                on_shed[id].fetch_add(1, SeqCst);
            });
        let seen = Arc::clone(&handled);
        let (results, handle) = stream::iter(0..N).bounded_fan_out_with(config, move |id| {
            seen[id].fetch_add(1, SeqCst);
            async move {
                tokio::task::yield_now().await;
                id
            }
        });
        let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;

        let handled: Vec<u8> = handled.iter().map(|n| n.load(SeqCst)).collect();
        let shed: Vec<u8> = shed.iter().map(|n| n.load(SeqCst)).collect();
        let handled_ids: Vec<usize> = (0..N).filter(|&id| handled[id] > 0).collect();
        assert!(
            handled.iter().all(|&n| n <= 1),
            "run {run}: an id was handled twice"
        );
        assert!(shed.iter().all(|&n| n <= 1), "run {run}: an id shed twice");
        let both: Vec<usize> = (0..N)
            .filter(|&id| handled[id] > 0 && shed[id] > 0)
            .collect();
        assert!(both.is_empty(), "run {run}: shed and handled: {both:?}");
        assert_eq!(sorted(&out), handled_ids, "run {run}: received == handled");
        assert_eq!(handled_ids.len() as u64, report.processed, "run {run}");
        let shed_count = shed.iter().filter(|&&n| n > 0).count() as u64;
        assert_eq!(shed_count, report.dropped, "run {run}: on_shed calls");
        assert_eq!(report.processed + report.dropped, N as u64, "run {run}");
        assert_eq!(item_counts(&report).0, N as u64);
    }
}

// ===== the type =====

#[test]
fn shed_policy_display_debug_copy_eq() {
    assert_eq!(DropNewest.to_string(), "DropNewest");
    assert_eq!(DropOldest.to_string(), "DropOldest");
    assert_eq!(format!("{DropNewest:?}"), "DropNewest");
    assert_eq!(format!("{DropOldest:?}"), "DropOldest");
    // Display honours width and alignment (it pads).
    assert_eq!(format!("[{DropOldest:>12}]"), "[  DropOldest]");
    assert_eq!(format!("[{DropNewest:<11}]"), "[DropNewest ]");

    let policy = DropOldest;
    let copy = policy; // Copy: `policy` stays usable.
    assert_eq!(policy, copy);
    assert_ne!(DropNewest, DropOldest);
    let set: HashSet<ShedPolicy> = [DropNewest, DropOldest, DropNewest].into_iter().collect();
    assert_eq!(set.len(), 2);
}
