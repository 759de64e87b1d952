//! A front's side of keyed pipelines: the keys of what it pushes, taken
//! outside every lock, and what happens to an item whose key function
//! panicked.

use std::any::Any;

use super::FrontParts;
use crate::config::Keying;
use crate::control::Hooks;
use crate::isolate::drop_quietly;
use crate::queue::{HandOff, Pushed};
use crate::settle::{Outcome, ShedReason};

/// The keys of one push, and the reasons of what it shed.
pub(crate) struct Keyer {
    /// A `VecDeque<K>`: one key per item of the batch being pushed.
    keys: Box<dyn Any + Send>,
    /// One reason per shed item of the last push, and whether it was the
    /// arrival itself.
    pub(crate) reasons: Vec<(ShedReason, bool)>,
    /// The front key's room was kept for this producer (it waited for it in
    /// line): its next push uses it.
    granted: bool,
}

impl Keyer {
    pub(crate) fn new<Item>(keying: &dyn Keying<Item>) -> Self {
        Keyer {
            keys: keying.new_keys(),
            reasons: Vec::new(),
            granted: false,
        }
    }

    /// The keys and the grant, for a wait for the front key's room.
    pub(crate) fn waiting(&mut self) -> (&mut (dyn Any + Send), &mut bool) {
        (&mut *self.keys, &mut self.granted)
    }

    /// This producer stops waiting for its front key (dropped, refused, or
    /// giving up): its place in line, or the place kept for it, passes on
    /// (invariant 5 of `queue/keyed.rs`). Spends the keys: a key this
    /// producer interned for its place (held by id, see `queue::Keys`) may
    /// be forgotten now and its id reused for another key, so an item that
    /// is to be pushed after all is keyed afresh (a review found the id
    /// reused by a retry).
    pub(crate) fn leave<Item>(self, queue: &HandOff<Item>, ticket: Option<u64>) {
        queue.leave_key_room(&*self.keys, ticket, self.granted);
    }

    /// Whether this producer holds a place kept for it in its front key
    /// (its next push uses it).
    pub(crate) fn holds_place(&self) -> bool {
        self.granted
    }

    /// Gives the place it holds back ([`leave`](Self::leave): the keys are
    /// spent) and keys `batch` afresh, for a fallback that should never
    /// run (a push with a kept place finding its key full).
    pub(crate) fn release_and_rekey<Item>(
        &mut self,
        queue: &HandOff<Item>,
        keying: &dyn Keying<Item>,
        batch: &mut Vec<Item>,
        unkeyed: &mut Vec<Item>,
    ) {
        std::mem::replace(self, Keyer::new(keying)).leave(queue, None);
        self.key(keying, batch, unkeyed);
    }

    /// Takes the key of every item of `batch`, in order; the items whose key
    /// function panicked are moved to `unkeyed`.
    pub(crate) fn key<Item>(
        &mut self,
        keying: &dyn Keying<Item>,
        batch: &mut Vec<Item>,
        unkeyed: &mut Vec<Item>,
    ) {
        keying.key_batch(batch, &mut *self.keys, unkeyed);
    }

    /// Pushes `batch` (keyed by [`key`](Self::key)) into the queue; items
    /// whose key's `Eq` panicked come back in `unkeyed`, their keys
    /// dropped.
    pub(crate) fn push<Item>(
        &mut self,
        front: &FrontParts<Item>,
        batch: &mut Vec<Item>,
        shed: &mut Vec<Item>,
        unkeyed: &mut Vec<Item>,
        count: impl FnOnce(usize, usize),
    ) -> Pushed {
        self.reasons.clear();
        front.queue.push_keyed(
            batch,
            &mut *self.keys,
            &mut self.granted,
            shed,
            &mut self.reasons,
            unkeyed,
            count,
        )
    }

    /// Forgets the keys of items that will not be pushed after all.
    pub(crate) fn clear<Item>(&mut self, keying: &dyn Keying<Item>) {
        self.keys = keying.new_keys();
        // (The queue is closed: its grants have lapsed.)
        self.granted = false;
    }
}

/// Items taken from the input whose key function panicked: counted
/// `produced` and `failed`, settled `Failed`, never started.
pub(crate) fn fail_unkeyed<Item>(
    front: &FrontParts<Item>,
    hooks: Option<&Hooks<Item>>,
    unkeyed: &mut Vec<Item>,
) {
    if unkeyed.is_empty() {
        return;
    }
    front.books.intake.count_shared(unkeyed.len(), 0);
    front.books.fail_unqueued(unkeyed.len());
    for item in unkeyed.drain(..) {
        if let Some(hooks) = hooks {
            hooks.record(&item, Outcome::Failed);
        }
        drop_quietly(item);
    }
}
