//! User code that panics anywhere the pipeline runs it (PITFALLS 7) never
//! poisons the queue, never kills intake silently, never hangs `join` and
//! never breaks the conservation law (SPEC "Bad input and misuse").
//!
//! One test per place: the handler's synchronous call, the handler future's
//! poll, the input's `poll_next`, the `on_shed` hook, an item's `Drop` when
//! the crate sheds it (both policies) or abandons it on `abort()`, and the
//! `Drop` of an in-flight handler future cut off by an abort; and handlers
//! that panic on both workers at once (scylla-rust-driver#1436). Paused
//! time, current-thread runtime, exact counts.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, IntakeEnd, Report, ShedPolicy};
use futures::{Stream, StreamExt};
use tokio::time::{Instant, sleep};

mod common;
use common::{
    Log, Trace, alive_tasks, assert_no_task_alive, assert_tasks_back_to, drain_and_join_at,
    item_counts, ms, paced, planned_panic, quiet_planned_panics, snapshot, sorted, workers,
};

// ===== items and a scripted input =====

/// Ids of dropped items, in drop order.
#[derive(Clone, Default)]
struct Drops(Arc<Mutex<Vec<u64>>>);

impl Drops {
    fn sorted(&self) -> Vec<u64> {
        let mut ids = self.0.lock().unwrap().clone();
        ids.sort_unstable();
        ids
    }
}

struct Item {
    id: u64,
    panic_on_drop: bool,
    drops: Drops,
}

impl Drop for Item {
    fn drop(&mut self) {
        self.drops.0.lock().unwrap().push(self.id);
        if self.panic_on_drop {
            planned_panic();
        }
    }
}

enum Step {
    /// Yield an item (whose `Drop` panics if the flag is set).
    Item(u64, bool),
    /// Be pending for this long (virtual time).
    Gap(Duration),
    /// Panic in `poll_next`.
    Panic,
    /// Be pending forever.
    Pending,
}

/// An input stream that follows a script.
struct Script {
    steps: VecDeque<Step>,
    gap: Option<Pin<Box<tokio::time::Sleep>>>,
    drops: Drops,
    dropped: Arc<AtomicBool>,
}

impl Script {
    fn new(steps: impl IntoIterator<Item = Step>) -> (Self, Drops, Arc<AtomicBool>) {
        let drops = Drops::default();
        let dropped = Arc::new(AtomicBool::new(false));
        let script = Script {
            steps: steps.into_iter().collect(),
            gap: None,
            drops: drops.clone(),
            dropped: Arc::clone(&dropped),
        };
        (script, drops, dropped)
    }
}

/// `Step::Item`s for `ids`, whose `Drop` panics for the ids in `panicky`.
fn items(ids: std::ops::Range<u64>, panicky: &[u64]) -> impl Iterator<Item = Step> + '_ {
    ids.map(move |id| Step::Item(id, panicky.contains(&id)))
}

impl Stream for Script {
    type Item = Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Item>> {
        let this = &mut *self;
        loop {
            match this.steps.front() {
                None => return Poll::Ready(None),
                Some(Step::Item(..)) => {
                    let Some(Step::Item(id, panic_on_drop)) = this.steps.pop_front() else {
                        unreachable!()
                    };
                    return Poll::Ready(Some(Item {
                        id,
                        panic_on_drop,
                        drops: this.drops.clone(),
                    }));
                }
                Some(Step::Gap(gap)) => {
                    let gap = *gap;
                    let sleep = this
                        .gap
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.gap = None;
                    this.steps.pop_front();
                }
                Some(Step::Panic) => {
                    this.steps.pop_front();
                    planned_panic();
                }
                Some(Step::Pending) => return Poll::Pending,
            }
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        self.dropped.store(true, SeqCst);
    }
}

/// A guard whose `Drop` panics: held by a handler future.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        planned_panic();
    }
}

// ===== helpers =====

/// Yields until `ready()` holds; panics if it does not within 100 yields.
async fn until(mut ready: impl FnMut() -> bool) {
    for _ in 0..100 {
        if ready() {
            return;
        }
        tokio::task::yield_now().await;
    }
    assert!(ready(), "condition not reached within 100 yields");
}

/// (workers_joined, aborted, intake)
fn ends(report: &Report) -> (usize, usize, IntakeEnd) {
    (report.workers_joined, report.aborted, report.intake)
}

/// A handler that owns its whole item (not just `item.id`) for `d`.
async fn take_time(item: Item, d: Duration) -> u64 {
    tokio::time::sleep(d).await;
    item.id
}

