//! The push front: producers offer items one by one, from any task or
//! thread, instead of the pipeline pulling a `Stream`.
//!
//! It shares the queue, its shedding and the counts with the stream intake:
//! an offer is a one-item `push_counted`, counted under the queue's lock.
//! What the front task adds is the end of intake: when every [`Feeder`] is
//! dropped or a stop begins, it closes the queue, and workers drain it as
//! they drain an exhausted stream.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::Poll;

use tokio_util::sync::CancellationToken;

use crate::config::ItemHook;
use crate::ext::launch;
use crate::handoff::{Full, Producer, Pushed};
use crate::intake::CloseOnDrop;
use crate::isolate::Quiet;
use crate::overload::Episodes;
use crate::pipeline::Shared;
use crate::report::IntakeEnd;
use crate::{BoundedFanOut, FanOutConfig, ShedPolicy, ShutdownHandle};

/// Starts a pipeline fed by producers instead of a `Stream`: returns a
/// [`Feeder`] to offer items with, the results stream and the
/// [`ShutdownHandle`].
///
/// Everything else is as for
/// [`bounded_fan_out_with`](crate::FanOutExt::bounded_fan_out_with): the
/// same queue, policy, workers, results, shutdown and [`Report`]. Intake
/// ends when every clone of the `Feeder` has been dropped (the report then
/// says [`IntakeEnd::Exhausted`]) or at a shutdown or abort
/// ([`IntakeEnd::Stopped`]); then the queue drains as for an exhausted
/// stream.
///
/// Offers tell the caller at once what happened, and hand back by value any
/// item that was not queued or that was evicted ([`Offer`]), so the caller
/// can answer "overloaded" or retry. Items handed back are the caller's:
/// they are counted (`dropped` for shed or evicted items) but not passed to
/// [`on_shed`](FanOutConfig::on_shed), which this front never calls; nor
/// does it raise [`on_overload`](FanOutConfig::on_overload) events (the
/// caller sees every shed item itself).
///
/// [`Report`]: crate::Report
///
/// # Panics
///
/// As [`bounded_fan_out`](crate::FanOutExt::bounded_fan_out): outside a
/// Tokio runtime, or on one without a time driver.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutConfig, Offer, ShedPolicy};
/// use futures::StreamExt;
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
/// let (out, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
/// assert_eq!(out, [10, 20]);
/// assert_eq!((report.produced, report.processed, report.dropped), (3, 2, 1));
/// # }
/// ```
#[track_caller]
pub fn feeder<Item, F, Fut>(
    config: FanOutConfig<Item>,
    handler: F,
) -> (Feeder<Item>, BoundedFanOut<Fut::Output>, ShutdownHandle)
where
    Item: Send + 'static,
    F: Fn(Item) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let producers_gone = CancellationToken::new();
    let gone = producers_gone.clone();
    let (results, handle, shared) = launch(
        config,
        handler,
        None,
        None,
        Producer::Feeder,
        move |shared, on_shed, episodes| front(shared, gone, on_shed, episodes),
    );
    let feeder = Feeder {
        inner: Arc::new(Producers {
            shared,
            gone: producers_gone,
        }),
    };
    (feeder, results, handle)
}

/// The front task: waits for the end of intake and closes the queue.
async fn front<Item>(
    shared: Arc<Shared<Item>>,
    producers_gone: CancellationToken,
    on_shed: Option<ItemHook<Item>>,
    episodes: Episodes,
) -> IntakeEnd {
    let _close = CloseOnDrop(&shared.queue);
    // Unused by this front (see `feeder`), but dropped quietly: user code.
    drop(Quiet::new(on_shed));
    let mut stopped = pin!(shared.stop.cancelled());
    let mut gone = pin!(producers_gone.cancelled());
    let end = poll_fn(|cx| {
        if stopped.as_mut().poll(cx).is_ready() {
            Poll::Ready(IntakeEnd::Stopped)
        } else if gone.as_mut().poll(cx).is_ready() {
            Poll::Ready(IntakeEnd::Exhausted)
        } else {
            Poll::Pending
        }
    })
    .await;
    drop(episodes);
    end
}

