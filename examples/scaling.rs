//! The scaling table: this crate against the hand-rolled async-channel
//! fan-out over worker count × queue capacity × handler cost.
//!
//! Both sides are lossless (the crate runs `ShedPolicy::Backpressure`), so
//! both handle every item and do the same work; a cell is the median of the
//! per-round goodput ratio crate ÷ async-channel, rounds interleaved (A B,
//! B A, ...), with the crate's median goodput in parentheses. The
//! contenders are the criterion bench's own (`benches/common/`), on one
//! 2-thread multi-thread runtime.
//!
//! ```text
//! cargo run --release --example scaling                        # the whole table, 3 rounds
//! cargo run --release --example scaling -- --rounds 5 --workers 1,4 --capacity 16 --costs 0,2000
//! ```

#[path = "../benches/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use backpressure_pipeline::ShedPolicy;
use tokio::runtime::Runtime;

use common::{
    Run, busy, calibrate, channel_run_workers, crate_run_workers, double, iterations_for,
    multi_thread, run_on,
};

const WORKERS: [usize; 6] = [1, 2, 4, 8, 16, 64];
const CAPACITIES: [usize; 3] = [1, 16, 1024];
const COSTS: [u64; 4] = [0, 500, 2_000, 8_000];
/// A round in which either side waited for a core more than this share of
/// its wall time (summed over threads) is contended; its cell gets a `*`.
const QUIET: f64 = 0.10;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut rounds, mut workers, mut capacities, mut costs) =
        (3, WORKERS.to_vec(), CAPACITIES.to_vec(), COSTS.to_vec());
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--rounds" => rounds = value.parse().expect("--rounds N"),
            "--workers" => workers = list(&value),
            "--capacity" => capacities = list(&value),
            "--costs" => costs = list(&value),
            other => panic!("unknown flag {other:?}; known: --rounds --workers --capacity --costs"),
        }
    }
    assert!(rounds > 0, "--rounds must be at least 1");
    let per_ns = calibrate();
    let mt = multi_thread();
    println!(
        "# scaling: this crate (ShedPolicy::Backpressure: lossless) vs the async-channel fan-out \
         (lossless): both handle every item and do the same work. {rounds} interleaved rounds per \
         cell; 2-thread multi-thread runtime; busy work {per_ns:.3} iterations/ns; load average \
         before: {}",
        loadavg()
    );
    println!(
        "# cell: median per-round goodput ratio crate ÷ async-channel (crate's median items/s); \
         * = a round waited for a core > {:.0}% of its wall time",
        100.0 * QUIET
    );
    println!(
        "# items per run: {}",
        costs
            .iter()
            .map(|&c| format!("{c} ns → {}", items(c)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    print!("\n| workers | capacity |");
    for cost in &costs {
        print!(" handler {cost} ns |");
    }
    print!("\n|---|---|");
    for _ in &costs {
        print!("---|");
    }
    println!();
    let started = Instant::now();
    for &w in &workers {
        for &capacity in &capacities {
            print!("| {w} | {capacity} |");
            for &cost in &costs {
                let n = items(cost);
                let cell = if cost == 0 {
                    cell(&mt, rounds, w, n, capacity, double)
                } else {
                    cell(
                        &mt,
                        rounds,
                        w,
                        n,
                        capacity,
                        busy(iterations_for(cost, per_ns)),
                    )
                };
                print!(" {cell} |");
            }
            println!();
        }
    }
    println!(
        "\n# took {:.0} s; load average after: {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}

/// Items per run: about 30 ms of one core's handler work plus hand-off.
fn items(cost_ns: u64) -> u64 {
    (30_000_000 / (cost_ns + 150)).clamp(5_000, 300_000)
}

fn list<T: std::str::FromStr>(value: &str) -> Vec<T> {
    value
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("bad list item {v:?}"))
        })
        .collect()
}

/// One cell: crate and channel alternately (after one untimed warm-up each).
fn cell<F, Fut>(
    rt: &Runtime,
    rounds: usize,
    workers: usize,
    n: u64,
    capacity: usize,
    handler: F,
) -> String
where
    F: Fn(u64) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = u64> + Send + 'static,
{
    let a = || {
        let run = crate_run_workers(workers, n, capacity, ShedPolicy::Backpressure, handler);
        run_on(rt, run)
    };
    let b = || run_on(rt, channel_run_workers(workers, n, capacity, handler));
    a();
    b();
    let (mut ratios, mut goodput, mut contended) = (Vec::new(), Vec::new(), false);
    for round in 0..rounds {
        let (ra, rb) = if round % 2 == 0 {
            let ra = waited(a);
            (ra, waited(b))
        } else {
            let rb = waited(b);
            (waited(a), rb)
        };
        assert_eq!(ra.processed, n, "Backpressure is lossless");
        ratios.push(ra.goodput() / rb.goodput());
        goodput.push(ra.goodput());
        contended |= ra.contention() > QUIET || rb.contention() > QUIET;
    }
    format!(
        "{:.2}×{} ({}/s)",
        median(&ratios),
        if contended { "*" } else { "" },
        human(median(&goodput))
    )
}

/// `one()`, with the run-queue wait of all of the process's threads during
/// it filled in (`/proc/self/task/*/schedstat` field 2).
fn waited(one: impl FnOnce() -> Run) -> Run {
    let wait = || -> u64 {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return 0;
        };
        tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum()
    };
    let before = wait();
    let mut run = one();
    run.waited = Duration::from_nanos(wait().saturating_sub(before));
    run
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else {
        format!("{:.0} k", x / 1e3)
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}
