//! Keyed pipelines, twice over (`FanOutConfig::key_by`):
//!
//! 1. A sensor feed that keeps **the latest reading per device**: one
//!    chatty device and five quiet ones into two slow workers, `DropOldest`
//!    with one queued reading per device. The chatty device's readings
//!    supersede each other; the quiet devices' readings are never pushed
//!    out by it, and each device's readings are handled in order.
//! 2. A command stream kept **in order per account**: deposits and
//!    withdrawals for three accounts, lossless (`Backpressure`), handlers
//!    of uneven length on four workers. Commands of one account never run
//!    at once and run in the order they came; accounts run in parallel.
//!
//! ```text
//! cargo run --example keyed
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backpressure_pipeline::{FanOutConfig, FanOutExt, ShedPolicy};
use futures::StreamExt;
use tokio::time::{Instant, sleep};

#[tokio::main]
async fn main() {
    latest_per_device().await;
    println!();
    in_order_per_account().await;
}

/// Part 1: 200 ms of readings, device 0 every millisecond, devices 1 to 5
/// every 40 ms; two workers take 10 ms per reading.
async fn latest_per_device() {
    let start = Instant::now();
    let feed = futures::stream::iter(0..200u32)
        .then(|ms| async move {
            sleep(Duration::from_millis(1)).await;
            let quiet = (1..=5).filter(move |_| ms % 40 == 0);
            quiet
                .chain([0])
                .map(move |device| (device, ms))
                .collect::<Vec<_>>()
        })
        .flat_map(futures::stream::iter);
    let config = FanOutConfig::new(2, ShedPolicy::DropOldest)
        .key_by(|(device, _): &(u32, u32)| *device)
        .per_key_capacity(1);
    let (results, shutdown) = feed.bounded_fan_out_with(config, |(device, ms)| async move {
        sleep(Duration::from_millis(10)).await;
        (device, ms)
    });
    let (handled, report) = shutdown.join_collect(results).await;

    println!("1. The latest reading per device (DropOldest, per_key_capacity(1))");
    println!("   device  sent  handled  last handled (ms into the feed)");
    for device in 0..=5u32 {
        let sent = if device == 0 { 200 } else { 5 };
        let mine: Vec<u32> = handled
            .iter()
            .filter(|(d, _)| *d == device)
            .map(|(_, ms)| *ms)
            .collect();
        assert!(mine.is_sorted(), "device {device} out of order: {mine:?}");
        let last = mine.last().map_or("-".to_string(), u32::to_string);
        println!("   {device:>6}  {sent:>4}  {:>7}  {last}", mine.len());
    }
    println!(
        "   {} readings in {:?}: {} handled, {} superseded or shed; every quiet reading handled: {}",
        report.produced,
        start.elapsed(),
        report.processed,
        report.dropped,
        handled.iter().filter(|(d, _)| *d != 0).count() == 25,
    );
    assert!(report.is_conserved(), "{report}");
}

/// Part 2: 30 commands for three accounts; a command's handler takes 1 to
/// 7 ms, and checks it runs alone for its account and right after the
/// account's previous command.
async fn in_order_per_account() {
    let commands = (0..30i64).map(|i| {
        let account = ["alice", "bob", "carol"][(i % 3) as usize];
        let amount = if i % 4 == 3 { -5 } else { 10 + i };
        (account, i / 3, amount)
    });
    let ledger: Arc<Ledger> = Arc::default();
    let config = FanOutConfig::new(4, ShedPolicy::Backpressure)
        .key_by(|(account, _, _): &(&'static str, i64, i64)| *account);
    let books = ledger.clone();
    let (results, shutdown) = futures::stream::iter(commands).bounded_fan_out_with(
        config,
        move |(account, n, amount)| {
            let books = books.clone();
            async move {
                begin(&books, account, n);
                sleep(Duration::from_millis(
                    1 + (n * 5 + amount.unsigned_abs() as i64) as u64 % 7,
                ))
                .await;
                end(&books, account, amount)
            }
        },
    );
    let (applied, report) = shutdown.join_collect(results).await;

    println!("2. Commands in order per account (Backpressure, 4 workers)");
    let ledger = ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for account in ["alice", "bob", "carol"] {
        let Account { balance, last, .. } = ledger[account];
        let mine: Vec<i64> = applied
            .iter()
            .filter(|(a, _)| *a == account)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(
            mine,
            (0..10).collect::<Vec<_>>(),
            "{account}'s results in order"
        );
        println!(
            "   {account:<6} {} commands, in order, last #{last}, balance {balance}",
            mine.len()
        );
    }
    println!("   {report}");
    assert!(report.is_conserved() && report.processed == 30, "{report}");
}

/// Per account: its balance, the last command applied, and whether a
/// command of it is running now.
#[derive(Clone, Copy)]
struct Account {
    balance: i64,
    last: i64,
    running: bool,
}

type Ledger = Mutex<HashMap<&'static str, Account>>;

/// `account`'s entry, opened on its first command.
fn account<'a>(
    ledger: &'a mut HashMap<&'static str, Account>,
    name: &'static str,
) -> &'a mut Account {
    ledger.entry(name).or_insert(Account {
        balance: 0,
        last: -1,
        running: false,
    })
}

/// A command of `name` starts: none of its others is running, and it is
/// the next in line.
fn begin(ledger: &Ledger, name: &'static str, n: i64) {
    let mut ledger = ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let entry = account(&mut ledger, name);
    assert!(!entry.running, "two commands of {name} at once");
    assert_eq!(entry.last + 1, n, "{name}'s command #{n} out of order");
    (entry.last, entry.running) = (n, true);
}

/// The command finishes: applied to the balance.
fn end(ledger: &Ledger, name: &'static str, amount: i64) -> (&'static str, i64) {
    let mut ledger = ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let entry = account(&mut ledger, name);
    entry.balance += amount;
    entry.running = false;
    (name, entry.last)
}
