use std::future::Future;
use std::sync::Arc;

use futures_core::Stream;
use tokio::task::JoinSet;

use crate::config::ItemHook;
use crate::handoff::{HandOff, Producer, Yielder};
use crate::isolate::{Quiet, drop_quietly, has_time_driver};
use crate::overload::Episodes;
use crate::pipeline::{End, Late, Shared, supervise};
use crate::report::IntakeEnd;
use crate::settle::{self, InputBack, Settle, Settled};
use crate::stop::StopWatch;
use crate::{BoundedFanOut, FanOutConfig, ShedPolicy, ShutdownHandle, intake, worker};
use crate::{output, trace};
use std::pin::Pin;

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
    ///   batches of up to 32 (no more than the queue has room for, while it
    ///   has room) and queues each batch under one lock. Before pulling into
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
    ///   discarded, so a stalled consumer cannot hold a stop. A panic in `handler` or its future is caught:
    ///   the item counts `failed` and the worker takes the next one.
    /// * Memory is bounded whatever the input rate: at most `capacity`
    ///   queued items, `workers` in flight, `output_capacity` undelivered
    ///   results, and up to 32 items the intake has pulled and is queueing.
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
        Self: Sized + Send + 'static,
        Self::Item: Send + 'static,
        F: Fn(Self::Item) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
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
    fn bounded_fan_out_with<F, Fut>(
        self,
        config: FanOutConfig<Self::Item>,
        handler: F,
    ) -> (BoundedFanOut<Fut::Output>, ShutdownHandle)
    where
        Self: Sized + Send + 'static,
        Self::Item: Send + 'static,
        F: Fn(Self::Item) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let (results, handle, _) = launch(
            config,
            handler,
            None,
            None,
            Producer::Stream,
            |shared, on_shed, episodes| {
                intake::run(self, shared, on_shed, episodes, intake::keep_nothing)
            },
        );
        (results, handle)
    }

    /// [`bounded_fan_out_with`](FanOutExt::bounded_fan_out_with) for
    /// handlers that return a `Result`: the [`Report`](crate::Report)
    /// also counts the `Err` outputs, in
    /// [`errored`](crate::Report::errored). An `Err` is still a completed
    /// handler: it counts `processed` and is delivered like an `Ok`, so the
    /// laws are unchanged and `processed - errored` outputs were `Ok`. (A
    /// panic is `failed`, not `errored`.) Named after futures'
    /// `TryStreamExt::try_buffer_unordered`, which also works on `Result`s.
    ///
    /// # Panics
    ///
    /// As [`bounded_fan_out_with`](FanOutExt::bounded_fan_out_with).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
    /// use futures::StreamExt;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = FanOutConfig::new(2, ShedPolicy::DropNewest);
    /// let (results, shutdown) = futures::stream::iter(0..10u32)
    ///     .try_bounded_fan_out_with(config, |x| async move {
    ///         if x % 3 == 0 { Err(format!("{x} is a multiple of 3")) } else { Ok(x) }
    ///     });
    /// let (out, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
    /// assert_eq!(out.iter().filter(|r| r.is_err()).count(), 4); // 0, 3, 6, 9
    /// assert_eq!((report.processed, report.errored), (10, 4));
    /// # }
    /// ```
    #[track_caller]
    fn try_bounded_fan_out_with<F, Fut, T, E>(
        self,
        config: FanOutConfig<Self::Item>,
        handler: F,
    ) -> (BoundedFanOut<Result<T, E>>, ShutdownHandle)
    where
        Self: Sized + Send + 'static,
        Self::Item: Send + 'static,
        F: Fn(Self::Item) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        T: Send + 'static,
        E: Send + 'static,
    {
        let is_err: fn(&Result<T, E>) -> bool = Result::is_err;
        let (results, handle, _) = launch(
            config,
            handler,
            Some(is_err),
            None,
            Producer::Stream,
            |shared, on_shed, episodes| {
                intake::run(self, shared, on_shed, episodes, intake::keep_nothing)
            },
        );
        (results, handle)
    }

    /// [`bounded_fan_out_with`](FanOutExt::bounded_fan_out_with) for inputs
    /// whose items must be acknowledged, such as a broker's consumer group:
    /// every item's outcome comes back as a [`Settlement`](crate::Settlement) holding the key
    /// `key` took from the item (a message id, say), and the input stream
    /// comes back after a shutdown or abort, so items not yet pulled stay
    /// the caller's.
    ///
    /// Exactly one record per item taken from the input, whose
    /// [`Outcome`](crate::Outcome) matches the [`Report`](crate::Report)
    /// counter the item is in: `Processed`, `Dropped` (with the policy's
    /// reason), `Failed`, `TimedOut`, `Expired` or `Cancelled` (queued or in
    /// flight). `key` is called once per item, before the handler gets it
    /// (so a handler that consumes the item still lets its key be
    /// reported), outside every lock. No record can exist without a key, so
    /// a panic in `key` is caught and leaves that item without a record;
    /// the item is then never started (a broker would redeliver an item it
    /// never heard of, and it would be handled twice): it counts `failed`
    /// if a worker took it, or stays `dropped` / `cancelled` if it was shed
    /// or abandoned. Records are never sent under a lock and
    /// never wait; at most
    /// [`settle_capacity`](FanOutConfig::settle_capacity) items are
    /// unsettled at once, and a settler that falls that far behind
    /// throttles intake (see [`Settlements`](crate::Settlements)).
    ///
    /// # Panics
    ///
    /// As [`bounded_fan_out_with`](FanOutExt::bounded_fan_out_with).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, Outcome, ShedPolicy, ShedReason};
    /// use futures::StreamExt;
    ///
    /// // Needs tokio's `test-util` feature: paused time, so timings are exact.
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// // Messages with ids; one worker busy 1 ms each, room for 2: of a
    /// // burst of 5, the worker takes one, two wait and two are shed.
    /// let messages = futures::stream::iter((0..5u32).map(|id| (id, format!("payload {id}"))));
    /// let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(2);
    /// let settled = messages.bounded_fan_out_settled(config, |(id, _)| *id, |(_, body)| async move {
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    ///     body.len()
    /// });
    /// let (_, mut records, report) = tokio::join!(
    ///     settled.results.collect::<Vec<_>>(),
    ///     settled.settlements.collect::<Vec<_>>(),
    ///     settled.shutdown.join(),
    /// );
    /// records.sort_by_key(|r| r.key);
    /// let outcomes: Vec<_> = records.iter().map(|r| r.outcome).collect();
    /// let shed = Outcome::Dropped(ShedReason::QueueFull);
    /// use Outcome::Processed;
    /// assert_eq!(outcomes, [Processed, Processed, Processed, shed, shed]);
    /// assert_eq!((report.processed, report.dropped), (3, 2));
    /// assert!(settled.input.await.is_none(), "the input was exhausted");
    /// # }
    /// ```
    #[track_caller]
    fn bounded_fan_out_settled<K, KeyFn, F, Fut>(
        self,
        config: FanOutConfig<Self::Item>,
        key: KeyFn,
        handler: F,
    ) -> Settled<Self, Fut::Output, K>
    where
        Self: Sized + Send + 'static,
        Self::Item: Send + 'static,
        K: Send + 'static,
        KeyFn: Fn(&Self::Item) -> K + Send + Sync + 'static,
        F: Fn(Self::Item) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let (sink, settlements) = settle::channel(key, config.settle_capacity);
        let (back, input) = tokio::sync::oneshot::channel();
        // Boxed and pinned, so it can be moved out and handed back.
        let stream = Box::pin(self);
        let hand_back = move |input: Pin<&mut Option<Pin<Box<Self>>>>, end: IntakeEnd| {
            if end == IntakeEnd::Stopped {
                if let Some(stream) = input.get_mut().take() {
                    if let Err(stream) = back.send(stream) {
                        drop_quietly(stream);
                    }
                }
            }
        };
        let (results, shutdown, _) = launch(
            config,
            handler,
            None,
            Some(sink),
            Producer::Stream,
            move |shared, on_shed, episodes| {
                intake::run(stream, shared, on_shed, episodes, hand_back)
            },
        );
        Settled {
            results,
            settlements,
            shutdown,
            input: InputBack::new(input),
        }
    }
}

