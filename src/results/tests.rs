use std::future::{Future, poll_fn};

use super::*;
use tokio_test::{assert_pending, assert_ready, task};

fn recv<T>(rx: &mut Receiver<T>) -> Option<T> {
    let mut next = task::spawn(poll_fn(|cx| rx.poll_recv(cx)));
    assert_ready!(next.poll())
}

/// A one-slot buffer holding 10, and two senders waiting in line with 11
/// (`a`, first) and 12 (`b`).
fn two_waiting<'a>(
    tx: &'a Sender<u32>,
    tx2: &'a Sender<u32>,
) -> (
    task::Spawn<impl Future<Output = ()> + 'a>,
    task::Spawn<impl Future<Output = ()> + 'a>,
) {
    assert_ready!(task::spawn(tx.deliver(0, Some(10))).poll());
    let (mut a, mut b) = (
        task::spawn(tx.deliver(1, Some(11))),
        task::spawn(tx2.deliver(2, Some(12))),
    );
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    (a, b)
}

#[test]
fn senders_wait_in_line_for_room_and_are_woken_one_per_result_taken() {
    let (tx, mut rx, books) = channel::<u32>(1, ResultOrder::Completion, 2, None);
    let tx2 = tx.clone();
    let (mut a, mut b) = two_waiting(&tx, &tx2);
    assert_eq!(recv(&mut rx), Some(10));
    assert!(a.is_woken() && !b.is_woken());
    assert_ready!(a.poll());
    assert_pending!(b.poll());
    assert_eq!(recv(&mut rx), Some(11));
    assert_ready!(b.poll());
    assert_eq!(recv(&mut rx), Some(12));
    assert_eq!((books.delivered(), books.discarded()), (3, 0));
}

#[test]
fn a_hand_over_dropped_after_its_wake_up_passes_it_on_and_discards_its_result() {
    let (tx, mut rx, books) = channel::<u32>(1, ResultOrder::Completion, 2, None);
    let tx2 = tx.clone();
    let (a, mut b) = two_waiting(&tx, &tx2);
    assert_eq!(recv(&mut rx), Some(10));
    assert!(a.is_woken() && !b.is_woken());
    drop(a); // woken, never pushed
    assert!(
        b.is_woken(),
        "the wake-up was lost with the dropped hand-over"
    );
    assert_eq!(books.discarded(), 1, "its result is discarded, counted");
    assert_ready!(b.poll());
    assert_eq!(recv(&mut rx), Some(12));
}

#[test]
fn an_abort_wakes_waiting_senders_and_the_consumer_and_discards_everything() {
    let (tx, mut rx, books) = channel::<u32>(1, ResultOrder::Completion, 1, None);
    assert_ready!(task::spawn(tx.deliver(0, Some(10))).poll());
    let mut waiting = task::spawn(tx.deliver(1, Some(11)));
    assert_pending!(waiting.poll());
    books.discard_undelivered();
    assert!(waiting.is_woken());
    assert_ready!(waiting.poll());
    assert_eq!(recv(&mut rx), None);
    assert_eq!((books.delivered(), books.discarded()), (0, 2));
    assert!(books.ended().is_cancelled());
}

#[test]
fn the_last_sender_gone_ends_the_stream_after_the_buffer() {
    let (tx, mut rx, books) = channel::<u32>(4, ResultOrder::Completion, 2, None);
    let tx2 = tx.clone();
    assert_ready!(task::spawn(tx.deliver(0, Some(1))).poll());
    drop(tx);
    let mut next = task::spawn(poll_fn(|cx| rx.poll_recv(cx)));
    assert_eq!(assert_ready!(next.poll()), Some(1));
    assert!(!books.ended().is_cancelled(), "a sender is left");
    assert_pending!(next.poll());
    drop(tx2);
    assert!(next.is_woken());
    assert!(
        books.ended().is_cancelled(),
        "nothing left, before the None"
    );
    assert_eq!(assert_ready!(next.poll()), None);
}

#[test]
fn the_results_side_ends_once_the_last_result_is_read_after_the_senders_left() {
    let (tx, mut rx, books) = channel::<u32>(4, ResultOrder::Completion, 1, None);
    assert_ready!(task::spawn(tx.deliver(0, Some(1))).poll());
    drop(tx);
    assert!(!books.ended().is_cancelled(), "a result exists");
    assert_eq!(recv(&mut rx), Some(1));
    assert!(
        books.ended().is_cancelled(),
        "ended without polling for None"
    );
}

#[test]
fn input_order_delivers_by_sequence_and_latest_only_replaces_unread_results() {
    let (tx, mut rx, _) = channel::<u32>(2, ResultOrder::Input, 2, None);
    assert_ready!(task::spawn(tx.deliver(1, Some(11))).poll());
    let mut next = task::spawn(poll_fn(|cx| rx.poll_recv(cx)));
    assert_pending!(next.poll());
    assert_ready!(task::spawn(tx.deliver(0, Some(10))).poll());
    assert!(next.is_woken());
    assert_eq!(assert_ready!(next.poll()), Some(10));
    drop(next);
    assert_eq!(recv(&mut rx), Some(11));

    let (tx, mut rx, books) = channel::<u32>(2, ResultOrder::LatestOnly, 2, None);
    for (seq, result) in [(0, 1), (1, 2), (2, 3)] {
        assert_ready!(task::spawn(tx.deliver(seq, Some(result))).poll());
    }
    assert_eq!(recv(&mut rx), Some(3));
    assert_eq!((books.delivered(), books.discarded()), (1, 2));
}
