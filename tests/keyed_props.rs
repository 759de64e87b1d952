//! Keyed pipelines under random keys, sizes, policies, fronts and stops
//! (property-based, paused time), and on a 2-thread runtime at speed: both
//! laws hold, every item ends once, at most one item of a key is in a
//! handler at a time, and a key's items start (and their results come out)
//! in arrival order. In some cases the key function panics for one key:
//! those items fail (taken from a stream) or come back (offered), and the
//! rest runs to its end.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use backpressure_pipeline::{FanOutConfig, FanOutExt, Report, ShedPolicy, feeder};
use futures::{StreamExt, stream};
use proptest::prelude::*;
use tokio::time::sleep;

use common::{GUARD, ms, paused_runtime, within};

/// The key whose key function panics, in the cases that ask for it.
const PANICKING_KEY: u8 = 5;

/// An item: its sequence number and its key.
type Item = (u32, u8);

/// What the handlers saw, checked as it happens.
#[derive(Default)]
struct Watch {
    /// Items of each key in a handler now.
    in_flight: BTreeMap<u8, u32>,
    /// The sequence numbers each key's items started with, in order.
    started: BTreeMap<u8, Vec<u32>>,
    /// Every item started, once.
    seen: BTreeSet<u32>,
    /// Violations, for the assertion after the run.
    violations: Vec<String>,
}

impl Watch {
    fn start(&mut self, (seq, key): Item) {
        let running = self.in_flight.entry(key).or_default();
        *running += 1;
        if *running > 1 {
            self.violations
                .push(format!("key {key}: two in flight at {seq}"));
        }
        let order = self.started.entry(key).or_default();
        if order.last().is_some_and(|last| *last >= seq) {
            self.violations
                .push(format!("key {key}: {seq} started after {order:?}"));
        }
        order.push(seq);
        if !self.seen.insert(seq) {
            self.violations.push(format!("{seq} started twice"));
        }
    }

    fn end(&mut self, (_, key): Item) {
        *self.in_flight.entry(key).or_default() -= 1;
    }
}

/// Runs `items` through a keyed pipeline; returns the report and the watch.
async fn run(case: Case) -> (Report, Watch) {
    let watch = Arc::new(Mutex::new(Watch::default()));
    let seen = Arc::clone(&watch);
    let work = case.work_ms.clone();
    let handler = move |item: Item| {
        let (watch, work) = (Arc::clone(&seen), work.clone());
        async move {
            watch.lock().unwrap().start(item);
            // Ends the run under `end` even if cut off.
            struct End(Arc<Mutex<Watch>>, Item);
            impl Drop for End {
                fn drop(&mut self) {
                    self.0.lock().unwrap().end(self.1);
                }
            }
            let _end = End(watch, item);
            sleep(ms(work[item.0 as usize % work.len()])).await;
            item
        }
    };
    let panics = case.panics;
    let mut config = FanOutConfig::new(case.workers, case.policy)
        .capacity(case.capacity)
        .key_by(move |item: &Item| {
            if panics && item.1 == PANICKING_KEY {
                common::planned_panic();
            }
            item.1
        });
    if let Some(per_key) = case.per_key {
        config = config.per_key_capacity(per_key);
    }
    let items: Vec<Item> = case
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| (i as u32, *k))
        .collect();
    let stop = case.stop;
    let (results, shutdown, producer) = if case.push {
        let (feeder, results, shutdown) = feeder(config, handler);
        let producer = tokio::spawn(async move {
            for (i, item) in items.into_iter().enumerate() {
                if i % 4 == 0 {
                    sleep(ms(1)).await;
                }
                let _ = feeder.send(item).await;
            }
        });
        (results, shutdown, Some(producer))
    } else {
        let input = stream::iter(items).then(|item| async move {
            if item.0 % 4 == 0 {
                sleep(ms(1)).await;
            }
            item
        });
        let (results, shutdown) = input.bounded_fan_out_with(config, handler);
        (results, shutdown, None)
    };
    let stopper = common::stop_later(shutdown.controller(), stop);
    let joined = within(GUARD, "join", shutdown.join_collect(results));
    let ((out, report), ()) = tokio::join!(joined, stopper);
    if let Some(producer) = producer {
        producer.await.expect("producer");
    }
    assert_eq!(out.len() as u64, report.delivered);
    // A key's results come out in its arrival order, as its items start.
    let mut last = std::collections::HashMap::new();
    for (seq, key) in &out {
        if let Some(before) = last.insert(*key, *seq) {
            assert!(before < *seq, "key {key}: result {seq} after {before}");
        }
    }
    let watch = Arc::try_unwrap(watch)
        .ok()
        .expect("the handler is dropped by join")
        .into_inner()
        .unwrap();
    (report, watch)
}

