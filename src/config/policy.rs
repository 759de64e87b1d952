use std::fmt;

/// What the pipeline discards when its queue is full.
///
/// A bounded queue that receives items faster than its workers finish them
/// must discard something; *which* item is a property of the data, so there
/// is no default: every pipeline names its policy.
///
/// Whichever item is discarded is counted in [`Report::dropped`] and handed
/// to [`FanOutConfig::on_shed`] if a hook is set. The two shedding policies
/// never block the input: intake keeps pulling at the input's own pace.
///
/// # `DropNewest`
///
/// The *arriving* item is shed; the items already queued keep their places
/// and their order. Use it for events and commands, where order matters and
/// a loss must be visible (an alarm) rather than silently reorder history.
///
/// With a queue of 3 slots and a worker busy on item `0`:
///
/// ```text
/// arrives:  1  2  3  4  5  6
/// queue:   [1][1 2][1 2 3][1 2 3][1 2 3][1 2 3]
/// shed:                    4      5      6
/// ```
///
/// # `DropOldest`
///
/// The *oldest queued* item is evicted and the arriving one is queued. Use it
/// for positions, sensor state and quotes, where only the freshest sample
/// matters and a stale one is worthless.
///
/// Same queue, same arrivals:
///
/// ```text
/// arrives:  1  2  3  4      5      6
/// queue:   [1][1 2][1 2 3][2 3 4][3 4 5][4 5 6]
/// shed:                    1      2      3
/// ```
///
/// # `Backpressure`
///
/// Nothing is shed: when the queue is full, intake **waits** for a worker to
/// take an item before it pulls the next one from the input. This is the
/// one policy under which the pipeline does block its input, so a slow
/// consumer throttles the producer, as with `buffer_unordered` or Kotlin's
/// `SUSPEND`. Use it for lossless runs, and to compare against the shedding
/// policies with the same report and shutdown. `dropped` is always 0; an
/// input that cannot wait (a UDP socket, a broadcast receiver) loses items
/// upstream instead, where nothing counts them.
///
/// Once the queue has filled, a stream's intake resumes pulling when the
/// queue has drained to half its capacity (a low-water mark, as Netty's
/// `WriteBufferWaterMark` keeps its low mark at half the high one), then
/// fills it again in batches: one wake-up per half a queue instead of one
/// per item. The push front ([`feeder`](crate::feeder)) instead lets each
/// waiting producer in as soon as a slot frees, in arrival order.
///
/// # Names elsewhere
///
/// | here | Akka Streams | Reactor, RxJava, Kotlin | .NET `BoundedChannelFullMode` |
/// |---|---|---|---|
/// | `DropNewest` | `OverflowStrategy.dropNew` | `DROP_LATEST` | `DropWrite` |
/// | `DropOldest` | `OverflowStrategy.dropHead` | `DROP_OLDEST` | `DropOldest` |
/// | `Backpressure` | `OverflowStrategy.backpressure` | `SUSPEND` (Kotlin), `BUFFER` | `Wait` |
///
/// Note that .NET's own `DropNewest` is *not* this crate's `DropNewest`: it
/// evicts the newest *queued* item to make room for the arriving one.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::ShedPolicy;
///
/// let policy = ShedPolicy::DropOldest;
/// assert_eq!(policy.to_string(), "DropOldest");
/// assert_ne!(policy, ShedPolicy::DropNewest);
/// ```
///
/// [`Report::dropped`]: crate::Report::dropped
/// [`FanOutConfig::on_shed`]: crate::FanOutConfig::on_shed
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShedPolicy {
    /// Shed the arriving item; keep the queued backlog and its order.
    DropNewest,
    /// Evict the oldest queued item; queue the arriving one.
    DropOldest,
    /// Shed nothing: intake waits for room, throttling the input.
    Backpressure,
}

impl fmt::Display for ShedPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            ShedPolicy::DropNewest => "DropNewest",
            ShedPolicy::DropOldest => "DropOldest",
            ShedPolicy::Backpressure => "Backpressure",
        })
    }
}
