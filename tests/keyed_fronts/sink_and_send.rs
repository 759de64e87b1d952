//! A full key's room under keyed `Backpressure`, mixing the push front's
//! three ways in (`offer`, `send`, the `Sink`), with slots and settlement
//! credits scarce, sends dropped at every await point, and stops; a `Sink`
//! handle and a `send` of one key never wait on each other.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{
    BoundedFanOut, CancellationToken, FanOutConfig, Feeder, IntakeEnd, Offer, Report, ShedPolicy,
    ShutdownHandle,
};
use futures::{Sink, StreamExt};
use tokio::sync::Semaphore;
use tokio::time::sleep;
use tokio_test::{assert_pending, assert_ready, task};

type Item = (char, u32);
type Log = Arc<Mutex<Vec<Item>>>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Rig {
    feeder: Feeder<Item>,
    results: BoundedFanOut<Item>,
    shutdown: ShutdownHandle,
    starts: Log,
    gate: Arc<Semaphore>,
}

/// Keyed `Backpressure`; items numbered 0 wait for a permit of `gate`.
fn rig(config: FanOutConfig<Item>) -> Rig {
    let starts: Log = Arc::default();
    let gate = Arc::new(Semaphore::new(0));
    let (log, open) = (Arc::clone(&starts), Arc::clone(&gate));
    let config = config.key_by(|i: &Item| i.0);
    let (feeder, results, shutdown) = backpressure_pipeline::feeder(config, move |item: Item| {
        let (log, open) = (Arc::clone(&log), Arc::clone(&open));
        async move {
            log.lock().unwrap().push(item);
            if item.1 == 0 {
                open.acquire().await.unwrap().forget();
            }
            item
        }
    });
    Rig {
        feeder,
        results,
        shutdown,
        starts,
        gate,
    }
}

fn bp(workers: usize, capacity: usize, per_key: usize) -> FanOutConfig<Item> {
    FanOutConfig::new(workers, ShedPolicy::Backpressure)
        .capacity(capacity)
        .per_key_capacity(per_key)
}

async fn finish(rig: Rig) -> (Vec<Item>, Vec<Item>, Report) {
    let Rig {
        feeder,
        results,
        shutdown,
        starts,
        gate,
    } = rig;
    gate.add_permits(100);
    drop(feeder);
    let (out, report) =
        tokio::time::timeout(Duration::from_secs(3600), shutdown.join_collect(results))
            .await
            .expect("join hung");
    let starts = starts.lock().unwrap().clone();
    (starts, out, report)
}

fn ready(sink: &mut Feeder<Item>) -> std::task::Poll<Result<(), String>> {
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    Pin::new(sink)
        .poll_ready(&mut cx)
        .map_err(|e| e.to_string())
}

// ===== a sink's held slot against a send's kept place =====

/// The sink reserves the only slot in `poll_ready`; a `send` of key a then
/// takes a's place (a fresh key: at once) and waits for a slot; the sink's
/// item of key a finds a's place kept. Had the sink held its slot while it
/// waited for the key, each would wait for what the other holds; it gives
/// the slot back, so the send goes first and the sink's item after.
#[tokio::test(start_paused = true)]
async fn a_sink_holding_the_slot_and_a_send_holding_the_keys_place_do_not_deadlock() {
    let rig = rig(bp(1, 1, 1));
    let mut sink = rig.feeder.clone();
    assert!(ready(&mut sink).is_ready(), "the only slot, reserved");
    let sender = rig.feeder.clone();
    let mut send = task::spawn(async move { sender.send(('a', 1)).await });
    assert_pending!(send.poll()); // a's place is its own; no slot
    Pin::new(&mut sink).start_send(('a', 2)).unwrap(); // held: a's place is kept
    let mut flush = task::spawn(async move {
        futures::SinkExt::flush(&mut sink)
            .await
            .map(|()| sink)
            .map_err(|e| e.to_string())
    });
    assert_pending!(flush.poll());
    sleep(Duration::from_secs(10)).await;
    let stats = rig.shutdown.stats();
    let stuck = (
        send.is_woken(),
        flush.is_woken(),
        stats.queue_depth,
        stats.in_flight,
    );
    let sent = send.poll();
    sleep(Duration::from_millis(1)).await; // a worker takes a1: a has room
    let flushed = flush.poll();
    assert!(
        sent.is_ready() && flushed.is_ready(),
        "deadlock after 10 s: send ready {}, sink flush ready {} (woken {:?}, queue_depth {}, in_flight {}, keys {})",
        sent.is_ready(),
        flushed.is_ready(),
        (stuck.0, stuck.1),
        stuck.2,
        stuck.3,
        stats.keys,
    );
    assert_eq!(sent, std::task::Poll::Ready(Offer::Queued));
    if let std::task::Poll::Ready(Ok(sink)) = flushed {
        drop(sink); // the sink's handle: intake ends with it
    }
    let (starts, out, report) = finish(rig).await;
    let a = |log: &[Item]| -> Vec<u32> { log.iter().filter(|i| i.0 == 'a').map(|i| i.1).collect() };
    assert_eq!((a(&starts), a(&out)), (vec![1, 2], vec![1, 2]));
    assert_eq!((report.produced, report.processed), (2, 2));
}

