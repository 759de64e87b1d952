//! Why a call got no response: [`Rejected`] (with the request, where it
//! was never started) and [`RejectReason`].

use std::fmt;

use crate::settle::{Outcome, ShedReason, Stage};

/// Why a [`Call`](crate::Call) got no response, with the request back
/// wherever its handler never started.
///
/// As [`Offer`](crate::Offer) hands back what it did not queue, and
/// tokio's `SendError` hands back its message: the request is yours again,
/// to retry elsewhere, log or drop. Every variant is one outcome in the
/// [`Report`](crate::Report), named beside it.
///
/// For HTTP, [`is_overload`](Self::is_overload) picks the answers that
/// mean "try again soon" (503 with a `Retry-After`); a timed-out handler
/// is a 504 and a failed one a 500.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutConfig, RejectReason, Rejected, ShedPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(2);
/// let (caller, shutdown) =
///     backpressure_pipeline::caller(config, |x: u32| async move { x * 2 });
/// // Offered together, before the worker runs: 1 and 2 fill the queue of
/// // two; 3 is shed.
/// let (a, b, c) = tokio::join!(caller.call(1), caller.call(2), caller.call(3));
/// assert_eq!((a.unwrap(), b.unwrap()), (2, 4));
/// let rejected = c.unwrap_err();
/// assert_eq!(rejected.reason(), RejectReason::Shed);
/// assert!(rejected.is_overload());
/// assert_eq!(rejected.into_request(), Some(3)); // never started: it comes back
/// # drop(caller);
/// # let _ = shutdown.join().await;
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejected<Req> {
    /// The queue was full and [`ShedPolicy::DropNewest`](crate::ShedPolicy::DropNewest)
    /// shed this request. Counted `produced` and `dropped`.
    Shed(Req),
    /// Queued, then evicted by a newer request under
    /// [`ShedPolicy::DropOldest`](crate::ShedPolicy::DropOldest). Counted
    /// `produced` and `dropped`.
    Evicted(Req),
    /// It waited in the queue longer than
    /// [`max_queue_age`](crate::FanOutConfig::max_queue_age) and was never
    /// started. Counted `expired`.
    Expired(Req),
    /// Intake is over (a stop began, before or while it was queued): never
    /// started. Refused at the call, it is not counted; abandoned in the
    /// queue by an abort, it counts `cancelled`.
    Closed(Req),
    /// Keyed pipelines ([`key_by`](crate::FanOutConfig::key_by)): the key
    /// function panicked on this request, or its key's `Hash` or `Eq` did;
    /// it was never queued. Not counted, as
    /// [`Offer::Unkeyed`](crate::Offer::Unkeyed).
    Unkeyed(Req),
    /// Its handler ran longer than
    /// [`handler_timeout`](crate::FanOutConfig::handler_timeout). Counted
    /// `timed_out`.
    TimedOut,
    /// Its handler panicked (caught), or its settlement key could not be
    /// taken. Counted `failed`.
    Failed,
    /// Its handler had started and an abort (or the drain deadline) cut it
    /// off. Counted `cancelled`.
    Aborted,
}

/// Why a call got no response: [`Rejected`] without the request.
///
/// What a `match` on [`Rejected::reason`] reads, and what to keep of a
/// rejection once the request is taken back: `Copy`, `Send`, `Sync` and a
/// [`std::error::Error`] (`From<Rejected<Req>>`), so it also travels in a
/// `tower::BoxError`, whatever the request type.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::RejectReason;
///
/// assert!(RejectReason::Expired.is_overload());
/// assert!(!RejectReason::TimedOut.is_overload());
/// assert_eq!(RejectReason::Shed.to_string(), "shed: the queue was full");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// See [`Rejected::Shed`].
    Shed,
    /// See [`Rejected::Evicted`].
    Evicted,
    /// See [`Rejected::Expired`].
    Expired,
    /// See [`Rejected::Closed`].
    Closed,
    /// See [`Rejected::Unkeyed`].
    Unkeyed,
    /// See [`Rejected::TimedOut`].
    TimedOut,
    /// See [`Rejected::Failed`].
    Failed,
    /// See [`Rejected::Aborted`].
    Aborted,
}

impl RejectReason {
    /// Whether the pipeline was overloaded: shed, evicted or expired. An
    /// HTTP front answers these 503 with a `Retry-After` hint.
    pub fn is_overload(self) -> bool {
        matches!(
            self,
            RejectReason::Shed | RejectReason::Evicted | RejectReason::Expired
        )
    }

