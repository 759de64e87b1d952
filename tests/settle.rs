//! Settlement, input hand-back and the maximum queue age: every item's
//! outcome reaches the caller exactly once and agrees with the report, item
//! for item.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{
    Controller, FanOutConfig, FanOutExt, IntakeEnd, Outcome, Report, Settlement, ShedPolicy,
    ShedReason, Stage,
};
use common::{GUARD, ms, within};
use futures::{StreamExt, stream};
use proptest::prelude::*;
use tokio::time::{Instant, sleep};

/// Runs to the end with the three streams drained together.
async fn finish<S, T, K>(
    settled: common::Settled<S, T, K>,
) -> (Vec<T>, Vec<Settlement<K>>, Report) {
    let common::Settled {
        results,
        settlements,
        shutdown,
        ..
    } = settled;
    within(GUARD, "drain", async {
        tokio::join!(
            results.collect::<Vec<_>>(),
            settlements.collect::<Vec<_>>(),
            shutdown.join()
        )
    })
    .await
}

fn by_key<K: Ord + Copy>(records: &[Settlement<K>]) -> BTreeMap<K, Outcome> {
    let map: BTreeMap<K, Outcome> = records.iter().map(|r| (r.key, r.outcome)).collect();
    assert_eq!(map.len(), records.len(), "a key was settled twice");
    map
}

/// How many records have each outcome, in the report's terms:
/// (processed, dropped, failed, timed_out, expired, cancelled).
fn tally<K>(records: &[Settlement<K>]) -> (u64, u64, u64, u64, u64, u64) {
    let mut t = (0, 0, 0, 0, 0, 0);
    for r in records {
        match r.outcome {
            Outcome::Processed => t.0 += 1,
            Outcome::Shed(_) => t.1 += 1,
            Outcome::Failed => t.2 += 1,
            Outcome::TimedOut => t.3 += 1,
            Outcome::Expired => t.4 += 1,
            Outcome::Cancelled(_) => t.5 += 1,
            _ => panic!("an outcome this test does not know"),
        }
    }
    t
}

fn report_tally(r: &Report) -> (u64, u64, u64, u64, u64, u64) {
    (
        r.processed,
        r.dropped,
        r.failed,
        r.timed_out,
        r.expired,
        r.cancelled,
    )
}

#[tokio::test(start_paused = true)]
async fn every_outcome_is_settled_once_under_its_own_name() {
    common::quiet_planned_panics();
    // One worker, room for 3, handler timeout 150 ms. A burst of 8: 0, 1, 2
    // fill the queue, the worker takes 0, 3 takes its slot, and 4..8 meet
    // a full queue and are shed. Then 0 is handled (t 0–100), 1 panics
    // (t 100), 2 runs from t 100 and is cut at t 250, 3 runs to t 350.
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(3)
        .handler_timeout(ms(150));
    let start = Instant::now();
    let settled = common::settled(
        stream::iter(0..8u64),
        config,
        |id| *id,
        |id| async move {
            match id {
                1 => common::planned_panic(),
                2 => sleep(ms(200)).await,
                _ => sleep(ms(100)).await,
            }
            id
        },
    );
    let (out, records, report) = finish(settled).await;
    assert_eq!(start.elapsed(), ms(350));
    use Outcome::*;
    let shed = Shed(ShedReason::Newest);
    let expected: BTreeMap<u64, Outcome> = [
        (0, Processed),
        (1, Failed),
        (2, TimedOut),
        (3, Processed),
        (4, shed),
        (5, shed),
        (6, shed),
        (7, shed),
    ]
    .into();
    assert_eq!(by_key(&records), expected);
    assert_eq!(out, [0, 3]);
    assert_eq!(tally(&records), report_tally(&report));
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn expired_items_are_shed_before_a_worker_starts_them() {
    // One worker, 100 ms each, 6 queued at once, max age 250 ms: 0 starts at
    // once, 1 after 100 ms, 2 after 200; 3 would start after 300: expired,
    // and so are 4 and 5, all at t = 300 ms.
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(8)
        .max_queue_age(ms(250));
    let start = Instant::now();
    let settled = common::settled(
        stream::iter(0..6u64),
        config,
        |id| *id,
        |id| async move {
            sleep(ms(100)).await;
            id
        },
    );
    let (out, records, report) = finish(settled).await;
    assert_eq!(out, [0, 1, 2]);
    assert_eq!(start.elapsed(), ms(300));
    let expired: Vec<u64> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Expired)
        .map(|r| r.key)
        .collect();
    assert_eq!(expired, [3, 4, 5]);
    assert_eq!((report.processed, report.expired), (3, 3));
    assert!(report.is_conserved(), "{report}");
    assert!(report.to_string().contains(", expired 3;"), "{report}");
}

