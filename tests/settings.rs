//! Every setting of `FanOutConfig`, on every front: the stream front, the
//! push front through `offer`/`send`, and the push front through its
//! `Sink`. One test per setting, each running the same scenario on the
//! three and asserting exact values (paused time, current-thread runtime):
//! the table in `FanOutConfig`'s docs, cell by cell.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{
    CancellationToken, Controller, FanOutConfig, FanOutExt, HandlerKind, IntakeEnd, Outcome,
    OverloadEvent, Report, ResultOrder, ShedPolicy, ShedReason, Stats, feeder,
};
use futures::{SinkExt, StreamExt, stream};
use tokio::time::{Instant, sleep, sleep_until};

use common::{GUARD, log, ms, snapshot, sorted, within};

/// The three ways items enter a pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Front {
    /// `stream.bounded_fan_out_with(config, handler)`.
    Stream,
    /// `feeder(config, handler)`, pushing with `Feeder::send` (which is
    /// `offer` under the shedding policies): shed items come back to the
    /// producer.
    Push,
    /// `feeder(config, handler)`, pushing through the `Sink`
    /// (`SinkExt::send`, then `close`): shed items go to `on_shed`.
    Sink,
}

const FRONTS: [Front; 3] = [Front::Stream, Front::Push, Front::Sink];

/// When items arrive, after the test's start: `(at, ids)`, in order.
type Schedule = Vec<(Duration, std::ops::Range<u32>)>;

/// Item 0 at t = 0, then `1..n` together at t = 10 ms, when a worker is
/// busy with item 0 (the scenario of sensorbee#150: exact shed counts).
fn first_then_burst(n: u32) -> Schedule {
    vec![(ms(0), 0..1), (ms(10), 1..n)]
}

/// `0..n`, all at t = 0.
fn at_once(n: u32) -> Schedule {
    vec![(ms(0), 0..n)]
}

/// A scenario: what arrives when, and when the reader starts reading.
struct Scenario {
    front: Front,
    schedule: Schedule,
    read_after: Duration,
}

impl Scenario {
    fn new(front: Front, schedule: Schedule) -> Self {
        Scenario {
            front,
            schedule,
            read_after: Duration::ZERO,
        }
    }

    fn read_after(mut self, at: Duration) -> Self {
        self.read_after = at;
        self
    }
}

/// What a run saw: the results in delivery order, the report, the items
/// the push front handed back to its producer, and how intake ended.
struct Run<O> {
    out: Vec<O>,
    report: Report,
    handed_back: Vec<u32>,
}

/// Runs `scenario` with `config` and `handler`, with `during` beside it
/// (given a controller and the test's start). Every report is checked for
/// both laws.
async fn run<O, F, Fut, Kind, D, DFut>(
    scenario: Scenario,
    config: FanOutConfig<u32, Kind>,
    handler: F,
    during: D,
) -> Run<O>
where
    O: Send + 'static,
    F: Fn(u32) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = O> + Send + 'static,
    Kind: HandlerKind<O>,
    D: FnOnce(Controller, Instant) -> DFut,
    DFut: Future<Output = ()>,
{
    let Scenario {
        front,
        schedule,
        read_after,
    } = scenario;
    let start = Instant::now();
    let handed_back = log();
    let reader = |results, shutdown: backpressure_pipeline::ShutdownHandle| async move {
        sleep_until(start + read_after).await;
        within(GUARD, "join", shutdown.join_collect(results)).await
    };
    let (out, report) = match front {
        Front::Stream => {
            let input = stream::iter(schedule).flat_map(move |(at, ids)| {
                stream::once(sleep_until(start + at)).flat_map(move |()| stream::iter(ids.clone()))
            });
            let (results, shutdown) = input.bounded_fan_out_with(config, handler);
            let controller = shutdown.controller();
            let (joined, ()) = tokio::join!(reader(results, shutdown), during(controller, start));
            joined
        }
        Front::Push | Front::Sink => {
            let (feeder, results, shutdown) = feeder(config, handler);
            let controller = shutdown.controller();
            let back = handed_back.clone();
            let producer = async move {
                let mut feeder = feeder;
                for (at, ids) in schedule {
                    sleep_until(start + at).await;
                    for id in ids {
                        let refused = if front == Front::Sink {
                            SinkExt::send(&mut feeder, id)
                                .await
                                .err()
                                .and_then(|e| e.into_item())
                        } else {
                            feeder.send(id).await.into_item()
                        };
                        back.lock().unwrap().extend(refused);
                    }
                }
                if front == Front::Sink {
                    SinkExt::close(&mut feeder)
                        .await
                        .expect("closing never fails");
                }
            };
            let (joined, (), ()) = tokio::join!(
                reader(results, shutdown),
                producer,
                during(controller, start)
            );
            joined
        }
    };
    assert!(report.is_conserved(), "{front:?}: {report}");
    Run {
        out,
        report,
        handed_back: snapshot(&handed_back),
    }
}

