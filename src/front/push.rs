//! The push front: producers offer items one by one, from any task or
//! thread, instead of the pipeline pulling a `Stream`.
//!
//! An offer is a one-item push into the same queue, counted under the
//! queue's lock, and what it sheds takes the one after-shed path. The front
//! task adds the end of intake: when every producer is gone (dropped, or
//! closed as a `Sink`) or a stop begins, it closes the queue, and workers
//! drain it as they drain an exhausted stream; it also emits the overload
//! events the producers decide.

use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicUsize, Ordering::AcqRel, Ordering::Acquire, Ordering::Release,
};
use std::task::Poll;

use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use super::keys::Keyer;
use super::shed::{Disposal, Why, after_shed, reason};
use super::{CloseOnDrop, FrontParts};
use crate::ShedPolicy;
use crate::isolate::timer_at;
use crate::queue::{KeyPlace, NoRoom, Pushed};
use crate::report::IntakeEnd;

/// What every producer handle of one pipeline shares.
pub(crate) struct Producers<Item> {
    pub(crate) front: FrontParts<Item>,
    /// Producer handles that have not closed (dropped, or closed as a sink).
    live: AtomicUsize,
    /// Cancelled when `live` reaches 0: intake is over.
    gone: CancellationToken,
    /// Set as `live` reaches 0 if no stop had begun by then: intake ended
    /// `Exhausted`, even if a stop comes before the front task sees it.
    exhausted: AtomicBool,
}

impl<Item> Producers<Item> {
    pub(crate) fn new(front: FrontParts<Item>) -> Arc<Self> {
        Arc::new(Producers {
            front,
            live: AtomicUsize::new(0),
            gone: CancellationToken::new(),
            exhausted: AtomicBool::new(false),
        })
    }

    fn join(&self) {
        self.live.fetch_add(1, AcqRel);
    }

