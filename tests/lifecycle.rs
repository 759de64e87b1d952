//! Lifetime of a pipeline: no task outlives it and nothing runs once `join`
//! has returned (sv2-apps#794), finished work is never counted as busy over
//! a long run (zeph PR #4648), both runtime flavours, the memory bound, and
//! the results stream's `FusedStream` / `size_hint`.
//!
//! Logic runs on paused current-thread runtimes; the multi-thread tests are
//! bounded loops that count every item.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, IntakeEnd, ShedPolicy, Stats};
use futures::channel::mpsc;
use futures::stream::{self, FusedStream};
use futures::{FutureExt, Stream, StreamExt};
use tokio::time::{Instant, sleep, timeout};

mod common;
use common::{
    DEADLOCK, GUARD, Trace, alive_tasks, assert_no_task_alive, assert_tasks_back_to, counts,
    drain_and_join, drain_and_join_at, endless, item_counts, joined, ms, multi_thread_runtime,
    paced, send, settle, with_drop_flag, within, work, workers,
};

use ShedPolicy::{DropNewest, DropOldest};

/// Deadlock guard on multi-thread runtimes (real time; never reached when passing).
const REAL_GUARD: Duration = Duration::from_secs(20);

// ===== no task outlives the pipeline =====

#[tokio::test(start_paused = true)]
async fn no_task_is_alive_after_join_whatever_the_ending() {
    const WORKERS: usize = 3;
    for ending in ["natural", "shutdown", "abort", "drain timeout"] {
        let baseline = alive_tasks();
        let flag = Arc::new(AtomicBool::new(false));
        let input =
            with_drop_flag(endless(0..8), &flag).take(if ending == "natural" { 8 } else { 100 });
        let mut config = FanOutConfig::new(WORKERS, DropNewest).capacity(8);
        if ending == "drain timeout" {
            config = config.drain_timeout(ms(15));
        }
        let (results, handle) = input.bounded_fan_out_with(config, |id| work(id, ms(10)));
        assert_eq!(
            alive_tasks(),
            baseline + WORKERS + 2,
            "{ending}: workers, intake, supervisor"
        );
        settle().await;
        match ending {
            "natural" => {}
            "shutdown" => {
                sleep(ms(5)).await;
                handle.shutdown();
            }
            "abort" => {
                sleep(ms(5)).await;
                handle.abort();
            }
            // 15 ms is not enough for 8 items of 10 ms, 3 at a time.
            _ => handle.shutdown(),
        }
        let (_, report) = drain_and_join(results, handle, GUARD).await;
        assert_tasks_back_to(baseline, 16).await;
        assert!(flag.load(SeqCst), "{ending}: input released");
        let expected = match ending {
            "natural" => (8, 8, 0, 0, 0, 3, 0),
            "shutdown" => (8, 8, 0, 0, 0, 3, 0),
            "abort" => (8, 0, 0, 0, 8, 0, 3),
            _ => (8, 3, 0, 0, 5, 0, 3),
        };
        assert_eq!(counts(&report), expected, "{ending}");
    }
}

// ===== runtime flavours =====

