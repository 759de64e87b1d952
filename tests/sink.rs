//! `Feeder` as a `futures::Sink`: `poll_ready` waits for room only under
//! `Backpressure`, what a push through the sink sheds goes to `on_shed`,
//! a refused item comes back in the error, closing every handle ends
//! intake, and a reserved slot is never lost.

mod common;

use std::future::poll_fn;
use std::pin::Pin;

use backpressure_pipeline::{FanOutConfig, Feeder, IntakeEnd, Offer, ShedPolicy, feeder};
use futures::{Sink, SinkExt, StreamExt, stream};
use tokio::time::sleep;
use tokio_test::{assert_pending, assert_ready, task};

use common::{GUARD, log, ms, snapshot, sorted, within};

fn poll_ready(feeder: &mut Feeder<u32>) -> impl Future<Output = Result<(), String>> + '_ {
    poll_fn(move |cx| {
        Pin::new(&mut *feeder)
            .poll_ready(cx)
            .map_err(|e| e.to_string())
    })
}

fn start_send(feeder: &mut Feeder<u32>, item: u32) -> Result<(), Option<u32>> {
    Pin::new(feeder).start_send(item).map_err(|e| e.into_item())
}

#[tokio::test(start_paused = true)]
async fn forward_pushes_a_whole_stream_through_a_backpressure_pipeline() {
    let config = FanOutConfig::new(2, ShedPolicy::Backpressure).capacity(3);
    let (feeder, results, shutdown) = feeder(config, |x: u32| async move {
        sleep(ms(1)).await;
        x
    });
    let input = stream::iter(0..50u32).map(Ok);
    let (forwarded, (out, report)) = within(GUARD, "forward and join", async {
        tokio::join!(input.forward(feeder), shutdown.join_collect(results))
    })
    .await;
    forwarded.expect("open all along");
    assert_eq!(sorted(&out), (0..50).collect::<Vec<_>>());
    assert_eq!((report.produced, report.dropped), (50, 0));
    assert_eq!(report.high_water_mark, 3);
    assert_eq!(
        report.intake,
        IntakeEnd::Exhausted,
        "closing the sink ended intake"
    );
}

