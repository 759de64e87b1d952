//! Keyed pipelines: order and freshness per key, and fair shedding across
//! keys.

use std::any::Any;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;
use std::sync::Arc;

use super::FanOutConfig;
use crate::isolate::catching;
use crate::queue::{KeyHasher, KeyTable, Keys, table};

/// The caller's key function, erased: the queue sees keys only as ids.
pub(crate) trait Keying<Item>: Send + Sync {
    /// A key table for a new pipeline.
    fn table(&self) -> Box<dyn KeyTable>;
    /// A fresh, empty `Keys<K>` for a front's keys.
    fn new_keys(&self) -> Box<dyn Any + Send>;
    /// Appends the key of every item of `batch` to `keys` (a
    /// `Keys<K>`), in order; moves the items whose key function
    /// panicked from `batch` to `unkeyed`. One call per batch: one
    /// downcast, no allocation.
    fn key_batch(&self, batch: &mut Vec<Item>, keys: &mut dyn Any, unkeyed: &mut Vec<Item>);
    /// Appends the key of `item` to `keys` (a `Keys<K>`); `false` if
    /// the key function panicked (nothing appended). For a front whose
    /// items wrap the caller's (the call front's jobs).
    fn key_one(&self, item: &Item, keys: &mut dyn Any) -> bool;
}

struct KeyBy<F, K> {
    key: F,
    /// The hasher of the keys, seeded when `key_by` is called: every
    /// front of a pipeline hashes with it, and its queue compares the
    /// hashes. (Pipelines built from clones of one config share it, seed
    /// and all: harmless, each has its own table.)
    hasher: KeyHasher,
    of: PhantomData<fn() -> K>,
}

impl<F, K: Hash> KeyBy<F, K> {
    /// The key of `item` and its hash: both user code (the key function,
    /// the key's `Hash`), run here, outside every lock, under the caller's
    /// panic guard, so a panic in either fails the item (or hands it back)
    /// instead of unwinding through the queue (a review found the key's
    /// `Hash` run under the queue's lock).
    fn key_and_hash<Item>(&self, item: &Item) -> (K, u64)
    where
        F: Fn(&Item) -> K,
    {
        let key = (self.key)(item);
        let hash = self.hasher.hash_one(&key);
        (key, hash)
    }
}

impl<Item, F, K> Keying<Item> for KeyBy<F, K>
where
    F: Fn(&Item) -> K + Send + Sync,
    K: Hash + Eq + Send + 'static,
{
    fn table(&self) -> Box<dyn KeyTable> {
        table::<K>()
    }

    fn new_keys(&self) -> Box<dyn Any + Send> {
        Box::new(Keys::<K>::default())
    }

    fn key_batch(&self, batch: &mut Vec<Item>, keys: &mut dyn Any, unkeyed: &mut Vec<Item>) {
        let Some(Keys { queue: keys, .. }) = keys.downcast_mut::<Keys<K>>() else {
            unreachable!("Keying: keys of another type")
        };
        let mut at = 0;
        while let Some(item) = batch.get(at) {
            match catching(|| self.key_and_hash(item)) {
                Some(key) => {
                    keys.push_back(key);
                    at += 1;
                }
                // O(batch), only after a panic.
                None => unkeyed.push(batch.remove(at)),
            }
        }
    }

    fn key_one(&self, item: &Item, keys: &mut dyn Any) -> bool {
        let Some(Keys { queue: keys, .. }) = keys.downcast_mut::<Keys<K>>() else {
            unreachable!("Keying: keys of another type")
        };
        catching(|| self.key_and_hash(item))
            .map(|key| keys.push_back(key))
            .is_some()
    }
}

