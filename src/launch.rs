//! The composition root: builds every stage of one pipeline from its
//! configuration, wires them, and spawns its tasks. Nothing else builds a
//! stage; no stage builds another.
//!
//! ```text
//!  front ──push──► queue ──take──► worker × N ──hand over──► results ──► reader
//!  (stream intake,   (shed by policy)  (handler)                 (order)
//!   or Feeders)          │                 │
//!       └── after-shed ──┴──── settle ─────┘ ──► Settlements
//!                      books: every count        control: phase, supervisor, handles
//! ```

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::task::JoinSet;

use crate::books::Books;
use crate::config::{HandlerKind, Settings};
use crate::control::{Core, End, Hooks, Phase, ShutdownHandle, StopMirror, Stopper, supervise};
use crate::export::Meters;
use crate::front::{
    Feeder, FrontParts, Overload, Producers, ShedNeeds, run_push, run_stream, shed_reason,
};
use crate::isolate::{Quiet, has_time_driver};
use crate::queue::{HandOff, QueueSettings};
use crate::results::{self, BoundedFanOut, Direct};
use crate::sched::Yielder;
use crate::trace;
use crate::worker::{self, Verdict, WorkerParts};

/// Which front feeds the pipeline.
pub(crate) enum Front<'a, S: Stream> {
    /// The stream intake pulls this input.
    Stream(S),
    /// Producers push through a [`Feeder`], put here.
    Push(&'a mut Option<Feeder<S::Item>>),
}

/// The input type of a push front, which has none. Never polled.
pub(crate) struct NoInput<Item>(PhantomData<fn() -> Item>);

impl<Item> Stream for NoInput<Item> {
    type Item = Item;

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Item>> {
        Poll::Ready(None)
    }
}

/// How a pipeline reads its handler's outputs: what each says about its
/// item, and where it goes.
pub(crate) struct Outputs<O> {
    /// `None`: every output is a plain completion.
    pub(crate) verdict: Option<fn(&O) -> Verdict>,
    /// `None`: outputs go through the results buffer to the results stream.
    pub(crate) direct: Option<Direct<O>>,
}

impl<O> Outputs<O> {
    /// Outputs read as `Kind` says, delivered to the results stream.
    pub(crate) fn of<Kind: HandlerKind<O>>() -> Self {
        Outputs {
            verdict: Kind::IS_ERR.map(|_| Verdict::of::<O, Kind> as fn(&O) -> Verdict),
            direct: None,
        }
    }
}

/// Starts a pipeline: every stage, every task.
///
/// # Panics
///
/// Outside a Tokio runtime, or on one without a time driver (see
/// [`FanOutExt::bounded_fan_out`](crate::FanOutExt::bounded_fan_out)).
#[track_caller]
pub(crate) fn launch<S, F, Fut>(
    entry: &'static str,
    settings: Settings<S::Item>,
    outputs: Outputs<Fut::Output>,
    handler: F,
    front: Front<'_, S>,
) -> (BoundedFanOut<Fut::Output>, ShutdownHandle)
where
    S: Stream<Item: Send + 'static> + Send + 'static,
    F: Fn(S::Item) -> Fut + Send + Sync + 'static,
    Fut: Future<Output: Send + 'static> + Send + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        panic!("{entry}: must be called from the context of a Tokio runtime");
    };
    // Drain deadlines and handler timeouts need a clock: refuse a runtime
    // without one here, not with a silent immediate abort later.
    assert!(
        has_time_driver(),
        "{entry}: the Tokio runtime has no time driver; \
         build it with `enable_time()` or `enable_all()`"
    );
    let Settings {
        name,
        sizes,
        timing,
        hooks,
        cancel_token,
        order,
        settle,
        keying,
    } = settings;
    let push = matches!(front, Front::Push(_));
    let shed_needs = ShedNeeds {
        on_shed: hooks.on_shed.is_some(),
        settle: settle.is_some(),
    };
    let queue = Arc::new(HandOff::new(QueueSettings {
        capacity: sizes.capacity,
        policy: sizes.policy,
        max_age: timing.max_queue_age,
        many_producers: push,
        // Shed items are needed by a hook, settlement, or an offer's answer.
        keep_shed: push || shed_needs.on_shed || shed_needs.settle,
        keyed: keying.as_ref().map(|keying| {
            let per_key = sizes.per_key_capacity.min(sizes.capacity);
            (keying.table(), per_key)
        }),
    }));
    let (sender, receiver, result_books) =
        results::channel(sizes.output_capacity, order, sizes.workers, outputs.direct);
    let phase = Arc::new(Phase::new(cancel_token.as_ref(), timing.drain_timeout));
    let books = Arc::new(Books::new(sizes.workers));
    let (recorder, credits) = match settle {
        Some(settle) => {
            if let Some(credits) = &settle.credits {
                credits.grant(sizes.settle_capacity);
            }
            (Some(settle.recorder), settle.credits)
        }
        None => (None, None),
    };
    // Registered with the recorder installed now (the `metrics` feature).
    let meters = Meters::new(name.clone(), shed_reason(sizes.policy), sizes.capacity);
    let overload = Overload::new(
        hooks.on_overload.is_some(),
        timing.overload_quiet_period,
        meters.episodes(),
    );
    let core = Arc::new(Core::new(
        Arc::clone(&queue),
        Arc::clone(&phase),
        Arc::clone(&books),
        Hooks {
            on_shed: hooks.on_shed,
            on_cancel: hooks.on_cancel,
            recorder,
            on_overload: hooks.on_overload,
            keying,
        },
        result_books,
        push,
    ));
    // Registered before any task runs, so a parent cancelled from any
    // thread stops intake before its `cancel()` returns.
    let stopping = Arc::clone(&core);
    let mirror = StopMirror::new(&phase.stop, move || stopping.on_stop());
    let yielder = Yielder::for_runtime(&runtime);
    let span = trace::pipeline_span(&name, sizes.workers, sizes.capacity, sizes.policy);
    // The workers own the handler; the last to exit drops it (quietly).
    let handler = Quiet::new(Arc::new(handler));
    let mut workers = JoinSet::new();
    for slot in 0..sizes.workers {
        let parts = WorkerParts {
            queue: Arc::clone(&queue),
            phase: Arc::clone(&phase),
            books: Arc::clone(&books),
            slot,
            stopper: Stopper::new(&core),
            results: sender.clone(),
            timeout: timing.handler_timeout,
            verdict: outputs.verdict,
            yielder,
            meters: meters.items(),
        };
        let run = worker::run(parts, Arc::clone(&*handler));
        workers.spawn_on(trace::in_span(&span, run), &runtime);
    }
    // Only the workers hold senders: the results end when the last exits.
    drop(sender);
    let parts = FrontParts {
        queue,
        phase,
        books,
        stopper: Stopper::new(&core),
        credits,
        overload,
        yielder,
        shed_needs,
    };
    let front = match front {
        Front::Stream(input) => runtime.spawn(trace::in_span(&span, run_stream(input, parts))),
        Front::Push(feeder) => {
            let producers = Producers::new(parts);
            *feeder = Some(Feeder::new(Arc::clone(&producers)));
            runtime.spawn(trace::in_span(&span, run_push(producers)))
        }
    };
    let supervisor = supervise(Arc::clone(&core), mirror, workers, front, meters);
    let supervisor = runtime.spawn(trace::in_span(&span, supervisor));
    let results = BoundedFanOut::new(receiver, End::new(Arc::clone(&core) as _));
    let handle = ShutdownHandle::new(supervisor, End::new(core));
    (results, handle)
}
