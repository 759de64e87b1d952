//! Property-based proof of the conservation law (SPEC "Accounting") and of
//! leak-free shutdown (SPEC "Lifetime and shutdown").
//!
//! Every case builds its own runtime (paused-time current-thread for most,
//! a small 2-thread multi-thread runtime for a tenth), runs one pipeline
//! over a generated input with a generated handler and one generated
//! intervention, and checks the crate's [`Report`] against an independent
//! ledger kept by the test's own input, handler, `on_shed` hook and item
//! `Drop`s.
//!
//! Cases: 2,000 by default; `PROPTEST_CASES` overrides. Failing seeds are
//! saved to `proptest-regressions/conservation.txt`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, IntakeEnd, Report, ShedPolicy};
use futures::{Stream, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use tokio_util::sync::CancellationToken;

mod common;
use common::{
    alive_tasks, multi_thread_runtime, paused_runtime, planned_panic, quiet_planned_panics,
};

// ===== the ledger: what the test itself saw =====

#[derive(Default)]
struct Ledger {
    /// Items the input stream yielded (ids are 0, 1, 2, ... in order).
    yielded: AtomicU64,
    /// `Drop`s of items, wherever they happened.
    item_drops: AtomicU64,
    input_dropped: AtomicBool,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    /// Ids the handler was called with.
    handled: Vec<u64>,
    /// Ids given to `on_shed`.
    shed: Vec<u64>,
    /// Ids whose handler future completed (returned `Ready`).
    completed: Vec<u64>,
    /// Ids whose handler panicked (in the call or in the future).
    panicked: Vec<u64>,
}

impl Ledger {
    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }
}

struct Item {
    id: u64,
    ledger: Arc<Ledger>,
}

impl Drop for Item {
    fn drop(&mut self) {
        self.ledger.item_drops.fetch_add(1, SeqCst);
    }
}

// ===== the generated case =====

#[derive(Clone, Copy, Debug)]
enum Pacing {
    /// `len` items, all ready at once.
    Burst { len: u64 },
    /// `len` items in bursts of `burst`, separated by gaps of `gap_ms`
    /// (virtual time; `gap_ms` yields on the multi-thread runtime).
    Bursts { len: u64, burst: u64, gap_ms: u64 },
    /// Endless, in bursts separated by gaps, until the intervention stops it.
    EndlessPaced { burst: u64, gap_ms: u64 },
    /// Endless and always ready, until the intervention stops it.
    EndlessReady,
}