    fn leave(&self) {
        if self.live.fetch_sub(1, AcqRel) == 1 {
            // The stop token is a child of the caller's parent token, so a
            // cancelled parent shows here too (tokio-util cancels children
            // inside `cancel()`).
            if !self.front.phase.stop.is_cancelled() {
                self.exhausted.store(true, Release);
            }
            self.gone.cancel();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.front.phase.is_stopping() || self.front.queue.is_closed()
    }

    /// Pushes one item, whose room (`Backpressure`) and credit (settlement)
    /// are taken; `disposal` says who gets what the push sheds. A keyed
    /// pipeline takes the item's key first, unless `keyer` already holds it
    /// (a retry after waiting for the key's room).
    pub(crate) fn push(
        &self,
        item: Item,
        mut keyer: Option<Keyer>,
        disposal: Disposal,
    ) -> Pushing<Item> {
        let front = &self.front;
        // Leased only when needed: keyed, or something shed (then under
        // the queue's lock, below).
        let mut hooks = None;
        let mut item = item;
        if front.queue.is_keyed() && keyer.is_none() {
            hooks = front.stopper.hooks();
            let Some(keying) = hooks.as_deref().and_then(|hooks| hooks.keying.as_deref()) else {
                // The hooks are released once the pipeline has ended (its
                // queue closed): a push that comes later is refused, as the
                // closed queue would refuse it.
                self.unadmit();
                return Pushing::Done(Offer::Closed(item));
            };
            match key_one(keying, item) {
                Ok((keyed, fresh)) => (item, keyer) = (keyed, Some(fresh)),
                Err(item) => {
                    self.unadmit();
                    return Pushing::Done(Offer::Unkeyed(item));
                }
            }
        }
        let mut batch = vec![item];
        let mut shed = Vec::new();
        // Under the queue's lock: the books count the push, and its episode
        // records it in the same step, so a stop (which closes the queue
        // under that lock) finds the episode holding every shed counted
        // (invariant 1 of `overload`). A push that shed leases the hooks in
        // that step too: the queue is open, so the pipeline has not ended
        // and released them, and its release waits for the lease. (Leased
        // after unlocking, a shed counted `dropped` could find the hooks
        // released by an abort in between: no `on_shed`, no settlement, a
        // credit lost; found by a review.)
        let mut emitter = None;
        let count = |offered, shed| {
            front.books.intake.count_shared(offered, shed);
            emitter = front.overload.record_quietly(shed);
            if shed > 0 && hooks.is_none() && front.shed_needs.hooks(disposal) {
                hooks = front.stopper.hooks();
                debug_assert!(hooks.is_some(), "Producers: hooks released, queue open");
            }
        };
        let mut unkeyed = Vec::new();
        let pushed = match keyer.as_mut() {
            Some(keyer) => keyer.push(front, &mut batch, &mut shed, &mut unkeyed, count),
            None => front.queue.push(&mut batch, &mut shed, count),
        };
        if let Some(emitter) = emitter {
            emitter.wake();
        }
        if let Some(item) = unkeyed.pop() {
            // Its key's `Eq` panicked: handed back, as when its key
            // function panics; nothing counted.
            self.unadmit();
            return Pushing::Done(Offer::Unkeyed(item));
        }
        let count = match pushed {
            Pushed::Refused => {
                // Untouched: the item is there. Its credit goes back; its
                // room does not matter any more (the queue is closed).
                self.unadmit();
                return Pushing::Done(batch.pop().map_or(Offer::Queued, Offer::Closed));
            }
            Pushed::Accepted { blocked: true, .. } => match (batch.pop(), keyer) {
                (Some(item), Some(keyer)) => return Pushing::KeyFull(item, keyer),
                _ => unreachable!("a blocked push leaves its item and key"),
            },
            Pushed::Accepted { shed: 0, .. } => return Pushing::Done(Offer::Queued),
            Pushed::Accepted { shed, .. } => shed,
        };
        let why = match &keyer {
            Some(keyer) => Why::Each(&keyer.reasons),
            None => Why::All(reason(front.queue.policy())),
        };
        let arrival = match why {
            Why::Each(reasons) => reasons.first().is_some_and(|(_, arrival)| *arrival),
            // One item into a full queue: DropOldest evicted the oldest
            // queued item (a full queue holds at least one), DropNewest shed
            // this one.
            Why::All(_) => front.queue.policy() != ShedPolicy::DropOldest,
        };
        after_shed(hooks.as_deref(), &mut shed, count, why, disposal);
        Pushing::Done(match shed.pop() {
            None => Offer::Queued, // given to `on_shed`
            Some(item) if arrival => Offer::Shed(item),
            Some(item) => Offer::Evicted(item),
        })
    }

    /// Keyed: the key of `item`, taken now, outside every lock. `Err` with
    /// the item if the key function panicked, or if the pipeline's hooks
    /// are gone (it ended: a push would find the queue closed).
    pub(crate) fn key(&self, item: Item) -> Result<(Item, Keyer), Item> {
        let hooks = self.front.stopper.hooks();
        match hooks.as_deref().and_then(|hooks| hooks.keying.as_deref()) {
            Some(keying) => key_one(keying, item),
            None => Err(item),
        }
    }

    /// Keyed, under `Backpressure`: takes a place in the item's key (at
    /// once if it has room and nobody waits for it, else in its line, first
    /// come, first served: invariant 5 of `queue/keyed.rs`), then waits for
    /// a queue slot and a credit holding that place, then pushes with it.
    /// Key first: a producer waiting for a full key holds no queue slot, so
    /// other keys go on; and since every such producer holds its key's
    /// place while it waits for a slot, a key's producers enter in the
    /// order they began to wait, whatever the queue's room.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped, it gives up its place in line (passing on a
    /// place kept for it) and holds no slot or credit; the item is dropped
    /// with it, uncounted.
    pub(crate) async fn send_keyed(&self, item: Item, mut keyer: Keyer) -> Offer<Item> {
        let queue = &self.front.queue;
        let mut item = item;
        loop {
            let (keys, granted) = keyer.waiting();
            match queue.key_place(keys, granted).await {
                KeyPlace::Mine => {}
                KeyPlace::Closed => return Offer::Closed(item),
                // Its key's `Eq` panicked: nothing taken; the keys go with
                // the keyer, dropped here, outside the lock.
                KeyPlace::Unkeyed => return Offer::Unkeyed(item),
            }
            // Holding the key's place, wait for a queue slot and a credit;
            // dropped meanwhile, the place passes on.
            let mut holding = HoldingKeyPlace {
                producers: self,
                keyer: Some(keyer),
            };
            if self.admit().await.is_err() {
                return Offer::Closed(item); // `holding` passes the place on
            }
            let Some(held) = holding.keyer.take() else {
                unreachable!("the keys went")
            };
            keyer = held;
            match self.push(item, Some(keyer), Disposal::Producer) {
                Pushing::Done(offer) => return offer,
                // Unreachable while invariant 5 holds (the place was kept
                // for it); should it break, the place goes back and the
                // producer takes one afresh rather than spin, keying the
                // item again (its key function's second run, on this path
                // only: the keys are spent with the place).
                Pushing::KeyFull(full, held) => {
                    debug_assert!(false, "a push with a kept place found its key full");
                    self.unadmit();
                    held.leave(queue, None);
                    (item, keyer) = match self.key(full) {
                        Ok(keyed) => keyed,
                        Err(full) if self.is_closed() => return Offer::Closed(full),
                        Err(full) => return Offer::Unkeyed(full),
                    };
                }
            }
        }
    }

    /// Gives back the room and credit taken for an item not pushed.
    pub(crate) fn unadmit(&self) {
        self.front.queue.room().freed_one();
        if let Some(credits) = &self.front.credits {
            credits.unused(1);
        }
    }

    /// A credit (with settlement) and a slot (under `Backpressure`) for one
    /// item, without waiting. On `Err` nothing is held.
    pub(super) fn try_admit(&self) -> Result<(), NoRoom> {
        let front = &self.front;
        if let Some(credits) = &front.credits {
            if !credits.try_take_one() {
                return Err(NoRoom::Full);
            }
        }
        front.queue.room().try_reserve_one().inspect_err(|_| {
            if let Some(credits) = &front.credits {
                credits.unused(1);
            }
        })
    }

    /// [`try_admit`](Self::try_admit), waiting for the credit and the slot;
    /// `Err(Closed)` once the queue closed, or a stop came while it waited
    /// for a credit.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a credit taken before the wait for room is given back
    /// if the future is dropped.
    pub(super) async fn admit(&self) -> Result<(), NoRoom> {
        let front = &self.front;
        let credit = match &front.credits {
            Some(credits) => {
                // A stop refuses a producer waiting for a credit too (as the
                // closed queue refuses one waiting for a slot): credits come
                // back only as records are read, maybe after the stop, maybe
                // never. The stop token is polled only while waiting.
                let mut take = pin!(credits.take_one());
                let mut stop = pin!(front.phase.stop.cancelled());
                let taken = poll_fn(|cx| {
                    if take.as_mut().poll(cx).is_ready() {
                        Poll::Ready(true)
                    } else if stop.as_mut().poll(cx).is_ready() {
                        Poll::Ready(false)
                    } else {
                        Poll::Pending
                    }
                })
                .await;
                if !taken {
                    return Err(NoRoom::Closed);
                }
                Some(CreditGuard(credits))
            }
            None => None,
        };
        let room = front.queue.room().reserve_one().await;
        if room.is_ok() {
            std::mem::forget(credit);
        }
        room
    }
}

/// Keys `item` with `keying`; `Err` with the item if the key function
/// panicked.
fn key_one<Item>(
    keying: &dyn crate::config::Keying<Item>,
    item: Item,
) -> Result<(Item, Keyer), Item> {
    let mut keyer = Keyer::new(keying);
    let (mut batch, mut unkeyed) = (vec![item], Vec::new());
    keyer.key(keying, &mut batch, &mut unkeyed);
    match (batch.pop(), unkeyed.pop()) {
        (Some(item), None) => Ok((item, keyer)),
        (None, Some(item)) => Err(item),
        _ => unreachable!("one item, keyed or not"),
    }
}

/// A producer holding the place kept for it in its key while it waits for
/// a queue slot: dropped there, the place passes on (invariant 5 of
/// `queue/keyed.rs`).
struct HoldingKeyPlace<'a, Item> {
    producers: &'a Producers<Item>,
    keyer: Option<Keyer>,
}

