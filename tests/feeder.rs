//! The push front: offers answer at once and hand items back by value,
//! every offered item is in the report exactly once, and intake ends when
//! the last producer is gone.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, IntakeEnd, Offer, Report, ShedPolicy, feeder};
use common::{GUARD, alive_tasks, assert_tasks_back_to, drain, ms, within};
use futures::StreamExt;
use tokio::time::{Instant, sleep, timeout};

/// (produced, processed, dropped, cancelled, delivered)
fn books(r: &Report) -> (u64, u64, u64, u64, u64) {
    (r.produced, r.processed, r.dropped, r.cancelled, r.delivered)
}

async fn slow(x: u32) -> u32 {
    sleep(ms(10)).await;
    x
}

#[tokio::test(start_paused = true)]
async fn drop_newest_hands_the_offered_item_back_when_full() {
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(2);
    let (feeder, results, handle) = feeder(config, slow);
    // No task has run yet: the queue takes 2, then sheds the arrivals.
    let answers: Vec<_> = (0..5).map(|x| feeder.offer(x)).collect();
    assert_eq!(
        answers,
        [
            Offer::Queued,
            Offer::Queued,
            Offer::Shed(2),
            Offer::Shed(3),
            Offer::Shed(4)
        ]
    );
    // The worker takes item 0; room for one more.
    sleep(ms(1)).await;
    assert_eq!(feeder.offer(5), Offer::Queued);
    drop(feeder);
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());
    assert_eq!(out, [0, 1, 5]);
    assert_eq!(books(&report), (6, 3, 3, 0, 3));
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert!(report.is_conserved(), "{report}");
}

#[tokio::test(start_paused = true)]
async fn drop_oldest_queues_the_offer_and_hands_the_evicted_item_back() {
    let config = FanOutConfig::new(1, ShedPolicy::DropOldest).capacity(2);
    let (feeder, results, handle) = feeder(config, slow);
    let answers: Vec<_> = (0..5).map(|x| feeder.offer(x)).collect();
    assert_eq!(
        answers,
        [
            Offer::Queued,
            Offer::Queued,
            Offer::Evicted(0),
            Offer::Evicted(1),
            Offer::Evicted(2)
        ]
    );
    assert!(
        answers[2].is_queued(),
        "an eviction queued the offered item"
    );
    drop(feeder);
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());
    assert_eq!(out, [3, 4], "the freshest two");
    assert_eq!(books(&report), (5, 2, 3, 0, 2));
}

#[tokio::test(start_paused = true)]
async fn backpressure_offer_says_full_and_send_waits_for_room() {
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
    let (feeder, results, handle) = feeder(config, slow);
    assert_eq!(feeder.offer(0), Offer::Queued);
    assert_eq!(feeder.offer(1), Offer::Full(1), "never shed, never wait");
    let start = Instant::now();
    // The worker takes 0 at once: room for 1. Then 2 waits until the worker
    // takes 1, at t = 10 ms.
    assert_eq!(feeder.send(1).await, Offer::Queued);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(feeder.send(2).await, Offer::Queued);
    assert_eq!(start.elapsed(), ms(10));
    drop(feeder);
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());
    assert_eq!(out, [0, 1, 2]);
    // The refused `Full(1)` offer was never accepted: not counted.
    assert_eq!(books(&report), (3, 3, 0, 0, 3));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_send_loses_only_its_own_item_uncounted() {
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
    let (feeder, results, handle) = feeder(config, slow);
    assert_eq!(feeder.send(0).await, Offer::Queued);
    assert_eq!(feeder.send(1).await, Offer::Queued);
    // Full now, for 10 ms: a 5 ms timeout cancels the wait.
    assert!(timeout(ms(5), feeder.send(2)).await.is_err());
    assert_eq!(feeder.send(3).await, Offer::Queued);
    drop(feeder);
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());
    assert_eq!(out, [0, 1, 3]);
    assert_eq!(books(&report), (3, 3, 0, 0, 3));
}

