//! The caller's key type, erased for the queue: keys interned to dense ids,
//! exactly (by `Eq`, not by hash alone), and forgotten when idle.
//!
//! A front hands keys over in a [`Keys<K>`] behind `dyn Any` (one
//! downcast per call, no allocation per key); the queue works with ids.

use std::any::Any;
use std::collections::VecDeque;
use std::hash::Hash;

use crate::isolate::catching;

/// A key's dense id, its slot's index.
pub(crate) type KeyId = usize;

/// A front's keys: one per item it pushes, in order, each with its hash,
/// and the id of the front key if this producer holds a place in it
/// (`held`): then that key is interned (moved into the table, even with
/// nothing queued: the place keeps it tracked), and the push uses the id.
pub(crate) struct Keys<K> {
    /// Keys with their hashes, taken by the front outside every lock
    /// ([`KeyHasher`]).
    pub(crate) queue: VecDeque<(K, u64)>,
    held: Option<KeyId>,
    /// The id of the front key, found by the producer taking a place in
    /// it, while it waits in its line or holds the place (the key stays
    /// tracked meanwhile, invariant 4 of `keyed`): its copy is still the
    /// front, and later looks use the id, so the key's `Eq` runs once per
    /// wait, at its start, where a panic loses nothing.
    at: Option<KeyId>,
    /// The front key (or the held id) went to an item the queue placed:
    /// it is let go at the next look at these keys, or by
    /// [`KeyTable::settle`] (so a refusal, which is decided after the
    /// lookup, costs no closure on every lookup: [`KeyTable::unuse`]).
    /// False between pushes.
    used: bool,
}

/// The hasher of keys: foldhash (hashbrown's default hasher), not std's
/// SipHash, which cost the key table most of its time. A keyed pipeline
/// seeds one when it is configured, and its fronts hash every key with it.
/// Keys may come from the network: foldhash is only "minimally
/// DoS-resistant" (no set of keys collides under every seed; an attacker
/// who learns the seed can still collide,
/// <https://github.com/orlp/foldhash#hashdos-resistance>), but a table
/// never holds more than capacity + workers + waiting producers keys
/// (invariant 4 of `keyed`), so even total collision makes a lookup scan
/// that many, never a number that grows with the keys ever seen.
pub(crate) type KeyHasher = foldhash::fast::RandomState;

/// The hash of `key` with a process-wide [`KeyHasher`]: for keys a test or
/// a model builds (`Keys::from_iter`); a pipeline's fronts use its own.
#[cfg(any(test, loom))]
fn hash_key<K: Hash>(key: &K) -> u64 {
    use std::hash::BuildHasher;
    use std::sync::OnceLock;
    static HASHER: OnceLock<KeyHasher> = OnceLock::new();
    HASHER.get_or_init(KeyHasher::default).hash_one(key)
}

impl<K> Default for Keys<K> {
    fn default() -> Self {
        Keys {
            queue: VecDeque::new(),
            held: None,
            at: None,
            used: false,
        }
    }
}

/// Keys a test or a model builds, hashed with a process-wide hasher (a
/// pipeline's fronts use its own: the two never meet in one queue).
#[cfg(any(test, loom))]
impl<K: Hash> FromIterator<K> for Keys<K> {
    fn from_iter<I: IntoIterator<Item = K>>(keys: I) -> Self {
        Keys {
            queue: keys
                .into_iter()
                .map(|key| {
                    let hash = hash_key(&key);
                    (key, hash)
                })
                .collect(),
            held: None,
            at: None,
            used: false,
        }
    }
}