    /// The reason a job with this settlement outcome gives its caller;
    /// `None` where the caller gets no rejection (processed: it gets the
    /// response; withdrawn: it has gone).
    pub(crate) fn of(outcome: Outcome) -> Option<RejectReason> {
        Some(match outcome {
            Outcome::Processed | Outcome::Cancelled(Stage::Withdrawn) => return None,
            // Evicted by a newer request: any in the queue, or its own key's.
            Outcome::Shed(ShedReason::Oldest | ShedReason::Superseded) => RejectReason::Evicted,
            Outcome::Shed(_) => RejectReason::Shed,
            Outcome::Expired => RejectReason::Expired,
            Outcome::Failed => RejectReason::Failed,
            Outcome::TimedOut => RejectReason::TimedOut,
            Outcome::Cancelled(Stage::Queued) => RejectReason::Closed,
            Outcome::Cancelled(_) => RejectReason::Aborted,
        })
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::Shed => "shed: the queue was full",
            RejectReason::Evicted => "evicted from the queue by a newer request",
            RejectReason::Expired => "expired: waited in the queue past its maximum age",
            RejectReason::Closed => "the pipeline no longer accepts requests",
            RejectReason::Unkeyed => "the request's key could not be taken (a panic in the key function, or in its key's Hash or Eq)",
            RejectReason::TimedOut => "the handler timed out",
            RejectReason::Failed => "the handler failed",
            RejectReason::Aborted => "the handler was cut off by an abort",
        })
    }
}

impl std::error::Error for RejectReason {}

impl<Req> Rejected<Req> {
    /// The rejection for `reason`, with `request` where the variant keeps
    /// one (the others drop it).
    pub(crate) fn new(reason: RejectReason, request: Req) -> Self {
        match reason {
            RejectReason::Shed => Rejected::Shed(request),
            RejectReason::Evicted => Rejected::Evicted(request),
            RejectReason::Expired => Rejected::Expired(request),
            RejectReason::Closed => Rejected::Closed(request),
            RejectReason::Unkeyed => Rejected::Unkeyed(request),
            RejectReason::TimedOut => Rejected::TimedOut,
            RejectReason::Failed => Rejected::Failed,
            RejectReason::Aborted => Rejected::Aborted,
        }
    }

    /// Why there is no response.
    pub fn reason(&self) -> RejectReason {
        match self {
            Rejected::Shed(_) => RejectReason::Shed,
            Rejected::Evicted(_) => RejectReason::Evicted,
            Rejected::Expired(_) => RejectReason::Expired,
            Rejected::Closed(_) => RejectReason::Closed,
            Rejected::Unkeyed(_) => RejectReason::Unkeyed,
            Rejected::TimedOut => RejectReason::TimedOut,
            Rejected::Failed => RejectReason::Failed,
            Rejected::Aborted => RejectReason::Aborted,
        }
    }

    /// Whether the pipeline was overloaded (see
    /// [`RejectReason::is_overload`]).
    pub fn is_overload(&self) -> bool {
        self.reason().is_overload()
    }

    /// The request, if its handler never started (`Shed`, `Evicted`,
    /// `Expired`, `Closed`, `Unkeyed`); `None` if the handler consumed it.
    pub fn into_request(self) -> Option<Req> {
        match self {
            Rejected::Shed(request)
            | Rejected::Evicted(request)
            | Rejected::Expired(request)
            | Rejected::Closed(request)
            | Rejected::Unkeyed(request) => Some(request),
            Rejected::TimedOut | Rejected::Failed | Rejected::Aborted => None,
        }
    }
}

impl<Req> fmt::Debug for Rejected<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No `Req: Debug` needed: the request is only said to be there.
        f.debug_struct("Rejected")
            .field("reason", &self.reason())
            .field(
                "has_request",
                &matches!(
                    self,
                    Rejected::Shed(_)
                        | Rejected::Evicted(_)
                        | Rejected::Expired(_)
                        | Rejected::Closed(_)
                        | Rejected::Unkeyed(_)
                ),
            )
            .finish()
    }
}

impl<Req> fmt::Display for Rejected<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.reason(), f)
    }
}

impl<Req> std::error::Error for Rejected<Req> {}

impl<Req> From<Rejected<Req>> for RejectReason {
    fn from(rejected: Rejected<Req>) -> Self {
        rejected.reason()
    }
}
