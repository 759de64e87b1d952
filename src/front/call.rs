//! The call front: request/response on the push front. A [`Caller`]
//! offers each request as a job that carries its answer slot; the caller
//! awaits the [`Call`] for the response, and dropping the `Call` withdraws
//! the job.
//!
//! Everything else is the push front's: the same queue, policy, workers,
//! books and shutdown. What the call front adds, each in one place:
//!
//! * the job ([`Job`]): the request and its answer [`Slot`]. A job dropped
//!   unstarted answers its caller with a rejection and the request;
//! * the handler's wrapper ([`Serve`]): checks that the caller still waits
//!   before starting the handler, and while the handler is pending listens
//!   for the caller leaving (then the output says
//!   [`Verdict::Withdrawn`]);
//! * the hand-over: a response goes straight to its caller's slot, counted
//!   delivered, or discarded if the caller had gone (`results`' direct
//!   mode);
//! * the answering recorder ([`Answering`]): every outcome the pipeline
//!   decides (settlement's path) also answers the caller, and goes on to the
//!   caller's own settlement, if any;
//! * withdrawal ([`Call`]'s `Drop`): the caller leaves its slot, then takes
//!   its job out of the queue if it is still there.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::keys::Keyer;
use super::push::{Feeder, Offer, Producers, Pushing};
use super::rejected::{RejectReason, Rejected};
use super::shed::Disposal;
#[cfg(feature = "tower")]
use super::sink::SinkState;
use super::slot::{Answer, Slot};
use crate::config::{ConfigHooks, HandlerKind, Keying, Settings};
use crate::isolate::drop_quietly;
use crate::queue::{KeyPlace, KeyTable, NoRoom};
use crate::results::BoundedFanOut;
use crate::settle::{Outcome, PendingKey, Record, Settle, Stage};
use crate::worker::Verdict;
use crate::{ResultOrder, ShedPolicy};

// ===== the job =====

/// A request on its way through the pipeline, with its answer slot.
pub(crate) struct Job<Req, Resp> {
    /// `None` once the handler took it, or it was handed back.
    request: Option<Req>,
    slot: Arc<Slot<Req, Resp>>,
}

impl<Req, Resp> Job<Req, Resp> {
    /// The rejection of a job refused or shed at its push: the request back.
    fn reject(mut self, reason: RejectReason) -> Rejected<Req> {
        match self.request.take() {
            Some(request) => Rejected::new(reason, request),
            None => unreachable!("Job: pushed without its request"),
        }
    }
}

impl<Req, Resp> Drop for Job<Req, Resp> {
    fn drop(&mut self) {
        // Dropped unstarted (expired, abandoned without a hook, lost with its
        // task): the caller hears why, with its request, if it still waits.
        if let Some(request) = self.request.take() {
            let reason = self.slot.verdict().unwrap_or(RejectReason::Closed);
            let unsent = self.slot.answer((reason, request), |(reason, request)| {
                Err(Rejected::new(reason, request))
            });
            drop(unsent);
        }
    }
}

/// A job's output: the response for its caller, or word that the caller
/// went away and the handler stopped.
pub(crate) enum Answered<Req, Resp> {
    Done {
        response: Resp,
        slot: Arc<Slot<Req, Resp>>,
    },
    Withdrawn,
}

/// The worker's verdict on an output (see [`Verdict`]).
fn verdict<Req, Resp, Kind: HandlerKind<Resp>>(output: &Answered<Req, Resp>) -> Verdict {
    match output {
        Answered::Done { response, .. } => Verdict::of::<Resp, Kind>(response),
        Answered::Withdrawn => Verdict::Withdrawn,
    }
}

/// The direct hand-over: the response into its caller's slot (`None`:
/// delivered), or back if the caller has gone (discarded).
fn hand_over<Req, Resp>(output: Answered<Req, Resp>) -> Option<Answered<Req, Resp>> {
    let Answered::Done { response, slot } = output else {
        return None; // withdrawn outputs are never handed over
    };
    match slot.answer(response, Ok) {
        Ok(()) => None,
        Err(response) => Some(Answered::Done { response, slot }),
    }
}

