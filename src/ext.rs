//! The entry points: [`FanOutExt`] for the stream front, [`feeder`] for
//! the push front. Both hand everything to the one composition root,
//! `launch`.

use std::future::Future;

use futures_core::Stream;

use crate::config::HandlerKind;
use crate::front::{call_handler, call_outputs, settings_for_calls};
use crate::launch::{Front, NoInput, Outputs, launch};
use crate::{BoundedFanOut, Caller, FanOutConfig, Feeder, ShedPolicy, ShutdownHandle};

/// Adds [`bounded_fan_out`](FanOutExt::bounded_fan_out) to every [`Stream`].
pub trait FanOutExt: Stream {
    /// Fans this stream out to `workers` concurrent calls of `handler`,
    /// through a bounded queue that sheds by `policy` when it is full.
    ///
    /// Returns the stream of handler outputs, in completion order, and the
    /// [`ShutdownHandle`] that stops the pipeline and collects its
    /// [`Report`](crate::Report). This is [`bounded_fan_out_with`] with
    /// [`FanOutConfig::new(workers, policy)`](FanOutConfig::new): a queue of
    /// [`FanOutConfig::DEFAULT_CAPACITY`] items, room for
    /// [`FanOutConfig::DEFAULT_OUTPUT_CAPACITY`] undelivered results and a
    /// drain timeout of [`FanOutConfig::DEFAULT_DRAIN_TIMEOUT`].
    ///
    /// # How it runs
    ///
    /// The call spawns onto the current Tokio runtime (current-thread or
    /// multi-thread) one intake task, `workers` worker tasks and one
    /// supervisor, and returns at once:
    ///
    /// * The **intake** pulls the input as fast as it yields items, whether
    ///   or not anyone reads the results, and queues each one. When the queue
    ///   holds `capacity` items it never waits: it sheds by `policy`, counts
    ///   the shed item `dropped` and hands it to
    ///   [`on_shed`](FanOutConfig::on_shed) if set. It pulls ready items in
    ///   batches of up to [`FanOutConfig::MAX_INTAKE_BATCH`] (no more than
    ///   the queue has room for, while it has room) and queues each batch
    ///   under one lock. Before pulling into
    ///   a full queue it yields once, if workers were woken or took items
    ///   since its last such yield, so idle workers take items before more
    ///   are shed; otherwise it spends one unit of tokio's cooperative
    ///   budget per batch, yielding at the latest every 128 batches, so an
    ///   always-ready input cannot starve a current-thread runtime.
    /// * Each **worker** takes the oldest queued item, calls `handler` with
    ///   it and awaits the future, so at most `workers` handlers run at once,
    ///   each on its own task (in parallel on a multi-thread runtime). A
    ///   result waits for room in the results buffer; it is never discarded
    ///   while `results` lives, unless an abort begins (by
    ///   [`abort`](ShutdownHandle::abort), a drain deadline running out, or
    ///   both halves dropped): then waiting stops and unread results are
    ///   discarded, so a stalled consumer cannot hold a stop. A panic in
    ///   `handler` or its future is caught: the item counts `failed` and the
    ///   worker takes the next one.
    /// * Memory is bounded whatever the input rate: at most `capacity`
    ///   queued items, `workers` in flight, `output_capacity` undelivered
    ///   results, and up to [`FanOutConfig::MAX_INTAKE_BATCH`] items the
    ///   intake has pulled and is queueing.
    ///
    /// When the input ends, the queued items are processed, the workers
    /// exit, `results` ends, and [`ShutdownHandle::join`] returns a report
    /// with `produced == processed + dropped` (plus `failed` for panics).
    ///
    /// # Dropping either half
    ///
    /// Dropping `results` discards later results and those still buffered;
    /// processing goes on and they count as `processed` and `discarded`.
    /// Dropping the handle detaches the pipeline
    /// while `results` lives. Dropping both aborts it: every task it spawned
    /// ends promptly, and the input stream is dropped.
    ///
    /// # Panics
    ///
    /// Panics at the call, before anything is spawned:
    ///
    /// * if `workers` is 0 (`"bounded_fan_out: workers must be at least 1"`)
    ///   or above [`FanOutConfig::MAX_WORKERS`]
    ///   (`"bounded_fan_out: workers must be at most FanOutConfig::MAX_WORKERS (65536)"`);
    /// * if called outside a Tokio runtime
    ///   (`"bounded_fan_out: must be called from the context of a Tokio runtime"`);
    /// * if the runtime has no time driver, which drain deadlines and handler
    ///   timeouts need (`"bounded_fan_out: the Tokio runtime has no time
    ///   driver; build it with `enable_time()` or `enable_all()`"`).
    ///   `#[tokio::main]` and `#[tokio::test]` enable it; a hand-built
    ///   `runtime::Builder` needs `.enable_time()`. Tokio's own message for
    ///   the missing driver is printed just before this one.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{FanOutExt, ShedPolicy};
    /// use futures::StreamExt;
    ///
    /// #[tokio::main]
    /// async fn main() {
    ///     let source = futures::stream::iter(0..8u64);
    ///     let (results, shutdown) = source.bounded_fan_out(4, ShedPolicy::DropOldest, |x| async move {
    ///         tokio::time::sleep(Duration::from_millis(10)).await; // slow work per item
    ///         x * x
    ///     });
    ///     // Read the results and join the pipeline together (see `join`).
    ///     let (mut squares, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
    ///     squares.sort();
    ///     assert_eq!(squares, [0, 1, 4, 9, 16, 25, 36, 49]);
    ///     // 8 items fit in the default queue of 64: nothing was shed.
    ///     assert_eq!((report.produced, report.processed, report.dropped), (8, 8, 0));
    /// }
    /// ```
    ///
    /// [`bounded_fan_out_with`]: FanOutExt::bounded_fan_out_with
    #[track_caller]
    fn bounded_fan_out<F, Fut>(
        self,
        workers: usize,
        policy: ShedPolicy,
        handler: F,
    ) -> (BoundedFanOut<Fut::Output>, ShutdownHandle)
    where
        Self: Stream<Item: Send + 'static> + Sized + Send + 'static,
        F: Fn(Self::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output: Send + 'static> + Send + 'static,
    {
        assert!(workers > 0, "bounded_fan_out: workers must be at least 1");
        assert!(
            workers <= FanOutConfig::<Self::Item>::MAX_WORKERS,
            "bounded_fan_out: workers must be at most FanOutConfig::MAX_WORKERS (65536)"
        );
        self.bounded_fan_out_with(FanOutConfig::new(workers, policy), handler)
    }

    /// [`bounded_fan_out`](FanOutExt::bounded_fan_out) with every setting
    /// of [`FanOutConfig`]: queue and output capacity, drain timeout, a
    /// hook for shed items, and a parent cancellation token.
    ///
    /// # Panics
    ///
    /// Panics at the call if called outside a Tokio runtime, or on one
    /// without a time driver, with the messages given under
    /// [`bounded_fan_out`](FanOutExt::bounded_fan_out). Invalid sizes are
    /// refused earlier, by the [`FanOutConfig`] methods.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
    /// use futures::StreamExt;
    ///
    /// // Needs tokio's `test-util` feature: paused time, so timings are exact.
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let shed = Arc::new(Mutex::new(Vec::new()));
    /// let log = Arc::clone(&shed);
    /// let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
    ///     .capacity(2)
    ///     .on_shed(move |item| log.lock().unwrap().push(item));
    /// // One burst of 6 ready items against a worker busy 1 ms per item: it
    /// // takes 0, the queue keeps 1 and 2, the rest meet a full queue.
    /// let (results, shutdown) = futures::stream::iter(0..6u32).bounded_fan_out_with(config, |x| async move {
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    ///     x
    /// });
    /// let (out, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
    /// assert_eq!(out, [0, 1, 2]);
    /// assert_eq!(*shed.lock().unwrap(), [3, 4, 5]);
    /// assert_eq!((report.processed, report.dropped), (3, 3));
    /// # }
    /// ```
    #[track_caller]
    fn bounded_fan_out_with<F, Fut, Kind>(
        self,
        config: FanOutConfig<Self::Item, Kind>,
        handler: F,
    ) -> (BoundedFanOut<Fut::Output>, ShutdownHandle)
    where
        Self: Stream<Item: Send + 'static> + Sized + Send + 'static,
        F: Fn(Self::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output: Send + 'static> + Send + 'static,
        Kind: HandlerKind<Fut::Output>,
    {
        launch(
            "bounded_fan_out",
            config.settings,
            Outputs::of::<Kind>(),
            handler,
            Front::Stream(self),
        )
    }
}

impl<S: Stream + ?Sized> FanOutExt for S {}

/// Starts a pipeline fed by producers instead of a `Stream`: returns a
/// [`Feeder`] to push items with, the results stream and the
/// [`ShutdownHandle`].
///
/// Everything else is as for
/// [`bounded_fan_out_with`](crate::FanOutExt::bounded_fan_out_with): the
/// same queue, policy, workers, results, shutdown, report, and every
/// setting of the [`FanOutConfig`] (see its table). Intake ends when every
/// clone of the `Feeder` has been dropped or closed (the report then says
/// [`IntakeEnd::Exhausted`](crate::IntakeEnd::Exhausted)) or at a shutdown
/// or abort ([`IntakeEnd::Stopped`](crate::IntakeEnd::Stopped)); then the
/// queue drains as for an exhausted stream.
///
/// # Panics
///
/// As [`bounded_fan_out`](crate::FanOutExt::bounded_fan_out), with
/// messages that name `feeder`: outside a Tokio runtime
/// (`"feeder: must be called from the context of a Tokio runtime"`), or on
/// one without a time driver.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutConfig, Offer, ShedPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(2);
/// let (feeder, results, shutdown) =
///     backpressure_pipeline::feeder(config, |x: u32| async move { x * 10 });
/// assert!(feeder.offer(1).is_queued());
/// assert!(feeder.offer(2).is_queued());
/// // The queue is full and no worker has run yet: the newest is shed, and
/// // comes back.
/// assert_eq!(feeder.offer(3), Offer::Shed(3));
/// drop(feeder); // the last producer is gone: intake ends
/// let (out, report) = shutdown.join_collect(results).await;
/// assert_eq!(out, [10, 20]);
/// assert_eq!((report.produced, report.processed, report.dropped), (3, 2, 1));
/// # }
/// ```
#[track_caller]
pub fn feeder<Item, F, Fut, Kind>(
    config: FanOutConfig<Item, Kind>,
    handler: F,
) -> (Feeder<Item>, BoundedFanOut<Fut::Output>, ShutdownHandle)
where
    Item: Send + 'static,
    F: Fn(Item) -> Fut + Send + Sync + 'static,
    Fut: Future<Output: Send + 'static> + Send + 'static,
    Kind: HandlerKind<Fut::Output>,
{
    let mut feeder = None;
    let (results, shutdown) = launch(
        "feeder",
        config.settings,
        Outputs::of::<Kind>(),
        handler,
        Front::<NoInput<Item>>::Push(&mut feeder),
    );
    let Some(feeder) = feeder else {
        unreachable!("feeder: launch always builds the push front's handle")
    };
    (feeder, results, shutdown)
}

/// Starts a request/response pipeline: returns a [`Caller`], whose
/// [`call`](Caller::call) sends a request to a worker and resolves to the
/// handler's response (or to [`Rejected`](crate::Rejected) saying why there
/// is none), and the [`ShutdownHandle`].
///
/// The push front of [`feeder`], with each answer going back to its own
/// caller instead of to a results stream (so there is none to read, and
/// `join` never waits for a reader). A call whose caller goes away (its
/// [`Call`](crate::Call) dropped, as a web framework drops a handler whose
/// client disconnected) is withdrawn: taken out of the queue if it is still
/// queued, its handler cancelled at its next await if it is running, so
/// the workers serve callers who still wait.
///
/// # Settings
///
/// Every setting of the [`FanOutConfig`] works as on the push front, with
/// three differences: a call hands what its push sheds back to its caller
/// (`Rejected::Shed` / `Evicted` with the request), so
/// [`on_shed`](FanOutConfig::on_shed) is never called;
/// [`on_cancel`](FanOutConfig::on_cancel) receives the requests that were
/// never started and whose caller is gone (withdrawn from the queue, or
/// abandoned by an abort after their caller left: a caller still waiting
/// gets its request back in `Rejected::Closed` instead); and
/// [`result_order`](FanOutConfig::result_order) and
/// [`output_capacity`](FanOutConfig::output_capacity) do not apply (each
/// caller gets its own answer as soon as it exists).
///
/// # Books
///
/// Each answered call counts `processed` and `delivered`; one whose caller
/// left just as the response was ready, `processed` and `discarded`; a
/// withdrawn one, `cancelled` and [`withdrawn`](crate::Report::withdrawn).
/// Both laws hold in every report.
///
/// # Sizing it for HTTP
///
/// A request that finds `q` requests queued waits about `q × service
/// time ÷ workers` before it starts. With a latency budget `B`, a handler
/// time `S` (its slow end, not its mean) and a margin `M` for the way in and
/// out and for scheduling (a few ms on a loaded machine), keep that wait
/// under `B − S − M`: `capacity ≈ (B − S − M) × workers ÷ S`. With 8
/// workers at 3 ms, a 20 ms budget and a 7 ms margin: `(20 − 3 − 7) × 8 ÷
/// 3 ≈ 26`. Then set [`max_queue_age`](FanOutConfig::max_queue_age) to
/// the same `B − S − M` (10 ms here): when handlers run slower than planned
/// the queue waits longer than its size says, and a request that waited
/// past the age is answered `Rejected::Expired` instead of being served
/// after its client gave up. Under overload the workers then serve a short
/// queue of fresh requests whose answers still arrive in time
/// (`BENCHMARKS.md`: 2,481 timely answers/s of a possible 2,500, against
/// 372 without the age and 289 for tower's `buffer`). Answer the overload
/// rejections ([`Rejected::is_overload`](crate::Rejected::is_overload))
/// with 503 and a `Retry-After` of about one queue's wait, rounded up to the
/// header's whole seconds (1).
///
/// # Panics
///
/// As [`bounded_fan_out`](crate::FanOutExt::bounded_fan_out), with
/// messages that name `caller`: outside a Tokio runtime
/// (`"caller: must be called from the context of a Tokio runtime"`), or on
/// one without a time driver.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use backpressure_pipeline::{FanOutConfig, RejectReason, ShedPolicy};
///
/// // Needs tokio's `test-util` feature: paused time, so timings are exact.
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
///     .capacity(4)
///     .max_queue_age(Duration::from_millis(25));
/// let (caller, shutdown) = backpressure_pipeline::caller(config, |ms: u64| async move {
///     tokio::time::sleep(Duration::from_millis(ms)).await;
///     ms
/// });
/// // One worker, 10 ms per request: the fourth would wait 30 ms.
/// let calls: Vec<_> = (0..4).map(|_| tokio::spawn(caller.call(10))).collect();
/// let mut answers = Vec::new();
/// for call in calls {
///     answers.push(call.await.unwrap().map_err(|rejected| rejected.reason()));
/// }
/// assert_eq!(answers, [Ok(10), Ok(10), Ok(10), Err(RejectReason::Expired)]);
/// drop(caller);
/// let report = shutdown.join().await;
/// assert_eq!((report.processed, report.delivered, report.expired), (3, 3, 1));
/// assert!(report.is_conserved());
/// # }
/// ```
#[track_caller]
pub fn caller<Req, Resp, F, Fut, Kind>(
    config: FanOutConfig<Req, Kind>,
    handler: F,
) -> (Caller<Req, Resp>, ShutdownHandle)
where
    Req: Send + 'static,
    Resp: Send + 'static,
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
    Kind: HandlerKind<Resp>,
{
    let mut feeder = None;
    let (results, shutdown) = launch(
        "caller",
        settings_for_calls(config.settings),
        call_outputs::<Req, Resp, Kind>(),
        call_handler(handler),
        Front::<NoInput<_>>::Push(&mut feeder),
    );
    let Some(feeder) = feeder else {
        unreachable!("caller: launch always builds the push front's handle")
    };
    (Caller::new(feeder, results), shutdown)
}
