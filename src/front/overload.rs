//! Overload episodes: one event when shedding starts, one when it stops.
//!
//! Producers of the push front shed from any task, so the episode state is
//! shared under a lock; the events it decides are queued there and emitted
//! by the front's own task (the stream intake, or the push front's task),
//! one at a time and in order, with no lock held: the hook is user code.
//!
//! # Invariants
//!
//! 1. **Every shed the books count is in an episode.** A push front's
//!    producer records its push here in the same step, under the queue's
//!    lock, as the books count what it shed. The queue is closed under
//!    that lock before the front's task ends the open episode ([`finish`]):
//!    by the stop, and by the front's task itself before it finishes (a
//!    parent token's `cancel()` lets the task see the stop before the stop
//!    has closed the queue), so the last `Ended` has every shed counted
//!    `dropped`. (Recorded after unlocking, a shed racing a stop was
//!    counted `dropped` but joined an episode already emitted, or opened
//!    one never emitted: a new-user trial found `Ended` counts one short of
//!    `dropped`.) The stream front records and finishes on its own task,
//!    in order.
//! 2. **An episode ends once its quiet period has passed**, whoever
//!    notices first: the front's quiet timer, or the next push, which ends
//!    it before recording its own shed.
//! 3. The episode lock is taken alone or under the queue's lock, never the
//!    other way round; no waker or user code runs under it (the front's
//!    task is woken after unlocking, by the caller of [`record_quietly`]).
//!
//! [`finish`]: Overload::finish
//! [`record_quietly`]: Overload::record_quietly

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::export::EpisodeMeter;
use crate::isolate::catching;
use crate::sync::{Mutex, lock};

/// The start or end of an overload episode, given to
/// [`FanOutConfig::on_overload`](crate::FanOutConfig::on_overload).
///
/// An episode starts with the first item shed after a quiet period and ends
/// once no item has been shed for the
/// [quiet period](crate::FanOutConfig::overload_quiet_period), or when intake
/// stops. The alarm is edge-triggered: two events per episode, however many
/// items it shed.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use backpressure_pipeline::OverloadEvent;
///
/// let end = OverloadEvent::Ended { shed: 12, duration: Duration::from_millis(40) };
/// assert_eq!(end.to_string(), "overload ended: 12 items shed over 40ms");
/// assert_eq!(OverloadEvent::Started.to_string(), "overload started: shedding");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OverloadEvent {
    /// The queue was full and the policy shed an item.
    Started,
    /// The episode is over.
    Ended {
        /// Items shed during the episode.
        shed: u64,
        /// From the first to the last shed item of the episode (the quiet
        /// period that closed it is not included).
        duration: Duration,
    },
}

impl std::fmt::Display for OverloadEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OverloadEvent::Started => f.write_str("overload started: shedding"),
            OverloadEvent::Ended { shed, duration } => {
                write!(f, "overload ended: {shed} items shed over {duration:?}")
            }
        }
    }
}

pub(crate) type OverloadHook = Arc<dyn Fn(OverloadEvent) + Send + Sync>;

struct Episode {
    first: Instant,
    last: Instant,
    shed: u64,
}

/// The episode detector, shared by a front's producers. Costs nothing per
/// item unless a hook is set (or the `tracing` or `metrics` feature is on),
/// and then one clock read and one uncontended lock per batch that sheds.
pub(crate) struct Overload {
    enabled: bool,
    quiet: Duration,
    state: Mutex<State>,
    /// Counts episodes as they start (the `metrics` feature).
    episodes: EpisodeMeter,
}

struct State {
    current: Option<Episode>,
    /// Decided, not yet emitted, in order.
    pending: VecDeque<OverloadEvent>,
    /// The front's task, to wake when an event is pending or an episode
    /// starts (it arms the quiet timer).
    emitter: Option<Waker>,
}

impl Overload {
    pub(crate) fn new(hook: bool, quiet: Duration, episodes: EpisodeMeter) -> Self {
        Overload {
            enabled: hook || cfg!(feature = "tracing") || cfg!(feature = "metrics"),
            quiet,
            episodes,
            state: Mutex::new(State {
                current: None,
                pending: VecDeque::new(),
                emitter: None,
            }),
        }
    }