pin_project! {
    /// The handler's future for one job: `None` if the caller had left
    /// before it started.
    pub(crate) struct Serve<Fut, Req, Resp> {
        #[pin]
        running: Option<Fut>,
        slot: Arc<Slot<Req, Resp>>,
    }
}

impl<Fut, Req, Resp> Future for Serve<Fut, Req, Resp>
where
    Fut: Future<Output = Resp>,
{
    type Output = Answered<Req, Resp>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(running) = this.running.as_pin_mut() else {
            return Poll::Ready(Answered::Withdrawn);
        };
        if let Poll::Ready(response) = running.poll(cx) {
            let slot = Arc::clone(this.slot);
            return Poll::Ready(Answered::Done { response, slot });
        }
        // As the worker looks at the kill token: only a pending handler
        // asks, so it is cancelled at its next await, never mid-poll.
        if this.slot.poll_gone(cx) {
            return Poll::Ready(Answered::Withdrawn);
        }
        Poll::Pending
    }
}

/// Wraps the caller's handler for jobs: a job whose caller has already
/// left is not started.
pub(crate) fn handler<Req, Resp, F, Fut>(
    handler: F,
) -> impl Fn(Job<Req, Resp>) -> Serve<Fut, Req, Resp> + Send + Sync + 'static
where
    Req: 'static,
    Resp: 'static,
    F: Fn(Req) -> Fut + Send + Sync + 'static,
    Fut: 'static,
{
    move |mut job: Job<Req, Resp>| {
        let slot = Arc::clone(&job.slot);
        let request = job.request.take();
        let running = match request {
            Some(request) if !slot.is_gone() => Some(handler(request)),
            // Taken by a worker after its caller left: dropped unstarted
            // (the `Drop` of the request is caught with this call's).
            _ => None,
        };
        Serve { running, slot }
    }
}

// ===== outcomes answer the caller =====

/// The call front's recorder: every outcome also answers the caller (or
/// says why, for a job dropped unstarted), then goes to the caller's own
/// settlement, if there is one.
struct Answering<Req> {
    settle: Option<Arc<dyn Record<Req>>>,
}

/// What [`Answering::key`] takes before a handler starts.
struct CallKey<Req, Resp> {
    slot: Arc<Slot<Req, Resp>>,
    settle: Option<PendingKey>,
}

impl<Req, Resp> Record<Job<Req, Resp>> for Answering<Req>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    fn record(&self, job: &Job<Req, Resp>, outcome: Outcome) {
        // The job is about to be handed back or dropped unstarted: its
        // `Drop` gives the caller this reason.
        if let Some(reason) = RejectReason::of(outcome) {
            job.slot.set_verdict(reason);
        }
        if let (Some(settle), Some(request)) = (&self.settle, &job.request) {
            settle.record(request, outcome);
        }
    }

    fn key(&self, job: &Job<Req, Resp>) -> Option<PendingKey> {
        let settle = match (&self.settle, &job.request) {
            (Some(settle), Some(request)) => match settle.key(request) {
                Some(key) => Some(key),
                None => {
                    // Not started: it counts `failed`, and says so.
                    job.slot.set_verdict(RejectReason::Failed);
                    return None;
                }
            },
            _ => None,
        };
        let slot = Arc::clone(&job.slot);
        Some(Box::new(CallKey { slot, settle }))
    }

    fn record_key(&self, key: Option<PendingKey>, outcome: Outcome) {
        let key = key.and_then(|key| key.downcast::<CallKey<Req, Resp>>().ok());
        let Some(key) = key else {
            // The caller's key function panicked: its settlement still gets
            // the keyless record (and its credit back).
            if let Some(settle) = &self.settle {
                settle.record_key(None, outcome);
            }
            return;
        };
        let CallKey {
            slot,
            settle: pending,
        } = *key;
        if let Some(settle) = &self.settle {
            settle.record_key(pending, outcome);
        }
        // The handler had started: the request is gone with it.
        let rejected = match outcome {
            Outcome::Failed => Rejected::Failed,
            Outcome::TimedOut => Rejected::TimedOut,
            Outcome::Cancelled(Stage::InFlight) => Rejected::Aborted,
            // Processed: the response answers (the hand-over); withdrawn:
            // the caller is gone.
            _ => return,
        };
        drop(slot.answer(rejected, Err));
    }
}