/// The caller's key type, erased: interns keys to dense ids, exactly (by
/// `Eq`, not by hash alone), and forgets them.
pub(crate) trait KeyTable: Send {
    /// Interns the front key of `keys` (a [`Keys<K>`]) for an item being
    /// placed, and marks it used: let go by the next call on these keys,
    /// or by [`settle`](Self::settle), unless [`unuse`](Self::unuse)
    /// keeps it (the item was refused). A held key's id is used without a
    /// lookup. A key let go that equals one interned goes to `spare` if its
    /// `Drop` may be user code, to be dropped after unlocking (invariant 6
    /// of `keyed`). A new key is interned at once (moved into the table):
    /// it has nothing queued, so it is never refused. Unwinds if the key's
    /// `Eq` panics, with the table untouched and the key still the front
    /// (the caller catches it, once per batch, asks
    /// [`was_comparing`](Self::was_comparing), and calls
    /// [`drop_front`](Self::drop_front)).
    fn intern_front(&mut self, keys: &mut dyn Any, spare: &mut Vec<Box<dyn Any + Send>>) -> KeyId;
    /// Pops the front key of `keys` to `spare` (to be dropped after
    /// unlocking): its item goes back to its front, unkeyed, its key's
    /// `Eq` having panicked.
    fn drop_front(&self, keys: &mut dyn Any, spare: &mut Vec<Box<dyn Any + Send>>);
    /// The item the last [`intern_front`](Self::intern_front) was for was
    /// refused: its key stays the front one (and a held id stays held).
    fn unuse(&self, keys: &mut dyn Any);
    /// Lets go of a key used by the last push, so `keys` hold only the
    /// keys of items not placed (called once per push, under the lock).
    fn settle(&self, keys: &mut dyn Any, spare: &mut Vec<Box<dyn Any + Send>>);
    /// The id of the front key of `keys` (a [`Keys<K>`]), if tracked: as
    /// this producer knows it (held, or found when it took its place,
    /// `at`: every producer of a front in a key's line or holding a place
    /// in it does, so leaving runs no `Eq`), else by a lookup (`None` too
    /// if its `Eq` panicked).
    fn find_front(&self, keys: &dyn Any) -> Option<KeyId>;
    /// Whether the last panic under this table came from a key's `Eq` (a
    /// lookup was under way); clears it. A panic from anywhere else is the
    /// crate's own bug, not a key to fail.
    fn was_comparing(&mut self) -> bool;
    /// The id of the front key of `keys` (`Ok`) if tracked; else interns
    /// it for a place this producer takes in it, marking it held (see
    /// [`Keys`]), and returns its id as `Err`. One lookup: the key is
    /// popped only once it is known to be new, so a panicking `Eq` leaves
    /// it with the producer (a review found it popped first, and dropped
    /// under the lock by the unwinding). A key found is remembered (`at`):
    /// the wait's later looks and its push use the id. `None` if the key's
    /// `Eq` panicked: the key goes to `spare` (dropped after unlocking), and
    /// its item back to its producer, unkeyed.
    fn find_or_hold(
        &mut self,
        keys: &mut dyn Any,
        spare: &mut Vec<Box<dyn Any + Send>>,
    ) -> Option<Result<KeyId, KeyId>>;
    /// Forgets `id`; returns the key if its `Drop` may run user code.
    fn forget(&mut self, id: KeyId) -> Option<Box<dyn Any + Send>>;
}

/// A [`KeyTable`] for keys of type `K`: an open-addressing index of ids
/// with linear probing (Knuth, TAOCP vol. 3, §6.4, algorithm L), over each
/// id's key and hash. Each key is hashed once, by its front outside the
/// lock; the table compares stored hashes first and keys in place, needs
/// no `Clone`, and grows by the stored hashes, so no `Hash` of the
/// caller's runs under the queue's lock. A removal shifts the probe run
/// back (algorithm R), leaving no tombstones: keys churn (inserted when a
/// key gets its first item, removed when it goes idle), and a table that
/// keeps tombstones must rehash every so often under that churn. (Measured
/// against hashbrown's `HashTable` in BENCHMARKS.md.)
///
/// # Invariants
///
/// 1. `cells.len()` is a power of two, at least four times `live`, so a
///    probe always meets an empty cell. (At a load of a half, the runs of
///    linear probing made the cost of a key churning table swing by ±3 %
///    from one hash seed to the next; at a quarter it is steady and lower,
///    `BENCHMARKS.md`. The table holds a few dozen ids: 8 bytes a cell.)
/// 2. Each live id is in exactly one cell, reachable from its home cell
///    (`hash & mask`) through occupied cells; a free id is in none.
/// 3. `entries[id].key` is `Some` exactly for a live id.
///
/// Its memory is that of the most keys live at once (ids are reused, and
/// nothing shrinks), not of the keys ever seen.
struct Table<K> {
    /// Ids, or `EMPTY` (invariants 1, 2).
    cells: Vec<KeyId>,
    /// Each id's key (`None` for a free id) and its hash.
    entries: Vec<Entry<K>>,
    free: Vec<KeyId>,
    live: usize,
    /// A lookup of `intern_front` is under way (see `was_comparing`).
    comparing: bool,
}

struct Entry<K> {
    hash: u64,
    key: Option<K>,
}