/// A handler that holds its item forever beside a guard whose `Drop` panics;
/// the guard is dropped first when the future is dropped (reverse order).
async fn hold_behind_a_panicking_guard(item: Item) -> u64 {
    let _item = item;
    let _guard = PanicOnDrop;
    std::future::pending::<u64>().await
}

// ===== the handler =====

#[tokio::test(start_paused = true)]
async fn panic_in_the_handler_call_fails_that_item_and_the_worker_goes_on() {
    quiet_planned_panics();
    let baseline = alive_tasks();
    let (input, drops, input_dropped) = Script::new(items(0..10, &[]));
    // One worker: if the panic killed it, nothing after id 3 would be handled.
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(16);
    let (results, handle) = input.bounded_fan_out_with(config, |item: Item| {
        if item.id % 4 == 3 {
            planned_panic(); // before any future exists
        }
        async move { item.id }
    });
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());

    assert_eq!(out, [0, 1, 2, 4, 5, 6, 8, 9]);
    assert_eq!(item_counts(&report), (10, 8, 0, 2, 0));
    assert_eq!(ends(&report), (1, 0, IntakeEnd::Exhausted));
    assert!(report.is_conserved());
    assert_eq!(drops.sorted(), (0..10).collect::<Vec<_>>());
    assert!(input_dropped.load(SeqCst));
    assert_tasks_back_to(baseline, 8).await;
}

#[tokio::test(start_paused = true)]
async fn panic_in_the_handler_future_fails_that_item_and_the_worker_goes_on() {
    quiet_planned_panics();
    let baseline = alive_tasks();
    let (input, drops, _) = Script::new(items(0..10, &[]));
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(16);
    let (results, handle) = input.bounded_fan_out_with(config, |item: Item| async move {
        let item = item; // own the whole item, not just `item.id`
        if item.id == 3 {
            planned_panic(); // on the first poll
        }
        tokio::time::sleep(ms(1)).await;
        if item.id == 7 {
            planned_panic(); // after a suspension
        }
        item.id
    });
    let start = Instant::now();
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());

    assert_eq!(out, [0, 1, 2, 4, 5, 6, 8, 9]);
    // Nine items slept 1 ms each, one at a time; id 3 never slept.
    assert_eq!(start.elapsed(), ms(9));
    assert_eq!(item_counts(&report), (10, 8, 0, 2, 0));
    assert_eq!(ends(&report), (1, 0, IntakeEnd::Exhausted));
    assert_eq!(drops.sorted(), (0..10).collect::<Vec<_>>());
    assert_tasks_back_to(baseline, 8).await;
}

// ===== the input =====

/// One worker, queue of 8, handler `per_item` long: `steps` yield ids 0..5,
/// then panic in `poll_next`. All five accepted items are processed, which
/// takes `elapsed`, and the intake ends as `InputPanicked`.
async fn input_panics_after_five(
    steps: impl IntoIterator<Item = Step>,
    policy: ShedPolicy,
    per_item: Duration,
    elapsed: Duration,
) {
    quiet_planned_panics();
    let baseline = alive_tasks();
    let (input, drops, input_dropped) = Script::new(steps);
    let config = FanOutConfig::new(1, policy).capacity(8);
    let (results, handle) =
        input.bounded_fan_out_with(config, move |item| take_time(item, per_item));
    let start = Instant::now();
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());

    assert_eq!(out, [0, 1, 2, 3, 4]);
    assert_eq!(start.elapsed(), elapsed);
    assert_eq!(item_counts(&report), (5, 5, 0, 0, 0));
    assert_eq!(ends(&report), (1, 0, IntakeEnd::InputPanicked));
    assert_eq!(drops.sorted(), [0, 1, 2, 3, 4]);
    assert!(input_dropped.load(SeqCst));
    assert_tasks_back_to(baseline, 8).await;
}

#[tokio::test(start_paused = true)]
async fn panic_in_poll_next_mid_batch_still_drains_what_was_accepted() {
    // Five ready items, then a panic: all five are in the intake's hands,
    // not yet queued, when the input panics.
    let steps = items(0..5, &[]).chain([Step::Panic]);
    input_panics_after_five(steps, ShedPolicy::DropNewest, ms(1), ms(5)).await;
}

#[tokio::test(start_paused = true)]
async fn panic_in_poll_next_after_a_gap_still_drains_the_queue() {
    // 0..3 at t = 0, 3..5 at t = 1 ms, then the panic; each item takes
    // 10 ms, so at the panic 1 item is in flight and 3 are queued.
    let steps = items(0..3, &[])
        .chain([Step::Gap(ms(1))])
        .chain(items(3..5, &[]))
        .chain([Step::Panic]);
    input_panics_after_five(steps, ShedPolicy::DropOldest, ms(10), ms(50)).await;
}