/// Hands an abandoned or withdrawn job's request to its caller if it still
/// waits (`Rejected::Closed`), or else to the caller's `on_cancel`.
fn on_cancel<Req, Resp>(
    hook: Option<crate::config::ItemHook<Req>>,
) -> impl Fn(Job<Req, Resp>) + Send + Sync + 'static
where
    Req: 'static,
    Resp: 'static,
{
    move |mut job: Job<Req, Resp>| {
        let Some(request) = job.request.take() else {
            return;
        };
        let Err(back) = job
            .slot
            .answer(request, |request| Err(Rejected::Closed(request)))
        else {
            return;
        };
        if let Some(hook) = &hook {
            hook(back);
        }
    }
}

/// The caller's settings, for jobs: its `on_cancel` and settlement see the
/// requests; the caller's answers ride on the outcomes; results go to the
/// callers, never to a reader.
pub(crate) fn settings_for_calls<Req, Resp>(settings: Settings<Req>) -> Settings<Job<Req, Resp>>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    let Settings {
        name,
        sizes,
        timing,
        hooks,
        cancel_token,
        order: _,
        settle,
        keying,
    } = settings;
    let (settle, credits) = match settle {
        Some(Settle { recorder, credits }) => (Some(recorder), credits),
        None => (None, None),
    };
    Settings {
        name,
        sizes,
        timing,
        hooks: ConfigHooks {
            // A call hands what it sheds back to its caller, as an offer.
            on_shed: None,
            on_cancel: Some(Arc::new(on_cancel(hooks.on_cancel))),
            on_overload: hooks.on_overload,
        },
        cancel_token,
        // The order in which callers get answers is their own: completion,
        // and no reader to take turns with.
        order: ResultOrder::Completion,
        settle: Some(Settle {
            recorder: Arc::new(Answering { settle }),
            credits,
        }),
        keying: keying.map(|keying| Arc::new(KeyJobs(keying)) as Arc<dyn Keying<_>>),
    }
}

/// The caller's key function, for jobs: a job's key is its request's.
struct KeyJobs<Req>(Arc<dyn Keying<Req>>);

impl<Req, Resp> Keying<Job<Req, Resp>> for KeyJobs<Req> {
    fn table(&self) -> Box<dyn KeyTable> {
        self.0.table()
    }

    fn new_keys(&self) -> Box<dyn std::any::Any + Send> {
        self.0.new_keys()
    }

    fn key_batch(
        &self,
        batch: &mut Vec<Job<Req, Resp>>,
        keys: &mut dyn std::any::Any,
        unkeyed: &mut Vec<Job<Req, Resp>>,
    ) {
        // A call pushes one job at a time: no batch to key in one go.
        let mut at = 0;
        while let Some(job) = batch.get(at) {
            if self.key_one(job, keys) {
                at += 1;
            } else {
                unkeyed.push(batch.remove(at));
            }
        }
    }

    fn key_one(&self, job: &Job<Req, Resp>, keys: &mut dyn std::any::Any) -> bool {
        let request = job.request.as_ref();
        request.is_some_and(|request| self.0.key_one(request, keys))
    }
}

/// How the pipeline reads and hands over the call front's outputs.
pub(crate) fn outputs<Req, Resp, Kind>() -> crate::launch::Outputs<Answered<Req, Resp>>
where
    Kind: HandlerKind<Resp>,
{
    crate::launch::Outputs {
        verdict: Some(verdict::<Req, Resp, Kind>),
        direct: Some(hand_over::<Req, Resp>),
    }
}

// ===== the caller's handles =====

/// What every clone of a [`Caller`], and every [`Call`], shares.
struct Shared<Req, Resp> {
    /// The push front's producer handle: intake ends when the last clone
    /// and the last call are gone.
    feeder: Feeder<Job<Req, Resp>>,
    /// The pipeline's second end (answers never go through it): held so
    /// that dropping the `ShutdownHandle` detaches the pipeline, as
    /// dropping it does while a results stream lives.
    _results: BoundedFanOut<Answered<Req, Resp>>,
}