/// A cell with no id.
const EMPTY: KeyId = KeyId::MAX;

/// Cells of a new table: room for 8 keys before it grows.
const FIRST_CELLS: usize = 32;

/// A key table for `K`.
pub(crate) fn table<K: Hash + Eq + Send + 'static>() -> Box<dyn KeyTable> {
    Box::new(Table::<K> {
        cells: vec![EMPTY; FIRST_CELLS],
        entries: Vec::new(),
        free: Vec::new(),
        live: 0,
        comparing: false,
    })
}

fn downcast<K: 'static>(keys: &dyn Any) -> &Keys<K> {
    match keys.downcast_ref::<Keys<K>>() {
        Some(keys) => keys,
        None => unreachable!("KeyTable: keys of another type"),
    }
}

fn downcast_mut<K: 'static>(keys: &mut dyn Any) -> &mut Keys<K> {
    match keys.downcast_mut::<Keys<K>>() {
        Some(keys) => keys,
        None => unreachable!("KeyTable: keys of another type"),
    }
}

impl<K: Eq> Table<K> {
    fn mask(&self) -> usize {
        self.cells.len() - 1
    }

    /// The id of `key`, or the empty cell where it would go.
    #[inline]
    fn find(&self, key: &K, hash: u64) -> Result<KeyId, usize> {
        let mask = self.mask();
        // Truncation intended: the low bits pick the home cell.
        let mut at = hash as usize & mask;
        loop {
            let id = self.cells[at];
            if id == EMPTY {
                return Err(at);
            }
            let entry = &self.entries[id];
            if entry.hash == hash && entry.key.as_ref() == Some(key) {
                return Ok(id);
            }
            at = (at + 1) & mask;
        }
    }

    /// Takes `key` (absent, `vacant` its empty cell) in under a new id.
    fn insert(&mut self, key: K, hash: u64, mut vacant: usize) -> KeyId {
        if (self.live + 1) * 4 > self.cells.len() {
            self.grow();
            // The key is absent: its cell is the first empty one on its
            // probe path, found without running its `Eq` again (an `Eq`
            // that answers differently the second time is a logic error,
            // not a reason to panic under the queue's lock).
            vacant = self.vacant(hash);
        }
        let entry = Entry {
            hash,
            key: Some(key),
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.entries[id] = entry;
                id
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        self.cells[vacant] = id;
        self.live += 1;
        id
    }

    /// The first empty cell on the probe path of `hash`.
    fn vacant(&self, hash: u64) -> usize {
        let mask = self.mask();
        let mut at = hash as usize & mask;
        while self.cells[at] != EMPTY {
            at = (at + 1) & mask;
        }
        at
    }

    /// Doubles the cells and places every live id again, by its stored
    /// hash (invariant 1).
    fn grow(&mut self) {
        self.cells = vec![EMPTY; self.cells.len() * 2];
        for id in 0..self.entries.len() {
            if self.entries[id].key.is_some() {
                let at = self.vacant(self.entries[id].hash);
                self.cells[at] = id;
            }
        }
    }

    /// Takes `id` out of its cell and shifts the rest of its probe run
    /// back into the hole (invariant 2 without tombstones).
    fn unlink(&mut self, id: KeyId, hash: u64) {
        let mask = self.mask();
        let mut hole = hash as usize & mask;
        while self.cells[hole] != id {
            if self.cells[hole] == EMPTY {
                // Unreachable while invariant 2 holds; should it break, a
                // stop here beats a probe that never ends.
                debug_assert!(false, "KeyTable: a live id unreachable (invariant 2)");
                return;
            }
            hole = (hole + 1) & mask;
        }
        let mut next = (hole + 1) & mask;
        loop {
            let moved = self.cells[next];
            if moved == EMPTY {
                break;
            }
            let home = self.entries[moved].hash as usize & mask;
            // `moved` may fill the hole if the hole lies on its probe path:
            // cyclically within [home, next).
            if next.wrapping_sub(home) & mask >= next.wrapping_sub(hole) & mask {
                self.cells[hole] = moved;
                hole = next;
            }
            next = (next + 1) & mask;
        }
        self.cells[hole] = EMPTY;
    }
}

impl<K: Send + 'static> Keys<K> {
    /// Pops the front key to `spare` (dropped after unlocking): its `Eq`
    /// panicked in a lookup, and its item goes back unkeyed.
    fn drop_front(&mut self, spare: &mut Vec<Box<dyn Any + Send>>) {
        debug_assert!(!self.used && self.held.is_none() && self.at.is_none());
        if let Some((key, _)) = self.queue.pop_front() {
            spare.push(Box::new(key));
        }
    }

