//! A bounded 2-thread stress of keyed `Backpressure` on the push
//! and call fronts: sends, offers and calls from several producers, drops
//! at random stages, settlement with few credits, and a stop of every kind.
//! Each round runs under a 5 s timeout to catch hangs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use backpressure_pipeline::{
    CancellationToken, FanOutConfig, Offer, Outcome, Rejected, Report, ShedPolicy, Stage,
};
use futures::StreamExt;

/// (key, producer, sequence number within the producer)
type Item = (u8, u8, u32);

const ROUNDS: u64 = 40;
const PRODUCERS: u8 = 4;
const PER_PRODUCER: u32 = 30;

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Polls `fut` at most `polls + 1` times (re-waking itself in between),
/// then drops it: a drop at whatever stage it had reached.
async fn with_patience<F: Future>(fut: F, polls: u32) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut n = 0;
    std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(v) => Poll::Ready(Some(v)),
        Poll::Pending if n >= polls => Poll::Ready(None),
        Poll::Pending => {
            n += 1;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stop {
    None,
    Shutdown,
    Abort,
    Parent,
    DrainTimeout,
}

fn stop_of(round: u64) -> Stop {
    [
        Stop::None,
        Stop::Shutdown,
        Stop::Abort,
        Stop::Parent,
        Stop::DrainTimeout,
    ][(round % 5) as usize]
}

/// For each (key, producer): the sequence numbers in `items` increase.
fn order(items: &[Item]) -> Result<(), String> {
    let mut last: HashMap<(u8, u8), u32> = HashMap::new();
    for &(k, p, s) in items {
        if let Some(prev) = last.insert((k, p), s) {
            if prev >= s {
                return Err(format!("key {k} producer {p}: {s} after {prev}"));
            }
        }
    }
    Ok(())
}

fn config(round: u64, parent: &CancellationToken, stop: Stop) -> FanOutConfig<Item> {
    let mut config = FanOutConfig::new(2, ShedPolicy::Backpressure)
        .capacity(2 + (round % 4) as usize)
        .key_by(|item: &Item| item.0)
        .per_key_capacity(1 + (round % 3) as usize)
        .settle_capacity(3 + (round % 5) as usize)
        .cancel_token(parent.clone());
    if stop == Stop::DrainTimeout {
        config = config.drain_timeout(Duration::from_millis(1));
    }
    config
}

fn handler(
    log: Arc<Mutex<Vec<Item>>>,
    alive: Arc<()>,
) -> impl Fn(Item) -> std::pin::Pin<Box<dyn Future<Output = Item> + Send>> + Send + Sync + 'static {
    move |item: Item| {
        let (log, alive) = (Arc::clone(&log), Arc::clone(&alive));
        Box::pin(async move {
            let _alive = alive;
            log.lock().unwrap().push(item);
            for _ in 0..(item.2 % 4) {
                tokio::task::yield_now().await;
            }
            if item.2 % 7 == 3 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            item
        })
    }
}

fn check_settled(round: u64, report: &Report, records: &[(Item, Outcome)]) {
    assert_eq!(
        records.len() as u64,
        report.produced,
        "round {round}: one record per item"
    );
    let count = |f: &dyn Fn(&Outcome) -> bool| records.iter().filter(|(_, o)| f(o)).count() as u64;
    assert_eq!(
        count(&|o| *o == Outcome::Processed),
        report.processed,
        "round {round}"
    );
    assert_eq!(
        count(&|o| matches!(o, Outcome::Cancelled(_))),
        report.cancelled,
        "round {round}"
    );
    assert_eq!(
        count(&|o| *o == Outcome::Cancelled(Stage::Withdrawn)),
        report.withdrawn,
        "round {round}"
    );
    let mut keys: Vec<Item> = records.iter().map(|(k, _)| *k).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), records.len(), "round {round}: a record twice");
}

