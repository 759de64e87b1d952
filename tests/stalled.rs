//! Stop means stop: every way an abort begins ends a pipeline whose consumer
//! has stopped reading, and the results law `processed == delivered +
//! discarded` accounts for what it never read.
//!
//! The stall is exact on a paused current-thread runtime: with instant
//! handlers and a consumer that reads nothing, every worker ends up holding
//! one finished result it cannot hand over, the results buffer is full and
//! the queue is full. Sleeping 1 ms of virtual time returns only once every
//! task is idle, so the counts are then fixed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, IntakeEnd, Report, ShedPolicy, Stats};
use common::{GUARD, alive_tasks, assert_tasks_back_to, endless, ms, within};
use futures::StreamExt;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

const WORKERS: usize = 4;
const CAPACITY: usize = 64;
const OUTPUT: usize = 64;
/// Finished results a stalled pipeline holds: the buffer, plus one per worker.
const HELD: u64 = (OUTPUT + WORKERS) as u64;

fn config(policy: ShedPolicy) -> FanOutConfig<u64> {
    FanOutConfig::new(WORKERS, policy)
        .capacity(CAPACITY)
        .output_capacity(OUTPUT)
}

/// (produced, processed, dropped, cancelled, delivered, discarded)
fn books(r: &Report) -> (u64, u64, u64, u64, u64, u64) {
    (
        r.produced,
        r.processed,
        r.dropped,
        r.cancelled,
        r.delivered,
        r.discarded,
    )
}

fn stall_stats(s: &Stats) -> (u64, u64, u64, usize, usize) {
    (
        s.processed,
        s.delivered,
        s.results_waiting,
        s.queue_depth,
        s.in_flight,
    )
}

/// Reads `read` results, then stops reading; returns once the pipeline has
/// stalled, checks that `Stats` explains the stall, and returns the number
/// of queued items then. The shedding policies keep the queue full;
/// `Backpressure` refills it only once it has drained to half (its
/// low-water mark), so it holds more than half and exactly what was pulled
/// but not taken.
async fn stall<S: futures::Stream + Unpin>(
    results: &mut S,
    read: u64,
    policy: ShedPolicy,
    handle_stats: impl Fn() -> Stats,
) -> u64 {
    for _ in 0..read {
        assert!(results.next().await.is_some());
    }
    sleep(ms(1)).await;
    let stats = handle_stats();
    let queued = stats.queue_depth;
    assert_eq!(
        stall_stats(&stats),
        (read + HELD, read, HELD, queued, 0),
        "stalled: every worker holds a result, the buffer is full"
    );
    assert_stall_queue(&stats, policy);
    queued as u64
}

fn assert_stall_queue(stats: &Stats, policy: ShedPolicy) {
    let queued = stats.queue_depth;
    if policy == ShedPolicy::Backpressure {
        assert!(queued > CAPACITY / 2 && queued <= CAPACITY, "{stats:?}");
        assert_eq!(stats.produced, stats.processed + queued as u64, "{stats:?}");
    } else {
        assert_eq!(queued, CAPACITY, "the queue is full: {stats:?}");
    }
}

// ===== current-thread, paused: exact values =====

#[tokio::test(start_paused = true)]
async fn abort_ends_a_pipeline_whose_consumer_never_reads() {
    for read in [0, 10] {
        let baseline = alive_tasks();
        let (mut results, handle) = endless(0..300u64)
            .bounded_fan_out_with(config(ShedPolicy::DropNewest), |x| async move { x });
        stall(&mut results, read, ShedPolicy::DropNewest, || {
            handle.stats()
        })
        .await;
        let start = Instant::now();
        handle.abort();
        // `results` is alive and never read again.
        let report = within(GUARD, "join after abort", handle.join()).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "join resolved at once");
        // DropNewest sheds what did not fit: 300 pulled, `read + 68` done,
        // 64 queued (cancelled), the rest shed.
        let shed = 300 - (read + HELD) - CAPACITY as u64;
        assert_eq!(
            books(&report),
            (300, read + HELD, shed, CAPACITY as u64, read, HELD),
            "read {read}"
        );
        assert_eq!((report.workers_joined, report.aborted), (WORKERS, 0));
        assert_eq!(report.intake, IntakeEnd::Stopped);
        assert!(report.is_conserved(), "{report}");
        // The stream ends; the discarded results are not delivered late.
        assert_eq!(results.next().await, None);
        drop(results);
        assert_tasks_back_to(baseline, 64).await;
    }
}

