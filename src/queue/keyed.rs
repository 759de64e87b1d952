//! The queue's keyed mode: one FIFO per key, served round robin, shed per
//! key and from the fattest key.
//!
//! The scheduling follows FQ-CoDel (RFC 8290) with a quantum of one item:
//! keys with a queued item and nothing in flight wait in one ring, an idle
//! worker takes the oldest item of the key at the ring's head, and that key
//! rejoins the ring's tail only once its item has finished, so at most one
//! item of a key is in a handler at a time, a key's items start in arrival
//! order, and a hot key cannot starve the others. When the whole queue is
//! full, the arrival's key sheds within itself if it is the fattest, and
//! otherwise the fattest key gives up an item, as FQ-CoDel drops from the
//! fattest flow.
//!
//! # Invariants (under the queue's lock)
//!
//! 1. `total` is the sum of the slots' queued items, at most the capacity;
//!    a slot holds at most `per_key_capacity` items.
//! 2. A slot is in `by_len[n]` (at `pos`) exactly when it holds `n > 0`
//!    items; `fattest` is the largest `n` with a non-empty bucket (0 when
//!    nothing is queued).
//! 3. A key is in the ready ring exactly when it has queued items and
//!    nothing in flight (`in_ready`). The ring is a list threaded through
//!    the slots, so a key that loses its last item to shedding leaves it in
//!    O(1), and the ring never holds more than the keys with work.
//! 4. A slot is live (its key interned in the table) exactly while it has
//!    queued items, an item in flight, or producers waiting for its room
//!    (in line or granted; a producer that takes a place in a key nothing
//!    else tracks interns it, and holds its id in its `Keys`):
//!    keys tracked never exceed capacity + workers + waiting producers,
//!    whatever the number of distinct keys ever seen.
//! 5. **Room per key is first come, first served** (`Backpressure`): a
//!    key's room is `per_key_capacity` less its queued items less its
//!    `granted` place (a waiter woken for room it has not used yet). A
//!    push takes room only if the key has room left and nobody waits in
//!    its line, so a waiter woken for room keeps it. **At most one grant is
//!    outstanding per key** (`granted` is a flag): a freed place wakes the
//!    oldest waiter only while no grant is outstanding, and the holder,
//!    once it has pushed, passes the next place on to the next in line, so
//!    waiters enter in the order they began to wait even when several
//!    places free at once. A waiter dropped with its grant passes it on,
//!    and a grant nobody is left to use lapses. Waiters are in line only
//!    while the key has no room left or a grant is outstanding. A `send`
//!    or a call takes a grant before it waits for a queue slot (at once if
//!    the key has room, nobody in line and no grant out; else in line), so
//!    a key's producers enter in the order they began to wait whatever the
//!    queue's room (`take_place`).
//! 6. No user code runs here but the key type's `Eq` (which must not
//!    block), under a panic guard: a lookup only reads the table, and an
//!    arrival leaves its batch only once its key is found, so a panic
//!    loses nothing (the arrival goes back unkeyed, its key dropped after
//!    unlocking). Keys come hashed by their front, outside the lock, and
//!    the table grows by the stored hashes; a forgotten key whose `Drop`
//!    could be user code is handed back to be dropped after unlocking.

use std::any::Any;
use std::collections::VecDeque;

use tokio::time::Instant;

use std::task::{Context, Poll, Waker};

use super::keys::{KeyId, KeyTable};
use super::list::{Links, List};
use super::{HandOff, Pushed, Room, State, Taken, WaitList, wake};
use crate::ShedPolicy;
use crate::export::stamp;
use crate::isolate::drop_quietly;
use crate::settle::ShedReason;
use crate::sync::MutexGuard;
use std::sync::atomic::Ordering::Relaxed;

/// One key's state.
struct Slot<T> {
    /// Queued items of this key, oldest first, with when each was queued.
    items: VecDeque<(T, Instant)>,
    /// One of its items is in a handler.
    in_flight: bool,
    /// Its place in the ring of ready keys (invariant 3).
    ready: Links,
    /// Its place in `by_len[items.len()]` (invariant 2).
    by_len: Links,
    /// Producers waiting for room in this key (`Backpressure`).
    room: WaitList,
    /// Its key is interned (invariant 4).
    live: bool,
    /// A place is kept for a producer that has not pushed yet (woken for
    /// it, or taken at once): at most one per key (invariant 5).
    granted: bool,
}