async fn push_round(round: u64) {
    let stop = stop_of(round);
    let parent = CancellationToken::new();
    let (config, settlements) = config(round, &parent, stop).settle_by(|item: &Item| *item);
    let log: Arc<Mutex<Vec<Item>>> = Arc::default();
    let alive = Arc::new(());
    let (feeder, results, shutdown) =
        backpressure_pipeline::feeder(config, handler(Arc::clone(&log), Arc::clone(&alive)));
    let settler = tokio::spawn(async move {
        let mut settlements = settlements;
        let mut records = Vec::new();
        while let Some(record) = settlements.next().await {
            records.push((record.key, record.outcome));
            if records.len() % 5 == 0 {
                tokio::task::yield_now().await;
            }
        }
        records
    });
    let reader = tokio::spawn(results.collect::<Vec<_>>());
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let feeder = feeder.clone();
            tokio::spawn(async move {
                let mut rng = Rng::new(round * 100 + u64::from(p));
                let mut queued = Vec::new();
                let mut closed = false;
                for seq in 0..PER_PRODUCER {
                    let item = ((p + seq as u8 % 3) % 3, p, seq);
                    let answer = match rng.below(10) {
                        0..=5 => Some(feeder.send(item).await),
                        6 | 7 => with_patience(feeder.send(item), rng.below(5) as u32).await,
                        _ => Some(feeder.offer(item)),
                    };
                    match answer {
                        Some(Offer::Queued) => queued.push(item),
                        Some(Offer::Closed(back)) => {
                            assert_eq!(back, item);
                            closed = true;
                            break;
                        }
                        Some(Offer::Full(back)) => assert_eq!(back, item),
                        None => {}
                        Some(other) => panic!("round {round}: unexpected {other:?}"),
                    }
                }
                (queued, closed)
            })
        })
        .collect();
    drop(feeder);
    let controller = shutdown.controller();
    let stopper = tokio::spawn(async move {
        let mut rng = Rng::new(round + 7);
        for _ in 0..rng.below(40) {
            tokio::task::yield_now().await;
        }
        match stop {
            Stop::None => {}
            Stop::Shutdown | Stop::DrainTimeout => controller.shutdown(),
            Stop::Abort => controller.abort(),
            Stop::Parent => parent.cancel(),
        }
    });
    let report = shutdown.join().await;
    stopper.await.unwrap();
    let mut queued = Vec::new();
    for producer in producers {
        let (q, _closed) = producer.await.unwrap();
        queued.extend(q);
    }
    let out = reader.await.unwrap();
    let records = settler.await.unwrap();
    let starts = log.lock().unwrap().clone();
    assert!(report.is_conserved(), "round {round}: {report}");
    assert_eq!(
        report.produced,
        queued.len() as u64,
        "round {round}: produced == Queued answers"
    );
    assert_eq!(
        (
            report.dropped,
            report.failed,
            report.expired,
            report.timed_out
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(
        report.processed + report.cancelled,
        report.produced,
        "round {round}"
    );
    assert_eq!(out.len() as u64, report.delivered, "round {round}");
    if stop == Stop::None {
        assert_eq!(
            (report.processed, report.cancelled),
            (report.produced, 0),
            "round {round}"
        );
    }
    order(&starts).unwrap_or_else(|e| panic!("round {round} (push) start order: {e}"));
    order(&out).unwrap_or_else(|e| panic!("round {round} (push) result order: {e}"));
    for item in &starts {
        assert!(
            queued.contains(item),
            "round {round}: started {item:?}, never queued"
        );
    }
    check_settled(round, &report, &records);
    assert_eq!(
        Arc::strong_count(&alive),
        1,
        "round {round}: the handler outlived join"
    );
    if std::env::var_os("TRIAL5_VERBOSE").is_some() {
        eprintln!("push {round} {stop:?}: {report}");
    }
}

async fn call_round(round: u64) {
    let stop = stop_of(round + 2);
    let parent = CancellationToken::new();
    let (config, settlements) = config(round, &parent, stop).settle_by(|item: &Item| *item);
    let log: Arc<Mutex<Vec<Item>>> = Arc::default();
    let alive = Arc::new(());
    let (caller, shutdown) =
        backpressure_pipeline::caller(config, handler(Arc::clone(&log), Arc::clone(&alive)));
    let settler = tokio::spawn(async move {
        let mut settlements = settlements;
        let mut records = Vec::new();
        while let Some(record) = settlements.next().await {
            records.push((record.key, record.outcome));
        }
        records
    });
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let caller = caller.clone();
            tokio::spawn(async move {
                let mut rng = Rng::new(round * 100 + u64::from(p) + 50);
                let mut oks = Vec::new();
                let mut gave_up = 0u32;
                for seq in 0..PER_PRODUCER {
                    let item = ((p + seq as u8 % 3) % 3, p, seq);
                    let answer = match rng.below(10) {
                        0..=5 => Some(caller.call(item).await),
                        6 | 7 => with_patience(caller.call(item), rng.below(8) as u32).await,
                        _ => tokio::time::timeout(Duration::from_millis(1), caller.call(item))
                            .await
                            .ok(),
                    };
                    match answer {
                        Some(Ok(resp)) => {
                            assert_eq!(resp, item);
                            oks.push(item);
                        }
                        Some(Err(Rejected::Closed(back))) => {
                            assert_eq!(back, item);
                            break;
                        }
                        Some(Err(Rejected::Aborted)) => {}
                        None => gave_up += 1,
                        Some(Err(other)) => panic!("round {round}: unexpected {other:?}"),
                    }
                }
                (oks, gave_up)
            })
        })
        .collect();
    drop(caller);
    let controller = shutdown.controller();
    let stopper = tokio::spawn(async move {
        let mut rng = Rng::new(round + 11);
        for _ in 0..rng.below(60) {
            tokio::task::yield_now().await;
        }
        match stop {
            Stop::None => {}
            Stop::Shutdown | Stop::DrainTimeout => controller.shutdown(),
            Stop::Abort => controller.abort(),
            Stop::Parent => parent.cancel(),
        }
    });
    let (mut oks, mut gave_up) = (Vec::new(), 0u64);
    for producer in producers {
        let (o, g) = producer.await.unwrap();
        oks.extend(o);
        gave_up += u64::from(g);
    }
    stopper.await.unwrap();
    let report = shutdown.join().await;
    let records = settler.await.unwrap();
    let starts = log.lock().unwrap().clone();
    assert!(report.is_conserved(), "round {round}: {report}");
    // A call that gave up (a timeout dropped it) after its answer was
    // stored counts `delivered` and is dropped with it (`Call`'s cancel
    // safety, "Answered"): between the Ok answers and those plus the
    // calls that gave up.
    let delivered = report.delivered;
    let answered = oks.len() as u64;
    assert!(
        (answered..=answered + gave_up).contains(&delivered),
        "round {round}: delivered {delivered}, Ok answers {answered}, gave up {gave_up}"
    );
    assert_eq!(
        (
            report.dropped,
            report.failed,
            report.expired,
            report.timed_out
        ),
        (0, 0, 0, 0)
    );
    assert_eq!(
        report.processed + report.cancelled,
        report.produced,
        "round {round}"
    );
    order(&starts).unwrap_or_else(|e| panic!("round {round} (call) start order: {e}"));
    order(&oks).unwrap_or_else(|e| panic!("round {round} (call) answer order: {e}"));
    check_settled(round, &report, &records);
    assert_eq!(
        Arc::strong_count(&alive),
        1,
        "round {round}: the handler outlived join"
    );
    if std::env::var_os("TRIAL5_VERBOSE").is_some() {
        eprintln!("call {round} {stop:?}: {report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_backpressure_sends_calls_drops_and_stops_under_two_threads() {
    for round in 0..ROUNDS {
        tokio::time::timeout(Duration::from_secs(5), push_round(round))
            .await
            .unwrap_or_else(|_| panic!("push round {round} ({:?}) hung", stop_of(round)));
        tokio::time::timeout(Duration::from_secs(5), call_round(round))
            .await
            .unwrap_or_else(|_| panic!("call round {round} ({:?}) hung", stop_of(round + 2)));
    }
}
