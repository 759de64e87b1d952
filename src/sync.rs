//! The synchronisation types of the hand-written parts (the queue, its wait
//! lists, the results buffer, the books and the stop phase): std's, or
//! loom's when built with `--cfg loom`, as tokio-util's `src/loom.rs` does,
//! so that the models under `cfg(loom)` check the code that runs.
//!
//! `Arc` stays std's everywhere: reference counts are not a hand-off the
//! models need to interleave, and std's `Arc<dyn Trait>` coercions keep the
//! stages type-erased where they meet.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

// # Lock order
//
// Every lock of the crate is taken alone, with three exceptions, none of
// which takes a lock of ours in turn: the results buffer's lock
// (`results::Outlet`) is held while the input-order window's tokio
// `Semaphore` is closed or given permits (its internal lock is taken under
// ours, and it may wake the tasks waiting for a turn: tokio wakers, which
// only schedule); a push front's producer takes the overload episodes'
// lock under the queue's, to record its shed in the step that counts it
// (`front::overload`, invariant 1); and a push that sheds leases the hook
// shelf under the queue's lock (`front::push`). No user code or waker of
// ours runs under any lock, with one documented exception: a keyed queue
// compares the caller's keys under the queue's lock, by their own `Eq`,
// which `FanOutConfig::key_by` requires not to block, and whose panic is
// caught there, the table untouched (invariant 6 of `queue::keyed`; their
// `Hash` runs in the front, outside every lock).

/// Locks `mutex`, recovering from poison. No user code runs under any lock
/// of this crate (each module says how) but a key's `Eq`, whose panic is
/// caught under the lock, so a poisoned lock can only come from a bug in
/// the crate itself; the state is still consistent at every point where
/// the crate's own code could panic, so going on is safe.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
