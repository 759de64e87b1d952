//! Issue 4, bench 4: peak memory of a 10M-item burst against a 10K-item one.
//!
//! A burst of 64-byte items arrives far faster than 4 workers that sleep
//! 1 ms per item can handle. This crate (capacity 16, DropOldest) must keep
//! its peak RSS flat whatever the burst size; an unbounded
//! `tokio::sync::mpsc` in front of the same workers queues the whole burst.
//!
//! Each measurement is its own process, so peaks never mix: the driver
//! re-executes this binary once per variant and repeat, and each child reads
//! its own high-water mark (`VmHWM` in `/proc/self/status`) the moment the
//! whole burst has been taken from the input, then exits without draining.
//!
//! ```text
//! cargo run --release --example memory              # the table, 3 repeats
//! cargo run --release --example memory -- child crate 10000000
//! ```

use std::pin::pin;
use std::process::Command;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
use futures::stream::{self, Stream, StreamExt};
use tokio::sync::{Mutex, mpsc, oneshot};

/// A 64-byte item, as in issue 4.
struct Item([u64; 8]);

const VARIANTS: [(&str, u64); 5] = [
    ("baseline", 0),
    ("crate", 10_000),
    ("crate", 10_000_000),
    ("mpsc", 10_000),
    ("mpsc", 10_000_000),
];
const REPEATS: usize = 3;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("child") {
        let n = args.get(2).map_or(0, |s| s.parse().expect("N"));
        let peak = child(&args[1], n);
        println!("peak_kib={peak}");
        // Skip the drain of the queued burst and the runtime's shutdown.
        std::process::exit(0);
    }
    driver();
}

fn driver() {
    let exe = std::env::current_exe().expect("current_exe");
    let mut medians = Vec::new();
    println!("| variant | burst | peak RSS (VmHWM), median of {REPEATS} | min | max |");
    println!("|---|---|---|---|---|");
    for (variant, n) in VARIANTS {
        let mut peaks: Vec<u64> = (0..REPEATS)
            .map(|_| {
                let out = Command::new(&exe)
                    .args(["child", variant, &n.to_string()])
                    .output()
                    .expect("child runs");
                assert!(out.status.success(), "child {variant} {n} failed: {out:?}");
                let text = String::from_utf8_lossy(&out.stdout);
                text.trim()
                    .strip_prefix("peak_kib=")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("child said {text:?}"))
            })
            .collect();
        peaks.sort_unstable();
        let median = peaks[REPEATS / 2];
        println!(
            "| {variant} | {n} | {} | {} | {} |",
            mib(median),
            mib(peaks[0]),
            mib(peaks[REPEATS - 1])
        );
        medians.push(median);
    }
    let ratio = |big: usize, small: usize| medians[big] as f64 / medians[small] as f64;
    println!();
    println!(
        "this crate: peak(10M) / peak(10K) = {:.3}× (target ≤ 1.1×)",
        ratio(2, 1)
    );
    println!(
        "unbounded tokio mpsc: peak(10M) / peak(10K) = {:.1}×",
        ratio(4, 3)
    );
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// This process's peak resident set size, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

fn child(variant: &str, n: u64) -> u64 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let variant = variant.to_owned();
    runtime.block_on(async move {
        tokio::spawn(async move {
            match variant.as_str() {
                "baseline" => {}
                "crate" => burst_through_crate(n).await,
                "mpsc" => burst_through_mpsc(n).await,
                other => panic!("unknown variant {other:?}"),
            }
            peak_rss_kib()
        })
        .await
        .expect("variant")
    })
}

/// `n` items made on demand; `exhausted` fires when the input returns `None`.
fn burst(n: u64, exhausted: oneshot::Sender<()>) -> impl Stream<Item = Item> + Send {
    let mut exhausted = Some(exhausted);
    stream::iter(0..n)
        .map(|i| Item([i; 8]))
        .chain(stream::poll_fn(move |_| {
            if let Some(tx) = exhausted.take() {
                let _ = tx.send(());
            }
            Poll::Ready(None)
        }))
}

async fn slow_work(item: Item) -> u64 {
    tokio::time::sleep(Duration::from_millis(1)).await;
    item.0[0]
}

async fn burst_through_crate(n: u64) {
    let (exhausted, taken_all) = oneshot::channel();
    let config = FanOutConfig::new(4, ShedPolicy::DropOldest).capacity(16);
    let (results, shutdown) = burst(n, exhausted).bounded_fan_out_with(config, slow_work);
    tokio::spawn(results.for_each(|_| async {}));
    taken_all.await.expect("input exhausted");
    // The handle stays alive until the process exits.
    std::mem::forget(shutdown);
}

async fn burst_through_mpsc(n: u64) {
    let (exhausted, taken_all) = oneshot::channel();
    let (to_workers, queue) = mpsc::unbounded_channel::<Item>();
    let (to_consumer, mut results) = mpsc::channel::<u64>(64);
    let queue = Arc::new(Mutex::new(queue));
    for _ in 0..4 {
        let queue = queue.clone();
        let output = to_consumer.clone();
        tokio::spawn(async move {
            loop {
                let next = queue.lock().await.recv().await;
                let Some(item) = next else { break };
                let _ = output.send(slow_work(item).await).await;
            }
        });
    }
    tokio::spawn(async move { while results.recv().await.is_some() {} });
    tokio::spawn(async move {
        let mut source = pin!(burst(n, exhausted));
        while let Some(item) = source.next().await {
            let _ = to_workers.send(item);
        }
        // Keep the channel open: the workers are still busy when we measure.
        std::mem::forget(to_workers);
    });
    taken_all.await.expect("input exhausted");
}
