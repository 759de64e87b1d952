//! A bounded 2-thread stress of keyed `Backpressure`: many producers
//! on few keys, per-key capacity 2, on every front.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, Offer, Report, ShedPolicy};
use futures::stream::FuturesOrdered;
use futures::{SinkExt, StreamExt};

/// (key, producer, sequence number within the producer)
type Item = (char, u32, u32);

const KEYS: [char; 3] = ['a', 'b', 'c'];
const ROUNDS: usize = 40;
const PRODUCERS: u32 = 6;
const PER_PRODUCER: u32 = 40;

fn item(p: u32, seq: u32) -> Item {
    (KEYS[((seq * 7 + p) % 3) as usize], p, seq)
}

struct Probe {
    in_flight: HashMap<char, AtomicUsize>,
    overlap: AtomicBool,
    starts: Mutex<Vec<Item>>,
}

impl Probe {
    fn new() -> Arc<Self> {
        Arc::new(Probe {
            in_flight: KEYS.iter().map(|k| (*k, AtomicUsize::new(0))).collect(),
            overlap: AtomicBool::new(false),
            starts: Mutex::new(Vec::new()),
        })
    }

    fn handler(
        self: &Arc<Self>,
    ) -> impl Fn(Item) -> futures::future::BoxFuture<'static, Item> + Send + Sync + 'static {
        let probe = Arc::clone(self);
        move |item: Item| {
            let probe = Arc::clone(&probe);
            Box::pin(async move {
                if probe.in_flight[&item.0].fetch_add(1, SeqCst) != 0 {
                    probe.overlap.store(true, SeqCst);
                }
                probe.starts.lock().unwrap().push(item);
                tokio::task::yield_now().await;
                if item.2 % 5 == 0 {
                    tokio::time::sleep(Duration::from_micros(50)).await;
                }
                probe.in_flight[&item.0].fetch_sub(1, SeqCst);
                item
            })
        }
    }
}

/// For each (key, producer): the sequence numbers in `items` are
/// increasing. Returns the first violation.
fn per_key_per_producer_order(items: &[Item]) -> Result<(), String> {
    let mut last: HashMap<(char, u32), u32> = HashMap::new();
    for &(k, p, s) in items {
        if let Some(prev) = last.insert((k, p), s) {
            if prev >= s {
                return Err(format!("key {k} producer {p}: {prev} then {s}"));
            }
        }
    }
    Ok(())
}

fn config() -> FanOutConfig<Item> {
    FanOutConfig::new(2, ShedPolicy::Backpressure)
        .capacity(4)
        .key_by(|item: &Item| item.0)
        .per_key_capacity(2)
}