impl<Req, Resp> Shared<Req, Resp> {
    fn producers(&self) -> &Arc<Producers<Job<Req, Resp>>> {
        &self.feeder.producers
    }
}

/// The handle of a pipeline started with [`caller`](crate::caller):
/// [`call`](Self::call) sends a request to a worker and waits for its
/// response.
///
/// `Clone`, `Send` and `Sync`: give a clone to every task or request
/// handler (an axum `State`). Intake ends, and the pipeline drains, once
/// every clone and every [`Call`] has been dropped, or at a shutdown.
/// With the `tower` feature it is also a `tower::Service`, and `CallLayer`
/// puts one in front of any infallible service.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(8);
/// let (caller, shutdown) =
///     backpressure_pipeline::caller(config, |n: u64| async move { n * n });
/// assert_eq!(caller.call(7).await.ok(), Some(49));
/// drop(caller); // the last handle: intake ends
/// let report = shutdown.join().await;
/// assert_eq!((report.produced, report.processed, report.delivered), (1, 1, 1));
/// # }
/// ```
pub struct Caller<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
    /// Room and credit held by the tower `Service`'s `poll_ready`.
    #[cfg(feature = "tower")]
    ready: SinkState,
}

impl<Req, Resp> Caller<Req, Resp> {
    pub(crate) fn new(
        feeder: Feeder<Job<Req, Resp>>,
        results: BoundedFanOut<Answered<Req, Resp>>,
    ) -> Self {
        Caller {
            #[cfg(feature = "tower")]
            ready: SinkState::new(&feeder.producers.front),
            shared: Arc::new(Shared {
                feeder,
                _results: results,
            }),
        }
    }

    /// Sends `request` to a worker and returns the [`Call`], which resolves
    /// to the handler's response, or to [`Rejected`] saying why there is
    /// none (with the request, wherever its handler never started).
    ///
    /// Nothing happens until the `Call` is first polled; then it is offered
    /// as [`Feeder::offer`](crate::Feeder::offer) offers: under the
    /// shedding policies it is queued or rejected at once (`Shed`, or it
    /// queues and the oldest queued call is `Evicted`), never waiting for
    /// room; under [`ShedPolicy::Backpressure`](crate::ShedPolicy::Backpressure)
    /// (and, with settlement, for a credit) the `Call` waits for room
    /// first, in line; keyed, it waits for room in its key first, in that
    /// key's line, holding no queue slot, as
    /// [`Feeder::send`](crate::Feeder::send) does. Once a stop has begun
    /// every call answers [`Rejected::Closed`].
    ///
    /// The response counts `processed` and `delivered`; every rejection is
    /// the outcome named on its variant. A `Call` dropped before its answer
    /// withdraws its request (see `Call`'s cancel safety), counted
    /// `cancelled` and [`withdrawn`](crate::Report::withdrawn).
    ///
    /// # Examples
    ///
    /// ```
    /// use backpressure_pipeline::{FanOutConfig, Rejected, ShedPolicy};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let config = FanOutConfig::new(1, ShedPolicy::DropNewest);
    /// let (caller, shutdown) = backpressure_pipeline::caller(config, |name: String| async move {
    ///     format!("hello, {name}")
    /// });
    /// assert_eq!(caller.call("axum".to_string()).await.ok().as_deref(), Some("hello, axum"));
    /// shutdown.shutdown();
    /// // Intake is over: the request comes back.
    /// let refused = caller.call("late".to_string()).await.unwrap_err();
    /// assert!(matches!(refused, Rejected::Closed(ref name) if name == "late"));
    /// # }
    /// ```
    pub fn call(&self, request: Req) -> Call<Req, Resp> {
        Call {
            shared: Some(Arc::clone(&self.shared)),
            state: State::Start {
                request,
                admitted: false,
            },
        }
    }

    /// Whether intake is over: every call now answers [`Rejected::Closed`].
    pub fn is_closed(&self) -> bool {
        self.shared.producers().is_closed()
    }

    /// A call with the room and credit this handle holds (`poll_ready`).
    #[cfg(feature = "tower")]
    pub(crate) fn call_ready(&mut self, request: Req) -> Call<Req, Resp> {
        let admitted = self.ready.take();
        Call {
            shared: Some(Arc::clone(&self.shared)),
            state: State::Start { request, admitted },
        }
    }

