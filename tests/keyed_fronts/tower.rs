//! The `tower` feature's `Caller` service on a keyed pipeline: a service
//! call whose key is full waits in its key's line (the room `poll_ready`
//! held goes back). Included by `tests/tower.rs`, which needs the feature.

use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{Caller, FanOutConfig, Rejected, ShedPolicy, ShutdownHandle};
use tokio::sync::Semaphore;
use tokio::time::sleep;
use tokio_test::{assert_pending, task};
use tower::Service;

type Item = (char, u32);
type Log = Arc<Mutex<Vec<Item>>>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn rig(
    policy: ShedPolicy,
    capacity: usize,
    per_key: usize,
) -> (Caller<Item, Item>, ShutdownHandle, Log, Arc<Semaphore>) {
    let starts: Log = Arc::default();
    let gate = Arc::new(Semaphore::new(0));
    let (log, open) = (Arc::clone(&starts), Arc::clone(&gate));
    let config = FanOutConfig::new(1, policy)
        .capacity(capacity)
        .per_key_capacity(per_key)
        .key_by(|i: &Item| i.0);
    let (caller, shutdown) = backpressure_pipeline::caller(config, move |item: Item| {
        let (log, open) = (Arc::clone(&log), Arc::clone(&open));
        async move {
            log.lock().unwrap().push(item);
            if item.1 == 0 {
                open.acquire().await.unwrap().forget();
            }
            item
        }
    });
    (caller, shutdown, starts, gate)
}

/// `poll_ready` holds a queue slot; the request's key is full. The docs:
/// under `Backpressure` a keyed call "waits for room in its key first, in
/// that key's line"; the service's call is a `Call` like any other.
#[tokio::test(start_paused = true)]
async fn a_service_call_whose_key_is_full_waits_in_its_keys_line() {
    let (mut service, shutdown, starts, gate) = rig(ShedPolicy::Backpressure, 4, 1);
    let mut z = task::spawn(service.call(('z', 0)));
    assert_pending!(z.poll());
    sleep(ms(1)).await; // z0 in flight
    let mut a1 = task::spawn(service.call(('a', 1)));
    assert_pending!(a1.poll()); // queued: a is full now
    let mut a2 = task::spawn(service.call(('a', 2)));
    assert_pending!(a2.poll()); // in a's line
    poll_fn(|cx| Service::poll_ready(&mut service, cx))
        .await
        .unwrap();
    let mut a3 = task::spawn(Service::call(&mut service, ('a', 3)));
    let first = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| a3.poll()));
    let Ok(first) = first else {
        panic!("polling a tower call whose key is full panicked");
    };
    assert!(first.is_pending(), "it waits for a's room");
    gate.add_permits(1);
    assert_eq!(z.await.unwrap(), ('z', 0));
    assert_eq!(a1.await.unwrap(), ('a', 1));
    assert_eq!(a2.await.unwrap(), ('a', 2));
    assert_eq!(a3.await.unwrap(), ('a', 3));
    assert_eq!(
        *starts.lock().unwrap(),
        [('z', 0), ('a', 1), ('a', 2), ('a', 3)],
        "a3 began waiting after a2"
    );
    drop(service);
    let report = shutdown.join().await;
    assert_eq!(
        (report.produced, report.processed, report.delivered),
        (4, 4, 4)
    );
    assert!(report.is_conserved(), "{report}");
}

/// A fresh key under the shedding policies: `poll_ready` is always ready
/// and the keyed shedding applies as for `Caller::call`.
#[tokio::test(start_paused = true)]
async fn service_calls_on_a_keyed_drop_oldest_pipeline_supersede_within_the_key() {
    let (mut service, shutdown, _, gate) = rig(ShedPolicy::DropOldest, 4, 1);
    let mut z = task::spawn(service.call(('z', 0)));
    assert_pending!(z.poll());
    sleep(ms(1)).await;
    poll_fn(|cx| Service::poll_ready(&mut service, cx))
        .await
        .unwrap();
    let mut a1 = task::spawn(Service::call(&mut service, ('a', 1)));
    assert_pending!(a1.poll());
    poll_fn(|cx| Service::poll_ready(&mut service, cx))
        .await
        .unwrap();
    let mut a2 = task::spawn(Service::call(&mut service, ('a', 2)));
    assert_pending!(a2.poll());
    match a1.await {
        Err(Rejected::Evicted(('a', 1))) => {}
        other => panic!("{other:?}"),
    }
    gate.add_permits(1);
    assert_eq!(z.await.unwrap(), ('z', 0));
    assert_eq!(a2.await.unwrap(), ('a', 2));
    drop(service);
    let report = shutdown.join().await;
    assert_eq!(
        (report.produced, report.processed, report.dropped),
        (3, 2, 1)
    );
    assert!(report.is_conserved(), "{report}");
}

/// A service that held a slot (poll_ready) and is dropped before its call:
/// the slot goes back, keyed as unkeyed.
#[tokio::test(start_paused = true)]
async fn a_ready_service_dropped_unused_gives_its_slot_back_on_a_keyed_pipeline() {
    let (service, shutdown, _, gate) = rig(ShedPolicy::Backpressure, 1, 1);
    let mut z = task::spawn(service.call(('z', 0)));
    assert_pending!(z.poll());
    sleep(ms(1)).await;
    let mut ready = service.clone();
    poll_fn(|cx| Service::poll_ready(&mut ready, cx))
        .await
        .unwrap(); // the only slot
    let mut b1 = task::spawn(service.call(('b', 1)));
    assert_pending!(b1.poll(), "no slot: the service holds it");
    drop(ready);
    gate.add_permits(1);
    assert_eq!(z.await.unwrap(), ('z', 0));
    assert_eq!(b1.await.unwrap(), ('b', 1));
    drop(service);
    let report = shutdown.join().await;
    assert_eq!(
        (report.produced, report.processed, report.delivered),
        (2, 2, 2)
    );
    assert!(report.is_conserved(), "{report}");
}
