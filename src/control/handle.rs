use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::task::JoinHandle;

use super::{Controller, End};
use crate::BoundedFanOut;
use crate::report::{Report, Stats};

/// Controls a pipeline started by [`FanOutExt::bounded_fan_out`] (or any
/// other front) and collects its [`Report`].
///
/// # Lifecycle
///
/// * [`join`](Self::join) waits for the pipeline to finish and returns the
///   report; afterwards no task the pipeline spawned is alive.
/// * [`shutdown`](Self::shutdown) stops intake and drains, up to the
///   [drain timeout](crate::FanOutConfig::drain_timeout);
///   [`abort`](Self::abort) stops everything now.
/// * Dropping the handle while the results stream lives detaches the
///   pipeline, like dropping a `JoinHandle`: it runs to its natural end.
///   Dropping both the handle (or its [`JoinReport`] future) and the results
///   stream aborts the pipeline; every task ends promptly.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutExt, ShedPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (results, shutdown) = futures::stream::pending::<u32>()
///     .bounded_fan_out(2, ShedPolicy::DropNewest, |x| async move { x });
/// drop(results);
/// shutdown.shutdown(); // the input never ends: stop it
/// let report = shutdown.join().await;
/// assert_eq!(report.produced, 0);
/// assert_eq!(report.workers_joined, 2);
/// # }
/// ```
///
/// [`FanOutExt::bounded_fan_out`]: crate::FanOutExt::bounded_fan_out
#[must_use = "dropping the handle detaches the pipeline; `join` it to get its report"]
pub struct ShutdownHandle {
    supervisor: JoinHandle<Report>,
    end: End,
}

impl ShutdownHandle {
    pub(crate) fn new(supervisor: JoinHandle<Report>, end: End) -> Self {
        ShutdownHandle { supervisor, end }
    }

    /// Waits until the pipeline has finished and returns its [`Report`].
    ///
    /// The pipeline finishes when the input is exhausted, every accepted
    /// item is processed and every result has been read from `results` (or
    /// `results` was dropped); or when a requested [`shutdown`](Self::shutdown)
    /// or [`abort`](Self::abort) has completed. `join` waits only for
    /// results that exist: once every worker has exited and no result is
    /// waiting (none was produced, or the reader took the last one), it
    /// resolves whether or not the reader has polled `results` to its end.
    /// `join` alone never stops the pipeline: on an endless input, request
    /// a shutdown first (or pass a
    /// [`cancel_token`](crate::FanOutConfig::cancel_token)).
    ///
    /// When the future resolves, every task the pipeline spawned has run to
    /// completion or been cancelled, and its future has been dropped, with
    /// everything it owned: the input stream, the handler and hooks and what
    /// they capture, queued items and undelivered results. Tokio releases a
    /// finished task's memory a moment after waking its joiner, so on a
    /// multi-thread runtime `Handle::metrics().num_alive_tasks()` may still
    /// count one for a few microseconds (longer on a loaded machine). To
    /// check for leaks without a race, watch something the pipeline owns
    /// instead, such as an `Arc` the handler captures (its strong count is
    /// back to 1 when `join` returns), or poll `num_alive_tasks` with a
    /// bounded wait.
    ///
    /// **Hazard:** results (and, with settlement, settlement records) wait
    /// for the reader. A caller that awaits `join` while results are waiting
    /// and it neither reads nor drops `results` waits until they are read,
    /// or until a shutdown's drain deadline or an abort discards them.
    /// Drain and join together ([`join_collect`](Self::join_collect) and
    /// [`join_for_each`](Self::join_for_each) do it in one call), or drop
    /// `results` first:
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
    /// use futures::StreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = FanOutConfig::new(2, ShedPolicy::DropNewest).output_capacity(1);
    /// let (results, shutdown) =
    ///     futures::stream::iter(0..100u32).bounded_fan_out_with(config, |x| async move { x });
    /// // Not `shutdown.join().await` alone: the unread results would hold it.
    /// let (outputs, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
    /// assert_eq!(outputs.len() as u64, report.delivered);
    /// assert_eq!(report.delivered, report.processed);
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned [`JoinReport`] future drops this handle: the pipeline
    /// runs on, detached, while its results stream lives, and is aborted if
    /// that stream is gone too. The report is then lost.
    pub fn join(self) -> JoinReport {
        JoinReport { handle: Some(self) }
    }

