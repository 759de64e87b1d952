//! Settlement records: what the pipeline writes, and the stream the caller
//! reads.

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::stream::{FusedStream, Stream};
use tokio::sync::mpsc;

use super::Credits;
use crate::isolate::{Quiet, catching, drop_quietly};

/// How one item ended, in a [`Settlement`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Its handler completed (`Report::processed`), whatever the output.
    Processed,
    /// Shed by the policy before reaching a worker (`Report::dropped`).
    Shed(ShedReason),
    /// Its handler panicked, or its key could not be taken
    /// (`Report::failed`).
    Failed,
    /// Its handler ran past the handler timeout (`Report::timed_out`).
    TimedOut,
    /// It waited in the queue longer than the maximum queue age
    /// (`Report::expired`).
    Expired,
    /// Accepted, then abandoned by a shutdown or withdrawn by its caller
    /// (`Report::cancelled`).
    Cancelled(Stage),
}

/// Which item the policy shed, in [`Outcome::Shed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShedReason {
    /// [`DropNewest`](crate::ShedPolicy::DropNewest): it arrived at a full
    /// queue (or its key's full queue). In a keyed pipeline also the newest
    /// queued item of the fattest key, shed for an arrival of a thinner key
    /// when the whole queue was full.
    Newest,
    /// [`DropOldest`](crate::ShedPolicy::DropOldest): it was the oldest
    /// queued item, evicted by a newer one; in a keyed pipeline, the
    /// oldest of the fattest key (the arrival's own, if none is fatter).
    Oldest,
    /// Keyed pipelines ([`FanOutConfig::key_by`](crate::FanOutConfig::key_by))
    /// under `DropOldest`: its key's own queue was full
    /// ([`per_key_capacity`](crate::FanOutConfig::per_key_capacity)) and a
    /// newer item of the same key took its place.
    Superseded,
}

/// Where a cancelled item was, in [`Outcome::Cancelled`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stage {
    /// Queued (or taken but not yet queued or started): its handler never
    /// started.
    Queued,
    /// Its handler had started and was cut off by an abort.
    InFlight,
    /// Its caller went away before the answer (a dropped
    /// [`Call`](crate::Call)): taken out of the queue, or its handler
    /// cancelled at its next await.
    Withdrawn,
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

/// What the pipeline, whatever the key type, needs of settlement.
pub(crate) trait Record<Item>: Send + Sync {
    /// Settles `item` now.
    fn record(&self, item: &Item, outcome: Outcome);
    /// Takes the key of an item about to be handed to its handler; `None`
    /// if the key function panicked.
    fn key(&self, item: &Item) -> Option<PendingKey>;
    /// Settles the item whose key was taken (`None`: it has no record, but
    /// its credit comes back).
    fn record_key(&self, key: Option<PendingKey>, outcome: Outcome);
}

/// Settlement as configured: the recorder and its credits (none for a
/// recorder the crate installs itself, which bounds nothing).
pub(crate) struct Settle<Item> {
    pub(crate) recorder: Arc<dyn Record<Item>>,
    pub(crate) credits: Option<Credits>,
}

impl<Item> Clone for Settle<Item> {
    fn clone(&self) -> Self {
        Settle {
            recorder: Arc::clone(&self.recorder),
            credits: self.credits.clone(),
        }
    }
}

/// The caller's key function.
type KeyFn<Item, K> = Box<dyn Fn(&Item) -> K + Send + Sync>;

/// Sends records to [`Settlements`]; `None` marks an item whose key could
/// not be taken: no record, but its place (and credit).
struct Recorder<Item, K> {
    key: Quiet<KeyFn<Item, K>>,
    records: mpsc::UnboundedSender<Option<Settlement<K>>>,
}

