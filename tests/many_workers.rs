//! Many workers contending on 2 threads: 64 workers on one-slot queues and
//! outputs, under every policy and output order, with aborts, graceful
//! shutdowns, a tiny maximum queue age, a ready input or a producer task
//! behind a small channel, and the push front fed by 4 producers. Every
//! item is handled or shed at most once, every result is delivered once,
//! and the report agrees with what the test saw.
//!
//! Bounded rounds, every wait under a timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, Offer, ShedPolicy};
use futures::{StreamExt, stream};
use tokio::time::timeout;

mod common;
use common::POLICIES;

#[derive(Clone, Copy, Debug)]
struct Round {
    policy: ShedPolicy,
    workers: usize,
    capacity: usize,
    output: usize,
    ordered: bool,
    latest: bool,
    max_age: Option<Duration>,
    /// Abort after this many results.
    abort_after: Option<usize>,
    /// Graceful shutdown after this many results.
    shutdown_after: Option<usize>,
    /// Fed by a producer task through a small channel (the intake parks on
    /// its input, holding its reservation), instead of a ready iterator.
    channel: bool,
}

/// One round over a ready input of `ids` items on the current (2-thread)
/// runtime; checks both laws, unique results, handled ⊆ pulled, shed and
/// handled disjoint.
async fn stress_round(round: Round, ids: u32) {
    let handled: Arc<Vec<AtomicU64>> = Arc::new((0..ids).map(|_| AtomicU64::new(0)).collect());
    let shed: Arc<Vec<AtomicU64>> = Arc::new((0..ids).map(|_| AtomicU64::new(0)).collect());
    let sh = Arc::clone(&shed);
    let mut config = FanOutConfig::new(round.workers, round.policy)
        .capacity(round.capacity)
        .output_capacity(round.output)
        .result_order(common::order(round.ordered, round.latest))
        .on_shed(move |x: u32| {
            sh[x as usize].fetch_add(1, SeqCst);
        });
    if let Some(age) = round.max_age {
        config = config.max_queue_age(age);
    }
    let h = Arc::clone(&handled);
    let (tx, rx) = async_channel::bounded(8);
    let producer = tokio::spawn(async move {
        if round.channel {
            for id in 0..ids {
                if tx.send(id).await.is_err() {
                    break;
                }
                if id % 3 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    let input: std::pin::Pin<Box<dyn futures::Stream<Item = u32> + Send>> = if round.channel {
        Box::pin(rx)
    } else {
        Box::pin(stream::iter(0..ids))
    };
    let (mut results, handle) = input.bounded_fan_out_with(config, move |x| {
        h[x as usize].fetch_add(1, SeqCst);
        async move {
            for _ in 0..x % 3 {
                tokio::task::yield_now().await;
            }
            x
        }
    });
    let run = async {
        let mut out = Vec::new();
        while let Some(x) = results.next().await {
            out.push(x);
            if round.abort_after == Some(out.len()) {
                handle.abort();
            }
            if round.shutdown_after == Some(out.len()) {
                handle.shutdown();
            }
        }
        (out, handle.join().await)
    };
    let (out, report) = match timeout(Duration::from_secs(20), run).await {
        Ok(done) => done,
        Err(_) => panic!("round hung: {round:?}"),
    };
    timeout(Duration::from_secs(20), producer)
        .await
        .expect("producer hung")
        .expect("producer panicked");
    assert!(report.is_conserved(), "{round:?}: {report}");
    assert_eq!(report.delivered, out.len() as u64, "{round:?}: {report}");
    if round.ordered {
        assert!(
            out.windows(2).all(|w| w[0] < w[1]),
            "{round:?}: out of order"
        );
    }
    let mut unique = out.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), out.len(), "{round:?}: a result twice");
    let mut handled_n = 0;
    for id in 0..ids as usize {
        let (h, s) = (handled[id].load(SeqCst), shed[id].load(SeqCst));
        assert!(h + s <= 1, "{round:?}: id {id} handled {h}, shed {s}");
        handled_n += h;
    }
    for x in &out {
        assert_eq!(handled[*x as usize].load(SeqCst), 1, "{round:?}: {x}");
    }
    assert_eq!(
        report.dropped,
        shed.iter().map(|s| s.load(SeqCst)).sum::<u64>()
    );
    assert_eq!(
        handled_n,
        report.processed + report.failed + report.timed_out + (report.aborted as u64),
        "{round:?}: {report}"
    );
    if round.abort_after.is_none() {
        // The default drain timeout (5 s) leaves time for everything.
        assert_eq!((report.cancelled, report.aborted), (0, 0), "{round:?}");
        if round.policy == ShedPolicy::Backpressure {
            assert_eq!(report.dropped, 0, "{round:?}");
        }
        if !round.latest {
            assert_eq!(report.discarded, 0, "{round:?}: {report}");
        }
    }
    if round.abort_after.is_none() && round.shutdown_after.is_none() {
        assert_eq!(report.produced, u64::from(ids), "{round:?}: {report}");
        assert_eq!((report.cancelled, report.aborted), (0, 0), "{round:?}");
        if round.policy == ShedPolicy::Backpressure {
            assert_eq!(report.dropped, 0, "{round:?}");
        }
        if !round.latest {
            assert_eq!(report.discarded, 0, "{round:?}: {report}");
        }
    }
}

// ===== a ready input or a producer task =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_64_workers_one_slot_queue_and_output_every_policy() {
    for (i, policy) in POLICIES.into_iter().cycle().take(9).enumerate() {
        let round = Round {
            policy,
            workers: 64,
            capacity: [1, 2, 3][i / 3],
            output: 1,
            ordered: false,
            latest: false,
            max_age: None,
            abort_after: None,
            shutdown_after: None,
            channel: i % 2 == 1,
        };
        stress_round(round, 20_000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_ordered_and_latest_only_with_many_workers() {
    for i in 0..8 {
        let policy = [ShedPolicy::Backpressure, ShedPolicy::DropOldest][i % 2];
        let round = Round {
            policy,
            workers: [64, 3][i / 2 % 2],
            capacity: [1, 5][i / 4],
            output: 1,
            ordered: i % 4 < 2,
            latest: i % 4 >= 2,
            max_age: None,
            abort_after: None,
            shutdown_after: None,
            channel: i % 3 == 0,
        };
        stress_round(round, 10_000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_a_tiny_maximum_queue_age_with_every_policy() {
    for i in 0..6 {
        let policy = POLICIES[i % 3];
        let round = Round {
            policy,
            workers: [64, 1][i / 3],
            capacity: 4,
            output: 2,
            ordered: i == 1,
            latest: false,
            max_age: Some(Duration::from_micros(20)),
            abort_after: None,
            shutdown_after: None,
            channel: i % 2 == 0,
        };
        stress_round(round, 10_000).await;
    }
}

// ===== stopped part way =====

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_aborts_with_64_workers_in_every_output_mode() {
    for i in 0..24 {
        let policy = POLICIES[i % 3];
        let round = Round {
            policy,
            workers: [64, 2][i % 2],
            capacity: 1 + i % 4,
            output: 1,
            ordered: i % 4 == 1,
            latest: i % 4 == 2,
            max_age: None,
            abort_after: Some(1 + 37 * i % 200),
            shutdown_after: None,
            channel: i % 5 < 2,
        };
        stress_round(round, 5_000).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stress_graceful_shutdowns_with_64_workers_lose_nothing() {
    for i in 0..18 {
        let policy = POLICIES[i % 3];
        let round = Round {
            policy,
            workers: [64, 4][i / 3 % 2],
            capacity: [1, 2, 9][i / 6],
            output: 1,
            ordered: i % 4 == 1,
            latest: i % 4 == 2,
            max_age: None,
            abort_after: None,
            shutdown_after: Some(1 + 53 * i % 300),
            channel: i % 2 == 0,
        };
        stress_round(round, 5_000).await;
    }
}

// ===== the push front =====

/// Push front, 64 workers, capacity 1, every policy, 4 producer tasks of
/// 2,000 items each on 2 threads: every offered item is queued or handed
/// back exactly once, the handed-back ones are never handled, and the report
/// agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_front_with_64_workers_counts_every_offer_once() {
    for policy in POLICIES {
        const PER: u64 = 2_000;
        let handled: Arc<Vec<AtomicU64>> =
            Arc::new((0..4 * PER).map(|_| AtomicU64::new(0)).collect());
        let h = Arc::clone(&handled);
        let config = FanOutConfig::new(64, policy).capacity(1).output_capacity(1);
        let (feeder, mut results, handle) = backpressure_pipeline::feeder(config, move |x: u64| {
            h[x as usize].fetch_add(1, SeqCst);
            async move {
                if x % 3 == 0 {
                    tokio::task::yield_now().await;
                }
                x
            }
        });
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let feeder = feeder.clone();
                tokio::spawn(async move {
                    let mut back = Vec::new();
                    for i in 0..PER {
                        let id = p * PER + i;
                        let offer = if i % 2 == 0 {
                            feeder.send(id).await
                        } else {
                            feeder.offer(id)
                        };
                        match offer {
                            Offer::Queued => {}
                            Offer::Full(x) => {
                                // Not accepted: offer it again, waiting.
                                match feeder.send(x).await {
                                    Offer::Queued => {}
                                    other => panic!("{other:?}"),
                                }
                            }
                            other => back.push(other.into_item().unwrap()),
                        }
                    }
                    back
                })
            })
            .collect();
        drop(feeder);
        let run = async {
            let mut out = Vec::new();
            while let Some(x) = results.next().await {
                out.push(x);
            }
            let mut back = Vec::new();
            for p in producers {
                back.extend(p.await.unwrap());
            }
            (out, back, handle.join().await)
        };
        let (mut out, back, report) = timeout(Duration::from_secs(30), run)
            .await
            .expect("push front hung");
        assert!(report.is_conserved(), "{policy}: {report}");
        assert_eq!(report.produced, 4 * PER, "{policy}: {report}");
        assert_eq!(report.dropped, back.len() as u64, "{policy}");
        assert_eq!(report.processed, out.len() as u64, "{policy}");
        if policy == ShedPolicy::Backpressure {
            assert!(back.is_empty());
        }
        out.sort_unstable();
        assert!(
            out.windows(2).all(|w| w[0] < w[1]),
            "{policy}: a result twice"
        );
        for x in &back {
            assert_eq!(
                handled[*x as usize].load(SeqCst),
                0,
                "{policy}: {x} handed back and handled"
            );
        }
        for x in &out {
            assert_eq!(handled[*x as usize].load(SeqCst), 1, "{policy}: {x}");
        }
        assert_eq!(out.len() + back.len(), (4 * PER) as usize, "{policy}");
    }
}
