//! Bad arguments, a missing runtime, and user code that panics.
//!
//! Argument panics must carry the documented message and point at the
//! caller's line (`#[track_caller]`): a zero size panics at the call,
//! naming the argument, instead of hanging (`buffered(0)` in
//! futures-rs#2876). A panicking handler or input must not take the
//! pipeline down.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, IntakeEnd, ShedPolicy};
use futures::{StreamExt, stream};
use tokio::time::sleep;

mod common;
use common::{GUARD, alive_tasks, assert_no_task_alive, counts, drain_and_join_at};

use ShedPolicy::DropNewest;

const WORKERS_MSG: &str = "bounded_fan_out: workers must be at least 1";
const NEW_WORKERS_MSG: &str = "FanOutConfig::new: workers must be at least 1";
const CAPACITY_MSG: &str = "FanOutConfig::capacity: capacity must be at least 1";
const OUTPUT_MSG: &str = "FanOutConfig::output_capacity: output_capacity must be at least 1";
const RUNTIME_MSG: &str = "bounded_fan_out: must be called from the context of a Tokio runtime";

async fn echo(id: u32) -> u32 {
    id
}

// ===== the documented messages =====

#[tokio::test]
#[should_panic(expected = "bounded_fan_out: workers must be at least 1")]
async fn zero_workers_via_bounded_fan_out_panics() {
    let _ = futures::stream::iter(0..3u32).bounded_fan_out(0, DropNewest, echo);
}

#[test]
#[should_panic(expected = "FanOutConfig::new: workers must be at least 1")]
fn zero_workers_via_config_panics() {
    let _ = FanOutConfig::<u32>::new(0, DropNewest);
}

#[test]
#[should_panic(
    expected = "FanOutConfig::new: workers must be at most FanOutConfig::MAX_WORKERS (65536)"
)]
fn too_many_workers_via_config_panics_naming_the_maximum() {
    let _ = FanOutConfig::<u32>::new(usize::MAX, DropNewest);
}

#[tokio::test]
#[should_panic(
    expected = "bounded_fan_out: workers must be at most FanOutConfig::MAX_WORKERS (65536)"
)]
async fn too_many_workers_via_bounded_fan_out_panics_naming_the_maximum() {
    let _ = futures::stream::iter(0..3u32).bounded_fan_out(usize::MAX, DropNewest, echo);
}

#[tokio::test]
async fn the_maximum_worker_count_itself_is_accepted() {
    let max = FanOutConfig::<u32>::MAX_WORKERS;
    let (results, shutdown) = futures::stream::iter(0..3u32).bounded_fan_out(max, DropNewest, echo);
    let (out, report) = shutdown.join_collect(results).await;
    assert_eq!(
        (out.len(), report.workers, report.workers_joined),
        (3, max, max)
    );
}

#[test]
#[should_panic(expected = "FanOutConfig::capacity: capacity must be at least 1")]
fn zero_capacity_panics() {
    let _ = FanOutConfig::<u32>::new(1, DropNewest).capacity(0);
}

#[test]
#[should_panic(expected = "FanOutConfig::output_capacity: output_capacity must be at least 1")]
fn zero_output_capacity_panics() {
    let _ = FanOutConfig::<u32>::new(1, DropNewest).output_capacity(0);
}

#[test]
#[should_panic(expected = "bounded_fan_out: must be called from the context of a Tokio runtime")]
fn bounded_fan_out_outside_a_runtime_panics() {
    let _ = futures::stream::iter(0..3u32).bounded_fan_out(1, DropNewest, echo);
}

#[test]
#[should_panic(expected = "bounded_fan_out: must be called from the context of a Tokio runtime")]
fn bounded_fan_out_with_outside_a_runtime_panics() {
    let config = FanOutConfig::new(1, DropNewest);
    let _ = futures::stream::iter(0..3u32).bounded_fan_out_with(config, echo);
}

// ===== the panic points at the caller =====

thread_local! {
    /// Where the last panic on this thread was reported, by the hook below.
    static LAST_PANIC: RefCell<Option<(String, u32)>> = const { RefCell::new(None) };
}

/// Installs (once per process) a hook that records each panic's location
/// for its own thread, then defers to the previous hook. Per thread, so the
/// tests that run in parallel do not see each other's panics.
fn record_panic_locations() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(at) = info.location() {
                let at = (at.file().to_owned(), at.line());
                LAST_PANIC.with(|last| *last.borrow_mut() = Some(at));
            }
            previous(info);
        }));
    });
}

/// Runs `f`, which must panic; returns (message, file, line) of the panic.
fn caught(f: impl FnOnce()) -> (String, String, u32) {
    record_panic_locations();
    LAST_PANIC.with(|last| last.borrow_mut().take());
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("expected a panic");
    let message = match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(text), _) => (*text).to_owned(),
        (None, Some(text)) => text.clone(),
        (None, None) => panic!("panic payload is not a string"),
    };
    let (file, line) = LAST_PANIC
        .with(|last| last.borrow_mut().take())
        .expect("the hook saw no panic");
    (message, file, line)
}

/// Asserts one `caught` result: exact message, and this file at `line`.
fn assert_at(got: (String, String, u32), message: &str, line: u32) {
    assert_eq!(got, (message.to_owned(), file!().to_owned(), line));
}