// ===== the on_shed hook =====

#[tokio::test(start_paused = true)]
async fn panic_in_on_shed_keeps_the_item_dropped_and_intake_going() {
    quiet_planned_panics();
    let baseline = alive_tasks();
    // Burst 0..6 into a queue of 2 (DropNewest) and a worker busy 1 ms per
    // item: it takes 0, 1 and 2 fill the queue, 3..6 meet it full and are
    // shed; the hook panics on 3 and 5. Then 6, 7 after a gap, into an
    // empty queue.
    let steps = items(0..6, &[])
        .chain([Step::Gap(ms(5))])
        .chain(items(6..8, &[]));
    let (input, drops, _) = Script::new(steps);
    let shed = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&shed);
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest)
        .capacity(2)
        .on_shed(move |item: Item| {
            log.lock().unwrap().push(item.id);
            if item.id == 3 || item.id == 5 {
                planned_panic();
            }
        });
    let (results, handle) = input.bounded_fan_out_with(config, busy_1ms);
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());

    assert_eq!(*shed.lock().unwrap(), [3, 4, 5]);
    assert_eq!(out, [0, 1, 2, 6, 7]);
    assert_eq!(item_counts(&report), (8, 5, 3, 0, 0));
    assert_eq!(ends(&report), (1, 0, IntakeEnd::Exhausted));
    assert_eq!(drops.sorted(), (0..8).collect::<Vec<_>>());
    assert_tasks_back_to(baseline, 8).await;
}

// ===== an item's Drop, when the crate sheds it =====

/// A handler that takes 1 ms, so that a ready burst meets a full queue.
async fn busy_1ms(item: Item) -> u64 {
    tokio::time::sleep(ms(1)).await;
    item.id
}

/// Queue of 2, one worker busy 1 ms per item: a burst of 0..10 (the ids in
/// `panicky` panic when dropped), then 10, 11 after a gap; the results must
/// be `expected`.
async fn shed_with_panicking_drops(policy: ShedPolicy, panicky: &[u64], expected: [u64; 5]) {
    quiet_planned_panics();
    let baseline = alive_tasks();
    let steps = items(0..10, panicky)
        .chain([Step::Gap(ms(5))])
        .chain(items(10..12, &[]));
    let (input, drops, _) = Script::new(steps);
    let config = FanOutConfig::new(1, policy).capacity(2);
    let (results, handle) = input.bounded_fan_out_with(config, busy_1ms);
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());

    assert_eq!(out, expected, "{policy}");
    assert_eq!(item_counts(&report), (12, 5, 7, 0, 0));
    assert_eq!(ends(&report), (1, 0, IntakeEnd::Exhausted));
    assert_eq!(drops.sorted(), (0..12).collect::<Vec<_>>());
    assert_tasks_back_to(baseline, 8).await;
}

#[tokio::test(start_paused = true)]
async fn panic_in_drop_of_an_item_shed_by_drop_newest() {
    // 0 taken, 1 and 2 queued, 3..10 shed (4 and 5 panic when dropped);
    // then 10, 11.
    shed_with_panicking_drops(ShedPolicy::DropNewest, &[4, 5], [0, 1, 2, 10, 11]).await;
}

#[tokio::test(start_paused = true)]
async fn panic_in_drop_of_an_item_shed_by_drop_oldest() {
    // 0 taken, 1..8 evicted in turn (1 and 5 panic when dropped), 8, 9
    // stay; then 10, 11.
    shed_with_panicking_drops(ShedPolicy::DropOldest, &[1, 5], [0, 8, 9, 10, 11]).await;
}

// ===== an item's Drop, when the crate abandons it on abort =====

#[tokio::test(start_paused = true)]
async fn panic_in_drop_of_an_item_abandoned_by_abort() {
    quiet_planned_panics();
    let baseline = alive_tasks();
    // 0 in flight forever, 1..6 queued (2 and 4 panic when dropped), then
    // an input that stays pending.
    let (input, drops, input_dropped) = Script::new(items(0..6, &[2, 4]).chain([Step::Pending]));
    let config = FanOutConfig::new(1, ShedPolicy::DropNewest).capacity(8);
    let (results, handle) = input.bounded_fan_out_with(config, |item: Item| async move {
        let item = item; // own the whole item, not just `item.id`
        std::future::pending::<()>().await;
        item.id
    });
    until(|| {
        let stats = handle.stats();
        (stats.in_flight, stats.queue_depth) == (1, 5)
    })
    .await;

    // Must not unwind into the caller.
    handle.abort();
    // The queued items are dropped by `abort` itself; nothing else yet.
    assert_eq!(drops.sorted(), [1, 2, 3, 4, 5]);
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());

    assert_eq!(out, Vec::<u64>::new());
    assert_eq!(item_counts(&report), (6, 0, 0, 0, 6));
    assert_eq!(ends(&report), (0, 1, IntakeEnd::Stopped));
    assert_eq!(drops.sorted(), [0, 1, 2, 3, 4, 5]);
    assert!(input_dropped.load(SeqCst));
    assert_tasks_back_to(baseline, 8).await;
}

