use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::ShedPolicy;
use crate::overload::{OverloadEvent, OverloadHook};

/// A hook that receives items by value (shared by the intake and the handle).
pub(crate) type ItemHook<Item> = Arc<dyn Fn(Item) + Send + Sync>;

/// Settings for [`FanOutExt::bounded_fan_out_with`].
///
/// Built with [`FanOutConfig::new`] from the two choices every pipeline must
/// make (worker count and [`ShedPolicy`]), then adjusted with the builder
/// methods. Every size is a count of items; every time is a [`Duration`].
///
/// | setting | default |
/// |---|---|
/// | [`capacity`](Self::capacity) | [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) = 64 queued items |
/// | [`output_capacity`](Self::output_capacity) | [`DEFAULT_OUTPUT_CAPACITY`](Self::DEFAULT_OUTPUT_CAPACITY) = 64 undelivered results |
/// | [`drain_timeout`](Self::drain_timeout) | [`DEFAULT_DRAIN_TIMEOUT`](Self::DEFAULT_DRAIN_TIMEOUT) = 5 s |
/// | [`on_shed`](Self::on_shed) | none: shed items are dropped |
/// | [`cancel_token`](Self::cancel_token) | none: a fresh, parentless token |
/// | [`ordered`](Self::ordered) | `false`: results in completion order |
/// | [`on_cancel`](Self::on_cancel) | none: abandoned items are dropped |
/// | [`on_overload`](Self::on_overload) | none |
/// | [`overload_quiet_period`](Self::overload_quiet_period) | [`DEFAULT_OVERLOAD_QUIET_PERIOD`](Self::DEFAULT_OVERLOAD_QUIET_PERIOD) = 1 s |
/// | [`handler_timeout`](Self::handler_timeout) | none: a handler may run as long as it likes |
/// | [`latest_only`](Self::latest_only) | `false`: results wait in a FIFO buffer |
/// | [`max_queue_age`](Self::max_queue_age) | none: an item may wait in the queue as long as it takes |
/// | [`settle_capacity`](Self::settle_capacity) | [`DEFAULT_SETTLE_CAPACITY`](Self::DEFAULT_SETTLE_CAPACITY) = 1024 unsettled items (settlement only) |
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
///     .capacity(8)
///     .output_capacity(4)
///     .drain_timeout(Duration::from_secs(5))
///     .on_shed(|item: u32| eprintln!("shed {item}"));
/// let (results, shutdown) =
///     futures::stream::iter(0..4u32).bounded_fan_out_with(config, |x| async move { x * 10 });
/// let (mut out, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
/// out.sort();
/// assert_eq!(out, [0, 10, 20, 30]);
/// assert_eq!(report.processed, 4);
/// # }
/// ```
///
/// [`FanOutExt::bounded_fan_out_with`]: crate::FanOutExt::bounded_fan_out_with
pub struct FanOutConfig<Item> {
    pub(crate) workers: usize,
    pub(crate) policy: ShedPolicy,
    pub(crate) capacity: usize,
    pub(crate) output_capacity: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) on_shed: Option<ItemHook<Item>>,
    pub(crate) cancel_token: Option<CancellationToken>,
    pub(crate) ordered: bool,
    pub(crate) on_cancel: Option<ItemHook<Item>>,
    pub(crate) on_overload: Option<OverloadHook>,
    pub(crate) overload_quiet_period: Duration,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) latest_only: bool,
    pub(crate) max_queue_age: Option<Duration>,
    pub(crate) settle_capacity: usize,
}

impl<Item> FanOutConfig<Item> {
    /// Default [`capacity`](Self::capacity): 64 queued items.
    ///
    /// Large enough to absorb a burst of a few dozen items without shedding,
    /// small enough that under [`ShedPolicy::DropOldest`] an item a worker
    /// picks up is at most 64 + 32 items behind the newest one pulled from
    /// the input (the queue, plus the batch of up to 32 ready items the
    /// intake may hold while queueing). Items that arrive while its handler
    /// runs age it further; only fewer or faster workers help there.
    pub const DEFAULT_CAPACITY: usize = 64;

