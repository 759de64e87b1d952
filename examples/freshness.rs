//! Freshness end to end (issue: "keep DropOldest fresh"): how old is the
//! reading a slow consumer sees? A sensor yields ~800 readings/s for 3 s,
//! each handled in 1 ms by 4 workers under `DropOldest`; the consumer takes
//! 20 ms per result. Compares the default completion-order FIFO output with
//! `ResultOrder::LatestOnly`.
//! Real time, about 7 s. `cargo run --release --example freshness`.

use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, ResultOrder, ShedPolicy};
use futures::StreamExt;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep};

const RUN: Duration = Duration::from_secs(3);
const READING_EVERY: Duration = Duration::from_micros(1250);
const CONSUMER_PERIOD: Duration = Duration::from_millis(20);

/// Ages (time from reading to consumption) of every result read, sorted.
async fn ages(config: FanOutConfig<Instant>) -> Vec<Duration> {
    let mut ticks = interval(READING_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let end = Instant::now() + RUN;
    let sensor = futures::stream::unfold(ticks, move |mut ticks| async move {
        let at = ticks.tick().await;
        (at < end).then(|| (Instant::now(), ticks))
    });
    let (mut results, shutdown) = sensor.bounded_fan_out_with(config, |taken_at| async move {
        sleep(Duration::from_millis(1)).await;
        taken_at
    });
    let mut ages = Vec::new();
    while let Some(taken_at) = results.next().await {
        ages.push(taken_at.elapsed());
        sleep(CONSUMER_PERIOD).await;
        if taken_at.elapsed() > RUN {
            break;
        }
    }
    shutdown.abort();
    drop(results);
    let report = shutdown.join().await;
    assert!(report.is_conserved(), "{report}");
    ages.sort();
    ages
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    println!(
        "sensor ~800/s for {RUN:?}, 1 ms handler, 4 workers, DropOldest, consumer 20 ms/result"
    );
    println!(
        "{:<28}{:>8}{:>10}{:>10}",
        "output", "read", "p50 age", "max age"
    );
    for (name, latest) in [("FIFO (defaults 64/64)", false), ("latest only", true)] {
        let config = FanOutConfig::new(4, ShedPolicy::DropOldest).result_order(if latest {
            ResultOrder::LatestOnly
        } else {
            ResultOrder::Completion
        });
        let ages = ages(config).await;
        let p50 = ages[ages.len() / 2];
        let max = ages[ages.len() - 1];
        println!(
            "{name:<28}{:>8}{:>8.1}ms{:>8.1}ms",
            ages.len(),
            ms(p50),
            ms(max)
        );
        if latest {
            let target = 2 * CONSUMER_PERIOD;
            println!(
                "latest-only p50 {:.1} ms vs target 2 x consumer period = {} ms: {}",
                ms(p50),
                ms(target),
                if p50 <= target { "met" } else { "MISSED" }
            );
        }
    }
}