impl<T> Slot<T> {
    fn new() -> Self {
        Slot {
            items: VecDeque::new(),
            in_flight: false,
            ready: Links::default(),
            by_len: Links::default(),
            room: WaitList::default(),
            live: false,
            granted: false,
        }
    }

    fn is_idle(&self) -> bool {
        self.items.is_empty() && !self.in_flight && self.room.is_empty() && !self.granted
    }
}

/// How a producer's wait for a place in its key ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyPlace {
    /// The place is its own (`granted` set): push with it.
    Mine,
    /// The queue closed first.
    Closed,
    /// Its key's `Eq` panicked: nothing taken or registered; the item goes
    /// back as one whose key function panicked.
    Unkeyed,
}

/// Where an arrival went, and what it displaced.
pub(crate) enum Placed<T> {
    /// Queued, shedding nothing.
    Queued,
    /// Queued; this item was shed to make room.
    Displaced(T, ShedReason),
    /// Shed itself (its key or the queue was full).
    Shed(T, ShedReason),
}

/// The keyed state of a queue.
pub(crate) struct Keyed<T> {
    table: Box<dyn KeyTable>,
    slots: Vec<Slot<T>>,
    /// The ring of keys with a queued item and nothing in flight, in turn
    /// (invariant 3).
    ready: List,
    /// Keys by queued count: `by_len[n]` holds the keys with `n` items.
    by_len: Vec<List>,
    fattest: usize,
    total: usize,
    live: usize,
    per_key_capacity: usize,
    /// Whether `by_len` and `fattest` are kept: only shedding policies ask
    /// for the fattest key (under `Backpressure` the queue never overflows).
    track_fattest: bool,
    /// Forgotten keys whose `Drop` may be user code, for the caller to drop
    /// after unlocking.
    forgotten: Vec<Box<dyn Any + Send>>,
    /// The next waiter for room, granted its place by a grant holder's
    /// push (invariant 5), for the caller to wake after unlocking.
    passed: Option<Waker>,
}

