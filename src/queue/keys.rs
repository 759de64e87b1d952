//! The caller's key type, erased for the queue: keys interned to dense ids,
//! exactly (by `Eq`, not by hash alone), and forgotten when idle.
//!
//! A front hands keys over in a [`Keys<K>`] behind `dyn Any` (one
//! downcast per call, no allocation per key); the queue works with ids.

use std::any::Any;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};
use std::sync::OnceLock;

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashTable};

/// A key's dense id, its slot's index.
pub(crate) type KeyId = usize;

/// A front's keys: one per item it pushes, in order, each with its hash,
/// and the id of the front key if this producer holds a place in it
/// (`held`): then that key is interned (moved into the table, even with
/// nothing queued: the place keeps it tracked), and the push uses the id.
pub(crate) struct Keys<K> {
    /// Keys with their hashes, taken by the front outside every lock
    /// ([`hash_key`]).
    pub(crate) queue: VecDeque<(K, u64)>,
    held: Option<KeyId>,
}

/// The hasher of every key table and every front's keys: foldhash
/// (hashbrown's default hasher), seeded once per process, not std's
/// SipHash, which cost the table most of its time. Keys may come from the
/// network: foldhash is only "minimally DoS-resistant" (no set of keys
/// collides under every seed; an attacker who learns the seed can still
/// collide, <https://github.com/orlp/foldhash#hashdos-resistance>), but a
/// table never holds more than capacity + workers + waiting producers keys
/// (invariant 4 of `keyed`), so even total collision makes a lookup scan
/// that many, never a number that grows.
fn hasher() -> &'static DefaultHashBuilder {
    static HASHER: OnceLock<DefaultHashBuilder> = OnceLock::new();
    HASHER.get_or_init(DefaultHashBuilder::default)
}

/// The hash of `key`, which a front takes outside every lock, under its
/// guard for user code: a key's `Hash` is the caller's, and may panic.
pub(crate) fn hash_key<K: Hash>(key: &K) -> u64 {
    hasher().hash_one(key)
}

impl<K> Default for Keys<K> {
    fn default() -> Self {
        Keys {
            queue: VecDeque::new(),
            held: None,
        }
    }
}

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
        }
    }
}

/// The caller's key type, erased: interns keys to dense ids, exactly (by
/// `Eq`, not by hash alone), and forgets them.
pub(crate) trait KeyTable: Send {
    /// Interns the front key of `keys` (a [`Keys<K>`]), popping it;
    /// unless it is already interned and `refuse` says no to its id, which
    /// leaves it in place (one hash either way). A held key's id is used
    /// (and given up) without a lookup. A popped key equal to one already
    /// interned goes to `spare` if its `Drop` may be user code, to be
    /// dropped after unlocking (invariant 6 of `keyed`).
    fn intern_front(
        &mut self,
        keys: &mut dyn Any,
        refuse: &dyn Fn(KeyId) -> bool,
        spare: &mut Vec<Box<dyn Any + Send>>,
    ) -> Option<KeyId>;
    /// The id of the front key of `keys` (a [`Keys<K>`]), if tracked.
    fn find_front(&self, keys: &dyn Any) -> Option<KeyId>;
    /// Interns the front key of `keys` for a place this producer takes in
    /// it, marking it held (see [`Keys`]); its id. (Only for a key not
    /// interned yet: nothing goes spare.)
    fn hold_front(&mut self, keys: &mut dyn Any) -> Option<KeyId>;
    /// Forgets `id`; returns the key if its `Drop` may run user code.
    fn forget(&mut self, id: KeyId) -> Option<Box<dyn Any + Send>>;
}

/// A [`KeyTable`] for keys of type `K`: a raw hash table of keys with
/// their ids, and each id's hash, so each key is hashed once, by its front
/// outside the lock, needs no `Clone`, and is compared in place; the table
/// grows by the stored hashes, so no `Hash` of the caller's runs under the
/// queue's lock.
struct Table<K> {
    /// The interned keys, with their ids.
    ids: HashTable<(K, KeyId)>,
    /// The hash of each id's key (stale for a free id).
    hashes: Vec<u64>,
    free: Vec<KeyId>,
}

/// A key table for `K`.
pub(crate) fn table<K: Hash + Eq + Send + 'static>() -> Box<dyn KeyTable> {
    Box::new(Table::<K> {
        ids: HashTable::new(),
        hashes: Vec::new(),
        free: Vec::new(),
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

impl<K: Hash + Eq + Send + 'static> KeyTable for Table<K> {
    fn intern_front(
        &mut self,
        keys: &mut dyn Any,
        refuse: &dyn Fn(KeyId) -> bool,
        spare: &mut Vec<Box<dyn Any + Send>>,
    ) -> Option<KeyId> {
        let keys = downcast_mut::<K>(keys);
        if let Some(id) = keys.held {
            if refuse(id) {
                return None;
            }
            keys.held = None;
            return Some(id);
        }
        let keys = &mut keys.queue;
        let Some((front, hash)) = keys.front() else {
            unreachable!("KeyTable: one key per item")
        };
        let hash = *hash;
        // One probe sequence: finds the key, or the place to insert it.
        let hashes = &self.hashes;
        let entry = self
            .ids
            .entry(hash, |(k, _)| k == front, |(_, id)| hashes[*id]);
        let vacant = match entry {
            Entry::Occupied(entry) => {
                let id = entry.get().1;
                if refuse(id) {
                    return None;
                }
                // The caller's copy of a key already interned: its `Drop`
                // may be user code, so not under the lock.
                if let Some((key, _)) = keys.pop_front().filter(|_| std::mem::needs_drop::<K>()) {
                    spare.push(Box::new(key));
                }
                return Some(id);
            }
            Entry::Vacant(vacant) => vacant,
        };
        let (key, _) = keys.pop_front()?;
        let id = match self.free.pop() {
            Some(id) => {
                self.hashes[id] = hash;
                id
            }
            None => {
                self.hashes.push(hash);
                self.hashes.len() - 1
            }
        };
        vacant.insert((key, id));
        Some(id)
    }

    fn find_front(&self, keys: &dyn Any) -> Option<KeyId> {
        let keys = downcast::<K>(keys);
        if keys.held.is_some() {
            return keys.held;
        }
        let (key, hash) = keys.queue.front()?;
        self.ids.find(*hash, |(k, _)| k == key).map(|(_, id)| *id)
    }

    fn hold_front(&mut self, keys: &mut dyn Any) -> Option<KeyId> {
        let mut spare = Vec::new();
        let id = self.intern_front(keys, &|_| false, &mut spare)?;
        debug_assert!(spare.is_empty(), "KeyTable: held a key already interned");
        downcast_mut::<K>(keys).held = Some(id);
        Some(id)
    }

    fn forget(&mut self, id: KeyId) -> Option<Box<dyn Any + Send>> {
        let hash = *self.hashes.get(id)?;
        let entry = self.ids.find_entry(hash, |(_, other)| *other == id).ok()?;
        let ((key, _), _) = entry.remove();
        self.free.push(id);
        std::mem::needs_drop::<K>().then(|| Box::new(key) as Box<dyn Any + Send>)
    }
}