    /// Reads every result into a `Vec` while joining: the one-call form of
    /// `tokio::join!(results.collect::<Vec<_>>(), shutdown.join())`, for
    /// callers who want the outputs and the report and nothing in between.
    ///
    /// `results` must be this pipeline's results stream (any other stream
    /// is read to its end too, but then the join may wait on results nobody
    /// reads). Results come in the stream's order.
    ///
    /// # Cancel safety
    ///
    /// As [`join`](Self::join): dropping the future drops this handle and
    /// `results`, which aborts the pipeline; the results read so far and
    /// the report are lost.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutExt, ShedPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (results, shutdown) = futures::stream::iter(1..=4u32)
    ///     .bounded_fan_out(2, ShedPolicy::DropNewest, |x| async move { x * 10 });
    /// let (mut outputs, report) = shutdown.join_collect(results).await;
    /// outputs.sort();
    /// assert_eq!(outputs, [10, 20, 30, 40]);
    /// assert_eq!((report.processed, report.delivered), (4, 4));
    /// # }
    /// ```
    pub async fn join_collect<T>(self, results: BoundedFanOut<T>) -> (Vec<T>, Report) {
        let mut outputs = Vec::new();
        let report = self
            .join_for_each(results, |output| outputs.push(output))
            .await;
        (outputs, report)
    }

    /// Hands every result to `each` as it arrives while joining, and
    /// returns the report: the one-call way to drain and join for callers
    /// who do not keep the outputs.
    ///
    /// `each` runs on the caller's task, between polls of the join; keep it
    /// short (it holds up reading the next result, and so the workers once
    /// the results buffer is full). A panic in it unwinds to the caller.
    ///
    /// # Cancel safety
    ///
    /// As [`join_collect`](Self::join_collect).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutExt, ShedPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (results, shutdown) = futures::stream::iter(0..100u64)
    ///     .bounded_fan_out(4, ShedPolicy::Backpressure, |x| async move { x });
    /// let mut sum = 0;
    /// let report = shutdown.join_for_each(results, |x| sum += x).await;
    /// assert_eq!(sum, (0..100).sum::<u64>());
    /// assert!(report.is_conserved());
    /// # }
    /// ```
    pub async fn join_for_each<T>(
        self,
        results: BoundedFanOut<T>,
        mut each: impl FnMut(T),
    ) -> Report {
        let mut join = self.join();
        let mut results = Some(results);
        std::future::poll_fn(|cx| {
            while let Some(stream) = results.as_mut() {
                match Pin::new(stream).poll_next(cx) {
                    Poll::Ready(Some(output)) => each(output),
                    Poll::Ready(None) => results = None,
                    Poll::Pending => break,
                }
            }
            Pin::new(&mut join).poll(cx)
        })
        .await
    }

