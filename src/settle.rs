//! Settlement: every item's outcome reaches the caller once, as a key it
//! extracted from the item, for acking to a broker.
//!
//! # Bounds
//!
//! Settlement is exact, so it can never shed its own records. Its memory is
//! bounded by *credits* instead: the intake takes one credit for each item
//! before pulling it, and a credit comes back when the caller reads that
//! item's record from [`Settlements`]. So at most
//! [`settle_capacity`](crate::FanOutConfig::settle_capacity) items are
//! unsettled at once (queued, in flight, or with a record waiting), records
//! are sent without ever waiting, and the channel that carries them never
//! holds more than that. A settler that falls behind by `settle_capacity`
//! records throttles intake, which then leaves the input's items where they
//! are (a broker keeps them undelivered): the one place the pipeline waits
//! on a consumer under a shedding policy, and the price of books that close.
//! Workers never wait for the settler.
//!
//! Records are sent outside every lock, from the task where the outcome is
//! decided: the intake (shed), a worker (processed, failed, timed out,
//! expired, cut off) or the caller of `abort` (queued items abandoned).

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::stream::{FusedStream, Stream};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::isolate::{Quiet, catching};
use crate::{BoundedFanOut, ShutdownHandle};

/// How one item ended, in a [`Settlement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Its handler completed (`Report::processed`), whatever the output.
    Processed,
    /// Shed by the policy before reaching a worker (`Report::dropped`).
    Dropped(ShedReason),
    /// Its handler panicked (`Report::failed`).
    Failed,
    /// Its handler ran past the handler timeout (`Report::timed_out`).
    TimedOut,
    /// It waited in the queue longer than the maximum queue age
    /// (`Report::expired`).
    Expired,
    /// Accepted, then abandoned by a shutdown (`Report::cancelled`).
    Cancelled(Stage),
}

/// Why the policy shed an item, in [`Outcome::Dropped`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShedReason {
    /// [`DropNewest`](crate::ShedPolicy::DropNewest): the queue was full
    /// when it arrived.
    QueueFull,
    /// [`DropOldest`](crate::ShedPolicy::DropOldest): evicted by newer items.
    Evicted,
}

/// Where a cancelled item was, in [`Outcome::Cancelled`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// Queued (or pulled but not yet queued): its handler never started.
    Queued,
    /// Its handler had started and was cut off by an abort.
    InFlight,
}

/// The outcome of one item, with the key the caller's key function took
/// from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settlement<K> {
    /// What the key function returned for the item (a message id, say).
    pub key: K,
    /// How the item ended.
    pub outcome: Outcome,
}

/// A key taken from an item before its handler consumed it.
pub(crate) type PendingKey = Box<dyn Any + Send>;

/// What travels to [`Settlements`]. The stream cannot end when the
/// pipeline's tasks do (an `abort()` on another thread may still be sending
/// the records of the queue it abandoned), so the supervisor says how many
/// records there are, and the stream ends once it has read them all.
enum Record<K> {
    Settled(Settlement<K>),
    /// An item whose key function panicked: no record, but its place.
    Unsettled,
    /// Sent once the report is final: the number of items taken from the
    /// input, one record each; `None` if it is unknown (the pipeline's
    /// tasks died with its runtime): end once drained.
    End(Option<u64>),
}

/// What the pipeline, whatever the key type, needs of settlement.
pub(crate) trait Settle<Item>: Send + Sync {
    /// Settles `item` now.
    fn settle(&self, item: &Item, outcome: Outcome);
    /// Takes the key of an item about to be handed to its handler; `None`
    /// if the key function panicked (the item then goes unsettled and its
    /// credit is returned).
    fn key(&self, item: &Item) -> Option<PendingKey>;
    /// Settles the item whose key was taken.
    fn settle_key(&self, key: Option<PendingKey>, outcome: Outcome);
    /// The credits (see `# Bounds`).
    fn credits(&self) -> &Semaphore;
    /// The report is final: `taken` items were taken from the input.
    fn finish(&self, taken: Option<u64>);
}

/// The caller's key function.
type KeyFn<Item, K> = Box<dyn Fn(&Item) -> K + Send + Sync>;

struct Sink<Item, K> {
    key: Quiet<KeyFn<Item, K>>,
    records: mpsc::UnboundedSender<Record<K>>,
    credits: Arc<Semaphore>,
}

