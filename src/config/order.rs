//! The one choice of how results reach the reader.

use super::FanOutConfig;

/// How results reach the reader of the results stream: one choice, so no
/// conflicting pair can be configured. Set with
/// [`FanOutConfig::result_order`].
///
/// | order | buffer | workers wait for the reader | typical stream |
/// |---|---|---|---|
/// | [`Completion`](Self::Completion) (default) | FIFO of `output_capacity` | when it is full | independent jobs |
/// | [`Input`](Self::Input) | reorder window of `workers + output_capacity` | when the window is full | results that must keep input order |
/// | [`LatestOnly`](Self::LatestOnly) | one slot | never | state: positions, readings, prices |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ResultOrder {
    /// In the order handlers complete. A result waits for room in a FIFO
    /// buffer of [`output_capacity`](FanOutConfig::output_capacity) results
    /// (a worker holding a finished result waits; none is discarded while
    /// the results stream lives, unless an abort begins), and intake goes
    /// on shedding by policy.
    #[default]
    Completion,
    /// In input order, as futures' `buffered` and Akka's `mapAsync` deliver.
    /// Precisely: in the order workers take items, which is input order
    /// unless the pipeline is keyed (then an item held back behind its key's
    /// item in flight comes after items of other keys that arrived later;
    /// see [`key_by`](FanOutConfig::key_by)).
    ///
    /// Items that never produce a result (shed, failed, timed out,
    /// cancelled) are skipped. A slow item holds back the results of items
    /// taken after it, and so do workers: at most `workers +
    /// output_capacity` items are between being taken and being delivered,
    /// so the reorder memory stays bounded by that many results; past it,
    /// workers wait (and intake goes on shedding by policy). An abort (or a
    /// drain deadline running out) cuts off the item holding the line, and
    /// the finished results waiting behind it are discarded like any unread
    /// result.
    Input,
    /// Latest only, for state streams: one undelivered result is kept, and
    /// a newer one replaces it (the replaced one counts
    /// [`discarded`](crate::Report::discarded)). Workers never wait for the
    /// reader, so a slow consumer always reads the freshest result, as with
    /// tokio's `watch`, Rx's `onBackpressureLatest` or Akka's `conflate`.
    /// [`output_capacity`](FanOutConfig::output_capacity) is unused.
    ///
    /// **Freshness end to end.** In completion order a result can wait
    /// behind `output_capacity` others, so under
    /// [`DropOldest`](crate::ShedPolicy::DropOldest) and a consumer that
    /// takes `P` per result the result it reads may be up to about
    /// `output_capacity × P` older than its handler's end (plus the queue's
    /// wait): the policy alone does not keep results fresh. Latest only,
    /// the result read was produced at most one consumer period `P`
    /// earlier, plus the handler's own time and the item's wait in the
    /// queue. `BENCHMARKS.md` has the measured ages.
    LatestOnly,
}

impl<Item, Kind> FanOutConfig<Item, Kind> {
    /// Sets how results reach the reader: in completion order (the
    /// default), in input order, or latest only (see [`ResultOrder`]).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use backpressure_pipeline::{FanOutConfig, FanOutExt, ResultOrder, ShedPolicy};
    ///
    /// // Needs tokio's `test-util` feature: paused time, so timers fire at once and timings are exact.
    /// #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// async fn main() {
    ///     let config = FanOutConfig::new(3, ShedPolicy::DropNewest).result_order(ResultOrder::Input);
    ///     let (results, shutdown) = futures::stream::iter([30u64, 10, 20])
    ///         .bounded_fan_out_with(config, |ms| async move {
    ///             tokio::time::sleep(Duration::from_millis(ms)).await;
    ///             ms
    ///         });
    ///     let (out, _) = shutdown.join_collect(results).await;
    ///     assert_eq!(out, [30, 10, 20]); // input order, not completion order
    ///
    ///     let config = FanOutConfig::new(1, ShedPolicy::DropOldest).result_order(ResultOrder::LatestOnly);
    ///     let (results, shutdown) =
    ///         futures::stream::iter(0..5u32).bounded_fan_out_with(config, |x| async move { x });
    ///     // A slow reader: by the time it looks, only the newest result is left.
    ///     tokio::time::sleep(Duration::from_millis(10)).await;
    ///     let (out, report) = shutdown.join_collect(results).await;
    ///     assert_eq!(out, [4]);
    ///     assert_eq!((report.processed, report.delivered, report.discarded), (5, 1, 4));
    /// }
    /// ```
    pub fn result_order(mut self, order: ResultOrder) -> Self {
        self.settings.order = order;
        self
    }
}
