//! The interleaving driver behind BENCHMARKS.md's ratio table.
//!
//! This machine is shared and its speed drifts every few tens of seconds, so
//! a ratio of two criterion groups measured a minute apart says little. This
//! driver runs the contenders of each target alternately (A B, B A, A B, ...)
//! for N rounds, and quotes min/median/max of each and of the per-round ratio
//! A/B. The contenders are the criterion bench's own (`benches/common/`).
//!
//! ```text
//! cargo run --release --example ratios                  # every target, 15 rounds
//! cargo run --release --example ratios -- --rounds 7 goodput intake-ct
//! cargo run --release --example ratios -- --rounds 5 floor   # cheapest hand-offs
//! cargo run --release --example ratios -- --quiet        # re-run contended rounds
//! cargo run --release --example ratios -- profile crate-goodput 200000
//! cargo run --release --features metrics --example ratios -- profile crate-goodput-ct 200000 --recorder
//! ```
//!
//! Targets: floor, goodput, goodput-bare, goodput-backpressure, goodput-ct,
//! push, push-ct, fairness-ct, keyed-cost, keyed-cost-ct, keyed-cost-skewed,
//! keyed-cost-skewed-ct, speedup, speedup-cap16, intake-mt, intake-ct,
//! crossover, freshness.
//!
//! The `-ct` targets run on a current-thread runtime, which is what
//! `#[tokio::test]` and many small services use: a change that wins on the
//! 2-thread runtime and loses there is not a win. `fairness-ct` runs a
//! heartbeat task (a loop on `yield_now`) beside a 100,000-item burst with
//! the consumer in the `block_on` future, and counts its beats. `profile CONTENDER N` runs one
//! contender once, for `valgrind --tool=callgrind` (see BENCHMARKS.md).
//!
//! `floor` measures the cheapest cross-thread hand-off on this machine: two
//! OS threads spinning on a `ConcurrentQueue::bounded(16)` (no parking, no
//! notification), then tokio's mpsc and async-channel between two tasks on
//! the 2-thread runtime, each quoted against that spin ring.
//!
//! Under each row, `context switches per 1000 items` counts the voluntary and
//! involuntary switches of all of the process's threads during a run
//! (`/proc/self/task/*/status`), per 1000 items processed (taken, for the
//! intake targets). Threads that exit during a run are not counted; the
//! runtime's threads and the floor's spinning threads live for the whole
//! process.

#[path = "../benches/common/mod.rs"]
mod common;

use std::hint::{black_box, spin_loop};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, mpsc as std_mpsc};
use std::thread;
use std::time::{Duration, Instant};

use concurrent_queue::{ConcurrentQueue, PushError};

use backpressure_pipeline::ShedPolicy;
use tokio::runtime::Runtime;

use common::{
    CAPACITY, Fairness, Run, WORKERS, bare_run, buffer_unordered_run, busy, calibrate,
    channel_offer_run, channel_run, crate_keyed_run, crate_run, crate_skewed_run, crossover_items,
    current_thread, double, fairness_channel, fairness_crate, feeder_run, freshness_channel,
    freshness_crate, iterations_for, multi_thread, quantile, run_on, sleepy,
};

const GOODPUT_ITEMS: u64 = 1_000_000;
const SPEEDUP_ITEMS: u64 = 20_000;
const OVERLOAD_ITEMS: u64 = 5_000_000;
const CROSSOVER_COSTS: [u64; 9] = [0, 100, 250, 500, 1_000, 2_000, 4_000, 8_000, 16_000];
const FRESHNESS_ITEMS: u64 = 1_000_000;
/// The lossless anchor handles every item (5 µs each), so it gets fewer.
const FRESHNESS_CHANNEL_ITEMS: u64 = 50_000;
const FRESHNESS_HANDLER_NS: u64 = 5_000;

/// Items per spin-ring round (two spinning OS threads: tens of ns each).
const FLOOR_SPIN_ITEMS: u64 = 2_000_000;
/// Items per round through tokio's mpsc and async-channel between two tasks.
const FLOOR_TASK_ITEMS: u64 = 1_000_000;
/// The floor's channel bound.
const FLOOR_CAPACITY: usize = 16;

/// Items per fairness round (the scenario of the fairness issue).
const FAIRNESS_ITEMS: u64 = 100_000;

const ALL: [&str; 18] = [
    "floor",
    "goodput",
    "goodput-bare",
    "goodput-backpressure",
    "goodput-ct",
    "push",
    "push-ct",
    "fairness-ct",
    "keyed-cost",
    "keyed-cost-ct",
    "keyed-cost-skewed",
    "keyed-cost-skewed-ct",
    "speedup",
    "speedup-cap16",
    "intake-mt",
    "intake-ct",
    "crossover",
    "freshness",
];

