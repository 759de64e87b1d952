//! The crate in two tables: what each shed policy keeps, and what a 4000-item
//! burst does to four slow workers. Exits non-zero if any check fails.
//!
//! Run with `cargo run --example demo`.

use std::process::ExitCode;
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, Report, ShedPolicy};
use futures::StreamExt;
use tokio::runtime::{Builder, Runtime};

const POLICIES: [ShedPolicy; 2] = [ShedPolicy::DropNewest, ShedPolicy::DropOldest];

fn main() -> ExitCode {
    let mut failures = Vec::new();

    println!("== policy illustration: buffer=4, push ids 0..8, then drain ==");
    // The 8 ids are offered through the push front on a current-thread
    // runtime, back to back: the worker cannot run between two offers, so
    // the queue sees all 8 before it takes one, and what the queue keeps is
    // the policy's choice alone.
    let runtime = build(&mut Builder::new_current_thread());
    for policy in POLICIES {
        let kept = runtime.block_on(illustrate(policy));
        let (expected, why) = match policy {
            ShedPolicy::DropNewest => (
                vec![0, 1, 2, 3],
                "newest arrivals shed; backlog order preserved",
            ),
            _ => (vec![4, 5, 6, 7], "oldest shed; always the freshest state"),
        };
        println!("  {policy} keeps {kept:?}  ({why})");
        if kept != expected {
            failures.push(format!("{policy} kept {kept:?}, expected {expected:?}"));
        }
    }

    println!("  (buffer = the queue's `capacity`: FanOutConfig::new(1, policy).capacity(4))");

    println!();
    println!("== overload stress: 4000-item burst, buffer=16, 4 slow workers ==");
    println!("policy        produced  processed  dropped   joined  aborted");
    println!("{}", "-".repeat(60));
    // Multi-thread: the workers run beside the intake, as in production.
    let runtime = build(Builder::new_multi_thread().worker_threads(2));
    for policy in POLICIES {
        let (report, received, leaked) = runtime.block_on(stress(policy));
        println!(
            "{:<12}{:>10}{:>11}{:>9}{:>9}{:>9}",
            policy.to_string(),
            report.produced,
            report.processed,
            report.dropped,
            report.workers_joined,
            report.aborted
        );
        check(&mut failures, policy, &report, received, leaked);
    }
    println!("{}", "-".repeat(60));
    println!("(produced/processed/dropped count items; joined/aborted count workers:");
    println!(" 4 workers ended on their own, none was cut off mid-item. buffer = capacity.");
    println!(" processed is about 16 queued + 4 already taken: the burst outruns the");
    println!(" workers, and the exact count varies with thread scheduling)");

    if failures.is_empty() {
        println!("conservation held for both policies; no tasks leaked. demo OK.");
        ExitCode::SUCCESS
    } else {
        for failure in &failures {
            eprintln!("FAILED: {failure}");
        }
        ExitCode::FAILURE
    }
}

fn build(builder: &mut Builder) -> Runtime {
    match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("demo: cannot start a Tokio runtime: {error}");
            std::process::exit(2);
        }
    }
}

/// Offers ids 0..8 to a real pipeline with a 4-slot queue and one worker.
async fn illustrate(policy: ShedPolicy) -> Vec<u32> {
    let config = FanOutConfig::new(1, policy).capacity(4);
    let (feeder, results, shutdown) = backpressure_pipeline::feeder(config, |id| async move { id });
    for id in 0..8u32 {
        let _ = feeder.offer(id);
    }
    drop(feeder); // the last feeder gone: intake ends, the queue drains
    let (kept, _report) = tokio::join!(results.collect::<Vec<_>>(), shutdown.join());
    kept
}

/// A 4000-item burst into 16 slots and 4 workers that take 1 ms per item.
/// Returns the report, the number of results received and the number of
/// tasks still alive after `join` beyond those alive before.
async fn stress(policy: ShedPolicy) -> (Report, u64, usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let config = FanOutConfig::new(4, policy).capacity(16);
    let (results, shutdown) =
        futures::stream::iter(0..4000u32).bounded_fan_out_with(config, |id| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            id
        });
    let (received, report) = tokio::join!(results.count(), shutdown.join());
    // A finished task leaves the count a moment after its joiner wakes.
    let mut alive = metrics.num_alive_tasks();
    for _ in 0..100 {
        if alive <= baseline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        alive = metrics.num_alive_tasks();
    }
    (report, received as u64, alive.saturating_sub(baseline))
}

fn check(
    failures: &mut Vec<String>,
    policy: ShedPolicy,
    report: &Report,
    received: u64,
    leaked: usize,
) {
    if !report.is_conserved() || report.produced != 4000 {
        failures.push(format!("{policy}: conservation broken: {report}"));
    }
    if received != report.processed {
        failures.push(format!(
            "{policy}: received {received} results, processed {}",
            report.processed
        ));
    }
    if report.workers_joined != 4 || report.aborted != 0 {
        failures.push(format!("{policy}: workers not all joined: {report}"));
    }
    if leaked != 0 {
        failures.push(format!("{policy}: {leaked} tasks still alive after join"));
    }
}