impl Pacing {
    fn len(self) -> Option<u64> {
        match self {
            Pacing::Burst { len } | Pacing::Bursts { len, .. } => Some(len),
            Pacing::EndlessPaced { .. } | Pacing::EndlessReady => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    Instant,
    YieldOnce,
    /// Sleeps this many virtual ms (yields on the multi-thread runtime).
    SleepMs(u64),
    Never,
}

/// Ids divisible by `every` panic, in the handler's synchronous call or in
/// its future.
#[derive(Clone, Copy, Debug)]
struct PanicRule {
    every: u64,
    at_call: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Intervention {
    None,
    Shutdown,
    Abort,
    CancelParent,
    DropResults,
    DropHandle,
    DropBoth,
}

impl Intervention {
    /// The interventions that end a pipeline whose input or handler never
    /// ends on its own.
    const STOPPING: [Intervention; 4] = [
        Intervention::Shutdown,
        Intervention::Abort,
        Intervention::CancelParent,
        Intervention::DropBoth,
    ];

    fn stops(self) -> bool {
        Self::STOPPING.contains(&self)
    }
}

#[derive(Clone, Copy, Debug)]
enum When {
    /// After the driver has yielded this many times.
    Yields(u32),
    /// After this many virtual ms.
    AfterMs(u64),
}

#[derive(Clone, Debug)]
struct Case {
    multi_thread: bool,
    workers: usize,
    capacity: usize,
    output_capacity: usize,
    policy: ShedPolicy,
    pacing: Pacing,
    behaviour: Behaviour,
    panics: Option<PanicRule>,
    drain_ms: u64,
    intervention: Intervention,
    when: When,
    /// `FanOutConfig::ordered`: results must come out in id order.
    ordered: bool,
    /// `FanOutConfig::handler_timeout`, in virtual ms (current-thread only).
    timeout_ms: Option<u64>,
}

impl Case {
    fn panics_at_call(&self, id: u64) -> bool {
        self.panics.is_some_and(|p| p.at_call && id % p.every == 0)
    }

    fn panics_in_poll(&self, id: u64) -> bool {
        self.panics.is_some_and(|p| !p.at_call && id % p.every == 0)
    }

    /// Whether every handler that is called ends on its own.
    fn handlers_finish(&self) -> bool {
        self.behaviour != Behaviour::Never
            || self.panics.is_some_and(|p| p.every == 1)
            || self.timeout_ms.is_some()
    }
}

fn len_strategy() -> impl Strategy<Value = u64> {
    // Mostly small inputs (cheap, many schedules), some large ones.
    prop_oneof![3 => 0..=64u64, 2 => 0..=600u64, 1 => 0..=5000u64]
}

fn pacing_strategy() -> impl Strategy<Value = Pacing> {
    prop_oneof![
        3 => len_strategy().prop_map(|len| Pacing::Burst { len }),
        3 => (len_strategy(), 1..=64u64, 1..=20u64)
            .prop_map(|(len, burst, gap_ms)| Pacing::Bursts { len, burst, gap_ms }),
        1 => (1..=64u64, 1..=20u64)
            .prop_map(|(burst, gap_ms)| Pacing::EndlessPaced { burst, gap_ms }),
        1 => Just(Pacing::EndlessReady),
    ]
}

fn behaviour_strategy() -> impl Strategy<Value = Behaviour> {
    prop_oneof![
        3 => Just(Behaviour::Instant),
        2 => Just(Behaviour::YieldOnce),
        2 => (1..=5u64).prop_map(Behaviour::SleepMs),
        1 => Just(Behaviour::Never),
    ]
}

fn intervention_strategy() -> impl Strategy<Value = Intervention> {
    prop_oneof![
        Just(Intervention::None),
        Just(Intervention::Shutdown),
        Just(Intervention::Abort),
        Just(Intervention::CancelParent),
        Just(Intervention::DropResults),
        Just(Intervention::DropHandle),
        Just(Intervention::DropBoth),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let shape = (
        prop::bool::weighted(0.1),
        1..=16usize,
        1..=64usize,
        1..=16usize,
        prop_oneof![
            3 => Just(ShedPolicy::DropNewest),
            3 => Just(ShedPolicy::DropOldest),
            1 => Just(ShedPolicy::Backpressure)
        ],
    );
    let extras = (
        prop::bool::weighted(0.25),
        prop::option::weighted(0.2, 1..=20u64),
    );
    let run = (
        pacing_strategy(),
        behaviour_strategy(),
        prop::option::weighted(0.25, (1..=7u64, any::<bool>())),
        prop_oneof![Just(0u64), 1..=50u64, Just(10_000u64)],
        intervention_strategy(),
        0..4usize,
        prop_oneof![
            (0..=64u32).prop_map(When::Yields),
            (0..=100u64).prop_map(When::AfterMs)
        ],
    );
    (shape, run, extras).prop_map(
        |(
            (multi_thread, workers, capacity, output_capacity, policy),
            (mut pacing, behaviour, panics, mut drain_ms, mut intervention, pick, mut when),
            (ordered, timeout_ms),
        )| {
            // Real time on the multi-thread runtime: no timeouts there.
            let timeout_ms = timeout_ms.filter(|_| !multi_thread);
            let panics = panics.map(|(every, at_call)| PanicRule { every, at_call });
            if multi_thread {
                // Real time there: keep it small and short.
                pacing = match pacing {
                    Pacing::Burst { len } => Pacing::Burst { len: len % 301 },
                    Pacing::Bursts { len, burst, gap_ms } => Pacing::Bursts {
                        len: len % 301,
                        burst,
                        gap_ms,
                    },
                    endless => endless,
                };
                drain_ms = drain_ms.min(5);
                if let When::AfterMs(ms) = when {
                    when = When::Yields(ms as u32);
                }
            }
            if let Pacing::EndlessReady = pacing {
                // An always-ready input keeps the runtime busy, so virtual
                // time never advances: intervene after a few yields.
                when = match when {
                    When::Yields(n) => When::Yields(n % 9),
                    When::AfterMs(ms) => When::Yields((ms % 9) as u32),
                };
            }
            let mut case = Case {
                multi_thread,
                workers,
                capacity,
                output_capacity,
                policy,
                pacing,
                behaviour,
                panics,
                drain_ms,
                intervention,
                when,
                ordered,
                timeout_ms,
            };
            // By SPEC a never-ending input or handler only ends on a stop.
            if (pacing.len().is_none() || !case.handlers_finish()) && !intervention.stops() {
                intervention = Intervention::STOPPING[pick];
                case.intervention = intervention;
            }
            case
        },
    )
}

fn config() -> ProptestConfig {
    // `ProptestConfig::default()` has already parsed PROPTEST_CASES; use its
    // count only when the variable is set, else this file's own default.
    let default = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        default.cases
    } else {
        2_000
    };
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/conservation.txt"
        )))),
        ..default
    }
}