struct Env {
    mt: Runtime,
    ct: Runtime,
    per_ns: f64,
    rounds: usize,
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("profile") {
        return profile(&args[1..]);
    }
    if let Some(i) = args.iter().position(|a| a == "--quiet") {
        RETRY_CONTENDED.store(true, Relaxed);
        args.remove(i);
    }
    let mut rounds = 15;
    if let Some(i) = args.iter().position(|a| a == "--rounds") {
        rounds = args[i + 1].parse().expect("--rounds N");
        args.drain(i..=i + 1);
    }
    let targets: Vec<&str> = if args.is_empty() {
        ALL.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    let per_ns = calibrate();
    let env = Env {
        mt: multi_thread(),
        ct: current_thread(),
        per_ns,
        rounds,
    };
    println!(
        "# {rounds} interleaved rounds per target{}; busy work {per_ns:.3} iterations/ns; \
         load average before: {}",
        if RETRY_CONTENDED.load(Relaxed) {
            " (contended rounds re-run)"
        } else {
            ""
        },
        loadavg()
    );
    println!(
        "| target | this crate | anchor | ratio median | min | max | quiet rounds (n) | cores used | run-queue wait | target |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let started = Instant::now();
    for target in targets {
        match target {
            "floor" => floor(&env),
            "goodput" => goodput(&env, "channel"),
            "goodput-bare" => goodput(&env, "bare"),
            "goodput-backpressure" => goodput(&env, "backpressure"),
            "goodput-ct" => goodput_ct(&env),
            "push" => push(&env, &env.mt, "multi-thread"),
            "push-ct" => push(&env, &env.ct, "current-thread"),
            "fairness-ct" => fairness_ct(&env),
            "keyed-cost" => keyed_cost(&env, false, false),
            "keyed-cost-ct" => keyed_cost(&env, true, false),
            "keyed-cost-skewed" => keyed_cost(&env, false, true),
            "keyed-cost-skewed-ct" => keyed_cost(&env, true, true),
            "speedup" => speedup(&env, false),
            "speedup-cap16" => speedup(&env, true),
            "intake-mt" => intake(&env, &env.mt, "multi-thread"),
            "intake-ct" => intake(&env, &env.ct, "current-thread"),
            "crossover" => crossover(&env),
            "freshness" => freshness(&env),
            other => panic!("unknown target {other:?}; known: {ALL:?}"),
        }
    }
    println!(
        "\n# took {:.0} s; load average after: {}",
        started.elapsed().as_secs_f64(),
        loadavg()
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ===== interleaving =====

/// Min, median and max of `values`.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// Scheduler counters summed over all of this process's threads so far.
#[derive(Clone, Copy, Default)]
struct Sched {
    /// CPU time, ns (`schedstat` field 1).
    cpu: u64,
    /// Run-queue wait, ns (`schedstat` field 2).
    wait: u64,
    /// Times a thread was put on a CPU (`schedstat` field 3).
    slices: u64,
    /// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` (`status`).
    switches: u64,
}

/// [`Sched`] from `/proc/self/task/*/{schedstat,status}` (zeros where they
/// are unavailable).
fn schedstat() -> Sched {
    let mut total = Sched::default();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return total;
    };
    for task in tasks.flatten() {
        if let Ok(line) = std::fs::read_to_string(task.path().join("schedstat")) {
            let mut fields = line
                .split_whitespace()
                .map(|f| f.parse::<u64>().unwrap_or(0));
            total.cpu += fields.next().unwrap_or(0);
            total.wait += fields.next().unwrap_or(0);
            total.slices += fields.next().unwrap_or(0);
        }
        if let Ok(status) = std::fs::read_to_string(task.path().join("status")) {
            total.switches += status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
                })
                .filter_map(|v| v.trim().parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    total
}

/// `one()`, with the CPU time, run-queue wait and context switches it caused
/// filled in (switches from `status`, or `schedstat`'s count of times on a
/// CPU where `status` has none).
fn measured(one: &mut impl FnMut() -> Run) -> Run {
    let before = schedstat();
    let mut run = one();
    let after = schedstat();
    run.cpu = Duration::from_nanos(after.cpu.saturating_sub(before.cpu));
    run.waited = Duration::from_nanos(after.wait.saturating_sub(before.wait));
    run.switches = if after.switches > 0 {
        after.switches.saturating_sub(before.switches)
    } else {
        after.slices.saturating_sub(before.slices)
    };
    run
}

/// Runs `a` and `b` alternately for `rounds` rounds (after one untimed
/// warm-up round each), swapping who goes first every round. With
/// `--quiet`, a round in which either side waited for a core (see [`QUIET`])
/// is run again, for at most [`RETRY_BUDGET`] per target; the rounds that
/// stay contended are kept and show in the table's quiet count.
fn interleave(
    rounds: usize,
    mut a: impl FnMut() -> Run,
    mut b: impl FnMut() -> Run,
) -> (Vec<Run>, Vec<Run>) {
    a();
    b();
    let retry_until = Instant::now() + RETRY_BUDGET;
    let (mut runs_a, mut runs_b) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        loop {
            let (ra, rb) = if round % 2 == 0 {
                let ra = measured(&mut a);
                (ra, measured(&mut b))
            } else {
                let rb = measured(&mut b);
                (measured(&mut a), rb)
            };
            let quiet = ra.contention() <= QUIET && rb.contention() <= QUIET;
            if quiet || !RETRY_CONTENDED.load(Relaxed) || Instant::now() > retry_until {
                runs_a.push(ra);
                runs_b.push(rb);
                break;
            }
        }
    }
    (runs_a, runs_b)
}

/// Set by `--quiet`: re-run contended rounds (see [`interleave`]).
static RETRY_CONTENDED: AtomicBool = AtomicBool::new(false);
/// How long one target may spend re-running contended rounds.
const RETRY_BUDGET: Duration = Duration::from_secs(30);

/// A round is quiet when neither run waited for a core more than this share
/// of its wall time (summed over threads).
const QUIET: f64 = 0.10;

/// One table row: a metric (higher is better) of both sides and the ratio,
/// over all rounds and over the quiet ones, with the cores each side used
/// and how long it waited for a core (medians).
fn row(
    target: &str,
    goal: &str,
    unit: &str,
    a: &[Run],
    b: &[Run],
    metric: impl Fn(&Run) -> f64,
) -> f64 {
    let ma: Vec<f64> = a.iter().map(&metric).collect();
    let mb: Vec<f64> = b.iter().map(&metric).collect();
    let ratios: Vec<f64> = ma.iter().zip(&mb).map(|(x, y)| x / y).collect();
    let quiet: Vec<f64> = ratios
        .iter()
        .zip(a.iter().zip(b))
        .filter(|(_, (ra, rb))| ra.contention() <= QUIET && rb.contention() <= QUIET)
        .map(|(r, _)| *r)
        .collect();
    let quiet = if quiet.is_empty() {
        "none".to_owned()
    } else {
        format!("{:.2}× ({})", spread(&quiet).1, quiet.len())
    };
    let (_, a_med, _) = spread(&ma);
    let (_, b_med, _) = spread(&mb);
    let (lo, med, hi) = spread(&ratios);
    println!(
        "| {target} | {} {unit} | {} {unit} | **{med:.2}×** | {lo:.2}× | {hi:.2}× | {quiet} | {:.2} / {:.2} | {:.0}% / {:.0}% | {goal} |",
        human(a_med),
        human(b_med),
        median_of(a, Run::cores),
        median_of(b, Run::cores),
        100.0 * median_of(a, Run::contention),
        100.0 * median_of(b, Run::contention),
    );
    med
}

fn human(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1} k", x / 1e3)
    } else {
        format!("{x:.1}")
    }
}

fn median_of(runs: &[Run], metric: impl Fn(&Run) -> f64) -> f64 {
    spread(&runs.iter().map(metric).collect::<Vec<_>>()).1
}

/// The sub-row under a target's row: context switches per 1000 `items`.
fn switches_row(a: &[Run], b: &[Run], items: impl Fn(&Run) -> u64) {
    let per_1000 = |r: &Run| 1000.0 * r.switches as f64 / items(r).max(1) as f64;
    println!(
        "|  ↳ context switches per 1000 items (median) | {:.2} | {:.2} | | | | | | | |",
        median_of(a, per_1000),
        median_of(b, per_1000)
    );
}

fn processed(run: &Run) -> u64 {
    run.processed
}

fn taken(run: &Run) -> u64 {
    run.taken
}

// ===== targets =====

/// Bench 1: goodput under saturation, trivial handler, against the
/// async-channel fan-out (`anchor = "channel"`) or the bare design
/// (`"bare"`); `"backpressure"` runs this crate lossless against the channel.
fn goodput(env: &Env, anchor: &str) {
    let n = GOODPUT_ITEMS;
    let policy = match anchor {
        "backpressure" => ShedPolicy::Backpressure,
        _ => ShedPolicy::DropNewest,
    };
    let a = || run_on(&env.mt, crate_run(n, CAPACITY, policy, double));
    let (runs_a, runs_b) = if anchor == "bare" {
        let b = || {
            run_on(
                &env.mt,
                bare_run(n, CAPACITY, ShedPolicy::DropNewest, double),
            )
        };
        interleave(env.rounds, a, b)
    } else {
        let b = || run_on(&env.mt, channel_run(n, CAPACITY, double));
        interleave(env.rounds, a, b)
    };
    let (target, goal) = match anchor {
        "bare" => (
            "1b. goodput vs bare Semaphore+Mutex<VecDeque> (both DropNewest)",
            "info",
        ),
        "backpressure" => (
            "1c. throughput, this crate with Backpressure (lossless) vs async-channel(16)",
            "info",
        ),
        _ => (
            "1. goodput, trivial handler, DropNewest vs async-channel(16)",
            "≥ 1.0×",
        ),
    };
    row(target, goal, "items/s", &runs_a, &runs_b, Run::goodput);
    switches_row(&runs_a, &runs_b, processed);
    println!(
        "|  ↳ processed per run (median) | {:.0} of {n} | {:.0} of {n} | | | | | | | |",
        median_of(&runs_a, |r| r.processed as f64),
        median_of(&runs_b, |r| r.processed as f64)
    );
}

/// The push front: `Feeder::offer` under `DropNewest` against the
/// hand-rolled `try_send` into async-channel, both offering as fast as they
/// can (yielding every `OFFERS_PER_YIELD`) to 4 workers with a trivial
/// handler: what each processes per second, and how fast each offers (most
/// offers shed: the shedding path, measured before only by a throwaway A/B).
fn push(env: &Env, runtime: &Runtime, name: &str) {
    let n = GOODPUT_ITEMS;
    let (runs_a, runs_b) = interleave(
        env.rounds,
        || {
            run_on(
                runtime,
                feeder_run(n, CAPACITY, ShedPolicy::DropNewest, double),
            )
        },
        || run_on(runtime, channel_offer_run(n, CAPACITY, double)),
    );
    row(
        &format!(
            "1e. push front, {name}: `Feeder::offer` vs async-channel(16) `try_send`, DropNewest, trivial handler: goodput"
        ),
        "info",
        "items/s",
        &runs_a,
        &runs_b,
        Run::goodput,
    );
    row(
        "  ↳ offers per second",
        "info",
        "offers/s",
        &runs_a,
        &runs_b,
        Run::intake_rate,
    );
    switches_row(&runs_a, &runs_b, taken);
    println!(
        "|  ↳ processed per run (median) | {:.0} of {n} | {:.0} of {n} | | | | | | | |",
        median_of(&runs_a, |r| r.processed as f64),
        median_of(&runs_b, |r| r.processed as f64)
    );
}

/// Goodput on a current-thread runtime, trivial handler, DropNewest, against
/// the async-channel fan-out on the same runtime.
fn goodput_ct(env: &Env) {
    let n = GOODPUT_ITEMS;
    let (runs_a, runs_b) = interleave(
        env.rounds,
        || {
            run_on(
                &env.ct,
                crate_run(n, CAPACITY, ShedPolicy::DropNewest, double),
            )
        },
        || run_on(&env.ct, channel_run(n, CAPACITY, double)),
    );
    row(
        "1d. goodput, current-thread, trivial handler, DropNewest vs async-channel(16)",
        "≥ 1.0×",
        "items/s",
        &runs_a,
        &runs_b,
        Run::goodput,
    );
    switches_row(&runs_a, &runs_b, processed);
    println!(
        "|  ↳ processed per run (median) | {:.0} of {n} | {:.0} of {n} | | | | | | | |",
        median_of(&runs_a, |r| r.processed as f64),
        median_of(&runs_b, |r| r.processed as f64)
    );
}

/// Fairness on a current-thread runtime: heartbeat beats per 100,000 items
/// beside this crate (2 workers, capacity 16, DropNewest) and beside the
/// async-channel fan-out, interleaved.
fn fairness_ct(env: &Env) {
    let n = FAIRNESS_ITEMS;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    fairness_crate(&env.ct, n);
    fairness_channel(&env.ct, n);
    for round in 0..env.rounds {
        if round % 2 == 0 {
            a.push(fairness_crate(&env.ct, n));
            b.push(fairness_channel(&env.ct, n));
        } else {
            b.push(fairness_channel(&env.ct, n));
            a.push(fairness_crate(&env.ct, n));
        }
    }
    let median = |runs: &[Fairness], f: fn(&Fairness) -> u64| {
        spread(&runs.iter().map(|r| f(r) as f64).collect::<Vec<_>>()).1
    };
    let beats = |r: &Fairness| r.beats;
    let ratios: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| x.beats as f64 / y.beats.max(1) as f64)
        .collect();
    let (lo, med, hi) = spread(&ratios);
    println!(
        "| 4. fairness, current-thread: heartbeat beats per {n} items vs async-channel fan-out | {:.0} | {:.0} | **{med:.2}×** | {lo:.2}× | {hi:.2}× | | | | ≥ 3,127 beats, gap ≤ 64, processed ≥ 50,000 (at `bc82dc0`) |",
        median(&a, beats),
        median(&b, beats),
    );
    println!(
        "|  ↳ most items pulled between two beats (median) | {:.0} | {:.0} | | | | | | | |",
        median(&a, |r| r.max_gap),
        median(&b, |r| r.max_gap)
    );
    println!(
        "|  ↳ processed per run (median) | {:.0} of {n} | {:.0} of {n} | | | | | | | |",
        median(&a, |r| r.processed),
        median(&b, |r| r.processed)
    );
}

