//! The keys themselves. Keys with a `Drop` impl (dropped, when, and never
//! under the queue's lock), keys whose `Hash` is constant, very many keys,
//! `Stats::keys` back to 0 after every way an item can end, the key
//! function called once per item on every front, and nothing alive after
//! `join`.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use backpressure_pipeline::{Controller, FanOutConfig, FanOutExt, Offer, Rejected, ShedPolicy};
use futures::SinkExt;
use tokio::sync::Semaphore;
use tokio::time::sleep;
use tokio_test::{assert_pending, assert_ready, task};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ===== keys with a Drop impl =====

/// A key that counts itself alive.
struct Counted {
    id: char,
    alive: Arc<AtomicUsize>,
}

impl Counted {
    fn new(id: char, alive: &Arc<AtomicUsize>) -> Self {
        alive.fetch_add(1, SeqCst);
        Counted {
            id,
            alive: Arc::clone(alive),
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.alive.fetch_sub(1, SeqCst);
    }
}

impl PartialEq for Counted {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}
impl Eq for Counted {}
impl Hash for Counted {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

type Item = (char, u32);

#[tokio::test(start_paused = true)]
async fn keys_with_drop_are_dropped_once_their_key_is_idle_and_all_by_join() {
    let alive = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Semaphore::new(0));
    let (counter, open) = (Arc::clone(&alive), Arc::clone(&gate));
    let config = FanOutConfig::new(1, ShedPolicy::DropOldest)
        .capacity(8)
        .key_by(move |i: &Item| Counted::new(i.0, &counter));
    let (feeder, results, shutdown) = backpressure_pipeline::feeder(config, move |i: Item| {
        let open = Arc::clone(&open);
        async move {
            if i.1 == 0 {
                open.acquire().await.unwrap().forget();
            }
            i
        }
    });
    assert_eq!(feeder.offer(('z', 0)), Offer::Queued);
    sleep(ms(1)).await;
    for item in [('a', 1), ('a', 2), ('b', 1), ('a', 3)] {
        assert_eq!(feeder.offer(item), Offer::Queued);
    }
    // One key per tracked key (z in flight, a, b); the duplicates went.
    assert_eq!(shutdown.stats().keys, 3);
    assert_eq!(alive.load(SeqCst), 3, "keys alive while tracked");
    gate.add_permits(1);
    sleep(ms(1)).await;
    let stats = shutdown.stats();
    assert_eq!((stats.queue_depth, stats.in_flight, stats.keys), (0, 0, 0));
    assert_eq!(alive.load(SeqCst), 0, "every key dropped once idle");
    let spare = feeder.clone();
    drop(feeder);
    drop(spare);
    let (out, report) = shutdown.join_collect(results).await;
    assert_eq!(out.len(), 5);
    assert_eq!(alive.load(SeqCst), 0);
    assert!(report.is_conserved(), "{report}");
}

/// The controller a `Reentrant` key's `Drop` reads stats from.
static CONTROLLER: OnceLock<Controller> = OnceLock::new();

/// A key whose `Drop` reads the pipeline's stats (say, to log the number of
/// keys tracked when a key goes).
struct Reentrant(u32);

impl Drop for Reentrant {
    fn drop(&mut self) {
        if let Some(controller) = CONTROLLER.get() {
            let _ = controller.stats();
        }
    }
}
impl PartialEq for Reentrant {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Reentrant {}
impl Hash for Reentrant {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// Control for the test below: the same key type with two distinct keys
/// (no duplicate of a tracked key is ever dropped) does not deadlock.
#[test]
fn control_a_reentrant_key_type_with_distinct_keys_does_not_deadlock() {
    static OTHER: OnceLock<Controller> = OnceLock::new();
    struct Distinct(u32);
    impl Drop for Distinct {
        fn drop(&mut self) {
            if let Some(controller) = OTHER.get() {
                let _ = controller.stats();
            }
        }
    }
    impl PartialEq for Distinct {
        fn eq(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }
    impl Eq for Distinct {}
    impl Hash for Distinct {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
                .capacity(4)
                .key_by(|n: &u32| Distinct(*n));
            let (feeder, results, shutdown) =
                backpressure_pipeline::feeder(config, |n: u32| async move { n });
            let _ = OTHER.set(shutdown.controller());
            let first = feeder.offer(1);
            let second = feeder.offer(2);
            drop(feeder);
            let (out, report) = shutdown.join_collect(results).await;
            done_tx
                .send((first, second, out, report.processed))
                .unwrap();
        });
    });
    let (first, second, out, processed) = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("deadlock");
    assert_eq!((first, second), (Offer::Queued, Offer::Queued));
    assert_eq!((out, processed), (vec![1, 2], 2));
}

/// The docs say only the key's `Hash` and `Eq` run under the queue's lock
/// (and the crate's invariants say no user code runs under any lock; a
/// forgotten key is dropped after unlocking). A key whose `Drop` calls back
/// into the pipeline must therefore not deadlock.
#[test]
fn a_key_whose_drop_reads_stats_does_not_deadlock() {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
                .capacity(4)
                .key_by(|n: &u32| Reentrant(*n));
            let (feeder, results, shutdown) =
                backpressure_pipeline::feeder(config, |n: u32| async move { n });
            let _ = CONTROLLER.set(shutdown.controller());
            // Two items of key 1 before the worker runs: the second key is
            // a duplicate of a tracked one.
            let first = feeder.offer(1);
            let second = feeder.offer(1);
            drop(feeder);
            let (out, report) = shutdown.join_collect(results).await;
            done_tx
                .send((first, second, out, report.processed))
                .unwrap();
        });
    });
    let (first, second, out, processed) = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("deadlock: a key's Drop ran under the queue's lock");
    assert_eq!((first, second), (Offer::Queued, Offer::Queued));
    assert_eq!((out, processed), (vec![1, 1], 2));
}