#[test]
fn argument_panics_point_at_the_callers_line() {
    let line = line!() + 1;
    let got = caught(|| drop(FanOutConfig::<u32>::new(0, DropNewest)));
    assert_at(got, NEW_WORKERS_MSG, line);

    let config = FanOutConfig::<u32>::new(1, DropNewest);
    let line = line!() + 1;
    let got = caught(|| drop(config.capacity(0)));
    assert_at(got, CAPACITY_MSG, line);

    let config = FanOutConfig::<u32>::new(1, DropNewest);
    let line = line!() + 1;
    let got = caught(|| drop(config.output_capacity(0)));
    assert_at(got, OUTPUT_MSG, line);

    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _entered = rt.enter();
    let baseline = rt.metrics().num_alive_tasks();
    let input = futures::stream::iter(0..3u32);
    let line = line!() + 1;
    let got = caught(move || drop(input.bounded_fan_out(0, DropNewest, echo)));
    assert_at(got, WORKERS_MSG, line);
    assert_eq!(rt.metrics().num_alive_tasks(), baseline, "nothing spawned");
}

#[test]
fn the_missing_runtime_panic_points_at_the_callers_line() {
    let input = futures::stream::iter(0..3u32);
    let line = line!() + 1;
    let got = caught(move || drop(input.bounded_fan_out(1, DropNewest, echo)));
    assert_at(got, RUNTIME_MSG, line);

    let input = futures::stream::iter(0..3u32);
    let config = FanOutConfig::new(1, DropNewest);
    let line = line!() + 1;
    let got = caught(move || drop(input.bounded_fan_out_with(config, echo)));
    assert_at(got, RUNTIME_MSG, line);

    // The push and call fronts name themselves (a new-user trial was told
    // `bounded_fan_out`, which it had not called).
    let config = FanOutConfig::new(1, DropNewest);
    let line = line!() + 1;
    let got = caught(move || drop(backpressure_pipeline::feeder(config, echo)));
    let message = "feeder: must be called from the context of a Tokio runtime";
    assert_at(got, message, line);

    let config = FanOutConfig::new(1, DropNewest);
    let line = line!() + 1;
    let got = caught(move || drop(backpressure_pipeline::caller(config, echo)));
    let message = "caller: must be called from the context of a Tokio runtime";
    assert_at(got, message, line);
}

#[test]
fn without_a_time_driver_the_push_and_call_fronts_name_themselves() {
    let fix =
        "the Tokio runtime has no time driver; build it with `enable_time()` or `enable_all()`";
    // Built without `enable_time`.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let starts: [(&str, fn()); 2] = [
        ("feeder", || {
            drop(backpressure_pipeline::feeder(
                FanOutConfig::new(1, DropNewest),
                echo,
            ));
        }),
        ("caller", || {
            drop(backpressure_pipeline::caller(
                FanOutConfig::new(1, DropNewest),
                echo,
            ));
        }),
    ];
    for (name, start) in starts {
        let got = caught(|| runtime.block_on(async { start() }));
        assert_eq!(got.0, format!("{name}: {fix}"));
    }
}

// ===== panicking user code =====

/// Panics in the call for id 3 and inside the future for id 7.
fn fragile(id: u32) -> impl std::future::Future<Output = u32> + Send {
    assert_ne!(id, 3, "handler call panics on 3");
    async move {
        sleep(Duration::from_millis(10)).await;
        assert_ne!(id, 7, "handler future panics on 7");
        id
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_counts_failed_and_the_rest_is_processed() {
    for workers in [1usize, 2] {
        let (results, handle) =
            futures::stream::iter(0..10u32).bounded_fan_out(workers, DropNewest, fragile);
        let (mut out, report, _) = drain_and_join_at(results, handle, GUARD).await;
        if workers == 1 {
            assert_eq!(
                out,
                [0, 1, 2, 4, 5, 6, 8, 9],
                "the lone worker lived on, in order"
            );
        }
        out.sort_unstable();
        assert_eq!(out, [0, 1, 2, 4, 5, 6, 8, 9]);
        // The workers survived: all joined on their own, none aborted.
        assert_eq!(counts(&report), (10, 8, 0, 2, 0, workers, 0));
        assert_eq!(report.intake, IntakeEnd::Exhausted);
        assert!(report.is_conserved(), "{report}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_panicking_input_stops_intake_and_drains_what_it_accepted() {
    let input = futures::stream::iter(0..10u32).map(|id| {
        assert_ne!(id, 5, "input panics at 5");
        id
    });
    let (results, handle) = input.bounded_fan_out(2, DropNewest, |id| async move {
        sleep(Duration::from_millis(10)).await;
        id
    });
    let (mut out, report, _) = drain_and_join_at(results, handle, GUARD).await;
    out.sort_unstable();
    assert_eq!(out, [0, 1, 2, 3, 4]);
    assert_eq!(counts(&report), (5, 5, 0, 0, 0, 2, 0));
    assert_eq!(report.intake, IntakeEnd::InputPanicked);
    assert!(report.is_conserved(), "{report}");
}

// ===== zero sizes, named in the message =====

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
