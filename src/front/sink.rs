//! [`Feeder`] as a [`futures_sink::Sink`]: `stream.forward(feeder)`,
//! `SinkExt::send_all`, and every combinator built on sinks.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_sink::Sink;
use tokio_util::sync::{PollSemaphore, WaitForCancellationFutureOwned};

use super::FrontParts;
use super::keys::Keyer;
use super::push::{Feeder, Offer, Producers, Pushing};
use super::shed::Disposal;
use crate::queue::{KeyPlace, NoRoom};

/// An item `start_send` accepted whose key was full (keyed, under
/// `Backpressure`: `poll_ready` cannot know the next item's key). The room
/// and credit it was given go back at once, and it takes its place in its
/// key's line; the next `poll_ready`, `poll_flush` or `poll_close` waits
/// for that place, then for room and a credit again, and pushes it. Key
/// first, room second, as every keyed producer takes them: a handle
/// holding a slot while it waited for a key's place could wait on a `send`
/// holding that place while it waits for the slot.
pub(crate) struct Held<Item> {
    item: Item,
    keyer: Keyer,
    /// Its place in line for the key's room.
    ticket: Option<u64>,
}

/// A handle's [`Held`] item, behind a lock that is never taken (only
/// `get_mut`, through `&mut Feeder`): it keeps the `Feeder` `Sync` whatever
/// the item and key types.
pub(crate) struct HeldSlot<Item>(std::sync::Mutex<Option<Held<Item>>>);

impl<Item> Default for HeldSlot<Item> {
    fn default() -> Self {
        HeldSlot(std::sync::Mutex::new(None))
    }
}