/// The cost of keying (`key_by`) with a trivial handler, lossless, against
/// the same pipeline unkeyed: items per second, so a ratio of 0.77 is a
/// cost of 1.3× per item. Keys: 1,024 in turn (nearly every item the first
/// of its key: the worst case), or `skewed` (the mix of issue 19's feed:
/// half on one hot key, half on 1,000 cold keys with Zipf weights).
fn keyed_cost(env: &Env, current_thread: bool, skewed: bool) {
    let n = GOODPUT_ITEMS;
    let label = match (current_thread, skewed) {
        (false, false) => {
            "6. keyed (1,024 keys) vs unkeyed, trivial handler, Backpressure (items/s)"
        }
        (true, false) => "6b. same, current-thread runtime",
        (false, true) => "6c. keyed (skewed: 1 hot + 1,000 Zipf keys) vs unkeyed, trivial handler",
        (true, true) => "6d. same, current-thread runtime",
    };
    let rt = if current_thread { &env.ct } else { &env.mt };
    let policy = ShedPolicy::Backpressure;
    let (runs_a, runs_b) = interleave(
        env.rounds,
        || match skewed {
            false => run_on(rt, crate_keyed_run(n, CAPACITY, policy, 1024, double)),
            true => run_on(rt, crate_skewed_run(n, CAPACITY, policy, double)),
        },
        || run_on(rt, crate_run(n, CAPACITY, policy, double)),
    );
    row(
        label,
        "≥ 0.77× (cost ≤ 1.3×)",
        "items/s",
        &runs_a,
        &runs_b,
        Run::goodput,
    );
    switches_row(&runs_a, &runs_b, processed);
}