#[tokio::test(start_paused = true)]
async fn drop_oldest_settles_evicted_items_with_their_reason() {
    let config = FanOutConfig::new(1, ShedPolicy::DropOldest).capacity(2);
    let settled = common::settled(
        stream::iter(0..5u64),
        config,
        |id| *id,
        |id| async move {
            sleep(ms(10)).await;
            id
        },
    );
    let (out, records, _) = finish(settled).await;
    // The burst: the worker takes 0, the newest two stay queued, 1 and 2
    // are evicted.
    assert_eq!(out, [0, 3, 4]);
    let evicted: Vec<u64> = records
        .iter()
        .filter(|r| r.outcome == Outcome::Shed(ShedReason::Oldest))
        .map(|r| r.key)
        .collect();
    assert_eq!(evicted, [1, 2]);
}

#[tokio::test(start_paused = true)]
async fn abort_settles_queued_and_in_flight_items_as_cancelled() {
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(4);
    // 6 ready items, then an input that stays pending.
    let input = stream::iter(0..6u64).chain(stream::pending());
    let common::Settled {
        results,
        settlements,
        shutdown,
        input,
        ..
    } = common::settled(input, config, |id| *id, |_| std::future::pending::<u64>());
    sleep(ms(1)).await;
    shutdown.abort();
    let (out, records, report) = within(GUARD, "drain", async {
        tokio::join!(
            results.collect::<Vec<_>>(),
            settlements.collect::<Vec<_>>(),
            shutdown.join()
        )
    })
    .await;
    assert!(out.is_empty());
    // The burst of 6: 0..4 fill the queue, the workers take 0 and 1, and 4
    // and 5 take the freed slots; nothing met a full queue.
    use Outcome::Cancelled;
    let expected: BTreeMap<u64, Outcome> = [
        (0, Cancelled(Stage::InFlight)),
        (1, Cancelled(Stage::InFlight)),
        (2, Cancelled(Stage::Queued)),
        (3, Cancelled(Stage::Queued)),
        (4, Cancelled(Stage::Queued)),
        (5, Cancelled(Stage::Queued)),
    ]
    .into();
    assert_eq!(by_key(&records), expected);
    assert_eq!(tally(&records), report_tally(&report));
    // Stopped, not exhausted: the input comes back.
    assert!(input.await.is_some());
}

#[tokio::test(start_paused = true)]
async fn after_a_shutdown_the_unpulled_input_comes_back() {
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(2);
    // Backpressure: intake pulls only what fits (2 queued + 1 in flight).
    let common::Settled {
        results,
        settlements,
        shutdown,
        input,
        ..
    } = common::settled(
        stream::iter(0..10u64),
        config,
        |id| *id,
        |id| async move {
            sleep(ms(10)).await;
            id
        },
    );
    sleep(ms(1)).await;
    assert_eq!(shutdown.stats().produced, 3);
    shutdown.shutdown();
    let (out, records, report) = within(GUARD, "drain", async {
        tokio::join!(
            results.collect::<Vec<_>>(),
            settlements.collect::<Vec<_>>(),
            shutdown.join()
        )
    })
    .await;
    assert_eq!(out, [0, 1, 2]);
    assert_eq!(records.len(), 3);
    assert_eq!(report.intake, IntakeEnd::Stopped);
    let rest: Vec<u64> = input.await.expect("handed back").collect().await;
    assert_eq!(rest, (3..10).collect::<Vec<_>>(), "nothing pulled was lost");
}

