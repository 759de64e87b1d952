//! The call front as tower middleware (the `tower` feature): [`Caller`] is
//! a `tower_service::Service`, and [`CallLayer`] puts a pipeline in front of
//! any infallible service (an axum `Router` or handler).

use std::convert::Infallible;
use std::fmt;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;

use super::call::{Call, Caller};
use super::rejected::Rejected;
use crate::{Controller, FanOutConfig, ShutdownHandle};

/// `Service::call` uses the slot and credit `poll_ready` holds; the
/// inherent [`Caller::call`] takes `&self` and waits for its own (method
/// resolution picks it for `caller.call(..)`: after a `poll_ready` under
/// `Backpressure`, write `Service::call(&mut caller, request)`, as
/// middleware does).
///
/// Readiness follows the policy: under the shedding policies `poll_ready`
/// is ready as soon as it has a settlement credit, at once without
/// settlement (a call that finds the queue full is answered
/// [`Rejected::Shed`] at once, so a `load_shed` in front is not needed);
/// under [`ShedPolicy::Backpressure`](crate::ShedPolicy::Backpressure) it
/// also waits for a free slot. It holds what it waited for for the next
/// `call`, as tower's `Buffer` holds a channel slot (in a
/// keyed pipeline the call gives that slot back, takes its key's place and
/// then waits for room again, as every keyed producer takes them in that
/// order; see [`FanOutConfig::key_by`]). Once
/// intake is over it is ready, and the call answers [`Rejected::Closed`]
/// with the request. The error is the [`Rejected`] itself: axum's
/// `HandleErrorLayer` takes it as it is; map it to a
/// [`RejectReason`](crate::RejectReason) (`From`) to send it on as a
/// `BoxError`.
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutConfig, ShedPolicy};
/// use std::future::poll_fn;
/// use tower::Service;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let config = FanOutConfig::new(2, ShedPolicy::Backpressure).capacity(4);
/// let (mut service, shutdown) =
///     backpressure_pipeline::caller(config, |x: u32| async move { x + 1 });
/// poll_fn(|cx| service.poll_ready(cx)).await.unwrap(); // a slot is held
/// assert_eq!(Service::call(&mut service, 41).await.unwrap(), 42);
/// drop(service);
/// assert_eq!(shutdown.join().await.delivered, 1);
/// # }
/// ```
impl<Req, Resp> Service<Req> for Caller<Req, Resp>
where
    Req: Send + 'static,
    Resp: Send + 'static,
{
    type Response = Resp;
    type Error = Rejected<Req>;
    type Future = Call<Req, Resp>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Caller::poll_ready(self, cx).map(Ok)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        self.call_ready(request)
    }
}

/// A tower [`Layer`] that runs the service it wraps on a pipeline: each
/// request is a [`Caller::call`], so the inner service is called by at most
/// `workers` workers at once, behind a queue of `capacity` that sheds by the
/// policy, and a request whose caller went away is withdrawn.
///
/// Each [`layer`](Layer::layer) starts one pipeline, as tower's
/// `BufferLayer` spawns one worker per service it wraps. axum's
/// `Router::route_layer` wraps each route on its own, `Router::layer` each
/// route and the fallback, and `ServiceBuilder::service(router)` the whole
/// router once. The layer (and its clones) keeps each pipeline's
/// [`ShutdownHandle`]: a pipeline runs while its service (any clone) lives,
/// and when the last clone is dropped its intake ends and it drains and
/// finishes on its own. [`controllers`](Self::controllers) gives one
/// [`Controller`] per pipeline started, to shut them down and read their
/// reports; a parent token ([`FanOutConfig::cancel_token`]) shuts them all
/// down. Dropping the layer and every clone of the services aborts what is
/// left (nothing: every caller is gone).
///
/// The inner service must be infallible (`Error = Infallible`, as axum's
/// handlers and `Router` are); the layered service's error is
/// [`Rejected`]. For a fallible service, build the pipeline with
/// [`caller`](crate::caller) and a handler that calls it: its `Result`
/// becomes the response, counted in [`Report::errored`](crate::Report::errored)
/// with [`FanOutConfig::fallible`].
///
/// # Examples
///
/// ```
/// use std::convert::Infallible;
/// use backpressure_pipeline::{CallLayer, FanOutConfig, ShedPolicy};
/// use std::future::poll_fn;
/// use tower::Layer;
/// use tower::Service;
///
/// #[derive(Clone)]
/// struct Double;
/// impl Service<u32> for Double {
///     type Response = u32;
///     type Error = Infallible;
///     type Future = std::future::Ready<Result<u32, Infallible>>;
///     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
///         std::task::Poll::Ready(Ok(()))
///     }
///     fn call(&mut self, x: u32) -> Self::Future {
///         std::future::ready(Ok(x * 2))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = CallLayer::new(FanOutConfig::new(4, ShedPolicy::DropNewest).capacity(16));
/// let mut service = layer.layer(Double);
/// poll_fn(|cx| service.poll_ready(cx)).await.unwrap();
/// assert_eq!(Service::call(&mut service, 21).await.unwrap(), 42);
/// drop(service);
/// let [controller] = &layer.controllers()[..] else { unreachable!() };
/// assert_eq!(controller.finished().await.delivered, 1);
/// # }
/// ```
pub struct CallLayer<Req> {
    config: FanOutConfig<Req>,
    pipelines: Arc<Mutex<Vec<ShutdownHandle>>>,
}

impl<Req> CallLayer<Req> {
    /// A layer that starts a pipeline with `config` for each service it
    /// wraps.
    pub fn new(config: FanOutConfig<Req>) -> Self {
        CallLayer {
            config,
            pipelines: Arc::default(),
        }
    }

    /// One [`Controller`] for each pipeline this layer (or a clone of it)
    /// has started, in the order they were started.
    ///
    /// # Examples
    ///
    /// See [`CallLayer`]: `controller.finished().await` is the report of a
    /// pipeline whose services are all dropped.
    pub fn controllers(&self) -> Vec<Controller> {
        let pipelines = self
            .pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pipelines.iter().map(ShutdownHandle::controller).collect()
    }
}

impl<Req> Clone for CallLayer<Req> {
    /// The same settings; the clone adds the pipelines it starts to the
    /// same list of controllers.
    fn clone(&self) -> Self {
        CallLayer {
            config: self.config.clone(),
            pipelines: Arc::clone(&self.pipelines),
        }
    }
}

impl<Req> fmt::Debug for CallLayer<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallLayer")
            .field("config", &self.config)
            .field("pipelines", &self.controllers().len())
            .finish()
    }
}

impl<S, Req> Layer<S> for CallLayer<Req>
where
    S: Service<Req, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
{
    type Service = Caller<Req, S::Response>;

    /// Starts a pipeline whose workers call clones of `inner`.
    ///
    /// # Panics
    ///
    /// As [`caller`](crate::caller): outside a Tokio runtime, or on one
    /// without a time driver.
    fn layer(&self, inner: S) -> Self::Service {
        let (caller, shutdown) = crate::caller(self.config.clone(), move |request| {
            let service = inner.clone();
            oneshot(service, request)
        });
        self.pipelines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(shutdown);
        caller
    }
}

/// Waits for `service` to be ready and calls it once.
async fn oneshot<S, Req>(mut service: S, request: Req) -> S::Response
where
    S: Service<Req, Error = Infallible>,
{
    let Ok(()) = poll_fn(|cx| service.poll_ready(cx)).await;
    let Ok(response) = service.call(request).await;
    response
}
