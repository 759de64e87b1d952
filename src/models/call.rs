//! Models of the call front: one call's answer slot (the caller waiting
//! for its answer, a running handler waiting to hear that its caller left,
//! an answer racing the caller's leaving) and withdrawing a queued job.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;

use loom::future::block_on;
use loom::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use super::spawn;
use crate::ShedPolicy;
use crate::front::Slot;
use crate::queue::{HandOff, QueueSettings};

type TestSlot = Slot<u32, u32>;

/// `slot` invariant 2: an answer given on another thread wakes the caller
/// that is registering for it, and the caller gets exactly that answer.
///
/// Guard: `Slot::answer` takes the caller's waker under the lock it stores
/// the answer under. Shown to fail by not taking it (`None` there): the
/// caller parks forever (deadlock).
#[test]
fn loom_an_answer_wakes_the_caller_waiting_for_it() {
    loom::model(|| {
        let slot = Arc::new(TestSlot::new());
        let worker = spawn(&slot, |slot| slot.answer(7, Ok).is_ok());
        let answer = block_on(poll_fn(|cx| slot.poll_answer(cx)));
        assert!(matches!(answer, Ok(7)));
        assert!(worker.join().unwrap(), "a waiting caller takes the answer");
    });
}

/// `slot` invariant 3: a caller leaving wakes the handler that is
/// registering to hear of it.
///
/// Guard: `Slot::leave` sets `gone` and takes the handler's waker under the
/// same lock. Shown to fail by not taking it (`None` there): the handler
/// parks forever (deadlock).
#[test]
fn loom_a_caller_leaving_wakes_the_handler_listening_for_it() {
    loom::model(|| {
        let slot = Arc::new(TestSlot::new());
        let handler = spawn(&slot, |slot| {
            block_on(poll_fn(|cx| {
                if slot.poll_gone(cx) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            }));
        });
        let (unread, answered) = slot.leave();
        assert!(unread.is_none() && !answered);
        handler.join().unwrap();
    });
}

/// `slot` invariants 1 and 4: an answer racing the caller's leaving is
/// either stored (and the leaving caller finds it: counted delivered) or
/// handed back (counted discarded), never both, never lost.
///
/// Guard: `answer` checks `gone` and stores under one lock, and `leave`
/// sets `gone` and takes what is stored under one lock. Shown to fail by
/// checking `gone` in a critical section of its own before storing: the
/// answer is stored after the caller left, lost to both counts.
#[test]
fn loom_an_answer_racing_the_callers_leaving_ends_exactly_once() {
    loom::model(|| {
        let slot = Arc::new(TestSlot::new());
        let worker = spawn(&slot, |slot| slot.answer(7, Ok));
        let (unread, answered) = slot.leave();
        let handed_back = worker.join().unwrap();
        match handed_back {
            Ok(()) => {
                assert!(answered, "stored: the leaving caller saw it");
                assert!(matches!(unread, Some(Ok(7))));
            }
            Err(back) => {
                assert_eq!(back, 7);
                assert!(!answered && unread.is_none());
            }
        }
    });
}

/// Invariant 2 of `queue` for a withdrawal: against a worker taking from a
/// closed queue, exactly one of them gets the job, and a worker that finds
/// the queue empty (and would exit, letting the report be built) finds the
/// withdrawn job already counted.
///
/// Guard: `HandOff::withdraw` counts under the lock it takes the item out
/// under. Shown to fail by counting after unlocking: the worker sees the
/// queue empty before the count (the assertion on `counted` fails).
#[test]
fn loom_a_withdrawal_is_counted_before_a_worker_can_find_the_queue_empty() {
    loom::model(|| {
        let q = Arc::new(HandOff::new(QueueSettings {
            many_producers: true,
            ..QueueSettings::plain(2, ShedPolicy::DropNewest)
        }));
        q.push(&mut vec![1], &mut Vec::new(), |_, _| {});
        q.close();
        let counted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&counted);
        let worker = spawn(&q, move |q| {
            let taken = block_on(q.take()).map(|t| t.item);
            if taken.is_none() {
                assert_eq!(
                    seen.load(SeqCst),
                    1,
                    "exited before the withdrawal was counted"
                );
            }
            taken
        });
        let withdrawn = q.withdraw(
            |item| *item == 1,
            || {
                counted.fetch_add(1, SeqCst);
            },
        );
        let taken = worker.join().unwrap();
        let expected = if withdrawn.is_some() {
            (Some(1), None)
        } else {
            (None, Some(1))
        };
        assert_eq!(
            (withdrawn, taken),
            expected,
            "exactly one of them gets the job"
        );
        assert_eq!(counted.load(SeqCst), usize::from(withdrawn.is_some()));
    });
}