// ===== the Drop of an in-flight handler future, when aborted =====

#[tokio::test(start_paused = true)]
async fn panic_in_drop_of_an_in_flight_future_cut_off_by_abort() {
    quiet_planned_panics();
    let baseline = alive_tasks();
    let (input, drops, _) = Script::new(items(0..4, &[]).chain([Step::Pending]));
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(8);
    let (results, handle) = input.bounded_fan_out_with(config, hold_behind_a_panicking_guard);
    until(|| {
        let stats = handle.stats();
        (stats.in_flight, stats.queue_depth) == (2, 2)
    })
    .await;

    handle.abort();
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());

    assert_eq!(out, Vec::<u64>::new());
    assert_eq!(item_counts(&report), (4, 0, 0, 0, 4));
    assert_eq!(ends(&report), (0, 2, IntakeEnd::Stopped));
    // The items inside the futures are dropped too, despite the guard's panic.
    assert_eq!(drops.sorted(), [0, 1, 2, 3]);
    assert_tasks_back_to(baseline, 8).await;
}

#[tokio::test(start_paused = true)]
async fn panic_in_drop_of_an_in_flight_future_cut_off_by_the_drain_timeout() {
    quiet_planned_panics();
    let baseline = alive_tasks();
    let (input, drops, _) = Script::new(items(0..4, &[]).chain([Step::Pending]));
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest)
        .capacity(8)
        .drain_timeout(ms(10));
    let (results, handle) = input.bounded_fan_out_with(config, hold_behind_a_panicking_guard);
    until(|| handle.stats().in_flight == 2).await;

    let start = Instant::now();
    handle.shutdown();
    let (out, report) = tokio::join!(results.collect::<Vec<_>>(), handle.join());

    assert_eq!(start.elapsed(), ms(10));
    assert_eq!(out, Vec::<u64>::new());
    // 2 cut off in flight, 2 still queued when the deadline aborted.
    assert_eq!(item_counts(&report), (4, 0, 0, 0, 4));
    assert_eq!(ends(&report), (0, 2, IntakeEnd::Stopped));
    assert_eq!(drops.sorted(), [0, 1, 2, 3]);
    assert_tasks_back_to(baseline, 8).await;
}

// ===== handlers panicking on both workers at once =====

#[tokio::test(start_paused = true)]
async fn case_15_panicking_handlers_on_both_workers_lose_nothing() {
    let baseline = alive_tasks();
    let start = Instant::now();
    let pulls = Trace::default();
    // Item 0 alone first; ids 1 and 2 together once both workers are idle,
    // so both panic at the same instant; 3..=9 then fit C = 8 unshed.
    let input = paced(&pulls, |i| match i {
        0 => Some(Duration::ZERO),
        1 | 2 => Some(ms(20)),
        3..=9 => Some(ms(21)),
        _ => None,
    });
    let panicked: Log<(u64, Duration)> = Arc::default();
    let log = Arc::clone(&panicked);
    let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(8);
    let (results, handle) = input.bounded_fan_out_with(config, move |id| {
        let log = Arc::clone(&log);
        async move {
            if id == 1 || id == 2 {
                log.lock().unwrap().push((id, start.elapsed()));
                panic!("handler panics on id {id} (expected by the test)");
            }
            sleep(ms(10)).await;
            id
        }
    });

    let (out, report, joined_at) = drain_and_join_at(results, handle, Duration::from_secs(1)).await;
    assert_eq!(sorted(&snapshot(&panicked)), [(1, ms(20)), (2, ms(20))]);
    assert_eq!(sorted(&out), [0, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(item_counts(&report), (10, 8, 0, 2, 0));
    assert_eq!(workers(&report), (2, 0));
    // 3..=9 two at a time from 21 ms: four rounds of 10 ms.
    assert_eq!(joined_at - start, ms(61));
    assert_no_task_alive(baseline).await;
}