/// The same cycle with a settlement credit instead of a slot: the sink
/// takes the only credit in `poll_ready`.
#[tokio::test(start_paused = true)]
async fn a_sink_holding_the_credit_and_a_send_holding_the_keys_place_do_not_deadlock() {
    let (config, settlements) = bp(1, 8, 1).settle_capacity(1).settle_by(|i: &Item| *i);
    let rig = rig(config);
    let mut sink = rig.feeder.clone();
    assert!(ready(&mut sink).is_ready(), "the only credit, reserved");
    let sender = rig.feeder.clone();
    let mut send = task::spawn(async move { sender.send(('a', 1)).await });
    assert_pending!(send.poll()); // a's place is its own; no credit
    Pin::new(&mut sink).start_send(('a', 2)).unwrap();
    let mut flush = task::spawn(async move {
        futures::SinkExt::flush(&mut sink)
            .await
            .map(|()| sink)
            .map_err(|e| e.to_string())
    });
    assert_pending!(flush.poll());
    // Read settlements as they come, so credits come back.
    let reader = tokio::spawn(settlements.collect::<Vec<_>>());
    sleep(Duration::from_secs(10)).await;
    let sent = send.poll();
    sleep(Duration::from_millis(1)).await; // a1 taken and settled: a has room
    let flushed = flush.poll();
    let ok = sent.is_ready() && flushed.is_ready();
    if let std::task::Poll::Ready(Ok(sink)) = flushed {
        drop(sink);
    }
    assert!(
        ok,
        "deadlock after 10 s: send ready {}, send and flush ready {ok}",
        sent.is_ready()
    );
    assert_eq!(sent, std::task::Poll::Ready(Offer::Queued));
    let (starts, _, report) = finish(rig).await;
    let records = reader.await.expect("the reader");
    let a: Vec<u32> = starts.iter().filter(|i| i.0 == 'a').map(|i| i.1).collect();
    assert_eq!(a, [1, 2]);
    assert_eq!((report.processed, records.len()), (2, 2));
}

// ===== per_key_capacity == capacity, two keys =====