#[derive(Clone, Debug)]
struct Case {
    workers: usize,
    capacity: usize,
    per_key: Option<usize>,
    policy: ShedPolicy,
    keys: Vec<u8>,
    work_ms: Vec<u64>,
    push: bool,
    stop: Option<(bool, u64)>,
    /// The key function panics for `PANICKING_KEY`.
    panics: bool,
}

fn cases() -> impl Strategy<Value = Case> {
    (
        1..5usize,
        1..9usize,
        proptest::option::of(1..4usize),
        common::any_policy(),
        proptest::collection::vec(0..6u8, 0..40),
        proptest::collection::vec(0..4u64, 1..5),
        any::<bool>(),
        proptest::option::of((any::<bool>(), 0..30u64)),
        any::<bool>(),
    )
        .prop_map(
            |(workers, capacity, per_key, policy, keys, work_ms, push, stop, panics)| Case {
                workers,
                capacity,
                per_key,
                policy,
                keys,
                work_ms,
                push,
                stop,
                panics,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn keyed_pipelines_keep_the_laws_per_key_order_and_one_in_flight_per_key(case in cases()) {
        // (`run` also checks each key's results against its arrival order.)
        common::quiet_planned_panics();
        let runtime = paused_runtime();
        let (report, watch) = runtime.block_on(run(case.clone()));
        prop_assert!(report.is_conserved(), "{}", report);
        prop_assert!(watch.violations.is_empty(), "{:?}", watch.violations);
        // Every item started was taken; none started twice (checked above).
        prop_assert!(watch.seen.len() as u64 <= report.produced);
        if case.stop.is_none() {
            prop_assert_eq!(report.processed, watch.seen.len() as u64);
            // Every item of the panicking key fails (stream) or comes back
            // uncounted (offered); none starts.
            let unkeyed = if case.panics {
                case.keys.iter().filter(|k| **k == PANICKING_KEY).count() as u64
            } else {
                0
            };
            let (produced, failed) = if case.push {
                (case.keys.len() as u64 - unkeyed, 0)
            } else {
                (case.keys.len() as u64, unkeyed)
            };
            prop_assert_eq!((report.produced, report.failed), (produced, failed));
        }
        if case.policy == ShedPolicy::Backpressure {
            prop_assert_eq!(report.dropped, 0);
        }
    }
}

#[test]
fn on_two_threads_200_000_items_keep_per_key_order_and_one_in_flight_per_key() {
    // (The benchmark checks a million, in release mode.) At speed, with
    // four workers on two threads, a skewed key mix (one key
    // in two), a trivial handler and DropOldest shedding under overload:
    // zero violations, both laws.
    const N: u32 = 200_000;
    let runtime = common::multi_thread_runtime();
    let watch = Arc::new(Mutex::new(Watch::default()));
    let seen = Arc::clone(&watch);
    let report = runtime.block_on(async move {
        let config = FanOutConfig::new(4, ShedPolicy::DropOldest)
            .capacity(64)
            .key_by(|item: &Item| item.1);
        let input = stream::iter(0..N).map(|seq| {
            let key = if seq % 2 == 0 { 0 } else { (seq % 101) as u8 };
            (seq, key)
        });
        let (results, shutdown) = input.bounded_fan_out_with(config, move |item: Item| {
            let watch = Arc::clone(&seen);
            async move {
                watch.lock().unwrap().start(item);
                tokio::task::yield_now().await;
                watch.lock().unwrap().end(item);
                item
            }
        });
        let (_, report) = shutdown.join_collect(results).await;
        report
    });
    let watch = watch.lock().unwrap();
    assert!(report.is_conserved(), "{report}");
    assert_eq!(report.produced, u64::from(N));
    assert!(
        watch.violations.is_empty(),
        "{:?}",
        &watch.violations[..5.min(watch.violations.len())]
    );
    assert_eq!(watch.seen.len() as u64, report.processed);
}
