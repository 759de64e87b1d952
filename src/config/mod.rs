//! The configuration stage: every setting of a pipeline, honoured by every
//! front.
//!
//! * `mod.rs`: [`FanOutConfig`], its sizes and times.
//! * `hooks`: the hooks for shed, abandoned and overload events.
//! * `order`: [`ResultOrder`], the one choice of how results are read.
//! * `fallible`: marking a handler fallible ([`Fallible`]).
//! * `settle`: settlement ([`FanOutConfig::settle_by`]).
//! * `policy`: [`ShedPolicy`].

mod fallible;
mod hooks;
mod keyed;
mod order;
mod policy;
mod settle;

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::front::OverloadHook;
use crate::settle::Settle;

pub use fallible::{Fallible, HandlerKind, Plain};
pub(crate) use keyed::Keying;
pub use order::ResultOrder;
pub use policy::ShedPolicy;

/// A hook that receives items by value.
pub(crate) type ItemHook<Item> = Arc<dyn Fn(Item) + Send + Sync>;

/// Settings for a pipeline: [`FanOutExt::bounded_fan_out_with`] for a
/// stream, [`feeder`](crate::feeder) for producers that push.
///
/// Built with [`FanOutConfig::new`] from the two choices every pipeline must
/// make (worker count and [`ShedPolicy`]), then adjusted with the builder
/// methods. Every size is a count of items; every time is a [`Duration`].
///
/// | setting | default | stream front | push front | call front ([`caller`](crate::caller)) |
/// |---|---|---|---|---|
/// | [`capacity`](Self::capacity) | [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) = 64 queued items | yes | yes | yes |
/// | [`output_capacity`](Self::output_capacity) | [`DEFAULT_OUTPUT_CAPACITY`](Self::DEFAULT_OUTPUT_CAPACITY) = 64 undelivered results | yes | yes | no: each answer goes to its caller |
/// | [`result_order`](Self::result_order) | [`ResultOrder::Completion`] | yes | yes | no: each caller gets its answer when it exists |
/// | [`drain_timeout`](Self::drain_timeout) | [`DEFAULT_DRAIN_TIMEOUT`](Self::DEFAULT_DRAIN_TIMEOUT) = 5 s | yes | yes | yes |
/// | [`cancel_token`](Self::cancel_token) | none: a fresh, parentless token | yes | yes | yes |
/// | [`handler_timeout`](Self::handler_timeout) | none: a handler may run as long as it likes | yes | yes | yes (`Rejected::TimedOut`) |
/// | [`max_queue_age`](Self::max_queue_age) | none: an item may wait as long as it takes | yes | yes | yes (`Rejected::Expired`) |
/// | [`fallible`](Self::fallible) | off: outputs are not inspected | yes | yes | yes |
/// | [`on_shed`](Self::on_shed) | none: shed items are dropped | every shed item | items shed through the `Sink` (an offer hands them back instead) | never: a call hands what it sheds back in `Rejected` |
/// | [`on_cancel`](Self::on_cancel) | none: abandoned items are dropped | yes | yes | requests never started whose caller is gone (withdrawn, or abandoned after it left) |
/// | [`on_overload`](Self::on_overload) | none | yes | yes | yes |
/// | [`overload_quiet_period`](Self::overload_quiet_period) | [`DEFAULT_OVERLOAD_QUIET_PERIOD`](Self::DEFAULT_OVERLOAD_QUIET_PERIOD) = 1 s | yes | yes | yes |
/// | [`settle_by`](Self::settle_by) | none: no settlement records | yes (intake waits for credits) | yes (an offer answers `Full` without a credit; `send` and the `Sink`'s `poll_ready` wait) | yes (a call waits for a credit) |
/// | [`settle_capacity`](Self::settle_capacity) | [`DEFAULT_SETTLE_CAPACITY`](Self::DEFAULT_SETTLE_CAPACITY) = 1024 unsettled items | yes | yes | yes |
/// | [`key_by`](Self::key_by) | none: one FIFO for every item | yes | yes | yes (a withdrawn call leaves its key's queue) |
/// | [`per_key_capacity`](Self::per_key_capacity) | no limit beyond `capacity` (keyed only) | yes | yes | yes |
/// | [`name`](Self::name) | [`DEFAULT_NAME`](Self::DEFAULT_NAME) = `"default"` | yes | yes | yes |
/// | input hand-back | none | wrap the input with [`hand_back`](crate::hand_back) | not needed: producers keep what they did not push | not needed: rejections hand the request back |
///
/// The push front is [`feeder`](crate::feeder)'s: `offer`, `send` and the
/// [`Feeder`](crate::Feeder) as a `futures::Sink`. Every cell marked "yes"
/// has an exact-value test on that front.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
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
/// let (mut out, report) = shutdown.join_collect(results).await;
/// out.sort();
/// assert_eq!(out, [0, 10, 20, 30]);
/// assert_eq!(report.processed, 4);
/// # }
/// ```
///
/// [`FanOutExt::bounded_fan_out_with`]: crate::FanOutExt::bounded_fan_out_with
pub struct FanOutConfig<Item, Kind = Plain> {
    pub(crate) settings: Settings<Item>,
    /// The handler kind: a type, so a fallible configuration with a handler
    /// that returns no `Result` does not compile.
    kind: PhantomData<fn() -> Kind>,
}

