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
//!    queued items, an item in flight, or producers waiting for its room:
//!    keys tracked never exceed capacity + workers + waiting producers,
//!    whatever the number of distinct keys ever seen.
//! 5. No user code runs here: the caller's key type is only hashed and
//!    compared (by its own `Hash` and `Eq`, which must not panic or lock),
//!    and a forgotten key whose `Drop` could be user code is handed back to
//!    be dropped after unlocking.

use std::any::Any;
use std::collections::VecDeque;

use tokio::time::Instant;

use std::task::{Context, Poll, Waker};

use super::keys::{KeyId, KeyTable};
use super::{HandOff, Pushed, Room, State, Taken, WaitList, wake};
use crate::ShedPolicy;
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
    /// It is in the ring of ready keys (invariant 3).
    in_ready: bool,
    /// Its neighbours in the ring, while `in_ready`.
    prev: Option<KeyId>,
    next: Option<KeyId>,
    /// Its place in `by_len[items.len()]` (invariant 2).
    pos: usize,
    /// Producers waiting for room in this key (`Backpressure`).
    room: WaitList,
    /// Its key is interned (invariant 4).
    live: bool,
}

impl<T> Slot<T> {
    fn new() -> Self {
        Slot {
            items: VecDeque::new(),
            in_flight: false,
            in_ready: false,
            prev: None,
            next: None,
            pos: 0,
            room: WaitList::default(),
            live: false,
        }
    }

    fn is_idle(&self) -> bool {
        self.items.is_empty() && !self.in_flight && self.room.is_empty()
    }
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
    /// (invariant 3): its head and tail.
    ready: Option<(KeyId, KeyId)>,
    /// Keys by queued count: `by_len[n]` holds the keys with `n` items.
    by_len: Vec<Vec<KeyId>>,
    fattest: usize,
    total: usize,
    live: usize,
    per_key_capacity: usize,
    /// Forgotten keys whose `Drop` may be user code, for the caller to drop
    /// after unlocking.
    forgotten: Vec<Box<dyn Any + Send>>,
}

impl<T> Keyed<T> {
    pub(crate) fn new(table: Box<dyn KeyTable>, per_key_capacity: usize) -> Self {
        Keyed {
            table,
            slots: Vec::new(),
            ready: None,
            by_len: vec![Vec::new()],
            fattest: 0,
            total: 0,
            live: 0,
            per_key_capacity,
            forgotten: Vec::new(),
        }
    }

    pub(crate) fn total(&self) -> usize {
        self.total
    }

    /// Keys tracked now (invariant 4).
    pub(crate) fn keys(&self) -> usize {
        self.live
    }

    /// Forgotten keys to drop after unlocking.
    pub(crate) fn take_forgotten(&mut self) -> Vec<Box<dyn Any + Send>> {
        std::mem::take(&mut self.forgotten)
    }

    /// Whether the front key of `keys` has room for one more item.
    pub(crate) fn front_has_room(&self, keys: &dyn Any) -> bool {
        self.table
            .find_front(keys)
            .is_none_or(|id| self.slots[id].items.len() < self.per_key_capacity)
    }

    /// Registers a producer waiting for room in the front key of `keys`;
    /// `false` if that key has room (an untracked key is empty: it has).
    pub(crate) fn wait_room(
        &mut self,
        keys: &dyn Any,
        ticket: &mut Option<u64>,
        waker: &std::task::Waker,
    ) -> bool {
        let Some(id) = self.table.find_front(keys) else {
            return false;
        };
        let slot = &mut self.slots[id];
        if slot.items.len() < self.per_key_capacity {
            slot.room.forget(ticket);
            return false;
        }
        slot.room.register(ticket, waker);
        true
    }

    /// A producer stops waiting for room in the front key of `keys`; a
    /// wake-up it held but did not use passes on.
    pub(crate) fn leave_room(
        &mut self,
        keys: &dyn Any,
        ticket: Option<u64>,
    ) -> Option<std::task::Waker> {
        let id = self.table.find_front(keys)?;
        let next = self.slots[id].room.leave(ticket);
        self.forget_if_idle(id);
        next
    }

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