impl<T> Keyed<T> {
    pub(crate) fn new(
        table: Box<dyn KeyTable>,
        per_key_capacity: usize,
        policy: ShedPolicy,
    ) -> Self {
        Keyed {
            table,
            slots: Vec::new(),
            ready: List::default(),
            by_len: vec![List::default()],
            fattest: 0,
            total: 0,
            live: 0,
            per_key_capacity,
            track_fattest: policy != ShedPolicy::Backpressure,
            forgotten: Vec::new(),
            passed: None,
        }
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Keys tracked now (invariant 4).
    pub(crate) fn keys(&self) -> usize {
        self.live
    }

    /// A panic while arrivals were placed: if the front key's `Eq` raised
    /// it, the key goes (dropped after unlocking), and the arrival back to
    /// its front, unkeyed; any other panic is the crate's own bug, and goes
    /// on unwinding.
    pub(crate) fn drop_panicked_key(&mut self, keys: &mut dyn Any, panic: Box<dyn Any + Send>) {
        if !self.table.was_comparing() {
            std::panic::resume_unwind(panic);
        }
        drop_quietly(panic);
        self.table.drop_front(keys, &mut self.forgotten);
    }

    /// After a push: lets go of the keys it used (`KeyTable::settle`).
    pub(crate) fn settle(&mut self, keys: &mut dyn Any) {
        self.table.settle(keys, &mut self.forgotten);
    }

    /// Forgotten keys to drop after unlocking.
    pub(crate) fn take_forgotten(&mut self) -> Forgotten {
        if self.forgotten.is_empty() {
            None // the common case, and the only one for keys without drop glue
        } else {
            Some(std::mem::take(&mut self.forgotten))
        }
    }

    /// A producer that must wait (its key is full, or it will wait for a
    /// queue slot: a `send` or a call) takes a place in the front key of
    /// `keys` first: at once if the key
    /// has room, nobody in line and no place kept for anyone (an untracked
    /// key is interned for it, held in `keys`), else in line, registering
    /// under `ticket`. `true` once the place is its own (`granted` set:
    /// push with it); `false` while it waits (invariant 5); `None` if the
    /// key's `Eq` panicked (nothing taken or registered; the key popped, to
    /// drop after unlocking).
    pub(crate) fn take_place(
        &mut self,
        keys: &mut dyn Any,
        ticket: &mut Option<u64>,
        granted: &mut bool,
        waker: &Waker,
    ) -> Option<bool> {
        if *granted {
            return Some(true);
        }
        let per_key = self.per_key_capacity;
        let id = match self.table.find_or_hold(keys, &mut self.forgotten)? {
            Ok(id) => id,
            Err(id) => {
                // Nothing of this key queued, in flight or waited for: the
                // place is free; the key is tracked from now on (invariant 4).
                self.slot(id).granted = true;
                *granted = true;
                return Some(true);
            }
        };
        let slot = &mut self.slots[id];
        if ticket.is_some() && !slot.room.is_registered(*ticket) {
            // Woken by `grant_next`: the place is this producer's.
            *ticket = None;
            *granted = true;
            return Some(true);
        }
        debug_assert!(
            slot.room.is_empty() || slot.items.len() >= per_key || slot.granted,
            "Keyed: waiters in line beside free room, no grant out (invariant 5)"
        );
        if ticket.is_none() && !slot.granted && slot.items.len() < per_key && slot.room.is_empty() {
            slot.granted = true;
            *granted = true;
            return Some(true);
        }
        slot.room.register(ticket, waker);
        Some(false)
    }

    /// A producer stops waiting for room in the front key of `keys`
    /// (dropped): its place in line goes, and a grant it held (woken, or
    /// `granted`) passes to the next in line, or lapses (invariant 5).
    pub(crate) fn leave_room(
        &mut self,
        keys: &dyn Any,
        mut ticket: Option<u64>,
        granted: bool,
        closed: bool,
    ) -> Option<std::task::Waker> {
        let id = self.table.find_front(keys)?;
        let slot = &mut self.slots[id];
        if closed {
            // Grants lapsed at the close, and nobody is let in any more.
            slot.room.forget(&mut ticket);
            self.forget_if_idle(id);
            return None;
        }
        let held_grant = granted || (ticket.is_some() && !slot.room.is_registered(ticket));
        // Still in line: its place goes. Held a grant: it lapses, and the
        // next in line gets it if the place is still free.
        slot.room.forget(&mut ticket);
        let next = if held_grant {
            debug_assert!(slot.granted, "Keyed: a grant not counted");
            slot.granted = false;
            self.grant_next(id)
        } else {
            None
        };
        self.forget_if_idle(id);
        next
    }

    #[inline]
    fn slot(&mut self, id: KeyId) -> &mut Slot<T> {
        if id >= self.slots.len() {
            self.slots.resize_with(id + 1, Slot::new);
        }
        let slot = &mut self.slots[id];
        if !slot.live {
            slot.live = true;
            self.live += 1;
        }
        &mut self.slots[id]
    }

    /// Moves `id` from bucket `from` to bucket `to = from ± 1`
    /// (invariant 2).
    fn rebucket(&mut self, id: KeyId, from: usize, to: usize) {
        debug_assert!(from.abs_diff(to) == 1, "Keyed: a key moves one bucket");
        if from > 0 {
            self.by_len[from].remove(&mut self.slots, id, |slot| &mut slot.by_len);
        }
        if to > 0 {
            if self.by_len.len() <= to {
                self.by_len.resize_with(to + 1, List::default);
            }
            self.by_len[to].push_back(&mut self.slots, id, |slot| &mut slot.by_len);
        }
        // One bucket at a time: the fattest grows by one, or its last key
        // moves down to the bucket below.
        if to > self.fattest || (from == self.fattest && self.by_len[from].head().is_none()) {
            self.fattest = to;
        }
    }

    /// Queues `item` in `id`, whose slot is live (`slot` was called).
    #[inline]
    fn push_back(&mut self, id: KeyId, item: T, at: Instant) {
        let slot = &mut self.slots[id];
        debug_assert!(slot.live, "Keyed: a push into a slot not live");
        slot.items.push_back((item, at));
        let len = slot.items.len();
        self.total += 1;
        if self.track_fattest {
            self.rebucket(id, len - 1, len);
        }
    }

    #[inline]
    fn pop(&mut self, id: KeyId, newest: bool) -> Option<(T, Instant)> {
        let slot = &mut self.slots[id];
        let popped = if newest {
            slot.items.pop_back()
        } else {
            slot.items.pop_front()
        }?;
        let len = slot.items.len();
        self.total -= 1;
        if self.track_fattest {
            self.rebucket(id, len + 1, len);
        }
        Some(popped)
    }

    /// Marks `id` ready if it has items and nothing in flight: at the
    /// ring's tail. True if it became ready.
    #[inline]
    fn make_ready(&mut self, id: KeyId) -> bool {
        let slot = &self.slots[id];
        if slot.items.is_empty() || slot.in_flight || slot.ready.is_linked() {
            return false;
        }
        self.ready
            .push_back(&mut self.slots, id, |slot| &mut slot.ready);
        true
    }

    /// Takes `id` out of the ring (invariant 3).
    fn unready(&mut self, id: KeyId) {
        self.ready
            .remove(&mut self.slots, id, |slot| &mut slot.ready);
    }

    /// A key lost items to shedding: if it has none left, it leaves the
    /// ring and, with nothing in flight, is forgotten.
    fn after_shed(&mut self, id: KeyId) {
        if self.slots[id].items.is_empty() {
            self.unready(id);
        }
        self.forget_if_idle(id);
    }

    /// Frees `id` if nothing needs it any more (invariant 4).
    fn forget_if_idle(&mut self, id: KeyId) {
        let slot = &mut self.slots[id];
        if slot.live && slot.is_idle() {
            debug_assert!(
                !slot.ready.is_linked(),
                "Keyed: an idle key in the ring (invariant 3)"
            );
            slot.live = false;
            self.live -= 1;
            if let Some(key) = self.table.forget(id) {
                self.forgotten.push(key);
            }
        }
    }

    /// Places the next arrival (the last of `arrivals`, which are in
    /// reverse order), whose key is the front of `keys`, by `policy` within
    /// `capacity`. Returns where it went, and whether its key became ready
    /// (a worker should be woken). Under `Backpressure` an arrival whose
    /// key is full is refused (`None`): it stays in `arrivals`, its key in
    /// `keys`. The arrival leaves `arrivals` only once its key is found: a
    /// key's `Eq` that panics (invariant 6) unwinds with it still there,
    /// and the table untouched.
    // Always: its one caller is the keyed push loop, and its result (a
    // large enum) is then matched in registers, not through memory.
    #[inline(always)]
    pub(crate) fn place(
        &mut self,
        arrivals: &mut Vec<T>,
        keys: &mut dyn Any,
        granted: &mut bool,
        policy: ShedPolicy,
        capacity: usize,
        at: Instant,
    ) -> Option<(Placed<T>, bool)> {
        let id = self.table.intern_front(keys, &mut self.forgotten);
        // Invariant 5: a grant is room kept for its holder; anyone else
        // finds the key full while its room is granted or others wait. (A
        // key interned just now has an idle slot, invariant 4, and a
        // `per_key_capacity` of at least 1: never full.)
        let full = policy == ShedPolicy::Backpressure
            && self.slots.get(id).is_some_and(|slot| {
                if *granted {
                    slot.items.len() >= self.per_key_capacity
                } else {
                    slot.items.len() + usize::from(slot.granted) >= self.per_key_capacity
                        || !slot.room.is_empty()
                }
            });
        if full {
            self.table.unuse(keys);
            return None;
        }
        let Some(item) = arrivals.pop() else {
            unreachable!("Keyed: placing with no arrival")
        };
        let used_grant = std::mem::take(granted);
        if used_grant {
            let slot = &mut self.slots[id];
            debug_assert!(slot.granted, "Keyed: a grant not counted");
            slot.granted = false;
        }
        let own = self.slot(id).items.len();
        let placed = if own >= self.per_key_capacity {
            // The key's own queue is full: the policy applies within it.
            match policy {
                ShedPolicy::DropOldest => self.displace(id, ShedReason::Superseded, id, item, at),
                _ => Placed::Shed(item, ShedReason::Newest),
            }
        } else if self.total >= capacity {
            // The whole queue is full: the fattest key gives way, unless
            // the arrival's own key is (one of) the fattest.
            // Among equally fat keys, the one that grew last gives way:
            // keys already waiting keep their place until their turn
            // (evicting the longest waiting instead would, under sustained
            // overload, evict every key before its turn came).
            let fattest = self.by_len[self.fattest].tail();
            match (policy, fattest) {
                (ShedPolicy::DropOldest, _) if own == self.fattest => {
                    self.displace(id, ShedReason::Oldest, id, item, at)
                }
                (ShedPolicy::DropOldest, Some(fat)) => {
                    self.displace(fat, ShedReason::Oldest, id, item, at)
                }
                (_, Some(fat)) if own < self.fattest => {
                    self.displace(fat, ShedReason::Newest, id, item, at)
                }
                _ => Placed::Shed(item, ShedReason::Newest),
            }
        } else {
            self.push_back(id, item, at);
            Placed::Queued
        };
        if used_grant {
            // The holder is in: the next in line may have the next place.
            self.passed = self.grant_next(id);
        }
        let woke = self.make_ready(id);
        if let Placed::Shed(..) = placed {
            // Only an arrival shed itself can leave its key idle (a new
            // key that got nothing queued).
            self.forget_if_idle(id);
        }
        Some((placed, woke))
    }

    /// Sheds an item of key `from` for `reason` (its newest for `Newest`,
    /// else its oldest) and queues `item` in key `id`.
    fn displace(
        &mut self,
        from: KeyId,
        reason: ShedReason,
        id: KeyId,
        item: T,
        at: Instant,
    ) -> Placed<T> {
        let shed = self.pop(from, reason == ShedReason::Newest);
        self.push_back(id, item, at);
        if from != id {
            self.after_shed(from);
        }
        match shed {
            Some((shed, _)) => Placed::Displaced(shed, reason),
            None => Placed::Queued,
        }
    }

    /// The oldest item of the key whose turn it is, marking the key in
    /// flight; `None` if no key is ready.
    #[inline]
    pub(crate) fn take(&mut self) -> Option<(KeyId, T, Instant)> {
        let id = self
            .ready
            .pop_front(&mut self.slots, |slot| &mut slot.ready)?;
        let Some((item, at)) = self.pop(id, false) else {
            unreachable!("Keyed: a key in the ring without items (invariant 3)");
        };
        self.slots[id].in_flight = true;
        Some((id, item, at))
    }

    /// The item of `id` a worker took has finished: the key's next item may
    /// start. Returns whether the key became ready, and the producers
    /// waiting for room in it to wake.
    #[inline]
    pub(crate) fn finished(&mut self, id: KeyId) -> bool {
        let Some(slot) = self.slots.get_mut(id) else {
            return false;
        };
        debug_assert!(slot.in_flight, "Keyed: finished a key not in flight");
        slot.in_flight = false;
        let woke = self.make_ready(id);
        self.forget_if_idle(id);
        woke
    }

    /// After a take or a withdrawal from `id`: the oldest producer waiting
    /// for room in it, woken with a grant, if none is outstanding
    /// (invariant 5).
    #[inline]
    pub(crate) fn room_freed(&mut self, id: KeyId) -> Option<Waker> {
        if self.slots.get(id).is_none_or(|slot| slot.room.is_empty()) {
            return None; // nobody waits: the common case on a take
        }
        self.grant_next(id)
    }

    /// The next waiter for room in `id`, woken with a grant, if the key has
    /// a free place and no grant is outstanding (invariant 5: one at a
    /// time, so waiters enter in the order they began to wait).
    fn grant_next(&mut self, id: KeyId) -> Option<Waker> {
        let per_key = self.per_key_capacity;
        let slot = self.slots.get_mut(id)?;
        if slot.granted || slot.items.len() >= per_key {
            return None;
        }
        let next = slot.room.wake_one()?;
        slot.granted = true;
        Some(next)
    }

    /// Takes the oldest queued item that `is_it` picks out of its key (a
    /// caller that went away), with the producers waiting for room in that
    /// key, to wake. The key leaves the ring if it has no item left, and is
    /// forgotten if nothing else needs it (invariants 2 to 4). O(keys +
    /// queued items).
    pub(crate) fn withdraw(&mut self, is_it: impl Fn(&T) -> bool) -> Option<(T, Option<Waker>)> {
        let (id, at) = self.slots.iter().enumerate().find_map(|(id, slot)| {
            let at = slot.items.iter().position(|(item, _)| is_it(item))?;
            Some((id, at))
        })?;
        let slot = &mut self.slots[id];
        let (item, _) = slot.items.remove(at)?;
        let len = slot.items.len();
        self.total -= 1;
        if self.track_fattest {
            self.rebucket(id, len + 1, len);
        }
        let woken = self.room_freed(id);
        self.after_shed(id);
        Some((item, woken))
    }

    /// Empties every key, returning the items (oldest first within a key)
    /// and every producer waiting for room, to wake.
    pub(crate) fn drain(&mut self) -> (Vec<T>, Vec<std::task::Waker>) {
        let mut items = Vec::with_capacity(self.total);
        let mut wakers = Vec::new();
        for id in 0..self.slots.len() {
            let slot = &mut self.slots[id];
            items.extend(slot.items.drain(..).map(|(item, _)| item));
            wakers.extend(slot.room.wake_all());
            slot.granted = false;
            (slot.ready, slot.by_len) = (Links::default(), Links::default());
        }
        self.ready = List::default();
        self.by_len.fill(List::default());
        self.fattest = 0;
        self.total = 0;
        for id in 0..self.slots.len() {
            self.forget_if_idle(id);
        }
        (items, wakers)
    }

    /// When the oldest queued item was queued.
    pub(crate) fn oldest_stamp(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|slot| slot.items.front().map(|(_, at)| *at))
            .min()
    }
}

