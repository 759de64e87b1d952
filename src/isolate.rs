//! Panic isolation for user code: hooks, item drops and poll calls.
//!
//! Every place the crate runs code it did not write goes through here, so a
//! panic there is caught on the spot instead of unwinding through the
//! pipeline's own state: the synchronous call that builds a handler's
//! future, polling it, the input's `poll_next`, the hooks, and the `Drop`
//! of an item or closure (alitto/pond#135: an odd task exit hung
//! `StopAndWait`). The panic hook still prints the panic,
//! as it does for a panicking task in a `JoinSet`.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

/// Runs `f`, catching a panic. `None` means it panicked.
pub(crate) fn catching<R>(f: impl FnOnce() -> R) -> Option<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(value) => Some(value),
        Err(payload) => {
            forget_payload(payload);
            None
        }
    }
}

/// Drops `value`, whose `Drop` is user code, catching a panic in it.
pub(crate) fn drop_quietly<T>(value: T) {
    catching(move || drop(value));
}

/// Owns a value whose `Drop` is user code (a handler or hook closure and
/// what it captured), and drops it with any panic caught, wherever the last
/// owner lets go: in a pipeline task, or in the caller's own drop.
pub(crate) struct Quiet<T>(Option<T>);

impl<T> Quiet<T> {
    pub(crate) fn new(value: T) -> Self {
        Quiet(Some(value))
    }
}

impl<T> std::ops::Deref for Quiet<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match &self.0 {
            Some(value) => value,
            None => unreachable!("Quiet: emptied only by its own Drop"),
        }
    }
}

impl<T> Drop for Quiet<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take() {
            drop_quietly(value);
        }
    }
}

/// A timer for `deadline`, or `None` where the runtime has no time driver:
/// tokio panics then. The pipeline refuses such a runtime at the call
/// ([`has_time_driver`]); this keeps a pipeline task from going down with
/// the items it holds should it meet one anyway.
pub(crate) fn timer_at(deadline: tokio::time::Instant) -> Option<tokio::time::Sleep> {
    catching(|| tokio::time::sleep_until(deadline))
}

/// Disposes of a panic payload. Its own `Drop` may panic too (a payload is
/// arbitrary user data); that second panic is caught and its payload leaked
/// rather than taking the worker down.
fn forget_payload(payload: Box<dyn Any + Send>) {
    if let Err(again) = catch_unwind(AssertUnwindSafe(move || drop(payload))) {
        std::mem::forget(again);
    }
}

/// Whether the current runtime was built with a time driver. Asked once, at
/// the call; tokio's own panic for a missing driver is printed by the panic
/// hook before the caller gets ours, which names the fix.
pub(crate) fn has_time_driver() -> bool {
    catching(|| tokio::time::sleep(std::time::Duration::ZERO)).is_some()
}
