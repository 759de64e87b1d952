//! The results channel, in completion order or in input order.
//!
//! Ordered mode numbers items as workers take them (densely, in queue
//! order; see `handoff`) and reorders on the consumer's side. A window of
//! `workers + output_capacity` permits bounds how far taking may run ahead
//! of delivery, so the reorder buffer holds at most that many results: a
//! worker takes a permit before taking an item, and the consumer returns it
//! when that item's turn is delivered or skipped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use tokio::sync::{Semaphore, mpsc};

use crate::isolate::drop_quietly;

/// The workers' side.
pub(crate) enum Sender<T> {
    Unordered(mpsc::Sender<T>),
    Ordered {
        tx: mpsc::Sender<(u64, Option<T>)>,
        window: Arc<Semaphore>,
    },
}

/// The consumer's side, owned by `BoundedFanOut`.
pub(crate) enum Receiver<T> {
    Unordered(mpsc::Receiver<T>),
    Ordered {
        rx: mpsc::Receiver<(u64, Option<T>)>,
        window: Arc<Semaphore>,
        /// Sequence number of the next item to deliver or skip.
        next: u64,
        /// Arrived out of turn; `None` marks an item without a result. In a
        /// `Mutex` only so the stream stays `Sync` for any `Send` output
        /// (as `mpsc::Receiver` is); `poll_recv` reaches it through
        /// `get_mut`, without locking.
        early: Mutex<BTreeMap<u64, Option<T>>>,
    },
}

/// A results channel of `capacity` undelivered results; in ordered mode the
/// reorder window is `workers + capacity`.
pub(crate) fn channel<T>(
    capacity: usize,
    ordered: bool,
    workers: usize,
) -> (Sender<T>, Receiver<T>) {
    if !ordered {
        let (tx, rx) = mpsc::channel(capacity);
        return (Sender::Unordered(tx), Receiver::Unordered(rx));
    }
    let window = workers.saturating_add(capacity).min(Semaphore::MAX_PERMITS);
    let window = Arc::new(Semaphore::new(window));
    let (tx, rx) = mpsc::channel(capacity);
    let sender = Sender::Ordered {
        tx,
        window: Arc::clone(&window),
    };
    let receiver = Receiver::Ordered {
        rx,
        window,
        next: 0,
        early: Mutex::new(BTreeMap::new()),
    };
    (sender, receiver)
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        match self {
            Sender::Unordered(tx) => Sender::Unordered(tx.clone()),
            Sender::Ordered { tx, window } => Sender::Ordered {
                tx: tx.clone(),
                window: Arc::clone(window),
            },
        }
    }
}

impl<T> Sender<T> {
    pub(crate) fn is_ordered(&self) -> bool {
        matches!(self, Sender::Ordered { .. })
    }

    /// Ordered mode: waits until the item about to be taken fits in the
    /// reorder window. Returns at once if the consumer is gone.
    pub(crate) async fn reserve_turn(&self) {
        if let Sender::Ordered { window, .. } = self {
            if let Ok(permit) = window.acquire().await {
                permit.forget();
            }
        }
    }

    /// Hands over the outcome of the item taken as number `seq`; `None` if
    /// it produced no result. Waits for room; never drops a result while the
    /// consumer lives.
    pub(crate) async fn deliver(&self, seq: u64, result: Option<T>) {
        // A send error only means the consumer is gone. The result comes
        // back in the error and is dropped here: its `Drop` is user code.
        match self {
            Sender::Unordered(tx) => {
                if let Some(result) = result {
                    if let Err(unsent) = tx.send(result).await {
                        drop_quietly(unsent);
                    }
                }
            }
            Sender::Ordered { tx, .. } => {
                if let Err(unsent) = tx.send((seq, result)).await {
                    drop_quietly(unsent);
                }
            }
        }
    }
}

impl<T> Receiver<T> {
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        match self {
            Receiver::Unordered(rx) => rx.poll_recv(cx),
            Receiver::Ordered {
                rx,
                window,
                next,
                early,
            } => loop {
                let early = early.get_mut().unwrap_or_else(PoisonError::into_inner);
                if let Some(turn) = early.remove(next) {
                    *next += 1;
                    window.add_permits(1);
                    match turn {
                        Some(result) => return Poll::Ready(Some(result)),
                        None => continue,
                    }
                }
                match ready!(rx.poll_recv(cx)) {
                    Some((seq, turn)) => {
                        early.insert(seq, turn);
                    }
                    // Every worker has exited. A gap can only be an item whose
                    // worker died outside its panic isolation: skip it.
                    None => match early.pop_first() {
                        Some((seq, turn)) => {
                            *next = seq + 1;
                            if let Some(result) = turn {
                                return Poll::Ready(Some(result));
                            }
                        }
                        None => return Poll::Ready(None),
                    },
                }
            },
        }
    }

    /// Results that the next polls will return without waiting (a lower
    /// bound for `size_hint`).
    pub(crate) fn ready_len(&self) -> usize {
        match self {
            Receiver::Unordered(rx) => rx.len(),
            // Results queued out of turn may wait on a slow item: only the
            // in-turn run counts.
            Receiver::Ordered { next, early, .. } => early
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .range(*next..)
                .zip(*next..)
                .take_while(|((seq, _), expected)| *seq == expected)
                .filter(|((_, turn), _)| turn.is_some())
                .count(),
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Workers must never wait for a turn that no one will deliver.
        if let Receiver::Ordered { window, .. } = self {
            window.close();
        }
    }
}