    /// Waits for room and a credit for the next call, where the pipeline
    /// has them; ready at once when intake is over (the call then answers
    /// `Closed`).
    #[cfg(feature = "tower")]
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.shared.producers().front.phase.is_stopping() {
            return Poll::Ready(());
        }
        let front = &self.shared.producers().front;
        self.ready.poll_admit(front, cx).map(drop)
    }
}

impl<Req, Resp> Clone for Caller<Req, Resp> {
    /// Another handle on the same pipeline; room held by this one's
    /// `poll_ready` stays with this one.
    fn clone(&self) -> Self {
        Caller {
            shared: Arc::clone(&self.shared),
            #[cfg(feature = "tower")]
            ready: SinkState::new(&self.shared.producers().front),
        }
    }
}

#[cfg(feature = "tower")]
impl<Req, Resp> Drop for Caller<Req, Resp> {
    fn drop(&mut self) {
        self.ready.release(&self.shared.producers().front);
    }
}

impl<Req, Resp> fmt::Debug for Caller<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (queue_depth, _) = self.shared.producers().front.queue.depth();
        f.debug_struct("Caller")
            .field("queue_depth", &queue_depth)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A future returned by [`Caller::call`]: the response to one request, or
/// why there is none.
///
/// # Cancel safety
///
/// Dropping a `Call` withdraws its request, so the capacity goes to callers
/// still waiting. What that does depends on where the request is:
///
/// * **Not yet offered** (never polled, or waiting for room under
///   `Backpressure`): nothing was counted; the request is dropped with the
///   future and its place in line given up, as with
///   [`Feeder::send`](crate::Feeder::send).
/// * **Queued**: taken out of the queue at once and its slot freed, counted
///   `cancelled` and [`withdrawn`](crate::Report::withdrawn), settled
///   [`Cancelled(Withdrawn)`](crate::Stage::Withdrawn) and handed to
///   [`on_cancel`](crate::FanOutConfig::on_cancel) (or dropped).
/// * **Running**: its handler is cancelled at its next await (dropped,
///   never polled again; a handler that is ready when polled completes),
///   and the worker takes the next request. Counted `cancelled` and
///   `withdrawn`, settled `Cancelled(Withdrawn)`; the request lived in the
///   handler and is gone with it. A response that was ready in the same
///   poll counts `processed` and `discarded`.
/// * **Answered** (the response is in the `Call`, not yet returned by a
///   poll): it counts `processed` and `delivered` already, and is dropped
///   with the future, as a result read from a results stream and then
///   dropped.
///
/// # Panics
///
/// Polling it again after it returned `Ready` panics, as an `async fn`'s
/// future does.
///
/// # Examples
///
/// A caller that gives up takes its request out of the queue:
///
/// ```
/// use std::time::Duration;
/// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
///
/// // Needs tokio's `test-util` feature: paused time, so timings are exact.
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let config = FanOutConfig::new(1, ShedPolicy::DropNewest);
/// let (caller, shutdown) = backpressure_pipeline::caller(config, |ms: u64| async move {
///     tokio::time::sleep(Duration::from_millis(ms)).await;
///     ms
/// });
/// let busy = tokio::spawn(caller.call(100)); // the one worker: 100 ms
/// tokio::task::yield_now().await; // it is offered first
/// // Queued behind it, this caller waits 10 ms and gives up.
/// let impatient = tokio::time::timeout(Duration::from_millis(10), caller.call(5)).await;
/// assert!(impatient.is_err());
/// assert_eq!(shutdown.stats().queue_depth, 0, "withdrawn: out of the queue");
/// assert_eq!(busy.await.unwrap().ok(), Some(100));
/// drop(caller);
/// let report = shutdown.join().await;
/// assert_eq!((report.processed, report.cancelled, report.withdrawn), (1, 1, 1));
/// # }
/// ```
#[must_use = "a call does nothing unless polled, and dropping it withdraws the request"]
pub struct Call<Req, Resp> {
    /// `None` once answered: a finished call holds no pipeline open.
    shared: Option<Arc<Shared<Req, Resp>>>,
    state: State<Req, Resp>,
}

