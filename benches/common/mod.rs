//! Contenders shared by the criterion bench (`benches/fan_out.rs`) and the
//! interleaving driver (`examples/ratios.rs`), so both measure the same code.
//!
//! Every contender runs its whole scenario inside one spawned task (the
//! consumer included), so it uses the runtime's worker threads only and not
//! the thread that calls `block_on`: on 2 cores, a third busy thread would
//! blur every number.
//!
//! The scenarios (issue 4): W = 4 workers, capacity 16, a 2-thread
//! multi-thread runtime unless a function says otherwise. The `*_workers`
//! variants take W as a parameter (`examples/scaling.rs`).

// Each of the two targets that include this module uses a different subset.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
use futures::stream::{self, Stream, StreamExt};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::{Semaphore, mpsc};

pub const WORKERS: usize = 4;
pub const CAPACITY: usize = 16;
/// The crate's default `output_capacity`; the anchors' result channels get
/// the same bound so that both sides buffer the same number of results.
pub const OUTPUT_CAPACITY: usize = FanOutConfig::<u64>::DEFAULT_OUTPUT_CAPACITY;
/// Items pulled per lock by the bare reference, as the crate's intake does.
pub const BATCH: usize = 32;

/// What one run of a scenario measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct Run {
    /// Start of the scenario to the last result consumed and every task joined.
    pub wall: Duration,
    /// Start of the scenario to the input returning `None` (intake done).
    pub intake: Duration,
    /// Items taken from the input.
    pub taken: u64,
    /// Items whose handler completed (and whose result the consumer received).
    pub processed: u64,
    /// Items shed (`taken - processed` for the reference, which keeps no count).
    pub dropped: u64,
    /// CPU time of the process's threads during the run (filled in by the
    /// interleaving driver only).
    pub cpu: Duration,
    /// Time the process's threads were runnable but waiting for a core
    /// (the kernel's run-queue wait; filled in by the driver only).
    pub waited: Duration,
    /// Context switches of the process's threads during the run (voluntary +
    /// involuntary; filled in by the driver only).
    pub switches: u64,
}

impl Run {
    /// Processed items per second of wall time: the goodput.
    pub fn goodput(&self) -> f64 {
        self.processed as f64 / self.wall.as_secs_f64()
    }

    /// Items taken (queued or shed) per second of intake time.
    pub fn intake_rate(&self) -> f64 {
        self.taken as f64 / self.intake.as_secs_f64()
    }

    /// Intake time per shed item.
    pub fn ns_per_shed(&self) -> f64 {
        self.intake.as_nanos() as f64 / self.dropped.max(1) as f64
    }

    /// Cores this run kept busy on average.
    pub fn cores(&self) -> f64 {
        self.cpu.as_secs_f64() / self.wall.as_secs_f64()
    }

    /// Run-queue wait as a share of wall time (summed over threads, so it
    /// can exceed 1): how much other load on the machine held this run back.
    pub fn contention(&self) -> f64 {
        self.waited.as_secs_f64() / self.wall.as_secs_f64()
    }
}

pub fn multi_thread() -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn current_thread() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Runs `scenario` as a spawned task and waits for it.
pub fn run_on<F>(runtime: &Runtime, scenario: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime
        .block_on(runtime.spawn(scenario))
        .expect("scenario panicked")
}

/// `0..n`, recording the instant it returns `None` in `done`.
fn timed_source(n: u64, done: Arc<OnceLock<Instant>>) -> impl Stream<Item = u64> + Send {
    stream::iter(0..n).chain(stream::poll_fn(move |_| {
        let _ = done.set(Instant::now());
        Poll::Ready(None)
    }))
}

// ===== busy work =====

