//! Model of the books: a live snapshot read while a worker counts.

use crate::books::{Books, Fate, ResultCounts};

/// No results in this model.
struct NoResults;

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
