//! Issue 4's benches 1, 2, 3, 5 and 6: this crate and its anchors side by
//! side, one criterion group per question. Bench 4 (memory) is
//! `examples/memory.rs`; the interleaved ratios quoted in BENCHMARKS.md come
//! from `examples/ratios.rs`, which runs the same contenders (`common/`)
//! alternately, because this shared machine's speed drifts between groups.
//!
//! Where a contender sheds, criterion's time is *normalised to processed
//! items*: an iteration reports `wall × n / processed`, so the throughput
//! criterion prints (`n` elements per iteration) is processed items per
//! second, the goodput, and shed items earn nothing.
//!
//! `cargo bench --bench fan_out` (about two minutes); one group with e.g.
//! `cargo bench --bench fan_out -- 1_goodput`.

mod common;

use std::cell::RefCell;
use std::time::Duration;

use backpressure_pipeline::ShedPolicy;
use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use tokio::runtime::Runtime;

use common::{
    CAPACITY, Run, bare_run, buffer_unordered_run, busy, calibrate, channel_run, crate_run,
    crossover_items, current_thread, double, freshness_channel, freshness_crate, iterations_for,
    multi_thread, quantile, run_on, sleepy,
};

/// Bench 1: items per iteration.
const GOODPUT_ITEMS: u64 = 1_000_000;
/// Bench 2: items per iteration (about 40 ms of handler work).
const SPEEDUP_ITEMS: u64 = 20_000;
/// Bench 3: issue 4 says 5M items; 1M here keeps an iteration near 50 ms.
/// `examples/ratios.rs` runs the full 5M.
const OVERLOAD_ITEMS: u64 = 1_000_000;
/// Bench 5: handler costs swept, in ns of busy work per item.
const CROSSOVER_COSTS: [u64; 7] = [0, 250, 500, 1_000, 2_000, 4_000, 8_000];
/// Bench 6: items per run and the handler's busy work.
const FRESHNESS_ITEMS: u64 = 1_000_000;
/// The lossless anchor handles every item (5 µs each), so it gets fewer.
const FRESHNESS_CHANNEL_ITEMS: u64 = 50_000;
const FRESHNESS_HANDLER_NS: u64 = 5_000;

/// Runs `iters` scenarios and sums their times as `measure` reports them.
fn total(iters: u64, mut one: impl FnMut() -> Run, measure: impl Fn(&Run) -> Duration) -> Duration {
    (0..iters).map(|_| measure(&one())).sum()
}

/// Wall time scaled to `n` processed items (see the module docs).
fn per_processed(n: u64) -> impl Fn(&Run) -> Duration {
    move |run| run.wall.mul_f64(n as f64 / run.processed.max(1) as f64)
}

fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    elements: u64,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Elements(elements));
    group
}

/// One contender of a goodput group: `scenario` run on `rt`, its time
/// normalised to `n` processed items.
fn contender<F: std::future::Future<Output = Run> + Send + 'static>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    rt: &Runtime,
    n: u64,
    scenario: impl Fn() -> F,
) {
    g.bench_function(name, |b| {
        b.iter_custom(|iters| total(iters, || run_on(rt, scenario()), per_processed(n)))
    });
}

/// Bench 1: Goodput under saturation: trivial handler, 1M items, DropNewest.
fn goodput(c: &mut Criterion, rt: &Runtime) {
    let n = GOODPUT_ITEMS;
    let mut g = group(c, "1_goodput_trivial", n);
    g.measurement_time(Duration::from_secs(3));
    contender(&mut g, "this_crate_drop_newest", rt, n, || {
        crate_run(n, CAPACITY, ShedPolicy::DropNewest, double)
    });
    contender(&mut g, "async_channel_lossless", rt, n, || {
        channel_run(n, CAPACITY, double)
    });
    contender(&mut g, "this_crate_backpressure_lossless", rt, n, || {
        crate_run(n, CAPACITY, ShedPolicy::Backpressure, double)
    });
    contender(&mut g, "bare_queue_drop_newest", rt, n, || {
        bare_run(n, CAPACITY, ShedPolicy::DropNewest, double)
    });
    g.finish();
}

/// Bench 2: Parallel speedup with a ~2 µs CPU-bound handler.
fn speedup(c: &mut Criterion, rt: &Runtime, per_ns: f64) {
    let n = SPEEDUP_ITEMS;
    let handler = busy(iterations_for(2_000, per_ns));
    let mut g = group(c, "2_speedup_2us", n);
    // The whole burst fits the queue: nothing is shed, both sides do all
    // `n` items, and the ratio is the parallelism alone.
    contender(&mut g, "this_crate_burst_fits", rt, n, || {
        crate_run(n, n as usize, ShedPolicy::DropNewest, handler)
    });
    // Capacity 16 under a producer that outruns the workers: goodput.
    contender(&mut g, "this_crate_cap16_goodput", rt, n, || {
        crate_run(n, CAPACITY, ShedPolicy::DropNewest, handler)
    });
    contender(&mut g, "buffer_unordered_4", rt, n, || {
        buffer_unordered_run(n, handler)
    });
    g.finish();
}