/// `iterations` rounds of integer arithmetic the optimiser cannot skip.
#[inline(never)]
pub fn spin(iterations: u64) -> u64 {
    let mut x = black_box(0x9E37_79B9_7F4A_7C15u64);
    for _ in 0..iterations {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    black_box(x)
}

/// Iterations of [`spin`] per nanosecond on this machine: the fastest of 25
/// short probes, since on a shared machine a probe can only be slowed down.
pub fn calibrate() -> f64 {
    const PROBE: u64 = 200_000;
    (0..25)
        .map(|_| {
            let start = Instant::now();
            spin(PROBE);
            PROBE as f64 / start.elapsed().as_nanos() as f64
        })
        .fold(0.0, f64::max)
}

/// Iterations of [`spin`] that take about `ns` nanoseconds.
pub fn iterations_for(ns: u64, per_ns: f64) -> u64 {
    (ns as f64 * per_ns).round() as u64
}

// ===== this crate =====

/// This crate: `0..n` through [`WORKERS`] workers and a queue of `capacity`.
pub async fn crate_run<F, Fut>(n: u64, capacity: usize, policy: ShedPolicy, handler: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    crate_run_workers(WORKERS, n, capacity, policy, handler).await
}

/// This crate: `0..n` through `workers` workers and a queue of `capacity`.
pub async fn crate_run_workers<F, Fut>(
    workers: usize,
    n: u64,
    capacity: usize,
    policy: ShedPolicy,
    handler: F,
) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    let config = FanOutConfig::new(workers, policy).capacity(capacity);
    crate_run_config(n, config, handler).await
}

/// This crate keyed by `x % keys` (`FanOutConfig::key_by`): the cost of
/// keying, against [`crate_run`] (the same run otherwise).
pub async fn crate_keyed_run<F, Fut>(
    n: u64,
    capacity: usize,
    policy: ShedPolicy,
    keys: u64,
    handler: F,
) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    crate_keyed_run_by(n, capacity, policy, move |x| x % keys, handler).await
}

/// This crate keyed by `key`.
async fn crate_keyed_run_by<F, Fut>(
    n: u64,
    capacity: usize,
    policy: ShedPolicy,
    key: impl Fn(&u64) -> u64 + Send + Sync + 'static,
    handler: F,
) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    let config = FanOutConfig::new(WORKERS, policy)
        .capacity(capacity)
        .key_by(key);
    crate_run_config(n, config, handler).await
}

/// Keys in the mix of the skewed feed of issue 19
/// (`examples/keyed_feed.rs`): half the items on one
/// hot key (0), half on 1,000 cold keys with Zipf weights (key `k` with
/// weight `1/k`), drawn once from a fixed seed, so the key function is a
/// table lookup as cheap as `x % keys`.
pub fn skewed_keys() -> Arc<[u64]> {
    const COLD: u32 = 1_000;
    let mut weights = Vec::with_capacity(COLD as usize);
    let mut total = 0.0;
    for k in 1..=COLD {
        total += 1.0 / f64::from(k);
        weights.push(total);
    }
    // splitmix64 (Steele, Lea and Flood, OOPSLA 2014), a fixed seed.
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    (0..SKEWED_KEYS)
        .map(|_| {
            if next() % 2 == 0 {
                return 0;
            }
            let draw = (next() % 1_000_000) as f64 / 1_000_000.0 * total;
            1 + weights.partition_point(|w| *w < draw) as u64
        })
        .collect()
}

/// Items `x` take key `skewed_keys()[x % SKEWED_KEYS]`.
pub const SKEWED_KEYS: usize = 4_096;

/// [`crate_keyed_run`] with the keys of [`skewed_keys`].
pub async fn crate_skewed_run<F, Fut>(
    n: u64,
    capacity: usize,
    policy: ShedPolicy,
    handler: F,
) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    let keys = skewed_keys();
    let key = move |x: &u64| keys[*x as usize % SKEWED_KEYS];
    crate_keyed_run_by(n, capacity, policy, key, handler).await
}

/// This crate: `0..n` through a pipeline configured by `config`, every
/// result read by one consumer.
async fn crate_run_config<F, Fut>(n: u64, config: FanOutConfig<u64>, handler: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    let done = Arc::new(OnceLock::new());
    let start = Instant::now();
    let (results, shutdown) = timed_source(n, done.clone()).bounded_fan_out_with(config, handler);
    let consume = results.fold(0u64, |count, output| {
        black_box(output);
        async move { count + 1 }
    });
    let (received, report) = tokio::join!(consume, shutdown.join());
    let wall = start.elapsed();
    assert!(report.is_conserved(), "{report}");
    assert_eq!(received, report.processed, "results received vs processed");
    Run {
        wall,
        intake: *done.get().expect("input exhausted") - start,
        taken: report.produced,
        processed: report.processed,
        dropped: report.dropped,
        ..Run::default()
    }
}