// ===== the input =====

enum Gap {
    Time(Duration),
    Yields(u32),
}

struct Input {
    ledger: Arc<Ledger>,
    next: u64,
    end: Option<u64>,
    /// Items per burst; 0 means no gaps at all.
    burst: u64,
    gap: Gap,
    left_in_burst: u64,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    yielded_in_gap: u32,
}

impl Input {
    fn new(case: &Case, ledger: Arc<Ledger>) -> Self {
        let (burst, gap_ms) = match case.pacing {
            Pacing::Burst { .. } | Pacing::EndlessReady => (0, 0),
            Pacing::Bursts { burst, gap_ms, .. } | Pacing::EndlessPaced { burst, gap_ms } => {
                (burst, gap_ms)
            }
        };
        let gap = if case.multi_thread {
            Gap::Yields(gap_ms as u32)
        } else {
            Gap::Time(Duration::from_millis(gap_ms))
        };
        Input {
            ledger,
            next: 0,
            end: case.pacing.len(),
            burst,
            gap,
            left_in_burst: burst,
            sleep: None,
            yielded_in_gap: 0,
        }
    }
}

impl Stream for Input {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = &mut *self;
        if this.end.is_some_and(|end| this.next >= end) {
            return Poll::Ready(None);
        }
        if this.burst > 0 && this.left_in_burst == 0 {
            match this.gap {
                Gap::Time(gap) => {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.sleep = None;
                }
                Gap::Yields(n) => {
                    if this.yielded_in_gap < n {
                        this.yielded_in_gap += 1;
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    this.yielded_in_gap = 0;
                }
            }
            this.left_in_burst = this.burst;
        }
        if this.burst > 0 {
            this.left_in_burst -= 1;
        }
        let id = this.next;
        this.next += 1;
        this.ledger.yielded.fetch_add(1, SeqCst);
        Poll::Ready(Some(Item {
            id,
            ledger: Arc::clone(&this.ledger),
        }))
    }
}

impl Drop for Input {
    fn drop(&mut self) {
        self.ledger.input_dropped.store(true, SeqCst);
    }
}

// ===== the handler =====

fn handler(
    case: &Case,
    ledger: Arc<Ledger>,
) -> impl Fn(Item) -> Pin<Box<dyn Future<Output = u64> + Send>> + Send + Sync + 'static {
    let case = case.clone();
    move |item: Item| {
        let id = item.id;
        ledger.log().handled.push(id);
        if case.panics_at_call(id) {
            ledger.log().panicked.push(id);
            planned_panic();
        }
        let ledger = Arc::clone(&ledger);
        let case = case.clone();
        Box::pin(async move {
            // Owned by the future: dropped when it completes or is dropped.
            let _item = item;
            if case.panics_in_poll(id) {
                if case.behaviour != Behaviour::Instant {
                    tokio::task::yield_now().await;
                }
                ledger.log().panicked.push(id);
                planned_panic();
            }
            match case.behaviour {
                Behaviour::Instant => {}
                Behaviour::YieldOnce => tokio::task::yield_now().await,
                Behaviour::SleepMs(_) if case.multi_thread => tokio::task::yield_now().await,
                Behaviour::SleepMs(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Behaviour::Never => std::future::pending::<()>().await,
            }
            ledger.log().completed.push(id);
            id
        })
    }
}

// ===== one case =====

/// Waits (without sleeping) until only `baseline` tasks are alive and the
/// input has been dropped; false if that did not happen within the bound.
async fn settle(ledger: &Ledger, baseline: usize, multi_thread: bool) -> bool {
    // Current-thread: a few yields (PITFALLS 11). Multi-thread: other
    // threads finish the tasks; give them a bounded number of turns.
    let turns = if multi_thread { 2_000_000 } else { 16 };
    for _ in 0..turns {
        if alive_tasks() == baseline && ledger.input_dropped.load(SeqCst) {
            return true;
        }
        tokio::task::yield_now().await;
    }
    alive_tasks() == baseline && ledger.input_dropped.load(SeqCst)
}