impl<Item> Drop for HoldingKeyPlace<'_, Item> {
    fn drop(&mut self) {
        if let Some(keyer) = self.keyer.take() {
            keyer.leave(&self.producers.front.queue, None);
        }
    }
}

/// What [`Producers::push`] did.
pub(crate) enum Pushing<Item> {
    Done(Offer<Item>),
    /// Keyed, under `Backpressure`: the item's key is full. The item and
    /// its key come back, to wait for the key's room and push again.
    KeyFull(Item, Keyer),
}

/// Gives back a credit taken for an item that was never pushed.
struct CreditGuard<'a>(&'a crate::settle::Credits);

impl Drop for CreditGuard<'_> {
    fn drop(&mut self) {
        self.0.unused(1);
    }
}

/// The front task: waits for the end of intake, closes the queue, and emits
/// the overload events the producers decide.
pub(crate) async fn run<Item>(producers: Arc<Producers<Item>>) -> IntakeEnd {
    let front = &producers.front;
    let _close = CloseOnDrop(&front.queue);
    let hooks = front.stopper.hooks();
    let on_overload = hooks
        .as_deref()
        .and_then(|hooks| hooks.on_overload.as_ref());
    let mut stopped = pin!(front.phase.stop.cancelled());
    let mut gone = pin!(producers.gone.cancelled());
    let mut quiet = pin!(None::<Sleep>);
    let end = poll_fn(|cx| {
        loop {
            front.overload.register_emitter(cx.waker());
            front.overload.emit(on_overload);
            // Whichever came first: the last producer leaving, or a stop.
            let ended = gone.as_mut().poll(cx).is_ready();
            if ended && producers.exhausted.load(Acquire) {
                return Poll::Ready(IntakeEnd::Exhausted);
            }
            if stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(IntakeEnd::Stopped);
            }
            if ended {
                return Poll::Ready(IntakeEnd::Exhausted);
            }
            // The quiet timer follows the open episode's deadline.
            match front.overload.quiet_deadline() {
                None => quiet.set(None),
                Some(deadline) => match quiet.as_mut().as_pin_mut() {
                    Some(timer) if timer.deadline() == deadline => {}
                    Some(timer) => timer.reset(deadline),
                    None => quiet.set(timer_at(deadline)),
                },
            }
            let fired = quiet
                .as_mut()
                .as_pin_mut()
                .is_some_and(|timer| timer.poll(cx).is_ready());
            if !fired {
                return Poll::Pending;
            }
            front.overload.end_if_quiet(Instant::now());
            quiet.set(None);
        }
    })
    .await;
    // Closed before the episode ends, not only as this task returns: a
    // parent token's `cancel()` marks the stop cancelled (which this task
    // may see first) before it runs the stop that closes the queue, and a
    // push in between would shed into an episode already ended (invariant
    // 1 of `overload`; found by a review).
    front.queue.close();
    front.overload.finish();
    front.overload.emit(on_overload);
    end
}

