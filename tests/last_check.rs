//! The worker's last check before it calls a handler. On a multi-thread
//! runtime a worker whose take woke the intake yields once, so the intake
//! can refill before the handler runs; every task queued on that thread
//! runs in that yield. An `abort()` that returns there, or a drain deadline
//! that passes there, must still keep the handler from being called
//! (`ShutdownHandle::abort`, `FanOutConfig::drain_timeout`). A fresh-user
//! trial found both broken, in every run, on a runtime of one thread.
//!
//! Real time on a one-thread multi-thread runtime (the yield exists only
//! there); the handler's own 5 ms wait only lets the pipeline get going.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use backpressure_pipeline::{Controller, FanOutConfig, FanOutExt, IntakeEnd, Report, ShedPolicy};

const RUNS: usize = 5;

/// Runs 0..10 through one worker under `Backpressure` with a queue of 1
/// (so every take wakes the intake). Handler 0 waits 5 ms and then spawns
/// `stop` on this thread. Each handler call asks `late` whether it comes
/// after the stop took effect. Returns the report, the handler calls and
/// the late ones.
fn run(
    drain_timeout: Duration,
    stop: fn(Controller),
    late: impl Fn() -> bool + Send + Sync + 'static,
) -> (Report, u64, u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let (calls, late_calls) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let controller = Arc::new(OnceLock::<Controller>::new());
    let (counted, counted_late) = (Arc::clone(&calls), Arc::clone(&late_calls));
    let control = Arc::clone(&controller);
    let report = runtime.block_on(async move {
        let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
            .capacity(1)
            .drain_timeout(drain_timeout);
        let (results, shutdown) =
            futures::stream::iter(0..10u64).bounded_fan_out_with(config, move |x| {
                counted.fetch_add(1, SeqCst);
                if late() {
                    counted_late.fetch_add(1, SeqCst);
                }
                let control = Arc::clone(&control);
                async move {
                    if x == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        let controller = control.get().expect("controller").clone();
                        tokio::spawn(async move { stop(controller) });
                    }
                    x
                }
            });
        controller
            .set(shutdown.controller())
            .map_err(|_| ())
            .expect("set once");
        let join = shutdown.join_collect(results);
        let (_, report) = tokio::time::timeout(Duration::from_secs(10), join)
            .await
            .expect("join hung");
        report
    });
    (report, calls.load(SeqCst), late_calls.load(SeqCst))
}

/// The books of a run whose stop came after handler 0: every handler
/// called completed (only handler 0 waits, and it is ready when the stop
/// comes), and the rest of what was pulled was cancelled unstarted.
fn assert_books(report: &Report, calls: u64) {
    assert!(report.is_conserved(), "{report}");
    assert_eq!(report.intake, IntakeEnd::Stopped, "{report}");
    assert_eq!(
        (report.processed, report.cancelled, report.dropped),
        (calls, report.produced - calls, 0),
        "{report}"
    );
}

#[test]
fn no_handler_is_called_after_abort_returned_on_the_workers_own_thread() {
    static ABORTED: AtomicBool = AtomicBool::new(false);
    for round in 0..RUNS {
        ABORTED.store(false, SeqCst);
        let (report, calls, late) = run(
            Duration::from_secs(5),
            |controller| {
                controller.abort();
                ABORTED.store(true, SeqCst);
            },
            || ABORTED.load(SeqCst),
        );
        assert_eq!(
            late, 0,
            "round {round}: a handler called after abort() returned"
        );
        assert_books(&report, calls);
    }
}

#[test]
fn no_item_starts_after_the_drain_deadline_passed_in_the_workers_yield() {
    // When the stop was requested; the drain deadline is 10 ms later.
    static REQUESTED: Mutex<Option<Instant>> = Mutex::new(None);
    for round in 0..RUNS {
        *REQUESTED.lock().unwrap() = None;
        let (report, calls, late) = run(
            Duration::from_millis(10),
            |controller| {
                controller.shutdown();
                *REQUESTED.lock().unwrap() = Some(Instant::now());
                // Holds the thread past the deadline, inside the worker's
                // yield.
                std::thread::sleep(Duration::from_millis(50));
            },
            || {
                REQUESTED
                    .lock()
                    .unwrap()
                    .is_some_and(|at| at.elapsed() >= Duration::from_millis(10))
            },
        );
        assert_eq!(late, 0, "round {round}: an item started after the deadline");
        assert_books(&report, calls);
    }
}