/// Every setting, whatever the handler kind.
pub(crate) struct Settings<Item> {
    /// The `pipeline` label of its metrics and field of its span.
    pub(crate) name: Cow<'static, str>,
    pub(crate) sizes: Sizes,
    pub(crate) timing: Timing,
    pub(crate) hooks: ConfigHooks<Item>,
    pub(crate) cancel_token: Option<CancellationToken>,
    pub(crate) order: ResultOrder,
    pub(crate) settle: Option<Settle<Item>>,
    /// Keyed pipelines: the caller's key function.
    pub(crate) keying: Option<Arc<dyn Keying<Item>>>,
}

impl<Item> Clone for Settings<Item> {
    fn clone(&self) -> Self {
        Settings {
            name: self.name.clone(),
            sizes: self.sizes,
            timing: self.timing,
            hooks: self.hooks.clone(),
            cancel_token: self.cancel_token.clone(),
            order: self.order,
            settle: self.settle.clone(),
            keying: self.keying.clone(),
        }
    }
}

/// A count setting checked against its bounds, with the documented message.
#[track_caller]
fn check_count(name: &str, value: usize) -> usize {
    assert!(value > 0, "FanOutConfig::{name}: {name} must be at least 1");
    assert!(
        value <= MAX_CAPACITY,
        "FanOutConfig::{name}: {name} must be at most FanOutConfig::MAX_CAPACITY"
    );
    value
}

/// See [`FanOutConfig::MAX_CAPACITY`].
const MAX_CAPACITY: usize = tokio::sync::Semaphore::MAX_PERMITS;

/// The counts of a configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizes {
    pub(crate) workers: usize,
    pub(crate) policy: ShedPolicy,
    pub(crate) capacity: usize,
    pub(crate) output_capacity: usize,
    pub(crate) settle_capacity: usize,
    /// Keyed pipelines: the most items one key may have queued
    /// (`usize::MAX`: no limit beyond `capacity`).
    pub(crate) per_key_capacity: usize,
}

/// The times of a configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub(crate) drain_timeout: Duration,
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) max_queue_age: Option<Duration>,
    pub(crate) overload_quiet_period: Duration,
}

/// The hooks of a configuration (user code).
pub(crate) struct ConfigHooks<Item> {
    pub(crate) on_shed: Option<ItemHook<Item>>,
    pub(crate) on_cancel: Option<ItemHook<Item>>,
    pub(crate) on_overload: Option<OverloadHook>,
}

impl<Item> Default for ConfigHooks<Item> {
    fn default() -> Self {
        ConfigHooks {
            on_shed: None,
            on_cancel: None,
            on_overload: None,
        }
    }
}

impl<Item> Clone for ConfigHooks<Item> {
    fn clone(&self) -> Self {
        ConfigHooks {
            on_shed: self.on_shed.clone(),
            on_cancel: self.on_cancel.clone(),
            on_overload: self.on_overload.clone(),
        }
    }
}

impl<Item, Kind> FanOutConfig<Item, Kind> {
    /// Default [`capacity`](Self::capacity): 64 queued items.
    ///
    /// Large enough to absorb a burst of a few dozen items without shedding,
    /// small enough that under [`ShedPolicy::DropOldest`] an item a worker
    /// picks up is at most 64 items behind the newest one queued (plus the
    /// small batch of ready items a stream front may hold while queueing).
    /// Items that arrive while its handler runs age it further; only fewer
    /// or faster workers help there.
    pub const DEFAULT_CAPACITY: usize = 64;

