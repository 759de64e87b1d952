//! Bounded fan-out from any [`Stream`](futures_core::Stream) to N async
//! workers, with an explicit load-shed policy, exact accounting and
//! leak-free shutdown.
//!
//! # The model
//!
//! ```text
//!  input ──► intake ──► [ bounded queue: capacity ] ──► worker 1..=N ──► results
//!  (Stream)    │         sheds by ShedPolicy when full     handler(item)   (Stream)
//!              └──► on_shed(item)
//! ```
//!
//! A fast producer (sensor feed, market data, telemetry, an event bus) and
//! slow async work per item: an unbounded queue turns that into an
//! out-of-memory crash, and `buffer_unordered` neither sheds nor uses more
//! than one task. Here the intake pulls the input at its own pace, a queue of
//! fixed capacity sits between it and `N` worker tasks, and when the queue
//! is full the [`ShedPolicy`] decides what is discarded: the arriving item
//! ([`ShedPolicy::DropNewest`]) or the oldest queued one
//! ([`ShedPolicy::DropOldest`]). The input is never blocked by a full queue.
//!
//! # The conservation law
//!
//! Every item taken from the input is counted exactly once in the
//! [`Report`] that [`ShutdownHandle::join`] returns:
//!
//! ```text
//! produced == processed + dropped + failed + cancelled (+ timed_out + expired)
//! ```
//!
//! `processed`: its handler completed; `dropped`: shed by the policy;
//! `failed`: its handler panicked (caught; the worker lives on);
//! `cancelled`: accepted but abandoned or cut off by a shutdown. With a
//! [`FanOutConfig::handler_timeout`], items whose handler ran too long are
//! counted in a fifth outcome, `timed_out`; with a
//! [`FanOutConfig::max_queue_age`], items that waited too long in a sixth,
//! `expired`. Every worker is counted once
//! too: `workers_joined + aborted == workers`; and so is every result:
//!
//! ```text
//! processed == delivered + discarded
//! ```
//!
//! `delivered`: yielded by `results`; `discarded`: never read, because
//! `results` was dropped or an abort threw it away.
//!
//! # Shutdown and lifetime
//!
//! * Natural end: the input ends, the queue drains, the workers exit,
//!   `results` ends and `join` returns with `aborted == 0`.
//! * [`ShutdownHandle::shutdown`]: stop pulling input, drain for up to
//!   [`FanOutConfig::drain_timeout`], then abort the rest.
//!   [`ShutdownHandle::abort`]: stop now. A parent
//!   [`CancellationToken`] given with
//!   [`FanOutConfig::cancel_token`] shuts the pipeline down when cancelled.
//! * Dropping `results` discards results; dropping the handle detaches the
//!   pipeline; dropping both aborts it.
//! * An abort (by `abort()`, the drain deadline, or dropping both halves)
//!   does not wait for the reader: unread results are discarded, so a
//!   stalled consumer cannot hold a stop.
//! * After `join` returns, every future the pipeline spawned has been
//!   dropped, with everything it owned.
//! * `join` waits for results to be read or dropped: drain and join together
//!   with `tokio::join!`, as below.
//!
//! # Testing with paused time
//!
//! The examples and the test suite run timing logic on a paused
//! current-thread runtime (`start_paused = true`, tokio's `test-util`), where
//! virtual time jumps to the next timer once every task is idle. An input
//! that is always ready (`stream::iter(0..)` with nothing that waits) keeps
//! the intake task runnable, so the runtime never idles and virtual time
//! never advances: `sleep` and `timeout` then never fire. Give such an input
//! an end, a pacing timer, or run it on a real-time runtime.
//!
//! # Guarantees
//!
//! Each promise below is checked by the test file named beside it (in
//! `tests/`); the field cases come from public bug reports against crates
//! of this kind (`cases.rs` cites them).
//!
//! | promise | proved by |
//! |---|---|
//! | both laws (items and results) hold in every report, under any sizes, pacing, handler behaviour and intervention | `conservation.rs` (property-based), `cases.rs`, `stalled.rs` |
//! | an evicted or shed item is never also processed; no item is handled twice | `stress.rs`, `conservation.rs`, `cases.rs` (CASE-07) |
//! | `DropNewest` / `DropOldest` keep exactly the documented items; capacity is exact | `policy.rs`, `cases.rs` (CASE-08, CASE-13) |
//! | at most `workers` handlers run at once | `cases.rs` (CASE-09), `lifecycle.rs` |
//! | the input is driven while nobody reads results; a full output never wedges intake | `lifecycle.rs`, `cases.rs` (CASE-01, CASE-03) |
//! | memory is bounded: queue ≤ capacity, in flight ≤ workers, undelivered ≤ output capacity | `lifecycle.rs`, `extensions.rs` (ordered window) |
//! | no item is pulled after `shutdown()` / `abort()` / a parent's `cancel()` returns; the drain deadline counts from the request | `shutdown.rs`, `cases.rs` (CASE-19, CASE-21, CASE-23) |
//! | a handler that never completes cannot hang shutdown; aborted work is classified, never a panic | `shutdown.rs`, `cases.rs` (CASE-10, CASE-11) |
//! | a consumer that never reads cannot hang an abort or an expired drain; its unread results count `discarded` | `stalled.rs` |
//! | after `join`, every future the pipeline spawned has been dropped with what it owned; dropping both halves ends every task | `lifecycle.rs`, `cases.rs` (CASE-05, CASE-11, CASE-12) |
//! | the token tree points one way: a parent cancels the pipeline, never the reverse | `shutdown.rs`, `cases.rs` (CASE-20) |
//! | a finished result is never thrown away while `results` lives, unless an abort begins | `cases.rs` (CASE-21), `conservation.rs`, `stalled.rs` |
//! | panics in the handler, the input, `on_shed`, `on_cancel`, an item's `Drop` or a closure's `Drop` are caught and counted | `panics.rs`, `misuse.rs`, `extensions.rs`, `cases.rs` (CASE-22) |
//! | bad sizes, a missing runtime and a missing time driver panic at the call, naming the fix | `misuse.rs`, `edges.rs`, `cases.rs` (CASE-02) |
//! | extreme durations and sizes, a runtime torn down mid-flight keep the law | `edges.rs` |
//! | every public type is `Send`, `Sync` and `Unpin` | `auto_traits.rs` (compile-time) |
//! | ordered output, hand-back, overload alarm, handler timeout and `Backpressure` behave as documented | `extensions.rs`, `tracing.rs` |
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use backpressure_pipeline::{FanOutExt, ShedPolicy};
//! use futures::StreamExt;
//!
//! #[tokio::main]
//! async fn main() {
//!     // A burst of 1000 readings; each takes a worker 1 ms to handle.
//!     let readings = futures::stream::iter(0..1000u32);
//!     let (results, shutdown) = readings.bounded_fan_out(4, ShedPolicy::DropOldest, |reading| async move {
//!         tokio::time::sleep(Duration::from_millis(1)).await;
//!         reading
//!     });
//!     let (handled, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
//!
//!     assert!(report.is_conserved());
//!     assert_eq!(report.produced, 1000);
//!     assert_eq!(handled.len() as u64, report.processed);
//!     assert!(report.dropped > 0); // overload was shed, not queued
//!     assert!(handled.contains(&999)); // DropOldest: the freshest reading survives
//! }
//! ```
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod books;
mod config;
mod controller;
mod ext;
mod fan_out;
mod feeder;
mod handoff;
mod intake;
mod isolate;
mod lease;
mod output;
mod overload;
mod pipeline;
mod policy;
mod probe;
mod report;
mod settle;
mod shutdown;
mod stop;
mod trace;
mod waitlist;
mod worker;

pub use config::FanOutConfig;
pub use controller::Controller;
pub use ext::FanOutExt;
pub use fan_out::BoundedFanOut;
pub use feeder::{Feeder, Offer, feeder};
pub use overload::OverloadEvent;
pub use policy::ShedPolicy;
#[doc(hidden)]
pub use probe::QueueProbe;
pub use report::{IntakeEnd, Report, Stats};
pub use settle::{InputBack, Outcome, Settled, Settlement, Settlements, ShedReason, Stage};
pub use shutdown::{Join, ShutdownHandle};
/// The token type [`FanOutConfig::cancel_token`] takes, re-exported from
/// `tokio-util` so that callers need no direct dependency to use it.
pub use tokio_util::sync::CancellationToken;

// The README's quickstart is compiled and run as a doc-test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