/// Where a call is.
enum State<Req, Resp> {
    /// Not offered yet; `admitted`: its room and credit are held.
    Start { request: Req, admitted: bool },
    /// Waiting for room (`Backpressure`) or a settlement credit.
    Admit {
        request: Req,
        admit: Pin<Box<dyn Future<Output = Result<(), NoRoom>> + Send + Sync>>,
    },
    /// Keyed, under `Backpressure`: keyed, waiting for room in its key
    /// first (holding no slot or credit).
    KeyRoom {
        job: Job<Req, Resp>,
        keyer: SyncKeyer,
        ticket: Option<u64>,
    },
    /// Keyed, under `Backpressure`: its key has room (a place kept for it,
    /// if it waited in line); waiting for a queue slot and a credit.
    KeyAdmit {
        job: Job<Req, Resp>,
        keyer: SyncKeyer,
        admit: Pin<Box<dyn Future<Output = Result<(), NoRoom>> + Send + Sync>>,
    },
    /// Queued or running: waiting for the answer.
    Waiting(Arc<Slot<Req, Resp>>),
    /// Answered and returned, or dropped.
    Done,
}

// The request is never pinned: it is moved into the job.
impl<Req, Resp> Unpin for Call<Req, Resp> {}

impl<Req, Resp> Call<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    /// Offers a job, its room and credit held (and, keyed, its key taken
    /// if `keyer` holds it): waiting for the answer, waiting for room in
    /// its key, or rejected now.
    fn offer(
        shared: &Shared<Req, Resp>,
        job: Job<Req, Resp>,
        keyer: Option<Keyer>,
    ) -> Offered<Req, Resp> {
        let slot = Arc::clone(&job.slot);
        let offer = match shared.producers().push(job, keyer, Disposal::Producer) {
            Pushing::Done(offer) => offer,
            Pushing::KeyFull(job, keyer) => return Offered::KeyFull(job, keyer),
        };
        let reason = match offer {
            Offer::Queued => return Offered::Waiting(slot),
            // The oldest queued job went; its `Drop` tells its caller.
            Offer::Evicted(evicted) => {
                drop_quietly(evicted);
                return Offered::Waiting(slot);
            }
            Offer::Shed(job) => (job, RejectReason::Shed),
            Offer::Unkeyed(job) => (job, RejectReason::Unkeyed),
            Offer::Full(job) | Offer::Closed(job) => (job, RejectReason::Closed),
        };
        Offered::Rejected(Err(reason.0.reject(reason.1)))
    }

    /// Offers an admitted job (keyed: with the place kept for it in its
    /// key): the state after, or its answer now.
    fn offer_admitted(
        shared: &Shared<Req, Resp>,
        job: Job<Req, Resp>,
        keyer: Option<Keyer>,
    ) -> Result<State<Req, Resp>, Answer<Req, Resp>> {
        match Self::offer(shared, job, keyer) {
            // Unreachable while invariant 5 of `queue/keyed.rs` holds (a
            // keyed call pushes with the place kept for it); should it
            // break, the place goes back and the call takes one afresh.
            Offered::KeyFull(job, keyer) => {
                debug_assert!(false, "a call with a kept place found its key full");
                let producers = shared.producers();
                producers.unadmit();
                keyer.leave(&producers.front.queue, None);
                // The keys are spent with the place: keyed afresh (the key
                // function's second run for this request, on this path only).
                match producers.key(job) {
                    Ok((job, keyer)) => Ok(State::KeyRoom {
                        job,
                        keyer: SyncKeyer::new(keyer),
                        ticket: None,
                    }),
                    Err(job) if producers.is_closed() => Err(Err(job.reject(RejectReason::Closed))),
                    Err(job) => Err(Err(job.reject(RejectReason::Unkeyed))),
                }
            }
            Offered::Waiting(slot) => Ok(State::Waiting(slot)),
            Offered::Rejected(answer) => Err(answer),
        }
    }
}

/// A call's keys behind a lock that is never taken (only `into_inner`),
/// so that a `Call` stays `Sync` whatever the key type.
struct SyncKeyer(Mutex<Keyer>);