    /// Moves `id` from bucket `from` to bucket `from ± 1` (invariant 2).
    fn rebucket(&mut self, id: KeyId, from: usize, to: usize) {
        if from > 0 {
            let pos = self.slots[id].pos;
            let bucket = &mut self.by_len[from];
            bucket.swap_remove(pos);
            if let Some(&moved) = bucket.get(pos) {
                self.slots[moved].pos = pos;
            }
        }
        if to > 0 {
            if self.by_len.len() <= to {
                self.by_len.resize_with(to + 1, Vec::new);
            }
            self.slots[id].pos = self.by_len[to].len();
            self.by_len[to].push(id);
        }
        if to > self.fattest {
            self.fattest = to;
        }
        while self.fattest > 0 && self.by_len[self.fattest].is_empty() {
            self.fattest -= 1;
        }
    }

    fn push_back(&mut self, id: KeyId, item: T, at: Instant) {
        let slot = self.slot(id);
        slot.items.push_back((item, at));
        let len = slot.items.len();
        self.total += 1;
        self.rebucket(id, len - 1, len);
    }

    fn pop(&mut self, id: KeyId, newest: bool) -> Option<(T, Instant)> {
        let slot = &mut self.slots[id];
        let popped = if newest {
            slot.items.pop_back()
        } else {
            slot.items.pop_front()
        }?;
        let len = slot.items.len();
        self.total -= 1;
        self.rebucket(id, len + 1, len);
        Some(popped)
    }

    /// Marks `id` ready if it has items and nothing in flight: at the
    /// ring's tail. True if it became ready.
    fn make_ready(&mut self, id: KeyId) -> bool {
        let slot = &mut self.slots[id];
        if slot.items.is_empty() || slot.in_flight || slot.in_ready {
            return false;
        }
        slot.in_ready = true;
        slot.next = None;
        slot.prev = self.ready.map(|(_, tail)| tail);
        match &mut self.ready {
            Some((_, tail)) => {
                let old = std::mem::replace(tail, id);
                self.slots[old].next = Some(id);
            }
            None => self.ready = Some((id, id)),
        }
        true
    }

    /// Takes `id` out of the ring (invariant 3).
    fn unready(&mut self, id: KeyId) {
        let slot = &mut self.slots[id];
        if !slot.in_ready {
            return;
        }
        slot.in_ready = false;
        let (prev, next) = (slot.prev.take(), slot.next.take());
        match prev {
            Some(prev) => self.slots[prev].next = next,
            None => self.set_ring_end(next, true),
        }
        match next {
            Some(next) => self.slots[next].prev = prev,
            None => self.set_ring_end(prev, false),
        }
    }

