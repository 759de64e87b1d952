//! Model of an abort from a caller's thread racing the pipeline's end:
//! every abandoned item is settled and handed back before the hooks are
//! released.

use std::sync::Arc;

use loom::future::block_on;
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use crate::books::Books;
use crate::control::{Core, Hooks, Phase};
use crate::queue::{HandOff, QueueSettings};
use crate::settle::{Outcome, PendingKey, Record, ShedReason};
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

/// `push`'s lease: a push front's producer whose push shed an item leases
/// the hooks under the queue's lock that counted the shed, so an abort
/// racing it (which closes the queue, after which the supervisor releases
/// the hooks) cannot release them before the shed item reaches `on_shed`.
///
/// Guard: the lease taken in the push's count step (`Producers::push`).
/// Shown to fail by leasing after the push returns, as the crate did (a
/// review found it): the abort and the release run in between, the
/// producer finds no hooks, and the item counted `dropped` never reaches
/// `on_shed` (the assertion below fires).
#[test]
fn loom_a_shed_racing_an_abort_reaches_on_shed() {
    use crate::front::{Disposal, FrontParts, Overload, Producers};
    use crate::queue::Room;

    loom::model(|| {
        let given = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&given);
        // As a push front builds it: many producers, shed items kept.
        let queue = Arc::new(HandOff::new(QueueSettings {
            many_producers: true,
            keep_shed: true,
            ..QueueSettings::plain(1, ShedPolicy::DropNewest)
        }));
        // Full: the producer's push sheds its own item.
        queue.push(&mut vec![1], &mut Vec::new(), |_, _| {});
        debug_assert!(matches!(queue.room(), Room::Shed));
        let (_, _, results) = crate::results::channel::<u32>(1, ResultOrder::Completion, 1, None);
        let (phase, books) = (
            Arc::new(Phase::new(None, std::time::Duration::MAX)),
            Arc::new(Books::new(1)),
        );
        let on_shed: crate::config::ItemHook<u32> = Arc::new(move |_| {
            counter.fetch_add(1, SeqCst);
        });
        let core = Arc::new(Core::new(
            Arc::clone(&queue),
            Arc::clone(&phase),
            Arc::clone(&books),
            Hooks {
                on_shed: Some(on_shed),
                on_cancel: None,
                recorder: None,
                on_overload: None,
                keying: None,
            },
            results,
            true,
        ));
        let episodes = crate::export::Meters::new("model".into(), ShedReason::Newest, 1).episodes();
        let producers = Producers::new(FrontParts {
            queue,
            phase,
            books: Arc::clone(&books),
            stopper: crate::control::Stopper::new(&core),
            credits: None,
            overload: Overload::new(false, std::time::Duration::MAX, episodes),
            yielder: crate::sched::Yielder::InTurn,
            shed_needs: crate::front::ShedNeeds {
                on_shed: true,
                settle: false,
            },
        });
        let producer = super::spawn(&producers, |producers| {
            drop(producers.push(2, None, Disposal::Hook));
        });
        // The abort, then (no worker runs) the supervisor's release.
        core.begin_abort();
        block_on(core.hooks.release());
        producer.join().unwrap();
        let dropped = books.counts(&super::books::NoResults).dropped;
        assert_eq!(
            given.load(SeqCst) as u64,
            dropped,
            "a shed counted dropped never reached on_shed"
        );
    });
}