impl<Item, K: Send + 'static> Sink<Item, K> {
    fn send(&self, key: Option<K>, outcome: Outcome) {
        let record = match key {
            Some(key) => Record::Settled(Settlement { key, outcome }),
            None => Record::Unsettled,
        };
        // An error means the settler dropped `Settlements`, which also
        // closed the credits: nothing to give back.
        drop(self.records.send(record));
    }
}

impl<Item, K: Send + 'static> Settle<Item> for Sink<Item, K> {
    fn settle(&self, item: &Item, outcome: Outcome) {
        self.send(catching(|| (self.key)(item)), outcome);
    }

    fn key(&self, item: &Item) -> Option<PendingKey> {
        catching(|| Box::new((self.key)(item)) as PendingKey)
    }

    fn settle_key(&self, key: Option<PendingKey>, outcome: Outcome) {
        let key = key.and_then(|key| key.downcast::<K>().ok()).map(|key| *key);
        self.send(key, outcome);
    }

    fn credits(&self) -> &Semaphore {
        &self.credits
    }

    fn finish(&self, taken: Option<u64>) {
        drop(self.records.send(Record::End(taken)));
    }
}

/// A settlement sink for the pipeline and the stream for the caller.
pub(crate) fn channel<Item, K>(
    key: impl Fn(&Item) -> K + Send + Sync + 'static,
    capacity: usize,
) -> (Box<dyn Settle<Item>>, Settlements<K>)
where
    Item: 'static,
    K: Send + 'static,
{
    let credits = Arc::new(Semaphore::new(capacity));
    let (records, rx) = mpsc::unbounded_channel();
    let sink = Sink {
        key: Quiet::new(Box::new(key) as KeyFn<Item, K>),
        records,
        credits: Arc::clone(&credits),
    };
    let stream = Settlements {
        records: rx,
        credits,
        read: 0,
        expected: None,
        terminated: false,
    };
    (Box::new(sink), stream)
}

/// Takes up to `max` credits for the intake, waiting for at least one;
/// `None` if `stopped` fires first. A closed semaphore (nobody reads the
/// settlements any more) no longer limits intake.
pub(crate) async fn reserve(
    credits: &Semaphore,
    max: usize,
    mut stopped: Pin<&mut impl Future<Output = ()>>,
) -> Option<usize> {
    let mut first = std::pin::pin!(credits.acquire());
    let got = std::future::poll_fn(|cx| {
        if stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        first.as_mut().poll(cx).map(Some)
    })
    .await?;
    let Ok(first) = got else {
        return Some(max);
    };
    first.forget();
    let more = credits.available_permits().min(max.saturating_sub(1));
    match credits.try_acquire_many(u32::try_from(more).unwrap_or(u32::MAX)) {
        Ok(permits) => {
            permits.forget();
            Some(1 + more)
        }
        Err(_) => Some(1),
    }
}

/// The settlement records of a pipeline started with
/// [`FanOutExt::bounded_fan_out_settled`](crate::FanOutExt::bounded_fan_out_settled):
/// one [`Settlement`] per item taken from the input, in the order outcomes
/// were decided.
///
/// Reading a record gives its credit back to the intake (see
/// [`settle_capacity`](crate::FanOutConfig::settle_capacity)): read them
/// promptly, e.g. ack them to the broker in a task of their own. The stream
/// ends once the pipeline has finished and every record has been read.
/// Dropping it stops settlement: later records are dropped and intake is no
/// longer limited by credits.
///
/// **Hazard:** read this stream together with `results` and
/// [`join`](crate::ShutdownHandle::join) (one `tokio::join!` of the three):
/// once `settle_capacity` items are unsettled, intake waits for the reader,
/// and a pipeline whose records nobody reads never finishes.
///
/// Exactly once: every item counted in the [`Report`](crate::Report) gets
/// one record whose outcome matches the counter it is in, with one
/// exception: an item whose key function panicked, or that a worker task
/// lost outside its panic isolation (its runtime shutting down), has none,
/// since no record can exist without a key. An item whose key function
/// panicked when a worker took it is never handed to the handler (a broker
/// would redeliver it and it would run twice): it counts `failed`.
#[must_use = "streams do nothing unless polled"]
pub struct Settlements<K> {
    records: mpsc::UnboundedReceiver<Record<K>>,
    credits: Arc<Semaphore>,
    /// Records read so far, `Unsettled` places included.
    read: u64,
    /// How many there are, once the report is final.
    expected: Option<u64>,
    terminated: bool,
}