#[tokio::test(start_paused = true)]
async fn an_unread_settlement_stream_throttles_intake_at_its_capacity() {
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(64)
        .settle_capacity(5);
    let common::Settled {
        results,
        mut settlements,
        shutdown,
        input,
        ..
    } = common::settled(
        stream::iter(0..100u64),
        config,
        |id| *id,
        |id| async move { id },
    );
    sleep(ms(1)).await;
    // Five credits: five items pulled, processed, their records unread.
    let stats = shutdown.stats();
    assert_eq!((stats.produced, stats.processed, stats.dropped), (5, 5, 0));
    // Reading two records lets two more in.
    for _ in 0..2 {
        settlements.next().await.expect("a record");
    }
    sleep(ms(1)).await;
    assert_eq!(shutdown.stats().produced, 7);
    drop(input);
    let (out, rest, report) = within(GUARD, "drain", async {
        tokio::join!(
            results.collect::<Vec<_>>(),
            settlements.collect::<Vec<_>>(),
            shutdown.join()
        )
    })
    .await;
    assert_eq!(out.len(), 100);
    assert_eq!(rest.len(), 98);
    assert_eq!((report.produced, report.dropped), (100, 0));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_key_function_leaves_that_item_unsettled_unstarted_and_failed() {
    common::quiet_planned_panics();
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(8);
    let settled = common::settled(
        stream::iter(0..5u64),
        config,
        |id| {
            if *id == 2 {
                common::planned_panic();
            }
            *id
        },
        |id| async move { id },
    );
    let (out, records, report) = finish(settled).await;
    // No record can exist without a key, and a broker would redeliver an
    // item it never heard of: item 2 is never handed to the handler.
    assert_eq!(out, [0, 1, 3, 4], "the unkeyed item is not handled");
    let keys: Vec<u64> = records.iter().map(|r| r.key).collect();
    assert_eq!(keys, [0, 1, 3, 4]);
    assert!(records.iter().all(|r| r.outcome == Outcome::Processed));
    assert_eq!(
        (report.produced, report.processed, report.failed),
        (5, 4, 1)
    );
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_settlement_stream_stops_settlement_not_the_pipeline() {
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(64)
        .settle_capacity(2);
    let common::Settled {
        results,
        settlements,
        shutdown,
        ..
    } = common::settled(
        stream::iter(0..50u64),
        config,
        |id| *id,
        |id| async move { id },
    );
    drop(settlements);
    let (out, report) = within(GUARD, "drain", async {
        tokio::join!(results.collect::<Vec<_>>(), shutdown.join())
    })
    .await;
    assert_eq!(out.len(), 50, "credits no longer limit intake");
    assert_eq!(report.produced, 50);
}

/// A settlement key whose `Drop` panics.
struct LoudKey(#[allow(dead_code)] u64);

impl Drop for LoudKey {
    fn drop(&mut self) {
        panic!("the key's drop panics (on purpose)");
    }
}

/// Once `Settlements` is dropped, records are dropped where they are made:
/// a key whose `Drop` panics is dropped quietly, and the pipeline carries
/// on (a fresh-user trial found each such drop killing a worker: the
/// report then showed workers cut off, items cancelled and intake stopped).
#[tokio::test(start_paused = true)]
async fn records_dropped_after_the_settlements_go_drop_their_keys_quietly() {
    let (config, settlements) =
        FanOutConfig::new(2, ShedPolicy::Backpressure).settle_by(|x: &u64| LoudKey(*x));
    drop(settlements);
    let (results, shutdown) = stream::iter(0..6u64).bounded_fan_out_with(config, |x| async move {
        sleep(ms(1)).await;
        x
    });
    let (mut out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
    out.sort_unstable();
    assert_eq!(out, [0, 1, 2, 3, 4, 5]);
    assert_eq!(
        (
            report.processed,
            report.cancelled,
            report.workers_joined,
            report.aborted
        ),
        (6, 0, 2, 0)
    );
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert!(report.is_conserved(), "{report}");
}

/// A settlement key function that calls `abort()`: the worker takes the
/// key before its last check, so the item whose key function aborted is
/// not started, and settles `Cancelled(Queued)` under the key already
/// taken (a fresh-user trial found its handler called after `abort()` had
/// returned, on a current-thread runtime).
#[tokio::test(start_paused = true)]
async fn a_settlement_key_function_that_aborts_stops_its_own_item() {
    let controller = Arc::new(std::sync::OnceLock::<Controller>::new());
    let (keys_seen, started) = (
        Arc::new(Mutex::new(Vec::new())),
        Arc::new(Mutex::new(Vec::new())),
    );
    let (stopper, seen) = (Arc::clone(&controller), Arc::clone(&keys_seen));
    let (config, settlements) =
        FanOutConfig::new(1, ShedPolicy::DropNewest).settle_by(move |x: &u32| {
            seen.lock().unwrap().push(*x);
            if *x == 2 {
                stopper.get().expect("controller").abort();
            }
            *x
        });
    let log = Arc::clone(&started);
    let (results, shutdown) = stream::iter(0..5u32).bounded_fan_out_with(config, move |x| {
        log.lock().unwrap().push(x);
        async move {
            sleep(ms(1)).await;
            x
        }
    });
    controller
        .set(shutdown.controller())
        .map_err(|_| ())
        .expect("set once");
    let (out, records, report) = within(GUARD, "join", async {
        tokio::join!(
            results.collect::<Vec<_>>(),
            settlements.collect::<Vec<_>>(),
            shutdown.join()
        )
    })
    .await;
    assert_eq!(*started.lock().unwrap(), [0, 1], "item 2 was not started");
    assert_eq!(*keys_seen.lock().unwrap(), [0, 1, 2, 3, 4], "one key each");
    let mut outcomes: Vec<(u32, Outcome)> = records.iter().map(|r| (r.key, r.outcome)).collect();
    outcomes.sort_by_key(|(key, _)| *key);
    let cancelled = Outcome::Cancelled(Stage::Queued);
    assert_eq!(
        outcomes,
        [
            (0, Outcome::Processed),
            (1, Outcome::Processed),
            (2, cancelled),
            (3, cancelled),
            (4, cancelled)
        ]
    );
    // Item 1's result was still in hand at the abort: discarded.
    assert_eq!(out, [0]);
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.delivered,
            report.discarded,
            report.cancelled
        ),
        (5, 2, 1, 1, 3)
    );
    assert!(report.is_conserved(), "{report}");
}

// ===== property: settlements and the report agree item for item =====

#[derive(Debug, Clone)]
struct Case {
    multi_thread: bool,
    workers: usize,
    capacity: usize,
    policy: ShedPolicy,
    items: u64,
    /// Per-item handler time in ms (0: instant); ids divisible by 7 panic.
    work_ms: u64,
    panics: bool,
    timeout_ms: Option<u64>,
    max_age_ms: Option<u64>,
    /// Stop after this many ms: (abort?, when).
    stop: Option<(bool, u64)>,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        1usize..4,
        1usize..6,
        common::any_policy(),
        0u64..60,
        0u64..4,
        any::<bool>(),
        proptest::option::of(1u64..4),
        proptest::option::of(1u64..6),
        proptest::option::of((any::<bool>(), 0u64..8)),
    )
        .prop_map(
            |(
                multi_thread,
                workers,
                capacity,
                policy,
                items,
                work_ms,
                panics,
                timeout_ms,
                max_age_ms,
                stop,
            )| Case {
                multi_thread,
                workers,
                capacity,
                policy,
                items,
                work_ms,
                panics,
                timeout_ms,
                max_age_ms,
                stop,
            },
        )
}

async fn run_case(case: Case) -> Result<(), TestCaseError> {
    let mut config = FanOutConfig::new(case.workers, case.policy).capacity(case.capacity);
    if let Some(t) = case.timeout_ms {
        config = config.handler_timeout(ms(t));
    }
    if let Some(a) = case.max_age_ms {
        config = config.max_queue_age(ms(a));
    }
    let (work, panics) = (case.work_ms, case.panics);
    let input = stream::iter(0..case.items).then(|id| async move {
        if id % 5 == 4 {
            tokio::task::yield_now().await;
        }
        id
    });
    let common::Settled {
        results,
        settlements,
        shutdown,
        ..
    } = common::settled(
        input,
        config,
        |id| *id,
        move |id| async move {
            if panics && id % 7 == 3 {
                common::planned_panic();
            }
            if work > 0 {
                sleep(ms(work * (1 + id % 3))).await;
            }
            id
        },
    );
    let stop = common::stop_later(shutdown.controller(), case.stop);
    let limit = Duration::from_secs(if case.multi_thread { 30 } else { 3600 });
    let ((out, records), report) = tokio::time::timeout(limit, async {
        let drain =
            async { tokio::join!(results.collect::<Vec<_>>(), settlements.collect::<Vec<_>>()) };
        let ((drained, ()), report) =
            tokio::join!(async { tokio::join!(drain, stop) }, shutdown.join());
        (drained, report)
    })
    .await
    .map_err(|_| TestCaseError::fail("did not finish"))?;
    prop_assert!(report.is_conserved(), "{}", report);
    let got: BTreeMap<u64, Outcome> = records.iter().map(|r| (r.key, r.outcome)).collect();
    prop_assert_eq!(got.len(), records.len(), "a key settled twice");
    prop_assert_eq!(records.len() as u64, report.produced, "an item unsettled");
    prop_assert!(got.keys().all(|id| *id < case.items));
    prop_assert_eq!(tally(&records), report_tally(&report));
    // Every delivered result is an item settled `Processed`.
    for id in &out {
        prop_assert_eq!(got.get(id), Some(&Outcome::Processed));
    }
    prop_assert_eq!(out.len() as u64, report.delivered);
    if case.policy == ShedPolicy::Backpressure {
        prop_assert_eq!(report.dropped, 0);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    #[test]
    fn settlements_agree_with_the_report_item_for_item(case in cases()) {
        common::quiet_planned_panics();
        let runtime = if case.multi_thread {
            common::multi_thread_runtime()
        } else {
            common::paused_runtime()
        };
        runtime.block_on(run_case(case))?;
    }
}