    /// Sets the ring's head (or tail) to `to`; `None` empties it.
    fn set_ring_end(&mut self, to: Option<KeyId>, head: bool) {
        self.ready = match (self.ready, to) {
            (_, None) => None,
            (Some((_, tail)), Some(to)) if head => Some((to, tail)),
            (Some((head, _)), Some(to)) => Some((head, to)),
            (None, Some(to)) => Some((to, to)),
        };
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
                !slot.in_ready,
                "Keyed: an idle key in the ring (invariant 3)"
            );
            slot.live = false;
            self.live -= 1;
            self.forgotten.extend(self.table.forget(id));
        }
    }

    /// Places one arrival, whose key is the front of `keys`, by `policy`
    /// within `capacity`. Returns where it went, and whether its key became
    /// ready (a worker should be woken).
    pub(crate) fn place(
        &mut self,
        item: T,
        keys: &mut dyn Any,
        policy: ShedPolicy,
        capacity: usize,
        at: Instant,
    ) -> (Placed<T>, bool) {
        let id = self.table.intern_front(keys);
        let own = self.slot(id).items.len();
        let placed = if own >= self.per_key_capacity {
            // The key's own queue is full: the policy applies within it.
            match policy {
                ShedPolicy::DropOldest => {
                    let oldest = self.pop(id, false);
                    self.push_back(id, item, at);
                    match oldest {
                        Some((old, _)) => Placed::Displaced(old, ShedReason::Superseded),
                        None => Placed::Queued,
                    }
                }
                _ => Placed::Shed(item, ShedReason::Newest),
            }
        } else if self.total >= capacity {
            // The whole queue is full: the fattest key gives way, unless
            // the arrival's own key is (one of) the fattest.
            let fattest = self.by_len[self.fattest].last().copied();
            match (policy, fattest) {
                (ShedPolicy::DropOldest, _) if own == self.fattest => {
                    let oldest = self.pop(id, false);
                    self.push_back(id, item, at);
                    match oldest {
                        Some((old, _)) => Placed::Displaced(old, ShedReason::Oldest),
                        None => Placed::Queued,
                    }
                }
                (ShedPolicy::DropOldest, Some(fat)) => {
                    let oldest = self.pop(fat, false);
                    self.push_back(id, item, at);
                    self.after_shed(fat);
                    match oldest {
                        Some((old, _)) => Placed::Displaced(old, ShedReason::Oldest),
                        None => Placed::Queued,
                    }
                }
                (_, Some(fat)) if own < self.fattest => {
                    let newest = self.pop(fat, true);
                    self.push_back(id, item, at);
                    self.after_shed(fat);
                    match newest {
                        Some((new, _)) => Placed::Displaced(new, ShedReason::Newest),
                        None => Placed::Queued,
                    }
                }
                _ => Placed::Shed(item, ShedReason::Newest),
            }
        } else {
            self.push_back(id, item, at);
            Placed::Queued
        };
        let woke = self.make_ready(id);
        self.forget_if_idle(id);
        (placed, woke)
    }

    /// The oldest item of the key whose turn it is, marking the key in
    /// flight; `None` if no key is ready.
    pub(crate) fn take(&mut self) -> Option<(KeyId, T, Instant)> {
        let (id, _) = self.ready?;
        self.unready(id);
        let Some((item, at)) = self.pop(id, false) else {
            unreachable!("Keyed: a key in the ring without items (invariant 3)");
        };
        self.slots[id].in_flight = true;
        Some((id, item, at))
    }

    /// The item of `id` a worker took has finished: the key's next item may
    /// start. Returns whether the key became ready, and the producers
    /// waiting for room in it to wake.
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

    /// After a take or an eviction from `id`: the producers waiting for
    /// room in it, to wake.
    pub(crate) fn room_freed(&mut self, id: KeyId) -> Vec<std::task::Waker> {
        self.slots
            .get_mut(id)
            .map_or_else(Vec::new, |slot| slot.room.wake_all())
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
            (slot.in_ready, slot.prev, slot.next) = (false, None, None);
        }
        self.ready = None;
        self.by_len.iter_mut().for_each(Vec::clear);
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
    /// Every producer waiting for a key's room, to wake (the queue closed).
    pub(crate) fn wake_room_all(&mut self) -> Vec<std::task::Waker> {
        self.slots
            .iter_mut()
            .flat_map(|slot| slot.room.wake_all())
            .collect()
    }
}

// ===== the queue's keyed operations =====