/// Starts a pipeline whose front (what feeds the queue) is built by
/// `front`: the stream intake, or the push front of [`crate::feeder`].
/// Every other part is the same for both. Returns the two halves and the
/// shared state, for the front's own handles.
#[track_caller]
pub(crate) fn launch<Item, F, Fut, Front, FrontFut>(
    config: FanOutConfig<Item>,
    handler: F,
    is_err: Option<fn(&Fut::Output) -> bool>,
    settle: Option<Box<dyn Settle<Item>>>,
    producer: Producer,
    front: Front,
) -> (
    BoundedFanOut<Fut::Output>,
    ShutdownHandle,
    Arc<Shared<Item>>,
)
where
    Item: Send + 'static,
    F: Fn(Item) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
    Front: FnOnce(Arc<Shared<Item>>, Option<ItemHook<Item>>, Episodes) -> FrontFut,
    FrontFut: Future<Output = IntakeEnd> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        panic!("bounded_fan_out: must be called from the context of a Tokio runtime");
    };
    // Drain deadlines and handler timeouts need a clock: refuse a runtime
    // without one here, not with a silent immediate abort later.
    assert!(
        has_time_driver(),
        "bounded_fan_out: the Tokio runtime has no time driver; \
         build it with `enable_time()` or `enable_all()`"
    );
    assert!(
        !(config.ordered && config.latest_only),
        "bounded_fan_out: `ordered` and `latest_only` cannot be combined"
    );
    let mode = match (config.ordered, config.latest_only) {
        (_, true) => output::Mode::Latest,
        (true, false) => output::Mode::Ordered,
        (false, false) => output::Mode::Unordered,
    };
    let (sender, receiver, books) = output::channel(config.output_capacity, mode, config.workers);
    let shared = Arc::new(Shared::new(
        HandOff::new(
            config.capacity,
            config.policy,
            config.max_queue_age,
            producer,
            // Shed items are needed only by a hook or settlement.
            config.on_shed.is_some() || settle.is_some(),
        ),
        config.workers,
        config.cancel_token.as_ref(),
        Late {
            on_cancel: config.on_cancel,
            settle,
        },
        books,
        config.drain_timeout,
        Yielder::for_runtime(&runtime),
    ));
    // Registered before any task runs, so a parent cancelled from any
    // thread stops intake before its `cancel()` returns.
    let mirror = Arc::clone(&shared);
    let stop = StopWatch::new(&shared.stop, move || mirror.mirror_stop());
    // The workers own the handler; the last to exit drops it (quietly).
    let handler = Quiet::new(Arc::new(handler));
    let span = trace::pipeline_span(config.workers, config.capacity, config.policy);
    let mut workers = JoinSet::new();
    for slot in 0..config.workers {
        let run = worker::run(
            Arc::clone(&shared),
            slot,
            Arc::clone(&*handler),
            sender.clone(),
            config.handler_timeout,
            is_err,
        );
        workers.spawn_on(trace::in_span(&span, run), &runtime);
    }
    // Only the workers hold senders: `results` ends when the last exits.
    drop(sender);
    let episodes = Episodes::new(config.on_overload, config.overload_quiet_period);
    let intake = front(Arc::clone(&shared), config.on_shed, episodes);
    let intake = runtime.spawn(trace::in_span(&span, intake));
    let supervisor = supervise(Arc::clone(&shared), stop, workers, intake);
    let supervisor = runtime.spawn(trace::in_span(&span, supervisor));
    let results = BoundedFanOut::new(receiver, End(shared.clone()));
    let handle = ShutdownHandle::new(supervisor, End(Arc::clone(&shared) as _));
    (results, handle, shared)
}

impl<S: Stream + ?Sized> FanOutExt for S {}