fn unique(ids: &[u64]) -> HashSet<u64> {
    ids.iter().copied().collect()
}

async fn drive(case: Case) -> Result<(), TestCaseError> {
    let baseline = alive_tasks();
    let ledger = Arc::new(Ledger::default());
    let parent = CancellationToken::new();
    let shed_ledger = Arc::clone(&ledger);
    let mut config = FanOutConfig::new(case.workers, case.policy)
        .result_order(common::order(case.ordered, false))
        .capacity(case.capacity)
        .output_capacity(case.output_capacity)
        .drain_timeout(Duration::from_millis(case.drain_ms))
        .cancel_token(parent.clone())
        .on_shed(move |item: Item| shed_ledger.log().shed.push(item.id));
    if let Some(ms) = case.timeout_ms {
        config = config.handler_timeout(Duration::from_millis(ms));
    }
    let input = Input::new(&case, Arc::clone(&ledger));
    let (results, handle) = input.bounded_fan_out_with(config, handler(&case, Arc::clone(&ledger)));
    let mut results = Some(results);
    let mut handle = Some(handle);
    let mut received = Vec::new();

    // Phase A: consume results until the intervention point.
    {
        let trigger = async {
            match case.when {
                When::Yields(n) => {
                    for _ in 0..n {
                        tokio::task::yield_now().await;
                    }
                }
                When::AfterMs(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
        };
        tokio::pin!(trigger);
        let stream = results.as_mut().unwrap();
        let mut ended = false;
        loop {
            if ended {
                trigger.as_mut().await;
                break;
            }
            tokio::select! {
                biased;
                () = &mut trigger => break,
                next = stream.next() => match next {
                    Some(id) => received.push(id),
                    None => ended = true,
                },
            }
        }
    }

    // The intervention.
    let mut stopped_at: Option<(u64, usize)> = None;
    match case.intervention {
        Intervention::None => {}
        Intervention::Shutdown | Intervention::Abort => {
            let h = handle.as_ref().unwrap();
            if case.intervention == Intervention::Shutdown {
                h.shutdown();
            } else {
                h.abort();
            }
            prop_assert!(h.is_shutting_down());
            stopped_at = Some((ledger.yielded.load(SeqCst), ledger.log().handled.len()));
        }
        Intervention::CancelParent => {
            parent.cancel();
            prop_assert!(handle.as_ref().unwrap().is_shutting_down());
        }
        Intervention::DropResults => results = None,
        Intervention::DropHandle => handle = None,
        Intervention::DropBoth => {
            results = None;
            handle = None;
        }
    }
    let drained = results.is_some();

    // Phase B: join and drain together, within a time limit.
    let limit = if case.multi_thread {
        Duration::from_secs(30)
    } else {
        Duration::from_secs(24 * 3600)
    };
    let joined = tokio::time::timeout(limit, async {
        let join = async {
            match handle {
                Some(h) => Some(h.join().await),
                None => None,
            }
        };
        let drain = async {
            if let Some(mut stream) = results {
                while let Some(id) = stream.next().await {
                    received.push(id);
                }
            }
        };
        tokio::join!(join, drain).0
    })
    .await;
    let Ok(report) = joined else {
        return Err(TestCaseError::fail(format!(
            "join/drain did not finish within {limit:?}"
        )));
    };

    // No task outlives the pipeline; the input and every item are dropped.
    prop_assert!(
        settle(&ledger, baseline, case.multi_thread).await,
        "tasks alive: {} (baseline {baseline}), input dropped: {}",
        alive_tasks(),
        ledger.input_dropped.load(SeqCst)
    );
    check(
        &case,
        &ledger,
        report.as_ref(),
        &received,
        drained,
        stopped_at,
    )
}

fn check(
    case: &Case,
    ledger: &Ledger,
    report: Option<&Report>,
    received: &[u64],
    drained: bool,
    stopped_at: Option<(u64, usize)>,
) -> Result<(), TestCaseError> {
    let yielded = ledger.yielded.load(SeqCst);
    prop_assert_eq!(ledger.item_drops.load(SeqCst), yielded, "items leaked");
    let log = ledger.log();
    let handled = unique(&log.handled);
    let shed = unique(&log.shed);
    let completed = unique(&log.completed);
    let panicked = unique(&log.panicked);
    let got = unique(received);
    prop_assert_eq!(handled.len(), log.handled.len(), "an id was handled twice");
    prop_assert_eq!(shed.len(), log.shed.len(), "an id was shed twice");
    prop_assert_eq!(got.len(), received.len(), "a result was delivered twice");
    prop_assert!(
        handled.is_disjoint(&shed),
        "an id was both handled and shed"
    );
    prop_assert!(handled.iter().chain(&shed).all(|&id| id < yielded));
    prop_assert!(completed.is_subset(&handled) && panicked.is_subset(&handled));
    prop_assert!(completed.is_disjoint(&panicked));
    prop_assert!(got.is_subset(&completed), "a result no handler produced");
    // Without a stop, a consumer that drains reads every result; a stop may
    // discard some (an abort, or a drain deadline that fires).
    let unstopped = matches!(
        case.intervention,
        Intervention::None | Intervention::DropHandle
    );
    if drained && unstopped {
        prop_assert_eq!(&got, &completed, "results received != handlers completed");
    }
    if case.ordered {
        // Items are taken in id order (a FIFO queue fed in id order).
        prop_assert!(received.is_sorted(), "ordered output out of order");
    }
    let in_flight_cut = (handled.len() - completed.len() - panicked.len()) as u64;
    let natural_end = matches!(
        case.intervention,
        Intervention::None | Intervention::DropResults | Intervention::DropHandle
    );
    if natural_end {
        let len = case.pacing.len().expect("finite input without a stop");
        prop_assert_eq!(yielded, len);
        if case.timeout_ms.is_none() {
            prop_assert_eq!(in_flight_cut, 0);
        }
        prop_assert_eq!(handled.len() + shed.len(), len as usize, "an id was lost");
    }
    if let Some(pacing_len) = case.pacing.len() {
        prop_assert!(yielded <= pacing_len);
    }
    if !case.multi_thread {
        if let Some((yielded_then, handled_then)) = stopped_at {
            prop_assert_eq!(yielded, yielded_then, "input pulled after shutdown/abort");
            if case.intervention == Intervention::Abort {
                prop_assert_eq!(log.handled.len(), handled_then, "item taken after abort");
            }
        }
    }
    let Some(report) = report else {
        return Ok(());
    };
    prop_assert!(report.is_conserved(), "law broken: {}", report);
    prop_assert_eq!(report.produced, yielded);
    prop_assert_eq!(report.dropped, log.shed.len() as u64);
    prop_assert_eq!(report.processed, log.completed.len() as u64);
    prop_assert_eq!(report.failed, log.panicked.len() as u64);
    prop_assert_eq!(report.workers_joined + report.aborted, case.workers);
    // A handler is cut off by an abort (its worker counts `aborted`) or by
    // its timeout (its item counts `timed_out`).
    prop_assert_eq!(
        report.aborted as u64 + report.timed_out,
        in_flight_cut,
        "aborted + timed out != in-flight cut off"
    );
    if case.timeout_ms.is_none() {
        prop_assert_eq!(report.timed_out, 0);
    }
    if case.policy == ShedPolicy::Backpressure {
        prop_assert_eq!(report.dropped, 0, "Backpressure shed an item");
    }
    // Every result read, before or after the intervention, is delivered.
    prop_assert_eq!(received.len() as u64, report.delivered);
    if drained && unstopped {
        prop_assert_eq!(report.discarded, 0);
    }
    if natural_end {
        prop_assert_eq!(report.intake, IntakeEnd::Exhausted);
        prop_assert_eq!((report.cancelled, report.aborted), (0, 0));
    } else if case.pacing.len().is_none() {
        prop_assert_eq!(report.intake, IntakeEnd::Stopped);
    } else {
        prop_assert!(matches!(
            report.intake,
            IntakeEnd::Exhausted | IntakeEnd::Stopped
        ));
    }
    // A graceful stop with time to spare loses nothing: queued plus
    // in-flight work needs at most (capacity + workers) * 5 ms of one worker.
    let graceful = matches!(
        case.intervention,
        Intervention::Shutdown | Intervention::CancelParent
    );
    if graceful && case.drain_ms == 10_000 && case.handlers_finish() {
        prop_assert_eq!((report.cancelled, report.aborted), (0, 0));
    }
    Ok(())
}

fn run_case(case: Case) -> Result<(), TestCaseError> {
    quiet_planned_panics();
    let runtime = if case.multi_thread {
        multi_thread_runtime()
    } else {
        paused_runtime()
    };
    runtime.block_on(drive(case))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn every_item_is_counted_exactly_once(case in case_strategy()) {
        run_case(case)?;
    }
}
