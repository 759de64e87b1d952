//! A skewed feed through a keyed pipeline and through the same pipeline
//! unkeyed, interleaved: who gets served, how fresh each key's last value
//! is, and how fairly the work is spread (BENCHMARKS.md, "Keyed
//! pipelines").
//!
//! ```text
//! cargo run --release --example keyed_feed                 # 5 rounds of 3 s
//! cargo run --release --example keyed_feed -- --rounds 3 --seconds 2
//! ```
//!
//! The feed: 40,000 readings/s (40 per millisecond), half of them from one
//! hot key and half from 1,000 cold keys with Zipf-like weights (key `k`
//! drawn with weight `1/k`), into 4 workers that take 1 ms per reading:
//! ten times what they can handle. Both contenders use `DropOldest` and a
//! queue of 64; the keyed one also keeps one reading per key
//! (`per_key_capacity(1)`: the latest per key).
//!
//! Per run: the share of keys that had at least one reading processed in
//! each second (mean over the seconds), the age of each key's last
//! consumed reading at the end (p50 and p99 over the keys that were ever
//! served, and how many never were), and Jain's fairness index of
//! processed readings across keys, `(Σx)² / (n·Σx²)` (Jain, Chiu and Hawe,
//! DEC-TR-301, 1984): 1 when every key got the same, 1/n when one got all.
//! Then, once: per-key order over 1,000,000 readings on the 2-thread
//! runtime (lossless, so that every one runs), counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
use futures::StreamExt;

const COLD_KEYS: u32 = 1000;
const PER_MS: u32 = 40;
const WORKERS: usize = 4;

/// One reading: its key (0 is the hot one), sequence, and when it arrived.
#[derive(Clone, Copy)]
struct Reading {
    key: u32,
    seq: u64,
    at: Instant,
}

/// A deterministic xorshift generator: both contenders see the same feed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The cold keys' cumulative Zipf weights (key `k` with weight `1/k`).
fn zipf_table() -> Vec<f64> {
    let mut total = 0.0;
    (1..=COLD_KEYS)
        .map(|k| {
            total += 1.0 / f64::from(k);
            total
        })
        .collect()
}

fn next_key(rng: &mut Rng, zipf: &[f64]) -> u32 {
    if rng.next() % 2 == 0 {
        return 0; // the hot key: half the traffic
    }
    let total = zipf[zipf.len() - 1];
    let draw = (rng.next() % 1_000_000) as f64 / 1_000_000.0 * total;
    1 + zipf.partition_point(|w| *w < draw) as u32
}

#[derive(Debug, Default, Clone, Copy)]
struct Measured {
    /// Mean over the seconds of the share of keys served in that second.
    served_share: f64,
    age_p50: Duration,
    age_p99: Duration,
    never_served: usize,
    jain: f64,
    processed: u64,
}

