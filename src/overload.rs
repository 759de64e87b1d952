//! Overload episodes: one event when shedding starts, one when it stops.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::isolate::{Quiet, catching};

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

/// The intake's episode detector. Costs nothing per item unless a hook is
/// set (or the `tracing` feature is on), and then one clock read per batch.
pub(crate) struct Episodes {
    hook: Quiet<Option<OverloadHook>>,
    quiet: Duration,
    current: Option<Episode>,
}

impl Episodes {
    pub(crate) fn new(hook: Option<OverloadHook>, quiet: Duration) -> Self {
        Episodes {
            hook: Quiet::new(hook),
            quiet,
            current: None,
        }
    }

    fn enabled(&self) -> bool {
        self.hook.is_some() || cfg!(feature = "tracing")
    }

    /// Records one queued batch that shed `shed` items.
    pub(crate) fn record(&mut self, shed: usize) {
        if !self.enabled() || (shed == 0 && self.current.is_none()) {
            return;
        }
        let now = Instant::now();
        match self.current.as_mut() {
            Some(episode) if shed > 0 => {
                episode.last = now;
                episode.shed += shed as u64;
            }
            Some(_) => self.end_if_quiet(now),
            None => {
                self.current = Some(Episode {
                    first: now,
                    last: now,
                    shed: shed as u64,
                });
                self.emit(OverloadEvent::Started);
            }
        }
    }

    /// When the current episode ends if nothing more is shed.
    pub(crate) fn quiet_deadline(&self) -> Option<Instant> {
        self.current
            .as_ref()
            .and_then(|episode| episode.last.checked_add(self.quiet))
    }

    /// Ends the episode if the quiet period has passed by `now`.
    pub(crate) fn end_if_quiet(&mut self, now: Instant) {
        if self
            .quiet_deadline()
            .is_some_and(|deadline| now >= deadline)
        {
            self.finish();
        }
    }

    /// Ends the current episode, if any (intake is stopping).
    pub(crate) fn finish(&mut self) {
        if let Some(episode) = self.current.take() {
            self.emit(OverloadEvent::Ended {
                shed: episode.shed,
                duration: episode.last - episode.first,
            });
        }
    }

    fn emit(&self, event: OverloadEvent) {
        #[cfg(feature = "tracing")]
        tracing::warn!(%event, "backpressure_pipeline overload");
        if let Some(hook) = &*self.hook {
            catching(|| hook(event));
        }
    }
}