/// The hand-rolled fan-out's back half: `async_channel::bounded(capacity)`
/// into `workers` tasks that run the handler and send each result through a
/// bounded tokio mpsc of [`OUTPUT_CAPACITY`]. Returns the input's sender,
/// the results' receiver and the worker tasks.
fn channel_workers<F, Fut>(
    workers: usize,
    capacity: usize,
    handler: F,
) -> (
    async_channel::Sender<u64>,
    mpsc::Receiver<u64>,
    Vec<tokio::task::JoinHandle<()>>,
)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    let (to_workers, from_producer) = async_channel::bounded::<u64>(capacity);
    let (to_consumer, results) = mpsc::channel::<u64>(OUTPUT_CAPACITY);
    let handler = Arc::new(handler);
    let tasks = (0..workers)
        .map(|_| {
            let input = from_producer.clone();
            let output = to_consumer.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                while let Ok(item) = input.recv().await {
                    let _ = output.send(handler(item).await).await;
                }
            })
        })
        .collect();
    (to_workers, results, tasks)
}

// ===== anchor: async-channel fan-out (lossless, backpressured) =====

/// A hand-rolled fan-out: a producer task sends `0..n` into
/// `async_channel::bounded(capacity)`, [`WORKERS`] worker tasks receive, run
/// the handler and send results through a bounded tokio mpsc to the consumer.
pub async fn channel_run<F, Fut>(n: u64, capacity: usize, handler: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    channel_run_workers(WORKERS, n, capacity, handler).await
}

/// [`channel_run`] with `workers` worker tasks.
pub async fn channel_run_workers<F, Fut>(workers: usize, n: u64, capacity: usize, handler: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    let done = Arc::new(OnceLock::new());
    let start = Instant::now();
    let (to_workers, mut results, tasks) = channel_workers(workers, capacity, handler);
    let source = timed_source(n, done.clone());
    let producer = tokio::spawn(async move {
        let mut source = pin!(source);
        while let Some(item) = source.next().await {
            to_workers.send(item).await.expect("workers alive");
        }
    });
    let mut processed = 0u64;
    while let Some(output) = results.recv().await {
        black_box(output);
        processed += 1;
    }
    producer.await.expect("producer");
    for worker in tasks {
        worker.await.expect("worker");
    }
    let wall = start.elapsed();
    assert_eq!(processed, n, "the channel fan-out is lossless");
    Run {
        wall,
        intake: *done.get().expect("input exhausted") - start,
        taken: n,
        processed,
        dropped: 0,
        ..Run::default()
    }
}

// ===== the push front, and its anchor =====

/// Offers a pushing task makes between yields, in both push contenders: a
/// producer that never yields would starve a current-thread runtime's
/// workers.
pub const OFFERS_PER_YIELD: u64 = 32;

/// This crate's push front: a task offers `0..n` through
/// `Feeder::offer` (shedding by `policy` when the queue of `capacity` is
/// full) to [`WORKERS`] workers, and drops the feeder, which ends intake.
pub async fn feeder_run<F, Fut>(n: u64, capacity: usize, policy: ShedPolicy, handler: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    let start = Instant::now();
    let config = FanOutConfig::new(WORKERS, policy).capacity(capacity);
    let (feeder, results, shutdown) = backpressure_pipeline::feeder(config, handler);
    let producer = tokio::spawn(async move {
        for item in 0..n {
            let _ = black_box(feeder.offer(item));
            if item % OFFERS_PER_YIELD == OFFERS_PER_YIELD - 1 {
                tokio::task::yield_now().await;
            }
        }
        Instant::now()
    });
    let consume = results.fold(0u64, |count, output| {
        black_box(output);
        async move { count + 1 }
    });
    let (received, report) = tokio::join!(consume, shutdown.join());
    let wall = start.elapsed();
    let intake_done = producer.await.expect("producer");
    assert!(report.is_conserved(), "{report}");
    assert_eq!(received, report.processed, "results received vs processed");
    assert_eq!(report.produced, n, "every offer counted");
    Run {
        wall,
        intake: intake_done - start,
        taken: report.produced,
        processed: report.processed,
        dropped: report.dropped,
        ..Run::default()
    }
}