#[tokio::test(start_paused = true)]
async fn offers_after_a_shutdown_or_abort_come_back_closed_and_uncounted() {
    for abort in [false, true] {
        let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(4);
        let (feeder, results, handle) = feeder(config, slow);
        let other = feeder.clone();
        for x in 0..3 {
            assert!(feeder.offer(x).is_queued());
        }
        sleep(ms(1)).await;
        if abort {
            handle.abort();
        } else {
            handle.shutdown();
        }
        assert!(feeder.is_closed() && other.is_closed());
        assert_eq!(feeder.offer(7), Offer::Closed(7));
        assert_eq!(other.send(8).await, Offer::Closed(8));
        // Producers still alive: a stop ends intake all the same.
        let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());
        assert_eq!(report.intake, IntakeEnd::Stopped);
        if abort {
            // 0 was in flight (cut off), 1 and 2 queued (abandoned).
            assert_eq!(out, [] as [u32; 0]);
            assert_eq!(books(&report), (3, 0, 0, 3, 0));
        } else {
            assert_eq!(out, [0, 1, 2]);
            assert_eq!(books(&report), (3, 3, 0, 0, 3));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn intake_ends_when_the_last_producer_is_dropped() {
    let baseline = alive_tasks();
    let (feeder, results, handle) = feeder(FanOutConfig::new(2, ShedPolicy::DropNewest), slow);
    let clones: Vec<_> = (0..3).map(|_| feeder.clone()).collect();
    drop(feeder);
    for (i, clone) in clones.iter().enumerate() {
        assert!(clone.offer(i as u32).is_queued());
    }
    let mut join = std::pin::pin!(handle.join());
    let mut results = results;
    let mut out = Vec::new();
    for _ in 0..3 {
        out.push(results.next().await.unwrap());
    }
    assert!(
        timeout(ms(100), &mut join).await.is_err(),
        "producers alive"
    );
    drop(clones);
    let (rest, report) = tokio::join!(results.collect::<Vec<u32>>(), join);
    assert!(rest.is_empty());
    out.sort_unstable();
    assert_eq!(out, [0, 1, 2]);
    assert_eq!(report.intake, IntakeEnd::Exhausted);
    assert_eq!(books(&report), (3, 3, 0, 0, 3));
    assert_tasks_back_to(baseline, 64).await;
}

/// Intake ends `Exhausted` when the last producer goes before a stop, even
/// a stop that comes before the front task has run (a fresh-user trial
/// found `Stopped`): dropped, or closed as a `Sink`.
#[tokio::test(start_paused = true)]
async fn the_last_producer_gone_before_a_shutdown_ends_intake_exhausted() {
    for close_as_sink in [false, true] {
        let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(4);
        let (mut feeder, results, handle) = feeder(config, |x: u32| async move { x });
        if close_as_sink {
            futures::SinkExt::feed(&mut feeder, 1).await.unwrap();
            futures::SinkExt::close(&mut feeder).await.unwrap();
        } else {
            assert_eq!(feeder.offer(1), Offer::Queued);
            drop(feeder);
        }
        handle.shutdown();
        let (out, report) = timeout(GUARD, handle.join_collect(results)).await.unwrap();
        assert_eq!(out, [1], "as sink: {close_as_sink}");
        assert_eq!(books(&report), (1, 1, 0, 0, 1), "as sink: {close_as_sink}");
        assert_eq!(
            report.intake,
            IntakeEnd::Exhausted,
            "as sink: {close_as_sink}"
        );
    }
}

/// And a stop before the last producer goes ends it `Stopped`.
#[tokio::test(start_paused = true)]
async fn a_shutdown_before_the_last_producer_goes_ends_intake_stopped() {
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(4);
    let (feeder, results, handle) = feeder(config, |x: u32| async move { x });
    assert_eq!(feeder.offer(1), Offer::Queued);
    handle.shutdown();
    drop(feeder);
    let (out, report) = timeout(GUARD, handle.join_collect(results)).await.unwrap();
    assert_eq!(out, [1]);
    assert_eq!(books(&report), (1, 1, 0, 0, 1));
    assert_eq!(report.intake, IntakeEnd::Stopped);
}

#[tokio::test(start_paused = true)]
async fn items_handed_back_never_reach_on_shed() {
    let hooked = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&hooked);
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(1)
        .on_shed(move |_: u32| {
            count.fetch_add(1, SeqCst);
        });
    let (feeder, results, handle) = feeder(config, slow);
    assert!(feeder.offer(0).is_queued());
    assert_eq!(feeder.offer(1), Offer::Shed(1));
    drop(feeder);
    let (_, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());
    assert_eq!(report.dropped, 1);
    assert_eq!(
        hooked.load(SeqCst),
        0,
        "the caller got the item back instead"
    );
}

/// Producers on 4 OS threads offer at full speed into a small queue; every
/// id ends exactly once: handed back (shed or evicted) or delivered.
#[test]
fn offers_from_many_threads_keep_every_item_exactly_once() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 20_000;
    let rt = common::multi_thread_runtime();
    for policy in [
        ShedPolicy::DropNewest,
        ShedPolicy::DropOldest,
        ShedPolicy::Backpressure,
    ] {
        let config = FanOutConfig::new(3, policy).capacity(8).output_capacity(8);
        let (feeder, results, handle) = rt.block_on(async {
            feeder(config, |id: u64| async move {
                tokio::task::yield_now().await;
                id
            })
        });
        let producers: Vec<_> = (0..THREADS)
            .map(|t| {
                let feeder = feeder.clone();
                let rt = rt.handle().clone();
                std::thread::spawn(move || {
                    let mut back = Vec::new();
                    for i in 0..PER_THREAD {
                        let id = t * PER_THREAD + i;
                        let answer = if policy == ShedPolicy::Backpressure {
                            rt.block_on(feeder.send(id))
                        } else {
                            feeder.offer(id)
                        };
                        match answer {
                            Offer::Queued => {}
                            Offer::Shed(item) | Offer::Evicted(item) => back.push(item),
                            other => panic!("{policy}: unexpected {other:?}"),
                        }
                    }
                    back
                })
            })
            .collect();
        drop(feeder);
        let (delivered, report) = rt.block_on(async {
            within(Duration::from_secs(60), "drain", async {
                tokio::join!(results.collect::<Vec<_>>(), handle.join())
            })
            .await
        });
        let back: Vec<u64> = producers
            .into_iter()
            .flat_map(|p| p.join().expect("producer thread"))
            .collect();
        let mut seen = BTreeSet::new();
        for id in back.iter().chain(&delivered) {
            assert!(seen.insert(*id), "{policy}: id {id} twice");
        }
        assert_eq!(
            seen.len() as u64,
            THREADS * PER_THREAD,
            "{policy}: an id was lost"
        );
        assert_eq!(report.produced, THREADS * PER_THREAD, "{policy}");
        assert_eq!(report.dropped, back.len() as u64, "{policy}");
        assert_eq!(report.delivered, delivered.len() as u64, "{policy}");
        assert!(report.high_water_mark <= 8, "{policy}: memory bound");
        assert!(report.is_conserved(), "{policy}: {report}");
        if policy == ShedPolicy::Backpressure {
            assert_eq!(report.dropped, 0);
        }
    }
}