impl<T> HandOff<T> {
    fn keyed<'a>(state: &'a mut State<T>) -> &'a mut Keyed<T> {
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
    /// [`poll_key_room`](Self::poll_key_room), then push the rest.
    pub(crate) fn push_keyed(
        &self,
        batch: &mut Vec<T>,
        keys: &mut dyn Any,
        shed: &mut Vec<T>,
        reasons: &mut Vec<(ShedReason, bool)>,
        count: impl FnOnce(usize, usize),
    ) -> Pushed {
        let (woken, forgotten, pushed) = {
            let mut state = self.lock();
            if state.closed {
                return Pushed::Refused;
            }
            let at = Instant::now();
            let (mut offered, mut overflow, mut ready) = (0, 0, 0);
            let mut blocked = false;
            let keyed = Self::keyed(&mut state);
            let mut arrivals = std::mem::take(batch).into_iter();
            for item in arrivals.by_ref() {
                if self.policy == ShedPolicy::Backpressure && !keyed.front_has_room(keys) {
                    batch.push(item);
                    blocked = true;
                    break;
                }
                let (placed, woke) = keyed.place(item, keys, self.policy, self.capacity, at);
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
            batch.extend(arrivals);
            let len = keyed.total();
            let forgotten = keyed.take_forgotten();
            if let Room::Batch = self.room {
                // The reservation becomes items (invariant 4).
                state.batch.reserved -= offered.min(state.batch.reserved);
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
            (woken, forgotten, pushed)
        };
        woken.into_iter().for_each(Waker::wake);
        forgotten.into_iter().for_each(drop_quietly);
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
    ) -> Poll<Option<Taken<T>>> {
        let keyed = Self::keyed(&mut state);
        let Some((key, item, at)) = keyed.take() else {
            let (closed, empty) = (state.closed, Self::keyed(&mut state).total() == 0);
            if closed && empty {
                state.idle.forget(ticket);
                return Poll::Ready(None);
            }
            state.idle.register(ticket, cx.waker());
            return Poll::Pending;
        };
        let queued = keyed.total();
        let mut room = keyed.room_freed(key);
        let forgotten = keyed.take_forgotten();
        state.idle.forget(ticket);
        if state.closed && queued == 0 {
            // Workers that waited for a key in flight must see the end: in
            // keyed mode they may wait on a closed queue (above).
            room.extend(state.idle.wake_all());
        }
        self.len.store(queued, Relaxed);
        let expired = self.max_age.is_some_and(|max_age| at.elapsed() > max_age);
        let seq = state.next_take;
        state.next_take += 1;
        let producer = state.batch.on_take(queued, self.capacity);
        let woke_producer = producer.is_some() && queued == 0;
        drop(state);
        room.into_iter().chain(producer).for_each(Waker::wake);
        forgotten.into_iter().for_each(drop_quietly);
        self.room.freed_one();
        Poll::Ready(Some(Taken {
            seq,
            item,
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
        forgotten.into_iter().for_each(drop_quietly);
    }

    /// Ready with `true` once the front key of `keys` has room, `false` if
    /// the queue closed; registers under `ticket` to wait.
    pub(crate) fn poll_key_room(
        &self,
        keys: &dyn Any,
        ticket: &mut Option<u64>,
        cx: &mut Context<'_>,
    ) -> Poll<bool> {
        let mut state = self.lock();
        if state.closed {
            return Poll::Ready(false);
        }
        if Self::keyed(&mut state).wait_room(keys, ticket, cx.waker()) {
            Poll::Pending
        } else {
            Poll::Ready(true)
        }
    }

    /// A wait for a key's room ends unfinished (dropped): its place goes,
    /// and a wake-up it held passes on.
    pub(crate) fn leave_key_room(&self, keys: &dyn Any, ticket: Option<u64>) {
        if ticket.is_none() {
            return;
        }
        let (next, forgotten) = {
            let mut state = self.lock();
            let keyed = Self::keyed(&mut state);
            (keyed.leave_room(keys, ticket), keyed.take_forgotten())
        };
        wake(next);
        forgotten.into_iter().for_each(drop_quietly);
    }

    /// Waits until the front key of `keys` has room; `false` if the queue
    /// closed first.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropped, it gives up its place and passes on a wake-up.
    pub(crate) async fn key_room(&self, keys: &mut (dyn Any + Send)) -> bool {
        // `&mut`, not `&`: a future holding it stays `Send` for any key type.
        struct Wait<'a, T> {
            queue: &'a HandOff<T>,
            keys: &'a mut (dyn Any + Send),
            ticket: Option<u64>,
        }
        impl<T> Drop for Wait<'_, T> {
            fn drop(&mut self) {
                self.queue.leave_key_room(&*self.keys, self.ticket.take());
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
            queue.poll_key_room(&**keys, ticket, cx)
        })
        .await
    }
}