    /// The largest [`capacity`](Self::capacity) and
    /// [`output_capacity`](Self::output_capacity): `usize::MAX >> 3`, the
    /// most permits a `tokio::sync::Semaphore` holds (the push front waits
    /// for room, and ordered output for its window, on one). Either is a
    /// bound, not a reservation: memory grows with what is actually queued.
    pub const MAX_CAPACITY: usize = tokio::sync::Semaphore::MAX_PERMITS;

    /// The largest worker count: 65,536.
    ///
    /// Every worker is a task spawned at the call, with its own counters
    /// (128 bytes, padded to a cache line pair so workers never share one)
    /// and its future (a few hundred bytes plus the handler's); at this
    /// bound that is tens of MiB before any item arrives. Past it, the
    /// wanted concurrency is better met by fewer workers whose handlers
    /// each drive many I/O operations.
    pub const MAX_WORKERS: usize = 1 << 16;

    /// Default [`output_capacity`](Self::output_capacity): 64 undelivered results.
    pub const DEFAULT_OUTPUT_CAPACITY: usize = 64;

    /// Default [`drain_timeout`](Self::drain_timeout): 5 seconds.
    ///
    /// A pipeline is usually drained on `SIGTERM`, inside the grace period
    /// its orchestrator allows before `SIGKILL`: 10 s for `docker stop` and
    /// Docker Compose (the `--timeout` default in Docker's CLI reference), 30 s
    /// for a Kubernetes pod (`terminationGracePeriodSeconds`, Kubernetes pod
    /// lifecycle docs), which also has to cover `preStop` hooks and the rest
    /// of the service's shutdown. A drain that uses the whole grace period is
    /// killed before it reports, so the default takes half of the shortest
    /// common one, leaving the other half for the report and everything the
    /// service does after it. Set a longer one when the grace period allows.
    pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

    /// Default [`settle_capacity`](Self::settle_capacity): 1024 unsettled
    /// items, room for a full default queue, the workers and several
    /// hundred records on their way to the broker.
    pub const DEFAULT_SETTLE_CAPACITY: usize = 1024;

    /// Default [`overload_quiet_period`](Self::overload_quiet_period): 1
    /// second without shedding ends an overload episode.
    pub const DEFAULT_OVERLOAD_QUIET_PERIOD: Duration = Duration::from_secs(1);

    /// Settings for `workers` concurrent handlers shedding by `policy`, with
    /// every other setting at its default.
    ///
    /// # Panics
    ///
    /// Panics if `workers` is 0, with the message
    /// `"FanOutConfig::new: workers must be at least 1"`, or above
    /// [`MAX_WORKERS`](Self::MAX_WORKERS), with the message
    /// `"FanOutConfig::new: workers must be at most FanOutConfig::MAX_WORKERS (65536)"`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
    ///
    /// let config = FanOutConfig::<u64>::new(4, ShedPolicy::DropOldest);
    /// assert!(format!("{config:?}").contains("capacity: 64"));
    /// ```
    #[track_caller]
    pub fn new(workers: usize, policy: ShedPolicy) -> Self {
        assert!(workers > 0, "FanOutConfig::new: workers must be at least 1");
        assert!(
            workers <= Self::MAX_WORKERS,
            "FanOutConfig::new: workers must be at most FanOutConfig::MAX_WORKERS (65536)"
        );
        FanOutConfig {
            workers,
            policy,
            capacity: Self::DEFAULT_CAPACITY,
            output_capacity: Self::DEFAULT_OUTPUT_CAPACITY,
            drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
            on_shed: None,
            cancel_token: None,
            ordered: false,
            on_cancel: None,
            on_overload: None,
            overload_quiet_period: Self::DEFAULT_OVERLOAD_QUIET_PERIOD,
            handler_timeout: None,
            latest_only: false,
            max_queue_age: None,
            settle_capacity: Self::DEFAULT_SETTLE_CAPACITY,
        }
    }