/// W handlers must be in flight together for the first W items to pass the
/// barrier; then a burst of 2000 is fanned out and counted exactly.
async fn fan_out_2000(workers: usize) {
    let barrier = Arc::new(tokio::sync::Barrier::new(workers));
    let config = FanOutConfig::new(workers, DropNewest).capacity(16);
    let (results, handle) =
        futures::stream::iter(0..2000u32).bounded_fan_out_with(config, move |id| {
            let barrier = Arc::clone(&barrier);
            async move {
                if (id as usize) < workers {
                    barrier.wait().await;
                }
                tokio::task::yield_now().await;
                id
            }
        });
    let (mut out, report) = drain_and_join(results, handle, REAL_GUARD).await;
    out.sort_unstable();
    out.dedup();
    assert_eq!(out.len() as u64, report.processed, "every result once");
    assert!(out.starts_with(&(0..workers as u32).collect::<Vec<_>>()));
    assert_eq!(report.produced, 2000);
    assert_eq!(report.processed + report.dropped, 2000);
    assert_eq!((report.workers_joined, report.aborted), (workers, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
}

#[test]
fn works_on_current_thread_and_multi_thread_runtimes() {
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    current.block_on(fan_out_2000(4));
    let multi = multi_thread_runtime();
    for _ in 0..5 {
        multi.block_on(fan_out_2000(4));
    }
}

// ===== memory bound =====

#[tokio::test(start_paused = true)]
async fn memory_is_bounded_at_every_sampled_instant() {
    const WORKERS: usize = 3;
    const CAPACITY: usize = 5;
    const OUTPUT: usize = 2;
    // 300 items in bursts of 7 every 10 ms; handlers take 3..=15 ms; the
    // consumer reads one result every 4 ms.
    let input = futures::stream::unfold(0u32, |id| async move {
        if id == 300 {
            return None;
        }
        if id % 7 == 0 {
            sleep(ms(10)).await;
        }
        Some((id, id + 1))
    });
    let config = FanOutConfig::new(WORKERS, DropOldest)
        .capacity(CAPACITY)
        .output_capacity(OUTPUT);
    let (mut results, handle) =
        input.bounded_fan_out_with(config, |id| work(id, ms(u64::from(id % 5 + 1) * 3)));

    let (mut max_queue, mut max_in_flight, mut max_waiting) = (0, 0, 0);
    let mut received = Vec::new();
    for tick in 0u32.. {
        assert!(tick < 100_000, "results never ended");
        sleep(ms(1)).await;
        let s = handle.stats();
        let waiting = results.size_hint().0;
        assert!(s.queue_depth <= CAPACITY, "t={tick}ms {s:?}");
        assert!(s.in_flight <= WORKERS, "t={tick}ms {s:?}");
        assert!(s.high_water_mark <= CAPACITY, "t={tick}ms {s:?}");
        assert!(waiting <= OUTPUT, "t={tick}ms: {waiting} results waiting");
        // Between the intake's polls nothing is held outside the queue.
        let settled = s.processed + s.dropped + s.failed + s.cancelled;
        assert_eq!(
            s.produced,
            settled + (s.queue_depth + s.in_flight) as u64,
            "t={tick}ms {s:?}"
        );
        max_queue = max_queue.max(s.queue_depth);
        max_in_flight = max_in_flight.max(s.in_flight);
        max_waiting = max_waiting.max(waiting);
        if tick % 4 == 0 {
            match results.next().now_or_never() {
                Some(Some(id)) => received.push(id),
                Some(None) => break,
                None => {}
            }
        }
    }
    // The bounds were reached, so they were tested, not just respected.
    assert_eq!(
        (max_queue, max_in_flight, max_waiting),
        (CAPACITY, WORKERS, OUTPUT)
    );
    let report = timeout(GUARD, handle.join()).await.unwrap();
    assert!(report.is_conserved(), "{report}");
    assert_eq!(report.produced, 300);
    assert_eq!(received.len() as u64, report.processed);
    assert!(report.dropped > 0, "overload was shed: {report}");
}

/// Samples `stats()` from the test task while a 2-thread runtime pushes
/// 20,000 instant items through W = 2, C = 4, K = 2; `check` sees every sample.
fn sample_parallel_load(rounds: usize, check: impl Fn(&Stats)) {
    const WORKERS: usize = 2;
    let rt = multi_thread_runtime();
    for _ in 0..rounds {
        rt.block_on(async {
            let config = FanOutConfig::new(WORKERS, DropOldest)
                .capacity(4)
                .output_capacity(2);
            let (results, handle) = futures::stream::iter(0..20_000u32)
                .bounded_fan_out_with(config, |id| async move { id });
            let consumer = tokio::spawn(results.count());
            let mut samples = 0u32;
            while !handle.is_finished() && samples < 200_000 {
                check(&handle.stats());
                samples += 1;
                tokio::task::yield_now().await;
            }
            let received = timeout(REAL_GUARD, consumer).await.unwrap().unwrap();
            let report = timeout(REAL_GUARD, handle.join()).await.unwrap();
            assert!(report.is_conserved(), "{report}");
            assert_eq!(report.produced, 20_000);
            assert_eq!(received as u64, report.processed);
            assert_eq!((report.workers_joined, report.aborted), (WORKERS, 0));
        });
    }
}

#[test]
fn queue_depth_stays_bounded_under_parallel_load() {
    sample_parallel_load(5, |s| {
        assert!(s.queue_depth <= 4, "{s:?}");
        assert!(s.high_water_mark <= 4, "{s:?}");
    });
}

#[test]
fn in_flight_never_exceeds_workers_under_parallel_load() {
    sample_parallel_load(20, |s| assert!(s.in_flight <= 2, "{s:?}"));
}

#[tokio::test(start_paused = true)]
async fn the_default_output_capacity_is_64_undelivered_results() {
    assert_eq!(FanOutConfig::<u32>::DEFAULT_OUTPUT_CAPACITY, 64);
    let config = FanOutConfig::new(1, DropNewest).capacity(100);
    let (results, handle) =
        futures::stream::iter(0..100u32).bounded_fan_out_with(config, |id| async move { id });
    settle().await;
    // 64 buffered, a 65th finished and held by the worker, 35 still queued.
    assert_eq!(results.size_hint(), (64, None));
    let s = handle.stats();
    assert_eq!((s.processed, s.queue_depth, s.in_flight), (65, 35, 0));
    let (out, report) = drain_and_join(results, handle, GUARD).await;
    assert_eq!(out, (0..100).collect::<Vec<_>>());
    assert_eq!(counts(&report), (100, 100, 0, 0, 0, 1, 0));
}

// ===== FusedStream, size_hint and order =====

#[tokio::test(start_paused = true)]
async fn results_arrive_in_completion_order() {
    let start = Instant::now();
    // Id 0 takes 30 ms, id 1 20 ms, id 2 10 ms, all started at t = 0.
    let (results, handle) = futures::stream::iter(0..3u32)
        .bounded_fan_out(3, DropNewest, |id| work(id, ms(30 - 10 * u64::from(id))));
    let (out, report) = drain_and_join(results, handle, GUARD).await;
    assert_eq!(out, [2, 1, 0]);
    assert_eq!(start.elapsed(), ms(30));
    assert_eq!(counts(&report), (3, 3, 0, 0, 0, 3, 0));
}

#[tokio::test(start_paused = true)]
async fn results_is_fused_and_its_size_hint_is_honest() {
    let (tx, rx) = mpsc::unbounded::<u32>();
    let config = FanOutConfig::new(1, DropNewest).output_capacity(4);
    let (mut results, handle) = rx.bounded_fan_out_with(config, |id| async move { id });
    assert_eq!(
        results.size_hint(),
        (0, None),
        "nothing waiting, end unknown"
    );
    assert!(!results.is_terminated());

    send(&tx, 0..3);
    settle().await;
    assert_eq!(
        results.size_hint(),
        (3, None),
        "lower bound: results waiting"
    );

    assert_eq!(results.next().await, Some(0));
    assert_eq!(results.size_hint(), (2, None));

    drop(tx);
    settle().await;
    assert!(
        !handle.is_finished(),
        "the pipeline waits for its unread results to be read or dropped"
    );
    assert_eq!(results.size_hint(), (2, None), "still two to read");
    assert!(!results.is_terminated());

    assert_eq!(results.next().await, Some(1));
    assert_eq!(results.next().await, Some(2));
    assert!(
        !results.is_terminated(),
        "the end is not known until polled"
    );
    assert_eq!(results.next().await, None);
    assert!(results.is_terminated());
    assert_eq!(results.size_hint(), (0, Some(0)));
    assert_eq!(results.next().await, None, "polling after the end is fine");
    settle().await;
    assert!(
        handle.is_finished(),
        "every result read: the pipeline is done"
    );

    let report = timeout(GUARD, handle.join()).await.unwrap();
    assert_eq!(counts(&report), (3, 3, 0, 0, 0, 1, 0));
    assert_eq!((report.delivered, report.discarded), (3, 0));
    assert!(report.is_conserved());
}

// ===== what `join` guarantees on a multi-thread runtime =====

/// The guarantee without a race: when `join` returns, every future the
/// pipeline spawned has been dropped with what it owned, so the handler,
/// the hooks and the input are gone. (`num_alive_tasks` may lag by the
/// moment tokio takes to release a finished task: PITFALLS 11.)
#[test]
fn when_join_returns_everything_the_pipeline_owned_is_dropped_on_multi_thread() {
    let rt = multi_thread_runtime();
    rt.block_on(async {
        for round in 0..200u32 {
            let (handler_owned, hook_owned) = (Arc::new(()), Arc::new(()));
            let input_dropped = Arc::new(AtomicBool::new(false));
            let (h, k) = (Arc::clone(&handler_owned), Arc::clone(&hook_owned));
            let config = FanOutConfig::new(3, DropOldest)
                .capacity(4)
                .on_shed(move |_| drop(Arc::clone(&k)));
            let input = with_drop_flag(futures::stream::iter(0..50u32), &input_dropped);
            let (results, handle) = input.bounded_fan_out_with(config, move |id| {
                let _owned = Arc::clone(&h);
                async move {
                    tokio::task::yield_now().await;
                    id
                }
            });
            let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());
            assert_eq!(out.len() as u64, report.delivered, "round {round}");
            assert_eq!(
                Arc::strong_count(&handler_owned),
                1,
                "round {round}: handler alive"
            );
            assert_eq!(
                Arc::strong_count(&hook_owned),
                1,
                "round {round}: on_shed alive"
            );
            assert!(input_dropped.load(SeqCst), "round {round}: input alive");
        }
    });
}

// ===== nothing runs after join returns =====

#[tokio::test(start_paused = true)]
async fn case_11_nothing_runs_after_abort_and_join() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let ticks = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&ticks);
    let (results, handle) =
        stream::iter(0..2u64).bounded_fan_out(2, ShedPolicy::DropNewest, move |_| {
            let counter = Arc::clone(&counter);
            async move {
                loop {
                    sleep(ms(10)).await;
                    counter.fetch_add(1, SeqCst);
                }
            }
        });

    sleep(ms(50)).await;
    handle.abort();
    let (out, report, joined_at) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert_eq!(joined_at - start, ms(50), "abort does not wait");
    let at_join = ticks.load(SeqCst);
    assert!(at_join >= 8, "both handlers ran until the abort: {at_join}");
    sleep(Duration::from_secs(1)).await;
    assert_eq!(ticks.load(SeqCst), at_join, "a handler ran after join");
    assert!(out.is_empty());
    assert_eq!(item_counts(&report), (2, 0, 0, 0, 2));
    assert_eq!(workers(&report), (0, 2));
    assert_no_task_alive(baseline).await;
}

