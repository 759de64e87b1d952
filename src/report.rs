//! What the books say, for people: the final [`Report`] and the live
//! [`Stats`], both read from the one table of counts in `books`.

use std::fmt;
use std::time::Duration;

use crate::books::Counts;

/// How the pipeline's intake stopped taking items.
///
/// Part of every [`Report`]: a pipeline that ends early tells you why.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutExt, IntakeEnd, ShedPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (results, shutdown) =
///     futures::stream::iter(0..3).bounded_fan_out(1, ShedPolicy::DropNewest, |x| async move { x });
/// let (_, report) = shutdown.join_collect(results).await;
/// assert_eq!(report.intake, IntakeEnd::Exhausted);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IntakeEnd {
    /// The input stream returned `None`, or every producer of the push
    /// front was dropped or closed.
    Exhausted,
    /// A shutdown, an abort, a cancelled parent token or dropping both ends
    /// stopped intake first.
    Stopped,
    /// The input stream panicked in `poll_next`. The panic was caught; what
    /// had been accepted before it was still drained.
    InputPanicked,
}

impl fmt::Display for IntakeEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            IntakeEnd::Exhausted => "input exhausted",
            IntakeEnd::Stopped => "intake stopped (shutdown, abort or cancelled token)",
            IntakeEnd::InputPanicked => "input panicked",
        })
    }
}

/// Defines `Report` and `Stats` with the counters they share (written once,
/// here) and each one's own fields, and a constructor from the books'
/// [`Counts`] plus those own fields.
macro_rules! with_counters {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$field_meta:meta])* pub $field:ident : $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            /// Items taken from the input (pulled from the stream, or
            /// accepted from a producer of the push front). Items a
            /// stream front has pulled and holds while their key is full
            /// (keyed `Backpressure`; at most
            /// [`MAX_INTAKE_BATCH`](crate::FanOutConfig::MAX_INTAKE_BATCH))
            /// count once queued, or as `cancelled` if a stop comes first.
            pub produced: u64,
            /// Items whose handler completed, whether or not the result
            /// was delivered: `processed == delivered + discarded`.
            pub processed: u64,
            /// Results the results stream yielded to its reader.
            pub delivered: u64,
            /// Results of completed handlers that never reached the
            /// reader: the results stream was dropped first (buffered
            /// results are dropped with it), an abort cut off the
            /// hand-over or emptied the buffer, or, in latest-only order,
            /// a newer result replaced it.
            pub discarded: u64,
            /// Items shed by the [`ShedPolicy`](crate::ShedPolicy): they
            /// never reached a worker.
            pub dropped: u64,
            /// Items whose handler panicked, in the call or in the future
            /// (the panic was caught; the worker went on), or whose
            /// settlement key could not be taken (never started).
            pub failed: u64,
            /// Items whose handler ran longer than the
            /// [`handler_timeout`](crate::FanOutConfig::handler_timeout)
            /// and was cancelled; the worker went on with the next item.
            pub timed_out: u64,
            /// Items that waited in the queue longer than the
            /// [`max_queue_age`](crate::FanOutConfig::max_queue_age): shed
            /// when a worker would have taken them, unstarted.
            pub expired: u64,
            /// Processed items whose output was an `Err`: counted only for
            /// a [`fallible`](crate::FanOutConfig::fallible) handler, 0
            /// otherwise. A part of `processed` (`errored <= processed`),
            /// not a separate outcome.
            pub errored: u64,
            /// Items accepted but abandoned before their handler completed:
            /// still queued at an abort, cut off in flight, or withdrawn by
            /// a caller that went away (`withdrawn`).
            pub cancelled: u64,
            /// Calls whose caller went away before the answer
            /// ([`Caller::call`](crate::Caller::call) futures dropped):
            /// withdrawn from the queue, or their handler cancelled at its
            /// next await. A part of `cancelled` (`withdrawn <= cancelled`),
            /// not a separate outcome; 0 on the other fronts.
            pub withdrawn: u64,
            $( $(#[$field_meta])* pub $field : $ty, )*
        }

        impl $name {
            pub(crate) fn from_counts(counts: Counts, $( $field : $ty, )*) -> $name {
                $name {
                    produced: counts.produced,
                    processed: counts.processed,
                    delivered: counts.delivered,
                    discarded: counts.discarded,
                    dropped: counts.dropped,
                    failed: counts.failed,
                    timed_out: counts.timed_out,
                    expired: counts.expired,
                    errored: counts.errored,
                    cancelled: counts.cancelled,
                    withdrawn: counts.withdrawn,
                    $( $field, )*
                }
            }

            /// The counters of both laws, back as the books' [`Counts`]
            /// (nothing in flight), for the `metrics` feature's flush.
            #[cfg(feature = "metrics")]
            pub(crate) fn counts(&self) -> Counts {
                Counts {
                    produced: self.produced,
                    processed: self.processed,
                    delivered: self.delivered,
                    discarded: self.discarded,
                    dropped: self.dropped,
                    failed: self.failed,
                    timed_out: self.timed_out,
                    expired: self.expired,
                    errored: self.errored,
                    cancelled: self.cancelled,
                    ..Counts::default()
                }
            }
        }
    };
}

