//! The three shapes of the results buffer, one per [`ResultOrder`].
//!
//! # Input order
//!
//! Items are numbered as workers take them (densely, in queue order; see
//! `queue`) and reordered here, on the consumer's side. A window of
//! `workers + capacity` permits bounds how far taking may run ahead of
//! delivery, so the reorder map holds at most that many entries: a worker
//! takes a permit before taking an item, and the consumer returns it when
//! that item's turn is delivered; an item without a result returns it as
//! soon as its turn comes, without the consumer. A hand-over never waits
//! for room. The window is a tokio [`Semaphore`] (its waiting is tokio's, and
//! is left out of this crate's loom models).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::task::Waker;

use tokio::sync::Semaphore;

use crate::ResultOrder;

pub(super) enum Buf<T> {
    /// Completion order: a FIFO of at most `capacity` results.
    Fifo {
        results: VecDeque<T>,
        capacity: usize,
    },
    /// Input order: results by sequence number.
    Ordered {
        window: Arc<Semaphore>,
        /// Sequence number of the next item to deliver or skip.
        next: u64,
        /// Arrived, by sequence number; `None` marks an item without a result.
        early: BTreeMap<u64, Option<T>>,
    },
    /// Latest only: one slot; a newer result replaces an unread one.
    Latest(Option<T>),
}

impl<T> Buf<T> {
    /// An empty buffer, and the input-order window for the senders.
    pub(super) fn new(
        capacity: usize,
        order: ResultOrder,
        workers: usize,
    ) -> (Buf<T>, Option<Arc<Semaphore>>) {
        match order {
            ResultOrder::Completion => (
                Buf::Fifo {
                    // Grows on demand: a huge capacity is a bound, not a reservation.
                    results: VecDeque::with_capacity(capacity.min(1024)),
                    capacity,
                },
                None,
            ),
            ResultOrder::Input => {
                let permits = workers.saturating_add(capacity).min(Semaphore::MAX_PERMITS);
                let window = Arc::new(Semaphore::new(permits));
                let buf = Buf::Ordered {
                    window: Arc::clone(&window),
                    next: 0,
                    early: BTreeMap::new(),
                };
                (buf, Some(window))
            }
            ResultOrder::LatestOnly => (Buf::Latest(None), None),
        }
    }

    /// Takes out every buffered result; input order closes its window, so
    /// no worker waits for a turn that no one will deliver.
    pub(super) fn drain(&mut self) -> Vec<T> {
        match self {
            Buf::Fifo { results, .. } => results.drain(..).collect(),
            Buf::Ordered { window, early, .. } => {
                window.close();
                std::mem::take(early).into_values().flatten().collect()
            }
            Buf::Latest(slot) => slot.take().into_iter().collect(),
        }
    }

    /// Whether no result is held, in turn or not. Once every sender is gone
    /// this means nothing is left for the consumer.
    pub(super) fn holds_no_result(&self) -> bool {
        match self {
            Buf::Fifo { results, .. } => results.is_empty(),
            Buf::Latest(slot) => slot.is_none(),
            Buf::Ordered { early, .. } => early.values().all(Option::is_none),
        }
    }

    /// Results the consumer can take now without waiting.
    pub(super) fn ready_len(&self) -> usize {
        match self {
            Buf::Fifo { results, .. } => results.len(),
            Buf::Latest(slot) => usize::from(slot.is_some()),
            // Results that arrived out of turn may wait on a slow item: only
            // the in-turn run counts.
            Buf::Ordered { next, early, .. } => early
                .range(*next..)
                .zip(*next..)
                .take_while(|((seq, _), expected)| *seq == expected)
                .filter(|((_, turn), _)| turn.is_some())
                .count(),
        }
    }

    /// Input and latest-only order: puts the outcome of item `seq` in
    /// place. Returns what it replaced (to be discarded) and whether the
    /// consumer can now progress.
    pub(super) fn place(&mut self, seq: u64, result: Option<T>) -> (Option<T>, bool) {
        match self {
            Buf::Ordered {
                window,
                next,
                early,
            } => {
                early.insert(seq, result);
                // Items without a result at the head of the line are skipped
                // now, not at the reader's next poll: their places in the
                // window come back at once, so workers never wait for a
                // reader to skip what nobody will read (`join` waits only for
                // results that exist; a fresh-user trial found it hanging on
                // a window full of timed-out items).
                while early.get(next).is_some_and(Option::is_none) {
                    early.remove(next);
                    *next += 1;
                    window.add_permits(1);
                }
                (None, early.contains_key(next))
            }
            Buf::Latest(slot) => match result {
                Some(result) => (slot.replace(result), true),
                None => (None, false),
            },
            Buf::Fifo { .. } => unreachable!("Buf::place: completion order hands over"),
        }
    }

    /// The consumer's next result, if one is ready; `senders` is how many
    /// senders are still alive. In completion order, also the waiting
    /// sender to wake now that a pop made room.
    #[inline]
    pub(super) fn next(
        &mut self,
        senders: usize,
        waiting: &mut crate::queue::WaitList,
    ) -> (Option<T>, Option<Waker>) {
        match self {
            Buf::Fifo { results, .. } => match results.pop_front() {
                Some(result) => (Some(result), waiting.wake_one()),
                None => (None, None),
            },
            Buf::Latest(slot) => (slot.take(), None),
            Buf::Ordered {
                window,
                next,
                early,
            } => loop {
                if let Some(turn) = early.remove(next) {
                    *next += 1;
                    window.add_permits(1);
                    match turn {
                        Some(result) => break (Some(result), None),
                        None => continue,
                    }
                }
                if senders > 0 {
                    break (None, None);
                }
                // Every worker has exited. A gap can only be an item whose
                // worker died outside its panic isolation: skip it.
                match early.pop_first() {
                    Some((seq, turn)) => {
                        *next = seq + 1;
                        if turn.is_some() {
                            break (turn, None);
                        }
                    }
                    None => break (None, None),
                }
            },
        }
    }
}