/// Bench 2: Parallel speedup with a ~2 µs handler vs buffer_unordered(4).
fn speedup(env: &Env, cap16: bool) {
    let n = SPEEDUP_ITEMS;
    let handler = busy(iterations_for(2_000, env.per_ns));
    let capacity = if cap16 { CAPACITY } else { n as usize };
    let (runs_a, runs_b) = interleave(
        env.rounds,
        || {
            run_on(
                &env.mt,
                crate_run(n, capacity, ShedPolicy::DropNewest, handler),
            )
        },
        || run_on(&env.mt, buffer_unordered_run(n, handler)),
    );
    let (target, goal) = if cap16 {
        (
            "2b. goodput, 2 µs handler, capacity 16 (sheds), vs buffer_unordered(4)",
            "info",
        )
    } else {
        (
            "2. speedup, 2 µs handler, burst fits (no shed), vs buffer_unordered(4)",
            "≥ 1.8×",
        )
    };
    row(target, goal, "items/s", &runs_a, &runs_b, Run::goodput);
    switches_row(&runs_a, &runs_b, processed);
    if cap16 {
        println!(
            "|  ↳ processed per run (median) | {:.0} of {n} | {n} of {n} | | | | | | | |",
            median_of(&runs_a, |r| r.processed as f64)
        );
    }
}

