//! The optional `metrics` feature: the books, the queue and the workers'
//! timings exported through the [`metrics`](https://docs.rs/metrics)
//! facade, to whatever exporter the application installed (Prometheus,
//! StatsD, OpenTelemetry, ...). With the feature off every type here is
//! zero-sized and every function compiles to nothing.
//!
//! # Counters and gauges: flushed from the books, not emitted per event
//!
//! The books already count every term of both laws, each counter written by
//! one task only so that no two tasks share a cache line per item (see
//! `books`). Emitting each event to the recorder as well would add, per
//! item, an atomic read-modify-write on the recorder's counter, one cell
//! shared by the intake and every worker: the contention the books were
//! built to avoid, and a registry lookup or a handle per counter in every
//! task. Instead the supervisor reads the books, as
//! [`Stats`](crate::Stats) does, every [`FLUSH_INTERVAL`] (from the start:
//! every series exists from the first scrape) and once more from the final
//! [`Report`](crate::Report), and adds to each counter what it grew since
//! its last flush. So a scrape lags the books by at most one interval, the
//! last flush makes every counter equal its `Report` field, and nothing is
//! added to the hot path. Deltas, not absolute values: two pipelines given
//! the same name add up instead of overwriting each other. Gauges are set
//! at the same flushes; the final one sets them to the finished pipeline's
//! values (nothing queued, in flight or waiting; no worker alive).
//!
//! # Histograms: per item, clock reads only when on
//!
//! A distribution cannot be flushed from counts: each worker records its
//! item's wait in the queue (from its push, which the queue stamps with one
//! clock read per push when the feature is on, to the handler's call) and
//! the handler's run time, with two clock reads per item. None of it is
//! compiled without the feature; the costs are in `BENCHMARKS.md`.

#[cfg(feature = "metrics")]
pub(crate) use on::{EpisodeMeter, ItemMeters, Meters, Stamp, stamp};

#[cfg(not(feature = "metrics"))]
pub(crate) use off::{EpisodeMeter, ItemMeters, Meters, Stamp, stamp};

#[cfg(feature = "metrics")]
mod on {
    use std::borrow::Cow;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use metrics::{Counter, Gauge, Histogram, Label, Unit};
    use tokio::time::{Instant, Interval, MissedTickBehavior};

    use crate::books::{Counts, Fate};
    use crate::report::{Report, Stats};
    use crate::settle::ShedReason;

    /// How often the supervisor flushes the books to the recorder.
    const FLUSH_INTERVAL: Duration = Duration::from_secs(1);

    /// The gauges, read at one flush.
    #[derive(Default)]
    struct Gauges {
        queue_depth: usize,
        in_flight: usize,
        results_waiting: u64,
        workers_alive: usize,
        oldest_queued_age: Option<Duration>,
        keys: usize,
    }

    /// The counters of both laws, in the order of [`law_values`]: name,
    /// help text.
    const LAW_COUNTERS: [(&str, &str); 10] = [
        (
            "backpressure_pipeline_produced_total",
            "Items taken from the input.",
        ),
        (
            "backpressure_pipeline_processed_total",
            "Items whose handler completed (processed = delivered + discarded).",
        ),
        (
            "backpressure_pipeline_delivered_total",
            "Results the results stream yielded to its reader.",
        ),
        (
            "backpressure_pipeline_discarded_total",
            "Results of completed handlers that never reached the reader.",
        ),
        (
            "backpressure_pipeline_dropped_total",
            "Items shed by the shed policy, by which item it shed (reason).",
        ),
        (
            "backpressure_pipeline_failed_total",
            "Items whose handler panicked.",
        ),
        (
            "backpressure_pipeline_timed_out_total",
            "Items whose handler ran past the handler timeout.",
        ),
        (
            "backpressure_pipeline_expired_total",
            "Items that waited in the queue past the maximum queue age.",
        ),
        (
            "backpressure_pipeline_cancelled_total",
            "Items accepted but abandoned or cut off by a shutdown.",
        ),
        (
            "backpressure_pipeline_errored_total",
            "Processed items whose output was an Err (fallible handlers).",
        ),
    ];

