//! Not part of the API: the crate's hand-off queue, exposed (hidden) so
//! that `examples/ratios.rs` (target `lock`) can measure how long its lock
//! is held. It may change or go away in any release.

use crate::ShedPolicy;
use crate::queue::{HandOff, QueueSettings};

/// The hand-off queue of a stream pipeline, driven by hand.
#[doc(hidden)]
pub struct QueueProbe {
    queue: HandOff<u64>,
}

impl std::fmt::Debug for QueueProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueProbe").finish_non_exhaustive()
    }
}

impl QueueProbe {
    /// A queue of `capacity` under `policy`, as a stream front's pipeline
    /// builds it.
    ///
    /// # Panics
    ///
    /// Panics if `capacity` is 0 or `policy` is `Backpressure` (whose pushes
    /// need a reservation the probe does not make).
    pub fn new(capacity: usize, policy: ShedPolicy) -> Self {
        assert!(capacity > 0, "QueueProbe::new: capacity must be at least 1");
        assert!(
            policy != ShedPolicy::Backpressure,
            "QueueProbe::new: Backpressure needs a reservation per push"
        );
        QueueProbe {
            queue: HandOff::new(QueueSettings::plain(capacity, policy)),
        }
    }

    /// Queues `batch` under one lock, as the intake does; shed items go to
    /// `shed`.
    pub fn push(&self, batch: &mut Vec<u64>, shed: &mut Vec<u64>) {
        let _ = self.queue.push(batch, shed, |_, _| {});
    }

    /// Takes the oldest item under one lock, as a worker does, or `None`
    /// without waiting if the queue is empty.
    pub fn take_now(&self) -> Option<u64> {
        self.queue.take_now().map(|taken| taken.item)
    }
}