    /// The largest [`capacity`](Self::capacity) and
    /// [`output_capacity`](Self::output_capacity): `usize::MAX >> 3`, the
    /// most permits a `tokio::sync::Semaphore` holds (the push front waits
    /// for room, and ordered output for its window, on one). Either is a
    /// bound, not a reservation: memory grows with what is actually queued.
    pub const MAX_CAPACITY: usize = MAX_CAPACITY;

    /// The most items a stream front pulls before it queues them, under one
    /// lock: 32. Pulling in batches amortises the queue's lock; the batch
    /// is also the most items held outside the queue, on top of
    /// [`capacity`](Self::capacity). (A push front holds none: each push is
    /// one item.)
    pub const MAX_INTAKE_BATCH: usize = 32;

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

    /// Default [`name`](Self::name): `"default"`, the `pipeline` label of a
    /// pipeline nobody named, so that a dashboard shows a series for it
    /// and the missing name stands out.
    pub const DEFAULT_NAME: &'static str = "default";
}

impl<Item> FanOutConfig<Item> {
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
            settings: Settings {
                name: Cow::Borrowed(Self::DEFAULT_NAME),
                sizes: Sizes {
                    workers,
                    policy,
                    capacity: Self::DEFAULT_CAPACITY,
                    output_capacity: Self::DEFAULT_OUTPUT_CAPACITY,
                    settle_capacity: Self::DEFAULT_SETTLE_CAPACITY,
                    per_key_capacity: usize::MAX,
                },
                timing: Timing {
                    drain_timeout: Self::DEFAULT_DRAIN_TIMEOUT,
                    handler_timeout: None,
                    max_queue_age: None,
                    overload_quiet_period: Self::DEFAULT_OVERLOAD_QUIET_PERIOD,
                },
                hooks: ConfigHooks::default(),
                cancel_token: None,
                order: ResultOrder::Completion,
                settle: None,
                keying: None,
            },
            kind: PhantomData,
        }
    }
}

impl<Item, Kind> FanOutConfig<Item, Kind> {
    /// Sets how many items may wait in the queue for a worker; past it the
    /// policy sheds. An item a worker has taken no longer occupies a slot.
    ///
    /// While the queue has room, a stream front pulls no more than fits,
    /// and before it pulls into a full queue it yields once to the workers
    /// it woke, so idle workers widen what a ready burst fits into: with
    /// `capacity(4)`, 4 idle workers and 6 items ready at once, 4 are
    /// queued, the workers take them, and the other 2 take their slots;
    /// nothing is shed. A burst is shed only when it meets a full queue
    /// while the workers are busy (on a multi-thread runtime, or a
    /// current-thread one once the woken workers have run). The push and
    /// call fronts cannot yield between one producer's offers: a burst of
    /// offers or calls made before the woken workers have run fills the
    /// queue and sheds the rest (10 calls at once into `capacity(2)` with 3
    /// idle workers on one thread: 2 served, 8 shed). To absorb bursts
    /// larger than the workers can take, size the capacity to the burst, or
    /// use [`ShedPolicy::Backpressure`].
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
        self.settings.sizes.capacity = check_count("capacity", capacity);
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
        self.settings.sizes.output_capacity = check_count("output_capacity", output_capacity);
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
        self.settings.timing.drain_timeout = drain_timeout;
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
    /// use backpressure_pipeline::{CancellationToken, FanOutConfig, ShedPolicy};
    ///
    /// let service = CancellationToken::new();
    /// let config = FanOutConfig::<u64>::new(1, ShedPolicy::DropNewest)
    ///     .cancel_token(service.clone());
    /// # let _ = config;
    /// ```
    pub fn cancel_token(mut self, parent: CancellationToken) -> Self {
        self.settings.cancel_token = Some(parent);
        self
    }

