//! Model of an abort from a caller's thread racing the pipeline's end:
//! every abandoned item is settled and handed back before the hooks are
//! released.

use std::sync::Arc;

use loom::future::block_on;
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use crate::books::Books;
use crate::control::{Core, Hooks, Phase};
use crate::queue::{HandOff, QueueSettings};
use crate::settle::{Outcome, PendingKey, Record};
use crate::{ResultOrder, ShedPolicy};

/// Counts the records it is given.
struct Counter(Arc<AtomicUsize>);

impl Record<u32> for Counter {
    fn record(&self, _: &u32, outcome: Outcome) {
        assert!(matches!(outcome, Outcome::Cancelled(_)));
        self.0.fetch_add(1, SeqCst);
    }

    fn key(&self, _: &u32) -> Option<PendingKey> {
        None
    }

    fn record_key(&self, _: Option<PendingKey>, _: Outcome) {}
}

/// `control`'s abort order: an abort takes its lease of the hooks before it
/// abandons the queue, so the supervisor, which releases the hooks once
/// every worker is gone (and the workers go once the queue is abandoned),
/// cannot release them while abandoned items are still to be settled.
///
/// Guard: `let hooks = self.hooks.lease()` at the top of
/// `Core::begin_abort`. Shown to fail by taking the lease after the
/// abandon (as the crate first did; the property test of settlement found
/// it on a 2-thread runtime): the worker sees the queue abandoned, the
/// hooks are released, the abort finds none, and an abandoned item is
/// neither taken nor settled (the assertion below fires).
#[test]
fn loom_an_abort_settles_what_it_abandoned_before_the_hooks_are_released() {
    loom::model(|| {
        let records = Arc::new(AtomicUsize::new(0));
        let queue = Arc::new(HandOff::new(QueueSettings::plain(
            2,
            ShedPolicy::DropNewest,
        )));
        queue.push(&mut vec![1, 2], &mut Vec::new(), |_, _| {});
        let (_, _, results) = crate::results::channel::<u32>(1, ResultOrder::Completion, 1, None);
        let core = Arc::new(Core::new(
            Arc::clone(&queue),
            Arc::new(Phase::new(None, std::time::Duration::MAX)),
            Arc::new(Books::new(1)),
            Hooks {
                on_shed: None,
                on_cancel: None,
                recorder: Some(Arc::new(Counter(Arc::clone(&records)))),
                on_overload: None,
                keying: None,
            },
            results,
            false,
        ));
        // The worker and, once it is gone, the supervisor's release.
        let worker = super::spawn(&core, |core| {
            let mut taken = 0;
            while block_on(core.queue.take()).is_some() {
                taken += 1;
            }
            block_on(core.hooks.release());
            taken
        });
        core.begin_abort();
        let taken = worker.join().unwrap();
        assert_eq!(
            taken + records.load(SeqCst),
            2,
            "an abandoned item was neither taken nor settled"
        );
    });
}