// ===== finished work is never counted as busy =====

#[tokio::test(start_paused = true)]
async fn case_12_long_run_keeps_task_count_flat() {
    const N: u64 = 100_000;
    const W: usize = 4;
    let baseline = alive_tasks();
    let start = Instant::now();
    let pulls = Trace::default();
    let input = paced(&pulls, |i| (i < N).then(|| ms(i)));
    let config = FanOutConfig::new(W, ShedPolicy::DropNewest).capacity(16);
    let (mut results, handle) = input.bounded_fan_out_with(config, |x| async move { x });

    let mut out = Vec::with_capacity(N as usize);
    let mut at_50s = None;
    let mut most_alive = 0;
    within(Duration::from_secs(1000), "drain", async {
        while let Some(id) = results.next().await {
            out.push(id);
            let now_alive = alive_tasks();
            most_alive = most_alive.max(now_alive);
            if at_50s.is_none() && start.elapsed() >= Duration::from_secs(50) {
                at_50s = Some(now_alive);
            }
        }
    })
    .await;
    let report = joined(DEADLOCK, handle).await;

    let at_50s = at_50s.expect("the run reached t = 50 s");
    assert!(at_50s <= baseline + W + 2, "{at_50s} tasks alive at 50 s");
    assert!(most_alive <= baseline + W + 2, "{most_alive} tasks alive");
    // Every item is done within its millisecond, so none waits or is shed.
    assert!(out.iter().copied().eq(0..N), "results in input order");
    assert_eq!(item_counts(&report), (N, N, 0, 0, 0));
    assert_eq!(workers(&report), (W, 0));
    assert_no_task_alive(baseline).await;
}