/// Bench 3: Intake under overload: 5M items, workers sleep 1 ms, DropOldest.
fn intake(env: &Env, runtime: &Runtime, flavor: &str) {
    let n = OVERLOAD_ITEMS;
    let (runs_a, runs_b) = interleave(
        env.rounds,
        || {
            run_on(
                runtime,
                crate_run(n, CAPACITY, ShedPolicy::DropOldest, sleepy),
            )
        },
        || {
            run_on(
                runtime,
                bare_run(n, CAPACITY, ShedPolicy::DropOldest, sleepy),
            )
        },
    );
    row(
        &format!("3. intake under overload, {flavor}, vs bare design (taken+shed/s)"),
        "≥ 1.2×",
        "items/s",
        &runs_a,
        &runs_b,
        Run::intake_rate,
    );
    switches_row(&runs_a, &runs_b, taken);
    let ns_a = spread(&runs_a.iter().map(Run::ns_per_shed).collect::<Vec<_>>());
    let ns_b = spread(&runs_b.iter().map(Run::ns_per_shed).collect::<Vec<_>>());
    println!(
        "|  ↳ ns per shed item, median (min–max) | {:.1} ({:.1}–{:.1}) ns | {:.1} ({:.1}–{:.1}) ns | | | | | | | |",
        ns_a.1, ns_a.0, ns_a.2, ns_b.1, ns_b.0, ns_b.2
    );
}