impl<T> Keyed<T> {
    /// Every producer waiting for a key's room, to wake (the queue closed:
    /// they are refused), and every grant lapses (nothing is pushed any
    /// more).
    pub(crate) fn wake_room_all(&mut self) -> Vec<std::task::Waker> {
        let mut woken = Vec::new();
        for id in 0..self.slots.len() {
            let slot = &mut self.slots[id];
            woken.extend(slot.room.wake_all());
            slot.granted = false;
            self.forget_if_idle(id);
        }
        woken
    }
}

/// Keys forgotten under the lock whose `Drop` may be user code, to drop
/// after unlocking; `None` on most calls (no `Vec` to move or drop).
pub(crate) type Forgotten = Option<Vec<Box<dyn Any + Send>>>;

/// After unlocking: drops `forgotten` keys, quietly (their `Drop` may be
/// user code).
#[inline]
pub(super) fn drop_forgotten(forgotten: Forgotten) {
    if let Some(keys) = forgotten {
        keys.into_iter().for_each(drop_quietly);
    }
}

/// After unlocking: wakes `woken` and drops `forgotten` keys.
pub(super) fn wake_and_drop(woken: Vec<Waker>, forgotten: Forgotten) {
    woken.into_iter().for_each(Waker::wake);
    drop_forgotten(forgotten);
}