with_counters! {
    /// The final accounting of a pipeline, returned by
    /// [`ShutdownHandle::join`].
    ///
    /// Every item taken from the input is counted exactly once, in one of
    /// `processed`, `dropped`, `failed`, `timed_out`, `expired` or
    /// `cancelled`, so `produced == processed + dropped + failed +
    /// timed_out + expired + cancelled` (the conservation law; `timed_out`
    /// and `expired` are 0 unless their settings are used). Every result is
    /// counted once too, `processed == delivered + discarded` (the results
    /// law), and every worker once, in `workers_joined` or `aborted`.
    /// [`Report::is_conserved`] checks all three.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutExt, ShedPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (results, shutdown) = futures::stream::iter(0..10u64)
    ///     .bounded_fan_out(2, ShedPolicy::DropNewest, |x| async move { x + 1 });
    /// let (out, report) = shutdown.join_collect(results).await;
    /// assert_eq!(report.produced, 10);
    /// assert_eq!(report.processed + report.dropped, 10);
    /// assert_eq!(out.len() as u64, report.processed);
    /// assert_eq!((report.delivered, report.discarded), (report.processed, 0));
    /// assert_eq!((report.workers_joined, report.aborted), (2, 0));
    /// assert!(report.is_conserved());
    /// # }
    /// ```
    ///
    /// [`ShutdownHandle::join`]: crate::ShutdownHandle::join
    #[derive(Clone, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct Report {
        /// Workers the pipeline ran: `workers_joined + aborted == workers`.
        pub workers: usize,
        /// Workers that ended on their own: the queue drained, or idle when
        /// the pipeline was shut down or aborted.
        pub workers_joined: usize,
        /// Workers (not items) whose in-flight handler was cut off, by
        /// [`abort`](crate::ShutdownHandle::abort) or by the drain timeout;
        /// their items count in `cancelled`.
        pub aborted: usize,
        /// How intake stopped taking items.
        pub intake: IntakeEnd,
        /// The largest number of items that were ever queued at once (at
        /// most the capacity): how close the pipeline came to shedding.
        pub high_water_mark: usize,
    }
}