/// Bench 5: Crossover: the handler cost above which the crate overtakes
/// buffer_unordered(4) (burst fits, nothing shed).
fn crossover(env: &Env) {
    let rounds = env.rounds.div_ceil(2).max(3);
    let mut points = Vec::new();
    for cost in CROSSOVER_COSTS {
        let n = crossover_items(cost);
        let handler = busy(iterations_for(cost, env.per_ns));
        let (runs_a, runs_b) = interleave(
            rounds,
            || {
                run_on(
                    &env.mt,
                    crate_run(n, n as usize, ShedPolicy::DropNewest, handler),
                )
            },
            || run_on(&env.mt, buffer_unordered_run(n, handler)),
        );
        let ratio = row(
            &format!("5. handler {cost} ns, {n} items, vs buffer_unordered(4)"),
            "crossover",
            "items/s",
            &runs_a,
            &runs_b,
            Run::goodput,
        );
        switches_row(&runs_a, &runs_b, processed);
        points.push((cost, ratio));
    }
    let crossing = points.windows(2).find_map(|w| {
        let ((c0, r0), (c1, r1)) = (w[0], w[1]);
        (r0 < 1.0 && r1 >= 1.0).then(|| c0 as f64 + (1.0 - r0) * (c1 - c0) as f64 / (r1 - r0))
    });
    match crossing {
        Some(ns) => println!(
            "|  ↳ crossover (linear interpolation of the medians) | ≈ {ns:.0} ns per item | | | | | | | | ≤ 500 ns |"
        ),
        None => println!("|  ↳ crossover | not bracketed by {points:?} | | | | | | | | |"),
    }
}

/// Bench 6: Freshness under DropOldest: ages of processed items at handler start.
fn freshness(env: &Env) {
    let n = FRESHNESS_ITEMS;
    let iterations = iterations_for(FRESHNESS_HANDLER_NS, env.per_ns);
    let rounds = env.rounds.div_ceil(3).max(3);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.extend(run_on(&env.mt, freshness_crate(n, iterations)));
        b.extend(run_on(
            &env.mt,
            freshness_channel(FRESHNESS_CHANNEL_ITEMS, iterations),
        ));
    }
    a.sort_unstable();
    b.sort_unstable();
    let bound = CAPACITY + WORKERS;
    let describe = |ages: &[u64]| {
        format!(
            "p50 {} / p99 {} / max {} ({} samples)",
            quantile(ages, 0.5),
            quantile(ages, 0.99),
            ages.last().copied().unwrap_or(0),
            ages.len()
        )
    };
    println!(
        "| 6. freshness, DropOldest, 5 µs handler: age in seq numbers at handler start | {} | {} (async-channel, lossless) | p99/bound **{:.2}** | | | | | | bound {bound} |",
        describe(&a),
        describe(&b),
        quantile(&a, 0.99) as f64 / bound as f64
    );
}

// ===== floor: the cheapest hand-offs =====