    /// Cancels a handler that has run longer than `timeout` (measured from
    /// the call to the handler) and counts its item
    /// [`timed_out`](crate::Report::timed_out); the worker goes on with the
    /// next item. The law becomes
    /// `produced == processed + dropped + failed + timed_out + cancelled`
    /// (`+ expired` with a [`max_queue_age`](Self::max_queue_age)).
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
    ///     let (mut out, report) = shutdown.join_collect(results).await;
    ///     out.sort();
    ///     assert_eq!(out, [10, 20]);
    ///     assert_eq!((report.processed, report.timed_out), (2, 1));
    ///     assert!(report.is_conserved());
    /// }
    /// ```
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.settings.timing.handler_timeout = Some(timeout);
        self
    }

    /// Sheds an item that has waited in the queue longer than `age` when a
    /// worker would take it: the handler is never called, and the item
    /// counts [`expired`](crate::Report::expired), its own outcome in the
    /// conservation law (`produced == processed + dropped + failed +
    /// timed_out + expired + cancelled`). The worker takes the next item at
    /// once. With settlement, an expired item is settled as
    /// [`Outcome::Expired`](crate::Outcome::Expired). It goes to no hook:
    /// not [`on_shed`](Self::on_shed), which sees the items the queue's
    /// policy sheds (`dropped`), nor [`on_cancel`](Self::on_cancel); to see
    /// each expired item (a dead-letter path), use settlement.
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
    ///     let (out, report) = shutdown.join_collect(results).await;
    ///     assert_eq!(out, [0, 1, 2]);
    ///     assert_eq!((report.processed, report.expired), (3, 1));
    ///     assert!(report.is_conserved());
    /// }
    /// ```
    pub fn max_queue_age(mut self, age: Duration) -> Self {
        self.settings.timing.max_queue_age = Some(age);
        self
    }

    /// Names the pipeline: a `&'static str` or a `String`, for the
    /// operators who read its metrics and traces.
    ///
    /// With the `metrics` feature, the name is the `pipeline` label of
    /// every series the pipeline exports (the crate docs list them); give
    /// each pipeline of a process its own, or their counters add up under
    /// one label. With the `tracing` feature, it is the `pipeline` field
    /// of the pipeline's span (named `bounded_fan_out`: a `tracing` span's
    /// name is fixed where it is written, so the name goes in a field, as
    /// `tracing` advises for values known at run time). Without either
    /// feature it is kept and unused. Unnamed pipelines are
    /// [`DEFAULT_NAME`](Self::DEFAULT_NAME).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
    ///
    /// let ingest = FanOutConfig::<u64>::new(4, ShedPolicy::DropOldest).name("ingest");
    /// assert!(format!("{ingest:?}").contains(r#"name: "ingest""#));
    /// let shard = 3;
    /// let sharded = FanOutConfig::<u64>::new(4, ShedPolicy::DropOldest).name(format!("shard-{shard}"));
    /// assert!(format!("{sharded:?}").contains(r#"name: "shard-3""#));
    /// let unnamed = FanOutConfig::<u64>::new(4, ShedPolicy::DropOldest);
    /// assert!(format!("{unnamed:?}").contains(r#"name: "default""#));
    /// ```
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.settings.name = name.into();
        self
    }
}

impl<Item, Kind> Clone for FanOutConfig<Item, Kind> {
    fn clone(&self) -> Self {
        FanOutConfig {
            settings: self.settings.clone(),
            kind: PhantomData,
        }
    }
}

impl<Item, Kind> FanOutConfig<Item, Kind> {
    /// The same settings for another handler kind.
    pub(crate) fn with_kind<Other>(self) -> FanOutConfig<Item, Other> {
        FanOutConfig {
            settings: self.settings,
            kind: PhantomData,
        }
    }
}

impl<Item, Kind> fmt::Debug for FanOutConfig<Item, Kind> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Sizes {
            workers,
            policy,
            capacity,
            output_capacity,
            settle_capacity,
            per_key_capacity,
        } = self.settings.sizes;
        let Timing {
            drain_timeout,
            handler_timeout,
            max_queue_age,
            overload_quiet_period,
        } = self.settings.timing;
        f.debug_struct("FanOutConfig")
            .field("name", &self.settings.name)
            .field("workers", &workers)
            .field("policy", &policy)
            .field("capacity", &capacity)
            .field("output_capacity", &output_capacity)
            .field("result_order", &self.settings.order)
            .field("drain_timeout", &drain_timeout)
            .field("handler_timeout", &handler_timeout)
            .field("max_queue_age", &max_queue_age)
            .field("overload_quiet_period", &overload_quiet_period)
            .field("on_shed", &self.settings.hooks.on_shed.is_some())
            .field("on_cancel", &self.settings.hooks.on_cancel.is_some())
            .field("on_overload", &self.settings.hooks.on_overload.is_some())
            .field("cancel_token", &self.settings.cancel_token.is_some())
            .field("settles", &self.settings.settle.is_some())
            .field("settle_capacity", &settle_capacity)
            .field("keyed", &self.settings.keying.is_some())
            .field("per_key_capacity", &per_key_capacity)
            .finish()
    }
}
