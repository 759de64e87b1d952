//! User closures that outlive no `join`: lent out while the pipeline runs,
//! released by the supervisor before it publishes the report.
//!
//! The handles a caller may keep after `join` (a `Controller`, an ended
//! results stream, a spare `Feeder`) hold the pipeline's shared state, so
//! nothing user-supplied may live there for good: what the caller captured
//! in a hook would stay alive as long as any handle (the bug of
//! webrtc-rs/webrtc#772). The hooks sit on a [`Shelf`] instead. Every user
//! (a task, or a caller's `abort()` handing items back) takes a [`Lease`];
//! [`Shelf::release`] takes them off the shelf, waits until the last lease
//! is returned, and drops them, so that by the time the report is out the
//! closures are gone, whatever handles live on.
//!
//! # Invariants
//!
//! 1. `leases` counts the live [`Lease`]s; it changes only under the lock.
//! 2. A lease drops its `Arc` before it gives its count back, so when
//!    `leases` reaches 0 after a release began, the releaser holds the last
//!    `Arc` and the closures are dropped by it, before the report.
//! 3. Once released, the shelf lends nothing (`value` is `None` for good).
//! 4. The releaser registers its waker under the lock after seeing
//!    `leases > 0`; the lease that brings `leases` to 0 takes that waker
//!    under the same lock, so the wake-up cannot be lost.

use std::future::poll_fn;
use std::ops::Deref;
use std::sync::Arc;
use std::task::{Poll, Waker};

use crate::isolate::drop_quietly;
use crate::sync::{Mutex, MutexGuard, lock};

pub(crate) struct Shelf<H> {
    state: Mutex<State<H>>,
}

struct State<H> {
    value: Option<Arc<H>>,
    leases: usize,
    /// The releaser, waiting for the last lease.
    releaser: Option<Waker>,
}

/// A loan of what is on a [`Shelf`]; give it back by dropping it.
pub(crate) struct Lease<'a, H> {
    shelf: &'a Shelf<H>,
    value: Option<Arc<H>>,
}

impl<H> Shelf<H> {
    pub(crate) fn new(value: H) -> Self {
        Shelf {
            state: Mutex::new(State {
                value: Some(Arc::new(value)),
                leases: 0,
                releaser: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<H>> {
        // No user code runs under this lock (invariant 2: drops happen
        // before it is taken).
        lock(&self.state)
    }

    /// Lends what is on the shelf; `None` once it was released.
    pub(crate) fn lease(&self) -> Option<Lease<'_, H>> {
        let mut state = self.lock();
        let value = Arc::clone(state.value.as_ref()?);
        state.leases += 1;
        Some(Lease {
            shelf: self,
            value: Some(value),
        })
    }

    /// Takes the value off the shelf, waits until every lease is back, and
    /// drops it (its `Drop` is user code: quietly).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped before it completes, the value is dropped
    /// with the future, possibly before the last lease is back.
    pub(crate) async fn release(&self) {
        let mut held = None;
        poll_fn(|cx| {
            let mut state = self.lock();
            if held.is_none() {
                held = state.value.take();
            }
            if state.leases == 0 {
                return Poll::Ready(());
            }
            state.releaser = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        drop_quietly(held);
    }

    /// Takes the value off the shelf now, for a pipeline whose tasks died
    /// with their runtime: the last lease still out drops it.
    pub(crate) fn release_now(&self) {
        let value = self.lock().value.take();
        drop_quietly(value);
    }
}

impl<H> Deref for Lease<'_, H> {
    type Target = H;

    fn deref(&self) -> &H {
        match &self.value {
            Some(value) => value,
            None => unreachable!("Lease: emptied only by its own Drop"),
        }
    }
}

impl<H> Drop for Lease<'_, H> {
    fn drop(&mut self) {
        // Invariant 2: the `Arc` goes first, outside the lock.
        drop_quietly(self.value.take());
        let releaser = {
            let mut state = self.shelf.lock();
            debug_assert!(state.leases > 0, "Lease: returned more leases than lent");
            state.leases -= 1;
            if state.leases == 0 {
                state.releaser.take()
            } else {
                None
            }
        };
        if let Some(releaser) = releaser {
            releaser.wake();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use tokio_test::{assert_pending, assert_ready, task};

    #[test]
    fn release_waits_for_the_last_lease_and_drops_the_value_itself() {
        let captured = Arc::new(());
        let shelf = Shelf::new(Arc::clone(&captured));
        let (a, b) = (shelf.lease(), shelf.lease());
        let mut release = task::spawn(shelf.release());
        assert_pending!(release.poll());
        assert!(shelf.lease().is_none(), "released: nothing more is lent");
        drop(a);
        assert!(!release.is_woken());
        drop(b);
        assert!(release.is_woken());
        assert_eq!(Arc::strong_count(&captured), 2, "the releaser holds it");
        assert_ready!(release.poll());
        assert_eq!(Arc::strong_count(&captured), 1, "dropped by the release");
    }
}