/// The hand-rolled push equivalent of [`feeder_run`] under `DropNewest`: a
/// task `try_send`s `0..n` into `async_channel::bounded(capacity)`, dropping
/// what finds it full, and [`WORKERS`] worker tasks receive, run the handler
/// and send results through a bounded tokio mpsc to the consumer.
pub async fn channel_offer_run<F, Fut>(n: u64, capacity: usize, handler: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    let start = Instant::now();
    let (to_workers, mut results, tasks) = channel_workers(WORKERS, capacity, handler);
    let producer = tokio::spawn(async move {
        let mut dropped = 0u64;
        for item in 0..n {
            if let Err(full) = to_workers.try_send(item) {
                black_box(full);
                dropped += 1;
            }
            if item % OFFERS_PER_YIELD == OFFERS_PER_YIELD - 1 {
                tokio::task::yield_now().await;
            }
        }
        (Instant::now(), dropped)
    });
    let mut processed = 0u64;
    while let Some(output) = results.recv().await {
        black_box(output);
        processed += 1;
    }
    let (intake_done, dropped) = producer.await.expect("producer");
    for worker in tasks {
        worker.await.expect("worker");
    }
    let wall = start.elapsed();
    assert_eq!(processed + dropped, n, "every offer processed or dropped");
    Run {
        wall,
        intake: intake_done - start,
        taken: n,
        processed,
        dropped,
        ..Run::default()
    }
}

// ===== anchor: futures' buffer_unordered (one task) =====

pub async fn buffer_unordered_run<F, Fut>(n: u64, handler: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    let start = Instant::now();
    let processed = stream::iter(0..n)
        .map(handler)
        .buffer_unordered(WORKERS)
        .fold(0u64, |count, output| {
            black_box(output);
            async move { count + 1 }
        })
        .await;
    let wall = start.elapsed();
    Run {
        wall,
        intake: wall,
        taken: n,
        processed,
        dropped: 0,
        ..Run::default()
    }
}

// ===== reference: the bare Semaphore + Mutex<VecDeque> design =====

/// The crate's hand-off design with nothing else: same batching (32 items per
/// lock, one `add_permits`), same permit discipline, same yield per batch, but
/// no counters, hooks, stats, panic isolation, cancellation tokens or
/// supervisor. The gap to it is what the accounting and the contract cost.
struct BareQueue {
    ready: Semaphore,
    items: Mutex<VecDeque<u64>>,
    capacity: usize,
    policy: ShedPolicy,
}

impl BareQueue {
    fn push_batch(&self, batch: &mut Vec<u64>, shed: &mut Vec<u64>) {
        let added = {
            let mut items = self.items.lock().unwrap();
            let before = items.len();
            for item in batch.drain(..) {
                if items.len() < self.capacity {
                    items.push_back(item);
                } else if matches!(self.policy, ShedPolicy::DropNewest) {
                    shed.push(item);
                } else {
                    shed.extend(items.pop_front());
                    items.push_back(item);
                }
            }
            items.len() - before
        };
        if added > 0 {
            self.ready.add_permits(added);
        }
    }

    async fn take(&self) -> Option<u64> {
        loop {
            let permit = match self.ready.try_acquire() {
                Ok(permit) => Ok(permit),
                Err(_) => self.ready.acquire().await,
            };
            match permit {
                Ok(permit) => {
                    permit.forget();
                    if let Some(item) = self.items.lock().unwrap().pop_front() {
                        return Some(item);
                    }
                }
                // Closed: permits mean nothing any more; drain directly.
                Err(_) => return self.items.lock().unwrap().pop_front(),
            }
        }
    }
}

