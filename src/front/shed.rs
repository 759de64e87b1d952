//! The one after-shed path: what every front does with what its policy
//! shed, so that a setting honoured on one front is honoured on all.
//!
//! The counts are taken by the push itself, under the queue's lock; here,
//! after unlocking: every shed item is settled (`Outcome::Shed`), then
//! handed to `on_shed` or dropped, unless the front hands it back to its
//! producer.

use crate::ShedPolicy;
use crate::control::Hooks;
use crate::isolate::{catching, drop_quietly};
use crate::settle::{Outcome, ShedReason};

/// Who gets the items a push shed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Disposal {
    /// The `on_shed` hook, or nobody (they are dropped).
    Hook,
    /// The producer, who gets them back by value (an offer's answer).
    Producer,
}

/// Why items were shed: one reason for a whole push, or one per item (a
/// keyed push sheds from several keys, for several reasons).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Why<'a> {
    All(ShedReason),
    /// With whether each was the arrival itself (unused here).
    Each(&'a [(ShedReason, bool)]),
}

/// Why `policy` sheds what it sheds.
pub(crate) fn reason(policy: ShedPolicy) -> ShedReason {
    match policy {
        ShedPolicy::DropOldest => ShedReason::Oldest,
        _ => ShedReason::Newest,
    }
}

/// After a push that shed `count` items (kept in `shed` if anything needs
/// them): settles them and disposes of them. No lock is held; every hook
/// call is isolated. (The push recorded the overload episode itself.)
pub(crate) fn after_shed<Item>(
    hooks: Option<&Hooks<Item>>,
    shed: &mut Vec<Item>,
    count: usize,
    why: Why<'_>,
    disposal: Disposal,
) {
    if count == 0 {
        return;
    }
    if let Some(hooks) = hooks {
        for (at, item) in shed.iter().enumerate() {
            let reason = match why {
                Why::All(reason) => reason,
                Why::Each(reasons) => reasons[at].0,
            };
            hooks.record(item, Outcome::Shed(reason));
        }
    }
    if disposal == Disposal::Producer {
        return;
    }
    match hooks.and_then(|hooks| hooks.on_shed.as_deref()) {
        Some(hook) => shed.drain(..).for_each(|item| {
            catching(|| hook(item));
        }),
        // Items without drop glue run no user code: clear in one go.
        None if !std::mem::needs_drop::<Item>() => shed.clear(),
        None => shed.drain(..).for_each(drop_quietly),
    }
}