    /// Sets how many items may wait in the queue for a worker; past it the
    /// policy sheds. An item a worker has taken no longer occupies a slot.
    ///
    /// While the queue has room, the intake pulls no more than fits, and
    /// before it pulls into a full queue it yields once to the workers it
    /// woke, so idle workers widen what a ready burst fits into: with
    /// `capacity(4)`, 4 idle workers and 6 items ready at once, 4 are
    /// queued, the workers take them, and the other 2 take their slots;
    /// nothing is shed. A burst is shed only when it meets a full queue
    /// while the workers are busy (on a multi-thread runtime, or a
    /// current-thread one once the woken workers have run). To absorb
    /// bursts larger than the workers can take, size the capacity to the
    /// burst, or use [`ShedPolicy::Backpressure`].
    ///
    /// # Panics
    ///
    /// Panics if `capacity` is 0, with the message
    /// `"FanOutConfig::capacity: capacity must be at least 1"`, or above
    /// [`MAX_CAPACITY`](Self::MAX_CAPACITY), with the message
    /// `"FanOutConfig::capacity: capacity must be at most FanOutConfig::MAX_CAPACITY"`.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
    ///
    /// let config = FanOutConfig::<u64>::new(1, ShedPolicy::DropNewest).capacity(3);
    /// assert!(format!("{config:?}").contains("capacity: 3"));
    /// ```
    #[track_caller]
    pub fn capacity(mut self, capacity: usize) -> Self {
        assert!(
            capacity > 0,
            "FanOutConfig::capacity: capacity must be at least 1"
        );
        assert!(
            capacity <= Self::MAX_CAPACITY,
            "FanOutConfig::capacity: capacity must be at most FanOutConfig::MAX_CAPACITY"
        );
        self.capacity = capacity;
        self
    }

    /// Sets how many finished results may wait for the consumer of
    /// `results`. When it is full, workers wait to hand over their result
    /// (they never discard one), and intake goes on shedding by policy.
    ///
    /// # Panics
    ///
    /// Panics if `output_capacity` is 0, with the message
    /// `"FanOutConfig::output_capacity: output_capacity must be at least 1"`,
    /// or above [`MAX_CAPACITY`](Self::MAX_CAPACITY) (the message says
    /// `"at most FanOutConfig::MAX_CAPACITY"`).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
    ///
    /// let config = FanOutConfig::<u64>::new(1, ShedPolicy::DropNewest).output_capacity(1);
    /// # let _ = config;
    /// ```
    #[track_caller]
    pub fn output_capacity(mut self, output_capacity: usize) -> Self {
        assert!(
            output_capacity > 0,
            "FanOutConfig::output_capacity: output_capacity must be at least 1"
        );
        assert!(
            output_capacity <= Self::MAX_CAPACITY,
            "FanOutConfig::output_capacity: output_capacity must be at most FanOutConfig::MAX_CAPACITY"
        );
        self.output_capacity = output_capacity;
        self
    }

