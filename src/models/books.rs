//! Model of the books: a live snapshot read while a worker counts.

use std::sync::atomic::Ordering::{Acquire, Release};

use crate::books::{Books, Fate, ResultCounts, results_waiting};
use crate::sync::AtomicU64;

/// No results in this model.
pub(super) struct NoResults;

impl ResultCounts for NoResults {
    fn delivered(&self) -> u64 {
        0
    }

    fn discarded(&self) -> u64 {
        0
    }
}

/// `books` invariant 2: a snapshot taken while a worker takes and finishes
/// items never shows more finished than taken (nor a negative in-flight
/// count), whatever it sees of the worker's stores.
///
/// Guard: the fates are stored with `Release` (`bump`) and loaded with
/// `Acquire` before `taken`. Shown to fail by storing with `Relaxed`: loom
/// lets the snapshot see a fate without the take before it, and the
/// assertion below fires (as does the `debug_assert!` in `Books::counts`).
#[test]
fn loom_a_snapshot_never_shows_more_finished_than_taken() {
    loom::model(|| {
        let books = std::sync::Arc::new(Books::new(1));
        let worker = super::spawn(&books, |books| {
            for fate in [Fate::Processed, Fate::Failed] {
                books.worker(0).took();
                books.worker(0).ended(fate);
            }
        });
        // Loom explores a plain load-then-store (`bump`) against this
        // thread's loads only from a yield point.
        loom::thread::yield_now();
        let counts = books.counts(&NoResults);
        let finished = counts.processed + counts.failed;
        assert!(finished <= counts.taken, "more finished than taken");
        assert!(counts.in_flight <= 1 && finished <= 2);
        worker.join().unwrap();
        let end = books.counts(&NoResults);
        assert_eq!((end.processed, end.failed, end.in_flight), (1, 1, 0));
    });
}

/// `books` invariant 4: a snapshot taken while the intake counts arrivals
/// and sheds never shows more shed than produced, on either way of
/// counting (the stream intake's `bump`, the push producers' `fetch_add`).
///
/// Guard: `dropped` is loaded before `produced`. Shown to fail by loading
/// `produced` first: loom lets the snapshot miss an arrival whose shed it
/// then sees.
#[test]
fn loom_a_snapshot_never_shows_more_shed_than_produced() {
    for shared in [false, true] {
        loom::model(move || {
            let books = std::sync::Arc::new(Books::new(1));
            let intake = super::spawn(&books, move |books| {
                for _ in 0..2 {
                    if shared {
                        books.intake.count_shared(1, 1);
                    } else {
                        books.intake.count_alone(1, 1);
                    }
                }
            });
            loom::thread::yield_now();
            let counts = books.counts(&NoResults);
            assert!(counts.dropped <= counts.produced, "more shed than produced");
            intake.join().unwrap();
            let end = books.counts(&NoResults);
            assert_eq!((end.produced, end.dropped), (2, 2));
        });
    }
}

/// A worker and a consumer handing results over one at a time (a buffer of
/// none: the worker holds each result until it is delivered), and the
/// results side's count of them.
#[derive(Default)]
struct HandOver {
    /// Results the worker has offered so far.
    offered: AtomicU64,
    /// Results the consumer has taken so far.
    delivered: AtomicU64,
}

impl ResultCounts for HandOver {
    fn delivered(&self) -> u64 {
        self.delivered.load(Acquire)
    }

    fn discarded(&self) -> u64 {
        0
    }
}

/// Spins, yielding to loom, until `counter` reaches `n`.
fn wait_for(counter: &AtomicU64, n: u64) {
    while counter.load(Acquire) < n {
        loom::thread::yield_now();
    }
}

/// `books` invariant 5: a snapshot taken while a worker finishes items and
/// a consumer takes their results never shows more results waiting than
/// could wait (here one: the worker holds each result until it is taken).
///
/// Guard: `results_waiting` loads `delivered` again after `counts` loaded
/// `processed`. Shown to fail by taking it against the counts' own
/// `delivered` (loaded before `processed`): loom finds the snapshot that
/// loads `delivered` 0, then `processed` 2.
#[test]
fn loom_a_snapshot_never_shows_more_results_waiting_than_wait() {
    loom::model(|| {
        let books = std::sync::Arc::new((Books::new(1), HandOver::default()));
        let worker = super::spawn(&books, |books| {
            let (books, results) = &*books;
            for n in 1..=2 {
                books.worker(0).took();
                books.worker(0).ended(Fate::Processed);
                results.offered.store(n, Release);
                wait_for(&results.delivered, n);
            }
        });
        let consumer = super::spawn(&books, |books| {
            let results = &books.1;
            for n in 1..=2 {
                wait_for(&results.offered, n);
                results.delivered.store(n, Release);
            }
        });
        let (books, results) = &*books;
        let counts = books.counts(results);
        assert!(counts.delivered <= counts.processed, "invariant 3");
        let waiting = results_waiting(&counts, results);
        assert!(waiting <= 1, "{waiting} results waiting, at most 1 can");
        worker.join().unwrap();
        consumer.join().unwrap();
        let end = books.counts(results);
        assert_eq!((end.processed, end.delivered), (2, 2));
        assert_eq!(results_waiting(&end, results), 0);
    });
}
