//! A key's `Eq` that panics (it runs under the queue's lock, where the key
//! table compares keys) on the keyed fronts' less travelled paths: taking a
//! place in a full key, a `Sink`'s held item, shedding batches, and a
//! waiting producer's remembered key id while other keys churn. Written by
//! a code review of the panic's handling; the `Sink` case lost an item.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

use backpressure_pipeline::{FanOutConfig, FanOutExt, Offer, Rejected, ShedPolicy, feeder};
use futures::{SinkExt, stream};
use tokio::time::sleep;

use common::{GUARD, ms, within};

type Item = (char, u32);

/// A key whose `Eq` panics at the `nth` comparison of two keys equal to
/// `which` (counted in `calls`); every key hashes alike, so each lookup
/// compares with every key tracked.
#[derive(Clone)]
struct Flaky {
    value: u32,
    which: u32,
    nth: usize,
    upto: usize,
    calls: Arc<AtomicUsize>,
}

impl std::hash::Hash for Flaky {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl PartialEq for Flaky {
    fn eq(&self, other: &Self) -> bool {
        if (self.value, other.value) == (self.which, self.which)
            && (self.nth..=self.upto).contains(&(self.calls.fetch_add(1, SeqCst) + 1))
        {
            common::planned_panic();
        }
        self.value == other.value
    }
}

impl Eq for Flaky {}

fn flaky(policy: ShedPolicy, which: u32, nth: usize) -> (FanOutConfig<Item>, Arc<AtomicUsize>) {
    flaky_range(policy, which, nth, nth)
}

fn flaky_range(
    policy: ShedPolicy,
    which: u32,
    nth: usize,
    upto: usize,
) -> (FanOutConfig<Item>, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let config = FanOutConfig::new(1, policy)
        .capacity(4)
        .per_key_capacity(1)
        .key_by(move |item: &Item| Flaky {
            value: item.1,
            which,
            nth,
            upto,
            calls: Arc::clone(&c),
        });
    (config, calls)
}

/// Stream front, keyed `Backpressure`: b's key is found full by the push
/// (1st comparison of 5 with 5), then its `Eq` panics when b takes a place
/// in the key (2nd): `KeyPlace::Unkeyed`, stream.rs drops the front key and
/// fails `batch[0]`; c is pushed after.
#[tokio::test(start_paused = true)]
async fn stream_a_panic_while_taking_a_place_fails_the_blocked_item() {
    common::quiet_planned_panics();
    let (config, calls) = flaky(ShedPolicy::Backpressure, 5, 2);
    let input = vec![('a', 5), ('b', 5), ('c', 6), ('d', 5)];
    let (results, shutdown) =
        stream::iter(input).bounded_fan_out_with(config, |item: Item| async move {
            sleep(ms(10)).await;
            item
        });
    let (mut out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
    out.sort();
    assert!(calls.load(SeqCst) >= 2, "the place's lookup compared");
    assert_eq!(out, [('a', 5), ('c', 6), ('d', 5)]);
    assert_eq!(
        (report.produced, report.processed, report.failed),
        (4, 3, 1)
    );
    assert!(report.is_conserved(), "{report}");
}

/// Stream front, shedding policies, several panics in one batch: the books
/// balance and nothing is lost.
#[tokio::test(start_paused = true)]
async fn stream_shedding_with_panics_keeps_the_books() {
    common::quiet_planned_panics();
    for policy in [ShedPolicy::DropOldest, ShedPolicy::DropNewest] {
        for nth in 1..6 {
            let (config, _) = flaky(policy, 5, nth);
            let shed = Arc::new(AtomicUsize::new(0));
            let s = Arc::clone(&shed);
            let config = config.on_shed(move |_item: Item| {
                s.fetch_add(1, SeqCst);
            });
            let input: Vec<Item> = (0..12u32)
                .map(|i| ((b'a' + i as u8) as char, [5, 6, 5, 7][i as usize % 4]))
                .collect();
            let (results, shutdown) =
                stream::iter(input).bounded_fan_out_with(config, |item: Item| async move {
                    sleep(ms(10)).await;
                    item
                });
            let (out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
            assert_eq!(report.produced, 12, "{policy:?} {nth}");
            assert_eq!(
                out.len() as u64 + report.dropped + report.failed,
                12,
                "{policy:?} {nth}: {report}"
            );
            assert_eq!(report.dropped, shed.load(SeqCst) as u64, "{policy:?} {nth}");
            assert!(report.is_conserved(), "{policy:?} {nth}: {report}");
        }
    }
}

/// A feeder of 10 ms handlers whose worker runs a (key 5) and whose queue
/// holds b (key 5), both fed through the `Sink`: the key is full.
async fn a_running_b_queued(
    config: FanOutConfig<Item>,
) -> (
    backpressure_pipeline::Feeder<Item>,
    backpressure_pipeline::BoundedFanOut<Item>,
    backpressure_pipeline::ShutdownHandle,
) {
    let (mut feeder, results, shutdown) = feeder(config, |item: Item| async move {
        sleep(ms(10)).await;
        item
    });
    SinkExt::feed(&mut feeder, ('a', 5)).await.unwrap();
    tokio::task::yield_now().await; // the worker takes a
    SinkExt::feed(&mut feeder, ('b', 5)).await.unwrap(); // queued
    (feeder, results, shutdown)
}

/// Sink: an item held for its full key whose `Eq` panics when it lines up
/// and/or when it is polled: handed back Unkeyed (by `start_send` or by
/// flush, or the next push's lookup panics instead), and every item is
/// delivered or handed back exactly once; room intact. Comparisons of 5
/// with 5: b's push (1), c's push (2, full: held), c's line-up (3), c's
/// first poll (4) only if the line-up found nothing (else the id is used).
#[tokio::test(start_paused = true)]
async fn sink_a_held_item_whose_eq_panics_comes_back() {
    common::quiet_planned_panics();
    for (lo, hi) in [(3usize, 3usize), (3, 4), (4, 4)] {
        let (config, calls) = flaky_range(ShedPolicy::Backpressure, 5, lo, hi);
        let (mut feeder, results, shutdown) = a_running_b_queued(config).await;
        let fed = SinkExt::feed(&mut feeder, ('c', 5)).await; // held, or back
        let flushed = SinkExt::flush(&mut feeder).await;
        let d = SinkExt::send(&mut feeder, ('d', 6)).await;
        let e = SinkExt::send(&mut feeder, ('e', 5)).await;
        let back: Vec<Item> = [fed.err(), flushed.err(), d.err(), e.err()]
            .into_iter()
            .flatten()
            .inspect(|err| assert!(!err.is_closed()))
            .filter_map(|err| err.into_item())
            .collect();
        drop(feeder);
        let (mut out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
        assert_eq!(report.produced as usize, out.len());
        out.extend(back);
        out.sort();
        assert_eq!(
            out,
            [('a', 5), ('b', 5), ('c', 5), ('d', 6), ('e', 5)],
            "{lo}..{hi} calls {}",
            calls.load(SeqCst)
        );
        assert!(report.is_conserved(), "{report}");
    }
}

/// Call front, keyed `Backpressure`: the place's lookup panics: the request
/// comes back Unkeyed, nothing counted, and the next call goes through.
#[tokio::test(start_paused = true)]
async fn call_a_panic_while_taking_a_place_hands_the_request_back() {
    common::quiet_planned_panics();
    let (config, _) = flaky(ShedPolicy::Backpressure, 5, 1);
    let (caller, shutdown) = backpressure_pipeline::caller(config, |item: Item| async move {
        sleep(ms(10)).await;
        item
    });
    let first = tokio::spawn({
        let caller = caller.clone();
        async move { caller.call(('a', 5)).await }
    });
    tokio::task::yield_now().await;
    let rejected = caller.call(('b', 5)).await.unwrap_err();
    assert!(
        matches!(rejected, Rejected::Unkeyed(('b', 5))),
        "{rejected:?}"
    );
    assert_eq!(caller.call(('c', 5)).await.ok(), Some(('c', 5)));
    assert_eq!(first.await.unwrap().ok(), Some(('a', 5)));
    drop(caller);
    let report = within(GUARD, "join", shutdown.join()).await;
    assert_eq!((report.produced, report.delivered), (2, 2));
    assert!(report.is_conserved(), "{report}");
}

/// Push front, `send` waiting in a key's line (its id remembered, `at`)
/// while other keys churn ids: the waiting send's item lands in its own
/// key (one in flight per key, order kept).
#[tokio::test(start_paused = true)]
async fn a_waiting_send_keeps_its_key_while_ids_churn() {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    let config = FanOutConfig::new(2, ShedPolicy::Backpressure)
        .capacity(8)
        .per_key_capacity(1)
        .key_by(|item: &Item| item.1);
    let (feeder, results, shutdown) = feeder(config, move |item: Item| {
        let l = Arc::clone(&l);
        async move {
            l.lock().unwrap().push(('s', item));
            sleep(ms(if item.1 == 5 { 50 } else { 1 })).await;
            l.lock().unwrap().push(('e', item));
            item
        }
    });
    assert_eq!(feeder.offer(('a', 5)), Offer::Queued);
    tokio::task::yield_now().await; // a worker takes a
    assert_eq!(feeder.offer(('b', 5)), Offer::Queued);
    let waiting = tokio::spawn({
        let feeder = feeder.clone();
        async move { feeder.send(('c', 5)).await }
    });
    // Churn other keys (interned and forgotten) while c waits.
    for i in 0..40u32 {
        let _ = feeder.send(('x', 100 + i)).await;
        sleep(ms(2)).await;
    }
    assert_eq!(waiting.await.unwrap(), Offer::Queued);
    drop(feeder);
    let (_out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
    assert!(report.is_conserved(), "{report}");
    let log = log.lock().unwrap().clone();
    // Key 5: a, b, c in order, never overlapping.
    let fives: Vec<_> = log.iter().filter(|(_, item)| item.1 == 5).collect();
    let expect: Vec<_> = [
        ('s', ('a', 5)),
        ('e', ('a', 5)),
        ('s', ('b', 5)),
        ('e', ('b', 5)),
        ('s', ('c', 5)),
        ('e', ('c', 5)),
    ]
    .to_vec();
    assert_eq!(fives.into_iter().copied().collect::<Vec<_>>(), expect);
}

/// Sink: the held item's key `Eq` panics at its line-up (inside
/// `start_send`) and would at the next lookup. Before the fix the line-up's
/// panic was ignored, the next `poll_ready` failed with the held item c,
/// and d, which the pipeline never saw, was dropped inside the
/// `SinkExt::send` future while intake went on. Now `start_send` hands c
/// back at once, and d is sent.
#[tokio::test(start_paused = true)]
async fn sink_a_held_items_eq_panic_does_not_lose_the_next_item() {
    common::quiet_planned_panics();
    // Comparisons of 5 with 5: b's push (1), c's push (2, full), c's
    // line-up (3, panics), the next lookup of c (4, panics).
    let (config, _) = flaky_range(ShedPolicy::Backpressure, 5, 3, 4);
    let (mut feeder, results, shutdown) = a_running_b_queued(config).await;
    let c = SinkExt::feed(&mut feeder, ('c', 5)).await; // line-up panics
    let d = SinkExt::send(&mut feeder, ('d', 6)).await;
    let mut handed_back: Vec<Item> = [c.err(), d.err()]
        .into_iter()
        .flatten()
        .filter_map(|err| err.into_item())
        .collect();
    SinkExt::send(&mut feeder, ('e', 6)).await.unwrap();
    drop(feeder);
    let (mut out, report) = within(GUARD, "join", shutdown.join_collect(results)).await;
    out.append(&mut handed_back);
    out.sort();
    assert_eq!(
        out,
        [('a', 5), ('b', 5), ('c', 5), ('d', 6), ('e', 6)],
        "every item delivered or handed back; {report}"
    );
}
