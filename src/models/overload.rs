//! Model of the overload episodes: a producer's shed against the front's
//! task registering to emit.

use std::sync::{Arc, Mutex as StdMutex};
use std::task::Poll;
use std::time::Duration;

use loom::future::block_on;

use super::spawn;
use crate::export::Meters;
use crate::front::{Overload, OverloadEvent, OverloadHook};
use crate::settle::ShedReason;

/// Invariant 3 of `overload` (its wake-up): a shed recorded while the
/// front's task registers to emit wakes it, so `Started` is emitted while
/// the episode is still open, not only when intake ends; the episode ends
/// with every item recorded in it.
///
/// Guard: `record_quietly` hands back the registered emitter when it
/// queues an event. Shown to fail by handing back none: loom reports a
/// deadlock (the front's task parks forever, its `Started` pending).
#[test]
fn loom_a_shed_wakes_the_front_task_registering_to_emit() {
    loom::model(|| {
        let episodes = Meters::new("model".into(), ShedReason::Newest, 1).episodes();
        // A quiet period no run of the model reaches: one episode.
        let overload = Arc::new(Overload::new(true, Duration::from_secs(3600), episodes));
        let producer = spawn(&overload, |overload| {
            overload.record(1);
            overload.record(2);
        });
        // The hook runs on this thread only, in `emit`.
        let seen = Arc::new(StdMutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let hook: OverloadHook = Arc::new(move |event| log.lock().unwrap().push(event));
        // The front's task: register, emit, until `Started` is out.
        block_on(std::future::poll_fn(|cx| {
            overload.register_emitter(cx.waker());
            overload.emit(Some(&hook));
            if seen.lock().unwrap().is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        }));
        producer.join().unwrap();
        overload.finish();
        overload.emit(Some(&hook));
        let events = seen.lock().unwrap().clone();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0], OverloadEvent::Started);
        assert!(
            matches!(events[1], OverloadEvent::Ended { shed: 3, .. }),
            "{events:?}"
        );
    });
}