/// A producer handle for a pipeline started with [`feeder`](crate::feeder).
///
/// `Clone`, `Send` and `Sync`: give a clone to every task, thread or
/// callback that produces items. Intake ends when every clone has been
/// dropped or closed (as a [`Sink`](futures_sink::Sink)). Memory stays
/// bounded however many producers offer at once: an offer queues into the
/// pipeline's own bounded queue, or sheds.
///
/// Three ways to push, for three kinds of producer:
///
/// * [`offer`](Self::offer): never waits; answers at once what happened and
///   hands back by value whatever was not queued ([`Offer`]). Shed items it
///   hands back are the caller's: counted `dropped` and settled, never
///   passed to [`on_shed`](crate::FanOutConfig::on_shed).
/// * [`send`](Self::send): waits for room under
///   [`ShedPolicy::Backpressure`] (and for a settlement credit), then
///   offers.
/// * The [`Sink`](futures_sink::Sink) implementation, for `stream.forward(feeder)`
///   and `SinkExt::send_all`: `poll_ready` waits for room under
///   `Backpressure` (and for a settlement credit), else it is ready at
///   once; a send given up half way should be followed by
///   [`abort_send`](Self::abort_send) on a handle that lives on; what a
///   push through the sink sheds (the item itself under `DropNewest`, the
///   evicted oldest under `DropOldest`) goes to `on_shed`, counted
///   `dropped`, since a sink has no way to hand it back.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
///
/// # #[tokio::main]
/// # async fn main() {
/// let config = FanOutConfig::new(4, ShedPolicy::Backpressure).capacity(16);
/// let (feeder, results, shutdown) =
///     backpressure_pipeline::feeder(config, |x: u64| async move { x });
/// // Four producer tasks; `send` waits for room under Backpressure.
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
/// let (out, report) = shutdown.join_collect(results).await;
/// for producer in producers {
///     producer.await.unwrap();
/// }
/// assert_eq!(out.len(), 400);
/// assert_eq!((report.produced, report.dropped), (400, 0));
/// # }
/// ```
pub struct Feeder<Item> {
    pub(crate) producers: Arc<Producers<Item>>,
    /// This handle counts as a producer (it was not closed as a sink).
    pub(crate) live: bool,
    /// The sink's readiness, per handle.
    pub(crate) sink: super::sink::SinkState,
    /// Keyed, under `Backpressure`: an item the sink accepted, waiting for
    /// its key's room. Behind a lock never taken (`get_mut`) only so that a
    /// `Feeder` stays `Sync` whatever the item and key types.
    pub(crate) held: super::sink::HeldSlot<Item>,
}