impl<Item, K: Send + 'static> Recorder<Item, K> {
    fn send(&self, key: Option<K>, outcome: Outcome) {
        // An error means the settler dropped `Settlements`, which also
        // closed the credits: nothing to give back. The record comes back
        // in the error, and its key's `Drop` is user code: dropped quietly,
        // or a panic in it would kill the worker (found by a fresh-user
        // trial).
        if let Err(unsent) = self
            .records
            .send(key.map(|key| Settlement { key, outcome }))
        {
            drop_quietly(unsent);
        }
    }
}

impl<Item, K: Send + 'static> Record<Item> for Recorder<Item, K> {
    fn record(&self, item: &Item, outcome: Outcome) {
        self.send(catching(|| (self.key)(item)), outcome);
    }

    fn key(&self, item: &Item) -> Option<PendingKey> {
        catching(|| Box::new((self.key)(item)) as PendingKey)
    }

    fn record_key(&self, key: Option<PendingKey>, outcome: Outcome) {
        let key = key.and_then(|key| key.downcast::<K>().ok()).map(|key| *key);
        self.send(key, outcome);
    }
}

/// Settlement keyed by `key`, and the stream for the caller.
pub(crate) fn channel<Item, K>(
    key: impl Fn(&Item) -> K + Send + Sync + 'static,
) -> (Settle<Item>, Settlements<K>)
where
    Item: 'static,
    K: Send + 'static,
{
    let credits = Credits::new();
    let (records, rx) = mpsc::unbounded_channel();
    let recorder = Recorder {
        key: Quiet::new(Box::new(key) as KeyFn<Item, K>),
        records,
    };
    let settle = Settle {
        recorder: Arc::new(recorder),
        credits: Some(credits.clone()),
    };
    let stream = Settlements {
        records: rx,
        credits,
        terminated: false,
    };
    (settle, stream)
}

/// The settlement records of the pipelines started with a configuration
/// from [`FanOutConfig::settle_by`](crate::FanOutConfig::settle_by): one
/// [`Settlement`] per item taken from the input, in the order outcomes were
/// decided.
///
/// Reading a record gives its credit back to the front (see
/// [`settle_capacity`](crate::FanOutConfig::settle_capacity)): read them
/// promptly, e.g. ack them to the broker in a task of their own. The stream
/// ends once every pipeline started with the configuration has finished
/// (its `join` resolved or could) and every record has been read; a clone
/// of the configuration that was never started holds it open until it is
/// dropped. Dropping the stream stops settlement: later records are dropped
/// and intake is no longer limited by credits.
///
/// **Hazard:** read this stream together with the results and
/// [`join`](crate::ShutdownHandle::join) (one `tokio::join!` of the
/// three): once `settle_capacity` items are unsettled, intake waits for the
/// reader, and a pipeline whose records nobody reads never finishes.
///
/// Exactly once: every item counted in the [`Report`](crate::Report) gets
/// one record whose outcome matches the counter it is in, with one
/// exception, since no record can exist without a key: an item whose key
/// function panicked has none. Such an item is never handed to the handler
/// (a broker would redeliver it and it would run twice): it counts `failed`
/// if a worker took it, or stays `dropped` or `cancelled` if it was shed or
/// abandoned. An item a worker task lost outside its panic isolation (its
/// runtime shutting down) has none either.
#[must_use = "streams do nothing unless polled"]
pub struct Settlements<K> {
    records: mpsc::UnboundedReceiver<Option<Settlement<K>>>,
    credits: Credits,
    terminated: bool,
}

impl<K> Stream for Settlements<K> {
    type Item = Settlement<K>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Settlement<K>>> {
        let this = &mut *self;
        while !this.terminated {
            match this.records.poll_recv(cx) {
                Poll::Ready(Some(record)) => {
                    this.credits.give_back(1);
                    if let Some(settlement) = record {
                        return Poll::Ready(Some(settlement));
                    }
                }
                // Every recorder is gone: every pipeline has released it,
                // after its last record was sent.
                Poll::Ready(None) => this.terminated = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(None)
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
            .field("terminated", &self.terminated)
            .finish()
    }
}