pub async fn bare_run<F, Fut>(n: u64, capacity: usize, policy: ShedPolicy, handler: F) -> Run
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    let done = Arc::new(OnceLock::new());
    let start = Instant::now();
    let queue = Arc::new(BareQueue {
        ready: Semaphore::new(0),
        items: Mutex::new(VecDeque::with_capacity(capacity)),
        capacity,
        policy,
    });
    let (to_consumer, mut results) = mpsc::channel::<u64>(OUTPUT_CAPACITY);
    let handler = Arc::new(handler);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let queue = queue.clone();
            let output = to_consumer.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                while let Some(item) = queue.take().await {
                    let _ = output.send(handler(item).await).await;
                }
            })
        })
        .collect();
    drop(to_consumer);
    let source = timed_source(n, done.clone());
    let intake = tokio::spawn({
        let queue = queue.clone();
        async move {
            let mut source = pin!(source);
            let mut batch = Vec::with_capacity(BATCH);
            let mut shed = Vec::new();
            loop {
                let ended = poll_fn(|cx| {
                    while batch.len() < BATCH {
                        match source.as_mut().poll_next(cx) {
                            Poll::Ready(Some(item)) => batch.push(item),
                            Poll::Ready(None) => return Poll::Ready(true),
                            Poll::Pending if batch.is_empty() => return Poll::Pending,
                            Poll::Pending => return Poll::Ready(false),
                        }
                    }
                    Poll::Ready(false)
                })
                .await;
                queue.push_batch(&mut batch, &mut shed);
                shed.clear();
                if ended {
                    queue.ready.close();
                    return;
                }
                tokio::task::coop::consume_budget().await;
            }
        }
    });
    let mut processed = 0u64;
    while let Some(output) = results.recv().await {
        black_box(output);
        processed += 1;
    }
    intake.await.expect("intake");
    for worker in workers {
        worker.await.expect("worker");
    }
    let wall = start.elapsed();
    Run {
        wall,
        intake: *done.get().expect("input exhausted") - start,
        taken: n,
        processed,
        dropped: n - processed,
        ..Run::default()
    }
}

// ===== the scenarios =====

/// Bench 1: trivial handler.
pub async fn double(x: u64) -> u64 {
    x * 2
}

/// Bench 3: a worker that sleeps 1 ms per item.
pub async fn sleepy(x: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(1)).await;
    x
}

/// Benches 2 and 5: a handler doing `iterations` rounds of [`spin`].
pub fn busy(iterations: u64) -> impl Fn(u64) -> std::future::Ready<u64> + Send + Sync + Copy {
    move |x| std::future::ready(spin(iterations) ^ x)
}

// ===== bench 6: freshness =====

/// Ages (in sequence numbers) of the items handled while the input was
/// still running: how many newer items had been taken from the input when
/// the handler started on this one.
pub async fn freshness_crate(n: u64, iterations: u64) -> Vec<u64> {
    let yielded = Arc::new(AtomicU64::new(0));
    let source = counted_source(n, yielded.clone());
    let config = FanOutConfig::new(WORKERS, ShedPolicy::DropOldest).capacity(CAPACITY);
    let (results, shutdown) =
        source.bounded_fan_out_with(config, move |seq| age_handler(seq, &yielded, n, iterations));
    let (ages, report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
    assert!(report.is_conserved(), "{report}");
    ages.into_iter().flatten().collect()
}

/// The same measurement on the lossless async-channel fan-out.
pub async fn freshness_channel(n: u64, iterations: u64) -> Vec<u64> {
    let yielded = Arc::new(AtomicU64::new(0));
    let (to_workers, from_producer) = async_channel::bounded::<u64>(CAPACITY);
    let (to_consumer, mut results) = mpsc::channel(OUTPUT_CAPACITY);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let input = from_producer.clone();
            let output = to_consumer.clone();
            let yielded = yielded.clone();
            tokio::spawn(async move {
                while let Ok(seq) = input.recv().await {
                    let _ = output
                        .send(age_handler(seq, &yielded, n, iterations).await)
                        .await;
                }
            })
        })
        .collect();
    drop((from_producer, to_consumer));
    let source = counted_source(n, yielded);
    let producer = tokio::spawn(async move {
        let mut source = pin!(source);
        while let Some(seq) = source.next().await {
            to_workers.send(seq).await.expect("workers alive");
        }
    });
    let mut ages = Vec::new();
    while let Some(age) = results.recv().await {
        ages.extend(age);
    }
    producer.await.expect("producer");
    for worker in workers {
        worker.await.expect("worker");
    }
    ages
}

/// `0..n`, publishing how many items it has yielded.
fn counted_source(n: u64, yielded: Arc<AtomicU64>) -> impl Stream<Item = u64> + Send {
    stream::iter(0..n).inspect(move |seq| yielded.store(seq + 1, Relaxed))
}