impl<K> Stream for Settlements<K> {
    type Item = Settlement<K>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Settlement<K>>> {
        let this = &mut *self;
        loop {
            if this.terminated || this.expected.is_some_and(|n| this.read >= n) {
                this.terminated = true;
                return Poll::Ready(None);
            }
            let record = match this.records.poll_recv(cx) {
                Poll::Ready(Some(record)) => record,
                Poll::Pending if this.expected == Some(u64::MAX) => {
                    // The count is unknown and nothing is left: the end.
                    this.terminated = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.terminated = true;
                    return Poll::Ready(None);
                }
            };
            match record {
                Record::Settled(settlement) => {
                    this.read += 1;
                    this.credits.add_permits(1);
                    return Poll::Ready(Some(settlement));
                }
                Record::Unsettled => {
                    this.read += 1;
                    this.credits.add_permits(1);
                }
                Record::End(taken) => this.expected = Some(taken.unwrap_or(u64::MAX)),
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match (self.terminated, self.expected) {
            (true, _) => (0, Some(0)),
            (false, Some(n)) if n != u64::MAX => {
                let left = usize::try_from(n - self.read).unwrap_or(usize::MAX);
                (0, Some(left))
            }
            _ => (0, None),
        }
    }
}

impl<K> FusedStream for Settlements<K> {
    fn is_terminated(&self) -> bool {
        self.terminated
    }
}

impl<K> Drop for Settlements<K> {
    fn drop(&mut self) {
        // Nobody settles any more: credits must not hold intake back.
        self.credits.close();
    }
}

impl<K> fmt::Debug for Settlements<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settlements")
            .field("read", &self.read)
            .field("terminated", &self.terminated)
            .finish()
    }
}

/// A future that resolves to the input stream once intake has stopped,
/// from [`Settled::input`].
///
/// Resolves to `Some(input)` when a shutdown, an abort (also the one that
/// dropping both halves begins) or a cancelled parent token stopped intake
/// before the input ended: items not yet pulled are still the caller's (to
/// nak to the broker, say). Resolves to `None` when the input was exhausted
/// or panicked, or the pipeline's tasks died with their runtime. The stream
/// comes back boxed and pinned, so it is `Unpin` whatever its type.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutConfig, FanOutExt, Settled, ShedPolicy};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Backpressure: intake pulls only what fits (1 queued, 1 in flight).
/// let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
/// let Settled { results, settlements, shutdown, input, .. } = futures::stream::iter(0..10u32)
///     .bounded_fan_out_settled(config, |id| *id, |id| std::future::pending::<u32>());
/// tokio::task::yield_now().await;
/// shutdown.abort();
/// let (_, records, report) = tokio::join!(
///     results.collect::<Vec<_>>(),
///     settlements.collect::<Vec<_>>(),
///     shutdown.join(),
/// );
/// assert_eq!(records.len() as u64, report.produced);
/// // What the pipeline never pulled is handed back, starting at the next item.
/// let rest: Vec<u32> = input.await.expect("stopped early").collect().await;
/// assert_eq!(rest.first().copied(), Some(report.produced as u32));
/// # }
/// ```
///
/// # Cancel safety
///
/// Dropping it before it resolves drops the input when intake ends.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct InputBack<S> {
    rx: oneshot::Receiver<Pin<Box<S>>>,
}

impl<S> InputBack<S> {
    pub(crate) fn new(rx: oneshot::Receiver<Pin<Box<S>>>) -> Self {
        InputBack { rx }
    }
}

impl<S> Future for InputBack<S> {
    type Output = Option<Pin<Box<S>>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(Result::ok)
    }
}

impl<S> fmt::Debug for InputBack<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InputBack").finish_non_exhaustive()
    }
}

/// What [`FanOutExt::bounded_fan_out_settled`](crate::FanOutExt::bounded_fan_out_settled)
/// returns: the usual two halves, the settlement records, and the input's
/// hand-back.
#[derive(Debug)]
#[non_exhaustive]
pub struct Settled<S, T, K> {
    /// The handlers' outputs, as from `bounded_fan_out`.
    pub results: BoundedFanOut<T>,
    /// One record per item taken from the input.
    pub settlements: Settlements<K>,
    /// Stops the pipeline and collects its report.
    pub shutdown: ShutdownHandle,
    /// The input stream, back after a shutdown or abort.
    pub input: InputBack<S>,
}