impl<Item> HeldSlot<Item> {
    pub(crate) fn get_mut(&mut self) -> &mut Option<Held<Item>> {
        // Never locked, so never poisoned; taken as it is if it were.
        self.0
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What one handle has reserved for its next `start_send`, or waits for.
///
/// A wait keeps its place in line across polls (the semaphores are FIFO),
/// so the next slot or credit freed is handed to it even if its caller has
/// given up; [`abort`](Self::abort) leaves the line.
pub(crate) struct SinkState {
    /// Free slots (`Backpressure` only).
    room: Option<PollSemaphore>,
    /// Settlement credits (settlement only).
    credits: Option<PollSemaphore>,
    has_room: bool,
    has_credit: bool,
    /// A poll is waiting in a semaphore's line.
    waiting: bool,
    /// The stop, for a wait for credits: a stop closes the queue (and so
    /// the room's semaphore) but not the credits', which come back only as
    /// the records are read, maybe never. Made at the first such wait.
    stopped: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl SinkState {
    pub(crate) fn new<Item>(front: &FrontParts<Item>) -> Self {
        SinkState {
            room: room_poller(front),
            credits: front.credits.as_ref().map(|credits| credits.poller()),
            has_room: false,
            has_credit: false,
            waiting: false,
            stopped: None,
        }
    }

    /// Gives back what was reserved, and leaves the line if a poll was
    /// waiting in it (a slot or credit already handed to the wait goes
    /// back with it). Whether anything was held or waited for.
    pub(crate) fn abort<Item>(&mut self, front: &FrontParts<Item>) -> bool {
        let aborted = self.has_room || self.has_credit || self.waiting;
        self.release(front);
        self.leave_line(front);
        aborted
    }

    /// Leaves the line a poll waits in, if it does: for a wait given up,
    /// or refused by a stop.
    pub(crate) fn leave_line<Item>(&mut self, front: &FrontParts<Item>) {
        if std::mem::take(&mut self.waiting) {
            // Dropping a poller drops its pending acquire: tokio returns
            // what it was assigned and wakes the next in line.
            self.room = room_poller(front);
            self.credits = front.credits.as_ref().map(|credits| credits.poller());
        }
    }

    /// Gives back what was reserved and not used.
    pub(crate) fn release<Item>(&mut self, front: &FrontParts<Item>) {
        if std::mem::take(&mut self.has_room) {
            front.queue.room().freed_one();
        }
        if std::mem::take(&mut self.has_credit) {
            if let Some(credits) = &front.credits {
                credits.unused(1);
            }
        }
    }

    /// The reserved slot and credit were used (or given back) by a push.
    fn forget_reserved(&mut self) {
        self.has_room = false;
        self.has_credit = false;
    }

    /// Whether the next item may be pushed: its credit and slot are held.
    fn is_ready(&self) -> bool {
        (self.credits.is_none() || self.has_credit) && (self.room.is_none() || self.has_room)
    }

    /// Waits for a settlement credit and a free slot, where the pipeline
    /// has them, and holds them for the next push. `Err` once the queue has
    /// closed, or at a stop while waiting for a credit.
    pub(crate) fn poll_admit<Item>(
        &mut self,
        front: &FrontParts<Item>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), NoRoom>> {
        if let (Some(credits), false) = (&mut self.credits, self.has_credit) {
            match credits.poll_acquire(cx) {
                // A closed semaphore: nobody reads the records; no limit.
                Poll::Ready(permit) => permit.into_iter().for_each(|permit| permit.forget()),
                Poll::Pending => {
                    self.waiting = true;
                    // A stop ends the wait (a new-user trial found a
                    // `forward` waiting for credits past the pipeline's end).
                    let stopped = self.stopped.get_or_insert_with(|| {
                        Box::pin(front.phase.stop.clone().cancelled_owned())
                    });
                    if stopped.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // No credit is kept for a refused wait.
                    self.leave_line(front);
                    return Poll::Ready(Err(NoRoom::Closed));
                }
            }
            self.has_credit = true;
        }
        if let (Some(room), false) = (&mut self.room, self.has_room) {
            let Poll::Ready(permit) = room.poll_acquire(cx) else {
                self.waiting = true;
                return Poll::Pending;
            };
            self.waiting = false;
            match permit {
                Some(permit) => permit.forget(),
                None => return Poll::Ready(Err(NoRoom::Closed)), // the queue closed
            }
            self.has_room = true;
        }
        self.waiting = false;
        Poll::Ready(Ok(()))
    }

    /// Uses what is held for one push: whether it was everything the push
    /// needs (then nothing is held any more).
    pub(crate) fn take(&mut self) -> bool {
        let ready = self.is_ready();
        if ready {
            self.forget_reserved();
        }
        ready
    }
}

/// Why the [`Feeder`] sink refused an item.
///
/// Hands the item back when `start_send` refused one, so nothing is lost.
#[derive(Clone, PartialEq, Eq)]
pub struct SinkError<Item> {
    item: Option<Item>,
    why: Refusal,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Closed,
    NotReady,
    Unkeyed,
}

impl<Item> SinkError<Item> {
    /// The item refused or handed back: by `start_send`, or by
    /// `poll_ready`, `poll_flush` or `poll_close` when a stop came while the
    /// handle held an item for its key's room; otherwise `None` (an error
    /// from `poll_ready` with nothing held).
    pub fn into_item(self) -> Option<Item> {
        self.item
    }

    /// Whether intake is over (a stop, or this handle was closed): every
    /// later push is refused too. Otherwise the item alone was refused:
    /// `start_send` was called without a successful `poll_ready` before it
    /// (against the `Sink` contract) under `Backpressure` or with
    /// settlement, where `poll_ready` reserves the item's room or credit,
    /// whether or not the queue had room; or, in a keyed pipeline, its key
    /// function panicked.
    pub fn is_closed(&self) -> bool {
        self.why == Refusal::Closed
    }
}

impl<Item> fmt::Debug for SinkError<Item> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkError")
            .field("has_item", &self.item.is_some())
            .field("why", &self.why)
            .finish()
    }
}

impl<Item> fmt::Display for SinkError<Item> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.why {
            Refusal::Closed => "the pipeline no longer accepts items",
            Refusal::NotReady => {
                "start_send without a successful poll_ready, which reserves the item's room or credit"
            }
            Refusal::Unkeyed => "the item's key could not be taken (a panic in the key function, or in its key's Hash or Eq)",
        })
    }
}