with_counters! {
    /// A live snapshot of a running pipeline, from
    /// [`ShutdownHandle::stats`](crate::ShutdownHandle::stats).
    ///
    /// The counters mean what they mean in [`Report`], counted so far; they
    /// are read one after another while the pipeline runs, so a snapshot
    /// need not balance (items queued or in flight are in `produced` but in
    /// no outcome yet). It never shows more finished items than taken ones,
    /// nor more results than completions.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutExt, ShedPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (results, shutdown) = futures::stream::pending::<u8>()
    ///     .bounded_fan_out(2, ShedPolicy::DropOldest, |x| async move { x });
    /// let stats = shutdown.stats();
    /// assert_eq!((stats.produced, stats.queue_depth, stats.in_flight), (0, 0, 0));
    /// shutdown.abort();
    /// drop(results);
    /// shutdown.join().await;
    /// # }
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[non_exhaustive]
    pub struct Stats {
        /// Results of completed handlers waiting for the reader now:
        /// buffered for `results`, or held by a worker waiting for room in
        /// that buffer (at most
        /// [`output_capacity`](crate::FanOutConfig::output_capacity) plus
        /// the worker count). A pipeline that stops moving with this at its
        /// maximum has a consumer that does not read. Read while results
        /// move, it may lag by the results finished during the snapshot
        /// (showing fewer, never more).
        pub results_waiting: u64,
        /// Items queued now, waiting for a worker (at most the capacity).
        pub queue_depth: usize,
        /// Items a worker has taken and whose handler has not finished (at
        /// most the worker count).
        pub in_flight: usize,
        /// The largest `queue_depth` seen since the pipeline started.
        pub high_water_mark: usize,
        /// How long the oldest queued item has waited, if an item is
        /// queued and the queue stamps its items: what an operator checks
        /// first when a pipeline lags.
        ///
        /// The queue stamps its items when something needs the stamps: a
        /// [`max_queue_age`](crate::FanOutConfig::max_queue_age), or the
        /// `metrics` feature (its queue-wait histogram and its
        /// `oldest_queued_age_seconds` gauge); otherwise this is `None`.
        /// A stamp is one clock read per push, made outside the queue's
        /// lock (a stream front's batch of up to
        /// [`MAX_INTAKE_BATCH`](crate::FanOutConfig::MAX_INTAKE_BATCH) items
        /// shares one; a push front reads the clock once per offer), and a
        /// take costs one addition. Always on, that measured 35 more
        /// instructions per item through a lossless pipeline (3.3 %) and 5
        /// more per item shed under overload (12 %): a cost every pipeline
        /// would pay for a reading few take, so it is paid by those that
        /// ask. The age counts from the moment the item's push began.
        pub oldest_queued_age: Option<Duration>,
        /// Keyed pipelines ([`FanOutConfig::key_by`](crate::FanOutConfig::key_by)):
        /// the keys tracked now, those with an item queued or in flight (at
        /// most `capacity + workers`, plus producers waiting for a key's
        /// room); 0 otherwise.
        pub keys: usize,
    }
}

impl Report {
    /// Whether the books balance:
    ///
    /// ```text
    /// produced       == processed + dropped + failed + timed_out + expired + cancelled
    /// processed      == delivered + discarded
    /// workers        == workers_joined + aborted
    /// errored        <= processed
    /// withdrawn      <= cancelled
    /// ```
    ///
    /// This holds in every report the crate returns; the method exists so
    /// that callers and tests can say so.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutExt, ShedPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (results, shutdown) = futures::stream::empty::<u8>()
    ///     .bounded_fan_out(2, ShedPolicy::DropOldest, |x| async move { x });
    /// drop(results);
    /// assert!(shutdown.join().await.is_conserved());
    /// # }
    /// ```
    pub fn is_conserved(&self) -> bool {
        [
            self.dropped,
            self.failed,
            self.timed_out,
            self.expired,
            self.cancelled,
        ]
        .into_iter()
        .try_fold(self.processed, u64::checked_add)
            == Some(self.produced)
            && self.delivered.checked_add(self.discarded) == Some(self.processed)
            && self.workers_joined.checked_add(self.aborted) == Some(self.workers)
            && self.errored <= self.processed
            && self.withdrawn <= self.cancelled
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "items: produced {}, processed {}, dropped {}, failed {}, timed out {}, cancelled {}",
            self.produced,
            self.processed,
            self.dropped,
            self.failed,
            self.timed_out,
            self.cancelled,
        )?;
        // The opt-in counts, only where they say something.
        if self.expired > 0 {
            write!(f, ", expired {}", self.expired)?;
        }
        if self.withdrawn > 0 {
            write!(
                f,
                " ({} of the cancelled withdrawn by their caller)",
                self.withdrawn
            )?;
        }
        if self.errored > 0 {
            write!(f, " ({} of the processed errored)", self.errored)?;
        }
        write!(
            f,
            "; results: delivered {}, discarded {}; workers: {} joined, {} cut off; \
             high-water mark {}; {}",
            self.delivered,
            self.discarded,
            self.workers_joined,
            self.aborted,
            self.high_water_mark,
            self.intake
        )
    }
}
