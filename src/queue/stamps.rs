//! When queued items were queued: one stamp per push, nothing per take.
//!
//! Items leave the queue from its front (taken, evicted, abandoned), in the
//! order they were pushed, so an item is known by its place in push order,
//! and the oldest queued item is the first that has not left. The one
//! exception, a withdrawn item leaving from the middle, renumbers the items
//! pushed after it (O(runs), as the withdrawal's own search is O(items)). A push
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

    /// The queued item `at` places behind the oldest left from the middle
    /// of the queue (withdrawn): the items pushed after it move one place
    /// forward, and a run left empty goes (invariant 1).
    pub(super) fn remove(&mut self, at: usize) {
        let index = self.left + at as u64;
        debug_assert!(index < self.pushed, "Stamps: removed an item not queued");
        self.pushed -= 1;
        // The run holding the item: the first whose end is past it.
        let run = self.runs.partition_point(|&(_, end)| end <= index);
        self.runs.range_mut(run..).for_each(|(_, end)| *end -= 1);
        let start = match run {
            0 => self.left,
            _ => self.runs[run - 1].1.max(self.left),
        };
        if self.runs.get(run).is_some_and(|&(_, end)| end <= start) {
            self.runs.remove(run);
        }
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

    #[test]
    fn a_withdrawn_item_leaves_from_the_middle() {
        let t0 = Instant::now();
        let [t1, t2] = [1, 2].map(|ms| t0 + Duration::from_millis(ms));
        let mut stamps = Stamps::default();
        stamps.push(t0, 2);
        stamps.push(t1, 1);
        stamps.push(t2, 2);
        stamps.remove(2); // t1's only item: its run goes
        assert_eq!((stamps.len(), stamps.runs.len()), (4, 2));
        stamps.remove(0); // the oldest, by withdrawal
        assert_eq!((stamps.len(), stamps.oldest()), (3, Some(t0)));
        stamps.leave(1); // t0's last item taken
        assert_eq!((stamps.len(), stamps.oldest()), (2, Some(t2)));
        stamps.remove(1);
        stamps.remove(0);
        assert_eq!((stamps.len(), stamps.oldest()), (0, None));
        stamps.push(t1, 1);
        assert_eq!((stamps.len(), stamps.oldest()), (1, Some(t1)));
    }
}