/// One run of `seconds` through the pipeline, keyed or not.
async fn run(keyed: bool, seconds: u64) -> Measured {
    let zipf = zipf_table();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    let mut seq = 0;
    let feed = futures::stream::poll_fn(move |cx| {
        if Instant::now() >= end {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(ticks.poll_tick(cx));
        let at = Instant::now();
        let burst: Vec<Reading> = (0..PER_MS)
            .map(|_| {
                seq += 1;
                Reading {
                    key: next_key(&mut rng, &zipf),
                    seq,
                    at,
                }
            })
            .collect();
        std::task::Poll::Ready(Some(futures::stream::iter(burst)))
    })
    .flatten();
    let mut config = FanOutConfig::new(WORKERS, ShedPolicy::DropOldest).capacity(64);
    if keyed {
        config = config.key_by(|r: &Reading| r.key).per_key_capacity(1);
    }
    let (results, shutdown) = feed.bounded_fan_out_with(config, |r: Reading| async move {
        tokio::time::sleep(Duration::from_millis(1)).await;
        r
    });
    let mut per_key: HashMap<u32, (u64, Instant)> = HashMap::new();
    let mut seconds_seen = vec![HashMap::new(); seconds as usize + 1];
    let report = shutdown
        .join_for_each(results, |r| {
            let entry = per_key.entry(r.key).or_insert((0, r.at));
            entry.0 += 1;
            entry.1 = entry.1.max(r.at);
            let second = r.at.duration_since(start).as_secs() as usize;
            if let Some(seen) = seconds_seen.get_mut(second) {
                seen.insert(r.key, ());
            }
        })
        .await;
    assert!(report.is_conserved(), "{report}");
    let keys = f64::from(COLD_KEYS + 1);
    let full_seconds = &seconds_seen[..seconds as usize];
    let served_share = full_seconds
        .iter()
        .map(|s| s.len() as f64 / keys)
        .sum::<f64>()
        / full_seconds.len() as f64;
    let now = Instant::now();
    let mut ages: Vec<Duration> = per_key.values().map(|(_, at)| now - *at).collect();
    ages.sort();
    let quantile = |q: f64| ages[((ages.len() - 1) as f64 * q).round() as usize];
    let counts: Vec<f64> = (0..=COLD_KEYS)
        .map(|k| per_key.get(&k).map_or(0.0, |(n, _)| *n as f64))
        .collect();
    let sum: f64 = counts.iter().sum();
    let squares: f64 = counts.iter().map(|x| x * x).sum();
    Measured {
        served_share,
        age_p50: quantile(0.5),
        age_p99: quantile(0.99),
        never_served: (COLD_KEYS as usize + 1) - per_key.len(),
        jain: sum * sum / (keys * squares),
        processed: report.processed,
    }
}

/// Per-key order over `n` readings at speed on the 2-thread runtime: the
/// number of readings that started before an earlier reading of their key.
async fn order_violations(n: u64) -> (u64, u64) {
    let last: Arc<Mutex<HashMap<u32, u64>>> = Arc::default();
    let violations = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (seen, count) = (Arc::clone(&last), Arc::clone(&violations));
    let zipf = zipf_table();
    let mut rng = Rng(7);
    let at = Instant::now();
    let feed = futures::stream::iter(0..n).map(move |seq| Reading {
        key: next_key(&mut rng, &zipf),
        seq,
        at,
    });
    // Lossless, so that every reading runs and the order of all is checked.
    let config = FanOutConfig::new(WORKERS, ShedPolicy::Backpressure)
        .capacity(64)
        .key_by(|r: &Reading| r.key);
    let (results, shutdown) = feed.bounded_fan_out_with(config, move |r: Reading| {
        let (seen, count) = (Arc::clone(&seen), Arc::clone(&count));
        async move {
            let previous = seen.lock().unwrap().insert(r.key, r.seq);
            if previous.is_some_and(|p| p >= r.seq) {
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            tokio::task::yield_now().await;
        }
    });
    let report = shutdown.join_for_each(results, |()| {}).await;
    assert!(report.is_conserved(), "{report}");
    (
        violations.load(std::sync::atomic::Ordering::Relaxed),
        report.processed,
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rounds, seconds) = (arg("--rounds", 5), arg("--seconds", 3));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "# {rounds} interleaved rounds of {seconds} s: {} readings/s, 1 hot key (50%) + {COLD_KEYS} cold (Zipf), {WORKERS} workers x 1 ms, DropOldest, capacity 64",
        PER_MS * 1000
    );
    let (mut keyed, mut plain) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for k in order {
            let m = runtime.block_on(run(k, seconds));
            if k { keyed.push(m) } else { plain.push(m) }
        }
    }
    let row = |name: &str, runs: &[Measured]| {
        let med = |f: fn(&Measured) -> f64| median(runs.iter().map(f).collect());
        println!(
            "| {name} | {:.1}% | {:.0} ms | {:.0} ms | {:.0} | {:.3} | {:.0} |",
            100.0 * med(|m| m.served_share),
            med(|m| m.age_p50.as_secs_f64() * 1e3),
            med(|m| m.age_p99.as_secs_f64() * 1e3),
            med(|m| m.never_served as f64),
            med(|m| m.jain),
            med(|m| m.processed as f64),
        );
    };
    println!(
        "| pipeline | keys served per second | last value's age p50 | p99 | keys never served | Jain's index | processed |"
    );
    println!("|---|---|---|---|---|---|---|");
    row("keyed (`key_by`, `per_key_capacity(1)`)", &keyed);
    row("unkeyed", &plain);
    let (violations, processed) = runtime.block_on(order_violations(1_000_000));
    println!(
        "\n# per-key order over 1,000,000 readings (2 threads, trivial handler): {violations} violations, {processed} processed"
    );
}