impl<Item> Feeder<Item> {
    pub(crate) fn new(producers: Arc<Producers<Item>>) -> Self {
        producers.join();
        let sink = super::sink::SinkState::new(&producers.front);
        Feeder {
            producers,
            live: true,
            sink,
            held: super::sink::HeldSlot::default(),
        }
    }

    /// This handle stops being a producer (dropped, or closed as a sink).
    pub(crate) fn retire(&mut self) {
        if std::mem::take(&mut self.live) {
            super::sink::drop_held(&self.producers, self.held.get_mut().take());
            self.sink.release(&self.producers.front);
            self.producers.leave();
        }
    }

    /// Offers `item` without waiting for room, and says at once what
    /// happened.
    ///
    /// Never awaits and never waits for a worker or the consumer: safe to
    /// call from synchronous code, a callback or a request handler. It does
    /// take the queue's lock (a `std::sync::Mutex`) for one push, held for
    /// a few hundred nanoseconds by whoever holds it (a producer, a worker
    /// taking an item, a stop); under heavy contention on a loaded machine
    /// the wait for that lock can reach milliseconds when the holder's
    /// thread is preempted. No user code ever runs under it.
    ///
    /// Under [`ShedPolicy::Backpressure`] a full queue answers
    /// [`Offer::Full`]; use [`send`](Self::send) to wait for room instead.
    /// With settlement, an offer made while `settle_capacity` items are
    /// unsettled answers `Full` too. Once a stop has returned, or on a
    /// handle closed as a sink, every offer answers [`Offer::Closed`].
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
        if !self.live || self.producers.front.phase.is_stopping() {
            return Offer::Closed(item);
        }
        match self.producers.try_admit() {
            Ok(()) => match self.producers.push(item, None, Disposal::Producer) {
                Pushing::Done(offer) => offer,
                Pushing::KeyFull(item, _) => {
                    self.producers.unadmit();
                    Offer::Full(item)
                }
            },
            Err(NoRoom::Full) => Offer::Full(item),
            Err(NoRoom::Closed) => Offer::Closed(item),
        }
    }

    /// Offers `item`, waiting for room under [`ShedPolicy::Backpressure`]
    /// and, with settlement, for a credit; otherwise it is
    /// [`offer`](Self::offer) and never waits.
    ///
    /// In a keyed pipeline ([`FanOutConfig::key_by`](crate::FanOutConfig::key_by))
    /// under `Backpressure`, `send` waits for room in its item's key first,
    /// in that key's line (first come, first served), and only then for a
    /// queue slot and a credit: sends waiting for a full key hold no slot,
    /// so other keys' items go on.
    ///
    /// Once a stop (a shutdown, an abort, a cancelled parent token, or
    /// dropping both the results and the shutdown handle) has returned,
    /// every `send` answers [`Offer::Closed`], also one that was
    /// waiting for room and was granted it just as the stop came: the push
    /// front closes the queue inside the stop, under the queue's lock.
    ///
    /// # Cancel safety
    ///
    /// As tokio's `mpsc::Sender::send`: if the future is dropped before it
    /// completes, the item was not queued and is dropped with the future,
    /// uncounted. Nothing else is lost: the place in line is given up, and
    /// a credit it held goes back.
    pub async fn send(&self, item: Item) -> Offer<Item> {
        let producers = &self.producers;
        if !self.live || producers.front.phase.is_stopping() {
            return Offer::Closed(item);
        }
        let queue = &producers.front.queue;
        if queue.is_keyed() && queue.policy() == ShedPolicy::Backpressure {
            // The key's room first, then the queue's (see `send_keyed`).
            return match producers.key(item) {
                Ok((item, keyer)) => producers.send_keyed(item, keyer).await,
                Err(item) if producers.is_closed() => Offer::Closed(item),
                Err(item) => Offer::Unkeyed(item),
            };
        }
        if producers.admit().await.is_err() {
            return Offer::Closed(item);
        }
        match producers.push(item, None, Disposal::Producer) {
            Pushing::Done(offer) => offer,
            // Only `Backpressure` refuses a full key, and it went above.
            Pushing::KeyFull(item, _) => {
                producers.unadmit();
                Offer::Full(item)
            }
        }
    }

    /// Whether intake is over for this handle: every offer now answers
    /// [`Offer::Closed`].
    pub fn is_closed(&self) -> bool {
        !self.live || self.producers.is_closed()
    }
}