    /// The index of `dropped` in [`LAW_COUNTERS`]: the one with a reason.
    const DROPPED: usize = 4;

    /// The books' counts in the order of [`LAW_COUNTERS`].
    fn law_values(counts: &Counts) -> [u64; 10] {
        [
            counts.produced,
            counts.processed,
            counts.delivered,
            counts.discarded,
            counts.dropped,
            counts.failed,
            counts.timed_out,
            counts.expired,
            counts.cancelled,
            counts.errored,
        ]
    }

    /// The outcomes a handler run can have, labelling its duration.
    const OUTCOMES: [(Fate, &str); 4] = [
        (Fate::Processed, "processed"),
        (Fate::Failed, "failed"),
        (Fate::TimedOut, "timed_out"),
        (Fate::Cancelled, "cancelled"),
    ];

    const EPISODES: &str = "backpressure_pipeline_overload_episodes_total";
    const QUEUE_WAIT: &str = "backpressure_pipeline_queue_wait_seconds";
    const HANDLER: &str = "backpressure_pipeline_handler_duration_seconds";

    /// A pipeline's counters and gauges, owned by its supervisor.
    pub(crate) struct Meters {
        laws: [Counter; 10],
        /// What each counter of `laws` had reached at the last flush.
        flushed: [u64; 10],
        queue_depth: Gauge,
        /// Set at every flush too, so that an exporter that forgets
        /// series not updated for a while keeps it.
        queue_capacity: (Gauge, f64),
        in_flight: Gauge,
        results_waiting: Gauge,
        workers_alive: Gauge,
        oldest_queued_age: Gauge,
        keys: Gauge,
        episodes: Counter,
        items: ItemMeters,
        /// Created at the first poll, on the supervisor's runtime.
        interval: Option<Interval>,
    }

    impl Meters {
        /// Describes and registers every series of a pipeline named `name`
        /// that sheds for `reason`, with the recorder installed now (global,
        /// or local to this thread).
        pub(crate) fn new(name: Cow<'static, str>, reason: ShedReason, capacity: usize) -> Self {
            describe();
            let pipeline = Label::new("pipeline", name);
            let labels = || vec![pipeline.clone()];
            let reason = match reason {
                // A keyed `DropOldest` pipeline's evictions within a key
                // (`Superseded`) are its oldest too: one label per policy.
                ShedReason::Oldest | ShedReason::Superseded => "oldest",
                ShedReason::Newest => "newest",
            };
            let laws = std::array::from_fn(|i| {
                let mut labels = labels();
                if i == DROPPED {
                    labels.push(Label::new("reason", reason));
                }
                metrics::counter!(LAW_COUNTERS[i].0, labels)
            });
            let gauge = |name: &'static str| metrics::gauge!(name, labels());
            let items = ItemMeters {
                wait: metrics::histogram!(QUEUE_WAIT, labels()),
                run: OUTCOMES.map(|(_, outcome)| {
                    let mut labels = labels();
                    labels.push(Label::new("outcome", outcome));
                    metrics::histogram!(HANDLER, labels)
                }),
            };
            Meters {
                laws,
                flushed: [0; 10],
                queue_depth: gauge("backpressure_pipeline_queue_depth"),
                queue_capacity: (
                    gauge("backpressure_pipeline_queue_capacity"),
                    capacity as f64,
                ),
                in_flight: gauge("backpressure_pipeline_in_flight"),
                results_waiting: gauge("backpressure_pipeline_results_waiting"),
                workers_alive: gauge("backpressure_pipeline_workers_alive"),
                oldest_queued_age: gauge("backpressure_pipeline_oldest_queued_age_seconds"),
                keys: gauge("backpressure_pipeline_keys_tracked"),
                episodes: metrics::counter!(EPISODES, labels()),
                items,
                interval: None,
            }
        }