    /// Requests a graceful shutdown: intake stops pulling input now; queued
    /// and in-flight items are still processed, and their results wait for
    /// the reader, for up to the
    /// [drain timeout](crate::FanOutConfig::drain_timeout) counted from this
    /// call. When it runs out the rest is aborted as by [`abort`](Self::abort):
    /// unfinished items are counted `cancelled` and unread results
    /// `discarded`, so a consumer that stopped reading cannot hold the
    /// shutdown past the deadline. No queued item is started once the
    /// deadline has passed, even while handlers block every runtime thread:
    /// a blocking handler delays the stop by at most its own run (see
    /// [`drain_timeout`](crate::FanOutConfig::drain_timeout) for
    /// `spawn_blocking`). Items a keyed `Backpressure` stream front has
    /// pulled and holds for a full key's room (at most
    /// [`MAX_INTAKE_BATCH`](crate::FanOutConfig::MAX_INTAKE_BATCH)) are not
    /// queued any more: they count `cancelled` and go to
    /// [`on_cancel`](crate::FanOutConfig::on_cancel).
    ///
    /// On a current-thread runtime no pull of the input begins after this
    /// returns; on a multi-thread runtime one may, if the intake on another
    /// thread checked for a stop just before this call (that item is
    /// counted and handled like any other; the check comes right before
    /// each pull, and closing the window would mean the stop waiting for
    /// the input's `poll_next`). On the push front no offer or send is
    /// accepted after it returns.
    ///
    /// Idempotent; a no-op after the pipeline has finished or been aborted.
    /// A cancelled parent [`cancel_token`](crate::FanOutConfig::cancel_token)
    /// has the same effect, from the moment its `cancel()` returns.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutExt, IntakeEnd, ShedPolicy};
    /// use futures::StreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (mut results, shutdown) = futures::stream::repeat(1u8)
    ///     .bounded_fan_out(2, ShedPolicy::DropOldest, |x| async move { x });
    /// for _ in 0..10 {
    ///     results.next().await;
    /// }
    /// shutdown.shutdown();
    /// // Read what the drain still finishes, and join.
    /// let (rest, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
    /// assert_eq!(report.intake, IntakeEnd::Stopped);
    /// assert_eq!(report.delivered, 10 + rest.len() as u64);
    /// assert!(report.is_conserved());
    /// # }
    /// ```
    pub fn shutdown(&self) {
        self.end.control().shutdown();
    }

    /// Stops the pipeline now: intake stops pulling, every queued item is
    /// abandoned and every in-flight handler is cancelled at its next
    /// suspension point; all of them are counted `cancelled` (and queued
    /// ones handed to [`on_cancel`](crate::FanOutConfig::on_cancel)). A
    /// handler that is ready when cancelled still completes and counts as
    /// `processed`.
    ///
    /// Results are not waited for: a worker waiting to hand one over stops
    /// waiting, and results the consumer has not read yet are dropped; each
    /// counts `discarded` (and stays `processed`). The results stream then
    /// ends, and [`join`](Self::join) resolves promptly even while nobody
    /// reads `results`.
    ///
    /// No item is taken from the queue after this returns, and a worker
    /// that took an item in the same instant hands it back without calling
    /// the handler; the input is pulled no more, but for the one pull a
    /// multi-thread runtime may still begin, as after
    /// [`shutdown`](Self::shutdown) (that item is then counted
    /// `cancelled`). On a multi-thread runtime a worker on another thread
    /// may already be past that last check, a window of a few instructions: at most one handler per worker can then still be
    /// called, and it is cancelled at its first suspension point. (Closing
    /// that window would mean `abort` waiting for user code on other
    /// threads.)
    ///
    /// Idempotent; a no-op after the pipeline has finished.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutExt, ShedPolicy};
    ///
    /// // Needs tokio's `test-util` feature: paused time, so timers fire at once and timings are exact.
    /// #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// async fn main() {
    ///     let (results, shutdown) = futures::stream::iter(0..4u32)
    ///         .bounded_fan_out(2, ShedPolicy::DropNewest, |_| std::future::pending::<()>());
    ///     // Paused time advances only once every task is idle: both workers
    ///     // have taken an item by then.
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    ///     assert_eq!(shutdown.stats().in_flight, 2);
    ///     shutdown.abort();
    ///     drop(results);
    ///     let report = shutdown.join().await;
    ///     assert_eq!((report.produced, report.cancelled, report.aborted), (4, 4, 2));
    /// }
    /// ```
    pub fn abort(&self) {
        self.end.control().abort();
    }