/// Backpressure push front, W=1, C=1: a `send` that gives up its place in
/// line (dropped by a timeout) takes no room with it: the next `send` is let
/// in by the next take.
#[tokio::test(start_paused = true)]
async fn a_cancelled_send_gives_up_its_place_without_taking_room() {
    let start = Instant::now();
    let config = FanOutConfig::new(1, ShedPolicy::Backpressure).capacity(1);
    let (feeder, results, handle) = backpressure_pipeline::feeder(config, |x: u32| async move {
        sleep(ms(100)).await;
        x
    });
    assert!(feeder.send(0).await.is_queued());
    tokio::task::yield_now().await; // the worker takes 0
    assert!(feeder.send(1).await.is_queued());
    assert!(
        timeout(ms(10), feeder.send(2)).await.is_err(),
        "no room until 100 ms"
    );
    let third = within(GUARD, "send", feeder.send(3)).await;
    assert!(third.is_queued());
    assert_eq!(start.elapsed(), ms(100));
    assert_eq!(feeder.offer(4), Offer::Full(4));
    drop(feeder);
    let (out, report, at) = drain(results, handle).await;
    assert_eq!(out, [0, 1, 3]);
    assert_eq!(
        (report.produced, report.processed, report.dropped),
        (3, 3, 0)
    );
    assert_eq!(at - start, ms(300));
}

// ===== property: the push front keeps both laws, whatever the mix =====