#[tokio::test(start_paused = true)]
async fn abort_ends_a_pipeline_whose_results_were_forgotten() {
    let (mut results, handle) = endless(0..300u64)
        .bounded_fan_out_with(config(ShedPolicy::Backpressure), |x| async move { x });
    let queued = stall(&mut results, 0, ShedPolicy::Backpressure, || handle.stats()).await;
    std::mem::forget(results);
    handle.abort();
    let report = within(GUARD, "join after abort", handle.join()).await;
    // Backpressure pulled only what fits: buffer, workers and queue.
    let produced = HELD + queued;
    assert_eq!(books(&report), (produced, HELD, 0, queued, 0, HELD));
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn the_drain_deadline_ends_a_pipeline_whose_consumer_stopped_reading() {
    for policy in [ShedPolicy::DropNewest, ShedPolicy::Backpressure] {
        let (mut results, handle) = endless(0..300u64)
            .bounded_fan_out_with(config(policy).drain_timeout(ms(250)), |x| async move { x });
        let queued = stall(&mut results, 10, policy, || handle.stats()).await;
        let start = Instant::now();
        handle.shutdown();
        let report = within(GUARD, "join after the deadline", handle.join()).await;
        assert_eq!(
            start.elapsed(),
            ms(250),
            "{policy}: the deadline cut the drain"
        );
        assert_eq!(
            (
                report.processed,
                report.delivered,
                report.discarded,
                report.cancelled
            ),
            (10 + HELD, 10, HELD, queued),
            "{policy}"
        );
        assert_eq!((report.workers_joined, report.aborted), (WORKERS, 0));
        assert!(report.is_conserved(), "{report}");
        assert_eq!(results.next().await, None);
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_parent_token_ends_a_stalled_pipeline_at_its_deadline() {
    let parent = CancellationToken::new();
    let config = config(ShedPolicy::DropOldest)
        .drain_timeout(ms(100))
        .cancel_token(parent.clone());
    let (mut results, handle) =
        endless(0..300u64).bounded_fan_out_with(config, |x| async move { x });
    stall(&mut results, 3, ShedPolicy::DropOldest, || handle.stats()).await;
    let start = Instant::now();
    parent.cancel();
    let report = within(GUARD, "join after the parent's deadline", handle.join()).await;
    assert_eq!(start.elapsed(), ms(100));
    assert_eq!(
        (
            report.processed,
            report.delivered,
            report.discarded,
            report.cancelled
        ),
        (3 + HELD, 3, HELD, CAPACITY as u64)
    );
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn dropping_both_halves_of_a_stalled_pipeline_ends_every_task() {
    let baseline = alive_tasks();
    let cancelled = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&cancelled);
    let captured = Arc::new(());
    let witness = Arc::clone(&captured);
    let config = config(ShedPolicy::DropNewest).on_cancel(move |_| {
        count.fetch_add(1, SeqCst);
    });
    let (mut results, handle) = endless(0..300u64).bounded_fan_out_with(config, move |x| {
        let _held = Arc::clone(&witness);
        async move { x }
    });
    stall(&mut results, 5, ShedPolicy::DropNewest, || handle.stats()).await;
    drop(handle);
    drop(results);
    assert_eq!(
        cancelled.load(SeqCst),
        CAPACITY as u64,
        "the queue was abandoned"
    );
    assert_tasks_back_to(baseline, 64).await;
    assert_eq!(Arc::strong_count(&captured), 1, "the handler was dropped");
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_without_a_deadline_hit_still_waits_for_the_reader() {
    let (mut results, handle) = endless(0..300u64).bounded_fan_out_with(
        config(ShedPolicy::DropNewest).drain_timeout(ms(500)),
        |x| async move { x },
    );
    stall(&mut results, 0, ShedPolicy::DropNewest, || handle.stats()).await;
    handle.shutdown();
    // The reader is back before the deadline: nothing is discarded.
    sleep(ms(400)).await;
    assert_eq!(handle.stats().results_waiting, HELD);
    let start = Instant::now();
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The queued 64 are processed in the drain, and delivered too.
    let processed = HELD + CAPACITY as u64;
    assert_eq!(out.len() as u64, processed);
    assert_eq!(
        books(&report),
        (300, processed, 300 - processed, 0, processed, 0)
    );
    assert_eq!((report.workers_joined, report.aborted), (WORKERS, 0));
}

#[tokio::test(start_paused = true)]
async fn join_waits_for_unread_results_and_an_abort_releases_it() {
    // Natural end, nothing shed, nothing read: the pipeline has finished its
    // work but not its books.
    let (results, handle) = futures::stream::iter(0..10u64).bounded_fan_out(
        2,
        ShedPolicy::DropNewest,
        |x| async move { x },
    );
    sleep(ms(1)).await;
    assert_eq!(handle.stats().results_waiting, 10);
    assert!(!handle.is_finished(), "10 results wait for the reader");
    handle.abort();
    let report = within(GUARD, "join", handle.join()).await;
    assert_eq!(books(&report), (10, 10, 0, 0, 0, 10));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    drop(results);
}

// ===== multi-thread: bounded loops =====

/// Waits (bounded) until the pipeline is stalled with `read` results read,
/// and returns the number of queued items then. Under `Backpressure` the
/// workers and the buffer are then full and the queue holds what was pulled
/// and not taken; the intake may still be filling slots it reserved (Stats
/// does not show a reservation), so the queue may grow by those, never
/// past the capacity.
async fn stalled_on_multi_thread(stats: impl Fn() -> Stats, read: u64, run: usize) -> u64 {
    let expected = (read + HELD, read, HELD, 0);
    for _ in 0..2_000_000u32 {
        let s = stats();
        let (processed, delivered, waiting, _, in_flight) = stall_stats(&s);
        let queued = s.queue_depth;
        // Quiet: the intake waits (queue above its low-water mark, and
        // everything pulled is queued or processed).
        if (processed, delivered, waiting, in_flight) == expected
            && queued > CAPACITY / 2
            && s.produced == processed + queued as u64
        {
            assert_stall_queue(&s, ShedPolicy::Backpressure);
            return queued as u64;
        }
        tokio::task::yield_now().await;
    }
    panic!("run {run}: the pipeline never stalled: {:?}", stats());
}

#[test]
fn every_way_an_abort_begins_ends_a_stalled_pipeline_on_multi_thread() {
    let rt = common::multi_thread_runtime();
    rt.block_on(async {
        for run in 0..60 {
            let read = (run % 7) as u64;
            let parent = CancellationToken::new();
            let config = config(ShedPolicy::Backpressure)
                .drain_timeout(ms(20))
                .cancel_token(parent.clone());
            let (mut results, handle) =
                endless(0..400u64).bounded_fan_out_with(config, |x| async move { x });
            for _ in 0..read {
                assert!(results.next().await.is_some());
            }
            let queued = stalled_on_multi_thread(|| handle.stats(), read, run).await;
            match run % 3 {
                0 => handle.abort(),
                1 => handle.shutdown(),
                _ => parent.cancel(),
            }
            let report = within(Duration::from_secs(10), "join", handle.join()).await;
            assert_eq!(
                (report.processed, report.delivered, report.discarded),
                (read + HELD, read, HELD),
                "run {run}: {report}"
            );
            // Every item queued at the stop is cancelled, none processed.
            // Stats cannot tell an intake parked for room (queue above its
            // low-water mark) from one still filling the last free slots it
            // reserved (a failure seen under load: 62 queued at the check,
            // 64 cancelled); what it pushes after the check is queued, so
            // cancelled too, up to the capacity, and nothing is dropped.
            assert!(
                (queued..=CAPACITY as u64).contains(&report.cancelled),
                "run {run}: {queued} queued at the check: {report}"
            );
            assert_eq!(
                (report.produced, report.dropped),
                (report.processed + report.cancelled, 0),
                "run {run}"
            );
            assert_eq!((report.workers_joined, report.aborted), (WORKERS, 0));
            assert!(report.is_conserved(), "run {run}: {report}");
            assert_eq!(results.next().await, None, "run {run}");
        }
    });
}