    /// Records a push that shed `shed` items (0: a push that shed nothing),
    /// and wakes the front's task if that decided an event.
    pub(crate) fn record(&self, shed: usize) {
        if let Some(emitter) = self.record_quietly(shed) {
            emitter.wake();
        }
    }

    /// [`record`](Self::record), returning the front's task to wake
    /// instead of waking it: for a producer that records under the queue's
    /// lock (invariant 1 of the module).
    #[must_use]
    pub(crate) fn record_quietly(&self, shed: usize) -> Option<Waker> {
        if !self.enabled {
            return None;
        }
        let mut state = lock(&self.state);
        if shed == 0 && state.current.is_none() {
            return None;
        }
        let now = Instant::now();
        let before = state.pending.len();
        // A shed after the open episode's quiet period has passed begins a
        // new episode, even if the front's task has not yet ended the old
        // one (it may not have run: a busy or starved runtime). A new-user
        // trial saw two episodes reported as one.
        self.end_if_quiet_locked(&mut state, now);
        if shed > 0 {
            match state.current.as_mut() {
                Some(episode) => {
                    episode.last = now;
                    episode.shed += shed as u64;
                }
                None => {
                    state.current = Some(Episode {
                        first: now,
                        last: now,
                        shed: shed as u64,
                    });
                    state.pending.push_back(OverloadEvent::Started);
                }
            }
        }
        if state.pending.len() > before {
            state.emitter.take()
        } else {
            None
        }
    }

    fn end_if_quiet_locked(&self, state: &mut State, now: Instant) {
        let deadline = Self::deadline(state, self.quiet);
        if deadline.is_some_and(|deadline| now >= deadline) {
            Self::close(state);
        }
    }

    fn deadline(state: &State, quiet: Duration) -> Option<Instant> {
        state
            .current
            .as_ref()
            .and_then(|episode| episode.last.checked_add(quiet))
    }

    fn close(state: &mut State) {
        if let Some(episode) = state.current.take() {
            state.pending.push_back(OverloadEvent::Ended {
                shed: episode.shed,
                duration: episode.last - episode.first,
            });
        }
    }

    /// When the current episode ends if nothing more is shed.
    pub(crate) fn quiet_deadline(&self) -> Option<Instant> {
        if !self.enabled {
            return None;
        }
        Self::deadline(&lock(&self.state), self.quiet)
    }

    /// Ends the episode if its quiet period has passed by `now`.
    pub(crate) fn end_if_quiet(&self, now: Instant) {
        if self.enabled {
            self.end_if_quiet_locked(&mut lock(&self.state), now);
        }
    }

    /// Ends the current episode, if any (intake is over).
    pub(crate) fn finish(&self) {
        if self.enabled {
            Self::close(&mut lock(&self.state));
        }
    }

    /// The front's task registers to be woken when an event is pending.
    pub(crate) fn register_emitter(&self, waker: &Waker) {
        if self.enabled {
            lock(&self.state).emitter = Some(waker.clone());
        }
    }

    /// Emits the pending events, in order, with no lock held. Called by the
    /// front's own task only, so events never overtake each other.
    pub(crate) fn emit(&self, hook: Option<&OverloadHook>) {
        if !self.enabled {
            return;
        }
        loop {
            // Its own statement, so the guard is dropped before the hook
            // runs (a `while let` scrutinee's guard would live through the
            // body: a fresh-user trial found producers blocked behind a
            // slow hook, and a hook offering into its own pipeline
            // deadlocked).
            let next = lock(&self.state).pending.pop_front();
            let Some(event) = next else {
                break;
            };
            if event == OverloadEvent::Started {
                self.episodes.started();
            }
            #[cfg(feature = "tracing")]
            tracing::warn!(%event, "backpressure_pipeline overload");
            if let Some(hook) = hook {
                catching(|| hook(event));
            }
        }
    }
}