    /// Sets how long a graceful [`shutdown`] (or a cancelled parent token)
    /// waits for queued and in-flight items, and for the consumer to read
    /// their results, before aborting the rest: when it runs out, in-flight
    /// handlers are cut off and undelivered results discarded, so a
    /// consumer that stopped reading cannot hold the shutdown. The clock
    /// starts at the shutdown request, also when the input had already
    /// ended. `Duration::ZERO` aborts at once what is not already finished;
    /// a timeout past the clock's range (`Duration::MAX`) never aborts.
    ///
    /// The deadline holds whatever the handlers do: each worker checks it
    /// before it starts an item, so no queued item is started once it has
    /// passed, even while handlers block every runtime thread and the
    /// pipeline's timer cannot run; the items not started are counted
    /// `cancelled` and handed to [`on_cancel`](Self::on_cancel). A handler
    /// that blocks its thread (a synchronous call, CPU-bound work) cannot
    /// be cut off mid-run, so it delays the stop by at most its own run.
    /// Run such work with [`tokio::task::spawn_blocking`] inside the
    /// handler, as below: the handler then awaits it, an abort cancels that
    /// await at once (the blocking closure runs on to its end on tokio's
    /// blocking pool and its output is dropped), and the runtime's threads
    /// stay free for the intake, the timers and the reader.
    ///
    /// [`shutdown`]: crate::ShutdownHandle::shutdown
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
    ///
    /// # #[tokio::main]
    /// # async fn main() {
    /// let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
    ///     .drain_timeout(Duration::from_millis(250));
    /// let (results, shutdown) = futures::stream::iter(0..4u64).bounded_fan_out_with(config, |n| async move {
    ///     // Blocking work off the runtime's threads: an abort need not wait for it.
    ///     tokio::task::spawn_blocking(move || n * n).await.expect("no panic")
    /// });
    /// let (mut squares, report) = shutdown.join_collect(results).await;
    /// squares.sort();
    /// assert_eq!(squares, [0, 1, 4, 9]);
    /// assert!(report.is_conserved());
    /// # }
    /// ```
    pub fn drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// Calls `hook` once with each item the policy sheds, instead of dropping
    /// it silently.
    ///
    /// The hook runs on the intake task, outside every lock, before the next
    /// input item is pulled: keep it short (count, log with a rate limit,
    /// forward to a dead-letter channel with `try_send`). A panic in it is
    /// caught; the item stays counted [`dropped`](crate::Report::dropped)
    /// and intake goes on.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    /// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
    ///
    /// let shed = Arc::new(AtomicU64::new(0));
    /// let counter = Arc::clone(&shed);
    /// let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
    ///     .on_shed(move |_item: String| { counter.fetch_add(1, Ordering::Relaxed); });
    /// # let _ = config;
    /// ```
    pub fn on_shed<F>(mut self, hook: F) -> Self
    where
        F: Fn(Item) + Send + Sync + 'static,
    {
        self.on_shed = Some(Arc::new(hook));
        self
    }

    /// Makes the pipeline's cancellation token a child of `parent`:
    /// cancelling `parent` (or any of its ancestors) shuts the pipeline down
    /// gracefully, exactly like [`ShutdownHandle::shutdown`]. The pipeline
    /// never cancels `parent`.
    ///
    /// [`ShutdownHandle::shutdown`]: crate::ShutdownHandle::shutdown
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let service = CancellationToken::new();
    /// let config = FanOutConfig::<u64>::new(1, ShedPolicy::DropNewest)
    ///     .cancel_token(service.clone());
    /// # let _ = config;
    /// ```
    pub fn cancel_token(mut self, parent: CancellationToken) -> Self {
        self.cancel_token = Some(parent);
        self
    }

    /// Delivers results in input order instead of completion order, as
    /// futures' `buffered` and Akka's `mapAsync` do.
    ///
    /// Items that never produce a result (shed, failed, timed out,
    /// cancelled) are skipped. A slow item holds back the results of items
    /// taken after it, and so do workers: at most `workers + output_capacity`
    /// items are between being taken and being delivered, so the reorder
    /// memory stays bounded by that many results; past it, workers wait
    /// (and intake goes on shedding by policy). An abort (or a drain
    /// deadline running out) cuts off the item holding the line, and the
    /// finished results waiting behind it are discarded like any unread
    /// result.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
    /// use futures::StreamExt;
    ///
    /// // Needs tokio's `test-util` feature: paused time, so timers fire at once and timings are exact.
    /// #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// async fn main() {
    ///     let config = FanOutConfig::new(3, ShedPolicy::DropNewest).ordered(true);
    ///     let (results, shutdown) = futures::stream::iter([30u64, 10, 20])
    ///         .bounded_fan_out_with(config, |ms| async move {
    ///             tokio::time::sleep(Duration::from_millis(ms)).await;
    ///             ms
    ///         });
    ///     let (out, _) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
    ///     assert_eq!(out, [30, 10, 20]); // input order, not completion order
    /// }
    /// ```
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// Hands back every accepted item that a shutdown abandoned before any
    /// worker took it: still queued when [`abort`] ran or the drain timeout
    /// expired, or pulled by intake just as the queue was abandoned. Modelled
    /// on Java's `ExecutorService::shutdownNow`, which returns the tasks that
    /// never ran.
    ///
    /// The hook runs once per item, outside every lock, on whichever task
    /// aborted the pipeline (the caller of [`abort`], the pipeline's own
    /// supervisor at the drain deadline, or the one dropping the last half).
    /// The items stay counted [`cancelled`](crate::Report::cancelled). Items
    /// already in flight live inside their handler's future and cannot be
    /// handed back. A panic in the hook is caught.
    ///
    /// [`abort`]: crate::ShutdownHandle::abort
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
    ///
    /// // Needs tokio's `test-util` feature: paused time, so timers fire at once and timings are exact.
    /// #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// async fn main() {
    ///     let returned = Arc::new(Mutex::new(Vec::new()));
    ///     let sink = Arc::clone(&returned);
    ///     let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
    ///         .on_cancel(move |item: u32| sink.lock().unwrap().push(item));
    ///     let (results, shutdown) = futures::stream::iter(0..4u32)
    ///         .bounded_fan_out_with(config, |_| std::future::pending::<()>());
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await; // all idle by then
    ///     assert_eq!(shutdown.stats().in_flight, 1);
    ///     shutdown.abort();
    ///     assert_eq!(*returned.lock().unwrap(), [1, 2, 3]); // item 0 was in flight
    ///     drop(results);
    ///     assert_eq!(shutdown.join().await.cancelled, 4);
    /// }
    /// ```
    pub fn on_cancel<F>(mut self, hook: F) -> Self
    where
        F: Fn(Item) + Send + Sync + 'static,
    {
        self.on_cancel = Some(Arc::new(hook));
        self
    }