async fn nothing(_: Controller, _: Instant) {}

type Boxed<O> = Pin<Box<dyn Future<Output = O> + Send>>;

/// A handler busy for `d`, returning its item.
fn busy(d: Duration) -> impl Fn(u32) -> Boxed<u32> + Send + Sync + 'static {
    move |id| {
        Box::pin(async move {
            sleep(d).await;
            id
        })
    }
}

/// Where the items went: (produced, processed, dropped, cancelled).
fn books(r: &Report) -> (u64, u64, u64, u64) {
    (r.produced, r.processed, r.dropped, r.cancelled)
}

// ===== sizes and policies =====

#[tokio::test(start_paused = true)]
async fn capacity_bounds_the_queue_exactly_on_every_front() {
    for (policy, kept, shed) in [
        (ShedPolicy::DropNewest, [0, 1, 2, 3], [4, 5, 6, 7, 8, 9]),
        (ShedPolicy::DropOldest, [0, 7, 8, 9], [1, 2, 3, 4, 5, 6]),
    ] {
        for front in FRONTS {
            let config = FanOutConfig::new(1, policy).capacity(3);
            let scenario = Scenario::new(front, first_then_burst(10));
            let run = run(scenario, config, busy(ms(1000)), nothing).await;
            assert_eq!(run.out, kept, "{front:?} {policy}");
            assert_eq!(books(&run.report), (10, 4, 6, 0), "{front:?} {policy}");
            assert_eq!(run.report.high_water_mark, 3, "{front:?} {policy}");
            // An offer hands its shed item back; a sink cannot.
            let back: &[u32] = if front == Front::Push { &shed } else { &[] };
            assert_eq!(sorted(&run.handed_back), back, "{front:?} {policy}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn backpressure_waits_for_room_and_sheds_nothing_on_every_front() {
    for front in FRONTS {
        let config = FanOutConfig::new(2, ShedPolicy::Backpressure).capacity(2);
        let run = run(
            Scenario::new(front, at_once(20)),
            config,
            busy(ms(10)),
            nothing,
        )
        .await;
        assert_eq!(sorted(&run.out), (0..20).collect::<Vec<_>>(), "{front:?}");
        assert_eq!(books(&run.report), (20, 20, 0, 0), "{front:?}");
        assert_eq!(run.report.high_water_mark, 2, "{front:?}");
        // 20 items, 2 workers, 10 ms each.
        assert_eq!(run.report.intake, IntakeEnd::Exhausted, "{front:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn output_capacity_bounds_the_results_waiting_for_the_reader_on_every_front() {
    for front in FRONTS {
        let config = FanOutConfig::new(2, ShedPolicy::Backpressure)
            .capacity(2)
            .output_capacity(3);
        let seen: Arc<Mutex<Option<Stats>>> = Arc::default();
        let look = Arc::clone(&seen);
        let during = move |controller: Controller, start: Instant| async move {
            sleep_until(start + ms(100)).await;
            *look.lock().unwrap() = Some(controller.stats());
        };
        let scenario = Scenario::new(front, at_once(10)).read_after(ms(200));
        let run = run(scenario, config, busy(ms(1)), during).await;
        let stats = seen.lock().unwrap().expect("looked at t = 100 ms");
        // 3 buffered and one result held by each of the 2 workers; the
        // queue holds 2 more, and the producer waits with the rest.
        assert_eq!(
            (stats.results_waiting, stats.processed, stats.queue_depth),
            (5, 5, 2),
            "{front:?}"
        );
        assert_eq!(run.report.delivered, 10, "{front:?}");
    }
}

// ===== result order =====

#[tokio::test(start_paused = true)]
async fn input_order_delivers_in_input_order_on_every_front() {
    for front in FRONTS {
        let config =
            FanOutConfig::new(4, ShedPolicy::Backpressure).result_order(ResultOrder::Input);
        // Item i takes 10 - i ms: completion order is the reverse.
        let handler = |id: u32| async move {
            sleep(ms(10 - u64::from(id))).await;
            id
        };
        let run = run(Scenario::new(front, at_once(8)), config, handler, nothing).await;
        assert_eq!(run.out, (0..8).collect::<Vec<_>>(), "{front:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn latest_only_keeps_the_freshest_result_on_every_front() {
    for front in FRONTS {
        let config =
            FanOutConfig::new(1, ShedPolicy::Backpressure).result_order(ResultOrder::LatestOnly);
        let scenario = Scenario::new(front, at_once(5)).read_after(ms(100));
        let run = run(scenario, config, busy(ms(1)), nothing).await;
        assert_eq!(run.out, [4], "{front:?}");
        let r = &run.report;
        assert_eq!(
            (r.processed, r.delivered, r.discarded),
            (5, 1, 4),
            "{front:?}"
        );
    }
}

// ===== stopping =====

#[tokio::test(start_paused = true)]
async fn drain_timeout_cuts_off_what_is_unfinished_at_the_deadline_on_every_front() {
    for front in FRONTS {
        let config = FanOutConfig::new(1, ShedPolicy::DropNewest).drain_timeout(ms(50));
        let stop = |controller: Controller, start: Instant| async move {
            sleep_until(start + ms(10)).await;
            controller.shutdown();
        };
        // Item 0 finishes at 30 ms (inside the drain); item 1 starts then
        // and would finish at 70, past the deadline at 60.
        let handler = |id: u32| async move {
            sleep(ms(if id == 0 { 30 } else { 40 })).await;
            id
        };
        let start = Instant::now();
        let run = run(Scenario::new(front, at_once(3)), config, handler, stop).await;
        assert_eq!(run.out, [0], "{front:?}");
        // 1 was cut off in flight at 60 ms; 2 was never started.
        assert_eq!(books(&run.report), (3, 1, 0, 2), "{front:?}");
        // The input had ended before the stop: the drain still counts from
        // the request.
        assert_eq!(
            (run.report.aborted, run.report.intake),
            (1, IntakeEnd::Exhausted)
        );
        assert_eq!(
            start.elapsed(),
            ms(60),
            "{front:?}: the deadline, from the request"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_parent_token_stops_intake_on_every_front() {
    for front in FRONTS {
        let parent = CancellationToken::new();
        let config = FanOutConfig::new(2, ShedPolicy::DropNewest).cancel_token(parent.clone());
        let cancel = move |_: Controller, start: Instant| async move {
            sleep_until(start + ms(5)).await;
            parent.cancel();
        };
        // Items 0..4 at t = 0, 4..8 at t = 10 ms: after the cancel.
        let schedule = vec![(ms(0), 0..4), (ms(10), 4..8)];
        let run = run(Scenario::new(front, schedule), config, busy(ms(1)), cancel).await;
        assert_eq!(sorted(&run.out), [0, 1, 2, 3], "{front:?}");
        assert_eq!(books(&run.report), (4, 4, 0, 0), "{front:?}");
        assert_eq!(run.report.intake, IntakeEnd::Stopped, "{front:?}");
        // `send` hands the late items back (refused, uncounted); the sink's
        // `poll_ready` fails first, and `SinkExt::send` drops its item.
        let back: &[u32] = if front == Front::Push {
            &[4, 5, 6, 7]
        } else {
            &[]
        };
        assert_eq!(run.handed_back, back, "{front:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn on_cancel_gets_the_queued_items_an_abort_abandoned_on_every_front() {
    for front in FRONTS {
        let cancelled = log();
        let sink = cancelled.clone();
        let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
            .on_cancel(move |id: u32| sink.lock().unwrap().push(id));
        let abort = |controller: Controller, start: Instant| async move {
            sleep_until(start + ms(5)).await;
            controller.abort();
        };
        let run = run(
            Scenario::new(front, at_once(4)),
            config,
            busy(ms(1000)),
            abort,
        )
        .await;
        assert_eq!(
            snapshot(&cancelled),
            [1, 2, 3],
            "{front:?}: 0 was in flight"
        );
        assert_eq!(books(&run.report), (4, 0, 0, 4), "{front:?}");
        assert_eq!(run.report.aborted, 1, "{front:?}");
    }
}

// ===== per item =====

#[tokio::test(start_paused = true)]
async fn handler_timeout_cuts_off_slow_handlers_on_every_front() {
    for front in FRONTS {
        let config = FanOutConfig::new(2, ShedPolicy::Backpressure).handler_timeout(ms(50));
        // Even items take 100 ms, odd ones 10 ms.
        let handler = |id: u32| async move {
            sleep(ms(if id % 2 == 0 { 100 } else { 10 })).await;
            id
        };
        let run = run(Scenario::new(front, at_once(6)), config, handler, nothing).await;
        assert_eq!(sorted(&run.out), [1, 3, 5], "{front:?}");
        let r = &run.report;
        assert_eq!((r.processed, r.timed_out), (3, 3), "{front:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn max_queue_age_expires_items_that_waited_too_long_on_every_front() {
    for front in FRONTS {
        // One worker, 100 ms per item, 4 items at once: the fourth would
        // start after 300 ms in the queue, past its 250 ms limit.
        let config = FanOutConfig::new(1, ShedPolicy::DropNewest).max_queue_age(ms(250));
        let run = run(
            Scenario::new(front, at_once(4)),
            config,
            busy(ms(100)),
            nothing,
        )
        .await;
        assert_eq!(run.out, [0, 1, 2], "{front:?}");
        let r = &run.report;
        assert_eq!((r.processed, r.expired), (3, 1), "{front:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn fallible_counts_err_outputs_on_every_front() {
    for front in FRONTS {
        let config = FanOutConfig::new(2, ShedPolicy::Backpressure).fallible();
        let handler = |id: u32| async move {
            if id % 3 == 0 {
                Err(format!("{id} is a multiple of 3"))
            } else {
                Ok(id)
            }
        };
        let run = run(Scenario::new(front, at_once(10)), config, handler, nothing).await;
        assert_eq!(
            run.out.iter().filter(|r| r.is_err()).count(),
            4,
            "{front:?}"
        );
        let r = &run.report;
        assert_eq!((r.processed, r.errored), (10, 4), "{front:?}");
    }
}

// ===== shed and overload hooks =====

#[tokio::test(start_paused = true)]
async fn on_shed_gets_what_the_front_does_not_hand_back() {
    for front in FRONTS {
        let shed = log();
        let sink = shed.clone();
        let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
            .capacity(3)
            .on_shed(move |id: u32| sink.lock().unwrap().push(id));
        let scenario = Scenario::new(front, first_then_burst(10));
        let run = run(scenario, config, busy(ms(1000)), nothing).await;
        // The stream front and the sink hand shed items to the hook; an
        // offer hands them back to its producer instead.
        let (hooked, back): (&[u32], &[u32]) = match front {
            Front::Push => (&[], &[4, 5, 6, 7, 8, 9]),
            _ => (&[4, 5, 6, 7, 8, 9], &[]),
        };
        assert_eq!(snapshot(&shed), hooked, "{front:?}");
        assert_eq!(run.handed_back, back, "{front:?}");
        assert_eq!(run.report.dropped, 6, "{front:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn on_overload_reports_each_episode_once_on_every_front() {
    for front in FRONTS {
        let events = log();
        let sink = events.clone();
        let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
            .capacity(1)
            .overload_quiet_period(ms(100))
            .on_overload(move |event| sink.lock().unwrap().push(event));
        // Two bursts 500 ms apart against a worker busy 1 s per item: two
        // episodes, closed by the quiet period and by the end of intake.
        let schedule = vec![(ms(0), 0..1), (ms(10), 1..5), (ms(510), 5..9)];
        let run = run(
            Scenario::new(front, schedule),
            config,
            busy(ms(1000)),
            nothing,
        )
        .await;
        assert_eq!(run.report.dropped, 7, "{front:?}");
        assert_eq!(
            snapshot(&events),
            [
                OverloadEvent::Started,
                OverloadEvent::Ended {
                    shed: 3,
                    duration: Duration::ZERO
                },
                OverloadEvent::Started,
                OverloadEvent::Ended {
                    shed: 4,
                    duration: Duration::ZERO
                },
            ],
            "{front:?}"
        );
    }
}

// ===== settlement =====

#[tokio::test(start_paused = true)]
async fn settle_by_records_every_item_once_on_every_front() {
    for front in FRONTS {
        let (config, settlements) = FanOutConfig::new(1, ShedPolicy::DropNewest)
            .capacity(3)
            .settle_by(|id: &u32| *id);
        let records = tokio::spawn(settlements.collect::<Vec<_>>());
        let scenario = Scenario::new(front, first_then_burst(10));
        let run = run(scenario, config, busy(ms(1000)), nothing).await;
        let mut records = records.await.expect("settler");
        records.sort_by_key(|r| r.key);
        let outcomes: Vec<Outcome> = records.iter().map(|r| r.outcome).collect();
        let shed = Outcome::Shed(ShedReason::Newest);
        let mut expected = vec![Outcome::Processed; 4];
        expected.extend([shed; 6]);
        assert_eq!(outcomes, expected, "{front:?}");
        assert_eq!(records.len() as u64, run.report.produced, "{front:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn settle_capacity_holds_intake_while_records_are_unread_on_every_front() {
    for front in FRONTS {
        let (config, settlements) = FanOutConfig::new(2, ShedPolicy::DropNewest)
            .settle_capacity(3)
            .settle_by(|id: &u32| *id);
        let produced_early = Arc::new(Mutex::new(0));
        let seen = Arc::clone(&produced_early);
        // Nobody reads the records until t = 100 ms.
        let settler = async move {
            sleep(ms(100)).await;
            settlements.collect::<Vec<_>>().await
        };
        let during = move |controller: Controller, start: Instant| async move {
            sleep_until(start + ms(50)).await;
            *seen.lock().unwrap() = controller.stats().produced;
        };
        let (run, records) = tokio::join!(
            run(
                Scenario::new(front, at_once(10)),
                config,
                busy(ms(1)),
                during
            ),
            settler
        );
        // At most 3 unsettled: the stream front waits for credits; an
        // offer without one answers `Full` (handed back), `send` waits.
        assert_eq!(*produced_early.lock().unwrap(), 3, "{front:?}");
        assert_eq!(records.len() as u64, run.report.produced, "{front:?}");
        assert_eq!(run.report.produced, 10, "{front:?}");
    }
}

// ===== keys =====

#[tokio::test(start_paused = true)]
async fn key_by_runs_one_item_of_a_key_at_a_time_on_every_front() {
    for front in FRONTS {
        // Two keys, four items each, four workers: each key's items run one
        // after another, the two keys side by side.
        let config = FanOutConfig::new(4, ShedPolicy::Backpressure).key_by(|id: &u32| id % 2);
        let start = Instant::now();
        let run = run(
            Scenario::new(front, at_once(8)),
            config,
            busy(ms(10)),
            nothing,
        )
        .await;
        assert_eq!(start.elapsed(), ms(40), "{front:?}");
        let evens: Vec<u32> = run.out.iter().copied().filter(|id| id % 2 == 0).collect();
        assert_eq!(
            evens,
            [0, 2, 4, 6],
            "{front:?}: a key's results in its order"
        );
        assert_eq!(run.report.processed, 8, "{front:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn per_key_capacity_sheds_within_a_full_key_on_every_front() {
    for front in FRONTS {
        let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
            .key_by(|id: &u32| id % 2)
            .per_key_capacity(2);
        let scenario = Scenario::new(front, first_then_burst(10));
        let run = run(scenario, config, busy(ms(1000)), nothing).await;
        // Item 0 runs; each key keeps its first two arrivals.
        assert_eq!(run.out, [0, 1, 2, 3, 4], "{front:?}");
        assert_eq!(books(&run.report), (10, 5, 5, 0), "{front:?}");
        let back: &[u32] = if front == Front::Push {
            &[5, 6, 7, 8, 9]
        } else {
            &[]
        };
        assert_eq!(sorted(&run.handed_back), back, "{front:?}");
    }
}