#[tokio::test(start_paused = true)]
async fn one_key_filling_the_queue_does_not_keep_a_second_key_out_longer_than_a_slot() {
    // Every item waits in its handler for a permit of `gate`.
    let starts: Log = Arc::default();
    let gate = Arc::new(Semaphore::new(0));
    let (log, open) = (Arc::clone(&starts), Arc::clone(&gate));
    let config = bp(1, 2, 2).key_by(|i: &Item| i.0);
    let (feeder, results, shutdown) = backpressure_pipeline::feeder(config, move |item: Item| {
        let (log, open) = (Arc::clone(&log), Arc::clone(&open));
        async move {
            log.lock().unwrap().push(item);
            open.acquire().await.unwrap().forget();
            item
        }
    });
    assert_eq!(feeder.offer(('z', 1)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(feeder.offer(('a', 1)), Offer::Queued);
    assert_eq!(feeder.offer(('a', 2)), Offer::Queued);
    let (fb, fa) = (feeder.clone(), feeder.clone());
    let mut b1 = task::spawn(async move { fb.send(('b', 1)).await });
    let mut a3 = task::spawn(async move { fa.send(('a', 3)).await });
    assert_pending!(b1.poll()); // b's place at once; waits for a slot
    assert_pending!(a3.poll()); // a is full: in a's line
    assert_eq!(shutdown.stats().keys, 3); // z, a, b (b's kept place)
    gate.add_permits(1);
    sleep(ms(1)).await; // z1 ends, the worker takes a1: a slot and a's place free
    assert_eq!(
        assert_ready!(b1.poll()),
        Offer::Queued,
        "b waited for a slot first"
    );
    assert_pending!(a3.poll(), "a's place is a3's, the slot went to b1");
    gate.add_permits(1);
    sleep(ms(1)).await; // a1 ends, the worker takes b1 (a is behind b in the ring)
    assert_eq!(assert_ready!(a3.poll()), Offer::Queued);
    gate.add_permits(10);
    drop(feeder);
    let (out, report) = shutdown.join_collect(results).await;
    let starts = starts.lock().unwrap().clone();
    assert_eq!(starts, [('z', 1), ('a', 1), ('b', 1), ('a', 2), ('a', 3)]);
    assert_eq!(out, starts);
    assert_eq!((report.produced, report.processed), (5, 5));
    assert!(report.is_conserved(), "{report}");
}

// ===== sends dropped at every await point =====

#[tokio::test(start_paused = true)]
async fn sends_dropped_in_line_with_a_grant_and_holding_a_fresh_place_leave_nothing_behind() {
    let rig = rig(bp(1, 2, 1));
    let f = &rig.feeder;
    assert_eq!(f.offer(('z', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(f.offer(('a', 1)), Offer::Queued);
    assert_eq!(f.offer(('b', 1)), Offer::Queued);
    let spawn_send = |item: Item| {
        let f = f.clone();
        task::spawn(async move { f.send(item).await })
    };
    let mut s1 = spawn_send(('a', 2));
    let mut s2 = spawn_send(('c', 1));
    let mut s3 = spawn_send(('a', 3));
    let mut s4 = spawn_send(('a', 4));
    for s in [&mut s1, &mut s2, &mut s3, &mut s4] {
        assert_pending!(s.poll());
    }
    assert_eq!(rig.shutdown.stats().keys, 4, "z, a, b and c (a kept place)");
    drop(s2); // held c's place, waiting for a slot
    assert_eq!(rig.shutdown.stats().keys, 3, "c forgotten with its place");
    assert_eq!(
        f.offer(('c', 2)),
        Offer::Full(('c', 2)),
        "the queue is still full"
    );
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // z0 ends; a1 and b1 run: a's place goes to s1
    assert!(s1.is_woken());
    drop(s1); // woken with a's place, never polled: it passes to s3
    assert!(s3.is_woken());
    assert_pending!(s4.poll(), "s4 stays behind s3");
    assert_eq!(assert_ready!(s3.poll()), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(assert_ready!(s4.poll()), Offer::Queued);
    sleep(ms(1)).await;
    let stats = rig.shutdown.stats();
    assert_eq!((stats.queue_depth, stats.in_flight, stats.keys), (0, 0, 0));
    // Both slots usable: two fresh offers queue.
    assert_eq!(rig.feeder.offer(('d', 1)), Offer::Queued);
    assert_eq!(rig.feeder.offer(('e', 1)), Offer::Queued);
    let (starts, _, report) = finish(rig).await;
    assert_eq!(
        starts,
        [
            ('z', 0),
            ('a', 1),
            ('b', 1),
            ('a', 3),
            ('a', 4),
            ('d', 1),
            ('e', 1)
        ]
    );
    assert_eq!((report.produced, report.processed), (7, 7));
    assert!(report.is_conserved(), "{report}");
}

// ===== stops =====

#[tokio::test(start_paused = true)]
async fn a_parent_cancel_hands_back_a_sinks_held_item_and_refuses_the_line() {
    let parent = CancellationToken::new();
    let rig = rig(bp(1, 2, 1).cancel_token(parent.clone()));
    assert_eq!(rig.feeder.offer(('z', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(rig.feeder.offer(('a', 1)), Offer::Queued);
    let mut sink = rig.feeder.clone();
    assert!(ready(&mut sink).is_ready());
    Pin::new(&mut sink).start_send(('a', 2)).unwrap(); // held for a's room
    let f = rig.feeder.clone();
    let mut send = task::spawn(async move { f.send(('a', 3)).await });
    assert_pending!(send.poll());
    parent.cancel();
    assert_eq!(assert_ready!(send.poll()), Offer::Closed(('a', 3)));
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    match Pin::new(&mut sink).poll_flush(&mut cx) {
        std::task::Poll::Ready(Err(e)) => {
            assert!(e.is_closed());
            assert_eq!(e.into_item(), Some(('a', 2)));
        }
        other => panic!("{:?}", other.map_err(|e| e.to_string())),
    }
    drop(sink);
    let controller = rig.shutdown.controller();
    let (starts, out, report) = finish(rig).await;
    assert_eq!(starts, [('z', 0), ('a', 1)]);
    assert_eq!(out, starts);
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.cancelled,
            report.intake
        ),
        (2, 2, 0, IntakeEnd::Stopped)
    );
    assert_eq!(controller.stats().keys, 0);
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_drain_timeout_with_a_full_key_and_waiters_cancels_exactly_the_rest() {
    let rig = rig(bp(1, 3, 2).drain_timeout(ms(50)));
    assert_eq!(rig.feeder.offer(('a', 0)), Offer::Queued);
    sleep(ms(1)).await; // a0 in flight, forever (no permit comes)
    assert_eq!(rig.feeder.offer(('a', 1)), Offer::Queued);
    assert_eq!(rig.feeder.offer(('a', 2)), Offer::Queued);
    assert_eq!(rig.feeder.offer(('b', 1)), Offer::Queued);
    let f = rig.feeder.clone();
    let mut send = task::spawn(async move { f.send(('a', 3)).await });
    assert_pending!(send.poll());
    let Rig {
        feeder,
        results,
        shutdown,
        starts,
        ..
    } = rig;
    shutdown.shutdown();
    assert_eq!(assert_ready!(send.poll()), Offer::Closed(('a', 3)));
    drop(feeder);
    let (out, report) = shutdown.join_collect(results).await;
    // a0 blocks its only worker past the deadline: it is cut off; b1 and
    // a's queue never start.
    assert_eq!(*starts.lock().unwrap(), [('a', 0)]);
    assert!(out.is_empty());
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.cancelled,
            report.aborted
        ),
        (4, 0, 4, 1)
    );
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn dropping_both_handles_with_a_held_sink_item_and_waiters_aborts_and_joins() {
    let rig = rig(bp(1, 2, 1));
    assert_eq!(rig.feeder.offer(('z', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(rig.feeder.offer(('a', 1)), Offer::Queued);
    let mut sink = rig.feeder.clone();
    assert!(ready(&mut sink).is_ready());
    Pin::new(&mut sink).start_send(('a', 2)).unwrap();
    let f = rig.feeder.clone();
    let mut send = task::spawn(async move { f.send(('a', 3)).await });
    assert_pending!(send.poll());
    let controller = rig.shutdown.controller();
    let Rig {
        feeder,
        results,
        shutdown,
        ..
    } = rig;
    drop(results);
    drop(shutdown); // both ends gone: aborted
    assert_eq!(assert_ready!(send.poll()), Offer::Closed(('a', 3)));
    let report = tokio::time::timeout(ms(1000), controller.finished())
        .await
        .expect("the pipeline did not finish");
    let waker = futures::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let flushed = Pin::new(&mut sink).poll_flush(&mut cx);
    assert!(
        matches!(&flushed, std::task::Poll::Ready(Err(e)) if e.is_closed()),
        "{:?}",
        flushed.map_err(|e| e.to_string())
    );
    drop((sink, feeder));
    assert_eq!(
        (report.produced, report.cancelled, report.processed),
        (2, 2, 0)
    );
    assert!(report.is_conserved(), "{report}");
}

// ===== one line, mixed sink and send waiters =====

fn flush_task(
    mut sink: Feeder<Item>,
) -> tokio_test::task::Spawn<impl std::future::Future<Output = Result<Feeder<Item>, String>>> {
    task::spawn(async move {
        futures::SinkExt::flush(&mut sink)
            .await
            .map(|()| sink)
            .map_err(|e| e.to_string())
    })
}

#[tokio::test(start_paused = true)]
async fn sink_and_send_waiters_of_one_key_enter_in_the_order_they_began_to_wait() {
    let rig = rig(bp(1, 4, 1));
    assert_eq!(rig.feeder.offer(('z', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(rig.feeder.offer(('a', 1)), Offer::Queued); // a is full
    let mut s1 = rig.feeder.clone();
    assert!(ready(&mut s1).is_ready());
    Pin::new(&mut s1).start_send(('a', 2)).unwrap(); // held, first in a's line
    let f = rig.feeder.clone();
    let mut w2 = task::spawn(async move { f.send(('a', 3)).await });
    assert_pending!(w2.poll()); // second in line
    let mut s3 = rig.feeder.clone();
    assert!(ready(&mut s3).is_ready());
    Pin::new(&mut s3).start_send(('a', 4)).unwrap(); // third in line
    let mut s1 = flush_task(s1);
    let mut s3 = flush_task(s3);
    assert_pending!(s1.poll());
    assert_pending!(s3.poll());
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // z0 ends; a1 taken: a's place is s1's
    assert_eq!(
        rig.feeder.offer(('a', 9)),
        Offer::Full(('a', 9)),
        "kept for s1"
    );
    assert_pending!(w2.poll());
    assert_pending!(s3.poll());
    let _s1 = assert_ready!(s1.poll()).unwrap(); // a2 queued
    sleep(ms(1)).await; // a2 taken: the place is w2's
    assert_pending!(s3.poll());
    assert_eq!(assert_ready!(w2.poll()), Offer::Queued);
    sleep(ms(1)).await; // a3 taken: the place is s3's
    let _s3 = assert_ready!(s3.poll()).unwrap();
    drop((_s1, _s3));
    let (starts, _, report) = finish(rig).await;
    assert_eq!(starts, [('z', 0), ('a', 1), ('a', 2), ('a', 3), ('a', 4)]);
    assert_eq!((report.produced, report.processed), (5, 5));
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_sink_dropped_unflushed_after_its_grant_passes_the_place_and_its_slot_on() {
    let rig = rig(bp(1, 2, 1));
    assert_eq!(rig.feeder.offer(('z', 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(rig.feeder.offer(('a', 1)), Offer::Queued);
    let mut s1 = rig.feeder.clone();
    assert!(ready(&mut s1).is_ready()); // the second slot
    Pin::new(&mut s1).start_send(('a', 2)).unwrap(); // held
    let f = rig.feeder.clone();
    let mut w2 = task::spawn(async move { f.send(('a', 3)).await });
    assert_pending!(w2.poll());
    rig.gate.add_permits(1);
    sleep(ms(1)).await; // a1 taken and done: a's place is s1's
    assert_pending!(w2.poll());
    drop(s1); // a2 dropped uncounted; place and slot pass on
    assert!(w2.is_woken());
    assert_eq!(assert_ready!(w2.poll()), Offer::Queued);
    let (starts, _, report) = finish(rig).await;
    assert_eq!(starts, [('z', 0), ('a', 1), ('a', 3)]);
    assert_eq!((report.produced, report.processed), (3, 3));
    assert!(report.is_conserved(), "{report}");
}