/// A producer handle for a pipeline started with [`feeder`].
///
/// `Clone`, `Send` and `Sync`: give a clone to every task, thread or
/// callback that produces items. Intake ends when the last clone is
/// dropped. Memory stays bounded however many producers offer at once:
/// an offer queues into the pipeline's own bounded queue, or sheds.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
/// use futures::StreamExt;
///
/// # #[tokio::main]
/// # async fn main() {
/// let config = FanOutConfig::new(4, ShedPolicy::Backpressure).capacity(16);
/// let (feeder, results, shutdown) =
///     backpressure_pipeline::feeder(config, |x: u64| async move { x });
/// // Four producer threads; `send` waits for room under Backpressure.
/// let producers: Vec<_> = (0..4u64)
///     .map(|p| {
///         let feeder = feeder.clone();
///         tokio::spawn(async move {
///             for i in 0..100 {
///                 assert!(feeder.send(p * 1000 + i).await.is_queued());
///             }
///         })
///     })
///     .collect();
/// drop(feeder);
/// let (out, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
/// for producer in producers {
///     producer.await.unwrap();
/// }
/// assert_eq!(out.len(), 400);
/// assert_eq!((report.produced, report.dropped), (400, 0));
/// # }
/// ```
pub struct Feeder<Item> {
    inner: Arc<Producers<Item>>,
}

struct Producers<Item> {
    shared: Arc<Shared<Item>>,
    gone: CancellationToken,
}

impl<Item> Drop for Producers<Item> {
    fn drop(&mut self) {
        // The last clone is gone: intake is over.
        self.gone.cancel();
    }
}