fn age_handler(
    seq: u64,
    yielded: &AtomicU64,
    n: u64,
    iterations: u64,
) -> std::future::Ready<Option<u64>> {
    let taken = yielded.load(Relaxed);
    spin(iterations);
    // Once the input has ended nothing newer arrives: not a steady state.
    std::future::ready((taken < n).then(|| taken - 1 - seq))
}

/// Items per crossover run (bench 5): about 10 ms of handler work.
pub fn crossover_items(cost_ns: u64) -> u64 {
    (10_000_000 / (cost_ns + 50)).clamp(2_500, 200_000)
}

/// The `q`-quantile (0..=1) of sorted `values`.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

// ===== fairness on one thread =====

/// What a heartbeat task saw while a pipeline ran beside it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Fairness {
    /// Times the heartbeat ran (it loops on `yield_now`) until the last
    /// result was read.
    pub beats: u64,
    /// The most items pulled from the input between two beats.
    pub max_gap: u64,
    /// Items processed (results read by the consumer).
    pub processed: u64,
    /// Wall time from the start to the last result read.
    pub wall: Duration,
}

/// A heartbeat that loops on `yield_now`, counting its beats and the largest
/// number of items `pulled` between two of them, until `stop` is set.
async fn heartbeat(pulled: Arc<AtomicU64>, stop: Arc<std::sync::atomic::AtomicBool>) -> (u64, u64) {
    let (mut beats, mut max_gap, mut last) = (0u64, 0u64, 0u64);
    while !stop.load(Relaxed) {
        tokio::task::yield_now().await;
        beats += 1;
        let now = pulled.load(Relaxed);
        max_gap = max_gap.max(now - last);
        last = now;
    }
    (beats, max_gap)
}

/// The fairness scenario on a current-thread runtime, as `#[tokio::test]`
/// runs it: `0..n` through this crate (2 workers, capacity 16, DropNewest,
/// trivial handler), the consumer in the `block_on` future, and a heartbeat
/// task beside it.
pub fn fairness_crate(runtime: &Runtime, n: u64) -> Fairness {
    runtime.block_on(async move {
        let pulled = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let beat = tokio::spawn(heartbeat(pulled.clone(), stop.clone()));
        let start = Instant::now();
        let source = counted_source(n, pulled);
        let config = FanOutConfig::new(2, ShedPolicy::DropNewest).capacity(CAPACITY);
        let (results, shutdown) = source.bounded_fan_out_with(config, double);
        let (processed, report) = tokio::join!(results.count(), shutdown.join());
        let wall = start.elapsed();
        stop.store(true, Relaxed);
        let (beats, max_gap) = beat.await.expect("heartbeat");
        assert!(report.is_conserved(), "{report}");
        Fairness {
            beats,
            max_gap,
            processed: processed as u64,
            wall,
        }
    })
}

/// The same scenario through the hand-rolled async-channel fan-out
/// (lossless: it back-pressures the input instead of shedding).
pub fn fairness_channel(runtime: &Runtime, n: u64) -> Fairness {
    runtime.block_on(async move {
        let pulled = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let beat = tokio::spawn(heartbeat(pulled.clone(), stop.clone()));
        let start = Instant::now();
        let (to_workers, from_producer) = async_channel::bounded::<u64>(CAPACITY);
        let (to_consumer, mut results) = mpsc::channel::<u64>(OUTPUT_CAPACITY);
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let input = from_producer.clone();
                let output = to_consumer.clone();
                tokio::spawn(async move {
                    while let Ok(item) = input.recv().await {
                        let _ = output.send(double(item).await).await;
                    }
                })
            })
            .collect();
        drop((from_producer, to_consumer));
        let source = counted_source(n, pulled);
        let producer = tokio::spawn(async move {
            let mut source = pin!(source);
            while let Some(item) = source.next().await {
                to_workers.send(item).await.expect("workers alive");
            }
        });
        let mut processed = 0u64;
        while let Some(output) = results.recv().await {
            black_box(output);
            processed += 1;
        }
        let wall = start.elapsed();
        producer.await.expect("producer");
        for worker in workers {
            worker.await.expect("worker");
        }
        stop.store(true, Relaxed);
        let (beats, max_gap) = beat.await.expect("heartbeat");
        Fairness {
            beats,
            max_gap,
            processed,
            wall,
        }
    })
}