impl SyncKeyer {
    fn new(keyer: Keyer) -> Self {
        SyncKeyer(Mutex::new(keyer))
    }

    fn into_inner(self) -> Keyer {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What [`Call::offer`] did with a job.
enum Offered<Req, Resp> {
    Waiting(Arc<Slot<Req, Resp>>),
    /// Keyed, under `Backpressure`: its key is full.
    KeyFull(Job<Req, Resp>, Keyer),
    Rejected(Answer<Req, Resp>),
}

impl<Req, Resp> Future for Call<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Output = Result<Resp, Rejected<Req>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let answer = std::task::ready!(this.poll_answer(cx));
        // Answered: the call no longer holds the pipeline's intake open.
        this.shared = None;
        Poll::Ready(answer)
    }
}

impl<Req, Resp> Call<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer<Req, Resp>> {
        let this = self;
        let Some(shared) = &this.shared else {
            panic!("Call: polled after it returned its answer");
        };
        loop {
            match std::mem::replace(&mut this.state, State::Done) {
                State::Start {
                    request,
                    mut admitted,
                } => {
                    let producers = shared.producers();
                    let queue = &producers.front.queue;
                    let keyed_backpressure =
                        queue.is_keyed() && queue.policy() == ShedPolicy::Backpressure;
                    if admitted && keyed_backpressure {
                        // Room held from tower's `poll_ready` goes back: a
                        // keyed call takes its key's place first and room
                        // after, the order every producer takes them in
                        // (a slot held while waiting for a key's place
                        // could wait on a producer waiting for that slot).
                        producers.unadmit();
                        admitted = false;
                    }
                    if !admitted {
                        if producers.front.phase.is_stopping() {
                            return Poll::Ready(Err(Rejected::Closed(request)));
                        }
                        if keyed_backpressure {
                            // The key's room first, then the queue's, as
                            // `Feeder::send` (see `Producers::send_keyed`).
                            let job = Job {
                                request: Some(request),
                                slot: Arc::new(Slot::new()),
                            };
                            match producers.key(job) {
                                Ok((job, keyer)) => {
                                    let keyer = SyncKeyer::new(keyer);
                                    this.state = State::KeyRoom {
                                        job,
                                        keyer,
                                        ticket: None,
                                    };
                                    continue;
                                }
                                Err(job) if producers.is_closed() => {
                                    return Poll::Ready(Err(job.reject(RejectReason::Closed)));
                                }
                                Err(job) => {
                                    return Poll::Ready(Err(job.reject(RejectReason::Unkeyed)));
                                }
                            }
                        }
                        match producers.try_admit() {
                            Ok(()) => {}
                            Err(NoRoom::Full) => {
                                let producers = Arc::clone(producers);
                                let admit = Box::pin(async move { producers.admit().await });
                                this.state = State::Admit { request, admit };
                                continue;
                            }
                            Err(NoRoom::Closed) => {
                                return Poll::Ready(Err(Rejected::Closed(request)));
                            }
                        }
                    }
                    let job = Job {
                        request: Some(request),
                        slot: Arc::new(Slot::new()),
                    };
                    match Self::offer_admitted(shared, job, None) {
                        Ok(state) => this.state = state,
                        Err(answer) => return Poll::Ready(answer),
                    }
                }
                State::KeyRoom {
                    job,
                    keyer,
                    mut ticket,
                } => {
                    let producers = shared.producers();
                    let mut keyer = keyer.into_inner();
                    let queue = &producers.front.queue;
                    let (keys, granted) = keyer.waiting();
                    let room = queue.poll_key_place(keys, &mut ticket, granted, cx);
                    let Poll::Ready(room) = room else {
                        let keyer = SyncKeyer::new(keyer);
                        this.state = State::KeyRoom { job, keyer, ticket };
                        return Poll::Pending;
                    };
                    match room {
                        KeyPlace::Mine => {}
                        KeyPlace::Closed => {
                            // Closed: the place in line goes (grants lapsed).
                            keyer.leave(queue, ticket);
                            return Poll::Ready(Err(job.reject(RejectReason::Closed)));
                        }
                        // Its key's `Eq` panicked: nothing taken (the leave is
                        // a no-op, kept should a place ever be).
                        KeyPlace::Unkeyed => {
                            keyer.leave(queue, ticket);
                            return Poll::Ready(Err(job.reject(RejectReason::Unkeyed)));
                        }
                    }
                    match producers.try_admit() {
                        Ok(()) => match Self::offer_admitted(shared, job, Some(keyer)) {
                            Ok(state) => this.state = state,
                            Err(answer) => return Poll::Ready(answer),
                        },
                        Err(NoRoom::Full) => {
                            let producers = Arc::clone(producers);
                            let admit = Box::pin(async move { producers.admit().await });
                            let keyer = SyncKeyer::new(keyer);
                            this.state = State::KeyAdmit { job, keyer, admit };
                        }
                        Err(NoRoom::Closed) => {
                            keyer.leave(queue, None);
                            return Poll::Ready(Err(job.reject(RejectReason::Closed)));
                        }
                    }
                }
                State::KeyAdmit {
                    job,
                    keyer,
                    mut admit,
                } => match admit.as_mut().poll(cx) {
                    Poll::Ready(admitted) => {
                        let keyer = keyer.into_inner();
                        if admitted.is_err() {
                            keyer.leave(&shared.producers().front.queue, None);
                            return Poll::Ready(Err(job.reject(RejectReason::Closed)));
                        }
                        match Self::offer_admitted(shared, job, Some(keyer)) {
                            Ok(state) => this.state = state,
                            Err(answer) => return Poll::Ready(answer),
                        }
                    }
                    Poll::Pending => {
                        this.state = State::KeyAdmit { job, keyer, admit };
                        return Poll::Pending;
                    }
                },
                State::Admit { request, mut admit } => match admit.as_mut().poll(cx) {
                    Poll::Ready(Ok(())) => {
                        this.state = State::Start {
                            request,
                            admitted: true,
                        };
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(Rejected::Closed(request))),
                    Poll::Pending => {
                        this.state = State::Admit { request, admit };
                        return Poll::Pending;
                    }
                },
                State::Waiting(slot) => match slot.poll_answer(cx) {
                    Poll::Ready(answer) => return Poll::Ready(answer),
                    Poll::Pending => {
                        this.state = State::Waiting(slot);
                        return Poll::Pending;
                    }
                },
                State::Done => panic!("Call: polled after it returned its answer"),
            }
        }
    }
}