/// Bench 3: Intake under overload: workers sleep 1 ms, DropOldest; items taken
/// (queued or shed) per second of intake, this crate vs the bare design.
fn overload(c: &mut Criterion, rt: &Runtime, flavor: &str) {
    let n = OVERLOAD_ITEMS;
    let intake = |run: &Run| run.intake;
    let mut g = group(c, &format!("3_intake_overload_{flavor}"), n);
    g.bench_function("this_crate_drop_oldest", |b| {
        b.iter_custom(|iters| {
            let one = || run_on(rt, crate_run(n, CAPACITY, ShedPolicy::DropOldest, sleepy));
            total(iters, one, intake)
        })
    });
    g.bench_function("bare_queue_drop_oldest", |b| {
        b.iter_custom(|iters| {
            let one = || run_on(rt, bare_run(n, CAPACITY, ShedPolicy::DropOldest, sleepy));
            total(iters, one, intake)
        })
    });
    g.finish();
}

/// Bench 5: Crossover: handler cost swept, this crate (burst fits) vs buffer_unordered.
fn crossover(c: &mut Criterion, rt: &Runtime, per_ns: f64) {
    let mut g = c.benchmark_group("5_crossover");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    for cost in CROSSOVER_COSTS {
        let n = crossover_items(cost);
        let handler = busy(iterations_for(cost, per_ns));
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("this_crate", cost), &cost, |b, _| {
            b.iter_custom(|iters| {
                let one = || {
                    run_on(
                        rt,
                        crate_run(n, n as usize, ShedPolicy::DropNewest, handler),
                    )
                };
                total(iters, one, per_processed(n))
            })
        });
        g.bench_with_input(
            BenchmarkId::new("buffer_unordered_4", cost),
            &cost,
            |b, _| {
                b.iter_custom(|iters| {
                    let one = || run_on(rt, buffer_unordered_run(n, handler));
                    total(iters, one, per_processed(n))
                })
            },
        );
    }
    g.finish();
}

/// Bench 6: Freshness under DropOldest: the runs' wall time is what criterion
/// shows; the ages (the point of this bench) are printed after the group.
fn freshness(c: &mut Criterion, rt: &Runtime, per_ns: f64) {
    let n = FRESHNESS_ITEMS;
    let iterations = iterations_for(FRESHNESS_HANDLER_NS, per_ns);
    let crate_ages = RefCell::new(Vec::new());
    let channel_ages = RefCell::new(Vec::new());
    // No throughput: the two sides handle different item counts, and the
    // ages printed below are the result, not the time.
    let mut g = c.benchmark_group("6_freshness_drop_oldest");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    g.bench_function("this_crate", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                let ages = run_on(rt, freshness_crate(n, iterations));
                crate_ages.borrow_mut().extend(ages);
            }
            start.elapsed()
        })
    });
    g.bench_function("async_channel_lossless", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            for _ in 0..iters {
                let ages = run_on(rt, freshness_channel(FRESHNESS_CHANNEL_ITEMS, iterations));
                channel_ages.borrow_mut().extend(ages);
            }
            start.elapsed()
        })
    });
    g.finish();
    let bound = CAPACITY + common::WORKERS;
    for (name, ages) in [
        ("this_crate", crate_ages),
        ("async_channel_lossless", channel_ages),
    ] {
        let mut ages = ages.into_inner();
        if ages.is_empty() {
            continue; // the group was filtered out
        }
        ages.sort_unstable();
        println!(
            "6_freshness_drop_oldest/{name}: age p50 {} p99 {} max {} over {} items \
             (bound capacity + workers = {bound})",
            quantile(&ages, 0.5),
            quantile(&ages, 0.99),
            ages.last().copied().unwrap_or(0),
            ages.len(),
        );
    }
}

fn benches(c: &mut Criterion) {
    let per_ns = calibrate();
    println!("busy work: {per_ns:.3} spin iterations per ns");
    let mt = multi_thread();
    goodput(c, &mt);
    speedup(c, &mt, per_ns);
    overload(c, &mt, "multi_thread");
    overload(c, &current_thread(), "current_thread");
    crossover(c, &mt, per_ns);
    freshness(c, &mt, per_ns);
}

criterion_group! {
    name = fan_out;
    // Plots cost about 7 s per bench on this machine, more than the
    // measurement; the numbers are on stdout and in target/criterion.
    config = Criterion::default().without_plots();
    targets = benches
}
criterion_main!(fan_out);