impl<Item> Clone for Feeder<Item> {
    fn clone(&self) -> Self {
        Feeder {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// What happened to an item offered with [`Feeder::offer`] or
/// [`Feeder::send`]. Items not queued, and items evicted to make room, come
/// back by value.
///
/// As Akka's `SourceQueue.offer` answers `Enqueued`, `Dropped` or
/// `QueueClosed`, and tokio's `try_send` hands a refused message back.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use = "an offer may hand an item back"]
#[non_exhaustive]
pub enum Offer<Item> {
    /// Queued for a worker. Counted `produced`.
    Queued,
    /// The queue was full and [`ShedPolicy::DropNewest`] shed the offered
    /// item, which comes back. Counted `produced` and `dropped`.
    Shed(Item),
    /// The queue was full and [`ShedPolicy::DropOldest`] evicted its oldest
    /// item to queue the offered one; the evicted item comes back. The
    /// offered item counts `produced`, the evicted one `dropped`.
    Evicted(Item),
    /// The queue was full under [`ShedPolicy::Backpressure`], which never
    /// sheds, and [`Feeder::offer`] does not wait. Not counted at all: the
    /// pipeline never accepted it.
    Full(Item),
    /// Intake is over (shutdown or abort): the item comes back, not counted.
    Closed(Item),
}

impl<Item> Offer<Item> {
    /// Whether the offered item was queued (also when another was evicted
    /// to make room).
    pub fn is_queued(&self) -> bool {
        matches!(self, Offer::Queued | Offer::Evicted(_))
    }

    /// The item handed back, if any: the offered one (`Shed`, `Full`,
    /// `Closed`) or the evicted one (`Evicted`).
    pub fn into_item(self) -> Option<Item> {
        match self {
            Offer::Queued => None,
            Offer::Shed(item) | Offer::Evicted(item) | Offer::Full(item) | Offer::Closed(item) => {
                Some(item)
            }
        }
    }
}

impl<Item> Feeder<Item> {
    /// Offers `item` without waiting for room, and says at once what
    /// happened.
    ///
    /// Never awaits and never waits for a worker or the consumer: safe to
    /// call from synchronous code, a callback or a request handler. It does
    /// take the queue's lock (a `std::sync::Mutex`) for one push, held for
    /// a few hundred nanoseconds by whoever holds it (a producer, a worker
    /// taking an item, the intake of a stop); under heavy contention on a
    /// loaded machine the wait for that lock can reach milliseconds when
    /// the holder's thread is preempted. No user code ever runs under it.
    /// Under [`ShedPolicy::Backpressure`] a full queue answers
    /// [`Offer::Full`]; use [`send`](Self::send) to wait for room instead.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, Offer, ShedPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = FanOutConfig::new(1, ShedPolicy::DropOldest).capacity(1);
    /// let (feeder, _results, shutdown) =
    ///     backpressure_pipeline::feeder(config, |x: u32| async move { x });
    /// assert_eq!(feeder.offer(1), Offer::Queued);
    /// assert_eq!(feeder.offer(2), Offer::Evicted(1)); // the freshest stays
    /// shutdown.abort();
    /// assert_eq!(feeder.offer(3), Offer::Closed(3));
    /// # }
    /// ```
    pub fn offer(&self, item: Item) -> Offer<Item> {
        let shared = &self.inner.shared;
        if shared.is_stopping() {
            return Offer::Closed(item);
        }
        match shared.queue.try_reserve_one() {
            Ok(()) => self.push(item),
            Err(Full::NoRoom) => Offer::Full(item),
            Err(Full::Closed) => Offer::Closed(item),
        }
    }

    /// Offers `item`, waiting for room under [`ShedPolicy::Backpressure`];
    /// under the other policies it is [`offer`](Self::offer) and never waits.
    ///
    /// Once a stop (a shutdown, an abort, a cancelled parent token) has
    /// returned, every `send` answers [`Offer::Closed`], also one that was
    /// waiting for room and was granted it just as the stop came: the push
    /// front closes the queue inside the stop, under the queue's lock.
    ///
    /// # Cancel safety
    ///
    /// As tokio's `mpsc::Sender::send`: if the future is dropped before it
    /// completes, the item was not queued and is dropped with the future,
    /// uncounted. Nothing else is lost, and the place in line for room is
    /// given up.
    pub async fn send(&self, item: Item) -> Offer<Item> {
        let shared = &self.inner.shared;
        if shared.is_stopping() {
            return Offer::Closed(item);
        }
        match shared.queue.reserve_one().await {
            Ok(()) => self.push(item),
            Err(_) => Offer::Closed(item),
        }
    }

    /// Whether intake is over: every offer now answers [`Offer::Closed`].
    pub fn is_closed(&self) -> bool {
        self.inner.shared.is_stopping()
    }

    fn push(&self, item: Item) -> Offer<Item> {
        let shared = &self.inner.shared;
        let (mut batch, mut shed) = (vec![item], Vec::new());
        let counters = &shared.intake;
        let pushed = shared
            .queue
            .push_counted(&mut batch, &mut shed, |offered, n| {
                counters.produced.fetch_add(offered as u64, Relaxed);
                counters.dropped.fetch_add(n as u64, Relaxed);
            });
        let Pushed::Accepted { .. } = pushed else {
            // A refused push leaves the batch untouched: the item is there.
            return batch.pop().map_or(Offer::Queued, Offer::Closed);
        };
        // One item into a full queue: DropOldest evicted the oldest queued
        // item (a full queue holds at least one), DropNewest shed this one.
        match (shed.pop(), shared.queue.policy()) {
            (None, _) => Offer::Queued,
            (Some(item), ShedPolicy::DropOldest) => Offer::Evicted(item),
            (Some(item), _) => Offer::Shed(item),
        }
    }
}

impl<Item> fmt::Debug for Feeder<Item> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (queue_depth, _) = self.inner.shared.queue.depth();
        f.debug_struct("Feeder")
            .field("queue_depth", &queue_depth)
            .field("closed", &self.is_closed())
            .finish()
    }
}