#[tokio::test(start_paused = true)]
async fn under_backpressure_poll_ready_waits_for_a_free_slot() {
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
    let (mut feeder, results, shutdown) = feeder(config, |x: u32| async move {
        sleep(ms(10)).await;
        x
    });
    for id in 0..2 {
        poll_ready(&mut feeder).await.expect("room");
        start_send(&mut feeder, id).expect("pushed");
        common::settle().await; // the worker takes item 0
    }
    // Item 0 in flight, item 1 queued: the queue is full.
    let mut ready = task::spawn(poll_ready(&mut feeder));
    assert_pending!(ready.poll());
    sleep(ms(11)).await; // item 0 done at 10 ms, item 1 taken: a slot is free
    assert!(ready.is_woken());
    assert_ready!(ready.poll()).expect("room");
    drop(ready);
    start_send(&mut feeder, 2).expect("pushed into the slot it reserved");
    feeder.close().await.expect("close");
    let (out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
    assert_eq!(out, [0, 1, 2]);
    assert_eq!((report.produced, report.dropped), (3, 0));
}

#[tokio::test(start_paused = true)]
async fn under_a_shedding_policy_the_sink_is_always_ready_and_sheds_to_on_shed() {
    for (policy, shed_ids, kept) in [
        (ShedPolicy::DropNewest, [2, 3, 4], [0, 1]),
        (ShedPolicy::DropOldest, [0, 1, 2], [3, 4]),
    ] {
        let shed = log();
        let hook = shed.clone();
        let config = FanOutConfig::new(1, policy)
            .capacity(2)
            .on_shed(move |id: u32| hook.lock().unwrap().push(id));
        let (mut feeder, results, shutdown) = feeder(config, |x: u32| async move { x });
        // No task runs between these: the queue fills, then sheds.
        for id in 0..5 {
            let mut ready = task::spawn(poll_ready(&mut feeder));
            assert_ready!(ready.poll()).expect("always ready");
            drop(ready);
            start_send(&mut feeder, id).expect("accepted");
        }
        assert_eq!(snapshot(&shed), shed_ids, "{policy}");
        drop(feeder);
        let (out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
        assert_eq!(out, kept, "{policy}");
        assert_eq!((report.produced, report.dropped), (5, 3), "{policy}");
    }
}

#[tokio::test(start_paused = true)]
async fn after_a_stop_the_sink_refuses_and_hands_the_item_back() {
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest);
    let (mut feeder, results, shutdown) = feeder(config, |x: u32| async move { x });
    poll_ready(&mut feeder).await.expect("open");
    shutdown.shutdown();
    // Ready before the stop, refused after it: the item comes back.
    assert_eq!(start_send(&mut feeder, 7), Err(Some(7)));
    assert_eq!(
        poll_ready(&mut feeder).await,
        Err("the pipeline no longer accepts items".to_owned())
    );
    assert_eq!(feeder.offer(8), Offer::Closed(8));
    let (out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
    assert!(out.is_empty());
    assert_eq!((report.produced, report.intake), (0, IntakeEnd::Stopped));
}

#[tokio::test(start_paused = true)]
async fn intake_ends_once_every_handle_is_closed_or_dropped() {
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest);
    let (feeder, results, shutdown) = feeder(config, |x: u32| async move { x });
    let (mut a, mut b) = (feeder.clone(), feeder);
    SinkExt::send(&mut a, 1).await.expect("open");
    a.close().await.expect("close");
    assert!(a.is_closed(), "a closed handle accepts nothing");
    assert_eq!(a.offer(2), Offer::Closed(2));
    assert_eq!(start_send(&mut a, 3), Err(Some(3)));
    // `b` is still a producer: intake goes on.
    common::settle().await;
    assert!(!shutdown.is_finished());
    SinkExt::send(&mut b, 4).await.expect("open");
    drop(b);
    let (out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
    assert_eq!(out, [1, 4]);
    assert_eq!((report.produced, report.intake), (2, IntakeEnd::Exhausted));
}

#[tokio::test(start_paused = true)]
async fn start_send_without_room_refuses_and_a_reserved_slot_is_given_back() {
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
    let (mut feeder, results, shutdown) = feeder(config, |_: u32| std::future::pending::<u32>());
    assert_eq!(feeder.offer(0), Offer::Queued);
    common::settle().await; // in flight
    assert_eq!(feeder.offer(1), Offer::Queued); // the one slot
    // No room and no `poll_ready`: refused, not closed, item back.
    let refused = Pin::new(&mut feeder).start_send(2).expect_err("no room");
    assert!(!refused.is_closed());
    assert_eq!(refused.into_item(), Some(2));
    shutdown.abort();
    let (out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
    assert!(out.is_empty());
    assert_eq!((report.produced, report.cancelled), (2, 2));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_handle_returns_the_slot_it_reserved() {
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
    let (feeder, results, shutdown) = feeder(config, |x: u32| async move {
        sleep(ms(10)).await;
        x
    });
    let mut reserving = feeder.clone();
    poll_ready(&mut reserving).await.expect("the one slot");
    // The slot is held: an offer finds none.
    assert_eq!(feeder.offer(1), Offer::Full(1));
    drop(reserving);
    assert_eq!(feeder.offer(1), Offer::Queued, "the slot came back");
    drop(feeder);
    let (out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
    assert_eq!(out, [1]);
    assert_eq!(report.produced, 1);
}

// ===== keyed, under Backpressure: an item held for its key's room =====

type Keyed = (char, u32);

/// A keyed `Backpressure` pipeline, one queued item per key, one worker
/// whose handler takes 10 ms.
fn keyed_feeder() -> (
    Feeder<Keyed>,
    backpressure_pipeline::BoundedFanOut<Keyed>,
    backpressure_pipeline::ShutdownHandle,
) {
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
        .capacity(8)
        .key_by(|item: &Keyed| item.0)
        .per_key_capacity(1);
    feeder(config, |item: Keyed| async move {
        sleep(ms(10)).await;
        item
    })
}

/// `poll_ready` cannot know the next item's key: `start_send` accepts an
/// item whose key is full and holds it, and the next `poll_ready` waits
/// for its key's room and pushes it, so `send_all` and `forward` wait per
/// key instead of failing.
#[tokio::test(start_paused = true)]
async fn send_all_waits_for_a_full_keys_room() {
    let (mut feeder, results, shutdown) = keyed_feeder();
    let controller = shutdown.controller();
    let joined = tokio::spawn(shutdown.join_collect(results));
    let input = [('a', 1), ('a', 2), ('a', 3), ('b', 1)];
    let mut sending = task::spawn(async move {
        let sent = feeder.send_all(&mut stream::iter(input).map(Ok)).await;
        (sent.map_err(|e| e.to_string()), feeder)
    });
    assert_pending!(sending.poll());
    // a1 runs, a2 is queued (the key is full), a3 is held: b1 waits behind
    // it, as it would behind any sink's `poll_ready`.
    sleep(ms(1)).await;
    assert_pending!(sending.poll());
    let stats = controller.stats();
    assert_eq!((stats.produced, stats.queue_depth), (2, 1));
    sleep(ms(30)).await;
    let (sent, feeder) = assert_ready!(sending.poll());
    assert_eq!(sent, Ok(()));
    drop(feeder);
    let (out, report) = within(GUARD, "join", joined).await.unwrap();
    assert_eq!(out, input);
    assert_eq!(
        (report.produced, report.processed, report.dropped),
        (4, 4, 0)
    );
}

/// Closing flushes the held item first; a stop refuses it and hands it
/// back; a handle dropped holding one gives its room back.
#[tokio::test(start_paused = true)]
async fn a_held_item_is_pushed_by_close_handed_back_by_a_stop_and_dropped_with_its_handle() {
    // Closed: the held item is pushed before the handle retires.
    let (mut feeder, results, shutdown) = keyed_feeder();
    for item in [('a', 1), ('a', 2), ('a', 3)] {
        SinkExt::feed(&mut feeder, item).await.unwrap();
    }
    assert_eq!(shutdown.stats().produced, 2, "a3 held");
    within(GUARD, "close", feeder.close()).await.unwrap();
    let (out, report) = shutdown.join_collect(results).await;
    assert_eq!(out, [('a', 1), ('a', 2), ('a', 3)]);
    assert_eq!((report.produced, report.processed), (3, 3));

    // Stopped: the next `poll_ready` hands the held item back, uncounted.
    let (mut feeder, results, shutdown) = keyed_feeder();
    for item in [('a', 1), ('a', 2), ('a', 3)] {
        SinkExt::feed(&mut feeder, item).await.unwrap();
    }
    shutdown.shutdown();
    let refused = poll_fn(|cx| Pin::new(&mut feeder).poll_ready(cx)).await;
    assert_eq!(refused.map_err(|e| e.into_item()), Err(Some(('a', 3))));
    drop(feeder);
    let (_, report) = shutdown.join_collect(results).await;
    assert_eq!((report.produced, report.processed), (2, 2));

    // Dropped unflushed: the held item goes (a buffered sink's rule), and
    // the key's room and the queue's slot with it, so b1 and a4 fit.
    let (mut feeder, results, shutdown) = keyed_feeder();
    let spare = feeder.clone();
    for item in [('a', 1), ('a', 2), ('a', 3)] {
        SinkExt::feed(&mut feeder, item).await.unwrap();
    }
    drop(feeder);
    assert!(spare.send(('b', 1)).await.is_queued());
    // Keys in turn: b1 runs after a1, then a2; a4 is queued once a2 has
    // left a's queue (at 20 ms).
    let start = tokio::time::Instant::now();
    assert!(spare.send(('a', 4)).await.is_queued());
    assert_eq!(start.elapsed(), ms(20));
    drop(spare);
    let (out, report) = shutdown.join_collect(results).await;
    assert_eq!(out, [('a', 1), ('b', 1), ('a', 2), ('a', 4)]);
    assert_eq!((report.produced, report.processed), (4, 4));
}

/// A key's room goes to its producers in the order they began to wait: a
/// handle that accepted an item for a full key takes its place in line at
/// once, so it gets in before a handle that accepted one later (even if
/// that one is polled first) and before a `send` that began waiting later.
#[tokio::test(start_paused = true)]
async fn producers_waiting_for_a_keys_room_get_in_in_the_order_they_began_to_wait() {
    let (mut first, results, shutdown) = keyed_feeder();
    let (mut second, third) = (first.clone(), first.clone());
    for item in [('a', 1), ('a', 2)] {
        assert!(third.send(item).await.is_queued()); // a1 runs, a2 queued
    }
    SinkExt::feed(&mut first, ('a', 3)).await.unwrap(); // held, first in line
    SinkExt::feed(&mut second, ('a', 4)).await.unwrap(); // held, second
    let sending = tokio::spawn(async move {
        assert!(third.send(('a', 5)).await.is_queued()); // third in line
    });
    // The later handle is polled first: it still waits its turn.
    let (closed_second, closed_first, out) = tokio::join!(second.close(), first.close(), async {
        sending.await.unwrap();
        shutdown.join_collect(results).await
    });
    assert_eq!((closed_second, closed_first), (Ok(()), Ok(())));
    let (out, report) = out;
    assert_eq!(out, [('a', 1), ('a', 2), ('a', 3), ('a', 4), ('a', 5)]);
    assert_eq!((report.produced, report.processed), (5, 5));
}

// ===== a wait given up, and a wait for settlement credits =====

/// A `Sink` send given up while it waits (here by a timeout) keeps this
/// handle's place in line: the next slot freed is kept for it, as the
/// `Sink` docs say, until `abort_send` gives it to anyone (a new-user trial
/// found producers starved by such a handle).
#[tokio::test(start_paused = true)]
async fn a_given_up_sink_send_keeps_the_next_slot_until_abort_send() {
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
    let (mut feeder, results, shutdown) = feeder(config, |x: u32| async move {
        sleep(ms(10)).await;
        x
    });
    let other = feeder.clone();
    assert_eq!(other.offer(0), Offer::Queued);
    tokio::task::yield_now().await; // the worker takes 0, busy until 10 ms
    assert_eq!(other.offer(1), Offer::Queued);
    let send = SinkExt::send(&mut feeder, 2);
    assert!(tokio::time::timeout(ms(5), send).await.is_err());
    sleep(ms(6)).await; // at 10 ms the worker took 1: its slot went to the wait
    assert_eq!(shutdown.stats().queue_depth, 0);
    assert_eq!(other.offer(3), Offer::Full(3));
    assert!(feeder.abort_send());
    assert!(!feeder.abort_send(), "nothing left to abort");
    assert_eq!(other.offer(3), Offer::Queued);
    drop((feeder, other));
    let (out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
    assert_eq!(out, [0, 1, 3]);
    assert_eq!((report.produced, report.processed), (3, 3));
}

/// A stop refuses a sink waiting for a settlement credit (credits come
/// back only as records are read, maybe never): `forward` ends with a
/// closed error instead of waiting past the pipeline's end (found by a
/// new-user trial), and a by-hand `poll_ready` is woken by the stop.
#[tokio::test(start_paused = true)]
async fn a_stop_refuses_a_sink_waiting_for_a_settlement_credit() {
    let (config, settlements) = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(4)
        .settle_capacity(2)
        .settle_by(|x: &u32| *x);
    let (feeder, results, shutdown) = feeder(config, |x: u32| async move { x });
    let mut waiting = feeder.clone();
    let forward = tokio::spawn(stream::iter(0..10u32).map(Ok).forward(feeder));
    common::settle().await; // 0 and 1 pushed; the third waits for a credit
    let mut ready = task::spawn(poll_fn(|cx| Pin::new(&mut waiting).poll_ready(cx)));
    assert_pending!(ready.poll());
    shutdown.shutdown();
    assert!(ready.is_woken(), "the stop wakes the waiting poll_ready");
    assert!(assert_ready!(ready.poll()).is_err_and(|e| e.is_closed()));
    drop(ready);
    // The refused wait left the credits' line (a review found it kept).
    assert!(!waiting.abort_send(), "nothing reserved or waited for");
    drop(waiting);
    let forwarded = within(GUARD, "forward", forward)
        .await
        .expect("forward task");
    assert!(forwarded.is_err_and(|e| e.is_closed() && e.into_item().is_none()));
    let (out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
    assert_eq!(sorted(&out), [0, 1]);
    assert_eq!((report.produced, report.processed), (2, 2));
    drop(settlements);
}
