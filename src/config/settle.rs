//! Settlement: every item's outcome, keyed, for acking to a broker.

use super::FanOutConfig;
use crate::settle::{Settlements, channel};

impl<Item: 'static, Kind> FanOutConfig<Item, Kind> {
    /// Settles every item: its outcome comes back once, as a
    /// [`Settlement`](crate::Settlement) holding the key `key` takes from
    /// the item (a message id, say), on the returned
    /// [`Settlements`] stream. For inputs whose items must be acknowledged,
    /// such as a broker's consumer group; with any front.
    ///
    /// Exactly one record per item taken, whose
    /// [`Outcome`](crate::Outcome) matches the [`Report`](crate::Report)
    /// counter the item is in: `Processed`, `Shed` (with the policy's
    /// reason), `Failed`, `TimedOut`, `Expired` or `Cancelled` (queued or
    /// in flight). `key` is called outside every lock: for an item a worker
    /// takes, once, before the handler gets it (so a handler that consumes
    /// the item still lets its key be reported); for a shed or abandoned
    /// item, when that happens. No record can exist without a key, so a
    /// panic in `key` is caught and leaves that item without a record, and
    /// the item is then never started (a broker would redeliver an item it
    /// never heard of, and it would be handled twice): it counts `failed`
    /// if a worker took it, or stays `dropped` or `cancelled`.
    ///
    /// Records are never sent under a lock and never wait; at most
    /// [`settle_capacity`](Self::settle_capacity) items are unsettled at
    /// once, and a settler that falls that far behind throttles intake (see
    /// [`Settlements`]). Read the records with the results and the join in
    /// one `tokio::join!`. To get the input back after a stop too, wrap it
    /// with [`hand_back`](crate::hand_back).
    ///
    /// A clone of the configuration settles into the same stream; the
    /// stream ends once every pipeline started with it has finished and
    /// every clone is gone.
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
    /// let (config, settlements) = FanOutConfig::new(1, ShedPolicy::DropNewest)
    ///     .capacity(2)
    ///     .settle_by(|(id, _): &(u32, String)| *id);
    /// let (results, shutdown) = messages.bounded_fan_out_with(config, |(_, body)| async move {
    ///     tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    ///     body.len()
    /// });
    /// let (_, mut records, report) = tokio::join!(
    ///     results.collect::<Vec<_>>(),
    ///     settlements.collect::<Vec<_>>(),
    ///     shutdown.join(),
    /// );
    /// records.sort_by_key(|r| r.key);
    /// let outcomes: Vec<_> = records.iter().map(|r| r.outcome).collect();
    /// let shed = Outcome::Shed(ShedReason::Newest);
    /// use Outcome::Processed;
    /// assert_eq!(outcomes, [Processed, Processed, Processed, shed, shed]);
    /// assert_eq!((report.processed, report.dropped), (3, 2));
    /// # }
    /// ```
    pub fn settle_by<K, KeyFn>(mut self, key: KeyFn) -> (Self, Settlements<K>)
    where
        K: Send + 'static,
        KeyFn: Fn(&Item) -> K + Send + Sync + 'static,
    {
        let (settle, settlements) = channel(key);
        self.settings.settle = Some(settle);
        (self, settlements)
    }

    /// With [`settle_by`](Self::settle_by): the most items that may be
    /// unsettled at once (queued, in flight, or
    /// with a settlement record not yet read). This bounds the records'
    /// memory; once that many are unsettled, intake waits for the settler
    /// before it takes more (the input keeps its items). Set it before or
    /// after `settle_by`; the first pipeline started with the configuration
    /// fixes it. Keep it well above
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
        self.settings.sizes.settle_capacity =
            super::check_count("settle_capacity", settle_capacity);
        self
    }
}