mod property {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Case {
        multi_thread: bool,
        workers: usize,
        capacity: usize,
        policy: ShedPolicy,
        latest_only: bool,
        /// Offers per producer task (two producers).
        offers: u64,
        /// `send` instead of `offer` for every third item.
        mix_send: bool,
        work_ms: u64,
        /// Stop after this many ms: (abort?, when).
        stop: Option<(bool, u64)>,
    }

    fn cases() -> impl Strategy<Value = Case> {
        (
            any::<bool>(),
            1usize..4,
            1usize..6,
            common::any_policy(),
            any::<bool>(),
            0u64..80,
            any::<bool>(),
            0u64..3,
            proptest::option::of((any::<bool>(), 0u64..6)),
        )
            .prop_map(
                |(
                    multi_thread,
                    workers,
                    capacity,
                    policy,
                    latest_only,
                    offers,
                    mix_send,
                    work_ms,
                    stop,
                )| {
                    Case {
                        multi_thread,
                        workers,
                        capacity,
                        policy,
                        latest_only,
                        offers,
                        mix_send,
                        work_ms,
                        stop,
                    }
                },
            )
    }

    async fn run_case(case: Case) -> Result<(), TestCaseError> {
        let config = FanOutConfig::new(case.workers, case.policy)
            .capacity(case.capacity)
            .result_order(common::order(false, case.latest_only));
        let work = case.work_ms;
        let (feeder, results, handle) = feeder(config, move |id: u64| async move {
            if work > 0 {
                sleep(ms(work)).await;
            } else {
                tokio::task::yield_now().await;
            }
            id
        });
        let producers: Vec<_> = (0..2u64)
            .map(|p| {
                let feeder = feeder.clone();
                let (offers, mix_send) = (case.offers, case.mix_send);
                tokio::spawn(async move {
                    // (accepted, handed back by value, refused uncounted)
                    let (mut accepted, mut back, mut refused) = (0u64, Vec::new(), 0u64);
                    for i in 0..offers {
                        let id = p * 1000 + i;
                        let answer = if mix_send && i % 3 == 0 {
                            feeder.send(id).await
                        } else {
                            feeder.offer(id)
                        };
                        match answer {
                            Offer::Queued => accepted += 1,
                            Offer::Shed(item) | Offer::Evicted(item) => {
                                accepted += 1;
                                back.push(item);
                            }
                            Offer::Full(_) | Offer::Closed(_) => refused += 1,
                            _ => {}
                        }
                        if i % 4 == 3 {
                            tokio::task::yield_now().await;
                        }
                    }
                    (accepted, back, refused)
                })
            })
            .collect();
        drop(feeder);
        let stop = common::stop_later(handle.controller(), case.stop);
        let limit = Duration::from_secs(if case.multi_thread { 30 } else { 3600 });
        let ((out, ()), report) = timeout(limit, async {
            tokio::join!(
                async { tokio::join!(results.collect::<Vec<_>>(), stop) },
                handle.join()
            )
        })
        .await
        .map_err(|_| TestCaseError::fail("did not finish"))?;
        let (mut accepted, mut back, mut refused) = (0, Vec::new(), 0);
        for producer in producers {
            let (a, b, r) = producer.await.expect("producer");
            accepted += a;
            back.extend(b);
            refused += r;
        }
        prop_assert!(report.is_conserved(), "{}", report);
        prop_assert_eq!(accepted + refused, 2 * case.offers);
        prop_assert_eq!(report.produced, accepted, "produced counts accepted offers");
        prop_assert_eq!(report.dropped, back.len() as u64, "dropped = handed back");
        prop_assert_eq!(report.delivered, out.len() as u64);
        let mut seen = BTreeSet::new();
        for id in back.iter().chain(&out) {
            prop_assert!(seen.insert(*id), "id {} twice", id);
        }
        if case.policy == ShedPolicy::Backpressure {
            prop_assert_eq!(report.dropped, 0);
        }
        if !case.latest_only && case.stop.is_none() {
            prop_assert_eq!(report.discarded, 0, "nothing discarded without a stop");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        #[test]
        fn the_push_front_keeps_both_laws(case in cases()) {
            let runtime = if case.multi_thread {
                common::multi_thread_runtime()
            } else {
                common::paused_runtime()
            };
            runtime.block_on(run_case(case))?;
        }
    }
}