        /// The handles a worker records its items' timings with.
        pub(crate) fn items(&self) -> ItemMeters {
            self.items.clone()
        }

        /// The counter of overload episodes, for the front.
        pub(crate) fn episodes(&self) -> EpisodeMeter {
            EpisodeMeter(self.episodes.clone())
        }

        /// Whether a flush is due (the first poll is one); registers `cx`
        /// for the next.
        pub(crate) fn poll_due(&mut self, cx: &mut Context<'_>) -> bool {
            let interval = self.interval.get_or_insert_with(|| {
                let mut interval = tokio::time::interval(FLUSH_INTERVAL);
                interval.set_missed_tick_behavior(MissedTickBehavior::Skip);
                interval
            });
            matches!(interval.poll_tick(cx), Poll::Ready(_))
        }

        /// Flushes a live snapshot, with `workers_alive` worker tasks left.
        pub(crate) fn flush_stats(&mut self, stats: &Stats, workers_alive: usize) {
            let gauges = Gauges {
                queue_depth: stats.queue_depth,
                in_flight: stats.in_flight,
                results_waiting: stats.results_waiting,
                workers_alive,
                oldest_queued_age: stats.oldest_queued_age,
                keys: stats.keys,
            };
            self.flush(&stats.counts(), gauges);
        }

        /// The last flush: every counter becomes its `report` field, and
        /// the gauges those of a finished pipeline (all 0).
        pub(crate) fn flush_report(&mut self, report: &Report) {
            self.flush(&report.counts(), Gauges::default());
        }

        /// Adds to each counter what it grew since the last flush, and sets
        /// the gauges.
        fn flush(&mut self, counts: &Counts, gauges: Gauges) {
            for ((counter, flushed), value) in self
                .laws
                .iter()
                .zip(&mut self.flushed)
                .zip(law_values(counts))
            {
                // Every count only grows (see `books`).
                if value > *flushed {
                    counter.increment(value - *flushed);
                    *flushed = value;
                }
            }
            self.queue_depth.set(gauges.queue_depth as f64);
            self.queue_capacity.0.set(self.queue_capacity.1);
            self.in_flight.set(gauges.in_flight as f64);
            self.results_waiting.set(gauges.results_waiting as f64);
            self.workers_alive.set(gauges.workers_alive as f64);
            let age = gauges.oldest_queued_age.unwrap_or_default();
            self.oldest_queued_age.set(age.as_secs_f64());
            self.keys.set(gauges.keys as f64);
        }
    }

    /// Describes every series (the Prometheus exporter's `# HELP` and
    /// `# TYPE` lines; units where they apply).
    fn describe() {
        for (name, help) in LAW_COUNTERS {
            metrics::describe_counter!(name, Unit::Count, help);
        }
        metrics::describe_counter!(
            EPISODES,
            Unit::Count,
            "Overload episodes begun: shedding after a quiet period."
        );
        for (name, help) in [
            (
                "backpressure_pipeline_queue_depth",
                "Items queued now, waiting for a worker.",
            ),
            (
                "backpressure_pipeline_queue_capacity",
                "Items the queue holds at most.",
            ),
            (
                "backpressure_pipeline_in_flight",
                "Items a worker has taken whose handler has not finished.",
            ),
            (
                "backpressure_pipeline_results_waiting",
                "Results of completed handlers waiting for the reader.",
            ),
            (
                "backpressure_pipeline_workers_alive",
                "Worker tasks that have not ended.",
            ),
            (
                "backpressure_pipeline_keys_tracked",
                "Keys with an item queued or in flight (keyed pipelines; 0 otherwise).",
            ),
        ] {
            metrics::describe_gauge!(name, Unit::Count, help);
        }
        metrics::describe_gauge!(
            "backpressure_pipeline_oldest_queued_age_seconds",
            Unit::Seconds,
            "How long the oldest queued item has waited (0 when none is queued)."
        );
        metrics::describe_histogram!(
            QUEUE_WAIT,
            Unit::Seconds,
            "From an item's push into the queue to its handler's call."
        );
        metrics::describe_histogram!(
            HANDLER,
            Unit::Seconds,
            "A handler's run, by how it ended (outcome)."
        );
    }

