//! Models of the results buffer: senders waiting for room, the consumer
//! waiting for results, an abort discarding both, and the end of the
//! stream.

use std::future::poll_fn;

use loom::future::block_on;

use crate::ResultOrder;
use crate::results::{Receiver, channel};

/// Reads until the end; the results in order.
fn read_all(rx: &mut Receiver<u32>) -> Vec<u32> {
    let mut out = Vec::new();
    while let Some(result) = block_on(poll_fn(|cx| rx.poll_recv(cx))) {
        out.push(result);
    }
    out
}

/// `results` invariants 2, 4 and 5: a sender waiting for room, the consumer
/// and an abort, in any order: every result is delivered or discarded
/// exactly once, the waiting sender is released, and the stream ends.
///
/// Guard: `discard_all` sets `discarding` and takes every waiting sender's
/// waker under the lock. Shown to fail by leaving the waiting senders
/// registered: the sender waiting for room parks forever (deadlock).
#[test]
fn loom_an_abort_releases_a_waiting_sender_and_each_result_ends_once() {
    loom::model(|| {
        let (tx, mut rx, books) = channel::<u32>(1, ResultOrder::Completion, 2, None);
        let second = tx.clone();
        block_on(tx.deliver(0, Some(10)));
        // The buffer is full: this one waits for room, or for the abort.
        let sender = loom::thread::spawn(move || {
            block_on(second.deliver(1, Some(11)));
        });
        let consumer = loom::thread::spawn(move || read_all(&mut rx));
        books.discard_undelivered();
        sender.join().unwrap();
        drop(tx);
        let read = consumer.join().unwrap();
        let (delivered, discarded) = (books.delivered(), books.discarded());
        assert_eq!(read.len() as u64, delivered);
        assert_eq!(delivered + discarded, 2, "each result ends once");
        assert!(books.ended().is_cancelled());
    });
}

/// `results` invariant 3: the last sender leaving wakes a waiting consumer,
/// which then sees the end; every result sent is read.
///
/// Guard: `Sender::drop` takes the consumer's waker under the lock once
/// `senders` reaches 0. Shown to fail by not waking it: deadlock.
#[test]
fn loom_the_last_sender_leaving_ends_the_stream_for_a_waiting_consumer() {
    loom::model(|| {
        let (tx, mut rx, books) = channel::<u32>(2, ResultOrder::Completion, 2, None);
        let other = tx.clone();
        let a = loom::thread::spawn(move || block_on(tx.deliver(0, Some(1))));
        let b = loom::thread::spawn(move || block_on(other.deliver(1, Some(2))));
        let mut read = read_all(&mut rx);
        a.join().unwrap();
        b.join().unwrap();
        read.sort_unstable();
        assert_eq!(read, [1, 2]);
        assert_eq!((books.delivered(), books.discarded()), (2, 0));
        assert!(books.ended().is_cancelled());
    });
}

/// `results` invariant 2: a sender woken for room whose hand-over is then
/// dropped passes the wake-up on to the next waiting sender, and its result
/// is counted discarded.
///
/// Guard: `Handover::drop` calls `WaitList::leave`. Shown to fail by
/// dropping the ticket without it: when the consumer's pop wakes the
/// dropped hand-over, the other sender parks forever (deadlock).
#[test]
fn loom_a_woken_hand_over_that_is_dropped_passes_its_wake_up_on() {
    loom::model(|| {
        use std::future::Future;
        use std::pin::pin;
        use std::task::{Context, Waker};

        let (tx, mut rx, books) = channel::<u32>(1, ResultOrder::Completion, 3, None);
        let (first, second) = (tx.clone(), tx.clone());
        block_on(tx.deliver(0, Some(10)));
        let dropped = loom::thread::spawn(move || {
            let mut handover = pin!(first.deliver(1, Some(11)));
            let polled = handover
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
            polled.is_ready()
        });
        let waiting = loom::thread::spawn(move || block_on(second.deliver(2, Some(12))));
        drop(tx);
        let read = read_all(&mut rx);
        let handed_over = dropped.join().unwrap();
        waiting.join().unwrap();
        assert!(read.contains(&10) && read.contains(&12), "{read:?}");
        assert_eq!(read.contains(&11), handed_over);
        assert_eq!(books.delivered() + books.discarded(), 3);
    });
}
