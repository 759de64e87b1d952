//! Bounded fan-out from any [`Stream`](futures_core::Stream), or from push
//! producers, to N async workers, with an explicit load-shed policy, exact
//! accounting and leak-free shutdown.
//!
//! # The model
//!
//! A fast producer (sensor feed, market data, telemetry, an event bus) and
//! slow async work per item: an unbounded queue turns that into an
//! out-of-memory crash, and `buffer_unordered` neither sheds nor uses more
//! than one task. Here a queue of fixed capacity sits between the input and
//! `N` worker tasks; the input is taken at its own pace, and when the queue
//! is full the [`ShedPolicy`] decides what is discarded: the arriving item
//! ([`ShedPolicy::DropNewest`]) or the oldest queued one
//! ([`ShedPolicy::DropOldest`]). Only [`ShedPolicy::Backpressure`] makes the
//! input wait instead.
//!
//! # The stages
//!
//! The crate is laid out as the data flows, one module (or folder) per
//! stage:
//!
//! ```text
//!  front/            queue/              worker         results/           reader
//!  stream intake ──► bounded MPMC ──────► handler ×N ──► completion, input ──► BoundedFanOut
//!  or Feeder           (sheds by policy)  (isolated,     or latest-only order
//!   │  └── shed ─► after-shed path        timed)           │
//!   │              (on_shed, settle,        │              │
//!   │               overload episodes)      ▼              ▼
//!   └────────────────────────────────► settle/ ──► Settlements (keyed outcomes)
//!
//!  books: every count of both laws      control/: phase, drain deadline,
//!  report: Report, Stats                supervisor, ShutdownHandle, Controller
//! ```
//!
//! * `front/`: the stream front ([`FanOutExt`]), the push front
//!   ([`feeder`], [`Feeder`], also a `futures::Sink`) and on it the call
//!   front for request/response ([`caller`], [`Caller`], [`Call`]: each
//!   answer to its own caller, a dropped call withdrawn), with one
//!   after-shed path for all.
//! * `queue/`: the hand-off between a front and the workers, its wait list,
//!   and the room `Backpressure` waits for.
//! * `worker`: takes an item, runs the handler with every panic caught,
//!   hands the result over.
//! * `results/`: the bounded results buffer in the chosen [`ResultOrder`],
//!   and [`BoundedFanOut`].
//! * `settle/`: [`Settlements`] ([`FanOutConfig::settle_by`]) and the
//!   input's hand-back ([`hand_back`]).
//! * `control/`: the stop phase, the supervisor, [`ShutdownHandle`] and
//!   [`Controller`].
//! * `books` and `report`: the counters, and the [`Report`] and [`Stats`]
//!   read from them.
//! * `launch`: the one place that builds and wires them.
//!
//! Every setting of [`FanOutConfig`] works on every front: the stream, the
//! push front ([`feeder`]) and the call front ([`caller`]), except the
//! results settings on the call front, which answers each caller directly
//! (its docs have the table).
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
//! counted `timed_out`; with a [`FanOutConfig::max_queue_age`], items that
//! waited too long `expired`. Every worker is counted once too:
//! `workers_joined + aborted == workers`; and so is every result:
//!
//! ```text
//! processed == delivered + discarded
//! ```
//!
//! `delivered`: yielded by the results stream; `discarded`: never read,
//! because the stream was dropped, an abort threw it away, or (latest-only
//! order) a newer result replaced it.
//!
//! # Shutdown and lifetime
//!
//! * Natural end: the input ends, the queue drains, the workers exit, the
//!   last result is read, and `join` returns with `aborted == 0`.
//! * [`ShutdownHandle::shutdown`]: stop taking input, drain for up to
//!   [`FanOutConfig::drain_timeout`] (no item starts after it, even while
//!   handlers block every thread), then abort the rest.
//!   [`ShutdownHandle::abort`]: stop now. A parent [`CancellationToken`]
//!   given with [`FanOutConfig::cancel_token`] shuts the pipeline down when
//!   cancelled.
//! * Dropping the results stream discards results; dropping the handle
//!   detaches the pipeline; dropping both aborts it.
//! * An abort (by `abort()`, the drain deadline, or dropping both halves)
//!   does not wait for the reader: unread results are discarded, so a
//!   stalled consumer cannot hold a stop.
//! * `join` waits for results that exist to be read or dropped: read and
//!   join in one call with [`ShutdownHandle::join_collect`], as below.
//! * After `join` returns, every future the pipeline spawned has been
//!   dropped, with everything it owned, and every closure it was given.
//!
//! # Optional features
//!
//! All three off by default; without them none of their code is compiled.
//!
//! * `tracing`: a span per pipeline (`bounded_fan_out`, with the
//!   [`FanOutConfig::name`] in its `pipeline` field), an event per
//!   overload edge and one with the final report.
//! * `metrics`: every pipeline exports through the
//!   [`metrics`](https://docs.rs/metrics) facade, to the recorder the
//!   application installed before starting it, these series, each labelled
//!   `pipeline` (the [`FanOutConfig::name`]):
//!
//! | series | type | unit |
//! |---|---|---|
//! | `backpressure_pipeline_{produced,processed,delivered,discarded,failed,timed_out,expired,cancelled,errored}_total` | counter | items (results for `delivered` and `discarded`): the [`Report`] field of that name |
//! | `backpressure_pipeline_dropped_total`, labelled `reason`: `newest` or `oldest` ([`ShedReason`]; a key's superseded item counts `oldest`) | counter | items |
//! | `backpressure_pipeline_overload_episodes_total` | counter | episodes ([`OverloadEvent::Started`]) |
//! | `backpressure_pipeline_{queue_depth,queue_capacity,in_flight,results_waiting,workers_alive}` | gauge | items (tasks for `workers_alive`) |
//! | `backpressure_pipeline_keys_tracked` | gauge | keys ([`Stats::keys`]; 0 unless [`FanOutConfig::key_by`] is set) |
//! | `backpressure_pipeline_oldest_queued_age_seconds` | gauge | seconds (0 when nothing is queued) |
//! | `backpressure_pipeline_queue_wait_seconds` | histogram | seconds from an item's push to the moment a worker starts it (for a call whose caller had gone by then, the handler is then not called) |
//! | `backpressure_pipeline_handler_duration_seconds`, labelled `outcome`: `processed`, `failed`, `timed_out` or `cancelled` (cut off by an abort, or by its caller going away; a call whose caller had gone before it started counts a run of about 0 s) | histogram | seconds |
//!
//!   The counters are the books' own: the pipeline's supervisor adds what
//!   they grew to the recorder's counters every second and once more when
//!   the pipeline ends, so the last values equal the [`Report`]'s and the
//!   hot path does nothing per item for them (pipelines that share a name
//!   add up). Gauges are set at the same moments. The histograms are
//!   recorded per item, with two clock reads, only with the feature on.
//!   The supervisor's flush timer wakes it once a second: on a paused
//!   clock, tasks woken at that same instant may then run in another order.
//! * `tower`: [`Caller`] as a `tower_service::Service` and `CallLayer`
//!   as a `tower_layer::Layer`, which wraps any infallible service (an
//!   axum route or `Router`) in a pipeline (the two trait crates only).
//!
//! # Testing with paused time
//!
//! The examples that assert timings run on a paused current-thread runtime
//! (`start_paused = true`, tokio's `test-util` feature), where virtual time
//! jumps to the next timer once every task is idle. An input that is always
//! ready (`stream::iter(0..)` with nothing that waits) keeps the intake task
//! runnable, so the runtime never idles and virtual time never advances:
//! `sleep` and `timeout` then never fire. Give such an input an end, a
//! pacing timer, or run it on a real-time runtime.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use backpressure_pipeline::{FanOutExt, ShedPolicy};
//!
//! #[tokio::main]
//! async fn main() {
//!     // A burst of 1000 readings; each takes a worker 1 ms to handle.
//!     let readings = futures::stream::iter(0..1000u32);
//!     let (results, shutdown) = readings.bounded_fan_out(4, ShedPolicy::DropOldest, |reading| async move {
//!         tokio::time::sleep(Duration::from_millis(1)).await;
//!         reading
//!     });
//!     let (handled, report) = shutdown.join_collect(results).await;
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
mod control;
mod export;
mod ext;
mod front;
mod isolate;
mod launch;
mod probe;
mod queue;
mod report;
mod results;
mod sched;
mod settle;
mod sync;
mod trace;
mod worker;

// Loom models of every wait and wake-up path (`--cfg loom`; see `.ci/run`).
#[cfg(all(test, loom))]
mod models;

pub use config::{Fallible, FanOutConfig, HandlerKind, Plain, ResultOrder, ShedPolicy};
pub use control::{Controller, JoinReport, ShutdownHandle};
pub use ext::{FanOutExt, caller, feeder};
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use front::CallLayer;
pub use front::{Call, Caller, Feeder, Offer, OverloadEvent, RejectReason, Rejected, SinkError};
#[doc(hidden)]
pub use probe::QueueProbe;
pub use report::{IntakeEnd, Report, Stats};
pub use results::BoundedFanOut;
pub use settle::{
    HandBack, InputBack, Outcome, Settlement, Settlements, ShedReason, Stage, hand_back,
};
/// The token type [`FanOutConfig::cancel_token`] takes, re-exported from
/// `tokio-util` so that callers need no direct dependency to use it.
pub use tokio_util::sync::CancellationToken;

// The README's quickstart is compiled and run as a doc-test.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