    /// A live snapshot of the pipeline's counters, queue depth, in-flight
    /// count and the queue's high-water mark.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutExt, ShedPolicy};
    /// use futures::StreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (results, shutdown) = futures::stream::iter(0..5u32)
    ///     .bounded_fan_out(1, ShedPolicy::DropNewest, |x| async move { x });
    /// let _ = results.collect::<Vec<_>>().await;
    /// let stats = shutdown.stats();
    /// assert_eq!(stats.produced, 5);
    /// assert_eq!(stats.processed + stats.dropped, 5);
    /// assert_eq!((stats.queue_depth, stats.in_flight), (0, 0));
    /// # let _ = shutdown.join().await;
    /// # }
    /// ```
    pub fn stats(&self) -> Stats {
        self.end.control().stats()
    }

    /// A cloneable [`Controller`] for this pipeline: shutdown, abort, stats
    /// and a wait for the end from any task, without moving this handle.
    ///
    /// Take one before [`join`](Self::join) to stop a pipeline while its
    /// `JoinReport` is pending, e.g. after a timeout:
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{FanOutExt, ShedPolicy};
    ///
    /// // Needs tokio's `test-util` feature: paused time, so timers fire at once and timings are exact.
    /// #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// async fn main() {
    ///     let (results, shutdown) = futures::stream::pending::<u32>()
    ///         .bounded_fan_out(2, ShedPolicy::DropNewest, |x| async move { x });
    ///     drop(results);
    ///     let controller = shutdown.controller();
    ///     let mut join = shutdown.join();
    ///     // Polled through `&mut`: the timeout does not drop the `JoinReport`.
    ///     let early = tokio::time::timeout(Duration::from_secs(1), &mut join).await;
    ///     assert!(early.is_err(), "an endless input does not end by itself");
    ///     controller.shutdown();
    ///     let report = join.await;
    ///     assert_eq!(report.workers_joined, 2);
    /// }
    /// ```
    pub fn controller(&self) -> Controller {
        Controller::new(self.end.control().clone())
    }

    /// Whether a shutdown or abort has been requested (by this handle, a
    /// cancelled parent token, or dropping both halves).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutExt, ShedPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (_results, shutdown) = futures::stream::pending::<u8>()
    ///     .bounded_fan_out(1, ShedPolicy::DropNewest, |x| async move { x });
    /// assert!(!shutdown.is_shutting_down());
    /// shutdown.shutdown();
    /// assert!(shutdown.is_shutting_down());
    /// # }
    /// ```
    pub fn is_shutting_down(&self) -> bool {
        self.end.control().is_shutting_down()
    }

    /// Whether the pipeline has finished: every task it spawned has ended
    /// and [`join`](Self::join) would resolve without waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutExt, ShedPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (_results, shutdown) = futures::stream::pending::<u8>()
    ///     .bounded_fan_out(1, ShedPolicy::DropNewest, |x| async move { x });
    /// assert!(!shutdown.is_finished());
    /// # }
    /// ```
    pub fn is_finished(&self) -> bool {
        self.supervisor.is_finished()
    }
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        super::controller::fmt_state(
            f,
            "ShutdownHandle",
            &**self.end.control(),
            self.is_finished(),
        )
    }
}

/// A future returned by [`ShutdownHandle::join`]; resolves to the pipeline's
/// [`Report`].
///
/// # Panics
///
/// Polling it again after it has returned the report panics, as for most
/// futures.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct JoinReport {
    handle: Option<ShutdownHandle>,
}

impl Future for JoinReport {
    type Output = Report;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Report> {
        let Some(handle) = self.handle.as_mut() else {
            panic!("`JoinReport` polled after completion");
        };
        let report = match Pin::new(&mut handle.supervisor).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(report)) => report,
            // The supervisor was cancelled with its runtime, or panicked.
            Poll::Ready(Err(_)) => handle.end.control().fallback_report(),
        };
        self.handle = None;
        Poll::Ready(report)
    }
}

impl fmt::Debug for JoinReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinReport")
            .field("handle", &self.handle)
            .finish()
    }
}