impl<Req, Resp> Drop for Call<Req, Resp> {
    fn drop(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        match std::mem::replace(&mut self.state, State::Done) {
            State::Waiting(slot) => {
                // First the slot, so that a worker taking the job from now
                // on finds its caller gone (and does not start it), then the
                // queue (still queued: out, counted, settled, handed back).
                let (unread, answered) = slot.leave();
                drop_quietly(unread);
                if !answered {
                    let stopper = &shared.producers().front.stopper;
                    stopper.withdraw(|job| Arc::ptr_eq(&job.slot, &slot));
                }
            }
            // Room and credit held for a push that will not come go back.
            State::Start {
                request,
                admitted: true,
            } => {
                shared.producers().unadmit();
                drop_quietly(request);
            }
            // Its place in line for the key's room goes (a wake-up or a
            // place kept for it passes on); it held no slot or credit yet.
            State::KeyRoom { job, keyer, ticket } => {
                let producers = shared.producers();
                let keyer = keyer.into_inner();
                keyer.leave(&producers.front.queue, ticket);
                drop_quietly(job);
            }
            // A place kept for it in its key passes on; a credit it took
            // goes back with the dropped wait for room.
            State::KeyAdmit { job, keyer, admit } => {
                drop(admit);
                let producers = shared.producers();
                let keyer = keyer.into_inner();
                keyer.leave(&producers.front.queue, None);
                drop_quietly(job);
            }
            _ => {}
        }
    }
}

impl<Req, Resp> fmt::Debug for Call<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Start { .. } => "not offered",
            State::Admit { .. } => "waiting for room",
            State::KeyRoom { .. } => "waiting for room in its key",
            State::KeyAdmit { .. } => "waiting for room in the queue, its key's kept",
            State::Waiting(_) => "waiting for the answer",
            State::Done => "done",
        };
        f.debug_struct("Call").field("state", &state).finish()
    }
}
