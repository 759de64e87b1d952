//! The front stage: what feeds the queue.
//!
//! * `stream`: the stream front, one intake task that pulls a `Stream`.
//! * `push`: the push front, [`Feeder`] handles that producers offer to,
//!   and a task that ends intake when they are all gone.
//! * `sink`: [`Feeder`] as a `futures::Sink`.
//! * `shed`: the one after-shed path both fronts take (settle, `on_shed`
//!   or hand back, overload episode).
//! * `overload`: the overload episodes and [`OverloadEvent`].
//! * `call`: the call front, request/response on the push front
//!   ([`Caller`], [`Call`]), with withdrawal; `slot`: one call's answer
//!   slot; `rejected`: [`Rejected`] and [`RejectReason`]; `tower` (the
//!   `tower` feature): `Caller` as a tower `Service`, and `CallLayer`.
//!
//! Each front gets the same [`FrontParts`] and pushes through the same
//! queue; what differs is only how items arrive and who gets a shed item
//! back.

mod call;
mod keys;
mod overload;
mod push;
mod rejected;
mod shed;
mod sink;
mod slot;
mod stream;
#[cfg(feature = "tower")]
mod tower;

use std::sync::Arc;

use crate::books::Books;
use crate::control::{Phase, Stopper};
use crate::queue::HandOff;
use crate::sched::Yielder;
use crate::settle::Credits;

pub use call::{Call, Caller};
pub(crate) use call::{handler as call_handler, outputs as call_outputs, settings_for_calls};
pub use overload::OverloadEvent;
pub(crate) use overload::{Overload, OverloadHook};
pub use push::{Feeder, Offer};
pub(crate) use push::{Producers, run as run_push};
pub use rejected::{RejectReason, Rejected};
pub(crate) use shed::Disposal;
pub(crate) use shed::reason as shed_reason;
pub use sink::SinkError;
#[cfg(all(test, loom))]
pub(crate) use slot::Slot;
pub(crate) use stream::run as run_stream;
#[cfg(feature = "tower")]
pub use tower::CallLayer;

/// What a front needs of the pipeline.
pub(crate) struct FrontParts<Item> {
    pub(crate) queue: Arc<HandOff<Item>>,
    pub(crate) phase: Arc<Phase>,
    pub(crate) books: Arc<Books>,
    /// To cancel what it took but cannot queue, and to lend the hooks.
    pub(crate) stopper: Stopper<Item>,
    /// Settlement credits, one per item taken, if the caller settles.
    pub(crate) credits: Option<Credits>,
    pub(crate) overload: Overload,
    pub(crate) yielder: Yielder,
    /// Which hooks a shed item needs, fixed at launch.
    pub(crate) shed_needs: ShedNeeds,
}

/// Which hooks a shed item needs: a push leases the hooks for what it shed
/// only if one of them is set (a lease is a lock and a count, taken under
/// the queue's lock).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShedNeeds {
    /// `on_shed` is set.
    pub(crate) on_shed: bool,
    /// Shed items are settled.
    pub(crate) settle: bool,
}

impl ShedNeeds {
    /// Whether what a push sheds for `disposal` needs the hooks.
    pub(crate) fn hooks(self, disposal: Disposal) -> bool {
        self.settle || (self.on_shed && disposal == Disposal::Hook)
    }
}

/// Closes the queue when a front ends in any way, including a panic or an
/// abort of its task, so workers always drain and exit.
struct CloseOnDrop<'a, Item>(&'a HandOff<Item>);

impl<Item> Drop for CloseOnDrop<'_, Item> {
    fn drop(&mut self) {
        self.0.close();
    }
}