/// Bench 0: what a cross-thread hand-off costs on this machine with no
/// runtime at all (a spin ring between two OS threads), and through tokio's
/// mpsc and async-channel between two tasks; ratio = contender ÷ spin ring.
fn floor(env: &Env) {
    let spinners = Spinners::new();
    let ring = || spinners.ring(FLOOR_SPIN_ITEMS);
    let n = FLOOR_TASK_ITEMS;
    let (tokio_runs, mut spin_runs) =
        interleave(env.rounds, || run_on(&env.mt, mpsc_floor(n)), ring);
    let (channel_runs, more_spin) =
        interleave(env.rounds, || run_on(&env.mt, async_channel_floor(n)), ring);
    spin_runs.extend(more_spin);

    let (lo, med, hi) = spread(&spin_runs.iter().map(Run::goodput).collect::<Vec<_>>());
    let quiet = spin_runs.iter().filter(|r| r.contention() <= QUIET).count();
    println!(
        "| 0a. floor: spin ring, 2 OS threads, ConcurrentQueue::bounded({FLOOR_CAPACITY}), no parking, {FLOOR_SPIN_ITEMS} items | {} items/s | — | — | {} | {} | ({quiet} of {}) | {:.2} | {:.0}% | floor |",
        human(med),
        human(lo),
        human(hi),
        spin_runs.len(),
        median_of(&spin_runs, Run::cores),
        100.0 * median_of(&spin_runs, Run::contention),
    );
    let ns = spread(&spin_runs.iter().map(ns_per_item).collect::<Vec<_>>());
    println!(
        "|  ↳ ns per item, median (min–max) | {:.1} ({:.1}–{:.1}) ns | — | | | | | | | |",
        ns.1, ns.0, ns.2
    );
    println!(
        "|  ↳ context switches per 1000 items (median) | {:.2} | — | | | | | | | |",
        median_of(&spin_runs, |r| 1000.0 * r.switches as f64
            / r.processed.max(1) as f64)
    );

    for (target, runs, spin) in [
        (
            "0b. floor: tokio mpsc::channel(16), producer task → consumer task, vs spin ring",
            &tokio_runs,
            &spin_runs[..env.rounds],
        ),
        (
            "0c. floor: async_channel::bounded(16), producer task → consumer task, vs spin ring",
            &channel_runs,
            &spin_runs[env.rounds..],
        ),
    ] {
        row(
            &format!("{target} ({n} items)"),
            "info",
            "items/s",
            runs,
            spin,
            Run::goodput,
        );
        let a = spread(&runs.iter().map(ns_per_item).collect::<Vec<_>>());
        let b = spread(&spin.iter().map(ns_per_item).collect::<Vec<_>>());
        println!(
            "|  ↳ ns per item, median (min–max) | {:.1} ({:.1}–{:.1}) ns | {:.1} ({:.1}–{:.1}) ns | | | | | | | |",
            a.1, a.0, a.2, b.1, b.0, b.2
        );
        switches_row(runs, spin, processed);
    }
}

fn ns_per_item(run: &Run) -> f64 {
    run.wall.as_nanos() as f64 / run.processed.max(1) as f64
}

type Job = Box<dyn FnOnce() + Send>;

/// Two long-lived OS threads that run one job each per round, so that
/// [`measured`] sees their CPU time and switches (a thread that exits
/// before the second read of `/proc/self/task` is not counted).
struct Spinners {
    jobs: [std_mpsc::Sender<Job>; 2],
    done: std_mpsc::Receiver<()>,
}

impl Spinners {
    fn new() -> Self {
        let (done_tx, done) = std_mpsc::channel();
        let jobs = [0, 1].map(|i| {
            let (tx, rx) = std_mpsc::channel::<Job>();
            let done_tx = done_tx.clone();
            thread::Builder::new()
                .name(format!("floor-{i}"))
                .spawn(move || {
                    for job in rx {
                        job();
                        let _ = done_tx.send(());
                    }
                })
                .expect("spawn a floor thread");
            tx
        });
        Spinners { jobs, done }
    }

    /// `0..n` from one thread to the other through a bounded ring, both
    /// sides spinning when it is full or empty.
    fn ring(&self, n: u64) -> Run {
        let queue = Arc::new(ConcurrentQueue::<u64>::bounded(FLOOR_CAPACITY));
        let sum = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let producer = {
            let queue = queue.clone();
            move || {
                for item in 0..n {
                    let mut item = item;
                    while let Err(PushError::Full(back)) = queue.push(item) {
                        item = back;
                        spin_loop();
                    }
                }
            }
        };
        let consumer = {
            let sum = sum.clone();
            move || {
                let (mut received, mut total) = (0u64, 0u64);
                while received < n {
                    match queue.pop() {
                        Ok(item) => {
                            total = total.wrapping_add(black_box(item));
                            received += 1;
                        }
                        Err(_) => spin_loop(),
                    }
                }
                sum.store(total, Relaxed);
            }
        };
        self.jobs[0].send(Box::new(producer)).expect("floor thread");
        self.jobs[1].send(Box::new(consumer)).expect("floor thread");
        self.done.recv().expect("floor thread");
        self.done.recv().expect("floor thread");
        let wall = start.elapsed();
        assert_eq!(
            sum.load(Relaxed),
            n * n.saturating_sub(1) / 2,
            "every item once"
        );
        floor_run(wall, n)
    }
}