    /// Calls `hook` once when shedding starts and once when it stops: an
    /// edge-triggered overload alarm, one line per episode instead of one per
    /// shed item (see [`OverloadEvent`]).
    ///
    /// An episode ends after [`overload_quiet_period`](Self::overload_quiet_period)
    /// without shedding, or when intake stops. The hook runs on the intake
    /// task, outside every lock; a panic in it is caught.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, OverloadEvent, ShedPolicy};
    /// use futures::StreamExt;
    ///
    /// // Needs tokio's `test-util` feature: paused time, so timers fire at once and timings are exact.
    /// #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// async fn main() {
    ///     let events = Arc::new(Mutex::new(Vec::new()));
    ///     let log = Arc::clone(&events);
    ///     let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
    ///         .capacity(1)
    ///         .on_overload(move |event| log.lock().unwrap().push(event));
    ///     // A burst of 10 against a worker busy 1 ms per item: it takes one,
    ///     // one is queued, eight are shed in one episode.
    ///     let (results, shutdown) = futures::stream::iter(0..10u32).bounded_fan_out_with(config, |x| async move {
    ///         tokio::time::sleep(Duration::from_millis(1)).await;
    ///         x
    ///     });
    ///     let (_, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
    ///     assert_eq!(report.dropped, 8);
    ///     assert_eq!(
    ///         *events.lock().unwrap(),
    ///         [OverloadEvent::Started, OverloadEvent::Ended { shed: 8, duration: Duration::ZERO }]
    ///     );
    /// }
    /// ```
    pub fn on_overload<F>(mut self, hook: F) -> Self
    where
        F: Fn(OverloadEvent) + Send + Sync + 'static,
    {
        self.on_overload = Some(Arc::new(hook));
        self
    }

    /// Sets how long intake must go without shedding before an overload
    /// episode is declared over ([`on_overload`](Self::on_overload)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
    ///
    /// let config = FanOutConfig::<u8>::new(1, ShedPolicy::DropOldest)
    ///     .overload_quiet_period(Duration::from_millis(200));
    /// # let _ = config;
    /// ```
    pub fn overload_quiet_period(mut self, quiet: Duration) -> Self {
        self.overload_quiet_period = quiet;
        self
    }

