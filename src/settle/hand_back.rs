//! The input's return: a stream the pipeline stops pulling comes back to
//! the caller, with whatever it had not yet yielded.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::stream::{FusedStream, Stream};
use tokio::sync::oneshot;

/// Wraps `input` so that it comes back to the caller when the pipeline
/// stops pulling it early: returns the stream to fan out, and the
/// [`InputBack`] future that resolves to the input once it was let go.
///
/// For an input whose items must not be lost with it, such as a broker
/// consumer that has prefetched messages: after a shutdown, an abort (also
/// the one that dropping both halves begins) or a cancelled parent token,
/// the items not yet pulled are still the caller's, to nak or to leave for
/// redelivery. Use it with any stream front
/// ([`bounded_fan_out`](crate::FanOutExt::bounded_fan_out) and
/// [`bounded_fan_out_with`](crate::FanOutExt::bounded_fan_out_with)); the
/// push front needs none, since producers keep what they did not offer.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
/// use futures::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// // Backpressure: intake pulls only what fits (1 queued, 1 in flight).
/// let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
/// let (input, back) = backpressure_pipeline::hand_back(futures::stream::iter(0..10u32));
/// let (results, shutdown) =
///     input.bounded_fan_out_with(config, |_| std::future::pending::<u32>());
/// tokio::task::yield_now().await;
/// shutdown.abort();
/// let (_, report) = shutdown.join_collect(results).await;
/// // What the pipeline never pulled is handed back, starting at the next item.
/// let rest: Vec<u32> = back.await.expect("stopped early").collect().await;
/// assert_eq!(rest.first().copied(), Some(report.produced as u32));
/// assert_eq!(rest.len() as u64, 10 - report.produced);
/// # }
/// ```
pub fn hand_back<S: Stream>(input: S) -> (HandBack<S>, InputBack<S>) {
    let (tx, rx) = oneshot::channel();
    let stream = HandBack {
        input: Some(Box::pin(input)),
        back: Some(tx),
        done: false,
        poisoned: false,
    };
    (stream, InputBack { rx })
}

/// An input that comes back when dropped early, from [`hand_back`].
///
/// It yields what the wrapped stream yields. Dropped before the stream
/// ended (and not after a panic in its `poll_next`), it sends the stream to
/// its [`InputBack`].
#[must_use = "streams do nothing unless polled"]
pub struct HandBack<S> {
    input: Option<Pin<Box<S>>>,
    back: Option<oneshot::Sender<Pin<Box<S>>>>,
    /// The stream returned `None`: nothing left to hand back.
    done: bool,
    /// A `poll_next` panicked: the stream is in no state to be used again.
    poisoned: bool,
}

impl<S: Stream> Stream for HandBack<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = &mut *self;
        let Some(input) = this.input.as_mut() else {
            return Poll::Ready(None);
        };
        // Cleared only if `poll_next` returns: a panic leaves it set.
        this.poisoned = true;
        let next = input.as_mut().poll_next(cx);
        this.poisoned = false;
        this.done |= matches!(next, Poll::Ready(None));
        next
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.input.as_ref().map_or((0, Some(0)), |s| s.size_hint())
    }
}

impl<S: Stream> FusedStream for HandBack<S> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

impl<S> Drop for HandBack<S> {
    fn drop(&mut self) {
        let (Some(input), Some(back)) = (self.input.take(), self.back.take()) else {
            return;
        };
        if !self.done && !self.poisoned {
            // Refused if nobody waits for it: then it is dropped here.
            drop(back.send(input));
        }
    }
}

impl<S> fmt::Debug for HandBack<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandBack")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

/// A future that resolves to the input once the pipeline has let go of it,
/// from [`hand_back`].
///
/// Resolves to `Some(input)` when the pipeline stopped pulling before the
/// input ended (a shutdown, an abort, a cancelled parent token, both halves
/// dropped, or the runtime shutting down): items not yet pulled are still
/// the caller's. Resolves to `None` when the input was exhausted or
/// panicked. The stream comes back boxed and pinned, so it is `Unpin`
/// whatever its type.
///
/// # Cancel safety
///
/// Dropping it before it resolves drops the input when intake ends.
#[must_use = "futures do nothing unless you `.await` or poll them"]
pub struct InputBack<S> {
    rx: oneshot::Receiver<Pin<Box<S>>>,
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
