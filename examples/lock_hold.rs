//! How long the hand-off queue's lock is held, and how many items per
//! second one lock passes when both cores fight for it (BENCHMARKS.md,
//! "Scaling").
//!
//! ```text
//! cargo run --release --example lock_hold                 # 15 rounds
//! cargo run --release --example lock_hold -- --rounds 31
//! ```
//!
//! Three pairs, each run alternately (A B, B A, …) and quoted as medians:
//!
//! * **uncontended section**: one thread queues one item and takes it back,
//!   2,000,000 times, so each lock is taken twice per cycle and never
//!   waited for: the time per section is the lock's hold time plus one
//!   uncontended lock and unlock. The crate's queue against a bare
//!   `Mutex<VecDeque<u64>>` doing only the push and the pop.
//! * **batch of 32**: the intake's shape, one push of 32 items then 32
//!   takes: time per item.
//! * **contended**: a producer thread pushes 2,000,000 items in batches of
//!   32 while a consumer thread takes them one by one, spinning when empty:
//!   items per second through one lock. Against the bare mutex and a
//!   lock-free `ConcurrentQueue` doing the same.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use backpressure_pipeline::{QueueProbe, ShedPolicy};
use concurrent_queue::ConcurrentQueue;

const CYCLES: u64 = 2_000_000;
const BATCH: u64 = 32;
const CONTENDED_ITEMS: u64 = 2_000_000;
/// Room for every contended item, so nothing is shed.
const ROOM: usize = 1 << 22;

/// The minimal critical sections: nothing but the push and the pop.
#[derive(Default)]
struct Bare(Mutex<VecDeque<u64>>);

impl Bare {
    fn push(&self, batch: &mut Vec<u64>) {
        self.0.lock().expect("bare lock").extend(batch.drain(..));
    }

    fn take_now(&self) -> Option<u64> {
        self.0.lock().expect("bare lock").pop_front()
    }
}

/// The three shapes, over any queue.
trait Queue: Send + Sync + 'static {
    fn push(&self, batch: &mut Vec<u64>);
    fn take_now(&self) -> Option<u64>;
}

impl Queue for QueueProbe {
    fn push(&self, batch: &mut Vec<u64>) {
        let mut shed = Vec::new();
        QueueProbe::push(self, batch, &mut shed);
        assert!(shed.is_empty(), "nothing may be shed here");
    }

    fn take_now(&self) -> Option<u64> {
        QueueProbe::take_now(self)
    }
}

impl Queue for Bare {
    fn push(&self, batch: &mut Vec<u64>) {
        Bare::push(self, batch);
    }

    fn take_now(&self) -> Option<u64> {
        Bare::take_now(self)
    }
}

impl Queue for ConcurrentQueue<u64> {
    fn push(&self, batch: &mut Vec<u64>) {
        for item in batch.drain(..) {
            ConcurrentQueue::push(self, item).expect("unbounded");
        }
    }

    fn take_now(&self) -> Option<u64> {
        self.pop().ok()
    }
}

/// ns per lock section: push 1, take 1, `CYCLES` times.
fn uncontended(queue: &impl Queue) -> f64 {
    let mut batch = Vec::with_capacity(1);
    let start = Instant::now();
    for i in 0..CYCLES {
        batch.push(i);
        queue.push(&mut batch);
        black_box(queue.take_now());
    }
    start.elapsed().as_nanos() as f64 / (2 * CYCLES) as f64
}

/// ns per item: push 32, take 32, `CYCLES / 32` times.
fn batched(queue: &impl Queue) -> f64 {
    let mut batch = Vec::with_capacity(BATCH as usize);
    let start = Instant::now();
    for round in 0..CYCLES / BATCH {
        batch.extend(round * BATCH..(round + 1) * BATCH);
        queue.push(&mut batch);
        for _ in 0..BATCH {
            black_box(queue.take_now());
        }
    }
    start.elapsed().as_nanos() as f64 / CYCLES as f64
}

/// ns per item with a producer and a consumer thread on one queue.
fn contended<Q: Queue>(queue: Arc<Q>) -> f64 {
    let start = Instant::now();
    let producer = {
        let queue = Arc::clone(&queue);
        std::thread::spawn(move || {
            let mut batch = Vec::with_capacity(BATCH as usize);
            for round in 0..CONTENDED_ITEMS / BATCH {
                batch.extend(round * BATCH..(round + 1) * BATCH);
                queue.push(&mut batch);
            }
        })
    };
    let mut taken = 0;
    while taken < CONTENDED_ITEMS {
        match queue.take_now() {
            Some(item) => {
                black_box(item);
                taken += 1;
            }
            None => std::hint::spin_loop(),
        }
    }
    producer.join().expect("producer");
    start.elapsed().as_nanos() as f64 / CONTENDED_ITEMS as f64
}

fn probe() -> QueueProbe {
    QueueProbe::new(ROOM, ShedPolicy::DropNewest)
}

/// Runs `a` and `b` alternately, `rounds` times after one warm-up each.
fn interleave(rounds: usize, a: impl Fn() -> f64, b: impl Fn() -> f64) -> (Vec<f64>, Vec<f64>) {
    a();
    b();
    let (mut xs, mut ys) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            xs.push(a());
            ys.push(b());
        } else {
            ys.push(b());
            xs.push(a());
        }
    }
    (xs, ys)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn row(what: &str, unit: &str, a: &[f64], b: &[f64], anchor: &str) {
    let ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    println!(
        "| {what} | {:.1} {unit} | {:.1} {unit} ({anchor}) | **{:.2}×** |",
        median(a),
        median(b),
        median(&ratios)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = match args.iter().position(|a| a == "--rounds") {
        Some(i) => args[i + 1].parse().expect("--rounds N"),
        None => 15,
    };
    let started = Instant::now();
    println!("# {rounds} interleaved rounds per row; medians; lower is better");
    println!("| measurement | this crate's queue | anchor | ratio |");
    println!("|---|---|---|---|");
    let (a, b) = interleave(
        rounds,
        || uncontended(&probe()),
        || uncontended(&Bare::default()),
    );
    row(
        "uncontended lock section (push 1, take 1)",
        "ns",
        &a,
        &b,
        "bare Mutex<VecDeque>",
    );
    let (a, b) = interleave(rounds, || batched(&probe()), || batched(&Bare::default()));
    row(
        "push 32 then take 32, per item",
        "ns",
        &a,
        &b,
        "bare Mutex<VecDeque>",
    );
    let (a, b) = interleave(
        rounds,
        || contended(Arc::new(probe())),
        || contended(Arc::new(Bare::default())),
    );
    row(
        "contended, 2 threads, per item",
        "ns",
        &a,
        &b,
        "bare Mutex<VecDeque>",
    );
    let (c, d) = interleave(
        rounds,
        || contended(Arc::new(probe())),
        || contended(Arc::new(ConcurrentQueue::unbounded())),
    );
    row(
        "contended, 2 threads, per item",
        "ns",
        &c,
        &d,
        "lock-free ConcurrentQueue",
    );
    println!("\n# took {:.0} s", started.elapsed().as_secs_f64());
}