// ===== the queue's keyed operations =====

impl<T> HandOff<T> {
    fn keyed(state: &mut State<T>) -> &mut Keyed<T> {
        match state.keyed.as_mut() {
            Some(keyed) => keyed,
            None => unreachable!("HandOff: a keyed operation on an unkeyed queue"),
        }
    }

    /// [`push`](Self::push) in keyed mode: `keys` (a `VecDeque<K>`) holds
    /// one key per item of `batch`, in order, and `reasons` gets one
    /// [`ShedReason`] per item appended to `shed`, with whether it was the
    /// arrival itself (or an item it displaced). Under `Backpressure` the
    /// push stops at the first item whose key is full (`blocked`), leaving
    /// it and the rest in `batch` and `keys`: wait with
    /// [`key_place`](Self::key_place), then push the rest (with the place).
    #[allow(clippy::too_many_arguments)] // the unkeyed push's, plus the keys'
    pub(crate) fn push_keyed(
        &self,
        batch: &mut Vec<T>,
        keys: &mut dyn Any,
        granted: &mut bool,
        shed: &mut Vec<T>,
        reasons: &mut Vec<(ShedReason, bool)>,
        unkeyed: &mut Vec<T>,
        count: impl FnOnce(usize, usize),
    ) -> Pushed {
        // Read outside the lock (as the unkeyed queue's stamps are): the
        // batch's time in its keys' queues, for `max_queue_age`.
        let at = Instant::now();
        let (woken, forgotten, pushed, passed) = {
            let mut state = self.lock();
            if state.closed {
                return Pushed::Refused;
            }
            let (mut offered, mut overflow, mut ready) = (0, 0, 0);
            let mut blocked = false;
            let keyed = Self::keyed(&mut state);
            // Popped from the back, in order, so the caller's batch keeps
            // its capacity for the next pull (taking the `Vec` cost a
            // regrowth per batch); what a block leaves goes back.
            let arrivals = batch;
            arrivals.reverse();
            let unkeyed_before = unkeyed.len();
            // One guard for the whole batch around the keys' `Eq`, the
            // caller's code (invariant 6; a guard per item cost 30
            // instructions an item): a panic leaves the arrival whose key
            // it was in `arrivals`, which goes back unkeyed, and the rest
            // goes on.
            while std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                while !arrivals.is_empty() {
                    let Some((placed, woke)) =
                        keyed.place(arrivals, keys, granted, self.policy, self.capacity, at)
                    else {
                        blocked = true;
                        return;
                    };
                    offered += 1;
                    ready += usize::from(woke);
                    let (item, reason, arrival) = match placed {
                        Placed::Queued => continue,
                        Placed::Displaced(item, reason) => (item, reason, false),
                        Placed::Shed(item, reason) => (item, reason, true),
                    };
                    debug_assert!(self.policy != ShedPolicy::Backpressure);
                    overflow += 1;
                    if self.keep_shed {
                        shed.push(item);
                        reasons.push((reason, arrival));
                    }
                    // Otherwise it has no drop glue: nothing runs.
                }
            }))
            .map_err(|panic| keyed.drop_panicked_key(keys, panic))
            .is_err()
            {
                unkeyed.extend(arrivals.pop());
            }
            arrivals.reverse();
            keyed.settle(keys);
            let len = keyed.total();
            let forgotten = keyed.take_forgotten();
            let passed = keyed.passed.take();
            if let Room::Batch = self.room {
                // The reservation becomes items (invariant 4); an item that
                // went back unkeyed gives its reserved slot back.
                let used = offered + (unkeyed.len() - unkeyed_before);
                state.batch.reserved -= used.min(state.batch.reserved);
            }
            debug_assert!(
                len + state.batch.reserved <= self.capacity,
                "HandOff: over capacity (invariant 4)"
            );
            self.len.store(len, Relaxed);
            state.high_water_mark = state.high_water_mark.max(len);
            count(offered, overflow);
            // One worker per key that became ready (invariant 1, keyed).
            let woken = state.idle.wake(ready);
            let pushed = Pushed::Accepted {
                shed: overflow,
                woke_idle: !woken.is_empty(),
                full: len == self.capacity,
                taken: state.next_take,
                blocked,
            };
            (woken, forgotten, pushed, passed)
        };
        wake(passed);
        wake_and_drop(woken, forgotten);
        pushed
    }

    /// [`try_take`](Self::try_take) in keyed mode: the oldest item of the
    /// key whose turn it is. A worker waits while no key is ready, even
    /// with items queued behind keys in flight: the worker that finishes
    /// such a key wakes one.
    pub(super) fn try_take_keyed(
        &self,
        mut state: MutexGuard<'_, State<T>>,
        cx: &mut Context<'_>,
        ticket: &mut Option<u64>,
        finished: Option<KeyId>,
    ) -> Poll<Option<Taken<T>>> {
        let keyed = Self::keyed(&mut state);
        if let Some(done) = finished {
            // Ready again or not, no worker is woken for it: this one takes
            // next, and if the key became ready the ring is not empty.
            keyed.finished(done);
        }
        let Some((key, item, at)) = keyed.take() else {
            let (ended, forgotten) = (keyed.total() == 0, keyed.take_forgotten());
            let ended = ended && state.closed;
            if ended {
                state.idle.forget(ticket);
            } else {
                state.idle.register(ticket, cx.waker());
            }
            drop(state);
            drop_forgotten(forgotten);
            return if ended {
                Poll::Ready(None)
            } else {
                Poll::Pending
            };
        };
        let queued = keyed.total();
        let next = keyed.room_freed(key);
        let forgotten = keyed.take_forgotten();
        state.idle.forget(ticket);
        // Workers that waited for a key in flight must see the end: in keyed
        // mode they may wait on a closed queue (above).
        let woken = (state.closed && queued == 0).then(|| state.idle.wake_all());
        self.len.store(queued, Relaxed);
        let expired = self.max_age.is_some_and(|max_age| at.elapsed() > max_age);
        let seq = state.next_take;
        state.next_take += 1;
        let producer = state.batch.on_take(queued, self.capacity);
        let woke_producer = producer.is_some() && queued == 0;
        drop(state);
        wake(producer);
        wake(next);
        woken.into_iter().flatten().for_each(Waker::wake);
        drop_forgotten(forgotten);
        self.room.freed_one();
        Poll::Ready(Some(Taken {
            seq,
            item,
            queued_at: stamp(Some(at)),
            expired,
            woke_producer,
            key: Some(key),
        }))
    }

    /// The item of `key` a worker took has finished (or was never
    /// started): the key's next item may start, and a worker is woken for
    /// it.
    pub(crate) fn finished(&self, key: KeyId) {
        let (woken, forgotten) = {
            let mut state = self.lock();
            let keyed = Self::keyed(&mut state);
            let ready = keyed.finished(key);
            let forgotten = keyed.take_forgotten();
            (if ready { state.idle.wake_one() } else { None }, forgotten)
        };
        wake(woken);
        drop_forgotten(forgotten);
    }

    /// Takes a place in the front key of `keys`, or a place in its line,
    /// before the producer can wait for it (a `Sink` that accepted an item
    /// outside a poll): its first poll refreshes the waker in that place,
    /// so a key's producers get in in the order they began to wait
    /// (invariant 5 of `keyed`; see `Keyed::take_place`). `false` if the
    /// key's `Eq` panicked: nothing taken, the key dropped; the item goes
    /// back unkeyed.
    pub(crate) fn line_up_for_key_place(
        &self,
        keys: &mut dyn Any,
        ticket: &mut Option<u64>,
        granted: &mut bool,
    ) -> bool {
        self.poll_key_place(
            keys,
            ticket,
            granted,
            &mut Context::from_waker(Waker::noop()),
        ) != Poll::Ready(KeyPlace::Unkeyed)
    }

    /// A wait for a key's room ends without a push (dropped, or the
    /// producer gives up): its place goes, and a grant it held (`granted`,
    /// or a wake-up not yet used) passes on (invariant 5 of `keyed`).
    pub(crate) fn leave_key_room(&self, keys: &dyn Any, ticket: Option<u64>, granted: bool) {
        if ticket.is_none() && !granted {
            return;
        }
        let (next, forgotten) = {
            let mut state = self.lock();
            let closed = state.closed;
            let keyed = Self::keyed(&mut state);
            let next = keyed.leave_room(keys, ticket, granted, closed);
            (next, keyed.take_forgotten())
        };
        wake(next);
        drop_forgotten(forgotten);
    }

    /// Ready once this producer has a place in the front key of `keys`
    /// (`granted` set: push with it), or the queue closed, or the key's
    /// `Eq` panicked (the key dropped: the item goes back unkeyed);
    /// registers under `ticket` to wait. See `Keyed::take_place`.
    pub(crate) fn poll_key_place(
        &self,
        keys: &mut dyn Any,
        ticket: &mut Option<u64>,
        granted: &mut bool,
        cx: &mut Context<'_>,
    ) -> Poll<KeyPlace> {
        let (place, forgotten) = {
            let mut state = self.lock();
            if state.closed {
                return Poll::Ready(KeyPlace::Closed);
            }
            let keyed = Self::keyed(&mut state);
            let place = keyed.take_place(keys, ticket, granted, cx.waker());
            (place, keyed.take_forgotten())
        };
        drop_forgotten(forgotten);
        match place {
            Some(true) => Poll::Ready(KeyPlace::Mine),
            Some(false) => Poll::Pending,
            None => Poll::Ready(KeyPlace::Unkeyed),
        }
    }

    /// Waits for a place in the front key of `keys` (see
    /// [`poll_key_place`](Self::poll_key_place)).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped, it gives up its place in line and passes on a
    /// place given to it.
    pub(crate) async fn key_place(
        &self,
        keys: &mut (dyn Any + Send),
        granted: &mut bool,
    ) -> KeyPlace {
        // `&mut`, not `&`: a future holding it stays `Send` for any key type.
        struct Wait<'a, T> {
            queue: &'a HandOff<T>,
            keys: &'a mut (dyn Any + Send),
            ticket: Option<u64>,
        }
        impl<T> Drop for Wait<'_, T> {
            fn drop(&mut self) {
                // Not granted: a grant is only ever set on the way out.
                self.queue
                    .leave_key_room(&*self.keys, self.ticket.take(), false);
            }
        }
        let mut wait = Wait {
            queue: self,
            keys,
            ticket: None,
        };
        std::future::poll_fn(|cx| {
            let Wait {
                queue,
                keys,
                ticket,
            } = &mut wait;
            queue.poll_key_place(&mut **keys, ticket, granted, cx)
        })
        .await
    }
}
