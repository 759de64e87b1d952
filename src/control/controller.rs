use std::fmt;
use std::sync::Arc;

use super::Control;
use crate::report::{Report, Stats};

/// A cloneable remote control for a pipeline, from
/// [`ShutdownHandle::controller`](crate::ShutdownHandle::controller).
///
/// `Clone + Send + Sync`: hand one to a signal handler, a monitoring task or
/// an admin endpoint. It can [`shutdown`](Self::shutdown),
/// [`abort`](Self::abort), read [`stats`](Self::stats) and wait for the end
/// with [`finished`](Self::finished), which returns a copy of the final
/// [`Report`].
///
/// A controller is not one of the pipeline's two halves: it does not keep
/// the pipeline alive. Dropping `results` and the [`ShutdownHandle`] still
/// aborts it while controllers exist; they then see the pipeline finish.
///
/// [`ShutdownHandle`]: crate::ShutdownHandle
///
/// # Examples
///
/// ```
/// use backpressure_pipeline::{FanOutExt, ShedPolicy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let (results, shutdown) = futures::stream::pending::<u32>()
///     .bounded_fan_out(2, ShedPolicy::DropNewest, |x| async move { x });
/// let controller = shutdown.controller();
/// // A monitor task stops the pipeline from elsewhere.
/// let monitor = tokio::spawn({
///     let controller = controller.clone();
///     async move { controller.shutdown() }
/// });
/// drop(results);
/// let report = shutdown.join().await;
/// monitor.await.unwrap();
/// assert_eq!(controller.finished().await, report);
/// assert!(controller.is_finished());
/// # }
/// ```
#[derive(Clone)]
pub struct Controller {
    control: Arc<dyn Control>,
}

impl Controller {
    pub(crate) fn new(control: Arc<dyn Control>) -> Self {
        Controller { control }
    }

    /// Requests a graceful shutdown, as
    /// [`ShutdownHandle::shutdown`](crate::ShutdownHandle::shutdown).
    pub fn shutdown(&self) {
        self.control.shutdown();
    }

    /// Stops the pipeline now, as
    /// [`ShutdownHandle::abort`](crate::ShutdownHandle::abort).
    pub fn abort(&self) {
        self.control.abort();
    }

    /// A live snapshot, as [`ShutdownHandle::stats`](crate::ShutdownHandle::stats).
    pub fn stats(&self) -> Stats {
        self.control.stats()
    }

    /// Whether a shutdown or abort has been requested.
    pub fn is_shutting_down(&self) -> bool {
        self.control.is_shutting_down()
    }

    /// Whether the pipeline has finished and its report is available.
    pub fn is_finished(&self) -> bool {
        self.control.final_report().is_some()
    }

    /// Waits until the pipeline has finished and returns a copy of its
    /// final [`Report`] (the one [`ShutdownHandle::join`] returns).
    ///
    /// As with `join`, by then every worker and intake task has ended and
    /// every closure the caller gave (the handler, the hooks, the input) has
    /// been dropped, so `Arc::strong_count` of what they captured is back;
    /// this is how to wait for that after dropping both the results and the
    /// [`ShutdownHandle`](crate::ShutdownHandle).
    ///
    /// Waiting does not stop the pipeline, and any number of controllers
    /// may wait at once. If the runtime running the pipeline shuts down
    /// before the pipeline finished, this never resolves; use
    /// [`ShutdownHandle::join`], which then returns a best-effort report.
    ///
    /// [`ShutdownHandle::join`]: crate::ShutdownHandle::join
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future loses nothing; wait again later.
    pub async fn finished(&self) -> Report {
        loop {
            if let Some(report) = self.control.final_report() {
                return report;
            }
            self.control.finished().cancelled().await;
        }
    }
}

impl fmt::Debug for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_state(f, "Controller", &*self.control, self.is_finished())
    }
}

/// The observable state both handles print: what a stuck pipeline shows.
pub(crate) fn fmt_state(
    f: &mut fmt::Formatter<'_>,
    name: &str,
    control: &dyn Control,
    finished: bool,
) -> fmt::Result {
    let stats = control.stats();
    f.debug_struct(name)
        .field("queue_depth", &stats.queue_depth)
        .field("in_flight", &stats.in_flight)
        .field("results_waiting", &stats.results_waiting)
        .field("shutting_down", &control.is_shutting_down())
        .field("finished", &finished)
        .finish()
}