fn floor_run(wall: Duration, n: u64) -> Run {
    Run {
        wall,
        intake: wall,
        taken: n,
        processed: n,
        ..Run::default()
    }
}

/// `0..n` from a producer task to the scenario's task through
/// `tokio::sync::mpsc::channel(16)`.
async fn mpsc_floor(n: u64) -> Run {
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(FLOOR_CAPACITY);
    let producer = tokio::spawn(async move {
        for item in 0..n {
            tx.send(item).await.expect("consumer alive");
        }
    });
    let (mut received, mut total) = (0u64, 0u64);
    while let Some(item) = rx.recv().await {
        total = total.wrapping_add(black_box(item));
        received += 1;
    }
    producer.await.expect("producer");
    let wall = start.elapsed();
    assert_eq!((received, total), (n, n * n.saturating_sub(1) / 2));
    floor_run(wall, n)
}

/// The same through `async_channel::bounded(16)`.
async fn async_channel_floor(n: u64) -> Run {
    let start = Instant::now();
    let (tx, rx) = async_channel::bounded::<u64>(FLOOR_CAPACITY);
    let producer = tokio::spawn(async move {
        for item in 0..n {
            tx.send(item).await.expect("consumer alive");
        }
    });
    let (mut received, mut total) = (0u64, 0u64);
    while let Ok(item) = rx.recv().await {
        total = total.wrapping_add(black_box(item));
        received += 1;
    }
    producer.await.expect("producer");
    let wall = start.elapsed();
    assert_eq!((received, total), (n, n * n.saturating_sub(1) / 2));
    floor_run(wall, n)
}

// ===== profiling =====

/// `profile CONTENDER N`: one run, for callgrind (no interleaving, no timing).
fn profile(args: &[String]) {
    let contender = args.first().map(String::as_str).unwrap_or("crate-goodput");
    let n: u64 = args.get(1).map_or(200_000, |s| s.parse().expect("N"));
    // With `--features metrics`, `--recorder` measures the feature with
    // the Prometheus exporter's recorder installed (no HTTP listener);
    // without it, the series go to the facade's no-op recorder.
    #[cfg(feature = "metrics")]
    if args.iter().any(|arg| arg == "--recorder") {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("install the Prometheus recorder");
    }
    let mt = multi_thread();
    let run = match contender {
        "crate-goodput" => run_on(&mt, crate_run(n, CAPACITY, ShedPolicy::DropNewest, double)),
        "crate-backpressure" => run_on(
            &mt,
            crate_run(n, CAPACITY, ShedPolicy::Backpressure, double),
        ),
        "channel-goodput" => run_on(&mt, channel_run(n, CAPACITY, double)),
        "crate-keyed" => run_on(
            &mt,
            crate_keyed_run(n, CAPACITY, ShedPolicy::Backpressure, 1024, double),
        ),
        "bare-goodput" => run_on(&mt, bare_run(n, CAPACITY, ShedPolicy::DropNewest, double)),
        "crate-intake" => run_on(&mt, crate_run(n, CAPACITY, ShedPolicy::DropOldest, sleepy)),
        // One thread: the same instructions on every run (no thread
        // switches for valgrind to place), for before/after comparisons.
        "crate-goodput-ct" => run_on(
            &current_thread(),
            crate_run(n, CAPACITY, ShedPolicy::DropNewest, double),
        ),
        "crate-backpressure-ct" => run_on(
            &current_thread(),
            crate_run(n, CAPACITY, ShedPolicy::Backpressure, double),
        ),
        "crate-push-ct" => run_on(
            &current_thread(),
            feeder_run(n, CAPACITY, ShedPolicy::DropNewest, double),
        ),
        "crate-keyed-ct" => run_on(
            &current_thread(),
            crate_keyed_run(n, CAPACITY, ShedPolicy::Backpressure, 1024, double),
        ),
        "crate-skewed" => run_on(
            &mt,
            crate_skewed_run(n, CAPACITY, ShedPolicy::Backpressure, double),
        ),
        "crate-skewed-ct" => run_on(
            &current_thread(),
            crate_skewed_run(n, CAPACITY, ShedPolicy::Backpressure, double),
        ),
        "bare-intake" => run_on(&mt, bare_run(n, CAPACITY, ShedPolicy::DropOldest, sleepy)),
        other => panic!("unknown contender {other:?}"),
    };
    println!("{contender}: {run:?}");
}
