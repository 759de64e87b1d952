//! The results stream, the consumer's view of the results stage.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::stream::{FusedStream, Stream};
use pin_project_lite::pin_project;

use super::Receiver;
use crate::control::End;

pin_project! {
    /// Stream returned by [`FanOutExt::bounded_fan_out`] (and every other
    /// front): the handlers' outputs, in completion order unless
    /// [`FanOutConfig::result_order`](crate::FanOutConfig::result_order)
    /// says otherwise.
    ///
    /// It ends (`None`) after the last result, once every worker has exited:
    /// the input was exhausted and drained, or the pipeline was shut down.
    /// [`ShutdownHandle::join`](crate::ShutdownHandle::join) does not wait
    /// for that `None` once no result is left to read.
    /// Work does not wait for this stream to be polled; when
    /// [`output_capacity`] results are waiting, workers wait to hand theirs
    /// over (none is discarded) while intake keeps shedding by policy.
    ///
    /// Dropping it discards later results (they still count as `processed`);
    /// the pipeline runs on while its [`ShutdownHandle`] lives. Dropping both
    /// aborts the pipeline.
    ///
    /// [`FanOutExt::bounded_fan_out`]: crate::FanOutExt::bounded_fan_out
    /// [`output_capacity`]: crate::FanOutConfig::output_capacity
    /// [`ShutdownHandle`]: crate::ShutdownHandle
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutExt, ShedPolicy};
    /// use futures::stream::{FusedStream, StreamExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let (mut results, shutdown) =
    ///     futures::stream::iter([7]).bounded_fan_out(1, ShedPolicy::DropNewest, |x| async move { x });
    /// assert_eq!(results.next().await, Some(7));
    /// assert_eq!(results.next().await, None);
    /// assert!(results.is_terminated());
    /// assert_eq!(shutdown.join().await.processed, 1);
    /// # }
    /// ```
    #[must_use = "dropping the results stream discards every result"]
    pub struct BoundedFanOut<T> {
        results: Receiver<T>,
        end: End,
        terminated: bool,
    }
}

impl<T> BoundedFanOut<T> {
    pub(crate) fn new(results: Receiver<T>, end: End) -> Self {
        BoundedFanOut {
            results,
            end,
            terminated: false,
        }
    }
}

impl<T> Stream for BoundedFanOut<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.project();
        if *this.terminated {
            return Poll::Ready(None);
        }
        let next = this.results.poll_recv(cx);
        if let Poll::Ready(None) = next {
            *this.terminated = true;
        }
        next
    }

    /// The lower bound is the number of results already waiting; shedding
    /// makes the input's own hint meaningless here, so there is no upper
    /// bound until the stream has ended.
    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.terminated {
            (0, Some(0))
        } else {
            (self.results.ready_len(), None)
        }
    }
}

impl<T> FusedStream for BoundedFanOut<T> {
    fn is_terminated(&self) -> bool {
        self.terminated
    }
}

impl<T> fmt::Debug for BoundedFanOut<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedFanOut")
            .field("waiting_results", &self.results.ready_len())
            .field("terminated", &self.terminated)
            .field("shutting_down", &self.end.is_shutting_down())
            .finish()
    }
}