fn check(round: usize, probe: &Probe, out: &[Item], report: &Report, expected: u64) {
    assert!(report.is_conserved(), "round {round}: {report}");
    assert_eq!(
        (
            report.produced,
            report.processed,
            report.delivered,
            report.dropped
        ),
        (expected, expected, expected, 0),
        "round {round}"
    );
    assert_eq!(out.len() as u64, expected, "round {round}");
    assert!(
        !probe.overlap.load(SeqCst),
        "round {round}: two items of a key ran at once"
    );
    per_key_per_producer_order(out).unwrap_or_else(|e| panic!("round {round}: results {e}"));
    let starts = probe.starts.lock().unwrap().clone();
    per_key_per_producer_order(&starts).unwrap_or_else(|e| panic!("round {round}: starts {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_front_send_sink_and_offer_producers_keep_each_keys_order() {
    for round in 0..ROUNDS {
        let probe = Probe::new();
        let (feeder, results, shutdown) = backpressure_pipeline::feeder(config(), probe.handler());
        let mut producers = Vec::new();
        for p in 0..PRODUCERS {
            let feeder = feeder.clone();
            producers.push(tokio::spawn(async move {
                let items = (0..PER_PRODUCER).map(move |s| item(p, s));
                match p % 3 {
                    0 => {
                        for it in items {
                            assert_eq!(feeder.send(it).await, Offer::Queued);
                        }
                    }
                    1 => {
                        let mut sink = feeder;
                        let mut input = futures::stream::iter(items).map(Ok);
                        sink.send_all(&mut input).await.expect("send_all");
                        SinkExt::close(&mut sink).await.expect("close");
                    }
                    _ => {
                        for it in items {
                            let mut it = it;
                            loop {
                                match feeder.offer(it) {
                                    Offer::Queued => break,
                                    Offer::Full(back) => {
                                        it = back;
                                        tokio::task::yield_now().await;
                                    }
                                    other => panic!("{other:?}"),
                                }
                            }
                        }
                    }
                }
            }));
        }
        drop(feeder);
        let joined = tokio::time::timeout(Duration::from_secs(10), async {
            let (out, report) = shutdown.join_collect(results).await;
            for producer in producers {
                producer.await.unwrap();
            }
            (out, report)
        })
        .await;
        let (out, report) = joined.unwrap_or_else(|_| panic!("round {round}: hung"));
        check(
            round,
            &probe,
            &out,
            &report,
            u64::from(PRODUCERS * PER_PRODUCER),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_front_windows_of_calls_keep_each_keys_order() {
    for round in 0..ROUNDS {
        let probe = Probe::new();
        let (caller, shutdown) = backpressure_pipeline::caller(config(), probe.handler());
        let answered = Arc::new(Mutex::new(Vec::new()));
        let mut producers = Vec::new();
        for p in 0..PRODUCERS {
            let caller = caller.clone();
            let answered = Arc::clone(&answered);
            producers.push(tokio::spawn(async move {
                // Up to 3 calls outstanding, offered in order.
                let mut window = FuturesOrdered::new();
                for s in 0..PER_PRODUCER {
                    window.push_back(caller.call(item(p, s)));
                    if window.len() == 3 {
                        let got = window.next().await.unwrap().expect("answered");
                        answered.lock().unwrap().push(got);
                    }
                }
                while let Some(got) = window.next().await {
                    answered.lock().unwrap().push(got.expect("answered"));
                }
            }));
        }
        drop(caller);
        let joined = tokio::time::timeout(Duration::from_secs(10), async {
            for producer in producers {
                producer.await.unwrap();
            }
            shutdown.join().await
        })
        .await;
        let report = joined.unwrap_or_else(|_| panic!("round {round}: hung"));
        let expected = u64::from(PRODUCERS * PER_PRODUCER);
        let starts = probe.starts.lock().unwrap().clone();
        check(round, &probe, &starts, &report, expected);
        assert_eq!(answered.lock().unwrap().len() as u64, expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_fronts_keep_order_and_stops_mid_wait_do_not_hang() {
    for round in 0..ROUNDS {
        let probe = Probe::new();
        let input = futures::stream::iter(0..PRODUCERS * PER_PRODUCER)
            .map(|i| item(i % PRODUCERS, i / PRODUCERS));
        let (results, shutdown) = input.bounded_fan_out_with(config(), probe.handler());
        let stop = round % 4;
        let controller = shutdown.controller();
        if stop != 0 {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(200 * stop as u64)).await;
                if stop == 3 {
                    controller.abort();
                } else {
                    controller.shutdown();
                }
            });
        }
        let (out, report) =
            tokio::time::timeout(Duration::from_secs(10), shutdown.join_collect(results))
                .await
                .unwrap_or_else(|_| panic!("round {round}: hung"));
        assert!(report.is_conserved(), "round {round}: {report}");
        assert_eq!(out.len() as u64, report.delivered);
        if stop != 3 {
            // (an abort discards unread results: `processed == delivered + discarded`)
            assert_eq!(
                report.delivered, report.processed,
                "round {round}: {report}"
            );
        }
        assert_eq!(report.dropped, 0);
        if stop == 0 {
            assert_eq!(report.processed, u64::from(PRODUCERS * PER_PRODUCER));
        }
        assert!(!probe.overlap.load(SeqCst), "round {round}");
        per_key_per_producer_order(&out).unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}

/// Producers that give up (a timeout around `send`) and stops mid-round:
/// no hang, exact books, order of what got in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impatient_senders_and_stops_mid_round_do_not_hang_and_keep_the_books() {
    for round in 0..ROUNDS {
        let probe = Probe::new();
        let (feeder, results, shutdown) = backpressure_pipeline::feeder(config(), probe.handler());
        let queued = Arc::new(AtomicUsize::new(0));
        let mut producers = Vec::new();
        for p in 0..PRODUCERS {
            let feeder = feeder.clone();
            let queued = Arc::clone(&queued);
            producers.push(tokio::spawn(async move {
                for s in 0..PER_PRODUCER {
                    let patience = Duration::from_micros(20 + u64::from((s * 13 + p) % 40));
                    match tokio::time::timeout(patience, feeder.send(item(p, s))).await {
                        Ok(Offer::Queued) => {
                            queued.fetch_add(1, SeqCst);
                        }
                        Ok(Offer::Closed(_)) => break,
                        Ok(other) => panic!("{other:?}"),
                        Err(_) => {} // gave up
                    }
                }
            }));
        }
        drop(feeder);
        if round % 2 == 1 {
            let controller = shutdown.controller();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(300)).await;
                controller.shutdown();
            });
        }
        let joined = tokio::time::timeout(Duration::from_secs(10), async {
            let (out, report) = shutdown.join_collect(results).await;
            for producer in producers {
                producer.await.unwrap();
            }
            (out, report)
        })
        .await;
        let (out, report) = joined.unwrap_or_else(|_| panic!("round {round}: hung"));
        assert!(report.is_conserved(), "round {round}: {report}");
        assert_eq!(report.produced, queued.load(SeqCst) as u64, "round {round}");
        assert_eq!(
            (report.processed, report.delivered, report.dropped),
            (report.produced, report.produced, 0),
            "round {round}: {report}"
        );
        assert_eq!(out.len() as u64, report.produced);
        assert!(!probe.overlap.load(SeqCst), "round {round}");
        per_key_per_producer_order(&out).unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}