    /// One worker's histograms.
    #[derive(Clone)]
    pub(crate) struct ItemMeters {
        wait: Histogram,
        /// By outcome, in the order of [`OUTCOMES`].
        run: [Histogram; 4],
    }

    /// When a handler was called.
    pub(crate) type Started = Instant;

    /// When a taken item was queued, as the queue hands it to a worker.
    pub(crate) type Stamp = Option<Instant>;

    /// What a taken item carries of its stamp: all of it.
    #[inline]
    pub(crate) fn stamp(queued_at: Option<Instant>) -> Stamp {
        queued_at
    }

    impl ItemMeters {
        /// The handler is called now: records how long its item waited.
        #[inline]
        pub(crate) fn start(&self, queued_at: Stamp) -> Started {
            let now = Instant::now();
            if let Some(queued_at) = queued_at {
                let waited = now.saturating_duration_since(queued_at);
                self.wait.record(waited.as_secs_f64());
            }
            now
        }

        /// The handler called at `started` ended as `fate`.
        #[inline]
        pub(crate) fn ran(&self, started: Started, fate: Fate) {
            // A run its caller walked away from was cut off, as an abort
            // cuts one off: the report counts both `cancelled`.
            let fate = match fate {
                Fate::Withdrawn => Fate::Cancelled,
                fate => fate,
            };
            if let Some(i) = OUTCOMES.iter().position(|&(outcome, _)| outcome == fate) {
                self.run[i].record(started.elapsed().as_secs_f64());
            }
        }
    }

    /// Counts overload episodes as they begin.
    pub(crate) struct EpisodeMeter(Counter);

    impl EpisodeMeter {
        pub(crate) fn started(&self) {
            self.0.increment(1);
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod off {
    use std::borrow::Cow;
    use std::task::Context;

    use tokio::time::Instant;

    use crate::books::Fate;
    use crate::report::{Report, Stats};
    use crate::settle::ShedReason;

    /// Zero-sized: the feature is off.
    pub(crate) struct Meters;

    impl Meters {
        #[inline(always)]
        pub(crate) fn new(_: Cow<'static, str>, _: ShedReason, _: usize) -> Self {
            Meters
        }

        #[inline(always)]
        pub(crate) fn items(&self) -> ItemMeters {
            ItemMeters
        }

        #[inline(always)]
        pub(crate) fn episodes(&self) -> EpisodeMeter {
            EpisodeMeter
        }

        #[inline(always)]
        pub(crate) fn poll_due(&mut self, _: &mut Context<'_>) -> bool {
            false
        }

        #[inline(always)]
        pub(crate) fn flush_stats(&mut self, _: &Stats, _: usize) {}

        #[inline(always)]
        pub(crate) fn flush_report(&mut self, _: &Report) {}
    }

    /// Zero-sized: the feature is off.
    #[derive(Clone, Copy)]
    pub(crate) struct ItemMeters;

    /// Zero-sized: no clock is read.
    #[derive(Clone, Copy)]
    pub(crate) struct Started;

    /// Zero-sized: a taken item carries no stamp to the worker (the queue
    /// still uses it for expiry).
    pub(crate) type Stamp = ();

    #[inline(always)]
    pub(crate) fn stamp(_: Option<Instant>) -> Stamp {}

    impl ItemMeters {
        #[inline(always)]
        pub(crate) fn start(&self, _: Stamp) -> Started {
            Started
        }

        #[inline(always)]
        pub(crate) fn ran(&self, _: Started, _: Fate) {}
    }

    /// Zero-sized: the feature is off.
    pub(crate) struct EpisodeMeter;

    impl EpisodeMeter {
        #[inline(always)]
        pub(crate) fn started(&self) {}
    }
}