    /// Cancels a handler that has run longer than `timeout` (measured from
    /// the call to the handler) and counts its item
    /// [`timed_out`](crate::Report::timed_out); the worker goes on with the
    /// next item. The law becomes
    /// `produced == processed + dropped + failed + timed_out + cancelled`.
    /// As with tower's `Timeout`, the handler is cancelled at its next
    /// suspension point; a handler that never yields cannot be cut off, and
    /// one that is ready when polled completes even at its deadline.
    /// `Duration::ZERO` times out every handler that is pending on its first
    /// poll (the deadline has passed by then, so no timer is armed for it);
    /// a timeout past the clock's range (`Duration::MAX`) never fires.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
    /// use futures::StreamExt;
    ///
    /// // Needs tokio's `test-util` feature: paused time, so timers fire at once and timings are exact.
    /// #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// async fn main() {
    ///     let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
    ///         .handler_timeout(Duration::from_millis(50));
    ///     let (results, shutdown) = futures::stream::iter([10u64, 100, 20])
    ///         .bounded_fan_out_with(config, |ms| async move {
    ///             tokio::time::sleep(Duration::from_millis(ms)).await;
    ///             ms
    ///         });
    ///     let (mut out, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
    ///     out.sort();
    ///     assert_eq!(out, [10, 20]);
    ///     assert_eq!((report.processed, report.timed_out), (2, 1));
    ///     assert!(report.is_conserved());
    /// }
    /// ```
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.handler_timeout = Some(timeout);
        self
    }

    /// Latest-only output for state streams (positions, sensor readings,
    /// prices): `results` holds one undelivered result, and a newer one
    /// replaces it. The replaced result counts
    /// [`discarded`](crate::Report::discarded); workers never wait for the
    /// reader, so a slow consumer always reads the freshest result, as with
    /// tokio's `watch`, Rx's `onBackpressureLatest` or Akka's `conflate`.
    /// [`output_capacity`](Self::output_capacity) is unused in this mode.
    ///
    /// **Freshness end to end.** With the default FIFO output a result can
    /// wait behind `output_capacity` others, so under
    /// [`ShedPolicy::DropOldest`] and a consumer that takes `P` per result
    /// the result it reads may be up to about `output_capacity × P` older
    /// than its handler's end (plus the queue's wait; see
    /// [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY)): the policy alone does
    /// not keep results fresh. With `latest_only` the result read was
    /// produced at most one consumer period `P` earlier, plus the handler's
    /// own time and the item's wait in the queue (small while workers keep
    /// up). `BENCHMARKS.md` has the measured ages.
    ///
    /// # Panics
    ///
    /// Starting a pipeline with both `latest_only` and
    /// [`ordered`](Self::ordered) panics at the call
    /// (`"bounded_fan_out: `ordered` and `latest_only` cannot be combined"`):
    /// a replaced result leaves no order to keep.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
    /// use futures::StreamExt;
    ///
    /// // Needs tokio's `test-util` feature: paused time, so timers fire at once and timings are exact.
    /// #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// async fn main() {
    ///     let config = FanOutConfig::new(1, ShedPolicy::DropOldest).latest_only(true);
    ///     let (mut results, shutdown) =
    ///         futures::stream::iter(0..5u32).bounded_fan_out_with(config, |x| async move { x });
    ///     // A slow reader: by the time it looks, only the newest result is left.
    ///     tokio::time::sleep(Duration::from_millis(10)).await;
    ///     assert_eq!(results.next().await, Some(4));
    ///     assert_eq!(results.next().await, None);
    ///     let report = shutdown.join().await;
    ///     assert_eq!((report.processed, report.delivered, report.discarded), (5, 1, 4));
    /// }
    /// ```
    pub fn latest_only(mut self, latest_only: bool) -> Self {
        self.latest_only = latest_only;
        self
    }

    /// Sheds an item that has waited in the queue longer than `age` when a
    /// worker would take it: the handler is never called, and the item
    /// counts [`expired`](crate::Report::expired), its own outcome in the
    /// conservation law (`produced == processed + dropped + failed +
    /// timed_out + expired + cancelled`). The worker takes the next item at
    /// once. With settlement, an expired item is settled as
    /// [`Outcome::Expired`](crate::Outcome::Expired).
    ///
    /// For a broker consumer, set it below the broker's claim threshold
    /// (Redis `XAUTOCLAIM` min-idle time, JetStream `ack_wait`), minus the
    /// handler's worst time: a message that waited longer would be claimed
    /// by a peer and handled twice. The age is measured from the moment the
    /// item was queued, once per batch the intake queues.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
    /// use futures::StreamExt;
    ///
    /// // Needs tokio's `test-util` feature: paused time, so timers fire at once and timings are exact.
    /// #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// async fn main() {
    ///     // One worker, 100 ms per item, 4 items queued at once: the fourth
    ///     // would start after 300 ms in the queue, past its 250 ms limit.
    ///     let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
    ///         .max_queue_age(Duration::from_millis(250));
    ///     let (results, shutdown) = futures::stream::iter(0..4u32)
    ///         .bounded_fan_out_with(config, |x| async move {
    ///             tokio::time::sleep(Duration::from_millis(100)).await;
    ///             x
    ///         });
    ///     let (out, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
    ///     assert_eq!(out, [0, 1, 2]);
    ///     assert_eq!((report.processed, report.expired), (3, 1));
    ///     assert!(report.is_conserved());
    /// }
    /// ```
    pub fn max_queue_age(mut self, age: Duration) -> Self {
        self.max_queue_age = Some(age);
        self
    }

    /// With [`bounded_fan_out_settled`](crate::FanOutExt::bounded_fan_out_settled):
    /// the most items that may be unsettled at once (queued, in flight, or
    /// with a settlement record not yet read). This bounds the records'
    /// memory; once that many are unsettled, intake waits for the settler
    /// before it pulls more (the input keeps its items). Keep it well above
    /// `capacity + workers`, or the queue cannot fill and shedding starts
    /// late. Unused without settlement.
    ///
    /// # Panics
    ///
    /// Panics if `settle_capacity` is 0
    /// (`"FanOutConfig::settle_capacity: settle_capacity must be at least 1"`)
    /// or above [`MAX_CAPACITY`](Self::MAX_CAPACITY).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
    ///
    /// let config = FanOutConfig::<u64>::new(4, ShedPolicy::DropNewest).settle_capacity(4096);
    /// assert!(format!("{config:?}").contains("settle_capacity: 4096"));
    /// ```
    #[track_caller]
    pub fn settle_capacity(mut self, settle_capacity: usize) -> Self {
        assert!(
            settle_capacity > 0,
            "FanOutConfig::settle_capacity: settle_capacity must be at least 1"
        );
        assert!(
            settle_capacity <= Self::MAX_CAPACITY,
            "FanOutConfig::settle_capacity: settle_capacity must be at most FanOutConfig::MAX_CAPACITY"
        );
        self.settle_capacity = settle_capacity;
        self
    }
}