// ===== keys whose Hash is constant =====

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Collide(u32);

impl Hash for Collide {
    fn hash<H: Hasher>(&self, state: &mut H) {
        0u8.hash(state); // every key in one bucket: only Eq tells them apart
    }
}

#[tokio::test(start_paused = true)]
async fn constant_hash_keys_keep_their_own_order_and_are_all_forgotten() {
    const KEYS: u32 = 200;
    let in_flight: Arc<Mutex<Vec<u32>>> = Arc::default();
    let overlap = Arc::new(AtomicUsize::new(0));
    let config = FanOutConfig::new(4, ShedPolicy::Backpressure)
        .capacity(64)
        .key_by(|i: &(u32, u32)| Collide(i.0));
    let (flight, lap) = (Arc::clone(&in_flight), Arc::clone(&overlap));
    // 5 items per key, interleaved: key k's items are (k, 0..5).
    let input = futures::stream::iter((0..5u32).flat_map(|n| (0..KEYS).map(move |k| (k, n))));
    let (results, shutdown) = input.bounded_fan_out_with(config, move |i: (u32, u32)| {
        let (flight, lap) = (Arc::clone(&flight), Arc::clone(&lap));
        async move {
            {
                let mut f = flight.lock().unwrap();
                if f.contains(&i.0) {
                    lap.fetch_add(1, SeqCst);
                }
                f.push(i.0);
            }
            sleep(ms(1 + u64::from(i.0 % 3))).await;
            flight.lock().unwrap().retain(|k| *k != i.0);
            i
        }
    });
    let controller = shutdown.controller();
    let (out, report) = shutdown.join_collect(results).await;
    assert_eq!(overlap.load(SeqCst), 0, "two items of one key ran at once");
    assert_eq!(out.len() as u32, KEYS * 5);
    for k in 0..KEYS {
        let mine: Vec<u32> = out.iter().filter(|i| i.0 == k).map(|i| i.1).collect();
        assert_eq!(mine, [0, 1, 2, 3, 4], "key {k}");
    }
    assert_eq!(controller.stats().keys, 0);
    assert_eq!((report.produced, report.processed), (1000, 1000));
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn constant_hash_keys_shed_from_the_fattest_by_eq_not_by_hash() {
    let gate = Arc::new(Semaphore::new(0));
    let open = Arc::clone(&gate);
    let config = FanOutConfig::new(1, ShedPolicy::DropOldest)
        .capacity(3)
        .per_key_capacity(2)
        .key_by(|i: &(u32, u32)| Collide(i.0));
    let (feeder, results, shutdown) =
        backpressure_pipeline::feeder(config, move |i: (u32, u32)| {
            let open = Arc::clone(&open);
            async move {
                if i.1 == 0 {
                    open.acquire().await.unwrap().forget();
                }
                i
            }
        });
    assert_eq!(feeder.offer((9, 0)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(feeder.offer((1, 1)), Offer::Queued);
    assert_eq!(feeder.offer((1, 2)), Offer::Queued);
    assert_eq!(
        feeder.offer((1, 3)),
        Offer::Evicted((1, 1)),
        "key 1 is full: superseded"
    );
    assert_eq!(feeder.offer((2, 1)), Offer::Queued);
    assert_eq!(
        feeder.offer((3, 1)),
        Offer::Evicted((1, 2)),
        "key 1 is the fattest"
    );
    assert_eq!(shutdown.stats().keys, 4);
    gate.add_permits(1);
    drop(feeder);
    let (out, report) = shutdown.join_collect(results).await;
    assert_eq!(out, [(9, 0), (1, 3), (2, 1), (3, 1)]);
    assert_eq!((report.produced, report.dropped), (6, 2));
    assert!(report.is_conserved(), "{report}");
}

// ===== very many keys =====

#[tokio::test(start_paused = true)]
async fn twenty_thousand_distinct_keys_stay_bounded_and_are_forgotten() {
    let most = Arc::new(AtomicUsize::new(0));
    let config = FanOutConfig::new(4, ShedPolicy::Backpressure)
        .capacity(100)
        .key_by(|n: &u32| *n % 20_000);
    let (feeder, results, shutdown) = backpressure_pipeline::feeder(config, |n: u32| async move {
        tokio::task::yield_now().await;
        n
    });
    let controller = shutdown.controller();
    let m = Arc::clone(&most);
    let producer = tokio::spawn(async move {
        for n in 0..40_000u32 {
            assert!(feeder.send(n).await.is_queued());
            if n % 97 == 0 {
                m.fetch_max(controller.stats().keys, SeqCst);
            }
        }
    });
    let (out, report) = shutdown.join_collect(results).await;
    producer.await.unwrap();
    assert!(
        most.load(SeqCst) <= 104,
        "{} keys tracked",
        most.load(SeqCst)
    );
    assert_eq!(out.len(), 40_000);
    // n and n + 20,000 share a key: n first.
    let mut seen = vec![0u8; 20_000];
    for n in &out {
        let k = (*n % 20_000) as usize;
        assert_eq!(u32::from(seen[k]), *n / 20_000, "key {k} out of order");
        seen[k] += 1;
    }
    assert!(report.is_conserved(), "{report}");
}

// ===== Stats::keys back to 0 after every way out =====

#[tokio::test(start_paused = true)]
async fn keys_drop_back_to_zero_after_shed_expired_timed_out_failed_and_withdrawn() {
    let gate = Arc::new(Semaphore::new(0));
    let open = Arc::clone(&gate);
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
        .capacity(3)
        .max_queue_age(ms(50))
        .handler_timeout(ms(100))
        .key_by(|i: &Item| i.0);
    let (caller, shutdown) = backpressure_pipeline::caller(config, move |i: Item| {
        let open = Arc::clone(&open);
        async move {
            match i.1 {
                0 => open.acquire().await.unwrap().forget(), // held
                9 => sleep(ms(1000)).await,                  // times out
                7 => panic!("planned"),                      // fails
                _ => {}
            }
            i
        }
    });
    let s =
        |caller: &backpressure_pipeline::Caller<Item, Item>, i: Item| task::spawn(caller.call(i));
    let mut held_a = s(&caller, ('a', 0));
    let mut held_b = s(&caller, ('b', 0));
    assert_pending!(held_a.poll());
    assert_pending!(held_b.poll());
    sleep(ms(1)).await; // both workers busy
    let mut queued_a = s(&caller, ('a', 1)); // behind a0: will expire
    let mut withdrawn = s(&caller, ('c', 1));
    let mut fill = s(&caller, ('d', 1));
    let mut shed = s(&caller, ('d', 2)); // d is fattest? no: a, c, d all 1: own 1 == fattest: shed
    for c in [&mut queued_a, &mut withdrawn, &mut fill] {
        assert_pending!(c.poll());
    }
    match assert_ready!(shed.poll()) {
        Err(Rejected::Shed(('d', 2))) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(shutdown.stats().keys, 4); // a, b, c, d
    drop(withdrawn); // c leaves the queue: c forgotten
    assert_eq!(shutdown.stats().keys, 3);
    sleep(ms(60)).await; // a1 and d1 now older than 50 ms
    gate.add_permits(2);
    assert_eq!(held_a.await.unwrap(), ('a', 0));
    assert_eq!(held_b.await.unwrap(), ('b', 0));
    match queued_a.await {
        Err(Rejected::Expired(('a', 1))) => {}
        other => panic!("{other:?}"),
    }
    match fill.await {
        Err(Rejected::Expired(('d', 1))) => {}
        other => panic!("{other:?}"),
    }
    sleep(ms(1)).await;
    assert_eq!(shutdown.stats().keys, 0);
    // A timed-out handler and a failed one.
    match caller.call(('e', 9)).await {
        Err(Rejected::TimedOut) => {}
        other => panic!("{other:?}"),
    }
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let failed = caller.call(('f', 7)).await;
    std::panic::set_hook(prev);
    assert!(matches!(failed, Err(Rejected::Failed)), "{failed:?}");
    sleep(ms(1)).await;
    assert_eq!(shutdown.stats().keys, 0);
    drop(caller);
    let report = shutdown.join().await;
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.dropped,
            report.expired,
            report.timed_out,
            report.failed,
            report.cancelled,
            report.withdrawn
        ),
        (8, 2, 1, 2, 1, 1, 1, 1)
    );
    assert!(report.is_conserved(), "{report}");
}

// ===== the key function: once per item, on every front =====

#[tokio::test(start_paused = true)]
async fn the_key_function_runs_once_per_item_taken_on_every_front() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = |calls: &Arc<AtomicUsize>| {
        let calls = Arc::clone(calls);
        move |i: &Item| {
            calls.fetch_add(1, SeqCst);
            i.0
        }
    };
    // Stream front, keyed Backpressure with a full key: 6 items, 6 calls.
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
        .capacity(4)
        .per_key_capacity(1)
        .key_by(counted(&calls));
    let input = futures::stream::iter([('a', 1), ('a', 2), ('a', 3), ('b', 1), ('a', 4), ('b', 2)]);
    let (results, shutdown) = input.bounded_fan_out_with(config, |i: Item| async move {
        sleep(ms(1)).await;
        i
    });
    let (out, _) = shutdown.join_collect(results).await;
    assert_eq!(out.len(), 6);
    assert_eq!(calls.swap(0, SeqCst), 6, "stream front");

    // Push front: a send that waits for its key, a sink item held for its
    // key, an offer refused for its full key, and an offer refused for want
    // of a queue slot (documented: not keyed).
    let gate = Arc::new(Semaphore::new(0));
    let open = Arc::clone(&gate);
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
        .capacity(2)
        .per_key_capacity(1)
        .key_by(counted(&calls));
    let (feeder, results, shutdown) = backpressure_pipeline::feeder(config, move |i: Item| {
        let open = Arc::clone(&open);
        async move {
            if i.1 == 0 {
                open.acquire().await.unwrap().forget();
            }
            i
        }
    });
    assert_eq!(feeder.offer(('z', 0)), Offer::Queued); // 1
    sleep(ms(1)).await;
    assert_eq!(feeder.offer(('a', 1)), Offer::Queued); // 2
    let other = feeder.clone();
    let mut send = task::spawn(other.send(('a', 2))); // 3: waits for key a
    assert_pending!(send.poll());
    assert_eq!(feeder.offer(('a', 3)), Offer::Full(('a', 3))); // 4: key full
    assert_eq!(feeder.offer(('b', 1)), Offer::Queued); // 5
    // The queue is full (a1, b1): refused for want of a slot, not keyed.
    assert_eq!(feeder.offer(('c', 1)), Offer::Full(('c', 1)));
    assert_eq!(calls.load(SeqCst), 5);
    let mut sink = feeder.clone();
    let mut feed = task::spawn(async move {
        SinkExt::send(&mut sink, ('b', 2)).await.unwrap(); // 6: held for key b
        sink
    });
    assert_pending!(feed.poll());
    gate.add_permits(1);
    assert!(send.await.is_queued());
    let sink = feed.await;
    drop((sink, other, feeder));
    let (out, report) = shutdown.join_collect(results).await;
    assert_eq!(
        calls.swap(0, SeqCst),
        6,
        "push front: one call per item tried"
    );
    assert_eq!(out.len(), 5);
    assert_eq!(report.produced, 5);

    // Call front: a call waiting for its key is keyed once.
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
        .capacity(4)
        .per_key_capacity(1)
        .key_by(counted(&calls));
    let (caller, shutdown) = backpressure_pipeline::caller(config, |i: Item| async move {
        sleep(ms(10)).await;
        i
    });
    let answers =
        futures::future::join_all([('a', 1), ('a', 2), ('a', 3), ('b', 1)].map(|i| caller.call(i)))
            .await;
    assert!(answers.iter().all(Result::is_ok));
    drop(caller);
    let report = shutdown.join().await;
    assert_eq!(calls.load(SeqCst), 4, "call front");
    assert_eq!(report.processed, 4);
}

// ===== nothing alive after join =====

#[allow(dead_code)]
struct Owned(u32, Arc<()>);
impl PartialEq for Owned {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}
impl Eq for Owned {}
impl Hash for Owned {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

#[tokio::test(start_paused = true)]
async fn after_join_no_key_item_or_closure_is_alive_whatever_the_stop() {
    for stop in 0..4 {
        let witness = Arc::new(());
        let w = Arc::clone(&witness);
        let config = FanOutConfig::new(2, ShedPolicy::Backpressure)
            .capacity(4)
            .per_key_capacity(1)
            .drain_timeout(ms(20))
            .key_by(move |i: &(u32, Arc<()>)| Owned(i.0, Arc::clone(&w)));
        let hw = Arc::clone(&witness);
        let (feeder, results, shutdown) =
            backpressure_pipeline::feeder(config, move |i: (u32, Arc<()>)| {
                let _hw = Arc::clone(&hw);
                async move {
                    sleep(ms(100)).await;
                    i.0
                }
            });
        let mut spare = feeder.clone();
        let mut waiting = Vec::new();
        for n in 0..6u32 {
            let f = feeder.clone();
            let item = (n % 2, Arc::clone(&witness));
            let mut t = task::spawn(async move { f.send(item).await.is_queued() });
            match t.poll() {
                std::task::Poll::Ready(queued) => waiting.push(Err(queued)),
                std::task::Poll::Pending => waiting.push(Ok(t)),
            }
        }
        sleep(ms(1)).await;
        assert!(shutdown.stats().keys >= 2);
        let controller = shutdown.controller();
        match stop {
            0 => shutdown.shutdown(),
            1 => shutdown.abort(),
            2 => controller.shutdown(), // drain timeout cuts the handlers
            // No stop: the spare handle is closed as a sink but kept.
            _ => futures::SinkExt::close(&mut spare).await.unwrap(),
        }
        drop(feeder);
        let joined = tokio::spawn(shutdown.join_collect(results));
        let mut queued = 0;
        for t in waiting {
            let q = match t {
                Ok(t) => tokio::time::timeout(Duration::from_secs(3600), t)
                    .await
                    .unwrap_or_else(|_| panic!("stop {stop}: a send hung")),
                Err(q) => q,
            };
            if q {
                queued += 1;
            }
        }
        let (_, report) = tokio::time::timeout(Duration::from_secs(3600), joined)
            .await
            .unwrap_or_else(|_| panic!("stop {stop}: join hung"))
            .unwrap();
        assert!(report.is_conserved(), "{report}");
        assert_eq!(report.produced, queued);
        assert_eq!(controller.stats().keys, 0, "stop {stop}");
        assert_eq!(
            Arc::strong_count(&witness),
            1,
            "stop {stop}: a key, item or closure outlived join (spare feeder held)"
        );
        drop(spare);
    }
}

// ===== the key function runs outside every lock =====

/// The docs: "`key` is called once per item, outside every lock". A key
/// function that reads the pipeline's stats must not deadlock, on any front.
#[test]
fn a_key_function_that_reads_stats_does_not_deadlock() {
    static KEYFN_CONTROLLER: OnceLock<Controller> = OnceLock::new();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = FanOutConfig::new(1, ShedPolicy::Backpressure)
                .capacity(2)
                .per_key_capacity(1)
                .key_by(|n: &u32| {
                    if let Some(c) = KEYFN_CONTROLLER.get() {
                        let _ = c.stats();
                    }
                    *n % 2
                });
            let (feeder, results, shutdown) =
                backpressure_pipeline::feeder(config, |n: u32| async move { n });
            let _ = KEYFN_CONTROLLER.set(shutdown.controller());
            let sends = futures::future::join_all((0..6u32).map(|n| feeder.send(n)));
            let offers: Vec<_> = sends.await.into_iter().map(|o| o.is_queued()).collect();
            drop(feeder);
            let (mut out, report) = shutdown.join_collect(results).await;
            out.sort();
            done_tx.send((offers, out, report.processed)).unwrap();
        });
    });
    let (offers, out, processed) = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("deadlock: the key function ran under a lock");
    assert_eq!(offers, [true; 6]);
    assert_eq!((out, processed), (vec![0, 1, 2, 3, 4, 5], 6));
}

