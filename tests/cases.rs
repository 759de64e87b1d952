//! The field failure cases of `shared/cases/CASES.md`, one or more tests each,
//! named `case_NN_<what>`, asserting the values the case gives.
//!
//! Notation as in CASES.md: *paused* is a current-thread runtime with
//! `start_paused = true`, so every time below is virtual and exact; every
//! join and drain runs under [`within`], so a deadlock fails fast (paused time
//! jumps straight to the deadline); leak checks compare `num_alive_tasks()`
//! with a baseline read before the pipeline was built; every report is
//! checked with `is_conserved()`.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{
    BoundedFanOut, FanOutConfig, FanOutExt, IntakeEnd, Report, ShedPolicy, ShutdownHandle,
};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

mod common;
use common::{
    Log, alive_tasks, drain_and_join_at, endless, item_counts, ms, snapshot, sorted,
    with_drop_flag, within,
};

// ===== helpers =====

/// Deadline for any join or drain. Under paused time a deadlock costs nothing
/// but jumps here; on a multi-thread runtime it is real time.
const DEADLOCK: Duration = Duration::from_secs(60);

/// No task the pipeline spawned is alive: back to `baseline` after a few
/// yields (PITFALLS 11: the count drops just after the waiter is woken).
async fn assert_no_task_alive(baseline: usize) {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    assert_eq!(alive_tasks(), baseline, "a task outlived the pipeline");
}

/// (workers_joined, aborted)
fn workers(r: &Report) -> (usize, usize) {
    (r.workers_joined, r.aborted)
}

fn assert_unique(ids: &[u64], what: &str) {
    let set: BTreeSet<_> = ids.iter().collect();
    assert_eq!(set.len(), ids.len(), "{what}: an id appears twice: {ids:?}");
}

/// One id seen passing a point: an input pull or a handler start.
#[derive(Clone, Copy, Debug)]
struct Seen {
    id: u64,
    at: Instant,
    /// Seen after the test called [`Trace::fence`].
    after_fence: bool,
}

/// Records every id that passes a point (an input pull, a handler start),
/// when, and whether after a fence (set right after `shutdown()`, `abort()`
/// or a drop returns).
#[derive(Clone, Default)]
struct Trace {
    seen: Arc<Mutex<Vec<Seen>>>,
    fenced: Arc<AtomicBool>,
}

impl Trace {
    fn record(&self, id: u64) {
        let after_fence = self.fenced.load(SeqCst);
        let at = Instant::now();
        self.seen.lock().unwrap().push(Seen {
            id,
            at,
            after_fence,
        });
    }

    fn fence(&self) {
        self.fenced.store(true, SeqCst);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn count(&self) -> u64 {
        self.seen.lock().unwrap().len() as u64
    }

    fn assert_none_after_fence(&self) {
        let late: Vec<_> = self.seen().into_iter().filter(|p| p.after_fence).collect();
        assert!(late.is_empty(), "seen after the fence: {late:?}");
    }

    fn assert_none_after(&self, limit: Instant) {
        let late: Vec<_> = self.seen().into_iter().filter(|p| p.at > limit).collect();
        assert!(late.is_empty(), "seen after {limit:?}: {late:?}");
    }
}

/// An input of ids 0, 1, 2, … where id `i` becomes ready at `schedule(i)`
/// after the stream was built (`None`: the input ends). Ids due at the same
/// instant are ready back to back. Every pull is logged.
fn paced(
    log: &Trace,
    schedule: impl Fn(u64) -> Option<Duration> + Send + 'static,
) -> impl Stream<Item = u64> + Send + 'static {
    let start = Instant::now();
    let log = log.clone();
    stream::unfold(0u64, move |id| {
        let due = schedule(id).map(|offset| start + offset);
        let log = log.clone();
        async move {
            let due = due?;
            if Instant::now() < due {
                sleep_until(due).await;
            }
            log.record(id);
            Some((id, id + 1))
        }
    })
}

/// The panic message of a `catch_unwind` payload.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_owned(),
            Err(_) => "<non-string panic payload>".to_owned(),
        },
    }
}

// ===== CASE-01: work must move while the consumer is not polling =====

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

// ===== CASE-02: zero sizes and empty input =====

