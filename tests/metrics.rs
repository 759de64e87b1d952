//! The optional `metrics` feature, read back exactly from metrics-util's
//! debugging recorder after runs on paused time: every counter equals its
//! `Report` field, gauges and histograms hold what is exactly knowable.
//! Run with `cargo test --features metrics --test metrics`.
#![cfg(feature = "metrics")]

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use backpressure_pipeline::{
    FanOutConfig, FanOutExt, Offer, OverloadEvent, RejectReason, Report, ShedPolicy, feeder,
};
use common::{ms, paused_runtime};
use futures::StreamExt;
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::time::{Instant, sleep, sleep_until};

/// Label pairs, sorted.
type Labels = Vec<(String, String)>;

/// Every series of one snapshot: kind, name, labels, value.
struct Readings(Vec<(MetricKind, String, Labels, DebugValue)>);

impl Readings {
    fn take(snapshotter: &Snapshotter) -> Readings {
        let series = snapshotter.snapshot().into_vec();
        Readings(
            series
                .into_iter()
                .map(|(key, _, _, value)| {
                    let mut labels: Labels = key
                        .key()
                        .labels()
                        .map(|label| (label.key().to_owned(), label.value().to_owned()))
                        .collect();
                    labels.sort();
                    (key.kind(), key.key().name().to_owned(), labels, value)
                })
                .collect(),
        )
    }

    /// What a cumulative exporter shows after both snapshots (the debugging
    /// recorder's snapshot consumes: counters restart at 0, histograms
    /// empty): counters summed, `later`'s gauges, both histograms' samples.
    fn then(&self, later: &Readings) -> Readings {
        let series = later.0.iter().map(|(kind, name, labels, value)| {
            let earlier = self
                .0
                .iter()
                .find(|(k, n, l, _)| k == kind && n == name && l == labels)
                .map(|series| &series.3);
            let value = match (value, earlier) {
                (DebugValue::Counter(n), Some(DebugValue::Counter(before))) => {
                    DebugValue::Counter(n + before)
                }
                (DebugValue::Counter(n), _) => DebugValue::Counter(*n),
                (DebugValue::Gauge(x), _) => DebugValue::Gauge(*x),
                (DebugValue::Histogram(xs), earlier) => {
                    let mut all = xs.clone();
                    if let Some(DebugValue::Histogram(before)) = earlier {
                        all.extend(before);
                    }
                    DebugValue::Histogram(all)
                }
            };
            (*kind, name.clone(), labels.clone(), value)
        });
        Readings(series.collect())
    }

