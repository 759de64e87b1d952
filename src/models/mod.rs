//! Loom models of every wait and wake-up path the crate writes itself.
//!
//! Built only with `RUSTFLAGS="--cfg loom"` (`cargo test --release --lib
//! loom`; `.ci/run` runs them with `LOOM_MAX_PREEMPTIONS=3`). Each model is a
//! small scenario of two or three threads over one concurrent module, with
//! exact assertions; loom runs it under every interleaving of the module's
//! locks and atomics (see `crate::sync`) and fails on a violated assertion
//! or on a state where every thread waits (a lost wake-up). A thread that
//! waits does so in `loom::future::block_on`, which parks until woken.
//!
//! Each model names the guard it checks, and how it was shown to fail: the
//! guard removed once, the model run, the failure seen.
//!
//! Left out, with the reason: tokio's `Semaphore` (the push front's FIFO
//! room, the input-order window, settlement credits) and tokio-util's
//! `CancellationToken` are tokio's own code, proved by tokio's loom models;
//! the crate only calls them.

mod abort;
mod books;
mod call;
mod keyed;
mod lease;
mod overload;
mod phase;
mod queue;
mod results;

use std::sync::Arc;

/// Runs `f` on a new loom thread, with its own clone of `shared`.
fn spawn<T, R>(
    shared: &Arc<T>,
    f: impl FnOnce(Arc<T>) -> R + Send + 'static,
) -> loom::thread::JoinHandle<R>
where
    T: Send + Sync + 'static,
    R: Send + 'static,
{
    let shared = Arc::clone(shared);
    loom::thread::spawn(move || f(shared))
}
