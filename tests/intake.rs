//! The intake pulls only what fits and yields to the workers it woke before
//! shedding: a burst into idle workers sheds only what can neither start
//! nor be queued (none at all in `FanOutConfig::capacity`'s documented
//! example), and one instant worker keeps up with a ready input through a
//! one-slot queue.
//!
//! Paused time, current-thread: every count and instant is exact.

use std::sync::{Arc, Mutex};

use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
use futures::stream;
use tokio::time::{Instant, sleep};

mod common;
use common::{drain, ms, sorted};

/// 64 idle workers, capacity 1, 128 ready items, 10 ms handlers, shedding
/// policies: one item per pull while there is room, a yield in turn after
/// each push that woke a worker, so all 64 start and one more is queued;
/// the other 63 meet a full queue with every worker busy.
#[tokio::test(start_paused = true)]
async fn a_burst_into_64_idle_workers_and_one_slot_sheds_only_what_cannot_fit() {
    for (policy, kept) in [
        (ShedPolicy::DropNewest, 64u32),
        (ShedPolicy::DropOldest, 127u32),
    ] {
        let start = Instant::now();
        let shed = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&shed);
        let config = FanOutConfig::new(64, policy)
            .capacity(1)
            .on_shed(move |x| log.lock().unwrap().push(x));
        let (results, handle) =
            stream::iter(0..128u32).bounded_fan_out_with(config, |x| async move {
                sleep(ms(10)).await;
                x
            });
        let (out, report, at) = drain(results, handle).await;
        let mut expected: Vec<u32> = (0..64).collect();
        expected.push(kept);
        assert_eq!(sorted(&out), expected, "{policy}");
        assert_eq!((report.processed, report.dropped), (65, 63), "{policy}");
        let mut shed = shed.lock().unwrap().clone();
        shed.sort_unstable();
        let expected_shed: Vec<u32> = (64..128).filter(|x| *x != kept).collect();
        assert_eq!(shed, expected_shed, "{policy}");
        assert_eq!(at - start, ms(20), "{policy}");
    }
}

/// The documented example of `FanOutConfig::capacity`: capacity 4, 4 idle
/// workers, 6 ready items: nothing is shed.
#[tokio::test(start_paused = true)]
async fn the_documented_burst_into_idle_workers_sheds_nothing() {
    for policy in [ShedPolicy::DropNewest, ShedPolicy::DropOldest] {
        let config = FanOutConfig::new(4, policy).capacity(4);
        let (results, handle) =
            stream::iter(0..6u32).bounded_fan_out_with(config, |x| async move {
                sleep(ms(10)).await;
                x
            });
        let (out, report, _) = drain(results, handle).await;
        assert_eq!(sorted(&out), [0, 1, 2, 3, 4, 5], "{policy}");
        assert_eq!((report.processed, report.dropped), (6, 0), "{policy}");
    }
}

/// One worker with an instant handler keeps up with a ready input on one
/// thread, capacity 1: each push wakes it and the intake yields behind it
/// before pulling again, so nothing is ever shed.
#[tokio::test(start_paused = true)]
async fn an_instant_worker_keeps_up_with_a_ready_input_through_one_slot() {
    for policy in [ShedPolicy::DropNewest, ShedPolicy::DropOldest] {
        let config = FanOutConfig::new(1, policy)
            .capacity(1)
            .output_capacity(20_000);
        let (results, handle) =
            stream::iter(0..10_000u32).bounded_fan_out_with(config, |x| async move { x });
        let (out, report, _) = drain(results, handle).await;
        assert_eq!(out, (0..10_000).collect::<Vec<_>>(), "{policy}");
        assert_eq!((report.processed, report.dropped), (10_000, 0), "{policy}");
    }
}