    /// The one series of `kind` named `backpressure_pipeline_{name}` with
    /// exactly these labels.
    fn get(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> &DebugValue {
        let name = format!("backpressure_pipeline_{name}");
        let mut wanted: Labels = labels
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        wanted.sort();
        let found: Vec<_> = self
            .0
            .iter()
            .filter(|(k, n, l, _)| *k == kind && *n == name && *l == wanted)
            .collect();
        assert_eq!(found.len(), 1, "{kind:?} {name} {wanted:?}");
        &found[0].3
    }

    fn counter(&self, pipeline: &str, name: &str) -> u64 {
        self.counter_with(pipeline, name, &[])
    }

    fn counter_with(&self, pipeline: &str, name: &str, more: &[(&str, &str)]) -> u64 {
        let labels = [&[("pipeline", pipeline)], more].concat();
        match self.get(MetricKind::Counter, name, &labels) {
            DebugValue::Counter(value) => *value,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn gauge(&self, pipeline: &str, name: &str) -> f64 {
        match self.get(MetricKind::Gauge, name, &[("pipeline", pipeline)]) {
            DebugValue::Gauge(value) => value.into_inner(),
            other => panic!("{name}: {other:?}"),
        }
    }

    /// The samples recorded since the last snapshot, sorted, in seconds.
    fn histogram(&self, pipeline: &str, name: &str, more: &[(&str, &str)]) -> Vec<f64> {
        let labels = [&[("pipeline", pipeline)], more].concat();
        match self.get(MetricKind::Histogram, name, &labels) {
            DebugValue::Histogram(values) => {
                let mut values: Vec<f64> = values.iter().map(|v| v.into_inner()).collect();
                values.sort_by(f64::total_cmp);
                values
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    /// Every counter of both laws equals its `Report` field.
    fn assert_counters_match(&self, pipeline: &str, report: &Report, reason: &str) {
        let fields = [
            ("produced_total", report.produced),
            ("processed_total", report.processed),
            ("delivered_total", report.delivered),
            ("discarded_total", report.discarded),
            ("failed_total", report.failed),
            ("timed_out_total", report.timed_out),
            ("expired_total", report.expired),
            ("cancelled_total", report.cancelled),
            ("errored_total", report.errored),
        ];
        for (name, field) in fields {
            assert_eq!(self.counter(pipeline, name), field, "{name}: {report:?}");
        }
        let dropped = self.counter_with(pipeline, "dropped_total", &[("reason", reason)]);
        assert_eq!(dropped, report.dropped, "dropped_total: {report:?}");
    }

    /// A finished pipeline's gauges: nothing queued, in flight or waiting.
    fn assert_finished_gauges(&self, pipeline: &str, capacity: usize) {
        for name in [
            "queue_depth",
            "in_flight",
            "results_waiting",
            "workers_alive",
            "oldest_queued_age_seconds",
            "keys_tracked",
        ] {
            assert_eq!(self.gauge(pipeline, name), 0.0, "{name}");
        }
        assert_eq!(self.gauge(pipeline, "queue_capacity"), capacity as f64);
    }
}

/// Runs `test` on a paused current-thread runtime with a debugging recorder
/// local to this thread (tests in one binary share no global recorder).
fn with_recorder<F: Future>(test: impl FnOnce(Snapshotter) -> F) -> F::Output {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = paused_runtime();
    metrics::with_local_recorder(&recorder, || runtime.block_on(test(snapshotter)))
}

fn secs(millis: &[u64]) -> Vec<f64> {
    millis.iter().map(|&n| ms(n).as_secs_f64()).collect()
}

/// What the handler of the mixed run does with an item.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Job {
    /// Sleeps this long and returns `Ok`.
    Work(u64),
    /// Sleeps this long and returns `Err`.
    Fail(u64),
    /// Panics at its first poll.
    Panic,
    /// Never finishes (cut off by the handler timeout).
    Hang,
}

async fn job(job: Job) -> Result<(), ()> {
    match job {
        Job::Work(n) => sleep(ms(n)).await,
        Job::Fail(n) => {
            sleep(ms(n)).await;
            return Err(());
        }
        Job::Panic => panic!("the handler panics (on purpose)"),
        Job::Hang => std::future::pending().await,
    }
    Ok(())
}

/// Every outcome at least once, on the push front: every counter equals
/// its `Report` field, and each histogram sample is the exact paused-time
/// duration.
#[test]
fn every_counter_equals_its_report_field_after_a_run_with_every_outcome() {
    let episodes = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&episodes);
    let (report, readings) = with_recorder(|snapshotter| async move {
        let start = Instant::now();
        // One worker, 8 slots: the first 8 offers queue at t = 0, 2 are shed.
        let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
            .capacity(8)
            .name("mixed")
            .fallible()
            .handler_timeout(ms(500))
            .max_queue_age(ms(950))
            .on_overload(move |event| {
                if event == OverloadEvent::Started {
                    seen.fetch_add(1, SeqCst);
                }
            });
        let (feeder, mut results, shutdown) = feeder(config, job);
        use Job::*;
        // The worker runs them at 0-0.1, 0.1-0.2, 0.2 (panics), 0.2-0.7
        // (times out), then 0.7, 0.8, 0.9; the eighth has waited 1.0 s > 0.95
        // when it is taken: expired.
        let first = [
            Work(100),
            Fail(100),
            Panic,
            Hang,
            Work(100),
            Work(100),
            Work(100),
            Work(100),
        ];
        for item in first {
            assert_eq!(feeder.offer(item), Offer::Queued);
        }
        for _ in 0..2 {
            assert!(matches!(feeder.offer(Work(100)), Offer::Shed(_)));
        }
        assert_eq!(results.next().await, Some(Ok(())));
        assert_eq!(results.next().await, Some(Err(())));
        // At 1.05 s the queue is empty: three long items, one taken at once
        // and cut off by the abort at 1.5 s, two abandoned in the queue.
        sleep_until(start + ms(1050)).await;
        for _ in 0..3 {
            assert_eq!(feeder.offer(Work(1000)), Offer::Queued);
        }
        sleep_until(start + ms(1500)).await;
        shutdown.abort();
        drop(results);
        let report = shutdown.join().await;
        (report, Readings::take(&snapshotter))
    });
    // produced, processed (errored), dropped, failed, timed out, expired,
    // cancelled; delivered, discarded.
    let outcomes = [
        report.produced,
        report.processed,
        report.errored,
        report.dropped,
    ];
    let others = [
        report.failed,
        report.timed_out,
        report.expired,
        report.cancelled,
    ];
    assert_eq!((outcomes, others), ([13, 5, 1, 2], [1, 1, 1, 3]));
    assert_eq!((report.delivered, report.discarded), (2, 3));
    assert!(report.is_conserved());
    readings.assert_counters_match("mixed", &report, "newest");
    assert_eq!(episodes.load(SeqCst), 1);
    assert_eq!(readings.counter("mixed", "overload_episodes_total"), 1);
    readings.assert_finished_gauges("mixed", 8);
    // Started items only: the expired one and the two abandoned never were.
    assert_eq!(
        readings.histogram("mixed", "queue_wait_seconds", &[]),
        secs(&[0, 0, 100, 200, 200, 700, 800, 900])
    );
    let handler =
        |outcome| readings.histogram("mixed", "handler_duration_seconds", &[("outcome", outcome)]);
    assert_eq!(handler("processed"), secs(&[100; 5]));
    assert_eq!(handler("failed"), secs(&[0]));
    assert_eq!(handler("timed_out"), secs(&[500]));
    assert_eq!(handler("cancelled"), secs(&[450]));
}

/// The gauges at a flush mid-run (every second from the start), then at
/// the end; histograms hold one sample per started item.
#[test]
fn gauges_show_the_pipeline_at_each_flush() {
    with_recorder(|snapshotter| async move {
        let start = Instant::now();
        let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
            .capacity(16)
            .name(String::from("gauges"));
        let (feeder, results, shutdown) = feeder(config, |n: u64| async move {
            sleep(ms(300)).await;
            n
        });
        for n in 0..10 {
            assert_eq!(feeder.offer(n), Offer::Queued);
        }
        drop(feeder);
        // Flushed at 1.0 s: items 0-2 done (unread), item 3 in flight since
        // 0.9 s, 6 queued since 0.
        sleep_until(start + ms(1050)).await;
        let mid = Readings::take(&snapshotter);
        assert_eq!(mid.counter("gauges", "produced_total"), 10);
        assert_eq!(mid.counter("gauges", "processed_total"), 3);
        assert_eq!(mid.counter("gauges", "delivered_total"), 0);
        assert_eq!(mid.gauge("gauges", "queue_depth"), 6.0);
        assert_eq!(mid.gauge("gauges", "in_flight"), 1.0);
        assert_eq!(mid.gauge("gauges", "results_waiting"), 3.0);
        assert_eq!(mid.gauge("gauges", "workers_alive"), 1.0);
        assert_eq!(mid.gauge("gauges", "oldest_queued_age_seconds"), 1.0);
        assert_eq!(mid.gauge("gauges", "queue_capacity"), 16.0);
        assert_eq!(
            mid.histogram("gauges", "queue_wait_seconds", &[]),
            secs(&[0, 300, 600, 900])
        );
        let processed = [("outcome", "processed")];
        assert_eq!(
            mid.histogram("gauges", "handler_duration_seconds", &processed),
            secs(&[300; 3])
        );
        // The stats say the same, read now (1.05 s).
        let stats = shutdown.stats();
        assert_eq!(stats.oldest_queued_age, Some(ms(1050)));

        let (out, report) = shutdown.join_collect(results).await;
        assert_eq!(out, (0..10).collect::<Vec<_>>());
        let end = Readings::take(&snapshotter);
        let all = mid.then(&end);
        all.assert_counters_match("gauges", &report, "newest");
        all.assert_finished_gauges("gauges", 16);
        let started = all.histogram("gauges", "queue_wait_seconds", &[]);
        assert_eq!(started.len() as u64, report.processed);
        // The samples since the mid-run snapshot: items 4-9 waited, 3-9 ran.
        assert_eq!(
            end.histogram("gauges", "queue_wait_seconds", &[]),
            secs(&[1200, 1500, 1800, 2100, 2400, 2700])
        );
        let ran = end.histogram("gauges", "handler_duration_seconds", &processed);
        assert_eq!(ran, secs(&[300; 7]));
        assert_eq!(3 + ran.len() as u64, report.processed);
    });
}

/// The stream front, shedding the oldest, unnamed: the default name, the
/// `reason` label, and one sample per processed item.
#[test]
fn stream_front_counts_dropped_oldest_under_the_default_name() {
    with_recorder(|snapshotter| async move {
        let config = FanOutConfig::new(2, ShedPolicy::DropOldest).capacity(2);
        let (results, shutdown) =
            futures::stream::iter(0..50u32).bounded_fan_out_with(config, |x| async move {
                sleep(ms(10)).await;
                x
            });
        let (_, report) = shutdown.join_collect(results).await;
        assert!(report.dropped > 0, "{report:?}");
        let readings = Readings::take(&snapshotter);
        let name = FanOutConfig::<u32>::DEFAULT_NAME;
        readings.assert_counters_match(name, &report, "oldest");
        readings.assert_finished_gauges(name, 2);
        let waits = readings.histogram(name, "queue_wait_seconds", &[]);
        let processed = [("outcome", "processed")];
        let ran = readings.histogram(name, "handler_duration_seconds", &processed);
        assert_eq!(waits.len() as u64, report.processed);
        assert_eq!(
            ran,
            vec![Duration::from_millis(10).as_secs_f64(); ran.len()]
        );
        assert_eq!(ran.len() as u64, report.processed);
    });
}

/// A keyed pipeline's keys at a flush mid-run, then none at the end;
/// within-key evictions count under `reason="oldest"`, its policy's label.
#[test]
fn a_keyed_pipeline_exports_the_keys_tracked() {
    with_recorder(|snapshotter| async move {
        let start = Instant::now();
        let config = FanOutConfig::new(1, ShedPolicy::DropOldest)
            .key_by(|n: &u64| n % 3)
            .per_key_capacity(2)
            .name("keyed");
        let (feeder, results, shutdown) = feeder(config, |n: u64| async move {
            sleep(ms(300)).await;
            n
        });
        // Keys 0, 1, 2, 0, 1, 2, 0, before the worker starts: 6 supersedes
        // 0, key 0's oldest.
        for n in 0..6 {
            assert_eq!(feeder.offer(n), Offer::Queued);
        }
        assert_eq!(feeder.offer(6), Offer::Evicted(0));
        drop(feeder);
        // At 1.0 s: items 3, 1, 2 done in turn (keys 0, 1, 2), 6 (key 0)
        // in flight since 0.9 s, 4 and 5 queued: three keys tracked.
        sleep_until(start + ms(1050)).await;
        let mid = Readings::take(&snapshotter);
        assert_eq!(mid.gauge("keyed", "keys_tracked"), 3.0);
        assert_eq!(mid.gauge("keyed", "queue_depth"), 2.0);
        assert_eq!(mid.gauge("keyed", "in_flight"), 1.0);
        let (out, report) = shutdown.join_collect(results).await;
        assert_eq!(out, [3, 1, 2, 6, 4, 5]);
        let all = mid.then(&Readings::take(&snapshotter));
        all.assert_counters_match("keyed", &report, "oldest");
        assert_eq!(report.dropped, 1);
        all.assert_finished_gauges("keyed", FanOutConfig::<u64>::DEFAULT_CAPACITY);
    });
}

/// The call front exports under its pipeline's name: answers delivered, a
/// shed call dropped, a withdrawn call cancelled.
#[test]
fn a_call_front_exports_under_its_name() {
    with_recorder(|snapshotter| async move {
        let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
            .capacity(2)
            .name("calls");
        let (caller, shutdown) = backpressure_pipeline::caller(config, |n: u64| async move {
            sleep(ms(10)).await;
            n
        });
        // Offered before the worker runs: 0 and 1 fill the queue, 2 is shed;
        // then 3 is withdrawn from the queue while 4 runs.
        let (a, b, c) = tokio::join!(caller.call(0), caller.call(1), caller.call(2));
        assert_eq!(
            (a.ok(), b.ok(), c.map_err(|r| r.reason())),
            (Some(0), Some(1), Err(RejectReason::Shed))
        );
        let running = tokio::spawn(caller.call(4));
        sleep(ms(1)).await; // 4 runs
        let withdrawn = tokio::time::timeout(ms(1), caller.call(3)).await;
        assert!(withdrawn.is_err(), "gave up while queued");
        assert_eq!(running.await.unwrap().ok(), Some(4));
        drop(caller);
        let report = shutdown.join().await;
        assert_eq!(
            (
                report.produced,
                report.delivered,
                report.dropped,
                report.withdrawn
            ),
            (5, 3, 1, 1)
        );
        let readings = Readings::take(&snapshotter);
        readings.assert_counters_match("calls", &report, "newest");
        readings.assert_finished_gauges("calls", 2);
    });
}

/// A call whose caller walks away while its handler runs is counted
/// `cancelled` (and `withdrawn`): its run goes to the `cancelled` outcome of
/// the handler histogram (a fresh-user trial found it recorded nowhere).
#[test]
fn a_run_its_caller_walked_away_from_is_recorded_as_cancelled() {
    with_recorder(|snapshotter| async move {
        let config = FanOutConfig::new(1, ShedPolicy::DropNewest).name("walked");
        let (caller, shutdown) = backpressure_pipeline::caller(config, |n: u64| async move {
            sleep(ms(n)).await;
            n
        });
        assert_eq!(caller.call(10).await.ok(), Some(10));
        let gave_up = tokio::time::timeout(ms(5), caller.call(30)).await;
        assert!(gave_up.is_err(), "gave up while running");
        drop(caller);
        let report = shutdown.join().await;
        assert_eq!(
            (
                report.produced,
                report.processed,
                report.cancelled,
                report.withdrawn
            ),
            (2, 1, 1, 1)
        );
        let readings = Readings::take(&snapshotter);
        readings.assert_counters_match("walked", &report, "newest");
        let run = |outcome| {
            readings.histogram(
                "walked",
                "handler_duration_seconds",
                &[("outcome", outcome)],
            )
        };
        assert_eq!(
            (run("processed"), run("cancelled")),
            (secs(&[10]), secs(&[5]))
        );
    });
}

/// Counters are flushed as deltas: two pipelines under one name add up
/// instead of overwriting each other.
#[test]
fn two_pipelines_of_one_name_add_up() {
    with_recorder(|snapshotter| async move {
        let mut reports = Vec::new();
        for n in [3u32, 4] {
            let config = FanOutConfig::new(1, ShedPolicy::Backpressure).name("twice");
            let (results, shutdown) =
                futures::stream::iter(0..n).bounded_fan_out_with(config, |x| async move { x });
            reports.push(shutdown.join_collect(results).await.1);
        }
        let readings = Readings::take(&snapshotter);
        assert_eq!(readings.counter("twice", "produced_total"), 7);
        assert_eq!(readings.counter("twice", "delivered_total"), 7);
        let sum = reports[0].processed + reports[1].processed;
        assert_eq!(readings.counter("twice", "processed_total"), sum);
    });
}
