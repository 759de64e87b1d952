use std::fmt;

/// How the pipeline's intake stopped pulling from the input stream.
///
/// Part of every [`Report`]: a pipeline that ends early tells you why.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutExt, IntakeEnd, ShedPolicy};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (results, shutdown) =
///     futures::stream::iter(0..3).bounded_fan_out(1, ShedPolicy::DropNewest, |x| async move { x });
/// let (_, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
/// assert_eq!(report.intake, IntakeEnd::Exhausted);
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IntakeEnd {
    /// The input stream returned `None`.
    Exhausted,
    /// A shutdown, an abort, a cancelled parent token or dropping both ends
    /// stopped intake before the input ended.
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

/// The final accounting of a pipeline, returned by [`ShutdownHandle::join`].
///
/// Every item taken from the input is counted exactly once, in one of
/// `processed`, `dropped`, `failed`, `timed_out`, `expired` or `cancelled`, so
/// `produced == processed + dropped + failed + timed_out + expired + cancelled` (the
/// conservation law; `timed_out` is 0 unless a
/// [`handler_timeout`](crate::FanOutConfig::handler_timeout) is set). Every
/// result is counted once too, `processed == delivered + discarded` (the
/// results law). [`Report::is_conserved`] checks both. Every worker is
/// counted once, in `workers_joined` or `aborted`.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutExt, ShedPolicy};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (results, shutdown) = futures::stream::iter(0..10u64)
///     .bounded_fan_out(2, ShedPolicy::DropNewest, |x| async move { x + 1 });
/// let (out, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
/// assert_eq!(report.produced, 10);
/// assert_eq!(report.processed + report.dropped, 10);
/// assert_eq!(out.len() as u64, report.processed);
/// assert_eq!((report.delivered, report.discarded), (report.processed, 0));
/// assert_eq!((report.workers_joined, report.aborted), (2, 0));
/// assert_eq!(report.workers_joined + report.aborted, report.workers);
/// assert!(report.is_conserved());
/// # }
/// ```
///
/// [`ShutdownHandle::join`]: crate::ShutdownHandle::join
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Items taken from the input stream.
    pub produced: u64,
    /// Items whose handler future completed, whether or not the result was
    /// delivered: `processed == delivered + discarded`.
    pub processed: u64,
    /// Results the results stream yielded to its reader.
    pub delivered: u64,
    /// Results of completed handlers that never reached the reader: the
    /// results stream was dropped first (buffered results are dropped with
    /// it), or an abort cut off the hand-over or emptied the buffer.
    pub discarded: u64,
    /// Items shed by the [`ShedPolicy`](crate::ShedPolicy): they never reached a worker.
    pub dropped: u64,
    /// Items whose handler panicked, in the call or in the future. The panic
    /// was caught; the worker went on with the next item.
    pub failed: u64,
    /// Items whose handler ran longer than the
    /// [`handler_timeout`](crate::FanOutConfig::handler_timeout) and was
    /// cancelled; the worker went on with the next item.
    pub timed_out: u64,
    /// Items that waited in the queue longer than the
    /// [`max_queue_age`](crate::FanOutConfig::max_queue_age): shed when a
    /// worker would have taken them, without calling the handler.
    pub expired: u64,
    /// Processed items whose output was an `Err`: counted only by
    /// [`try_bounded_fan_out_with`](crate::FanOutExt::try_bounded_fan_out_with),
    /// 0 otherwise. A part of `processed` (`errored <= processed`; the `Ok`
    /// outputs are `processed - errored`), not a separate outcome.
    pub errored: u64,
    /// Items accepted but abandoned by a shutdown before their handler
    /// completed: still queued at an abort, or cut off in flight.
    pub cancelled: u64,
    /// Workers the pipeline ran: `workers_joined + aborted == workers`.
    pub workers: usize,
    /// Workers that ended on their own: the queue drained, or idle when the
    /// pipeline was shut down or aborted.
    pub workers_joined: usize,
    /// Workers whose in-flight handler was cut off, by
    /// [`abort`](crate::ShutdownHandle::abort) or by the drain timeout.
    pub aborted: usize,
    /// How intake stopped pulling from the input.
    pub intake: IntakeEnd,
    /// The largest number of items that were ever queued at once (at most
    /// the capacity): how close the pipeline came to shedding.
    pub high_water_mark: usize,
}

impl Report {
    /// Whether the books balance: `produced == processed + dropped + failed +
    /// timed_out + expired + cancelled`, `processed == delivered + discarded` and
    /// `workers_joined + aborted == workers`.
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
        self.processed
            .checked_add(self.dropped)
            .and_then(|n| n.checked_add(self.failed))
            .and_then(|n| n.checked_add(self.timed_out))
            .and_then(|n| n.checked_add(self.expired))
            .and_then(|n| n.checked_add(self.cancelled))
            == Some(self.produced)
            && self.delivered.checked_add(self.discarded) == Some(self.processed)
            && self.workers_joined.checked_add(self.aborted) == Some(self.workers)
            && self.errored <= self.processed
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "produced {}, processed {}, dropped {}, failed {}, timed out {}, cancelled {}; \
             delivered {}, discarded {}; workers joined {}, aborted {}; high-water mark {}; {}",
            self.produced,
            self.processed,
            self.dropped,
            self.failed,
            self.timed_out,
            self.cancelled,
            self.delivered,
            self.discarded,
            self.workers_joined,
            self.aborted,
            self.high_water_mark,
            self.intake
        )?;
        // The opt-in counts, only where they say something.
        if self.expired > 0 {
            write!(f, "; expired {}", self.expired)?;
        }
        if self.errored > 0 {
            write!(f, "; errored {} of the processed", self.errored)?;
        }
        Ok(())
    }
}

/// A live snapshot of a running pipeline, from [`ShutdownHandle::stats`].
///
/// The counters mean what they mean in [`Report`]; they are read one after
/// another while the pipeline runs, so a snapshot need not balance. Items
/// still queued or in flight are in `produced` but not yet in any outcome.
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
///
/// [`ShutdownHandle::stats`]: crate::ShutdownHandle::stats
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Items taken from the input so far.
    pub produced: u64,
    /// Items whose handler has completed so far.
    pub processed: u64,
    /// Results the results stream has yielded so far.
    pub delivered: u64,
    /// Results thrown away so far (see [`Report::discarded`]).
    pub discarded: u64,
    /// Results of completed handlers waiting for the reader now: buffered
    /// for `results`, or held by a worker waiting for room in that buffer
    /// (at most [`output_capacity`](crate::FanOutConfig::output_capacity)
    /// plus the worker count). A pipeline that stops moving with this at its
    /// maximum has a consumer that does not read.
    pub results_waiting: u64,
    /// Items shed by the policy so far.
    pub dropped: u64,
    /// Items whose handler panicked so far.
    pub failed: u64,
    /// Items whose handler ran past the handler timeout so far.
    pub timed_out: u64,
    /// Items shed for waiting longer than the maximum queue age so far.
    pub expired: u64,
    /// Processed items whose output was an `Err` so far (see [`Report::errored`]).
    pub errored: u64,
    /// Items cancelled by a shutdown so far.
    pub cancelled: u64,
    /// Items queued now, waiting for a worker (at most the capacity).
    pub queue_depth: usize,
    /// Items a worker has taken and whose handler has not finished (at most
    /// the worker count).
    pub in_flight: usize,
    /// The largest `queue_depth` seen since the pipeline started.
    pub high_water_mark: usize,
}