    /// Lets go of the used front key or held id (see `used`).
    #[inline]
    fn let_go(&mut self, spare: &mut Vec<Box<dyn Any + Send>>) {
        if !std::mem::take(&mut self.used) {
            return;
        }
        if self.held.take().is_some() {
            return;
        }
        self.at = None;
        // The caller's copy of a key already interned: its `Drop` may be
        // user code, so not under the lock.
        if let Some((key, _)) = self
            .queue
            .pop_front()
            .filter(|_| std::mem::needs_drop::<K>())
        {
            spare.push(Box::new(key) as Box<dyn Any + Send>);
        }
    }
}

/// How [`Table::resolve`] found the front key's id.
enum Resolved {
    /// The producer knew it (held, or found when it took its place).
    Known(KeyId),
    /// Found by a lookup: the caller's copy is still the front.
    Found(KeyId),
    /// New: the key was moved into the table.
    Interned(KeyId),
}

impl<K: Eq> Table<K> {
    /// The id of the front key of `keys`: known, found, or interned (the
    /// key moved in). The caller's `Eq` runs in the lookup, flagged
    /// (`comparing`): a panic there unwinds with the table untouched, the
    /// key still the front, and the flag set.
    fn resolve(&mut self, keys: &mut Keys<K>) -> Resolved {
        if let Some(id) = keys.held.or(keys.at) {
            return Resolved::Known(id);
        }
        let Some((front, hash)) = keys.queue.front() else {
            unreachable!("KeyTable: one key per item")
        };
        let hash = *hash;
        self.comparing = true;
        let found = self.find(front, hash);
        self.comparing = false;
        match found {
            Ok(id) => Resolved::Found(id),
            Err(vacant) => match keys.queue.pop_front() {
                Some((key, _)) => Resolved::Interned(self.insert(key, hash, vacant)),
                None => unreachable!("KeyTable: the front key went"),
            },
        }
    }
}

