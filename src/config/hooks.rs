//! The hooks: user code called with shed, abandoned and overload events.

use std::sync::Arc;
use std::time::Duration;

use super::FanOutConfig;
use crate::OverloadEvent;

impl<Item, Kind> FanOutConfig<Item, Kind> {
    /// Calls `hook` once with each item the policy sheds, instead of dropping
    /// it silently.
    ///
    /// On the stream front the hook runs on the intake task, before the
    /// next input item is pulled; on the push front, on the producer's
    /// task, for items pushed through its `Sink` (an
    /// [`offer`](crate::Feeder::offer) or [`send`](crate::Feeder::send)
    /// hands shed items back to its caller instead). Always outside every
    /// lock: keep it short (count, log with a rate limit, forward to a
    /// dead-letter channel with `try_send`). A panic in it is caught; the
    /// item stays counted [`dropped`](crate::Report::dropped) and intake
    /// goes on.
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
        self.settings.hooks.on_shed = Some(Arc::new(hook));
        self
    }

    /// Hands back every accepted item that a shutdown abandoned before any
    /// worker took it: still queued when [`abort`] ran or the drain timeout
    /// expired, or pulled by intake just as the queue was abandoned (or, in
    /// a keyed `Backpressure` pipeline, held by the stream front for a full
    /// key's room when any stop came, a graceful `shutdown()` included:
    /// they were pulled and never queued). Modelled
    /// on Java's `ExecutorService::shutdownNow`, which returns the tasks that
    /// never ran.
    ///
    /// The hook runs once per item, outside every lock, on whichever task
    /// aborted the pipeline (the caller of [`abort`], the pipeline's own
    /// supervisor or a worker at the drain deadline, or the one dropping the
    /// last half).
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
        self.settings.hooks.on_cancel = Some(Arc::new(hook));
        self
    }

    /// Calls `hook` once when shedding starts and once when it stops: an
    /// edge-triggered overload alarm, one line per episode instead of one per
    /// shed item (see [`OverloadEvent`]).
    ///
    /// An episode ends after [`overload_quiet_period`](Self::overload_quiet_period)
    /// without shedding, or when intake stops. The hook runs on the front's
    /// own task (the intake, or the push front's task), one event at a time
    /// and in order, outside every lock; a panic in it is caught.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::{Arc, Mutex};
    /// use std::time::Duration;
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, OverloadEvent, ShedPolicy};
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
    ///     let (_, report) = shutdown.join_collect(results).await;
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
        self.settings.hooks.on_overload = Some(Arc::new(hook));
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
        self.settings.timing.overload_quiet_period = quiet;
        self
    }
}