#[tokio::test(start_paused = true)]
async fn case_02_zero_workers_or_capacity_panics_naming_the_argument() {
    let baseline = alive_tasks();
    let panics = |call: Box<dyn FnOnce()>| -> String {
        panic_message(catch_unwind(AssertUnwindSafe(call)).expect_err("must panic at the call"))
    };

    let msg = panics(Box::new(|| {
        let _ =
            stream::empty::<u8>().bounded_fan_out(0, ShedPolicy::DropNewest, |x| async move { x });
    }));
    assert!(msg.contains("workers"), "message names `workers`: {msg}");

    let msg = panics(Box::new(|| {
        let _ = FanOutConfig::<u8>::new(0, ShedPolicy::DropOldest);
    }));
    assert!(msg.contains("workers"), "message names `workers`: {msg}");

    let msg = panics(Box::new(|| {
        let _ = FanOutConfig::<u8>::new(2, ShedPolicy::DropNewest).capacity(0);
    }));
    assert!(msg.contains("capacity"), "message names `capacity`: {msg}");

    let msg = panics(Box::new(|| {
        let _ = FanOutConfig::<u8>::new(2, ShedPolicy::DropNewest).output_capacity(0);
    }));
    assert!(
        msg.contains("output_capacity"),
        "message names `output_capacity`: {msg}"
    );

    // Refused before anything was spawned.
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_02_empty_input_ends_at_once() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(2);
    let (mut results, handle) =
        stream::empty::<u64>().bounded_fan_out_with(config, |x| async move { x });
    assert_eq!(within(DEADLOCK, "results", results.next()).await, None);
    assert_eq!(start.elapsed(), Duration::ZERO, "results end at once");

    let (out, report, joined_at) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert!(out.is_empty());
    assert_eq!(joined_at, start);
    assert_eq!(item_counts(&report), (0, 0, 0, 0, 0));
    assert_eq!(workers(&report), (2, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_no_task_alive(baseline).await;
}

// ===== CASE-03: a worker blocked on a full output must not wedge intake =====

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

// ===== CASE-04: join with an undrained output =====

/// W = 2, C = 2, DropNewest; 10 items, one every 10 ms; handler 5 ms. The
/// output holds K = 1 result: the crate documents that `join` waits once
/// that buffer is full and nobody reads or drops `results` (SPEC: "a
/// consumer that neither reads nor drops `results` holds the workers"), so
/// K = 1 makes the hazard appear within 10 items.
fn case_04_pipeline(pulls: &Trace) -> (BoundedFanOut<u64>, ShutdownHandle) {
    let input = paced(pulls, |i| (i < 10).then(|| ms(10 * i)));
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
        .capacity(2)
        .output_capacity(1);
    input.bounded_fan_out_with(config, |x| async move {
        sleep(ms(5)).await;
        x
    })
}

/// Reads the first three results: 0, 1 and 2, in order.
async fn read_first_three(results: &mut BoundedFanOut<u64>) {
    for expected in 0..3 {
        assert_eq!(
            within(DEADLOCK, "read", results.next()).await,
            Some(expected)
        );
    }
}

/// The documented hazard: `join` waits while `results` is neither read nor
/// dropped. Then the same `JoinReport` future, beside a drain, completes; returns
/// the drained results and the (conserved) report.
async fn join_waits_then_completes_beside_a_drain(
    results: BoundedFanOut<u64>,
    handle: ShutdownHandle,
) -> (Vec<u64>, Report) {
    let mut join = handle.join();
    assert!(
        timeout(Duration::from_secs(1), &mut join).await.is_err(),
        "documented hazard: join waits while results are neither read nor dropped"
    );
    let (out, report) = within(DEADLOCK, "drain + join", async {
        tokio::join!(results.collect::<Vec<_>>(), join)
    })
    .await;
    assert!(report.is_conserved(), "{report}");
    (out, report)
}

#[tokio::test(start_paused = true)]
async fn case_04a_join_with_unpolled_results_waits_then_join_macro_completes() {
    let baseline = alive_tasks();
    let pulls = Trace::default();
    let (results, handle) = case_04_pipeline(&pulls);

    let (out, report) = join_waits_then_completes_beside_a_drain(results, handle).await;
    // K + W finished results and C queued items; the rest was shed.
    assert_eq!(sorted(&out), [0, 1, 2, 3, 4]);
    assert_eq!(item_counts(&report), (10, 5, 5, 0, 0));
    assert_eq!(workers(&report), (2, 0));
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_04b_join_after_partial_read_waits_then_join_macro_completes() {
    let baseline = alive_tasks();
    let pulls = Trace::default();
    let (mut results, handle) = case_04_pipeline(&pulls);
    read_first_three(&mut results).await;

    let (out, report) = join_waits_then_completes_beside_a_drain(results, handle).await;
    assert_eq!(sorted(&out), [3, 4, 5, 6, 7]);
    assert_eq!(item_counts(&report), (10, 8, 2, 0, 0));
    assert_eq!(workers(&report), (2, 0));
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_04c_join_after_dropping_results_returns() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let pulls = Trace::default();
    let (mut results, handle) = case_04_pipeline(&pulls);
    read_first_three(&mut results).await;
    drop(results);

    let report = within(DEADLOCK, "join", handle.join()).await;
    assert!(report.is_conserved(), "{report}");
    // Processing went on with results discarded; nothing had to be shed.
    assert_eq!(item_counts(&report), (10, 10, 0, 0, 0));
    assert_eq!(workers(&report), (2, 0));
    assert_eq!(start.elapsed(), ms(95), "last item at 90 ms + 5 ms");
    assert_no_task_alive(baseline).await;
}

// ===== CASE-05: dropped ends must not leave tasks parked on an idle input =====

/// W = 2, C = 4; the input yields 0, 1, 2, then stays pending forever.
fn case_05_pipeline(dropped: &Arc<AtomicBool>) -> (BoundedFanOut<u64>, ShutdownHandle) {
    let input = with_drop_flag(endless(0..3u64), dropped);
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(4);
    input.bounded_fan_out_with(config, |x| async move { x })
}

#[tokio::test(start_paused = true)]
async fn case_05_dropping_both_ends_on_idle_input_ends_every_task() {
    let baseline = alive_tasks();
    let dropped = Arc::new(AtomicBool::new(false));
    let (mut results, handle) = case_05_pipeline(&dropped);
    assert!(within(DEADLOCK, "read", results.next()).await.is_some());
    drop(results);
    drop(handle);

    sleep(ms(10)).await;
    assert_no_task_alive(baseline).await;
    assert!(dropped.load(SeqCst), "the input was not dropped");
}

#[tokio::test(start_paused = true)]
async fn case_05_dropping_results_only_keeps_processing_then_shutdown_joins() {
    let baseline = alive_tasks();
    let dropped = Arc::new(AtomicBool::new(false));
    let (mut results, handle) = case_05_pipeline(&dropped);
    assert!(within(DEADLOCK, "read", results.next()).await.is_some());
    drop(results);

    sleep(ms(10)).await;
    assert_eq!(handle.stats().processed, 3, "processing continues");
    assert!(!dropped.load(SeqCst), "the handle keeps the pipeline alive");

    handle.shutdown();
    let report = within(DEADLOCK, "join", handle.join()).await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(item_counts(&report), (3, 3, 0, 0, 0));
    assert_eq!(workers(&report), (2, 0));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert!(dropped.load(SeqCst), "the input was not dropped");
    assert_no_task_alive(baseline).await;
}

// ===== CASE-07: an evicted item must never also be processed =====

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

// ===== CASE-08: exact shed counts, capacity not off by one =====

/// W = 1, handler sleeps 1 s; item 0 at t = 0, items 1..=9 back to back at
/// t = 10 ms. Returns outputs, shed ids, the report and when join resolved.
async fn case_08(capacity: usize, policy: ShedPolicy) -> (Vec<u64>, Vec<u64>, Report, Duration) {
    let baseline = alive_tasks();
    let start = Instant::now();
    let pulls = Trace::default();
    let input = paced(&pulls, |i| match i {
        0 => Some(Duration::ZERO),
        1..=9 => Some(ms(10)),
        _ => None,
    });
    let shed: Log<u64> = Arc::default();
    let on_shed = Arc::clone(&shed);
    let config = FanOutConfig::new(1, policy)
        .capacity(capacity)
        .on_shed(move |id| on_shed.lock().unwrap().push(id));
    let (results, handle) = input.bounded_fan_out_with(config, |id| async move {
        sleep(Duration::from_secs(1)).await;
        id
    });
    let (out, report, joined_at) = drain_and_join_at(results, handle, DEADLOCK).await;
    let pulled: Vec<_> = pulls.seen().iter().map(|p| (p.id, p.at - start)).collect();
    let due: Vec<_> = (0..10)
        .map(|i| (i, if i == 0 { Duration::ZERO } else { ms(10) }))
        .collect();
    assert_eq!(pulled, due);
    assert_eq!(workers(&report), (1, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_no_task_alive(baseline).await;
    (out, snapshot(&shed), report, joined_at - start)
}

#[tokio::test(start_paused = true)]
async fn case_08_exact_shed_counts_drop_newest_c3() {
    let (out, shed, report, joined) = case_08(3, ShedPolicy::DropNewest).await;
    assert_eq!(out, [0, 1, 2, 3]);
    assert_eq!(shed, [4, 5, 6, 7, 8, 9]);
    assert_eq!(item_counts(&report), (10, 4, 6, 0, 0));
    assert_eq!(joined, Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn case_08_exact_shed_counts_drop_oldest_c3() {
    let (out, shed, report, joined) = case_08(3, ShedPolicy::DropOldest).await;
    assert_eq!(out, [0, 7, 8, 9]);
    assert_eq!(shed, [1, 2, 3, 4, 5, 6]);
    assert_eq!(item_counts(&report), (10, 4, 6, 0, 0));
    assert_eq!(joined, Duration::from_secs(4));
}

#[tokio::test(start_paused = true)]
async fn case_08_exact_shed_counts_drop_newest_c1() {
    let (out, shed, report, joined) = case_08(1, ShedPolicy::DropNewest).await;
    assert_eq!(out, [0, 1]);
    assert_eq!(shed, [2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(item_counts(&report), (10, 2, 8, 0, 0));
    assert_eq!(joined, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn case_08_exact_shed_counts_drop_oldest_c1() {
    let (out, shed, report, joined) = case_08(1, ShedPolicy::DropOldest).await;
    assert_eq!(out, [0, 9]);
    assert_eq!(shed, [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(item_counts(&report), (10, 2, 8, 0, 0));
    assert_eq!(joined, Duration::from_secs(2));
}

// ===== CASE-09: the concurrency limit is exactly W =====

/// C = 100, 30 items at once, handler sleeps 50 ms. Returns the largest
/// number of handlers seen running at once and when the last result came.
async fn case_09(workers_n: usize) -> (usize, Duration) {
    let baseline = alive_tasks();
    let start = Instant::now();
    let running = Arc::new(AtomicUsize::new(0));
    let max_running = Arc::new(AtomicUsize::new(0));
    let (now, max) = (Arc::clone(&running), Arc::clone(&max_running));
    let config = FanOutConfig::new(workers_n, ShedPolicy::DropNewest).capacity(100);
    let (mut results, handle) = stream::iter(0..30u64).bounded_fan_out_with(config, move |id| {
        let (now, max) = (Arc::clone(&now), Arc::clone(&max));
        async move {
            max.fetch_max(now.fetch_add(1, SeqCst) + 1, SeqCst);
            sleep(ms(50)).await;
            now.fetch_sub(1, SeqCst);
            id
        }
    });
    let mut out = Vec::new();
    let mut last = Duration::ZERO;
    within(DEADLOCK, "drain", async {
        while let Some(id) = results.next().await {
            out.push(id);
            last = start.elapsed();
        }
    })
    .await;
    let report = within(DEADLOCK, "join", handle.join()).await;
    assert!(report.is_conserved(), "{report}");
    assert_eq!(sorted(&out), (0..30).collect::<Vec<_>>());
    assert_eq!(item_counts(&report), (30, 30, 0, 0, 0));
    assert_eq!(workers(&report), (workers_n, 0));
    assert_no_task_alive(baseline).await;
    (max_running.load(SeqCst), last)
}

#[tokio::test(start_paused = true)]
async fn case_09_concurrency_limit_is_exactly_w3() {
    assert_eq!(case_09(3).await, (3, ms(500)));
}

#[tokio::test(start_paused = true)]
async fn case_09_concurrency_limit_is_exactly_w1() {
    assert_eq!(case_09(1).await, (1, ms(1500)));
}

// ===== CASE-10: abort results at join are classified, never a panic =====

#[tokio::test(start_paused = true)]
async fn case_10_drain_timeout_classifies_stuck_handlers() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let pulls = Trace::default();
    // The case as written: six items ready at once. The intake queues the
    // four that fit and yields to the workers it woke before pulling into
    // a full queue, so all six reach a worker or a slot and none is shed.
    let input = paced(&pulls, |i| (i < 6).then_some(Duration::ZERO));
    let config = FanOutConfig::new(4, ShedPolicy::DropNewest)
        .capacity(4)
        .drain_timeout(ms(50));
    let (results, handle) = input.bounded_fan_out_with(config, |id| async move {
        if id < 2 {
            std::future::pending::<()>().await;
        }
        sleep(ms(10)).await;
        id
    });

    sleep(ms(100)).await;
    handle.shutdown();
    let (out, report, joined_at) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert_eq!(
        joined_at - start,
        ms(150),
        "shutdown at 100 ms + 50 ms drain"
    );
    assert_eq!(sorted(&out), [2, 3, 4, 5]);
    assert_eq!(item_counts(&report), (6, 4, 0, 0, 2));
    assert_eq!(workers(&report), (2, 2));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_no_task_alive(baseline).await;
}

// ===== CASE-11: nothing runs after join returns =====

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

// ===== CASE-12: finished work is never counted as busy =====

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
    let report = within(DEADLOCK, "join", handle.join()).await;
    assert!(report.is_conserved(), "{report}");

    let at_50s = at_50s.expect("the run reached t = 50 s");
    assert!(at_50s <= baseline + W + 2, "{at_50s} tasks alive at 50 s");
    assert!(most_alive <= baseline + W + 2, "{most_alive} tasks alive");
    // Every item is done within its millisecond, so none waits or is shed.
    assert!(out.iter().copied().eq(0..N), "results in input order");
    assert_eq!(item_counts(&report), (N, N, 0, 0, 0));
    assert_eq!(workers(&report), (W, 0));
    assert_no_task_alive(baseline).await;
}

// ===== CASE-13: shedding never ends the output early or loses count =====

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

    let report = within(DEADLOCK, "join", handle.join()).await;
    assert!(report.is_conserved(), "{report}");
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

// ===== CASE-15: a panicking handler neither hangs nor loses work =====

#[tokio::test(start_paused = true)]
async fn case_15_panicking_handlers_on_both_workers_lose_nothing() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let pulls = Trace::default();
    // Item 0 alone first; ids 1 and 2 together once both workers are idle,
    // so both panic at the same instant; 3..=9 then fit C = 8 unshed.
    let input = paced(&pulls, |i| match i {
        0 => Some(Duration::ZERO),
        1 | 2 => Some(ms(20)),
        3..=9 => Some(ms(21)),
        _ => None,
    });
    let panicked: Log<(u64, Duration)> = Arc::default();
    let log = Arc::clone(&panicked);
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(8);
    let (results, handle) = input.bounded_fan_out_with(config, move |id| {
        let log = Arc::clone(&log);
        async move {
            if id == 1 || id == 2 {
                log.lock().unwrap().push((id, start.elapsed()));
                panic!("handler panics on id {id} (expected by the test)");
            }
            sleep(ms(10)).await;
            id
        }
    });

    let (out, report, joined_at) = drain_and_join_at(results, handle, Duration::from_secs(1)).await;
    assert_eq!(sorted(&snapshot(&panicked)), [(1, ms(20)), (2, ms(20))]);
    assert_eq!(sorted(&out), [0, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(item_counts(&report), (10, 8, 0, 2, 0));
    assert_eq!(workers(&report), (2, 0));
    // 3..=9 two at a time from 21 ms: four rounds of 10 ms.
    assert_eq!(joined_at - start, ms(61));
    assert_no_task_alive(baseline).await;
}

// ===== CASE-19: cancellation at any instant keeps the books =====

#[tokio::test(start_paused = true)]
async fn case_19_shutdown_at_every_instant_keeps_the_books() {
    for t in 0..=40u64 {
        let baseline = alive_tasks();
        let start = Instant::now();
        let pulls = Trace::default();
        // Two items per ms for 32 ms: ids 2k and 2k + 1 at t = k ms.
        let input = paced(&pulls, |i| (i < 64).then(|| ms(i / 2)));
        let started: Log<u64> = Arc::default();
        let log = Arc::clone(&started);
        let config = FanOutConfig::new(4, ShedPolicy::DropNewest).capacity(8);
        let (results, handle) = input.bounded_fan_out_with(config, move |id| {
            log.lock().unwrap().push(id);
            async move {
                sleep(ms(3)).await;
                id
            }
        });

        sleep_until(start + ms(t)).await;
        handle.shutdown();
        pulls.fence();
        let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;

        let started = snapshot(&started);
        assert_unique(&started, &format!("T={t}: handler-started ids"));
        assert_eq!(out.len() as u64, report.processed, "T={t}: received");
        assert_eq!(sorted(&out), sorted(&started), "T={t}: started == received");
        assert_eq!(report.produced, pulls.count(), "T={t}: produced == pulled");
        pulls.assert_none_after_fence();
        pulls.assert_none_after(start + ms(t + 1));
        // 3 ms handlers drain long before the 5 s default deadline.
        assert_eq!((report.failed, report.cancelled), (0, 0), "T={t}");
        assert_eq!(workers(&report), (4, 0), "T={t}");
        match t {
            0..=30 => assert_eq!(report.intake, IntakeEnd::Stopped, "T={t}"),
            31 => {}
            _ => assert_eq!(report.intake, IntakeEnd::Exhausted, "T={t}"),
        }
        assert_no_task_alive(baseline).await;
    }
}

// ===== CASE-20: the token tree points the right way =====

/// W = 4, C = 4, endless input of one item per ms, handler 2 ms, child of a
/// fresh parent token. Returns the parent, the input's pull trace and drop
/// flag, and the pipeline.
fn case_20_pipeline() -> (
    CancellationToken,
    Trace,
    Arc<AtomicBool>,
    BoundedFanOut<u64>,
    ShutdownHandle,
) {
    let parent = CancellationToken::new();
    let (pulls, dropped) = (Trace::default(), Arc::new(AtomicBool::new(false)));
    let input = with_drop_flag(paced(&pulls, |i| Some(ms(i))), &dropped);
    let config = FanOutConfig::new(4, ShedPolicy::DropNewest)
        .capacity(4)
        .cancel_token(parent.clone());
    let (results, handle) = input.bounded_fan_out_with(config, |id| async move {
        sleep(ms(2)).await;
        id
    });
    (parent, pulls, dropped, results, handle)
}

/// Called right after the pipeline's last end was dropped: fences `pulls`,
/// then 10 ms later no task is alive, the input was dropped, the parent is
/// not cancelled and nothing was pulled after the fence.
async fn assert_stopped_sparing_parent(
    baseline: usize,
    parent: &CancellationToken,
    pulls: &Trace,
    dropped: &AtomicBool,
) {
    pulls.fence();
    sleep(ms(10)).await;
    assert_no_task_alive(baseline).await;
    assert!(dropped.load(SeqCst), "the input was not dropped");
    assert!(!parent.is_cancelled(), "the pipeline cancelled its parent");
    pulls.assert_none_after_fence();
}

#[tokio::test(start_paused = true)]
async fn case_20_1_dropping_both_ends_stops_all_and_spares_parent() {
    let baseline = alive_tasks();
    let (parent, pulls, dropped, results, handle) = case_20_pipeline();

    sleep(ms(20)).await;
    drop(results);
    drop(handle);
    assert_stopped_sparing_parent(baseline, &parent, &pulls, &dropped).await;
}

#[tokio::test(start_paused = true)]
async fn case_20_2_cancelling_parent_shuts_pipeline_down() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let (parent, pulls, dropped, results, handle) = case_20_pipeline();

    sleep(ms(20)).await;
    parent.cancel();
    assert!(handle.is_shutting_down());
    let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_eq!(out.len() as u64, report.processed, "received == processed");
    assert_eq!(report.produced, pulls.count());
    assert!(
        report.produced >= 20,
        "items 0..20 were due before the cancel"
    );
    pulls.assert_none_after(start + ms(21));
    assert_eq!((report.failed, report.cancelled), (0, 0));
    assert_eq!(workers(&report), (4, 0));
    assert!(dropped.load(SeqCst));
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_20_3_shutdown_leaves_parent_uncancelled() {
    let baseline = alive_tasks();
    let (parent, pulls, _, results, handle) = case_20_pipeline();

    sleep(ms(20)).await;
    handle.shutdown();
    pulls.fence();
    assert!(handle.is_shutting_down());
    let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert!(!parent.is_cancelled(), "shutdown cancelled the parent");
    pulls.assert_none_after_fence();
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_eq!(out.len() as u64, report.processed);
    assert_eq!(workers(&report), (4, 0));
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_20_4_cancelling_parent_after_join_is_inert() {
    let baseline = alive_tasks();
    let (parent, pulls, _, results, handle) = case_20_pipeline();

    sleep(ms(20)).await;
    handle.shutdown();
    let (_, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert_no_task_alive(baseline).await;
    let pulled = pulls.count();
    assert_eq!(report.produced, pulled);

    parent.cancel();
    sleep(ms(10)).await;
    assert!(parent.is_cancelled());
    assert_eq!(pulls.count(), pulled, "no pull after the pipeline finished");
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_20_5_dropping_only_the_handle_detaches() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let (parent, pulls, dropped, mut results, handle) = case_20_pipeline();

    sleep(ms(20)).await;
    drop(handle);
    // The pipeline runs on while `results` lives (SPEC: like a JoinHandle).
    let mut out = Vec::new();
    while let Ok(next) = timeout_at(start + ms(50), results.next()).await {
        out.push(next.expect("results ended while the pipeline was detached"));
    }
    assert!(!dropped.load(SeqCst), "detached pipeline dropped its input");
    assert!(
        pulls
            .seen()
            .iter()
            .any(|p| p.id == 49 && p.at == start + ms(49)),
        "intake goes on after the handle is dropped"
    );
    // Item i is done at i + 2 ms: every item due by 47 ms was received.
    assert!(sorted(&out).starts_with(&(0..=47).collect::<Vec<_>>()));
    assert!(!parent.is_cancelled());

    drop(results);
    assert_stopped_sparing_parent(baseline, &parent, &pulls, &dropped).await;
}

/// The paused counterpart of (6): the same claim, deterministic.
#[tokio::test(start_paused = true)]
async fn case_20_6_no_handler_starts_once_abort_returns_current_thread() {
    let baseline = alive_tasks();
    let parent = CancellationToken::new();
    let (pulls, dropped) = (Trace::default(), Arc::new(AtomicBool::new(false)));
    let starts = Trace::default();
    let input = with_drop_flag(paced(&pulls, |i| Some(ms(i))), &dropped);
    let config = FanOutConfig::new(4, ShedPolicy::DropNewest)
        .capacity(4)
        .cancel_token(parent.clone());
    let log = starts.clone();
    let (results, handle) = input.bounded_fan_out_with(config, move |id| {
        log.record(id);
        async move {
            sleep(ms(2)).await;
            id
        }
    });

    sleep(ms(20)).await;
    // The workers keep up: nothing is queued, so every item the abort
    // cancels had started.
    assert_eq!(handle.stats().queue_depth, 0);
    handle.abort();
    starts.fence();
    pulls.fence();
    let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    starts.assert_none_after_fence();
    pulls.assert_none_after_fence();
    assert!(!parent.is_cancelled(), "abort cancelled the parent");
    // The consumer read nothing before the abort: every result is discarded.
    assert_eq!(out.len() as u64, report.delivered);
    assert_eq!((report.delivered, report.discarded), (0, report.processed));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_eq!(
        report.processed + report.cancelled,
        starts.count(),
        "every started handler completed or was cut off"
    );
    assert_no_task_alive(baseline).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_20_6_no_handler_starts_once_abort_returns_multi_thread() {
    // Real time: the 1 item/ms pacing of the paused cases would be a real
    // sleep here, so the input is an endless ready stream instead.
    for run in 0..20 {
        let parent = CancellationToken::new();
        let started = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&started);
        let config = FanOutConfig::new(4, ShedPolicy::DropOldest)
            .capacity(4)
            .cancel_token(parent.clone());
        let (results, handle) = stream::iter(0u64..).bounded_fan_out_with(config, move |id| {
            counter.fetch_add(1, SeqCst);
            async move {
                tokio::task::yield_now().await;
                id
            }
        });
        let consumer = tokio::spawn(results.collect::<Vec<_>>());
        let mut spins = 0u64;
        while started.load(SeqCst) < 100 {
            spins += 1;
            assert!(spins < 50_000_000, "run {run}: the pipeline never got busy");
            tokio::task::yield_now().await;
        }

        handle.abort();
        let at_abort = started.load(SeqCst);
        let report = within(DEADLOCK, "join", handle.join()).await;
        let out = within(DEADLOCK, "consumer", consumer).await.unwrap();
        // Per the documented guarantee of `abort()`: no item is taken after
        // it returns, and a worker that took one just before hands it back
        // unstarted; only a worker already past that last check (a window
        // of a few instructions on another thread) may still call its
        // handler, so at most one start per worker. A strict "no start" is
        // not reachable without making `abort()` wait for user code.
        let late = started.load(SeqCst) - at_abort;
        assert!(
            late <= 4,
            "run {run}: {late} handlers started after abort()"
        );
        assert!(report.is_conserved(), "run {run}: {report}");
        assert_eq!(out.len() as u64, report.delivered, "run {run}");
        assert!(report.processed <= at_abort, "run {run}");
        assert_eq!(report.intake, IntakeEnd::Stopped, "run {run}");
        assert_eq!(report.workers_joined + report.aborted, 4, "run {run}");
        assert!(
            !parent.is_cancelled(),
            "run {run}: abort cancelled the parent"
        );
    }
}

// ===== CASE-21: a finished result is never thrown away at shutdown =====

#[tokio::test(start_paused = true)]
async fn case_21a_shutdown_mid_stream_delivers_every_finished_result() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let pulls = Trace::default();
    let input = paced(&pulls, |i| Some(ms(i)));
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(4);
    let (results, handle) = input.bounded_fan_out_with(config, |id| async move { id });

    // The consumer drains throughout; the shutdown comes at t = 100 ms.
    let (out, report) = within(DEADLOCK, "drain + shutdown + join", async {
        tokio::join!(results.collect::<Vec<_>>(), async {
            sleep_until(start + ms(100)).await;
            handle.shutdown();
            pulls.fence();
            handle.join().await
        })
    })
    .await;
    assert!(report.is_conserved(), "not conserved: {report}");
    assert!(
        report.produced == 100 || report.produced == 101,
        "produced {}",
        report.produced
    );
    pulls.assert_none_after_fence();
    assert_eq!(report.produced, pulls.count());
    assert_eq!(out.len() as u64, report.processed, "received == processed");
    assert!(out.iter().copied().eq(0..report.produced), "{out:?}");
    // Instant handlers keep up with one item per ms: nothing shed or cut off.
    let produced = report.produced;
    assert_eq!(item_counts(&report), (produced, produced, 0, 0, 0));
    assert_eq!(report.intake, IntakeEnd::Stopped);
    assert_no_task_alive(baseline).await;
}

/// W = 1, one item whose handler sleeps exactly 100 ms; at t = 100 ms the
/// pipeline is stopped by `stop`. 50 runs.
async fn case_21b(stop: fn(&ShutdownHandle), delivered: bool) {
    // [stopped before completion, stopped after completion]
    let mut finished_first = [0; 2];
    for run in 0..50 {
        let baseline = alive_tasks();
        let start = Instant::now();
        let (results, handle) =
            stream::iter([7u64]).bounded_fan_out(1, ShedPolicy::DropNewest, |id| async move {
                sleep(ms(100)).await;
                id
            });
        sleep_until(start + ms(100)).await;
        // Both orders within the same instant: stop before the worker has
        // seen its timer fire (even runs), or just after (odd runs).
        if run % 2 == 1 {
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
        }
        finished_first[usize::from(handle.stats().processed == 1)] += 1;
        stop(&handle);
        let (out, report, joined_at) = drain_and_join_at(results, handle, DEADLOCK).await;
        if delivered {
            assert_eq!(out, [7], "run {run}: the finished result was thrown away");
            assert_eq!((report.delivered, report.discarded), (1, 0), "run {run}");
        } else {
            assert_eq!(out, [], "run {run}: a result was delivered after abort()");
            assert_eq!((report.delivered, report.discarded), (0, 1), "run {run}");
        }
        assert_eq!(item_counts(&report), (1, 1, 0, 0, 0), "run {run}");
        assert_eq!(workers(&report), (1, 0), "run {run}");
        assert_eq!(joined_at - start, ms(100), "run {run}");
        assert_no_task_alive(baseline).await;
    }
    assert_eq!(finished_first, [25, 25], "both orders were exercised");
}

#[tokio::test(start_paused = true)]
async fn case_21b_result_finishing_at_shutdown_is_always_delivered() {
    case_21b(ShutdownHandle::shutdown, true).await;
}

/// The same race through `abort`: a handler that is ready when cancelled
/// still completes and counts `processed` in every run, but an abort stops
/// every hand-over, so its unread result is discarded, and counted so.
#[tokio::test(start_paused = true)]
async fn case_21b_result_finishing_at_abort_is_processed_and_discarded() {
    case_21b(ShutdownHandle::abort, false).await;
}

// ===== CASE-22: a panicking `Drop` of a user closure is user code too =====

/// Captured by a user closure; its `Drop` panics, as a user type's may.
struct PanicsOnDrop;

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        std::panic::panic_any(common::PlannedPanic);
    }
}

#[tokio::test(start_paused = true)]
async fn case_22a_a_handler_closure_whose_drop_panics_is_not_an_aborted_worker() {
    common::quiet_planned_panics();
    let baseline = alive_tasks();
    let bomb = PanicsOnDrop;
    let (results, handle) =
        stream::iter(0..4u64).bounded_fan_out(2, ShedPolicy::DropNewest, move |id| {
            let _captured = &bomb;
            async move { id }
        });
    let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert_eq!(sorted(&out), [0, 1, 2, 3]);
    assert_eq!(item_counts(&report), (4, 4, 0, 0, 0));
    assert_eq!(workers(&report), (2, 0), "{report}");
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_no_task_alive(baseline).await;
}

#[tokio::test(start_paused = true)]
async fn case_22b_an_on_shed_closure_whose_drop_panics_is_not_an_input_panic() {
    common::quiet_planned_panics();
    let bomb = PanicsOnDrop;
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(1)
        .on_shed(move |_: u64| {
            let _captured = &bomb;
        });
    // A busy worker, so that the burst is shed: it takes 0, 1 waits in the
    // one slot, and 2 and 3 meet a full queue while the worker sleeps.
    let (results, handle) = stream::iter(0..4u64).bounded_fan_out_with(config, |id| async move {
        sleep(ms(1)).await;
        id
    });
    let (out, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
    assert_eq!(out, [0, 1]);
    assert_eq!(item_counts(&report), (4, 2, 2, 0, 0));
    assert_eq!(report.intake, IntakeEnd::Exhausted, "{report}");
}

#[tokio::test(start_paused = true)]
async fn case_22_on_cancel_and_on_overload_closures_whose_drop_panics_break_nothing() {
    common::quiet_planned_panics();
    let (cancel_bomb, overload_bomb) = (PanicsOnDrop, PanicsOnDrop);
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(1)
        .on_cancel(move |_: u64| {
            let _captured = &cancel_bomb;
        })
        .on_overload(move |_| {
            let _captured = &overload_bomb;
        });
    let (results, handle) =
        endless(0..4u64).bounded_fan_out_with(config, |_| std::future::pending::<()>());
    sleep(ms(1)).await;
    handle.abort();
    // Dropping `results` last drops the state that owns `on_cancel`.
    let report = within(DEADLOCK, "join", handle.join()).await;
    drop(results);
    // 0 in flight and 1 queued are cancelled; 2 and 3 met a full queue.
    assert_eq!(item_counts(&report), (4, 0, 2, 0, 2));
    assert_eq!(workers(&report), (0, 1));
    assert_eq!(report.intake, IntakeEnd::Stopped);
}

// ===== CASE-23: a cancelled parent token stops pulling exactly like `shutdown()` =====

/// An endless input of ready ids that counts its pulls.
fn counted(pulls: &Arc<AtomicU64>) -> impl Stream<Item = u64> + Send + 'static {
    let pulls = Arc::clone(pulls);
    stream::repeat(()).map(move |()| pulls.fetch_add(1, SeqCst))
}

#[tokio::test(start_paused = true)]
async fn case_23a_no_pull_after_the_parents_cancel_returns_at_any_phase() {
    for k in 0..=8u64 {
        let parent = CancellationToken::new();
        let pulls = Arc::new(AtomicU64::new(0));
        let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
            .capacity(1)
            .cancel_token(parent.clone());
        let (results, handle) = counted(&pulls).bounded_fan_out_with(config, |id| async move {
            sleep(ms(1)).await;
            id
        });
        // A controller task cancels the parent at phase k of the intake's
        // rhythm (one pull per handler, 1 ms each).
        let (token, seen) = (parent.clone(), Arc::clone(&pulls));
        let controller = tokio::spawn(async move {
            sleep(ms(20 + k)).await;
            for _ in 0..k {
                tokio::task::yield_now().await;
            }
            token.cancel();
            seen.load(SeqCst)
        });
        let at_cancel = within(DEADLOCK, "controller", controller).await.unwrap();
        let (_, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
        assert_eq!(
            pulls.load(SeqCst) - at_cancel,
            0,
            "phase {k}: pulled after the parent's cancel() returned"
        );
        assert_eq!(report.produced, at_cancel, "phase {k}");
        assert_eq!(report.intake, IntakeEnd::Stopped);
        assert_eq!(report.dropped, 0, "Backpressure sheds nothing");
    }
}

#[test]
fn case_23b_at_most_one_pull_after_the_parents_cancel_returns_on_multi_thread() {
    let rt = common::multi_thread_runtime();
    rt.block_on(async {
        for trial in 0..50 {
            let parent = CancellationToken::new();
            let pulls = Arc::new(AtomicU64::new(0));
            let config = FanOutConfig::new(1, ShedPolicy::DropOldest)
                .capacity(4)
                .cancel_token(parent.clone());
            // One busy worker; intake runs flat out, shedding.
            let (results, handle) = counted(&pulls).bounded_fan_out_with(config, |id| async move {
                sleep(ms(1)).await;
                id
            });
            let mut spins = 0u64;
            while pulls.load(SeqCst) < 2_000 + trial * 100 {
                spins += 1;
                assert!(spins < 50_000_000, "trial {trial}: intake never ran");
                tokio::task::yield_now().await;
            }
            parent.cancel();
            let at_cancel = pulls.load(SeqCst);
            let (_, report, _) = drain_and_join_at(results, handle, DEADLOCK).await;
            let late = pulls.load(SeqCst) - at_cancel;
            assert!(
                late <= 1,
                "trial {trial}: {late} pulls after cancel() returned"
            );
            assert!(report.is_conserved(), "trial {trial}: {report}");
            assert_eq!(report.intake, IntakeEnd::Stopped);
        }
    });
}