impl<Item> Clone for FanOutConfig<Item> {
    fn clone(&self) -> Self {
        FanOutConfig {
            workers: self.workers,
            policy: self.policy,
            capacity: self.capacity,
            output_capacity: self.output_capacity,
            drain_timeout: self.drain_timeout,
            on_shed: self.on_shed.clone(),
            cancel_token: self.cancel_token.clone(),
            ordered: self.ordered,
            on_cancel: self.on_cancel.clone(),
            on_overload: self.on_overload.clone(),
            overload_quiet_period: self.overload_quiet_period,
            handler_timeout: self.handler_timeout,
            latest_only: self.latest_only,
            max_queue_age: self.max_queue_age,
            settle_capacity: self.settle_capacity,
        }
    }
}

impl<Item> fmt::Debug for FanOutConfig<Item> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanOutConfig")
            .field("workers", &self.workers)
            .field("policy", &self.policy)
            .field("capacity", &self.capacity)
            .field("output_capacity", &self.output_capacity)
            .field("drain_timeout", &self.drain_timeout)
            .field("on_shed", &self.on_shed.is_some())
            .field("cancel_token", &self.cancel_token.is_some())
            .field("ordered", &self.ordered)
            .field("on_cancel", &self.on_cancel.is_some())
            .field("on_overload", &self.on_overload.is_some())
            .field("overload_quiet_period", &self.overload_quiet_period)
            .field("handler_timeout", &self.handler_timeout)
            .field("latest_only", &self.latest_only)
            .field("max_queue_age", &self.max_queue_age)
            .field("settle_capacity", &self.settle_capacity)
            .finish()
    }
}