// ===== Stats::oldest_queued_age in a keyed pipeline =====

/// `Stats::oldest_queued_age`: "The queue stamps its items when something
/// needs the stamps: a `max_queue_age`, or the `metrics` feature;
/// otherwise this is `None`." A keyed pipeline with neither.
#[tokio::test(start_paused = true)]
async fn a_keyed_pipeline_without_max_queue_age_reports_no_queue_age() {
    let gate = Arc::new(Semaphore::new(0));
    let open = Arc::clone(&gate);
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest).key_by(|i: &Item| i.0);
    let (feeder, results, shutdown) = backpressure_pipeline::feeder(config, move |i: Item| {
        let open = Arc::clone(&open);
        async move {
            open.acquire().await.unwrap().forget();
            i
        }
    });
    assert_eq!(feeder.offer(('a', 1)), Offer::Queued);
    sleep(ms(1)).await;
    assert_eq!(feeder.offer(('b', 1)), Offer::Queued);
    sleep(ms(100)).await;
    let stats = shutdown.stats();
    let age = stats.oldest_queued_age;
    gate.add_permits(2);
    drop(feeder);
    let (_, report) = shutdown.join_collect(results).await;
    assert_eq!(report.processed, 2);
    assert_eq!(stats.queue_depth, 1);
    assert_eq!(
        age, None,
        "documented None without max_queue_age or metrics"
    );
}