impl<Item, Kind> FanOutConfig<Item, Kind> {
    /// Keys the pipeline by `key`: per-key order, per-key shedding and fair
    /// service across keys, on every front. For feeds whose items belong to
    /// entities (a sensor, a device, an account, a symbol, a connection):
    ///
    /// * **Per-key order.** At most one item of a key is in a handler at a
    ///   time, and the items of a key start in arrival order (those not
    ///   shed); different keys run in parallel, up to the worker count. A
    ///   key's results are therefore delivered in its arrival order, as
    ///   Akka's `mapAsyncPartitioned` and Kafka's partitions keep it. Under
    ///   `Backpressure`, producers that find a key full (sends, calls, items
    ///   a `Sink` handle accepted) wait in line for its room, first come,
    ///   first served: a freed place is kept for the oldest waiter, and a
    ///   producer that did not wait cannot take it. One place is kept at a
    ///   time: when several free at once (a `per_key_capacity` above 1, or
    ///   several queued calls withdrawn together), the next waiter is woken
    ///   once the one before it is in, so waiters enter in the order they
    ///   began to wait. A `send` or a call takes its place in its key first
    ///   (at once if the key has room and nobody waits for it) and only then
    ///   waits for a queue slot (and a settlement credit), holding that
    ///   place: producers waiting for a full key hold no slot and never keep
    ///   other keys out, and a key's `send`s and calls enter in the order
    ///   they began to wait whatever the queue's room. A `Sink` handle
    ///   reserves its slot in `poll_ready`, before it sees the item; an item
    ///   it accepts for a full key gives that slot back, takes its place in
    ///   the key's line, and is pushed by the next `poll_ready`, `poll_flush`
    ///   or `poll_close` (its place, then room again). The stream front is one ordered
    ///   intake: an item whose key is full holds up the items pulled after
    ///   it (at most
    ///   [`MAX_INTAKE_BATCH`](Self::MAX_INTAKE_BATCH) in hand, counted
    ///   `produced` once queued), other keys' included, until its key has
    ///   room; a per-key shedding policy never waits.
    /// * **Per-key shedding.** With
    ///   [`per_key_capacity`](Self::per_key_capacity), a key whose own queue
    ///   is full sheds within itself: `DropNewest` sheds the arrival,
    ///   `DropOldest` evicts that key's oldest item
    ///   ([`ShedReason::Superseded`](crate::ShedReason::Superseded)), and
    ///   `Backpressure` waits for room in that key. `DropOldest` with a
    ///   per-key capacity of 1 keeps the latest item per key.
    /// * **Fair shedding.** When the whole queue is full and the arrival's
    ///   key is not the fattest (the one with the most queued items), the
    ///   fattest key gives up an item (its newest under `DropNewest`, its
    ///   oldest under `DropOldest`), not the queue's head, so a chatty key
    ///   cannot push out a quiet key's item, as FQ-CoDel (RFC 8290) drops
    ///   from the fattest flow.
    /// * **Fair service.** Idle workers take keys in turn, round robin among
    ///   the keys with a waiting item and nothing in flight (deficit round
    ///   robin with a quantum of one item), not in global arrival order, so
    ///   a hot key cannot starve cold ones.
    /// * **Bounded memory.** At most `capacity` items are queued, and a key
    ///   is tracked only while it has something queued or in flight (or a
    ///   producer waiting for its room): nothing grows with the number of
    ///   distinct keys ever seen. [`Stats::keys`](crate::Stats::keys)
    ///   counts the keys tracked.
    ///
    /// `key` is called once per item, outside every lock: as a stream's
    /// item is queued, or as an item is offered, sent or called (an `offer`
    /// refused for want of a slot or a credit is not keyed; a `send` that
    /// waits is keyed once, before it waits). A panic in it is caught and the item is never started: taken
    /// from a stream it counts [`failed`](crate::Report::failed); offered,
    /// sent through the `Sink` or called, it comes back uncounted
    /// ([`Offer::Unkeyed`](crate::Offer::Unkeyed), a [`SinkError`](crate::SinkError)
    /// holding it, [`Rejected::Unkeyed`](crate::Rejected::Unkeyed)). So
    /// does a panic in the key type's `Hash`, which runs with the key
    /// function, outside every lock, and in its `Eq`, which runs under the
    /// queue's lock (the table compares keys there): that panic is caught
    /// under the lock, the item fails or comes back as above, its key is
    /// dropped, and the rest goes on. `Eq` must not block (a derived one
    /// does not); when it panics, the panic hook runs under that lock too,
    /// so a hook must not call into the pipeline (`stats()`, say). Its `Drop` never runs under a lock: a key is dropped
    /// after unlocking, and a panic in it is caught.
    ///
    /// A key's item stays in flight until its result is handed over to the
    /// results buffer, so a key's results come out in its order whatever
    /// the [`ResultOrder`](crate::ResultOrder).
    /// [`ResultOrder::Input`](crate::ResultOrder::Input) delivers in the
    /// order items are taken: input order, except that an item held back
    /// behind its key's item in flight is taken, and delivered, after items
    /// of other keys that arrived later; one slow item still holds back
    /// every result taken after it.
    /// [`ResultOrder::LatestOnly`](crate::ResultOrder::LatestOnly) keeps the
    /// latest result of any key.
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// // Commands for accounts: in order per account, accounts in parallel.
    /// let commands = futures::stream::iter([("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]);
    /// let config = FanOutConfig::new(2, ShedPolicy::Backpressure)
    ///     .key_by(|(account, _): &(&str, u32)| *account);
    /// let (results, shutdown) = commands.bounded_fan_out_with(config, |command| async move {
    ///     tokio::task::yield_now().await;
    ///     command
    /// });
    /// let (out, report) = shutdown.join_collect(results).await;
    /// let a: Vec<u32> = out.iter().filter(|(k, _)| *k == "a").map(|(_, n)| *n).collect();
    /// assert_eq!(a, [1, 2, 3]); // account a's commands ran and came out in order
    /// assert_eq!(report.processed, 5);
    /// # }
    /// ```
    pub fn key_by<K, F>(mut self, key: F) -> Self
    where
        F: Fn(&Item) -> K + Send + Sync + 'static,
        K: Hash + Eq + Send + 'static,
    {
        self.settings.keying = Some(Arc::new(KeyBy {
            key,
            hasher: KeyHasher::default(),
            of: PhantomData,
        }));
        self
    }

