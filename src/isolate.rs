//! Panic isolation for user code: hooks, item drops and poll calls.
//!
//! Every place the crate runs code it did not write goes through here, so a
//! panic there is caught on the spot instead of unwinding through the
//! pipeline's own state (PITFALLS 7). The panic hook still prints the panic,
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

/// A timer for `deadline`, or `None` where the runtime was built without a
/// time driver: tokio panics then, and that panic (printed once per call)
/// must not take a pipeline task down with the items it holds.
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
