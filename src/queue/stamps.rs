//! When queued items were queued: one stamp per push, nothing per take.
//!
//! Items leave the queue from its front only (taken, evicted, abandoned),
//! in the order they were pushed, so an item is known by its place in push
//! order, and the oldest queued item is the first that has not left. A push
//! records one run: its instant and the count of items ever pushed once it
//! was queued. A take or an eviction only counts the items that left; runs
//! whose items have all left are dropped at the next push or read. So a
//! take costs one addition; a push one clock read (made by the queue,
//! outside its lock) and one `VecDeque` push. A stream front queues a batch
//! of up to [`MAX_INTAKE_BATCH`](crate::FanOutConfig::MAX_INTAKE_BATCH)
//! items per push, whose items share one instant; a push front's offer is a
//! push of one item.
//!
//! # Invariants
//!
//! 1. **Runs follow items** (the queue's invariant 6): `pushed - left` is
//!    the number of queued items; runs are in push order, each run's end
//!    is greater than the one before, and the last run's end is `pushed`
//!    (while any item was ever pushed and not all are gone).
//! 2. **The first live run is the oldest item's.** The item `left` (0-based,
//!    in push order) is the oldest queued one; its stamp is that of the
//!    first run whose end is greater than `left`.

use std::collections::VecDeque;

use tokio::time::Instant;

/// The queued items' stamps, one run per push.
#[derive(Debug, Default)]
pub(super) struct Stamps {
    /// `(queued at, items ever pushed after this push)`, oldest first
    /// (invariant 1); runs that have wholly left may linger until pruned.
    runs: VecDeque<(Instant, u64)>,
    /// Items ever queued.
    pushed: u64,
    /// Items that left the queue, from its front.
    left: u64,
}

impl Stamps {
    /// `n` items were queued at `at`, after every item already stamped.
    #[inline]
    pub(super) fn push(&mut self, at: Instant, n: usize) {
        if n > 0 {
            self.prune();
            self.pushed += n as u64;
            self.runs.push_back((at, self.pushed));
        }
    }

    /// The `n` oldest items left the queue (taken or evicted).
    #[inline]
    pub(super) fn leave(&mut self, n: usize) {
        self.left += n as u64;
        debug_assert!(self.left <= self.pushed, "Stamps: more left than pushed");
    }

    /// When the oldest queued item was queued (invariant 2).
    pub(super) fn oldest(&mut self) -> Option<Instant> {
        self.prune();
        self.runs.front().map(|&(at, _)| at)
    }

    /// Every item left the queue (abandoned).
    pub(super) fn clear(&mut self) {
        self.runs.clear();
        self.left = self.pushed;
    }

    /// Items stamped and not gone (invariant 1).
    pub(super) fn len(&self) -> usize {
        (self.pushed - self.left) as usize
    }

    /// Drops the runs whose items have all left.
    #[inline]
    fn prune(&mut self) {
        while let Some(&(_, end)) = self.runs.front() {
            if end > self.left {
                return;
            }
            self.runs.pop_front();
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_oldest_is_the_first_run_not_wholly_gone() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(1);
        let mut stamps = Stamps::default();
        assert_eq!((stamps.len(), stamps.oldest()), (0, None));
        stamps.push(t0, 3);
        stamps.push(t1, 0); // an empty push adds no run
        stamps.push(t1, 2);
        assert_eq!((stamps.len(), stamps.oldest()), (5, Some(t0)));
        stamps.leave(1); // taken
        assert_eq!((stamps.len(), stamps.oldest()), (4, Some(t0)));
        stamps.leave(3); // the last 2 of t0's run and the first of t1's
        assert_eq!((stamps.len(), stamps.oldest()), (1, Some(t1)));
        stamps.leave(1);
        assert_eq!((stamps.len(), stamps.oldest()), (0, None));
        stamps.push(t0, 4);
        stamps.clear();
        assert_eq!((stamps.len(), stamps.oldest()), (0, None));
        stamps.push(t1, 1);
        assert_eq!((stamps.len(), stamps.oldest()), (1, Some(t1)));
    }
}
