//! Settlement credits: one per unsettled item (see `settle`'s `# Bounds`).
//!
//! A tokio [`Semaphore`] of free credits: fronts take them, reading a
//! record returns one. Its waiting is tokio's (and left out of this crate's
//! loom models). A closed semaphore means nobody reads the records any
//! more: credits no longer limit intake.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::AcqRel};
use std::task::{Context, Poll};

use tokio::sync::{Semaphore, TryAcquireError};
use tokio_util::sync::PollSemaphore;

#[derive(Clone)]
pub(crate) struct Credits {
    free: Arc<Semaphore>,
    /// Whether the capacity was granted: once, by the first pipeline started
    /// with the configuration.
    granted: Arc<AtomicBool>,
}

impl Credits {
    /// No credits until [`grant`](Self::grant).
    pub(crate) fn new() -> Credits {
        Credits {
            free: Arc::new(Semaphore::new(0)),
            granted: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Grants `capacity` credits, the first time only: the pipelines of
    /// one configuration share one stream and one bound.
    pub(crate) fn grant(&self, capacity: usize) {
        if !self.granted.swap(true, AcqRel) {
            self.free.add_permits(capacity);
        }
    }

    /// A record was read (or an item's place without a record).
    pub(crate) fn give_back(&self, n: usize) {
        self.free.add_permits(n);
    }

    /// Returns credits taken for items that were not taken after all.
    pub(crate) fn unused(&self, n: usize) {
        if n > 0 && !self.free.is_closed() {
            self.free.add_permits(n);
        }
    }

    pub(crate) fn close(&self) {
        self.free.close();
    }

    /// One credit without waiting; `true` also once nobody reads records.
    pub(crate) fn try_take_one(&self) -> bool {
        match self.free.try_acquire() {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(TryAcquireError::Closed) => true,
            Err(TryAcquireError::NoPermits) => false,
        }
    }

    /// One credit, waiting for it.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a credit is taken only when the future completes.
    pub(crate) async fn take_one(&self) {
        if let Ok(permit) = self.free.acquire().await {
            permit.forget();
        }
    }

    /// A poller for a producer that polls for credits (the `Sink`).
    pub(crate) fn poller(&self) -> PollSemaphore {
        PollSemaphore::new(Arc::clone(&self.free))
    }

    /// Up to `max` credits for a batch, waiting for at least one; `None` if
    /// `stopped` fires first. A closed semaphore grants `max`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: credits are taken only when the future completes.
    pub(crate) async fn take_batch(
        &self,
        max: usize,
        mut stopped: Pin<&mut impl Future<Output = ()>>,
    ) -> Option<usize> {
        let mut first = std::pin::pin!(self.free.acquire());
        let got = std::future::poll_fn(|cx: &mut Context<'_>| {
            if stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            first.as_mut().poll(cx).map(Some)
        })
        .await?;
        let Ok(first) = got else {
            return Some(max);
        };
        first.forget();
        let more = self.free.available_permits().min(max.saturating_sub(1));
        match self
            .free
            .try_acquire_many(u32::try_from(more).unwrap_or(u32::MAX))
        {
            Ok(permits) => {
                permits.forget();
                Some(1 + more)
            }
            Err(_) => Some(1),
        }
    }
}
