//! What the keyed-front tests share: items `(key, n)` keyed by `key`,
//! whose handler logs each start and, for `n == 0`, waits for a permit of
//! a gate (so an item can be held in flight), on the push front (`Rig`)
//! or the call front (`CallRig`).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{
    BoundedFanOut, Call, Caller, FanOutConfig, Feeder, Offer, Report, ShedPolicy, ShutdownHandle,
};
use tokio::sync::Semaphore;
use tokio::time::sleep;
use tokio_test::task::{self, Spawn};

pub type Item = (char, u32);
pub type Log = Arc<Mutex<Vec<Item>>>;

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// The `n`s of `key`'s items in `log`, in order.
pub fn of(log: &[Item], key: char) -> Vec<u32> {
    log.iter().filter(|i| i.0 == key).map(|i| i.1).collect()
}

/// Keyed `Backpressure`: `workers`, a queue of `capacity`, `per_key`
/// queued items per key.
pub fn config(workers: usize, capacity: usize, per_key: usize) -> FanOutConfig<Item> {
    FanOutConfig::new(workers, ShedPolicy::Backpressure)
        .capacity(capacity)
        .key_by(|item: &Item| item.0)
        .per_key_capacity(per_key)
}

/// The handler: logs the start; items numbered 0 wait for a permit of
/// `gate`, every other item returns at once.
fn gated(
    log: &Log,
    gate: &Arc<Semaphore>,
) -> impl Fn(Item) -> std::pin::Pin<Box<dyn Future<Output = Item> + Send>> + Send + Sync + 'static {
    let (log, gate) = (Arc::clone(log), Arc::clone(gate));
    move |item: Item| {
        let (log, gate) = (Arc::clone(&log), Arc::clone(&gate));
        Box::pin(async move {
            log.lock().unwrap().push(item);
            if item.1 == 0 {
                gate.acquire().await.unwrap().forget();
            }
            item
        })
    }
}

/// A push pipeline with [`gated`] handlers.
pub struct Rig {
    pub feeder: Feeder<Item>,
    pub results: BoundedFanOut<Item>,
    pub shutdown: ShutdownHandle,
    pub starts: Log,
    pub gate: Arc<Semaphore>,
}

pub fn launch(config: FanOutConfig<Item>) -> Rig {
    let (starts, gate): (Log, _) = (Arc::default(), Arc::new(Semaphore::new(0)));
    let (feeder, results, shutdown) = backpressure_pipeline::feeder(config, gated(&starts, &gate));
    Rig {
        feeder,
        results,
        shutdown,
        starts,
        gate,
    }
}

/// A send on its own clone of the feeder (a separate producer).
pub fn send_on(
    feeder: &Feeder<Item>,
    item: Item,
) -> Spawn<impl Future<Output = Offer<Item>> + use<>> {
    let feeder = feeder.clone();
    task::spawn(async move { feeder.send(item).await })
}

/// Polls the pending sends youngest first, letting the pipeline run 1 ms
/// between rounds (at most 200), and returns the ids in the order they
/// were queued; every one must have been.
pub async fn drive_youngest_first<F: Future<Output = Offer<Item>>>(
    mut waiters: Vec<(u32, Spawn<F>)>,
) -> Vec<u32> {
    let mut entered = Vec::new();
    for _ in 0..200 {
        if waiters.is_empty() {
            break;
        }
        let mut i = waiters.len();
        while i > 0 {
            i -= 1;
            if let std::task::Poll::Ready(offer) = waiters[i].1.poll() {
                assert_eq!(offer, Offer::Queued, "waiter {}", waiters[i].0);
                entered.push(waiters.remove(i).0);
                // Youngest first again: start over from the back.
                i = waiters.len();
            }
        }
        sleep(ms(1)).await;
    }
    assert!(
        waiters.is_empty(),
        "waiters left: {:?}",
        waiters.iter().map(|w| w.0).collect::<Vec<_>>()
    );
    entered
}

/// Drops the feeder, joins, and returns the starts, the results and the
/// report.
pub async fn finish(rig: Rig) -> (Vec<Item>, Vec<Item>, Report) {
    let (starts, out, report, ()) = finish_beside(rig, async {}).await;
    (starts, out, report)
}

/// [`finish`], with `beside` (a reader that must run while the pipeline
/// drains, such as the settlements') run alongside the join: what it gives
/// comes last.
pub async fn finish_beside<X>(
    rig: Rig,
    beside: impl Future<Output = X>,
) -> (Vec<Item>, Vec<Item>, Report, X) {
    let Rig {
        feeder,
        results,
        shutdown,
        starts,
        ..
    } = rig;
    drop(feeder);
    let ((out, report), also) = tokio::time::timeout(Duration::from_secs(3600), async {
        tokio::join!(shutdown.join_collect(results), beside)
    })
    .await
    .expect("join hung");
    let starts = starts.lock().unwrap().clone();
    (starts, out, report, also)
}

/// A push pipeline's books, `(produced, processed, dropped)`, once both
/// laws are checked.
pub fn push_books(report: &Report) -> (u64, u64, u64) {
    assert!(report.is_conserved(), "{report}");
    (report.produced, report.processed, report.dropped)
}

/// A call pipeline's books, `(produced, processed, cancelled, withdrawn)`,
/// once both laws are checked.
pub fn call_books(report: &Report) -> (u64, u64, u64, u64) {
    assert!(report.is_conserved(), "{report}");
    (
        report.produced,
        report.processed,
        report.cancelled,
        report.withdrawn,
    )
}

/// A call pipeline with [`gated`] handlers.
pub struct CallRig {
    pub caller: Caller<Item, Item>,
    pub shutdown: ShutdownHandle,
    pub starts: Log,
    pub gate: Arc<Semaphore>,
}

pub fn launch_calls(config: FanOutConfig<Item>) -> CallRig {
    let (starts, gate): (Log, _) = (Arc::default(), Arc::new(Semaphore::new(0)));
    let (caller, shutdown) = backpressure_pipeline::caller(config, gated(&starts, &gate));
    CallRig {
        caller,
        shutdown,
        starts,
        gate,
    }
}

pub fn call(rig: &CallRig, item: Item) -> Spawn<Call<Item, Item>> {
    task::spawn(rig.caller.call(item))
}

/// Drops the caller, joins, and returns the starts and the report.
pub async fn finish_calls(rig: CallRig) -> (Vec<Item>, Report) {
    let CallRig {
        caller,
        shutdown,
        starts,
        ..
    } = rig;
    drop(caller);
    let report = tokio::time::timeout(Duration::from_secs(3600), shutdown.join())
        .await
        .expect("join hung");
    let starts = starts.lock().unwrap().clone();
    (starts, report)
}