impl<Item> std::error::Error for SinkError<Item> {}

fn refused<Item>(item: Option<Item>, why: Refusal) -> SinkError<Item> {
    SinkError { item, why }
}

/// A sink of items for the pipeline.
///
/// * `poll_ready` waits for a free slot under
///   [`ShedPolicy::Backpressure`](crate::ShedPolicy::Backpressure), and
///   with settlement for a credit under every policy; otherwise it is
///   always ready. It fails once intake is over, a wait included.
/// * `start_send` pushes the item. What that push sheds goes to
///   [`on_shed`](crate::FanOutConfig::on_shed) (or is dropped): the item
///   itself under `DropNewest`, the evicted oldest under `DropOldest`; it
///   counts `dropped`, and is settled. A refused item comes back in the
///   [`SinkError`].
///   In a keyed pipeline under `Backpressure` (`poll_ready` cannot know
///   the next item's key), an item whose key is full is accepted and held,
///   its slot and credit given back and its place taken in the key's line,
///   until its key has room: the next `poll_ready` waits for
///   that and pushes it first (a stop hands it back in the error).
/// * `poll_flush` is ready once nothing is held: a pushed item is already
///   queued.
/// * `poll_close` pushes a held item, then closes this handle as a
///   producer: intake ends when every handle is closed or dropped. The
///   handle accepts nothing afterwards. A handle dropped without a flush
///   drops an item it held, uncounted, as any buffered sink does.
///
/// Two things to know. [`Feeder::send`] is an inherent method (it answers
/// an [`Offer`]) and shadows `SinkExt::send`: write
/// `SinkExt::send(&mut feeder, item)`, or use `feed`, `send_all` or
/// `forward`. And once intake is over `poll_ready` fails before an item is
/// given, so `SinkExt::send` drops the item inside its future (uncounted);
/// to get refused items back, call `start_send` yourself, or use
/// [`Feeder::offer`].
///
/// # Cancel safety
///
/// A `poll_ready` that returned `Pending` keeps this handle's place in
/// line (the slots and credits are handed out first come, first served),
/// and a successful one holds its slot and credit for the next
/// `start_send`. So a send given up half way (a `SinkExt::send` future
/// dropped by `timeout` or `select!`) keeps the next slot or credit freed
/// for this handle until it is polled again, calls
/// [`abort_send`](Feeder::abort_send), or is dropped, as tokio-util's
/// `PollSender` does; no item is lost. A handle that gives up a send and
/// lives on should call `abort_send`.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
/// use futures::{SinkExt, StreamExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let config = FanOutConfig::new(2, ShedPolicy::Backpressure).capacity(4);
/// let (feeder, results, shutdown) =
///     backpressure_pipeline::feeder(config, |x: u32| async move { x * 2 });
/// // `forward` waits for room, pushes every item, then closes the feeder.
/// let input = futures::stream::iter(0..100u32).map(Ok);
/// let (forwarded, (mut out, report)) =
///     tokio::join!(input.forward(feeder), shutdown.join_collect(results));
/// forwarded.expect("the pipeline stayed open");
/// out.sort();
/// assert_eq!(out, (0..100).map(|x| x * 2).collect::<Vec<_>>());
/// assert_eq!((report.produced, report.dropped), (100, 0));
/// # }
/// ```
impl<Item> Sink<Item> for Feeder<Item> {
    type Error = SinkError<Item>;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        std::task::ready!(poll_held(
            &this.producers,
            &mut this.sink,
            this.held.get_mut(),
            cx
        ))?;
        // One atomic load: a live handle's queue closes only at a stop.
        if !this.live || this.producers.front.phase.is_stopping() {
            // A wait refused keeps no place in line (a review found the
            // credit line kept after a stop).
            this.sink.leave_line(&this.producers.front);
            return Poll::Ready(Err(refused(None, Refusal::Closed)));
        }
        this.sink
            .poll_admit(&this.producers.front, cx)
            .map(|admitted| admitted.map_err(|_| refused(None, Refusal::Closed)))
    }

    fn start_send(self: Pin<&mut Self>, item: Item) -> Result<(), Self::Error> {
        let this = self.get_mut();
        if !this.live {
            return Err(refused(Some(item), Refusal::Closed));
        }
        // What was reserved goes with the push: into the queue, or back
        // with a refused item.
        if !this.sink.take() {
            let why = if this.is_closed() {
                Refusal::Closed
            } else {
                Refusal::NotReady
            };
            return Err(refused(Some(item), why));
        }
        match this.producers.push(item, None, Disposal::Hook) {
            Pushing::Done(Offer::Closed(item)) => Err(refused(Some(item), Refusal::Closed)),
            // Its room and credit went back with the item: poll again.
            Pushing::Done(Offer::Unkeyed(item)) => Err(refused(Some(item), Refusal::Unkeyed)),
            Pushing::KeyFull(item, mut keyer) => {
                // `poll_ready` pushed what was held before it was ready.
                let held = this.held.get_mut();
                debug_assert!(held.is_none(), "Feeder: a second item held");
                // The room and credit go back (see `Held`), and its place
                // in the key's line is taken now, not at the next poll:
                // producers get in in the order they began to wait.
                this.producers.unadmit();
                let mut ticket = None;
                let (keys, granted) = keyer.waiting();
                let queue = &this.producers.front.queue;
                if !queue.line_up_for_key_place(keys, &mut ticket, granted) {
                    return Err(refused(Some(item), Refusal::Unkeyed));
                }
                *held = Some(Held {
                    item,
                    keyer,
                    ticket,
                });
                Ok(())
            }
            Pushing::Done(_) => Ok(()),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        poll_held(&this.producers, &mut this.sink, this.held.get_mut(), cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let flushed = std::task::ready!(poll_held(
            &this.producers,
            &mut this.sink,
            this.held.get_mut(),
            cx
        ));
        this.retire();
        Poll::Ready(flushed)
    }
}

impl<Item> Feeder<Item> {
    /// Aborts this handle's `Sink` send in progress, as tokio-util's
    /// `PollSender::abort_send` does: gives back the slot and credit a
    /// successful `poll_ready` reserved for the next `start_send`, and
    /// leaves the line a pending `poll_ready` waits in (a slot or credit
    /// already handed to that wait goes to the next in line). Returns
    /// whether anything was reserved or waited for. An item the sink holds
    /// for its key's room stays held, in its key's line (not counted in the
    /// return value): the next poll pushes it, or a stop hands it back (see
    /// the `Sink` impl).
    ///
    /// Call it when giving up a send through the `Sink` on a handle that
    /// lives on, e.g. after `timeout(d, SinkExt::send(&mut feeder, item))`
    /// elapsed: otherwise the next slot freed is kept for this handle until
    /// it is polled again or dropped. A [`Feeder::send`] future needs no
    /// such call: dropping it leaves its line.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{FanOutConfig, Offer, ShedPolicy};
    /// use futures::SinkExt;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
    /// let (mut feeder, results, shutdown) =
    ///     backpressure_pipeline::feeder(config, |x: u32| async move {
    ///         tokio::time::sleep(Duration::from_millis(10)).await;
    ///         x
    ///     });
    /// assert_eq!(feeder.offer(0), Offer::Queued);
    /// tokio::task::yield_now().await; // the worker takes 0, busy until 10 ms
    /// assert_eq!(feeder.offer(1), Offer::Queued); // the queue is full
    /// // A send through the sink gives up at 5 ms, waiting for room...
    /// let send = SinkExt::send(&mut feeder, 2);
    /// assert!(tokio::time::timeout(Duration::from_millis(5), send).await.is_err());
    /// // ...and leaves the line, so the slot freed at 10 ms is anyone's.
    /// assert!(feeder.abort_send());
    /// tokio::time::sleep(Duration::from_millis(6)).await; // the worker took 1
    /// assert_eq!(feeder.offer(3), Offer::Queued); // `Full` without the abort
    /// drop(feeder);
    /// let (out, _) = shutdown.join_collect(results).await;
    /// assert_eq!(out, [0, 1, 3]);
    /// # }
    /// ```
    pub fn abort_send(&mut self) -> bool {
        self.sink.abort(&self.producers.front)
    }
}

/// A poller of `front`'s free slots, where producers wait for them.
fn room_poller<Item>(front: &FrontParts<Item>) -> Option<PollSemaphore> {
    let slots = front.queue.room().semaphore()?;
    Some(PollSemaphore::new(std::sync::Arc::clone(slots)))
}

/// Pushes the item `held` for its key once it has its key's place (see
/// [`Held`]) and then room and a credit (`sink`'s reservation, used for
/// this push). `Err` with the item if the queue closed first.
fn poll_held<Item>(
    producers: &Producers<Item>,
    sink: &mut SinkState,
    held: &mut Option<Held<Item>>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), SinkError<Item>>> {
    let queue = &producers.front.queue;
    while let Some(waiting) = held {
        let (keys, granted) = waiting.keyer.waiting();
        let placed =
            std::task::ready!(queue.poll_key_place(keys, &mut waiting.ticket, granted, cx));
        // Holding the key's place: room and a credit.
        let admitted = if placed == KeyPlace::Mine {
            std::task::ready!(sink.poll_admit(&producers.front, cx)).is_ok() && sink.take()
        } else {
            false
        };
        let Some(Held {
            item,
            keyer,
            ticket,
        }) = held.take()
        else {
            unreachable!("Feeder: the held item went")
        };
        if placed == KeyPlace::Unkeyed {
            // Its key's `Eq` panicked: nothing taken; handed back, as when
            // its key function panics (the leave is a no-op, kept should a
            // place ever be).
            keyer.leave(queue, ticket);
            return Poll::Ready(Err(refused(Some(item), Refusal::Unkeyed)));
        }
        if !admitted {
            // Closed: the place (or the place in line) goes.
            keyer.leave(queue, ticket);
            return Poll::Ready(Err(refused(Some(item), Refusal::Closed)));
        }
        match producers.push(item, Some(keyer), Disposal::Hook) {
            // Unreachable while invariant 5 of `queue/keyed.rs` holds (the
            // place was kept for it); should it break, the room goes back
            // and the item takes a place afresh.
            Pushing::KeyFull(item, keyer) => {
                debug_assert!(false, "a push with a kept place found its key full");
                producers.unadmit();
                keyer.leave(queue, None);
                // The keys are spent with the place: keyed afresh (the key
                // function's second run for this item, on this path only).
                let (item, keyer) = match producers.key(item) {
                    Ok(keyed) => keyed,
                    Err(item) if producers.is_closed() => {
                        return Poll::Ready(Err(refused(Some(item), Refusal::Closed)));
                    }
                    Err(item) => return Poll::Ready(Err(refused(Some(item), Refusal::Unkeyed))),
                };
                *held = Some(Held {
                    item,
                    keyer,
                    ticket: None,
                });
            }
            Pushing::Done(Offer::Closed(item)) => {
                return Poll::Ready(Err(refused(Some(item), Refusal::Closed)));
            }
            // Unreachable: a held item's key id is known (no lookup).
            Pushing::Done(Offer::Unkeyed(item)) => {
                return Poll::Ready(Err(refused(Some(item), Refusal::Unkeyed)));
            }
            Pushing::Done(_) => {}
        }
    }
    Poll::Ready(Ok(()))
}

/// A handle retires with an item still held (closed or dropped without a
/// flush): its place (or its place in line) goes back, and the item is
/// dropped, uncounted, as any buffered sink drops what it was never asked
/// to flush. It held no room or credit (see [`Held`]).
pub(crate) fn drop_held<Item>(producers: &Producers<Item>, held: Option<Held<Item>>) {
    if let Some(Held {
        item,
        keyer,
        ticket,
    }) = held
    {
        keyer.leave(&producers.front.queue, ticket);
        crate::isolate::drop_quietly(item);
    }
}