    /// With [`key_by`](Self::key_by): the most items one key may have
    /// queued; past it, the policy applies within the key (see `key_by`).
    /// The default is no per-key limit beyond [`capacity`](Self::capacity).
    /// Unused without `key_by`.
    ///
    /// # Panics
    ///
    /// Panics if `per_key_capacity` is 0
    /// (`"FanOutConfig::per_key_capacity: per_key_capacity must be at least 1"`)
    /// or above [`MAX_CAPACITY`](Self::MAX_CAPACITY).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
    ///
    /// // The latest reading per sensor: DropOldest with one slot per key.
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = FanOutConfig::new(1, ShedPolicy::DropOldest)
    ///     .key_by(|(sensor, _): &(u32, u32)| *sensor)
    ///     .per_key_capacity(1);
    /// let (feeder, results, shutdown) =
    ///     backpressure_pipeline::feeder(config, |reading: (u32, u32)| async move { reading });
    /// // The worker has not run yet: sensor 7's readings supersede each other.
    /// for reading in [(7, 1), (7, 2), (9, 1), (7, 3)] {
    ///     let _ = feeder.offer(reading);
    /// }
    /// drop(feeder);
    /// let (mut out, report) = shutdown.join_collect(results).await;
    /// out.sort();
    /// assert_eq!(out, [(7, 3), (9, 1)]);
    /// assert_eq!(report.dropped, 2);
    /// # }
    /// ```
    #[track_caller]
    pub fn per_key_capacity(mut self, per_key_capacity: usize) -> Self {
        self.settings.sizes.per_key_capacity =
            super::check_count("per_key_capacity", per_key_capacity);
        self
    }
}
