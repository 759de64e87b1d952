//! Helpers shared by the integration tests. Each test binary declares
//! `mod common;` and uses the subset it needs.
#![allow(dead_code)]

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use backpressure_pipeline::{
    BoundedFanOut, Controller, FanOutConfig, FanOutExt, InputBack, Report, ResultOrder,
    Settlements, ShedPolicy, ShutdownHandle,
};
use futures::channel::mpsc;
use futures::{Stream, StreamExt};
use tokio::time::{Instant, sleep, sleep_until, timeout};

// ===== time and runtimes =====

/// Deadlock guard for joins and drains: virtual time on a paused runtime, so
/// a deadlock fails fast instead of hanging.
pub const GUARD: Duration = Duration::from_secs(3600);

/// `n` milliseconds.
pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Awaits `fut`, panicking with `what` if it is not done within `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match timeout(limit, fut).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: not done within {limit:?} (deadlock?)"),
    }
}

/// A 2-thread multi-thread runtime with every driver enabled.
pub fn multi_thread_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("multi-thread runtime")
}

/// A current-thread runtime with every driver enabled and time paused.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("paused runtime")
}

// ===== tasks =====

/// How many tasks are alive on the current runtime.
pub fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Yields until only `baseline` tasks are alive, at most `tries` times, then
/// asserts it. (The metric lags a finished task briefly: PITFALLS 11.)
pub async fn assert_tasks_back_to(baseline: usize, tries: usize) {
    for _ in 0..tries {
        if alive_tasks() == baseline {
            return;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(alive_tasks(), baseline, "a pipeline task is still alive");
}

/// Lets every ready task run, without letting virtual time advance.
pub async fn settle() {
    for _ in 0..64 {
        tokio::task::yield_now().await;
    }
}

// ===== inputs and handlers =====

/// A handler body that takes `d`, then returns `id`.
pub async fn work(id: u32, d: Duration) -> u32 {
    sleep(d).await;
    id
}

/// `items` at once, then an input that stays pending forever.
pub fn endless<I>(items: I) -> impl Stream<Item = I::Item> + Send + 'static
where
    I: IntoIterator,
    I::IntoIter: Send + 'static,
    I::Item: Send + 'static,
{
    futures::stream::iter(items).chain(futures::stream::pending())
}

/// Sends every item of `items` on `tx`.
pub fn send<T>(tx: &mpsc::UnboundedSender<T>, items: impl IntoIterator<Item = T>) {
    items
        .into_iter()
        .for_each(|item| tx.unbounded_send(item).unwrap());
}

/// Sets its flag when dropped.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

/// `input`, with `flag` set once the stream is dropped: tells whether the
/// pipeline let go of its input.
pub fn with_drop_flag<S: Stream>(
    input: S,
    flag: &Arc<AtomicBool>,
) -> impl Stream<Item = S::Item> + use<S> {
    let guard = SetOnDrop(Arc::clone(flag));
    input.map(move |item| {
        let _owned_by_the_stream = &guard;
        item
    })
}

// ===== reports =====

/// (produced, processed, dropped, failed, cancelled, workers_joined, aborted)
pub fn counts(r: &Report) -> (u64, u64, u64, u64, u64, usize, usize) {
    (
        r.produced,
        r.processed,
        r.dropped,
        r.failed,
        r.cancelled,
        r.workers_joined,
        r.aborted,
    )
}

/// (produced, processed, dropped, failed, cancelled): where the items went.
pub fn item_counts(r: &Report) -> (u64, u64, u64, u64, u64) {
    (r.produced, r.processed, r.dropped, r.failed, r.cancelled)
}

/// Drains `results` while joining `handle` (the documented pattern), both
/// within `limit`. Returns the results in delivery order, the report and the
/// instant `join` resolved; checks only that the report is conserved.
pub async fn drain_and_join_at<T>(
    results: BoundedFanOut<T>,
    handle: ShutdownHandle,
    limit: Duration,
) -> (Vec<T>, Report, Instant) {
    let (out, (report, joined_at)) = within(limit, "drain + join", async {
        tokio::join!(results.collect::<Vec<_>>(), async {
            let report = handle.join().await;
            (report, Instant::now())
        })
    })
    .await;
    assert!(report.is_conserved(), "not conserved: {report}");
    (out, report, joined_at)
}

/// [`drain_and_join_at`], also checking that every processed result was
/// delivered. Returns the results in delivery order and the report.
pub async fn drain_and_join<T>(
    results: BoundedFanOut<T>,
    handle: ShutdownHandle,
    limit: Duration,
) -> (Vec<T>, Report) {
    let (out, report, _) = drain_and_join_at(results, handle, limit).await;
    assert_eq!(out.len() as u64, report.processed, "results != processed");
    (out, report)
}

// ===== logs =====

/// A log a handler or a hook appends to, read by the test.
pub type Log<T> = Arc<Mutex<Vec<T>>>;

/// An empty [`Log`].
pub fn log<T>() -> Log<T> {
    Arc::new(Mutex::new(Vec::new()))
}

/// A copy of what `log` holds now.
pub fn snapshot<T: Clone>(log: &Log<T>) -> Vec<T> {
    log.lock().unwrap().clone()
}

/// A sorted copy of `items`.
pub fn sorted<T: Ord + Clone>(items: &[T]) -> Vec<T> {
    let mut v = items.to_vec();
    v.sort();
    v
}

// ===== planned panics =====

/// Payload of every panic a test causes on purpose; the hook installed by
/// [`quiet_planned_panics`] keeps them quiet so that a real failure's message
/// stands out.
pub struct PlannedPanic;

/// Installs (once per process) a panic hook that stays silent for a
/// [`PlannedPanic`] and defers to the default hook for anything else.
pub fn quiet_planned_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<PlannedPanic>() {
                default(info);
            }
        }));
    });
}

/// Panics with a [`PlannedPanic`] payload.
pub fn planned_panic() -> ! {
    std::panic::panic_any(PlannedPanic)
}

// ===== property tests =====

/// Any of the three shed policies, for property tests.
pub fn any_policy() -> impl proptest::strategy::Strategy<Value = ShedPolicy> {
    use proptest::strategy::Just;
    proptest::prop_oneof![
        Just(ShedPolicy::DropNewest),
        Just(ShedPolicy::DropOldest),
        Just(ShedPolicy::Backpressure)
    ]
}

/// A property case's intervention: after `at` ms, `abort()` (if `abort`) or
/// `shutdown()`; nothing for `None`.
pub async fn stop_later(controller: Controller, stop: Option<(bool, u64)>) {
    if let Some((abort, at)) = stop {
        sleep(ms(at)).await;
        if abort {
            controller.abort();
        } else {
            controller.shutdown();
        }
    }
}

// ===== result order and settlement =====

/// The result order named by two flags (input order wins).
pub fn order(input_order: bool, latest_only: bool) -> ResultOrder {
    match (input_order, latest_only) {
        (true, _) => ResultOrder::Input,
        (false, true) => ResultOrder::LatestOnly,
        (false, false) => ResultOrder::Completion,
    }
}

/// A stream pipeline that settles by `key` and hands its input back: the
/// results, the records, the handle and the input's return.
pub struct Settled<S, T, K> {
    pub results: BoundedFanOut<T>,
    pub settlements: Settlements<K>,
    pub shutdown: ShutdownHandle,
    pub input: InputBack<S>,
}

/// `input` fanned out with `config.settle_by(key)`, wrapped with `hand_back`.
pub fn settled<S, K, KeyFn, F, Fut>(
    input: S,
    config: FanOutConfig<S::Item>,
    key: KeyFn,
    handler: F,
) -> Settled<S, Fut::Output, K>
where
    S: Stream + Send + 'static,
    S::Item: Send + 'static,
    K: Send + 'static,
    KeyFn: Fn(&S::Item) -> K + Send + Sync + 'static,
    F: Fn(S::Item) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let (config, settlements) = config.settle_by(key);
    let (input, back) = backpressure_pipeline::hand_back(input);
    let (results, shutdown) = input.bounded_fan_out_with(config, handler);
    Settled {
        results,
        settlements,
        shutdown,
        input: back,
    }
}

// ===== deadlines, leaks and traces =====

/// Deadline for any join or drain. Under paused time a deadlock costs nothing
/// but jumps here; on a multi-thread runtime it is real time.
pub const DEADLOCK: Duration = Duration::from_secs(60);

/// No task the pipeline spawned is alive: back to `baseline` after a few
/// yields (PITFALLS 11: the count drops just after the waiter is woken).
pub async fn assert_no_task_alive(baseline: usize) {
    for _ in 0..8 {
        tokio::task::yield_now().await;
    }
    assert_eq!(alive_tasks(), baseline, "a task outlived the pipeline");
}

/// (workers_joined, aborted)
pub fn workers(r: &Report) -> (usize, usize) {
    (r.workers_joined, r.aborted)
}

/// One id seen passing a point: an input pull or a handler start.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub id: u64,
    pub at: Instant,
    /// Seen after the test called [`Trace::fence`].
    pub after_fence: bool,
}

/// Records every id that passes a point (an input pull, a handler start),
/// when, and whether after a fence (set right after `shutdown()`, `abort()`
/// or a drop returns).
#[derive(Clone, Default)]
pub struct Trace {
    seen: Arc<Mutex<Vec<Seen>>>,
    fenced: Arc<AtomicBool>,
}

impl Trace {
    pub fn record(&self, id: u64) {
        let after_fence = self.fenced.load(SeqCst);
        let at = Instant::now();
        self.seen.lock().unwrap().push(Seen {
            id,
            at,
            after_fence,
        });
    }

    pub fn fence(&self) {
        self.fenced.store(true, SeqCst);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> u64 {
        self.seen.lock().unwrap().len() as u64
    }

    pub fn assert_none_after_fence(&self) {
        let late: Vec<_> = self.seen().into_iter().filter(|p| p.after_fence).collect();
        assert!(late.is_empty(), "seen after the fence: {late:?}");
    }

    pub fn assert_none_after(&self, limit: Instant) {
        let late: Vec<_> = self.seen().into_iter().filter(|p| p.at > limit).collect();
        assert!(late.is_empty(), "seen after {limit:?}: {late:?}");
    }
}

/// An input of ids 0, 1, 2, … where id `i` becomes ready at `schedule(i)`
/// after the stream was built (`None`: the input ends). Ids due at the same
/// instant are ready back to back. Every pull is logged.
pub fn paced(
    log: &Trace,
    schedule: impl Fn(u64) -> Option<Duration> + Send + 'static,
) -> impl Stream<Item = u64> + Send + 'static {
    let start = Instant::now();
    let log = log.clone();
    futures::stream::unfold(0u64, move |id| {
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

// ===== drains and joins under a guard =====

/// Drains `results` while joining, under a guard; returns the results, the
/// report and the instant `join` resolved. Checks both laws.
pub async fn drain<T>(
    results: BoundedFanOut<T>,
    handle: ShutdownHandle,
) -> (Vec<T>, Report, Instant) {
    let (out, report, at) = drain_and_join_at(results, handle, GUARD).await;
    assert_eq!(report.delivered, out.len() as u64, "{report}");
    (out, report, at)
}

/// Drains `results` and joins under [`DEADLOCK`], failing fast on a
/// deadlock; checks the law.
pub async fn finish<T>(results: BoundedFanOut<T>, shutdown: ShutdownHandle) -> (Vec<T>, Report) {
    let (out, report, _) = drain_and_join_at(results, shutdown, DEADLOCK).await;
    (out, report)
}

/// [`drain_and_join`] under [`GUARD`], the results sorted.
pub async fn drain_sorted(
    results: BoundedFanOut<u32>,
    handle: ShutdownHandle,
) -> (Vec<u32>, Report) {
    let (mut out, report) = drain_and_join(results, handle, GUARD).await;
    out.sort_unstable();
    (out, report)
}

/// Joins `handle` within `limit` (a deadlock fails fast), results already
/// drained or dropped; checks that the report is conserved.
pub async fn joined(limit: Duration, handle: ShutdownHandle) -> Report {
    let report = within(limit, "join", handle.join()).await;
    assert!(report.is_conserved(), "not conserved: {report}");
    report
}

// ===== inputs, handlers and hooks =====

/// A handler body that never completes.
pub async fn never(_: u32) -> u32 {
    std::future::pending().await
}

/// A pipeline on `config` whose input the test feeds by hand (it ends when
/// the sender is dropped) and whose handler takes 100 ms per item.
pub fn gated(
    config: FanOutConfig<u32>,
) -> (
    mpsc::UnboundedSender<u32>,
    BoundedFanOut<u32>,
    ShutdownHandle,
) {
    let (tx, rx) = mpsc::unbounded();
    let (results, handle) = rx.bounded_fan_out_with(config, |id| work(id, ms(100)));
    (tx, results, handle)
}

/// Items `(id, at_ms)` yielded at the given virtual times.
pub fn timed(items: Vec<(u64, u64)>) -> impl Stream<Item = u64> + Send + 'static {
    let start = Instant::now();
    futures::stream::iter(items).then(move |(id, at)| async move {
        sleep_until(start + ms(at)).await;
        id
    })
}

/// A log and a hook that appends to it: for `on_cancel`, `on_overload`.
pub fn recorder<T: Send + 'static>() -> (Log<T>, impl Fn(T) + Send + Sync + 'static) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    (log, move |x| sink.lock().unwrap().push(x))
}

// ===== policies and threads =====

/// The three shed policies, in the order the stress rounds cycle through.
pub const POLICIES: [ShedPolicy; 3] = [
    ShedPolicy::Backpressure,
    ShedPolicy::DropNewest,
    ShedPolicy::DropOldest,
];

/// Runs `scenario` (which builds its own runtime) on a thread of its own,
/// failing if it has not returned within `limit` of real time: a deadlock
/// on a lock must fail the test, not hang the suite, and a blocked thread
/// ignores tokio timeouts. A panic in `scenario` is the test's panic. (A
/// guard, not synchronisation.)
pub fn with_deadlock_guard(limit: Duration, scenario: impl FnOnce() + Send + 'static) {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(catch_unwind(AssertUnwindSafe(scenario)));
    });
    match finished.recv_timeout(limit) {
        Ok(Ok(())) => {}
        Ok(Err(panic)) => resume_unwind(panic),
        Err(_) => panic!("deadlock: the scenario did not finish within {limit:?}"),
    }
}