impl<K: Hash + Eq + Send + 'static> KeyTable for Table<K> {
    fn intern_front(&mut self, keys: &mut dyn Any, spare: &mut Vec<Box<dyn Any + Send>>) -> KeyId {
        let keys = downcast_mut::<K>(keys);
        keys.let_go(spare);
        match self.resolve(keys) {
            Resolved::Known(id) | Resolved::Found(id) => {
                keys.used = true;
                id
            }
            Resolved::Interned(id) => id,
        }
    }

    fn drop_front(&self, keys: &mut dyn Any, spare: &mut Vec<Box<dyn Any + Send>>) {
        downcast_mut::<K>(keys).drop_front(spare);
    }

    fn unuse(&self, keys: &mut dyn Any) {
        let keys = downcast_mut::<K>(keys);
        // Only a key that was already tracked can be refused: one interned
        // by this lookup was moved out of `keys` and has nothing queued.
        debug_assert!(keys.used, "KeyTable: a new key refused");
        keys.used = false;
    }

    fn settle(&self, keys: &mut dyn Any, spare: &mut Vec<Box<dyn Any + Send>>) {
        downcast_mut::<K>(keys).let_go(spare);
    }

    fn find_front(&self, keys: &dyn Any) -> Option<KeyId> {
        let keys = downcast::<K>(keys);
        debug_assert!(!keys.used, "KeyTable: keys used outside a push");
        if let Some(id) = keys.held.or(keys.at) {
            return Some(id);
        }
        let (key, hash) = keys.queue.front()?;
        // The caller's `Eq`, guarded: a lookup only reads the table.
        catching(|| self.find(key, *hash))?.ok()
    }

    fn was_comparing(&mut self) -> bool {
        std::mem::take(&mut self.comparing)
    }

    fn find_or_hold(
        &mut self,
        keys: &mut dyn Any,
        spare: &mut Vec<Box<dyn Any + Send>>,
    ) -> Option<Result<KeyId, KeyId>> {
        let keys = downcast_mut::<K>(keys);
        debug_assert!(!keys.used, "KeyTable: keys used outside a push");
        let Some(resolved) = catching(|| self.resolve(keys)) else {
            // The key's `Eq` panicked: the key goes with its item.
            self.comparing = false;
            keys.drop_front(spare);
            return None;
        };
        Some(match resolved {
            Resolved::Known(id) => Ok(id),
            Resolved::Found(id) => {
                keys.at = Some(id);
                Ok(id)
            }
            Resolved::Interned(id) => {
                keys.held = Some(id);
                Err(id)
            }
        })
    }

    fn forget(&mut self, id: KeyId) -> Option<Box<dyn Any + Send>> {
        let entry = self.entries.get_mut(id)?;
        let key = entry.key.take()?;
        let hash = entry.hash;
        self.unlink(id, hash);
        self.free.push(id);
        self.live -= 1;
        std::mem::needs_drop::<K>().then(|| Box::new(key) as Box<dyn Any + Send>)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Keys with chosen hashes: few distinct hashes make long probe runs
    /// that wrap around the cells.
    fn keys_of(key: u32, hash: u64) -> Keys<u32> {
        Keys {
            queue: VecDeque::from([(key, hash)]),
            held: None,
            at: None,
            used: false,
        }
    }

    fn intern(table: &mut Table<u32>, key: u32, hash: u64) -> KeyId {
        let mut spare = Vec::new();
        let mut keys = keys_of(key, hash);
        let id = table.intern_front(&mut keys, &mut spare);
        table.settle(&mut keys, &mut spare);
        assert!(
            keys.queue.is_empty(),
            "the key went to the table or was let go"
        );
        id
    }

    fn new_table() -> Table<u32> {
        Table {
            cells: vec![EMPTY; FIRST_CELLS],
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
            comparing: false,
        }
    }

    /// Invariants 1 to 3, and every live key found at its id.
    fn check(table: &Table<u32>, model: &HashMap<u32, KeyId>) {
        assert!(table.cells.len().is_power_of_two());
        assert!(table.cells.len() >= 4 * table.live);
        assert_eq!(table.live, model.len());
        let placed: Vec<KeyId> = table
            .cells
            .iter()
            .copied()
            .filter(|&id| id != EMPTY)
            .collect();
        assert_eq!(placed.len(), model.len(), "each live id in one cell");
        for (&key, &id) in model {
            let hash = table.entries[id].hash;
            assert_eq!(table.find(&key, hash), Ok(id));
            assert_eq!(table.entries[id].key, Some(key));
        }
    }

    proptest! {
        /// Interning and forgetting in any order keep ids exact: a key
        /// interned twice gets its id back, a forgotten key is found no
        /// more, and ids are reused.
        #[test]
        fn the_table_agrees_with_a_map(
            ops in prop::collection::vec((any::<bool>(), 0u32..40), 1..400),
            hash_bits in 0u32..6,
            top in any::<bool>(),
        ) {
            let mut table = new_table();
            let mut model: HashMap<u32, KeyId> = HashMap::new();
            let mut most_live = 0;
            // Hashes from 2^hash_bits values: 1 makes every key collide.
            let low = |key: u32| u64::from(key.wrapping_mul(2_654_435_761)) % (1 << hash_bits);
            // `top`: homes at the last cells of every size (the low bits
            // of `!h` are `mask - h`), so runs wrap at every size, in
            // `grow` as in `unlink` (a review found a `grow` that lost the
            // wrap unseen without it).
            let hash_of = |key: u32| if top { !low(key) } else { low(key) };
            for (insert, key) in ops {
                if insert {
                    let id = intern(&mut table, key, hash_of(key));
                    if let Some(&known) = model.get(&key) {
                        prop_assert_eq!(id, known);
                    } else {
                        prop_assert!(model.values().all(|&other| other != id), "a live id reused");
                        model.insert(key, id);
                    }
                } else if let Some(id) = model.remove(&key) {
                    // `u32` has no drop glue: nothing handed back.
                    prop_assert!(table.forget(id).is_none());
                    prop_assert_eq!(table.find(&key, hash_of(key)).ok(), None);
                }
                most_live = most_live.max(model.len());
                check(&table, &model);
            }
            // Ids are dense: as many as the most keys live at once.
            prop_assert_eq!(table.entries.len(), most_live);
        }
    }

    #[test]
    fn growth_places_again_a_run_that_wraps() {
        let mut table = new_table();
        // Every key homed at the last cell whatever the size: 8 fill cells
        // 31 and 0 to 6; the 9th doubles the cells, and the run wraps
        // from 63 to 0.
        let ids: Vec<KeyId> = (0..9)
            .map(|key| intern(&mut table, key, u64::MAX))
            .collect();
        assert_eq!(table.cells.len(), 2 * FIRST_CELLS);
        assert_eq!(table.cells[2 * FIRST_CELLS - 1], ids[0]);
        assert_eq!(&table.cells[..8], &ids[1..]);
        for (key, id) in (0..9).zip(ids) {
            assert_eq!(table.find(&key, u64::MAX), Ok(id));
        }
    }

    #[test]
    fn a_refused_key_stays_in_place_and_a_stale_forget_changes_nothing() {
        let mut table = new_table();
        let id = intern(&mut table, 7, 3);
        let mut keys = keys_of(7, 3);
        keys.queue.push_back((8, 4));
        let mut spare = Vec::new();
        assert_eq!(table.intern_front(&mut keys, &mut spare), id);
        table.unuse(&mut keys); // refused
        table.settle(&mut keys, &mut spare);
        assert_eq!(keys.queue.len(), 2, "a refused key stays");
        // Used twice: let go by the next look, the last one by `settle`.
        assert_eq!(table.intern_front(&mut keys, &mut spare), id);
        assert_eq!(keys.queue.len(), 2, "let go lazily");
        let eight = table.intern_front(&mut keys, &mut spare);
        assert_eq!(keys.queue.len(), 0, "7 let go, 8 moved into the table");
        table.settle(&mut keys, &mut spare);
        assert!(table.forget(eight).is_none());
        assert!(table.forget(id).is_none());
        assert!(table.forget(id).is_none(), "forgotten twice");
        assert!(table.forget(EMPTY).is_none());
        assert_eq!((table.live, table.free.len()), (0, 2));
    }

    /// An insert that grows the table runs the key's `Eq` once per key on
    /// its probe path, not again after growing (an `Eq` that answered
    /// differently the second time made the second lookup panic under
    /// the queue's lock; found by a review).
    #[test]
    fn an_insert_that_grows_compares_each_key_once() {
        use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
        static EQ_CALLS: AtomicUsize = AtomicUsize::new(0);
        struct Counted(u32);
        impl Hash for Counted {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state);
            }
        }
        impl PartialEq for Counted {
            fn eq(&self, other: &Self) -> bool {
                EQ_CALLS.fetch_add(1, Relaxed);
                self.0 == other.0
            }
        }
        impl Eq for Counted {}
        let mut table = Table::<Counted> {
            cells: vec![EMPTY; FIRST_CELLS],
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
            comparing: false,
        };
        let mut spare = Vec::new();
        let mut intern = |key: u32| {
            // One hash for all: each lookup compares every key interned.
            let mut keys = Keys {
                queue: VecDeque::from([(Counted(key), 5)]),
                held: None,
                at: None,
                used: false,
            };
            let id = table.intern_front(&mut keys, &mut spare);
            table.settle(&mut keys, &mut spare);
            id
        };
        for key in 0..8 {
            intern(key);
        }
        EQ_CALLS.store(0, Relaxed);
        assert_eq!(intern(8), 8, "the 9th key doubles the cells");
        assert_eq!(EQ_CALLS.load(Relaxed), 8, "one comparison per key interned");
    }

    #[test]
    fn a_removal_shifts_a_wrapped_run_back() {
        let mut table = new_table();
        let last = (FIRST_CELLS - 1) as u64;
        // Three keys homed at the last cell: the run wraps to cells 0, 1.
        let ids: Vec<KeyId> = (0..3).map(|key| intern(&mut table, key, last)).collect();
        assert_eq!(table.cells[FIRST_CELLS - 1], ids[0]);
        assert_eq!(&table.cells[..2], &ids[1..]);
        table.forget(ids[0]);
        assert_eq!(table.cells[FIRST_CELLS - 1], ids[1]);
        assert_eq!(table.cells[0], ids[2]);
        assert_eq!(table.cells[1], EMPTY);
        assert_eq!(table.find(&2, last), Ok(ids[2]));
    }

    #[test]
    fn the_table_doubles_before_a_quarter_full_and_keeps_every_id() {
        let mut table = new_table();
        let ids: Vec<KeyId> = (0..9)
            .map(|key| intern(&mut table, key, u64::from(key) * 16))
            .collect();
        assert_eq!(table.cells.len(), 2 * FIRST_CELLS, "9 keys need 64 cells");
        for (key, id) in (0..9).zip(ids) {
            assert_eq!(table.find(&key, u64::from(key) * 16), Ok(id));
        }
    }
}