// No item is ever pinned: one the sink holds is moved into the queue.
impl<Item> Unpin for Feeder<Item> {}

impl<Item> Clone for Feeder<Item> {
    fn clone(&self) -> Self {
        let mut clone = Feeder::new(Arc::clone(&self.producers));
        if !self.live {
            clone.retire();
        }
        clone
    }
}

impl<Item> Drop for Feeder<Item> {
    fn drop(&mut self) {
        self.retire();
    }
}

impl<Item> fmt::Debug for Feeder<Item> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (queue_depth, _) = self.producers.front.queue.depth();
        f.debug_struct("Feeder")
            .field("queue_depth", &queue_depth)
            .field("closed", &self.is_closed())
            .finish()
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
    /// offered item counts `produced`, the evicted one `dropped`. In a
    /// keyed pipeline the evicted item is the one the key rules pick: the
    /// key's own oldest when its queue is full
    /// ([`ShedReason::Superseded`](crate::ShedReason::Superseded)), else the
    /// fattest key's oldest, or under `DropNewest` its newest (a call that
    /// loses it that way answers [`Rejected::Shed`](crate::Rejected::Shed)).
    Evicted(Item),
    /// Not accepted, without waiting: the queue was full under
    /// [`ShedPolicy::Backpressure`] (which never sheds), or, in a keyed
    /// pipeline under `Backpressure`, the item's key was full (or had
    /// producers waiting for its room, or a place kept for one), or, with
    /// settlement, `settle_capacity` items were unsettled. Not counted at
    /// all.
    Full(Item),
    /// Intake is over (a stop, or this handle was closed as a sink): the
    /// item comes back, not counted.
    Closed(Item),
    /// Keyed pipelines ([`FanOutConfig::key_by`](crate::FanOutConfig::key_by)):
    /// the key function panicked on the item, or its key's `Hash` or `Eq`
    /// did; the item comes back, not counted.
    Unkeyed(Item),
}

impl<Item> Offer<Item> {
    /// Whether the offered item was queued (also when another was evicted
    /// to make room).
    pub fn is_queued(&self) -> bool {
        matches!(self, Offer::Queued | Offer::Evicted(_))
    }

    /// The item handed back, if any: the offered one (`Shed`, `Full`,
    /// `Closed`, `Unkeyed`) or the evicted one (`Evicted`).
    pub fn into_item(self) -> Option<Item> {
        match self {
            Offer::Queued => None,
            Offer::Shed(item)
            | Offer::Evicted(item)
            | Offer::Full(item)
            | Offer::Closed(item)
            | Offer::Unkeyed(item) => Some(item),
        }
    }
}
